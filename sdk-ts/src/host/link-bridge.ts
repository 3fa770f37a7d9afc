/**
 * Synchronous calls from a worker to the page, over shared memory: how the swarm client in
 * the serving worker (the engine's `SwarmSession`, synchronous as the engine's generation
 * loop is) reaches span servers through the page's P2P node, which holds the streams (a
 * worker has no `RTCPeerConnection`).
 *
 * The worker posts a call (`LinkCall`) and blocks in `Atomics.wait` on a `SharedArrayBuffer`
 * it shares with the page; the page does the work (asynchronously), writes the answer into
 * the buffer and wakes it. One call at a time (the worker is blocked meanwhile). Every wait is
 * bounded: the page answers within its own time limits, and the worker gives up a little
 * after them (a `timeout` error). A late answer to a call that timed out is never taken for
 * the answer to the next: the page writes the number of the call it answers.
 *
 * Needs `SharedArrayBuffer`, so a cross-origin-isolated page (COOP/COEP), and a dedicated
 * worker (`Atomics.wait` is not allowed on a page's main thread).
 */

/** Int32 slots of the buffer's header; the answer's bytes follow it. */
const STATE = 0;
const CALL = 1;
const ANSWERED = 2;
const KIND = 3;
const LENGTH = 4;
const NUMBER = 5;
/** Header bytes (the data starts here). */
export const LINK_HEADER_BYTES = 32;

const IDLE = 0;
const WAITING = 1;
const DONE = 2;

/** What an answer holds. */
const BYTES = 0;
const NULL = 1;
const NUM = 2;
const ERROR = 3;

/** How a link failed (the engine's client fails over on any of them). */
export type LinkFailure = 'unreachable' | 'closed' | 'timeout' | 'protocol';

/** A call from the worker. `sab` is the buffer to answer in (the worker grows it). */
export type LinkCall =
  | { type: 'link'; op: 'open'; call: number; sab: SharedArrayBuffer; server: string }
  | { type: 'link'; op: 'send'; call: number; link: number; frame: Uint8Array }
  | { type: 'link'; op: 'recv'; call: number; sab: SharedArrayBuffer; link: number; max: number }
  | { type: 'link'; op: 'close'; call: number; link: number };

/** The answer to a call. */
export type LinkAnswer =
  | { bytes: Uint8Array }
  | { value: null }
  | { number: number }
  | { error: LinkFailure; message: string };

/** An `Error` with the `kind` the engine's links read. */
export class LinkError extends Error {
  constructor(readonly kind: LinkFailure, message: string) {
    super(message);
    this.name = 'LinkError';
  }
}

/** Whether `m` is a link call (the page checks what a worker sends). */
export function isLinkCall(m: unknown): m is LinkCall {
  if (typeof m !== 'object' || m === null) return false;
  const c = m as Record<string, unknown>;
  if (c.type !== 'link' || !Number.isInteger(c.call)) return false;
  const sab = typeof SharedArrayBuffer === 'function' && c.sab instanceof SharedArrayBuffer;
  switch (c.op) {
    case 'open': return sab && typeof c.server === 'string';
    case 'send': return Number.isInteger(c.link) && c.frame instanceof Uint8Array;
    case 'recv': return sab && Number.isInteger(c.link) && Number.isInteger(c.max) && (c.max as number) >= 0;
    case 'close': return Number.isInteger(c.link);
    default: return false;
  }
}

/**
 * The page's side: writes `answer` to call `call` into `sab` and wakes the worker. Returns
 * false (and writes nothing) when the worker no longer waits for this call (it timed out)
 * or the answer does not fit (the worker sized the buffer for the most it accepts: more is a
 * protocol error, answered as such).
 */
export function answerLink(sab: SharedArrayBuffer, call: number, answer: LinkAnswer): boolean {
  const ctl = new Int32Array(sab, 0, LINK_HEADER_BYTES / 4);
  if (Atomics.load(ctl, STATE) !== WAITING || Atomics.load(ctl, CALL) !== call) return false;
  const data = new Uint8Array(sab, LINK_HEADER_BYTES);
  let kind: number;
  let length = 0;
  if ('bytes' in answer) {
    if (answer.bytes.length > data.length) {
      return answerLink(sab, call, { error: 'protocol', message: `a reply of ${answer.bytes.length} bytes is over the ${data.length} the client accepts` });
    }
    data.set(answer.bytes);
    kind = BYTES;
    length = answer.bytes.length;
  } else if ('number' in answer) {
    kind = NUM;
    Atomics.store(ctl, NUMBER, answer.number | 0);
  } else if ('error' in answer) {
    const text = new TextEncoder().encode(JSON.stringify({ kind: answer.error, message: answer.message.slice(0, 2000) }));
    const n = Math.min(text.length, data.length);
    data.set(text.subarray(0, n));
    kind = ERROR;
    length = n;
  } else {
    kind = NULL;
  }
  Atomics.store(ctl, KIND, kind);
  Atomics.store(ctl, LENGTH, length);
  Atomics.store(ctl, ANSWERED, call);
  Atomics.store(ctl, STATE, DONE);
  Atomics.notify(ctl, STATE);
  return true;
}

