/** Wiring for host tests: a LocalEngine on the engine double behind EngineHostHandler, a
 *  ProxyEngine talking to it over a real MessageChannel (structured clone included). */

import { MemoryModelStore } from '../src/cache.js';
import type { HostChoice } from '../src/host.js';
import { EngineHostHandler, type HandlerOptions } from '../src/host/handler.js';
import { LocalEngine } from '../src/local-engine.js';
import { KwaaiNet, type KwaaiNetOptions, type Status } from '../src/kwaainet.js';
import { ProxyEngine, portTransport, type ProxyOptions } from '../src/proxy.js';
import { memoryConsentStorage } from '../src/consent.js';
import { engineDouble, fakeModel, type DoubleOptions, type DoubleStats } from './engine-double.js';
import { sha256 } from './server.js';

export const MODEL = fakeModel(64 * 1024, 3);
export const MODEL_SHA = sha256(MODEL);
export const MODEL_URL = 'https://models.test/double.gguf';

export const modelFetch: typeof fetch = async () => new Response(MODEL as Uint8Array<ArrayBuffer>, {
  headers: { 'content-length': String(MODEL.byteLength) },
});

// Node loads its fetch and WebCrypto stacks lazily, blocking for ~100-300 ms on first use:
// pay that here, not inside a test that measures liveness timeouts.
await (await modelFetch('warm-up')).arrayBuffer();
await crypto.subtle.digest('SHA-256', new Uint8Array(1));

export interface HostPair {
  local: LocalEngine;
  handler: EngineHostHandler;
  proxy: ProxyEngine;
  stats: DoubleStats;
  /** Makes the host deaf (as if the worker hung or was killed). */
  kill(): void;
  close(): void;
}

export function localEngine(double: DoubleOptions = {}, host: 'worker' | 'in-page' = 'worker'): { local: LocalEngine; stats: DoubleStats } {
  const { module, stats } = engineDouble(double);
  const local = new LocalEngine({
    host,
    loadModule: async () => {
      await module.default();
      return module;
    },
    store: new MemoryModelStore(),
    fetch: modelFetch,
    sliceMs: 5,
  });
  return { local, stats };
}

export function hostPair(options: { double?: DoubleOptions; handler?: HandlerOptions; proxy?: ProxyOptions } = {}): HostPair {
  const { local, stats } = localEngine(options.double);
  const handler = new EngineHostHandler(local, { onProtocolError: () => {}, ...options.handler });
  const channel = new MessageChannel();
  let alive = true;
  channel.port2.onmessage = (e: MessageEvent) => {
    // A dead host neither reads nor writes.
    if (alive) void handler.handle(e.data, { send: (m) => void (alive && channel.port2.postMessage(m)) }, 'page');
  };
  const proxy = new ProxyEngine(portTransport(channel.port1, 'worker'), { pingIntervalMs: 20, pingTimeoutMs: 200, ...options.proxy });
  return {
    local, handler, proxy, stats,
    kill: () => {
      alive = false;
      handler.close();
    },
    close: () => {
      alive = false;
      handler.close();
      channel.port1.close();
      channel.port2.close();
    },
  };
}

/** A KwaaiNet whose hosts are HostPairs (a new one per start: a restart is a new host). */
export function kwaaiWithHosts(options: KwaaiNetOptions = {}, pairOptions: Parameters<typeof hostPair>[0] = {}):
  { ai: KwaaiNet; pairs: HostPair[]; closeAll(): void } {
  const pairs: HostPair[] = [];
  const ai = new KwaaiNet({
    modelUrl: MODEL_URL,
    modelSha256: MODEL_SHA,
    baseUrl: 'https://cdn.test/v0/',
    consentStorage: memoryConsentStorage(),
    consentPrompt: async () => false,
    startHost: async (): Promise<HostChoice> => {
      const pair = hostPair(pairOptions);
      pairs.push(pair);
      return { engine: pair.proxy, host: 'worker', reason: 'test' };
    },
    ...options,
  });
  return { ai, pairs, closeAll: () => pairs.forEach((p) => p.close()) };
}

/** A page's KwaaiNet on a service-worker host that drives `local` (an EngineHostHandler over
 *  a MessageChannel), with every status it emits in `statuses`. `close` disposes it all. */
export function swPage(local: LocalEngine, pingTimeoutMs: number):
  { ai: KwaaiNet; statuses: Status[]; close(): Promise<void> } {
  const handler = new EngineHostHandler(local, { onProtocolError: () => {} });
  const channel = new MessageChannel();
  channel.port2.onmessage = (e: MessageEvent) => void handler.handle(e.data, { send: (m) => channel.port2.postMessage(m) }, 'page');
  const ai = new KwaaiNet({
    modelUrl: MODEL_URL, modelSha256: MODEL_SHA, baseUrl: 'https://cdn.test/v0/',
    consentStorage: memoryConsentStorage(), consentPrompt: async () => false,
    startHost: async (): Promise<HostChoice> => ({
      engine: new ProxyEngine(portTransport(channel.port1, 'service-worker'), { pingIntervalMs: 20, pingTimeoutMs }),
      host: 'service-worker',
      reason: 'WebGPU is available in the service worker',
    }),
  });
  const statuses: Status[] = [];
  ai.on('status', (st) => statuses.push(st));
  return {
    ai, statuses,
    close: async () => {
      await ai.dispose();
      handler.close();
      channel.port1.close();
      channel.port2.close();
    },
  };
}

export async function until(cond: () => boolean, ms = 2000): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 5));
  }
}
