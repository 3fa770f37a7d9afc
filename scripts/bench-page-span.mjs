#!/usr/bin/env node
// Decode speed through a page: a 3-hop route native [0,10) → page [10,20) → native [20,30)
// on loopback, against the same route with a native node in the middle, and against local
// generation, side by side in one run. Real `kwaainet start` nodes, a real page in headless
// Chromium serving its span through its relay's circuit (the SDK's serveSpan), and the real
// client (`kwaainet generate --swarm`, f32 hidden states). Each route is also measured with a
// second page as the client (`KwaaiNetwork.swarm()`: embedding and head in the page, the
// blocks reached through its own P2P node).
//
//   node scripts/bench-page-span.mjs [--runs 3] [--tokens 64]
//
// Decode tokens/s is measured by difference: the wall time of generating 8 + N tokens minus
// that of 8 tokens, for N tokens, so process start, discovery, dialing and the prompt's
// step cancel out. Medians of --runs runs. Needs what engine/p2p/tests/browser/serve.test.mjs
// needs (the binary, dist/p2p, dist/engine-serve, sdk-ts/dist, $KWAAINET_MODEL).
import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { launch, within } from '../demo-site/tests/browser.mjs';
import {
  TEST_PAGE, WEBRTC_FLAGS, bin, freePorts, nodeState, openNetwork, p2pDir, root, sdkDir, startNode, stopNode, until,
} from '../engine/p2p/tests/browser/support.mjs';

const { values: args } = parseArgs({ options: { runs: { type: 'string', default: '3' }, tokens: { type: 'string', default: '64' } } });
const runs = Math.max(1, Math.min(20, Number(args.runs)));
const tokens = Math.max(8, Math.min(512, Number(args.tokens)));
const model = process.env.KWAAINET_MODEL;
if (!model) throw new Error('KWAAINET_MODEL must name the model file');
const PROMPT = 'The capital of France is';
const BASE = 8;

function timed(argv) {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(bin, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, RUST_LOG: 'warn' } });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    child.stdout.resume();
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve({ ms: performance.now() - t0, err });
      else reject(new Error(`kwaainet ${argv.join(' ')}: exit ${code}\n${err}`));
    });
  });
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const report = (label, rates) =>
  console.log(`${label.padEnd(34)} ${median(rates).toFixed(1).padStart(7)} tok/s  (runs: ${rates.map((r) => r.toFixed(1)).join(', ')})`);

/** Decode tokens/s of `argv(n)` by difference, median of `runs`; and the last route line. */
async function decodeRate(label, argv, check = () => {}) {
  const rates = [];
  let route = '';
  for (let i = 0; i < runs; i++) {
    const short = await timed(argv(BASE));
    const long = await timed(argv(BASE + tokens));
    check(long.err);
    route = long.err.split('\n').find((l) => l.startsWith('swarm: ')) ?? '';
    rates.push((tokens * 1000) / (long.ms - short.ms));
  }
  report(label, rates);
  return route;
}

/** The same, with `page`'s swarm client (`window.swarmClient`) as the client; the route of
 *  its last run. */
async function pageDecodeRate(label, page, check = () => {}) {
  const rates = [];
  let route = [];
  const gen = (n) => page.evaluate(async ({ prompt, n }) => {
    const t0 = performance.now();
    const r = await window.swarmClient.generate({ prompt, max_tokens: n, temperature: 0 });
    return { ms: performance.now() - t0, route: r.swarm.route, tokens: r.usage.completionTokens };
  }, { prompt: PROMPT, n });
  for (let i = 0; i < runs; i++) {
    const short = await gen(BASE);
    const long = await gen(BASE + tokens);
    if (long.tokens !== BASE + tokens) throw new Error(`${long.tokens} tokens generated, not ${BASE + tokens}`);
    route = long.route;
    check(route);
    rates.push((tokens * 1000) / (long.ms - short.ms));
  }
  report(label, rates);
  return route.map((h) => `${h.start}..${h.end} on ${h.server}`).join(', ');
}

