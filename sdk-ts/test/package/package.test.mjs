// `npm import` as a new user meets it: the packed @kwaainet/sdk, then an app built by a
// mainstream bundler on that tarball (not on the workspace's source), in a real browser.
//
//   node --test sdk-ts/test/package/        (`npm test -- package`; after the engines
//                                            and the CDN bundle are built: the browser step)
//
// 1. `npm pack` (its prepack builds the SDK and the CDN bundle and copies the engines in:
//    sdk-ts/scripts/pack-assets.mjs): every engine file, host and type entry is in the
//    tarball, the .wasm hashes it bakes are right; `npm publish --dry-run` is clean.
// 2. app/ (index.html + main.js) with the tarball and Vite from the npm registry: the
//    package's types resolve for the app's TypeScript (app/types.ts, bundler and nodenext
//    resolution), and `vite build` copies every engine file into the app's build through
//    the package's `new URL(…, import.meta.url)` references, with no configuration.
// 3. That build served on 127.0.0.1 and opened in headless Chromium: the model loads and
//    llama.cpp's reference tokens stream in the dedicated-worker host, in the service
//    worker the bundler placed, and in one copied by `npx kwaainet-sw public`; a missing
//    service worker falls back to the worker with the reason; the packaged P2P module loads.
// 4. The same app under `vite` (the dev server, which pre-bundles the SDK): the same tokens.
//
// Work folder: dist/npm/ (the app's node_modules stays between runs, so a second run only
// reinstalls the new tarball). Needs the npm registry for Vite (or its npm cache).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startDemoServer } from '../../../demo-site/server.mjs';
import { freePort, generate, launch, within } from '../../../demo-site/tests/browser.mjs';
import { avx2, capitalRaw, skip } from '../../../demo-site/tests/common.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const sdk = join(here, '..', '..');
const root = join(sdk, '..');
const work = join(root, 'dist', 'npm');
const appDir = join(work, 'app');
const pkg = JSON.parse(readFileSync(join(sdk, 'package.json'), 'utf8'));
const tarball = join(work, `kwaainet-sdk-${pkg.version}.tgz`);
// The bundler under test, pinned: a new major is a deliberate upgrade of this test.
const VITE = '8.4.1';

const ENGINE_FILES = [
  'kwaainet-worker.js', 'kwaainet-sw.js',
  'kwaainet_wasm.js', 'kwaainet_wasm_bg.wasm',
  'kwaainet_wasm_webgpu.js', 'kwaainet_wasm_webgpu_bg.wasm',
  'kwaainet_p2p.js', 'kwaainet_p2p_bg.wasm',
  'kwaainet-span-worker.js', 'kwaainet_wasm_serve.js', 'kwaainet_wasm_serve_bg.wasm',
];
const chatCase = avx2.cases.find((c) => c.name === 'capital-chat');

