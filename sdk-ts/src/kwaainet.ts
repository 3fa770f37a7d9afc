/**
 * `KwaaiNet`: the SDK's entry point. Starts an engine host (host.ts), loads the model with
 * progress, answers OpenAI-shaped chat requests, restarts a crashed host on the next
 * request, enforces `maxResources`, and gates contribution on consent.
 *
 * ```ts
 * const ai = new KwaaiNet({ modelUrl, modelSha256 }); // engine files: from the npm package (or pass baseUrl)
 * ai.on('progress', (p) => bar.value = p.fraction);
 * await ai.initialize();
 * for await (const chunk of await ai.chat.completions.create({ messages, stream: true }, { signal })) { ... }
 * ```
 *
 * With `endpoint` the same calls go to a node's OpenAI API instead (node-api.ts), with no
 * engine host and no model download; `route` in a request's options picks either.
 */

import { hostUrls, packagedHostUrls } from './assets.js';
import {
  ConsentManager, PRIVACY_FLAGS, SERVICES, type ConsentPrompt, type ConsentStorage, type PrivacyFlag, type Service,
} from './consent.js';
import type { Engine, GenerationResult } from './engine.js';
import {
  BackendLostError, DisposedError, EngineCrashedError, InvalidArgumentError, NotInitializedError, UnsupportedError, abortErrorFrom,
  throwIfAborted, toKwaaiNetError, type KwaaiNetError,
} from './errors.js';
import { Emitter } from './events.js';
import { DEVICE_CLASSES, PAGE_MODEL, guessDeviceClass, pageFootprint, type DeviceClass } from './footprint.js';
import { startHost, type HostChoice, type HostPreference, type HostUrls, type StartHostOptions } from './host.js';
import { randomId } from './local-engine.js';
import { NodeApi, type NodeModel } from './node-api.js';
import {
  ChunkStream, buildChunk, buildCompletion, buildTextCompletion, toGenerateRequest, toPromptRequest, type CompletionMeta,
} from './openai/chat.js';
import type {
  ChatCompletion, ChatCompletionChunk, ChatCompletionCreateParams, ChatCompletionCreateParamsNonStreaming,
  ChatCompletionCreateParamsStreaming, Completion, CompletionCreateParams, CompletionCreateParamsNonStreaming,
  CompletionCreateParamsStreaming, RequestOptions,
} from './openai/types.js';
import type {
  Backend, EngineInfo, EngineLimits, EnginePreference, GpuInfo, EngineSpec, GenerateRequest, GenerationUsage, HostKind, ModelSpec, Progress,
} from './protocol.js';
import { MAX_THREADS } from './protocol.js';
import { DutyCycle, MIB, parseMaxResources, type MaxResources } from './resources.js';
import type { KwaaiNetwork } from './network.js';
import type { ConsentReceipt } from './consent-record.js';
import { swarmUnavailable, type PageSwarm, type PageSwarmOptions, type SwarmReport } from './swarm.js';
import type { ServeSpanOptions, SpanContribution, SpanService } from './serve.js';
import { SHA256_HEX, isRecord } from './validate.js';

export interface KwaaiNetOptions {
  /** Services this site offers its visitors to contribute to (consent covers exactly these). */
  services?: readonly Service[] | string;
  privacyCompliance?: readonly PrivacyFlag[] | string;
  maxResources?: Partial<MaxResources> | string;
  /** The device's class for the environmental model (default: guessed from the browser). */
  deviceClass?: DeviceClass;
  /** GGUF model to load; without it `initialize()` starts the host only. */
  modelUrl?: string;
  /** Expected SHA-256 of the model (hex); strongly recommended. */
  modelSha256?: string;
  /** KV-cache length in tokens (default 2048). */
  contextLength?: number;
  host?: HostPreference;
  /** Which engine: 'auto' (default: WebGPU in the service-worker host when it has an
   *  adapter, else the CPU engine), 'cpu', or 'webgpu' (fails where it cannot run). */
  engine?: EnginePreference;
  /** Most threads for the CPU engine (default: the device's cores, at most 16). More than
   *  one needs the worker host and a cross-origin-isolated page (COOP `same-origin`, COEP
   *  `require-corp`); elsewhere it runs on one, and `engineInfo().threadsReason` says why.
   *  These are the visitor's own requests: contributed work is capped by `maxResources.cpu`. */
  threads?: number;
  /** Folder with the engine files (worker, service worker, wasm): a CDN or self-hosted
   *  copy of the CDN folder. Default: the files the npm package ships, wherever the app's
   *  bundler put them (or the CDN folder of kwaainet.mjs). The script tag sets it. */
  baseUrl?: string;
  /** Same-origin service-worker script; null disables the service-worker host. Default:
   *  `kwaainet-sw.js` next to the other engine files (used only when same-origin).
   *  `npx kwaainet-sw public/` copies it into an app's static folder (README "npm"). */
  serviceWorkerUrl?: string | null;
  /** Download the model during `initialize()` (default true; else on the first request). */
  loadModelOnInit?: boolean;
  /** Ask for contribution consent during `initialize()` (default true when `services` has any). */
  askConsentOnInit?: boolean;
  consentPrompt?: ConsentPrompt;
  consentStorage?: ConsentStorage;
  /** Liveness tuning for worker / service-worker hosts. */
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** Replaces host selection (tests, custom hosts). */
  startHost?: (preference: HostPreference, urls: HostUrls, options: StartHostOptions) => Promise<HostChoice>;
  /** A node's OpenAI-compatible API (`http://127.0.0.1:8080`; absolute, or relative to the
   *  page; a trailing `/v1` is accepted). Requests then go to the node by default (see
   *  `RequestOptions.route`); without `modelUrl` no engine host starts. */
  endpoint?: string;
  /** Sent to the node as `Authorization: Bearer <apiKey>`; needs `endpoint`. */
  apiKey?: string;
  /** The longest wait on the node: for its answer to start, then for each read of a stream
   *  (default 120 s). A non-streamed answer comes whole at the end, so it covers the whole
   *  generation. */
  endpointTimeoutMs?: number;
  /** The page's P2P node (connected): `route: 'swarm'` then generates through the swarm from
   *  this page — the model's embedding and head here, its blocks on span servers (native
   *  nodes, other pages) — when the page is cross-origin isolated. Elsewhere `'swarm'` asks
   *  the `endpoint` node, as without a network. */
  network?: KwaaiNetwork;
  /** The page's swarm client: where the model's servers are listed (a node's URL; default
   *  `endpoint`, else this page's origin), the hidden-state codec (default 'f32': lossless),
   *  its time limits, and the serve engine and serving worker (default: `baseUrl`'s). */
  swarm?: Pick<PageSwarmOptions, 'directory' | 'codec' | 'openTimeoutMs' | 'stepTimeoutMs' | 'engine' | 'workerUrl' | 'workerIntegrity'>;
  /** A node whose audit log records the visitor's consent: every decision and withdrawal is
   *  sent there as a record signed with the page's key (`KwaaiNetwork.recordConsent`; needs
   *  `network`, connected). Each result is a `consentRecorded` event. */
  consentNode?: string | URL;
}

