/**
 * A page generates through the swarm: the model's embedding and output head run here, in
 * a worker of the serving module (`WasmSwarmClient`: the engine's `SwarmSession`, with the
 * route planner, bans, failover and history replay a native client has), and every block
 * runs on span servers — native nodes and other pages — over `/kwaainet/inference/1.0.0`
 * streams that the page's P2P node opens (through its relay's circuit for pages, directly
 * over WebRTC-direct or WebSocket for nodes that listen on them).
 *
 * The engine's client is synchronous, so the worker blocks on shared memory while the page
 * moves its frames (host/link-bridge.ts): this needs a cross-origin-isolated page.
 * `KwaaiNet` uses it for `route: 'swarm'` (and `'auto'`) when it has a network; it can also be
 * used alone:
 *
 * ```ts
 * const swarm = await PageSwarm.start(net, { modelUrl: '/models/model.gguf', directory: nodeUrl });
 * const r = await swarm.generate({ prompt: 'The capital of France is', max_tokens: 16 }, { onChunk: (t) => out.append(t) });
 * console.log(r.text, r.swarm.route);
 * ```
 *
 * The servers come from the swarm's directory: a node's `/api/v1/state` (`models`, the
 * DHT's span records of the model as that node sees them).
 */

import { AbortError, InvalidArgumentError, KwaaiNetError, P2pError, UnsupportedError, abortErrorFrom, errorFromWire, throwIfAborted } from './errors.js';
import type { GenerateOptions, GenerationResult } from './engine.js';
import type { GenerateRequest } from './protocol.js';
import { answerLink, isLinkCall, type LinkAnswer, type LinkCall, type LinkFailure } from './host/link-bridge.js';
import type { SpanWorkerReply } from './host/span-worker.js';
import { startRequest } from './start-request.js';
import { MIB } from './resources.js';
import { loadServingWorker, packagedServing, type InferenceStreamLike, type ServeSpanOptions, type SpanService } from './serve.js';
import type { WasmStepResult, WasmSwarmReport, WasmSwarmServer } from './wasm-engine.js';
import type { WasmP2pNode } from './wasm-p2p.js';

/** Where a swarm generation went: the servers of its route and their blocks, the steps
 *  they answered, the failovers it went through and the hidden-state bytes it moved. */
export type SwarmReport = WasmSwarmReport;

export interface SwarmGenerationResult extends GenerationResult {
  swarm: SwarmReport;
}

