/**
 * The serving worker: a module worker of its own that holds a page's span server (the
 * engine module built with `serve`: `WasmSpanServer`, the same server a native node runs),
 * so serving the swarm never stalls the page or the visitor's own chat. `serve.ts` starts
 * it, sends it the frames the page's P2P node receives, and sends back its replies.
 *
 * Messages in (`SpanWorkerRequest`): `load` once, then `frame`, `close`, `closeAll`.
 * Messages out (`SpanWorkerReply`): `loaded` or `load-error`, then one `reply` per `frame`,
 * each with the server's counters.
 *
 * The model is fetched here (never copied through the page) with the SDK's download
 * (`fetchModel`: the shared model cache, resumed transfers, `sha256` checked when given, a
 * file over `maxBytes` or the storage cap refused before it is read), and held in memory only
 * while the span's blocks are read from it.
 */

import { defaultModelStore } from '../cache.js';
import { fetchModel, sha256Hex } from '../download.js';
import { UnsupportedError, toKwaaiNetError, type ErrorCode, type KwaaiNetError } from '../errors.js';
import type { WasmServeModule, WasmSpanServer, WasmSpanStats } from '../wasm-engine.js';
import { fromWasmError, wasmErrorCode } from '../wasm-errors.js';

export type SpanWorkerRequest =
  | {
    type: 'load';
    glueUrl: string;
    wasmUrl: string;
    wasmIntegrity?: string;
    modelUrl: string;
    sha256?: string;
    maxBytes: number;
    maxStorageBytes: number;
    start: number;
    end: number;
    cacheTokens?: number;
    maxLength?: number;
    maxSessions?: number;
  }
  | { type: 'frame'; seq: number; stream: number; frame: Uint8Array }
  | { type: 'close'; stream: number }
  | { type: 'closeAll' };

export type SpanWorkerReply =
  | { type: 'loaded'; modelId: string; sha256: string; throughput: number; stats: WasmSpanStats }
  | { type: 'load-error'; code: ErrorCode; message: string }
  | { type: 'reply'; seq: number; frame: Uint8Array | null; stats: WasmSpanStats }
  | { type: 'reply-error'; seq: number; message: string }
  /** The counters after a stream closed (its session ended without a frame saying so). */
  | { type: 'stats'; stats: WasmSpanStats };

interface WorkerScope {
  postMessage(message: SpanWorkerReply, transfer?: Transferable[]): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
}

const scope = globalThis as unknown as WorkerScope;
let server: WasmSpanServer | null = null;
let loading = false;

/** A failure as the SDK's typed error: the engine module's codes through fromWasmError. */
function typed(err: unknown): KwaaiNetError {
  const code = wasmErrorCode(err);
  return code === null ? toKwaaiNetError(err) : fromWasmError(code, err, 'loading the span');
}

async function load(m: Extract<SpanWorkerRequest, { type: 'load' }>): Promise<void> {
  if (server || loading) {
    scope.postMessage({ type: 'load-error', code: 'invalid-argument', message: 'this worker already serves a span' });
    return;
  }
  loading = true;
  try {
    const glue = (await import(/* webpackIgnore: true */ /* @vite-ignore */ m.glueUrl)) as WasmServeModule;
    if (typeof glue.WasmSpanServer !== 'function') {
      throw new UnsupportedError(`${m.glueUrl} is an engine built without the span server (FEATURES=serve)`);
    }
    const init: RequestInit = { credentials: 'same-origin' };
    if (m.wasmIntegrity) init.integrity = m.wasmIntegrity;
    await glue.default({ module_or_path: fetch(m.wasmUrl, init) });
    // The SDK's model download: the cache the visitor's own chat fills (so a model already
    // there is not fetched again), resumed transfers, the memory and storage caps.
    const model = await fetchModel({
      url: m.modelUrl,
      store: defaultModelStore(),
      memoryLimitBytes: m.maxBytes,
      storageLimitBytes: m.maxStorageBytes,
      ...(m.sha256 !== undefined && { sha256: m.sha256.toLowerCase() }),
    });
    const bytes = model.bytes;
    const sha256 = model.sha256 ?? (await sha256Hex(bytes));
    const s = new glue.WasmSpanServer(bytes, {
      sha256,
      start: m.start,
      end: m.end,
      ...(m.cacheTokens !== undefined && { cacheTokens: m.cacheTokens }),
      ...(m.maxLength !== undefined && { maxLength: m.maxLength }),
      ...(m.maxSessions !== undefined && { maxSessions: m.maxSessions }),
    });
    // Announced in the span record, so clients can place routes (tokens/s through one block).
    const throughput = s.measureThroughput(8);
    server = s;
    scope.postMessage({ type: 'loaded', modelId: s.modelId, sha256, throughput, stats: s.stats() });
  } catch (err) {
    const e = typed(err);
    scope.postMessage({ type: 'load-error', code: e.code, message: e.message });
  } finally {
    loading = false;
  }
}

function isRequest(d: unknown): d is SpanWorkerRequest {
  if (typeof d !== 'object' || d === null) return false;
  const m = d as Record<string, unknown>;
  switch (m.type) {
    case 'load':
      return typeof m.glueUrl === 'string' && typeof m.wasmUrl === 'string' && typeof m.modelUrl === 'string' &&
        Number.isInteger(m.start) && Number.isInteger(m.end) && typeof m.maxBytes === 'number' &&
        typeof m.maxStorageBytes === 'number';
    case 'frame':
      return Number.isInteger(m.seq) && Number.isInteger(m.stream) && m.frame instanceof Uint8Array;
    case 'close':
      return Number.isInteger(m.stream);
    case 'closeAll':
      return true;
    default:
      return false;
  }
}

scope.addEventListener('message', (event) => {
  const m = event.data;
  if (!isRequest(m)) return;
  switch (m.type) {
    case 'load':
      void load(m);
      break;
    case 'frame': {
      if (!server) {
        scope.postMessage({ type: 'reply-error', seq: m.seq, message: 'no span is loaded' });
        break;
      }
      try {
        const reply = server.handle(m.stream, m.frame) ?? null;
        const stats = server.stats();
        scope.postMessage({ type: 'reply', seq: m.seq, frame: reply, stats }, reply ? [reply.buffer] : []);
      } catch (err) {
        // A trap inside the engine leaves it unusable: say so; the page withdraws the span.
        scope.postMessage({ type: 'reply-error', seq: m.seq, message: err instanceof Error ? err.message : String(err) });
      }
      break;
    }
    case 'close':
      if (server) {
        server.close(m.stream);
        scope.postMessage({ type: 'stats', stats: server.stats() });
      }
      break;
    case 'closeAll':
      server?.closeAll();
      break;
  }
});