export type Status =
  | { state: 'starting' }
  | { state: 'loading'; host: HostKind; reason: string }
  | {
    state: 'ready'; host: HostKind; reason: string; backend: Backend; backendReason: string; adapter: string | null;
    /** Threads the CPU engine runs on, and why that many. */
    threads: number; threadsReason: string;
    modelLoaded: boolean;
    /** The loaded engine's limits, and its WebGPU device's (null before a load / on the CPU). */
    limits: EngineLimits | null;
    gpu: GpuInfo | null;
  }
  | { state: 'crashed'; host: HostKind; error: KwaaiNetError }
  | { state: 'restarting'; host: HostKind }
  | { state: 'error'; error: KwaaiNetError }
  | { state: 'disposed' };

export interface ContributionEvent {
  /** 'idle': consent given, nothing served now; 'serving': a span is served (`served`);
   *  'paused': the span waits for the device (on battery below the policy's level, or
   *  under compute pressure: `served.pausedBecause`) and resumes by itself. */
  state: 'consent-needed' | 'declined' | 'idle' | 'serving' | 'paused';
  consent: boolean;
  services: Service[];
  cpuPercent: number;
  contributedMs: number;
  /** The span this page serves or served last: its server's own counters. */
  served?: SpanContribution;
}

export interface EnvironmentalImpactEvent {
  scope: 'local-inference' | 'contribution';
  /** CPU-seconds of this piece of work. */
  cpuSeconds: number;
  /** Its energy and carbon (footprint.ts: the engine's footprint model, `modelled` from
   *  busy time × the device class's watts, at the grid's intensity), in µWh and µg … */
  energyUwh: number;
  carbonUg: number;
  /** … and in Wh and g. */
  energyWh: number;
  co2Grams: number;
  /** Since this instance started. */
  totalEnergyUwh: number;
  totalCarbonUg: number;
  totalEnergyWh: number;
  totalCo2Grams: number;
  /** How the figures are obtained: always 'modelled' in a page (browsers read no power). */
  method: 'modelled';
  deviceClass: DeviceClass;
  gridRegion: string;
  gridIntensityMgPerKwh: number;
  /** The year of the grid data (the oldest of the countries behind a mean). */
  gridYear: number;
}

/** Where a request went (every request; `route: 'auto'` says here what it picked). */
export interface RouteEvent {
  /** 'local': this page's engine; 'node': a node's API, the whole model there; 'swarm':
   *  through the swarm, the blocks on span servers. */
  route: 'local' | 'node' | 'swarm';
  /** For 'swarm': where the embedding and head run — 'page' (this page, with `network`) or
   *  'node' (a node's API, `kwaainet start --api swarm`). */
  client?: 'page' | 'node';
  /** Why. */
  reason: string;
  /** The model asked for, if named. */
  model: string | null;
}

export interface KwaaiNetEvents {
  progress: Progress;
  status: Status;
  contribution: ContributionEvent;
  environmentalImpact: EnvironmentalImpactEvent;
  route: RouteEvent;
  /** After each generation through the swarm from this page: its route, failovers, bytes. */
  swarm: SwarmReport & { model: string };
  /** A consent decision sent to `consentNode`: what it recorded, or why it could not. */
  consentRecorded: { receipt: ConsentReceipt } | { error: KwaaiNetError };
}

/** Where a request runs: this page's engine, a node's API, or the page's swarm client. */
type Target = { via: 'local' } | { via: 'node'; node: NodeApi } | { via: 'page-swarm' };

/** How long a node's model list is trusted for routing. */
const NODE_MODELS_TTL_MS = 30_000;

/** The environmental model's figures for a laptop's busy core and the world's mean grid
 *  (footprint.ts's `PAGE_MODEL`, the engine's footprint crate's own; events use the
 *  device's class). */
export const WATTS_PER_BUSY_CORE = PAGE_MODEL.busyMw.laptop / 1000;
export const GRID_G_CO2_PER_KWH = PAGE_MODEL.world.intensityMgPerKwh / 1000;

