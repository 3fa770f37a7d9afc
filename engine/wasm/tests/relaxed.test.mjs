// The CPU engine built with relaxed SIMD (RELAXED=1 OUT=dist/engine-relaxed
// scripts/build-wasm.sh) in headless Chromium, which has relaxed SIMD: it says which
// kernels run (fused relaxed_madd: the relaxed ones; else the simd128 ones) and gives
// llama.cpp's AVX2 greedy tokens for every reference case either way; the plain module says
// it has none. (Node 20 has relaxed SIMD only behind a flag, and its implementation
// computes wrong logits: the module is tested where it will run.)
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';

import { CHROMIUM } from '../../../demo-site/tests/browser.mjs';
import { enginePage, haveModel, root } from './chromium.mjs';

const relaxed = join(root, 'dist', 'engine-relaxed');
const plain = join(root, 'dist', 'engine');
const required = process.env.KWAAINET_REQUIRE_MODEL === '1' || process.env.CI === 'true';
const missing = [
  !existsSync(join(relaxed, 'kwaainet_wasm_bg.wasm')) && 'no dist/engine-relaxed (RELAXED=1 OUT=dist/engine-relaxed bash scripts/build-wasm.sh)',
  !existsSync(join(plain, 'kwaainet_wasm_bg.wasm')) && 'no dist/engine (bash scripts/build-wasm.sh)',
  !haveModel() && 'no model (KWAAINET_MODEL)',
  !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}`,
].filter(Boolean);
if (missing.length > 0 && required) throw new Error(missing.join('; '));
const skip = missing.length > 0 ? missing.join('; ') : false;

let env;
before(async () => {
  if (!skip) env = await enginePage([relaxed, plain]);
});
after(async () => env?.close());

test('the relaxed-SIMD engine gives llama.cpp\'s AVX2 tokens in Chromium, and says which kernels ran', { skip, timeout: 300_000 }, async () => {
  const r = await env.page.evaluate(() => {
    const out = {};
    for (const [name, m] of Object.entries(window.modules)) {
      const e = m.WasmEngine.load(window.modelBytes, 2048);
      const cases = window.reference.cases.map((c) => {
        const g = e.start({ tokens: c.prompt_ids, max_tokens: c.output_ids.length, temperature: 0 });
        const got = [];
        for (let i = 0; i < 1000; i++) {
          const s = g.step(16);
          got.push(...s.tokens);
          if (s.done) break;
        }
        g.free();
        return { name: c.name, got, want: c.output_ids, stopAtEos: c.stop_at_eos };
      });
      e.free();
      out[name] = { relaxed: m.relaxedSimd(), cases };
    }
    return out;
  });
  assert.equal(r['engine'].relaxed, 'off');
  assert.ok(['fused', 'unfused'].includes(r['engine-relaxed'].relaxed), r['engine-relaxed'].relaxed);
  // An x86-64 CPU with FMA (every one AVX2 runs on) fuses it: the relaxed kernels ran.
  if (process.arch === 'x64') assert.equal(r['engine-relaxed'].relaxed, 'fused');
  for (const name of ['engine', 'engine-relaxed']) {
    for (const c of r[name].cases) {
      // The engine stops at the end of the generation; llama.cpp's chat cases ran past it.
      const n = Math.min(c.got.length, c.want.length);
      assert.ok(n >= Math.min(8, c.want.length), `${name} ${c.name}: ${c.got.length} tokens`);
      assert.deepEqual(c.got.slice(0, n), c.want.slice(0, n), `${name} ${c.name}`);
    }
  }
});
