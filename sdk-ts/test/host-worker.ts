/** An engine host (engine double behind EngineHostHandler) on its own thread, for tests
 *  where the host must block while the proxy keeps time: a long prefill. */
import { parentPort, workerData } from 'node:worker_threads';
import { EngineHostHandler } from '../src/host/handler.js';
import type { DoubleOptions } from './engine-double.js';
import { localEngine } from './harness.js';

const { local } = localEngine(workerData as DoubleOptions);
const handler = new EngineHostHandler(local, { onProtocolError: () => {} });
parentPort?.on('message', (data: unknown) => {
  void handler.handle(data, { send: (m) => parentPort?.postMessage(m) }, 'page');
});
parentPort?.postMessage('ready'); // after harness.js's warm-up, which blocks for a moment