/** Runs a command to completion (bounded); returns { stdout, stderr }, throws on failure. */
function run(cmd, args, { cwd, timeoutMs = 300_000, env = {} } = {}) {
  const r = spawnSync(cmd, args, {
    cwd, encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, npm_config_update_notifier: 'false', npm_config_fund: 'false', npm_config_audit: 'false', ...env },
  });
  if (r.error) throw new Error(`${cmd} ${args.join(' ')}: ${r.error.message}`);
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited with ${r.status}\n${r.stdout.slice(-4000)}\n${r.stderr.slice(-4000)}`);
  }
  return { stdout: r.stdout, stderr: r.stderr };
}

const sri = (bytes) => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;
const mib = (n) => `${(n / 1048576).toFixed(2)} MiB`;

let packed = null; // set by the first test; the later ones need it

test('npm pack: the package carries its engines, hosts, P2P module and types', { skip, timeout: 300_000 }, () => {
  rmSync(tarball, { force: true });
  mkdirSync(work, { recursive: true });
  const { stdout } = run('npm', ['pack', '--json', '--pack-destination', work], { cwd: sdk });
  // npm prints the prepack scripts' output before the JSON.
  const info = JSON.parse(stdout.slice(stdout.indexOf('[\n')))[0];
  assert.ok(existsSync(tarball), `${tarball} was written`);
  const files = new Set(info.files.map((f) => f.path));
  for (const name of ENGINE_FILES) assert.ok(files.has(`dist/${name}`), `the tarball lacks dist/${name}`);
  assert.ok(files.has('bin/kwaainet-sw.mjs'));
  assert.ok(files.has('README.md'));

  // Every entry of the exports map resolves to a file in the tarball, with its types.
  for (const [entry, target] of Object.entries(pkg.exports)) {
    if (entry === './package.json') continue;
    assert.equal(typeof target.types, 'string', `${entry} has types`);
    for (const path of [target.types, target.default]) {
      assert.ok(files.has(path.replace(/^\.\//, '')), `${entry}: ${path} is not in the tarball`);
    }
  }
  // No module runs anything on import; the one that does (the script tag's entry, for the
  // CDN's IIFE) is left out of the package.
  assert.equal(pkg.sideEffects, false);
  assert.deepEqual([...files].filter((f) => f.startsWith('dist/entries/')), []);
  assert.ok(files.has(pkg.bin['kwaainet-sw']), 'the bin is packed');

  // What a bundler reads: the literal URLs, each naming a packed file; and the baked
  // hashes, each the packed .wasm's.
  const extract = join(work, 'extract');
  rmSync(extract, { recursive: true, force: true });
  mkdirSync(extract);
  run('tar', ['-xzf', tarball, '-C', extract]);
  const dist = join(extract, 'package', 'dist');
  const packagedJs = readFileSync(join(dist, 'packaged.js'), 'utf8');
  const urls = [...packagedJs.matchAll(/new URL\('\.\/([^']+)', import\.meta\.url\)/g)].map((m) => m[1]);
  assert.deepEqual([...urls].sort(), [...ENGINE_FILES].sort(), 'packaged.js names each engine file once, as a literal');
  const integrity = (readFileSync(join(dist, 'packaged-integrity.js'), 'utf8'));
  for (const name of ENGINE_FILES.filter((n) => n.endsWith('.wasm'))) {
    assert.ok(integrity.includes(`"${name}": "${sri(readFileSync(join(dist, name)))}"`), `packaged-integrity.js has ${name}'s hash`);
  }
  for (const name of ['kwaainet-worker.js', 'kwaainet-sw.js', 'kwaainet-span-worker.js']) {
    assert.doesNotMatch(readFileSync(join(dist, name), 'utf8'), /sourceMappingURL/, `${name} names no map it lacks`);
  }
  for (const f of info.files) {
    if (!/\.(js|mjs|json)$/.test(f.path)) continue;
    const text = readFileSync(join(extract, 'package', f.path), 'utf8');
    assert.doesNotMatch(text, /\/(root|home|work|tmp)\//, `${f.path} holds a machine path`);
  }
  packed = { size: info.size, unpackedSize: info.unpackedSize, entries: info.entryCount };
  console.log(`# @kwaainet/sdk ${pkg.version}: ${info.entryCount} files, ${mib(info.size)} packed, ${mib(info.unpackedSize)} unpacked`);
  for (const name of ENGINE_FILES) {
    const size = info.files.find((f) => f.path === `dist/${name}`).size;
    console.log(`#   dist/${name.padEnd(30)} ${(size / 1024).toFixed(1).padStart(9)} KiB`);
  }
});

test('npm publish --dry-run: publishable as is, without a warning', { skip, timeout: 300_000 }, () => {
  const { stdout, stderr } = run('npm', ['publish', '--dry-run', '--json'], { cwd: sdk });
  // The one warning allowed is about this machine, not the package: no registry login.
  const warnings = stderr.split('\n').filter((l) => /^npm (warn|WARN|error|ERR)/.test(l))
    .filter((l) => !/^npm warn publish This command requires you to be logged in to .* \(dry-run\)$/.test(l));
  assert.deepEqual(warnings, [], 'npm publish --dry-run warned');
  // npm 11 prints `{ "<name>": { id, name, version, files, … } }` after the scripts' output.
  const info = JSON.parse(stdout.slice(stdout.lastIndexOf('\n{\n') + 1))[pkg.name];
  assert.equal(info.name, '@kwaainet/sdk');
  assert.equal(info.version, pkg.version);
});

