// Compiles sdk-ts/src and sdk-ts/test to JS (esbuild, one file per file: fast, no type
// check — `tsc --noEmit` does that) and runs the tests with node's built-in runner.
//   node sdk-ts/test/run.mjs [name-filter...]
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { readdirSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const sdk = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(sdk, '..');
const out = join(root, 'dist', 'ts-test');

const tsFiles = (dir) => readdirSync(dir, { withFileTypes: true, recursive: true })
  .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
  .map((e) => join(e.parentPath ?? e.path, e.name));

rmSync(out, { recursive: true, force: true });
await build({
  entryPoints: [...tsFiles(join(sdk, 'src')), ...tsFiles(join(sdk, 'test'))],
  outdir: out,
  outbase: sdk,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: 'inline',
  logLevel: 'warning',
});
// node --test needs "type": "module" to load .js files as ESM.
import { writeFileSync } from 'node:fs';
writeFileSync(join(out, 'package.json'), '{ "type": "module" }\n');

const filters = process.argv.slice(2);
const tests = tsFiles(join(sdk, 'test'))
  .filter((f) => f.endsWith('.test.ts'))
  .filter((f) => filters.length === 0 || filters.some((n) => f.includes(n)))
  .map((f) => join(out, relative(sdk, f)).replace(/\.ts$/, '.js'))
  .sort();
const r = spawnSync(process.execPath, ['--test', '--test-timeout=30000', ...tests], { stdio: 'inherit', cwd: root });
process.exit(r.status ?? 1);
