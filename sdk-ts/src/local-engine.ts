/**
 * The engine in the current JS context: model delivery (download.ts) + the WASM engine from
 * the contract (wasm-engine.d.ts). Runs in the page for the 'in-page' host, and inside a
 * dedicated worker or a service worker behind `EngineHostHandler` for the others.
 *
 * Generation is a loop of `WasmGeneration.step(n)` calls with a yield to the event loop
 * between them: that is where an abort message (or AbortSignal) gets a chance to land.
 * `n` adapts so one step takes about `sliceMs`; the first step produces one token so the
 * first text arrives as soon as the prefill is done.
 */

import {
  AbortError, EngineError, InvalidArgumentError, KwaaiNetError, abortErrorFrom, throwIfAborted, toKwaaiNetError,
} from './errors.js';
import type { Engine, GenerateOptions, GenerationResult, LoadOptions } from './engine.js';
import { fetchModel, progressEvent } from './download.js';
import { defaultModelStore, type ModelStore } from './cache.js';
import type {
  EngineInfo, EngineSpec, GenerateRequest, HostKind, HostStatus, ModelInfo, ModelSpec,
} from './protocol.js';
import { assertModelFits } from './resources.js';
import { isRecord } from './validate.js';
import type { WasmEngine, WasmEngineInfo, WasmEngineModule, WasmStartRequest, WasmStepResult } from './wasm-engine.js';

export interface LocalEngineOptions {
  host: HostKind;
  /** Returns the engine module, initialised for `engine` (called once per module). */
  loadModule: (engine: EngineSpec) => Promise<WasmEngineModule>;
  store?: ModelStore;
  fetch?: typeof fetch;
  /** Whether a WebGPU adapter is available here (reported; the WebGPU engine comes later). */
  probeGpu?: () => Promise<boolean>;
  /** Target duration of one `step(n)` call (default 40 ms). */
  sliceMs?: number;
  instanceId?: string;
  now?: () => number;
  /** Download retry delay (tests shorten it). */
  retryDelayMs?: number;
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

function checkInfo(raw: unknown): WasmEngineInfo {
  const fail = (what: string): never => {
    throw new EngineError(`engine: info() returned an unexpected ${what}`);
  };
  if (!isRecord(raw)) return fail('value');
  const nums = ['n_layers', 'n_embd', 'n_ctx_train', 'max_ctx', 'vocab_size', 'weight_bytes', 'kv_cache_bytes'] as const;
  for (const k of nums) if (typeof raw[k] !== 'number' || !Number.isFinite(raw[k]) || (raw[k] as number) < 0) fail(k);
  if (typeof raw.architecture !== 'string') fail('architecture');
  if (!(raw.name === null || raw.name === undefined || typeof raw.name === 'string')) fail('name');
  return raw as unknown as WasmEngineInfo;
}

function isTokenList(v: unknown): boolean {
  return (Array.isArray(v) || v instanceof Uint32Array) && Array.from(v as ArrayLike<unknown>).every((t) => Number.isInteger(t));
}

function checkStep(raw: unknown): WasmStepResult {
  if (!isRecord(raw) || typeof raw.text !== 'string' || typeof raw.done !== 'boolean' || !isTokenList(raw.tokens) ||
    typeof raw.prompt_tokens !== 'number' || typeof raw.completion_tokens !== 'number' ||
    !(raw.finish_reason === null || raw.finish_reason === 'stop' || raw.finish_reason === 'length')) {
    throw new EngineError('engine: step() returned an unexpected value');
  }
  return raw as unknown as WasmStepResult;
}

/** Engine errors start with a stable code ("gguf: ...", "model: ...", "request: ..."). */
function engineError(err: unknown, during: string): KwaaiNetError {
  if (err instanceof KwaaiNetError) return err;
  const message = err instanceof Error ? err.message : String(err);
  if (/^(request|options?|sampling|prompt)\b/i.test(message)) return new InvalidArgumentError(message, { cause: err });
  return new EngineError(`${during}: ${message}`, { cause: err });
}

interface Loaded {
  engine: WasmEngine;
  spec: ModelSpec;
  info: ModelInfo;
}

export class LocalEngine implements Engine {
  readonly host: HostKind;
  readonly instanceId: string;
  private readonly options: LocalEngineOptions;
  private readonly store: ModelStore;
  private module: Promise<WasmEngineModule> | null = null;
  private loaded: Loaded | null = null;
  private gpu: Promise<boolean> | null = null;
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

