/**
 * A page serves a span of a model's blocks to the swarm (`KwaaiNetwork.serveSpan`): with the
 * visitor's consent and within `maxResources`, a serving worker of its own (host/span-worker.ts)
 * loads blocks `start..end` into the engine's span server — the same sessions, step
 * semantics, limits and codecs as a native node — the page's P2P node answers
 * `/kwaainet/inference/1.0.0` streams that reach it through its relay's circuit with it, and
 * the relay publishes the page's signed span record so clients find it.
 *
 * ```ts
 * const span = await net.serveSpan({
 *   modelUrl: '/models/model.gguf', start: 10, end: 20,
 *   engine: { moduleUrl: '/engine-serve/kwaainet_wasm.js' },
 *   consent: kwaainetConsent, maxResources: { cpu: 30, memory: 512 },
 * });
 * span.on('contribution', (c) => meter.textContent = `${c.tokens} tokens served`);
 * // later, or when the visitor withdraws consent / closes the tab (both automatic):
 * await span.withdraw();
 * ```
 *
 * Contribution is kind to the device (power.ts): on battery below `power.minBatteryLevel`
 * (default 50 %) or under critical compute pressure the span pauses — announced `draining`
 * so clients start nothing new here, its sessions ended so they replay elsewhere — and it
 * resumes when the device charges or the pressure eases.
 *
 * Withdrawal stops serving at once (open streams end, so clients fail over and replay their
 * history elsewhere), withdraws the record through the relay, and ends the worker. It
 * happens by itself when consent is withdrawn, when the page is hidden for good (`pagehide`),
 * when the network closes, and when the span server fails.
 */

import {
  AbortError, ConsentRequiredError, InvalidArgumentError, KwaaiNetError, abortErrorFrom, errorFromWire, throwIfAborted,
} from './errors.js';
import { packagedHostUrls } from './assets.js';
import { Emitter } from './events.js';
import { spawnWorker } from './spawn-worker.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { SpanWorkerReply, SpanWorkerRequest } from './host/span-worker.js';
import { DEFAULT_MAX_RESOURCES, DutyCycle, MIB, type MaxResources } from './resources.js';
import { DEVICE_CLASSES, guessDeviceClass, type DeviceClass } from './footprint.js';
import { PowerGovernor, checkedPolicy, type PauseReason, type PowerPolicy, type PowerState } from './power.js';
import type { WasmSpanStats } from './wasm-engine.js';
import type { WasmContributionTotals, WasmHostedSpan, WasmP2pNode } from './wasm-p2p.js';

/** What `serveSpan` needs to know about the visitor's consent (`ConsentManager` fits). */
export interface ConsentGate {
  readonly granted: boolean;
  onChange(listener: (decision: { granted: boolean } | null) => void): () => void;
}

