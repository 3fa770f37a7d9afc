/**
 * The engine modules' error codes, and their typed SDK errors. The Rust side throws
 * `Error`s with a `code` (engine/wasm/src/engine.rs `ErrorCode`, engine/wasm/src/p2p.rs
 * `P2pCode`); these lists mirror those enums, and a Rust test reads this file and fails when
 * they disagree. Each mapping below is one exhaustive `switch`: a code added on one side
 * and not handled here does not compile.
 */

import {
  EngineError, InvalidArgumentError, ModelTooLargeError, P2pError, UnsupportedError, type KwaaiNetError, type P2pFailure,
} from './errors.js';
import { isRecord } from './validate.js';

/** `engine::ErrorCode` (kebab-case). */
export const WASM_ERROR_CODES = [
  'gguf', 'model', 'unsupported', 'tokenizer', 'template', 'invalid-argument', 'context-full', 'generation', 'webgpu',
  'backend', 'memory', 'swarm', 'internal',
] as const;
export type WasmErrorCode = typeof WASM_ERROR_CODES[number];

/** `p2p::P2pCode` (kebab-case). */
export const WASM_P2P_ERROR_CODES = ['invalid-argument', 'unreachable', 'query', 'record', 'stopped', 'internal'] as const;
export type WasmP2pErrorCode = typeof WASM_P2P_ERROR_CODES[number];

function codeIn<T extends string>(err: unknown, codes: readonly T[]): T | null {
  const code = err instanceof Error || isRecord(err) ? (err as { code?: unknown }).code : undefined;
  return typeof code === 'string' && (codes as readonly string[]).includes(code) ? code as T : null;
}

/** The engine module's `code` of a thrown value; null for anything else (a trap, a JS error). */
export function wasmErrorCode(err: unknown): WasmErrorCode | null {
  return codeIn(err, WASM_ERROR_CODES);
}

/** A thrown value as text, with the engine's code in front where it has one
 *  ("webgpu: device lost (…)"): what reasons and messages show. */
export function describeWasmError(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const code = wasmErrorCode(err);
  return code === null ? message : `${code}: ${message}`;
}

/**
 * An engine module's error as the SDK's typed error; `during` says what the SDK was doing.
 * Callers deal with `webgpu` and `backend` first where a CPU fallback is possible.
 */
export function fromWasmError(code: WasmErrorCode, err: unknown, during: string): KwaaiNetError {
  const message = err instanceof Error ? err.message : String(err);
  const options = { cause: err };
  switch (code) {
    case 'invalid-argument':
      return new InvalidArgumentError(message, options);
    case 'context-full': {
      const e = err as { needed?: unknown; max?: unknown };
      const numbers = typeof e.needed === 'number' && typeof e.max === 'number' ? { needed: e.needed, max: e.max } : null;
      return new InvalidArgumentError(message, options, numbers === null ? undefined : { contextFull: numbers });
    }
    case 'unsupported':
      return new UnsupportedError(`${during}: ${message}`, options);
    case 'memory':
      return new ModelTooLargeError(`${during}: ${code}: ${message}`, options);
    case 'swarm':
      // The servers' fault, not the engine's: no server covers some blocks, or failover
      // gave up.
      return new P2pError(`${during}: ${message}`, 'unreachable', options);
    case 'gguf':
    case 'model':
    case 'tokenizer':
    case 'template':
    case 'generation':
    case 'webgpu':
    case 'backend':
    case 'internal':
      return new EngineError(`${during}: ${code}: ${message}`, options);
  }
}

/** The P2P module's errors as typed errors (a value without a code: `stopped`). */
export function fromWasmP2pError(err: unknown): KwaaiNetError {
  const message = err instanceof Error ? err.message : String(err);
  const options = { cause: err };
  const code = codeIn(err, WASM_P2P_ERROR_CODES) ?? 'stopped';
  const reason = (r: P2pFailure): P2pError => new P2pError(message, r, options);
  switch (code) {
    case 'invalid-argument': return new InvalidArgumentError(message, options);
    case 'unreachable': return reason('unreachable');
    case 'query': return reason('query');
    case 'record': return reason('record');
    case 'stopped': return reason('stopped');
    case 'internal': return reason('stopped');
  }
}