test('a Vite app on the packed tarball type-checks and builds, with every engine file in its output', { skip, timeout: 600_000 }, () => {
  assert.ok(packed, 'npm pack ran');
  mkdirSync(appDir, { recursive: true });
  for (const name of ['index.html', 'main.js']) copyFileSync(join(here, 'app', name), join(appDir, name));
  const app = {
    name: 'kwaainet-vite-app',
    private: true,
    type: 'module',
    dependencies: { '@kwaainet/sdk': `file:../${pkg.name.replace('@', '').replace('/', '-')}-${pkg.version}.tgz` },
    devDependencies: { vite: VITE },
  };
  writeFileSync(join(appDir, 'package.json'), `${JSON.stringify(app, null, 2)}\n`);
  // The tarball changes with every build but keeps its version, and npm takes an installed
  // copy of the same version as satisfied: drop it, the locks that pin it, and Vite's
  // pre-bundle of it, so the app always gets this tarball (Vite stays installed).
  for (const stale of ['package-lock.json', 'node_modules/.package-lock.json', 'node_modules/@kwaainet', 'node_modules/.vite']) {
    rmSync(join(appDir, stale), { recursive: true, force: true });
  }
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], { cwd: appDir, timeoutMs: 480_000 });

  // The one-step service-worker setup of README "npm", through the package's bin.
  rmSync(join(appDir, 'public'), { recursive: true, force: true });
  const bin = join(appDir, 'node_modules', '.bin', 'kwaainet-sw');
  const copied = run(bin, ['public'], { cwd: appDir });
  assert.match(copied.stdout, /wrote .*kwaainet-sw\.js/);

  // The package's types, as an app's TypeScript resolves them through the exports map
  // (the repository's own tsc; the library's .d.ts checked too: skipLibCheck off).
  copyFileSync(join(here, 'app', 'types.ts'), join(appDir, 'types.ts'));
  for (const [module, resolution] of [['esnext', 'bundler'], ['nodenext', 'nodenext']]) {
    const compilerOptions = {
      module, moduleResolution: resolution, target: 'es2022', strict: true, noEmit: true, skipLibCheck: false,
      lib: ['ES2022', 'DOM', 'DOM.Iterable'], types: [],
    };
    writeFileSync(join(appDir, `tsconfig.${resolution}.json`), JSON.stringify({ compilerOptions, files: ['types.ts'] }, null, 2));
    run(join(root, 'node_modules', '.bin', 'tsc'), ['-p', `tsconfig.${resolution}.json`], { cwd: appDir });
  }

  rmSync(join(appDir, 'dist'), { recursive: true, force: true });
  const built = run(join(appDir, 'node_modules', '.bin', 'vite'), ['build'], { cwd: appDir, env: { NO_COLOR: '1' } });
  const log = built.stdout + built.stderr;
  // Vite warns when a `new URL(…, import.meta.url)` names no file, or a dynamic import
  // it cannot analyse: either would mean an engine file left behind.
  assert.doesNotMatch(log, /doesn't exist at build time|cannot be analyzed|will remain unchanged/i, log);
  const assets = readdirSync(join(appDir, 'dist', 'assets'));
  for (const name of ENGINE_FILES) {
    const [stem, ext] = [name.slice(0, name.lastIndexOf('.')), name.slice(name.lastIndexOf('.'))];
    const hit = assets.find((a) => a.startsWith(`${stem}-`) && a.endsWith(ext));
    assert.ok(hit, `vite build emitted no ${stem}-*${ext} (assets: ${assets.join(', ')})`);
    if (ext === '.wasm') {
      assert.ok(readFileSync(join(appDir, 'dist', 'assets', hit)).equals(readFileSync(join(sdk, 'dist', name))), `${hit} is the packed ${name}, byte for byte`);
    }
  }
  assert.ok(existsSync(join(appDir, 'dist', 'kwaainet-sw.js')), 'public/kwaainet-sw.js reached the build');
  console.log(`# vite ${VITE} build: ${assets.length} assets`);
});

