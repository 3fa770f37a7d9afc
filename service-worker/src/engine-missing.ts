/**
 * Stands in for the WASM engine glue when dist/engine/ holds no build: the host starts,
 * answers pings and status, and a model load fails with a clear message.
 */
import type { WasmEngine as Engine } from '../../sdk-ts/src/wasm-engine.js';

const missing = (): never => {
  throw new Error('engine: this bundle was built without the WASM engine (dist/engine/ was empty)');
};

export default async function init(): Promise<unknown> {
  return missing();
}
export function initSync(): unknown {
  return missing();
}
export function engineVersion(): string {
  return 'missing';
}
export function simd128(): boolean {
  return false;
}
export const WasmEngine = { load: (): Engine => missing() };
