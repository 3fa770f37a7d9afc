// The browser joins the P2P network: pages in headless Chromium run the page-side libp2p
// node (dist/p2p/, rust-libp2p in WebAssembly) through the SDK's KwaaiNetwork and talk to a
// real `kwaainet start` node on 127.0.0.1:
//   - WebRTC-direct: the page connects, shows up in the node's peer table
//     (/api/v1/state), and reads the node's signed record through the DHT (client mode)
//     and through /kwaainet/info/1.0.0;
//   - WebSocket fallback when the WebRTC-direct address does not answer;
//   - two pages exchange messages (/kwaainet/msg/1.0.0) through the node's relay circuit;
//   - the page reconnects by itself after the node restarts.
//
//   node --test engine/p2p/tests/browser/
//
// Needs the kwaainet binary ($KWAAINET_BIN, else $CARGO_TARGET_DIR/release/kwaainet), the
// P2P module (MODULE=p2p bash scripts/build-wasm.sh) and the SDK's build
// (npm run build -w @kwaainet/sdk). Loopback only; every wait is bounded.
import { rmSync } from 'node:fs';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { launch, within } from '../../../../demo-site/tests/browser.mjs';
import {
  LOOPBACK_FLAGS, WEBRTC_FLAGS, freePorts, nodeState, openNetwork, startNode, stopNode, testSite, until,
} from './support.mjs';

let dir;
let site;
let ports;
let node;
let browser;

before(async () => {
  ({ dir, site } = testSite('kwaainet-p2p-browser-'));
  ports = await freePorts();
  node = await startNode({ dir, site, ...ports });
  browser = await launch({ args: WEBRTC_FLAGS });
});

