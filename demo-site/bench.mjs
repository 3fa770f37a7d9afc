#!/usr/bin/env node
// Browser bench: the SDK's CPU-WASM host (dedicated worker, simd128; one thread, then the
// multi-threaded engine: --threads, default 1,2) in
// headless Chromium on the demo page (cross-origin isolated), measured like `kwaainet bench` and
// engine/wasm/bench.mjs: load time, then prefill and decode tokens/s, medians of --runs.
// When the bundle has the WebGPU engine, a second row: the service-worker host running it
// (Chromium with --enable-unsafe-webgpu: SwiftShader, WebGPU on the CPU, where there is no
// GPU), with its own, smaller, run counts (--webgpu-runs, --webgpu-gen-tokens,
// --webgpu-repeat: SwiftShader takes seconds per token). --skip-webgpu leaves it out.
// With --wllama, wllama (llama.cpp compiled to WebAssembly, npm @wllama/wllama) runs the
// same GGUF in the same browser, at the same thread counts, right after ours, for comparison.
//
//   npm run bench:browser                          (= node demo-site/bench.mjs --wllama)
//   node demo-site/bench.mjs [--runs 5] [--repeat 3] [--gen-tokens 64] [--wllama] [--threads 1,2]
//       [--webgpu-runs 1] [--webgpu-repeat 1] [--webgpu-gen-tokens 8] [--skip-webgpu]
//
// The prompt is `kwaainet bench`'s text repeated --repeat times (3: about 125 tokens), the
// same string for both engines; each reports how many tokens it made of it.
//
// Needs what the browser tests need (dist/cdn with the engine, Chromium, the model:
// --model, $KWAAINET_MODEL or the CLI's cache). wllama is not a dependency of the project:
// --wllama installs @wllama/wllama@2.4.0 (the faster release here) with npm into
// $KWAAINET_CACHE/bench (default ~/.cache/kwaainet/bench), once.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cdnDir, findModel, startDemoServer } from './server.mjs';
import { launch, openDemo, recordEvents, within } from './tests/browser.mjs';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    repeat: { type: 'string', default: '3' },
    'gen-tokens': { type: 'string', default: '64' },
    wllama: { type: 'boolean', default: false },
    threads: { type: 'string', default: '1,2' },
    'wllama-version': { type: 'string', default: '2.4.0' },
    model: { type: 'string' },
    'webgpu-runs': { type: 'string', default: '1' },
    'webgpu-repeat': { type: 'string', default: '1' },
    'webgpu-gen-tokens': { type: 'string', default: '8' },
    'skip-webgpu': { type: 'boolean', default: false },
  },
});
const runs = Number(args.runs);
const threadCounts = args.threads.split(',').map(Number);
if (!threadCounts.every((n) => Number.isInteger(n) && n >= 1 && n <= 16)) {
  console.error('--threads: a comma-separated list of thread counts in [1, 16]');
  process.exit(1);
}
const repeat = Number(args.repeat);
const genTokens = Number(args['gen-tokens']);
const modelPath = args.model ?? findModel();
if (!modelPath) {
  console.error('no model: pass --model PATH or set KWAAINET_MODEL');
  process.exit(1);
}

// The same text as `kwaainet bench`.
const TEXT =
  'The history of distributed computing begins with networks of machines that ' +
  'shared work over slow links. Volunteers donated spare cycles to science, and ' +
  'later, peer-to-peer systems spread files and computation across the world. ';

const median = (v) => [...v].sort((a, b) => a - b)[Math.floor(v.length / 2)];
const fmt = (v, d = 1) => v.toFixed(d);

