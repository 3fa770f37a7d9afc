/** Choosing the engine module in a host: WebGPU in the service worker when it has an
 *  adapter, the CPU engine otherwise, and the fallback when the WebGPU engine cannot start. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ASSETS, hostUrls, packagedHostUrls } from '../src/assets.js';
import { MemoryModelStore } from '../src/cache.js';
import { UnsupportedError } from '../src/errors.js';
import type { GpuProbe } from '../src/host/glue.js';
import { LocalEngine } from '../src/local-engine.js';
import type { EngineSpec, HostKind } from '../src/protocol.js';
import { engineDouble, type DoubleOptions, type DoubleStats } from './engine-double.js';
import { MODEL_SHA, MODEL_URL, modelFetch, swPage } from './harness.js';

const ADAPTER: GpuProbe = { adapter: 'probe-vendor probe-arch' };
const spec = { url: MODEL_URL, sha256: MODEL_SHA, maxCtx: 64 };
const engineSpec: EngineSpec = { wasmUrl: 'https://cdn.test/cpu.wasm', webgpuWasmUrl: 'https://cdn.test/gpu.wasm' };

interface Host {
  local: LocalEngine;
  cpu: DoubleStats;
  gpu: DoubleStats;
  /** The .wasm URLs each module was initialised from. */
  sources: { cpu: string[]; gpu: string[] };
}

/** A LocalEngine like the service worker's (both modules, 'auto' tries WebGPU), or like
 *  another host's (`gpuModule: false`: CPU only; `autoWebGpu: false`: WebGPU on request). */
function host(options: {
  host?: HostKind; gpu?: DoubleOptions; probe?: GpuProbe | null; gpuModule?: boolean; autoWebGpu?: boolean;
} = {}): Host {
  const cpu = engineDouble();
  const gpu = engineDouble({ webgpu: true, ...options.gpu });
  const sources = { cpu: [] as string[], gpu: [] as string[] };
  const local = new LocalEngine({
    host: options.host ?? 'service-worker',
    loadModule: async (source) => {
      sources.cpu.push(source.wasmUrl);
      await cpu.module.default();
      return cpu.module;
    },
    ...(options.gpuModule !== false && {
      loadWebGpuModule: async (source) => {
        sources.gpu.push(source.wasmUrl);
        await gpu.module.default();
        return gpu.module;
      },
    }),
    autoWebGpu: options.autoWebGpu ?? true,
    probeGpu: async () => (options.probe === undefined ? ADAPTER : options.probe),
    store: new MemoryModelStore(),
    fetch: modelFetch,
    sliceMs: 5,
  });
  return { local, cpu: cpu.stats, gpu: gpu.stats, sources };
}

async function echo(local: LocalEngine, content = 'hi there'): Promise<string> {
  const r = await local.generate({ messages: [{ role: 'user', content }] });
  return r.text;
}