/** `create(params, { signal })` as in openai-node; `params.signal` (deprecated) still works. */
export interface ChatCompletions {
  create(params: ChatCompletionCreateParamsStreaming, options?: RequestOptions): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(params: ChatCompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<ChatCompletion>;
  create(params: ChatCompletionCreateParams, options?: RequestOptions): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>>;
}

/** OpenAI's legacy Completions: a raw prompt, without the chat template. */
export interface Completions {
  create(params: CompletionCreateParamsStreaming, options?: RequestOptions): Promise<AsyncIterable<Completion>>;
  create(params: CompletionCreateParamsNonStreaming, options?: RequestOptions): Promise<Completion>;
  create(params: CompletionCreateParams, options?: RequestOptions): Promise<Completion | AsyncIterable<Completion>>;
}

/** The request's signal. Both the deprecated `params.signal` and openai-node's
 *  `options.signal` must keep aborting it, so a caller moving to the new form one call site
 *  at a time (or a wrapper adding its own timeout signal) never loses a cancellation. */
function requestSignal(fromParams: AbortSignal | undefined, fromOptions: AbortSignal | undefined): AbortSignal | undefined {
  if (!fromParams || fromParams === fromOptions) return fromOptions;
  if (!fromOptions) return fromParams;
  return AbortSignal.any([fromParams, fromOptions]);
}

function list<T extends string>(value: readonly T[] | string | undefined, allowed: readonly T[], what: string): T[] {
  const items = value === undefined ? [] : typeof value === 'string'
    ? value.split(',').map((s) => s.trim().toLowerCase()).filter((s) => s !== '') : [...value];
  for (const item of items) {
    if (!(allowed as readonly string[]).includes(item)) {
      throw new InvalidArgumentError(`${what}: unknown "${String(item).slice(0, 20)}" (${allowed.join(', ')})`);
    }
  }
  return [...new Set(items)] as T[];
}

export class KwaaiNet {
  readonly services: readonly Service[];
  readonly privacyCompliance: readonly PrivacyFlag[];
  readonly maxResources: Readonly<MaxResources>;
  /** The last counters of the span this page serves (serveSpan). */
  private served: SpanContribution | undefined;
  readonly consent: ConsentManager;
  readonly chat: { completions: ChatCompletions };
  readonly completions: Completions;

  private readonly options: KwaaiNetOptions;
  private readonly events = new Emitter<KwaaiNetEvents>();
  private readonly model: ModelSpec | null;
  private readonly urls: HostUrls | null;
  /** The node's API client, with `endpoint` (it holds the API key, in a private field). */
  private readonly node: NodeApi | null;
  /** Requests in flight, each with the detach of its listener on the caller's signal (a
   *  long-lived caller signal must not gain a listener per finished request). */
  private readonly active = new Map<AbortController, () => void>();
  private choice: HostChoice | null = null;
  private crashed: EngineCrashedError | null = null;
  private modelInfo: EngineInfo | null = null;
  private initPromise: Promise<void> | null = null;
  private hostPromise: Promise<Engine> | null = null;
  private restartPromise: Promise<Engine> | null = null;
  private loadPromise: Promise<EngineInfo> | null = null;
  private scheduler: DutyCycle | null = null;
  /** The page's swarm client, once a request needed it. */
  private swarmPromise: Promise<PageSwarm> | null = null;
  private disposed = false;
  private totalEnergyUwh = 0;
  private totalCarbonUg = 0;
  /** The device's class, for the environmental model (`deviceClass` option, else guessed). */
  private readonly deviceClass: DeviceClass;
  private readonly onPageHide = (): void => this.abortAll('the page was closed');

  constructor(options: KwaaiNetOptions = {}) {
    this.options = { ...options };
    delete this.options.apiKey; // only the node client keeps it
    if (options.endpoint === undefined && (options.apiKey !== undefined || options.endpointTimeoutMs !== undefined)) {
      throw new InvalidArgumentError('apiKey and endpointTimeoutMs are for a node: pass endpoint too');
    }
    this.node = options.endpoint === undefined ? null : new NodeApi({
      endpoint: options.endpoint,
      ...(options.apiKey !== undefined && { apiKey: options.apiKey }),
      ...(options.endpointTimeoutMs !== undefined && { timeoutMs: options.endpointTimeoutMs }),
    });
    this.services = list(options.services, SERVICES, 'services');
    if (options.deviceClass !== undefined && !DEVICE_CLASSES.includes(options.deviceClass)) {
      throw new InvalidArgumentError(`deviceClass: one of ${DEVICE_CLASSES.join(', ')}, got ${String(options.deviceClass)}`);
    }
    this.deviceClass = options.deviceClass ?? guessDeviceClass();
    this.privacyCompliance = list(options.privacyCompliance, PRIVACY_FLAGS, 'privacyCompliance');
    this.maxResources = Object.freeze(parseMaxResources(options.maxResources));
    const ctx = options.contextLength ?? 2048;
    if (!Number.isInteger(ctx) || ctx < 16 || ctx > 1 << 20) throw new InvalidArgumentError('contextLength: an integer in [16, 1048576]');
    if (options.engine !== undefined && !['auto', 'webgpu', 'cpu'].includes(options.engine)) {
      throw new InvalidArgumentError('engine: "auto", "webgpu" or "cpu"');
    }
    if (options.threads !== undefined && !(Number.isInteger(options.threads) && options.threads >= 1 && options.threads <= MAX_THREADS)) {
      throw new InvalidArgumentError(`threads: an integer in [1, ${MAX_THREADS}]`);
    }
    if (options.modelSha256 !== undefined && !SHA256_HEX.test(options.modelSha256.toLowerCase())) {
      throw new InvalidArgumentError('modelSha256: expected 64 hex digits');
    }
    this.model = options.modelUrl === undefined ? null : {
      url: new URL(options.modelUrl, (globalThis as { location?: Location }).location?.href).href,
      ...(options.modelSha256 !== undefined && { sha256: options.modelSha256.toLowerCase() }),
      maxCtx: ctx,
      memoryLimitBytes: this.maxResources.memory * MIB,
      storageLimitBytes: this.maxResources.storage * MIB,
    };
    // An explicit baseUrl (the script tag's folder, a CDN, self-hosting) wins; else the files
    // next to the SDK's module: the npm package's, as the app's bundler placed them.
    this.urls = options.baseUrl === undefined
      ? packagedHostUrls(options.serviceWorkerUrl)
      : hostUrls(new URL(options.baseUrl, (globalThis as { location?: Location }).location?.href).href, options.serviceWorkerUrl);
    this.consent = new ConsentManager({
      services: this.services,
      privacyCompliance: this.privacyCompliance,
      maxResources: this.maxResources,
      ...(options.consentPrompt && { prompt: options.consentPrompt }),
      ...(options.consentStorage && { storage: options.consentStorage }),
    });
    this.consent.onChange((d) => {
      this.emitContribution();
      if (d !== null) void this.sendConsent(d.granted);
    });
    this.chat = { completions: { create: this.create.bind(this) as ChatCompletions['create'] } };
    this.completions = { create: this.createText.bind(this) as Completions['create'] };
  }