function wllamaDir() {
  const version = args['wllama-version'];
  const dir = join(process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet'), 'bench', `wllama-${version}`);
  const pkg = join(dir, 'node_modules', '@wllama', 'wllama');
  if (!existsSync(join(pkg, 'esm', 'index.js'))) {
    mkdirSync(dir, { recursive: true });
    console.log(`bench: installing @wllama/wllama@${version} into ${dir} (bench only)`);
    execFileSync('npm', ['install', '--no-save', '--no-audit', '--no-fund', '--loglevel=error', '--prefix', dir, `@wllama/wllama@${version}`], { stdio: 'inherit' });
  }
  return pkg;
}

/**
 * The SDK on the demo page. CPU: the dedicated-worker host (no WebGPU adapter). WebGPU:
 * `--enable-unsafe-webgpu`, so 'auto' picks the service-worker host and its WebGPU engine
 * (the bench fails if it did not). Every timing waits long enough for SwiftShader.
 */
async function benchKwaaiNet(server, { webgpu = false, threads = 1, runs, repeat, genTokens }) {
  const browser = await launch({ webgpu });
  try {
    await recordEvents(browser.context);
    const { page } = browser;
    // Load: navigation to ready. The first includes the download (loopback) into Cache
    // Storage; the others read the cache, verify SHA-256 and parse (worker host), or find
    // the model still loaded in the service worker (service-worker host).
    const loads = [];
    for (let i = 0; i <= runs; i++) {
      const t0 = performance.now();
      if (i === 0) await openDemo(page, webgpu ? server.url : `${server.url}?threads=${threads}`, { timeoutMs: 300_000 });
      else {
        await page.reload();
        await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 300_000 });
      }
      loads.push((performance.now() - t0) / 1000);
    }
    const info = await page.evaluate(() => window.kwaainet.engineInfo());
    if (info.backend !== (webgpu ? 'webgpu' : 'cpu-wasm')) {
      throw new Error(`bench: expected the ${webgpu ? 'webgpu' : 'cpu-wasm'} backend, got ${info.backend} (${info.backendReason})`);
    }
    if (!webgpu && info.threads !== threads) {
      throw new Error(`bench: expected ${threads} thread(s), the engine runs ${info.threads} (${info.threadsReason})`);
    }
    const samples = [];
    for (let i = 0; i <= runs; i++) { // the first run warms up (WebGPU: compiles the shaders)
      const r = await within(600_000, page.evaluate(async ({ prompt, gen }) => {
        const res = await window.kwaainet.completions.create({ prompt, max_tokens: gen });
        return res.usage;
      }, { prompt: TEXT.repeat(repeat), gen: genTokens }), 'a bench run');
      if (i > 0) samples.push(r);
    }
    // The host's time to first token covers the prefill and the first decode step.
    const prefill = samples.map((u) => u.prompt_tokens / ((u.extra.time_to_first_token_ms - 1000 / u.extra.decode_tokens_per_s) / 1000));
    const where = webgpu ? `${info.backend} on ${info.adapter || 'an adapter without a description'}` :
      `${info.backend}${info.simd128 ? ', simd128' : ''}${info.relaxedSimd ? ' + relaxed SIMD' : ''}, ${info.threads} thread${info.threads === 1 ? '' : 's'}`;
    return {
      name: `KwaaiNet ${info.engineVersion} (${info.host} host, ${where})`,
      coldLoad: loads[0],
      warmLoad: median(loads.slice(1)),
      warmWhat: info.host === 'service-worker' ? 'reload: the model stays loaded in the service worker' : 'from the browser\'s cache',
      runs,
      prompt: samples[0].prompt_tokens,
      gen: median(samples.map((u) => u.completion_tokens)),
      prefill: median(prefill),
      decode: median(samples.map((u) => u.extra.decode_tokens_per_s)),
    };
  } finally {
    await browser.close();
  }
}

