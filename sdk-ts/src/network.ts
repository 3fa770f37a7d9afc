/**
 * `KwaaiNetwork`: the page's own node on the KwaaiNet P2P network (rust-libp2p compiled to
 * WebAssembly: the `dist/p2p/` module). It joins through a native node (`kwaainet start`)
 * over WebRTC-direct, with WebSocket as the fallback, looks records up in the DHT (as a
 * client: browsers never enter routing tables), holds a relay reservation on the node so
 * other pages can reach it, exchanges small messages with them through the node's relay
 * circuit, and reconnects with a bounded back-off when the node restarts.
 *
 * ```ts
 * const net = new KwaaiNetwork(); // the npm package's module (or { moduleUrl }, or KwaaiNetwork.fromCdn(baseUrl))
 * net.on('status', (s) => badge.textContent = s.status);
 * net.on('message', (m) => console.log(m.from, m.text()));
 * await net.connect(await fetchBootstrapAddrs(location.origin), { signal });
 * const record = await net.getRecord(net.bootstrapPeer!);
 * await net.send(otherPageId, 'hello');
 * ```
 *
 * Every call is bounded (`requestTimeoutMs`, an AbortSignal) and every failure is a typed
 * error: `P2pError` (with `reason`), `InvalidArgumentError`, `AbortError`, `DisposedError`.
 */

import { ASSETS, bakedIntegrity } from './assets.js';
import { packagedAssets, packagedWasmIntegrity } from './packaged.js';
import { fromWasmP2pError } from './wasm-errors.js';
import { DisposedError, InvalidArgumentError, P2pError, UnsupportedError, abortErrorFrom, throwIfAborted } from './errors.js';
import { Emitter } from './events.js';
import type { WasmP2pEvent, WasmP2pModule, WasmP2pNode } from './wasm-p2p.js';
import { serveSpan, type ServeSpanOptions, type SpanService } from './serve.js';
import { PageSwarm, type PageSwarmOptions } from './swarm.js';
import { recordConsent, type ConsentPurpose, type ConsentReceipt } from './consent-record.js';
import { eraseData, exportData, type DataErasure, type DataExport, type DataRightsOptions } from './data-rights.js';
import {
  confirmEmail, identityStatus, linkDid, linkEmail, loginPasskey, registerPasskey, signInRequest, signInWithDid,
  type DidSigner, type IdentityStatus, type PasskeyIdentity, type PasskeyOptions,
} from './passkey.js';
import { openVault, type PageVault } from './vault.js';
import { verifyAudit, verifyAuditEntry, type AuditCheckpoint, type AuditEntry, type AuditOptions, type AuditVerification } from './audit.js';
import { guardWebRtcHandlers } from './webrtc-guard.js';

/** Largest message payload (the `/kwaainet/msg/1.0.0` limit). */
export const MAX_MESSAGE_BYTES = 64 * 1024;
/** Bootstrap addresses accepted at most. */
export const MAX_BOOTSTRAP_ADDRS = 16;

export type NetworkStatus = 'idle' | 'connecting' | 'connected' | 'reconnecting' | 'offline' | 'closed';
export type NetworkTransport = 'webrtc-direct' | 'websocket' | 'relay' | 'unknown';

export interface NetworkStatusEvent {
  status: NetworkStatus;
  /** `connected`: how we reached the node, and at which address. */
  transport?: NetworkTransport;
  addr?: string;
  /** `connected`: time from dialing to the connection, when we dialed. */
  setupMs?: number;
  /** `reconnecting`: attempt number (from 1) and the wait before it. */
  attempt?: number;
  delayMs?: number;
  /** `offline`: why. */
  reason?: string;
}

export interface NetworkMessage {
  from: string;
  data: Uint8Array;
  /** The payload as UTF-8 text. */
  text(): string;
}

export interface NetworkPeerEvent {
  peer: string;
  addr?: string;
  transport?: NetworkTransport;
  /** Whether it is the node we joined through. */
  bootstrap: boolean;
}

export interface NetworkEvents {
  status: NetworkStatusEvent;
  /** A connection to a peer (the node, or another page through the relay) is up. */
  peerConnected: NetworkPeerEvent;
  peerDisconnected: NetworkPeerEvent;
  /** Other pages can reach us at this relayed address. */
  relay: { addr: string };
  message: NetworkMessage;
}