export interface ServeSpanOptions {
  /** The GGUF file (fetched by the serving worker). */
  modelUrl: string | URL;
  /** Its SHA-256 (hex): checked when given; the span's model id is derived from it as a
   *  native node derives it (`name@hash-prefix`), so the page joins the node's swarm. */
  sha256?: string;
  /** Blocks `start..end`. */
  start: number;
  end: number;
  /** The engine module built with the span server (`FEATURES=serve OUT=dist/engine-serve`).
   *  Default: the one the SDK's build ships (`kwaainet_wasm_serve.js` next to it: the npm
   *  package, the CDN folder; `KwaaiNet.serveSpan` passes its `baseUrl`'s). */
  engine?: { moduleUrl: string | URL; wasmUrl?: string | URL; wasmIntegrity?: string };
  /** The serving worker's script, an ES module (default: `kwaainet-span-worker.js`, shipped
   *  like the engine; the SDK's own `host/span-worker.js` in a workspace build). */
  workerUrl?: string | URL;
  /** Its SRI hash: the script is then fetched, checked and run from a blob (as it is from
   *  another origin, since workers must be same-origin). */
  workerIntegrity?: string;
  /** The visitor's answer: serving needs a yes, and stops when it becomes a no. */
  consent: ConsentGate;
  /** cpu: the share of time the span server may be busy (%); memory: the model file must
   *  fit (MiB); storage: the model cache, this model included (MiB). Defaults: the SDK's. */
  maxResources?: Partial<MaxResources>;
  /** KV-cache positions all sessions together (default 2048), one session's most (the cache),
   *  sessions at once (8). */
  cacheTokens?: number;
  maxLength?: number;
  maxSessions?: number;
  /** The device's class, for the energy of the steps served (default: guessed). */
  deviceClass?: DeviceClass;
  /** The grid the device draws from (ISO 3166 alpha-2), when the site knows it; else the
   *  world's mean. */
  region?: string;
  /** When to pause for the device's sake (battery, compute pressure; power.ts), or `false`
   *  to serve whatever the battery says. Default: `DEFAULT_POWER_POLICY`. */
  power?: PowerPolicy | false;
  /** How long loading may take (default 120 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** What the page has served: the span server's own counters (the ones a node shows). */
export interface SpanContribution {
  /** `draining`: withdrawing, still answering the sessions open when it began; `paused`:
   *  not serving for the device's sake (`pausedBecause`), resumes by itself. */
  state: 'serving' | 'paused' | 'draining' | 'withdrawn';
  /** Why it is paused, when it is. */
  pausedBecause?: PauseReason;
  /** The device's power state, where the governor watches it. */
  power?: PowerState;
  model: string;
  start: number;
  end: number;
  sessions: number;
  steps: number;
  tokens: number;
  /** Tokens × blocks: the work done. */
  blockTokens: number;
  busySeconds: number;
  bytesIn: number;
  bytesOut: number;
  /** The energy of the steps served (µWh) and its carbon (µg CO2e): `modelled` by the
   *  engine's footprint crate in the serving worker, from each step's busy time and the
   *  device class's watts, at the grid's intensity. Each step's footprint also went back
   *  to its client. */
  energyUwh: number;
  carbonUg: number;
  method: 'modelled';
  deviceClass: DeviceClass;
  gridIntensityMgPerKwh: number;
  gridYear: number;
  /** Since this identity first served (earlier visits included, kept in this origin's
   *  localStorage under its peer id: a persistent identity keeps them across visits). */
  lifetime: PageContributionTotals;
  /** The latest record of `lifetime` signed with the page's key and carried by its relay
   *  in its hosted record, where the swarm's leaderboards read and verify it. */
  signed?: { record: string; signature: string };
  sessionsOpen: number;
  streamsOpen: number;
}

/** What a page has served since `fromMs`: its signed contribution record's figures. */
export type PageContributionTotals = WasmContributionTotals;

/** Where a page's totals are kept, per peer id. */
const TOTALS_KEY = 'kwaainet:contribution:';

/** How often the signed record is published again while serving. */
export const PUBLISH_CONTRIBUTION_MS = 30_000;

function loadTotals(peerId: string): PageContributionTotals | null {
  try {
    const raw = globalThis.localStorage?.getItem(TOTALS_KEY + peerId);
    if (!raw) return null;
    const t = JSON.parse(raw) as Record<string, unknown>;
    const keys = ['fromMs', 'servedTokens', 'blockTokens', 'busyMs', 'bytes', 'uptimeS', 'energyUwh', 'carbonUg', 'renewablePermille'];
    if (!keys.every((k) => Number.isSafeInteger(t[k]) && (t[k] as number) >= 0)) return null;
    return t as unknown as PageContributionTotals;
  } catch {
    return null; // no storage here, or not ours: start from zero
  }
}

export type WithdrawReason = 'withdrawn' | 'consent-withdrawn' | 'page-closed' | 'network-closed' | 'failed';

export interface SpanServiceEvents {
  /** At most once a second while serving, and once when withdrawn. */
  contribution: SpanContribution;
  withdrawn: { reason: WithdrawReason; error?: KwaaiNetError };
}

/** Local streams (`localStream`) are numbered from here: the P2P node's count from 0. */
const LOCAL_STREAMS = 0x4000_0000;

/** What a client's inference stream offers (`WasmInferenceStream`, or a local one). */
export interface InferenceStreamLike {
  readonly server: string;
  send(frame: Uint8Array, timeoutMs: number): Promise<void>;
  recv(maxPayload: number, timeoutMs: number): Promise<Uint8Array | null>;
  close(): void;
  free(): void;
}

/** Most frames in flight to the worker at once (one per open stream at most). */
const MAX_IN_FLIGHT = 64;

/** How long `withdraw()` answers the sessions open when it is called, by default: as long
 *  as a native node drains (native-relay's serving.rs). */
export const DRAIN_MS = 5_000;

/** How often a drain looks whether the open sessions have ended. */
const DRAIN_POLL_MS = 100;

/** A span this page serves. */
export class SpanService {
  readonly modelId: string;
  readonly start: number;
  readonly end: number;
  /** Tokens per second through one block, measured when it loaded. */
  readonly throughput: number;
  private readonly events = new Emitter<SpanServiceEvents>();
  private last: WasmSpanStats;
  private lastEmit = 0;
  private ended: WithdrawReason | null = null;
  /** The trailing `contribution` event, when one is due within the second. */
  private emitTimer: ReturnType<typeof setTimeout> | null = null;
  /** The drain under way (`withdraw()`), if one is. */
  private draining: Promise<void> | null = null;
  private readonly cleanups: (() => void)[] = [];
  private readonly pending = new Map<number, { resolve: (f: Uint8Array | null) => void; reject: (e: Error) => void }>();
  private seq = 0;
  private nextLocal = 0;
  /** The previous frame's work and the rest it owes: the next frame waits for it. */
  private gate: Promise<unknown> = Promise.resolve();
  /** Frames waiting or running. */
  private queued = 0;
  /** Why serving is paused (the device's battery or load), if it is. */
  private paused: PauseReason | null = null;
  private powerState: PowerState | null = null;
  /** What this identity served before this span (earlier visits), and since when. */
  private readonly before: PageContributionTotals | null;
  private readonly startedAt = Date.now();
  private readonly peerId: string;
  private signedRecord: { record: string; signature: string } | null = null;
  private lastPublish = -Infinity;
  private publishing = false;

