// The streaming loader (GgufLoader) and the engine limits of the CPU module as built by
// scripts/build-wasm.sh, in node: the same tokens as a load from one buffer, the SHA-256,
// clean errors for sizes that do not add up and malformed bytes, and the peak memory of
// both paths (each in a fresh process).
//
//   node --test engine/wasm/tests/
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..', '..');
const dist = join(root, 'dist', 'engine');
const wasm = await import(pathToFileURL(join(dist, 'kwaainet_wasm.js')).href);
const exports = wasm.initSync({ module: readFileSync(join(dist, 'kwaainet_wasm_bg.wasm')) });
const { GgufLoader, WasmEngine } = wasm;
const avx2 = JSON.parse(readFileSync(join(root, 'engine', 'core', 'tests', 'data', 'smollm2-135m-q4_1.llamacpp-avx2.json'), 'utf8'));
const MODEL_SHA = 'b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53';

function modelPath() {
  const cache = process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet');
  const p = process.env.KWAAINET_MODEL ?? join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
  if (existsSync(p)) return p;
  if (process.env.KWAAINET_REQUIRE_MODEL === '1') throw new Error(`model not found at ${p} and KWAAINET_REQUIRE_MODEL=1`);
  return null;
}
const path = modelPath();
const skip = path ? false : 'model not found (set KWAAINET_MODEL)';
let modelBytes;
before(() => {
  if (path) modelBytes = new Uint8Array(readFileSync(path));
});

const code = (c) => (e) => e instanceof Error && e.name === 'KwaaiNetEngineError' && e.code === c;

function greedy(engine, ids, max_tokens) {
  const gen = engine.start({ tokens: ids, max_tokens });
  const tokens = [];
  for (let i = 0; i < 10_000; i++) {
    const r = gen.step(16);
    tokens.push(...r.tokens);
    if (r.done) break;
  }
  gen.free();
  return tokens;
}

test('streamed load: same tokens as llama.cpp, SHA-256 of the file, limits', { skip }, async () => {
  const loader = new GgufLoader(modelBytes.length);
  assert.equal(loader.totalBytes(), modelBytes.length);
  let chunks = 0;
  // Odd-sized chunks: boundaries fall inside the header, inside tensors and in padding.
  for await (const chunk of createReadStream(path, { highWaterMark: 777_777 })) {
    loader.push(chunk);
    chunks++;
  }
  assert.ok(chunks > 100);
  assert.equal(loader.received(), modelBytes.length);
  assert.equal(loader.sha256(), MODEL_SHA);
  const engine = loader.finish(2048);
  assert.throws(() => loader.finish(2048), code('internal'), 'used up');
  loader.free();
  for (const c of avx2.cases.slice(0, 2)) {
    assert.deepEqual(greedy(engine, c.prompt_ids, c.output_ids.length), c.output_ids, c.name);
  }
  const info = engine.info();
  const l = info.limits;
  assert.equal(info.gpu, null);
  assert.deepEqual([l.maxCtxTokens, l.ctxLimitTokens, l.modelBytes, l.simd128], [2048, 8192, modelBytes.length, true]);
  assert.equal(l.kvCacheBytes, info.kvCacheBytes);
  assert.equal(l.weightBytes, info.weightBytes);
  assert.ok(l.weightBytes > 90e6 && l.weightBytes < modelBytes.length);
  assert.equal(l.wasmMemoryBytes, exports.memory.buffer.byteLength);
  assert.equal(l.wasmMemoryMaxBytes, 2 ** 32);
  engine.free();
});

test('the limits of a load from one buffer', { skip }, () => {
  const engine = WasmEngine.load(modelBytes, 64);
  const l = engine.info().limits;
  assert.deepEqual([l.maxCtxTokens, l.modelBytes], [64, modelBytes.length]);
  assert.ok(l.wasmMemoryBytes >= 2 * l.weightBytes, 'the file and the weights were both in wasm memory');
  engine.free();
});

