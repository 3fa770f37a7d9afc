// A page serves a span of the model to the swarm: real `kwaainet start` nodes on 127.0.0.1
// serve blocks 0..10 and 20..30, a page in headless Chromium serves 10..20 through the
// SDK (`KwaaiNetwork.serveSpan`: the engine's span server in a serving worker, inference
// streams through the relay circuit, its signed record published by the relay), and a
// native client (`kwaainet generate --swarm`) generates through the three:
//   - the tokens equal local generation (f32 hidden states between hops), the route names
//     the page, and the page's counters say exactly what it served;
//   - consent withdrawn mid-generation: the page stops at once (no further step), the
//     relay drops its record, and the client fails over to a native replica without a
//     lost token;
//   - the serving page is closed mid-generation: the same;
//   - two pages serve 0..15 and 15..30, the only servers of the model: a native client
//     generates through the two browsers, so does a node's API for a third page (`route:
//     'swarm'` with an endpoint), and so does a fourth page itself (`route: 'swarm'` with a
//     network: embedding and head in the page, streamed, with an abort).
//
//   node --test engine/p2p/tests/browser/serve.test.mjs
//
// Needs what p2p.test.mjs needs, the engine module with the span server
// (FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh) and the model
// ($KWAAINET_MODEL). Loopback only; every wait is bounded.
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { launch, within } from '../../../../demo-site/tests/browser.mjs';
import {
  TEST_PAGE, WEBRTC_FLAGS, bin, freePorts, nodeState, openNetwork, p2pDir, root, runBin as run, sdkDir, startNode, stopNode,
  until,
} from './support.mjs';

const serveDir = join(root, 'dist', 'engine-serve');
const model = process.env.KWAAINET_MODEL;
const PROMPT = 'The capital of France is';

const swarmArgs = (tokens, bootstrap = bootAddr) => ['generate', '--swarm', '--bootstrap', bootstrap, '--model', model, '--codec', 'f32',
  '--prompt', PROMPT, '--max-tokens', String(tokens)];

/** A node's TCP address with its peer id, for native peers to join through. */
function tcpAddr(node) {
  const tcp = node.state.listen_addrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'));
  assert.ok(tcp, `no TCP listen address: ${JSON.stringify(node.state.listen_addrs)}`);
  return `${tcp}/p2p/${node.state.peer_id}`;
}

/** The client's route summary line (`swarm: 3 hop(s) [...]`). */
const summary = (err) => err.split('\n').find((l) => l.startsWith('swarm: ')) ?? `(no summary in: ${err})`;

let dir;
let site;
let boot;
let bootAddr;
const servers = [];
let browser;
let local16;
let local64;

/** Starts a native span server. `slow`: it announces 0.5 tokens/s per block (its measured
 *  throughput is cached in its data directory: measured by a first start, then rewritten),
 *  so routes prefer any other server of its blocks and use it only to fail over. */
async function startServer(name, blocks, { slow = false } = {}) {
  const d = join(dir, name);
  mkdirSync(d, { recursive: true });
  const start = async () => startNode({
    dir: d, site, ...(await freePorts()), ready: 60_000,
    extra: ['--bootstrap', bootAddr, '--model', model, '--blocks', blocks],
  });
  let node = await start();
  if (slow) {
    const cache = join(d, 'span-throughput.json');
    await until(30_000, 'the measured throughput in the cache', () => existsSync(cache));
    await stopNode(node);
    const entries = JSON.parse(readFileSync(cache, 'utf8'));
    assert.ok(Object.keys(entries).length > 0, 'a cached throughput');
    for (const k of Object.keys(entries)) entries[k] = 0.5;
    writeFileSync(cache, JSON.stringify(entries));
    node = await start();
  }
  servers.push(node);
  return node;
}

/** The model's health report as a server sees it, once `check(report)` holds. */
async function health(server, what, check, ms = 60_000) {
  let last = null;
  try {
    return await until(ms, what, async () => {
      const st = await nodeState(server.url);
      last = st.models;
      const r = st.models?.[0];
      return r && check(r) ? r : null;
    });
  } catch (err) {
    throw new Error(`${err.message}; last report: ${JSON.stringify(last)}`);
  }
}

/** Sets the CPU pressure `page` reads to `state` through DevTools' virtual pressure source:
 *  the serving pages' power policy sees the test's pressure, not this busy machine's (two
 *  cores running nodes, browsers and clients are at 'critical' often). */