  /** @internal Use `KwaaiNetwork.serveSpan`. */
  constructor(
    private readonly node: WasmP2pNode,
    private readonly worker: Worker,
    loaded: Extract<SpanWorkerReply, { type: 'loaded' }>,
    private readonly duty: DutyCycle,
    private readonly onEnd: () => void,
    private readonly deviceClass: DeviceClass,
    private readonly region: string | undefined = undefined,
  ) {
    this.peerId = node.peerId();
    this.before = loadTotals(this.peerId);
    this.modelId = loaded.modelId;
    this.start = loaded.stats.start;
    this.end = loaded.stats.end;
    this.throughput = loaded.throughput;
    this.last = loaded.stats;
    worker.onmessage = (e: MessageEvent<SpanWorkerReply>) => this.onReply(e.data);
    worker.onerror = (e) => void this.fail(`the serving worker failed: ${e.message}`);
  }

  on<K extends keyof SpanServiceEvents>(name: K, listener: (value: SpanServiceEvents[K]) => void): () => void {
    return this.events.on(name, listener);
  }

  /** Whether it still serves. */
  get serving(): boolean {
    return this.ended === null;
  }

  /** Why it stopped, once it has. */
  get withdrawnBecause(): WithdrawReason | null {
    return this.ended;
  }

