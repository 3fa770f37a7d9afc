/**
 * A test double of the WASM engine that follows the contract (src/wasm-engine.d.ts): a
 * "GGUF" is any buffer starting with the bytes GGUF; the reply to a chat is
 * `Echo: <last user message>`, one token per character.
 *
 * `webgpu: true` makes it the WebGPU module: `load` and `step` return promises (settled
 * after a timer, like a GPU readback), a second `step` while one runs rejects with
 * code `internal` ("engine is busy"), info says backend "webgpu" with an adapter, and `loadError`
 * (e.g. "webgpu: no adapter") makes `load` reject.
 *
 * The module has the streaming `GgufLoader` (unless `noStreaming`): chunks are checked
 * against the announced size and hashed with a real SHA-256 (node:crypto), as the engine does.
 * A WebGPU double's device can be lost (`debugLoseDevice()`, or `control.loseDevice()`):
 * `deviceLost()` then says why, and a step pending at that moment never settles (the worst
 * case a real lost device can produce) unless `lostStepRejects`.
 */

import { createHash, type Hash } from 'node:crypto';
import { WASM_ERROR_CODES } from '../src/wasm-errors.js';
import type {
  GgufLoader, WasmEngine, WasmEngineInfo, WasmEngineModule, WasmGeneration, WasmStartRequest, WasmStepResult,
} from '../src/wasm-engine.js';

export interface DoubleOptions {
  /** Busy-waits this long per generated token (to test aborts mid-generation). */
  msPerToken?: number;
  /** Busy-waits this long in the first step (a prefill blocks the host's thread). */
  prefillMs?: number;
  /** Bytes of KV cache per context token. */
  kvBytesPerToken?: number;
  /** The WebGPU module's shape (async load and step). */
  webgpu?: boolean;
  /** `load` throws (CPU) or rejects (WebGPU) with this message. */
  loadError?: string;
  /** Initialising the module fails with this message (a .wasm that does not fetch). */
  initError?: string;
  /** A module without the streaming GgufLoader (engines built before it). */
  noStreaming?: boolean;
  /** A step pending when the device is lost rejects with "webgpu: ..." instead of hanging;
   *  'readback': with burn's readback error, and `deviceLost()` says so only 20 ms later
   *  (what Chromium does when the device is destroyed mid-step). */
  lostStepRejects?: boolean | 'readback';
}

export interface DoubleControl {
  /** Loses the WebGPU device of every engine of this module. */
  loseDevice(why?: string): void;
}

export interface DoubleStats {
  /** Module initialisations. */
  inits: number;
  /** load() calls, failed ones included. */
  loadCalls: number;
  loads: number;
  /** Most `step` calls in flight at once (the WebGPU engine allows one). */
  maxConcurrentSteps: number;
  starts: number;
  steps: number;
  generationsFreed: number;
  enginesFreed: number;
  lastRequest: WasmStartRequest | null;
  /** Models loaded through the GgufLoader, and its chunks. */
  streamedLoads: number;
  pushes: number;
}

/** An error as the engine modules throw it: `code` (wasm-errors.ts) and the message. The
 *  double's "code: message" strings (its own and `loadError`) are split that way; text
 *  without a known code stays a plain Error, as a JS failure in the glue would be. */
export function wasmError(text: string): Error {
  const m = /^([a-z-]+): ([\s\S]*)$/.exec(text);
  const code = m?.[1];
  if (!m || code === undefined || !(WASM_ERROR_CODES as readonly string[]).includes(code)) return new Error(text);
  const err = new Error(m[2]);
  err.name = 'KwaaiNetEngineError';
  return Object.assign(err, { code });
}

function busyWait(ms: number): void {
  const end = performance.now() + ms;
  while (performance.now() < end) {
    // spin: the real engine blocks the thread the same way
  }
}

export function fakeModel(size = 4096, seed = 1): Uint8Array {
  const bytes = new Uint8Array(size);
  let x = seed;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bytes[i] = x >>> 24;
  }
  bytes.set([0x47, 0x47, 0x55, 0x46]); // "GGUF"
  return bytes;
}

