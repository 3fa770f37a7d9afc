/**
 * `new KwaaiNet({ endpoint })` against a stand-in node: a Node `http` server on 127.0.0.1
 * that writes literal bytes (events split mid-line, CRLF, comments, errors, silence), so
 * these test our transport and parser, not the node. Each test checks on the server side
 * that a finished, failed or aborted stream leaves no connection open.
 */
import assert from 'node:assert/strict';
import type { KwaaiNetwork } from '../src/network.js';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { inspect } from 'node:util';
import { afterEach, describe, it } from 'node:test';

import {
  AbortError, DisposedError, InvalidArgumentError, NetworkError, NodeApiError, NotInitializedError, ProtocolError, UnsupportedError,
} from '../src/errors.js';
import { KwaaiNet, type KwaaiNetOptions, type RouteEvent } from '../src/kwaainet.js';
import { apiBase, parseRetryAfter } from '../src/node-api.js';
import { assembleChunks } from '../src/openai/chat.js';
import type { ChatCompletion, ChatCompletionChunk } from '../src/openai/types.js';
import { kwaaiWithHosts, until } from './harness.js';

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
  socket: Socket;
}

type Handler = (res: ServerResponse, seen: Seen) => void | Promise<void>;

interface FakeNode {
  endpoint: string;
  requests: Seen[];
  /** Whether this request's connection is closed (by either side). */
  closed(i?: number): boolean;
  close(): Promise<void>;
}

const cleanup: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()?.();
});

async function fakeNode(handler: Handler): Promise<FakeNode> {
  const requests: Seen[] = [];
  const closedSockets = new WeakSet<Socket>();
  const server = createServer((req: IncomingMessage, res) => {
    req.socket.once('close', () => closedSockets.add(req.socket));
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => body += c);
    req.on('end', () => {
      const seen: Seen = {
        method: req.method ?? '', url: req.url ?? '', headers: req.headers, body: body ? JSON.parse(body) as Record<string, unknown> : {}, socket: req.socket,
      };
      requests.push(seen);
      void handler(res, seen);
    });
  });
  server.unref();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const node: FakeNode = {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    closed: (i = requests.length - 1) => {
      const r = requests[i];
      return r !== undefined && closedSockets.has(r.socket);
    },
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
  cleanup.push(() => node.close());
  return node;
}