export interface PageSwarmOptions {
  /** The GGUF file: its embedding, head, tokenizer and template load here (no block). */
  modelUrl: string | URL;
  /** Its SHA-256 (hex), checked; the model id the servers announce is derived from it. */
  sha256?: string;
  /** A node whose `/api/v1/state` lists the model's servers (default: this page's origin). */
  directory?: string | URL;
  /** Hidden-state codec: 'f32' (lossless, the default), 'f16', 'q8_0', 'blockwise8', 'auto'. */
  codec?: 'f32' | 'f16' | 'q8_0' | 'blockwise8' | 'auto';
  /** Most positions of one generation (default: 2048, or the model's context). */
  maxCtx?: number;
  /** The serve engine and the serving worker (default: the files the SDK ships). */
  engine?: ServeSpanOptions['engine'];
  workerUrl?: string | URL;
  workerIntegrity?: string;
  /** The model file must fit (MiB; default 2048) and the cache with it (default 4096). */
  maxMemoryMiB?: number;
  maxStorageMiB?: number;
  /** Opening a stream to a server, and one server's answer to a step (defaults 10 s, 60 s):
   *  past them the client fails over. */
  openTimeoutMs?: number;
  stepTimeoutMs?: number;
  /** How long loading may take (default 120 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

/** Streams open at once (a route has a few hops; failovers close the old ones). */
const MAX_LINKS = 64;
/** The directory's answer is refused past this size. */
const MAX_DIRECTORY_BYTES = 4 << 20;
/** A server's record is looked up for its addresses within this long. */
const RECORD_LOOKUP_MS = 5_000;
/** The worker waits this much longer than the page's own limits before it gives up. */
const WORKER_SLACK_MS = 5_000;

const PEER_ID = /^[1-9A-HJ-NP-Za-km-z]{46,60}$/;

/** A server as the directory lists it. */
export interface DirectoryServer extends WasmSwarmServer {
  /** Reachable only through a relay (a page): reached through ours. */
  relayed: boolean;
}

/** The online servers of `modelId` in the directory at `directory` (a node's
 *  `/api/v1/state`), and whether they cover every block. */
export async function fetchSwarmServers(directory: string | URL, modelId: string, signal?: AbortSignal, timeoutMs = 10_000):
  Promise<{ servers: DirectoryServer[]; complete: boolean; blocks: number }> {
  const url = new URL('/api/v1/state', directory);
  const ctl = new AbortController();
  const onAbort = (): void => ctl.abort(signal?.reason);
  signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => ctl.abort(new P2pError(`${url.href}: no answer within ${timeoutMs} ms`, 'timeout')), timeoutMs);
  try {
    const res = await fetch(url, { signal: ctl.signal, cache: 'no-store' });
    if (!res.ok) throw new P2pError(`the swarm's directory ${url.href}: HTTP ${res.status}`, 'unreachable');
    const text = await res.text();
    if (text.length > MAX_DIRECTORY_BYTES) throw new P2pError(`the swarm's directory ${url.href}: too large`, 'query');
    const state = JSON.parse(text) as { models?: unknown };
    const reports = Array.isArray(state.models) ? state.models as unknown[] : [];
    const report = reports.find((r): r is Record<string, unknown> => typeof r === 'object' && r !== null && (r as { model?: unknown }).model === modelId);
    if (!report) {
      throw new P2pError(`the swarm's directory ${url.href} does not follow ${modelId} ` +
        `(it follows ${reports.map((r) => String((r as { model?: unknown }).model)).join(', ').slice(0, 300) || 'no model'})`, 'query');
    }
    const rows = Array.isArray(report.servers) ? report.servers as unknown[] : [];
    const servers: DirectoryServer[] = [];
    for (const r of rows.slice(0, 256)) {
      if (typeof r !== 'object' || r === null) continue;
      const s = r as Record<string, unknown>;
      if (s.state !== 'online' || typeof s.peer_id !== 'string' || !PEER_ID.test(s.peer_id)) continue;
      if (!Number.isInteger(s.start) || !Number.isInteger(s.end) || (s.start as number) >= (s.end as number)) continue;
      servers.push({
        id: s.peer_id, start: s.start as number, end: s.end as number, relayed: s.relayed === true,
        ...(typeof s.throughput === 'number' && s.throughput > 0 && { throughput: s.throughput }),
        ...(Number.isInteger(s.free_cache) && { freeCache: s.free_cache as number }),
      });
    }
    return { servers, complete: report.complete === true, blocks: Number(report.blocks) || 0 };
  } catch (err) {
    if (signal?.aborted) throw abortErrorFrom(signal);
    if (ctl.signal.aborted && ctl.signal.reason instanceof P2pError) throw ctl.signal.reason;
    if (err instanceof KwaaiNetError) throw err;
    throw new P2pError(`the swarm's directory ${url.href}: ${err instanceof Error ? err.message : String(err)}`, 'unreachable', { cause: err });
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener('abort', onAbort);
  }
}

/** Why this page cannot run the swarm client, or null when it can. */
export function swarmUnavailable(): string | null {
  if (typeof SharedArrayBuffer !== 'function' || (globalThis as { crossOriginIsolated?: boolean }).crossOriginIsolated !== true) {
    return 'the page is not cross-origin isolated (COOP same-origin and COEP require-corp): its worker cannot wait for the network';
  }
  if (typeof Worker !== 'function') return 'this context cannot start workers';
  return null;
}

/** One stream of the client, with its operations in order. */
interface Link {
  stream: InferenceStreamLike;
  /** The previous operation: the next one waits for it. */
  chain: Promise<unknown>;
  /** A send that failed: the next recv reports it. */
  failed: { kind: LinkFailure; message: string } | null;
}

function linkFailure(err: unknown): { kind: LinkFailure; message: string } {
  const kind = (err as { kind?: unknown } | null)?.kind;
  const message = err instanceof Error ? err.message : String(err);
  return { kind: kind === 'timeout' || kind === 'closed' || kind === 'protocol' ? kind : 'unreachable', message };
}