/** The worker's side: blocking calls to the page. */
export class LinkCaller {
  private sab: SharedArrayBuffer;
  private ctl: Int32Array;
  private call = 0;

  constructor(private readonly post: (call: LinkCall) => void, capacity = 1 << 20) {
    this.sab = new SharedArrayBuffer(LINK_HEADER_BYTES + capacity);
    this.ctl = new Int32Array(this.sab, 0, LINK_HEADER_BYTES / 4);
  }

  /** Room for an answer of `bytes` (a new, larger buffer when needed). */
  private room(bytes: number): void {
    if (this.sab.byteLength - LINK_HEADER_BYTES >= bytes) return;
    this.sab = new SharedArrayBuffer(LINK_HEADER_BYTES + Math.max(bytes, 2 * (this.sab.byteLength - LINK_HEADER_BYTES)));
    this.ctl = new Int32Array(this.sab, 0, LINK_HEADER_BYTES / 4);
  }

  /** Asks the page and waits at most `waitMs` for the answer. */
  private ask(make: (call: number, sab: SharedArrayBuffer) => LinkCall, waitMs: number): LinkAnswer {
    const call = (this.call = (this.call + 1) | 0);
    Atomics.store(this.ctl, CALL, call);
    Atomics.store(this.ctl, STATE, WAITING);
    this.post(make(call, this.sab));
    const deadline = performance.now() + waitMs;
    for (;;) {
      const left = deadline - performance.now();
      if (Atomics.load(this.ctl, STATE) === DONE && Atomics.load(this.ctl, ANSWERED) === call) break;
      if (left <= 0) {
        Atomics.store(this.ctl, STATE, IDLE);
        return { error: 'timeout', message: `the page did not answer within ${Math.round(waitMs)} ms` };
      }
      Atomics.wait(this.ctl, STATE, WAITING, left);
    }
    Atomics.store(this.ctl, STATE, IDLE);
    const kind = Atomics.load(this.ctl, KIND);
    const length = Atomics.load(this.ctl, LENGTH);
    const data = new Uint8Array(this.sab, LINK_HEADER_BYTES, length);
    switch (kind) {
      case BYTES: return { bytes: data.slice() };
      case NUM: return { number: Atomics.load(this.ctl, NUMBER) };
      case ERROR: {
        try {
          const e = JSON.parse(new TextDecoder().decode(data.slice())) as { kind: LinkFailure; message: string };
          return { error: e.kind, message: e.message };
        } catch {
          return { error: 'protocol', message: 'a malformed error from the page' };
        }
      }
      default: return { value: null };
    }
  }

  /** A stream to `server`; its link id. Throws a `LinkError`. */
  open(server: string, waitMs: number): number {
    const a = this.ask((call, sab) => ({ type: 'link', op: 'open', call, sab, server }), waitMs);
    if ('number' in a) return a.number;
    throw failure(a, server);
  }

  /** Sends a frame (not waited for: a failure shows at the next `recv`). */
  send(link: number, frame: Uint8Array): void {
    this.post({ type: 'link', op: 'send', call: 0, link, frame: frame.slice() });
  }

  /** The next reply of `link` (`null`: the server ended the stream). Throws a `LinkError`. */
  recv(link: number, max: number, waitMs: number): Uint8Array | null {
    // The reply frame: its payload, a header (at most 4 KiB) and the lengths.
    this.room(max + 4096 + 9);
    const a = this.ask((call, sab) => ({ type: 'link', op: 'recv', call, sab, link, max }), waitMs);
    if ('bytes' in a) return a.bytes;
    if ('value' in a) return null;
    throw failure(a, `link ${link}`);
  }

  /** Closes `link` (not waited for). */
  close(link: number): void {
    this.post({ type: 'link', op: 'close', call: 0, link });
  }
}

function failure(a: LinkAnswer, what: string): LinkError {
  if ('error' in a) return new LinkError(a.error, a.message);
  return new LinkError('protocol', `${what}: an answer of the wrong kind`);
}
