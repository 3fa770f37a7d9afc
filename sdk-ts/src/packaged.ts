/**
 * The engine files as the npm package ships them: next to this module, under the names the
 * CDN folder uses (sdk-ts/scripts/pack-assets.mjs copies them in at `npm pack` time).
 *
 * Each URL is written out as a `new URL` of a literal relative path and `import.meta.url`,
 * the form bundlers recognise (Vite, webpack 5, Parcel, Rollup with its URL plugin): an app
 * that imports the SDK gets these files copied into its build and the URLs rewritten to the
 * copies, with no configuration and no `baseUrl`. The paths must stay literals for that.
 *
 * In the CDN's ES module (kwaainet.mjs) the same URLs point into the CDN folder, which
 * holds the same files. In the script tag's IIFE `import.meta` is empty: the constructor
 * throws, and the tag passes `baseUrl` instead.
 */

import { ASSETS, type AssetName } from './assets.js';
import packagedIntegrity from './packaged-integrity.js';

/** The file URLs, or null where this module has no URL of its own (the IIFE bundle). */
export function packagedAssets(): Record<AssetName, string> | null {
  try {
    return {
      worker: new URL('./kwaainet-worker.js', import.meta.url).href,
      serviceWorker: new URL('./kwaainet-sw.js', import.meta.url).href,
      wasm: new URL('./kwaainet_wasm_bg.wasm', import.meta.url).href,
      glue: new URL('./kwaainet_wasm.js', import.meta.url).href,
      webgpuWasm: new URL('./kwaainet_wasm_webgpu_bg.wasm', import.meta.url).href,
      webgpuGlue: new URL('./kwaainet_wasm_webgpu.js', import.meta.url).href,
      p2pWasm: new URL('./kwaainet_p2p_bg.wasm', import.meta.url).href,
      p2pGlue: new URL('./kwaainet_p2p.js', import.meta.url).href,
      spanWorker: new URL('./kwaainet-span-worker.js', import.meta.url).href,
      serveWasm: new URL('./kwaainet_wasm_serve_bg.wasm', import.meta.url).href,
      serveGlue: new URL('./kwaainet_wasm_serve.js', import.meta.url).href,
      // Not literals on purpose: bundlers leave these alone. Only the CDN folder has the
      // multi-threaded engine (its glue imports a helper by a relative name, which an app's
      // bundler would rename), so only kwaainet.mjs there uses these URLs.
      threadsWasm: new URL(ASSETS.threadsWasm, import.meta.url).href,
      threadsGlue: new URL(ASSETS.threadsGlue, import.meta.url).href,
      // Likewise: the CDN folder ships the relaxed-SIMD engines, the npm package not yet.
      relaxedWasm: new URL(ASSETS.relaxedWasm, import.meta.url).href,
      threadsRelaxedWasm: new URL(ASSETS.threadsRelaxedWasm, import.meta.url).href,
    };
  } catch {
    return null;
  }
}

/**
 * SRI hashes of the packaged .wasm files, by file name: empty in the source and in a
 * workspace build; `npm pack` writes the real ones (pack-assets.mjs). A packed build with a
 * hash for the CPU engine lists every engine it ships, so a missing one is known absent.
 */
export function packagedWasmIntegrity(): Readonly<Record<string, string>> {
  return packagedIntegrity;
}