const dir = mkdtempSync(join(tmpdir(), 'kwaainet-bench-page-'));
const nodes = [];
let browser;
try {
  const site = join(dir, 'site');
  mkdirSync(site);
  writeFileSync(join(site, 'test.html'), TEST_PAGE);
  cpSync(sdkDir, join(site, 'sdk'), { recursive: true });
  cpSync(p2pDir, join(site, 'p2p'), { recursive: true });
  cpSync(join(root, 'dist', 'engine-serve'), join(site, 'engine-serve'), { recursive: true });
  cpSync(model, join(site, 'model.gguf'));
  const boot = await startNode({ dir: join(dir, 'boot'), site, ...(await freePorts()) });
  nodes.push(boot);
  const tcp = boot.state.listen_addrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'));
  const bootAddr = `${tcp}/p2p/${boot.state.peer_id}`;
  const server = async (name, blocks) => {
    const n = await startNode({
      dir: join(dir, name), site, ...(await freePorts()), ready: 60_000,
      extra: ['--bootstrap', bootAddr, '--model', model, '--blocks', blocks],
    });
    nodes.push(n);
    return n;
  };
  await server('s1', '0:10');
  await server('s3', '20:30');
  const swarm = (n) => ['generate', '--swarm', '--bootstrap', bootAddr, '--model', model, '--codec', 'f32', '--prompt', PROMPT, '--max-tokens', String(n)];
  const local = (n) => ['generate', '--model', model, '--prompt', PROMPT, '--max-tokens', String(n)];

  browser = await launch({ args: WEBRTC_FLAGS });
  const { page } = browser;
  const { peerId } = await openNetwork(page, boot.url);
  await within(90_000, page.evaluate(async () => {
    const { ConsentManager, memoryConsentStorage } = await import('./sdk/internal.js');
    const consent = new ConsentManager({
      services: ['compute'], privacyCompliance: [], maxResources: { cpu: 100, memory: 1024, storage: 0 },
      storage: memoryConsentStorage(), prompt: async () => true,
    });
    consent.record(true);
    window.span = await window.net.serveSpan({
      modelUrl: './model.gguf', start: 10, end: 20,
      engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
      consent, maxResources: { cpu: 100, memory: 1024 },
    });
  }), 'serving 10..20 from the page');
  await until(60_000, 'a complete route through the page', async () => {
    const r = (await nodeState(nodes[1].url)).models?.[0];
    return r?.complete && r.servers.some((s) => s.peer_id === peerId);
  });
  // A second page, the client of its own generations (its swarm client in a worker).
  const client = await browser.context.newPage();
  await openNetwork(client, boot.url);
  await within(90_000, client.evaluate(async () => {
    window.swarmClient = await window.net.swarm({
      modelUrl: './model.gguf', directory: location.origin,
      engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
      workerUrl: new URL('./sdk/host/span-worker.js', location.href),
    });
  }), 'the client page\'s swarm client');
  console.log(`${tokens} decoded tokens, medians of ${runs} runs, loopback, ${(await import('node:os')).cpus().length} cores`);
  await decodeRate('local (whole model, this process)', local);
  const viaPage = await decodeRate('3 hops, page in the middle', swarm, (err) => {
    if (!err.includes(`10..20 on ${peerId}`)) throw new Error(`the route does not go through the page: ${err}`);
  });
  console.log(`  ${viaPage}`);
  const fromPage = await pageDecodeRate('  the same, the client in a page', client, (route) => {
    if (!route.some((h) => h.server === peerId)) throw new Error(`the route does not go through the page: ${JSON.stringify(route)}`);
  });
  console.log(`  ${fromPage}`);
  const pageStats = await page.evaluate(() => window.span.contribution);
  console.log(`  the page served ${pageStats.steps} steps, ${pageStats.busySeconds.toFixed(2)} s busy (${((pageStats.busySeconds * 1000) / pageStats.steps).toFixed(2)} ms a step)`);
  await page.evaluate(() => window.span.withdraw());
  await server('s2', '10:20');
  await until(60_000, 'a complete native route', async () => {
    const r = (await nodeState(nodes[1].url)).models?.[0];
    return r?.complete && !r.servers.some((s) => s.peer_id === peerId);
  });
  const native = await decodeRate('3 hops, all native', swarm);
  console.log(`  ${native}`);
  const nativeFromPage = await pageDecodeRate('  the same, the client in a page', client, (route) => {
    if (route.some((h) => h.server === peerId)) throw new Error(`the route still goes through the serving page: ${JSON.stringify(route)}`);
  });
  console.log(`  ${nativeFromPage}`);
} finally {
  await browser?.close();
  for (const n of nodes.reverse()) await stopNode(n);
  rmSync(dir, { recursive: true, force: true });
}
