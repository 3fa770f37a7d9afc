// Type test, run by the wasm-engine step after the build: the engine modules' own
// declarations (wasm-bindgen's kwaainet_wasm.d.ts, whose value types come from the Rust types
// through engine-types.ts) satisfy the contract the SDK's engine host codes against.
import type { WasmEngineModule, WasmEngine } from '../../../../sdk-ts/src/wasm-engine.js';
import type { WasmEngineInfo, WasmStepResult } from '../../../../sdk-ts/src/engine-types.js';

declare const cpu: typeof import('../../../../dist/engine/kwaainet_wasm.js');
declare const webgpu: typeof import('../../../../dist/engine-webgpu/kwaainet_wasm.js');

export const cpuModule: WasmEngineModule = cpu;
export const webgpuModule: WasmEngineModule = webgpu;

// The values are typed, not `any` (which the first test of Exactly refuses): what the module
// says it returns is the generated type.
type Exactly<A, B> = 0 extends 1 & A ? never : [A] extends [B] ? ([B] extends [A] ? true : never) : never;
type CpuEngine = ReturnType<typeof cpu.WasmEngine.load>;
export const info: Exactly<ReturnType<CpuEngine['info']>, WasmEngineInfo> = true;
export const step: Exactly<ReturnType<ReturnType<CpuEngine['start']>['step']>, WasmStepResult> = true;
export const engine: WasmEngine = {} as CpuEngine;
