// What the browser test files share: the reference outputs, the conditions they run under
// (Chromium, the model, the CDN bundle, the WebGPU engine), and one server + one fresh
// browser per test.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cdnDir, findModel, startDemoServer } from '../server.mjs';
import { CHROMIUM, launch, recordEvents } from './browser.mjs';

const here = dirname(fileURLToPath(import.meta.url));
export const root = join(here, '..', '..');
const data = join(root, 'engine', 'core', 'tests', 'data');
export const shared = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp.json'), 'utf8'));
export const avx2 = JSON.parse(readFileSync(join(data, 'smollm2-135m-q4_1.llamacpp-avx2.json'), 'utf8'));
export const capitalRaw = avx2.cases.find((c) => c.name === 'capital-raw');

const required = process.env.KWAAINET_REQUIRE_MODEL === '1' || process.env.CI === 'true';
const missing = [
  !existsSync(CHROMIUM) && `no Chromium at ${CHROMIUM}`,
  !findModel() && 'no model (set KWAAINET_MODEL)',
  !existsSync(join(cdnDir, 'kwaainet_wasm_bg.wasm')) && 'no CDN bundle with the engine (scripts/build-wasm.sh, node cdn/build.mjs)',
].filter(Boolean);
if (missing.length > 0 && required) throw new Error(`browser tests cannot run: ${missing.join('; ')}`);
export const skip = missing.length > 0 ? missing.join('; ') : false;

// The WebGPU engine (dist/engine-webgpu/, in the bundle as kwaainet_wasm_webgpu_bg.wasm):
// required once engine/wasm has the `webgpu` feature.
const webgpuCrate = /^webgpu\b/m.test(readFileSync(join(root, 'engine', 'wasm', 'Cargo.toml'), 'utf8'));
export const webgpuBuilt = existsSync(join(cdnDir, 'kwaainet_wasm_webgpu_bg.wasm'));
if (!skip && required && webgpuCrate && !webgpuBuilt) {
  throw new Error('browser tests cannot run: no WebGPU engine in the CDN bundle (FEATURES=webgpu OUT=dist/engine-webgpu bash scripts/build-wasm.sh, node cdn/build.mjs)');
}
export const skipWebgpu = skip || (webgpuBuilt ? false : 'no WebGPU engine in the CDN bundle (engine/wasm has no webgpu feature yet)');

/** One server + one fresh browser per test, always closed. */
export async function setup(t, serverOptions = {}, launchOptions = {}) {
  const server = await startDemoServer({ port: 0, ...serverOptions });
  t.after(() => server.close());
  const browser = await launch(launchOptions);
  t.after(() => browser.close());
  await recordEvents(browser.context);
  return { server, browser, page: browser.page };
}

export const events = (page) => page.evaluate(() => ({ progress: window.__kw.progress, status: window.__kw.status }));
