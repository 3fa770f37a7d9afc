// The dedicated-worker host (cdn/build.mjs bundles it as kwaainet-worker.js). Logic: sdk-ts/src/host.
import * as glue from 'kwaainet-wasm-glue';
import { serveInWorker } from '../../sdk-ts/src/host/index.js';
serveInWorker(glue);
