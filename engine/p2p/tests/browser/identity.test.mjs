// Progressive identity against a real `kwaainet start` (native-relay/src/identity.rs), in
// headless Chromium with a virtual authenticator (CDP WebAuthn domain): a page's identity
// links an email address (the token read from the node's outbox) and then a passkey
// (anonymous → email → passkey, its did:key unchanged); another browser session holding
// the synced passkey signs in, gets that identity back and acts for it; a replayed
// request, a page on an origin the node does not serve passkeys for, and a forged sign-in
// are refused.
//
//   node --test engine/p2p/tests/browser/identity.test.mjs
//
// Needs what p2p.test.mjs needs. Loopback only (the page is at http://localhost, which
// WebAuthn accepts as an RP ID); every wait is bounded.
import { generateKeyPairSync, sign as edSign } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { nodeAndBrowser, nodeState } from './support.mjs';

const env = nodeAndBrowser('kwaainet-identity-browser-');

/** A page at `host` with the SDK loaded and a virtual passkey authenticator. */
async function open(host = 'localhost') {
  const page = await env.browser.context.newPage();
  const cdp = await env.browser.context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: {
      protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true,
      isUserVerified: true, automaticPresenceSimulation: true,
    },
  });
  const url = env.node.url.replace('127.0.0.1', host);
  await page.goto(`${url}/test.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 10_000 });
  await page.evaluate(async () => {
    const { KwaaiNetwork, fetchBootstrapAddrs } = window.sdk;
    window.net = new KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href) });
    await window.net.connect(await fetchBootstrapAddrs(location.origin));
  });
  return { page, cdp, authenticatorId };
}

/** An Ed25519 key held outside the browser (here, by the test): its did:key and a signer. */
function outsideKey() {
  const { publicKey, privateKey } = generateKeyPairSync('ed25519');
  const raw = publicKey.export({ format: 'der', type: 'spki' }).subarray(-32);
  const bytes = [0xed, 0x01, ...raw];
  const alphabet = '123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz';
  let n = BigInt('0x' + Buffer.from(bytes).toString('hex'));
  let out = '';
  while (n > 0n) { out = alphabet[Number(n % 58n)] + out; n /= 58n; }
  for (const b of bytes) { if (b !== 0) break; out = '1' + out; }
  return { did: `did:key:z${out}`, sign: (message) => [...edSign(null, Buffer.from(message, 'utf8'), privateKey)] };
}

/** The mails in the node's outbox (its identity folder's `outbox/`). */
function mails() {
  const found = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else if (e.name.endsWith('.eml')) found.push(readFileSync(join(d, e.name), 'utf8'));
    }
  };
  walk(join(env.dir, 'identity'));
  return found;
}

test('a page identity rises from anonymous to email to passkey and a passkey brings it back in another session', { timeout: 120_000 }, async () => {
  const { peer_id: peerId } = await nodeState(env.node.url);
  const first = await open();
  const before = await first.page.evaluate(async (peerId) => window.net.identityStatus(location.origin, peerId), peerId);
  assert.equal(before.level, 'anonymous');
  assert.equal(before.permissions.store, false);
  assert.deepEqual(before.next.map((n) => n.kind), ['email', 'passkey', 'did']);

  // The page's vault: sealed here; an anonymous identity may not keep a copy at the node.
  const anon = await first.page.evaluate(async (peerId) => {
    window.vault = await window.net.openVault('notes');
    window.cid = await window.vault.put('diary', 'dear diary: upgrades must not move me');
    return window.vault.push(location.origin, peerId, window.cid).then(() => 'kept', (e) => `${e.name}:${e.status}`);
  }, peerId);
  assert.equal(anon, 'NetworkError:403');

  // The email step: the token reaches the outbox, the page answers with it.
  const sent = await first.page.evaluate(async (peerId) => window.net.linkEmail(location.origin, peerId, 'Ada@Example.org'), peerId);
  assert.equal(sent.sentTo, 'A…@Example.org');
  const [mail] = mails();
  assert.match(mail, /^To: Ada@Example.org\r$/m);
  const token = mail.split('\r\n').map((l) => l.trim()).find((l) => /^[A-Za-z0-9_-]{43}$/.test(l));
  const wrong = await first.page.evaluate(async () => window.net.confirmEmail(location.origin, 'A'.repeat(43)).then(() => 'accepted', (e) => `${e.name}:${e.status}`));
  assert.equal(wrong, 'NetworkError:403');
  const emailed = await first.page.evaluate(async (token) => window.net.confirmEmail(location.origin, token), token);
  assert.equal(emailed.level, 'email');
  assert.ok(!emailed.statement.link.includes('Example.org'), 'the link names no address');
  // At level email the node keeps the sealed copy (ciphertext only).
  await first.page.evaluate(async (peerId) => window.vault.push(location.origin, peerId, window.cid), peerId);

  const registered = await first.page.evaluate(async (peerId) => {
    const id = await window.net.registerPasskey(location.origin, peerId);
    return { id, did: window.net.did };
  }, peerId);
  assert.equal(registered.id.subject, registered.did, 'the identity keeps its did:key');
  assert.equal(registered.id.level, 'passkey');
  assert.deepEqual(registered.id.permissions, { contribute: true, store: true, quota_bytes: 256 << 20, recover: true, portable: false });
  const link = JSON.parse(registered.id.statement.link);
  assert.equal(link.subject, registered.did);
  assert.equal(link.level, 'passkey');
  assert.match(link.credential, /^passkey:/);
  assert.equal(JSON.parse(link.request).action, 'link_passkey', 'the link carries the identity\'s own signed request');
  // The upgrade moved nothing: the node's copy comes back and opens here.
  const pulled = await first.page.evaluate(async (peerId) => new TextDecoder().decode(
    await window.vault.pull(location.origin, peerId, 'diary', window.cid)), peerId);
  assert.equal(pulled, 'dear diary: upgrades must not move me');

  // Another session (a new page key), with the passkey synced to its authenticator.
  const { credentials } = await first.cdp.send('WebAuthn.getCredentials', { authenticatorId: first.authenticatorId });
  assert.equal(credentials.length, 1);
  const second = await open();
  await second.cdp.send('WebAuthn.addCredential', { authenticatorId: second.authenticatorId, credential: credentials[0] });
  const back = await second.page.evaluate(async (peerId) => ({
    id: await window.net.loginPasskey(location.origin, { peerId }),
    did: window.net.did,
    status: await window.net.identityStatus(location.origin, peerId),
  }), peerId);
  assert.notEqual(back.did, registered.did, 'a new session key');
  assert.equal(back.id.subject, registered.did, 'the passkey brings the identity back');
  assert.equal(back.id.level, 'passkey');
  assert.equal(back.status.subject, registered.did, 'the second page now acts for the identity');
  assert.deepEqual(back.status.links.map((s) => JSON.parse(s.link).credential.split(':')[0]), ['email', 'passkey', 'key']);
  // The second page acts for the identity (it may fetch the sealed copy), but the data key
  // stays with the key that sealed it: the ciphertext does not open there.
  const elsewhereRead = await second.page.evaluate(async ({ peerId, cid }) => {
    const v = await window.net.openVault('notes');
    return v.pull(location.origin, peerId, 'diary', cid).then(() => 'opened', (e) => `${e.name}:${e.reason}`);
  }, { peerId, cid: await first.page.evaluate(() => window.cid) });
  assert.equal(elsewhereRead, 'P2pError:record');
  // Until the first page shares the subject's key with the second page's key.
  const shared = await first.page.evaluate(async (reader) => window.vault.share('diary', reader), back.did);
  const afterShare = await second.page.evaluate(async ({ peerId, cid, shared }) => {
    const v = await window.net.openVault('notes');
    const subject = await v.accept(shared);
    return { subject, text: new TextDecoder().decode(await v.pull(location.origin, peerId, 'diary', cid)) };
  }, { peerId, cid: await first.page.evaluate(() => window.cid), shared });
  assert.deepEqual(afterShare, { subject: 'diary', text: 'dear diary: upgrades must not move me' });
  // A key shared with another identity is refused.
  const notForMe = await first.page.evaluate(async (shared) => {
    const other = await window.net.openVault('other');
    return other.accept(shared).then(() => 'accepted', (e) => `${e.name}:${e.reason}`);
  }, shared);
  assert.equal(notForMe, 'P2pError:record');
  // Crypto-shredding: once the subject's key is forgotten, no copy opens, here or at the node.
  const shredded = await first.page.evaluate(async (peerId) => {
    await window.vault.forget('diary');
    const local = await window.vault.get('diary', window.cid).then(() => 'opened', (e) => e.reason);
    const remote = await window.vault.pull(location.origin, peerId, 'diary', window.cid).then(() => 'opened', (e) => e.reason);
    return { local, remote };
  }, peerId);
  assert.deepEqual(shredded, { local: 'record', remote: 'record' });

  // A key held outside the browser raises the identity to `did`; a third session signs in
  // with it and acts for the identity.
  const outside = outsideKey();
  for (const p of [first.page]) await p.exposeFunction('outsideSign', outside.sign);
  const dided = await first.page.evaluate(async ({ peerId, did }) => window.net.linkDid(location.origin, peerId, did,
    async (m) => Uint8Array.from(await window.outsideSign(m))), { peerId, did: outside.did });
  assert.equal(dided.level, 'did');
  assert.equal(dided.permissions.portable, true);
  const third = await open();
  await third.page.exposeFunction('outsideSign', outside.sign);
  const viaDid = await third.page.evaluate(async ({ peerId, did }) => {
    const id = await window.net.signInWithDid(location.origin, did, async (m) => Uint8Array.from(await window.outsideSign(m)), { peerId });
    return { id, status: await window.net.identityStatus(location.origin, peerId) };
  }, { peerId, did: outside.did });
  assert.equal(viaDid.id.subject, registered.did);
  assert.equal(viaDid.status.subject, registered.did);
  assert.equal(viaDid.status.level, 'did');
  const wrongKey = outsideKey();
  await third.page.exposeFunction('strangerSign', wrongKey.sign);
  const forgedDid = await third.page.evaluate(async (did) => window.net.signInWithDid(location.origin, did,
    async (m) => Uint8Array.from(await window.strangerSign(m))).then(() => 'accepted', (e) => `${e.name}:${e.status}`), outside.did);
  assert.equal(forgedDid, 'NetworkError:403');

  // Refusals: a replayed signed request, a sign-in whose signature was forged.
  const refused = await second.page.evaluate(async (peerId) => {
    const mod = await import('./p2p/kwaainet_wasm.js');
    const why = (p) => p.then(() => 'accepted', (e) => `${e.name}:${e.status ?? ''}`);
    const signed = JSON.stringify(window.net.node.signRequest(mod.didOfPeer(peerId), 'link_passkey', {}));
    const post = (path, body) => fetch(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body }).then((r) => r.status);
    const once = await post('/api/v1/identity/passkey/link/options', signed);
    const twice = await post('/api/v1/identity/passkey/link/options', signed);
    // A real sign-in answer with its signature replaced.
    const o = await (await fetch('/api/v1/identity/passkey/signin/options', { method: 'POST', body: '{}' })).json();
    const b64 = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - s.length % 4) % 4)), (c) => c.charCodeAt(0));
    const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const cred = await navigator.credentials.get({ publicKey: { ...o, challenge: b64(o.challenge) } });
    const sig = new Uint8Array(cred.response.signature);
    sig[sig.length - 2] ^= 1;
    const forged = await post('/api/v1/identity/passkey/signin', JSON.stringify({
      id: cred.id, clientDataJSON: enc(cred.response.clientDataJSON), authenticatorData: enc(cred.response.authenticatorData), signature: enc(sig),
    }));
    return { once, twice, forged, unknown: await why(fetch('/api/v1/identity/passkey/signin', { method: 'POST', body: '{"id":"x","clientDataJSON":"e30","authenticatorData":"","signature":""}' }).then((r) => { if (r.status !== 200) throw Object.assign(new Error('refused'), { status: r.status }); })) };
  }, peerId);
  assert.deepEqual(refused, { once: 200, twice: 409, forged: 403, unknown: 'Error:400' });

  // A page on an origin the node does not make passkeys for: the browser refuses the RP ID.
  const elsewhere = await open('127.0.0.1');
  const why = await elsewhere.page.evaluate(async (peerId) => window.net.registerPasskey(location.origin, peerId)
    .then(() => 'registered', (e) => e.name), peerId);
  assert.notEqual(why, 'registered');
  for (const p of [first.page, second.page, third.page, elsewhere.page]) await p.close();
});
