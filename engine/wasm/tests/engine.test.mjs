// The browser engine as built by scripts/build-wasm.sh (dist/engine), run in node: the
// simd128 kernels against llama.cpp's greedy outputs, the JS API contract, errors, size.
//
//   node --test engine/wasm/tests/
//
// The model comes from KWAAINET_MODEL (else ~/.cache/kwaainet/models); without it the
// model tests skip, unless KWAAINET_REQUIRE_MODEL=1, which makes that a failure.

import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { gzipSync } from 'node:zlib';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const dist = join(root, 'dist', 'engine');
const data = join(root, 'engine', 'core', 'tests', 'data');

const wasm = await import(pathToFileURL(join(dist, 'kwaainet_wasm.js')).href);
const wasmBytes = readFileSync(join(dist, 'kwaainet_wasm_bg.wasm'));
wasm.initSync({ module: wasmBytes });
const { WasmEngine } = wasm;

const shared = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp.json'), 'utf8'));
const avx2 = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp-avx2.json'), 'utf8'));

function modelPath() {
  const cache = process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet');
  const p = process.env.KWAAINET_MODEL ?? join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  if (existsSync(p)) return p;
  if (process.env.KWAAINET_REQUIRE_MODEL === '1') {
    throw new Error(`model not found at ${p} and KWAAINET_REQUIRE_MODEL=1`);
  }
  return null;
}

const path = modelPath();
const skip = path ? false : 'model not found (set KWAAINET_MODEL)';
let modelBytes;
let engine;

before(() => {
  if (!path) return;
  modelBytes = readFileSync(path);
  engine = WasmEngine.load(modelBytes, 2048);
});

/** Runs a generation to the end in steps of `chunk`; returns the concatenated results. */
function run(gen, chunk = 8) {
  let text = '';
  const tokens = [];
  const first = gen.step(0); // prefill only
  assert.equal(first.tokens.length, 0);
  for (;;) {
    const r = gen.step(chunk);
    assert.ok(r.tokens.length <= chunk + 0, `step(${chunk}) returned ${r.tokens.length} tokens`);
    text += r.text;
    tokens.push(...r.tokens);
    if (r.done) return { ...r, text, tokens };
    assert.equal(r.finish_reason, null);
  }
}

function greedy(prompt_ids, max_tokens) {
  return run(engine.start({ tokens: prompt_ids, max_tokens }), 16).tokens;
}

/** Teacher-forced top-1 agreement: our argmax given the reference prefix at each position. */
function agreement(c, got) {
  // Greedy decoding that reproduced `output_ids` is the same computation as teacher forcing
  // on them, so agreement is then complete without running it again.
  if (got.length === c.output_ids.length && got.every((t, i) => t === c.output_ids[i])) {
    return c.output_ids.length;
  }
  const argmax = engine.teacherForcedArgmax(
    Uint32Array.from(c.prompt_ids),
    Uint32Array.from(c.output_ids),
  );
  return argmax.reduce((n, t, i) => n + (t === c.output_ids[i] ? 1 : 0), 0);
}

/** An assert.throws validator: the module's Error with this `code` (engine/wasm/src/error.rs). */
const code = (c) => (e) => e instanceof Error && e.name === 'KwaaiNetEngineError' && e.code === c;

