// What the browser P2P tests share: free loopback ports, a real `kwaainet start` node
// (started, probed until it serves /api/v1/state, stopped), bounded polling, and a test page
// whose KwaaiNetwork joins the node. Loopback only; every wait is bounded.
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { createServer } from 'node:net';
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';

import { after, before } from 'node:test';

import { launch, within } from '../../../../demo-site/tests/browser.mjs';

export const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..');
export const bin = process.env.KWAAINET_BIN ??
  join(process.env.CARGO_TARGET_DIR ?? join(homedir(), '.cache', 'kwaainet', 'target'), 'release', 'kwaainet');
export const p2pDir = join(root, 'dist', 'p2p');
export const sdkDir = join(root, 'sdk-ts', 'dist');

// Loopback ICE candidates, and no mDNS names for local IPs. Measured: ICE to the node on
// 127.0.0.1 connects without them too (the node is ICE-lite), but these keep the
// candidates plain loopback addresses whatever the machine's interfaces. Chromium's DTLS
// runs with its default features: its post-quantum key share (X25519MLKEM768, offered first
// since Chromium 150) is one the node must handle (see the stock-Chromium test below).
export const LOOPBACK_FLAGS = ['--allow-loopback-in-peer-connection'];
export const WEBRTC_FLAGS = [...LOOPBACK_FLAGS, '--disable-features=WebRtcHideLocalIpsWithMdns'];

export const TEST_PAGE = `<!doctype html>
<meta charset="utf-8"><title>KwaaiNet P2P test</title>
<script type="module">
  import * as sdk from './sdk/index.js';
  window.sdk = sdk;
  window.log = [];
  window.inbox = [];
  window.sdkReady = true;
</script>`;

/** A fresh temporary folder holding `site/`: the test page, the SDK's build (`sdk/`) and the
 *  P2P module (`p2p/`), after checking the binary and both builds exist. */
export function testSite(prefix) {
  assert.ok(existsSync(bin), `no kwaainet binary at ${bin} (cargo build --release -p kwaainet)`);
  assert.ok(existsSync(join(p2pDir, 'kwaainet_wasm_bg.wasm')), 'no dist/p2p (MODULE=p2p bash scripts/build-wasm.sh)');
  assert.ok(existsSync(join(sdkDir, 'index.js')), 'no sdk-ts/dist (npm run build -w @kwaainet/sdk)');
  const dir = mkdtempSync(join(tmpdir(), prefix));
  const site = join(dir, 'site');
  mkdirSync(site);
  writeFileSync(join(site, 'test.html'), TEST_PAGE);
  cpSync(sdkDir, join(site, 'sdk'), { recursive: true });
  cpSync(p2pDir, join(site, 'p2p'), { recursive: true });
  return { dir, site };
}

export function canBind(port, kind) {
  return new Promise((resolve) => {
    if (kind === 'udp') {
      const s = createSocket('udp4');
      s.once('error', () => resolve(false));
      s.bind(port, '127.0.0.1', () => s.close(() => resolve(true)));
    } else {
      const s = createServer();
      s.once('error', () => resolve(false));
      s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
    }
  });
}

/** A base port P with TCP+UDP free on P and P+1 (the node's default listen layout), and a
 *  free TCP port for HTTP. Fixed ports: the restarted node must come back where it was. */
export async function freePorts() {
  for (let i = 0; i < 50; i++) {
    const base = 20_000 + 2 * Math.floor(Math.random() * 20_000);
    const http = base + 2;
    const ok = await Promise.all([
      canBind(base, 'tcp'), canBind(base, 'udp'), canBind(base + 1, 'tcp'), canBind(base + 1, 'udp'), canBind(http, 'tcp'),
    ]);
    if (ok.every(Boolean)) return { base, http };
  }
  throw new Error('no free ports found in 50 tries');
}

/** Starts `kwaainet start` (relay + full, loopback) serving `site` over HTTP, with `extra`
 *  arguments (`--bootstrap`, `--model`, `--blocks` for a span server). */
