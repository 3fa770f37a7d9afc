// Helpers shared by the browser tests and the browser bench: a real headless Chromium
// (Debian's /usr/bin/chromium, or $CHROMIUM) driven by playwright-core, with a fresh
// profile each launch, and bounded waits.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';

// What works headless on these machines (see the project's environment notes). No GPU:
// without --enable-unsafe-webgpu `requestAdapter()` returns null, which is how the tests
// reach the CPU fallback.
const FLAGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage',
];

/** A TCP port free on 127.0.0.1 right now (for a server that takes a number, not 0). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Rejects with a clear message when `promise` takes longer than `ms`. */
export function within(ms, promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/**
 * Launches Chromium with a fresh profile (`args`: extra flags). Returns { context, page, close }; `close` shuts
 * the browser and deletes the profile (safe to call twice).
 */
export async function launch({ webgpu = false, log = false, args = [] } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'kwaainet-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(dir, {
      executablePath: CHROMIUM,
      headless: true,
      timeout: 30_000,
      args: [...FLAGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : []), ...args],
    });
  } catch (err) {
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  context.setDefaultTimeout(30_000);
  const page = context.pages()[0] ?? (await context.newPage());
  if (log) watch(page);
  let closed = false;
  return {
    context,
    page,
    async close() {
      if (closed) return;
      closed = true;
      await within(15_000, context.close(), 'closing Chromium').catch(() => {});
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Prints the page's console errors and uncaught exceptions (debugging aid). */
export function watch(page) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.log(`  [page ${m.type()}] ${m.text()}`);
  });
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
}

/**
 * Before any page script runs: records every 'progress' and 'status' event of the
 * instance the script tag creates (by trapping the `window.kwaainet` assignment, which
 * happens before `initialize()` emits anything), and the tag's ready / error events.
 */
export function recordEvents(context) {
  return context.addInitScript(() => {
    const rec = { progress: [], status: [], ready: false, error: null, persistCalls: 0 };
    Object.defineProperty(window, '__kw', { value: rec });
    let instance;
    Object.defineProperty(window, 'kwaainet', {
      configurable: true,
      get: () => instance,
      set: (v) => {
        instance = v;
        v.on('progress', (p) => rec.progress.push({ ...p }));
        v.on('status', (s) => rec.status.push({
          state: s.state, host: s.host ?? null, reason: s.reason ?? null, backend: s.backend ?? null,
          backendReason: s.backendReason ?? null, adapter: s.adapter ?? null,
          threads: s.threads ?? null, threadsReason: s.threadsReason ?? null,
          error: s.error ? s.error.message : null,
        }));
      },
    });
    const persist = StorageManager.prototype.persist;
    StorageManager.prototype.persist = function () {
      rec.persistCalls++;
      return persist.call(this);
    };
    document.addEventListener('kwaainet:ready', () => (rec.ready = true));
    document.addEventListener('kwaainet:error', (e) => {
      rec.error = e.detail.error.message;
      rec.errorCode = e.detail.error.code;
    });
  });
}

/** Opens the demo page and waits until the script tag's instance is ready (or failed). */
export async function openDemo(page, url, { timeoutMs = 90_000 } = {}) {
  await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: timeoutMs, polling: 50 });
  const error = await page.evaluate(() => window.__kw.error);
  if (error) throw new Error(`the page's KwaaiNet failed: ${error}`);
}

/**
 * Runs one greedy generation through the SDK in the page, streamed: a chat request when
 * `messages` is given, else a raw-prompt completion. Returns { ids, text, finish, chunks }.
 */
export function generate(page, { prompt, messages, maxTokens }, timeoutMs = 60_000) {
  return within(timeoutMs, page.evaluate(async ({ prompt, messages, maxTokens }) => {
    const ai = window.kwaainet;
    const stream = messages
      ? await ai.chat.completions.create({ messages, max_tokens: maxTokens, stream: true })
      : await ai.completions.create({ prompt, max_tokens: maxTokens, stream: true });
    const ids = [];
    let text = '';
    let finish = null;
    let chunks = 0;
    let usage = null;
    for await (const c of stream) {
      chunks++;
      const ch = c.choices[0];
      ids.push(...(ch.token_ids ?? []));
      text += messages ? (ch.delta.content ?? '') : ch.text;
      finish = ch.finish_reason ?? finish;
      usage = c.usage ?? usage;
    }
    return { ids, text, finish, chunks, usage };
  }, { prompt, messages, maxTokens }), `generating (${maxTokens} tokens)`);
}
