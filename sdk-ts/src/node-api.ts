/**
 * The client for a node's OpenAI-compatible API (`<endpoint>/v1/…`): what
 * `new KwaaiNet({ endpoint })` and a request's `route: 'node'` go through. Its answers
 * have the in-page engine's shapes: the whole `ChatCompletion` / `Completion`, or the same
 * `ChunkStream`, filled from the node's server-sent events (sse.ts) until `data: [DONE]`.
 *
 * Bounds: each wait on the node (for the answer's headers, then for each read of its body)
 * lasts at most `timeoutMs`; a JSON answer is at most 16 MiB, one event 1 MiB. Failures:
 * `NodeApiError` (the node's HTTP error, with its status, OpenAI error fields and
 * Retry-After), `NetworkError` (unreachable, no answer in time), `ProtocolError` (not the
 * OpenAI wire format), `AbortError`. The API key goes in the Authorization header and
 * nowhere else: it is kept in a private field and never put in a message.
 */

import {
  AbortError, InvalidArgumentError, KwaaiNetError, NetworkError, NodeApiError, ProtocolError, abortErrorFrom,
} from './errors.js';
import { ChunkStream } from './openai/chat.js';
import { SseParser } from './sse.js';
import { describe, isRecord } from './validate.js';

/** Default for `timeoutMs`. A non-streamed answer arrives whole when its generation ends,
 *  so the whole generation must fit in it. */
export const DEFAULT_NODE_TIMEOUT_MS = 120_000;
const MAX_BODY_BYTES = 16 << 20;
const MAX_ERROR_BODY_BYTES = 64 << 10;
const MAX_EVENT_CHARS = 1 << 20;

export interface NodeApiOptions {
  /** The node's URL (absolute, or relative to the page); a trailing `/v1` is accepted. */
  endpoint: string;
  apiKey?: string;
  timeoutMs?: number;
}

/** `endpoint` → the API base, ending in `/v1/`. */
export function apiBase(endpoint: string): URL {
  let url: URL;
  try {
    url = new URL(endpoint, (globalThis as { location?: Location }).location?.href);
  } catch {
    throw new InvalidArgumentError(`endpoint: not a URL (${describe(endpoint)})`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new InvalidArgumentError('endpoint: expected an http: or https: URL');
  // A key in the URL would travel in every error message: it belongs in `apiKey`.
  if (url.username !== '' || url.password !== '') throw new InvalidArgumentError('endpoint: no credentials in the URL (pass apiKey)');
  url.search = '';
  url.hash = '';
  const path = url.pathname.replace(/\/+$/, '');
  url.pathname = `${path.endsWith('/v1') ? path : `${path}/v1`}/`;
  return url;
}

/** `Retry-After` (seconds, or an HTTP date) in milliseconds from `now`; null when absent or unreadable. */
export function parseRetryAfter(value: string | null, now = Date.now()): number | null {
  if (value === null) return null;
  const v = value.trim();
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  return Number.isNaN(at) ? null : Math.max(0, at - now);
}

const short = (text: string, max = 300): string => (text.length > max ? `${text.slice(0, max)}…` : text);
const stringOrNull = (v: unknown): string | null => (typeof v === 'string' ? v : typeof v === 'number' ? String(v) : null);

/** The OpenAI error object `{ message, type, param, code }` as a NodeApiError. */
function nodeApiError(where: string, status: number | null, error: unknown, fallback: string,
  retryAfterMs: number | null): NodeApiError {
  const e = isRecord(error) ? error : {};
  const message = typeof e.message === 'string' && e.message !== '' ? e.message : fallback;
  const what = status === null ? 'an error event in the stream' : `HTTP ${status}`;
  return new NodeApiError(`${where}: ${what}: ${short(message)}`, {
    status, type: stringOrNull(e.type), param: stringOrNull(e.param), apiCode: stringOrNull(e.code), retryAfterMs,
  });
}

/** One request's deadline and cancellation: the caller's signal, the timeout (re-armed by
 *  every byte that arrives), and the reader closing a stream all abort `controller`. */
class Call {
  readonly controller = new AbortController();
  readonly where: string;
  private readonly signal: AbortSignal;
  private readonly timeoutMs: number;
  private timer: ReturnType<typeof setTimeout> | undefined;
  private readonly onAbort = (): void => this.controller.abort(this.signal.reason);

  constructor(url: URL, signal: AbortSignal, timeoutMs: number) {
    this.where = `node ${url.origin}${url.pathname}`;
    this.signal = signal;
    this.timeoutMs = timeoutMs;
    signal.addEventListener('abort', this.onAbort, { once: true });
    this.arm();
  }

  arm(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(
      new NetworkError(`${this.where}: nothing received for ${this.timeoutMs / 1000} s`)), this.timeoutMs);
  }

  close(): void {
    clearTimeout(this.timer);
    this.signal.removeEventListener('abort', this.onAbort);
  }

  /** What a failure means: the caller's abort, our timeout, or the error itself. */
  error(err: unknown): KwaaiNetError {
    if (this.signal.aborted) return abortErrorFrom(this.signal);
    const reason: unknown = this.controller.signal.reason;
    if (this.controller.signal.aborted && reason instanceof KwaaiNetError) return reason;
    if (err instanceof KwaaiNetError) return err;
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    const message = err instanceof Error ? err.message : String(err);
    return new NetworkError(`${this.where}: ${short(message + cause)}`, undefined, { cause: err });
  }
}

/** The body as text, at most `max` bytes (larger → ProtocolError); each read re-arms the timeout. */
async function readText(res: Response, call: Call, max: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const parts: Uint8Array[] = [];
  let total = 0;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      call.arm();
      if (done) break;
      total += value.byteLength;
      if (total > max) throw new ProtocolError(`${call.where}: an answer larger than ${max} bytes`);
      parts.push(value);
    }
  } catch (err) {
    reader.cancel().catch(() => {}); // closes the connection
    throw err;
  }
  const bytes = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.byteLength;
  }
  return new TextDecoder().decode(bytes);
}

