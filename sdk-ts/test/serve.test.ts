// serveSpan's checks before anything starts: consent, blocks, hashes, the engine module,
// resource caps. Each bad request is a typed error, and neither a worker nor the node is
// touched. The whole path (worker, engine, inference streams, relay) runs in headless
// Chromium against real nodes: engine/p2p/tests/browser/serve.test.mjs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConsentRequiredError, InvalidArgumentError } from '../src/errors.js';
import { serveSpan, type ConsentGate, type ServeSpanOptions } from '../src/serve.js';
import type { WasmP2pNode } from '../src/wasm-p2p.js';

/** A node that fails the test if serveSpan reaches it. */
const untouchedNode = new Proxy({}, {
  get(_, name) {
    throw new Error(`serveSpan used the node (${String(name)}) before its checks passed`);
  },
}) as WasmP2pNode;

const gate = (granted: boolean): ConsentGate => ({ granted, onChange: () => () => {} });

const good: ServeSpanOptions = {
  modelUrl: 'http://127.0.0.1:1/model.gguf',
  start: 10,
  end: 20,
  engine: { moduleUrl: 'http://127.0.0.1:1/engine-serve/kwaainet_wasm.js' },
  consent: gate(true),
};

describe('serveSpan refuses before it starts anything', () => {
  const Worker0 = (globalThis as { Worker?: unknown }).Worker;
  it('creates no worker for any of these', async () => {
    (globalThis as { Worker?: unknown }).Worker = class {
      constructor() {
        throw new Error('a worker was created');
      }
    };
    try {
      const cases: [string, Partial<ServeSpanOptions> | null, new (...a: never[]) => Error][] = [
        ['no consent yet', { consent: gate(false) }, ConsentRequiredError],
        ['no consent gate', { consent: undefined as unknown as ConsentGate }, InvalidArgumentError],
        ['empty span', { start: 20, end: 20 }, InvalidArgumentError],
        ['reversed span', { start: 20, end: 10 }, InvalidArgumentError],
        ['fractional block', { start: 1.5 }, InvalidArgumentError],
        ['negative block', { start: -1 }, InvalidArgumentError],
        ['bad sha256', { sha256: 'abc' }, InvalidArgumentError],
        ['no engine module', { engine: undefined as unknown as ServeSpanOptions['engine'] }, InvalidArgumentError],
        ['too many sessions', { maxSessions: 65 }, InvalidArgumentError],
        ['no cache', { cacheTokens: 0 }, InvalidArgumentError],
        ['cpu cap out of range', { maxResources: { cpu: 0 } }, InvalidArgumentError],
        ['memory cap too small', { maxResources: { memory: 10 } }, InvalidArgumentError],
      ];
      for (const [what, change, type] of cases) {
        await assert.rejects(serveSpan(untouchedNode, { ...good, ...change }, () => {}), type, what);
      }
      await assert.rejects(serveSpan(untouchedNode, null as unknown as ServeSpanOptions, () => {}), InvalidArgumentError);
    } finally {
      (globalThis as { Worker?: unknown }).Worker = Worker0;
    }
  });
});
