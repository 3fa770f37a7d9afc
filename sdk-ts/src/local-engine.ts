/**
 * The engine in the current JS context: model delivery (download.ts) + the WASM engine from
 * the contract (wasm-engine.d.ts). Runs in the page for the 'in-page' host, and inside a
 * dedicated worker or a service worker behind `EngineHostHandler` for the others.
 *
 * Two engine modules: the CPU one, and the WebGPU one where the host has it
 * (`loadWebGpuModule`). 'auto' tries WebGPU only where `autoWebGpu` says so (the service
 * worker) and an adapter is there; when the WebGPU module cannot start (code `webgpu`: no
 * adapter or device after all) the same load falls back to the CPU module, and
 * `info().backendReason` says why.
 *
 * Generation is a loop of `WasmGeneration.step(n)` calls with a yield to the event loop
 * between them: that is where an abort message (or AbortSignal) gets a chance to land.
 * `n` adapts so one step takes about `sliceMs`; the first step produces one token so the
 * first text arrives as soon as the prefill is done.
 */

import { startRequest } from './start-request.js';
import {
  AbortError, BackendLostError, EngineError, KwaaiNetError, UnsupportedError, abortErrorFrom, throwIfAborted,
  toKwaaiNetError,
} from './errors.js';
import { describeWasmError, fromWasmError, wasmErrorCode } from './wasm-errors.js';
import type { Engine, GenerateOptions, GenerationResult, LoadOptions } from './engine.js';
import { fetchModel, progressEvent, sha256Hex } from './download.js';
import { defaultModelStore, type ModelStore } from './cache.js';
import type { GpuProbe, ModuleSource, ThreadedSource } from './host/glue.js';
import type {
  Backend, EngineInfo, EngineLimits, EnginePreference, EngineSpec, GenerateRequest, GpuInfo, HostKind, HostStatus,
  ModelInfo, ModelSpec, Progress,
} from './protocol.js';
import { MAX_THREADS } from './protocol.js';
import { assertModelFits } from './resources.js';
import { isRecord } from './validate.js';
import type {
  WasmEngine, WasmEngineInfo, WasmEngineModule, WasmGeneration, WasmStepResult,
} from './wasm-engine.js';

export interface LocalEngineOptions {
  host: HostKind;
  /** Returns the CPU engine module, initialised from `source` (called again only after a failure). */
  loadModule: (source: ModuleSource) => Promise<WasmEngineModule>;
  /** Returns the WebGPU engine module; absent where this host has none. */
  loadWebGpuModule?: (source: ModuleSource) => Promise<WasmEngineModule>;
  /** Returns the multi-threaded CPU engine with its pool of `threads` started; absent
   *  where this host cannot run it (no web workers: a service worker; a thread that must
   *  never block: the page). */
  loadThreadedModule?: (source: ThreadedSource) => Promise<WasmEngineModule>;
  /** Whether 'auto' tries WebGPU here (default false: only the service-worker host does). */
  autoWebGpu?: boolean;
  store?: ModelStore;
  fetch?: typeof fetch;
  /** The WebGPU adapter here, or null (default: none). */
  probeGpu?: () => Promise<GpuProbe | null>;
  /** Target duration of one `step(n)` call (default 40 ms). */
  sliceMs?: number;
  instanceId?: string;
  now?: () => number;
  /** Download retry delay (tests shorten it). */
  retryDelayMs?: number;
  /** How often a pending WebGPU step checks whether the device was lost (default 100 ms). */
  devicePollMs?: number;
}

export function randomId(prefix = ''): string {
  const bytes = new Uint8Array(9);
  globalThis.crypto.getRandomValues(bytes);
  let s = '';
  for (const b of bytes) s += b.toString(36).padStart(2, '0');
  return `${prefix}${s}`;
}

