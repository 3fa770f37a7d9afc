/**
 * Passkeys at a node (native-relay/src/identity.rs, engine/identity/): the page's identity
 * (its did:key) links a passkey at its own signed request, and signs in with it later from
 * any browser to get that identity back, with its level and permissions. The browser's
 * `navigator.credentials` makes and uses the passkey; the node verifies every answer
 * (challenge, origin, RP ID, user verification, signature, counter).
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

export interface PasskeyIdentity {
  /** The identity's did:key. */
  subject: string;
  level: IdentityLevel;
  permissions: IdentityPermissions;
  /** Registration: the node's signed link of the passkey to the identity (keep it). */
  statement?: { link: string; signature: string };
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

/** Makes a passkey for this page's identity and links it at the node `peerId`. */
export async function registerPasskey(
  node: WasmP2pNode, mod: WasmP2pModule, nodeUrl: string | URL, peerId: string, opts: PasskeyOptions = {},
): Promise<PasskeyIdentity> {
  if (typeof peerId !== 'string' || peerId === '') throw new InvalidArgumentError('peerId: the node\'s peer id is required');
  const container = credentials();
  let signed;
  try {
    signed = node.signRequest(mod.didOfPeer(peerId), 'passkey_register', {});
  } catch (e) {
    throw fromWasmP2pError(e);
  }
  const o = await ask(nodeUrl, '/api/v1/identity/passkey/register/options', signed, opts) as {
    user: { id: string; name: string; displayName: string }; challenge: string;
  } & Record<string, unknown>;
  const publicKey = { ...o, challenge: fromB64url(o.challenge), user: { ...o.user, id: fromB64url(o.user.id) } };
  const cred = await container.create({ publicKey: publicKey as unknown as PublicKeyCredentialCreationOptions, signal: opts.signal }) as PublicKeyCredential | null;
  if (!cred) throw new NetworkError('no passkey was made');
  const r = cred.response as AuthenticatorAttestationResponse;
  return await ask(nodeUrl, '/api/v1/identity/passkey/register', {
    id: cred.id,
    clientDataJSON: toB64url(r.clientDataJSON),
    attestationObject: toB64url(r.attestationObject),
  }, opts) as unknown as PasskeyIdentity;
}

/** Signs in at the node with a passkey: the identity it belongs to. */
export async function loginPasskey(nodeUrl: string | URL, opts: PasskeyOptions = {}): Promise<PasskeyIdentity> {
  const container = credentials();
  const o = await ask(nodeUrl, '/api/v1/identity/passkey/login/options', {}, opts) as { challenge: string } & Record<string, unknown>;
  const publicKey = { ...o, challenge: fromB64url(o.challenge) };
  const cred = await container.get({ publicKey: publicKey as unknown as PublicKeyCredentialRequestOptions, signal: opts.signal }) as PublicKeyCredential | null;
  if (!cred) throw new NetworkError('no passkey was used');
  const r = cred.response as AuthenticatorAssertionResponse;
  return await ask(nodeUrl, '/api/v1/identity/passkey/login', {
    id: cred.id,
    clientDataJSON: toB64url(r.clientDataJSON),
    authenticatorData: toB64url(r.authenticatorData),
    signature: toB64url(r.signature),
  }, opts) as unknown as PasskeyIdentity;
}
