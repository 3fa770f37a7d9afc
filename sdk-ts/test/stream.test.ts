/** The host's model loading through the engine's streaming GgufLoader, the limits it
 *  reports, and a WebGPU device lost mid-generation. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { MemoryModelStore } from '../src/cache.js';
import { BackendLostError, EngineError } from '../src/errors.js';
import { LocalEngine } from '../src/local-engine.js';
import type { EngineSpec, Progress } from '../src/protocol.js';
import { engineDouble, type DoubleControl, type DoubleOptions, type DoubleStats } from './engine-double.js';
import { MODEL, MODEL_SHA, MODEL_URL, modelFetch, swPage } from './harness.js';

const spec = { url: MODEL_URL, sha256: MODEL_SHA, maxCtx: 64 };
const engineSpec: EngineSpec = { wasmUrl: 'https://cdn.test/cpu.wasm', webgpuWasmUrl: 'https://cdn.test/gpu.wasm' };

interface Host {
  local: LocalEngine;
  store: MemoryModelStore;
  cpu: DoubleStats;
  gpu: DoubleStats;
  gpuControl: DoubleControl;
  downloads: () => number;
}

function host(options: { cpu?: DoubleOptions; gpu?: DoubleOptions; store?: MemoryModelStore } = {}): Host {
  const cpu = engineDouble(options.cpu);
  const gpu = engineDouble({ webgpu: true, ...options.gpu });
  const store = options.store ?? new MemoryModelStore();
  let downloads = 0;
  const local = new LocalEngine({
    host: 'service-worker',
    loadModule: async () => {
      await cpu.module.default();
      return cpu.module;
    },
    loadWebGpuModule: async () => {
      await gpu.module.default();
      return gpu.module;
    },
    autoWebGpu: true,
    probeGpu: async () => ({ adapter: 'probe-adapter' }),
    store,
    fetch: async (...args) => {
      downloads++;
      return modelFetch(...args);
    },
    sliceMs: 5,
    devicePollMs: 5,
  });
  return { local, store, cpu: cpu.stats, gpu: gpu.stats, gpuControl: gpu.control, downloads: () => downloads };
}

describe('streaming model load', () => {
  it('a cached model goes to the engine chunk by chunk, verified on the way, never downloaded again', async () => {
    const store = new MemoryModelStore();
    const first = host({ store });
    await first.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.deepEqual([first.downloads(), first.cpu.streamedLoads], [1, 0], 'a download loads from its bytes');
    // A new host (a restarted service worker) finds the cached copy.
    const h = host({ store });
    const progress: Progress[] = [];
    const info = await h.local.load(spec, { ...engineSpec, backend: 'cpu' }, { onProgress: (p) => progress.push(p) });
    assert.equal(h.downloads(), 0);
    assert.equal(h.cpu.streamedLoads, 1);
    assert.ok(h.cpu.pushes >= MODEL.byteLength / (64 * 1024), `${h.cpu.pushes} chunks`);
    assert.equal(info.model?.sha256, MODEL_SHA);
    const phases = progress.map((p) => p.phase).filter((p, i, a) => p !== a[i - 1]);
    assert.deepEqual(phases, ['verify', 'load']);
    assert.ok(progress.some((p) => p.phase === 'verify' && p.loaded === MODEL.byteLength));
    assert.deepEqual(progress.at(-1), { phase: 'load', loaded: MODEL.byteLength, total: MODEL.byteLength, fraction: 1 });
    const r = await h.local.generate({ messages: [{ role: 'user', content: 'streamed' }] });
    assert.equal(r.text, 'Echo: streamed');
  });

  it('a corrupted cached copy fails its SHA-256 in the loader: deleted, downloaded again, loaded', async () => {
    const store = new MemoryModelStore();
    await host({ store }).local.load(spec, { ...engineSpec, backend: 'cpu' });
    store.corrupt(MODEL_URL, MODEL.byteLength >> 1);
    const h = host({ store });
    const info = await h.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.equal(h.downloads(), 1, 'fetched again');
    assert.equal(info.model?.sha256, MODEL_SHA);
    const cached = await store.get(MODEL_URL);
    assert.deepEqual(cached?.bytes, MODEL, 'the cache holds the real model again');
  });

  it('a corrupted header (the loader rejects the bytes) is told apart from a bad model by the digest', async () => {
    const store = new MemoryModelStore();
    await host({ store }).local.load(spec, { ...engineSpec, backend: 'cpu' });
    store.corrupt(MODEL_URL, 0); // "GGUF" → not a GGUF: push throws
    const h = host({ store });
    await h.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.equal(h.downloads(), 1);
    // Without a digest there is nothing to tell them apart with: the engine's error stands.
    const noSha = { url: MODEL_URL, maxCtx: 64 };
    const s2 = new MemoryModelStore();
    await host({ store: s2 }).local.load(noSha, { ...engineSpec, backend: 'cpu' });
    s2.corrupt(MODEL_URL, 0);
    await assert.rejects(host({ store: s2 }).local.load(noSha, { ...engineSpec, backend: 'cpu' }),
      (e: unknown) => e instanceof EngineError && /loading the model: gguf: not a GGUF/.test(e.message));
  });

  it('an engine module without GgufLoader loads from bytes as before', async () => {
    const store = new MemoryModelStore();
    await host({ store, cpu: { noStreaming: true } }).local.load(spec, { ...engineSpec, backend: 'cpu' });
    const h = host({ store, cpu: { noStreaming: true } });
    await h.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.deepEqual([h.downloads(), h.cpu.loads, h.cpu.streamedLoads], [0, 1, 0]);
  });

  it('WebGPU that cannot start after all: the CPU engine streams the cached copy again', async () => {
    const store = new MemoryModelStore();
    await host({ store }).local.load(spec, { ...engineSpec, backend: 'cpu' });
    const h = host({ store, gpu: { loadError: 'webgpu: no device' } });
    const info = await h.local.load(spec, engineSpec);
    assert.equal(info.backend, 'cpu-wasm');
    assert.deepEqual([h.gpu.loadCalls, h.cpu.streamedLoads, h.downloads()], [1, 1, 0]);
  });
});

describe('engine limits', () => {
  it('engineInfo carries the engine limits (both engines) and the WebGPU device limits', async () => {
    const h = host();
    assert.equal((await h.local.info())?.limits, null, 'nothing loaded yet');
    const gpu = await h.local.load(spec, engineSpec);
    assert.equal(gpu.backend, 'webgpu');
    assert.ok(gpu.limits && gpu.gpu);
    assert.deepEqual([gpu.limits.maxCtxTokens, gpu.limits.modelBytes, gpu.limits.simd128], [64, MODEL.byteLength, false]);
    assert.equal(gpu.limits.wasmMemoryMaxBytes, 2 ** 32);
    assert.deepEqual([gpu.gpu.adapter, gpu.gpu.fallbackAdapter, gpu.gpu.limits.maxComputeInvocationsPerWorkgroup],
      ['double-gpu', true, 256]);
    const cpu = await h.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.equal(cpu.gpu, null);
    assert.equal(cpu.limits?.simd128, true);
  });
});

describe('WebGPU device lost', () => {
  const variants = [
    ['its pending step never settles', {}],
    ['its pending step rejects', { lostStepRejects: true }],
    ['a readback fails before the browser says the device is lost', { lostStepRejects: 'readback' }],
  ] as const;
  for (const [name, gpu] of variants) {
    it(`mid-generation (${name}): BackendLostError, the model moves to the CPU engine, the retry answers`, async () => {
      const h = host({ gpu: { ...gpu, msPerToken: 2 } });
      await h.local.load(spec, engineSpec);
      const chunks: string[] = [];
      const pending = h.local.generate({ messages: [{ role: 'user', content: 'a long enough reply to lose the device in' }] }, {
        onChunk: (text) => {
          chunks.push(text);
          if (chunks.length === 3) h.gpuControl.loseDevice('Destroyed: test');
        },
      });
      await assert.rejects(pending, (e: unknown) => e instanceof BackendLostError && e.retriable &&
        /WebGPU device was lost \((webgpu: device lost \()?Destroyed: test/.test(e.message));
      const info = await h.local.info();
      assert.deepEqual([info?.backend, info?.model?.url, info?.gpu], ['cpu-wasm', MODEL_URL, null]);
      assert.match(info?.backendReason ?? '', /WebGPU device was lost/);
      assert.equal(h.cpu.loads, 1, 'reloaded on the CPU engine');
      assert.equal(h.downloads(), 1, 'from the cache');
      const r = await h.local.generate({ messages: [{ role: 'user', content: 'again' }] });
      assert.equal(r.text, 'Echo: again');
      // 'auto' stays on the CPU engine for this host's life.
      assert.equal((await h.local.load({ ...spec, maxCtx: 32 }, engineSpec)).backend, 'cpu-wasm');
    });
  }

  it('lost between requests: the next request finds it before starting', async () => {
    const h = host();
    await h.local.load(spec, engineSpec);
    h.gpuControl.loseDevice();
    await assert.rejects(h.local.generate({ messages: [{ role: 'user', content: 'x' }] }), BackendLostError);
    assert.equal(h.gpu.starts, 0);
    assert.equal((await h.local.generate({ messages: [{ role: 'user', content: 'y' }] })).text, 'Echo: y');
  });

  it('the page gets BackendLostError and a ready status with the new backend; its retry succeeds', async () => {
    const h = host({ gpu: { msPerToken: 2 } });
    const { ai, statuses, close } = swPage(h.local, 2000);
    try {
      await ai.initialize();
      const before = statuses.at(-1);
      assert.ok(before?.state === 'ready' && before.backend === 'webgpu');
      assert.equal(before.gpu?.limits.maxBufferSize, 268435456, 'the ready status carries the device limits');
      assert.equal(before.limits?.maxCtxTokens, 2048);
      const stream = await ai.chat.completions.create({
        messages: [{ role: 'user', content: 'a reply long enough to lose the device in the middle of it' }], stream: true,
      });
      let n = 0;
      await assert.rejects((async () => {
        for await (const _chunk of stream) if (++n === 3) h.gpuControl.loseDevice('Destroyed: page test');
      })(), (e: unknown) => e instanceof BackendLostError && e.code === 'backend-lost');
      const after = statuses.at(-1);
      assert.ok(after?.state === 'ready');
      assert.deepEqual([after.backend, after.gpu, after.modelLoaded], ['cpu-wasm', null, true]);
      assert.match(after.backendReason, /WebGPU device was lost \(.*Destroyed: page test/);
      const info = await ai.engineInfo();
      assert.equal(info?.backend, 'cpu-wasm');
      const r = await ai.chat.completions.create({ messages: [{ role: 'user', content: 'retry' }] });
      assert.equal(r.choices[0]?.message.content, 'Echo: retry');
    } finally {
      await close();
    }
  });
});
