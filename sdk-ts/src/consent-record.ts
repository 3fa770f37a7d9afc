/**
 * Consent records a node can prove it did not invent: the visitor's decision per purpose,
 * signed in the P2P module with this page's own key (its `did:key`), sent to a node's
 * `/api/v1/consent`, which checks it and writes one audit-log entry per purpose (the
 * visitor only as a salted commitment). Global Privacy Control (`navigator.globalPrivacyControl`)
 * is read here: under it, `storage` and `analytics` are recorded as refused whatever was
 * asked (compute contribution shares no personal data and still needs an explicit yes).
 */
import { InvalidArgumentError, NetworkError } from './errors.js';
import { postToNode } from './node-post.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { WasmP2pNode } from './wasm-p2p.js';

export type ConsentPurpose = 'compute' | 'storage' | 'analytics';
export const CONSENT_PURPOSES: readonly ConsentPurpose[] = ['compute', 'storage', 'analytics'];

/** A signed record, as the node receives it (engine/p2p/src/consent.rs). */
export interface SignedConsentRecord {
  record: {
    v: number;
    subject: string;
    site: string;
    purposes: Record<ConsentPurpose, boolean>;
    gpc: boolean;
    issued_at_ms: number;
  };
  signature: string;
}

/** What the node recorded. */
export interface ConsentReceipt {
  /** Audit-log entries written (one per purpose). */
  recorded: number;
  /** The page's did:key. */
  subject: string;
  /** Whether GPC was on. */
  gpc: boolean;
  /** The record sent (keep it: it is the visitor's proof of what they decided). */
  signed: SignedConsentRecord;
}

/** Whether the browser sends Global Privacy Control. */
export function globalPrivacyControl(): boolean {
  return (globalThis as { navigator?: { globalPrivacyControl?: unknown } }).navigator?.globalPrivacyControl === true;
}

export async function recordConsent(
  node: WasmP2pNode, nodeUrl: string | URL, purposes: Partial<Record<ConsentPurpose, boolean>>,
  opts: { signal?: AbortSignal; timeoutMs?: number } = {},
): Promise<ConsentReceipt> {
  if (purposes === null || typeof purposes !== 'object') throw new InvalidArgumentError('purposes must be an object');
  for (const k of Object.keys(purposes)) {
    if (!(CONSENT_PURPOSES as readonly string[]).includes(k)) throw new InvalidArgumentError(`unknown purpose ${k}`);
  }
  const all = Object.fromEntries(CONSENT_PURPOSES.map((p) => [p, purposes[p] === true])) as Record<ConsentPurpose, boolean>;
  const site = (globalThis as { location?: { origin?: string } }).location?.origin ?? 'unknown';
  let signed: SignedConsentRecord;
  try {
    signed = node.signConsent(site, all, globalPrivacyControl());
  } catch (e) {
    throw fromWasmP2pError(e);
  }
  const { status, body } = await postToNode(nodeUrl, '/api/v1/consent', signed, opts, 15_000);
  if (status !== 202) {
    throw new NetworkError(`the node refused the consent record: ${String(body.error ?? `HTTP ${status}`)}`, status);
  }
  return { recorded: Number(body.recorded), subject: String(body.subject), gpc: body.gpc === true, signed };
}
