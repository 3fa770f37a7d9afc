/**
 * The one-line embed:
 *
 * ```html
 * <script src="https://cdn.example/kwaainet/v0.1.0/distributed-ai.js"
 *   integrity="sha384-..." crossorigin="anonymous"
 *   data-services="compute,storage,identity,carbon" data-privacy-compliant="gdpr,ccpa"
 *   data-max-resources="cpu:20,memory:1024,storage:5000"
 *   data-model-url="/models/model.gguf" data-model-sha256="..."></script>
 * ```
 *
 * On load it reads its own `data-*` attributes, finds its base URL from
 * `document.currentScript` (the worker and .wasm live next to it), creates the instance,
 * exposes `window.KwaaiNet` (the class), `window.KwaaiNetwork` (the page's P2P node:
 * `KwaaiNetwork.fromCdn(baseUrl)`) and `window.kwaainet` (the instance; `data-global`
 * renames it), initialises it, and dispatches `kwaainet:ready` (or `kwaainet:error`) on
 * `document`, with `{ kwaainet }` (and `error`) as the event's detail. `window.kwaainet.ready`
 * is the same outcome as a promise, for code that runs after the event fired.
 *
 * Other attributes: data-model-sha256, data-host (auto | service-worker | worker | in-page),
 * data-engine (auto | webgpu | cpu),
 * data-service-worker (a same-origin SW script URL, or "none"), data-context-length,
 * data-load-model ("eager" default | "lazy"), data-auto-init ("false": create, do not
 * initialise).
 */

import { InvalidArgumentError, toKwaaiNetError, type KwaaiNetError } from './errors.js';
import type { HostPreference } from './host.js';
import type { EnginePreference } from './protocol.js';
import { KwaaiNet, type KwaaiNetOptions } from './kwaainet.js';
import { KwaaiNetwork } from './network.js';

export interface ScriptLike {
  readonly src: string;
  getAttribute(name: string): string | null;
}

export interface ScriptTagConfig {
  options: KwaaiNetOptions;
  globalName: string;
  autoInit: boolean;
}

const HOSTS: readonly HostPreference[] = ['auto', 'service-worker', 'worker', 'in-page'];
const ENGINES: readonly EnginePreference[] = ['auto', 'webgpu', 'cpu'];

/** Reads the tag's attributes into KwaaiNet options (validated by the constructor). */
export function parseScriptTag(script: ScriptLike, pageUrl: string): ScriptTagConfig {
  const attr = (name: string): string | undefined => {
    const v = script.getAttribute(`data-${name}`);
    return v === null ? undefined : v.trim();
  };
  if (!script.src) throw new InvalidArgumentError('the KwaaiNet script tag needs a src');
  const src = new URL(script.src, pageUrl);
  const options: KwaaiNetOptions = { baseUrl: new URL('./', src).href };
  const services = attr('services');
  if (services !== undefined) options.services = services;
  const privacy = attr('privacy-compliant');
  if (privacy !== undefined) options.privacyCompliance = privacy;
  const resources = attr('max-resources');
  if (resources !== undefined) options.maxResources = resources;
  const modelUrl = attr('model-url');
  if (modelUrl) options.modelUrl = new URL(modelUrl, pageUrl).href;
  const sha = attr('model-sha256');
  if (sha) options.modelSha256 = sha;
  const host = attr('host');
  if (host !== undefined) {
    if (!(HOSTS as readonly string[]).includes(host)) throw new InvalidArgumentError(`data-host: expected one of ${HOSTS.join(', ')}`);
    options.host = host as HostPreference;
  }
  const engine = attr('engine');
  if (engine !== undefined) {
    if (!(ENGINES as readonly string[]).includes(engine)) throw new InvalidArgumentError(`data-engine: expected one of ${ENGINES.join(', ')}`);
    options.engine = engine as EnginePreference;
  }
  const sw = attr('service-worker');
  if (sw !== undefined) options.serviceWorkerUrl = sw === 'none' || sw === '' ? null : new URL(sw, pageUrl).href;
  const ctx = attr('context-length');
  if (ctx !== undefined) {
    if (!/^\d{1,7}$/.test(ctx)) throw new InvalidArgumentError('data-context-length: expected a whole number');
    options.contextLength = Number(ctx);
  }
  const threads = attr('threads');
  if (threads !== undefined) {
    if (!/^\d{1,2}$/.test(threads)) throw new InvalidArgumentError('data-threads: expected a whole number');
    options.threads = Number(threads);
  }
  const load = attr('load-model');
  if (load !== undefined && load !== 'eager' && load !== 'lazy') throw new InvalidArgumentError('data-load-model: "eager" or "lazy"');
  if (load === 'lazy') options.loadModelOnInit = false;
  const globalName = attr('global') ?? 'kwaainet';
  if (!/^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/.test(globalName) || globalName === 'KwaaiNet') {
    throw new InvalidArgumentError('data-global: expected a JavaScript identifier other than KwaaiNet');
  }
  return { options, globalName, autoInit: attr('auto-init') !== 'false' };
}

type Instance = KwaaiNet & { ready: Promise<KwaaiNet> };

/** Finds the tag running this code (document.currentScript only exists while it runs). */
function findScript(doc: Document): HTMLScriptElement | null {
  const current = doc.currentScript;
  if (current instanceof HTMLScriptElement) return current;
  const all = doc.querySelectorAll<HTMLScriptElement>('script[src*="distributed-ai"]');
  return all[all.length - 1] ?? null;
}

/** Runs the embed: called once by the IIFE bundle as it loads. */
export function installFromScriptTag(): Instance | null {
  const win = globalThis as unknown as Window & Record<string, unknown>;
  const doc = win.document;
  win.KwaaiNet = KwaaiNet;
  win.KwaaiNetwork = KwaaiNetwork;
  const script = doc ? findScript(doc) : null;
  if (!doc || !script) return null; // bundled differently: the class alone is exposed
  const fail = (error: KwaaiNetError): void => {
    doc.dispatchEvent(new CustomEvent('kwaainet:error', { detail: { error } }));
  };
  let config: ScriptTagConfig;
  let instance: Instance;
  try {
    config = parseScriptTag(script, doc.baseURI);
    instance = Object.assign(new KwaaiNet(config.options), { ready: Promise.resolve<KwaaiNet>(null as never) });
  } catch (err) {
    const e = toKwaaiNetError(err, 'invalid-argument');
    console.error(`KwaaiNet: ${e.message}`);
    fail(e);
    return null;
  }
  win[config.globalName] = instance;
  const ready = config.autoInit ? instance.initialize() : Promise.resolve();
  instance.ready = ready.then(() => {
    doc.dispatchEvent(new CustomEvent('kwaainet:ready', { detail: { kwaainet: instance } }));
    return instance;
  }, (err: unknown) => {
    const e = toKwaaiNetError(err);
    fail(e);
    throw e;
  });
  instance.ready.catch(() => {}); // reported by the event; awaiting callers still see it
  return instance;
}
