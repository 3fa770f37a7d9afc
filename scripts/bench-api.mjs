#!/usr/bin/env node
// Load generator for OpenAI-compatible servers: aggregate decode tok/s, time to first token
// and inter-token latency (p50/p99) at several concurrencies, streaming chat requests.
//
//   node scripts/bench-api.mjs                          starts `kwaainet start` itself
//   node scripts/bench-api.mjs --url http://127.0.0.1:8080 [--key K]
//   node scripts/bench-api.mjs --compare http://127.0.0.1:8090   a second server (llama.cpp's),
//                                                        measured in the same run, level by level
//
// Options: --concurrency 1,4,16,64  --max-tokens 64  --rounds 2 (requests per client and
// level)  --threads 2 (of the node it starts)  --slots 16  --model NAME.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    key: { type: 'string' },
    compare: { type: 'string' },
    'compare-key': { type: 'string' },
    model: { type: 'string' },
    concurrency: { type: 'string', default: '1,4,16,64' },
    'max-tokens': { type: 'string', default: '64' },
    rounds: { type: 'string', default: '2' },
    threads: { type: 'string', default: '2' },
    slots: { type: 'string', default: '16' },
    bin: { type: 'string' },
  },
});
const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const levels = opt.concurrency.split(',').map(Number);
const maxTokens = Number(opt['max-tokens']);
const rounds = Number(opt.rounds);

const prompts = [
  'Write a short story about a lighthouse keeper.',
  'Explain how a bicycle works.',
  'Describe a walk through a forest in autumn.',
  'What are the benefits of reading books?',
  'Tell me about the history of bread.',
  'How do bees make honey?',
  'Describe your ideal weekend.',
  'Why is the sky blue?',
];

async function startNode() {
  const bin = opt.bin ?? process.env.KWAAINET_BIN ?? join(process.env.CARGO_TARGET_DIR ?? join(root, 'target'), 'release', 'kwaainet');
  const dir = mkdtempSync(join(tmpdir(), 'kwaainet-bench-api-'));
  const args = ['start', '--host', '127.0.0.1', '--port', '0', '--http', '127.0.0.1:0', '--identity', join(dir, 'id.key'),
    '--api-threads', opt.threads, '--api-slots', opt.slots, '--api-queue', '256', '--api-queue-timeout', '600'];
  if (process.env.KWAAINET_MODEL) args.push('--model', process.env.KWAAINET_MODEL);
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, KWAAINET_CONFIG_DIR: dir } });
  const lines = createInterface({ input: child.stdout });
  const url = await new Promise((resolve, reject) => {
    child.on('exit', (c) => reject(new Error(`kwaainet exited (${c})`)));
    lines.on('line', (l) => { if (l.startsWith('http: ')) resolve(l.slice(6).trim().replace(/\/$/, '')); });
  });
  return { url, stop: () => { child.kill('SIGTERM'); setTimeout(() => rmSync(dir, { recursive: true, force: true }), 2000); } };
}

/** One streamed chat request; resolves with its timings. */
async function request(target, i) {
  const t0 = performance.now();
  const res = await fetch(`${target.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(target.key ? { authorization: `Bearer ${target.key}` } : {}) },
    body: JSON.stringify({
      model: target.model, messages: [{ role: 'user', content: prompts[i % prompts.length] }],
      max_tokens: maxTokens, temperature: 0, stream: true, stream_options: { include_usage: true }, ignore_eos: true,
    }),
  });
  if (res.status !== 200) throw new Error(`${target.name}: HTTP ${res.status} ${await res.text()}`);
  const dec = new TextDecoder();
  let buf = '';
  const stamps = [];
  let usage = null;
  for await (const part of res.body) {
    buf += dec.decode(part, { stream: true });
    let at;
    while ((at = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, at);
      buf = buf.slice(at + 2);
      for (const line of ev.split('\n')) {
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const chunk = JSON.parse(line.slice(6));
        if (chunk.usage) usage = chunk.usage;
        if (chunk.choices?.[0]?.delta?.content) stamps.push(performance.now());
      }
    }
  }
  const t1 = performance.now();
  const gaps = stamps.slice(1).map((s, k) => s - stamps[k]);
  return { ttft: stamps.length ? stamps[0] - t0 : NaN, gaps, tokens: usage?.completion_tokens ?? stamps.length, total: t1 - t0 };
}

function pct(xs, p) {
  if (!xs.length) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function level(target, c) {
  const t0 = performance.now();
  const results = [];
  await Promise.all(Array.from({ length: c }, async (_, w) => {
    for (let r = 0; r < rounds; r++) results.push(await request(target, w * rounds + r));
  }));
  const wall = (performance.now() - t0) / 1000;
  const tokens = results.reduce((a, r) => a + r.tokens, 0);
  const gaps = results.flatMap((r) => r.gaps);
  const ttfts = results.map((r) => r.ttft);
  return { c, n: results.length, tokens, wall, agg: tokens / wall, ttft50: pct(ttfts, 50), ttft99: pct(ttfts, 99), itl50: pct(gaps, 50), itl99: pct(gaps, 99) };
}

const f = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
function row(name, s) {
  console.log([name.padEnd(10), String(s.c).padStart(4), String(s.n).padStart(5), String(s.tokens).padStart(7), f(s.wall, 2).padStart(8),
    f(s.agg).padStart(9), f(s.ttft50, 0).padStart(9), f(s.ttft99, 0).padStart(9), f(s.itl50, 1).padStart(8), f(s.itl99, 1).padStart(8)].join(' '));
}

const started = opt.url ? null : await startNode();
const targets = [{ name: 'kwaainet', url: opt.url ?? started.url, key: opt.key, model: opt.model }];
if (opt.compare) targets.push({ name: 'compare', url: opt.compare, key: opt['compare-key'], model: opt.model });
try {
  for (const t of targets) {
    if (!t.model) {
      const r = await fetch(`${t.url}/v1/models`, { headers: t.key ? { authorization: `Bearer ${t.key}` } : {} });
      t.model = (await r.json()).data[0].id;
    }
    await request(t, 0); // warm-up
  }
  console.log(`streamed chat, ${maxTokens} tokens per request (ignore_eos), ${rounds} request(s) per client per level`);
  console.log('target     conc  reqs  tokens   wall_s  agg_tok/s ttft_p50 ttft_p99  itl_p50  itl_p99   (ms)');
  const stats = new Map();
  for (const c of levels) {
    for (const t of targets) {
      const s = await level(t, c);
      stats.set(`${t.name}:${c}`, s);
      row(t.name, s);
    }
  }
  for (const t of targets) {
    const one = stats.get(`${t.name}:1`);
    for (const c of levels.filter((x) => x > 1)) {
      const s = stats.get(`${t.name}:${c}`);
      if (one && s) console.log(`${t.name}: concurrency ${c}: aggregate ${f(s.agg / one.agg, 2)}x single-stream, p99 inter-token latency ${f(s.itl99 / one.itl99, 2)}x`);
    }
  }
} finally {
  started?.stop();
}
