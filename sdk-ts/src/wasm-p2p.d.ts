/**
 * Hand-written mirror of the page-side P2P module's JS API (engine/wasm-p2p, built by
 * `MODULE=p2p bash scripts/build-wasm.sh` into dist/p2p/: `kwaainet_wasm.js`
 * + `kwaainet_wasm_bg.wasm`). `network.ts` codes against these types only and validates
 * what the module returns at run time. Every call throws or rejects with a
 * `WasmP2pError`.
 */

import type { WasmP2pErrorCode } from './wasm-errors.js';

/** An Error named `KwaaiNetP2pError` with a stable `code` (engine/wasm/src/error.rs `P2pCode`). */
export interface WasmP2pError extends Error {
  code: WasmP2pErrorCode;
}

export type P2pInitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface WasmP2pStartOptions {
  /** Multiaddrs of one node, each ending in `/p2p/<peer id>`, tried in order. */
  bootstrap: string[];
  dialTimeoutMs?: number;
  relayListen?: boolean;
  reconnectAttempts?: number;
  maxBackoffMs?: number;
}

export type WasmP2pEvent =
  | { type: 'connected'; peer: string; addr: string; transport: 'webrtc-direct' | 'websocket' | 'relay' | 'unknown'; bootstrap: boolean; setupMs: number | null }
  | { type: 'disconnected'; peer: string; bootstrap: boolean }
  | { type: 'reconnecting'; attempt: number; delayMs: number }
  | { type: 'offline'; reason: string }
  | { type: 'relay-ready'; addr: string }
  | { type: 'message'; from: string; data: Uint8Array };

export interface WasmP2pState {
  peerId: string;
  bootstrap: { peer: string; addr: string } | null;
  relayAddr: string | null;
  peers: string[];
}

export interface WasmHostedSpan {
  model: string;
  start: number;
  end: number;
  state?: 'joining' | 'online' | 'draining';
  throughput?: number;
  freeCache?: number;
}

/** An opaque page key (consumed by `WasmP2pNode.start`). */
export interface WasmPageIdentity {
  did(): string;
  readonly created: boolean;
  free(): void;
}

/** The page's vault (engine/wasm-p2p/src/vault.rs): sealed blobs in IndexedDB. */
export interface WasmPageVault {
  put(subject: string, data: Uint8Array): Promise<string>;
  get(subject: string, cid: string): Promise<Uint8Array>;
  sealed(cid: string): Promise<Uint8Array>;
  open(subject: string, cid: string, sealed: Uint8Array): Uint8Array;
  delete(cid: string): Promise<void>;
  list(): Promise<string[]>;
  forget(subject: string): Promise<boolean>;
  share(subject: string, reader: string): string;
  accept(shared: string): Promise<string>;
  owner(): string;
  close(): void;
  free(): void;
}

export interface WasmP2pNode {
  peerId(): string;
  /** This identity's vault `name` in the origin's IndexedDB. */
  openVault(name: string): Promise<WasmPageVault>;
  /** This page's did:key (engine/p2p/src/did.rs). */
  did(): string;
  /** A consent record signed with this page's key (engine/p2p/src/consent.rs). */
  signConsent(site: string, purposes: Record<string, boolean>, gpc: boolean): import('./consent-record.js').SignedConsentRecord;
  /** Signs the page's contribution and has its relay carry it in its hosted record. */
  publishContribution(totals: WasmContributionTotals): Promise<{ record: string; signature: string }>;
  /** A data-rights request to the node `audience` (its did:key), signed with this page's key
   *  (engine/p2p/src/request.rs). */
  signRequest(audience: string, action: string, params: Record<string, unknown>): { request: string; signature: string };
  connected(): Promise<{ peer: string; addr: string }>;
  state(): Promise<WasmP2pState>;
  getRecord(peerId: string): Promise<unknown>;
  askInfo(peerId: string): Promise<unknown>;
  send(peerId: string, data: Uint8Array): Promise<number>;
  /** Answers `/kwaainet/inference/1.0.0` streams: `handler(stream, frame, peer)` returns the
   *  reply (or null to end the stream); `frame === null` says the stream ended. */
  serveInference(
    handler: (stream: number, frame: Uint8Array | null, peer: string) => Promise<Uint8Array | null> | Uint8Array | null,
    options?: { maxStreams?: number; idleMs?: number; replyMs?: number; maxPayloadBytes?: number },
  ): void;
  stopServing(): void;
  servingState(): { open: number; accepted: number } | null;
  /** Opens an inference stream to the span server `peerId` as a client (connecting through
   *  our relay's circuit, and at `addrs`, within `timeoutMs`). */
  openInference(peerId: string, addrs: string[], timeoutMs: number): Promise<WasmInferenceStream>;
  /** Announces spans through the relay (an empty list withdraws them). */
  host(spans: WasmHostedSpan[], accelerator?: 'cpu' | 'webgpu'): Promise<void>;
  free(): void;
}

/** A client's inference stream (engine/wasm-p2p client.rs). Errors carry a `kind`:
 *  `closed`, `timeout` or `protocol`. */
export interface WasmInferenceStream {
  readonly server: string;
  send(frame: Uint8Array, timeoutMs: number): Promise<void>;
  /** The next reply frame; null when the server ended the stream. */
  recv(maxPayload: number, timeoutMs: number): Promise<Uint8Array | null>;
  close(): void;
  free(): void;
}

export interface WasmP2pModule {
  default(init?: { module_or_path: P2pInitInput }): Promise<unknown>;
  WasmP2pNode: {
    start(options: WasmP2pStartOptions, onEvent: (event: WasmP2pEvent) => void, identity?: WasmPageIdentity): WasmP2pNode;
  };
  /** The page's key kept in this origin's IndexedDB (engine/wasm-p2p/src/identity.rs). */
  PageIdentity: {
    load(): Promise<WasmPageIdentity>;
    forget(): Promise<boolean>;
  };
  maxMessageBytes(): number;
  p2pVersion(): string;
  /** A node's audit checkpoint once its signature by `peerId`'s key verifies (engine/wasm-p2p/src/audit.rs). */
  auditOpenCheckpoint(note: string, peerId: string): { origin: string; size: number; root: string };
  /** The RFC 6962 root (base64) of these stored entries. */
  auditRoot(entries: string[]): string;
  auditVerifyInclusion(entry: string, index: number, size: number, root: string, proof: string): void;
  auditVerifyConsistency(oldSize: number, oldRoot: string, newSize: number, newRoot: string, proof: string): void;
  /** The storage conformance suite on a scratch IndexedDB database (engine/wasm-p2p/src/idb.rs). */
  storageSelfTest(name: string): Promise<void>;
  /** The did:key of an Ed25519 peer id (engine/wasm-p2p/src/rights.rs). */
  didOfPeer(peerId: string): string;
  /** An export bundle (JSON text) checked offline; what it holds. */
  verifyExport(bundle: string): unknown;
  /** An erasure receipt (JSON text) checked, peers' receipts included; what it states. */
  verifyErasure(receipt: string): unknown;
}

/** What a page has served since `fromMs` (`WasmP2pNode.publishContribution`). */
export interface WasmContributionTotals {
  fromMs: number;
  servedTokens: number;
  blockTokens: number;
  busyMs: number;
  bytes: number;
  uptimeS: number;
  energyUwh: number;
  carbonUg: number;
  renewablePermille: number;
  region?: string;
}