  /** What it has served so far. */
  get contribution(): SpanContribution {
    const s = this.last;
    return {
      state: this.ended !== null ? 'withdrawn' : this.draining !== null ? 'draining' : this.paused !== null ? 'paused' : 'serving',
      ...(this.paused !== null && this.ended === null && { pausedBecause: this.paused }),
      ...(this.powerState !== null && { power: this.powerState }),
      model: this.modelId,
      start: this.start,
      end: this.end,
      sessions: s.sessions,
      steps: s.steps,
      tokens: s.tokens,
      blockTokens: s.blockTokens,
      busySeconds: s.busyUs / 1e6,
      bytesIn: s.bytesIn,
      bytesOut: s.bytesOut,
      energyUwh: s.energyUwh,
      carbonUg: s.carbonUg,
      method: 'modelled',
      deviceClass: this.deviceClass,
      gridIntensityMgPerKwh: s.intensityMgPerKwh,
      gridYear: s.gridYear,
      lifetime: this.lifetime(),
      ...(this.signedRecord !== null && { signed: this.signedRecord }),
      sessionsOpen: this.ended === null ? s.sessionsOpen : 0,
      streamsOpen: this.ended === null ? s.connections : 0,
    };
  }

  /** This identity's totals: earlier visits' and this span's. */
  private lifetime(): PageContributionTotals {
    const s = this.last;
    const b = this.before;
    const add = (k: keyof PageContributionTotals, v: number): number => ((b?.[k] as number | undefined) ?? 0) + v;
    return {
      fromMs: b?.fromMs ?? this.startedAt,
      servedTokens: add('servedTokens', s.tokens),
      blockTokens: add('blockTokens', s.blockTokens),
      // Rounded up: a record with served tokens and no busy time is refused as impossible.
      busyMs: add('busyMs', Math.ceil(s.busyUs / 1000)),
      bytes: add('bytes', s.bytesIn + s.bytesOut),
      uptimeS: add('uptimeS', Math.floor((Date.now() - this.startedAt) / 1000)),
      energyUwh: add('energyUwh', s.energyUwh),
      carbonUg: add('carbonUg', s.carbonUg),
      renewablePermille: s.renewablePermille,
      ...(this.region !== undefined && { region: this.region }),
    };
  }

  /** Keeps the totals in localStorage, and publishes the signed record when due (the first
   *  once there is work, then every `PUBLISH_CONTRIBUTION_MS`). */
  private account(publish = true): void {
    const totals = this.lifetime();
    try {
      globalThis.localStorage?.setItem(TOTALS_KEY + this.peerId, JSON.stringify(totals));
    } catch {
      // no storage (or full): the totals of this visit still count
    }
    const due = publish && performance.now() - this.lastPublish >= PUBLISH_CONTRIBUTION_MS;
    if (!due || this.publishing || totals.servedTokens === 0) return;
    this.publishing = true;
    this.lastPublish = performance.now();
    this.node.publishContribution(totals).then((signed) => {
      this.signedRecord = signed;
    }, () => {
      this.lastPublish = -Infinity; // no relay reservation yet, or refused: try again next time
    }).finally(() => {
      this.publishing = false;
    });
  }

  /** @internal Starts answering streams and announces the span. */
  async announce(): Promise<void> {
    this.node.serveInference((stream, frame) => this.onFrame(stream, frame), { maxStreams: MAX_IN_FLIGHT });
    await this.node.host([this.record(this.paused === null ? 'online' : 'draining')]);
  }

  /** @internal The device's power state changed (the governor's decision). Pausing ends
   *  the open sessions (their clients replay elsewhere) and announces the span `draining`
   *  so no new one starts here; resuming announces it `online` again. */
  async power(state: PowerState): Promise<void> {
    this.powerState = state;
    const was = this.paused;
    this.paused = state.allowed ? null : state.reason;
    if (this.ended !== null || this.draining !== null || (was === null) === (this.paused === null)) {
      this.events.emit('contribution', this.contribution);
      return;
    }
    if (this.paused !== null) this.post({ type: 'closeAll' });
    this.events.emit('contribution', this.contribution);
    await this.node.host([this.record(this.paused === null ? 'online' : 'draining')]).catch(() => undefined);
  }

  private record(state: 'online' | 'draining'): WasmHostedSpan {
    return { model: this.modelId, start: this.start, end: this.end, state, throughput: this.throughput, freeCache: this.last.freeCache };
  }

  /** @internal Runs `cleanup` when the span is withdrawn. */
  addCleanup(cleanup: () => void): void {
    this.cleanups.push(cleanup);
  }

