/**
 * The service-worker host. The SW never intercepts fetches; pages talk to it with
 * `registration.active.postMessage` and it answers the sending client. The engine (and the
 * loaded model) live as long as the SW does, so every tab and every reload of the site
 * shares one loaded model.
 *
 * Each message is an ExtendableMessageEvent: the handler's promise goes to `waitUntil`, so
 * the browser keeps the SW alive while a request runs (and the page's pings, each an event
 * of their own, keep it alive between requests). When the browser kills it anyway, the
 * page sees a new instance id in the next pong and reloads the model.
 *
 * This host carries both engines: with a WebGPU adapter 'auto' loads the WebGPU one, and
 * falls back to the CPU one when it cannot start (see LocalEngine).
 */

import { LocalEngine } from '../local-engine.js';
import type { HostMessage } from '../protocol.js';
import type { WasmEngineModule } from '../wasm-engine.js';
import { glueLoader, probeWebGpuAdapter } from './glue.js';
import { EngineHostHandler } from './handler.js';

interface SwClient {
  id: string;
  postMessage(message: HostMessage): void;
}

interface ExtendableEventLike {
  waitUntil(promise: Promise<unknown>): void;
}

interface SwMessageEvent extends ExtendableEventLike {
  data: unknown;
  source: SwClient | { postMessage?: unknown } | null;
}

interface SwScope {
  addEventListener(type: 'message', listener: (event: SwMessageEvent) => void): void;
  addEventListener(type: 'install' | 'activate', listener: (event: ExtendableEventLike) => void): void;
  skipWaiting(): Promise<void>;
  clients: { get(id: string): Promise<unknown>; claim(): Promise<void> };
}

function isClient(source: SwMessageEvent['source']): source is SwClient {
  return source !== null && typeof (source as SwClient).id === 'string' && typeof source.postMessage === 'function';
}

/** `webgpuGlue`: the WebGPU engine's glue, or null when the bundle was built without it. */
export function serveInServiceWorker(glue: WasmEngineModule, webgpuGlue: WasmEngineModule | null = null): EngineHostHandler {
  const sw = globalThis as unknown as SwScope;
  const engine = new LocalEngine({
    host: 'service-worker',
    loadModule: glueLoader(glue),
    ...(webgpuGlue && { loadWebGpuModule: glueLoader(webgpuGlue) }),
    autoWebGpu: true,
    probeGpu: () => probeWebGpuAdapter(),
  });
  const handler = new EngineHostHandler(engine);
  // Test support, reachable only from the service worker's own context (DevTools, a test
  // driver): lose the WebGPU device as a driver reset would.
  (globalThis as { kwaainetDebug?: { loseDevice(): boolean } }).kwaainetDebug = { loseDevice: () => engine.debugLoseDevice() };
  // A new SDK version takes over at once; pages reconnect through their pings.
  sw.addEventListener('install', (event) => event.waitUntil(sw.skipWaiting()));
  sw.addEventListener('activate', (event) => event.waitUntil(sw.clients.claim()));
  sw.addEventListener('message', (event) => {
    const client = event.source;
    if (!isClient(client)) return; // only window/worker clients of this origin can talk to us
    const connection = {
      send: (m: HostMessage) => client.postMessage(m),
      alive: async () => (await sw.clients.get(client.id)) !== undefined,
    };
    event.waitUntil(handler.handle(event.data, connection, client.id));
  });
  return handler;
}