function firstDiff(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

test('module: simd128, version, size budget', () => {
  assert.equal(wasm.simd128(), true, 'built without simd128');
  assert.match(wasm.engineVersion(), /^\d+\.\d+\.\d+/);
  const gz = gzipSync(wasmBytes, { level: 9 }).length;
  console.log(`kwaainet_wasm_bg.wasm: ${wasmBytes.length} bytes raw, ${gz} bytes gzip -9`);
  assert.ok(gz <= 4 * 1024 * 1024, `gzip size ${gz} exceeds the 4 MB budget`);
});

test('malformed GGUF bytes are clean errors', () => {
  const header = (...words) => {
    const b = Buffer.alloc(4 + 4 * words.length);
    b.write('GGUF', 0, 'latin1');
    words.forEach((w, i) => b.writeUInt32LE(w, 4 + 4 * i));
    return new Uint8Array(b);
  };
  const cases = [
    new Uint8Array(0),
    new TextEncoder().encode('definitely not a model'),
    header(3),
    header(99, 0, 0, 0, 0),
    header(3, 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff), // absurd counts
  ];
  if (modelBytes) {
    cases.push(modelBytes.subarray(0, 1 << 20)); // metadata intact, weights cut off
    const flipped = Uint8Array.from(modelBytes.subarray(0, 4096));
    flipped.fill(0xff, 24, 40); // a length field turned huge
    cases.push(flipped);
  }
  for (const bytes of cases) {
    assert.throws(
      () => WasmEngine.load(bytes, 64),
      (e) => ['gguf', 'model', 'tokenizer', 'template'].some((c) => code(c)(e)),
    );
  }
  // A well-formed GGUF of an architecture the engine does not run.
  const str = (t) => {
    const b = Buffer.alloc(8 + Buffer.byteLength(t));
    b.writeBigUInt64LE(BigInt(Buffer.byteLength(t)));
    b.write(t, 8);
    return b;
  };
  const kv = Buffer.concat([str('general.architecture'), Buffer.from([8, 0, 0, 0]), str('gpt9')]);
  const counts = Buffer.alloc(16);
  counts.writeBigUInt64LE(0n, 0); // tensors
  counts.writeBigUInt64LE(1n, 8); // metadata entries
  const gpt9 = Buffer.concat([Buffer.from(header(3)), counts, kv]);
  assert.throws(
    () => WasmEngine.load(new Uint8Array(gpt9), 64),
    (e) => code('unsupported')(e) && e.message.startsWith('unsupported architecture `gpt9`'),
  );
  // The module is still usable after all of that (no trap left it poisoned).
  assert.equal(wasm.simd128(), true);
});

test('info', { skip }, () => {
  const info = engine.info();
  assert.equal(info.backend, 'cpu-wasm');
  assert.equal(info.simd128, true);
  assert.equal(info.architecture, 'llama');
  assert.equal(info.nLayers, 30);
  assert.equal(info.nEmbd, 576);
  assert.equal(info.vocabSize, 49152);
  assert.equal(info.maxCtx, 2048);
  assert.equal(info.nCtxTrain, 8192);
  assert.equal(info.hasChatTemplate, true);
  assert.ok(info.weightBytes > 90e6 && info.weightBytes < modelBytes.length);
  assert.ok(info.kvCacheBytes > 0);
  assert.ok(info.name === null || typeof info.name === 'string');
});

/** FNV-1a (32-bit) over the little-endian bytes of each value, as tests/logits.rs. */
function fnv1a32(f32) {
  let h = 0x811c9dc5;
  for (const b of new Uint8Array(f32.buffer, f32.byteOffset, f32.byteLength)) {
    h = Math.imul(h ^ b, 0x01000193) >>> 0;
  }
  return `0x${h.toString(16).padStart(8, '0')}`;
}

test('logits are bit for bit those of the native engine on AVX2', { skip }, () => {
  const cases = JSON.parse(readFileSync(join(here, 'data', 'logits-avx2.json'), 'utf8'));
  for (const c of cases) {
    const logits = engine.promptLogits(Uint32Array.from(c.tokens));
    assert.ok(logits instanceof Float32Array && logits.length === 49152);
    assert.equal(fnv1a32(logits), c.fnv1a32, `${c.name}: logits differ from native AVX2`);
  }
});

test('greedy tokens match llama.cpp on x86-64 AVX2, every one', { skip }, () => {
  let total = 0;
  let exact = 0;
  for (const c of avx2.cases) {
    const got = greedy(c.prompt_ids, c.max_tokens);
    const d = firstDiff(got, c.output_ids);
    const same = d === -1 ? got.length : d;
    const agree = agreement(c, got);
    console.log(
      `${c.name} (AVX2 reference): ${same}/${c.output_ids.length} greedy tokens equal` +
        `${d === -1 ? '' : ` (first difference at ${d})`}, teacher-forced ${agree}/${c.output_ids.length}`,
    );
    total += c.output_ids.length;
    exact += d === -1 ? c.output_ids.length : 0;
    assert.deepEqual(got, c.output_ids, `${c.name}: greedy tokens differ from llama.cpp (AVX2)`);
    assert.ok(agree / c.output_ids.length >= 0.97, `${c.name}: agreement ${agree}`);
  }
  console.log(`AVX2 reference: ${exact}/${total} tokens exact`);
});

test('greedy matches the shared llama.cpp reference', { skip }, () => {
  let agree = 0;
  let total = 0;
  for (const c of shared.cases) {
    const got = greedy(c.prompt_ids, c.max_tokens);
    if (c.name === 'capital-raw') {
      assert.deepEqual(got, c.output_ids, 'capital-raw: greedy tokens differ from llama.cpp');
      assert.equal(engine.detokenize(Uint32Array.from(got.slice(0, -1))), c.output_text);
    }
    const a = agreement(c, got);
    console.log(`${c.name}: teacher-forced top-1 agreement ${a}/${c.output_ids.length}`);
    agree += a;
    total += c.output_ids.length;
  }
  console.log(`shared reference: teacher-forced agreement ${agree}/${total}`);
  assert.ok(agree / total >= 0.97, `agreement ${agree}/${total} < 0.97`);
});

test('chat template renders the reference prompt', { skip }, () => {
  for (const c of shared.cases.filter((c) => c.messages)) {
    assert.equal(engine.applyChatTemplate(c.messages, true), c.prompt);
    // A messages request tokenizes to the reference prompt ids.
    const g = engine.start({ messages: c.messages, max_tokens: 1 });
    assert.equal(g.step(0).prompt_tokens, c.prompt_ids.length);
  }
  assert.ok(!engine.applyChatTemplate([{ role: 'user', content: 'hi' }], false).endsWith('assistant\n'));
  assert.throws(() => engine.applyChatTemplate([{ role: 'user' }], true), code('invalid-argument'));
  assert.throws(() => engine.applyChatTemplate('nope', true), code('invalid-argument'));
});

test('tokenize / detokenize round trip', { skip }, () => {
  const c = shared.cases[0];
  assert.deepEqual(Array.from(engine.tokenize(c.prompt, true)), c.prompt_ids);
  for (const text of [
    c.prompt,
    'Hello, world! héllo wörld — 世界 🌍\n\ttabs  and   spaces',
    "L'Étoile, la Cité",
    '',
  ]) {
    const ids = engine.tokenize(text, true);
    assert.ok(ids instanceof Uint32Array);
    assert.equal(engine.detokenize(ids), text);
  }
  // Without parseSpecial, special-token text is ordinary text.
  assert.ok(engine.tokenize('<|im_start|>', false).length > 1);
  assert.deepEqual(Array.from(engine.tokenize('<|im_start|>', true)), [1]);
  assert.throws(() => engine.detokenize(Uint32Array.from([49152])), code('invalid-argument'));
});

test('max_tokens ends with "length"', { skip }, () => {
  const c = avx2.cases[0];
  const r = run(engine.start({ tokens: c.prompt_ids, max_tokens: 3 }), 2);
  assert.equal(r.finish_reason, 'length');
  assert.deepEqual(r.tokens, c.output_ids.slice(0, 3));
  assert.equal(r.completion_tokens, 3);
  assert.equal(r.prompt_tokens, c.prompt_ids.length);
  assert.equal(r.text, 'The capital of');
  // max_tokens 0: nothing but the prefill.
  const z = engine.start({ tokens: c.prompt_ids, max_tokens: 0 }).step(5);
  assert.deepEqual([z.done, z.finish_reason, z.tokens.length], [true, 'length', 0]);
});

test('end of turn ends with "stop"; text and prompt forms agree', { skip }, () => {
  const c = avx2.cases[0];
  const r = run(engine.start({ prompt: c.prompt, max_tokens: 32 }), 32);
  assert.equal(r.finish_reason, 'stop');
  assert.equal(r.text, c.output_text);
  assert.deepEqual(r.tokens, c.output_ids, 'the final end-of-turn token is reported');
  assert.equal(r.prompt_tokens, c.prompt_ids.length);
});

test('stop strings end generation before them, also across tokens', { skip }, () => {
  const c = avx2.cases[0];
  for (const [stop, want] of [
    [['Paris'], 'The capital of France is '],
    [['is Par'], 'The capital of France '],
    [['nowhere', 'of Fr'], 'The capital '],
    [['Parisian'], 'The capital of France is Paris.'], // a prefix that never completes
  ]) {
    let text = '';
    const g = engine.start({ prompt: c.prompt, max_tokens: 32, stop });
    g.step(0);
    for (;;) {
      const r = g.step(1);
      text += r.text;
      // Held-back text is never a partial stop string that later vanishes.
      assert.ok(want.startsWith(text), `${JSON.stringify(text)} is not a prefix of the answer`);
      if (r.done) {
        assert.equal(r.finish_reason, 'stop');
        break;
      }
    }
    assert.equal(text, want, `stop ${JSON.stringify(stop)}`);
  }
});

test('bad options are errors', { skip }, () => {
  const c = avx2.cases[0];
  const bad = [
    { prompt: 'x', temperature: -1 },
    { prompt: 'x', temperature: Number.NaN },
    { prompt: 'x', top_p: 0 },
    { prompt: 'x', top_p: 1.5 },
    { prompt: 'x', repeat_penalty: 0 },
    { prompt: 'x', max_tokens: -1 },
    { prompt: 'x', max_tokens: 2.5 },
    { prompt: 'x', top_k: -3 },
    { prompt: 'x', stop: 'not a list' },
    { prompt: 'x', maxTokens: 5 }, // misspelt
    { prompt: 'x', tokens: [1] },
    {},
    { tokens: [] },
    { tokens: [49152] },
    { tokens: new Array(2049).fill(1) }, // longer than maxCtx
    { messages: [{ role: 'user', content: 1 }] },
  ];
  for (const req of bad) {
    assert.throws(
      () => engine.start(req),
      (e) => code('invalid-argument')(e) || code('context-full')(e),
      JSON.stringify(req).slice(0, 80),
    );
  }
  // A prompt longer than the context is its own code, with the numbers.
  assert.throws(() => engine.start({ tokens: new Array(2049).fill(1) }),
    (e) => code('context-full')(e) && e.needed === 2049 && e.max === 2048 && /2049/.test(e.message));
  assert.throws(() => engine.start({ tokens: c.prompt_ids, max_tokens: 8, bogus: 1 }),
    (e) => code('invalid-argument')(e) && /unknown field `bogus`/.test(e.message));
  assert.throws(() => engine.start('prompt'), code('invalid-argument'));
  assert.throws(() => engine.start({ tokens: c.prompt_ids }).step(-1), code('invalid-argument'));
  assert.throws(() => WasmEngine.load(modelBytes, 0), code('invalid-argument'));
  assert.throws(() => WasmEngine.load(modelBytes, 8193), code('invalid-argument'));
  // Sampling options are accepted and seeded sampling is reproducible.
  const sample = () =>
    run(engine.start({ prompt: 'Once upon a time', max_tokens: 8, temperature: 0.9, top_k: 40, top_p: 0.95, repeat_penalty: 1.1, seed: 7 })).tokens;
  assert.deepEqual(sample(), sample());
});

test('a second start ends the first', { skip }, () => {
  const c = avx2.cases[0];
  const g1 = engine.start({ tokens: c.prompt_ids, max_tokens: 8 });
  g1.step(1);
  const g2 = engine.start({ tokens: c.prompt_ids, max_tokens: 8 });
  assert.throws(() => g1.step(1), code('generation'));
  const r = run(g2, 8);
  assert.deepEqual(r.tokens, c.output_ids);
  g1.free();
  g2.free();
});

test('free releases the engine', { skip }, () => {
  const e = WasmEngine.load(modelBytes, 64);
  const g = e.start({ prompt: 'Hi', max_tokens: 2 });
  e.free();
  assert.throws(() => g.step(1), code('generation'));
  g.free();
});
