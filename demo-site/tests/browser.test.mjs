// The browser side, end to end, in a real headless Chromium: the demo page loads the SDK
// through the one-line script tag (integrity + crossorigin), the SDK starts its engine host
// (the CPU WASM engine in a dedicated worker, or in the service worker when asked),
// downloads the default model with progress, verifies and caches it, and generates.
//
//   node --test demo-site/tests/          (after scripts/build-wasm.sh and cdn/build.mjs)
//
// Needs /usr/bin/chromium (or $CHROMIUM) and the model (KWAAINET_MODEL, else the CLI's
// cache); without them the tests skip, unless KWAAINET_REQUIRE_MODEL=1 / CI=true. Each
// test has its own browser profile and its own server on 127.0.0.1 (ephemeral port), both
// closed when it ends.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cdnDir, findModel, manifestIntegrity, startDemoServer, version } from '../server.mjs';
import { CHROMIUM, generate, launch, openDemo, recordEvents, within } from './browser.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const data = join(root, 'engine', 'core', 'tests', 'data');
const shared = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp.json'), 'utf8'));
const avx2 = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp-avx2.json'), 'utf8'));
const capitalRaw = avx2.cases.find((c) => c.name === 'capital-raw');

const required = process.env.KWAAINET_REQUIRE_MODEL === '1' || process.env.CI === 'true';
const missing = [
  !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}`,
  !findModel() && 'no model (set KWAAINET_MODEL)',
  !existsSync(join(cdnDir, 'kwaainet_wasm_bg.wasm')) && 'no CDN bundle with the engine (scripts/build-wasm.sh, node cdn/build.mjs)',
].filter(Boolean);
if (missing.length > 0 && required) throw new Error(`browser tests cannot run: ${missing.join('; ')}`);
const skip = missing.length > 0 ? missing.join('; ') : false;

/** One server + one fresh browser per test, always closed. */
async function setup(t, serverOptions = {}, launchOptions = {}) {
  const server = await startDemoServer({ port: 0, ...serverOptions });
  t.after(() => server.close());
  const browser = await launch(launchOptions);
  t.after(() => browser.close());
  await recordEvents(browser.context);
  return { server, browser, page: browser.page };
}

const events = (page) => page.evaluate(() => ({ progress: window.__kw.progress, status: window.__kw.status }));
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

test('script tag with SRI: download with progress, then greedy tokens equal llama.cpp\'s', { skip, timeout: 240_000 }, async (t) => {
  const { server, page } = await setup(t);
  await openDemo(page, server.url);
  console.log(`ready at ${(performance.now() / 1000).toFixed(1)} s`);

  // The one-line tag, as the page has it: integrity and crossorigin set, and the hash is
  // the CDN manifest's (Chromium refused the script otherwise: see the next test).
  const tag = await page.evaluate(() => {
    const s = document.querySelector('script[src*="distributed-ai.js"]');
    return { integrity: s.integrity, crossOrigin: s.crossOrigin, hasClass: typeof window.KwaaiNet === 'function' };
  });
  assert.equal(tag.integrity, manifestIntegrity());
  assert.match(tag.integrity, /^sha384-/);
  assert.equal(tag.crossOrigin, 'anonymous');
  assert.ok(tag.hasClass, 'window.KwaaiNet is the class');
  for (const asset of ['kwaainet-worker.js', 'kwaainet_wasm_bg.wasm']) {
    assert.ok(server.stats.requests.some((p) => p.endsWith(`/${asset}`)), `${asset} was loaded`);
  }

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
  assert.equal(info.model.sha256, server.model.sha256);
  assert.equal(info.model.nLayers, 30);

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
  console.log(`teacher forcing done at ${(performance.now() / 1000).toFixed(1)} s`);
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