describe('engine selection in the host', () => {
  it('service worker with an adapter: the WebGPU module, async load and steps, never the CPU module', async () => {
    const h = host();
    const before = await h.local.info();
    assert.equal(before?.backend, 'webgpu', 'before a load: the backend the load will try');
    assert.equal(before?.adapter, ADAPTER.adapter);
    const info = await h.local.load(spec, engineSpec);
    assert.deepEqual([info.host, info.backend, info.gpuAvailable, info.simd128], ['service-worker', 'webgpu', true, false]);
    assert.equal(info.adapter, 'double-vendor double-gpu', 'the adapter the engine reports');
    assert.match(info.backendReason, /WebGPU adapter in the service-worker/);
    assert.deepEqual(h.sources, { cpu: [], gpu: ['https://cdn.test/gpu.wasm'] });
    assert.equal(h.cpu.inits, 0);
    assert.equal(await echo(h.local), 'Echo: hi there');
    assert.ok(h.gpu.steps > 1);
    // Two requests at once run one after the other: the engine never sees a second step.
    const both = await Promise.all([echo(h.local, 'one'), echo(h.local, 'two')]);
    assert.deepEqual(both, ['Echo: one', 'Echo: two']);
    assert.equal(h.gpu.maxConcurrentSteps, 1);
    assert.equal(h.gpu.generationsFreed, h.gpu.starts);
  });

  it('the WebGPU engine rejects with "webgpu:" (no device after all): the same load falls back to the CPU engine', async () => {
    const h = host({ gpu: { loadError: 'webgpu: no device: the adapter was lost' } });
    const info = await h.local.load(spec, engineSpec);
    assert.deepEqual([info.backend, info.simd128, info.adapter], ['cpu-wasm', true, null]);
    assert.match(info.backendReason, /^the WebGPU engine could not start \(webgpu: no device: the adapter was lost\)$/);
    assert.equal(info.gpuAvailable, true);
    assert.deepEqual([h.gpu.loadCalls, h.cpu.loads], [1, 1]);
    assert.equal(await echo(h.local), 'Echo: hi there');
    // The next load (another context size) goes straight to the CPU engine, with the reason.
    const again = await h.local.load({ ...spec, maxCtx: 32 }, engineSpec);
    assert.equal(again.backend, 'cpu-wasm');
    assert.match(again.backendReason, /webgpu: no device/);
    assert.deepEqual([h.gpu.loadCalls, h.cpu.loads], [1, 2]);
  });

  it('a WebGPU module that does not initialise: CPU engine, and the reason', async () => {
    const h = host({ gpu: { initError: 'HTTP 404 for gpu.wasm' } });
    const info = await h.local.load(spec, engineSpec);
    assert.equal(info.backend, 'cpu-wasm');
    assert.match(info.backendReason, /the WebGPU engine did not start \(HTTP 404 for gpu\.wasm\)/);
    assert.equal(h.cpu.loads, 1);
  });

  it('other load errors are not hidden by a fallback', async () => {
    const h = host({ gpu: { loadError: 'gguf: bad magic at offset 0' } });
    await assert.rejects(h.local.load(spec, engineSpec), /loading the model: gguf: bad magic/);
    assert.equal(h.cpu.inits, 0);
  });

  it('no adapter in the service worker: the CPU engine; the WebGPU module is never fetched', async () => {
    const h = host({ probe: null });
    const info = await h.local.load(spec, engineSpec);
    assert.deepEqual([info.backend, info.gpuAvailable, info.adapter], ['cpu-wasm', false, null]);
    assert.match(info.backendReason, /no WebGPU adapter in the service-worker/);
    assert.equal(h.gpu.inits, 0);
  });

  it('a bundle without the WebGPU engine (no webgpuWasmUrl): the CPU engine', async () => {
    const h = host();
    const info = await h.local.load(spec, { wasmUrl: engineSpec.wasmUrl });
    assert.equal(info.backend, 'cpu-wasm');
    assert.equal(info.backendReason, 'this bundle has no WebGPU engine');
    assert.equal(h.gpu.inits, 0);
  });

  it('engine "cpu" in the service worker with an adapter: the CPU engine, as requested', async () => {
    const h = host();
    const info = await h.local.load(spec, { ...engineSpec, backend: 'cpu' });
    assert.deepEqual([info.backend, info.backendReason, info.gpuAvailable], ['cpu-wasm', 'requested', true]);
    assert.equal(h.gpu.inits, 0);
    // Asking for WebGPU then reloads the same model on it.
    const gpu = await h.local.load(spec, { ...engineSpec, backend: 'webgpu' });
    assert.deepEqual([gpu.backend, gpu.backendReason], ['webgpu', 'requested']);
    assert.equal(h.cpu.enginesFreed, 1);
    // 'auto' keeps what is loaded.
    assert.equal((await h.local.load(spec, engineSpec)).backend, 'webgpu');
    assert.equal(h.gpu.loads, 1);
  });

  it('engine "webgpu" fails instead of falling back', async () => {
    const noAdapter = host({ probe: null });
    await assert.rejects(noAdapter.local.load(spec, { ...engineSpec, backend: 'webgpu' }),
      (e: unknown) => e instanceof UnsupportedError && /^webgpu: no WebGPU adapter/.test(e.message));
    const noDevice = host({ gpu: { loadError: 'webgpu: requestDevice failed' } });
    await assert.rejects(noDevice.local.load(spec, { ...engineSpec, backend: 'webgpu' }),
      (e: unknown) => e instanceof UnsupportedError && e.message === 'webgpu: requestDevice failed');
    assert.equal(noDevice.cpu.inits, 0);
  });

  it('dedicated worker: the CPU engine even with an adapter; WebGPU cannot be forced there', async () => {
    const h = host({ host: 'worker', gpuModule: false, autoWebGpu: false });
    const info = await h.local.load(spec, engineSpec);
    assert.deepEqual([info.host, info.backend, info.gpuAvailable], ['worker', 'cpu-wasm', true]);
    assert.equal(info.backendReason, 'the worker host has no WebGPU engine');
    const other = host({ host: 'worker', gpuModule: false, autoWebGpu: false });
    await assert.rejects(other.local.load(spec, { ...engineSpec, backend: 'webgpu' }), UnsupportedError);
  });

  it('in-page: the CPU engine unless WebGPU is requested', async () => {
    const h = host({ host: 'in-page', autoWebGpu: false });
    const info = await h.local.load(spec, engineSpec);
    assert.equal(info.backend, 'cpu-wasm');
    assert.match(info.backendReason, /runs the CPU engine unless WebGPU is requested/);
    const gpu = await h.local.load(spec, { ...engineSpec, backend: 'webgpu' });
    assert.equal(gpu.backend, 'webgpu');
  });
});

