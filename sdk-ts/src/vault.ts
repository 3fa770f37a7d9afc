/**
 * The page's vault: data sealed in the page by keys derived from its own identity key
 * (XChaCha20-Poly1305 under a data key per subject, each wrapped by that key: the P2P
 * module's kwaainet-storage `Vault` over IndexedDB), content addressed by the CID of the
 * ciphertext. `push` keeps a copy at a node (which never sees the plaintext, and accepts it
 * from identities at level `email` or above); `pull` fetches it back and opens it here.
 * `forget(subject)` destroys that subject's key: every copy, here or at nodes, becomes
 * unreadable. With `identity: 'persistent'` the vault outlives the visit.
 */
import { InvalidArgumentError, NetworkError, P2pError } from './errors.js';
import { postToNode } from './node-post.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { WasmP2pModule, WasmP2pNode, WasmPageVault } from './wasm-p2p.js';

export interface VaultCallOptions {
  signal?: AbortSignal;
  /** Per request to a node (default 30 s). */
  timeoutMs?: number;
}

const toB64 = (b: Uint8Array): string => {
  let s = '';
  for (let i = 0; i < b.length; i += 0x8000) s += String.fromCharCode(...b.subarray(i, i + 0x8000));
  return btoa(s);
};
const fromB64 = (s: string): Uint8Array => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const bytesOf = (data: Uint8Array | string): Uint8Array => {
  if (typeof data === 'string') return new TextEncoder().encode(data);
  if (data instanceof Uint8Array) return data;
  throw new InvalidArgumentError('data: a Uint8Array or a string');
};

async function wrap<T>(run: () => Promise<T> | T): Promise<T> {
  try {
    return await run();
  } catch (e) {
    throw fromWasmP2pError(e);
  }
}

/** A vault of this page's identity. */
export class PageVault {
  constructor(private readonly inner: WasmPageVault, private readonly node: WasmP2pNode, private readonly mod: WasmP2pModule) {}

  /** The identity it belongs to (its did:key). */
  get owner(): string {
    return this.inner.owner();
  }

  /** Seals `data` under `subject` and keeps it here: the CID of the ciphertext. */
  put(subject: string, data: Uint8Array | string): Promise<string> {
    return wrap(() => this.inner.put(subject, bytesOf(data)));
  }

  /** Opens `cid` (of `subject`) kept here. */
  get(subject: string, cid: string): Promise<Uint8Array> {
    return wrap(() => this.inner.get(subject, cid));
  }

  /** The CIDs kept here. */
  list(): Promise<string[]> {
    return wrap(() => this.inner.list());
  }

  /** Deletes `cid` here. */
  delete(cid: string): Promise<void> {
    return wrap(() => this.inner.delete(cid));
  }

  /** Destroys `subject`'s key (crypto-shredding); whether it had one. */
  forget(subject: string): Promise<boolean> {
    return wrap(() => this.inner.forget(subject));
  }

  /** `subject`'s data key sealed for the identity `readerDid` (another person, or this
   *  identity's other device, whose page key is its did:key): give it to the reader, who
   *  passes it to `accept`. It opens nothing for anyone else. Forgetting the subject here
   *  later does not take the reader's copy back. */
  share(subject: string, readerDid: string): Promise<string> {
    return wrap(() => this.inner.share(subject, readerDid));
  }

  /** Takes a key shared with this identity (`share`'s result): the subject it opens. */
  accept(shared: string): Promise<string> {
    if (typeof shared !== 'string') throw new InvalidArgumentError('shared: the JSON text share() returned');
    return wrap(() => this.inner.accept(shared));
  }

  /** Keeps a copy of `cid`'s ciphertext at the node `peerId` (HTTP side `nodeUrl`). */
  async push(nodeUrl: string | URL, peerId: string, cid: string, opts: VaultCallOptions = {}): Promise<void> {
    const sealed = await wrap(() => this.inner.sealed(cid));
    const answer = await this.ask(nodeUrl, peerId, 'put', { data: toB64(sealed) }, opts);
    if (answer.cid !== cid) throw new P2pError(`the node kept ${String(answer.cid)}, not ${cid}`, 'record');
  }

  /** Fetches `cid` (of `subject`) from the node and opens it here; checked against its CID. */
  async pull(nodeUrl: string | URL, peerId: string, subject: string, cid: string, opts: VaultCallOptions = {}): Promise<Uint8Array> {
    const answer = await this.ask(nodeUrl, peerId, 'get', { cid }, opts);
    if (typeof answer.data !== 'string') throw new P2pError('the node answered no data', 'record');
    return wrap(() => this.inner.open(subject, cid, fromB64(answer.data as string)));
  }

  /** Closes its database. */
  close(): void {
    this.inner.close();
  }

  private async ask(
    nodeUrl: string | URL, peerId: string, action: string, params: Record<string, unknown>, opts: VaultCallOptions,
  ): Promise<Record<string, unknown>> {
    if (typeof peerId !== 'string' || peerId === '') throw new InvalidArgumentError('peerId: the node\'s peer id is required');
    const signed = await wrap(() => this.node.signRequest(this.mod.didOfPeer(peerId), action, params));
    const { status, body } = await postToNode(nodeUrl, '/api/v1/data', signed, opts, 30_000);
    if (status !== 200) throw new NetworkError(`the node refused: ${String(body.error ?? `HTTP ${status}`)}`, status);
    return body;
  }
}

/** Opens the vault `name` of the page's identity. */
export async function openVault(node: WasmP2pNode, mod: WasmP2pModule, name: string): Promise<PageVault> {
  if (typeof name !== 'string' || !/^[A-Za-z0-9_-]{1,64}$/.test(name)) {
    throw new InvalidArgumentError('name: 1 to 64 letters, digits, - or _');
  }
  return new PageVault(await wrap(() => node.openVault(name)), node, mod);
}