const pressureSessions = new Map();
async function pressure(page, state) {
  let cdp = pressureSessions.get(page);
  if (!cdp) {
    cdp = await browser.context.newCDPSession(page);
    await cdp.send('Emulation.setPressureSourceOverrideEnabled', { enabled: true, source: 'cpu' });
    pressureSessions.set(page, cdp);
  }
  await cdp.send('Emulation.setPressureStateOverride', { source: 'cpu', state });
}

/** Starts serving blocks `start..end` from `page` (connected); resolves with its peer id. */
async function serveFromPage(page, start = 10, end = 20, via = boot) {
  await pressure(page, 'nominal');
  const r = await openNetwork(page, via.url);
  await within(90_000, page.evaluate(async ({ start, end }) => {
    const { ConsentManager, memoryConsentStorage } = await import('./sdk/internal.js');
    const consent = new ConsentManager({
      services: ['compute'], privacyCompliance: [], maxResources: { cpu: 100, memory: 1024, storage: 0 },
      storage: memoryConsentStorage(), prompt: async () => true,
    });
    consent.record(true);
    window.consent = consent;
    window.contributions = [];
    window.withdrawals = [];
    const span = await window.net.serveSpan({
      modelUrl: './model.gguf', start, end,
      engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
      consent, maxResources: { cpu: 100, memory: 1024 },
    });
    window.span = span;
    span.on('contribution', (c) => window.contributions.push(c));
    span.on('withdrawn', (w) => window.withdrawals.push(w.reason));
    return { modelId: span.modelId, throughput: span.throughput };
  }, { start, end }), `serving blocks ${start}..${end} from the page`);
  return r.peerId;
}

before(async () => {
  assert.ok(existsSync(bin), `no kwaainet binary at ${bin} (cargo build --release -p kwaainet)`);
  assert.ok(existsSync(join(p2pDir, 'kwaainet_wasm_bg.wasm')), 'no dist/p2p (MODULE=p2p bash scripts/build-wasm.sh)');
  assert.ok(existsSync(join(serveDir, 'kwaainet_wasm_bg.wasm')), 'no dist/engine-serve (FEATURES=serve OUT=dist/engine-serve bash scripts/build-wasm.sh)');
  assert.ok(existsSync(join(sdkDir, 'host', 'span-worker.js')), 'no sdk-ts/dist (npm run build -w @kwaainet/sdk)');
  assert.ok(model && existsSync(model), 'KWAAINET_MODEL must name the model file');
  dir = mkdtempSync(join(tmpdir(), 'kwaainet-serve-browser-'));
  site = join(dir, 'site');
  mkdirSync(site);
  writeFileSync(join(site, 'test.html'), TEST_PAGE);
  cpSync(sdkDir, join(site, 'sdk'), { recursive: true });
  cpSync(p2pDir, join(site, 'p2p'), { recursive: true });
  cpSync(serveDir, join(site, 'engine-serve'), { recursive: true });
  cpSync(model, join(site, 'model.gguf'));
  boot = await startNode({ dir: join(dir, 'boot'), site, ...(await freePorts()) });
  bootAddr = tcpAddr(boot);
  await startServer('s1', '0:10');
  await startServer('s3', '20:30');
  const [a, b] = await Promise.all([
    run(['generate', '--model', model, '--prompt', PROMPT, '--max-tokens', '16']),
    run(['generate', '--model', model, '--prompt', PROMPT, '--max-tokens', '64']),
  ]);
  assert.equal(a.code, 0, a.err);
  assert.equal(b.code, 0, b.err);
  local16 = a.out;
  local64 = b.out;
  browser = await launch({ args: WEBRTC_FLAGS });
});