/** The page's swarm client: its worker, and the streams it asks for. */
export class PageSwarm {
  readonly modelId: string;
  readonly blocks: number;
  readonly maxCtx: number;
  private readonly links = new Map<number, Link>();
  private nextLink = 1;
  private seq = 0;
  /** The generation under way: its handlers. One at a time. */
  private current: {
    seq: number;
    abort: Int32Array;
    onReply: (m: SpanWorkerReply) => void;
  } | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private directoryRows = new Map<string, DirectoryServer>();
  /** The worker's call waiting for an answer (it blocks on it): at most one. */
  private readonly pending = new Set<LinkCall>();
  private closedWith: KwaaiNetError | null = null;

  private constructor(
    private readonly node: WasmP2pNode,
    private readonly worker: Worker,
    loaded: Extract<SpanWorkerReply, { type: 'client-loaded' }>,
    private readonly options: PageSwarmOptions,
    private readonly localSpan: () => SpanService | null,
  ) {
    this.modelId = loaded.modelId;
    this.blocks = loaded.blocks;
    this.maxCtx = loaded.maxCtx;
    worker.onmessage = (e: MessageEvent<SpanWorkerReply>) => this.onMessage(e.data);
    worker.onerror = (e) => this.fail(new KwaaiNetError('engine', `the swarm client's worker failed: ${e.message}`));
  }

  /** @internal Use `KwaaiNetwork.swarm()` (or `KwaaiNet` with `network`). Loads the model's
   *  embedding and head in a serving worker. */
  static async start(node: WasmP2pNode, options: PageSwarmOptions, localSpan: () => SpanService | null = () => null): Promise<PageSwarm> {
    const why = swarmUnavailable();
    if (why) throw new UnsupportedError(`generating through the swarm from this page: ${why}`);
    if (options === null || typeof options !== 'object' || options.modelUrl === undefined) {
      throw new InvalidArgumentError('modelUrl: the GGUF whose embedding and head run here');
    }
    if (options.sha256 !== undefined && !/^[0-9a-fA-F]{64}$/.test(options.sha256)) throw new InvalidArgumentError('sha256: 64 hexadecimal digits');
    if (options.maxCtx !== undefined && !(Number.isInteger(options.maxCtx) && options.maxCtx >= 1)) {
      throw new InvalidArgumentError(`maxCtx: a whole number >= 1, got ${options.maxCtx}`);
    }
    const packaged = options.engine === undefined || options.workerUrl === undefined ? packagedServing() : null;
    const base = typeof location === 'undefined' ? undefined : location.href;
    const { worker, loaded } = await loadServingWorker({
      engine: options.engine ?? packaged?.engine, packaged, workerUrl: options.workerUrl, workerIntegrity: options.workerIntegrity,
      timeoutMs: options.timeoutMs, signal: options.signal, what: 'the swarm client (embedding and head)', expect: 'client-loaded',
    }, (files) => ({
      type: 'client-load', ...files, modelUrl: new URL(options.modelUrl, base).href,
      maxBytes: (options.maxMemoryMiB ?? 2048) * MIB, maxStorageBytes: (options.maxStorageMiB ?? 4096) * MIB,
      ...(options.sha256 !== undefined && { sha256: options.sha256 }),
      ...(options.maxCtx !== undefined && { maxCtx: options.maxCtx }),
    }));
    return new PageSwarm(node, worker, loaded, options, localSpan);
  }

  /** Whether it was closed, or its worker failed (it cannot generate any more). */
  get closed(): boolean {
    return this.closedWith !== null;
  }

  /** The model's servers now (the directory's online ones) and whether they cover it. */
  async servers(signal?: AbortSignal): Promise<{ servers: DirectoryServer[]; complete: boolean }> {
    const directory = this.options.directory ?? (typeof location === 'undefined' ? undefined : location.origin);
    if (directory === undefined) throw new InvalidArgumentError('directory: a node URL whose /api/v1/state lists the model\'s servers');
    const r = await fetchSwarmServers(directory, this.modelId, signal);
    this.directoryRows = new Map(r.servers.map((s) => [s.id, s]));
    return r;
  }

