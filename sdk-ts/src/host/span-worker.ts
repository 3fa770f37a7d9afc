/**
 * The serving worker: a module worker of its own that holds the engine module built with
 * `serve`, so serving the swarm or generating through it never stalls the page or the
 * visitor's own chat. It does one of two jobs, chosen by its first message:
 *
 * - **A span server** (`serve.ts`): `WasmSpanServer`, the same server a native node runs.
 *   In: `load` once, then `frame`, `close`, `closeAll`. Out: `loaded` or `load-error`, then
 *   one `reply` per `frame`, each with the server's counters.
 * - **A swarm client** (`swarm.ts`): `WasmSwarmClient`, the model's embedding and head, the
 *   blocks on span servers. In: `client-load` once, then `client-generate` for each
 *   generation. Out: `client-loaded` or `load-error`; per generation, `client-step`s then
 *   `client-done` or `client-error`; meanwhile `link` calls (host/link-bridge.ts): the
 *   client's streams are the page's, and this worker blocks on shared memory for each
 *   answer, so it needs a cross-origin-isolated page.
 *
 * The model is fetched here (never copied through the page) with the SDK's download
 * (`fetchModel`: the shared model cache, resumed transfers, `sha256` checked when given, a
 * file over `maxBytes` or the storage cap refused before it is read), and held in memory only
 * while the blocks (or the embedding and head) are read from it.
 */

import { defaultModelStore } from '../cache.js';
import { fetchModel, sha256Hex } from '../download.js';
import { UnsupportedError, toKwaaiNetError, type ErrorCode, type KwaaiNetError } from '../errors.js';
import type {
  WasmServeModule, WasmSpanServer, WasmSpanStats, WasmStartRequest, WasmStepResult, WasmSwarmClient, WasmSwarmReport,
  WasmSwarmServer,
} from '../wasm-engine.js';
import { fromWasmError, wasmErrorCode } from '../wasm-errors.js';
import { LinkCaller, type LinkCall } from './link-bridge.js';

/** Where the engine module and the model are, and the caps on the model file. */
interface ModuleAndModel {
  glueUrl: string;
  wasmUrl: string;
  wasmIntegrity?: string;
  modelUrl: string;
  sha256?: string;
  maxBytes: number;
  maxStorageBytes: number;
}

export type SpanWorkerRequest =
  | (ModuleAndModel & {
    type: 'load';
    start: number;
    end: number;
    cacheTokens?: number;
    maxLength?: number;
    maxSessions?: number;
    deviceClass?: 'phone' | 'tablet' | 'laptop' | 'desktop';
    region?: string;
  })
  | { type: 'frame'; seq: number; stream: number; frame: Uint8Array }
  | { type: 'close'; stream: number }
  | { type: 'closeAll' }
  | (ModuleAndModel & { type: 'client-load'; maxCtx?: number })
  | {
    type: 'client-generate';
    seq: number;
    request: WasmStartRequest;
    route: { servers: WasmSwarmServer[]; codec?: string; sessionId: string };
    /** Set to 1 by the page to stop the generation (read between steps). */
    abort: SharedArrayBuffer;
    /** How long a link call may wait for the page (a little over the page's own limits). */
    openWaitMs: number;
    recvWaitMs: number;
  };

export type SpanWorkerReply =
  | { type: 'loaded'; modelId: string; sha256: string; throughput: number; stats: WasmSpanStats }
  | { type: 'load-error'; code: ErrorCode; message: string }
  | { type: 'reply'; seq: number; frame: Uint8Array | null; stats: WasmSpanStats }
  | { type: 'reply-error'; seq: number; message: string }
  /** The counters after a stream closed (its session ended without a frame saying so). */
  | { type: 'stats'; stats: WasmSpanStats }
  | { type: 'client-loaded'; modelId: string; sha256: string; blocks: number; maxCtx: number }
  | { type: 'client-step'; seq: number; step: WasmStepResult; report: WasmSwarmReport | null }
  | { type: 'client-done'; seq: number; report: WasmSwarmReport | null }
  | { type: 'client-error'; seq: number; code: ErrorCode; message: string; report: WasmSwarmReport | null }
  | LinkCall;

interface WorkerScope {
  postMessage(message: SpanWorkerReply, transfer?: Transferable[]): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
  /** The swarm client's links (engine/wasm swarm_bindings.rs). */
  kwaainetSwarmLinks?: {
    open(server: string): number;
    send(link: number, frame: Uint8Array): void;
    recv(link: number, max: number): Uint8Array | null;
    close(link: number): void;
  };
}

const scope = globalThis as unknown as WorkerScope;
let server: WasmSpanServer | null = null;
let client: WasmSwarmClient | null = null;
let loading = false;

/** A failure as the SDK's typed error: the engine module's codes through fromWasmError. */
function typed(err: unknown, during = 'loading the span'): KwaaiNetError {
  const code = wasmErrorCode(err);
  return code === null ? toKwaaiNetError(err) : fromWasmError(code, err, during);
}

