#!/usr/bin/env node
// npx kwaainet-sw [folder]: copies the SDK's service-worker host (kwaainet-sw.js) into an
// app's static folder (default `public`, which Vite, Next.js and Create React App serve at
// the site's root), for sites that want it at a fixed URL of their own: one served from a
// CDN origin cannot register, and a fixed URL keeps the loaded model across deploys.
// Then: new KwaaiNet({ serviceWorkerUrl: '/kwaainet-sw.js', … }). Run it again after each
// upgrade of @kwaainet/sdk (a `predev`/`prebuild` script does that).
import { copyFileSync, existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const args = process.argv.slice(2);
if (args.includes('-h') || args.includes('--help') || args.length > 1) {
  console.log('usage: kwaainet-sw [folder]   copy kwaainet-sw.js into folder (default: public)');
  process.exit(args.length > 1 ? 2 : 0);
}
const source = join(dirname(fileURLToPath(import.meta.url)), '..', 'dist', 'kwaainet-sw.js');
if (!existsSync(source)) {
  console.error(`kwaainet-sw: ${source} is missing (a workspace build without \`npm pack\`?)`);
  process.exit(1);
}
const folder = resolve(args[0] ?? 'public');
mkdirSync(folder, { recursive: true });
const target = join(folder, 'kwaainet-sw.js');
copyFileSync(source, target);
console.log(`kwaainet-sw: wrote ${target} (${statSync(target).size} bytes)`);
console.log("  then: new KwaaiNet({ serviceWorkerUrl: '/kwaainet-sw.js', ... })  (the path where that folder is served)");