/** Opens the app and waits for its instance to be ready (or failed). */
async function openApp(page, url) {
  await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 120_000, polling: 50 });
  const rec = await page.evaluate(() => window.__kw);
  if (rec.error) throw new Error(`the app's KwaaiNet failed: ${rec.error}`);
  return rec;
}

test('in headless Chromium the bundled app loads the model and streams llama.cpp\'s tokens', { skip, timeout: 600_000 }, async (t) => {
  assert.ok(existsSync(join(appDir, 'dist', 'index.html')), 'the app was built');
  const server = await startDemoServer({ port: 0, appDir: join(appDir, 'dist') });
  t.after(() => server.close());
  const browser = await launch();
  t.after(() => browser.close());
  const { page } = browser;
  const url = (q) => `${server.url}?sha=${server.model.sha256}&${q}`;
  const requested = (re) => server.stats.requests.filter((p) => re.test(p));

  // 0. README's three lines, as written there: the default host (the worker here: no
  // WebGPU adapter in the service worker), the model loaded on the first request.
  const three = await openApp(page, `${server.url}?three&sha=${server.model.sha256}`);
  assert.deepEqual(three.answer.ids, chatCase.output_ids);
  assert.equal(three.answer.text, chatCase.output_text);

  // 1. The dedicated worker, from the URL the bundler gave the packaged script.
  await openApp(page, url('host=worker'));
  let info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend], ['worker', 'cpu-wasm']);
  assert.equal(info.model.sha256, server.model.sha256);
  const raw = await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens });
  assert.deepEqual(raw.ids, capitalRaw.output_ids);
  assert.ok(raw.chunks > 1, 'streamed');
  const chat = await generate(page, { messages: chatCase.messages, maxTokens: chatCase.max_tokens });
  assert.deepEqual(chat.ids, chatCase.output_ids);
  assert.equal(requested(/^\/assets\/kwaainet-worker-[\w-]+\.js$/).length, 2, 'the workers (two pages) came from the app\'s assets');
  assert.equal(requested(/^\/assets\/kwaainet_wasm_bg-[\w-]+\.wasm$/).length, 2, 'the engine came from the app\'s assets');
  assert.deepEqual(requested(/node_modules|^\/cdn\//), [], 'nothing outside the app\'s build');
  assert.equal(server.stats.model.length, 1, 'downloaded once, then from the cache');

  // A prompt longer than the context (contextLength 512 in the app) is an
  // InvalidArgumentError with the engine's numbers, carried across the worker boundary.
  const full = await within(60_000, page.evaluate(async () => {
    try {
      await window.kwaainet.completions.create({ prompt: 'hello '.repeat(700), max_tokens: 4 });
      return null;
    } catch (e) {
      return { name: e.name, contextFull: e.contextFull, message: e.message };
    }
  }), 'an over-long prompt');
  assert.equal(full?.name, 'InvalidArgumentError', JSON.stringify(full));
  assert.equal(full.contextFull?.max, 512, JSON.stringify(full));
  assert.ok(full.contextFull.needed > 512, JSON.stringify(full));

  // The in-page host imports the engine's ES glue from the URL the bundler gave it.
  await openApp(page, url('host=in-page'));
  assert.equal((await page.evaluate(() => window.kwaainet.engineInfo())).host, 'in-page');
  assert.deepEqual((await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens })).ids, capitalRaw.output_ids);
  assert.equal(requested(/^\/assets\/kwaainet_wasm-[\w-]+\.js$/).length, 1, 'the glue came from the app\'s assets');

  // 2. The service worker the bundler placed (/assets/kwaainet-sw-<hash>.js): no setup.
  await openApp(page, url('host=service-worker'));
  info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend], ['service-worker', 'cpu-wasm']);
  assert.deepEqual((await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens })).ids, capitalRaw.output_ids);
  const bundledSw = await page.evaluate(async () => (await navigator.serviceWorker.getRegistrations()).map((r) => r.active?.scriptURL));
  assert.ok(bundledSw.some((u) => /\/assets\/kwaainet-sw-[\w-]+\.js$/.test(u)), `registered: ${bundledSw}`);
  assert.equal(server.stats.model.length, 1, 'the service worker found the model in the page\'s cache');

  // 3. The copy `npx kwaainet-sw public` made, at the site's root.
  await openApp(page, url('host=service-worker&sw=/kwaainet-sw.js'));
  assert.equal((await page.evaluate(() => window.kwaainet.engineInfo())).host, 'service-worker');
  assert.deepEqual((await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens })).ids, capitalRaw.output_ids);
  const regs = await page.evaluate(async () => (await navigator.serviceWorker.getRegistrations()).map((r) => r.active?.scriptURL));
  assert.ok(regs.includes(`${server.url}kwaainet-sw.js`), `registered: ${regs}`);

  // 4. A service worker the site forgot to serve: the dedicated worker, and why.
  await openApp(page, url('sw=/not-copied/kwaainet-sw.js'));
  info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.equal(info.host, 'worker');
  assert.match(info.reason, /service worker unavailable \(.*(404|bad HTTP response)/i, info.reason);
  assert.match(info.reason, /not-copied\/kwaainet-sw\.js/);
  assert.deepEqual((await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens })).ids, capitalRaw.output_ids);

  // 5. The packaged P2P module: `new KwaaiNetwork()` with no options loads it (SRI-checked)
  // from the app's assets, then fails to reach a port where no node listens, as it should.
  const p2p = await within(60_000, page.evaluate(async () => {
    const net = new window.KwaaiNetwork({ dialTimeoutMs: 2_000, reconnectAttempts: 0 });
    try {
      await net.connect(['/ip4/127.0.0.1/tcp/9/ws/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN']);
      return { ok: true };
    } catch (e) {
      return { ok: false, name: e.name, reason: e.reason, message: e.message };
    } finally {
      net.close();
    }
  }), 'connecting the packaged P2P module');
  assert.equal(p2p.ok, false);
  assert.equal(p2p.name, 'P2pError');
  assert.equal(p2p.reason, 'unreachable', `the module loaded and dialed: ${p2p.message}`);
  assert.equal(requested(/^\/assets\/kwaainet_p2p_bg-[\w-]+\.wasm$/).length, 1, 'the P2P module came from the app\'s assets');
});