async function benchWllama(server, threads) {
  const browser = await launch();
  try {
    const { page } = browser;
    await page.goto(new URL('bench.html', server.url).href);
    const r = await within(600_000, page.evaluate(async ({ text, genTokens, runs, modelUrl, threads }) => {
      const { Wllama } = await import('/wllama/esm/index.js');
      const paths = {
        'single-thread/wllama.wasm': '/wllama/esm/single-thread/wllama.wasm',
        'multi-thread/wllama.wasm': '/wllama/esm/multi-thread/wllama.wasm',
      };
      const loads = [];
      let w = null;
      for (let i = 0; i <= runs; i++) {
        if (w) await w.exit();
        w = new Wllama(paths, { suppressNativeLog: true });
        const t0 = performance.now();
        await w.loadModelFromUrl(modelUrl, { n_threads: threads, n_ctx: 2048, n_batch: 512, n_gpu_layers: 0 });
        loads.push((performance.now() - t0) / 1000);
      }
      const prompt = await w.tokenize(text, true);
      const samples = [];
      for (let i = 0; i <= runs; i++) {
        await w.kvClear();
        await w.samplingInit({ temp: 0 });
        let t = performance.now();
        await w.decode(prompt, {});
        const prefillS = (performance.now() - t) / 1000;
        t = performance.now();
        let n = 0;
        for (; n < genTokens; n++) {
          const { token } = await w.samplingSample();
          await w.samplingAccept([token]);
          await w.decode([token], {});
        }
        const decodeS = (performance.now() - t) / 1000;
        if (i > 0) samples.push({ prefill: prompt.length / prefillS, decode: n / decodeS });
      }
      return { loads, samples, threads: w.getNumThreads(), multi: w.isMultithread(), prompt: prompt.length };
    }, { text: TEXT.repeat(repeat), genTokens, runs, modelUrl: new URL('models/model.gguf', server.url).href, threads }), 'wllama');
    if (r.threads !== threads) throw new Error(`bench: wllama runs ${r.threads} thread(s), not ${threads}`);
    return {
      name: `wllama ${args['wllama-version']} (${r.multi ? 'multi' : 'single'}-thread build, ${r.threads} thread${r.threads === 1 ? '' : 's'})`,
      coldLoad: r.loads[0],
      warmLoad: median(r.loads.slice(1)),
      warmWhat: 'from the browser\'s cache',
      runs,
      prompt: r.prompt,
      gen: genTokens,
      prefill: median(r.samples.map((s) => s.prefill)),
      decode: median(r.samples.map((s) => s.decode)),
    };
  } finally {
    await browser.close();
  }
}

const server = await startDemoServer({ port: 0, modelPath, ...(args.wllama && { wllamaDir: wllamaDir() }) });
try {
  // Side by side at each thread count: ours, then wllama's, so both see the same load.
  const results = [];
  for (const threads of threadCounts) {
    results.push(await benchKwaaiNet(server, { threads, runs, repeat, genTokens }));
    if (args.wllama) results.push(await benchWllama(server, threads));
  }
  if (args['skip-webgpu']) {
    console.log('bench: --skip-webgpu: no WebGPU row');
  } else if (!existsSync(join(cdnDir, 'kwaainet_wasm_webgpu_bg.wasm'))) {
    console.log('bench: the CDN bundle has no WebGPU engine (FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh, node cdn/build.mjs): no WebGPU row');
  } else {
    results.push(await benchKwaaiNet(server, {
      webgpu: true, runs: Number(args['webgpu-runs']), repeat: Number(args['webgpu-repeat']), genTokens: Number(args['webgpu-gen-tokens']),
    }));
  }
  const chromium = execFileSync(process.env.CHROMIUM ?? '/usr/bin/chromium', ['--version'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  console.log(`${chromium}, headless; model ${modelPath} (${fmt(server.model.size / 1e6)} MB); medians`);
  console.log('load = navigation (KwaaiNet) or loadModelFromUrl (wllama) to model ready; cold: downloaded over loopback');
  for (const r of results) {
    console.log(`${r.name}, median of ${r.runs} run${r.runs === 1 ? '' : 's'}`);
    console.log(`  load     cold ${fmt(r.coldLoad, 2)} s, warm ${fmt(r.warmLoad, 2)} s (${r.warmWhat})`);
    console.log(`  prefill  ${fmt(r.prefill)} tok/s (${r.prompt} tokens)`);
    console.log(`  decode   ${fmt(r.decode)} tok/s (${r.gen} tokens)`);
  }
} finally {
  await server.close();
}
