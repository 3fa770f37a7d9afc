// The WebGPU engine in the service worker, end to end in headless Chromium with an adapter
// (SwiftShader: --enable-unsafe-webgpu): llama.cpp's tokens, the limits the engine got,
// and a device lost mid-generation. Its own file: on SwiftShader it takes minutes, and
// `node --test --test-timeout` bounds each file.
//
//   node --test demo-site/tests/          (after the WebGPU module, scripts/build-wasm.sh and cdn/build.mjs)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { generate, openDemo } from './browser.mjs';
import { capitalRaw, events, setup, shared, skipWebgpu } from './common.mjs';

test('the WebGPU engine in the service worker (SwiftShader): "auto" runs it, capital-raw\'s greedy tokens equal llama.cpp\'s, its limits; a lost device moves it to the CPU engine', { skip: skipWebgpu, timeout: 480_000 }, async (t) => {
  const { server, browser, page } = await setup(t, {}, { webgpu: true });
  const t0 = performance.now();
  // SwiftShader runs WebGPU on the CPU: uploading the weights and compiling the shaders
  // take tens of seconds.
  await openDemo(page, server.url, { timeoutMs: 150_000 });
  const loadS = (performance.now() - t0) / 1000;
  assert.ok(server.stats.requests.some((p) => p.endsWith('/kwaainet_wasm_webgpu_bg.wasm')), 'the WebGPU .wasm was fetched');
  const info = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([info.host, info.backend, info.gpuAvailable, info.simd128], ['service-worker', 'webgpu', true, false]);
  assert.match(info.reason, /WebGPU is available in the service worker/);
  assert.match(info.backendReason, /WebGPU adapter in the service-worker/);
  assert.equal(typeof info.adapter, 'string');
  assert.equal(info.model.sha256, server.model.sha256);
  const ready = (await events(page)).status.at(-1);
  assert.deepEqual([ready.state, ready.backend, ready.adapter], ['ready', 'webgpu', info.adapter]);
  // The engine panel says so.
  await page.waitForFunction(() => document.getElementById('engine').textContent.includes('webgpu'), null, { timeout: 10_000 });
  assert.match(await page.textContent('#engine'), /Backendwebgpu/);

  // Only what the case needs: its 8 tokens (the last is the end of turn).
  const t1 = performance.now();
  const r = await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.output_ids.length }, 180_000);
  const genS = (performance.now() - t1) / 1000;
  console.log(`webgpu (${info.adapter || 'adapter without a description'}): load ${loadS.toFixed(1)} s; ` +
    `capital-raw ${r.ids.length} tokens in ${genS.toFixed(1)} s (first token ${(r.usage.extra.time_to_first_token_ms / 1000).toFixed(1)} s, ` +
    `decode ${r.usage.extra.decode_tokens_per_s.toFixed(2)} tok/s)`);
  assert.deepEqual(r.ids, capitalRaw.output_ids, 'greedy tokens on WebGPU differ from llama.cpp\'s');
  assert.deepEqual(r.ids, shared.cases.find((c) => c.name === 'capital-raw').output_ids);
  assert.equal(r.text, capitalRaw.output_text);
  assert.equal(r.finish, 'stop');
  assert.equal(r.usage.prompt_tokens, capitalRaw.prompt_ids.length);

  // The limits the engine got: its own, and the WebGPU device's (what SwiftShader grants).
  const { limits, gpu } = await page.evaluate(() => window.kwaainet.engineInfo());
  console.log(`webgpu limits: ${JSON.stringify({ limits, gpu })}`);
  assert.deepEqual([limits.maxCtxTokens, limits.modelBytes, limits.simd128], [info.model.maxCtx, server.model.size, false]);
  assert.equal(limits.ctxLimitTokens, info.model.nCtxTrain);
  assert.ok(limits.kvCacheBytes > 0 && limits.weightBytes > 0);
  assert.ok(limits.wasmMemoryBytes > 0 && limits.wasmMemoryBytes <= limits.wasmMemoryMaxBytes);
  assert.equal(typeof gpu.adapter, 'string');
  assert.equal(gpu.backend, 'BrowserWebGpu');
  // WebGPU's guaranteed minimums (the spec's default limits) at least, and sane maxima.
  const atLeast = {
    maxBufferSize: 2 ** 28, maxStorageBufferBindingSize: 2 ** 27, maxUniformBufferBindingSize: 2 ** 16,
    maxStorageBuffersPerShaderStage: 8, maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256,
    maxComputeWorkgroupSizeX: 256, maxComputeWorkgroupSizeY: 256, maxComputeWorkgroupSizeZ: 64,
    maxComputeWorkgroupsPerDimension: 65535,
  };
  for (const [k, min] of Object.entries(atLeast)) {
    assert.ok(Number.isInteger(gpu.limits[k]) && gpu.limits[k] >= min && gpu.limits[k] <= 2 ** 53, `${k} = ${gpu.limits[k]}`);
  }
  await page.waitForFunction(() => document.getElementById('engine').textContent.includes('Max storage binding'), null, { timeout: 10_000 });

  // The WebGPU device lost mid-generation (destroyed through the service worker's debug
  // hook after the first chunk): the request fails with the typed, retriable error, the
  // host moves the model to the CPU engine, the SDK reports the new backend, and the retry
  // answers with llama.cpp's tokens.
  await page.evaluate(() => {
    window.__lost = { chunks: 0, error: null, code: null, retriable: null };
    (async () => {
      const stream = await window.kwaainet.completions.create({ prompt: 'The history of France', max_tokens: 6, stream: true });
      for await (const _c of stream) window.__lost.chunks++;
    })().catch((e) => Object.assign(window.__lost, { error: e.message, code: e.code, retriable: e.retriable === true }));
  });
  await page.waitForFunction(() => window.__lost.chunks >= 1 || window.__lost.error !== null, null, { timeout: 180_000 });
  const [sw] = browser.context.serviceWorkers();
  assert.ok(sw, 'the service worker host');
  assert.equal(await sw.evaluate(() => self.kwaainetDebug.loseDevice()), true, 'a WebGPU engine was loaded');
  await page.waitForFunction(() => window.__lost.error !== null, null, { timeout: 120_000 });
  const lost = await page.evaluate(() => window.__lost);
  assert.deepEqual([lost.code, lost.retriable], ['backend-lost', true], JSON.stringify(lost));
  assert.match(lost.error, /WebGPU device was lost/);
  const after = await page.evaluate(() => window.kwaainet.engineInfo());
  assert.deepEqual([after.backend, after.gpu, after.simd128, after.model?.sha256], ['cpu-wasm', null, true, server.model.sha256]);
  assert.match(after.backendReason, /WebGPU device was lost/);
  const readyAfter = (await events(page)).status.at(-1);
  assert.deepEqual([readyAfter.state, readyAfter.backend], ['ready', 'cpu-wasm']);
  await page.waitForFunction(() => /Backendcpu-wasm/.test(document.getElementById('engine').textContent), null, { timeout: 10_000 });
  const retry = await generate(page, { prompt: capitalRaw.prompt, maxTokens: capitalRaw.output_ids.length }, 60_000);
  assert.deepEqual(retry.ids, capitalRaw.output_ids, 'the CPU engine after the switch');
  console.log(`device lost after ${lost.chunks} chunk(s): ${lost.error}`);
});
