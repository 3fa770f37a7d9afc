/**
 * Model delivery: cache lookup, download with HTTP Range resume, SHA-256 verification,
 * one combined progress event.
 *
 * - Received bytes are persisted as they arrive (every `flushBytes`, and before giving up),
 *   so an interrupted download — lost connection, aborted request, closed tab — resumes
 *   with `Range: bytes=N-` (+ `If-Range`), within this call (bounded retries) or a later one.
 *   A server that answers 200 instead of 206 gets a clean restart from byte 0.
 * - Verification uses SubtleCrypto on the complete bytes: the WASM engine needs the whole
 *   model in one buffer anyway, the native digest runs at ~1 GB/s, and there is no hash
 *   state to persist across resumes (an incremental TS SHA-256 would be ~20× slower and
 *   would need its state saved alongside the partial bytes).
 * - Cached models are re-verified on every load (the 'verify' phase): a corrupted cache
 *   entry is deleted and fetched again. Bytes that fail verification are never cached.
 */

import {
  AbortError, IntegrityError, KwaaiNetError, ModelTooLargeError, NetworkError, QuotaExceededError,
  UnsupportedError, abortErrorFrom, throwIfAborted,
} from './errors.js';
import { concatBytes, storeWrite, type ModelStore, type PartialMeta } from './cache.js';
import type { Progress, ProgressPhase } from './protocol.js';
import { MIB } from './resources.js';

export interface FetchModelOptions {
  url: string;
  /** Expected SHA-256, lower-case hex. Without it nothing is verified. */
  sha256?: string;
  store: ModelStore;
  signal?: AbortSignal;
  onProgress?: (p: Progress) => void;
  /** maxResources.memory in bytes: a larger model is refused before download. */
  memoryLimitBytes?: number;
  /** maxResources.storage in bytes: the cache (this model included) may not exceed it. */
  storageLimitBytes?: number;
  /** Attempts after the first when the connection drops (default 3). */
  retries?: number;
  /** Delay before the first retry, doubled each time (default 500 ms). */
  retryDelayMs?: number;
  /** Persist received bytes every this many (default 4 MiB). */
  flushBytes?: number;
  fetch?: typeof fetch;
  /** `navigator.storage.estimate` (default: the global one, when present). */
  estimate?: () => Promise<{ quota?: number; usage?: number }>;
  now?: () => number;
}

export interface ModelBytes {
  bytes: Uint8Array;
  fromCache: boolean;
  /** How many times the download resumed with a Range request. */
  resumes: number;
  sha256: string | null;
}

/** The share of the combined progress each phase covers. */
const PHASE_SPAN: Record<ProgressPhase, [number, number]> = {
  download: [0, 0.9],
  verify: [0.9, 0.95],
  load: [0.95, 1],
};

export function progressEvent(phase: ProgressPhase, loaded: number, total: number): Progress {
  const [a, b] = PHASE_SPAN[phase];
  const f = total > 0 ? Math.min(1, loaded / total) : 0;
  return { phase, loaded, total, fraction: a + (b - a) * f };
}

export async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    throw new UnsupportedError('SHA-256 verification needs SubtleCrypto, which browsers offer only in secure contexts (https or localhost)');
  }
  const digest = new Uint8Array(await subtle.digest('SHA-256', bytes as Uint8Array<ArrayBuffer>));
  let hex = '';
  for (const b of digest) hex += b.toString(16).padStart(2, '0');
  return hex;
}

/** Hard cap when a server sends no length and no memory limit applies. */
const UNKNOWN_LENGTH_CAP = 16 * 1024 * MIB;

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortErrorFrom(signal));
      return;
    }
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(abortErrorFrom(signal as AbortSignal));
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** `bytes start-end/total` → { start, total }. */
export function parseContentRange(value: string | null): { start: number; total: number | null } | undefined {
  const m = value === null ? null : /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value.trim());
  if (!m) return undefined;
  const start = Number(m[1]);
  const total = m[3] === '*' ? null : Number(m[3]);
  return { start, total };
}

