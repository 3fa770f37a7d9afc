import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

const root = process.cwd(); // run.mjs runs the tests from the repository root
const tmp = mkdtempSync(join(tmpdir(), 'kwaainet-sri-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const engineDir = join(tmp, 'engine');
mkdirSync(engineDir);
writeFileSync(join(engineDir, 'kwaainet_wasm.js'), [
  'export default async function init() {}',
  'export function initSync() {}',
  "export function engineVersion() { return 'fake-glue-marker'; }",
  'export function simd128() { return true; }',
  "export class WasmEngine { static load() { throw new Error('gguf: fake'); } }",
].join('\n'));
writeFileSync(join(engineDir, 'kwaainet_wasm_bg.wasm'), Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0]));
// The WebGPU build names its files like the CPU one (the CDN build renames them).
const webgpuDir = join(tmp, 'engine-webgpu');
mkdirSync(webgpuDir);
writeFileSync(join(webgpuDir, 'kwaainet_wasm.js'), [
  'export default async function init() {}',
  'export function initSync() {}',
  "export function engineVersion() { return 'fake-webgpu-marker'; }",
  'export function simd128() { return false; }',
  "export class WasmEngine { static async load() { throw new Error('webgpu: fake'); } }",
].join('\n'));
writeFileSync(join(webgpuDir, 'kwaainet_wasm_bg.wasm'), Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0]));

// The page-side P2P module (dist/p2p/), named alike too.
const p2pDir = join(tmp, 'p2p');
mkdirSync(p2pDir);
writeFileSync(join(p2pDir, 'kwaainet_wasm.js'), "export default async function init() {}\nexport function p2pVersion() { return 'fake-p2p-marker'; }\n");
writeFileSync(join(p2pDir, 'kwaainet_wasm_bg.wasm'), Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 0, 0]));

// The CPU engine built with relaxed SIMD: its glue must be the plain build's (it loads its
// .wasm); one whose glue differs is a stale build the CDN build refuses.
const relaxedDir = join(tmp, 'engine-relaxed');
mkdirSync(relaxedDir);
writeFileSync(join(relaxedDir, 'kwaainet_wasm.js'), readFileSync(join(engineDir, 'kwaainet_wasm.js')));
writeFileSync(join(relaxedDir, 'kwaainet_wasm_bg.wasm'), Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 1]));
const staleDir = join(tmp, 'engine-relaxed-stale');
mkdirSync(staleDir);
writeFileSync(join(staleDir, 'kwaainet_wasm.js'), 'export default async function init() {} // another build\n');
writeFileSync(join(staleDir, 'kwaainet_wasm_bg.wasm'), Uint8Array.from([0, 0x61, 0x73, 0x6d, 1, 0, 0, 0, 2]));

function run(out: string, withEngine: boolean, relaxed: string): ReturnType<typeof spawnSync> {
  const none = join(tmp, 'no-engine');
  const args = ['cdn/build.mjs', '--out', out, '--engine-dir', withEngine ? engineDir : none,
    '--webgpu-dir', withEngine ? webgpuDir : none, '--p2p-dir', withEngine ? p2pDir : none,
    '--relaxed-dir', withEngine ? relaxed : none, '--threads-relaxed-dir', none];
  return spawnSync(process.execPath, args, { cwd: root, encoding: 'utf8', timeout: 60_000 });
}

function buildTo(out: string, withEngine = true): void {
  const r = run(out, withEngine, relaxedDir);
  assert.equal(r.status, 0, String(r.stderr));
}

interface Manifest {
  version: string;
  path: string;
  engine: boolean;
  webgpu: boolean;
  p2p: boolean;
  files: Record<string, { integrity: string; size: number }>;
}

const sri = (bytes: Uint8Array): string => `sha384-${createHash('sha384').update(bytes).digest('base64')}`;

