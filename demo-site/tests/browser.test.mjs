// The browser side, end to end, in a real headless Chromium: the demo page loads the SDK
// through the one-line script tag (integrity + crossorigin), the SDK starts its engine host
// (the CPU WASM engine in a dedicated worker or the service worker; the WebGPU engine in
// the service worker when Chromium has an adapter: SwiftShader with --enable-unsafe-webgpu,
// whose long end-to-end test is webgpu.test.mjs), downloads the default model with
// progress, verifies and caches it, and generates.
//
//   node --test demo-site/tests/          (after scripts/build-wasm.sh and cdn/build.mjs)
//
// Needs /usr/bin/chromium (or $CHROMIUM) and the model (KWAAINET_MODEL, else the CLI's
// cache); without them the tests skip, unless KWAAINET_REQUIRE_MODEL=1 / CI=true. Each
// test has its own browser profile and its own server on 127.0.0.1 (ephemeral port), both
// closed when it ends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cdnDir, manifestIntegrity, version } from '../server.mjs';
import { generate, openDemo, within } from './browser.mjs';
import { avx2, capitalRaw, events, setup, shared, skip, webgpuBuilt } from './common.mjs';

const modelBytesSent = (server) => server.stats.model.reduce((n, r) => n + r.bytes, 0);

function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

/** Runs a reference case through the SDK: chat when it has messages, else the raw prompt. */
function runCase(page, c) {
  return generate(page, c.messages ? { messages: c.messages, maxTokens: c.max_tokens } : { prompt: c.prompt, maxTokens: c.max_tokens });
}