function client(node: FakeNode, options: KwaaiNetOptions = {}): KwaaiNet {
  const ai = new KwaaiNet({
    endpoint: node.endpoint,
    startHost: () => Promise.reject(new Error('a node-only KwaaiNet must not start an engine host')),
    ...options,
  });
  cleanup.push(() => ai.dispose());
  return ai;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const messages = [{ role: 'user' as const, content: 'Hi!' }];

/** Writes each piece as its own write, a few ms apart, so the client sees separate reads. */
async function writeSlowly(res: ServerResponse, pieces: Array<string | Uint8Array>, end = true): Promise<void> {
  for (const p of pieces) {
    res.write(p);
    await sleep(3);
  }
  if (end) res.end();
}

const SSE = { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' };

const chunk = (content: string | null, extra: Record<string, unknown> = {}): ChatCompletionChunk => ({
  id: 'chatcmpl-node', object: 'chat.completion.chunk', created: 1700000000, model: 'node-model',
  choices: content === null ? [] : [{ index: 0, delta: { content }, finish_reason: null, logprobs: null }],
  ...extra,
});
const USAGE = { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 };
const COMPLETION: ChatCompletion = {
  id: 'chatcmpl-node', object: 'chat.completion', created: 1700000000, model: 'node-model',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello é🙂' }, finish_reason: 'stop', logprobs: null }],
  usage: USAGE,
};

/** Collects a stream's chunks, or the error that ended it. */
async function drain<T>(stream: AsyncIterable<T>): Promise<{ chunks: T[]; error: unknown }> {
  const chunks: T[] = [];
  try {
    for await (const c of stream) chunks.push(c);
    return { chunks, error: null };
  } catch (error) {
    return { chunks, error };
  }
}

describe('node API: requests', () => {
  it('a non-streamed chat completion: POST /v1/chat/completions with the params, the answer as sent', async () => {
    const node = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    const ai = client(node, { apiKey: 'sk-secret-123' });
    const answer = await ai.chat.completions.create({ messages, max_tokens: 7, temperature: 0.5 });
    assert.deepEqual(answer, COMPLETION);
    const [req] = node.requests;
    assert.equal(req?.method, 'POST');
    assert.equal(req?.url, '/v1/chat/completions');
    assert.equal(req?.headers.authorization, 'Bearer sk-secret-123');
    assert.equal(req?.headers['content-type'], 'application/json');
    assert.deepEqual(req?.body, { messages, max_tokens: 7, temperature: 0.5 });
  });

  it('endpoint forms: a path prefix, a trailing /v1, no credentials in the URL', () => {
    assert.equal(apiBase('http://127.0.0.1:8080').href, 'http://127.0.0.1:8080/v1/');
    assert.equal(apiBase('http://h:1/v1').href, 'http://h:1/v1/');
    assert.equal(apiBase('https://h/api/node/v1/').href, 'https://h/api/node/v1/');
    assert.equal(apiBase('https://h/api/?x=1#y').href, 'https://h/api/v1/');
    assert.throws(() => apiBase('ftp://h/'), InvalidArgumentError);
    assert.throws(() => apiBase('http://user:key@h/'), InvalidArgumentError);
    assert.throws(() => new KwaaiNet({ apiKey: 'k' }), InvalidArgumentError, 'apiKey without endpoint');
    assert.throws(() => new KwaaiNet({ endpoint: 'http://h/', endpointTimeoutMs: 0 }), InvalidArgumentError);
    assert.throws(() => new KwaaiNet({ endpoint: 'http://h/', apiKey: 'sk-a\r\nX-Injected: 1' }), InvalidArgumentError);
  });

  it('a stream split mid-line, mid-character, with CRLF, comments and multi-line data: the same chunks, usage last', async () => {
    const first = JSON.stringify(chunk('Hel'));
    const second = JSON.stringify(chunk('lo é🙂'));
    const stop = JSON.stringify(chunk('', { choices: [{ index: 0, delta: {}, finish_reason: 'stop', logprobs: null }] }));
    const usage = JSON.stringify(chunk(null, { usage: USAGE }));
    const secondBytes = new TextEncoder().encode(`data: ${second}\r\n\r\n`);
    const emoji = secondBytes.indexOf(0xf0); // cut inside the 4-byte 🙂
    const node = await fakeNode(async (res) => {
      res.writeHead(200, SSE);
      await writeSlowly(res, [
        ': keep-alive\n\n',
        `data: ${first.slice(0, 10)}`, `${first.slice(10)}\r`, '\n\r\n',
        secondBytes.subarray(0, emoji + 2), secondBytes.subarray(emoji + 2),
        // The same JSON over two data lines, cut after a comma (joined with \n, which JSON allows there).
        `data: ${stop.slice(0, stop.indexOf(',') + 1)}\ndata: ${stop.slice(stop.indexOf(',') + 1)}\n\n`,
        `data: ${usage}\n\n`, 'data: [DONE]', '\n\n',
      ]);
    });
    const ai = client(node);
    const stream = await ai.chat.completions.create({ messages, stream: true });
    const { chunks, error } = await drain(stream);
    assert.equal(error, null);
    assert.deepEqual(chunks, [first, second, stop, usage].map((c) => JSON.parse(c) as ChatCompletionChunk));
    const whole = assembleChunks(chunks);
    assert.equal(whole.choices[0]?.message.content, 'Hello é🙂');
    assert.equal(whole.choices[0]?.finish_reason, 'stop');
    assert.deepEqual(whole.usage, USAGE);
    assert.deepEqual(node.requests[0]?.body, { messages, stream: true, stream_options: { include_usage: true } });
    assert.equal(node.requests[0]?.headers.accept, 'text/event-stream');
  });

  it('[DONE] ends the iteration even when the node keeps the response open; the connection is then closed', async () => {
    const node = await fakeNode(async (res) => {
      res.writeHead(200, SSE);
      await writeSlowly(res, [`data: ${JSON.stringify(chunk('x'))}\n\n`, 'data: [DONE]\n\n', 'data: {"ignored": true}\n\n'], false);
    });
    const ai = client(node);
    const { chunks, error } = await drain(await ai.chat.completions.create({ messages, stream: true }));
    assert.equal(error, null);
    assert.equal(chunks.length, 1);
    await until(() => node.closed());
  });

  it('legacy completions go to /v1/completions', async () => {
    const text = { id: 'cmpl-1', object: 'text_completion', created: 1, model: 'm', choices: [{ index: 0, text: 'ok', finish_reason: 'stop', logprobs: null }], usage: USAGE };
    const node = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(text));
    });
    const ai = client(node);
    assert.deepEqual(await ai.completions.create({ prompt: 'Once' }), text);
    assert.equal(node.requests[0]?.url, '/v1/completions');
    assert.deepEqual(node.requests[0]?.body, { prompt: 'Once' });
  });
});