  private gpuAvailable(): Promise<boolean> {
    this.gpu ??= (this.options.probeGpu ?? (async () => false))().catch(() => false);
    return this.gpu;
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
    const mod = this.module ? await this.module.catch(() => null) : null;
    const l = this.loaded;
    return {
      host: this.host,
      backend: 'cpu-wasm',
      gpuAvailable: await this.gpuAvailable(),
      simd128: mod ? Boolean(mod.simd128()) : false,
      engineVersion: mod ? String(mod.engineVersion()).slice(0, 64) : 'unloaded',
      hostInstanceId: this.instanceId,
      model: l ? { ...l.info } : null,
    };
  }

  load(model: ModelSpec, engine: EngineSpec, options: LoadOptions = {}): Promise<EngineInfo> {
    return this.exclusive(options.signal, async () => {
      const { signal } = options;
      const current = this.loaded;
      if (current && current.spec.url === model.url && current.spec.sha256 === model.sha256 &&
        current.spec.maxCtx === model.maxCtx) {
        return this.engineInfo(); // already loaded: e.g. a second tab, or a reload, of an SW host
      }
      if (!this.module) {
        const m = this.options.loadModule(engine);
        this.module = m;
        m.catch(() => {
          if (this.module === m) this.module = null; // retry on the next load
        });
      }
      let mod: WasmEngineModule;
      try {
        mod = await this.module;
      } catch (err) {
        throw engineError(err, 'initialising the WASM engine');
      }
      const fetched = await fetchModel({
        url: model.url,
        ...(model.sha256 !== undefined && { sha256: model.sha256 }),
        store: this.store,
        ...(signal && { signal }),
        ...(options.onProgress && { onProgress: options.onProgress }),
        ...(model.memoryLimitBytes !== undefined && { memoryLimitBytes: model.memoryLimitBytes }),
        ...(model.storageLimitBytes !== undefined && { storageLimitBytes: model.storageLimitBytes }),
        ...(this.options.fetch && { fetch: this.options.fetch }),
        ...(this.options.retryDelayMs !== undefined && { retryDelayMs: this.options.retryDelayMs }),
      });
      throwIfAborted(signal);
      const size = fetched.bytes.byteLength;
      options.onProgress?.(progressEvent('load', 0, size));
      // Give the progress message a chance to leave before the synchronous parse blocks us.
      await yieldToEventLoop();
      // Only one model in memory: drop the old one before parsing the new one.
      this.unload();
      let wasm: WasmEngine;
      try {
        wasm = mod.WasmEngine.load(fetched.bytes, model.maxCtx);
      } catch (err) {
        throw engineError(err, 'loading the model');
      }
      let info: WasmEngineInfo;
      try {
        info = checkInfo(wasm.info());
        if (model.memoryLimitBytes !== undefined) {
          assertModelFits(info.weight_bytes, info.kv_cache_bytes, model.memoryLimitBytes);
        }
      } catch (err) {
        wasm.free();
        throw err;
      }
      this.loaded = {
        engine: wasm,
        spec: { ...model },
        info: {
          url: model.url,
          sha256: fetched.sha256,
          architecture: info.architecture.slice(0, 256),
          name: info.name ? info.name.slice(0, 256) : null,
          nLayers: info.n_layers,
          nEmbd: info.n_embd,
          nCtxTrain: info.n_ctx_train,
          maxCtx: info.max_ctx,
          vocabSize: info.vocab_size,
          weightBytes: info.weight_bytes,
          kvCacheBytes: info.kv_cache_bytes,
          hasChatTemplate: Boolean(info.has_chat_template),
        },
      };
      options.onProgress?.(progressEvent('load', size, size));
      return this.engineInfo();
    });
  }

  generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerationResult> {
    return this.exclusive(options.signal, async () => {
      const { signal, onChunk } = options;
      const loaded = this.loaded;
      if (!loaded) throw new EngineError('no model is loaded (load one first)');
      const start: WasmStartRequest = request.prompt !== undefined
        ? { prompt: request.prompt }
        : { messages: (request.messages ?? []).map((m) => ({ role: m.role, content: m.content })) };
      if (request.max_tokens !== undefined) start.max_tokens = request.max_tokens;
      if (request.temperature !== undefined) start.temperature = request.temperature;
      if (request.top_k !== undefined) start.top_k = request.top_k;
      if (request.top_p !== undefined) start.top_p = request.top_p;
      if (request.repeat_penalty !== undefined) start.repeat_penalty = request.repeat_penalty;
      if (request.seed !== undefined) start.seed = request.seed;
      if (request.stop !== undefined) start.stop = [...request.stop];
      const t0 = this.now();
      let generation;
      try {
        generation = loaded.engine.start(start);
      } catch (err) {
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
            r = checkStep(generation.step(n));
          } catch (err) {
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
        generation.free();
      }
    });
  }

  async info(): Promise<EngineInfo | null> {
    return this.module || this.loaded ? this.engineInfo() : null;
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