/** A node's signed DHT record (schema v1, verified by the module). */
export interface NodeRecord {
  v: number;
  peer_id: string;
  roles: string[];
  addrs: { addr: string; relayed: boolean }[];
  accelerator: string;
  version: string;
  region?: string | null;
  spans: { model: string; start: number; end: number }[];
  issued_at: number;
}

export interface NetworkOptions {
  /** URL of the P2P module's ES glue (`dist/p2p/kwaainet_wasm.js`). Default: the module
   *  the npm package ships (`kwaainet_p2p.js` next to the SDK, with its .wasm and hash). */
  moduleUrl?: string | URL;
  /** URL of its .wasm (default: `kwaainet_wasm_bg.wasm` next to the glue). */
  wasmUrl?: string | URL;
  /** SRI hash the .wasm must match (`sha384-...`); checked by `fetch`. */
  wasmIntegrity?: string;
  /** Give up on one address after this long and try the next (default 5 s). */
  dialTimeoutMs?: number;
  /** Reconnect attempts after the node goes away (default 20) … */
  reconnectAttempts?: number;
  /** … waiting 0.5 s, 1 s, 2 s, … up to this long between two (default 10 s). */
  maxBackoffMs?: number;
  /** Hold a relay reservation so other pages can message us (default true). */
  relayListen?: boolean;
  /** Time limit of one lookup or message (default 30 s). */
  requestTimeoutMs?: number;
  /** `session` (default): a new key, so a new did:key and peer id, every visit.
   *  `persistent`: the key is kept in this origin's IndexedDB, so the page keeps its
   *  did:key, and what nodes hold under it (consent records, audit entries, data) stays
   *  its own on the next visit; `forgetIdentity()` deletes it. A stable identifier lets
   *  nodes recognise the visitor: ask for it with consent. */
  identity?: 'session' | 'persistent';
}

export interface CallOptions {
  signal?: AbortSignal;
  /** Overrides `requestTimeoutMs` for this call. */
  timeoutMs?: number;
}

const PEER_ID = /^[1-9A-HJ-NP-Za-km-z]{46,60}$/;

function checkPeerId(peerId: unknown): string {
  if (typeof peerId !== 'string' || !PEER_ID.test(peerId)) {
    throw new InvalidArgumentError(`not a peer id: ${String(peerId).slice(0, 80)}`);
  }
  return peerId;
}

function checkMs(name: string, v: number | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined;
  if (!Number.isFinite(v) || v < min || v > max) {
    throw new InvalidArgumentError(`${name} must be between ${min} and ${max}, got ${v}`);
  }
  return Math.round(v);
}

/** The module's errors (a `code`: wasm-errors.ts) as typed errors. */
const fromModule = fromWasmP2pError;

/** Settles with `promise`, or rejects on timeout / abort (the underlying work is bounded
 *  by the module's own time limits). */
function bounded<T>(promise: Promise<T>, ms: number, what: string, signal?: AbortSignal): Promise<T> {
  throwIfAborted(signal);
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      done();
      reject(new P2pError(`${what}: no answer within ${ms} ms`, 'timeout'));
    }, ms);
    const onAbort = (): void => {
      done();
      reject(abortErrorFrom(signal as AbortSignal));
    };
    const done = (): void => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => { done(); resolve(v); },
      (e: unknown) => { done(); reject(fromModule(e)); },
    );
  });
}

/**
 * The P2P module next to the SDK (packaged.ts): null where the SDK has no module URL (the
 * IIFE bundle); throws `UnsupportedError` where the build is known to lack it.
 */
function packagedP2p(): Pick<NetworkOptions, 'moduleUrl' | 'wasmUrl' | 'wasmIntegrity'> | null {
  const files = packagedAssets();
  if (!files) return null;
  const baked = bakedIntegrity();
  const hashes = baked[ASSETS.worker] !== undefined ? baked : packagedWasmIntegrity();
  const integrity = hashes[ASSETS.p2pWasm];
  // A CDN build hashes every file it ships, a packed npm build every .wasm.
  if ((hashes[ASSETS.worker] !== undefined || hashes[ASSETS.wasm] !== undefined) && integrity === undefined) {
    throw new UnsupportedError('this build was made without the P2P module (dist/p2p/)');
  }
  return { moduleUrl: files.p2pGlue, wasmUrl: files.p2pWasm, ...(integrity !== undefined && { wasmIntegrity: integrity }) };
}