describe('node API: failures are typed and end the request', () => {
  it('HTTP errors keep the status, the OpenAI error fields and Retry-After', async () => {
    const cases: Array<{ status: number; headers?: Record<string, string>; body: string; check(e: NodeApiError): void }> = [
      {
        status: 400,
        body: JSON.stringify({ error: { message: 'max_tokens is too large', type: 'invalid_request_error', param: 'max_tokens', code: 'context_length_exceeded' } }),
        check: (e) => {
          assert.deepEqual([e.type, e.param, e.apiCode, e.retryAfterMs, e.retriable], ['invalid_request_error', 'max_tokens', 'context_length_exceeded', null, false]);
          assert.match(e.message, /HTTP 400: max_tokens is too large/);
        },
      },
      {
        status: 401, body: JSON.stringify({ error: { message: 'bad key', type: 'authentication_error', param: null, code: 'invalid_api_key' } }),
        check: (e) => assert.deepEqual([e.type, e.param, e.apiCode, e.retriable], ['authentication_error', null, 'invalid_api_key', false]),
      },
      {
        status: 429, headers: { 'retry-after': '7' },
        body: JSON.stringify({ error: { message: 'busy', type: 'rate_limit_error', param: null, code: 'rate_limit_exceeded' } }),
        check: (e) => assert.deepEqual([e.retryAfterMs, e.retriable, e.apiCode], [7000, true, 'rate_limit_exceeded']),
      },
      {
        status: 503, headers: { 'retry-after': new Date(Date.now() + 60_000).toUTCString() },
        body: JSON.stringify({ error: { message: 'no model loaded', type: 'server_error', param: null, code: null } }),
        check: (e) => {
          assert.ok(e.retryAfterMs !== null && e.retryAfterMs > 50_000 && e.retryAfterMs <= 60_000, String(e.retryAfterMs));
          assert.equal(e.retriable, true);
        },
      },
      { status: 404, body: '<html>Not Found</html>', check: (e) => assert.match(e.message, /HTTP 404: <html>Not Found<\/html>/) },
      { status: 413, body: '', check: (e) => assert.match(e.message, /HTTP 413: Payload Too Large/) },
    ];
    for (const stream of [false, true]) {
      for (const c of cases) {
        const node = await fakeNode((res) => {
          res.writeHead(c.status, { 'content-type': 'application/json', ...c.headers }).end(c.body);
        });
        const ai = client(node, { apiKey: 'sk-never-shown' });
        const err = await ai.chat.completions.create({ messages, stream }).then(() => null, (e: unknown) => e);
        assert.ok(err instanceof NodeApiError, `${c.status}: ${String(err)}`);
        assert.equal(err.status, c.status);
        assert.equal(err.code, 'node-api');
        assert.doesNotMatch(err.message, /sk-never-shown/);
        c.check(err);
      }
    }
  });

  it('parseRetryAfter: seconds, an HTTP date, nonsense', () => {
    assert.equal(parseRetryAfter('0'), 0);
    assert.equal(parseRetryAfter(' 12 '), 12_000);
    assert.equal(parseRetryAfter('Thu, 01 Jan 2099 00:00:10 GMT', Date.UTC(2099, 0, 1)), 10_000);
    assert.equal(parseRetryAfter('Thu, 01 Jan 1970 00:00:00 GMT'), 0);
    assert.equal(parseRetryAfter('soon'), null);
    assert.equal(parseRetryAfter(null), null);
  });

  it('an error event inside a stream is a NodeApiError (status null) after the chunks before it', async () => {
    const node = await fakeNode(async (res) => {
      res.writeHead(200, SSE);
      await writeSlowly(res, [`data: ${JSON.stringify(chunk('a'))}\n\n`,
        'data: {"error":{"message":"the swarm lost a span","type":"server_error","param":null,"code":"swarm"}}\n\n'], false);
    });
    const { chunks, error } = await drain(await client(node).chat.completions.create({ messages, stream: true }));
    assert.equal(chunks.length, 1);
    assert.ok(error instanceof NodeApiError);
    assert.deepEqual([error.status, error.type, error.apiCode], [null, 'server_error', 'swarm']);
    assert.match(error.message, /the swarm lost a span/);
    await until(() => node.closed());
  });

  it('malformed data, a non-chunk, a stream cut before [DONE], the wrong content type: ProtocolError, connection closed', async () => {
    const bodies: Array<{ type?: string; pieces: string[]; chunks: number }> = [
      { pieces: [`data: ${JSON.stringify(chunk('a'))}\n\n`, 'data: {not json}\n\n'], chunks: 1 },
      { pieces: ['data: [1, 2]\n\n'], chunks: 0 },
      { pieces: ['data: ' + 'x'.repeat((1 << 20) + 10)], chunks: 0 }, // a line that never ends
    ];
    for (const b of bodies) {
      const node = await fakeNode(async (res) => {
        res.writeHead(200, SSE);
        await writeSlowly(res, b.pieces, false); // and then hang: the client must not
      });
      const { chunks, error } = await drain(await client(node).chat.completions.create({ messages, stream: true }));
      assert.ok(error instanceof ProtocolError, String(error));
      assert.equal(chunks.length, b.chunks);
      await until(() => node.closed());
    }
    const cut = await fakeNode(async (res) => {
      res.writeHead(200, SSE);
      await writeSlowly(res, [`data: ${JSON.stringify(chunk('a'))}\n\n`]);
    });
    const ended = await drain(await client(cut).chat.completions.create({ messages, stream: true }));
    assert.ok(ended.error instanceof ProtocolError);
    assert.match(String(ended.error), /before data: \[DONE\]/);

    const json = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    await assert.rejects(client(json).chat.completions.create({ messages, stream: true }), ProtocolError);
    const html = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'text/html' }).end('<html></html>');
    });
    await assert.rejects(client(html).chat.completions.create({ messages }), ProtocolError);
  });

  it('an unreachable node is a NetworkError; silence past endpointTimeoutMs too, before and after the headers', async () => {
    const gone = await fakeNode(() => {});
    const endpoint = gone.endpoint;
    await gone.close();
    await assert.rejects(new KwaaiNet({ endpoint }).chat.completions.create({ messages }), NetworkError);

    const silent = await fakeNode(() => {}); // never answers
    const t0 = performance.now();
    const err = await client(silent, { endpointTimeoutMs: 200 }).chat.completions.create({ messages }).catch((e: unknown) => e);
    assert.ok(err instanceof NetworkError, String(err));
    assert.match(err.message, /nothing received for 0.2 s/);
    assert.ok(performance.now() - t0 < 5000);
    await until(() => silent.closed());

    const stalls = await fakeNode((res) => {
      res.writeHead(200, SSE);
      res.write(`data: ${JSON.stringify(chunk('a'))}\n\n`);
    });
    const { chunks, error } = await drain(await client(stalls, { endpointTimeoutMs: 200 }).chat.completions.create({ messages, stream: true }));
    assert.equal(chunks.length, 1);
    assert.ok(error instanceof NetworkError, String(error));
    await until(() => stalls.closed());
  });

  it('keep-alive comments hold a slow stream open past the timeout', async () => {
    const node = await fakeNode(async (res) => {
      res.writeHead(200, SSE);
      for (let i = 0; i < 8; i++) {
        res.write(': waiting for a span\n\n');
        await sleep(50);
      }
      res.end(`data: ${JSON.stringify(chunk('late'))}\n\ndata: [DONE]\n\n`);
    });
    const { chunks, error } = await drain(await client(node, { endpointTimeoutMs: 200 }).chat.completions.create({ messages, stream: true }));
    assert.equal(error, null);
    assert.equal(chunks[0]?.choices[0]?.delta.content, 'late');
  });
});

