// Loads the model once, from one buffer (`bytes`: the whole file read into JS, then copied
// into wasm memory by WasmEngine.load) or streamed (`stream`: 1 MiB chunks from a file
// stream into GgufLoader), and prints the peak memory as JSON. Run by stream.test.mjs in a
// fresh process per mode, so each peak is that path's alone:
//
//   node engine/wasm/tests/load-memory.mjs bytes|stream MODEL.gguf
import { createReadStream, readFileSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const [mode, path] = process.argv.slice(2);
const dist = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', 'dist', 'engine');
const wasm = await import(pathToFileURL(join(dist, 'kwaainet_wasm.js')).href);
const exports = wasm.initSync({ module: readFileSync(join(dist, 'kwaainet_wasm_bg.wasm')) });

let jsPeak = 0;
const sample = () => {
  const m = process.memoryUsage();
  // External memory holds Buffers / ArrayBuffers, wasm memory included: take it out.
  jsPeak = Math.max(jsPeak, m.heapUsed + m.external - exports.memory.buffer.byteLength);
};
const t0 = performance.now();
let engine;
if (mode === 'bytes') {
  const bytes = readFileSync(path);
  sample();
  engine = wasm.WasmEngine.load(bytes, 2048);
  sample();
} else if (mode === 'stream') {
  const loader = new wasm.GgufLoader(statSync(path).size);
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) {
    loader.push(chunk);
    sample();
  }
  engine = loader.finish(2048);
  loader.free();
  sample();
} else {
  throw new Error(`mode: bytes or stream, not ${mode}`);
}
const ms = performance.now() - t0;
const info = engine.info();
process.stdout.write(`${JSON.stringify({
  mode,
  ms: Math.round(ms),
  wasmMemoryBytes: exports.memory.buffer.byteLength,
  limitsWasmMemoryBytes: info.limits.wasmMemoryBytes,
  jsPeakBytes: Math.max(0, jsPeak),
  maxRssBytes: process.resourceUsage().maxRSS * 1024,
  modelBytes: info.limits.modelBytes,
  weightBytes: info.limits.weightBytes,
})}\n`);
