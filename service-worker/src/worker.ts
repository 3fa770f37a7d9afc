// The dedicated-worker host (cdn/build.mjs bundles it as kwaainet-worker.js): the CPU engine,
// and the multi-threaded one in a cross-origin-isolated page. Logic: sdk-ts/src/host.
import * as glue from 'kwaainet-wasm-glue';
import { serveInWorker, threadedGlueLoader } from '../../sdk-ts/src/host/index.js';
serveInWorker(glue, threadedGlueLoader());