  /** Subscribes to an event; returns the unsubscribe function. */
  on<K extends keyof KwaaiNetEvents>(name: K, listener: (value: KwaaiNetEvents[K]) => void): () => void {
    return this.events.on(name, listener);
  }

  /** Starts the engine host and (unless `loadModelOnInit: false`) loads the model. Safe to
   *  call more than once; a failed call can be retried. With an `endpoint` and no
   *  `modelUrl` there is no engine to start, and requests need no `initialize()`. */
  initialize(options: { signal?: AbortSignal } = {}): Promise<void> {
    if (this.disposed) return Promise.reject(new DisposedError());
    if (!this.initPromise) {
      const p = this.doInitialize(options.signal);
      this.initPromise = p;
      p.catch((err: unknown) => {
        if (this.initPromise === p) this.initPromise = null;
        this.events.emit('status', { state: 'error', error: toKwaaiNetError(err) });
      });
    }
    return this.initPromise;
  }

  private async doInitialize(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    globalThis.addEventListener?.('pagehide', this.onPageHide);
    const withEngine = !this.nodeOnly();
    if (withEngine) {
      this.events.emit('status', { state: 'starting' });
      await this.hostReady();
      void this.requestPersistence();
    }
    this.emitContribution();
    if (this.services.length > 0 && this.options.askConsentOnInit !== false && this.consent.decision === null) {
      void this.consent.ask().catch(() => {}); // not awaited: the model loads meanwhile
    }
    if (this.model && this.options.loadModelOnInit !== false) await this.loadModel(signal);
    if (withEngine) await this.emitReady();
  }

  /** An endpoint and no model: every request goes to the node, nothing runs here. */
  private nodeOnly(): boolean {
    return this.node !== null && this.model === null;
  }

  /** Why this page cannot be the swarm's client (null: it can). */
  private pageSwarmUnavailable(): string | null {
    if (!this.options.network) return 'no network (new KwaaiNet({ network }))';
    if (!this.model) return 'no modelUrl (its embedding and head would run here)';
    return swarmUnavailable();
  }

  /** Where this request goes, and the `route` event. */
  private async route(options: RequestOptions | undefined, model: unknown, signal: AbortSignal | undefined): Promise<Target> {
    const asked = options?.route ?? (this.node ? 'node' : 'local');
    const name = typeof model === 'string' && model !== '' ? model : null;
    const go = (route: RouteEvent['route'], reason: string, client?: 'page' | 'node'): Target => {
      this.events.emit('route', { route, reason, model: name, ...(client && { client }) });
      if (route === 'local') return { via: 'local' };
      return client === 'page' ? { via: 'page-swarm' } : { via: 'node', node: this.node as NodeApi };
    };
    const needNode = (): NodeApi => {
      if (!this.node) throw new InvalidArgumentError(`route "${asked}": this KwaaiNet has no endpoint (new KwaaiNet({ endpoint: 'http://…' }))`);
      return this.node;
    };
    const viaNodeSwarm = async (node: NodeApi): Promise<Target> => {
      const m = await this.nodeModel(node, name, signal);
      if (m.backend !== 'swarm') {
        throw new UnsupportedError(`route "swarm": the node at ${node.base.origin} runs ${m.id} whole, not through the swarm ` +
          '(start it with `kwaainet start --api swarm`, or use route "node")');
      }
      return go('swarm', `the node at ${node.base.origin} generates ${m.id} through the swarm (embedding and head there, blocks on peers)`, 'node');
    };
    const here = this.pageSwarmUnavailable();
    switch (asked) {
      case 'local':
        if (this.nodeOnly()) throw new NotInitializedError('route "local": no modelUrl was given (this KwaaiNet only has an endpoint)');
        return go('local', 'requested');
      case 'node':
        needNode();
        return go('node', 'requested');
      case 'swarm': {
        if (here === null) return go('swarm', 'requested: embedding and head in this page, the blocks on span servers', 'page');
        if (!this.node) {
          throw new UnsupportedError(`route "swarm": this page cannot generate through the swarm (${here}) and has no endpoint to ask`);
        }
        return viaNodeSwarm(this.node);
      }
      case 'auto': {
        if (this.model && this.modelInfo?.model) return go('local', 'the model is loaded in this page');
        const why = this.model ? 'the model is not loaded in this page (yet)' : 'this page has no model';
        if (here === null) return go('swarm', `${why}: embedding and head here, the blocks on span servers`, 'page');
        if (!this.node) return go('local', 'no node endpoint and no network: the model loads in this page');
        const m = await this.nodeModel(this.node, name, signal);
        return go(m.backend === 'swarm' ? 'swarm' : 'node', `${why}: the node at ${this.node.base.origin} runs ${m.id} ` +
          (m.backend === 'swarm' ? 'through the swarm' : 'whole'), m.backend === 'swarm' ? 'node' : undefined);
      }
      default:
        throw new InvalidArgumentError('route: "local", "node", "swarm" or "auto"');
    }
  }

  /** The page's swarm client, started on first use (the model's embedding and head). */
  private pageSwarm(signal: AbortSignal | undefined): Promise<PageSwarm> {
    const network = this.options.network;
    if (!network || !this.model) return Promise.reject(new UnsupportedError(`route "swarm" from this page: ${this.pageSwarmUnavailable()}`));
    let p = this.swarmPromise;
    if (!p) {
      const files = this.servingFiles({});
      const swarm = this.options.swarm ?? {};
      const directory = swarm.directory ?? this.node?.base.origin;
      p = network.swarm({
        modelUrl: this.model.url,
        ...(this.model.sha256 !== undefined && { sha256: this.model.sha256 }),
        ...files, ...swarm, ...(directory !== undefined && { directory }),
        maxCtx: this.model.maxCtx, maxMemoryMiB: this.maxResources.memory, maxStorageMiB: this.maxResources.storage,
        ...(signal && { signal }),
      });
      const started = p;
      this.swarmPromise = started;
      started.catch(() => {
        if (this.swarmPromise === started) this.swarmPromise = null;
      });
    }
    return p;
  }

