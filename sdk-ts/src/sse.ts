/**
 * An incremental parser for server-sent events (`text/event-stream`, the WHATWG rules): the
 * bytes of a response body in, whole events out, however the bytes were split. It is what
 * reads a node's streamed OpenAI answers (node-api.ts).
 *
 * Lines end with CRLF, LF or CR (a CRLF split across two reads is one line end); `:` opens
 * a comment; consecutive `data:` lines join with `\n`; a blank line dispatches the event.
 * An event still open when the body ends is dropped, as the standard says. A line or an
 * event longer than `maxChars` is a ProtocolError, so a peer that never sends a line end
 * cannot grow the buffer without bound.
 */

import { ProtocolError } from './errors.js';

export interface SseEvent {
  /** The `event:` field; 'message' when there was none. */
  event: string;
  /** The `data:` lines, joined with `\n`. */
  data: string;
}

const LF = 10;
const CR = 13;

export class SseParser {
  private readonly decoder = new TextDecoder();
  private readonly maxChars: number;
  /** The start of a line whose end has not arrived yet. */
  private pending = '';
  /** The last read ended with CR: a LF opening the next read ends the same line. */
  private afterCr = false;
  private data: string[] = [];
  private dataChars = 0;
  private type = '';

  constructor(maxChars = 1 << 20) {
    this.maxChars = maxChars;
  }

  /** Feeds the next bytes of the body; returns the events they complete. */
  push(bytes: Uint8Array): SseEvent[] {
    const text = this.decoder.decode(bytes, { stream: true });
    const out: SseEvent[] = [];
    if (text.length === 0) return out;
    let start = this.afterCr && text.charCodeAt(0) === LF ? 1 : 0;
    this.afterCr = false;
    for (let i = start; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c !== LF && c !== CR) continue;
      this.line(this.pending + text.slice(start, i), out);
      this.pending = '';
      if (c === CR) {
        if (i + 1 === text.length) this.afterCr = true;
        else if (text.charCodeAt(i + 1) === LF) i++;
      }
      start = i + 1;
    }
    this.pending += text.slice(start);
    if (this.pending.length > this.maxChars) throw new ProtocolError(`server-sent events: a line longer than ${this.maxChars} characters`);
    return out;
  }

  private line(line: string, out: SseEvent[]): void {
    if (line === '') {
      this.dispatch(out);
      return;
    }
    if (line.charCodeAt(0) === 0x3a) return; // ':' — a comment (keep-alives)
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') {
      this.dataChars += value.length + 1;
      if (this.dataChars > this.maxChars) throw new ProtocolError(`server-sent events: an event longer than ${this.maxChars} characters`);
      this.data.push(value);
    } else if (field === 'event') {
      this.type = value;
    }
    // `id`, `retry` and unknown fields mean nothing to a one-shot request.
  }

  private dispatch(out: SseEvent[]): void {
    if (this.data.length > 0) out.push({ event: this.type || 'message', data: this.data.join('\n') });
    this.data = [];
    this.dataChars = 0;
    this.type = '';
  }
}
