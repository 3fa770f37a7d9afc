/**
 * Persistent model storage behind one small interface, `ModelStore`. It holds complete,
 * verified models and the partial bytes of an interrupted download (so the next attempt,
 * even after a reload, resumes with an HTTP Range request).
 *
 * - `CacheStorageModelStore`: Cache Storage, available in pages, dedicated workers and
 *   service workers alike (OPFS sync handles are worker-only and absent from service
 *   workers, so Cache Storage is the one store every host can share).
 * - `MemoryModelStore`: in memory; tests and environments without Cache Storage. Its
 *   optional `quotaBytes` throws the browser's `QuotaExceededError` DOMException.
 *
 * Partial downloads are stored as a list of chunks plus a metadata record written after
 * each chunk: the metadata is the commit point, so a crash between the two writes leaves
 * at most an orphan chunk that the next append overwrites.
 */

import { QuotaExceededError, toKwaaiNetError } from './errors.js';
import { isRecord } from './validate.js';

export interface StoredMeta {
  url: string;
  size: number;
  /** The verified digest, or null when the model was loaded without one. */
  sha256: string | null;
  storedAt: number;
}

export interface PartialMeta {
  url: string;
  /** Bytes stored so far (the next Range request starts here). */
  received: number;
  /** Full size, when the server said. */
  total: number | null;
  /** ETag or Last-Modified of the response the bytes came from (sent as If-Range). */
  validator: string | null;
}

export interface ModelStore {
  readonly kind: string;
  get(key: string): Promise<{ bytes: Uint8Array; meta: StoredMeta } | undefined>;
  /** The complete model as a stream of chunks (the engine's streaming loader reads it
   *  without the whole file in JS memory). Optional: without it hosts use `get`. */
  stream?(key: string): Promise<{ body: ReadableStream<Uint8Array>; meta: StoredMeta } | undefined>;
  has(key: string): Promise<boolean>;
  /** May throw the browser's QuotaExceededError DOMException. */
  put(key: string, bytes: Uint8Array, meta: StoredMeta): Promise<void>;
  /** Removes the complete model and any partial bytes. */
  delete(key: string): Promise<void>;
  getPartial(key: string): Promise<{ bytes: Uint8Array; meta: PartialMeta } | undefined>;
  /** Appends `chunk`; `meta.received` is the length after it. */
  appendPartial(key: string, chunk: Uint8Array, meta: PartialMeta): Promise<void>;
  clearPartial(key: string): Promise<void>;
  /** Bytes held for every key but `exceptKey`. */
  usage(exceptKey?: string): Promise<number>;
}

export function concatBytes(parts: readonly Uint8Array[], total?: number): Uint8Array {
  const size = total ?? parts.reduce((n, p) => n + p.byteLength, 0);
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

export class MemoryModelStore implements ModelStore {
  readonly kind = 'memory';
  private readonly complete = new Map<string, { bytes: Uint8Array; meta: StoredMeta }>();
  private readonly partial = new Map<string, { chunks: Uint8Array[]; meta: PartialMeta }>();
  private readonly quotaBytes: number;

  constructor(options: { quotaBytes?: number } = {}) {
    this.quotaBytes = options.quotaBytes ?? Number.POSITIVE_INFINITY;
  }

  private used(exceptKey?: string): number {
    let n = 0;
    for (const [k, v] of this.complete) if (k !== exceptKey) n += v.bytes.byteLength;
    for (const [k, v] of this.partial) if (k !== exceptKey) n += v.meta.received;
    return n;
  }

  private reserve(key: string, extra: number): void {
    const own = (this.partial.get(key)?.meta.received ?? 0);
    if (this.used(key) + own + extra > this.quotaBytes) {
      throw new DOMException('The quota has been exceeded.', 'QuotaExceededError');
    }
  }

  async get(key: string): Promise<{ bytes: Uint8Array; meta: StoredMeta } | undefined> {
    const e = this.complete.get(key);
    return e && { bytes: e.bytes, meta: { ...e.meta } };
  }

  async stream(key: string): Promise<{ body: ReadableStream<Uint8Array>; meta: StoredMeta } | undefined> {
    const e = this.complete.get(key);
    if (!e) return undefined;
    const bytes = e.bytes;
    const chunk = 64 * 1024;
    let at = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (at >= bytes.byteLength) {
          controller.close();
          return;
        }
        controller.enqueue(bytes.slice(at, at + chunk));
        at += chunk;
      },
    });
    return { body, meta: { ...e.meta } };
  }

  async has(key: string): Promise<boolean> {
    return this.complete.has(key);
  }

  async put(key: string, bytes: Uint8Array, meta: StoredMeta): Promise<void> {
    this.complete.delete(key);
    this.reserve(key, bytes.byteLength - (this.partial.get(key)?.meta.received ?? 0));
    this.complete.set(key, { bytes: bytes.slice(), meta: { ...meta } });
  }

  async delete(key: string): Promise<void> {
    this.complete.delete(key);
    this.partial.delete(key);
  }

  async getPartial(key: string): Promise<{ bytes: Uint8Array; meta: PartialMeta } | undefined> {
    const p = this.partial.get(key);
    return p && { bytes: concatBytes(p.chunks, p.meta.received), meta: { ...p.meta } };
  }

  async appendPartial(key: string, chunk: Uint8Array, meta: PartialMeta): Promise<void> {
    this.reserve(key, chunk.byteLength);
    const p = this.partial.get(key) ?? { chunks: [], meta };
    p.chunks.push(chunk.slice());
    p.meta = { ...meta };
    this.partial.set(key, p);
  }

  async clearPartial(key: string): Promise<void> {
    this.partial.delete(key);
  }

  async usage(exceptKey?: string): Promise<number> {
    return this.used(exceptKey);
  }

  /** Test hook: overwrite stored bytes in place (a corrupted cache). */
  corrupt(key: string, at: number): void {
    const e = this.complete.get(key);
    if (e && at < e.bytes.byteLength) e.bytes[at] = (e.bytes[at] ?? 0) ^ 0xff;
  }
}