function contentLength(res: Response): number | null {
  // With a content-encoding, Content-Length counts encoded bytes, not what the body yields.
  if (res.headers.get('content-encoding')) return null;
  const n = Number(res.headers.get('content-length') ?? NaN);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

const retryable = (status: number): boolean => status === 408 || status === 429 || status >= 500;

/** Ensures the model is in `store` and verified; returns its bytes. */
export async function fetchModel(options: FetchModelOptions): Promise<ModelBytes> {
  const { url, store, signal } = options;
  const expected = options.sha256?.toLowerCase() ?? null;
  const report = options.onProgress ?? (() => {});
  throwIfAborted(signal);

  const verify = async (bytes: Uint8Array): Promise<boolean> => {
    report(progressEvent('verify', 0, bytes.byteLength));
    const ok = expected === null || (await sha256Hex(bytes)) === expected;
    throwIfAborted(signal);
    report(progressEvent('verify', bytes.byteLength, bytes.byteLength));
    return ok;
  };

  // 1. The cache, re-verified: a corrupted or outdated entry is dropped and fetched again.
  const cached = await store.get(url);
  if (cached) {
    const sameModel = expected === null || cached.meta.sha256 === expected;
    if (sameModel && cached.bytes.byteLength === cached.meta.size && (await verify(cached.bytes))) {
      return { bytes: cached.bytes, fromCache: true, resumes: 0, sha256: cached.meta.sha256 };
    }
    await store.delete(url);
  }

  // 2. Download, resuming from stored partial bytes.
  const partial = await store.getPartial(url);
  let parts: Uint8Array[] = [];
  let received = 0;
  let validator: string | null = null;
  let total: number | null = null;
  if (partial && partial.meta.url === url && partial.bytes.byteLength === partial.meta.received) {
    parts = [partial.bytes];
    received = partial.meta.received;
    validator = partial.meta.validator;
    total = partial.meta.total;
  } else if (partial) {
    await store.clearPartial(url);
  }

  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const retries = options.retries ?? 3;
  const flushBytes = options.flushBytes ?? 4 * MIB;
  let delay = options.retryDelayMs ?? 500;
  let resumes = 0;
  let unflushed: Uint8Array[] = [];
  let unflushedBytes = 0;

  const flush = async (): Promise<void> => {
    if (unflushedBytes === 0) return;
    const chunk = concatBytes(unflushed, unflushedBytes);
    unflushed = [];
    unflushedBytes = 0;
    const meta: PartialMeta = { url, received, total, validator };
    await storeWrite('saving the partial download', () => store.appendPartial(url, chunk, meta));
  };
  const restart = async (): Promise<void> => {
    parts = [];
    received = 0;
    unflushed = [];
    unflushedBytes = 0;
    await store.clearPartial(url);
  };

  const checkLimits = async (size: number): Promise<void> => {
    if (options.memoryLimitBytes !== undefined && size > options.memoryLimitBytes) {
      throw new ModelTooLargeError(`the model is ${(size / MIB).toFixed(1)} MiB; maxResources.memory allows ${(options.memoryLimitBytes / MIB).toFixed(1)} MiB`);
    }
    if (options.storageLimitBytes !== undefined) {
      const others = await store.usage(url);
      if (others + size > options.storageLimitBytes) {
        throw new QuotaExceededError(
          `the model (${(size / MIB).toFixed(1)} MiB) and the ${(others / MIB).toFixed(1)} MiB already cached exceed ` +
          `maxResources.storage (${(options.storageLimitBytes / MIB).toFixed(1)} MiB)`, 'maxResources');
      }
    }
    const estimate = options.estimate ?? (globalThis.navigator?.storage?.estimate
      ? () => globalThis.navigator.storage.estimate() : undefined);
    if (estimate) {
      const { quota, usage } = await estimate();
      if (quota !== undefined && usage !== undefined && quota - usage < size - received) {
        throw new QuotaExceededError(
          `the model needs ${((size - received) / MIB).toFixed(1)} MiB of storage; the browser grants ` +
          `${(Math.max(0, quota - usage) / MIB).toFixed(1)} MiB more to this site`, 'browser');
      }
    }
  };

  let lastError: unknown = null;
  for (let attempt = 0; ; attempt++) {
    throwIfAborted(signal);
    if (attempt > 0) {
      if (attempt > retries) {
        throw new NetworkError(`downloading ${url} failed after ${retries + 1} attempts: ${describeError(lastError)}`, undefined, { cause: lastError });
      }
      await sleep(delay, signal);
      delay *= 2;
    }
    const headers: Record<string, string> = {};
    const resuming = received > 0;
    if (resuming) {
      headers.range = `bytes=${received}-`;
      if (validator) headers['if-range'] = validator;
    }
    let res: Response;
    try {
      res = await doFetch(url, { headers, signal: signal ?? null, cache: 'no-store' });
    } catch (err) {
      if (signal?.aborted) throw abortErrorFrom(signal);
      lastError = err;
      continue;
    }
    if (res.status === 206 && resuming) {
      const range = parseContentRange(res.headers.get('content-range'));
      if (!range || range.start !== received) {
        await res.body?.cancel();
        await restart(); // a range we did not ask for: start clean
        lastError = new Error(`unexpected Content-Range ${res.headers.get('content-range') ?? '(none)'}`);
        continue;
      }
      total = range.total ?? total;
      resumes++;
    } else if (res.status === 200) {
      if (resuming) await restart(); // the server ignored Range: the body is the whole file
      total = contentLength(res);
      validator = res.headers.get('etag') ?? res.headers.get('last-modified');
    } else if (res.status === 416 && resuming) {
      await res.body?.cancel();
      await restart();
      lastError = new Error('416 Range Not Satisfiable');
      continue;
    } else {
      await res.body?.cancel();
      const err = new NetworkError(`GET ${url}: HTTP ${res.status}`, res.status);
      if (!retryable(res.status)) throw err;
      lastError = err;
      continue;
    }
    if (!res.body) throw new NetworkError(`GET ${url}: empty response body`, res.status);

    const cap = total ?? Math.min(options.memoryLimitBytes ?? UNKNOWN_LENGTH_CAP, UNKNOWN_LENGTH_CAP);
    if (total !== null) await checkLimits(total);
    report(progressEvent('download', received, total ?? 0));

    const reader = res.body.getReader();
    let bodyDone = false;
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) {
          bodyDone = true;
          break;
        }
        if (received + value.byteLength > cap) {
          throw total === null
            ? new ModelTooLargeError(`the download exceeded ${(cap / MIB).toFixed(0)} MiB without a declared length`)
            : new NetworkError(`the server sent more than the ${total} bytes it announced`);
        }
        parts.push(value);
        unflushed.push(value);
        received += value.byteLength;
        unflushedBytes += value.byteLength;
        report(progressEvent('download', received, total ?? 0));
        if (unflushedBytes >= flushBytes) await flush();
      }
    } catch (err) {
      if (err instanceof KwaaiNetError && !(err instanceof AbortError)) {
        await reader.cancel().catch(() => {});
        throw err;
      }
      // Connection lost or aborted: keep what arrived, so the next attempt resumes.
      await flush();
      if (signal?.aborted) throw abortErrorFrom(signal);
      lastError = err;
      continue;
    }
    if (bodyDone && total !== null && received < total) {
      await flush();
      lastError = new Error(`connection closed after ${received} of ${total} bytes`);
      continue;
    }
    break;
  }

  // 3. Verify, then cache. Failing bytes are dropped, never cached.
  const bytes = concatBytes(parts, received);
  parts = [];
  if (!(await verify(bytes))) {
    await store.clearPartial(url);
    throw new IntegrityError(`the model from ${url} does not match its SHA-256 (${expected ?? ''})`);
  }
  await storeWrite('caching the model', () => store.put(url, bytes, { url, size: bytes.byteLength, sha256: expected, storedAt: (options.now ?? Date.now)() }));
  await store.clearPartial(url);
  return { bytes, fromCache: false, resumes, sha256: expected };
}

function describeError(err: unknown): string {
  if (err instanceof Error) {
    const cause = err.cause instanceof Error ? ` (${err.cause.message})` : '';
    return `${err.message}${cause}`;
  }
  return String(err);
}
