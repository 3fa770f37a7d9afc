// Speed of the browser engine (dist/engine, built by scripts/build-wasm.sh) in node, one
// thread, measured like `kwaainet bench`: load time, then prefill and decode tokens/s
// (median of several runs) for a 128-token prompt and 64 generated tokens.
//
//   node engine/wasm/bench.mjs [--runs 5] [--prompt-tokens 128] [--gen-tokens 64] [--dist DIR]
//
// The model comes from KWAAINET_MODEL (else ~/.cache/kwaainet/models).

import { existsSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    'prompt-tokens': { type: 'string', default: '128' },
    'gen-tokens': { type: 'string', default: '64' },
    dist: { type: 'string' }, // another build (default: dist/engine)
  },
});
const runs = Number(args.runs);
const promptTokens = Number(args['prompt-tokens']);
const genTokens = Number(args['gen-tokens']);

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const dist = resolve(args.dist ?? join(root, 'dist', 'engine'));
const wasm = await import(pathToFileURL(join(dist, 'kwaainet_wasm.js')).href);
wasm.initSync({ module: readFileSync(join(dist, 'kwaainet_wasm_bg.wasm')) });

const cache = process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet');
const path = process.env.KWAAINET_MODEL ?? join(cache, 'models', 'SmolLM2-135M-Instruct.Q4_1.gguf');
if (!existsSync(path)) {
  console.error(`model not found at ${path} (set KWAAINET_MODEL)`);
  process.exit(1);
}

const bytes = readFileSync(path);
let t = performance.now();
const engine = wasm.WasmEngine.load(bytes, promptTokens + genTokens + 1);
const loadMs = performance.now() - t;

// The same prompt as `kwaainet bench`: a text repeated up to the requested length.
const text =
  'The history of distributed computing begins with networks of machines that ' +
  'shared work over slow links. Volunteers donated spare cycles to science, and ' +
  'later, peer-to-peer systems spread files and computation across the world. ';
const base = Array.from(engine.tokenize(text, false));
const prompt = [];
while (prompt.length < promptTokens) prompt.push(...base.slice(0, promptTokens - prompt.length));

/** Seconds of wall time and of this process's CPU time spent in `f`. */
function timed(f) {
  const w = performance.now();
  const c = process.cpuUsage();
  f();
  const dc = process.cpuUsage(c);
  return { wall: (performance.now() - w) / 1000, cpu: (dc.user + dc.system) / 1e6 };
}

function once(gen) {
  const g = engine.start({ tokens: prompt, max_tokens: gen });
  const pre = timed(() => g.step(0));
  let n = 0;
  const dec = timed(() => {
    for (;;) {
      const r = g.step(gen);
      n = r.completion_tokens;
      if (r.done) break;
    }
  });
  g.free();
  return {
    prefill: promptTokens / pre.wall,
    decode: n / dec.wall,
    prefillCpu: promptTokens / pre.cpu,
    decodeCpu: n / dec.cpu,
    n,
  };
}

const median = (v) => v.sort((a, b) => a - b)[Math.floor(v.length / 2)];

once(8); // warm-up: compiles hot paths, grows memory
const samples = Array.from({ length: runs }, () => once(genTokens));
console.log(
  `model: ${path} (${(bytes.length / 1e6).toFixed(1)} MB, loaded in ${(loadMs / 1000).toFixed(2)} s)`,
);
console.log(
  `kwaainet-wasm ${wasm.engineVersion()}, simd128 ${wasm.simd128()}, node ${process.version}, 1 thread`,
);
console.log(
  `prompt ${promptTokens} tokens, decode ${genTokens} tokens, median of ${runs} runs` +
    (samples.some((s) => s.n < genTokens) ? ' (some runs ended early at end of turn)' : ''),
);
// Per CPU-second too: on a busy machine wall time includes waiting for a core.
const show = (name, wall, cpu) =>
  console.log(
    `${name} ${median(samples.map(wall)).toFixed(1)} tok/s ` +
      `(${median(samples.map(cpu)).toFixed(1)} per CPU-second)`,
  );
show('prefill', (s) => s.prefill, (s) => s.prefillCpu);
show('decode ', (s) => s.decode, (s) => s.decodeCpu);