  /**
   * One generation through the swarm, streamed by `onChunk` as the engine's are; one at a
   * time (a second waits for the first). Fails with a `P2pError` when no server covers some
   * blocks or failover gave up, and with an `AbortError` when `signal` aborts (the streams
   * then close, and the servers free the session).
   */
  generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<SwarmGenerationResult> {
    const run = this.queue.then(() => this.run(request, options));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async run(request: GenerateRequest, options: GenerateOptions): Promise<SwarmGenerationResult> {
    const { signal, onChunk } = options;
    if (this.closedWith) throw this.closedWith;
    throwIfAborted(signal);
    const { servers, complete } = await this.servers(signal);
    if (!complete) {
      const covered = new Array<boolean>(this.blocks).fill(false);
      for (const s of servers) for (let b = s.start; b < Math.min(s.end, this.blocks); b++) covered[b] = true;
      const first = covered.indexOf(false);
      throw new P2pError(`no server covers block ${first} of ${this.modelId} (${servers.length} server(s) online)`, 'unreachable');
    }
    const seq = ++this.seq;
    const abort = new Int32Array(new SharedArrayBuffer(4));
    const openMs = this.options.openTimeoutMs ?? 10_000;
    const stepMs = this.options.stepTimeoutMs ?? 60_000;
    const t0 = performance.now();
    options.onStart?.();
    return new Promise<SwarmGenerationResult>((resolve, reject) => {
      let text = '';
      let firstTokenAt: number | null = null;
      let last: WasmStepResult | null = null;
      let report: WasmSwarmReport | null = null;
      const onAbort = (): void => {
        Atomics.store(abort, 0, 1);
        this.closeLinks('aborted');
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      const finish = (err: Error | null): void => {
        signal?.removeEventListener('abort', onAbort);
        if (this.current?.seq === seq) this.current = null;
        this.closeLinks('the generation ended');
        if (err) {
          reject(signal?.aborted ? abortErrorFrom(signal) : err);
          return;
        }
        const now = performance.now();
        const decodeMs = now - (firstTokenAt ?? now);
        const after = Math.max(0, (last?.completion_tokens ?? 1) - 1);
        resolve({
          text,
          finishReason: last?.finish_reason ?? 'stop',
          usage: {
            promptTokens: last?.prompt_tokens ?? 0,
            completionTokens: last?.completion_tokens ?? 0,
            timeToFirstTokenMs: Math.max(0, (firstTokenAt ?? now) - t0),
            decodeTokensPerS: decodeMs > 0 ? (after * 1000) / decodeMs : 0,
          },
          swarm: report ?? { route: [], steps: 0, failovers: 0, replays: 0, bytesSent: 0, bytesReceived: 0, footprint: null, localBusyMs: 0 },
        });
      };
      this.current = {
        seq,
        abort,
        onReply: (m) => {
          if (!('seq' in m) || m.seq !== seq) return;
          if (m.type === 'client-step') {
            last = m.step;
            report = m.report ?? report;
            firstTokenAt ??= performance.now();
            if (m.step.text || m.step.tokens.length > 0) {
              text += m.step.text;
              onChunk?.(m.step.text, m.step.completion_tokens, Array.from(m.step.tokens));
            }
          } else if (m.type === 'client-done') {
            report = m.report ?? report;
            finish(null);
          } else if (m.type === 'client-error') {
            report = m.report ?? report;
            // A swarm failure (no server covers some blocks, failover gave up) is the network's.
            const e = errorFromWire(m.code, m.message, { reason: 'unreachable' });
            finish(signal?.aborted ? new AbortError() : e);
          }
        },
      };
      this.worker.postMessage({
        type: 'client-generate', seq, request: startRequest(request),
        route: { servers: servers.map(({ relayed: _r, ...s }) => s), codec: this.options.codec ?? 'f32', sessionId: crypto.randomUUID() },
        abort: abort.buffer, openWaitMs: openMs + RECORD_LOOKUP_MS + WORKER_SLACK_MS, recvWaitMs: stepMs + WORKER_SLACK_MS,
      });
    });
  }

  private onMessage(m: SpanWorkerReply): void {
    if (isLinkCall(m)) {
      this.onLink(m);
      return;
    }
    this.current?.onReply(m);
  }

  /** Where `server` may be dialed besides our relay's circuit: the WebRTC-direct and
   *  WebSocket addresses of its signed record, for a server the directory does not list as
   *  relayed (a native node). */
  private async addrsFor(server: string): Promise<string[]> {
    if (this.directoryRows.get(server)?.relayed !== false) return [];
    try {
      const lookup = this.node.getRecord(server);
      const rec = await Promise.race([lookup, new Promise<null>((r) => setTimeout(() => r(null), RECORD_LOOKUP_MS))]);
      const addrs = (rec as { addrs?: unknown } | null)?.addrs;
      if (!Array.isArray(addrs)) return [];
      return addrs
        .map((a) => (a as { addr?: unknown; relayed?: unknown }))
        .filter((a) => typeof a.addr === 'string' && a.relayed !== true && /\/(ws|wss|webrtc-direct)(\/|$)/.test(a.addr))
        .map((a) => a.addr as string)
        .slice(0, 8);
    } catch {
      return [];
    }
  }

  private answer(call: LinkCall, a: LinkAnswer): boolean {
    this.pending.delete(call);
    return call.op === 'open' || call.op === 'recv' ? answerLink(call.sab, call.call, a) : false;
  }

  private onLink(call: LinkCall): void {
    if (call.op === 'open' || call.op === 'recv') this.pending.add(call);
    const aborted = this.current === null || Atomics.load(this.current.abort, 0) !== 0;
    switch (call.op) {
      case 'open': {
        if (aborted) {
          this.answer(call, { error: 'closed', message: 'the generation was aborted' });
          return;
        }
        if (this.links.size >= MAX_LINKS) {
          this.answer(call, { error: 'unreachable', message: `${MAX_LINKS} streams already open` });
          return;
        }
        const openMs = this.options.openTimeoutMs ?? 10_000;
        // Blocks this page serves itself run on its own span server (no network).
        const own = call.server === this.node.peerId() ? this.localSpan()?.localStream() ?? null : null;
        const opened: Promise<InferenceStreamLike> = own ? Promise.resolve(own) : this.addrsFor(call.server)
          .then((addrs) => this.node.openInference(call.server, addrs, openMs));
        void opened
          .then((stream) => {
            if (this.current === null || Atomics.load(this.current.abort, 0) !== 0) {
              stream.close();
              stream.free();
              this.answer(call, { error: 'closed', message: 'the generation was aborted' });
              return;
            }
            const id = this.nextLink++;
            this.links.set(id, { stream, chain: Promise.resolve(), failed: null });
            if (!this.answer(call, { number: id })) this.dropLink(id);
          }, (err: unknown) => {
            const f = linkFailure(err);
            this.answer(call, { error: f.kind === 'timeout' ? 'timeout' : 'unreachable', message: f.message });
          });
        return;
      }
      case 'send': {
        const link = this.links.get(call.link);
        if (!link) return;
        const stepMs = this.options.stepTimeoutMs ?? 60_000;
        link.chain = link.chain.then(() => link.failed ? undefined : link.stream.send(call.frame, stepMs)).catch((err: unknown) => {
          link.failed ??= linkFailure(err);
        });
        return;
      }
      case 'recv': {
        const link = this.links.get(call.link);
        if (!link || aborted) {
          this.answer(call, { error: 'closed', message: aborted ? 'the generation was aborted' : `no link ${call.link}` });
          return;
        }
        const stepMs = this.options.stepTimeoutMs ?? 60_000;
        const read = link.chain.then(() => {
          if (link.failed) throw Object.assign(new Error(link.failed.message), { kind: link.failed.kind });
          return link.stream.recv(call.max, stepMs);
        });
        link.chain = read.catch(() => undefined);
        read.then(
          (frame) => this.answer(call, frame === null ? { value: null } : { bytes: frame }),
          (err: unknown) => {
            const f = linkFailure(err);
            this.answer(call, { error: f.kind, message: f.message });
          },
        );
        return;
      }
      case 'close':
        this.dropLink(call.link);
        return;
    }
  }

  private dropLink(id: number): void {
    const link = this.links.get(id);
    if (!link) return;
    this.links.delete(id);
    // After what is queued on it (a last send), so the server sees the frames in order.
    void link.chain.finally(() => {
      try {
        link.stream.close();
        link.stream.free();
      } catch {
        // already freed
      }
    });
  }

  /** Closes every stream, and answers the worker's waiting call at once (it must not wait
   *  for a stream that is going away). */
  private closeLinks(why: string): void {
    for (const call of [...this.pending]) this.answer(call, { error: 'closed', message: why });
    for (const id of [...this.links.keys()]) this.dropLink(id);
  }

  private fail(err: KwaaiNetError): void {
    this.closedWith ??= err;
    this.current?.onReply({ type: 'client-error', seq: this.current.seq, code: err.code, message: err.message, report: null });
    this.closeLinks('failed');
  }

  /** Ends the worker and every stream; the instance cannot be used after. */
  close(): void {
    this.fail(new KwaaiNetError('disposed', 'this swarm client was closed'));
    this.worker.terminate();
  }
}