after(async () => {
  await browser?.close();
  for (const s of servers) await stopNode(s);
  await stopNode(boot);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a route native → page → native gives local generation\'s tokens, and the page counts what it served', { timeout: 240_000 }, async () => {
  const { page } = browser;
  const pageId = await serveFromPage(page);
  const id = await page.evaluate(() => window.span.modelId);
  assert.match(id, /@[0-9a-f]{16}$/, 'the page names the model as a native node does');

  // The swarm sees the page's span, relayed, through the relay's hosting.
  const report = await health(servers[0], 'the page among the model\'s servers',
    (r) => r.complete === true && r.servers?.some((s) => s.peer_id === pageId));
  const row = report.servers.find((s) => s.peer_id === pageId);
  assert.equal(row.start, 10);
  assert.equal(row.end, 20);
  assert.equal(row.relayed, true, JSON.stringify(row));
  assert.equal(report.model, id);

  const before = await page.evaluate(() => window.span.contribution);
  assert.equal(before.steps, 0);
  const { out, err, code } = await run(swarmArgs(16));
  assert.equal(code, 0, err);
  assert.equal(out, local16, 'the same text as local generation');
  const line = summary(err);
  assert.match(line, /^swarm: 3 hop\(s\)/, line);
  assert.ok(line.includes(`10..20 on ${pageId}`), `the route runs 10..20 on the page: ${line}`);

  // The page's counters: every token of the prompt and of each step went through its 10
  // blocks; hidden states came in and went out.
  const c = await until(10_000, 'the final counters', () => page.evaluate(() => {
    const c = window.span.contribution;
    return c.sessionsOpen === 0 ? c : null;
  }));
  assert.equal(c.state, 'serving');
  // One session; 16 tokens: the prompt's step, then 15 one-token steps.
  assert.equal(c.sessions, 1, JSON.stringify(c));
  assert.equal(c.steps, 16, JSON.stringify(c));
  assert.ok(c.tokens > c.steps, JSON.stringify(c));
  assert.equal(c.blockTokens, c.tokens * 10, JSON.stringify(c));
  // f32 hidden states of 576 values in and out, one per token.
  assert.equal(c.bytesIn, c.tokens * 576 * 4, JSON.stringify(c));
  assert.equal(c.bytesOut, c.tokens * 576 * 4, JSON.stringify(c));
  assert.ok(c.busySeconds > 0, JSON.stringify(c));
  // Its steps' energy, modelled by the engine's footprint crate in the serving worker, went
  // back to the client with each step: the route's total includes it.
  assert.ok(c.energyUwh > 0 && c.carbonUg > 0 && c.method === 'modelled', JSON.stringify(c));
  const routeUwh = Number(/the servers used (\d+) µWh/.exec(line)?.[1]);
  assert.ok(routeUwh > c.energyUwh, `the route's ${routeUwh} µWh include the page's ${c.energyUwh}: ${line}`);
  const events = await page.evaluate(() => window.contributions);
  assert.ok(events.length >= 1 && events.every((e) => e.model === id), 'contribution events carry the counters');

  // Its signed contribution record: kept in the origin's storage, published in the record
  // its relay hosts, and read from the DHT by a server's leaderboard, which verified it
  // with the page's key.
  const signed = await until(30_000, 'the page\'s signed record', () => page.evaluate(() => window.span.contribution.signed ?? null));
  const record = JSON.parse(signed.record);
  assert.equal(record.contributor, await page.evaluate(() => window.net.did));
  assert.equal(record.method, 'modelled');
  const stored = await page.evaluate((peer) => JSON.parse(localStorage.getItem(`kwaainet:contribution:${peer}`)), pageId);
  assert.equal(stored.blockTokens, c.blockTokens, JSON.stringify(stored));
  const standing = await until(90_000, 'the page on a server\'s leaderboard', async () => {
    const board = await (await fetch(`${servers[0].url}/api/v1/leaderboard`)).json();
    return board.by_work.find((s) => s.contributor === record.contributor) ?? null;
  });
  assert.ok(standing.work > 0 && standing.work <= c.blockTokens, JSON.stringify(standing));
  assert.ok(standing.energy_uwh > 0, JSON.stringify(standing));
});

test('consent withdrawn mid-generation: the page stops at once, the relay drops its record, the client fails over without a lost token', { timeout: 240_000 }, async () => {
  const { page } = browser;
  const pageId = await page.evaluate(() => window.net.peerId);
  // A native replica of 10..20 that announces itself as very slow, so routes go through
  // the page until it leaves.
  const s2 = await startServer('s2', '10:20', { slow: true });
  await health(servers[0], 'the replica and the page', (r) => r.servers?.filter((s) => s.start === 10).length === 2);
  await page.evaluate(() => { window.stepsAtRevoke = null; });

  const generation = run(swarmArgs(64));
  // Withdraw consent once the page has served a few steps of it.
  const base = await page.evaluate(() => window.span.contribution.steps);
  await until(60_000, 'the page serving the generation', () => page.evaluate((b) => {
    if (window.span.contribution.steps < b + 4) return false;
    window.stepsAtRevoke = window.span.contribution.steps;
    window.consent.revoke();
    return true;
  }, base));
  const { out, err, code } = await generation;
  assert.equal(code, 0, err);
  assert.equal(out, local64, 'not a token lost or changed');
  const line = summary(err);
  assert.ok(line.includes(' 1 failover(s)'), `one replay: ${line}`);

  const after = await page.evaluate(() => ({
    serving: window.span.serving, because: window.span.withdrawnBecause, withdrawals: window.withdrawals,
    steps: window.span.contribution.steps, atRevoke: window.stepsAtRevoke, state: window.span.contribution.state,
  }));
  assert.equal(after.serving, false);
  assert.equal(after.because, 'consent-withdrawn');
  assert.deepEqual(after.withdrawals, ['consent-withdrawn']);
  assert.equal(after.state, 'withdrawn');
  assert.equal(after.steps, after.atRevoke, 'no step served after consent was withdrawn');
  await health(servers[0], 'the page gone from the model\'s servers', (r) => !r.servers?.some((s) => s.peer_id === pageId));

  // Serving again needs consent again.
  const refused = await page.evaluate(async () => {
    try {
      await window.net.serveSpan({
        modelUrl: './model.gguf', start: 10, end: 20,
        engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) }, consent: window.consent,
      });
      return null;
    } catch (e) {
      return e.code;
    }
  });
  assert.equal(refused, 'consent-required');
});