  /** Runs a request on the page's swarm client, as a local engine (its report an event). */
  private async swarmEngine(signal: AbortSignal | undefined): Promise<Pick<Engine, 'generate'>> {
    let swarm = await this.pageSwarm(signal);
    if (swarm.closed) {
      // Its worker failed: a new one (the model comes from the cache).
      this.swarmPromise = null;
      swarm = await this.pageSwarm(signal);
    }
    return {
      generate: async (request, options) => {
        const r = await swarm.generate(request, options);
        this.events.emit('swarm', { ...r.swarm, model: swarm.modelId });
        return r;
      },
    };
  }

  private nodeModels: { at: number; list: Promise<NodeModel[]> } | null = null;

  /** The node's model named `name` (by id or alias), or its first; its list is kept 30 s. */
  private async nodeModel(node: NodeApi, name: string | null, signal: AbortSignal | undefined): Promise<NodeModel> {
    const now = performance.now();
    if (!this.nodeModels || now - this.nodeModels.at > NODE_MODELS_TTL_MS) {
      const list = node.models(signal ?? new AbortController().signal);
      this.nodeModels = { at: now, list };
      list.catch(() => {
        if (this.nodeModels?.list === list) this.nodeModels = null;
      });
    }
    const list = await this.nodeModels.list;
    const m = name === null ? list[0] : list.find((x) => x.id === name || x.aliases.includes(name));
    if (!m) {
      throw new InvalidArgumentError(name === null ? `the node at ${node.base.origin} offers no model` :
        `model "${name.slice(0, 100)}": the node at ${node.base.origin} does not offer it (${list.map((x) => x.id).join(', ').slice(0, 300)})`);
    }
    return m;
  }

  /** One request to the node: the params as the body (less the SDK's `signal`), the stream
   *  asked to end with a usage chunk as the in-page engine's does, aborted by the caller's
   *  signal, `dispose()` and pagehide. */
  private async viaNode<Whole, Piece>(node: NodeApi, path: string, params: { stream?: boolean | null; signal?: AbortSignal },
    signal: AbortSignal | undefined): Promise<Whole | AsyncIterable<Piece>> {
    if (this.disposed) throw new DisposedError();
    throwIfAborted(signal);
    const { signal: _signal, ...body } = params as Record<string, unknown> & { signal?: AbortSignal };
    const controller = this.track(signal);
    if (params.stream !== true) {
      try {
        return await node.json<Whole>(path, body, controller.signal);
      } finally {
        this.untrack(controller);
      }
    }
    body.stream_options ??= { include_usage: true };
    return node.stream<Piece>(path, body, controller.signal, () => this.untrack(controller));
  }

  /** 'ready', with the backend of the loaded model, or (none loaded yet) the one the host
   *  will try first. */
  private async emitReady(): Promise<void> {
    const c = this.choice;
    if (!c) return;
    const info = this.modelInfo ?? await c.engine.info().catch(() => null);
    if (this.choice !== c) return;
    this.events.emit('status', {
      state: 'ready', host: c.host, reason: c.reason,
      backend: info?.backend ?? 'cpu-wasm', backendReason: info?.backendReason ?? '', adapter: info?.adapter ?? null,
      threads: info?.threads ?? 1, threadsReason: info?.threadsReason ?? '',
      modelLoaded: this.modelInfo?.model != null,
      limits: info?.limits ?? null, gpu: info?.gpu ?? null,
    });
  }

  /** Starts the host once (shared by initialize, hasModel, deleteModel). */
  private hostReady(): Promise<Engine> {
    if (!this.hostPromise) {
      const p = this.startEngine();
      this.hostPromise = p;
      p.catch(() => {
        if (this.hostPromise === p) this.hostPromise = null;
      });
    }
    return this.hostPromise;
  }

  private async startEngine(): Promise<Engine> {
    if (!this.urls && !this.options.startHost) {
      throw new NotInitializedError('baseUrl is unknown: pass { baseUrl } (the folder holding kwaainet-worker.js)');
    }
    const urls = this.urls ?? hostUrls('https://invalid.invalid/', null);
    const options: StartHostOptions = {
      ...(this.options.pingIntervalMs !== undefined && { pingIntervalMs: this.options.pingIntervalMs }),
      ...(this.options.pingTimeoutMs !== undefined && { pingTimeoutMs: this.options.pingTimeoutMs }),
    };
    const preference = this.choice?.host ?? this.options.host ?? 'auto';
    const choice = await (this.options.startHost ?? startHost)(preference, urls, options);
    if (this.disposed) {
      await choice.engine.dispose();
      throw new DisposedError();
    }
    this.choice = choice;
    this.crashed = null;
    this.modelInfo = null;
    choice.engine.onCrash((err) => {
      if (this.choice !== choice) return;
      this.crashed = err instanceof EngineCrashedError ? err : new EngineCrashedError(err.message, { cause: err });
      this.modelInfo = null;
      this.events.emit('status', { state: 'crashed', host: choice.host, error: this.crashed });
    });
    this.events.emit('status', { state: 'loading', host: choice.host, reason: choice.reason });
    return choice.engine;
  }

