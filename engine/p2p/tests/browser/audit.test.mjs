// A page checks a node's audit log with the node's own verification code (the P2P module's
// kwaainet-audit bindings, through the SDK's KwaaiNetwork.verifyAudit): a real
// `kwaainet start` on 127.0.0.1 with the default model and an API key records its API
// decisions; the page verifies the signed checkpoint (by the key behind the node's peer
// id), recomputes the root from every entry, proves one entry's inclusion, proves the log
// only grew since a checkpoint it kept, and catches a node that lies: entries edited in
// transit, a checkpoint from another key, a forged kept checkpoint. Then pages send consent
// records signed with their own keys: the node logs one entry per purpose, Global Privacy
// Control refuses data sharing, and forged or malformed records are refused unrecorded.
//
//   node --test engine/p2p/tests/browser/audit.test.mjs
//
// Needs what p2p.test.mjs needs, and the default model ($KWAAINET_MODEL). Loopback only;
// every wait is bounded.
import { existsSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';

import { launch } from '../../../../demo-site/tests/browser.mjs';
import {
  WEBRTC_FLAGS, freePorts, nodeState, openNetwork, runBin, startNode, stopNode, testSite, until,
} from './support.mjs';

const model = process.env.KWAAINET_MODEL;
const KEY = 'sk-audit-test-key';

let dir;
let node;
let browser;

before(async () => {
  assert.ok(model && existsSync(model), 'KWAAINET_MODEL must name the model file');
  let site;
  ({ dir, site } = testSite('kwaainet-audit-browser-'));
  node = await startNode({ dir, site, ...(await freePorts()), extra: ['--model', model, '--api-key', KEY, '--api-threads', '1'] });
  browser = await launch({ args: WEBRTC_FLAGS });
});

after(async () => {
  await browser?.close();
  await stopNode(node);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function complete(key) {
  const res = await fetch(`${node.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ messages: [{ role: 'user', content: 'I am Alice Example' }], max_tokens: 2 }),
    signal: AbortSignal.timeout(60_000),
  });
  await res.arrayBuffer();
  return res.status;
}

/** The size of the node's latest checkpoint (its second line), once it is at least `n`. */
function logSize(n) {
  return until(20_000, `an audit log of ${n} entries`, async () => {
    const note = await (await fetch(`${node.url}/api/v1/audit/checkpoint`)).text();
    const size = Number(note.split('\n')[1]);
    return size >= n ? size : null;
  });
}

test('a page verifies a node\'s audit log, its growth and one entry, and catches a lying node', { timeout: 120_000 }, async () => {
  assert.equal(await complete(KEY), 200);
  assert.equal(await complete('sk-wrong'), 401);
  assert.equal(await complete(KEY), 200);
  assert.equal(await logSize(3), 3);
  const { peer_id: peerId } = await nodeState(node.url);

  const page = await browser.context.newPage();
  await page.goto(`${node.url}/test.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 10_000 });
  const first = await page.evaluate(async (peerId) => {
    const net = new window.sdk.KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href) });
    window.net = net;
    const v = await net.verifyAudit(location.origin, peerId);
    window.kept = v.checkpoint;
    return v;
  }, peerId);
  assert.equal(first.checkpoint.size, 3);
  assert.equal(first.consistentWith, null);
  assert.deepEqual(first.entries.map((e) => [e.op, e.decision, e.reason]), [
    ['process', 'allow', 'chat:ok'], ['policy', 'deny', 'chat:bad_key'], ['process', 'allow', 'chat:ok'],
  ]);
  assert.equal(first.entries[0].subject, first.entries[2].subject);
  assert.notEqual(first.entries[0].subject, first.entries[1].subject);
  assert.ok(!JSON.stringify(first).includes(KEY) && !JSON.stringify(first).includes('Alice'));

  // The log grows; the page proves the new checkpoint extends the one it kept.
  assert.equal(await complete(KEY), 200);
  assert.equal(await logSize(4), 4);
  const grown = await page.evaluate(async (peerId) => {
    const v = await window.net.verifyAudit(location.origin, peerId, { since: window.kept });
    const one = await window.net.verifyAuditEntry(location.origin, peerId, 1);
    return { size: v.checkpoint.size, consistentWith: v.consistentWith, n: v.entries.length, one };
  }, peerId);
  assert.deepEqual([grown.size, grown.consistentWith, grown.n], [4, 3, 4]);
  assert.equal(grown.one.entry.decision, 'deny');
  assert.equal(grown.one.checkpoint.size, 4);

  // A lying node: every failure is a P2pError with reason `record` (a kept checkpoint whose
  // fields disagree with its own note is the caller's mistake). Another node's key:
  const other = (await runBin(['identity', '--identity', join(dir, 'other.key')])).out.split('\n')[0];
  const failures = await page.evaluate(async ({ peerId, other }) => {
    const why = async (f) => f().then(() => 'verified', (e) => `${e.name}:${e.reason ?? e.code}`);
    const net = window.net;
    const forgedKept = { ...window.kept, note: window.kept.note.replace('\n3\n', '\n2\n'), size: 2 };
    return {
      otherKey: await why(() => net.verifyAudit(location.origin, other)),
      forgedKept: await why(() => net.verifyAudit(location.origin, peerId, { since: forgedKept })),
      wrongRoot: await why(() => net.verifyAudit(location.origin, peerId, { since: { ...window.kept, root: btoa('x'.repeat(32)) } })),
    };
  }, { peerId, other });
  assert.deepEqual(failures, { otherKey: 'P2pError:record', forgedKept: 'P2pError:record', wrongRoot: 'InvalidArgumentError:invalid-argument' });

  // Entries edited in transit (a refusal turned into an allowance): the root does not match.
  await page.route('**/api/v1/audit/entries**', async (route) => {
    const res = await route.fetch();
    const body = await res.json();
    body.entries = body.entries.map((e) => e.replace('"deny"', '"allow"'));
    await route.fulfill({ response: res, json: body });
  });
  const edited = await page.evaluate(async (peerId) => window.net.verifyAudit(location.origin, peerId)
    .then(() => 'verified', (e) => `${e.name}:${e.reason}:${e.message}`), peerId);
  assert.match(edited, /^P2pError:record:the entries the node sent do not give the root/);
  const editedOne = await page.evaluate(async (peerId) => window.net.verifyAuditEntry(location.origin, peerId, 1)
    .then(() => 'verified', (e) => `${e.name}:${e.reason}`), peerId);
  assert.equal(editedOne, 'P2pError:record');
  await page.close();
});