test('the serving page is closed mid-generation: the client fails over to the replica without a lost token', { timeout: 240_000 }, async () => {
  const { page } = browser;
  // Consent given again: the same page serves 10..20 again (a new serving worker).
  await within(90_000, page.evaluate(async () => {
    window.consent.record(true);
    window.span = await window.net.serveSpan({
      modelUrl: './model.gguf', start: 10, end: 20,
      engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
      consent: window.consent, maxResources: { cpu: 100, memory: 1024 },
    });
  }), 'serving again');
  const pageId = await page.evaluate(() => window.net.peerId);
  await health(servers[0], 'the page back among the servers', (r) => r.servers?.some((s) => s.peer_id === pageId));

  const generation = run(swarmArgs(64));
  await until(60_000, 'the page serving the generation', () => page.evaluate(() => window.span.contribution.steps >= 4));
  await page.close();
  const { out, err, code } = await generation;
  assert.equal(code, 0, err);
  assert.equal(out, local64, 'not a token lost or changed');
  const line = summary(err);
  assert.ok(line.includes(' 1 failover(s)'), `one replay: ${line}`);
  assert.ok(line.includes('10..20 on '), line);
  assert.ok(!line.includes(`10..20 on ${pageId}`), `the route ends on the replica: ${line}`);
  // The relay drops the record of a page whose connection closed.
  await health(servers[0], 'the closed page gone from the servers', (r) => !r.servers?.some((s) => s.peer_id === pageId));
});