test('`vite` dev server: the same app runs with no configuration (pre-bundled dependency)', { skip, timeout: 300_000 }, async (t) => {
  assert.ok(existsSync(join(appDir, 'node_modules', 'vite')), 'the app was installed');
  // The model from the test server, cross-origin (CORS): the dev server serves the app only.
  const server = await startDemoServer({ port: 0, appDir: join(appDir, 'dist') });
  t.after(() => server.close());
  const port = await freePort();
  const vite = spawn(join(appDir, 'node_modules', '.bin', 'vite'), ['--host', '127.0.0.1', '--port', String(port), '--strictPort'], {
    cwd: appDir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' },
  });
  let log = '';
  const exited = new Promise((resolve) => vite.once('exit', resolve));
  t.after(async () => {
    vite.kill('SIGTERM');
    await within(10_000, exited, 'stopping vite').catch(() => vite.kill('SIGKILL'));
  });
  // Ready once it prints its address; bounded, and a crash ends the wait at once.
  await within(60_000, new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d;
      if (log.includes(`127.0.0.1:${port}`)) resolve();
    };
    vite.stdout.on('data', onData);
    vite.stderr.on('data', onData);
    exited.then((code) => reject(new Error(`vite exited (${code}): ${log}`)));
  }), 'starting vite dev');

  const browser = await launch();
  t.after(() => browser.close());
  const { page } = browser;
  for (const host of ['worker', 'service-worker']) {
    await openApp(page, `http://127.0.0.1:${port}/?host=${host}&sha=${server.model.sha256}&model=${server.url}models/model.gguf`);
    assert.equal((await page.evaluate(() => window.kwaainet.engineInfo())).host, host);
    assert.deepEqual((await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.max_tokens })).ids, capitalRaw.output_ids, host);
  }
  assert.equal(server.stats.model.length, 1, 'downloaded once, then from the cache');
  assert.doesNotMatch(log, /error/i, log);
});