/** Lets queued messages (an abort) run between engine steps. */
export function yieldToEventLoop(): Promise<void> {
  const g = globalThis as { setImmediate?: (cb: () => void) => unknown };
  if (typeof g.setImmediate === 'function') {
    const setImmediate = g.setImmediate;
    return new Promise((resolve) => void setImmediate(resolve));
  }
  if (typeof MessageChannel === 'function') {
    // Not clamped to 4 ms like a nested setTimeout(0).
    return new Promise((resolve) => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => {
        ch.port1.close();
        resolve();
      };
      ch.port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** The engine module's `info()`. Its shape is generated from the Rust types
 *  (engine-types.ts, kept equal to them by a Rust test), so only the value's presence is
 *  checked here: a module that is not an engine fails to load long before. */
function checkInfo(raw: unknown): WasmEngineInfo {
  if (!isRecord(raw) || !isRecord(raw.limits)) throw new EngineError('engine: info() returned an unexpected value');
  return raw as unknown as WasmEngineInfo;
}

/** A step's result: typed like `info()` (engine-types.ts); only its presence is checked. */
function checkStep(raw: unknown): WasmStepResult {
  if (!isRecord(raw)) throw new EngineError('engine: step() returned an unexpected value');
  return raw as unknown as WasmStepResult;
}

/** An engine module's error (its `code`: wasm-errors.ts) as a typed error; anything else
 *  (a trap, a JS error) as an EngineError. `during` says what the SDK was doing. */
function engineError(err: unknown, during: string): KwaaiNetError {
  if (err instanceof KwaaiNetError) return err;
  const code = wasmErrorCode(err);
  if (code !== null) return fromWasmError(code, err, during);
  return new EngineError(`${during}: ${describeWasmError(err)}`, { cause: err });
}

interface Loaded {
  engine: WasmEngine;
  spec: ModelSpec;
  /** Where the engine modules came from (a CPU reload after a lost device needs it). */
  engineSpec: EngineSpec;
  limits: EngineLimits;
  gpu: GpuInfo | null;
  info: ModelInfo;
  module: WasmEngineModule;
  backend: Backend;
  backendReason: string;
  adapter: string | null;
  simd128: boolean;
}

/** Which module a load tries first, and why. */
interface Plan {
  backend: Backend;
  reason: string;
}

/** The WebGPU module has no adapter or device (code `webgpu`). */
const isWebGpuError = (err: unknown): boolean => wasmErrorCode(err) === 'webgpu';
/** Text for reasons and messages, the engine's code in front where it has one. */
const messageOf = describeWasmError;
/** A WebGPU step that failed on the device: a lost device (`webgpu`), or burn's runtime
 *  failing to run or read back (`backend`: "readback: ... the staging buffer could not be
 *  mapped", seen in Chromium when the device is destroyed mid-step, before its `lost`
 *  promise settles). */
const isGpuFailure = (err: unknown): boolean => {
  const code = wasmErrorCode(err);
  return code === 'webgpu' || code === 'backend';
};
/** A wasm trap (a panic in the engine, e.g. on a device that went away). */
const isTrap = (err: unknown): boolean => typeof WebAssembly !== 'undefined' && err instanceof WebAssembly.RuntimeError;

/** A pending WebGPU step found the device lost (see `LocalEngine.stepOnce`). */
class DeviceLost extends Error {}

/** What a parse produced. */
interface Parsed {
  module: WasmEngineModule;
  wasm: WasmEngine;
  sha256: string | null;
}

export class LocalEngine implements Engine {
  readonly host: HostKind;
  readonly instanceId: string;
  private readonly options: LocalEngineOptions;
  private readonly store: ModelStore;
  private readonly modules = new Map<Backend, Promise<WasmEngineModule>>();
  private loaded: Loaded | null = null;
  private gpu: Promise<GpuProbe | null> | null = null;
  /** Why the WebGPU engine failed here ('auto' then stays on the CPU engine). */
  private gpuFailure: string | null = null;
  /** The threads the CPU module runs on, and why (set when it is initialised). */
  private threading: { threads: number; reason: string } | null = null;
  private preference: EnginePreference = 'auto';
  /** Serialises loads and generations: the engine runs one at a time. */
  private queue: Promise<unknown> = Promise.resolve();
  private busy = false;
  private disposed = false;

  constructor(options: LocalEngineOptions) {
    this.options = options;
    this.host = options.host;
    this.store = options.store ?? defaultModelStore();
    this.instanceId = options.instanceId ?? randomId('h-');
  }

  private now(): number {
    return (this.options.now ?? (() => performance.now()))();
  }

  private gpuProbe(): Promise<GpuProbe | null> {
    this.gpu ??= (this.options.probeGpu ?? (async () => null))().catch(() => null);
    return this.gpu;
  }

  private async gpuAvailable(): Promise<boolean> {
    return (await this.gpuProbe()) !== null;
  }

  /** The backend a load with `preference` tries first. Throws UnsupportedError when
   *  'webgpu' is asked for where it cannot run. */
  private async plan(preference: EnginePreference, engine?: EngineSpec): Promise<Plan> {
    const where = this.host === 'in-page' ? 'the page' : `the ${this.host}`;
    const noGpu = (reason: string): Plan => {
      if (preference === 'webgpu') throw new UnsupportedError(`webgpu: ${reason}`);
      return { backend: 'cpu-wasm', reason };
    };
    if (preference === 'cpu') return { backend: 'cpu-wasm', reason: 'requested' };
    if (!this.options.loadWebGpuModule) return noGpu(`the ${this.host} host has no WebGPU engine`);
    if (preference === 'auto' && !this.options.autoWebGpu) {
      return { backend: 'cpu-wasm', reason: `the ${this.host} host runs the CPU engine unless WebGPU is requested` };
    }
    if (engine && engine.webgpuWasmUrl === undefined) return noGpu('this bundle has no WebGPU engine');
    if (preference === 'auto' && this.gpuFailure !== null) return { backend: 'cpu-wasm', reason: this.gpuFailure };
    if ((await this.gpuProbe()) === null) return noGpu(`no WebGPU adapter in ${where}`);
    return { backend: 'webgpu', reason: preference === 'webgpu' ? 'requested' : `WebGPU adapter in ${where}` };
  }

  /** The module for `backend`, initialised (once; again after a failure). */
  private module(backend: Backend, engine: EngineSpec): Promise<WasmEngineModule> {
    let m = this.modules.get(backend);
    if (!m) {
      const loader = backend === 'webgpu' ? this.options.loadWebGpuModule : this.options.loadModule;
      const source: ModuleSource | null = backend === 'webgpu'
        ? (engine.webgpuWasmUrl === undefined ? null : {
          wasmUrl: engine.webgpuWasmUrl,
          ...(engine.webgpuWasmIntegrity !== undefined && { wasmIntegrity: engine.webgpuWasmIntegrity }),
        })
        : { wasmUrl: engine.wasmUrl, ...(engine.wasmIntegrity !== undefined && { wasmIntegrity: engine.wasmIntegrity }) };
      const mine = backend === 'cpu-wasm' && source
        ? this.cpuModule(engine, source)
        : loader && source ? loader(source) : Promise.reject(new UnsupportedError(`no ${backend} engine here`));
      this.modules.set(backend, mine);
      mine.catch(() => {
        if (this.modules.get(backend) === mine) this.modules.delete(backend); // retry on the next load
      });
      m = mine;
    }
    return m;
  }

  /** How many threads the CPU engine may run on here, and why. */
  private threadsPlan(engine: EngineSpec): { threads: number; reason: string } {
    const g = globalThis as { crossOriginIsolated?: boolean; navigator?: { hardwareConcurrency?: number } };
    const cores = Math.max(1, Math.min(MAX_THREADS, Math.floor(g.navigator?.hardwareConcurrency ?? 1)));
    const one = (reason: string): { threads: number; reason: string } => ({ threads: 1, reason });
    if (!this.options.loadThreadedModule) {
      return one(this.host === 'service-worker'
        ? 'a service worker cannot start the web workers of the multi-threaded engine'
        : `the ${this.host} host runs the CPU engine on one thread`);
    }
    if (engine.threadsGlueUrl === undefined || engine.threadsWasmUrl === undefined) {
      return one('this bundle has no multi-threaded engine');
    }
    if (g.crossOriginIsolated !== true) {
      return one('the page is not cross-origin isolated (COOP/COEP headers), so no shared memory');
    }
    if (engine.threads === 1) return one('one thread requested');
    if (cores === 1) return one('one core');
    const threads = Math.min(engine.threads ?? cores, cores);
    return { threads, reason: `cross-origin isolated, ${cores} cores${engine.threads !== undefined ? `, ${engine.threads} requested` : ''}` };
  }

  /** The CPU engine: the multi-threaded module where it can run (its pool started), the
   *  single-threaded one otherwise or when it fails to start; each built with relaxed SIMD
   *  where the bundle has that build and this engine validates relaxed SIMD. */
  private async cpuModule(engine: EngineSpec, source: ModuleSource): Promise<WasmEngineModule> {
    const plan = this.threadsPlan(engine);
    const load = this.options.loadThreadedModule;
    const relaxed = hasRelaxedSimd();
    if (plan.threads > 1 && load && engine.threadsGlueUrl !== undefined && engine.threadsWasmUrl !== undefined) {
      const wasm = relaxed && engine.threadsRelaxedWasmUrl !== undefined
        ? { wasmUrl: engine.threadsRelaxedWasmUrl, integrity: engine.threadsRelaxedWasmIntegrity }
        : { wasmUrl: engine.threadsWasmUrl, integrity: engine.threadsWasmIntegrity };
      try {
        const mod = await load({
          glueUrl: engine.threadsGlueUrl,
          wasmUrl: wasm.wasmUrl,
          ...(wasm.integrity !== undefined && { wasmIntegrity: wasm.integrity }),
          threads: plan.threads,
        });
        this.threading = { threads: Math.max(1, Number(mod.engineThreads?.() ?? 1)), reason: plan.reason };
        return mod;
      } catch (err) {
        this.threading = { threads: 1, reason: `the multi-threaded engine did not start (${messageOf(err)})` };
      }
    }
    const mod = await this.options.loadModule(relaxed && engine.relaxedWasmUrl !== undefined ? {
      wasmUrl: engine.relaxedWasmUrl,
      ...(engine.relaxedWasmIntegrity !== undefined && { wasmIntegrity: engine.relaxedWasmIntegrity }),
    } : source);
    this.threading ??= plan;
    return mod;
  }

  /** Initialises `backend`'s module and parses the model with it. */
  private async parse(backend: Backend, engine: EngineSpec, bytes: Uint8Array, maxCtx: number):
    Promise<{ module: WasmEngineModule; wasm: WasmEngine }> {
    let mod: WasmEngineModule;
    try {
      mod = await this.module(backend, engine);
    } catch (err) {
      throw engineError(err, backend === 'webgpu' ? 'initialising the WebGPU engine' : 'initialising the WASM engine');
    }
    try {
      return { module: mod, wasm: await mod.WasmEngine.load(bytes, maxCtx) };
    } catch (err) {
      if (isWebGpuError(err)) throw err; // the caller falls back, or reports it as is
      throw engineError(err, 'loading the model');
    }
  }

  /** Runs `task` after every queued task; an abort while waiting rejects at once. */
  private exclusive<T>(signal: AbortSignal | undefined, task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(async () => {
      throwIfAborted(signal);
      this.busy = true;
      try {
        return await task();
      } finally {
        this.busy = false;
      }
    });
    this.queue = run.catch(() => {});
    if (!signal) return run;
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(abortErrorFrom(signal));
      signal.addEventListener('abort', onAbort, { once: true });
      run.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  private async engineInfo(): Promise<EngineInfo> {
    const l = this.loaded;
    const probe = await this.gpuProbe();
    let plan: Plan;
    if (l) {
      plan = { backend: l.backend, reason: l.backendReason };
    } else {
      plan = await this.plan(this.preference).catch((err: unknown) => ({ backend: 'webgpu' as const, reason: messageOf(err) }));
    }
    const pending = this.modules.get(plan.backend);
    const mod = l ? l.module : pending ? await pending.catch(() => null) : null;
    const adapter = l ? l.adapter : plan.backend === 'webgpu' ? probe?.adapter ?? null : null;
    // Before the CPU module starts: what the last load's spec would give (none yet: unknown).
    const threading = plan.backend === 'webgpu' ? { threads: 1, reason: 'the WebGPU engine runs on the GPU' }
      : this.threading ?? { threads: 1, reason: 'the CPU engine has not started yet' };
    return {
      host: this.host,
      backend: plan.backend,
      backendReason: plan.reason.slice(0, 1024),
      threads: threading.threads,
      threadsReason: threading.reason.slice(0, 1024),
      gpuAvailable: probe !== null,
      adapter,
      simd128: l ? l.simd128 : mod !== null && plan.backend === 'cpu-wasm' ? Boolean(mod.simd128()) : false,
      relaxedSimd: (l ? l.backend : plan.backend) === 'cpu-wasm' && mod !== null && mod.relaxedSimd?.() === 'fused',
      engineVersion: mod ? String(mod.engineVersion()).slice(0, 64) : 'unloaded',
      hostInstanceId: this.instanceId,
      model: l ? { ...l.info } : null,
      limits: l ? this.currentLimits(l) : null,
      gpu: l?.gpu ? { ...l.gpu, limits: { ...l.gpu.limits } } : null,
    };
  }

  /** The load's limits with the wasm memory as it is now (it grows while generating). */
  private currentLimits(l: Loaded): EngineLimits {
    if (this.busy) return { ...l.limits }; // no engine call while a step may be pending
    try {
      return checkInfo(l.engine.info()).limits;
    } catch {
      return { ...l.limits };
    }
  }

  load(model: ModelSpec, engine: EngineSpec, options: LoadOptions = {}): Promise<EngineInfo> {
    return this.exclusive(options.signal, async () => {
      const { signal } = options;
      const preference = engine.backend ?? 'auto';
      const current = this.loaded;
      if (current && current.spec.url === model.url && current.spec.sha256 === model.sha256 &&
        current.spec.maxCtx === model.maxCtx &&
        (preference === 'auto' || (preference === 'cpu') === (current.backend === 'cpu-wasm'))) {
        return this.engineInfo(); // already loaded: e.g. a second tab, or a reload, of an SW host
      }
      this.preference = preference;
      let plan = await this.plan(preference, engine);
      // Initialise the module before the download: a broken .wasm fails fast. A WebGPU
      // module that does not start is no reason to stop ('auto' falls back).
      try {
        await this.module(plan.backend, engine);
      } catch (err) {
        if (plan.backend === 'cpu-wasm' || preference === 'webgpu') {
          throw engineError(err, plan.backend === 'webgpu' ? 'initialising the WebGPU engine' : 'initialising the WASM engine');
        }
        this.gpuFailure = `the WebGPU engine did not start (${messageOf(err)})`;
        plan = { backend: 'cpu-wasm', reason: this.gpuFailure };
        try {
          await this.module('cpu-wasm', engine);
        } catch (cpuErr) {
          throw engineError(cpuErr, 'initialising the WASM engine');
        }
      }
      // Only one model in memory: drop the old one before parsing the new one.
      this.unload();
      const source = this.modelSource(model, engine, options);
      let parsed: Parsed;
      try {
        parsed = await source(plan.backend);
      } catch (err) {
        if (!(plan.backend === 'webgpu' && preference === 'auto' && isWebGpuError(err))) {
          throw isWebGpuError(err) ? new UnsupportedError(messageOf(err), { cause: err }) : err;
        }
        // The adapter went away, or no device: the CPU engine, from the same source.
        this.gpuFailure = `the WebGPU engine could not start (${messageOf(err)})`;
        plan = { backend: 'cpu-wasm', reason: this.gpuFailure };
        throwIfAborted(signal);
        parsed = await source('cpu-wasm');
      }
      await this.adopt(parsed, model, engine, plan.reason);
      return this.engineInfo();
    });
  }

  /**
   * Where a load's engine gets the model: the cached copy streamed into the engine's
   * `GgufLoader` (verified on the way, never whole in JS memory), else `fetchModel`'s bytes
   * (a download, or a store that cannot stream), kept for a second backend in the same load.
   */
  private modelSource(model: ModelSpec, engine: EngineSpec, options: LoadOptions): (backend: Backend) => Promise<Parsed> {
    let fetched: { bytes: Uint8Array; sha256: string | null } | null = null;
    return async (backend) => {
      const { signal, onProgress } = options;
      if (fetched === null) {
        const streamed = await this.parseStreamed(backend, engine, model, options);
        if (streamed) return streamed;
        const f = await fetchModel({
          url: model.url,
          ...(model.sha256 !== undefined && { sha256: model.sha256 }),
          store: this.store,
          ...(signal && { signal }),
          ...(onProgress && { onProgress }),
          ...(model.memoryLimitBytes !== undefined && { memoryLimitBytes: model.memoryLimitBytes }),
          ...(model.storageLimitBytes !== undefined && { storageLimitBytes: model.storageLimitBytes }),
          ...(this.options.fetch && { fetch: this.options.fetch }),
          ...(this.options.retryDelayMs !== undefined && { retryDelayMs: this.options.retryDelayMs }),
        });
        fetched = { bytes: f.bytes, sha256: f.sha256 };
      }
      throwIfAborted(signal);
      const size = fetched.bytes.byteLength;
      onProgress?.(progressEvent('load', 0, size));
      // Give the progress message a chance to leave before the synchronous parse blocks us.
      await yieldToEventLoop();
      const { module, wasm } = await this.parse(backend, engine, fetched.bytes, model.maxCtx);
      onProgress?.(progressEvent('load', size, size));
      return { module, wasm, sha256: fetched.sha256 };
    };
  }

  /**
   * The cached model, streamed chunk by chunk from the store into `backend`'s GgufLoader,
   * which hashes it on the way. Null when there is nothing to stream (no cached copy, a
   * store or engine module without streaming, another model's digest) or the copy fails
   * its SHA-256 (it is then deleted): the caller downloads instead.
   */
  private async parseStreamed(backend: Backend, engine: EngineSpec, model: ModelSpec, options: LoadOptions):
    Promise<Parsed | null> {
    const { signal } = options;
    const report = (p: Progress): void => options.onProgress?.(p);
    const expected = model.sha256?.toLowerCase() ?? null;
    let mod: WasmEngineModule;
    try {
      mod = await this.module(backend, engine);
    } catch (err) {
      throw engineError(err, backend === 'webgpu' ? 'initialising the WebGPU engine' : 'initialising the WASM engine');
    }
    const Loader = mod.GgufLoader;
    if (!Loader || !this.store.stream) return null;
    const entry = await this.store.stream(model.url);
    if (!entry) return null;
    const size = entry.meta.size;
    if ((expected !== null && entry.meta.sha256 !== expected) || !(Number.isSafeInteger(size) && size > 0)) {
      await entry.body.cancel().catch(() => {});
      return null; // fetchModel replaces it
    }
    const reader = entry.body.getReader();
    let loader: ReturnType<typeof newLoader> | null = null;
    const newLoader = (): InstanceType<NonNullable<WasmEngineModule['GgufLoader']>> => new Loader(size);
    let ended = false;
    try {
      try {
        loader = newLoader();
      } catch (err) {
        throw engineError(err, 'loading the model');
      }
      report(progressEvent('verify', 0, size));
      let pushError: unknown = null;
      let received = 0;
      // Bounded: a stream longer than `size` fails in push; the guard covers a stream of
      // empty chunks.
      for (let guard = 0; guard < 1 << 26; guard++) {
        throwIfAborted(signal);
        const { done, value } = await reader.read();
        if (done) {
          ended = true;
          break;
        }
        received += value.byteLength;
        try {
          loader.push(value);
        } catch (err) {
          pushError = err;
          break;
        }
        report(progressEvent('verify', Math.min(received, size), size));
      }
      if (pushError !== null) {
        // Malformed, too long, or wasm memory exhausted: a corrupted cache entry, or the model
        // itself? Only the error path holds the whole file in JS, to tell which.
        if (expected !== null && !(await this.cachedCopyIsIntact(model.url, expected))) {
          await this.store.delete(model.url);
          return null;
        }
        throw engineError(pushError, 'loading the model');
      }
      const digest = loader.received() === size ? loader.sha256() : null;
      throwIfAborted(signal);
      if (digest === null || (expected !== null && digest !== expected)) {
        await this.store.delete(model.url); // corrupted or cut short: fetched again
        return null;
      }
      report(progressEvent('load', 0, size));
      await yieldToEventLoop();
      let wasm: WasmEngine;
      try {
        wasm = await loader.finish(model.maxCtx);
      } catch (err) {
        if (isWebGpuError(err)) throw err; // the caller falls back, or reports it as is
        throw engineError(err, 'loading the model');
      }
      report(progressEvent('load', size, size));
      return { module: mod, wasm, sha256: expected ?? digest };
    } finally {
      if (!ended) await reader.cancel().catch(() => {}); // an abort, an error: stop reading
      reader.releaseLock();
      try {
        loader?.free();
      } catch {
        // already used up by finish, or the module trapped: nothing left to release
      }
    }
  }

  private async cachedCopyIsIntact(url: string, expected: string): Promise<boolean> {
    const whole = await this.store.get(url);
    return whole !== undefined && (await sha256Hex(whole.bytes)) === expected;
  }

  /** Makes `parsed` the loaded model (after the memory limit check). */
  private async adopt(parsed: Parsed, model: ModelSpec, engine: EngineSpec, backendReason: string): Promise<void> {
    const wasm = parsed.wasm;
    let info: WasmEngineInfo;
    try {
      info = checkInfo(wasm.info());
      if (model.memoryLimitBytes !== undefined) {
        assertModelFits(info.weightBytes, info.kvCacheBytes, model.memoryLimitBytes);
      }
    } catch (err) {
      wasm.free();
      throw err;
    }
    this.loaded = {
      engine: wasm,
      module: parsed.module,
      backend: info.backend,
      backendReason,
      adapter: info.backend === 'webgpu' ? (info.adapter ?? (await this.gpuProbe())?.adapter ?? '').slice(0, 256) : null,
      simd128: info.simd128,
      spec: { ...model },
      engineSpec: { ...engine },
      limits: info.limits,
      gpu: info.gpu,
      info: {
        url: model.url,
        sha256: parsed.sha256,
        architecture: info.architecture.slice(0, 256),
        name: info.name ? info.name.slice(0, 256) : null,
        nLayers: info.nLayers,
        nEmbd: info.nEmbd,
        nCtxTrain: info.nCtxTrain,
        maxCtx: info.maxCtx,
        vocabSize: info.vocabSize,
        weightBytes: info.weightBytes,
        kvCacheBytes: info.kvCacheBytes,
        hasChatTemplate: info.hasChatTemplate,
      },
    };
  }

  /**
   * The WebGPU device of `lost` went away: the model moves to the CPU engine (from the
   * cache), 'auto' stays there for this host's life, and the request that found it fails
   * with BackendLostError (retriable). Runs inside the request's turn of the queue, so no
   * other request sees a half-switched engine.
   */
  private async moveToCpu(lost: Loaded, why: string): Promise<never> {
    const reason = `the WebGPU device was lost (${why.slice(0, 512)}); running on the CPU engine`;
    this.gpuFailure = reason;
    if (this.loaded === lost) this.unload();
    try {
      const parsed = await this.modelSource(lost.spec, lost.engineSpec, {})('cpu-wasm');
      await this.adopt(parsed, lost.spec, lost.engineSpec, reason);
    } catch (err) {
      throw new EngineError(`${reason}, but the CPU engine could not load the model: ${messageOf(err)}`, { cause: err });
    }
    throw new BackendLostError(`${reason}: send the request again`);
  }

  /** Why `l`'s device was lost, waiting a little for the browser's `lost` promise (a failed
   *  readback can come first); undefined when it is still there. */
  private async lostReason(l: Loaded): Promise<string | undefined> {
    const pollMs = this.options.devicePollMs ?? 100;
    for (let i = 0; i < 10; i++) {
      let why: string | undefined;
      try {
        why = l.engine.deviceLost?.();
      } catch (err) {
        return `the engine failed: ${messageOf(err)}`;
      }
      if (why) return why;
      await new Promise((resolve) => setTimeout(resolve, pollMs));
    }
    return undefined;
  }

  /** One `step(n)`; on the WebGPU engine raced against the device being lost (a lost device
   *  may leave the step's promise unsettled). */
  private async stepOnce(l: Loaded, generation: WasmGeneration, n: number): Promise<WasmStepResult> {
    const pending = generation.step(n);
    const lostCheck = l.engine.deviceLost?.bind(l.engine);
    if (l.backend !== 'webgpu' || !(pending instanceof Promise) || !lostCheck) return checkStep(await pending);
    pending.catch(() => {}); // settled after the race was lost: nobody listens
    let timer: ReturnType<typeof setTimeout> | undefined;
    const pollMs = this.options.devicePollMs ?? 100;
    // A panic in the engine's future traps outside any call of ours: the step's promise then
    // never settles, and the trap surfaces as an unhandled rejection of the host's scope.
    const scope = globalThis as {
      addEventListener?: (type: 'unhandledrejection', listener: (e: { reason?: unknown }) => void) => void;
      removeEventListener?: (type: 'unhandledrejection', listener: (e: { reason?: unknown }) => void) => void;
    };
    let onTrap: ((e: { reason?: unknown }) => void) | undefined;
    const lost = new Promise<never>((_resolve, reject) => {
      onTrap = (e) => {
        if (isTrap(e.reason)) reject(new DeviceLost(`the WebGPU engine trapped: ${messageOf(e.reason)}`));
      };
      scope.addEventListener?.('unhandledrejection', onTrap);
      const poll = (): void => {
        let why: string | undefined;
        try {
          why = lostCheck();
        } catch (err) {
          why = `the engine failed: ${messageOf(err)}`;
        }
        if (why) reject(new DeviceLost(why));
        else timer = setTimeout(poll, pollMs);
      };
      timer = setTimeout(poll, pollMs);
    });
    try {
      return checkStep(await Promise.race([pending, lost]));
    } finally {
      clearTimeout(timer);
      if (onTrap) scope.removeEventListener?.('unhandledrejection', onTrap);
    }
  }

  generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerationResult> {
    return this.exclusive(options.signal, async () => {
      const { signal, onChunk } = options;
      const loaded = this.loaded;
      if (!loaded) throw new EngineError('no model is loaded (load one first)');
      // A device lost between requests: move before starting.
      const lostBefore = loaded.backend === 'webgpu' ? loaded.engine.deviceLost?.() : undefined;
      if (lostBefore) await this.moveToCpu(loaded, lostBefore);
      const start = startRequest(request);
      const t0 = this.now();
      let generation: WasmGeneration;
      try {
        generation = loaded.engine.start(start);
      } catch (err) {
        if (loaded.backend === 'webgpu' && (isGpuFailure(err) || isTrap(err))) {
          await this.moveToCpu(loaded, (await this.lostReason(loaded)) ?? messageOf(err));
        }
        throw engineError(err, 'starting the generation');
      }
      options.onStart?.();
      // Let 'started' (and any abort already queued) through before the prefill blocks us.
      await yieldToEventLoop();
      const sliceMs = this.options.sliceMs ?? 40;
      let text = '';
      let n = 1;
      let firstTokenAt: number | null = null;
      let tokensAfterFirst = 0;
      try {
        // Bounded: every step either produces a token or finishes (the contract), and the
        // engine stops at max_tokens or the context size.
        for (let guard = 0; guard < 1 << 24; guard++) {
          throwIfAborted(signal);
          const before = this.now();
          let r: WasmStepResult;
          try {
            // A promise from the WebGPU engine (the GPU's readback), a value from the CPU one.
            r = await this.stepOnce(loaded, generation, n);
          } catch (err) {
            if (loaded.backend === 'webgpu' && (err instanceof DeviceLost || isGpuFailure(err) || isTrap(err))) {
              await this.moveToCpu(loaded, (await this.lostReason(loaded)) ?? messageOf(err));
            }
            throw engineError(err, 'generating');
          }
          const after = this.now();
          if (firstTokenAt === null) {
            firstTokenAt = after;
          } else {
            tokensAfterFirst += r.tokens.length;
            const perToken = (after - before) / Math.max(1, r.tokens.length);
            n = Math.max(1, Math.min(32, Math.floor(sliceMs / Math.max(perToken, 0.01))));
          }
          // Tokens without text happen (a held-back UTF-8 prefix, the end-of-turn id): they
          // are still reported, callers may want the ids.
          if (r.text || r.tokens.length > 0) {
            text += r.text;
            onChunk?.(r.text, r.completion_tokens, Array.from(r.tokens));
          }
          if (r.done) {
            const decodeMs = after - (firstTokenAt ?? after);
            return {
              text,
              finishReason: r.finish_reason ?? 'stop',
              usage: {
                promptTokens: r.prompt_tokens,
                completionTokens: r.completion_tokens,
                timeToFirstTokenMs: Math.max(0, (firstTokenAt ?? after) - t0),
                decodeTokensPerS: decodeMs > 0 ? (tokensAfterFirst * 1000) / decodeMs : 0,
              },
            };
          }
          await yieldToEventLoop();
        }
        throw new EngineError('generation did not finish');
      } catch (err) {
        if (signal?.aborted && !(err instanceof AbortError)) throw abortErrorFrom(signal);
        throw err;
      } finally {
        try {
          generation.free();
        } catch {
          // the module trapped (a lost device): nothing left to release
        }
      }
    });
  }

  /** Host and backend (the planned one before a load), and the model when loaded. */
  async info(): Promise<EngineInfo | null> {
    return this.engineInfo();
  }

  async status(): Promise<HostStatus> {
    return {
      instanceId: this.instanceId,
      host: this.host,
      gpuAvailable: await this.gpuAvailable(),
      modelLoaded: this.loaded !== null,
      modelUrl: this.loaded?.spec.url ?? null,
      busy: this.busy,
    };
  }

  /** Test support: destroys the loaded WebGPU engine's device, as a driver reset would
   *  (the next or pending step then finds it lost). False when no WebGPU engine is loaded. */
  debugLoseDevice(): boolean {
    const l = this.loaded;
    if (!l || l.backend !== 'webgpu' || !l.engine.debugLoseDevice) return false;
    l.engine.debugLoseDevice();
    return true;
  }

  hasModel(url: string): Promise<boolean> {
    return this.store.has(url);
  }

  async deleteModel(url: string): Promise<void> {
    if (this.loaded?.spec.url === url) await this.exclusive(undefined, async () => this.unload());
    await this.store.delete(url);
  }

  async ping(): Promise<string> {
    return this.instanceId;
  }

  onCrash(): () => void {
    return () => {}; // the engine runs here: if it dies, so does the caller
  }

  private unload(): void {
    const l = this.loaded;
    this.loaded = null;
    if (l) {
      try {
        l.engine.free();
      } catch (err) {
        // Freeing twice or after a wasm trap: nothing left to release.
        void toKwaaiNetError(err);
      }
    }
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.unload();
  }
}

/** A module of one function, `f32x4.relaxed_madd` of three zero vectors: valid only where
 *  the engine has relaxed SIMD. */
const RELAXED_SIMD_PROBE = new Uint8Array([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
  0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type: () -> v128
  0x03, 0x02, 0x01, 0x00, // one function of type 0
  0x0a, 0x3d, 0x01, 0x3b, 0x00, // code: one body of 59 bytes, no locals
  0xfd, 0x0c, ...new Array<number>(16).fill(0), // v128.const 0
  0xfd, 0x0c, ...new Array<number>(16).fill(0),
  0xfd, 0x0c, ...new Array<number>(16).fill(0),
  0xfd, 0x85, 0x02, // f32x4.relaxed_madd
  0x0b, // end
]);

/** Whether this engine has relaxed SIMD (a validation of 70 bytes, once per module load). */
export function hasRelaxedSimd(): boolean {
  try {
    return typeof WebAssembly === 'object' && WebAssembly.validate(RELAXED_SIMD_PROBE);
  } catch {
    return false;
  }
}
