import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ProtocolError } from '../src/errors.js';
import { LIMITS, PROTOCOL_VERSION, parseHostMessage, parsePageMessage } from '../src/protocol.js';

const v = PROTOCOL_VERSION;
const chat = (request: unknown): unknown => ({ v, type: 'chat', id: 'r1', request });
const rejects = (data: unknown, pattern?: RegExp): void => {
  assert.throws(() => parsePageMessage(data), (e: unknown) => e instanceof ProtocolError && (!pattern || pattern.test(e.message)));
};

describe('protocol: page → host validation', () => {
  it('accepts every well-formed message and rebuilds it without extra fields', () => {
    const load = parsePageMessage({
      v, type: 'load', id: 'a', extra: 'dropped',
      model: { url: 'https://x/m.gguf', sha256: 'a'.repeat(64), maxCtx: 2048, memoryLimitBytes: 10, evil: 1 },
      engine: { wasmUrl: 'https://x/e.wasm', wasmIntegrity: 'sha384-abc+/=' },
    });
    assert.deepEqual(load, {
      v, type: 'load', id: 'a',
      model: { url: 'https://x/m.gguf', sha256: 'a'.repeat(64), maxCtx: 2048, memoryLimitBytes: 10 },
      engine: { wasmUrl: 'https://x/e.wasm', wasmIntegrity: 'sha384-abc+/=' },
    });
    const c = parsePageMessage(chat({ messages: [{ role: 'user', content: 'hi', name: 'x' }], temperature: 0.5, stop: ['\n'], seed: 3 }));
    assert.deepEqual(c, { v, type: 'chat', id: 'r1', request: { messages: [{ role: 'user', content: 'hi' }], temperature: 0.5, stop: ['\n'], seed: 3 } });
    for (const type of ['ping', 'status', 'abort', 'info'] as const) assert.deepEqual(parsePageMessage({ v, type, id: 'x' }), { v, type, id: 'x' });
    assert.deepEqual(parsePageMessage({ v, type: 'has-model', id: 'x', url: 'u' }), { v, type: 'has-model', id: 'x', url: 'u' });
  });

  it('rejects garbage, wrong versions and unknown types', () => {
    for (const data of [null, undefined, 0, 'ping', [], [v, 'ping'], new Uint8Array(4), () => 1]) rejects(data);
    rejects({ type: 'ping', id: 'x' }, /version/);
    rejects({ v: v + 1, type: 'ping', id: 'x' }, /version/);
    rejects({ v: v - 1, type: 'ping', id: 'x' }, /version/);
    rejects({ v: String(v), type: 'ping', id: 'x' }, /version/);
    rejects({ v, type: 'eval', id: 'x' }, /type/);
    rejects({ v, type: 'ping' }, /id/);
    rejects({ v, type: 'ping', id: '' }, /id/);
    rejects({ v, type: 'ping', id: 'x'.repeat(LIMITS.id + 1) }, /id/);
    rejects({ v, type: 'ping', id: 7 }, /id/);
  });

  it('rejects hostile chat requests', () => {
    rejects(chat(undefined));
    rejects(chat({ messages: 'hi' }));
    rejects(chat({ messages: [] }), /empty/);
    rejects(chat({ messages: [{ role: 'root', content: 'x' }] }), /role/);
    rejects(chat({ messages: [{ role: 'user', content: { toString: 'x' } }] }), /content/);
    rejects(chat({ messages: [{ role: 'user', content: 'x'.repeat(LIMITS.content + 1) }] }), /longer/);
    rejects(chat({ messages: new Array(LIMITS.messages + 1).fill({ role: 'user', content: 'x' }) }), /entries/);
    const ok = { messages: [{ role: 'user', content: 'x' }] };
    rejects(chat({ ...ok, temperature: Number.NaN }), /finite/);
    rejects(chat({ ...ok, temperature: -1 }), /outside/);
    rejects(chat({ ...ok, top_p: 0 }), /outside/);
    rejects(chat({ ...ok, max_tokens: 1.5 }), /integer/);
    rejects(chat({ ...ok, max_tokens: '10' }), /number/);
    rejects(chat({ ...ok, seed: -1 }), /outside/);
    rejects(chat({ ...ok, stop: new Array(LIMITS.stop + 1).fill('a') }), /entries/);
    rejects(chat({ ...ok, stop: [''] }), /empty/);
    rejects(chat({ ...ok, stop: 'x' }), /array/);
    // A raw prompt instead of messages: exactly one of the two.
    assert.deepEqual(parsePageMessage(chat({ prompt: '<|im_start|>x', max_tokens: 2 })),
      { v, type: 'chat', id: 'r1', request: { prompt: '<|im_start|>x', max_tokens: 2 } });
    rejects(chat({ ...ok, prompt: 'x' }), /exactly one/);
    rejects(chat({ prompt: '' }), /empty/);
    rejects(chat({ prompt: 5 }), /prompt/);
  });

  it('ignores prototype tricks', () => {
    const data: unknown = JSON.parse(`{"v":${v},"type":"chat","id":"p","__proto__":{"polluted":1},"request":{"messages":[{"role":"user","content":"x","__proto__":{"role":"system"}}]}}`);
    const m = parsePageMessage(data);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.ok(m.type === 'chat' && m.request.messages?.[0]?.role === 'user');
  });

  it('rejects bad model specs', () => {
    const load = (model: unknown, engine: unknown = { wasmUrl: 'w' }): unknown => ({ v, type: 'load', id: 'l', model, engine });
    rejects(load({ url: 'u', maxCtx: 0 }), /maxCtx/);
    rejects(load({ url: '', maxCtx: 8 }), /empty/);
    rejects(load({ url: 'u', maxCtx: 8, sha256: 'XYZ' }), /sha256/);
    rejects(load({ url: 'u', maxCtx: 8, memoryLimitBytes: -1 }), /outside/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', wasmIntegrity: 'md5-x' }), /SRI/);
    rejects(load({ url: 'u', maxCtx: 8 }, null), /engine/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', backend: 'gpu' }), /engine\.backend/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', webgpuWasmUrl: '' }), /engine\.webgpuWasmUrl: empty/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', webgpuWasmIntegrity: 'md5-x' }), /engine\.webgpuWasmIntegrity: not an SRI/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', threadsGlueUrl: '' }), /engine\.threadsGlueUrl: empty/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', threadsWasmIntegrity: 'md5-x' }), /engine\.threadsWasmIntegrity: not an SRI/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', threads: 0 }), /engine\.threads/);
    rejects(load({ url: 'u', maxCtx: 8 }, { wasmUrl: 'w', threads: 64 }), /engine\.threads/);
    const both = { wasmUrl: 'w', webgpuWasmUrl: 'g', webgpuWasmIntegrity: 'sha384-g', backend: 'webgpu' };
    assert.deepEqual(parsePageMessage(load({ url: 'u', maxCtx: 8 }, { ...both, x: 1 })),
      { v, type: 'load', id: 'l', model: { url: 'u', maxCtx: 8 }, engine: both });
    const threaded = { wasmUrl: 'w', threadsGlueUrl: 'mt.js', threadsWasmUrl: 'mt.wasm', threadsWasmIntegrity: 'sha384-t', threads: 4 };
    assert.deepEqual(parsePageMessage(load({ url: 'u', maxCtx: 8 }, threaded)),
      { v, type: 'load', id: 'l', model: { url: 'u', maxCtx: 8 }, engine: threaded });
  });
});

