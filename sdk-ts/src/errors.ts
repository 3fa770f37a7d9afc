/**
 * Typed errors. Every failure the SDK reports is a `KwaaiNetError` with a stable `code`;
 * errors cross the page ↔ engine-host boundary as `{ code, message }` and are rebuilt here
 * with `errorFromWire`, so `instanceof` works on both sides.
 */

export type ErrorCode =
  | 'aborted'
  | 'quota-exceeded'
  | 'integrity'
  | 'model-too-large'
  | 'consent-required'
  | 'engine-crashed'
  | 'protocol'
  | 'network'
  | 'invalid-argument'
  | 'engine'
  | 'not-initialized'
  | 'disposed'
  | 'unsupported'
  | 'backend-lost'
  | 'p2p'
  | 'node-api';

export class KwaaiNetError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = 'KwaaiNetError';
  }
}

/** An operation was cancelled through its AbortSignal. `name` is `'AbortError'`, like the
 *  DOMException that `fetch` throws, so `err.name === 'AbortError'` checks keep working. */
export class AbortError extends KwaaiNetError {
  constructor(message = 'The operation was aborted', options?: { cause?: unknown }) {
    super('aborted', message, options);
    this.name = 'AbortError';
  }
}

/** Storage ran out: the browser's quota, or the `maxResources.storage` cap. */
export class QuotaExceededError extends KwaaiNetError {
  readonly limit: 'browser' | 'maxResources';
  constructor(message: string, limit: 'browser' | 'maxResources' = 'browser', options?: { cause?: unknown }) {
    super('quota-exceeded', message, options);
    this.name = 'QuotaExceededError';
    this.limit = limit;
  }
}

/** Downloaded or cached bytes do not match the expected SHA-256. */
export class IntegrityError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('integrity', message, options);
    this.name = 'IntegrityError';
  }
}

/** The model (weights + KV cache) does not fit in `maxResources.memory`. */
export class ModelTooLargeError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('model-too-large', message, options);
    this.name = 'ModelTooLargeError';
  }
}

/** Contributing needs the visitor's consent, which was not given. */
export class ConsentRequiredError extends KwaaiNetError {
  constructor(message = 'Contributing to KwaaiNet needs the visitor\'s consent', options?: { cause?: unknown }) {
    super('consent-required', message, options);
    this.name = 'ConsentRequiredError';
  }
}

/** The engine host (worker or service worker) died or stopped answering. The SDK restarts
 *  it on the next request. */
export class EngineCrashedError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('engine-crashed', message, options);
    this.name = 'EngineCrashedError';
  }
}

/** A message that does not follow the protocol: the page ↔ host messages (wrong version, bad
 *  shape), or a node's OpenAI API answering with something that is not its wire format
 *  (bad JSON, a malformed server-sent event, a stream that ends without `data: [DONE]`). */
export class ProtocolError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('protocol', message, options);
    this.name = 'ProtocolError';
  }
}

/** An HTTP request failed: the model download (HTTP status, connection lost after the
 *  retries), or a node's API could not be reached or did not answer in time. */
export class NetworkError extends KwaaiNetError {
  readonly status: number | undefined;
  constructor(message: string, status?: number, options?: { cause?: unknown }) {
    super('network', message, options);
    this.name = 'NetworkError';
    this.status = status;
  }
}

/** A prompt (with the tokens asked for) that outgrows the context: positions needed, and
 *  positions the context holds (`contextLength`). */
export interface ContextFull {
  needed: number;
  max: number;
}

/** A caller passed an option the SDK or the engine rejects; `contextFull` is set when the
 *  prompt does not fit the context. */
export class InvalidArgumentError extends KwaaiNetError {
  readonly contextFull: ContextFull | null;
  constructor(message: string, options?: { cause?: unknown }, details: { contextFull?: ContextFull } = {}) {
    super('invalid-argument', message, options);
    this.name = 'InvalidArgumentError';
    this.contextFull = details.contextFull ?? null;
  }
}

/** The WASM engine threw (bad GGUF, prompt longer than the context, ...). */
export class EngineError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('engine', message, options);
    this.name = 'EngineError';
  }
}

export class NotInitializedError extends KwaaiNetError {
  constructor(message = 'Call initialize() first', options?: { cause?: unknown }) {
    super('not-initialized', message, options);
    this.name = 'NotInitializedError';
  }
}

export class DisposedError extends KwaaiNetError {
  constructor(message = 'This KwaaiNet instance was disposed', options?: { cause?: unknown }) {
    super('disposed', message, options);
    this.name = 'DisposedError';
  }
}

export class UnsupportedError extends KwaaiNetError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('unsupported', message, options);
    this.name = 'UnsupportedError';
  }
}

/** The WebGPU device was lost (a driver reset, the browser reclaiming the GPU, a device
 *  error) during a request. The host has moved to the CPU engine: `retriable` — send the
 *  request again. `engineInfo()` / the 'ready' status then report the new backend and why. */
export class BackendLostError extends KwaaiNetError {
  readonly retriable = true;
  constructor(message: string, options?: { cause?: unknown }) {
    super('backend-lost', message, options);
    this.name = 'BackendLostError';
  }
}

/** Every `P2pFailure`, for validation. */
export const P2P_FAILURES = ['unreachable', 'query', 'record', 'timeout', 'stopped'] as const;

/** Why a P2P operation failed (`P2pError.reason`). */
export type P2pFailure =
  /** The node cannot be reached (every address failed, or it went away for good). */
  | 'unreachable'
  /** A lookup or message failed: no answer, the peer refused it, or the circuit failed. */
  | 'query'
  /** A record failed verification (signature, size, wrong peer). */
  | 'record'
  /** No answer within the time limit. */
  | 'timeout'
  /** The network node was closed or its module failed. */
  | 'stopped';