  /** @internal A stream from this page's own swarm client (a generation of this page whose
   *  route runs some blocks here): the same sessions, limits and counters as a stream
   *  from a peer, without the network. `null` once the span no longer serves. */
  localStream(): InferenceStreamLike | null {
    if (this.ended !== null || this.draining !== null || this.paused !== null) return null;
    const id = LOCAL_STREAMS + (this.nextLocal++ % LOCAL_STREAMS);
    const replies: Promise<Uint8Array | null>[] = [];
    let open = true;
    return {
      server: 'local',
      send: async (frame) => {
        if (!open) throw Object.assign(new Error('the local span stream is closed'), { kind: 'closed' });
        // A copy: the worker takes the frame's buffer.
        replies.push(Promise.resolve(this.onFrame(id, frame.slice())));
      },
      recv: async () => {
        const next = replies.shift();
        if (!next) throw Object.assign(new Error('no request is waiting for a reply'), { kind: 'protocol' });
        const reply = await next;
        if (reply === null) open = false;
        return reply;
      },
      close: () => {
        if (!open) return;
        open = false;
        this.onFrame(id, null);
      },
      free: () => {},
    };
  }

  private onFrame(stream: number, frame: Uint8Array | null): Promise<Uint8Array | null> | null {
    if (frame === null) {
      if (this.ended === null) this.post({ type: 'close', stream });
      return null;
    }
    // Paused: every stream ends as it is used (its session is gone; the client fails over).
    if (this.ended !== null || this.paused !== null || this.queued >= MAX_IN_FLIGHT) return null;
    // One frame at a time (the worker runs one anyway), through the duty cycle: a step's
    // reply goes out as soon as it is computed, and the rest it owes to maxResources.cpu is
    // taken before the next frame starts, while the client works on the other hops.
    this.queued++;
    return new Promise<Uint8Array | null>((resolve, reject) => {
      const run = this.gate.then(() => {
        if (this.ended !== null) {
          resolve(null);
          return undefined;
        }
        return this.duty.run(() => new Promise<Uint8Array | null>((done, failed) => {
          const seq = this.seq++;
          this.pending.set(seq, { resolve: done, reject: failed });
          this.post({ type: 'frame', seq, stream, frame }, [frame.buffer]);
        }).then(
          (reply) => {
            resolve(reply);
            return reply;
          },
          (err: unknown) => {
            reject(err instanceof Error ? err : new Error(String(err)));
            throw err;
          },
        ));
      });
      this.gate = run.catch(() => undefined).finally(() => {
        this.queued--;
      });
    });
  }

  private post(m: SpanWorkerRequest, transfer: Transferable[] = []): void {
    this.worker.postMessage(m, transfer);
  }

  private onReply(m: SpanWorkerReply): void {
    if (m.type === 'stats') {
      this.last = m.stats;
      this.emitSoon();
      return;
    }
    if (m.type !== 'reply' && m.type !== 'reply-error') return;
    const p = this.pending.get(m.seq);
    this.pending.delete(m.seq);
    if (m.type === 'reply-error') {
      p?.reject(new Error(m.message));
      void this.fail(`the span server failed: ${m.message}`);
      return;
    }
    this.last = m.stats;
    p?.resolve(m.frame);
    this.emitSoon();
  }

  /** A `contribution` event now, or — within a second of the last — when that second is up:
   *  at most one a second, and never a last update left behind (a generation's final steps
   *  often come within the second of the one before). */
  private emitSoon(): void {
    if (this.ended !== null || this.emitTimer !== null) return;
    const wait = 1000 - (performance.now() - this.lastEmit);
    if (wait <= 0) {
      this.lastEmit = performance.now();
      this.account();
      this.events.emit('contribution', this.contribution);
      return;
    }
    this.emitTimer = setTimeout(() => {
      this.emitTimer = null;
      this.emitSoon();
    }, wait);
  }

  private async fail(message: string): Promise<void> {
    await this.stop('failed', new KwaaiNetError('engine', message));
  }