describe('protocol: host → page validation', () => {
  it('accepts replies and rejects malformed ones', () => {
    const info = {
      host: 'service-worker', backend: 'webgpu', backendReason: 'WebGPU adapter in the service-worker', threads: 1,
      threadsReason: 'the WebGPU engine runs on the GPU', gpuAvailable: true, adapter: 'google swiftshader', simd128: false, relaxedSimd: false, engineVersion: '0.1.0', hostInstanceId: 'h', model: null,
      limits: null, gpu: null,
    };
    assert.deepEqual(parseHostMessage({ v, type: 'info', id: 'i', info: { ...info, extra: 1 } }), { v, type: 'info', id: 'i', info });
    const limits = {
      maxCtxTokens: 2048, ctxLimitTokens: 8192, kvCacheBytes: 1 << 20, modelBytes: 100e6, weightBytes: 99e6,
      wasmMemoryBytes: 128 << 20, wasmMemoryMaxBytes: 2 ** 32, simd128: true,
    };
    const gpu = {
      adapter: 'SwiftShader', fallbackAdapter: true, backend: 'BrowserWebGpu',
      limits: {
        maxBufferSize: 2 ** 28, maxStorageBufferBindingSize: 2 ** 27, maxUniformBufferBindingSize: 65536,
        maxStorageBuffersPerShaderStage: 8, maxComputeWorkgroupStorageSize: 16384, maxComputeInvocationsPerWorkgroup: 256,
        maxComputeWorkgroupSizeX: 256, maxComputeWorkgroupSizeY: 256, maxComputeWorkgroupSizeZ: 64,
        maxComputeWorkgroupsPerDimension: 65535,
      },
    };
    const full = { ...info, limits, gpu };
    assert.deepEqual(parseHostMessage({ v, type: 'info', id: 'i', info: { ...full, gpu: { ...gpu, extra: 1 } } }),
      { v, type: 'info', id: 'i', info: full });
    assert.deepEqual(parseHostMessage({ v, type: 'error', id: 'e', error: { code: 'backend-lost', message: 'm' } }),
      { v, type: 'error', id: 'e', error: { code: 'backend-lost', message: 'm' } });
    assert.deepEqual(parseHostMessage({ v, type: 'info', id: 'i', info: { ...info, backend: 'cpu-wasm', adapter: null } }),
      { v, type: 'info', id: 'i', info: { ...info, backend: 'cpu-wasm', adapter: null } });
    assert.deepEqual(parseHostMessage({ v, type: 'chunk', id: 'c', text: 'hé', tokens: [7, 8], completionTokens: 2 }),
      { v, type: 'chunk', id: 'c', text: 'hé', tokens: [7, 8], completionTokens: 2 });
    assert.deepEqual(parseHostMessage({ v, type: 'error', id: 'e', error: { code: 'aborted', message: 'm' } }),
      { v, type: 'error', id: 'e', error: { code: 'aborted', message: 'm' } });
    const bad = [
      { v, type: 'error', id: 'e', error: { code: 'rm -rf', message: 'm' } },
      { v, type: 'progress', id: 'p', progress: { phase: 'download', loaded: 1, total: 2, fraction: 1.5 } },
      { v, type: 'progress', id: 'p', progress: { phase: 'upload', loaded: 1, total: 2, fraction: 0.5 } },
      { v, type: 'chunk', id: 'c', text: 5, tokens: [], completionTokens: 1 },
      { v, type: 'chunk', id: 'c', text: 'x', completionTokens: 1 },
      { v, type: 'chunk', id: 'c', text: 'x', tokens: [-1], completionTokens: 1 },
      { v, type: 'chunk', id: 'c', text: 'x', tokens: [1.5], completionTokens: 1 },
      { v, type: 'done', id: 'd', finishReason: 'abort', usage: {} },
      { v, type: 'pong', id: 'p' },
      { v, type: 'ping', id: 'p' },
      { v: 0, type: 'pong', id: 'p', instanceId: 'i' },
      { v, type: 'info', id: 'i', info: { ...info, backend: 'cuda' } },
      { v, type: 'info', id: 'i', info: { ...info, backendReason: undefined } },
      { v, type: 'info', id: 'i', info: { ...info, threads: 0 } },
      { v, type: 'info', id: 'i', info: { ...info, threads: 17 } },
      { v, type: 'info', id: 'i', info: { ...info, threads: 1.5 } },
      { v, type: 'info', id: 'i', info: { ...info, threadsReason: undefined } },
      { v, type: 'info', id: 'i', info: { ...info, adapter: 7 } },
      { v, type: 'info', id: 'i', info: { ...info, adapter: 'x'.repeat(LIMITS.text + 1) } },
      { v, type: 'info', id: 'i', info: { ...info, limits: undefined } },
      { v, type: 'info', id: 'i', info: { ...full, limits: { ...limits, wasmMemoryBytes: -1 } } },
      { v, type: 'info', id: 'i', info: { ...full, limits: { ...limits, simd128: 'yes' } } },
      { v, type: 'info', id: 'i', info: { ...full, gpu: { ...gpu, limits: { ...gpu.limits, maxBufferSize: '1' } } } },
      { v, type: 'info', id: 'i', info: { ...full, gpu: { ...gpu, limits: undefined } } },
      { v, type: 'info', id: 'i', info: { ...full, gpu: { ...gpu, adapter: 'x'.repeat(LIMITS.text + 1) } } },
    ];
    for (const m of bad) assert.throws(() => parseHostMessage(m), ProtocolError, JSON.stringify(m));
  });
});