export async function startNode({ dir, site, base, http, extra = [], ready = 30_000 }) {
  const child = spawn(bin, ['start', '--host', '127.0.0.1', '--port', String(base), '--http', `127.0.0.1:${http}`,
    '--relay', '--full', '--site-dir', site, '--identity', join(dir, 'identity.key'), ...extra], {
    env: { ...process.env, KWAAINET_CONFIG_DIR: dir, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const url = `http://127.0.0.1:${http}`;
  const deadline = Date.now() + ready;
  let last = null;
  for (;;) {
    const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 100))]);
    if (early) throw new Error(`kwaainet exited early: ${JSON.stringify(early)}`);
    const state = await fetch(`${url}/api/v1/state`, { signal: AbortSignal.timeout(2_000) })
      .then((r) => (r.ok ? r.json() : `HTTP ${r.status}`), (e) => String(e));
    if (state?.browser_addrs?.length) return { child, exited, url, state };
    last = state;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`the node did not serve /api/v1/state with browser_addrs within ${ready} ms (last: ${JSON.stringify(last)})`);
    }
  }
}

/** Runs `kwaainet args…` (the binary above) to the end, bounded: its stdout, stderr and
 *  exit code. */
export function runBin(args, ms = 120_000) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { err += d; });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`kwaainet ${args.join(' ')}: no end within ${ms} ms\n${err}`));
    }, ms);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ out, err, code });
    });
  });
}

export async function stopNode(node) {
  if (!node || node.child.exitCode !== null || node.child.signalCode !== null) return;
  node.child.kill('SIGTERM');
  const done = await within(15_000, node.exited, 'node shutdown').catch(() => null);
  if (!done) node.child.kill('SIGKILL');
}

export async function nodeState(url) {
  const res = await fetch(`${url}/api/v1/state`);
  assert.equal(res.status, 200);
  return res.json();
}

/** Polls `check` (async, truthy = done) every 100 ms for at most `ms`. */
export async function until(ms, what, check) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Opens the test page and connects its KwaaiNetwork; resolves with what it saw. */
export async function openNetwork(page, url, { bootstrap = null, dialTimeoutMs = Number(process.env.DIAL_MS ?? 5_000) } = {}) {
  await page.goto(`${url}/test.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 10_000 });
  return within(30_000, page.evaluate(async ({ bootstrap, dialTimeoutMs }) => {
    const { KwaaiNetwork, fetchBootstrapAddrs } = window.sdk;
    const net = new KwaaiNetwork({
      moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href),
      dialTimeoutMs, reconnectAttempts: 30, maxBackoffMs: 2_000, requestTimeoutMs: 15_000,
    });
    window.net = net;
    net.on('status', (s) => window.log.push({ ...s }));
    net.on('relay', (r) => { window.relayAddr = r.addr; });
    net.on('message', (m) => window.inbox.push({ from: m.from, text: m.text() }));
    const addrs = bootstrap ?? await fetchBootstrapAddrs(location.origin);
    const t0 = performance.now();
    const conn = await net.connect(addrs);
    const connected = window.log.find((s) => s.status === 'connected');
    return { conn, addrs, peerId: net.peerId, transport: connected?.transport, setupMs: connected?.setupMs, wallMs: performance.now() - t0 };
  }, { bootstrap, dialTimeoutMs }), 'connecting the page');
}

/** A test file's node (serving a fresh test site) and browser (with WebRTC flags): the
 *  before/after hooks are registered here; the returned object has `dir`, `node` and
 *  `browser` once they ran. */
export function nodeAndBrowser(prefix) {
  const env = {};
  before(async () => {
    let site;
    ({ dir: env.dir, site } = testSite(prefix));
    env.node = await startNode({ dir: env.dir, site, ...(await freePorts()) });
    env.browser = await launch({ args: WEBRTC_FLAGS });
  });
  after(async () => {
    await env.browser?.close();
    await stopNode(env.node);
    if (env.dir) rmSync(env.dir, { recursive: true, force: true });
  });
  return env;
}
