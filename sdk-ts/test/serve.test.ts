// serveSpan's checks before anything starts: consent, blocks, hashes, the engine module,
// resource caps. Each bad request is a typed error, and neither a worker nor the node is
// touched. The whole path (worker, engine, inference streams, relay) runs in headless
// Chromium against real nodes: engine/p2p/tests/browser/serve.test.mjs.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { memoryConsentStorage } from '../src/consent.js';
import { ConsentRequiredError, InvalidArgumentError } from '../src/errors.js';
import { KwaaiNet, type ContributionEvent } from '../src/kwaainet.js';
import type { KwaaiNetwork } from '../src/network.js';
import {
  serveSpan, type ConsentGate, type ServeSpanOptions, type SpanContribution, type SpanService,
} from '../src/serve.js';
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
        ['an unknown device class', { deviceClass: 'fridge' as 'phone' }, InvalidArgumentError],
        ['a region that is not a country code', { region: 'Europe' }, InvalidArgumentError],
        ['a battery level above 1', { power: { minBatteryLevel: 2 } }, InvalidArgumentError],
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

/** A network whose serveSpan records what it was given and returns a span double whose
 *  counters the test moves. */
function networkDouble(): { network: KwaaiNetwork; given: ServeSpanOptions[]; emit(c: Partial<SpanContribution>): void } {
  const given: ServeSpanOptions[] = [];
  const listeners: ((c: SpanContribution) => void)[] = [];
  let current: SpanContribution = {
    state: 'serving', model: 'm@0123456789abcdef', start: 10, end: 20, sessions: 0, steps: 0, tokens: 0, blockTokens: 0,
    busySeconds: 0, bytesIn: 0, bytesOut: 0, energyUwh: 0, carbonUg: 0, method: 'modelled', deviceClass: 'laptop',
    gridIntensityMgPerKwh: 480_617, gridYear: 2009, sessionsOpen: 0, streamsOpen: 0,
    lifetime: {
      fromMs: 0, servedTokens: 0, blockTokens: 0, busyMs: 0, bytes: 0, uptimeS: 0, energyUwh: 0, carbonUg: 0, renewablePermille: 302,
    },
  };
  const span = {
    get contribution() {
      return current;
    },
    on(name: string, l: (c: SpanContribution) => void) {
      if (name === 'contribution') listeners.push(l);
      return () => {};
    },
  } as unknown as SpanService;
  const network = {
    serveSpan: async (o: ServeSpanOptions) => {
      given.push(o);
      return span;
    },
  } as unknown as KwaaiNetwork;
  return {
    network,
    given,
    emit(c) {
      current = { ...current, ...c };
      for (const l of listeners) l(current);
    },
  };
}

describe('KwaaiNet.serveSpan', () => {
  const options = { modelUrl: 'http://127.0.0.1:1/model.gguf', start: 10, end: 20, engine: { moduleUrl: 'http://127.0.0.1:1/e.js' } };

  it('asks consent first, passes its consent and caps, and reports what the span served', async () => {
    const ai = new KwaaiNet({
      services: ['compute'], maxResources: 'cpu:30,memory:512', consentPrompt: async () => true, consentStorage: memoryConsentStorage(),
    });
    const events: ContributionEvent[] = [];
    ai.on('contribution', (e) => events.push(e));
    const d = networkDouble();
    await ai.serveSpan(d.network, options);
    assert.equal(d.given.length, 1);
    assert.equal(d.given[0]?.consent, ai.consent);
    assert.deepEqual(d.given[0]?.maxResources, ai.maxResources);
    assert.equal(events.at(-1)?.state, 'serving');
    d.emit({ steps: 16, tokens: 20, blockTokens: 200, busySeconds: 0.25 });
    const last = events.at(-1);
    assert.equal(last?.state, 'serving');
    assert.equal(last?.served?.blockTokens, 200);
    assert.equal(last?.contributedMs, 250);
    d.emit({ state: 'withdrawn' });
    assert.equal(events.at(-1)?.state, 'idle');
  });

  it('refuses without consent or without the compute service, and never reaches the network', async () => {
    const d = networkDouble();
    const declined = new KwaaiNet({ services: ['compute'], consentPrompt: async () => false, consentStorage: memoryConsentStorage() });
    await assert.rejects(declined.serveSpan(d.network, options), ConsentRequiredError);
    const storageOnly = new KwaaiNet({ services: ['storage'], consentPrompt: async () => true, consentStorage: memoryConsentStorage() });
    await assert.rejects(storageOnly.serveSpan(d.network, options), InvalidArgumentError);
    assert.equal(d.given.length, 0);
  });

  it('defaults to its own model and to the serving files next to the SDK (baseUrl: the CDN folder)', async () => {
    const sha = 'ab'.repeat(32);
    const ai = new KwaaiNet({
      services: ['compute'], baseUrl: 'https://cdn.test/kwaainet/v1/', modelUrl: 'https://site.test/m.gguf', modelSha256: sha,
      consentPrompt: async () => true, consentStorage: memoryConsentStorage(),
    });
    const d = networkDouble();
    await ai.serveSpan(d.network, { start: 0, end: 15 });
    const given = d.given[0];
    assert.equal(given?.modelUrl, 'https://site.test/m.gguf');
    assert.equal(given?.sha256, sha);
    assert.equal(given?.workerUrl, 'https://cdn.test/kwaainet/v1/kwaainet-span-worker.js');
    assert.deepEqual(given?.engine, {
      moduleUrl: 'https://cdn.test/kwaainet/v1/kwaainet_wasm_serve.js', wasmUrl: 'https://cdn.test/kwaainet/v1/kwaainet_wasm_serve_bg.wasm',
    });
    // What the caller names wins; another model's hash is not guessed.
    const other = networkDouble();
    await ai.serveSpan(other.network, { ...options, workerUrl: '/w.js' });
    assert.equal(other.given[0]?.workerUrl, '/w.js');
    assert.deepEqual(other.given[0]?.engine, options.engine);
    assert.equal(other.given[0]?.modelUrl, options.modelUrl);
    assert.equal(other.given[0]?.sha256, undefined);
    // No model of its own and none given: a clear error before consent or network.
    const bare = new KwaaiNet({ services: ['compute'], consentPrompt: async () => true, consentStorage: memoryConsentStorage() });
    const none = networkDouble();
    await assert.rejects(bare.serveSpan(none.network, { start: 0, end: 15 }), /modelUrl: this instance has no model/);
    assert.equal(none.given.length, 0);
  });
});