  /**
   * Stops serving and withdraws the span (idempotent). It drains first: the span is
   * announced `draining`, so clients start no new session on it, and the sessions open now
   * are answered until they end, for at most `drainMs` (default 5 s, as a native node;
   * 0: at once). Then, as when consent is withdrawn or the tab closes (which never wait),
   * it stops: streams still open end, and their clients replay elsewhere.
   */
  withdraw(options: { drainMs?: number } = {}): Promise<void> {
    if (this.ended !== null) return Promise.resolve();
    const drainMs = options.drainMs ?? DRAIN_MS;
    if (!(Number.isFinite(drainMs) && drainMs >= 0)) {
      return Promise.reject(new InvalidArgumentError(`drainMs: a number of milliseconds >= 0, got ${drainMs}`));
    }
    this.draining ??= this.drain(drainMs).then(() => this.stop('withdrawn'));
    return this.draining;
  }

  private async drain(ms: number): Promise<void> {
    if (ms === 0 || this.last.sessionsOpen === 0) return;
    this.events.emit('contribution', this.contribution);
    await this.node.host([this.record('draining')]).catch(() => undefined);
    const deadline = performance.now() + ms;
    while (this.ended === null && this.last.sessionsOpen > 0 && performance.now() < deadline) {
      await new Promise((r) => setTimeout(r, Math.min(DRAIN_POLL_MS, Math.max(1, deadline - performance.now()))));
    }
  }

  /** @internal */
  async stop(reason: WithdrawReason, error?: KwaaiNetError): Promise<void> {
    if (this.ended !== null) return;
    this.ended = reason;
    this.account(false);
    if (this.emitTimer !== null) clearTimeout(this.emitTimer);
    this.emitTimer = null;
    // No further step: open streams end now (clients fail over and replay elsewhere), new
    // ones are refused by protocol negotiation.
    try {
      this.node.stopServing();
    } catch {
      // the node is gone already
    }
    for (const [, p] of this.pending) p.resolve(null);
    this.pending.clear();
    this.post({ type: 'closeAll' });
    this.worker.terminate();
    for (const c of this.cleanups.splice(0)) c();
    this.onEnd();
    // The record goes too (the relay also drops it when our connection ends).
    if (reason !== 'network-closed') {
      await this.node.host([]).catch(() => undefined);
    }
    this.events.emit('contribution', this.contribution);
    this.events.emit('withdrawn', error ? { reason, error } : { reason });
    this.events.clear();
  }
}

function checkInt(name: string, v: number | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isInteger(v) || v < min || v > max) throw new InvalidArgumentError(`${name} must be an integer in [${min}, ${max}], got ${v}`);
  return v;
}

/** Where the serving worker and the serve engine are when the caller does not say: the files
 *  the build ships next to the SDK (packaged.ts: the npm package, the CDN's kwaainet.mjs),
 *  with their hashes where the build baked them. A workspace build ships no bundled worker:
 *  its own `host/span-worker.js` then. The script tag's bundle has no module URL of its own:
 *  there `KwaaiNet.serveSpan` passes its `baseUrl`'s files, or the page passes them. */
export function packagedServing(): { worker: string; workerIntegrity?: string; engine?: ServeSpanOptions['engine'] } {
  const urls = packagedHostUrls(null);
  if (urls && urls.spanWorker !== null && urls.serveGlue !== null && (urls.serveWasmIntegrity !== undefined || urls.workerIntegrity !== undefined)) {
    return {
      worker: urls.spanWorker,
      ...(urls.spanWorkerIntegrity !== undefined && { workerIntegrity: urls.spanWorkerIntegrity }),
      engine: {
        moduleUrl: urls.serveGlue,
        ...(urls.serveWasm !== null && { wasmUrl: urls.serveWasm }),
        ...(urls.serveWasmIntegrity !== undefined && { wasmIntegrity: urls.serveWasmIntegrity }),
      },
    };
  }
  try {
    return { worker: new URL('./host/span-worker.js', import.meta.url).href };
  } catch (err) {
    throw new InvalidArgumentError('workerUrl and engine are required here: this build of the SDK has no URL of its own to find the serving worker next to', { cause: err });
  }
}

