// The service-worker host (cdn/build.mjs bundles it as kwaainet-sw.js). Logic: sdk-ts/src/host.
import * as glue from 'kwaainet-wasm-glue';
import { webgpuGlue } from 'kwaainet-webgpu-glue';
import { serveInServiceWorker } from '../../sdk-ts/src/host/index.js';
serveInServiceWorker(glue, webgpuGlue);
