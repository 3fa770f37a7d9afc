import assert from 'node:assert/strict';
import { getEventListeners } from 'node:events';
import { afterEach, describe, it } from 'node:test';

import { AbortError, DisposedError } from '../src/errors.js';
import type { HostChoice } from '../src/host.js';
import { KwaaiNet } from '../src/kwaainet.js';
import { memoryConsentStorage } from '../src/consent.js';
import type { RequestOptions } from '../src/openai/types.js';
import { MODEL_SHA, MODEL_URL, kwaaiWithHosts, localEngine, until } from './harness.js';

const LONG_TEXT = 'q'.repeat(3000);
const LONG = [{ role: 'user' as const, content: LONG_TEXT }];

/** How a caller hands `create()` its signal: the deprecated `params.signal`, openai-node's
 *  second argument, or both (where either must abort; the other never fires). */
interface SignalForm {
  name: string;
  pass(signal: AbortSignal): { params: { signal?: AbortSignal }; options?: RequestOptions };
}
const SIGNAL_FORMS: SignalForm[] = [
  { name: 'params.signal', pass: (signal) => ({ params: { signal } }) },
  { name: 'create(params, { signal })', pass: (signal) => ({ params: {}, options: { signal } }) },
  { name: 'both, options.signal aborts', pass: (signal) => ({ params: { signal: new AbortController().signal }, options: { signal } }) },
  { name: 'both, params.signal aborts', pass: (signal) => ({ params: { signal }, options: { signal: new AbortController().signal } }) },
];

/** Chat and legacy completions behind one shape, so every abort test runs against both:
 *  `once` resolves to the answer's text, `stream` to an iterable of the pieces' text. */
interface Api {
  name: string;
  once(ai: KwaaiNet, form: ReturnType<SignalForm['pass']> | null, input?: string): Promise<string>;
  stream(ai: KwaaiNet, form: ReturnType<SignalForm['pass']> | null): Promise<AsyncIterable<string>>;
}
async function* texts<T>(source: AsyncIterable<T>, text: (item: T) => string | undefined): AsyncIterable<string> {
  for await (const item of source) yield text(item) ?? '';
}
const APIS: Api[] = [
  {
    name: 'chat',
    once: async (ai, f, input) => (await ai.chat.completions.create(
      input === undefined ? { messages: LONG, max_tokens: 2000, ...f?.params } : { messages: [{ role: 'user', content: input }] },
      f?.options)).choices[0]?.message.content ?? '',
    stream: async (ai, f) => texts(await ai.chat.completions.create({ messages: LONG, stream: true, ...f?.params }, f?.options),
      (c) => c.choices[0]?.delta.content),
  },
  {
    name: 'completions',
    once: async (ai, f, input) => (await ai.completions.create(
      input === undefined ? { prompt: LONG_TEXT, max_tokens: 2000, ...f?.params } : { prompt: input },
      f?.options)).choices[0]?.text ?? '',
    stream: async (ai, f) => texts(await ai.completions.create({ prompt: LONG_TEXT, stream: true, ...f?.params }, f?.options),
      (c) => c.choices[0]?.text),
  },
];
const cleanup: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  while (cleanup.length) await cleanup.pop()?.();
});

/** Both hosts: a worker-like proxy over a MessageChannel, and the in-page engine. */
function variants(): Array<{ name: string; make: () => { ai: KwaaiNet; steps: () => number; freed: () => number; inFlight: () => number } }> {
  return [
    {
      name: 'worker proxy',
      make: () => {
        const k = kwaaiWithHosts({}, { double: { msPerToken: 1 } });
        cleanup.push(k.closeAll, () => k.ai.dispose());
        return {
          ai: k.ai,
          steps: () => k.pairs[0]?.stats.steps ?? 0,
          freed: () => k.pairs[0]?.stats.generationsFreed ?? 0,
          inFlight: () => k.pairs[0]?.handler.inFlight ?? 0,
        };
      },
    },
    {
      name: 'in-page',
      make: () => {
        const { local, stats } = localEngine({ msPerToken: 1 }, 'in-page');
        const ai = new KwaaiNet({
          modelUrl: MODEL_URL, modelSha256: MODEL_SHA, baseUrl: 'https://cdn.test/', consentStorage: memoryConsentStorage(),
          startHost: async (): Promise<HostChoice> => ({ engine: local, host: 'in-page', reason: 'test' }),
        });
        cleanup.push(() => ai.dispose());
        return { ai, steps: () => stats.steps, freed: () => stats.generationsFreed, inFlight: () => 0 };
      },
    },
  ];
}

