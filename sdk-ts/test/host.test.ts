import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { EngineCrashedError, EngineError, ModelTooLargeError } from '../src/errors.js';
import { EngineHostHandler } from '../src/host/handler.js';
import type { Status } from '../src/kwaainet.js';
import { PROTOCOL_VERSION, type HostMessage, type Progress } from '../src/protocol.js';
import { ProxyEngine, type Transport } from '../src/proxy.js';
import { once } from 'node:events';
import { Worker } from 'node:worker_threads';
import type { DoubleOptions } from './engine-double.js';
import { MODEL, MODEL_SHA, MODEL_URL, hostPair, kwaaiWithHosts, localEngine, until, type HostPair } from './harness.js';

const v = PROTOCOL_VERSION;
const spec = { url: MODEL_URL, sha256: MODEL_SHA, maxCtx: 64 };
const engineSpec = { wasmUrl: 'https://cdn.test/e.wasm' };
const cleanup: Array<() => void> = [];
afterEach(() => {
  while (cleanup.length) cleanup.pop()?.();
});
const pair = (...args: Parameters<typeof hostPair>): HostPair => {
  const p = hostPair(...args);
  cleanup.push(() => p.close());
  return p;
};

describe('engine host ↔ proxy over a MessageChannel', () => {
  it('loads with progress, reports host and backend, keeps a loaded model', async () => {
    const p = pair();
    const progress: Progress[] = [];
    const info = await p.proxy.load(spec, engineSpec, { onProgress: (e) => progress.push(e) });
    assert.equal(info.host, 'worker');
    assert.equal(info.backend, 'cpu-wasm');
    assert.equal(info.model?.weightBytes, MODEL.byteLength);
    assert.equal(info.model?.sha256, MODEL_SHA);
    assert.deepEqual([...new Set(progress.map((e) => e.phase))], ['download', 'verify', 'load']);
    assert.equal(progress.at(-1)?.fraction, 1);
    await p.proxy.load(spec, engineSpec);
    assert.equal(p.stats.loads, 1, 'the same model is not parsed twice');
    assert.equal(await p.proxy.hasModel(MODEL_URL), true);
    await p.proxy.deleteModel(MODEL_URL);
    assert.equal(await p.proxy.hasModel(MODEL_URL), false);
    assert.equal((await p.proxy.status()).modelLoaded, false);
  });

  it('streams chunks, then done with usage', async () => {
    const p = pair();
    await p.proxy.load(spec, engineSpec);
    const chunks: string[] = [];
    const r = await p.proxy.generate({ messages: [{ role: 'user', content: 'hello world' }] }, { onChunk: (t) => chunks.push(t) });
    assert.equal(r.text, 'Echo: hello world');
    assert.equal(chunks.join(''), r.text);
    assert.ok(chunks.length > 1);
    assert.equal(r.finishReason, 'stop');
    assert.equal(r.usage.promptTokens, 11);
    assert.equal(r.usage.completionTokens, r.text.length);
    assert.equal(p.stats.generationsFreed, p.stats.starts);
  });

  it('turns engine failures into typed errors across the protocol', async () => {
    const p = pair({ double: { kvBytesPerToken: 1 << 20 } });
    await assert.rejects(p.proxy.load({ ...spec, memoryLimitBytes: 8 << 20 }, engineSpec), ModelTooLargeError);
    const q = pair();
    await assert.rejects(q.proxy.generate({ messages: [{ role: 'user', content: 'x' }] }), EngineError);
  });

  it('answers hostile messages with a protocol error and keeps working', async () => {
    const { local } = localEngine();
    const handler = new EngineHostHandler(local, { onProtocolError: () => {} });
    const sent: HostMessage[] = [];
    const conn = { send: (m: HostMessage) => void sent.push(m) };
    for (const junk of [null, 'x', { v, type: 'chat', id: 'j', request: { messages: 'no' } }, { v: 99, type: 'ping', id: 'k' }]) {
      await handler.handle(junk, conn, 'c');
    }
    assert.equal(sent.length, 4);
    assert.ok(sent.every((m) => m.type === 'error' && m.error.code === 'protocol'));
    assert.equal(sent[2]?.id, 'j');
    await handler.handle({ v, type: 'ping', id: 'ok' }, conn, 'c');
    assert.deepEqual(sent.at(-1), { v, type: 'pong', id: 'ok', instanceId: local.instanceId });
  });

  it('stops a generation whose page went away (no heartbeat, or alive() false)', async () => {
    for (const mode of ['silent', 'gone'] as const) {
      const { local, stats } = localEngine({ msPerToken: 1 });
      const handler = new EngineHostHandler(local, { heartbeatTimeoutMs: mode === 'silent' ? 60 : 60_000, watchdogIntervalMs: 10 });
      const sent: HostMessage[] = [];
      const conn = {
        send: (m: HostMessage) => void sent.push(m),
        ...(mode === 'gone' && { alive: async () => sent.length < 5 }),
      };
      await handler.handle({ v, type: 'load', id: 'l', model: spec, engine: engineSpec }, conn, 'tab');
      const t0 = performance.now();
      await handler.handle({ v, type: 'chat', id: 'c', request: { messages: [{ role: 'user', content: 'y'.repeat(5000) }] } }, conn, 'tab');
      assert.ok(performance.now() - t0 < 3000, `${mode}: ended early`);
      const last = sent.at(-1);
      assert.ok(last?.type === 'error' && last.error.code === 'aborted', `${mode}: ${JSON.stringify(last)}`);
      assert.equal(handler.inFlight, 0);
      // The engine stops at its next step (the reply does not wait for it).
      await until(() => stats.generationsFreed === 1);
      // The engine is free for the next page.
      await handler.handle({ v, type: 'chat', id: 'd', request: { messages: [{ role: 'user', content: 'hi' }] } }, { send: (m) => void sent.push(m) }, 'tab2');
      assert.equal(sent.at(-1)?.type, 'done');
      handler.close();
    }
  });

  it('declares a host that stops answering crashed', async () => {
    const p = pair({ proxy: { pingIntervalMs: 10, pingTimeoutMs: 150 } });
    await p.proxy.load(spec, engineSpec);
    const crashes: Error[] = [];
    p.proxy.onCrash((e) => void crashes.push(e));
    p.kill();
    const t0 = performance.now();
    await assert.rejects(p.proxy.generate({ messages: [{ role: 'user', content: 'x' }] }), EngineCrashedError);
    assert.ok(performance.now() - t0 < 1000);
    assert.ok(crashes.length === 1 && crashes[0] instanceof EngineCrashedError);
    await assert.rejects(p.proxy.status(), EngineCrashedError, 'fails fast afterwards');
  });

  /** A host on its own thread (as a dedicated worker or a service worker runs), so the
   *  proxy's clock keeps running while the engine blocks it. */
  async function threadHost(double: DoubleOptions): Promise<ProxyEngine> {
    const worker = new Worker(new URL('./host-worker.js', import.meta.url), { workerData: double });
    cleanup.push(() => void worker.terminate());
    await once(worker, 'message');
    const transport: Transport = {
      host: 'worker',
      send: (m) => worker.postMessage(m),
      listen: (onData, onFatal) => {
        worker.on('message', onData);
        worker.on('error', onFatal);
        return () => {
          worker.off('message', onData);
          worker.off('error', onFatal);
        };
      },
      close: () => void worker.terminate(),
    };
    return new ProxyEngine(transport, { pingIntervalMs: 10, pingTimeoutMs: 150, loadTimeoutMs: 5_000 });
  }

  it('the WebGPU engine: steps that block the host for longer than the ping timeout are waited out', async () => {
    // SwiftShader in Chromium: each WebGPU step keeps the host's thread busy for seconds.
    const gpu = await threadHost({ webgpu: true, msPerToken: 300 });
    assert.equal((await gpu.load(spec, engineSpec)).backend, 'webgpu');
    const crashes: Error[] = [];
    gpu.onCrash((e) => void crashes.push(e));
    assert.equal((await gpu.generate({ messages: [{ role: 'user', content: 'x' }] })).text, 'Echo: x');
    assert.equal(crashes.length, 0);
    await gpu.dispose();
    // The same blocking from the CPU engine after its prefill is a hung host.
    const cpu = await threadHost({ msPerToken: 300 });
    await cpu.load(spec, engineSpec);
    await assert.rejects(cpu.generate({ messages: [{ role: 'user', content: 'x' }] }), EngineCrashedError);
    await cpu.dispose();
  });

  it('waits out a long prefill (the host said it started) without declaring a crash', async () => {
    // The prefill blocks the host 4x longer than the ping timeout; the host runs on its
    // own thread, as a dedicated worker does, so the proxy's clock keeps running.
    const proxy = await threadHost({ prefillMs: 600 });
    await proxy.load(spec, engineSpec);
    const crashes: Error[] = [];
    proxy.onCrash((e) => void crashes.push(e));
    const r = await proxy.generate({ messages: [{ role: 'user', content: 'x' }] });
    assert.equal(r.text, 'Echo: x');
    assert.equal(crashes.length, 0);
    assert.match(await proxy.ping(), /^h-/);
    await proxy.dispose();
  });

  it('detects a restarted host (new instance id) as a crash', async () => {
    const p = pair();
    const first = await p.proxy.ping();
    assert.equal(first, p.local.instanceId);
    // The browser restarted the service worker: same channel, new host state.
    const { local } = localEngine();
    const fresh = new EngineHostHandler(local);
    (p.handler as unknown as { engine: unknown }).engine = fresh.engine;
    await assert.rejects(p.proxy.ping(), EngineCrashedError);
  });
});

describe('KwaaiNet: restart after a crash', () => {
  it('reports the crash, then restarts the host and reloads the model on the next request', async () => {
    const { ai, pairs, closeAll } = kwaaiWithHosts({ pingIntervalMs: 10, pingTimeoutMs: 300 }, { double: { msPerToken: 1 } });
    cleanup.push(closeAll);
    const states: Status['state'][] = [];
    ai.on('status', (s) => states.push(s.state));
    await ai.initialize();
    assert.equal((await ai.engineInfo())?.host, 'worker');
    const first = ai.chat.completions.create({ messages: [{ role: 'user', content: 'z'.repeat(2000) }] });
    await until(() => (pairs[0]?.stats.steps ?? 0) > 2);
    pairs[0]?.kill();
    await assert.rejects(first, EngineCrashedError);
    assert.ok(states.includes('crashed'));
    const second = await ai.chat.completions.create({ messages: [{ role: 'user', content: 'again' }] });
    assert.equal(second.choices[0]?.message.content, 'Echo: again');
    assert.equal(pairs.length, 2, 'a new host');
    assert.equal(pairs[1]?.stats.loads, 1, 'the model was reloaded there');
    assert.ok(states.includes('restarting'));
    await ai.dispose();
  });
});
