/** The server-sent-events parser on literal byte sequences: every way the bytes can be
 *  split, the three line ends, comments, multi-line data, and its size bound. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ProtocolError } from '../src/errors.js';
import { SseParser, type SseEvent } from '../src/sse.js';

const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);

function parse(pieces: Uint8Array[], max?: number): SseEvent[] {
  const p = new SseParser(max);
  return pieces.flatMap((b) => p.push(b));
}

/** The same stream as one read, as two reads split at every byte, and byte by byte. */
function everySplit(text: string, expected: SseEvent[]): void {
  const all = bytes(text);
  assert.deepEqual(parse([all]), expected, 'one read');
  for (let i = 0; i <= all.length; i++) {
    assert.deepEqual(parse([all.subarray(0, i), all.subarray(i)]), expected, `split at byte ${i}`);
  }
  assert.deepEqual(parse([...all].map((b) => Uint8Array.of(b))), expected, 'byte by byte');
}

const msg = (data: string, event = 'message'): SseEvent => ({ event, data });

describe('SseParser', () => {
  it('OpenAI-style events, split anywhere, with LF, CRLF or CR line ends', () => {
    const events = ['{"a":1}', '{"b":"é—🙂"}', '[DONE]'];
    for (const eol of ['\n', '\r\n', '\r']) {
      const text = events.map((d) => `data: ${d}${eol}${eol}`).join('');
      everySplit(text, events.map((d) => msg(d)));
    }
  });

  it('a CRLF split between two reads is one line end, not a blank line', () => {
    assert.deepEqual(parse([bytes('data: a\r'), bytes('\ndata: b\r\n\r\n')]), [msg('a\nb')]);
    // A CR that ends a read and is followed by a CR is two line ends: the event is dispatched.
    assert.deepEqual(parse([bytes('data: a\r'), bytes('\rdata: b\n\n')]), [msg('a'), msg('b')]);
  });

  it('comments, multi-line data, field forms, event types and an unknown field', () => {
    const text = ': keep-alive\n\n'
      + ':another comment\n'
      + 'data: {"x":\n'
      + 'data:  1}\n'
      + 'id: 7\n'
      + 'retry: 1000\n'
      + 'whatever: ignored\n'
      + '\n'
      + 'event: error\n'
      + 'data:{"error":{}}\n'
      + '\n'
      + 'data\n'
      + '\n'
      + 'event: ping\n'
      + '\n'
      + 'data: after an empty event\n\n';
    everySplit(text, [msg('{"x":\n 1}'), msg('{"error":{}}', 'error'), msg(''), msg('after an empty event')]);
  });

  it('a leading BOM is dropped; an event left open at the end is not dispatched', () => {
    assert.deepEqual(parse([Uint8Array.of(0xef, 0xbb, 0xbf), bytes('data: x\n\ndata: cut')]), [msg('x')]);
    assert.deepEqual(parse([bytes('data: [DONE]\n')]), [], 'no blank line: not an event yet');
  });

  it('a line or an event over the bound is a ProtocolError, not unbounded growth', () => {
    const p = new SseParser(64);
    p.push(bytes('data: ' + 'x'.repeat(40)));
    assert.throws(() => p.push(bytes('y'.repeat(40))), ProtocolError);
    const q = new SseParser(64);
    assert.throws(() => q.push(bytes('data: 0123456789\n'.repeat(8))), ProtocolError);
    // Within the bound, many small lines are fine.
    assert.equal(parse([bytes('data: 01234\n'.repeat(4) + '\n')], 64).length, 1);
  });
});