for (const variant of variants()) {
  for (const api of APIS) {
    for (const form of SIGNAL_FORMS) {
      describe(`abort (${variant.name}, ${api.name}, ${form.name})`, () => {
        it('a signal aborted before the call rejects at once and starts nothing', async () => {
          const { ai, steps } = variant.make();
          await ai.initialize();
          const controller = new AbortController();
          controller.abort();
          await assert.rejects(api.once(ai, form.pass(controller.signal)), AbortError);
          await assert.rejects(api.stream(ai, form.pass(controller.signal)), AbortError);
          assert.equal(steps(), 0);
        });

        it('aborting a completion mid-generation rejects with AbortError and stops the engine', async () => {
          const { ai, steps, freed, inFlight } = variant.make();
          await ai.initialize();
          const controller = new AbortController();
          const pending = api.once(ai, form.pass(controller.signal));
          await until(() => steps() > 3);
          controller.abort();
          const err = await pending.catch((e: unknown) => e);
          assert.ok(err instanceof AbortError && err.name === 'AbortError', String(err));
          await until(() => freed() === 1 && inFlight() === 0);
          const at = steps();
          await new Promise((r) => setTimeout(r, 30));
          assert.equal(steps(), at, 'no more steps after the abort');
          assert.ok(at < 2000, 'stopped well before the end');
          // The engine serves the next request.
          assert.equal(await api.once(ai, null, 'ok'), 'Echo: ok');
        });

        it('aborting a stream ends the iteration with AbortError', async () => {
          const { ai, freed } = variant.make();
          const controller = new AbortController();
          const stream = await api.stream(ai, form.pass(controller.signal));
          let seen = 0;
          const err = await (async () => {
            for await (const text of stream) {
              seen += text.length;
              if (seen > 20) controller.abort();
            }
          })().catch((e: unknown) => e);
          assert.ok(err instanceof AbortError, String(err));
          await until(() => freed() === 1);
        });
      });
    }
  }

  describe(`abort (${variant.name})`, () => {
    it('breaking out of the stream stops the host', async () => {
      const { ai, freed, steps } = variant.make();
      const stream = await ai.chat.completions.create({ messages: LONG, stream: true });
      for await (const chunk of stream) {
        if ((chunk.choices[0]?.delta.content?.length ?? 0) > 0) break;
      }
      await until(() => freed() === 1);
      assert.ok(steps() < 3000);
    });

    it('requests that finish leave no listener on a long-lived signal', async () => {
      const { ai } = variant.make();
      await ai.initialize();
      const controller = new AbortController();
      for (const api of APIS) {
        for (let i = 0; i < 3; i++) {
          assert.equal(await api.once(ai, { params: {}, options: { signal: controller.signal } }, 'hi'), 'Echo: hi');
        }
        let pieces = 0;
        for await (const text of await api.stream(ai, { params: { signal: controller.signal } })) pieces += text.length;
        assert.ok(pieces > 0);
      }
      assert.equal(getEventListeners(controller.signal, 'abort').length, 0);
    });

    it('dispose() aborts what is running and refuses new work', async () => {
      const { ai } = variant.make();
      await ai.initialize();
      const pending = ai.chat.completions.create({ messages: LONG });
      await new Promise((r) => setTimeout(r, 20));
      await ai.dispose();
      await assert.rejects(pending, AbortError);
      await assert.rejects(ai.chat.completions.create({ messages: LONG }), DisposedError);
    });
  });
}
