/**
 * OpenAI request → engine request, and engine output → OpenAI `ChatCompletion` /
 * `ChatCompletionChunk`s. Pure functions, plus the async-iterable stream that the SDK's
 * `chat.completions.create({ stream: true })` returns.
 */

import { AbortError, InvalidArgumentError, KwaaiNetError, abortErrorFrom, toKwaaiNetError } from '../errors.js';
import { generateRequest, type GenerateRequest, type GenerationUsage } from '../protocol.js';
import { isRecord } from '../validate.js';
import type {
  ChatCompletion, ChatCompletionChunk, ChatCompletionCreateParamsBase, Completion, CompletionCreateParamsBase,
  CompletionUsage, FinishReason,
} from './types.js';

const fail = (m: string): Error => new InvalidArgumentError(m);

type Sampling = Omit<ChatCompletionCreateParamsBase, 'messages'>;

function samplingFields(params: Sampling): Record<string, unknown> {
  if (params.n !== undefined && params.n !== null && params.n !== 1) {
    throw new InvalidArgumentError('n: only 1 choice is supported');
  }
  const stop = typeof params.stop === 'string' ? [params.stop] : params.stop;
  return {
    max_tokens: params.max_tokens,
    temperature: params.temperature,
    top_p: params.top_p,
    top_k: params.top_k,
    repeat_penalty: params.repeat_penalty,
    seed: params.seed,
    stop,
  };
}

/** Validates legacy Completions params (a raw prompt) and converts them to the engine's request. */
export function toPromptRequest(params: CompletionCreateParamsBase): GenerateRequest {
  if (!isRecord(params)) throw new InvalidArgumentError('completions.create: expected a params object');
  if (typeof params.prompt !== 'string') throw new InvalidArgumentError('prompt: expected a string');
  return generateRequest({ prompt: params.prompt, ...samplingFields(params) }, fail);
}

/** Validates OpenAI params and converts them to the engine's request. */
export function toGenerateRequest(params: ChatCompletionCreateParamsBase): GenerateRequest {
  if (!isRecord(params)) throw new InvalidArgumentError('chat.completions.create: expected a params object');
  if (!Array.isArray(params.messages)) throw new InvalidArgumentError('messages: expected an array');
  const messages = params.messages.map((m, i) => {
    if (!isRecord(m)) throw new InvalidArgumentError(`messages[${i}]: expected an object`);
    let content: unknown = m.content;
    if (Array.isArray(content)) {
      content = content.map((part, j) => {
        if (!isRecord(part) || part.type !== 'text' || typeof part.text !== 'string') {
          throw new InvalidArgumentError(`messages[${i}].content[${j}]: only text parts are supported`);
        }
        return part.text;
      }).join('');
    }
    return { role: m.role, content };
  });
  // generateRequest checks types and ranges with the same rules the host applies.
  return generateRequest({ messages, ...samplingFields(params) }, fail);
}

export function toCompletionUsage(u: GenerationUsage): CompletionUsage {
  return {
    prompt_tokens: u.promptTokens,
    completion_tokens: u.completionTokens,
    total_tokens: u.promptTokens + u.completionTokens,
    extra: { time_to_first_token_ms: u.timeToFirstTokenMs, decode_tokens_per_s: u.decodeTokensPerS },
  };
}

export interface CompletionMeta {
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
}

export function buildCompletion(meta: CompletionMeta, text: string, finishReason: FinishReason, usage: GenerationUsage,
  tokenIds?: number[]): ChatCompletion {
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: [{
      index: 0, message: { role: 'assistant', content: text }, finish_reason: finishReason, logprobs: null,
      ...(tokenIds && { token_ids: tokenIds }),
    }],
    usage: toCompletionUsage(usage),
  };
}

export function buildChunk(meta: CompletionMeta, delta: ChatCompletionChunk['choices'][number]['delta'],
  finishReason: FinishReason | null = null, usage?: GenerationUsage, tokenIds?: number[]): ChatCompletionChunk {
  const chunk: ChatCompletionChunk = {
    id: meta.id,
    object: 'chat.completion.chunk',
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null, ...(tokenIds && { token_ids: tokenIds }) }],
  };
  if (usage) chunk.usage = toCompletionUsage(usage);
  return chunk;
}

/** A legacy Completions answer, or one streamed piece of it (`usage` only on the last). */
export function buildTextCompletion(meta: CompletionMeta, text: string, finishReason: FinishReason | null,
  usage?: GenerationUsage, tokenIds?: number[]): Completion {
  const c: Completion = {
    id: meta.id,
    object: 'text_completion',
    created: meta.created,
    model: meta.model,
    choices: [{ index: 0, text, finish_reason: finishReason, logprobs: null, ...(tokenIds && { token_ids: tokenIds }) }],
  };
  if (usage) c.usage = toCompletionUsage(usage);
  return c;
}

/** Joins a stream's chunks back into the completion (what a non-streaming call returns). */
export function assembleChunks(chunks: readonly ChatCompletionChunk[]): ChatCompletion {
  const first = chunks[0];
  const last = chunks[chunks.length - 1];
  if (!first || !last?.usage) throw new InvalidArgumentError('a stream ends with a chunk that carries usage');
  let text = '';
  let finish: FinishReason | null = null;
  let ids: number[] | undefined;
  for (const c of chunks) {
    for (const choice of c.choices) {
      text += choice.delta.content ?? '';
      finish = choice.finish_reason ?? finish;
      if (choice.token_ids) (ids ??= []).push(...choice.token_ids);
    }
  }
  return {
    id: first.id,
    object: 'chat.completion',
    created: first.created,
    model: first.model,
    choices: [{
      index: 0, message: { role: 'assistant', content: text }, finish_reason: finish ?? 'stop', logprobs: null,
      ...(ids && { token_ids: ids }),
    }],
    usage: last.usage,
  };
}

/**
 * An async-iterable of chunks fed by a producer. Breaking out of `for await` (or calling
 * `return()`) runs `cancel`, which stops the generation in the host; a producer error (an
 * AbortError included) is thrown from the next `next()`.
 */
export class ChunkStream<T = ChatCompletionChunk> implements AsyncIterable<T> {
  private readonly queue: T[] = [];
  private waiter: (() => void) | null = null;
  private finished = false;
  private error: KwaaiNetError | null = null;
  private readonly cancel: () => void;
  private iterated = false;

  constructor(cancel: () => void) {
    this.cancel = cancel;
  }

  push(chunk: T): void {
    if (this.finished) return;
    this.queue.push(chunk);
    this.wake();
  }

  end(error?: unknown): void {
    if (this.finished) return;
    this.finished = true;
    if (error !== undefined) this.error = toKwaaiNetError(error);
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterated) throw new InvalidArgumentError('a chat completion stream can be iterated once');
    this.iterated = true;
    return {
      next: async () => {
        for (;;) {
          if (this.queue.length > 0) return { value: this.queue.shift() as T, done: false };
          if (this.finished) {
            if (this.error) {
              const e = this.error;
              this.error = null;
              throw e;
            }
            return { value: undefined, done: true };
          }
          await new Promise<void>((resolve) => {
            this.waiter = resolve;
          });
        }
      },
      return: async () => {
        if (!this.finished) {
          this.finished = true;
          this.queue.length = 0;
          this.cancel();
        }
        return { value: undefined, done: true };
      },
    };
  }
}

/** The AbortError for a signal, or null when not aborted. */
export function abortedWith(signal: AbortSignal | undefined): AbortError | null {
  return signal?.aborted ? abortErrorFrom(signal) : null;
}