test('a serving page pauses on a low battery and under critical compute pressure, and resumes when charging or calm', { timeout: 240_000 }, async () => {
  const page = await browser.context.newPage();
  // The battery is the test's (the Battery Status API has no DevTools override: the
  // manager is replaced before the page's scripts run); the compute pressure is Chromium's
  // own, driven through DevTools' virtual pressure source.
  await page.addInitScript(() => {
    const b = new EventTarget();
    b.charging = true;
    b.level = 1;
    b.set = (charging, level) => {
      const changed = charging !== b.charging;
      b.charging = charging;
      b.level = level;
      b.dispatchEvent(new Event(changed ? 'chargingchange' : 'levelchange'));
    };
    window.testBattery = b;
    Object.defineProperty(Navigator.prototype, 'getBattery', { value: async () => b, configurable: true });
  });
  const pageId = await serveFromPage(page);
  await page.bringToFront();
  const rowIs = (state) => health(servers[0], `the page's span ${state}`,
    (r) => r.servers?.some((s) => s.peer_id === pageId && s.state === state));
  const contribution = () => page.evaluate(() => window.span.contribution);
  // (Pressure pauses once it has lasted the policy's 10 s.)
  const until_ = (what, check) => until(30_000, what, async () => check(await contribution()));
  await rowIs('online');
  assert.deepEqual((await contribution()).power, { allowed: true, reason: null, charging: true, level: 1, pressure: 'nominal' });

  // On battery at 20 %: paused, announced draining, and a client routes around the page.
  await page.evaluate(() => window.testBattery.set(false, 0.2));
  await until_('paused for the battery', (c) => c.state === 'paused' && c.pausedBecause === 'battery');
  await rowIs('draining');
  const before = (await contribution()).steps;
  const around = await run(swarmArgs(16));
  assert.equal(around.code, 0, around.err);
  assert.equal(around.out, local16);
  assert.ok(!summary(around.err).includes(pageId), summary(around.err));
  assert.equal((await contribution()).steps, before, 'no step served while paused');

  // Charging again: serving, online, and chosen again (it is faster than the slow replica).
  await page.evaluate(() => window.testBattery.set(true, 0.25));
  await until_('serving again', (c) => c.state === 'serving' && c.power.charging === true);
  await rowIs('online');
  const through = await run(swarmArgs(16));
  assert.equal(through.code, 0, through.err);
  assert.equal(through.out, local16);
  assert.ok(summary(through.err).includes(`10..20 on ${pageId}`), summary(through.err));
  assert.ok((await contribution()).steps > before, 'serving resumed');

  // Critical compute pressure pauses it too; nominal resumes it.
  await pressure(page, 'critical');
  await until_('paused for the pressure', (c) => c.state === 'paused' && c.pausedBecause === 'pressure');
  await rowIs('draining');
  await pressure(page, 'nominal');
  await until_('serving after the pressure', (c) => c.state === 'serving');
  const states = await page.evaluate(() => window.contributions.map((c) => c.pausedBecause ?? c.state));
  assert.deepEqual([...new Set(states)].sort(), ['battery', 'pressure', 'serving'], states.join(' '));
  await page.evaluate(() => window.span.withdraw({ drainMs: 0 }));
  await page.close();
});

