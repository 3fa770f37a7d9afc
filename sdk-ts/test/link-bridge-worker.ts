// The worker side of link-bridge.test.ts: blocking calls to the main thread, as the swarm
// client's worker makes them, with their outcomes posted back at the end.
import { parentPort } from 'node:worker_threads';

import { LinkCaller, LinkError } from '../src/host/link-bridge.js';

const port = parentPort;
if (!port) throw new Error('run me as a worker');
// A small first buffer: the big reply below makes it grow.
const caller = new LinkCaller((call) => port.postMessage(call), 16);
type Outcome = { ok: unknown } | { error: string; message: string };
const attempt = (f: () => unknown): Outcome => {
  try {
    const v = f();
    return { ok: v instanceof Uint8Array ? { bytes: v.length, first: v[0], last: v[v.length - 1] } : v };
  } catch (e) {
    return e instanceof LinkError ? { error: e.kind, message: e.message } : { error: 'thrown', message: String(e) };
  }
};
const results: Outcome[] = [];
results.push(attempt(() => caller.open('peer-a', 5_000)));
caller.send(7, new Uint8Array([1, 2, 3]));
results.push(attempt(() => caller.recv(7, 100_000, 5_000)));
results.push(attempt(() => caller.recv(7, 10, 5_000)));
results.push(attempt(() => caller.recv(7, 10, 5_000)));
results.push(attempt(() => caller.open('silent', 200)));
results.push(attempt(() => caller.open('after-silent', 5_000)));
results.push(attempt(() => caller.recv(8, 4, 5_000)));
caller.close(7);
port.postMessage({ done: results });