/** The node's entries `from..` as parsed objects. */
async function entriesFrom(from) {
  const page = await (await fetch(`${node.url}/api/v1/audit/entries?from=${from}`)).json();
  return page.entries.map((e) => JSON.parse(e));
}

test('a page\'s signed consent is logged per purpose (by hand and by KwaaiNet), GPC refuses data sharing, forgeries are refused', { timeout: 120_000 }, async () => {
  const before = await logSize(0);
  const page = await browser.context.newPage();
  await openNetwork(page, node.url);
  const receipt = await page.evaluate(() => window.net.recordConsent(location.origin, { compute: true, storage: true, analytics: false }));
  assert.equal(receipt.recorded, 3);
  assert.equal(receipt.gpc, false);
  assert.match(receipt.subject, /^did:key:z6Mk/);
  assert.equal(receipt.subject, await page.evaluate(() => window.net.did));
  assert.equal(await logSize(before + 3), before + 3);
  const given = await entriesFrom(before);
  assert.deepEqual(given.map((e) => [e.op, e.purpose, e.decision, e.reason]), [
    ['consent', 'analytics', 'deny', 'refused'], ['consent', 'compute', 'allow', 'given'], ['consent', 'storage', 'allow', 'given'],
  ]);
  assert.ok(given.every((e) => e.subject === given[0].subject), 'one visitor, one subject');
  const raw = await (await fetch(`${node.url}/api/v1/audit/entries?from=0`)).text();
  assert.ok(!raw.includes(receipt.subject) && !raw.includes(receipt.subject.slice(8)), 'the did:key is not in the log');

  // Forged (a refusal turned into consent after signing), malformed and oversized records:
  // refused, and nothing is written.
  const refused = await page.evaluate(async (signed) => {
    const post = async (body) => (await fetch('/api/v1/consent', { method: 'POST', headers: { 'content-type': 'application/json' }, body })).status;
    const forged = structuredClone(signed);
    forged.record.purposes.analytics = true;
    const stale = structuredClone(signed);
    stale.record.issued_at_ms -= 3_600_000;
    return {
      forged: await post(JSON.stringify(forged)),
      stale: await post(JSON.stringify(stale)),
      junk: await post('{"record":{}}'),
      huge: await post('x'.repeat(20_000)),
    };
  }, receipt.signed);
  assert.deepEqual(refused, { forged: 403, stale: 400, junk: 400, huge: 413 });
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(await logSize(0), before + 3, 'a refused record wrote nothing');

  // A visitor whose browser sends Global Privacy Control: storage and analytics are refused.
  const gpcPage = await browser.context.newPage();
  await gpcPage.addInitScript(() => Object.defineProperty(Navigator.prototype, 'globalPrivacyControl', { get: () => true }));
  await openNetwork(gpcPage, node.url);
  const gpc = await gpcPage.evaluate(() => window.net.recordConsent(location.origin, { compute: true, storage: true, analytics: true }));
  assert.equal(gpc.gpc, true);
  assert.deepEqual(gpc.signed.record.purposes, { compute: true, storage: false, analytics: false });
  assert.equal(await logSize(before + 6), before + 6);
  const underGpc = await entriesFrom(before + 3);
  assert.deepEqual(underGpc.map((e) => [e.purpose, e.decision, e.reason]), [
    ['analytics', 'deny', 'gpc'], ['compute', 'allow', 'given'], ['storage', 'deny', 'gpc'],
  ]);
  assert.notEqual(underGpc[0].subject, given[0].subject, 'another visitor');
  // KwaaiNet with a consentNode sends each decision and the withdrawal by itself.
  const auto = await page.evaluate(async () => {
    const ai = new window.sdk.KwaaiNet({ services: ['compute'], network: window.net, consentNode: location.origin });
    const got = [];
    ai.on('consentRecorded', (r) => got.push(r.receipt ? r.receipt.signed.record.purposes.compute : `error: ${r.error.message}`));
    ai.consent.record(true);
    ai.consent.revoke();
    for (let i = 0; i < 100 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    return got.sort();
  });
  assert.deepEqual(auto, [false, true]);
  assert.equal(await logSize(before + 12), before + 12);
  const sent = await entriesFrom(before + 6);
  const compute = sent.filter((e) => e.purpose === 'compute').map((e) => e.decision).sort();
  assert.deepEqual(compute, ['allow', 'deny'], 'the consent and its withdrawal');
  // The whole log, consent entries included, still verifies in the page.
  const v = await page.evaluate(async (peerId) => (await window.net.verifyAudit(location.origin, peerId)).checkpoint.size,
    (await nodeState(node.url)).peer_id);
  assert.equal(v, before + 12);
  await page.evaluate(() => window.net.close());
  await gpcPage.evaluate(() => window.net.close());
  await page.close();
  await gpcPage.close();
});