const modules = new Map<string, Promise<WasmP2pModule>>();

/** Loads (once per URL) and initializes the P2P module. */
function loadModule(moduleUrl: string, wasmUrl: string, integrity: string | undefined): Promise<WasmP2pModule> {
  const key = `${moduleUrl} ${wasmUrl} ${integrity ?? ''}`;
  let p = modules.get(key);
  if (!p) {
    p = (async () => {
      guardWebRtcHandlers();
      const mod = (await import(/* webpackIgnore: true */ /* @vite-ignore */ moduleUrl)) as WasmP2pModule;
      let input: URL | Response = new URL(wasmUrl);
      if (integrity !== undefined) {
        input = await fetch(input, { integrity }).catch((e: unknown) => {
          throw new P2pError(`cannot fetch or verify ${wasmUrl} (SRI ${integrity.slice(0, 20)}…)`, 'stopped', { cause: e });
        });
        if (!input.ok) throw new P2pError(`${wasmUrl}: HTTP ${input.status}`, 'stopped');
      }
      await mod.default({ module_or_path: input });
      return mod;
    })();
    p.catch(() => modules.delete(key));
    modules.set(key, p);
  }
  return p;
}

function isRecord(v: unknown): v is NodeRecord {
  if (typeof v !== 'object' || v === null) return false;
  const r = v as Record<string, unknown>;
  return typeof r.v === 'number' && typeof r.peer_id === 'string' && Array.isArray(r.roles) && Array.isArray(r.addrs);
}

export class KwaaiNetwork {
  private readonly emitter = new Emitter<NetworkEvents>();
  private readonly options: Required<Omit<NetworkOptions, 'wasmUrl' | 'moduleUrl' | 'wasmIntegrity'>> & {
    moduleUrl: string; wasmUrl: string; wasmIntegrity: string | undefined;
  };
  private node: WasmP2pNode | null = null;
  /** Swarm clients started on this node (closed with it). */
  private readonly swarms = new Set<PageSwarm>();
  private span: SpanService | null = null;
  /** A serveSpan call is under way (one span per page). */
  private spanStarting = false;
  private current: NetworkStatus = 'idle';
  private bootstrapId: string | null = null;

  constructor(options: NetworkOptions = {}) {
    if (options === null || typeof options !== 'object') throw new InvalidArgumentError('options must be an object');
    if (options.moduleUrl === undefined) {
      // The npm package's own P2P module; the other options still apply.
      const packaged = packagedP2p();
      if (!packaged) throw new InvalidArgumentError('moduleUrl is required here (no packaged P2P module: use KwaaiNetwork.fromCdn)');
      options = { ...options, ...packaged };
    }
    if (typeof options.moduleUrl !== 'string' && !(options.moduleUrl instanceof URL)) {
      throw new InvalidArgumentError('moduleUrl must be a URL');
    }
    const base = typeof location === 'undefined' ? undefined : location.href;
    const moduleUrl = new URL(options.moduleUrl, base).href;
    this.options = {
      moduleUrl,
      wasmUrl: new URL(options.wasmUrl ?? 'kwaainet_wasm_bg.wasm', options.wasmUrl === undefined ? moduleUrl : base).href,
      wasmIntegrity: options.wasmIntegrity,
      dialTimeoutMs: checkMs('dialTimeoutMs', options.dialTimeoutMs, 100, 60_000) ?? 5_000,
      reconnectAttempts: checkMs('reconnectAttempts', options.reconnectAttempts, 0, 1000) ?? 20,
      maxBackoffMs: checkMs('maxBackoffMs', options.maxBackoffMs, 100, 300_000) ?? 10_000,
      relayListen: options.relayListen ?? true,
      requestTimeoutMs: checkMs('requestTimeoutMs', options.requestTimeoutMs, 100, 300_000) ?? 30_000,
      identity: options.identity ?? 'session',
    };
    if (this.options.identity !== 'session' && this.options.identity !== 'persistent') {
      throw new InvalidArgumentError('identity must be \'session\' or \'persistent\'');
    }
  }