describe('cdn bundle and SRI manifest', () => {
  const a = join(tmp, 'a');
  buildTo(a);
  const manifest = JSON.parse(readFileSync(join(a, 'sri-manifest.json'), 'utf8')) as Manifest;

  it('lists every file with a correct sha384 hash and size', () => {
    const onDisk = readdirSync(a).filter((n) => n !== 'sri-manifest.json').sort();
    assert.deepEqual(Object.keys(manifest.files), onDisk);
    for (const name of ['distributed-ai.js', 'kwaainet.mjs', 'kwaainet-worker.js', 'kwaainet-sw.js', 'kwaainet_wasm.js', 'kwaainet_wasm_bg.wasm',
      'kwaainet_wasm_webgpu.js', 'kwaainet_wasm_webgpu_bg.wasm', 'kwaainet_p2p.js', 'kwaainet_p2p_bg.wasm']) {
      assert.ok(onDisk.includes(name), name);
    }
    for (const [name, f] of Object.entries(manifest.files)) {
      const bytes = readFileSync(join(a, name));
      assert.equal(f.integrity, sri(bytes), name);
      assert.equal(f.size, bytes.byteLength, name);
    }
    assert.equal(manifest.path, `v${manifest.version}/`);
    assert.equal(manifest.engine, true);
    assert.equal(manifest.webgpu, true);
    assert.equal(manifest.p2p, true);
    assert.ok(readFileSync(join(a, 'kwaainet_p2p.js'), 'utf8').includes('fake-p2p-marker'));
    assert.ok(readFileSync(join(a, 'kwaainet_wasm_webgpu.js'), 'utf8').includes('fake-webgpu-marker'));
  });

  it('bakes the worker and wasm hashes into the script-tag bundle, and inlines the glue in the hosts', () => {
    const tagJs = readFileSync(join(a, 'distributed-ai.js'), 'utf8');
    assert.ok(tagJs.includes(manifest.files['kwaainet-worker.js']?.integrity ?? 'missing'));
    assert.ok(tagJs.includes(manifest.files['kwaainet_wasm_bg.wasm']?.integrity ?? 'missing'));
    assert.ok(readFileSync(join(a, 'kwaainet-worker.js'), 'utf8').includes('fake-glue-marker'));
    assert.ok(readFileSync(join(a, 'kwaainet-sw.js'), 'utf8').includes('fake-glue-marker'));
    // The WebGPU engine: its hash baked in, its glue in the service worker only.
    assert.ok(tagJs.includes(manifest.files['kwaainet_wasm_webgpu_bg.wasm']?.integrity ?? 'missing'));
    assert.ok(readFileSync(join(a, 'kwaainet-sw.js'), 'utf8').includes('fake-webgpu-marker'));
    assert.ok(!readFileSync(join(a, 'kwaainet-worker.js'), 'utf8').includes('fake-webgpu-marker'));
    // The P2P module's wasm hash too (KwaaiNetwork.fromCdn checks it).
    assert.ok(tagJs.includes(manifest.files['kwaainet_p2p_bg.wasm']?.integrity ?? 'missing'));
    assert.ok(!/\beval\(|new Function\(/.test(tagJs), 'no eval');
    // The relaxed-SIMD engine: its .wasm only (the plain glue loads it), its hash baked in.
    assert.ok(tagJs.includes(manifest.files['kwaainet_wasm_relaxed_bg.wasm']?.integrity ?? 'missing'));
    assert.equal(manifest.files['kwaainet_wasm_relaxed.js'], undefined);
  });

  it('refuses a relaxed-SIMD build whose glue is not the plain build\'s', () => {
    const r = run(join(tmp, 'stale'), true, staleDir);
    assert.notEqual(r.status, 0);
    assert.match(String(r.stderr), /differs from .*rebuild both from one checkout/);
  });

  it('rebuilds byte for byte, wherever it is built', () => {
    const b = join(tmp, 'b', 'deeper');
    buildTo(b);
    for (const name of readdirSync(a)) assert.ok(readFileSync(join(a, name)).equals(readFileSync(join(b, name))), name);
  });

  it('builds without an engine, leaving the wasm out', () => {
    const c = join(tmp, 'c');
    buildTo(c, false);
    const m = JSON.parse(readFileSync(join(c, 'sri-manifest.json'), 'utf8')) as Manifest;
    assert.equal(m.engine, false);
    assert.equal(m.files['kwaainet_wasm_bg.wasm'], undefined);
    assert.equal(m.webgpu, false);
    assert.equal(m.files['kwaainet_wasm_webgpu_bg.wasm'], undefined);
    assert.equal(m.p2p, false);
    assert.equal(m.files['kwaainet_p2p_bg.wasm'], undefined);
    assert.equal(m.files['kwaainet_wasm_relaxed_bg.wasm'], undefined);
    assert.ok(!readFileSync(join(c, 'kwaainet-sw.js'), 'utf8').includes('fake-webgpu-marker'));
    assert.ok(readFileSync(join(c, 'kwaainet-worker.js'), 'utf8').includes('built without the WASM engine'));
  });
});
