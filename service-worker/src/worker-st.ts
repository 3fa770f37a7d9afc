// The dedicated-worker host without the multi-threaded engine (cdn/build.mjs bundles it as
// kwaainet-worker-st.js; the npm package ships it as its kwaainet-worker.js): the package
// does not carry that engine, and this script then holds no dynamic import(), which a
// bundler's dev server (Vite) would rewrite into a static import a classic worker cannot run.
import * as glue from 'kwaainet-wasm-glue';
import { serveInWorker } from '../../sdk-ts/src/host/index.js';
serveInWorker(glue);