test('two pages serve 0..15 and 15..30: a native client generates through the two browsers alone; a third page generates through them with route \'swarm\'; one withdraws mid-generation and drains', { timeout: 300_000 }, async () => {
  // A swarm of its own: a fresh node (it watches the model: KWAAINET_MODEL) and two pages.
  const boot2 = await startNode({ dir: join(dir, 'boot2'), site, ...(await freePorts()) });
  servers.push(boot2);
  const addr2 = tcpAddr(boot2);
  const pages = [await browser.context.newPage(), await browser.context.newPage()];
  const ids = [await serveFromPage(pages[0], 0, 15, boot2), await serveFromPage(pages[1], 15, 30, boot2)];
  await health(boot2, 'the two pages as the only servers', (r) => r.complete === true &&
    r.servers.length === 2 && ids.every((id) => r.servers.some((s) => s.peer_id === id && s.relayed)));
  const { out, err, code } = await run(swarmArgs(16, addr2));
  assert.equal(code, 0, err);
  assert.equal(out, local16, 'the same text as local generation');
  const line = summary(err);
  assert.ok(line.includes(`0..15 on ${ids[0]}`) && line.includes(`15..30 on ${ids[1]}`), line);
  for (const [i, blocks] of [[0, 15], [1, 15]]) {
    const c = await pages[i].evaluate(() => window.span.contribution);
    assert.equal(c.steps, 16, JSON.stringify(c));
    assert.equal(c.blockTokens, c.tokens * blocks, JSON.stringify(c));
  }

  // A third page generates through them: `route: 'swarm'` asks a node whose API runs the
  // model through the swarm (`--api swarm`: embedding and head there, the blocks on the two
  // pages), cross-origin (CORS for this page's origin).
  const origin = new URL(boot2.url).origin;
  const api = await startNode({
    dir: join(dir, 'api'), site, ...(await freePorts()),
    extra: ['--bootstrap', addr2, '--model', model, '--api', 'swarm', '--api-cors', origin],
  });
  servers.push(api);
  const third = await browser.context.newPage();
  await third.goto(`${boot2.url}/test.html`, { waitUntil: 'load', timeout: 30_000 });
  await third.waitForFunction(() => window.sdkReady === true, null, { timeout: 10_000 });
  const stepsBefore = await Promise.all(pages.map((p) => p.evaluate(() => window.span.contribution.steps)));
  const viaSwarm = await within(120_000, third.evaluate(async ({ endpoint, prompt }) => {
    const ai = new window.sdk.KwaaiNet({ endpoint });
    const routes = [];
    ai.on('route', (r) => routes.push(r));
    // The API finds its route through the DHT: retry while it is not there yet (503).
    for (let i = 0; ; i++) {
      try {
        const r = await ai.completions.create({ prompt, max_tokens: 16, temperature: 0 }, { route: 'swarm' });
        return { text: r.choices[0].text, routes, tries: i + 1 };
      } catch (e) {
        if (i >= 30 || e.status !== 503) return { error: `${e.name}: ${e.message}`, routes };
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  }, { endpoint: api.url, prompt: PROMPT }), 'a generation through route "swarm"');
  assert.equal(viaSwarm.error, undefined, JSON.stringify(viaSwarm));
  assert.equal(`${viaSwarm.text}\n`, local16, 'the same text as local generation');
  assert.equal(viaSwarm.routes.at(-1).route, 'swarm');
  assert.match(viaSwarm.routes.at(-1).reason, /generates .* through the swarm/);
  const stepsAfter = await Promise.all(pages.map((p) => p.evaluate(() => window.span.contribution.steps)));
  for (const i of [0, 1]) assert.ok(stepsAfter[i] >= stepsBefore[i] + 16, `page ${i} served the API's steps: ${stepsBefore} → ${stepsAfter}`);
  await third.close();

  // A fourth page generates through them itself (`network`: embedding and head in the page,
  // in a worker of the serve module; the blocks on the two pages, reached through the relay
  // circuit), streamed; then a streamed request aborted mid-generation ends at once and the
  // next one runs. The page is cross-origin isolated (the node's HTTP side sends COOP/COEP).
  const fourth = await browser.context.newPage();
  await openNetwork(fourth, boot2.url);
  const stepsBeforePage = await Promise.all(pages.map((p) => p.evaluate(() => window.span.contribution.steps)));
  const inPage = await within(180_000, fourth.evaluate(async ({ prompt }) => {
    const ai = new window.sdk.KwaaiNet({
      modelUrl: './model.gguf', network: window.net, loadModelOnInit: false,
      swarm: {
        engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
        workerUrl: new URL('./sdk/host/span-worker.js', location.href),
      },
    });
    const routes = [];
    const reports = [];
    ai.on('route', (r) => routes.push(r));
    ai.on('swarm', (r) => reports.push(r));
    try {
      let text = '';
      let chunks = 0;
      const stream = await ai.completions.create({ prompt, max_tokens: 16, temperature: 0, stream: true }, { route: 'swarm' });
      for await (const c of stream) {
        text += c.choices[0]?.text ?? '';
        chunks++;
      }
      // Aborted after its third piece: an AbortError, at once.
      const ctl = new AbortController();
      let pieces = 0;
      let abortError = null;
      const t0 = performance.now();
      try {
        for await (const _ of await ai.completions.create({ prompt, max_tokens: 64, temperature: 0, stream: true }, { route: 'swarm', signal: ctl.signal })) {
          if (++pieces === 3) ctl.abort();
        }
      } catch (e) {
        abortError = e.name;
      }
      const abortMs = performance.now() - t0;
      const again = await ai.completions.create({ prompt, max_tokens: 16, temperature: 0 }, { route: 'swarm' });
      return {
        text, chunks, again: again.choices[0].text, abortError, pieces, abortMs, routes, reports,
        isolated: crossOriginIsolated, peerId: window.net.peerId,
      };
    } catch (e) {
      return { error: `${e.name}: ${e.message}`, routes, reports, isolated: crossOriginIsolated };
    } finally {
      await ai.dispose();
    }
  }, { prompt: PROMPT }), 'a generation through the swarm from a page');
  assert.equal(inPage.error, undefined, JSON.stringify(inPage));
  assert.equal(inPage.isolated, true);
  assert.equal(`${inPage.text}\n`, local16, 'the same text as local generation');
  assert.ok(inPage.chunks >= 2, `streamed: ${inPage.chunks} chunks`);
  assert.equal(`${inPage.again}\n`, local16, 'the request after the aborted one');
  assert.equal(inPage.abortError, 'AbortError');
  assert.ok(inPage.pieces < 10, `stopped at once: ${inPage.pieces} pieces`);
  assert.deepEqual(inPage.routes.map((r) => `${r.route}/${r.client}`), ['swarm/page', 'swarm/page', 'swarm/page']);
  const hops = inPage.reports[0].route.map((h) => `${h.start}..${h.end} on ${h.server}`);
  assert.deepEqual(hops, [`0..15 on ${ids[0]}`, `15..30 on ${ids[1]}`]);
  assert.equal(inPage.reports[0].failovers, 0);
  assert.equal(inPage.reports.length, 2, 'a report per finished generation (the aborted one has none)');
  const stepsAfterPage = await Promise.all(pages.map((p) => p.evaluate(() => window.span.contribution.steps)));
  for (const i of [0, 1]) {
    assert.ok(stepsAfterPage[i] >= stepsBeforePage[i] + 32, `page ${i} served the page's steps: ${stepsBeforePage} → ${stepsAfterPage}`);
  }
  await fourth.close();

  // The second page withdraws mid-generation: it drains. It is the only server of 15..30,
  // so the generation can only finish if the page keeps answering the session it has open:
  // it does, with no failover, then its record goes.
  const generation = run(swarmArgs(64, addr2));
  const base = await pages[1].evaluate(() => window.span.contribution.steps);
  await until(60_000, 'the second page serving the generation', () => pages[1].evaluate((b) => {
    if (window.span.contribution.steps < b + 4) return false;
    window.stepsAtWithdraw = window.span.contribution.steps;
    window.withdrawing = window.span.withdraw({ drainMs: 60_000 });
    window.stateAtWithdraw = window.span.contribution.state;
    return true;
  }, base));
  const drained = await generation;
  assert.equal(drained.code, 0, drained.err);
  assert.equal(drained.out, local64, 'not a token lost or changed');
  const line2 = summary(drained.err);
  assert.ok(line2.includes(' 0 failover(s)'), `no replay: ${line2}`);
  const after = await pages[1].evaluate(async () => {
    await window.withdrawing;
    return {
      atWithdraw: window.stepsAtWithdraw, stateAtWithdraw: window.stateAtWithdraw, c: window.span.contribution,
      because: window.span.withdrawnBecause,
    };
  });
  assert.equal(after.stateAtWithdraw, 'draining');
  assert.ok(after.c.steps > after.atWithdraw, `it answered the open session after withdraw(): ${JSON.stringify(after)}`);
  assert.equal(after.c.state, 'withdrawn');
  assert.equal(after.because, 'withdrawn');
  await health(boot2, 'the drained page gone from the servers', (r) => !r.servers?.some((s) => s.peer_id === ids[1]));
});

test('a page generates through native span servers itself: their WebRTC-direct or WebSocket addresses from their signed records', { timeout: 240_000 }, async () => {
  // The servers left by the tests above: native 0..10 and 20..30 (started first), and the
  // slow replica of 10..20 (the consent test's).
  const natives = [servers[0], servers[2], servers[1]].map((s) => s.state.peer_id);
  await health(servers[0], 'three native servers', (r) => r.complete === true &&
    r.servers.length === 3 && r.servers.every((s) => natives.includes(s.peer_id) && !s.relayed));
  const page = await browser.context.newPage();
  await openNetwork(page, boot.url);
  const r = await within(180_000, page.evaluate(async ({ prompt }) => {
    const ai = new window.sdk.KwaaiNet({
      modelUrl: './model.gguf', network: window.net, loadModelOnInit: false,
      swarm: {
        engine: { moduleUrl: new URL('./engine-serve/kwaainet_wasm.js', location.href) },
        workerUrl: new URL('./sdk/host/span-worker.js', location.href),
      },
    });
    const reports = [];
    ai.on('swarm', (s) => reports.push(s));
    try {
      const c = await ai.completions.create({ prompt, max_tokens: 16, temperature: 0 }, { route: 'swarm' });
      const peers = (await window.net.state()).peers;
      return { text: c.choices[0].text, reports, peers };
    } catch (e) {
      return { error: `${e.name}: ${e.message}`, reports };
    } finally {
      await ai.dispose();
    }
  }, { prompt: PROMPT }), 'a generation through native servers from a page');
  assert.equal(r.error, undefined, JSON.stringify(r));
  assert.equal(`${r.text}\n`, local16, 'the same text as local generation');
  const hops = r.reports[0].route.map((h) => `${h.start}..${h.end} on ${h.server}`);
  assert.deepEqual(hops, [`0..10 on ${natives[0]}`, `10..20 on ${natives[1]}`, `20..30 on ${natives[2]}`]);
  // Reached directly: the page holds connections to the three servers, not only its relay.
  for (const id of natives) assert.ok(r.peers.includes(id), `connected to ${id}: ${r.peers}`);
  await page.close();
});
