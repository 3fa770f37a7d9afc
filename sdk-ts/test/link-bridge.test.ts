// host/link-bridge.ts: a worker thread blocks on shared memory for each call while the main
// thread answers later, asynchronously, as the page answers the swarm client's worker:
// numbers, bytes (a reply larger than the first buffer), the end of a stream, errors with
// their kind, a call the page never answers (a timeout, and its late answer is not taken for
// the next call's), and a reply over what the worker accepts (a protocol error).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Worker } from 'node:worker_threads';

import { answerLink, isLinkCall, type LinkCall } from '../src/host/link-bridge.js';

describe('worker ⇄ page calls over shared memory', () => {
  it('answers reach the blocked worker in order; timeouts, stale and oversized answers are caught', async () => {
    const worker = new Worker(new URL('./link-bridge-worker.js', import.meta.url));
    const seen: string[] = [];
    let silent: LinkCall | null = null;
    const later = (f: () => void): void => void setTimeout(f, 20);
    const done = await new Promise<unknown[]>((resolve, reject) => {
      worker.on('error', reject);
      worker.on('message', (m: unknown) => {
        if (typeof m === 'object' && m !== null && 'done' in m) {
          resolve((m as { done: unknown[] }).done);
          return;
        }
        assert.ok(isLinkCall(m), `a link call: ${JSON.stringify(m)}`);
        const call = m;
        seen.push(call.op === 'open' ? `open ${call.server}` : call.op === 'send' ? `send ${call.link} ${call.frame.length}` : `${call.op} ${call.link}`);
        if (call.op === 'open') {
          if (call.server === 'silent') {
            silent = call; // answered only after the worker gave up on it
            return;
          }
          if (call.server === 'after-silent') {
            // The late answer to the call that timed out comes first: it must not count.
            const old = silent as LinkCall & { op: 'open' };
            assert.equal(answerLink(old.sab, old.call, { number: 99 }), false, 'a stale answer is refused');
          }
          later(() => answerLink(call.sab, call.call, { number: call.server === 'peer-a' ? 7 : 8 }));
        } else if (call.op === 'recv') {
          const n = seen.filter((s) => s.startsWith('recv')).length;
          if (n === 1) {
            const big = new Uint8Array(50_000).fill(5);
            big[0] = 1;
            big[big.length - 1] = 9;
            later(() => assert.ok(answerLink(call.sab, call.call, { bytes: big })));
          } else if (n === 2) {
            later(() => answerLink(call.sab, call.call, { value: null }));
          } else if (n === 3) {
            later(() => answerLink(call.sab, call.call, { error: 'closed', message: 'the server went away' }));
          } else {
            later(() => answerLink(call.sab, call.call, { bytes: new Uint8Array(call.sab.byteLength) }));
          }
        }
      });
    });
    await worker.terminate();
    assert.deepEqual(seen, [
      'open peer-a', 'send 7 3', 'recv 7', 'recv 7', 'recv 7', 'open silent', 'open after-silent', 'recv 8', 'close 7',
    ]);
    assert.deepEqual(done[0], { ok: 7 });
    assert.deepEqual(done[1], { ok: { bytes: 50_000, first: 1, last: 9 } });
    assert.deepEqual(done[2], { ok: null });
    assert.deepEqual(done[3], { error: 'closed', message: 'the server went away' });
    assert.equal((done[4] as { error: string }).error, 'timeout');
    assert.deepEqual(done[5], { ok: 8 }, 'the answer to its own call, not the late one');
    assert.equal((done[6] as { error: string }).error, 'protocol');
    assert.match((done[6] as { message: string }).message, /over the .* the client accepts/);
  });
});