/** The answer's body as JSON (bounded), or a ProtocolError saying it is not. */
async function readJson(res: Response, call: Call): Promise<unknown> {
  const text = await readText(res, call, MAX_BODY_BYTES);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new ProtocolError(`${call.where}: the answer is not JSON (${describe(text)})`);
  }
}

async function httpError(res: Response, call: Call): Promise<NodeApiError> {
  const text = await readText(res, call, MAX_ERROR_BODY_BYTES).catch(() => '');
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    // Not JSON (a proxy's HTML page): its first characters, or the status text, say enough.
  }
  const fallback = text.trim() !== '' && !isRecord(body) ? text.trim() : res.statusText || 'no message';
  return nodeApiError(call.where, res.status, isRecord(body) ? body.error : null, fallback,
    parseRetryAfter(res.headers.get('retry-after')));
}

/** A completion or a chunk: an object with `choices`, or the node's `{ error }`. */
function answer<T>(value: unknown, call: Call, status: number | null): T {
  if (isRecord(value) && value.error !== undefined) throw nodeApiError(call.where, status, value.error, 'no message', null);
  if (!isRecord(value) || !Array.isArray(value.choices)) {
    throw new ProtocolError(`${call.where}: expected an object with choices, got ${describe(value)}`);
  }
  return value as T;
}

/** A model a node's API offers (`GET /v1/models`), and where its requests run there. */
export interface NodeModel {
  id: string;
  /** 'local': the whole model on that node; 'swarm': the node holds the embedding and head,
   *  peers run the blocks. */
  backend: 'local' | 'swarm';
  aliases: string[];
}

/** Most models a node's list is read for. */
const MAX_NODE_MODELS = 256;

export class NodeApi {
  /** The API base, ending in `/v1/`. */
  readonly base: URL;
  readonly #authorization: string | null;
  readonly #timeoutMs: number;

