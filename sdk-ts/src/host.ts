/**
 * Choosing and starting the engine host.
 *
 * 'auto': the service worker when one can be registered (a same-origin script URL in a
 * secure context) and WebGPU works inside it — the model then stays loaded across reloads
 * and tabs; otherwise a dedicated worker (CPU WASM); in-page only where workers are missing.
 * The service-worker host runs the WebGPU engine when it has an adapter (the CPU engine
 * otherwise, or when WebGPU fails to start there); the dedicated worker and the page run
 * the CPU engine unless an app asks for `engine: 'webgpu'` (the page can, the worker cannot).
 * The host, the backend and the reasons for both are in `engineInfo()` and the 'status' event.
 *
 * The worker is started from a blob: URL holding the worker script fetched with its SRI
 * hash whenever the build baked one in (and always when the bundle is on another origin,
 * as workers must be same-origin); the service worker (which must be same-origin) is used
 * only when the site serves one (`serviceWorkerUrl`).
 */

import { EngineCrashedError, UnsupportedError, toKwaaiNetError } from './errors.js';
import type { Engine } from './engine.js';
import { glueLoader, probeWebGpuAdapter, type ModuleSource } from './host/glue.js';
import { LocalEngine } from './local-engine.js';
import type { HostKind, HostStatus } from './protocol.js';
import { ProxyEngine, serviceWorkerTransport, workerTransport, type ProxyOptions } from './proxy.js';
import { sameOrigin, spawnWorker } from './spawn-worker.js';
import { isRecord } from './validate.js';
import type { WasmEngineModule } from './wasm-engine.js';

export type HostPreference = 'auto' | HostKind;

export interface HostUrls {
  /** Classic-script worker bundle (kwaainet-worker.js). */
  worker: string;
  workerIntegrity?: string;
  /** Same-origin service-worker script, or null for none. */
  serviceWorker: string | null;
  wasm: string;
  wasmIntegrity?: string;
  /** ES-module glue (kwaainet_wasm.js), for the in-page host. */
  glue: string;
  /** The WebGPU engine's .wasm, or null where the bundle has none. */
  webgpuWasm: string | null;
  webgpuWasmIntegrity?: string;
  /** Its ES-module glue, for the in-page host. */
  webgpuGlue: string;
  /** The multi-threaded CPU engine's glue and .wasm (the worker host, in a
   *  cross-origin-isolated page), or null where the bundle has none. */
  threadsGlue: string | null;
  threadsWasm: string | null;
  threadsWasmIntegrity?: string;
  /** The CPU engines built with relaxed SIMD (same glue as the plain ones), or null where
   *  the bundle has none. */
  relaxedWasm: string | null;
  relaxedWasmIntegrity?: string;
  threadsRelaxedWasm: string | null;
  threadsRelaxedWasmIntegrity?: string;
  /** Serving a span: the serving worker (an ES module) and the engine built with the span
   *  server, or null where the bundle has none. */
  spanWorker: string | null;
  spanWorkerIntegrity?: string;
  serveGlue: string | null;
  serveWasm: string | null;
  serveWasmIntegrity?: string;
}

export interface HostChoice {
  engine: Engine;
  host: HostKind;
  /** Why this host: shown by the demo, useful in bug reports. */
  reason: string;
}

export interface StartHostOptions extends ProxyOptions {
  /** How long a service worker may take to activate (default 15 s). */
  serviceWorkerTimeoutMs?: number;
  /** In-page host: the engine module, instead of importing `urls.glue`. */
  loadModule?: () => Promise<WasmEngineModule>;
  /** In-page host: the WebGPU engine module, instead of importing `urls.webgpuGlue`. */
  loadWebGpuModule?: () => Promise<WasmEngineModule>;
}


/** Why the service-worker host cannot be tried here, or null when it can. */
function serviceWorkerProblem(url: string | null): string | null {
  if (url === null) return 'no service-worker URL';
  const nav = globalThis.navigator as Navigator | undefined;
  if (nav === undefined || !('serviceWorker' in nav) || globalThis.isSecureContext !== true) {
    return 'service workers are not usable here (no navigator.serviceWorker, or not a secure context)';
  }
  if (!sameOrigin(url)) {
    return `service workers are not usable here: ${url} is on another origin (serve kwaainet-sw.js from this site and pass serviceWorkerUrl)`;
  }
  return null;
}

function timeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new EngineCrashedError(`${what} took longer than ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function activeRegistration(url: string, ms: number): Promise<ServiceWorkerRegistration> {
  const container = navigator.serviceWorker;
  const scope = new URL('./', new URL(url, location.href)).href;
  const registration = await container.register(url, { scope, updateViaCache: 'none' });
  if (registration.active) return registration;
  const worker = registration.installing ?? registration.waiting;
  if (!worker) throw new EngineCrashedError('the service worker neither installed nor activated');
  await timeout(new Promise<void>((resolve, reject) => {
    worker.addEventListener('statechange', () => {
      if (worker.state === 'activated') resolve();
      if (worker.state === 'redundant') reject(new EngineCrashedError('the service worker failed to install'));
    });
  }), ms, 'activating the service worker');
  return registration;
}

export async function startServiceWorkerHost(url: string, options: StartHostOptions = {}):
  Promise<{ engine: ProxyEngine; status: HostStatus }> {
  const ms = options.serviceWorkerTimeoutMs ?? 15_000;
  const registration = await activeRegistration(url, ms);
  const engine = new ProxyEngine(serviceWorkerTransport(registration, navigator.serviceWorker), options);
  try {
    return { engine, status: await timeout(engine.status(), ms, 'the service worker\'s first answer') };
  } catch (err) {
    await engine.dispose();
    throw err;
  }
}

export async function startWorkerHost(urls: HostUrls, options: StartHostOptions = {}): Promise<ProxyEngine> {
  const worker = await spawnWorker(urls.worker, urls.workerIntegrity, { name: 'kwaainet-engine' },
    (status) => new EngineCrashedError(`fetching the worker script: HTTP ${status}`));
  return new ProxyEngine(workerTransport(worker), options);
}

function isEngineModule(value: unknown): value is WasmEngineModule {
  return isRecord(value) && typeof value.default === 'function' && typeof value.engineVersion === 'function' &&
    typeof value.WasmEngine === 'function';
}

/** A module loader that imports the glue (once it is needed) and initialises it. */
function lazyGlue(url: string, load: (() => Promise<WasmEngineModule>) | undefined): (source: ModuleSource) => Promise<WasmEngineModule> {
  const importGlue = async (): Promise<WasmEngineModule> => {
    const mod: unknown = await import(/* webpackIgnore: true */ /* @vite-ignore */ url);
    if (!isEngineModule(mod)) throw new UnsupportedError(`${url} is not a KwaaiNet WASM engine module`);
    return mod;
  };
  let loader: ((source: ModuleSource) => Promise<WasmEngineModule>) | null = null;
  return async (source) => {
    if (!loader) loader = glueLoader(await (load ?? importGlue)());
    return loader(source);
  };
}

export function startInPageHost(urls: HostUrls, options: StartHostOptions = {}): LocalEngine {
  return new LocalEngine({
    host: 'in-page',
    loadModule: lazyGlue(urls.glue, options.loadModule),
    // Only when asked for (engine: 'webgpu'): WebGPU work on the page's thread competes with it.
    loadWebGpuModule: lazyGlue(urls.webgpuGlue, options.loadWebGpuModule),
    probeGpu: () => probeWebGpuAdapter(),
  });
}

/** Starts the preferred host, falling back as described above. */
export async function startHost(preference: HostPreference, urls: HostUrls, options: StartHostOptions = {}): Promise<HostChoice> {
  const notes: string[] = [];
  if (preference === 'auto' || preference === 'service-worker') {
    const problem = serviceWorkerProblem(urls.serviceWorker);
    if (problem === null && urls.serviceWorker !== null) {
      try {
        const { engine, status } = await startServiceWorkerHost(urls.serviceWorker, options);
        if (preference === 'service-worker') return { engine, host: 'service-worker', reason: 'requested' };
        if (status.gpuAvailable) return { engine, host: 'service-worker', reason: 'WebGPU is available in the service worker' };
        await engine.dispose();
        notes.push('no WebGPU adapter in the service worker');
      } catch (err) {
        if (preference === 'service-worker') throw err;
        notes.push(`service worker unavailable (${toKwaaiNetError(err).message})`);
      }
    } else if (preference === 'service-worker') {
      throw new UnsupportedError(`a service-worker host needs a same-origin serviceWorkerUrl in a secure context: ${problem ?? 'none'}`);
    } else {
      notes.push(problem ?? 'no service-worker URL');
    }
  }
  if ((preference === 'auto' || preference === 'worker') && typeof Worker === 'function') {
    const engine = await startWorkerHost(urls, options);
    return { engine, host: 'worker', reason: preference === 'worker' ? 'requested' : `dedicated worker: ${notes.join('; ')}` };
  }
  if (preference === 'worker') throw new UnsupportedError('Web Workers are not available here');
  return {
    engine: startInPageHost(urls, options),
    host: 'in-page',
    reason: preference === 'in-page' ? 'requested' : `in-page: no Web Workers (${notes.join('; ')})`,
  };
}