test('sizes that do not add up, malformed bytes and bad arguments are clean errors', () => {
  for (const bad of [0, -1, 1.5, NaN, Infinity, 2 ** 60]) assert.throws(() => new GgufLoader(bad), code('invalid-argument'), String(bad));
  // More bytes than announced; the loader is dead after the error.
  const over = new GgufLoader(4);
  assert.throws(() => over.push(new TextEncoder().encode('GGUF!')), (e) => code('gguf')(e) && /more than the 4 bytes/.test(e.message));
  assert.throws(() => over.push(new Uint8Array(1)), code('gguf'));
  assert.throws(() => over.finish(64), code('gguf'));
  over.free();
  // Not a GGUF: found once the header can be parsed (here: when the file is complete).
  const junk = new GgufLoader(32);
  assert.throws(() => junk.push(new TextEncoder().encode('definitely not a model, really!!')), code('gguf'));
  junk.free();
  if (!modelBytes) return;
  // Fewer bytes than announced.
  const under = new GgufLoader(modelBytes.length + 1);
  under.push(modelBytes);
  assert.throws(() => under.sha256(), code('gguf'));
  assert.throws(() => under.finish(64), (e) => code('gguf')(e) && /ended after/.test(e.message));
  under.free();
  // A length field turned huge in the header.
  const flipped = Uint8Array.from(modelBytes.subarray(0, 4 << 20));
  flipped.fill(0xff, 24, 40);
  const hdr = new GgufLoader(modelBytes.length);
  assert.throws(() => {
    for (let at = 0; at < flipped.length; at += 1 << 20) hdr.push(flipped.subarray(at, at + (1 << 20)));
  }, code('gguf'));
  hdr.free();
  // A good file and a bad maxCtx.
  const ctx = new GgufLoader(modelBytes.length);
  ctx.push(modelBytes);
  assert.throws(() => ctx.finish(1e9), code('invalid-argument'));
  ctx.free();
  // The module is still usable (no trap left it poisoned).
  assert.equal(wasm.simd128(), true);
});

test('wasm memory exhausted: a "memory:" error, not a trap', () => {
  // A file announcing a tensor far larger than wasm32 can hold: the loader's allocation fails.
  const str = (t) => {
    const b = Buffer.alloc(8 + Buffer.byteLength(t));
    b.writeBigUInt64LE(BigInt(Buffer.byteLength(t)));
    b.write(t, 8);
    return b;
  };
  const u32 = (n) => { const b = Buffer.alloc(4); b.writeUInt32LE(n); return b; };
  const u64 = (n) => { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(n)); return b; };
  // One f32 tensor of 3.5 GiB (0.875 Gi elements).
  const n = 0.875 * 2 ** 30;
  let file = Buffer.concat([
    Buffer.from('GGUF'), u32(3), u64(1), u64(1),
    str('general.architecture'), u32(8), str('llama'),
    str('big'), u32(1), u64(n), u32(0), u64(0),
  ]);
  const pad = (32 - (file.length % 32)) % 32;
  file = Buffer.concat([file, Buffer.alloc(pad)]);
  const loader = new GgufLoader(file.length + 4 * n);
  // The header parses once 1 MiB is buffered; the first tensor byte then allocates it.
  assert.throws(() => loader.push(Buffer.concat([file, Buffer.alloc(1 << 20)])),
    (e) => code('memory')(e) && /out of memory/.test(e.message));
  loader.free();
  assert.equal(wasm.simd128(), true);
});

test('peak memory: streamed load vs one buffer (default model)', { skip }, () => {
  const script = join(here, 'load-memory.mjs');
  const measure = (mode) => JSON.parse(execFileSync(process.execPath, [script, mode, path], { encoding: 'utf8' }));
  const bytes = measure('bytes');
  const stream = measure('stream');
  const mib = (n) => `${(n / 2 ** 20).toFixed(1)} MiB`;
  for (const m of [bytes, stream]) {
    console.log(`${m.mode}: wasm memory ${mib(m.wasmMemoryBytes)}, JS heap+buffers peak ${mib(m.jsPeakBytes)}, ` +
      `peak RSS ${mib(m.maxRssBytes)}, load ${m.ms} ms (file ${mib(m.modelBytes)}, weights ${mib(m.weightBytes)})`);
  }
  assert.equal(stream.limitsWasmMemoryBytes, stream.wasmMemoryBytes);
  // One buffer: the file in JS, the file again in wasm memory, then the weights beside it.
  // Streamed: chunks in JS, each tensor once in wasm memory until the model takes it.
  assert.ok(stream.wasmMemoryBytes < bytes.wasmMemoryBytes * 0.75, `${mib(stream.wasmMemoryBytes)} vs ${mib(bytes.wasmMemoryBytes)}`);
  // (Chunks already pushed count until the garbage collector runs.)
  assert.ok(stream.jsPeakBytes < bytes.modelBytes / 2, `JS peak ${mib(stream.jsPeakBytes)}`);
  assert.ok(bytes.jsPeakBytes >= bytes.modelBytes, 'the buffer path holds the whole file in JS');
  assert.ok(stream.maxRssBytes < bytes.maxRssBytes, `RSS ${mib(stream.maxRssBytes)} vs ${mib(bytes.maxRssBytes)}`);
});

test('a stream hashes what it loads (the SHA-256 equals node:crypto\'s)', () => {
  const data = new TextEncoder().encode('GGUF but short');
  const loader = new GgufLoader(data.length);
  assert.throws(() => loader.push(data), code('gguf'));
  // Dead after the error, yet the digest of what was pushed is still there.
  assert.equal(loader.sha256(), createHash('sha256').update(data).digest('hex'));
  loader.free();
});