describe('engine selection seen from the page', () => {
  it('engineInfo() and the ready status carry backend, adapter, host and reasons across the protocol', async () => {
    const h = host();
    const { ai, statuses, close } = swPage(h.local, 500);
    try {
      await ai.initialize();
      const info = await ai.engineInfo();
      assert.deepEqual([info?.host, info?.backend, info?.adapter], ['service-worker', 'webgpu', 'double-vendor double-gpu']);
      assert.equal(info?.reason, 'WebGPU is available in the service worker');
      assert.match(info?.backendReason ?? '', /WebGPU adapter/);
      const ready = statuses.at(-1);
      assert.ok(ready?.state === 'ready');
      assert.deepEqual([ready.backend, ready.adapter, ready.modelLoaded], ['webgpu', 'double-vendor double-gpu', true]);
      assert.match(ready.backendReason, /WebGPU adapter/);
      // The page asked for the WebGPU .wasm next to the SDK (no baked hashes: an npm build).
      assert.deepEqual(h.sources.gpu, ['https://cdn.test/v0/kwaainet_wasm_webgpu_bg.wasm']);
      const r = await ai.chat.completions.create({ messages: [{ role: 'user', content: 'gpu' }] });
      assert.equal(r.choices[0]?.message.content, 'Echo: gpu');
    } finally {
      await close();
    }
  });

  it('hostUrls: the WebGPU .wasm only where the build has it, with its baked hash', () => {
    const base = 'https://cdn.test/v1/';
    assert.equal(hostUrls(base, null, {}).webgpuWasm, `${base}kwaainet_wasm_webgpu_bg.wasm`, 'unknown build: try it');
    const cpuOnly = hostUrls(base, null, { 'kwaainet-worker.js': 'sha384-w', 'kwaainet_wasm_bg.wasm': 'sha384-c' });
    assert.equal(cpuOnly.webgpuWasm, null);
    const both = hostUrls(base, null, {
      'kwaainet-worker.js': 'sha384-w', 'kwaainet_wasm_bg.wasm': 'sha384-c', 'kwaainet_wasm_webgpu_bg.wasm': 'sha384-g',
    });
    assert.equal(both.webgpuWasm, `${base}kwaainet_wasm_webgpu_bg.wasm`);
    assert.equal(both.webgpuWasmIntegrity, 'sha384-g');
  });

  it('packagedHostUrls: the files next to the SDK module, the service-worker URL as given', () => {
    // Here the module is a file (dist/ts-test/src/packaged.js); in an app, where its bundler
    // put the package's copies. A workspace build bakes no hashes, so none are claimed.
    const urls = packagedHostUrls(undefined);
    assert.ok(urls);
    const dir = new URL('../src/', import.meta.url).href;
    assert.equal(urls.worker, `${dir}${ASSETS.worker}`);
    assert.equal(urls.serviceWorker, `${dir}${ASSETS.serviceWorker}`);
    assert.equal(urls.wasm, `${dir}${ASSETS.wasm}`);
    assert.equal(urls.webgpuWasm, `${dir}${ASSETS.webgpuWasm}`, 'unknown build: try it');
    assert.equal(urls.glue, `${dir}${ASSETS.glue}`);
    assert.equal(urls.workerIntegrity, undefined);
    assert.equal(urls.wasmIntegrity, undefined);
    assert.equal(packagedHostUrls(null)?.serviceWorker, null);
    assert.equal(packagedHostUrls('/sw.js')?.serviceWorker, '/sw.js');
  });
});

