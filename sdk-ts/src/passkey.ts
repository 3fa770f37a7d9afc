/**
 * Progressive identity at a node (native-relay/src/identity.rs, engine/identity/): the
 * page's identity (its did:key, level `anonymous`) links an email address (a token sent
 * to it) or a passkey at its own signed request, and its level rises without its did:key
 * changing, so what it owns stays its own. A passkey signs in later from any browser and
 * brings the identity back; with the page's key linked as a device, that page then acts
 * for the identity. The browser's `navigator.credentials` makes and uses the passkey; the
 * node verifies every answer (challenge, origin, RP ID, user verification, signature,
 * counter).
 */
import { InvalidArgumentError, NetworkError, UnsupportedError } from './errors.js';
import { postToNode } from './node-post.js';
import { fromWasmP2pError } from './wasm-errors.js';
import type { WasmP2pModule, WasmP2pNode } from './wasm-p2p.js';

export type IdentityLevel = 'anonymous' | 'email' | 'passkey' | 'did';

export interface IdentityPermissions {
  contribute: boolean;
  store: boolean;
  quota_bytes: number;
  recover: boolean;
  portable: boolean;
}

export interface LinkStatementWire { link: string; signature: string }

export interface PasskeyIdentity {
  /** The identity's did:key. */
  subject: string;
  level: IdentityLevel;
  permissions: IdentityPermissions;
  /** Registration: the node's signed link of the passkey to the identity (keep it). */
  statement?: LinkStatementWire;
}

/** What `identityStatus` reports. */
export interface IdentityStatus {
  subject: string;
  level: IdentityLevel;
  permissions: IdentityPermissions;
  /** The node's signed links of this identity's credentials. */
  links: LinkStatementWire[];
  /** The upgrades this node offers from here. */
  next: { kind: 'email' | 'passkey' | 'did'; level: IdentityLevel; permissions: IdentityPermissions }[];
}

export interface PasskeyOptions {
  signal?: AbortSignal;
  /** Per request to the node (default 30 s); the browser's own dialog has its timeout. */
  timeoutMs?: number;
}