/** The engine module, initialised, and the model file's bytes and SHA-256. */
async function moduleAndModel(m: ModuleAndModel, what: string): Promise<{ glue: WasmServeModule; bytes: Uint8Array; sha256: string }> {
  const glue = (await import(/* webpackIgnore: true */ /* @vite-ignore */ m.glueUrl)) as WasmServeModule;
  if (typeof glue[what as 'WasmSpanServer'] !== 'function') {
    throw new UnsupportedError(`${m.glueUrl} is an engine built without ${what} (FEATURES=serve)`);
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
  return { glue, bytes, sha256: model.sha256 ?? (await sha256Hex(bytes)) };
}

async function load(m: Extract<SpanWorkerRequest, { type: 'load' | 'client-load' }>): Promise<void> {
  if (server || client || loading) {
    scope.postMessage({ type: 'load-error', code: 'invalid-argument', message: 'this worker is already loaded' });
    return;
  }
  loading = true;
  try {
    if (m.type === 'client-load') {
      const { glue, bytes, sha256 } = await moduleAndModel(m, 'WasmSwarmClient');
      const c = new glue.WasmSwarmClient(bytes, { sha256, ...(m.maxCtx !== undefined && { maxCtx: m.maxCtx }) });
      client = c;
      scope.postMessage({ type: 'client-loaded', modelId: c.modelId, sha256, blocks: c.blocks, maxCtx: c.maxCtx });
      return;
    }
    const { glue, bytes, sha256 } = await moduleAndModel(m, 'WasmSpanServer');
    const s = new glue.WasmSpanServer(bytes, {
      sha256,
      start: m.start,
      end: m.end,
      ...(m.cacheTokens !== undefined && { cacheTokens: m.cacheTokens }),
      ...(m.maxLength !== undefined && { maxLength: m.maxLength }),
      ...(m.maxSessions !== undefined && { maxSessions: m.maxSessions }),
      ...(m.deviceClass !== undefined && { deviceClass: m.deviceClass }),
      ...(m.region !== undefined && { region: m.region }),
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

/** Runs one generation through the swarm, a step at a time, each step's result posted as it
 *  comes; stops between steps when the page sets the abort flag. */
function generate(c: WasmSwarmClient, m: Extract<SpanWorkerRequest, { type: 'client-generate' }>): void {
  const links = new LinkCaller((call) => scope.postMessage(call, call.op === 'send' ? [call.frame.buffer] : []));
  scope.kwaainetSwarmLinks = {
    open: (srv) => links.open(srv, m.openWaitMs),
    send: (link, frame) => links.send(link, frame),
    recv: (link, max) => links.recv(link, max, m.recvWaitMs),
    close: (link) => links.close(link),
  };
  const abort = new Int32Array(m.abort);
  // The last report: a failed step ends the generation, and its route and failovers with it.
  let last: WasmSwarmReport | null = null;
  try {
    const id = c.start(m.request, m.route);
    // Bounded: every step produces a token or finishes, and the engine stops at max_tokens.
    for (let guard = 0; guard < 1 << 24; guard++) {
      if (Atomics.load(abort, 0) !== 0) {
        c.end();
        scope.postMessage({ type: 'client-error', seq: m.seq, code: 'aborted', message: 'aborted', report: last });
        return;
      }
      const step = c.step(id, 1);
      last = c.report(id) ?? last;
      scope.postMessage({ type: 'client-step', seq: m.seq, step, report: last });
      if (step.done) {
        c.end();
        scope.postMessage({ type: 'client-done', seq: m.seq, report: last });
        return;
      }
    }
    throw new Error('the generation did not finish');
  } catch (err) {
    const e = typed(err, 'generating through the swarm');
    c.end();
    scope.postMessage({ type: 'client-error', seq: m.seq, code: e.code, message: e.message, report: last });
  }
}

function isRequest(d: unknown): d is SpanWorkerRequest {
  if (typeof d !== 'object' || d === null) return false;
  const m = d as Record<string, unknown>;
  const moduleAndModelOk = (): boolean => typeof m.glueUrl === 'string' && typeof m.wasmUrl === 'string' &&
    typeof m.modelUrl === 'string' && typeof m.maxBytes === 'number' && typeof m.maxStorageBytes === 'number';
  switch (m.type) {
    case 'load':
      return moduleAndModelOk() && Number.isInteger(m.start) && Number.isInteger(m.end);
    case 'client-load':
      return moduleAndModelOk();
    case 'client-generate':
      return Number.isInteger(m.seq) && typeof m.request === 'object' && m.request !== null &&
        typeof m.route === 'object' && m.route !== null &&
        typeof SharedArrayBuffer === 'function' && m.abort instanceof SharedArrayBuffer &&
        typeof m.openWaitMs === 'number' && typeof m.recvWaitMs === 'number';
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
    case 'client-load':
      void load(m);
      break;
    case 'client-generate':
      if (!client) {
        scope.postMessage({ type: 'client-error', seq: m.seq, code: 'not-initialized', message: 'no model is loaded', report: null });
        break;
      }
      generate(client, m);
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