describe('node API: abort', () => {
  /** A node that sends one chunk, then one every 20 ms until the client goes away. */
  async function endless(): Promise<FakeNode> {
    return fakeNode(async (res) => {
      res.writeHead(200, SSE);
      while (!res.destroyed && !res.socket?.destroyed) {
        res.write(`data: ${JSON.stringify(chunk('x'))}\n\n`);
        await sleep(20);
      }
    });
  }

  for (const form of ['create(params, { signal })', 'params.signal'] as const) {
    it(`aborting mid-stream (${form}) ends the iteration with AbortError and closes the connection`, async () => {
      const node = await endless();
      const ai = client(node);
      const controller = new AbortController();
      const stream = form === 'params.signal'
        ? await ai.chat.completions.create({ messages, stream: true, signal: controller.signal })
        : await ai.chat.completions.create({ messages, stream: true }, { signal: controller.signal });
      assert.deepEqual(node.requests[0]?.body, { messages, stream: true, stream_options: { include_usage: true } }, 'no signal in the body');
      let seen = 0;
      const err = await (async () => {
        for await (const _ of stream) {
          if (++seen === 2) controller.abort();
        }
      })().then(() => null, (e: unknown) => e);
      assert.ok(err instanceof AbortError, String(err));
      assert.equal(err.name, 'AbortError');
      await until(() => node.closed());
    });
  }

  it('aborting a non-streamed request while the node works rejects with AbortError and closes the connection', async () => {
    const node = await fakeNode(() => {}); // still generating
    const controller = new AbortController();
    const p = client(node).chat.completions.create({ messages }, { signal: controller.signal });
    await until(() => node.requests.length === 1);
    controller.abort();
    await assert.rejects(p, AbortError);
    await until(() => node.closed());
    // Already aborted: nothing is sent.
    await assert.rejects(client(node).chat.completions.create({ messages }, { signal: controller.signal }), AbortError);
    assert.equal(node.requests.length, 1);
  });

  it('breaking out of for-await closes the connection; dispose() aborts open requests', async () => {
    const node = await endless();
    const ai = client(node);
    for await (const _ of await ai.chat.completions.create({ messages, stream: true })) break;
    await until(() => node.closed(0));

    const stream = await ai.chat.completions.create({ messages, stream: true });
    await until(() => node.requests.length === 2);
    await ai.dispose();
    const { error } = await drain(stream);
    assert.ok(error instanceof AbortError, String(error));
    await until(() => node.closed(1));
    await assert.rejects(ai.chat.completions.create({ messages }), DisposedError);
  });
});