const CACHE_NAME = 'kwaainet-models-v1';
// Cache Storage keys must be http(s) URLs; this origin can never be fetched (RFC 6761).
const KEY_ORIGIN = 'https://kwaainet-cache.invalid/';

interface PartialRecord {
  meta: PartialMeta;
  chunks: number[];
}

function parsePartialRecord(value: unknown): PartialRecord | undefined {
  if (!isRecord(value) || !isRecord(value.meta) || !Array.isArray(value.chunks)) return undefined;
  const m = value.meta;
  if (typeof m.url !== 'string' || typeof m.received !== 'number' ||
    !(m.total === null || typeof m.total === 'number') || !(m.validator === null || typeof m.validator === 'string')) {
    return undefined;
  }
  const chunks = value.chunks.filter((n): n is number => typeof n === 'number' && Number.isInteger(n) && n >= 0);
  if (chunks.length !== value.chunks.length) return undefined;
  return { meta: { url: m.url, received: m.received, total: m.total, validator: m.validator }, chunks };
}

function parseStoredMeta(text: string | null): StoredMeta | undefined {
  if (!text) return undefined;
  try {
    const v: unknown = JSON.parse(text);
    if (isRecord(v) && typeof v.url === 'string' && typeof v.size === 'number' &&
      (v.sha256 === null || typeof v.sha256 === 'string') && typeof v.storedAt === 'number') {
      return { url: v.url, size: v.size, sha256: v.sha256, storedAt: v.storedAt };
    }
  } catch {
    // unreadable: treated as absent
  }
  return undefined;
}

/** Models in Cache Storage (`caches`), shared by the page, workers and the service worker. */
export class CacheStorageModelStore implements ModelStore {
  readonly kind = 'cache-storage';
  private readonly cacheName: string;

  constructor(options: { cacheName?: string } = {}) {
    this.cacheName = options.cacheName ?? CACHE_NAME;
  }

  static available(): boolean {
    return typeof caches !== 'undefined' && typeof caches.open === 'function';
  }

  private open(): Promise<Cache> {
    return caches.open(this.cacheName);
  }

  private static url(key: string, part: string): string {
    return `${KEY_ORIGIN}${encodeURIComponent(key)}/${part}`;
  }

  async get(key: string): Promise<{ bytes: Uint8Array; meta: StoredMeta } | undefined> {
    const cache = await this.open();
    const res = await cache.match(CacheStorageModelStore.url(key, 'complete'));
    if (!res) return undefined;
    const meta = parseStoredMeta(res.headers.get('x-kwaainet-meta'));
    if (!meta) return undefined;
    return { bytes: new Uint8Array(await res.arrayBuffer()), meta };
  }