  /**
   * A network on the P2P module of a CDN folder (the one holding `distributed-ai.js`):
   * `kwaainet_p2p.js` and `kwaainet_p2p_bg.wasm`, the .wasm checked against the SRI hash
   * the bundle baked in. Throws `UnsupportedError` when the bundle was built without it.
   */
  static fromCdn(baseUrl: string | URL, options: Omit<NetworkOptions, 'moduleUrl' | 'wasmUrl' | 'wasmIntegrity'> = {}): KwaaiNetwork {
    const baked = bakedIntegrity();
    const integrity = baked[ASSETS.p2pWasm];
    if (baked[ASSETS.worker] !== undefined && integrity === undefined) {
      throw new UnsupportedError('this bundle was built without the P2P module (dist/p2p/)');
    }
    return new KwaaiNetwork({
      ...options,
      moduleUrl: new URL(ASSETS.p2pGlue, baseUrl),
      wasmUrl: new URL(ASSETS.p2pWasm, baseUrl),
      ...(integrity === undefined ? {} : { wasmIntegrity: integrity }),
    });
  }

  on<K extends keyof NetworkEvents>(name: K, listener: (value: NetworkEvents[K]) => void): () => void {
    return this.emitter.on(name, listener);
  }

  get status(): NetworkStatus {
    return this.current;
  }

  /** Our peer id (after `connect`). */
  get peerId(): string | null {
    return this.node?.peerId() ?? null;
  }

  /** The node we joined through (after `connect`). */
  get bootstrapPeer(): string | null {
    return this.bootstrapId;
  }

  private setStatus(ev: NetworkStatusEvent): void {
    this.current = ev.status;
    this.emitter.emit('status', ev);
  }

  private onEvent(ev: WasmP2pEvent): void {
    switch (ev.type) {
      case 'connected':
        if (ev.bootstrap) {
          this.setStatus({ status: 'connected', transport: ev.transport, addr: ev.addr, ...(ev.setupMs === null ? {} : { setupMs: ev.setupMs }) });
        }
        this.emitter.emit('peerConnected', { peer: ev.peer, addr: ev.addr, transport: ev.transport, bootstrap: ev.bootstrap });
        break;
      case 'disconnected':
        this.emitter.emit('peerDisconnected', { peer: ev.peer, bootstrap: ev.bootstrap });
        break;
      case 'reconnecting':
        this.setStatus({ status: 'reconnecting', attempt: ev.attempt, delayMs: ev.delayMs });
        break;
      case 'offline':
        this.setStatus({ status: 'offline', reason: ev.reason });
        break;
      case 'relay-ready':
        this.emitter.emit('relay', { addr: ev.addr });
        break;
      case 'message': {
        const data = ev.data;
        this.emitter.emit('message', { from: ev.from, data, text: () => new TextDecoder().decode(data) });
        break;
      }
    }
  }

  /**
   * Joins the network through the node at `bootstrap` (its multiaddrs, one peer, each
   * ending in `/p2p/<id>`; WebRTC-direct ones are tried first, then WebSocket). Resolves
   * once connected. Rejects with `P2pError('unreachable')` when every address fails.
   */
  async connect(bootstrap: readonly string[], opts: CallOptions = {}): Promise<{ peer: string; addr: string }> {
    if (this.current === 'closed') throw new DisposedError('This KwaaiNetwork was closed');
    if (this.node) throw new InvalidArgumentError('already connected (call close() first)');
    if (!Array.isArray(bootstrap) || bootstrap.length === 0 || bootstrap.length > MAX_BOOTSTRAP_ADDRS) {
      throw new InvalidArgumentError(`bootstrap: 1 to ${MAX_BOOTSTRAP_ADDRS} multiaddrs`);
    }
    for (const a of bootstrap) {
      if (typeof a !== 'string' || !a.startsWith('/') || a.length > 1024) {
        throw new InvalidArgumentError(`not a multiaddr: ${String(a).slice(0, 80)}`);
      }
    }
    const rank = (a: string): number => (a.includes('/webrtc-direct/') ? 0 : a.includes('/wss') || a.includes('/tls/') ? 1 : 2);
    const ordered = [...bootstrap].sort((a, b) => rank(a) - rank(b));
    throwIfAborted(opts.signal);
    this.setStatus({ status: 'connecting' });
    const o = this.options;
    const limit = opts.timeoutMs ?? o.dialTimeoutMs * ordered.length + 5_000;
    try {
      const mod = await bounded(loadModule(o.moduleUrl, o.wasmUrl, o.wasmIntegrity), o.requestTimeoutMs, 'loading the P2P module', opts.signal);
      const identity = o.identity === 'persistent'
        ? await bounded(mod.PageIdentity.load(), o.requestTimeoutMs, 'loading the page identity', opts.signal)
        : undefined;
      const node = mod.WasmP2pNode.start({
        bootstrap: ordered,
        dialTimeoutMs: o.dialTimeoutMs,
        relayListen: o.relayListen,
        reconnectAttempts: o.reconnectAttempts,
        maxBackoffMs: o.maxBackoffMs,
      }, (ev) => this.onEvent(ev), identity);
      this.node = node;
      const r = await bounded(node.connected(), limit, 'connecting to the node', opts.signal);
      this.bootstrapId = r.peer;
      return r;
    } catch (err) {
      this.release();
      if (!this.closed()) this.setStatus({ status: 'offline', reason: err instanceof Error ? err.message : String(err) });
      throw err instanceof Error && 'code' in err ? err : fromModule(err);
    }
  }

