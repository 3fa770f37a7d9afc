// The node's OpenAI-compatible API, end to end: `kwaainet start` on 127.0.0.1 with the
// default model, driven by the official `openai` npm client, plain fetch (for what a
// client library hides: raw errors, CORS, disconnects) and the SDK's `endpoint` mode.
//
//   KWAAINET_BIN=target/release/kwaainet KWAAINET_MODEL=model.gguf node --test native-relay/tests/api/
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import OpenAI from 'openai';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const bin = process.env.KWAAINET_BIN ?? join(root, 'target', 'release', 'kwaainet');
const model = process.env.KWAAINET_MODEL;
const KEY = 'test-key-not-a-secret';
// llama.cpp's greedy tokens on an x86-64 AVX2 CPU, which our AVX2 kernels reproduce.
const reference = JSON.parse(readFileSync(join(root, 'engine/core/tests/data/smollm2-135m-q4_1.llamacpp-avx2.json'), 'utf8'));

function within(ms, what, promise) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(timer));
}

/** `kwaainet start` with the API on an ephemeral loopback port; resolves with its URL. */
async function startNode(extra) {
  const dir = mkdtempSync(join(tmpdir(), 'kwaainet-api-'));
  const child = spawn(bin, ['start', '--host', '127.0.0.1', '--port', '0', '--http', '127.0.0.1:0',
    '--identity', join(dir, 'identity.key'), '--model', model, '--api-threads', '2', ...extra], {
    env: { ...process.env, KWAAINET_CONFIG_DIR: dir, RUST_LOG: process.env.RUST_LOG ?? 'warn,kwaainet_api=info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  child.stderr.on('data', (d) => { log += d; });
  const lines = createInterface({ input: child.stdout });
  const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
  const url = await within(60_000, 'the node prints its HTTP address', new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('exit', (code) => reject(new Error(`kwaainet exited early (${code}): ${log}`)));
    lines.on('line', (line) => {
      if (line.startsWith('http: ')) resolve(line.slice('http: '.length).trim().replace(/\/$/, ''));
    });
  }));
  return {
    url, child, dir, exited, log: () => log,
    async stop() {
      child.kill('SIGTERM');
      const r = await within(20_000, 'the node stops', exited);
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
  };
}

async function metric(url, name) {
  const text = await (await fetch(`${url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(' ')[1]) : NaN;
}

async function rssKiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
}

let node;
let client;

before(async () => {
  assert.ok(existsSync(bin), `no kwaainet binary at ${bin}`);
  assert.ok(model && existsSync(model), 'KWAAINET_MODEL must name the default model');
  node = await startNode(['--api-key', KEY, '--api-slots', '8', '--api-queue', '16', '--api-ctx', '1024',
    '--api-max-body', '65536', '--api-cors', 'http://page.example']);
  client = new OpenAI({ baseURL: `${node.url}/v1`, apiKey: KEY, maxRetries: 0, timeout: 120_000 });
});

after(async () => {
  if (node) {
    const { code } = await node.stop();
    assert.equal(code, 0, `the node stops cleanly: ${node.log().slice(-2000)}`);
  }
});

test('models are listed and named', async () => {
  const list = await client.models.list();
  assert.equal(list.data.length, 1);
  const m = list.data[0];
  assert.match(m.id, /@[0-9a-f]{16}$/);
  assert.equal(m.object, 'model');
  assert.equal(m.owned_by, 'kwaainet');
  const one = await client.models.retrieve(m.id);
  assert.equal(one.id, m.id);
  // Its file name answers too.
  const alias = await client.models.retrieve('SmolLM2-135M-Instruct.Q4_1');
  assert.equal(alias.id, m.id);
});

test('greedy answers equal llama.cpp reference tokens (text completions from token ids)', async () => {
  const id = (await client.models.list()).data[0].id;
  for (const c of reference.cases) {
    const r = await client.completions.create({
      model: id, prompt: c.prompt_ids, max_tokens: c.max_tokens, temperature: 0,
      ignore_eos: !c.stop_at_eos,
    });
    assert.equal(r.object, 'text_completion');
    assert.equal(r.choices[0].text, c.output_text, c.name);
    assert.equal(r.usage.prompt_tokens, c.prompt_ids.length, `${c.name}: prompt tokens`);
    assert.equal(r.usage.completion_tokens, c.output_ids.length, `${c.name}: completion tokens`);
    assert.equal(r.usage.total_tokens, c.prompt_ids.length + c.output_ids.length);
    assert.equal(r.choices[0].finish_reason, c.stop_at_eos && c.output_ids.at(-1) === 2 ? 'stop' : 'length', c.name);
  }
});

test('chat: the model\'s template, non-streamed and streamed give the same answer', async () => {
  const messages = [{ role: 'user', content: 'What is the capital of France?' }];
  const r = await client.chat.completions.create({ model: 'SmolLM2-135M-Instruct.Q4_1', messages, max_tokens: 24, temperature: 0 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /^chatcmpl-/);
  assert.ok(Number.isInteger(r.created));
  assert.equal(r.choices[0].message.role, 'assistant');
  const text = r.choices[0].message.content;
  assert.ok(text.length > 0);
  // The template inserts SmolLM2's default system message: 37 prompt tokens, as the
  // shared reference's capital-chat case.
  const chatCase = reference.cases.find((c) => c.name === 'capital-chat');
  assert.equal(r.usage.prompt_tokens, chatCase.prompt_ids.length);
  // Greedy: the first 24 of llama.cpp's 32 tokens.
  assert.ok(chatCase.output_text.startsWith(text), `${text} vs ${chatCase.output_text}`);

  const stream = await client.chat.completions.create({
    model: 'SmolLM2-135M-Instruct.Q4_1', messages, max_tokens: 24, temperature: 0,
    stream: true, stream_options: { include_usage: true },
  });
  let streamed = '';
  let finish = null;
  let usage = null;
  let chunks = 0;
  for await (const chunk of stream) {
    chunks++;
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const ch of chunk.choices) {
      streamed += ch.delta.content ?? '';
      finish = ch.finish_reason ?? finish;
    }
  }
  assert.equal(streamed, text);
  assert.equal(finish, r.choices[0].finish_reason);
  // The same token counts; each request carries its own measured footprint (the node's
  // energy and carbon for it: kwaainet-footprint), which the official client passes through.
  const tokens = (u) => ({ prompt_tokens: u.prompt_tokens, completion_tokens: u.completion_tokens, total_tokens: u.total_tokens });
  assert.deepEqual(tokens(usage), tokens(r.usage));
  for (const u of [usage, r.usage]) {
    assert.ok(u.footprint.energy_uwh > 0 && u.footprint.carbon_ug >= 0, JSON.stringify(u.footprint));
    assert.match(u.footprint.method, /^(modelled|measured)$/);
  }
  assert.ok(chunks > 10, `${chunks} chunks: tokens streamed one by one`);

  // Content as an array of text parts is the same prompt.
  const parts = await client.chat.completions.create({
    model: 'SmolLM2-135M-Instruct.Q4_1', max_tokens: 24, temperature: 0,
    messages: [{ role: 'user', content: [{ type: 'text', text: 'What is the capital ' }, { type: 'text', text: 'of France?' }] }],
  });
  assert.equal(parts.choices[0].message.content, text);
});

test('stop strings, budgets, seeds, penalties and logprobs', async () => {
  const base = { model: 'SmolLM2-135M-Instruct.Q4_1', messages: [{ role: 'user', content: 'Count from one to ten in words.' }] };
  const free = await client.chat.completions.create({ ...base, max_tokens: 40, temperature: 0 });
  const full = free.choices[0].message.content;
  const cut = full.indexOf(',') > 0 ? ',' : ' ';
  const stopped = await client.chat.completions.create({ ...base, max_tokens: 40, temperature: 0, stop: [cut, 'zzz'] });
  assert.equal(stopped.choices[0].message.content, full.slice(0, full.indexOf(cut)));
  assert.equal(stopped.choices[0].finish_reason, 'stop');

  const short = await client.chat.completions.create({ ...base, max_completion_tokens: 3, temperature: 0 });
  assert.equal(short.usage.completion_tokens, 3);
  assert.equal(short.choices[0].finish_reason, 'length');

  const sample = (seed) => client.chat.completions.create({ ...base, max_tokens: 24, temperature: 1.2, top_p: 0.95, seed });
  const [a, b, c] = await Promise.all([sample(7), sample(7), sample(8)]);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content, 'same seed, same text');
  assert.notEqual(a.choices[0].message.content, c.choices[0].message.content, 'another seed, another text');

  const penalised = await client.chat.completions.create({ ...base, max_tokens: 40, temperature: 0, frequency_penalty: 2, presence_penalty: 2 });
  assert.notEqual(penalised.choices[0].message.content, full, 'penalties change a greedy answer');

  const lp = await client.chat.completions.create({ ...base, max_tokens: 5, temperature: 0, logprobs: true, top_logprobs: 3 });
  const content = lp.choices[0].logprobs.content;
  assert.equal(content.length, 5);
  for (const t of content) {
    assert.ok(t.logprob <= 0);
    assert.equal(t.top_logprobs.length, 3);
    // Greedy: the chosen token is the most likely one.
    assert.equal(t.top_logprobs[0].token, t.token);
    assert.deepEqual(t.bytes, [...Buffer.from(t.token)]);
  }
  assert.equal(content.map((t) => t.token).join(''), lp.choices[0].message.content);
});

test('completions: echo + logprobs give the prompt\'s log-probabilities (lm-evaluation-harness)', async () => {
  const prompt = 'The capital of France is Paris. The capital of Italy is';
  const r = await client.completions.create({ model: 'SmolLM2-135M-Instruct.Q4_1', prompt, max_tokens: 1, temperature: 0, echo: true, logprobs: 2 });
  const c = r.choices[0];
  assert.ok(c.text.startsWith(prompt));
  const lp = c.logprobs;
  assert.equal(lp.tokens.length, r.usage.prompt_tokens + 1);
  assert.equal(lp.token_logprobs[0], null);
  assert.equal(lp.top_logprobs[0], null);
  assert.ok(lp.token_logprobs.slice(1).every((x) => x <= 0 && Number.isFinite(x)));
  assert.equal(lp.tokens.join(''), c.text);
  assert.deepEqual(lp.text_offset, lp.tokens.map((_, i) => lp.tokens.slice(0, i).join('').length));
  // "Paris" after "France is" is likely; the model knows it well.
  const paris = lp.tokens.indexOf(' Paris');
  assert.ok(lp.token_logprobs[paris] > -3, `logprob of " Paris": ${lp.token_logprobs[paris]}`);
  // Token ids instead of texts (vLLM's extension), e.g. for a harness that tokenizes
  // itself: the echoed prompt is the ids sent.
  const ids = reference.cases[0].prompt_ids;
  const byId = await client.completions.create({ prompt: ids, max_tokens: 1, temperature: 0, echo: true, logprobs: 1, return_tokens_as_token_ids: true });
  const named = byId.choices[0].logprobs;
  assert.deepEqual(named.tokens.slice(0, ids.length), ids.map((t) => `token_id:${t}`));
  assert.equal(named.tokens.length, ids.length + 1);
  assert.match(Object.keys(named.top_logprobs[1])[0], /^token_id:\d+$/);
  // Streamed echo starts with the prompt.
  const s = await client.completions.create({ model: 'SmolLM2-135M-Instruct.Q4_1', prompt, max_tokens: 4, temperature: 0, echo: true, stream: true });
  let text = '';
  for await (const chunk of s) text += chunk.choices[0]?.text ?? '';
  assert.ok(text.startsWith(prompt) && text.length > prompt.length);
});

async function raw(path, { body, headers = {}, method = 'POST' } = {}) {
  const res = await fetch(`${node.url}${path}`, {
    method,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: body === undefined ? undefined : (typeof body === 'string' ? body : JSON.stringify(body)),
  });
  const text = await res.text();
  let json = null;
  try { json = JSON.parse(text); } catch { /* not JSON */ }
  return { status: res.status, headers: res.headers, json, text };
}

test('bad requests get OpenAI-shaped errors with the right status, and the node keeps serving', async () => {
  const msg = [{ role: 'user', content: 'hi' }];
  const cases = [
    ['malformed JSON', '/v1/chat/completions', { body: '{"messages": [' }, 400, null],
    ['wrong type', '/v1/chat/completions', { body: { messages: 'hi' } }, 400, null],
    ['no messages', '/v1/chat/completions', { body: { messages: [] } }, 400, null],
    ['unknown model', '/v1/chat/completions', { body: { model: 'gpt-9', messages: msg } }, 404, 'model_not_found'],
    ['temperature out of range', '/v1/chat/completions', { body: { messages: msg, temperature: 5 } }, 400, null],
    ['n > 1', '/v1/chat/completions', { body: { messages: msg, n: 3 } }, 400, null],
    ['tools', '/v1/chat/completions', { body: { messages: msg, tools: [{ type: 'function', function: { name: 'f' } }] } }, 400, 'unsupported_parameter'],
    ['images', '/v1/chat/completions', { body: { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x/y.png' } }] }] } }, 400, 'unsupported_parameter'],
    ['tool role', '/v1/chat/completions', { body: { messages: [{ role: 'tool', content: 'x' }] } }, 400, 'unsupported_parameter'],
    ['context exceeded', '/v1/chat/completions', { body: { messages: msg, max_tokens: 5000 } }, 400, 'context_length_exceeded'],
    ['prompt beyond the context', '/v1/completions', { body: { prompt: 'word '.repeat(3000), max_tokens: 1 } }, 400, 'context_length_exceeded'],
    ['token outside the vocabulary', '/v1/completions', { body: { prompt: [1, 2, 999999] } }, 400, null],
    ['empty text prompt', '/v1/completions', { body: { prompt: '' } }, 400, null],
    ['empty token prompt', '/v1/completions', { body: { prompt: [] } }, 400, null],
    ['two prompts', '/v1/completions', { body: { prompt: ['a', 'b'] } }, 400, null],
    ['oversized body', '/v1/chat/completions', { body: { messages: [{ role: 'user', content: 'x'.repeat(70_000) }] } }, 413, 'request_too_large'],
    ['no key', '/v1/chat/completions', { body: { messages: msg }, headers: { authorization: '' } }, 401, 'invalid_api_key'],
    ['wrong key', '/v1/chat/completions', { body: { messages: msg }, headers: { authorization: 'Bearer nope' } }, 401, 'invalid_api_key'],
    ['unknown route', '/v1/embeddings', { body: { input: 'x' } }, 404, 'unknown_url'],
  ];
  for (const [name, path, opts, status, code] of cases) {
    const r = await raw(path, opts);
    assert.equal(r.status, status, `${name}: ${r.text}`);
    assert.ok(r.json?.error, `${name}: error body ${r.text}`);
    assert.equal(typeof r.json.error.message, 'string', name);
    assert.ok('type' in r.json.error && 'param' in r.json.error && 'code' in r.json.error, name);
    if (code) assert.equal(r.json.error.code, code, name);
  }
  // The official client raises typed errors for them.
  await assert.rejects(client.chat.completions.create({ model: 'gpt-9', messages: msg }), (e) => e instanceof OpenAI.NotFoundError);
  await assert.rejects(new OpenAI({ baseURL: `${node.url}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  // The key never reaches the log.
  assert.ok(!node.log().includes(KEY));
  // Still serving.
  const ok = await client.chat.completions.create({ messages: msg, max_tokens: 2, temperature: 0 });
  assert.equal(ok.usage.completion_tokens, 2);
});

test('CORS: a page on an allowed origin may call the API', async () => {
  const pre = await fetch(`${node.url}/v1/chat/completions`, {
    method: 'OPTIONS',
    headers: { origin: 'http://page.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type' },
  });
  assert.ok(pre.status < 300);
  assert.equal(pre.headers.get('access-control-allow-origin'), 'http://page.example');
  assert.match(pre.headers.get('access-control-allow-headers'), /authorization/i);
  const other = await fetch(`${node.url}/v1/models`, { headers: { origin: 'http://evil.example', authorization: `Bearer ${KEY}` } });
  assert.equal(other.headers.get('access-control-allow-origin'), null);
});

test('64 concurrent streams: each completes or gets a clean 429; memory bounded; a killed client frees its slot', { timeout: 300_000 }, async () => {
  const rssBefore = await rssKiB(node.child.pid);
  const one = async (i) => {
    const res = await fetch(`${node.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
      body: JSON.stringify({ messages: [{ role: 'user', content: `Say a word about the number ${i}.` }], max_tokens: 16, temperature: 0, stream: true }),
    });
    if (res.status !== 200) {
      const body = await res.json();
      return { status: res.status, retryAfter: res.headers.get('retry-after'), body };
    }
    const text = await res.text();
    return { status: 200, done: text.trimEnd().endsWith('data: [DONE]'), text };
  };
  const results = await within(240_000, '64 streams end', Promise.all(Array.from({ length: 64 }, (_, i) => one(i))));
  const ok = results.filter((r) => r.status === 200);
  const refused = results.filter((r) => r.status !== 200);
  for (const r of refused) {
    assert.ok([429, 503].includes(r.status), `status ${r.status}`);
    assert.ok(Number(r.retryAfter) >= 1, 'Retry-After');
    assert.ok(r.body.error?.message);
  }
  for (const r of ok) assert.ok(r.done, `a stream ends with [DONE]: ${r.text.slice(-200)}`);
  // The burst arrives while the first request's prompt runs: it and a full queue of 16
  // complete (the queue then feeds the 8 slots), the rest are told to come back.
  assert.ok(ok.length >= 17, `${ok.length} completed, ${refused.length} refused`);
  assert.ok(refused.every((r) => r.status === 429 && r.body.error.code === 'server_overloaded'));
  // And after the burst, a request is served at once.
  const after = await one(64);
  assert.equal(after.status, 200);
  const rssAfter = await rssKiB(node.child.pid);
  assert.ok(rssAfter < rssBefore + 300 * 1024, `RSS grew from ${rssBefore} to ${rssAfter} KiB`);

  // A client killed mid-stream: its slot is freed at once (it asked for 900 tokens).
  const cancelledBefore = await metric(node.url, 'kwaainet_api_cancelled_total');
  const ac = new AbortController();
  const res = await fetch(`${node.url}/v1/completions`, {
    method: 'POST', signal: ac.signal,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ prompt: 'Once upon a time', max_tokens: 900, temperature: 0, ignore_eos: true, stream: true }),
  });
  const reader = res.body.getReader();
  await reader.read();
  await reader.read();
  assert.equal(await metric(node.url, 'kwaainet_api_active_slots'), 1);
  ac.abort();
  const deadline = Date.now() + 5_000;
  while (Date.now() < deadline && (await metric(node.url, 'kwaainet_api_active_slots')) !== 0) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await metric(node.url, 'kwaainet_api_active_slots'), 0, 'the slot is free');
  assert.equal(await metric(node.url, 'kwaainet_api_cancelled_total'), cancelledBefore + 1);
  // Metrics saw it all.
  assert.ok(await metric(node.url, 'kwaainet_api_time_to_first_token_seconds_count') > 24);
  assert.ok(await metric(node.url, 'kwaainet_api_inter_token_latency_seconds_count') > 24 * 10);
  assert.equal(await metric(node.url, 'kwaainet_api_queue_depth'), 0);
});

test('the SDK talks to the node: new KwaaiNet({ endpoint })', async () => {
  const { KwaaiNet } = await import(join(root, 'sdk-ts', 'dist', 'index.js'));
  const ai = new KwaaiNet({ endpoint: node.url, apiKey: KEY });
  const messages = [{ role: 'user', content: 'What is the capital of France?' }];
  const direct = await client.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
  const r = await ai.chat.completions.create({ messages, max_tokens: 12, temperature: 0 });
  assert.equal(r.choices[0].message.content, direct.choices[0].message.content);
  const s = await ai.chat.completions.create({ messages, max_tokens: 12, temperature: 0, stream: true });
  let text = '';
  for await (const chunk of s) text += chunk.choices[0]?.delta?.content ?? '';
  assert.equal(text, direct.choices[0].message.content);
  // An abort ends the stream with the SDK's abort error.
  const ac = new AbortController();
  const long = await ai.chat.completions.create({ messages, max_tokens: 200, temperature: 0, stream: true }, { signal: ac.signal });
  await assert.rejects((async () => { for await (const _ of long) ac.abort(); })(), (e) => e.name === 'AbortError' || e.code === 'aborted');
});

test('rate limits per key: a burst beyond the limit gets 429 rate_limit_exceeded', async () => {
  const limited = await startNode(['--api-key', 'k1,k2', '--api-rate', '3', '--api-slots', '2']);
  try {
    const call = (key) => fetch(`${limited.url}/v1/models`, { headers: { authorization: `Bearer ${key}` } });
    const statuses = [];
    for (let i = 0; i < 4; i++) statuses.push((await call('k1')).status);
    assert.deepEqual(statuses, [200, 200, 200, 429]);
    const r = await call('k1');
    assert.equal(r.status, 429);
    assert.equal((await r.json()).error.code, 'rate_limit_exceeded');
    assert.ok(Number(r.headers.get('retry-after')) >= 1);
    // Another key has its own budget.
    assert.equal((await call('k2')).status, 200);
  } finally {
    await limited.stop();
  }
});

test('a non-loopback HTTP address without an API key is refused at start', async () => {
  const r = await new Promise((resolve) => {
    const child = spawn(bin, ['start', '--host', '127.0.0.1', '--port', '0', '--http', '0.0.0.0:0', '--model', model,
      '--identity', join(tmpdir(), `kwaainet-api-nokey-${process.pid}.key`)], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += d; });
    child.on('exit', (code) => resolve({ code, err }));
    setTimeout(() => child.kill('SIGKILL'), 20_000);
  });
  assert.notEqual(r.code, 0);
  assert.match(r.err, /needs a key/);
});