  async stream(key: string): Promise<{ body: ReadableStream<Uint8Array>; meta: StoredMeta } | undefined> {
    const cache = await this.open();
    const res = await cache.match(CacheStorageModelStore.url(key, 'complete'));
    const meta = res && parseStoredMeta(res.headers.get('x-kwaainet-meta'));
    if (!res?.body || !meta) {
      await res?.body?.cancel();
      return undefined;
    }
    return { body: res.body, meta };
  }

  async has(key: string): Promise<boolean> {
    const cache = await this.open();
    return (await cache.match(CacheStorageModelStore.url(key, 'complete'))) !== undefined;
  }

  async put(key: string, bytes: Uint8Array, meta: StoredMeta): Promise<void> {
    const cache = await this.open();
    const headers = { 'content-type': 'application/octet-stream', 'content-length': String(bytes.byteLength), 'x-kwaainet-meta': JSON.stringify(meta) };
    await cache.put(CacheStorageModelStore.url(key, 'complete'), new Response(bytes as Uint8Array<ArrayBuffer>, { headers }));
  }

  async delete(key: string): Promise<void> {
    await this.clearPartial(key);
    const cache = await this.open();
    await cache.delete(CacheStorageModelStore.url(key, 'complete'));
  }

  private async partialRecord(cache: Cache, key: string): Promise<PartialRecord | undefined> {
    const res = await cache.match(CacheStorageModelStore.url(key, 'partial-meta'));
    if (!res) return undefined;
    try {
      return parsePartialRecord(await res.json());
    } catch {
      return undefined;
    }
  }

  async getPartial(key: string): Promise<{ bytes: Uint8Array; meta: PartialMeta } | undefined> {
    const cache = await this.open();
    const rec = await this.partialRecord(cache, key);
    if (!rec) return undefined;
    const parts: Uint8Array[] = [];
    for (let i = 0; i < rec.chunks.length; i++) {
      const res = await cache.match(CacheStorageModelStore.url(key, `partial/${i}`));
      const bytes = res && new Uint8Array(await res.arrayBuffer());
      if (!bytes || bytes.byteLength !== rec.chunks[i]) {
        await this.clearPartial(key); // inconsistent: start over rather than resume garbage
        return undefined;
      }
      parts.push(bytes);
    }
    const bytes = concatBytes(parts);
    if (bytes.byteLength !== rec.meta.received) {
      await this.clearPartial(key);
      return undefined;
    }
    return { bytes, meta: rec.meta };
  }

  async appendPartial(key: string, chunk: Uint8Array, meta: PartialMeta): Promise<void> {
    const cache = await this.open();
    const rec = (await this.partialRecord(cache, key)) ?? { meta, chunks: [] };
    const index = rec.chunks.length;
    await cache.put(CacheStorageModelStore.url(key, `partial/${index}`), new Response(chunk as Uint8Array<ArrayBuffer>, {
      headers: { 'content-length': String(chunk.byteLength) },
    }));
    const next: PartialRecord = { meta, chunks: [...rec.chunks, chunk.byteLength] };
    await cache.put(CacheStorageModelStore.url(key, 'partial-meta'), new Response(JSON.stringify(next), {
      headers: { 'content-type': 'application/json' },
    }));
  }

  async clearPartial(key: string): Promise<void> {
    const cache = await this.open();
    const prefix = CacheStorageModelStore.url(key, 'partial');
    for (const req of await cache.keys()) {
      if (req.url.startsWith(prefix)) await cache.delete(req);
    }
  }

  async usage(exceptKey?: string): Promise<number> {
    const cache = await this.open();
    const skip = exceptKey === undefined ? null : `${KEY_ORIGIN}${encodeURIComponent(exceptKey)}/`;
    let n = 0;
    for (const req of await cache.keys()) {
      if (skip && req.url.startsWith(skip)) continue;
      const res = await cache.match(req);
      const len = Number(res?.headers.get('content-length') ?? NaN);
      n += Number.isFinite(len) ? len : 0;
    }
    return n;
  }
}

/** The store a host uses by default. */
export function defaultModelStore(): ModelStore {
  return CacheStorageModelStore.available() ? new CacheStorageModelStore() : new MemoryModelStore();
}

/** Runs a store write, turning the browser's quota DOMException into QuotaExceededError. */
export async function storeWrite<T>(what: string, write: () => Promise<T>): Promise<T> {
  try {
    return await write();
  } catch (err) {
    const e = toKwaaiNetError(err, 'engine');
    if (e instanceof QuotaExceededError) {
      throw new QuotaExceededError(`${what}: the browser's storage quota is exhausted (${e.message})`, 'browser', { cause: err });
    }
    throw e;
  }
}