describe('node API: routing', () => {
  it('an endpoint-only KwaaiNet starts no engine host, initialize() included', async () => {
    const node = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    const ai = client(node);
    await ai.initialize();
    assert.equal(await ai.engineInfo(), null);
    assert.deepEqual(await ai.chat.completions.create({ messages }), COMPLETION);
    await assert.rejects(ai.chat.completions.create({ messages }, { route: 'local' }), NotInitializedError);
  });

  it("route: 'node' goes to the node, 'local' (and the default without an endpoint) to the engine", async () => {
    const node = await fakeNode((res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    const both = kwaaiWithHosts({ endpoint: node.endpoint });
    cleanup.push(both.closeAll, () => both.ai.dispose());
    assert.deepEqual(await both.ai.chat.completions.create({ messages }), COMPLETION, 'the endpoint is the default');
    assert.equal(both.pairs.length, 0, 'no host started for a node request');
    const local = await both.ai.chat.completions.create({ messages }, { route: 'local' });
    assert.equal(local.choices[0]?.message.content, 'Echo: Hi!');
    assert.equal(node.requests.length, 1);

    const engineOnly = kwaaiWithHosts();
    cleanup.push(engineOnly.closeAll, () => engineOnly.ai.dispose());
    const err = await engineOnly.ai.chat.completions.create({ messages }, { route: 'node' }).catch((e: unknown) => e);
    assert.ok(err instanceof InvalidArgumentError);
    assert.match(err.message, /no endpoint/);
    await assert.rejects(engineOnly.ai.chat.completions.create({ messages }, { route: 'moon' as 'node' }), InvalidArgumentError);
    assert.equal(engineOnly.pairs.length, 0, 'a refused route starts nothing');
  });

  it("route: 'swarm' needs a node whose API runs the model through the swarm; 'auto' picks the page once its model is loaded; the route event says which", async () => {
    let backend = 'swarm';
    const node = await fakeNode((res, seen) => {
      if (seen.method === 'GET' && seen.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
          object: 'list', data: [{ id: 'smol@ab12', object: 'model', backend, aliases: ['smol.gguf'] }],
        }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    const k = kwaaiWithHosts({ endpoint: node.endpoint });
    cleanup.push(k.closeAll, () => k.ai.dispose());
    const routes: RouteEvent[] = [];
    k.ai.on('route', (r) => routes.push(r));
    const origin = new URL(node.endpoint).origin;

    assert.deepEqual(await k.ai.chat.completions.create({ messages, model: 'smol.gguf' }, { route: 'swarm' }), COMPLETION);
    assert.deepEqual(node.requests.map((r) => `${r.method} ${r.url}`), ['GET /v1/models', 'POST /v1/chat/completions']);
    assert.equal(node.requests[1]?.body.model, 'smol.gguf', 'the params go as they are');
    assert.deepEqual(routes.at(-1), {
      route: 'swarm', model: 'smol.gguf', client: 'node',
      reason: `the node at ${origin} generates smol@ab12 through the swarm (embedding and head there, blocks on peers)`,
    });
    // 'auto' before the page's model is loaded: the node, through the swarm (its list is
    // reused, not asked again).
    await k.ai.chat.completions.create({ messages }, { route: 'auto' });
    assert.equal(routes.at(-1)?.route, 'swarm');
    assert.match(routes.at(-1)?.reason ?? '', /^the model is not loaded in this page \(yet\): the node at .* runs smol@ab12 through the swarm$/);
    assert.equal(node.requests.filter((r) => r.method === 'GET').length, 1);
    assert.equal(k.pairs.length, 0, 'no host started for it');
    // Once the model is loaded here, 'auto' stays in the page.
    assert.equal((await k.ai.chat.completions.create({ messages }, { route: 'local' })).choices[0]?.message.content, 'Echo: Hi!');
    const before = node.requests.length;
    const auto = await k.ai.chat.completions.create({ messages }, { route: 'auto' });
    assert.equal(auto.choices[0]?.message.content, 'Echo: Hi!');
    assert.deepEqual(routes.at(-1), { route: 'local', reason: 'the model is loaded in this page', model: null });
    assert.equal(node.requests.length, before, 'nothing went to the node');

    // A node that runs the model whole: 'swarm' is refused before any request, 'auto' goes
    // there as 'node'; an unknown model is named in the error.
    backend = 'local';
    const whole = kwaaiWithHosts({ endpoint: node.endpoint });
    cleanup.push(whole.closeAll, () => whole.ai.dispose());
    const seen: RouteEvent[] = [];
    whole.ai.on('route', (r) => seen.push(r));
    const posts = node.requests.filter((r) => r.method === 'POST').length;
    await assert.rejects(whole.ai.chat.completions.create({ messages }, { route: 'swarm' }),
      (e: unknown) => e instanceof UnsupportedError && /runs smol@ab12 whole, not through the swarm/.test(e.message));
    assert.equal(node.requests.filter((r) => r.method === 'POST').length, posts, 'nothing was generated');
    await whole.ai.chat.completions.create({ messages }, { route: 'auto' });
    assert.equal(seen.at(-1)?.route, 'node');
    await assert.rejects(whole.ai.chat.completions.create({ messages, model: 'llama-70b' }, { route: 'swarm' }),
      (e: unknown) => e instanceof InvalidArgumentError && /model "llama-70b": the node at .* does not offer it \(smol@ab12\)/.test(e.message));
    // Without an endpoint or a network: 'swarm' is refused, saying why; 'auto' loads the model here.
    const alone = kwaaiWithHosts();
    cleanup.push(alone.closeAll, () => alone.ai.dispose());
    await assert.rejects(alone.ai.chat.completions.create({ messages }, { route: 'swarm' }),
      (e: unknown) => e instanceof UnsupportedError &&
        /route "swarm": this page cannot generate through the swarm \(no network .*\) and has no endpoint to ask/.test(e.message));
    assert.equal((await alone.ai.chat.completions.create({ messages }, { route: 'auto' })).choices[0]?.message.content, 'Echo: Hi!');
  });

  it("route: 'swarm' with a network runs in the page only where it can (cross-origin isolated): elsewhere the node's swarm, or a clear refusal", async () => {
    const node = await fakeNode((res, seen) => {
      if (seen.method === 'GET' && seen.url === '/v1/models') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
          object: 'list', data: [{ id: 'smol@ab12', object: 'model', backend: 'swarm', aliases: [] }],
        }));
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(COMPLETION));
    });
    // Node is not a cross-origin-isolated page: the page's swarm client cannot run here.
    const network = {} as KwaaiNetwork;
    const k = kwaaiWithHosts({ endpoint: node.endpoint, network });
    cleanup.push(k.closeAll, () => k.ai.dispose());
    const routes: RouteEvent[] = [];
    k.ai.on('route', (r) => routes.push(r));
    assert.deepEqual(await k.ai.chat.completions.create({ messages }, { route: 'swarm' }), COMPLETION);
    assert.equal(routes.at(-1)?.client, 'node');
    assert.equal(k.pairs.length, 0, 'no host started');

    const alone = kwaaiWithHosts({ network });
    cleanup.push(alone.closeAll, () => alone.ai.dispose());
    await assert.rejects(alone.ai.chat.completions.create({ messages }, { route: 'swarm' }),
      (e: unknown) => e instanceof UnsupportedError && /cannot generate through the swarm \(the page is not cross-origin isolated/.test(e.message) &&
        /no endpoint/.test(e.message));
    assert.equal(alone.pairs.length, 0, 'a refused route starts nothing');
  });

  it('the API key is in no property, inspection or error of the instance', async () => {
    const node = await fakeNode((res) => {
      res.writeHead(500, { 'content-type': 'application/json' }).end('{"error":{"message":"boom"}}');
    });
    const ai = client(node, { apiKey: 'sk-hidden-456' });
    assert.doesNotMatch(inspect(ai, { depth: 10, showHidden: true }), /sk-hidden-456/);
    const err = await ai.chat.completions.create({ messages }).catch((e: unknown) => e);
    assert.ok(err instanceof NodeApiError);
    assert.doesNotMatch(inspect(err, { depth: 10, showHidden: true }), /sk-hidden-456/);
    assert.equal(node.requests[0]?.headers.authorization, 'Bearer sk-hidden-456');
  });
});
