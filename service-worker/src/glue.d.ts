/**
 * `kwaainet-wasm-glue` is resolved by cdn/build.mjs: to dist/engine/kwaainet_wasm.js (the
 * wasm-bindgen glue) when the engine was built, else to engine-missing.ts (which reports
 * that the engine is absent when a model is loaded). Its shape is the engine contract.
 */
declare module 'kwaainet-wasm-glue' {
  import type { InitInput, SyncInitInput, WasmEngineStatic } from '../../sdk-ts/src/wasm-engine.js';
  export default function init(init?: { module_or_path: InitInput | Promise<InitInput> }): Promise<unknown>;
  export function initSync(init: { module: SyncInitInput }): unknown;
  export function engineVersion(): string;
  export function simd128(): boolean;
  export const WasmEngine: WasmEngineStatic;
}