/** A failure on the P2P network (page-side node: `KwaaiNetwork`). */
export class P2pError extends KwaaiNetError {
  readonly reason: P2pFailure;
  constructor(message: string, reason: P2pFailure = 'query', options?: { cause?: unknown }) {
    super('p2p', message, options);
    this.name = 'P2pError';
    this.reason = reason;
  }
}

/** A node's OpenAI-compatible API (`new KwaaiNet({ endpoint })`) refused a request: an
 *  HTTP error status, or an error event inside a stream. The OpenAI error object's fields
 *  are kept as the node sent them (`apiCode` is its `code`: `code` is the SDK's own). */
export class NodeApiError extends KwaaiNetError {
  /** The HTTP status; null for an error the node reported inside a 200 stream. */
  readonly status: number | null;
  /** OpenAI's `error.type` (`invalid_request_error`, …), `error.param` and `error.code`. */
  readonly type: string | null;
  readonly param: string | null;
  readonly apiCode: string | null;
  /** From `Retry-After` (429, 503), in milliseconds; null when the node sent none. */
  readonly retryAfterMs: number | null;
  /** The same request may succeed later (429, 502, 503, 504). */
  readonly retriable: boolean;
  constructor(message: string, details: {
    status?: number | null; type?: string | null; param?: string | null; apiCode?: string | null; retryAfterMs?: number | null;
  } = {}, options?: { cause?: unknown }) {
    super('node-api', message, options);
    this.name = 'NodeApiError';
    this.status = details.status ?? null;
    this.type = details.type ?? null;
    this.param = details.param ?? null;
    this.apiCode = details.apiCode ?? null;
    this.retryAfterMs = details.retryAfterMs ?? null;
    this.retriable = this.status !== null && [429, 502, 503, 504].includes(this.status);
  }
}

const ERROR_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'aborted', 'quota-exceeded', 'integrity', 'model-too-large', 'consent-required',
  'engine-crashed', 'protocol', 'network', 'invalid-argument', 'engine', 'not-initialized',
  'disposed', 'unsupported', 'backend-lost', 'p2p', 'node-api',
]);

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && ERROR_CODES.has(value);
}

/** What a typed error carries besides its code and message, as it crosses the page ⇄ host
 *  protocol (`WireError.fields`): each class's own fields, so none is lost on the way. */
export interface ErrorFields {
  /** QuotaExceededError.limit */
  limit?: 'browser' | 'maxResources';
  /** NetworkError.status */
  status?: number;
  /** P2pError.reason */
  reason?: P2pFailure;
  /** InvalidArgumentError.contextFull */
  contextFull?: ContextFull;
}

/** The fields of `err` that `errorFromWire` restores. */
export function errorFields(err: KwaaiNetError): ErrorFields {
  if (err instanceof QuotaExceededError) return { limit: err.limit };
  if (err instanceof NetworkError) return err.status === undefined ? {} : { status: err.status };
  if (err instanceof P2pError) return { reason: err.reason };
  if (err instanceof InvalidArgumentError) return err.contextFull === null ? {} : { contextFull: { ...err.contextFull } };
  return {};
}

/** The typed error for a `{ code, message, fields }` that crossed the protocol. */
export function errorFromWire(code: ErrorCode, message: string, fields: ErrorFields = {}): KwaaiNetError {
  switch (code) {
    case 'aborted': return new AbortError(message);
    case 'quota-exceeded': return new QuotaExceededError(message, fields.limit);
    case 'integrity': return new IntegrityError(message);
    case 'model-too-large': return new ModelTooLargeError(message);
    case 'consent-required': return new ConsentRequiredError(message);
    case 'engine-crashed': return new EngineCrashedError(message);
    case 'protocol': return new ProtocolError(message);
    case 'network': return new NetworkError(message, fields.status);
    case 'invalid-argument':
      return new InvalidArgumentError(message, undefined, fields.contextFull ? { contextFull: fields.contextFull } : {});
    case 'engine': return new EngineError(message);
    case 'not-initialized': return new NotInitializedError(message);
    case 'disposed': return new DisposedError(message);
    case 'unsupported': return new UnsupportedError(message);
    case 'backend-lost': return new BackendLostError(message);
    case 'p2p': return new P2pError(message, fields.reason);
    case 'node-api': return new NodeApiError(message);
  }
}

/** Any thrown value as a KwaaiNetError (DOMException AbortError / QuotaExceededError are
 *  mapped to ours; anything else becomes `fallback`). */
export function toKwaaiNetError(err: unknown, fallback: ErrorCode = 'engine'): KwaaiNetError {
  if (err instanceof KwaaiNetError) return err;
  const name = typeof err === 'object' && err !== null && 'name' in err ? String(err.name) : '';
  const message = err instanceof Error ? err.message : String(err);
  if (name === 'AbortError') return new AbortError(message || undefined, { cause: err });
  if (name === 'QuotaExceededError') return new QuotaExceededError(message, 'browser', { cause: err });
  const e = errorFromWire(fallback, message);
  return Object.assign(e, { cause: err });
}

/** Throws the SDK's AbortError when `signal` is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw abortErrorFrom(signal);
}

export function abortErrorFrom(signal: AbortSignal): AbortError {
  const reason: unknown = signal.reason;
  if (reason instanceof AbortError) return reason;
  const message = reason instanceof Error && reason.name !== 'AbortError' ? reason.message : 'The operation was aborted';
  return new AbortError(message, { cause: reason });
}