  private engineSpec(): EngineSpec {
    const urls = this.urls ?? hostUrls('https://invalid.invalid/', null);
    return {
      wasmUrl: urls.wasm,
      ...(urls.wasmIntegrity !== undefined && { wasmIntegrity: urls.wasmIntegrity }),
      ...(urls.webgpuWasm !== null && { webgpuWasmUrl: urls.webgpuWasm }),
      ...(urls.webgpuWasmIntegrity !== undefined && { webgpuWasmIntegrity: urls.webgpuWasmIntegrity }),
      ...(urls.threadsGlue !== null && urls.threadsWasm !== null && { threadsGlueUrl: urls.threadsGlue, threadsWasmUrl: urls.threadsWasm }),
      ...(urls.threadsWasmIntegrity !== undefined && { threadsWasmIntegrity: urls.threadsWasmIntegrity }),
      ...(urls.relaxedWasm !== null && { relaxedWasmUrl: urls.relaxedWasm }),
      ...(urls.relaxedWasmIntegrity !== undefined && { relaxedWasmIntegrity: urls.relaxedWasmIntegrity }),
      ...(urls.threadsRelaxedWasm !== null && { threadsRelaxedWasmUrl: urls.threadsRelaxedWasm }),
      ...(urls.threadsRelaxedWasmIntegrity !== undefined && { threadsRelaxedWasmIntegrity: urls.threadsRelaxedWasmIntegrity }),
      ...(this.options.threads !== undefined && { threads: this.options.threads }),
      ...(this.options.engine !== undefined && { backend: this.options.engine }),
    };
  }