  private closed(): boolean {
    return this.current === 'closed';
  }

  private live(): WasmP2pNode {
    if (this.current === 'closed') throw new DisposedError('This KwaaiNetwork was closed');
    if (!this.node) throw new P2pError('not connected (call connect() first)', 'unreachable');
    return this.node;
  }

  /** Looks `peerId`'s signed node record up in the DHT; `null` when nobody holds it. */
  async getRecord(peerId: string, opts: CallOptions = {}): Promise<NodeRecord | null> {
    const node = this.live();
    const rec = await bounded(node.getRecord(checkPeerId(peerId)), opts.timeoutMs ?? this.options.requestTimeoutMs, 'DHT lookup', opts.signal);
    if (rec === null) return null;
    if (!isRecord(rec)) throw new P2pError('the module returned a malformed record', 'record');
    return rec;
  }

  /** Asks a connected peer (the node) for its record directly (`/kwaainet/info/1.0.0`). */
  async askInfo(peerId: string, opts: CallOptions = {}): Promise<NodeRecord> {
    const node = this.live();
    const rec = await bounded(node.askInfo(checkPeerId(peerId)), opts.timeoutMs ?? this.options.requestTimeoutMs, 'info request', opts.signal);
    if (!isRecord(rec)) throw new P2pError('the module returned a malformed record', 'record');
    return rec;
  }

  /**
   * Sends a message (at most `MAX_MESSAGE_BYTES`) to another page on the same node,
   * through its relay circuit. Resolves once the receiver acknowledged it, with the
   * round-trip time.
   */
  async send(peerId: string, data: Uint8Array | string, opts: CallOptions = {}): Promise<{ rttMs: number }> {
    const node = this.live();
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    if (!(bytes instanceof Uint8Array)) throw new InvalidArgumentError('data must be a Uint8Array or a string');
    if (bytes.byteLength > MAX_MESSAGE_BYTES) {
      throw new InvalidArgumentError(`message of ${bytes.byteLength} bytes exceeds ${MAX_MESSAGE_BYTES}`);
    }
    const rttMs = await bounded(node.send(checkPeerId(peerId), bytes), opts.timeoutMs ?? this.options.requestTimeoutMs, 'message', opts.signal);
    return { rttMs };
  }

  /**
   * Serves blocks `start..end` of a model to the swarm from this page (serve.ts): needs the
   * visitor's consent (`options.consent`) and stays within `options.maxResources`. Waits
   * for our relayed address (other peers reach us through it), loads the span in a serving
   * worker of its own, answers inference streams, and has the relay publish our signed span
   * record. One span per page at a time.
   */
  async serveSpan(options: ServeSpanOptions): Promise<SpanService> {
    const node = this.live();
    if (this.span?.serving || this.spanStarting) {
      throw new InvalidArgumentError('this page already serves a span (withdraw it first)');
    }
    this.spanStarting = true;
    try {
      return await this.startSpan(node, options);
    } finally {
      this.spanStarting = false;
    }
  }

