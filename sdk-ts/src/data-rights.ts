/**
 * The visitor's data rights (GDPR Art. 15/20 export, Art. 17 erasure) at a node: a request
 * signed with this page's own key (its did:key), addressed to that node only, timed and
 * with a nonce so it cannot be replayed (engine/p2p/src/request.rs), sent to the node's
 * `POST /api/v1/data`. What comes back is checked here before it is returned, with the
 * same Rust code `kwaainet gdpr verify` runs (the P2P module's rights bindings): an export
 * bundle's manifest must be signed by the node asked and every part must match it; an
 * erasure receipt must be signed by the node, and each peer's receipt by that peer.
 */
import { InvalidArgumentError, NetworkError, P2pError } from './errors.js';
import { postToNode } from './node-post.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { WasmP2pModule, WasmP2pNode } from './wasm-p2p.js';

/** One item of a subject's data (engine/compliance/src/export.rs). */
export interface ExportItem {
  cid: string;
  /** `consent` (consent records), `identity-link` (the node's signed links of the
   *  identity's credentials), `sealed` (blobs sealed with the identity's own key),
   *  `replica` (anything else held for it), else the node operator's vault label. */
  label: string;
  stored_ms: number;
  plain_sha256?: string;
}

/** What a verified export holds. */
export interface VerifiedExport {
  manifest: {
    v: number;
    node: string;
    subject: string;
    created_ms: number;
    items: ExportItem[];
    audit: { origin: string; checkpoint: string; salt?: string; entries: { index: number; entry: string; proof: string }[] };
  };
  /** The subject's consent records, their signatures checked. */
  consents: import('./consent-record.js').SignedConsentRecord[];
  /** The audit entries about the subject, each proven in the node's signed log. */
  entries: import('./audit.js').AuditEntry[];
  /** The size of the log they are proven in. */
  log_size: number;
}

/** An export: the bundle as the node signed it (keep it: it verifies offline) and what it holds. */
export interface DataExport {
  bundle: unknown;
  verified: VerifiedExport;
}

/** What an erasure did, as the node signed it. */
export interface Erasure {
  node: string;
  subject: string;
  at_ms: number;
  keys_shredded: string[];
  deleted: string[];
  receipts: { holder: string; cid: string; at_ms: number; signature: string }[];
  unconfirmed: string[];
  audit_unlinked: boolean;
}

export interface DataErasure {
  /** The node's signed receipt (keep it: it verifies offline). */
  receipt: { erasure: string; signature: string };
  erasure: Erasure;
}

export interface DataRightsOptions {
  signal?: AbortSignal;
  /** Per request (default 60 s). */
  timeoutMs?: number;
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw fromWasmP2pError(e);
  }
}

async function ask(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, action: 'export' | 'erase',
  opts: DataRightsOptions,
): Promise<{ audience: string; body: unknown }> {
  if (typeof peerId !== 'string' || peerId === '') throw new InvalidArgumentError('peerId: the node\'s peer id is required');
  const audience = call(() => mod.didOfPeer(peerId));
  const signed = call(() => node.signRequest(audience, action, {}));
  const { status, body } = await postToNode(nodeUrl, '/api/v1/data', signed, opts, 60_000);
  if (status !== 200) {
    throw new NetworkError(`the node refused the ${action} request: ${String(body.error ?? `HTTP ${status}`)}`, status);
  }
  return { audience, body };
}

/** Asks the node for everything it holds about this page's identity, and verifies it. */
export async function exportData(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: DataRightsOptions = {},
): Promise<DataExport> {
  const { audience, body } = await ask(node, mod, nodeUrl, peerId, 'export', opts);
  const verified = call(() => mod.verifyExport(JSON.stringify(body))) as VerifiedExport;
  if (verified.manifest.node !== audience || verified.manifest.subject !== node.did()) {
    throw new P2pError('the export is not this node\'s answer about this page', 'record');
  }
  return { bundle: body, verified };
}

/** Asks the node to erase this page's identity's data, and verifies its receipt. */
export async function eraseData(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: DataRightsOptions = {},
): Promise<DataErasure> {
  const { audience, body } = await ask(node, mod, nodeUrl, peerId, 'erase', opts);
  const receipt = body as DataErasure['receipt'];
  const erasure = call(() => mod.verifyErasure(JSON.stringify(receipt))) as Erasure;
  if (erasure.node !== audience || erasure.subject !== node.did()) {
    throw new P2pError('the receipt is not this node\'s about this page', 'record');
  }
  return { receipt, erasure };
}