test('script tag with SRI from a CDN origin: download with progress, then greedy tokens equal llama.cpp\'s', { skip, timeout: 240_000 }, async (t) => {
  const { server, page } = await setup(t);
  // The bundle from another origin (http://localhost:<port>), as from a CDN: the tag needs
  // crossorigin + CORS, and the worker runs from a blob of its SRI-checked script.
  await openDemo(page, `${server.url}?cdn=cross-origin`);

  // The one-line tag, as the page has it: integrity and crossorigin set, and the hash is
  // the CDN manifest's (Chromium refuses the script otherwise: see the next test).
  const tag = await page.evaluate(() => {
    const s = document.querySelector('script[src*="distributed-ai.js"]');
    return { src: s.src, integrity: s.integrity, crossOrigin: s.crossOrigin, hasClass: typeof window.KwaaiNet === 'function' };
  });
  assert.equal(new URL(tag.src).host, `localhost:${server.port}`);
  assert.notEqual(new URL(tag.src).origin, new URL(server.url).origin);
  assert.match(page.workers()[0].url(), /^blob:/, 'the worker runs from the SRI-checked blob');
  assert.equal(tag.integrity, manifestIntegrity());
  assert.match(tag.integrity, /^sha384-/);
  assert.equal(tag.crossOrigin, 'anonymous');
  assert.ok(tag.hasClass, 'window.KwaaiNet is the class');
  assert.ok(server.stats.requests.some((p) => p.endsWith('/kwaainet-worker.js')), 'the worker was loaded');

  // One combined progress stream: download bytes up to the file size, verify, load;
  // `fraction` never goes back and ends at 1.
  const { progress } = await events(page);
  const size = server.model.size;
  const download = progress.filter((p) => p.phase === 'download');
  assert.ok(download.length > 10, `only ${download.length} download events`);
  assert.equal(download.at(-1).loaded, size);
  assert.ok(download.every((p) => p.total === size), 'download total is the file size');
  assert.ok(progress.some((p) => p.phase === 'verify' && p.loaded === size));
  assert.deepEqual(progress.at(-1), { phase: 'load', loaded: size, total: size, fraction: 1 });
  for (let i = 1; i < progress.length; i++) {
    assert.ok(progress[i].fraction >= progress[i - 1].fraction, `fraction went back at event ${i}`);
  }
  assert.equal(modelBytesSent(server), size, 'the model was downloaded exactly once');

  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.equal(info.backend, 'cpu-wasm');
  assert.equal(info.simd128, true);
  assert.equal(info.host, 'worker');
  assert.match(info.reason, /service workers are not usable here/, 'a cross-origin bundle cannot register its service worker');
  assert.equal(info.model.sha256, server.model.sha256);
  assert.equal(info.model.nLayers, 30);
  // The CPU engine's limits (no GPU ones): a download loads from one buffer, so wasm memory
  // holds the file and the weights.
  assert.equal(info.gpu, null);
  assert.deepEqual([info.limits.maxCtxTokens, info.limits.modelBytes, info.limits.simd128], [info.model.maxCtx, size, true]);
  assert.ok(info.limits.wasmMemoryBytes >= info.limits.weightBytes && info.limits.wasmMemoryMaxBytes === 2 ** 32);
  // The demo server sends COOP/COEP, as the node does: the page is cross-origin isolated, so
  // the worker host runs the multi-threaded engine, one thread per core (the cases below
  // then check its tokens; the single-threaded fallback has its own test).
  const cores = await page.evaluate(() => (crossOriginIsolated ? navigator.hardwareConcurrency : -1));
  assert.ok(cores > 0, 'the page is cross-origin isolated');
  assert.equal(info.threads, Math.min(cores, 16), `threads: ${info.threadsReason}`);
  // Chromium has relaxed SIMD, and the bundle the engines built with it: they run (the
  // plain ones are for engines without it), with the same tokens below.
  assert.equal(info.relaxedSimd, true);
  if (cores > 1) {
    assert.equal(info.threadsReason, `cross-origin isolated, ${cores} cores`);
    assert.ok(server.stats.requests.some((p) => p.endsWith('/kwaainet_wasm_mt_relaxed_bg.wasm')), 'the multi-threaded engine was loaded');
    assert.ok(!server.stats.requests.some((p) => /\/kwaainet_wasm(_relaxed)?_bg\.wasm$/.test(p)), 'and not the single-threaded one');
  }
  // The host, and its pool: one nested worker per thread.
  assert.equal(page.workers().length, 1 + (cores > 1 ? info.threads : 0));

  // The CPU engine reproduces llama.cpp on x86-64 AVX2 bit for bit: every greedy token of
  // every case (the criteria of engine/wasm/tests, in the browser, through the SDK).
  const got = new Map();
  for (const c of avx2.cases) {
    const t0 = performance.now();
    const r = await runCase(page, c);
    console.log(`${c.name}: ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    got.set(c.name, r.ids);
    const d = firstDiff(r.ids, c.output_ids);
    console.log(`${c.name}: ${d === -1 ? r.ids.length : d}/${c.output_ids.length} greedy tokens equal (AVX2 reference)`);
    assert.deepEqual(r.ids, c.output_ids, `${c.name}: greedy tokens differ from llama.cpp (AVX2)`);
    if (c.stop_at_eos) assert.equal(r.text, c.output_text);
    assert.equal(r.usage.prompt_tokens, c.prompt_ids.length);
  }

  // The shared llama.cpp reference: capital-raw exactly; teacher-forced top-1 agreement of
  // at least 97% over all cases, computed where greedy differs by the same engine in this
  // page (the module from the CDN folder, SRI-checked).
  const raw = shared.cases.find((c) => c.name === 'capital-raw');
  assert.deepEqual(got.get('capital-raw'), raw.output_ids);
  const differing = shared.cases.filter((c) => firstDiff(got.get(c.name), c.output_ids) !== -1);
  const forced = differing.length === 0 ? [] : await within(120_000, page.evaluate(async ({ cdn, wasmIntegrity, modelUrl, cases }) => {
    const glue = await import(`${cdn}kwaainet_wasm.js`);
    await glue.default({ module_or_path: fetch(`${cdn}kwaainet_wasm_bg.wasm`, { integrity: wasmIntegrity }) });
    const bytes = new Uint8Array(await (await fetch(modelUrl)).arrayBuffer());
    const engine = glue.WasmEngine.load(bytes, 2048);
    try {
      return cases.map((c) => Array.from(engine.teacherForcedArgmax(Uint32Array.from(c.prompt_ids), Uint32Array.from(c.output_ids))));
    } finally {
      engine.free();
    }
  }, {
    cdn: new URL(`cdn/v${version}/`, server.url).href,
    wasmIntegrity: JSON.parse(readFileSync(join(cdnDir, 'sri-manifest.json'), 'utf8')).files['kwaainet_wasm_bg.wasm'].integrity,
    modelUrl: new URL('models/model.gguf', server.url).href,
    cases: differing.map((c) => ({ prompt_ids: c.prompt_ids, output_ids: c.output_ids })),
  }), 'teacher forcing');
  let agree = 0;
  let total = 0;
  for (const c of shared.cases) {
    const i = differing.indexOf(c);
    const a = i === -1 ? c.output_ids.length : forced[i].reduce((n, tok, j) => n + (tok === c.output_ids[j] ? 1 : 0), 0);
    console.log(`${c.name}: teacher-forced top-1 agreement ${a}/${c.output_ids.length} (shared reference)`);
    agree += a;
    total += c.output_ids.length;
  }
  assert.ok(agree / total >= 0.97, `agreement ${agree}/${total} < 0.97`);
});

test('a page that is not cross-origin isolated: the single-threaded engine, which says why, and llama.cpp\'s tokens', { skip, timeout: 120_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, `${server.url}?isolated=0`);
  assert.equal(await page.evaluate(() => crossOriginIsolated), false);
  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend, info.threads], ['worker', 'cpu-wasm', 1]);
  assert.equal(info.threadsReason, 'the page is not cross-origin isolated (COOP/COEP headers), so no shared memory');
  const { status } = await events(page);
  assert.deepEqual([status.at(-1).state, status.at(-1).threads, status.at(-1).threadsReason], ['ready', 1, info.threadsReason]);
  assert.ok(server.stats.requests.some((p) => p.endsWith('/kwaainet_wasm_relaxed_bg.wasm')), 'the single-threaded engine was loaded');
  assert.equal(info.relaxedSimd, true, 'its relaxed-SIMD build');
  assert.ok(!server.stats.requests.some((p) => p.includes('kwaainet_wasm_mt')), 'and nothing of the multi-threaded one');
  for (const c of avx2.cases) assert.deepEqual((await runCase(page, c)).ids, c.output_ids, `${c.name}: greedy tokens differ from llama.cpp (AVX2)`);
});

test('a script tag whose integrity does not match is refused by Chromium', { skip, timeout: 60_000 }, async (t) => {
  const wrong = `sha384-${Buffer.alloc(48, 7).toString('base64')}`;
  const { server, page } = await setup(t, { integrity: wrong });
  const blocked = [];
  page.on('console', (m) => {
    if (/integrity/i.test(m.text())) blocked.push(m.text());
  });
  await page.goto(server.url, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => document.getElementById('status').textContent.includes('did not start'), null, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => typeof window.KwaaiNet), 'undefined');
  assert.ok(server.stats.requests.some((p) => p.endsWith('/distributed-ai.js')), 'the script was fetched');
  assert.ok(!server.stats.requests.some((p) => p.endsWith('/kwaainet-worker.js')), 'but never ran');
  assert.equal(server.stats.model.length, 0);
  assert.ok(blocked.length > 0, 'Chromium reported the integrity failure');
});

test('storage limits are clear errors: maxResources.storage, and the browser\'s quota', { skip, timeout: 60_000 }, async (t) => {
  const { server, browser, page } = await setup(t);
  await page.goto(`${server.url}?max=cpu:20,memory:1024,storage:50`, { timeout: 30_000 });
  await page.waitForFunction(() => window.__kw.error !== null, null, { timeout: 30_000 });
  let e = await page.evaluate(() => ({ message: window.__kw.error, code: window.__kw.errorCode }));
  assert.equal(e.code, 'quota-exceeded');
  assert.match(e.message, /exceed maxResources\.storage \(50\.0 MiB\)/);
  assert.match(await page.textContent('#status'), /maxResources\.storage/, 'the page shows it');

  // The browser grants this origin less than the model needs (a DevTools protocol
  // override of the quota). Chromium enforces it but `navigator.storage.estimate()` does
  // not show it, so the SDK's up-front check passes and the first write past the quota
  // fails: it must still be a quota error, not a generic failure.
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send('Storage.overrideQuotaForOrigin', { origin: new URL(server.url).origin, quotaSize: 50 * 1024 * 1024 });
  await page.goto(server.url, { timeout: 30_000 });
  await page.waitForFunction(() => window.__kw.error !== null, null, { timeout: 30_000 });
  e = await page.evaluate(() => ({ message: window.__kw.error, code: window.__kw.errorCode }));
  assert.equal(e.code, 'quota-exceeded');
  assert.match(e.message, /the browser's storage quota is exhausted/);
  assert.match(await page.textContent('#status'), /storage quota/);
  assert.equal(await page.evaluate(() => window.kwaainet.hasModel()), false);
});

test('no WebGPU adapter: the SDK picks the CPU-WASM worker host and reports it; hasModel, deleteModel; a killed worker is replaced', { skip, timeout: 120_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, `${server.url}?load=lazy`);
  // The condition under test: Chromium without --enable-unsafe-webgpu has no adapter.
  assert.equal(await page.evaluate(async () => !navigator.gpu || (await navigator.gpu.requestAdapter()) === null), true);
  const { status } = await events(page);
  const loading = status.find((s) => s.state === 'loading');
  assert.equal(loading.host, 'worker');
  assert.match(loading.reason, /no WebGPU adapter/);
  assert.equal(status.at(-1).state, 'ready');
  assert.equal(status.at(-1).backend, 'cpu-wasm');
  assert.equal(server.stats.model.length, 0, 'data-load-model="lazy" downloads nothing up front');
  assert.equal(await page.evaluate(() => window.kwaainet.hasModel()), false);

  const r = await runCase(page, capitalRaw);
  assert.deepEqual(r.ids, capitalRaw.output_ids);
  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend, info.gpuAvailable, info.simd128, info.adapter], ['worker', 'cpu-wasm', false, true, null]);
  assert.match(info.reason, /no WebGPU adapter/);
  assert.equal(info.backendReason, 'the worker host has no WebGPU engine');
  assert.equal(await page.evaluate(() => window.kwaainet.hasModel()), true);

  await page.evaluate(() => window.kwaainet.deleteModel());
  assert.equal(await page.evaluate(() => window.kwaainet.hasModel()), false);
  const before = server.stats.model.length;
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);
  assert.equal(server.stats.model.length, before + 1, 'a deleted model is downloaded again');
  assert.equal(await page.evaluate(() => window.kwaainet.hasModel()), true);

  // The worker dies (as if the browser killed it), and its pool's workers with it: the next
  // request finds it silent, starts a new one, reloads the model from the cache and answers.
  // The host is the worker named kwaainet-engine; a pool worker runs rayon's loop inside the
  // module for good, so its event loop never answers: give it a second.
  const hosts = async () => {
    const workers = page.workers();
    const name = (w) => Promise.race([w.evaluate(() => self.name).catch(() => null), new Promise((r) => setTimeout(() => r(null), 1000))]);
    const named = await Promise.all(workers.map(name));
    return workers.filter((_, i) => named[i] === 'kwaainet-engine');
  };
  const host = await hosts();
  assert.equal(host.length, 1);
  assert.equal(page.workers().length, 1 + (info.threads > 1 ? info.threads : 0), 'the host and one pool worker per thread');
  await host[0].evaluate(() => void setTimeout(() => self.close(), 0));
  const sent = modelBytesSent(server);
  const again = await runCase(page, capitalRaw);
  assert.deepEqual(again.ids, capitalRaw.output_ids);
  assert.equal((await hosts()).length, 1, 'one host again');
  const after = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.equal(after.threads, info.threads, 'the new host started its own pool');
  const states = (await events(page)).status.map((s) => s.state);
  assert.ok(states.includes('crashed') && states.includes('restarting'), `states: ${states.join(', ')}`);
  assert.equal(modelBytesSent(server), sent, 'the new worker loaded the model from the cache');
});

test('with a WebGPU adapter in the service worker, "auto" picks the service-worker host and says why', { skip, timeout: 60_000 }, async (t) => {
  const { server, page } = await setup(t, {}, { webgpu: true });
  await openDemo(page, `${server.url}?load=lazy`);
  const { status } = await events(page);
  const loading = status.find((s) => s.state === 'loading');
  assert.equal(loading.host, 'service-worker');
  assert.match(loading.reason, /WebGPU is available in the service worker/);
  // No model loaded yet ('lazy'): the backend the first load will try, and why.
  const ready = status.at(-1);
  if (webgpuBuilt) {
    assert.deepEqual([ready.state, ready.backend], ['ready', 'webgpu']);
    assert.match(ready.backendReason, /WebGPU adapter in the service-worker/);
    assert.equal(typeof ready.adapter, 'string');
  } else {
    assert.deepEqual([ready.state, ready.backend, ready.backendReason], ['ready', 'cpu-wasm', 'the service-worker host has no WebGPU engine']);
  }
});

test('abort mid-stream: the Stop button and an AbortSignal end the stream at once; the engine serves the next request', { skip, timeout: 120_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, server.url);
  // The demo UI, as a visitor uses it: decline the contribution prompt, ask, stop.
  await page.getByRole('button', { name: 'No thanks' }).click({ timeout: 10_000 });
  await page.waitForFunction(() => document.getElementById('engine').textContent.includes('cpu-wasm'), null, { timeout: 10_000 });
  const panel = await page.textContent('#engine');
  assert.match(panel, /Hostworker/);
  assert.match(panel, /cpu-wasm \(simd128\)/);
  assert.equal(await page.evaluate(() => document.getElementById('progress').value), 1);
  await page.fill('#prompt', 'Write a very long story about a dragon who learns to bake bread.');
  await page.click('#send');
  await page.waitForFunction(() => (document.querySelector('#log li.assistant')?.textContent ?? '').length > 40, null, { timeout: 30_000 });
  const t0 = performance.now();
  await page.click('#stop');
  await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: 5_000 });
  const stopMs = performance.now() - t0;
  const answer = await page.textContent('#log li.assistant');
  assert.ok(answer.endsWith('[stopped]'), answer);
  console.log(`stop button: the stream ended ${stopMs.toFixed(0)} ms after the click`);

  // The SDK directly: abort after a few chunks; the stream throws AbortError promptly.
  const r = await within(60_000, page.evaluate(async () => {
    const controller = new AbortController();
    const stream = await window.kwaainet.chat.completions.create({
      messages: [{ role: 'user', content: 'Tell me everything you know about the history of Rome.' }],
      max_tokens: 500, stream: true, signal: controller.signal,
    });
    let chunks = 0;
    let abortedAt = 0;
    try {
      for await (const c of stream) {
        if (c.choices[0].delta.content) chunks++;
        if (chunks === 5) {
          abortedAt = performance.now();
          controller.abort();
        }
      }
      return { error: null, chunks };
    } catch (err) {
      return { error: err.name, chunks, ms: performance.now() - abortedAt };
    }
  }), 'the aborted stream');
  assert.equal(r.error, 'AbortError');
  assert.ok(r.ms < 1000, `the stream ended ${r.ms} ms after abort()`);
  // The host stopped generating: the next request starts at once and is right.
  const t1 = performance.now();
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);
  const nextMs = performance.now() - t1;
  console.log(`abort(): ${r.ms.toFixed(0)} ms to the AbortError; the next request took ${nextMs.toFixed(0)} ms`);
  assert.ok(nextMs < 15_000, 'the aborted generation kept the engine busy');
});

test('a reload takes the model from Cache Storage: zero model bytes on the second load', { skip, timeout: 120_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, server.url);
  assert.equal(modelBytesSent(server), server.model.size);
  const requests = server.stats.model.length;
  await page.reload();
  await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 60_000 });
  const { progress } = await events(page);
  assert.equal(server.stats.model.length, requests, 'no request for the model after the reload');
  assert.equal(modelBytesSent(server), server.model.size);
  assert.ok(!progress.some((p) => p.phase === 'download'), 'no download phase from the cache');
  assert.ok(progress.some((p) => p.phase === 'verify' && p.loaded === server.model.size), 'the cached copy is verified');
  // Streamed from Cache Storage into the engine's GgufLoader: wasm memory never held the
  // whole file beside the weights (a load from one buffer needs file + weights).
  const { limits } = await page.evaluate(() => window.kwaainet.engineInfo());
  console.log(`cached load, streamed: wasm memory ${(limits.wasmMemoryBytes / 2 ** 20).toFixed(1)} MiB ` +
    `(file ${(limits.modelBytes / 2 ** 20).toFixed(1)} MiB, weights ${(limits.weightBytes / 2 ** 20).toFixed(1)} MiB)`);
  assert.ok(limits.wasmMemoryBytes < limits.modelBytes + limits.weightBytes, 'the cached model was streamed');
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);
  // The SDK asked for persistent storage (headless Chromium answers false: no engagement).
  assert.ok(await page.evaluate(() => window.__kw.persistCalls) >= 1, 'navigator.storage.persist() was called');
});

test('an interrupted download resumes with a Range request and verifies', { skip, timeout: 120_000 }, async (t) => {
  const cutAt = 40 * 1024 * 1024;
  const { server, page } = await setup(t, { cutModelOnce: { afterBytes: cutAt } });
  await openDemo(page, server.url);
  const [first, second, ...rest] = server.stats.model;
  assert.deepEqual([first.range, first.status, first.bytes], [null, 200, cutAt], 'the first response was cut');
  assert.ok(second, 'a second request');
  const m = /^bytes=(\d+)-$/.exec(second.range ?? '');
  assert.ok(m, `the second request resumes with Range (got ${second.range})`);
  const from = Number(m[1]);
  // Chromium drops what it buffered but the page had not read yet when the connection
  // fails, so the resume point is at most the cut.
  assert.ok(from > 0 && from <= cutAt, `resumed from ${from}`);
  assert.equal(second.status, 206);
  assert.equal(second.bytes, server.model.size - from);
  assert.equal(rest.length, 0);
  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.equal(info.model.sha256, server.model.sha256);
  const { progress } = await events(page);
  assert.equal(progress.filter((p) => p.phase === 'download').at(-1).loaded, server.model.size);
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);
  console.log(`cut after ${cutAt} bytes; resumed from byte ${from}`);
});

test('a corrupted cached model fails its SHA-256 and is fetched again', { skip, timeout: 120_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, server.url);
  const flipped = await page.evaluate(async () => {
    const cache = await caches.open('kwaainet-models-v1');
    const key = (await cache.keys()).find((r) => r.url.endsWith('/complete'));
    const res = await cache.match(key);
    const bytes = new Uint8Array(await res.arrayBuffer());
    const at = bytes.length >> 1;
    bytes[at] ^= 0xff;
    await cache.put(key, new Response(bytes, { headers: res.headers }));
    return at;
  });
  const requests = server.stats.model.length;
  await page.reload();
  await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 60_000 });
  assert.equal(await page.evaluate(() => window.__kw.error), null);
  assert.equal(server.stats.model.length, requests + 1, 'fetched again');
  assert.equal(server.stats.model.at(-1).bytes, server.model.size);
  const phases = (await events(page)).progress.map((p) => p.phase).filter((p, i, a) => p !== a[i - 1]);
  assert.deepEqual(phases, ['verify', 'download', 'verify', 'load']);
  // What the cache holds now is the real model.
  const digest = await page.evaluate(async () => {
    const cache = await caches.open('kwaainet-models-v1');
    const key = (await cache.keys()).find((r) => r.url.endsWith('/complete'));
    const buf = await (await cache.match(key)).arrayBuffer();
    return Array.from(new Uint8Array(await crypto.subtle.digest('SHA-256', buf)), (b) => b.toString(16).padStart(2, '0')).join('');
  });
  assert.equal(digest, server.model.sha256);
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);
  console.log(`flipped byte ${flipped}: detected, re-fetched`);
});

test('service-worker host without a WebGPU adapter: the CPU engine, shared by tabs, survives a tab closed mid-stream and a stopped worker', { skip, timeout: 150_000 }, async (t) => {
  const { server, browser, page } = await setup(t);
  const url = `${server.url}?host=service-worker`;
  await openDemo(page, url);
  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend, info.simd128], ['service-worker', 'cpu-wasm', true]);
  // No --enable-unsafe-webgpu: no adapter, so even this host runs the CPU engine.
  assert.deepEqual([info.gpuAvailable, info.adapter], [false, null]);
  assert.equal(info.backendReason, webgpuBuilt ? 'no WebGPU adapter in the service-worker' : 'the service-worker host has no WebGPU engine');
  assert.deepEqual((await runCase(page, capitalRaw)).ids, capitalRaw.output_ids);

  // A second tab finds the model already loaded in the service worker.
  const page2 = await browser.context.newPage();
  const sent = modelBytesSent(server);
  await openDemo(page2, url);
  assert.equal(modelBytesSent(server), sent, 'the second tab downloaded nothing');

  // The first tab closes in the middle of a long answer: the service worker notices and
  // stops, so the other tab is served at once (a wedged engine would make it wait for
  // the whole 400 tokens).
  await page.evaluate(() => {
    window.__long = { chunks: 0, done: false };
    void (async () => {
      const stream = await window.kwaainet.completions.create({ prompt: 'Once upon a time', max_tokens: 400, stream: true });
      for await (const c of stream) if (c.choices[0].text) window.__long.chunks++;
      window.__long.done = true;
    })();
  });
  await page.waitForFunction(() => window.__long.chunks >= 3, null, { timeout: 30_000 });
  assert.equal(await page.evaluate(() => window.__long.done), false);
  await page.close();
  const t0 = performance.now();
  assert.deepEqual((await runCase(page2, capitalRaw)).ids, capitalRaw.output_ids);
  const ms = performance.now() - t0;
  console.log(`after a tab closed mid-stream, the other tab's request took ${ms.toFixed(0)} ms`);
  assert.ok(ms < 10_000, `${ms} ms: the closed tab's generation held the engine`);

  // The browser stops the service worker (as it does to idle ones): the next request
  // finds a new instance, and the SDK restarts the host and reloads the model from cache.
  const cdp = await browser.context.newCDPSession(page2);
  await cdp.send('ServiceWorker.enable');
  await cdp.send('ServiceWorker.stopAllWorkers');
  assert.deepEqual((await runCase(page2, capitalRaw)).ids, capitalRaw.output_ids);
  const states = (await events(page2)).status.map((s) => s.state);
  assert.ok(states.includes('crashed') && states.includes('restarting'), `states: ${states.join(', ')}`);
  assert.equal(modelBytesSent(server), sent, 'reloaded from the cache');
});
