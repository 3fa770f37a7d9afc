// KwaaiNetwork's own logic under node: options, status events, typed errors, bounds. The
// module here is a double (a page-side node needs a browser's WebRTC); the real module runs
// against a real node in headless Chromium (engine/p2p/tests/browser/).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, it } from 'node:test';

import { AbortError, InvalidArgumentError, P2pError } from '../src/errors.js';
import { KwaaiNetwork, MAX_MESSAGE_BYTES, fetchBootstrapAddrs, type NetworkStatusEvent } from '../src/network.js';

const tmp = mkdtempSync(join(tmpdir(), 'kwaainet-network-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const NODE = '12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN';
const PAGE = '12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE';

// The double: `start` reports a WebRTC-direct connection after 10 ms; getRecord answers
// for NODE, never for anyone else; send fails with the module's 'query' code for PAGE.
// Errors are the module's: an Error with a \`code\` (wasm-errors.ts).
const fake = join(tmp, 'fake-p2p.mjs');
writeFileSync(fake, `
const coded = (code, message) => Object.assign(new Error(message), { name: 'KwaaiNetP2pError', code });
export default async function init() {}
export function maxMessageBytes() { return ${MAX_MESSAGE_BYTES}; }
export function p2pVersion() { return 'fake'; }
export class WasmP2pNode {
  static start(options, onEvent) {
    if (options.bootstrap.some((a) => a.includes('/dead/'))) {
      setTimeout(() => onEvent({ type: 'offline', reason: 'cannot reach the node' }), 5);
      const n = new WasmP2pNode(options);
      n.connected = () => Promise.reject(coded('unreachable', 'cannot reach the node'));
      return n;
    }
    globalThis.__started = options;
    setTimeout(() => onEvent({ type: 'connected', peer: '${NODE}', addr: options.bootstrap[0], transport: 'webrtc-direct', bootstrap: true, setupMs: 12 }), 10);
    setTimeout(() => onEvent({ type: 'message', from: '${PAGE}', data: new TextEncoder().encode('hi') }), 20);
    return new WasmP2pNode(options);
  }
  constructor(options) { this.options = options; this.freed = false; }
  peerId() { return '${PAGE}'; }
  connected() { return new Promise((r) => setTimeout(() => r({ peer: '${NODE}', addr: this.options.bootstrap[0] }), 10)); }
  state() { return Promise.resolve({ peerId: '${PAGE}', bootstrap: null, relayAddr: null, peers: [] }); }
  getRecord(id) {
    if (id === '${NODE}') return Promise.resolve({ v: 1, peer_id: id, roles: ['relay'], addrs: [], accelerator: 'cpu', version: '0', spans: [], issued_at: 1 });
    return new Promise(() => {});
  }
  askInfo() { return Promise.resolve({ bogus: true }); }
  send(id) { return id === '${PAGE}' ? Promise.reject(coded('query', 'the receiver refused the message')) : Promise.resolve(3.5); }
  free() { this.freed = true; }
}
`);
const moduleUrl = pathToFileURL(fake);
const RTC = `/ip4/127.0.0.1/udp/4002/webrtc-direct/certhash/uEiAbc/p2p/${NODE}`;
const WS = `/ip4/127.0.0.1/tcp/4002/ws/p2p/${NODE}`;

describe('KwaaiNetwork', () => {
  it('refuses bad options and arguments with InvalidArgumentError', async () => {
    assert.throws(() => new KwaaiNetwork({ moduleUrl, dialTimeoutMs: 0 }), InvalidArgumentError);
    assert.throws(() => new KwaaiNetwork({ moduleUrl, maxBackoffMs: Number.NaN }), InvalidArgumentError);
    const net = new KwaaiNetwork({ moduleUrl });
    await assert.rejects(net.connect([]), InvalidArgumentError);
    await assert.rejects(net.connect(['not-a-multiaddr']), InvalidArgumentError);
    await assert.rejects(net.getRecord(NODE), (e: unknown) => e instanceof P2pError && e.reason === 'unreachable');
  });

  it('dials WebRTC-direct first, reports status, delivers messages, bounds every call', async () => {
    const net = new KwaaiNetwork({ moduleUrl, requestTimeoutMs: 200 });
    const statuses: NetworkStatusEvent[] = [];
    const inbox: string[] = [];
    net.on('status', (s) => statuses.push(s));
    net.on('message', (m) => inbox.push(`${m.from}:${m.text()}`));
    const r = await net.connect([WS, RTC]);
    assert.equal(r.peer, NODE);
    assert.deepEqual((globalThis as { __started?: { bootstrap: string[] } }).__started?.bootstrap, [RTC, WS]);
    await new Promise((ok) => setTimeout(ok, 30));
    assert.deepEqual(statuses.map((s) => s.status), ['connecting', 'connected']);
    assert.equal(statuses[1]?.transport, 'webrtc-direct');
    assert.equal(net.status, 'connected');
    assert.deepEqual(inbox, [`${PAGE}:hi`]);

    assert.equal((await net.getRecord(NODE))?.peer_id, NODE);
    await assert.rejects(net.getRecord(PAGE), (e: unknown) => e instanceof P2pError && e.reason === 'timeout');
    await assert.rejects(net.getRecord('nope'), InvalidArgumentError);
    await assert.rejects(net.askInfo(NODE), (e: unknown) => e instanceof P2pError && e.reason === 'record');
    assert.deepEqual(await net.send(NODE, 'hello'), { rttMs: 3.5 });
    await assert.rejects(net.send(PAGE, 'x'), (e: unknown) => e instanceof P2pError && e.reason === 'query');
    await assert.rejects(net.send(NODE, new Uint8Array(MAX_MESSAGE_BYTES + 1)), InvalidArgumentError);
    const ctl = new AbortController();
    const pending = net.getRecord(PAGE, { signal: ctl.signal, timeoutMs: 5_000 });
    ctl.abort();
    await assert.rejects(pending, AbortError);

    net.close();
    assert.equal(net.status, 'closed');
    await assert.rejects(net.getRecord(NODE), (e: unknown) => e instanceof Error && e.name === 'DisposedError');
  });

  it('an unreachable node is a P2pError(unreachable) and the status goes offline', async () => {
    const net = new KwaaiNetwork({ moduleUrl });
    await assert.rejects(net.connect([`/dead/${NODE}`]), (e: unknown) => e instanceof P2pError && e.reason === 'unreachable');
    assert.equal(net.status, 'offline');
  });
});

describe('fetchBootstrapAddrs', () => {
  it('reads browser_addrs from the node\'s /api/v1/state, with typed failures', async () => {
    let body = JSON.stringify({ browser_addrs: [RTC, WS] });
    let status = 200;
    const server = createServer((req, res) => {
      if (req.url !== '/api/v1/state') { res.writeHead(404).end(); return; }
      res.writeHead(status, { 'content-type': 'application/json' }).end(body);
    });
    await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    try {
      assert.deepEqual(await fetchBootstrapAddrs(url), [RTC, WS]);
      body = JSON.stringify({ browser_addrs: [] });
      await assert.rejects(fetchBootstrapAddrs(url), (e: unknown) => e instanceof P2pError && e.reason === 'unreachable');
      status = 500;
      await assert.rejects(fetchBootstrapAddrs(url), (e: unknown) => e instanceof P2pError && /HTTP 500/.test(e.message));
    } finally {
      server.close();
    }
  });
});