  private async startSpan(node: WasmP2pNode, options: ServeSpanOptions): Promise<SpanService> {
    const deadline = performance.now() + (options?.timeoutMs ?? this.options.requestTimeoutMs);
    for (let i = 0; ; i++) {
      throwIfAborted(options?.signal);
      const st = await this.state();
      if (st.relayAddr !== null) break;
      if (performance.now() > deadline) {
        throw new P2pError('no relayed address: the node did not give this page a relay reservation (relayListen must be on)', 'unreachable');
      }
      await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** i, 500)));
    }
    let span: SpanService | null = null;
    span = await serveSpan(node, options, () => {
      if (span !== null && this.span === span) this.span = null;
    });
    if (this.node !== node) {
      await span.stop('network-closed');
      throw new DisposedError('This KwaaiNetwork was closed');
    }
    this.span = span;
    return span;
  }

  /**
   * A swarm client of this page (swarm.ts): the model's embedding and head load in a worker
   * of their own, and `generate()` runs its blocks on the swarm's span servers, through
   * inference streams this node opens. Needs a cross-origin-isolated page. Closed with the
   * network.
   */
  async swarm(options: PageSwarmOptions): Promise<PageSwarm> {
    const node = this.live();
    const swarm = await PageSwarm.start(node, options, () => (this.node === node ? this.span : null));
    if (this.node !== node) {
      swarm.close();
      throw new DisposedError('This KwaaiNetwork was closed');
    }
    for (const s of this.swarms) if (s.closed) this.swarms.delete(s);
    this.swarms.add(swarm);
    return swarm;
  }

  /**
   * Checks the audit log of the node `peerId` whose HTTP side is `nodeUrl` (audit.ts): its
   * checkpoint's signature by the node's key, that its entries give the root signed, and,
   * with `since`, that the log only grew since that checkpoint. Throws `P2pError` with
   * reason `record` on any mismatch. Needs no connection, only the P2P module.
   */
  async verifyAudit(nodeUrl: string | URL, peerId: string, opts: AuditOptions = {}): Promise<AuditVerification> {
    return verifyAudit(await this.module(opts.signal), nodeUrl, peerId, opts);
  }

  /** Checks entry `index` of a node's audit log by its inclusion proof. */
  async verifyAuditEntry(
    nodeUrl: string | URL, peerId: string, index: number, opts: Omit<AuditOptions, 'since' | 'maxEntries'> = {},
  ): Promise<{ entry: AuditEntry; checkpoint: AuditCheckpoint }> {
    return verifyAuditEntry(await this.module(opts.signal), nodeUrl, peerId, index, opts);
  }

  /**
   * Sends the visitor's decision per purpose to the node whose HTTP side is `nodeUrl`, as a
   * record signed with this page's key (consent-record.ts); the node logs it in its audit
   * log. Under Global Privacy Control, storage and analytics are recorded as refused.
   * Needs a connected network (the key is the node's).
   */
  async recordConsent(
    nodeUrl: string | URL, purposes: Partial<Record<ConsentPurpose, boolean>>, opts: CallOptions = {},
  ): Promise<ConsentReceipt> {
    return recordConsent(this.live(), nodeUrl, purposes, opts);
  }

  /**
   * Asks the node `peerId` whose HTTP side is `nodeUrl` for everything it holds about this
   * page's identity (GDPR Art. 15/20): its consent records, its audit entries with their
   * proofs, any blobs it owns there, under a manifest the node signs. Verified here before
   * it is returned (data-rights.ts); keep `bundle`, it verifies offline
   * (`kwaainet gdpr verify`). Needs a connected network (the key is the node's).
   */
  async exportData(nodeUrl: string | URL, peerId: string, opts: DataRightsOptions = {}): Promise<DataExport> {
    return exportData(this.live(), await this.module(opts.signal), nodeUrl, peerId, opts);
  }

  /**
   * Asks the node to erase this page's identity's data (GDPR Art. 17): its blobs there, and
   * the audit salt that links its entries to it. The node's signed receipt is verified
   * here and returned.
   */
  async eraseData(nodeUrl: string | URL, peerId: string, opts: DataRightsOptions = {}): Promise<DataErasure> {
    return eraseData(this.live(), await this.module(opts.signal), nodeUrl, peerId, opts);
  }

  /**
   * Checks that this browser's IndexedDB works as a KwaaiNet storage backend: the storage
   * conformance suite every native backend passes (ownership, sharing, refusals that lose
   * nothing, size limits, listing, deletion, tampered bytes caught by their CID), run in
   * the P2P module on a scratch database that is deleted afterwards. Rejects with the
   * failed case (IndexedDB missing, blocked, or out of quota). Needs only the P2P module.
   */
  async checkStorage(opts: { signal?: AbortSignal } = {}): Promise<void> {
    const mod = await this.module(opts.signal);
    const name = `kwaainet-selftest-${Math.random().toString(36).slice(2)}`;
    try {
      await mod.storageSelfTest(name);
    } catch (e) {
      throw fromWasmP2pError(e);
    }
  }

  /**
   * Deletes the page key kept by `identity: 'persistent'` from this origin's IndexedDB:
   * the next connection is a new identity, and what was sealed or recorded under the old
   * one can no longer be tied to this browser. (Erase the data at nodes first:
   * `eraseData`.) Whether there was a key.
   */
  async forgetIdentity(opts: { signal?: AbortSignal } = {}): Promise<boolean> {
    const mod = await this.module(opts.signal);
    try {
      return await mod.PageIdentity.forget();
    } catch (e) {
      throw fromWasmP2pError(e);
    }
  }

  /**
   * Makes a passkey (the browser asks the user) and links it to this page's identity at
   * the node `peerId` whose HTTP side is `nodeUrl`: the identity rises to level `passkey`
   * without changing its did:key, so what it owns stays its own. Returns the node's signed
   * link. Needs a connected network (the request is signed with the page's key).
   */
  async registerPasskey(nodeUrl: string | URL, peerId: string, opts: PasskeyOptions = {}): Promise<PasskeyIdentity> {
    return registerPasskey(this.live(), await this.module(opts.signal), nodeUrl, peerId, opts);
  }

  /** Signs in at a node with a passkey (from this or another browser): the identity it
   *  was linked to, with its level and permissions. With `opts.peerId` (the node's peer id,
   *  the network connected), this page's key is linked to that identity and acts for it at
   *  that node from then on (its data, its rights). */
  async loginPasskey(nodeUrl: string | URL, opts: PasskeyOptions & { peerId?: string } = {}): Promise<PasskeyIdentity> {
    const device = opts.peerId === undefined
      ? undefined
      : signInRequest(this.live(), await this.module(opts.signal), opts.peerId);
    return loginPasskey(nodeUrl, opts, device);
  }

  /**
   * The email step: the node `peerId` sends a verification token to `address` (its outbox
   * decides how mail leaves). The signed request names the address only by its SHA-256,
   * so the node's link statement carries no address. Answer with `confirmEmail`.
   */
  async linkEmail(nodeUrl: string | URL, peerId: string, address: string, opts: PasskeyOptions = {}): Promise<{ sentTo: string; expiresInS: number }> {
    return linkEmail(this.live(), await this.module(opts.signal), nodeUrl, peerId, address, opts);
  }

  /** Answers the email step with the token from the mail: the identity rises to `email`
   *  (storing sealed data at the node) unless it already stands higher. */
  async confirmEmail(nodeUrl: string | URL, token: string, opts: PasskeyOptions = {}): Promise<PasskeyIdentity> {
    return confirmEmail(nodeUrl, token, opts);
  }

  /**
   * Opens this identity's vault `name` (default `default`) in the origin's IndexedDB: data
   * sealed here by keys derived from the page's key, content addressed by the ciphertext's
   * CID; `push`/`pull` keep and fetch copies at a node (level `email` or above there), which
   * never sees the plaintext. Use `identity: 'persistent'` to keep it across visits.
   */
  async openVault(name = 'default', opts: { signal?: AbortSignal } = {}): Promise<PageVault> {
    return openVault(this.live(), await this.module(opts.signal), name);
  }

  /**
   * Links a key held outside the browser (`did`, an Ed25519 did:key; `sign` signs the
   * node's challenge with it: a wallet, a hardware key) to this page's identity at the node
   * `peerId`: level `did`, portable. The signed message names the node, the identity and the
   * challenge, so it is worth nothing elsewhere.
   */
  async linkDid(nodeUrl: string | URL, peerId: string, did: string, sign: DidSigner, opts: PasskeyOptions = {}): Promise<PasskeyIdentity> {
    return linkDid(this.live(), await this.module(opts.signal), nodeUrl, peerId, did, sign, opts);
  }

  /** Signs in with a key held outside the browser: the identity it was linked to. With
   *  `opts.peerId`, this page's key is linked and acts for that identity at the node. */
  async signInWithDid(nodeUrl: string | URL, did: string, sign: DidSigner, opts: PasskeyOptions & { peerId?: string } = {}): Promise<PasskeyIdentity> {
    const device = opts.peerId === undefined
      ? undefined
      : signInRequest(this.live(), await this.module(opts.signal), opts.peerId);
    return signInWithDid(nodeUrl, did, sign, opts, device);
  }

  /** This page's identity at the node `peerId`: its level, permissions, the node's signed
   *  links, and the upgrades offered. */
  async identityStatus(nodeUrl: string | URL, peerId: string, opts: PasskeyOptions = {}): Promise<IdentityStatus> {
    return identityStatus(this.live(), await this.module(opts.signal), nodeUrl, peerId, opts);
  }

  /** This page's did:key (the key behind its peer id), once connected. */
  get did(): string | null {
    try {
      return this.node?.did() ?? null;
    } catch {
      return null;
    }
  }

  private module(signal?: AbortSignal): Promise<WasmP2pModule> {
    if (this.current === 'closed') throw new DisposedError('This KwaaiNetwork was closed');
    const o = this.options;
    return bounded(loadModule(o.moduleUrl, o.wasmUrl, o.wasmIntegrity), o.requestTimeoutMs, 'loading the P2P module', signal);
  }

  /** The span this page serves, if any. */
  get servedSpan(): SpanService | null {
    return this.span;
  }

  /** The node's view: our peer id, the bootstrap connection, our relayed address, peers. */
  async state(opts: CallOptions = {}): Promise<Awaited<ReturnType<WasmP2pNode['state']>>> {
    return bounded(this.live().state(), opts.timeoutMs ?? 5_000, 'state', opts.signal);
  }

  private release(): void {
    for (const s of this.swarms) s.close();
    this.swarms.clear();
    void this.span?.stop('network-closed');
    this.span = null;
    const node = this.node;
    this.node = null;
    this.bootstrapId = null;
    // Freeing the handle stops the node: its connections close and its timers end.
    try {
      node?.free();
    } catch {
      // already freed
    }
  }

  /** Leaves the network. The instance cannot be reused. */
  close(): void {
    if (this.current === 'closed') return;
    this.release();
    this.setStatus({ status: 'closed' });
    this.emitter.clear();
  }
}