export function engineDouble(options: DoubleOptions = {}): {
  module: WasmEngineModule; stats: DoubleStats; control: DoubleControl;
} {
  const stats: DoubleStats = {
    inits: 0, loadCalls: 0, loads: 0, maxConcurrentSteps: 0, starts: 0, steps: 0, generationsFreed: 0, enginesFreed: 0,
    lastRequest: null, streamedLoads: 0, pushes: 0,
  };
  let initialised = false;
  let stepping = 0;
  let lost: string | undefined;
  let losing = false;
  /** Rejecters of steps pending on the device (lostStepRejects). */
  const pendingSteps = new Set<(err: Error) => void>();
  const control: DoubleControl = {
    loseDevice(why = 'Destroyed: device destroyed') {
      if (!options.webgpu || lost !== undefined || losing) return;
      if (options.lostStepRejects === 'readback') {
        losing = true;
        for (const reject of pendingSteps) {
          reject(wasmError('backend: readback: An error happened during execution\nCaused by:\n  the staging buffer could not be mapped'));
        }
        setTimeout(() => {
          lost = why;
        }, 20);
        return;
      }
      lost = why;
      if (options.lostStepRejects) for (const reject of pendingSteps) reject(wasmError(`webgpu: device lost (${why})`));
    },
  };
  const later = <T>(f: () => T): Promise<T> => new Promise((resolve, reject) => {
    setTimeout(() => {
      try {
        resolve(f());
      } catch (err) {
        reject(err instanceof Error ? err : new Error(String(err)));
      }
    }, 1);
  });

  class Generation implements WasmGeneration {
    private produced = 0;
    private prefilled = false;
    private readonly reply: string;
    private readonly promptTokens: number;
    private readonly maxTokens: number;
    private readonly stop: string[];
    private finished = false;

    constructor(req: WasmStartRequest) {
      const last = [...(req.messages ?? [])].reverse().find((m) => m.role === 'user');
      this.reply = `Echo: ${last?.content ?? req.prompt ?? ''}`;
      this.promptTokens = (req.messages ?? []).reduce((n, m) => n + m.content.length, 0) + (req.prompt?.length ?? 0);
      this.maxTokens = req.max_tokens ?? 256;
      this.stop = req.stop ?? [];
      if (req.temperature !== undefined && req.temperature < 0) throw wasmError('invalid-argument: temperature < 0');
    }

    step(maxTokens: number): WasmStepResult | Promise<WasmStepResult> {
      if (!options.webgpu) return this.stepNow(maxTokens);
      if (lost !== undefined) return Promise.reject(wasmError(`webgpu: device lost (${lost})`));
      if (stepping > 0) return Promise.reject(wasmError('internal: engine is busy'));
      stepping++;
      stats.maxConcurrentSteps = Math.max(stats.maxConcurrentSteps, stepping);
      return new Promise<WasmStepResult>((resolve, reject) => {
        pendingSteps.add(reject);
        setTimeout(() => {
          // A device lost meanwhile: the readback never comes back (or fails).
          if (lost !== undefined) return;
          pendingSteps.delete(reject);
          try {
            resolve(this.stepNow(maxTokens));
          } catch (err) {
            reject(err instanceof Error ? err : new Error(String(err)));
          }
        }, 1);
      }).finally(() => {
        stepping--;
      });
    }

    private stepNow(maxTokens: number): WasmStepResult {
      if (this.finished) throw wasmError('generation: already finished');
      stats.steps++;
      if (!this.prefilled && options.prefillMs) busyWait(options.prefillMs);
      this.prefilled = true;
      let text = '';
      const tokens: number[] = [];
      let finish: 'stop' | 'length' | null = null;
      for (let i = 0; i < maxTokens; i++) {
        if (this.produced >= this.reply.length) {
          finish = 'stop';
          break;
        }
        if (this.produced >= this.maxTokens) {
          finish = 'length';
          break;
        }
        if (options.msPerToken) busyWait(options.msPerToken);
        const ch = this.reply[this.produced] ?? '';
        const sofar = this.reply.slice(0, this.produced + 1);
        if (this.stop.some((s) => sofar.endsWith(s))) {
          finish = 'stop';
          this.produced++;
          break;
        }
        text += ch;
        tokens.push(ch.charCodeAt(0));
        this.produced++;
      }
      if (finish === null && this.produced >= this.reply.length) finish = 'stop';
      if (finish === null && this.produced >= this.maxTokens) finish = 'length';
      if (finish) this.finished = true;
      return {
        text, tokens, done: finish !== null, finish_reason: finish,
        prompt_tokens: this.promptTokens, completion_tokens: Math.min(this.produced, this.reply.length),
      };
    }

    free(): void {
      stats.generationsFreed++;
    }

    get started(): boolean {
      return this.prefilled;
    }
  }

  class Engine implements WasmEngine {
    private readonly size: number;
    private readonly maxCtx: number;
    constructor(size: number, maxCtx: number) {
      this.size = size;
      this.maxCtx = maxCtx;
    }
    static load(bytes: Uint8Array, maxCtx: number): Engine | Promise<Engine> {
      return options.webgpu ? later(() => Engine.loadNow(bytes, maxCtx)) : Engine.loadNow(bytes, maxCtx);
    }
    private static loadNow(bytes: Uint8Array, maxCtx: number): Engine {
      stats.loadCalls++;
      if (!initialised) throw new Error('engine: not initialised');
      if (options.loadError) throw wasmError(options.loadError);
      if (bytes.byteLength < 4 || String.fromCharCode(...bytes.subarray(0, 4)) !== 'GGUF') {
        throw wasmError('gguf: bad magic at offset 0');
      }
      stats.loads++;
      return new Engine(bytes.byteLength, maxCtx);
    }
    info(): WasmEngineInfo {
      const kv = this.maxCtx * (options.kvBytesPerToken ?? 16);
      return {
        backend: options.webgpu ? 'webgpu' : 'cpu-wasm', simd128: !options.webgpu,
        ...(options.webgpu && { adapter: 'double-vendor double-gpu' }),
        engineVersion: '0.0.0-double', architecture: 'llama', name: 'double',
        nLayers: 2, nEmbd: 8, nCtxTrain: 8192, maxCtx: this.maxCtx, vocabSize: 256,
        weightBytes: this.size, kvCacheBytes: kv, hasChatTemplate: true,
        limits: {
          maxCtxTokens: this.maxCtx, ctxLimitTokens: 8192, kvCacheBytes: kv, modelBytes: this.size,
          weightBytes: this.size, wasmMemoryBytes: 65536 * 32, wasmMemoryMaxBytes: 2 ** 32, simd128: !options.webgpu,
        },
        gpu: options.webgpu
          ? {
            adapter: 'double-gpu', fallbackAdapter: true, backend: 'BrowserWebGpu',
            limits: {
              maxBufferSize: 268435456, maxStorageBufferBindingSize: 134217728,
              maxUniformBufferBindingSize: 65536, maxStorageBuffersPerShaderStage: 8,
              maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256,
              maxComputeWorkgroupSizeX: 256, maxComputeWorkgroupSizeY: 256, maxComputeWorkgroupSizeZ: 64,
              maxComputeWorkgroupsPerDimension: 65535,
            },
          }
          : null,
      };
    }
    deviceLost(): string | undefined {
      return lost;
    }
    debugLoseDevice(): void {
      if (!options.webgpu) throw wasmError('invalid-argument: no WebGPU device to lose');
      control.loseDevice();
    }
    tokenize(text: string): Uint32Array {
      return Uint32Array.from([...text].map((c) => c.charCodeAt(0)));
    }
    detokenize(ids: Uint32Array): string {
      return String.fromCharCode(...ids);
    }
    applyChatTemplate(messages: { role: string; content: string }[]): string {
      return messages.map((m) => `<${m.role}>${m.content}`).join('');
    }
    start(request: WasmStartRequest): WasmGeneration {
      stats.starts++;
      stats.lastRequest = request;
      return new Generation(request);
    }
    free(): void {
      stats.enginesFreed++;
    }
  }

  class Loader implements GgufLoader {
    private readonly total: number;
    private readonly head: number[] = [];
    private got = 0;
    private readonly hash: Hash = createHash('sha256');
    private used = false;
    constructor(totalBytes: number) {
      if (!initialised) throw new Error('engine: not initialised');
      if (!(Number.isInteger(totalBytes) && totalBytes > 0)) throw wasmError(`invalid-argument: bad size ${totalBytes}`);
      this.total = totalBytes;
    }
    push(chunk: Uint8Array): void {
      if (this.used) throw wasmError('internal: the loader was already used');
      if (this.got + chunk.byteLength > this.total) {
        throw wasmError(`gguf: the stream holds more than the ${this.total} bytes announced`);
      }
      stats.pushes++;
      for (let i = 0; i < chunk.byteLength && this.head.length < 4; i++) this.head.push(chunk[i] ?? 0);
      if (this.head.length === 4 && String.fromCharCode(...this.head) !== 'GGUF') {
        throw wasmError('gguf: not a GGUF file: bad magic');
      }
      this.hash.update(chunk);
      this.got += chunk.byteLength;
    }
    received(): number {
      return this.got;
    }
    totalBytes(): number {
      return this.total;
    }
    sha256(): string {
      if (this.got !== this.total) throw wasmError('gguf: the SHA-256 needs the whole file');
      return this.hash.copy().digest('hex');
    }
    finish(maxCtx: number): Engine | Promise<Engine> {
      const now = (): Engine => {
        if (this.used) throw wasmError('internal: the loader was already used');
        this.used = true;
        stats.loadCalls++;
        if (options.loadError) throw wasmError(options.loadError);
        if (this.got !== this.total) throw wasmError(`gguf: the stream ended after ${this.got} of ${this.total} bytes`);
        stats.loads++;
        stats.streamedLoads++;
        return new Engine(this.total, maxCtx);
      };
      return options.webgpu ? later(now) : now();
    }
    free(): void {
      this.used = true;
    }
  }

  const module: WasmEngineModule = {
    default: async () => {
      stats.inits++;
      if (options.initError) throw new Error(options.initError);
      initialised = true;
      return {};
    },
    initSync: () => {
      initialised = true;
      return {};
    },
    engineVersion: () => '0.0.0-double',
    simd128: () => true,
    WasmEngine: Engine,
    ...(!options.noStreaming && { GgufLoader: Loader }),
  };
  return { module, stats, control };
}