function pageBase(): string | undefined {
  return typeof location === 'undefined' ? undefined : location.href;
}

/** The serving module's files as a worker's load message names them. */
interface ServingFiles {
  glueUrl: string;
  wasmUrl: string;
  wasmIntegrity?: string;
}

/**
 * @internal The serving worker, loaded: its script and the serve engine resolved (the
 * packaged files unless given), the worker started, `load(files)` sent, and its answer of
 * type `expect` awaited (a `load-error` rejects, as do `timeoutMs` (default 120 s) and
 * `signal`; the worker is then ended).
 */
export async function loadServingWorker<T extends 'loaded' | 'client-loaded'>(
  o: {
    engine: ServeSpanOptions['engine'];
    packaged: ReturnType<typeof packagedServing> | null;
    workerUrl?: string | URL | undefined;
    workerIntegrity?: string | undefined;
    timeoutMs?: number | undefined;
    signal?: AbortSignal | undefined;
    /** What is loading, for messages. */
    what: string;
    expect: T;
  },
  load: (files: ServingFiles) => SpanWorkerRequest,
): Promise<{ worker: Worker; loaded: Extract<SpanWorkerReply, { type: T }> }> {
  const engine = o.engine;
  if (!engine || engine.moduleUrl === undefined) {
    throw new InvalidArgumentError('engine.moduleUrl: the engine module built with the span server (dist/engine-serve/kwaainet_wasm.js)');
  }
  const base = pageBase();
  const glueUrl = new URL(engine.moduleUrl, base).href;
  const wasmUrl = new URL(engine.wasmUrl ?? 'kwaainet_wasm_bg.wasm', engine.wasmUrl === undefined ? glueUrl : base).href;
  const workerUrl = o.workerUrl === undefined ? (o.packaged as { worker: string }).worker : new URL(o.workerUrl, base).href;
  const workerIntegrity = o.workerUrl === undefined ? o.packaged?.workerIntegrity : o.workerIntegrity;
  const worker = await spawnWorker(workerUrl, workerIntegrity, { type: 'module', name: 'kwaainet-span' },
    (status) => new KwaaiNetError('engine', `fetching the serving worker's script: HTTP ${status}`));
  const timeoutMs = o.timeoutMs ?? 120_000;
  try {
    const loaded = await new Promise<Extract<SpanWorkerReply, { type: T }>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new KwaaiNetError('engine', `${o.what} did not load within ${timeoutMs} ms`)), timeoutMs);
      const onAbort = (): void => reject(abortErrorFrom(o.signal as AbortSignal));
      o.signal?.addEventListener('abort', onAbort, { once: true });
      const done = (): void => {
        clearTimeout(timer);
        o.signal?.removeEventListener('abort', onAbort);
      };
      worker.onerror = (e) => {
        done();
        reject(new KwaaiNetError('engine', `the serving worker failed to start: ${e.message}`));
      };
      worker.onmessage = (e: MessageEvent<SpanWorkerReply>) => {
        const m = e.data;
        if (m.type === o.expect) {
          done();
          resolve(m as Extract<SpanWorkerReply, { type: T }>);
        } else if (m.type === 'load-error') {
          done();
          reject(errorFromWire(m.code, `loading ${o.what}: ${m.message}`));
        }
      };
      worker.postMessage(load({ glueUrl, wasmUrl, ...(engine.wasmIntegrity !== undefined && { wasmIntegrity: engine.wasmIntegrity }) }));
    });
    return { worker, loaded };
  } catch (err) {
    worker.terminate();
    throw err;
  }
}