/**
 * The addresses a browser can dial on the node serving `nodeUrl` (its `/api/v1/state`
 * `browser_addrs`: WebRTC-direct first, then WebSocket).
 */
export async function fetchBootstrapAddrs(nodeUrl: string | URL, opts: CallOptions = {}): Promise<string[]> {
  const url = new URL('/api/v1/state', nodeUrl);
  const ctl = new AbortController();
  const onAbort = (): void => ctl.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const timer = setTimeout(() => ctl.abort(new P2pError(`${url.href}: no answer`, 'timeout')), opts.timeoutMs ?? 10_000);
  try {
    throwIfAborted(opts.signal);
    const res = await fetch(url, { signal: ctl.signal, cache: 'no-store' });
    if (!res.ok) throw new P2pError(`${url.href}: HTTP ${res.status}`, 'unreachable');
    const text = await res.text();
    if (text.length > 1 << 20) throw new P2pError(`${url.href}: state too large`, 'query');
    const state = JSON.parse(text) as { browser_addrs?: unknown };
    const addrs = Array.isArray(state.browser_addrs) ? state.browser_addrs.filter((a): a is string => typeof a === 'string') : [];
    if (addrs.length === 0) throw new P2pError(`${url.href}: the node lists no address a browser can dial`, 'unreachable');
    return addrs.slice(0, MAX_BOOTSTRAP_ADDRS);
  } catch (err) {
    if (opts.signal?.aborted) throw abortErrorFrom(opts.signal);
    if (ctl.signal.aborted && ctl.signal.reason instanceof P2pError) throw ctl.signal.reason;
    if (err instanceof P2pError) throw err;
    throw new P2pError(`${url.href}: ${err instanceof Error ? err.message : String(err)}`, 'unreachable', { cause: err });
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
}
