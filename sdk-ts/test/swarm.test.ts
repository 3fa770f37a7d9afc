// The page's swarm client, what runs under node: the swarm's directory (a node's
// /api/v1/state) read into servers with every bad row left out and every failure typed, and
// the refusal where the page cannot run the client (node is not a cross-origin-isolated
// page). The client itself runs in headless Chromium (engine/p2p/tests/browser/serve.test.mjs)
// and natively (engine/wasm/tests/swarm_client.rs).
import assert from 'node:assert/strict';
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';

import { AbortError, P2pError, UnsupportedError } from '../src/errors.js';
import { PageSwarm, fetchSwarmServers, swarmUnavailable } from '../src/swarm.js';
import type { WasmP2pNode } from '../src/wasm-p2p.js';

const A = '12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN';
const B = '12D3KooWRBhwfeP2Y4TCx1SM6s9rUoHhR5STiGwxBhgFRcw3UERE';
const MODEL = 'smollm2-135m-instruct@b179c9523d0e6a0f';

let answer: (res: ServerResponse) => void = (res) => res.end('{}');
let base = '';
const server = createServer((req, res) => {
  if (req.url !== '/api/v1/state') {
    res.writeHead(404).end();
    return;
  }
  answer(res);
});
before(async () => {
  await new Promise<void>((ok) => server.listen(0, '127.0.0.1', ok));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => server.close());

const json = (value: unknown) => (res: ServerResponse): void => {
  res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(value));
};
const report = (servers: unknown[], complete = true) => ({
  models: [{ model: 'other@0000000000000000', blocks: 2, servers: [] }, { model: MODEL, blocks: 30, complete, servers }],
});

describe('the swarm\'s directory', () => {
  it('lists the online servers of the model, with their announcements; bad rows are left out', async () => {
    answer = json(report([
      { peer_id: A, start: 0, end: 15, state: 'online', throughput: 12.5, free_cache: 2048, relayed: true },
      { peer_id: B, start: 15, end: 30, state: 'online', throughput: null, free_cache: null, relayed: false },
      { peer_id: B, start: 15, end: 30, state: 'draining', relayed: false },
      { peer_id: 'not-a-peer-id', start: 0, end: 30, state: 'online' },
      { peer_id: A, start: 20, end: 10, state: 'online' },
      { peer_id: A, start: 0.5, end: 10, state: 'online' },
      'garbage',
      null,
    ]));
    const r = await fetchSwarmServers(base, MODEL);
    assert.equal(r.complete, true);
    assert.equal(r.blocks, 30);
    assert.deepEqual(r.servers, [
      { id: A, start: 0, end: 15, relayed: true, throughput: 12.5, freeCache: 2048 },
      { id: B, start: 15, end: 30, relayed: false },
    ]);
  });

  it('fails typed: a model the node does not follow, an HTTP error, an answer too large or malformed, no answer, an abort', async () => {
    answer = json(report([]));
    await assert.rejects(fetchSwarmServers(base, 'nobody@1111111111111111'),
      (e: unknown) => e instanceof P2pError && e.reason === 'query' && /does not follow nobody@/.test(e.message) &&
        e.message.includes('other@0000000000000000'));
    answer = (res) => res.writeHead(503).end('starting');
    await assert.rejects(fetchSwarmServers(base, MODEL), (e: unknown) => e instanceof P2pError && e.reason === 'unreachable' && /HTTP 503/.test(e.message));
    answer = (res) => res.end(' '.repeat((4 << 20) + 1));
    await assert.rejects(fetchSwarmServers(base, MODEL), (e: unknown) => e instanceof P2pError && e.reason === 'query' && /too large/.test(e.message));
    answer = (res) => res.end('{ not json');
    await assert.rejects(fetchSwarmServers(base, MODEL), (e: unknown) => e instanceof P2pError && e.reason === 'unreachable');
    answer = () => {}; // never answers
    await assert.rejects(fetchSwarmServers(base, MODEL, undefined, 200), (e: unknown) => e instanceof P2pError && e.reason === 'timeout');
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(), 50);
    await assert.rejects(fetchSwarmServers(base, MODEL, ctl.signal, 5_000), AbortError);
  });
});

describe('the page\'s swarm client', () => {
  it('is refused, saying why, where the page is not cross-origin isolated', async () => {
    assert.match(swarmUnavailable() ?? '', /not cross-origin isolated/);
    await assert.rejects(PageSwarm.start({} as WasmP2pNode, { modelUrl: 'http://127.0.0.1:1/model.gguf' }),
      (e: unknown) => e instanceof UnsupportedError && /generating through the swarm from this page: the page is not cross-origin isolated/.test(e.message));
  });
});
