/**
 * A node's audit log, checked in the page with the node's own verification code (the P2P
 * module's `kwaainet-audit` bindings): the checkpoint must be signed by the key behind the
 * node's peer id, the entries must hash to the root it signed, and a checkpoint the caller
 * kept from before must be a prefix of the new one (a consistency proof), so a node that
 * rewrote or cut back its history is caught. Entries name people only through salted
 * commitments (see engine/audit/).
 */
import { InvalidArgumentError, NetworkError, P2pError, abortErrorFrom, throwIfAborted } from './errors.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { WasmP2pModule } from './wasm-p2p.js';

/** A checkpoint of a node's log: its size, its RFC 6962 root (base64), the signed note. */
export interface AuditCheckpoint {
  size: number;
  root: string;
  note: string;
}

/** One audited operation, as the node stored it (see engine/audit/src/entry.rs). */
export interface AuditEntry {
  time_ms: number;
  op: 'store' | 'read' | 'delete' | 'export' | 'erase' | 'consent' | 'process' | 'policy';
  subject?: string;
  object?: string;
  purpose?: string;
  decision?: 'allow' | 'deny';
  reason?: string;
  region?: string;
}

/** What `verifyAudit` checked. */
export interface AuditVerification {
  /** The node's latest checkpoint, its signature verified. */
  checkpoint: AuditCheckpoint;
  /** Every entry it signs, in order (their hashes give its root). */
  entries: AuditEntry[];
  /** The size of the checkpoint given as `since`, proven a prefix of this one. */
  consistentWith: number | null;
}

export interface AuditOptions {
  /** A checkpoint kept from an earlier check: the log must have only grown since. */
  since?: AuditCheckpoint;
  /** Entries fetched at most (default 100,000); a larger log is refused. */
  maxEntries?: number;
  /** Per request (default 30 s). */
  timeoutMs?: number;
  signal?: AbortSignal;
}

const PAGE = 1000;

async function getJson(url: URL, timeoutMs: number, signal: AbortSignal | undefined, text = false): Promise<unknown> {
  throwIfAborted(signal);
  const timeout = AbortSignal.timeout(timeoutMs);
  const res = await fetch(url, { signal: signal ? AbortSignal.any([signal, timeout]) : timeout }).catch((e: unknown) => {
    if (signal?.aborted) throw abortErrorFrom(signal);
    throw new NetworkError(`${url.pathname}: ${String(e)}`, undefined, { cause: e });
  });
  if (!res.ok) throw new NetworkError(`${url.pathname}: HTTP ${res.status}`, res.status);
  return text ? res.text() : res.json();
}

function call<T>(f: () => T): T {
  try {
    return f();
  } catch (e) {
    throw fromWasmP2pError(e);
  }
}

function checkpointOf(mod: WasmP2pModule, note: unknown, peerId: string): AuditCheckpoint {
  if (typeof note !== 'string') throw new NetworkError('the node sent no checkpoint');
  const cp = call(() => mod.auditOpenCheckpoint(note, peerId));
  return { size: cp.size, root: cp.root, note };
}

function strings(v: unknown, what: string): string[] {
  if (!Array.isArray(v) || !v.every((s) => typeof s === 'string')) throw new NetworkError(`${what}: not a list of strings`);
  return v as string[];
}

/** Fetches and checks the audit log of the node `peerId` whose HTTP side is `nodeUrl`. */
export async function verifyAudit(mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: AuditOptions = {}): Promise<AuditVerification> {
  if (typeof peerId !== 'string' || peerId.length === 0) throw new InvalidArgumentError('peerId must be a peer id');
  const max = opts.maxEntries ?? 100_000;
  const ms = opts.timeoutMs ?? 30_000;
  const base = new URL(nodeUrl);
  const at = (path: string): URL => new URL(path, base);
  let checkpoint: AuditCheckpoint;
  let consistentWith: number | null = null;
  if (opts.since) {
    const since = opts.since;
    // The kept checkpoint must be the node's own signed one, and say what its note signs.
    const kept = checkpointOf(mod, since.note, peerId);
    if (kept.size !== since.size || kept.root !== since.root) {
      throw new InvalidArgumentError('since: its size and root are not the ones its note signs');
    }
    const r = (await getJson(at(`/api/v1/audit/proof/consistency?from=${since.size}`), ms, opts.signal)) as Record<string, unknown>;
    checkpoint = checkpointOf(mod, r.checkpoint, peerId);
    if (typeof r.proof !== 'string') throw new NetworkError('consistency: no proof');
    const proof = r.proof;
    call(() => mod.auditVerifyConsistency(since.size, since.root, checkpoint.size, checkpoint.root, proof));
    consistentWith = since.size;
  } else {
    checkpoint = checkpointOf(mod, await getJson(at('/api/v1/audit/checkpoint'), ms, opts.signal, true), peerId);
  }
  if (checkpoint.size > max) throw new InvalidArgumentError(`the log has ${checkpoint.size} entries, more than maxEntries (${max})`);
  const lines: string[] = [];
  while (lines.length < checkpoint.size) {
    const to = Math.min(lines.length + PAGE, checkpoint.size);
    const page = (await getJson(at(`/api/v1/audit/entries?from=${lines.length}&to=${to}`), ms, opts.signal)) as Record<string, unknown>;
    const got = strings(page.entries, 'entries');
    if (got.length === 0) throw new NetworkError(`the node sent no entry from ${lines.length} (its checkpoint signs ${checkpoint.size})`);
    lines.push(...got.slice(0, to - lines.length));
  }
  const root = call(() => mod.auditRoot(lines));
  if (root !== checkpoint.root) {
    throw new P2pError('the entries the node sent do not give the root its checkpoint signed', 'record');
  }
  const entries = lines.map((l) => JSON.parse(l) as AuditEntry);
  return { checkpoint, entries, consistentWith };
}

/** Checks one entry of the node's log by its inclusion proof in the latest checkpoint. */
export async function verifyAuditEntry(
  mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, index: number, opts: Omit<AuditOptions, 'since' | 'maxEntries'> = {},
): Promise<{ entry: AuditEntry; checkpoint: AuditCheckpoint }> {
  if (!Number.isSafeInteger(index) || index < 0) throw new InvalidArgumentError('index must be a whole number');
  const ms = opts.timeoutMs ?? 30_000;
  const base = new URL(nodeUrl);
  const r = (await getJson(new URL(`/api/v1/audit/proof/inclusion?index=${index}`, base), ms, opts.signal)) as Record<string, unknown>;
  const checkpoint = checkpointOf(mod, r.checkpoint, peerId);
  const page = (await getJson(new URL(`/api/v1/audit/entries?from=${index}&to=${index + 1}`, base), ms, opts.signal)) as Record<string, unknown>;
  const [line] = strings(page.entries, 'entries');
  if (line === undefined || typeof r.proof !== 'string') throw new NetworkError(`no entry ${index}`);
  const proof = r.proof;
  call(() => mod.auditVerifyInclusion(line, index, checkpoint.size, checkpoint.root, proof));
  return { entry: JSON.parse(line) as AuditEntry, checkpoint };
}