  private loadModel(signal?: AbortSignal): Promise<EngineInfo> {
    const model = this.model;
    const engine = this.choice?.engine;
    if (!model) return Promise.reject(new NotInitializedError('no modelUrl was given'));
    if (!engine) return Promise.reject(new NotInitializedError());
    // Concurrent callers share one load; each may still abort its own wait.
    if (!this.loadPromise) {
      const p = engine.load(model, this.engineSpec(), { onProgress: (pr) => this.events.emit('progress', pr) })
        .then((info) => {
          if (this.choice?.engine === engine) this.modelInfo = info;
          return info;
        })
        .finally(() => {
          if (this.loadPromise === p) this.loadPromise = null;
        });
      this.loadPromise = p;
    }
    const shared = this.loadPromise;
    if (!signal) return shared;
    return new Promise((resolve, reject) => {
      const onAbort = (): void => reject(abortErrorFrom(signal));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      shared.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  /** Replaces a crashed host with a fresh one of the same kind (concurrent callers share it). */
  private restart(): Promise<Engine> {
    this.restartPromise ??= (async () => {
      const host = this.choice?.host ?? 'worker';
      this.events.emit('status', { state: 'restarting', host });
      await this.choice?.engine.dispose().catch(() => {});
      const p = this.startEngine();
      this.hostPromise = p;
      return p;
    })().finally(() => {
      this.restartPromise = null;
    });
    return this.restartPromise;
  }

  /** An engine with the model loaded: initialises, restarts a crashed host, reloads. */
  private async engineReady(signal?: AbortSignal): Promise<Engine> {
    if (this.disposed) throw new DisposedError();
    await this.initialize(signal ? { signal } : {});
    // A host the browser stopped (an idle service worker, a closed worker) is found before
    // the request goes out: one ping round trip (a stopped service worker wakes with a new
    // instance id; a dead worker does not answer within pingTimeoutMs).
    const current = this.choice;
    if (!this.crashed && current && current.host !== 'in-page') await current.engine.ping().catch(() => {});
    if (this.crashed) await this.restart();
    const engine = this.choice?.engine;
    if (!engine) throw new NotInitializedError();
    if (!this.modelInfo?.model) {
      await this.loadModel(signal);
      await this.emitReady();
    }
    return engine;
  }

  private async create(params: ChatCompletionCreateParams, options?: RequestOptions):
    Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    const target = await this.route(options, isRecord(params) ? params.model : undefined, requestSignal(params?.signal, options?.signal));
    if (target.via === 'node') {
      // The node validates the rest, with its own limits.
      if (!isRecord(params) || !Array.isArray(params.messages)) throw new InvalidArgumentError('messages: expected an array');
      return this.viaNode<ChatCompletion, ChatCompletionChunk>(target.node, 'chat/completions', params, requestSignal(params.signal, options?.signal));
    }
    // Validated before anything starts: a bad request never waits for the model.
    const request = toGenerateRequest(params);
    const signal = requestSignal(params.signal, options?.signal);
    if (params.stream === true) {
      return this.runStream<ChatCompletionChunk>(target, params, signal, request, (meta) => buildChunk(meta, { role: 'assistant', content: '' }),
        (meta, text, ids) => buildChunk(meta, { content: text }, null, undefined, ids),
        (meta, r) => buildChunk(meta, {}, r.finishReason, r.usage));
    }
    return this.runOnce(target, params, signal, request, (meta, r, ids) => buildCompletion(meta, r.text, r.finishReason, r.usage, ids));
  }

  private async createText(params: CompletionCreateParams, options?: RequestOptions): Promise<Completion | AsyncIterable<Completion>> {
    const target = await this.route(options, isRecord(params) ? params.model : undefined, requestSignal(params?.signal, options?.signal));
    if (target.via === 'node') {
      if (!isRecord(params) || typeof params.prompt !== 'string') throw new InvalidArgumentError('prompt: expected a string');
      return this.viaNode<Completion, Completion>(target.node, 'completions', params, requestSignal(params.signal, options?.signal));
    }
    const request = toPromptRequest(params);
    const signal = requestSignal(params.signal, options?.signal);
    if (params.stream === true) {
      return this.runStream<Completion>(target, params, signal, request, null,
        (meta, text, ids) => buildTextCompletion(meta, text, null, undefined, ids),
        (meta, r) => buildTextCompletion(meta, '', r.finishReason, r.usage));
    }
    return this.runOnce(target, params, signal, request, (meta, r, ids) => buildTextCompletion(meta, r.text, r.finishReason, r.usage, ids));
  }

  /** The engine a request runs on: this page's, or the page's swarm client. */
  private engineFor(target: Target, signal: AbortSignal | undefined): Promise<Pick<Engine, 'generate'>> {
    return target.via === 'page-swarm' ? this.swarmEngine(signal) : this.engineReady(signal);
  }

  private async runOnce<T>(target: Target, params: { model?: string }, signal: AbortSignal | undefined, request: GenerateRequest,
    build: (meta: CompletionMeta, result: GenerationResult, ids: number[]) => T): Promise<T> {
    throwIfAborted(signal);
    const engine = await this.engineFor(target, signal);
    const controller = this.track(signal);
    try {
      const t0 = performance.now();
      const ids: number[] = [];
      const result = await engine.generate(request, { signal: controller.signal, onChunk: (_t, _n, tokens) => ids.push(...tokens) });
      if (target.via === 'local') this.recordImpact(performance.now() - t0);
      return build(this.meta(params), result, ids);
    } catch (err) {
      throw await this.failure(err, controller.signal);
    } finally {
      this.untrack(controller);
    }
  }

  private async runStream<T>(target: Target, params: { model?: string }, signal: AbortSignal | undefined, request: GenerateRequest,
    first: ((meta: CompletionMeta) => T) | null,
    piece: (meta: CompletionMeta, text: string, ids: number[]) => T,
    last: (meta: CompletionMeta, result: GenerationResult) => T): Promise<AsyncIterable<T>> {
    throwIfAborted(signal);
    const engine = await this.engineFor(target, signal);
    throwIfAborted(signal);
    const controller = this.track(signal);
    const meta = this.meta(params);
    const stream = new ChunkStream<T>(() => controller.abort(new Error('the stream was closed by its reader')));
    if (first) stream.push(first(meta));
    const t0 = performance.now();
    engine.generate(request, {
      signal: controller.signal,
      onChunk: (text, _n, ids) => stream.push(piece(meta, text, ids)),
    }).then((result) => {
      if (target.via === 'local') this.recordImpact(performance.now() - t0);
      stream.push(last(meta, result));
      stream.end();
    }, async (err: unknown) => stream.end(await this.failure(err, controller.signal)))
      .finally(() => this.untrack(controller));
    return stream;
  }

  private meta(params: { model?: string }): CompletionMeta {
    const m = this.modelInfo?.model;
    return {
      id: randomId('chatcmpl-'),
      created: Math.floor(Date.now() / 1000),
      model: params.model ?? m?.name ?? m?.url ?? 'kwaainet-local',
    };
  }

  /** One controller per request, aborted by the caller's signal, `dispose()` or pagehide. */
  private track(signal: AbortSignal | undefined): AbortController {
    const controller = new AbortController();
    let detach = (): void => {};
    if (signal) {
      const onAbort = (): void => controller.abort(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      detach = () => signal.removeEventListener('abort', onAbort);
    }
    this.active.set(controller, detach);
    return controller;
  }

  private untrack(controller: AbortController): void {
    this.active.get(controller)?.();
    this.active.delete(controller);
  }

  private requestError(err: unknown, signal: AbortSignal): KwaaiNetError {
    if (signal.aborted) return abortErrorFrom(signal);
    return toKwaaiNetError(err);
  }

  /** `requestError`, and when the host lost its WebGPU device (it then runs the CPU engine)
   *  the new engine info and a 'ready' status with the new backend, before the caller sees
   *  the (retriable) BackendLostError. */
  private async failure(err: unknown, signal: AbortSignal): Promise<KwaaiNetError> {
    const e = this.requestError(err, signal);
    const c = this.choice;
    if (e instanceof BackendLostError && c) {
      const info = await c.engine.info().catch(() => null);
      if (info && this.choice === c) {
        this.modelInfo = info;
        await this.emitReady();
      }
    }
    return e;
  }

  private abortAll(reason: string): void {
    for (const c of [...this.active.keys()]) c.abort(new Error(reason));
  }

  private recordImpact(ms: number): void {
    const f = pageFootprint(ms, this.deviceClass);
    this.totalEnergyUwh += f.energyUwh;
    this.totalCarbonUg += f.carbonUg;
    this.events.emit('environmentalImpact', {
      scope: 'local-inference',
      cpuSeconds: ms / 1000,
      energyUwh: f.energyUwh,
      carbonUg: f.carbonUg,
      energyWh: f.energyUwh / 1e6,
      co2Grams: f.carbonUg / 1e6,
      totalEnergyUwh: this.totalEnergyUwh,
      totalCarbonUg: this.totalCarbonUg,
      totalEnergyWh: this.totalEnergyUwh / 1e6,
      totalCo2Grams: this.totalCarbonUg / 1e6,
      method: f.method,
      deviceClass: f.deviceClass,
      gridRegion: f.gridRegion,
      gridIntensityMgPerKwh: f.gridIntensityMgPerKwh,
      gridYear: f.gridYear,
    });
  }

  private emitContribution(): void {
    const d = this.consent.decision;
    const consent = d?.granted === true;
    if (consent) this.scheduler ??= new DutyCycle(this.maxResources.cpu);
    else this.scheduler = null;
    const served = this.served;
    const serving = consent && (served?.state === 'serving' || served?.state === 'draining');
    const paused = consent && served?.state === 'paused';
    this.events.emit('contribution', {
      state: d === null ? 'consent-needed' : serving ? 'serving' : paused ? 'paused' : consent ? 'idle' : 'declined',
      consent,
      services: [...this.services],
      cpuPercent: this.maxResources.cpu,
      contributedMs: (this.scheduler?.busyMs ?? 0) + (served ? served.busySeconds * 1000 : 0),
      ...(served && { served }),
    });
  }

  /**
   * Serves blocks of a model to the swarm from this page through `network` (connected):
   * asks for consent first (unless decided), holds the span to this instance's
   * `maxResources`, withdraws it when consent is withdrawn, and reports what it served in
   * `contribution` events (`state: 'serving'`, `served`). See `KwaaiNetwork.serveSpan`.
   * `modelUrl` and `sha256` default to this instance's model; the serving worker and the
   * serve engine to the files next to the SDK (`baseUrl`'s: the script tag's CDN folder).
   */
  async serveSpan(
    network: KwaaiNetwork,
    options: Omit<ServeSpanOptions, 'consent' | 'maxResources' | 'modelUrl'> & { modelUrl?: string | URL },
  ): Promise<SpanService> {
    if (!this.services.includes('compute')) {
      throw new InvalidArgumentError('serving a span is contributing compute: add \'compute\' to services');
    }
    const modelUrl = options.modelUrl ?? this.model?.url;
    if (modelUrl === undefined) throw new InvalidArgumentError('modelUrl: this instance has no model; pass the GGUF to serve');
    const sha256 = options.sha256 ?? (options.modelUrl === undefined ? this.model?.sha256 : undefined);
    const files = this.servingFiles(options);
    await this.consent.ask(options.signal);
    this.consent.assertGranted();
    const span = await network.serveSpan({
      deviceClass: this.deviceClass,
      ...options, ...files, modelUrl, ...(sha256 !== undefined && { sha256 }), consent: this.consent, maxResources: this.maxResources,
    });
    const forward = (served: SpanContribution): void => {
      this.served = served;
      this.emitContribution();
    };
    span.on('contribution', forward);
    forward(span.contribution);
    return span;
  }

  /** Sends a decision to `consentNode` as a signed record: the services asked for map to
   *  purposes (`compute`, `storage`); analytics is never asked, so never granted. */
  private async sendConsent(granted: boolean): Promise<void> {
    const { consentNode, network } = this.options;
    if (consentNode === undefined || network === undefined || this.disposed) return;
    const purposes = {
      compute: granted && this.services.includes('compute'),
      storage: granted && this.services.includes('storage'),
      analytics: false,
    };
    try {
      const receipt = await network.recordConsent(consentNode, purposes);
      this.events.emit('consentRecorded', { receipt });
    } catch (e) {
      this.events.emit('consentRecorded', { error: toKwaaiNetError(e) });
    }
  }

  /** Sets the page's P2P node for `route: 'swarm'` from this page (the `network` option, for
   *  a network joined after the instance was made, as the script tag's is); `null` clears it.
   *  A swarm client started on the previous one is closed. */
  useNetwork(network: KwaaiNetwork | null): void {
    if ((this.options.network ?? null) === network) return;
    if (network === null) delete this.options.network;
    else this.options.network = network;
    const old = this.swarmPromise;
    this.swarmPromise = null;
    void old?.then((c) => c.close(), () => {});
  }

  /** The serving worker and serve engine of this instance's `baseUrl`, where `options` does
   *  not name its own (none: the SDK's defaults). */
  private servingFiles(options: Pick<ServeSpanOptions, 'workerUrl' | 'engine'>): Pick<ServeSpanOptions, 'workerUrl' | 'workerIntegrity' | 'engine'> {
    const u = this.urls;
    if (!u || u.spanWorker === null || u.serveGlue === null) return {};
    return {
      ...(options.workerUrl === undefined && {
        workerUrl: u.spanWorker, ...(u.spanWorkerIntegrity !== undefined && { workerIntegrity: u.spanWorkerIntegrity }),
      }),
      ...(options.engine === undefined && {
        engine: {
          moduleUrl: u.serveGlue, ...(u.serveWasm !== null && { wasmUrl: u.serveWasm }),
          ...(u.serveWasmIntegrity !== undefined && { wasmIntegrity: u.serveWasmIntegrity }),
        },
      }),
    };
  }

  /**
   * Asks for consent (if not decided) and returns the scheduler that contributed work must
   * run through: it holds CPU use to `maxResources.cpu`. Throws ConsentRequiredError when
   * the visitor declines. (A span served to the network goes through `serveSpan`.)
   */
  async startContributing(signal?: AbortSignal): Promise<DutyCycle> {
    if (this.services.length === 0) throw new InvalidArgumentError('no services were declared, so there is nothing to contribute');
    await this.consent.ask(signal);
    this.consent.assertGranted();
    this.emitContribution();
    if (!this.scheduler) this.scheduler = new DutyCycle(this.maxResources.cpu);
    return this.scheduler;
  }

  /** Host, backend and model details; null before a host started. */
  async engineInfo(): Promise<(EngineInfo & { reason: string }) | null> {
    const c = this.choice;
    if (!c || this.crashed) return null;
    const info = await c.engine.info();
    return info && { ...info, reason: c.reason };
  }

  /** Whether the model (default: this instance's) is in the persistent cache. */
  async hasModel(url?: string): Promise<boolean> {
    const target = url ?? this.model?.url;
    if (!target) throw new InvalidArgumentError('hasModel: no model URL');
    const engine = await this.engineOnly();
    return engine.hasModel(new URL(target, (globalThis as { location?: Location }).location?.href).href);
  }

  /** Deletes the model from the cache (and unloads it). */
  async deleteModel(url?: string): Promise<void> {
    const target = url ?? this.model?.url;
    if (!target) throw new InvalidArgumentError('deleteModel: no model URL');
    const engine = await this.engineOnly();
    const href = new URL(target, (globalThis as { location?: Location }).location?.href).href;
    await engine.deleteModel(href);
    if (this.modelInfo?.model?.url === href) this.modelInfo = null;
  }

  private async engineOnly(): Promise<Engine> {
    if (this.disposed) throw new DisposedError();
    if (this.crashed) await this.restart();
    return this.hostReady();
  }

  /** Asks the browser to keep the model cache through storage pressure (best effort). */
  private async requestPersistence(): Promise<boolean> {
    const storage = (globalThis.navigator as Navigator | undefined)?.storage;
    if (!storage?.persist) return false;
    try {
      return (await storage.persisted()) || (await storage.persist());
    } catch {
      return false;
    }
  }

  /** Aborts requests, stops the host (a shared service worker keeps running). */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    this.abortAll('disposed');
    globalThis.removeEventListener?.('pagehide', this.onPageHide);
    const engine = this.choice?.engine;
    this.choice = null;
    const swarm = this.swarmPromise;
    this.swarmPromise = null;
    void swarm?.then((c) => c.close(), () => {});
    await engine?.dispose();
    this.events.emit('status', { state: 'disposed' });
    this.events.clear();
  }
}

export type { GenerationUsage };