/** @internal `KwaaiNetwork.serveSpan`'s work, on the node it holds. */
export async function serveSpan(node: WasmP2pNode, options: ServeSpanOptions, onEnd: () => void): Promise<SpanService> {
  if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options must be an object');
  const start = checkInt('start', options.start, 0, 1 << 16) as number;
  const end = checkInt('end', options.end, 1, 1 << 16) as number;
  if (start === undefined || end === undefined || start >= end) throw new InvalidArgumentError(`blocks ${start}..${end}: start must be below end`);
  const cacheTokens = checkInt('cacheTokens', options.cacheTokens, 1, 1 << 16);
  const maxLength = checkInt('maxLength', options.maxLength, 1, 1 << 16);
  const maxSessions = checkInt('maxSessions', options.maxSessions, 1, 64);
  if (options.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(options.sha256)) {
    throw new InvalidArgumentError('sha256: 64 hexadecimal digits');
  }
  const packaged = options.engine === undefined || options.workerUrl === undefined ? packagedServing() : null;
  const engine = options.engine ?? packaged?.engine;
  const consent = options.consent;
  if (!consent || typeof consent.onChange !== 'function') throw new InvalidArgumentError('consent: the visitor\'s consent (a ConsentManager)');
  if (!consent.granted) throw new ConsentRequiredError('Serving a span to the network needs the visitor\'s consent');
  if (options.deviceClass !== undefined && !DEVICE_CLASSES.includes(options.deviceClass)) {
    throw new InvalidArgumentError(`deviceClass: one of ${DEVICE_CLASSES.join(', ')}, got ${String(options.deviceClass)}`);
  }
  if (options.region !== undefined && !/^[A-Z]{2}$/.test(options.region)) {
    throw new InvalidArgumentError(`region: a country's ISO 3166 alpha-2 code (e.g. 'FR'), got ${String(options.region)}`);
  }
  const deviceClass = options.deviceClass ?? guessDeviceClass();
  // The power policy is checked before anything loads.
  const powerPolicy = options.power === false ? null : checkedPolicy(options.power ?? {});
  const limits = { ...DEFAULT_MAX_RESOURCES, ...options.maxResources };
  const duty = new DutyCycle(limits.cpu);
  if (!Number.isFinite(limits.memory) || limits.memory < 64) throw new InvalidArgumentError(`maxResources.memory: ${limits.memory} MiB is below 64`);
  throwIfAborted(options.signal);

  const { worker, loaded } = await loadServingWorker({
    engine, packaged, workerUrl: options.workerUrl, workerIntegrity: options.workerIntegrity, timeoutMs: options.timeoutMs,
    signal: options.signal, what: `blocks ${start}..${end}`, expect: 'loaded',
  }, (files) => ({
    type: 'load', ...files, modelUrl: new URL(options.modelUrl, pageBase()).href,
    maxBytes: limits.memory * MIB, maxStorageBytes: limits.storage * MIB, start, end, deviceClass,
    ...(options.region !== undefined && { region: options.region }),
    ...(options.sha256 !== undefined && { sha256: options.sha256 }),
    ...(cacheTokens !== undefined && { cacheTokens }),
    ...(maxLength !== undefined && { maxLength }),
    ...(maxSessions !== undefined && { maxSessions }),
  }));
  // Consent may have changed while it loaded.
  if (!consent.granted) {
    worker.terminate();
    throw new ConsentRequiredError('Consent was withdrawn while the span loaded');
  }
  const service = new SpanService(node, worker, loaded, duty, onEnd, deviceClass, options.region);
  if (powerPolicy !== null) {
    try {
      const governor = await PowerGovernor.watch(powerPolicy);
      service.addCleanup(() => governor.close());
      service.addCleanup(governor.onChange((s) => void service.power(s)));
      await service.power(governor.state);
    } catch (err) {
      await service.stop('failed');
      throw err;
    }
  }
  service.addCleanup(consent.onChange((d) => {
    if (d?.granted !== true) void service.stop('consent-withdrawn');
  }));
  if (typeof addEventListener === 'function') {
    const onHide = (e: Event): void => {
      if (!(e as PageTransitionEvent).persisted) void service.stop('page-closed');
    };
    addEventListener('pagehide', onHide);
    service.addCleanup(() => removeEventListener('pagehide', onHide));
  }
  try {
    await service.announce();
  } catch (err) {
    await service.stop('failed');
    if (err instanceof KwaaiNetError) throw err;
    throw fromWasmP2pError(err);
  }
  if (options.signal?.aborted) {
    await service.stop('withdrawn');
    throw new AbortError();
  }
  return service;
}
