// The engine modules' errors (an Error with a `code`) as typed SDK errors, and typed errors
// crossing the page ⇄ host protocol with their fields. The Rust side's lists are checked
// against WASM_ERROR_CODES by engine/wasm/src/error.rs's tests.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  EngineError, InvalidArgumentError, KwaaiNetError, ModelTooLargeError, NetworkError, P2pError, ProtocolError,
  QuotaExceededError, UnsupportedError, errorFields, errorFromWire,
} from '../src/errors.js';
import { hostMessage, parseHostMessage, wireErrorOf } from '../src/protocol.js';
import {
  WASM_ERROR_CODES, WASM_P2P_ERROR_CODES, describeWasmError, fromWasmError, fromWasmP2pError, wasmErrorCode,
  type WasmErrorCode,
} from '../src/wasm-errors.js';

const thrown = (code: string, message: string, extra: object = {}): Error =>
  Object.assign(new Error(message), { name: 'KwaaiNetEngineError', code, ...extra });

describe('engine module errors', () => {
  it('every code maps to its typed error', () => {
    const expected: Record<WasmErrorCode, new (...args: never[]) => KwaaiNetError> = {
      gguf: EngineError, model: EngineError, unsupported: UnsupportedError, tokenizer: EngineError, template: EngineError,
      'invalid-argument': InvalidArgumentError, 'context-full': InvalidArgumentError, generation: EngineError,
      webgpu: EngineError, backend: EngineError, memory: ModelTooLargeError, swarm: P2pError, internal: EngineError,
    };
    assert.deepEqual(Object.keys(expected).sort(), [...WASM_ERROR_CODES].sort());
    for (const code of WASM_ERROR_CODES) {
      const err = thrown(code, 'something went wrong');
      assert.equal(wasmErrorCode(err), code);
      const typed = fromWasmError(code, err, 'loading the model');
      assert.ok(typed instanceof expected[code], `${code} → ${typed.name}`);
      assert.equal(typed.cause, err);
      assert.match(typed.message, /something went wrong/);
    }
  });

  it('a context overflow keeps its numbers; a bad argument keeps the engine\'s message', () => {
    const full = fromWasmError('context-full', thrown('context-full', 'context full: 2049 positions needed, the context holds 2048', {
      needed: 2049, max: 2048,
    }), 'starting the generation');
    assert.ok(full instanceof InvalidArgumentError);
    assert.deepEqual(full.contextFull, { needed: 2049, max: 2048 });
    const bad = fromWasmError('invalid-argument', thrown('invalid-argument', 'request: unknown field `bogus`'), 'x');
    assert.ok(bad instanceof InvalidArgumentError);
    assert.equal(bad.message, 'request: unknown field `bogus`');
    assert.equal(bad.contextFull, null);
    // Messages and reasons show the code in front.
    assert.equal(describeWasmError(thrown('webgpu', 'device lost (destroyed)')), 'webgpu: device lost (destroyed)');
    assert.equal(fromWasmError('gguf', thrown('gguf', 'bad magic'), 'loading the model').message, 'loading the model: gguf: bad magic');
  });

  it('a value without a known code is not taken for one', () => {
    for (const v of [new Error('gguf: looks like one'), { code: 'nope' }, 'gguf', null, undefined, Object.assign(new Error('x'), { code: 7 })]) {
      assert.equal(wasmErrorCode(v), null);
    }
    assert.equal(describeWasmError(new Error('plain')), 'plain');
  });

  it('P2P codes map to P2pError reasons and InvalidArgumentError', () => {
    const p2p = (code: string): KwaaiNetError => fromWasmP2pError(Object.assign(new Error('m'), { code }));
    assert.ok(p2p('invalid-argument') instanceof InvalidArgumentError);
    for (const [code, reason] of [['unreachable', 'unreachable'], ['query', 'query'], ['record', 'record'], ['stopped', 'stopped'], ['internal', 'stopped']]) {
      const e = p2p(code as string);
      assert.ok(e instanceof P2pError && e.reason === reason, `${code} → ${e.name}`);
    }
    assert.equal(WASM_P2P_ERROR_CODES.length, 6);
    // A trap or a JS error in the glue: the module is unusable.
    const trap = fromWasmP2pError(new Error('unreachable executed'));
    assert.ok(trap instanceof P2pError && trap.reason === 'stopped');
  });
});

describe('typed errors over the protocol', () => {
  const roundTrip = (err: KwaaiNetError): KwaaiNetError => {
    const sent = hostMessage({ type: 'error', id: 'r1', error: wireErrorOf(err.code, err.message, errorFields(err)) });
    const got = parseHostMessage(JSON.parse(JSON.stringify(sent)));
    assert.equal(got.type, 'error');
    if (got.type !== 'error') throw new Error('unreachable');
    return errorFromWire(got.error.code, got.error.message, got.error.fields);
  };

  it('keep their fields', () => {
    const quota = roundTrip(new QuotaExceededError('storage cap', 'maxResources'));
    assert.ok(quota instanceof QuotaExceededError && quota.limit === 'maxResources');
    const net = roundTrip(new NetworkError('HTTP 404', 404));
    assert.ok(net instanceof NetworkError && net.status === 404);
    const p2p = roundTrip(new P2pError('no answer', 'timeout'));
    assert.ok(p2p instanceof P2pError && p2p.reason === 'timeout');
    const full = roundTrip(new InvalidArgumentError('too long', undefined, { contextFull: { needed: 600, max: 512 } }));
    assert.ok(full instanceof InvalidArgumentError);
    assert.deepEqual(full.contextFull, { needed: 600, max: 512 });
    const plain = roundTrip(new EngineError('boom'));
    assert.ok(plain instanceof EngineError && plain.message === 'boom');
    // No fields: none sent.
    assert.equal(wireErrorOf('engine', 'boom', errorFields(new EngineError('boom'))).fields, undefined);
  });

  it('refuses hostile fields', () => {
    const bad = [
      { limit: 'everything' }, { status: -1 }, { status: 1.5 }, { reason: 'because' }, { contextFull: { needed: 'a', max: 1 } },
      { contextFull: null }, 'fields',
    ];
    for (const fields of bad) {
      const m = { v: hostMessage({ type: 'started', id: 'x' }).v, type: 'error', id: 'r', error: { code: 'network', message: 'm', fields } };
      assert.throws(() => parseHostMessage(m), ProtocolError, JSON.stringify(fields));
    }
  });
});
