import { pageFootprint } from '../src/footprint.js';
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import { InvalidArgumentError } from '../src/errors.js';
import { assembleChunks, toGenerateRequest } from '../src/openai/chat.js';
import type { ChatCompletionChunk } from '../src/openai/types.js';
import type { EnvironmentalImpactEvent } from '../src/kwaainet.js';
import { kwaaiWithHosts } from './harness.js';

const cleanup: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()?.();
});
function setup(...args: Parameters<typeof kwaaiWithHosts>): ReturnType<typeof kwaaiWithHosts> {
  const k = kwaaiWithHosts(...args);
  cleanup.push(k.closeAll, () => k.ai.dispose());
  return k;
}

describe('OpenAI request conversion', () => {
  it('maps params to the engine request', () => {
    assert.deepEqual(toGenerateRequest({
      model: 'x',
      messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }] }],
      max_tokens: 5, temperature: 0.7, top_p: 0.9, seed: 1, stop: 'END',
    }), {
      messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'ab' }],
      max_tokens: 5, temperature: 0.7, top_p: 0.9, seed: 1, stop: ['END'],
    });
    assert.deepEqual(toGenerateRequest({ messages: [{ role: 'user', content: 'x' }], temperature: null, stop: null }),
      { messages: [{ role: 'user', content: 'x' }] });
  });

  it('rejects what the engine cannot do', () => {
    const m = [{ role: 'user' as const, content: 'x' }];
    assert.throws(() => toGenerateRequest({ messages: m, n: 2 }), InvalidArgumentError);
    assert.throws(() => toGenerateRequest({ messages: [] }), InvalidArgumentError);
    assert.throws(() => toGenerateRequest({ messages: m, temperature: -1 }), InvalidArgumentError);
    assert.throws(() => toGenerateRequest({ messages: [{ role: 'tool', content: 'x' }] } as never), InvalidArgumentError);
    assert.throws(() => toGenerateRequest({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: 'x' }] }] } as never), InvalidArgumentError);
  });
});

describe('chat.completions.create', () => {
  it('returns the same completion streamed or not; usage rides on the last chunk', async () => {
    const { ai } = setup();
    const params = { model: 'smol', messages: [{ role: 'user' as const, content: 'stream me' }] };
    const whole = await ai.chat.completions.create(params);
    assert.equal(whole.object, 'chat.completion');
    assert.equal(whole.model, 'smol');
    assert.equal(whole.choices[0]?.message.content, 'Echo: stream me');
    assert.equal(whole.choices[0]?.finish_reason, 'stop');
    assert.deepEqual({ ...whole.usage, extra: undefined }, { prompt_tokens: 9, completion_tokens: 15, total_tokens: 24, extra: undefined });

    const chunks: ChatCompletionChunk[] = [];
    for await (const c of await ai.chat.completions.create({ ...params, stream: true })) chunks.push(c);
    assert.equal(chunks[0]?.choices[0]?.delta.role, 'assistant');
    assert.ok(chunks.length > 3);
    assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0]?.id));
    assert.ok(chunks.slice(0, -1).every((c) => c.usage === undefined && c.choices[0]?.finish_reason === null));
    const last = chunks.at(-1);
    assert.equal(last?.choices[0]?.finish_reason, 'stop');
    assert.equal(last?.usage?.completion_tokens, 15);
    const assembled = assembleChunks(chunks);
    assert.deepEqual(assembled.choices, whole.choices);
    assert.deepEqual({ ...assembled.usage, extra: undefined }, { ...whole.usage, extra: undefined });
  });

  it('passes max_tokens and stop to the engine (finish_reason length / stop)', async () => {
    const { ai, pairs } = setup();
    const short = await ai.chat.completions.create({ messages: [{ role: 'user', content: 'abcdef' }], max_tokens: 3 });
    assert.equal(short.choices[0]?.message.content, 'Ech');
    assert.equal(short.choices[0]?.finish_reason, 'length');
    const stopped = await ai.chat.completions.create({ messages: [{ role: 'user', content: 'abcdef' }], stop: ['cd'], seed: 4, temperature: 0 });
    assert.equal(stopped.choices[0]?.message.content, 'Echo: abc');
    assert.deepEqual(pairs[0]?.stats.lastRequest, {
      messages: [{ role: 'user', content: 'abcdef' }], stop: ['cd'], seed: 4, temperature: 0,
    });
  });

  it('emits progress, status and environmental-impact events', async () => {
    const { ai } = setup();
    const phases = new Set<string>();
    const impacts: EnvironmentalImpactEvent[] = [];
    const off = ai.on('progress', (p) => phases.add(p.phase));
    ai.on('environmentalImpact', (e) => impacts.push(e));
    await ai.initialize();
    off();
    assert.deepEqual([...phases], ['download', 'verify', 'load']);
    const info = await ai.engineInfo();
    assert.equal(info?.backend, 'cpu-wasm');
    assert.equal(info?.reason, 'test');
    await ai.chat.completions.create({ messages: [{ role: 'user', content: 'x' }] });
    assert.equal(impacts.length, 1);
    const impact = impacts[0];
    assert.ok(impact && impact.scope === 'local-inference' && impact.energyWh >= 0);
    // The figures say how they are obtained, and match the model for the busy time.
    assert.equal(impact.method, 'modelled');
    assert.equal(impact.gridRegion, 'world');
    assert.equal(impact.energyUwh, pageFootprint(impact.cpuSeconds * 1000, impact.deviceClass).energyUwh);
    assert.equal(impact.totalEnergyUwh, impact.energyUwh);
    assert.equal(impact.energyWh, impact.energyUwh / 1e6);
    assert.equal(await ai.hasModel(), true);
    await ai.deleteModel();
    assert.equal(await ai.hasModel(), false);
  });
});

describe('legacy completions and token ids', () => {
  it('runs a raw prompt, streamed or not, with the token ids of what was generated', async () => {
    const { ai } = setup();
    await ai.initialize();
    // The engine double answers `Echo: <prompt>`, one token per character (its char code).
    const want = 'Echo: <|im_start|>hi';
    const ids = [...want].map((c) => c.charCodeAt(0));
    const whole = await ai.completions.create({ prompt: '<|im_start|>hi' });
    assert.equal(whole.object, 'text_completion');
    assert.equal(whole.choices[0]?.text, want);
    assert.deepEqual(whole.choices[0]?.token_ids, ids);
    assert.equal(whole.usage?.completion_tokens, want.length);
    let text = '';
    const streamed: number[] = [];
    let last = null;
    for await (const c of await ai.completions.create({ prompt: '<|im_start|>hi', stream: true })) {
      text += c.choices[0]?.text ?? '';
      streamed.push(...(c.choices[0]?.token_ids ?? []));
      last = c;
    }
    assert.equal(text, want);
    assert.deepEqual(streamed, ids);
    assert.equal(last?.choices[0]?.finish_reason, 'stop');
    // Chat chunks carry them too, and assembleChunks joins them.
    const chunks: ChatCompletionChunk[] = [];
    for await (const c of await ai.chat.completions.create({ messages: [{ role: 'user', content: 'ab' }], stream: true })) chunks.push(c);
    assert.deepEqual(assembleChunks(chunks).choices[0]?.token_ids, [...'Echo: ab'].map((c) => c.charCodeAt(0)));
    await assert.rejects(ai.completions.create({ prompt: '' }), InvalidArgumentError);
    await assert.rejects(ai.completions.create({ prompt: 5 } as never), InvalidArgumentError);
  });
});