describe('threads of the CPU engine', () => {
  const threadedSpec: EngineSpec = { wasmUrl: 'https://cdn.test/cpu.wasm', threadsGlueUrl: 'https://cdn.test/mt.js', threadsWasmUrl: 'https://cdn.test/mt.wasm' };
  const g = globalThis as { crossOriginIsolated?: boolean };

  /** A worker-like host whose multi-threaded module reports `threads` (or fails to start). */
  function threaded(start: (threads: number) => Promise<number>): { local: LocalEngine; asked: number[]; single: DoubleStats } {
    const cpu = engineDouble();
    const mt = engineDouble();
    const asked: number[] = [];
    const local = new LocalEngine({
      host: 'worker',
      loadModule: async () => {
        await cpu.module.default();
        return cpu.module;
      },
      loadThreadedModule: async (source) => {
        asked.push(source.threads);
        assert.equal(source.glueUrl, 'https://cdn.test/mt.js');
        const n = await start(source.threads);
        await mt.module.default();
        return { ...mt.module, engineThreads: () => n };
      },
      store: new MemoryModelStore(),
      fetch: modelFetch,
      sliceMs: 5,
    });
    return { local, asked, single: cpu.stats };
  }

  /** Runs `run` as in a page that is (or is not) cross-origin isolated, on `cores` cores. */
  async function isolated<T>(value: boolean | undefined, run: () => Promise<T>, cores = 4): Promise<T> {
    const saved = ['crossOriginIsolated', 'navigator'].map((k) => [k, Object.getOwnPropertyDescriptor(globalThis, k)] as const);
    Object.defineProperty(globalThis, 'crossOriginIsolated', { value, configurable: true });
    Object.defineProperty(globalThis, 'navigator', { value: { hardwareConcurrency: cores }, configurable: true });
    try {
      return await run();
    } finally {
      for (const [k, d] of saved) {
        if (d) Object.defineProperty(globalThis, k, d);
        else delete (g as Record<string, unknown>)[k];
      }
    }
  }

  it('cross-origin isolated: the multi-threaded module with the threads asked for (capped by the cores)', async () => {
    const h = threaded(async (n) => n);
    const info = await isolated(true, () => h.local.load(spec, { ...threadedSpec, threads: 2 }));
    assert.deepEqual(h.asked, [2]);
    assert.equal(info.threads, 2, 'what the module reports');
    assert.equal(info.threadsReason, 'cross-origin isolated, 4 cores, 2 requested');
    assert.equal(h.single.inits, 0, 'the single-threaded module is not loaded');
    assert.equal(await echo(h.local), 'Echo: hi there');
    // Default: every core (at most 16); more than the cores asked for: the cores.
    for (const [cores, threads, want] of [[4, undefined, 4], [32, undefined, 16], [2, 8, 2]] as const) {
      const other = threaded(async (n) => n);
      const i = await isolated(true, () => other.local.load(spec, { ...threadedSpec, ...(threads !== undefined && { threads }) }), cores);
      assert.deepEqual([other.asked, i.threads], [[want], want]);
    }
    const one = threaded(async (n) => n);
    const i = await isolated(true, () => one.local.load(spec, threadedSpec), 1);
    assert.deepEqual([one.asked, i.threads, i.threadsReason], [[], 1, 'one core']);
  });

  it('not isolated, one thread asked for, or no threaded build: one thread, and why', async () => {
    const cases: Array<[boolean | undefined, EngineSpec, RegExp]> = [
      [false, threadedSpec, /not cross-origin isolated \(COOP\/COEP/],
      [undefined, threadedSpec, /not cross-origin isolated/],
      [true, { ...threadedSpec, threads: 1 }, /^one thread requested$/],
      [true, { wasmUrl: 'https://cdn.test/cpu.wasm' }, /^this bundle has no multi-threaded engine$/],
    ];
    for (const [iso, engine, reason] of cases) {
      const h = threaded(async (n) => n);
      const info = await isolated(iso, () => h.local.load(spec, engine));
      assert.deepEqual([info.backend, info.threads, h.asked], ['cpu-wasm', 1, []]);
      assert.match(info.threadsReason, reason);
      assert.equal(h.single.inits, 1);
    }
  });

  it('a pool that fails to start falls back to the single-threaded module and says so', async () => {
    const h = threaded(async () => {
      throw new Error('its 2 workers did not start within 30 s');
    });
    const info = await isolated(true, () => h.local.load(spec, { ...threadedSpec, threads: 2 }));
    assert.deepEqual([h.asked, info.threads], [[2], 1]);
    assert.match(info.threadsReason, /^the multi-threaded engine did not start \(.*workers did not start/);
    assert.equal(h.single.inits, 1);
    assert.equal(await echo(h.local), 'Echo: hi there');
  });

  it('relaxed SIMD: where the engine validates it, the relaxed builds\' .wasm, single- and multi-threaded; elsewhere the plain ones', async () => {
    const relaxedSpec: EngineSpec = {
      ...threadedSpec, relaxedWasmUrl: 'https://cdn.test/cpu-relaxed.wasm', relaxedWasmIntegrity: 'sha384-r',
      threadsRelaxedWasmUrl: 'https://cdn.test/mt-relaxed.wasm', threadsRelaxedWasmIntegrity: 'sha384-t',
    };
    const validate = WebAssembly.validate;
    const withRelaxed = async <T>(on: boolean, run: () => Promise<T>): Promise<T> => {
      (WebAssembly as { validate: unknown }).validate = (bytes: BufferSource) => on || validate(bytes);
      try {
        return await run();
      } finally {
        (WebAssembly as { validate: unknown }).validate = validate;
      }
    };
    // Node 20 itself has no relaxed SIMD (only behind a flag): the probe says so.
    const { hasRelaxedSimd } = await import('../src/local-engine.js');
    assert.equal(hasRelaxedSimd(), false);
    assert.equal(await withRelaxed(true, async () => hasRelaxedSimd()), true);
    for (const [on, threads, want] of [
      [true, 2, { wasmUrl: 'https://cdn.test/mt-relaxed.wasm', wasmIntegrity: 'sha384-t' }],
      [false, 2, { wasmUrl: 'https://cdn.test/mt.wasm' }],
      [true, 1, { wasmUrl: 'https://cdn.test/cpu-relaxed.wasm', wasmIntegrity: 'sha384-r' }],
      [false, 1, { wasmUrl: 'https://cdn.test/cpu.wasm' }],
    ] as const) {
      const seen: Array<{ wasmUrl: string; wasmIntegrity?: string }> = [];
      const cpu = engineDouble();
      const local = new LocalEngine({
        host: 'worker',
        loadModule: async (source) => {
          seen.push({ ...source });
          await cpu.module.default();
          return cpu.module;
        },
        loadThreadedModule: async (source) => {
          seen.push({ wasmUrl: source.wasmUrl, ...(source.wasmIntegrity !== undefined && { wasmIntegrity: source.wasmIntegrity }) });
          await cpu.module.default();
          return { ...cpu.module, engineThreads: () => source.threads };
        },
        store: new MemoryModelStore(),
        fetch: modelFetch,
        sliceMs: 5,
      });
      await withRelaxed(on, () => isolated(true, () => local.load(spec, { ...relaxedSpec, threads })));
      assert.deepEqual(seen, [want], `relaxed SIMD ${on}, ${threads} thread(s)`);
    }
  });

  it('hosts that cannot run it say why', async () => {
    const sw = host();
    assert.match((await sw.local.load(spec, { ...engineSpec, backend: 'cpu' })).threadsReason, /service worker cannot start the web workers/);
    const page = host({ host: 'in-page', autoWebGpu: false });
    assert.match((await page.local.load(spec, engineSpec)).threadsReason, /in-page host runs the CPU engine on one thread/);
  });
});
