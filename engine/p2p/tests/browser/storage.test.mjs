// A page's storage: the storage conformance suite (the one the memory, file and network
// backends pass natively) run on the browser's IndexedDB through the P2P module
// (KwaaiNetwork.checkStorage), then again to show it leaves nothing behind, and a page
// whose IndexedDB is broken gets a clear error instead of a hang. A persistent page
// identity: the same did:key on the next visit, a new one once forgotten.
//
//   node --test engine/p2p/tests/browser/storage.test.mjs
//
// Needs what p2p.test.mjs needs. Loopback only; every wait is bounded.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { nodeAndBrowser } from './support.mjs';

const env = nodeAndBrowser('kwaainet-storage-browser-');

async function open() {
  const page = await env.browser.context.newPage();
  await page.goto(`${env.node.url}/test.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: 10_000 });
  return page;
}

test('IndexedDB passes the storage conformance suite and keeps nothing afterwards', { timeout: 120_000 }, async () => {
  const page = await open();
  const outcome = await page.evaluate(async () => {
    const net = new window.sdk.KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href) });
    const t0 = performance.now();
    await net.checkStorage();
    await net.checkStorage();
    const dbs = (await indexedDB.databases()).map((d) => d.name).filter((n) => n.startsWith('kwaainet-selftest-'));
    return { ms: performance.now() - t0, dbs };
  });
  assert.deepEqual(outcome.dbs, [], 'the scratch databases were deleted');
  await page.close();
});

test('a page whose IndexedDB is broken gets an error, not a hang', { timeout: 60_000 }, async () => {
  const page = await open();
  const why = await page.evaluate(async () => {
    // What a blocked or damaged profile looks like to the page: every open fails.
    IDBFactory.prototype.open = function () { throw new DOMException('blocked by the test', 'SecurityError'); };
    const net = new window.sdk.KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href) });
    return net.checkStorage().then(() => 'passed', (e) => `${e.name}: ${e.message}`);
  });
  assert.match(why, /^P2pError: .*IndexedDB (delete|open)/);
  await page.close();
});

test('a persistent page identity survives the visit and is gone once forgotten', { timeout: 120_000 }, async () => {
  const visit = async (forget = false) => {
    const page = await open();
    const out = await page.evaluate(async (forget) => {
      const { KwaaiNetwork, fetchBootstrapAddrs } = window.sdk;
      const net = new KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href), identity: 'persistent' });
      await net.connect(await fetchBootstrapAddrs(location.origin));
      const did = net.did;
      const forgot = forget ? await net.forgetIdentity() : null;
      net.close();
      return { did, forgot };
    }, forget);
    await page.close();
    return out;
  };
  const first = await visit();
  assert.match(first.did, /^did:key:z6Mk/);
  const second = await visit(true);
  assert.deepEqual(second, { did: first.did, forgot: true }, 'the same identity on the next visit');
  const third = await visit();
  assert.notEqual(third.did, first.did, 'a new identity once forgotten');
  // Without the option every visit is a new identity.
  const page = await open();
  const session = await page.evaluate(async () => {
    const { KwaaiNetwork, fetchBootstrapAddrs } = window.sdk;
    const net = new KwaaiNetwork({ moduleUrl: new URL('./p2p/kwaainet_wasm.js', location.href) });
    await net.connect(await fetchBootstrapAddrs(location.origin));
    const did = net.did;
    net.close();
    return did;
  });
  assert.notEqual(session, third.did);
  await page.close();
});