  constructor(options: NodeApiOptions) {
    this.base = apiBase(options.endpoint);
    // Printable ASCII: anything else would fail in fetch's header check, with a message of its own.
    if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || !/^[\x20-\x7e]+$/.test(options.apiKey))) {
      throw new InvalidArgumentError('apiKey: a non-empty string of printable ASCII');
    }
    this.#authorization = options.apiKey === undefined ? null : `Bearer ${options.apiKey}`;
    const t = options.timeoutMs ?? DEFAULT_NODE_TIMEOUT_MS;
    if (typeof t !== 'number' || !Number.isFinite(t) || t <= 0) throw new InvalidArgumentError('endpointTimeoutMs: a positive number of milliseconds');
    this.#timeoutMs = t;
  }

  /** POSTs `body` to `path` (under `/v1/`) and returns the JSON answer. */
  async json<T>(path: string, body: Record<string, unknown>, signal: AbortSignal): Promise<T> {
    const { res, call } = await this.send(path, body, signal, 'application/json');
    try {
      return answer<T>(await readJson(res, call), call, res.status);
    } catch (err) {
      throw call.error(err);
    } finally {
      call.close();
    }
  }

  /** POSTs `body` (with `stream: true`) to `path`; once the node answers, returns the stream
   *  of its events' chunks. `onEnd` runs once the stream is over, however it ended. */
  async stream<T>(path: string, body: Record<string, unknown>, signal: AbortSignal, onEnd: () => void): Promise<ChunkStream<T>> {
    let sent: { res: Response; call: Call };
    try {
      sent = await this.send(path, body, signal, 'text/event-stream');
    } catch (err) {
      onEnd();
      throw err;
    }
    const { res, call } = sent;
    const type = res.headers.get('content-type') ?? '';
    if (!res.body || !/^text\/event-stream\b/i.test(type)) {
      const err = new ProtocolError(`${call.where}: expected text/event-stream, got "${short(type, 60)}"`);
      call.controller.abort(err); // closes the connection
      call.close();
      onEnd();
      throw err;
    }
    const reader = res.body.getReader();
    const stream = new ChunkStream<T>(() => call.controller.abort(new AbortError('the stream was closed by its reader')));
    const parser = new SseParser(MAX_EVENT_CHARS);
    const pump = async (): Promise<void> => {
      for (;;) {
        const { value, done } = await reader.read();
        call.arm();
        if (done) throw new ProtocolError(`${call.where}: the stream ended before data: [DONE]`);
        for (const event of parser.push(value)) {
          if (event.event !== 'message' && event.event !== 'error') continue; // event types a chat stream does not use
          if (event.data === '[DONE]') return;
          let chunk: unknown;
          try {
            chunk = JSON.parse(event.data);
          } catch {
            throw new ProtocolError(`${call.where}: an event's data is not JSON (${describe(event.data)})`);
          }
          if (event.event === 'error' && !(isRecord(chunk) && chunk.error !== undefined)) chunk = { error: chunk };
          stream.push(answer<T>(chunk, call, null));
        }
      }
    };
    pump().then(() => stream.end(), (err: unknown) => stream.end(call.error(err))).finally(() => {
      call.close();
      // Ends the request: after [DONE] it is over anyway; after an error this closes the connection.
      reader.cancel().catch(() => {});
      onEnd();
    });
    return stream;
  }

  /** `GET /v1/models`: the node's models and where each runs. */
  async models(signal: AbortSignal): Promise<NodeModel[]> {
    const { res, call } = await this.send('models', null, signal, 'application/json');
    try {
      const value = await readJson(res, call);
      if (!isRecord(value) || !Array.isArray(value.data)) throw new ProtocolError(`${call.where}: expected a model list, got ${describe(value)}`);
      return value.data.slice(0, MAX_NODE_MODELS).flatMap((m: unknown): NodeModel[] => {
        if (!isRecord(m) || typeof m.id !== 'string' || (m.backend !== 'local' && m.backend !== 'swarm')) return [];
        const aliases = Array.isArray(m.aliases) ? m.aliases.filter((a): a is string => typeof a === 'string') : [];
        return [{ id: m.id, backend: m.backend, aliases }];
      });
    } catch (err) {
      throw call.error(err);
    } finally {
      call.close();
    }
  }

  private async send(path: string, body: Record<string, unknown> | null, signal: AbortSignal, accept: string):
    Promise<{ res: Response; call: Call }> {
    const url = new URL(path, this.base);
    const call = new Call(url, signal, this.#timeoutMs);
    try {
      if (signal.aborted) throw abortErrorFrom(signal);
      const headers: Record<string, string> = { accept };
      if (body !== null) headers['content-type'] = 'application/json';
      if (this.#authorization !== null) headers.authorization = this.#authorization;
      const res = await fetch(url, body === null
        ? { method: 'GET', headers, signal: call.controller.signal }
        : { method: 'POST', headers, body: JSON.stringify(body), signal: call.controller.signal });
      call.arm();
      if (!res.ok) throw await httpError(res, call);
      return { res, call };
    } catch (err) {
      call.close();
      throw call.error(err);
    }
  }
}