const fromB64url = (s: string): Uint8Array => {
  const b = atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - (s.length % 4)) % 4));
  return Uint8Array.from(b, (c) => c.charCodeAt(0));
};
const toB64url = (buf: ArrayBuffer): string =>
  btoa(String.fromCharCode(...new Uint8Array(buf))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');

function credentials(): CredentialsContainer {
  const c = (globalThis as { navigator?: { credentials?: CredentialsContainer } }).navigator?.credentials;
  if (!c || typeof (globalThis as { PublicKeyCredential?: unknown }).PublicKeyCredential === 'undefined') {
    throw new UnsupportedError('this browser has no passkeys (WebAuthn)');
  }
  return c;
}

async function ask(nodeUrl: string | URL, path: string, body: unknown, opts: PasskeyOptions): Promise<Record<string, unknown>> {
  const { status, body: answer } = await postToNode(nodeUrl, path, body, opts, 30_000);
  if (status !== 200) throw new NetworkError(`the node refused: ${String(answer.error ?? `HTTP ${status}`)}`, status);
  return answer;
}

/** A request signed by the page's key for the node `peerId`. */
function sign_(node: WasmP2pNode, mod: WasmP2pModule, peerId: string, action: string, params: Record<string, unknown>): unknown {
  if (typeof peerId !== 'string' || peerId === '') throw new InvalidArgumentError('peerId: the node\'s peer id is required');
  try {
    return node.signRequest(mod.didOfPeer(peerId), action, params);
  } catch (e) {
    throw fromWasmP2pError(e);
  }
}

/** Makes a passkey for this page's identity and links it at the node `peerId`. */
export async function registerPasskey(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: PasskeyOptions = {},
): Promise<PasskeyIdentity> {
  const signed = sign_(node, mod, peerId, 'link_passkey', {});
  const container = credentials();
  const o = await ask(nodeUrl, '/api/v1/identity/passkey/link/options', signed, opts) as {
    user: { id: string; name: string; displayName: string }; challenge: string;
  } & Record<string, unknown>;
  const publicKey = { ...o, challenge: fromB64url(o.challenge), user: { ...o.user, id: fromB64url(o.user.id) } };
  const cred = await container.create({ publicKey: publicKey as unknown as PublicKeyCredentialCreationOptions, signal: opts.signal }) as PublicKeyCredential | null;
  if (!cred) throw new NetworkError('no passkey was made');
  const r = cred.response as AuthenticatorAttestationResponse;
  return await ask(nodeUrl, '/api/v1/identity/passkey/link', {
    id: cred.id,
    clientDataJSON: toB64url(r.clientDataJSON),
    attestationObject: toB64url(r.attestationObject),
  }, opts) as unknown as PasskeyIdentity;
}

/** Signs in at the node with a passkey: the identity it belongs to. With `device` (this
 *  page's signed `sign_in` request), the node links the page's key to that identity. */
export async function loginPasskey(nodeUrl: string | URL, opts: PasskeyOptions = {}, device?: unknown): Promise<PasskeyIdentity> {
  const container = credentials();
  const o = await ask(nodeUrl, '/api/v1/identity/passkey/signin/options', {}, opts) as { challenge: string } & Record<string, unknown>;
  const publicKey = { ...o, challenge: fromB64url(o.challenge) };
  const cred = await container.get({ publicKey: publicKey as unknown as PublicKeyCredentialRequestOptions, signal: opts.signal }) as PublicKeyCredential | null;
  if (!cred) throw new NetworkError('no passkey was used');
  const r = cred.response as AuthenticatorAssertionResponse;
  return await ask(nodeUrl, '/api/v1/identity/passkey/signin', {
    id: cred.id,
    clientDataJSON: toB64url(r.clientDataJSON),
    authenticatorData: toB64url(r.authenticatorData),
    signature: toB64url(r.signature),
    ...(device === undefined ? {} : { device }),
  }, opts) as unknown as PasskeyIdentity;
}

/** Signs the page's `sign_in` request for the node `peerId` (to link this page's key when
 *  signing in). */
export function signInRequest(node: WasmP2pNode, mod: WasmP2pModule, peerId: string): unknown {
  return sign_(node, mod, peerId, 'sign_in', {});
}

/** `email:` and the hex SHA-256 of the lowercased address: how a signed request names an
 *  address without carrying it (the link statement keeps the request). */
export async function emailCredential(address: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(address.trim().toLowerCase()));
  return `email:${Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** Asks the node to send a verification token to `address`; `{ sentTo, expiresInS }`. */
export async function linkEmail(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, address: string, opts: PasskeyOptions = {},
): Promise<{ sentTo: string; expiresInS: number }> {
  if (typeof address !== 'string' || !/^[^\s@]+@[^\s@]+\.[^\s@]+$/.test(address.trim())) {
    throw new InvalidArgumentError('address: an email address such as ada@example.org');
  }
  const signed = sign_(node, mod, peerId, 'link_email', { credential: await emailCredential(address) }) as Record<string, unknown>;
  return await ask(nodeUrl, '/api/v1/identity/email/link/options', { ...signed, address: address.trim() }, opts) as unknown as {
    sentTo: string; expiresInS: number;
  };
}

/** Answers with the token from the mail: the identity, now at level `email`. */
export async function confirmEmail(nodeUrl: string | URL, token: string, opts: PasskeyOptions = {}): Promise<PasskeyIdentity> {
  if (typeof token !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(token.trim())) {
    throw new InvalidArgumentError('token: the 43-character token from the mail');
  }
  return await ask(nodeUrl, '/api/v1/identity/email/link', { token: token.trim() }, opts) as unknown as PasskeyIdentity;
}

/** This page's identity at the node: level, permissions, links, the upgrades offered. */
export async function identityStatus(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: PasskeyOptions = {},
): Promise<IdentityStatus> {
  const signed = sign_(node, mod, peerId, 'identity_status', {});
  return await ask(nodeUrl, '/api/v1/identity/status', signed, opts) as unknown as IdentityStatus;
}

/** Signs `message` (UTF-8) with the Ed25519 key a did:key names: a wallet, a hardware key,
 *  the `kwaainet identity` key of the person's own node. Returns the 64-byte signature. */
export type DidSigner = (message: string) => Promise<Uint8Array> | Uint8Array;

function checkDid(did: string): void {
  if (typeof did !== 'string' || !/^did:key:z6Mk[1-9A-HJ-NP-Za-km-z]{40,60}$/.test(did)) {
    throw new InvalidArgumentError('did: an Ed25519 did:key (did:key:z6Mk…)');
  }
}

async function answerDid(nodeUrl: string | URL, path: string, o: Record<string, unknown>, sign: DidSigner, opts: PasskeyOptions, extra: Record<string, unknown> = {}): Promise<PasskeyIdentity> {
  const signature = await sign(String(o.message));
  if (!(signature instanceof Uint8Array) || signature.length !== 64) throw new InvalidArgumentError('sign: must return a 64-byte Ed25519 signature');
  return await ask(nodeUrl, path, { challenge: o.challenge, signature: toB64url(signature.buffer.slice(signature.byteOffset, signature.byteOffset + 64) as ArrayBuffer), ...extra }, opts) as unknown as PasskeyIdentity;
}

/** Links the key `did` (held outside the browser, signing through `sign`) to this page's
 *  identity at the node: level `did`, portable. */
export async function linkDid(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, did: string, sign: DidSigner, opts: PasskeyOptions = {},
): Promise<PasskeyIdentity> {
  checkDid(did);
  const signed = sign_(node, mod, peerId, 'link_did', { did });
  const o = await ask(nodeUrl, '/api/v1/identity/did/link/options', signed, opts);
  return answerDid(nodeUrl, '/api/v1/identity/did/link', o, sign, opts);
}

/** Signs in with the key `did`: the identity it was linked to; with `device`, this page's
 *  key is linked and acts for it. */
export async function signInWithDid(nodeUrl: string | URL, did: string, sign: DidSigner, opts: PasskeyOptions = {}, device?: unknown): Promise<PasskeyIdentity> {
  checkDid(did);
  const o = await ask(nodeUrl, '/api/v1/identity/did/signin/options', { did }, opts);
  return answerDid(nodeUrl, '/api/v1/identity/did/signin', o, sign, opts, device === undefined ? {} : { device });
}
