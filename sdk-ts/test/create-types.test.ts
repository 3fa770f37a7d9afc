// `create(params, { signal })` as openai-node types it. The assertions here are checked by
// the strict `tsc -p tsconfig.json` run (a wrong overload fails the type check, not a
// test); the test only runs the same calls, so a type that lies about the runtime fails too.
import assert from 'node:assert/strict';
import { afterEach, describe, it } from 'node:test';

import type {
  ChatCompletion, ChatCompletionChunk, Completion, KwaaiNet, RequestOptions,
} from '../src/index.js';
import { kwaaiWithHosts } from './harness.js';

/** True only when A and B are the same type (not merely assignable either way). */
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2) ? true : false;
function expectType<T extends true>(_proof?: T): void {}

const cleanup: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()?.();
});

async function calls(ai: KwaaiNet, options: RequestOptions): Promise<void> {
  const messages = [{ role: 'user' as const, content: 'hi' }];

  const streamed = await ai.chat.completions.create({ messages, stream: true }, options);
  expectType<Equal<typeof streamed, AsyncIterable<ChatCompletionChunk>>>();
  for await (const chunk of streamed) assert.equal(chunk.object, 'chat.completion.chunk');

  const whole = await ai.chat.completions.create({ messages }, options);
  expectType<Equal<typeof whole, ChatCompletion>>();
  assert.equal(whole.choices[0]?.message.content, 'Echo: hi');

  const explicit = await ai.chat.completions.create({ messages, stream: false }, { signal: new AbortController().signal });
  expectType<Equal<typeof explicit, ChatCompletion>>();
  const routed = await ai.chat.completions.create({ messages }, { ...options, route: 'local' });
  expectType<Equal<typeof routed, ChatCompletion>>();

  // A `stream` only known at run time gets the union, as in openai-node.
  const stream = Date.now() < 0;
  const either = await ai.chat.completions.create({ messages, stream }, options);
  expectType<Equal<typeof either, ChatCompletion | AsyncIterable<ChatCompletionChunk>>>();

  const text = await ai.completions.create({ prompt: 'hi' }, options);
  expectType<Equal<typeof text, Completion>>();
  assert.equal(text.choices[0]?.text, 'Echo: hi');
  const pieces = await ai.completions.create({ prompt: 'hi', stream: true }, options);
  expectType<Equal<typeof pieces, AsyncIterable<Completion>>>();
  for await (const piece of pieces) assert.equal(piece.object, 'text_completion');

  // The old form still type-checks (deprecated), and the second argument stays optional.
  const old = await ai.chat.completions.create({ messages, signal: new AbortController().signal });
  expectType<Equal<typeof old, ChatCompletion>>();
}

/** Calls that must NOT type-check; never run (they are wrong on purpose). */
export async function rejected(ai: KwaaiNet, options: RequestOptions): Promise<void> {
  const messages = [{ role: 'user' as const, content: 'hi' }];
  // @ts-expect-error a streamed result is not a ChatCompletion
  void (await ai.chat.completions.create({ messages, stream: true }, options)).choices;
  // @ts-expect-error a non-streamed result is not iterable
  for await (const _ of await ai.completions.create({ prompt: 'hi' }, options)) break;
  // @ts-expect-error RequestOptions.signal is an AbortSignal
  void ai.chat.completions.create({ messages }, { signal: 'stop' });
  // @ts-expect-error RequestOptions.route is 'local' | 'node' | 'swarm' | 'auto'
  void ai.chat.completions.create({ messages }, { route: 'peers' });
}

describe('create(params, { signal }) types', () => {
  it('the typed results are what the calls return', async () => {
    const k = kwaaiWithHosts();
    cleanup.push(k.closeAll, () => k.ai.dispose());
    await calls(k.ai, { signal: new AbortController().signal });
    await calls(k.ai, {});
  });
});
