// Speed of CPU engine modules side by side in a page of headless Chromium, one thread,
// measured as engine/wasm/bench.mjs measures in node (prefill and decode tokens/s for a
// 128-token prompt and 64 generated tokens, medians), the modules taking turns in each run.
// By default the plain simd128 module and the one with relaxed SIMD:
//
//   node engine/wasm/bench-browser.mjs [--runs 5] [--prompt-tokens 128] [--gen-tokens 64]
//        [--dist dist/engine --dist dist/engine-relaxed]
//
// The model comes from KWAAINET_MODEL (else ~/.cache/kwaainet/models).
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { enginePage, haveModel, modelPath, root } from './tests/chromium.mjs';

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '5' },
    'prompt-tokens': { type: 'string', default: '128' },
    'gen-tokens': { type: 'string', default: '64' },
    dist: { type: 'string', multiple: true },
  },
});
const runs = Math.max(1, Math.min(50, Number(args.runs)));
const promptTokens = Math.max(1, Math.min(1024, Number(args['prompt-tokens'])));
const genTokens = Math.max(2, Math.min(1024, Number(args['gen-tokens'])));
const dists = args.dist ?? [join(root, 'dist', 'engine'), join(root, 'dist', 'engine-relaxed')];
if (!haveModel()) throw new Error(`model not found at ${modelPath} (set KWAAINET_MODEL)`);

const env = await enginePage(dists);
try {
  const results = Object.fromEntries(env.names.map((n) => [n, { prefill: [], decode: [] }]));
  for (let r = 0; r < runs; r++) {
    const order = r % 2 === 0 ? env.names : [...env.names].reverse();
    for (const name of order) {
      const one = await env.page.evaluate(({ name, promptTokens, genTokens }) => {
        const m = window.modules[name];
        const e = m.WasmEngine.load(window.modelBytes, promptTokens + genTokens + 1);
        // The same prompt as `kwaainet bench`: a text repeated up to the requested length.
        const text = 'The history of distributed computing begins with networks of machines that ' +
          'shared work over slow links. Volunteers donated spare cycles to science, and ' +
          'later, peer-to-peer systems spread files and computation across the world. ';
        const base = Array.from(e.tokenize(text, false));
        const prompt = [];
        while (prompt.length < promptTokens) prompt.push(...base.slice(0, promptTokens - prompt.length));
        const g = e.start({ tokens: prompt, max_tokens: genTokens });
        let t = performance.now();
        g.step(0);
        const prefillMs = performance.now() - t;
        t = performance.now();
        let n = 0;
        for (;;) {
          const s = g.step(genTokens);
          n = s.completion_tokens;
          if (s.done) break;
        }
        const decodeMs = performance.now() - t;
        g.free();
        e.free();
        return { prefill: (promptTokens * 1000) / prefillMs, decode: (n * 1000) / decodeMs, relaxed: m.relaxedSimd() };
      }, { name, promptTokens, genTokens });
      results[name].prefill.push(one.prefill);
      results[name].decode.push(one.decode);
      results[name].relaxed = one.relaxed;
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  console.log(`Chromium, one thread: prompt ${promptTokens} tokens, decode ${genTokens}, medians of ${runs} runs`);
  for (const [name, r] of Object.entries(results)) {
    console.log(`${name.padEnd(18)} relaxed SIMD ${String(r.relaxed).padEnd(8)} prefill ${median(r.prefill).toFixed(1).padStart(6)} tok/s` +
      `   decode ${median(r.decode).toFixed(1).padStart(6)} tok/s   (decode runs: ${r.decode.map((x) => x.toFixed(1)).join(', ')})`);
  }
} finally {
  await env.close();
}
