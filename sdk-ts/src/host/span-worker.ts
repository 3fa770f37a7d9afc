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
 * The model is fetched here (never copied through the page), held only while the span's
 * blocks are read from it, checked against `sha256` when one is given, and refused before
 * reading when it is larger than `maxBytes`.
 */

import type { WasmServeModule, WasmSpanServer, WasmSpanStats } from '../wasm-engine.js';

export type SpanWorkerRequest =
  | {
    type: 'load';
    glueUrl: string;
    wasmUrl: string;
    wasmIntegrity?: string;
    modelUrl: string;
    sha256?: string;
    maxBytes: number;
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
  | { type: 'load-error'; code: string; message: string }
  | { type: 'reply'; seq: number; frame: Uint8Array | null; stats: WasmSpanStats }
  | { type: 'reply-error'; seq: number; message: string };

interface WorkerScope {
  postMessage(message: SpanWorkerReply, transfer?: Transferable[]): void;
  addEventListener(type: 'message', listener: (event: { data: unknown }) => void): void;
}

const scope = globalThis as unknown as WorkerScope;
let server: WasmSpanServer | null = null;
let loading = false;

const hex = (bytes: ArrayBuffer): string =>
  Array.from(new Uint8Array(bytes), (b) => b.toString(16).padStart(2, '0')).join('');

function codeOf(err: unknown): string {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : 'engine';
}

/** The model's bytes, at most `maxBytes` (refused before reading when the server says more). */
async function fetchModel(url: string, maxBytes: number): Promise<Uint8Array<ArrayBuffer>> {
  const res = await fetch(url, { credentials: 'same-origin' });
  if (!res.ok || !res.body) throw Object.assign(new Error(`${url}: HTTP ${res.status}`), { code: 'network' });
  const declared = Number(res.headers.get('content-length') ?? NaN);
  const tooLarge = (n: number): Error => Object.assign(
    new Error(`the model file is ${(n / 2 ** 20).toFixed(1)} MiB, more than maxResources.memory allows (${(maxBytes / 2 ** 20).toFixed(1)} MiB)`),
    { code: 'model-too-large' },
  );
  if (Number.isFinite(declared) && declared > maxBytes) {
    await res.body.cancel();
    throw tooLarge(declared);
  }
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > maxBytes) {
      await reader.cancel();
      throw tooLarge(total);
    }
    parts.push(value);
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.byteLength;
  }
  return bytes;
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
      throw Object.assign(new Error(`${m.glueUrl} is an engine built without the span server (FEATURES=serve)`), { code: 'unsupported' });
    }
    const init: RequestInit = { credentials: 'same-origin' };
    if (m.wasmIntegrity) init.integrity = m.wasmIntegrity;
    await glue.default({ module_or_path: fetch(m.wasmUrl, init) });
    const bytes = await fetchModel(m.modelUrl, m.maxBytes);
    const sha256 = hex(await crypto.subtle.digest('SHA-256', bytes));
    if (m.sha256 !== undefined && m.sha256.toLowerCase() !== sha256) {
      throw Object.assign(new Error(`the model's SHA-256 is ${sha256}, not ${m.sha256}`), { code: 'integrity' });
    }
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
    scope.postMessage({ type: 'load-error', code: codeOf(err), message: err instanceof Error ? err.message : String(err) });
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
        Number.isInteger(m.start) && Number.isInteger(m.end) && typeof m.maxBytes === 'number';
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
      server?.close(m.stream);
      break;
    case 'closeAll':
      server?.closeAll();
      break;
  }
});
