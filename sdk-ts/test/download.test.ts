import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { MemoryModelStore } from '../src/cache.js';
import { fetchModel } from '../src/download.js';
import {
  AbortError, IntegrityError, ModelTooLargeError, NetworkError, QuotaExceededError,
} from '../src/errors.js';
import type { Progress } from '../src/protocol.js';
import { fakeModel } from './engine-double.js';
import { serveModel, sha256, type ModelServer } from './server.js';

const MODEL = fakeModel(256 * 1024, 7);
const SHA = sha256(MODEL);
let server: ModelServer | null = null;

afterEach(async () => {
  await server?.close();
  server = null;
});

const noQuota = async (): Promise<{ quota?: number; usage?: number }> => ({});

describe('model delivery over real HTTP', () => {
  it('downloads, reports combined progress with totals, verifies and caches', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore();
    const events: Progress[] = [];
    const got = await fetchModel({ url: server.url, sha256: SHA, store, onProgress: (p) => events.push(p), estimate: noQuota });
    assert.deepEqual(got.bytes, MODEL);
    assert.equal(got.fromCache, false);
    const downloads = events.filter((e) => e.phase === 'download');
    assert.ok(downloads.length >= 2);
    for (const e of downloads) assert.equal(e.total, MODEL.byteLength);
    assert.equal(downloads.at(-1)?.loaded, MODEL.byteLength);
    assert.deepEqual(events.map((e) => e.phase).filter((p, i, a) => a[i - 1] !== p), ['download', 'verify']);
    for (let i = 1; i < events.length; i++) assert.ok((events[i]?.fraction ?? 0) >= (events[i - 1]?.fraction ?? 0), 'fraction never goes back');
    assert.ok(await store.has(server.url));
    assert.equal((await store.getPartial(server.url)), undefined, 'no partial left behind');

    // Second time: from the cache, re-verified, no request.
    const before = server.requests.length;
    const again = await fetchModel({ url: server.url, sha256: SHA, store, estimate: noQuota });
    assert.equal(again.fromCache, true);
    assert.equal(server.requests.length, before);
  });

  it('resumes an interrupted download with Range and ends verified', async () => {
    server = await serveModel(MODEL, { cutAfter: 100_000 });
    const store = new MemoryModelStore();
    const got = await fetchModel({ url: server.url, sha256: SHA, store, retryDelayMs: 5, flushBytes: 16 * 1024, estimate: noQuota });
    assert.deepEqual(got.bytes, MODEL);
    assert.equal(got.resumes, 1);
    assert.equal(server.requests.length, 2);
    assert.equal(server.requests[0]?.status, 200);
    assert.equal(server.requests[1]?.status, 206);
    assert.match(server.requests[1]?.range ?? '', /^bytes=\d+-$/);
    assert.ok(Number(/\d+/.exec(server.requests[1]?.range ?? '')?.[0]) >= 16 * 1024, 'resumed past the first flush');
    assert.equal(server.requests[1]?.ifRange, '"model-v1"');
  });

  it('keeps the partial bytes when it gives up, and a later call resumes from them', async () => {
    server = await serveModel(MODEL, { cutAfter: 120_000 });
    const store = new MemoryModelStore();
    await assert.rejects(fetchModel({ url: server.url, sha256: SHA, store, retries: 0, estimate: noQuota }), NetworkError);
    const partial = await store.getPartial(server.url);
    assert.ok(partial && partial.meta.received > 0 && partial.meta.received <= 120_000);
    const got = await fetchModel({ url: server.url, sha256: SHA, store, retries: 0, estimate: noQuota });
    assert.deepEqual(got.bytes, MODEL);
    assert.equal(server.requests[1]?.range, `bytes=${partial.meta.received}-`);
  });

  it('restarts from byte 0 when the server ignores Range (200 instead of 206)', async () => {
    server = await serveModel(MODEL, { cutAfter: 90_000, ignoreRange: true });
    const store = new MemoryModelStore();
    const got = await fetchModel({ url: server.url, sha256: SHA, store, retryDelayMs: 5, flushBytes: 8 * 1024, estimate: noQuota });
    assert.deepEqual(got.bytes, MODEL);
    assert.equal(got.resumes, 0);
    assert.equal(server.requests[1]?.status, 200);
    assert.ok(server.requests[1]?.range, 'a Range was asked for');
  });

  it('rejects a SHA-256 mismatch with IntegrityError and caches nothing', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore();
    await assert.rejects(fetchModel({ url: server.url, sha256: '0'.repeat(64), store, estimate: noQuota }), IntegrityError);
    assert.equal(await store.has(server.url), false);
    assert.equal(await store.getPartial(server.url), undefined);
    assert.equal(await store.usage(), 0);
  });

  it('detects a corrupted cache entry and fetches the model again', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore();
    await fetchModel({ url: server.url, sha256: SHA, store, estimate: noQuota });
    store.corrupt(server.url, 1000);
    const got = await fetchModel({ url: server.url, sha256: SHA, store, estimate: noQuota });
    assert.equal(got.fromCache, false);
    assert.deepEqual(got.bytes, MODEL);
    assert.equal(server.requests.length, 2);
  });

  it('surfaces the browser quota as QuotaExceededError', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore({ quotaBytes: 64 * 1024 });
    const err = await fetchModel({ url: server.url, sha256: SHA, store, flushBytes: 16 * 1024, estimate: noQuota }).catch((e: unknown) => e);
    assert.ok(err instanceof QuotaExceededError, String(err));
    assert.equal(err.limit, 'browser');
    assert.equal(err.name, 'QuotaExceededError');
  });

  it('refuses up front what navigator.storage.estimate says will not fit', async () => {
    server = await serveModel(MODEL);
    const err = await fetchModel({
      url: server.url, sha256: SHA, store: new MemoryModelStore(), estimate: async () => ({ quota: 1000, usage: 10 }),
    }).catch((e: unknown) => e);
    assert.ok(err instanceof QuotaExceededError && err.limit === 'browser', String(err));
  });

  it('enforces maxResources storage and memory caps before downloading', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore();
    const storage = await fetchModel({ url: server.url, store, storageLimitBytes: 1000, estimate: noQuota }).catch((e: unknown) => e);
    assert.ok(storage instanceof QuotaExceededError && storage.limit === 'maxResources', String(storage));
    await assert.rejects(fetchModel({ url: server.url, store, memoryLimitBytes: 1000, estimate: noQuota }), ModelTooLargeError);
    assert.equal(await store.usage(), 0);
  });

  it('aborts mid-download with AbortError and keeps the bytes for a resume', async () => {
    server = await serveModel(MODEL);
    const store = new MemoryModelStore();
    const controller = new AbortController();
    const err = await fetchModel({
      url: server.url, sha256: SHA, store, signal: controller.signal, flushBytes: 1,
      onProgress: (p) => {
        if (p.phase === 'download' && p.loaded > 0) controller.abort();
      },
      estimate: noQuota,
    }).catch((e: unknown) => e);
    assert.ok(err instanceof AbortError, String(err));
    assert.equal(err.name, 'AbortError');
    const partial = await store.getPartial(server.url);
    assert.ok(partial && partial.meta.received > 0);
    const got = await fetchModel({ url: server.url, sha256: SHA, store, estimate: noQuota });
    assert.deepEqual(got.bytes, MODEL);
  });

  it('does not retry a 404', async () => {
    let calls = 0;
    const notFound = await fetchModel({
      url: 'http://127.0.0.1:1/x', store: new MemoryModelStore(), estimate: noQuota,
      fetch: async () => {
        calls++;
        return new Response('no', { status: 404 });
      },
    }).catch((e: unknown) => e);
    assert.ok(notFound instanceof NetworkError && notFound.status === 404, String(notFound));
    assert.equal(calls, 1);
  });
});
