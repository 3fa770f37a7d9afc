#!/usr/bin/env node
// Compares this engine's numerics with llama.cpp's on text neither was tuned on, through
// the node's OpenAI API (`/v1/completions` with `echo` + `logprobs`, the way
// lm-evaluation-harness asks for likelihoods):
//
// - teacher-forced: for each position of a tokenized text, our top-1 token against
//   llama.cpp's (its batched and token-by-token prompt paths), and our perplexity;
// - greedy chat answers to new prompts against llama.cpp's, with the first differing step
//   and llama.cpp's top-2 margin there.
//
// The llama.cpp side is produced by scripts run in a llama-cpp-python venv (not in CI):
// teacher_forced.json ({tokens, batched: {argmax, logprob, margin}, token_by_token: …}) and
// chat_greedy.json ({cases: [{prompt, rendered_prompt, batched: {generated, margins},
// token_by_token: …}]}).
//
//   node scripts/dev/numerics-vs-llamacpp.mjs --url http://127.0.0.1:8080 DIR [DIR…]
import { readFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

const { values: opt, positionals: dirs } = parseArgs({
  allowPositionals: true,
  options: { url: { type: 'string', default: 'http://127.0.0.1:8080' }, key: { type: 'string' } },
});

async function post(path, body) {
  const res = await fetch(`${opt.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(opt.key ? { authorization: `Bearer ${opt.key}` } : {}) },
    body: JSON.stringify(body),
  });
  const json = await res.json();
  if (res.status !== 200) throw new Error(`${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

const id = (name) => Number(name.slice('token_id:'.length));

/** Our top-1 ids and the log-probabilities of the actual next tokens, per position. */
async function ours(tokens) {
  const r = await post('/v1/completions', {
    prompt: tokens, max_tokens: 1, temperature: 0, echo: true, logprobs: 1, return_tokens_as_token_ids: true,
  });
  const lp = r.choices[0].logprobs;
  const argmax = [];
  const logprob = [];
  // Entry i + 1 holds the distribution after tokens[0..=i].
  for (let i = 0; i + 1 < tokens.length; i++) {
    argmax.push(id(Object.keys(lp.top_logprobs[i + 1])[0]));
    logprob.push(lp.token_logprobs[i + 1]);
  }
  // The distribution after the last prompt token is the generated token's.
  argmax.push(id(lp.tokens[tokens.length]));
  return { argmax, logprob };
}

const ppl = (lps) => Math.exp(-lps.reduce((a, b) => a + b, 0) / lps.length);
const pctf = (a, n) => `${a}/${n} (${((100 * a) / n).toFixed(1)}%)`;

for (const dir of dirs) {
  console.log(`\n== llama.cpp data in ${dir}`);
  const tfPath = join(dir, 'teacher_forced.json');
  if (existsSync(tfPath)) {
    const tf = JSON.parse(readFileSync(tfPath, 'utf8'));
    const us = await ours(tf.tokens);
    const n = tf.tokens.length - 1;
    console.log(`teacher-forced, ${n} positions of ${tf.text_file ?? 'the text'}`);
    console.log(`  our perplexity ${ppl(us.logprob.slice(0, n)).toFixed(4)}; llama.cpp batched ${ppl(tf.batched.logprob.slice(0, n)).toFixed(4)}, token-by-token ${ppl(tf.token_by_token.logprob.slice(0, n)).toFixed(4)}`);
    for (const path of ['batched', 'token_by_token']) {
      const theirs = tf[path];
      let agree = 0;
      const flips = [];
      for (let i = 0; i < n; i++) {
        if (us.argmax[i] === theirs.argmax[i]) agree++;
        else flips.push(theirs.margin[i]);
      }
      flips.sort((a, b) => b - a);
      const lpDiff = us.logprob.slice(0, n).map((x, i) => Math.abs(x - theirs.logprob[i]));
      lpDiff.sort((a, b) => a - b);
      console.log(`  top-1 agreement with llama.cpp ${path}: ${pctf(agree, n)}; its top-2 margin at the disagreements ≤ ${flips[0]?.toFixed(3) ?? '-'}; |Δ logprob| median ${lpDiff[Math.floor(n / 2)].toFixed(4)}, max ${lpDiff[n - 1].toFixed(4)}`);
    }
    let both = 0;
    for (let i = 0; i < n; i++) if (tf.batched.argmax[i] === tf.token_by_token.argmax[i]) both++;
    console.log(`  (llama.cpp's own two paths agree on ${pctf(both, n)})`);
  }
  const chatPath = join(dir, 'chat_greedy.json');
  if (existsSync(chatPath)) {
    const chat = JSON.parse(readFileSync(chatPath, 'utf8'));
    console.log(`greedy chat, ${chat.cases.length} new prompts`);
    for (const c of chat.cases) {
      const steps = c.batched.generated.length;
      const r = await post('/v1/chat/completions', {
        messages: [{ role: 'user', content: c.prompt }], max_tokens: steps, temperature: 0, ignore_eos: true,
        logprobs: true, return_tokens_as_token_ids: true,
      });
      const gen = r.choices[0].logprobs.content.map((t) => id(t.token));
      const cmp = (path) => {
        const theirs = c[path].generated;
        const k = theirs.findIndex((t, i) => t !== gen[i]);
        return k < 0 ? 'identical' : `differs at step ${k} (llama.cpp's margin there ${c[path].margins[k].toFixed(3)})`;
      };
      console.log(`  "${c.prompt}" (${r.usage.prompt_tokens} prompt tokens; llama.cpp's ${c.prompt_ids.length}): vs batched ${cmp('batched')}; vs token-by-token ${cmp('token_by_token')}`);
    }
  }
}