after(async () => {
  await browser?.close();
  await stopNode(node);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('a page joins the node (WebRTC-direct first, then WebSocket), appears in its peer table and reads its record (DHT + info)', { timeout: 90_000 }, async () => {
  const { page } = browser;
  const nodeId = node.state.peer_id;
  assert.match(node.state.browser_addrs[0], /\/webrtc-direct\/certhash\/.+\/p2p\//, 'WebRTC-direct is listed first');
  assert.ok(node.state.browser_addrs.some((a) => a.includes('/ws/')), 'a WebSocket address is listed');

  // WebRTC-direct is tried first and connects (see WEBRTC_FLAGS).
  const r = await openNetwork(page, node.url, { dialTimeoutMs: 3_000 });
  assert.equal(r.conn.peer, nodeId);
  assert.equal(r.transport, 'webrtc-direct', `connected over ${r.transport} (${r.conn.addr})`);
  console.log(`  joined over ${r.transport}: setup ${r.setupMs?.toFixed(0)} ms (connect() wall ${r.wallMs.toFixed(0)} ms)`);

  // The node sees the page.
  const st = await until(10_000, 'the page in the node\'s peer table', async () => {
    const s = await nodeState(node.url);
    return s.connected_peers.find((p) => p.peer_id === r.peerId) ? s : null;
  });
  const me = st.connected_peers.find((p) => p.peer_id === r.peerId);
  assert.match(me.address, r.transport === 'websocket' ? /\/ws/ : /webrtc-direct/);

  // The node's record, through the DHT (Kademlia client mode) and through info.
  const rec = await within(20_000, page.evaluate(async (id) => {
    const t0 = performance.now();
    const dht = await window.net.getRecord(id);
    const dhtMs = performance.now() - t0;
    const info = await window.net.askInfo(id);
    // Browsers publish no record: our own id is a lookup that finds nothing.
    const missing = await window.net.getRecord(window.net.peerId);
    return { dht, info, dhtMs, missing };
  }, nodeId), 'record lookups');
  assert.equal(rec.dht.peer_id, nodeId);
  assert.deepEqual(rec.dht.roles, ['bootstrap', 'relay', 'full']);
  assert.ok(rec.dht.addrs.some((a) => a.addr.includes('/webrtc-direct/')), 'the record announces WebRTC-direct');
  assert.equal(rec.info.peer_id, nodeId);
  assert.equal(rec.missing, null, 'an unknown peer has no record');
  console.log(`  DHT lookup of the node's record: ${rec.dhtMs.toFixed(0)} ms`);

  // Bad input is a typed error, not a hang.
  const bad = await page.evaluate(async () => {
    const out = [];
    for (const f of [() => window.net.getRecord('not-a-peer'), () => window.net.send(window.net.peerId, new Uint8Array(64 * 1024 + 1))]) {
      try { await f(); out.push('resolved'); } catch (e) { out.push(e.name); }
    }
    return out;
  });
  assert.deepEqual(bad, ['InvalidArgumentError', 'InvalidArgumentError']);
  await page.evaluate(() => window.net.close());
});

test('WebRTC-direct alone: the DTLS handshake with the node completes', { timeout: 60_000 }, async () => {
  const page = await browser.context.newPage();
  try {
    const rtc = node.state.browser_addrs.find((a) => a.includes('/webrtc-direct/'));
    const r = await openNetwork(page, node.url, { bootstrap: [rtc], dialTimeoutMs: 10_000 });
    assert.equal(r.transport, 'webrtc-direct');
    assert.equal(r.conn.peer, node.state.peer_id);
    console.log(`  WebRTC-direct setup: ${r.setupMs?.toFixed(0)} ms`);
  } finally {
    await page.close();
  }
});

// Chromium 150+ with its default features opens DTLS with a 1.3 ClientHello that lists the
// post-quantum group X25519MLKEM768 first. The node's DTLS used to answer alert 47
// (libp2p-webrtc 0.9's webrtc-dtls 0.11 took the first group blindly), so such pages only
// joined over WebSocket after the dial timeout; libp2p-webrtc 0.10 (src/webrtc_compat.rs)
// skips the groups it does not support. This page runs in its own Chromium with no
// `--disable-features` at all, lists WebSocket after WebRTC-direct (so a failed handshake
// would fall back, not hang), and must end up on WebRTC-direct on both ends.
test('WebRTC-direct from Chromium with default features (post-quantum DTLS key share)', { timeout: 60_000 }, async () => {
  const stock = await launch({ args: LOOPBACK_FLAGS });
  try {
    const version = await stock.page.evaluate(() => navigator.userAgent.match(/Chrome\/[\d.]+/)?.[0] ?? navigator.userAgent);
    const addrs = node.state.browser_addrs;
    assert.match(addrs[0], /\/webrtc-direct\//, 'WebRTC-direct is offered first');
    assert.ok(addrs.some((a) => a.includes('/ws/')), 'WebSocket is offered as the fallback');
    const r = await openNetwork(stock.page, node.url, { bootstrap: addrs, dialTimeoutMs: 5_000 });
    assert.equal(r.transport, 'webrtc-direct', `connected over ${r.transport} (${r.conn.addr})`);
    assert.match(r.conn.addr, /\/webrtc-direct\//);
    const me = await until(10_000, 'the page in the node\'s peer table', async () => {
      const s = await nodeState(node.url);
      return s.connected_peers.find((p) => p.peer_id === r.peerId) ?? null;
    });
    assert.match(me.address, /webrtc-direct/, `the node sees the page on ${me.address}`);
    console.log(`  stock Chromium (${version}) joined over WebRTC-direct: setup ${r.setupMs?.toFixed(0)} ms (connect() wall ${r.wallMs.toFixed(0)} ms)`);
  } finally {
    await stock.close();
  }
});

test('WebSocket fallback: a dead WebRTC-direct address is given up after the dial timeout', { timeout: 60_000 }, async () => {
  const page = await browser.context.newPage();
  try {
    const addrs = node.state.browser_addrs;
    const rtc = addrs.find((a) => a.includes('/webrtc-direct/'));
    const ws = addrs.find((a) => a.includes('/ws/'));
    // The same certhash and peer on a UDP port nobody listens on (the HTTP port's number).
    const dead = rtc.replace(/\/udp\/\d+\//, `/udp/${ports.http}/`);
    const r = await openNetwork(page, node.url, { bootstrap: [dead, ws], dialTimeoutMs: 2_000 });
    assert.equal(r.transport, 'websocket', `connected over ${r.transport}`);
    assert.equal(r.conn.peer, node.state.peer_id);
    const rec = await within(20_000, page.evaluate((id) => window.net.getRecord(id), node.state.peer_id), 'lookup over WebSocket');
    assert.equal(rec.peer_id, node.state.peer_id);
    // Unreachable everywhere: a typed error within the bounds.
    const err = await within(20_000, page.evaluate(async (dead) => {
      const { KwaaiNetwork } = window.sdk;
      const n = new KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href), dialTimeoutMs: 1_000 });
      try { await n.connect([dead]); return 'connected?'; } catch (e) { return { name: e.name, reason: e.reason, status: n.status }; }
    }, dead), 'failing connect');
    assert.deepEqual(err, { name: 'P2pError', reason: 'unreachable', status: 'offline' });
  } finally {
    await page.close();
  }
});

test('two pages exchange messages through the node\'s relay circuit; the page reconnects after the node restarts', { timeout: 150_000 }, async () => {
  const a = await browser.context.newPage();
  const b = await browser.context.newPage();
  try {
    // Over WebSocket; the last test sends large messages over WebRTC-direct. Page A lists a
    // WebRTC-direct address nobody answers first, as a page whose network blocks UDP (or
    // whose browser cannot complete WebRTC-direct with the node) sees it: it joins over
    // WebSocket after the dial timeout, and its reconnects must try WebSocket first
    // (checked after the restart).
    const ws = node.state.browser_addrs.filter((x) => x.includes('/ws/'));
    const rtc = node.state.browser_addrs.find((x) => x.includes('/webrtc-direct/'));
    const dead = rtc.replace(/\/udp\/\d+\//, `/udp/${ports.http}/`);
    const ra = await openNetwork(a, node.url, { bootstrap: [dead, ...ws], dialTimeoutMs: 3_000 });
    assert.ok(ra.transport === 'websocket' && ra.setupMs >= 3_000, `A joined over ${ra.transport} in ${ra.setupMs} ms`);
    const rb = await openNetwork(b, node.url, { bootstrap: ws });
    const relayOf = (p) => until(15_000, 'relay reservation', () => p.evaluate(() => window.relayAddr ?? null));
    const [addrA, addrB] = await Promise.all([relayOf(a), relayOf(b)]);
    assert.match(addrB, new RegExp(`/p2p/${node.state.peer_id}/p2p-circuit/p2p/${rb.peerId}$`));
    assert.ok(addrA.endsWith(ra.peerId));

    // A -> B, then B answers A; each send resolves on the receiver's acknowledgement.
    const sent = await within(30_000, a.evaluate(async (to) => {
      const rtts = [];
      for (let i = 0; i < 5; i++) rtts.push((await window.net.send(to, `hello ${i} from A`)).rttMs);
      return rtts;
    }, rb.peerId), 'A sends to B');
    const inboxB = await until(10_000, 'B receives', () => b.evaluate(() => (window.inbox.length >= 5 ? window.inbox : null)));
    assert.deepEqual(inboxB.map((m) => m.text), [0, 1, 2, 3, 4].map((i) => `hello ${i} from A`));
    assert.ok(inboxB.every((m) => m.from === ra.peerId));
    await within(15_000, b.evaluate((to) => window.net.send(to, 'hello back from B'), ra.peerId), 'B answers A');
    const inboxA = await until(10_000, 'A receives', () => a.evaluate(() => (window.inbox.length ? window.inbox : null)));
    assert.deepEqual(inboxA, [{ from: rb.peerId, text: 'hello back from B' }]);
    const big = await within(15_000, a.evaluate((to) => window.net.send(to, new Uint8Array(64 * 1024).fill(7)), rb.peerId), '64 KiB message');
    const sorted = [...sent].sort((x, y) => x - y);
    console.log(`  relay message round trip (send -> ack), 5 messages: median ${sorted[2].toFixed(1)} ms, first ${sent[0].toFixed(1)} ms (circuit set-up); 64 KiB: ${big.rttMs.toFixed(1)} ms`);

    // The node restarts (same identity, ports and WebRTC certificate): both pages come back
    // by themselves, hold new reservations, and can talk again.
    await a.evaluate(() => { window.log.length = 0; window.relayAddr = null; });
    await b.evaluate(() => { window.relayAddr = null; });
    await stopNode(node);
    await until(15_000, 'A notices', () => a.evaluate(() => window.log.some((s) => s.status === 'reconnecting')));
    const t0 = Date.now();
    node = await startNode({ dir, site, ...ports });
    const back = await until(30_000, 'A reconnects', () => a.evaluate(() => window.log.find((s) => s.status === 'connected') ?? null));
    assert.equal(back.transport, 'websocket');
    assert.ok(back.setupMs < 3_000, `A's reconnect tried WebSocket first (setup ${back.setupMs} ms, dial timeout 3000 ms)`);
    await until(30_000, 'B reconnects', () => b.evaluate(() => window.net.status === 'connected'));
    console.log(`  reconnect after the node came back: ${Date.now() - t0} ms (node start included)`);
    await Promise.all([relayOf(a), relayOf(b)]);
    await within(20_000, b.evaluate((to) => window.net.send(to, 'after restart'), ra.peerId), 'B sends after the restart');
    await until(10_000, 'A receives after the restart', () => a.evaluate(() => window.inbox.some((m) => m.text === 'after restart')));
    const rec = await within(20_000, a.evaluate((id) => window.net.getRecord(id), node.state.peer_id), 'lookup after the restart');
    assert.equal(rec.peer_id, node.state.peer_id);
    const st = await nodeState(node.url);
    for (const id of [ra.peerId, rb.peerId]) {
      assert.ok(st.connected_peers.some((p) => p.peer_id === id), `${id} back in the peer table`);
    }
  } finally {
    await a.close();
    await b.close();
  }
});

// Relayed messages of 16 KiB and more between pages joined over WebRTC-direct. They used to
// time out (8 KiB and more from a page on WebRTC-direct, 16 KiB and more to one): both
// WebRTC stacks refused the other's larger data-channel messages (the node reads each into
// an 8 KiB buffer, the page drops one over 16 KiB) and the circuit died. Both ends now
// write WebRTC streams in flushed chunks of at most 8 KiB (src/webrtc_chunks.rs). The two
// legs of A -> B cross both directions of a WebRTC-direct connection (page -> node on A's,
// node -> page on B's); B -> A crosses them again the other way. Page C, on WebSocket,
// sends to B too: its bursts reach the node faster than A's paced chunks, which is when
// the node used to coalesce what it relays into data-channel messages B refused.
test('relayed messages of 16 KiB and 64 KiB between pages joined over WebRTC-direct arrive intact', { timeout: 90_000 }, async () => {
  const a = await browser.context.newPage();
  const b = await browser.context.newPage();
  const c = await browser.context.newPage();
  try {
    const rtc = node.state.browser_addrs.filter((x) => x.includes('/webrtc-direct/'));
    const ra = await openNetwork(a, node.url, { bootstrap: rtc });
    const rb = await openNetwork(b, node.url, { bootstrap: rtc });
    assert.deepEqual([ra.transport, rb.transport], ['webrtc-direct', 'webrtc-direct']);
    const relayOf = (p) => until(15_000, 'relay reservation', () => p.evaluate(() => window.relayAddr ?? null));
    await Promise.all([relayOf(a), relayOf(b)]);
    // Each page keeps the size and SHA-256 of what it receives.
    for (const p of [a, b]) {
      await p.evaluate(() => {
        window.received = [];
        window.net.on('message', async (m) => {
          const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', m.data));
          window.received.push({ from: m.from, bytes: m.data.byteLength, sha: Array.from(digest).join(',') });
        });
      });
    }
    // A payload that is not one repeated byte, so that a reordered or shifted chunk shows.
    const send = (p, to, n) => p.evaluate(async ({ to, n }) => {
      const data = new Uint8Array(n).map((_, i) => (i * 7 + (i >> 8)) & 0xff);
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', data));
      const { rttMs } = await window.net.send(to, data);
      return { rttMs, sha: Array.from(digest).join(',') };
    }, { to, n });
    // A small one first (it always arrived), then the sizes that stalled.
    const sizes = [5, 16 * 1024, 64 * 1024];
    const sent = [];
    for (const n of sizes) sent.push(await within(15_000, send(a, rb.peerId, n), `${n} bytes A -> B`));
    const back = await within(15_000, send(b, ra.peerId, 64 * 1024), '64 KiB message B -> A');
    const atB = await until(10_000, 'B receives', () => b.evaluate((k) => (window.received.length >= k ? window.received : null), sizes.length));
    assert.deepEqual(atB, sizes.map((n, i) => ({ from: ra.peerId, bytes: n, sha: sent[i].sha })));
    const atA = await until(10_000, 'A receives', () => a.evaluate(() => (window.received.length ? window.received : null)));
    assert.deepEqual(atA, [{ from: rb.peerId, bytes: 64 * 1024, sha: back.sha }]);

    const rc = await openNetwork(c, node.url, { bootstrap: node.state.browser_addrs.filter((x) => x.includes('/ws/')) });
    assert.equal(rc.transport, 'websocket');
    await relayOf(c);
    const fromC = [];
    for (const n of [16 * 1024, 64 * 1024]) fromC.push(await within(15_000, send(c, rb.peerId, n), `${n} bytes C -> B`));
    const atB2 = await until(10_000, 'B receives from C', () => b.evaluate((k) => (window.received.length >= k ? window.received.slice(k - 2) : null), sizes.length + 2));
    assert.deepEqual(atB2, [16 * 1024, 64 * 1024].map((n, i) => ({ from: rc.peerId, bytes: n, sha: fromC[i].sha })));
    console.log(`  over WebRTC-direct, send -> ack: 16 KiB ${sent[1].rttMs.toFixed(1)} ms, 64 KiB ${sent[2].rttMs.toFixed(1)} ms (A -> B), ${back.rttMs.toFixed(1)} ms (B -> A); from WebSocket to WebRTC-direct: 64 KiB ${fromC[1].rttMs.toFixed(1)} ms (C -> B)`);
  } finally {
    await a.close();
    await b.close();
    await c.close();
  }
});
