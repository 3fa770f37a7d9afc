// `npm start` as a new user runs it: scripts/start.sh itself (its flags, its directories,
// its build-if-missing steps; only its documented port knobs set, to free ports), then the
// page the node serves, in headless Chromium with its default features, as a visitor uses
// it: the model downloads with progress, the consent dialog appears and is answered, a chat
// message gets a streamed answer, and the Network panel joins the node. The served page must
// carry no unfilled `{{…}}`, and the page must log no console error and get no failed
// response (the favicon included).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { freePort, launch, recordEvents, within } from './browser.mjs';
import { avx2, root, skip } from './common.mjs';
// The binary start.sh runs (KWAAINET_BIN, else the one it builds), for the native client.
import { runBin as kwaainet } from '../../engine/p2p/tests/browser/support.mjs';

/** Runs `npm start`'s script; resolves once its node answers /api/v1/state with browser addresses. */
async function npmStart(t, outbox) {
  const http = await freePort();
  const child = spawn('bash', ['scripts/start.sh'], {
    cwd: root,
    // KWAAINET_PORT=0: every P2P listener on an ephemeral port (start.sh's knob).
    env: {
      ...process.env, KWAAINET_HTTP: `127.0.0.1:${http}`, KWAAINET_PORT: '0', RUST_LOG: process.env.RUST_LOG ?? 'warn',
      // The node's email outbox, where the privacy page's token is read back.
      KWAAINET_EMAIL_OUTBOX: outbox,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true, // its own process group: start.sh's children go with it
  });
  let output = '';
  const keep = (b) => {
    output = (output + b.toString()).slice(-8_000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  t.after(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    process.kill(-child.pid, 'SIGINT'); // Ctrl-C, as a user stops it
    const done = await within(15_000, exited, 'node shutdown').catch(() => null);
    if (!done) process.kill(-child.pid, 'SIGKILL');
  });

  const url = `http://127.0.0.1:${http}/`;
  // start.sh builds what is missing first: seconds when npm test's earlier steps built it.
  const deadline = Date.now() + 600_000;
  for (;;) {
    const early = await Promise.race([exited, new Promise((r) => setTimeout(() => r(null), 200))]);
    if (early) throw new Error(`npm start exited early (${JSON.stringify(early)}):\n${output}`);
    const state = await fetch(`${url}api/v1/state`, { signal: AbortSignal.timeout(2_000) })
      .then((r) => (r.ok ? r.json() : null), () => null);
    if (state?.browser_addrs?.length) return { url, state, output: () => output };
    if (Date.now() > deadline) throw new Error(`npm start served no node state within 600 s:\n${output}`);
  }
}

test('npm start: its page downloads the model, asks consent, answers a chat and joins the network',
  { skip, timeout: 900_000 }, async (t) => {
    const outbox = mkdtempSync(join(tmpdir(), 'kwaainet-outbox-'));
    t.after(() => rmSync(outbox, { recursive: true, force: true }));
    const node = await npmStart(t, outbox);
    const browser = await launch();
    t.after(() => browser.close());
    await recordEvents(browser.context);
    const { page } = browser;

    const problems = [];
    page.on('console', (m) => {
      if (m.type() === 'error') problems.push(`console error: ${m.text()}`);
    });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => problems.push(`request failed: ${r.url()} (${r.failure()?.errorText})`));
    page.on('response', (r) => {
      if (r.status() >= 400) problems.push(`HTTP ${r.status()}: ${r.url()}`);
    });

    const res = await page.goto(node.url, { waitUntil: 'load', timeout: 30_000 });
    assert.equal(res.status(), 200);
    const html = await res.text();
    assert.doesNotMatch(html, /\{\{/, 'the node left a placeholder unfilled');
    assert.match(html, /<script src="\/cdn\/v[^"]+\/distributed-ai\.js" integrity="sha384-[^"]+"/);
    assert.match(html, /data-max-resources="cpu:\d+,memory:\d+,storage:\d+"/);
    assert.match(html, /data-model-url="\/models\/model\.gguf" data-model-sha256="[0-9a-f]{64}"/);

    // The consent dialog: the SDK asks at start (the tag declares services); the model
    // loads meanwhile. The visitor allows.
    const dialog = page.locator('dialog.kwaainet-consent');
    await dialog.waitFor({ state: 'visible', timeout: 30_000 });
    assert.match(await dialog.textContent(), /Contribute to KwaaiNet\?.*at most 20% CPU/s);
    await dialog.getByRole('button', { name: 'Allow' }).click();
    await dialog.waitFor({ state: 'detached', timeout: 5_000 });
    await page.waitForFunction(() => /Thank you/.test(document.getElementById('consent-state').textContent), null,
      { timeout: 10_000 });

    // The model: downloaded with progress up to its size, verified, loaded.
    await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 120_000, polling: 100 });
    const kw = await page.evaluate(() => ({ error: window.__kw.error, progress: window.__kw.progress }));
    assert.equal(kw.error, null);
    const downloads = kw.progress.filter((p) => p.phase === 'download');
    assert.ok(downloads.length >= 2, `download progress events: ${downloads.length}`);
    const last = downloads.at(-1);
    assert.ok(last.total > 90e6 && last.loaded === last.total, `download ended at ${last.loaded} of ${last.total}`);
    assert.ok(kw.progress.some((p) => p.phase === 'verify') && kw.progress.some((p) => p.phase === 'load'));
    await page.waitForFunction(() => !document.getElementById('send').disabled, null, { timeout: 10_000 });

    // A chat message, answered as a stream (the answer's text grows several times), with
    // llama.cpp's greedy answer to the same chat (the tiny default model, under its own
    // system prompt, does not say Paris here; llama.cpp does not either).
    const reference = avx2.cases.find((c) => c.name === 'capital-chat');
    assert.deepEqual(reference.messages, [{ role: 'user', content: 'What is the capital of France?' }]);
    await page.evaluate(() => {
      window.__growth = 0;
      new MutationObserver(() => window.__growth++).observe(document.getElementById('log'),
        { subtree: true, characterData: true, childList: true });
    });
    await page.fill('#prompt', 'What is the capital of France?');
    await page.click('#send');
    await page.waitForFunction(() => document.querySelectorAll('#log li.assistant').length === 1 &&
      !document.getElementById('send').disabled, null, { timeout: 120_000, polling: 100 });
    const chat = await page.evaluate(() => ({
      answer: document.querySelector('#log li.assistant').textContent,
      errors: document.querySelectorAll('#log li.error').length,
      growth: window.__growth,
      status: document.getElementById('status').textContent,
    }));
    assert.equal(chat.errors, 0);
    assert.ok(chat.answer.startsWith(reference.output_text), `answer: ${chat.answer}`);
    assert.ok(chat.growth >= 4, `the answer arrived in ${chat.growth} updates`);
    assert.match(chat.status, /Last answer: \d+ tokens/);

    // The Network panel: the page's own P2P node joins the node that served it.
    await page.waitForFunction(() => /^Joined over /.test(document.getElementById('network-status').textContent), null,
      { timeout: 60_000, polling: 100 }).catch(async (e) => {
      throw new Error(`${e.message}; the panel says: ${await page.textContent('#network-status')}`);
    });
    const peerId = await page.evaluate(() => document.querySelector('#network dd').textContent);
    const state = await (await fetch(`${node.url}api/v1/state`)).json();
    assert.ok(state.connected_peers.some((p) => p.peer_id === peerId), `the node does not list the page's peer ${peerId}`);

    // The audit log: the visitor's consent (allowed above) reached the node's log as a
    // record signed with the page's key; the node's whole log verifies in the page, and a
    // second check proves it only grew.
    await page.locator('#audit').waitFor({ state: 'visible', timeout: 10_000 });
    await page.waitForFunction(() => /^Your decision is in the node's audit log \(3 entries\), signed as did:key:z6Mk/
      .test(document.getElementById('consent-record').textContent), null, { timeout: 20_000, polling: 100 })
      .catch(async (e) => { throw new Error(`${e.message}; it says: ${await page.textContent('#consent-record')}`); });
    const verified = async (pattern) => {
      await page.click('#audit-verify');
      await page.waitForFunction(() => /^(Verified|Check failed)/.test(document.getElementById('audit-state').textContent), null,
        { timeout: 30_000, polling: 100 });
      const text = await page.textContent('#audit-state');
      assert.match(text, pattern);
      await page.evaluate(() => { document.getElementById('audit-state').textContent = ''; });
    };
    await verified(/^Verified: \d+ entries under a checkpoint signed by the node\.$/);
    const logged = await page.evaluate(() => [...document.querySelectorAll('#audit-entries li')].map((li) => li.textContent));
    assert.ok(logged.some((l) => / consent compute allow \(given\)$/.test(l)), logged.join('\n'));
    assert.ok(logged.some((l) => / consent analytics deny \(refused\)$/.test(l)), logged.join('\n'));
    await verified(/^Verified: \d+ entries under a checkpoint signed by the node, and the log only grew since the last check \(\d+\)\.$/);

    // Data rights: the visitor's export (their consent record and its three entries, each
    // proven), then erasure with the node's signed receipt, after which the node holds
    // nothing of theirs.
    const dataSays = async (button, pattern) => {
      await page.evaluate(() => { document.getElementById('data-state').textContent = ''; });
      await page.click(button);
      await page.waitForFunction(() => /^(Your data|Erased|Export failed|Erasure failed)/.test(document.getElementById('data-state').textContent),
        null, { timeout: 30_000, polling: 100 });
      assert.match(await page.textContent('#data-state'), pattern);
    };
    await dataSays('#data-export', /^Your data, verified: 1 consent record\(s\), 3 audit entries proven in the node's signed log, 1 item\(s\)\.$/);
    assert.equal(await page.locator('#data-download').isVisible(), true);
    await dataSays('#data-erase', /^Erased, receipt signed by the node: 1 item\(s\) deleted, your audit entries unlinked from you\.$/);
    await dataSays('#data-export', /^Your data, verified: 0 consent record\(s\), 0 audit entries proven in the node's signed log, 0 item\(s\)\.$/);

    // The swarm's coverage of the node's model, drawn: `npm start` serves no span, so every
    // one of the model's blocks is a cell saying it has no server, and no server bar.
    const report = state.models?.[0];
    assert.ok(report, `no swarm report in /api/v1/state: ${JSON.stringify(state.models)}`);
    assert.equal(report.complete, false);
    await page.waitForFunction((n) => document.querySelectorAll('#swarm-models svg rect').length === n, report.blocks,
      { timeout: 30_000, polling: 200 });
    const picture = await page.evaluate(() => ({
      caption: document.querySelector('#swarm-models figcaption').textContent,
      first: document.querySelector('#swarm-models svg rect title').textContent,
    }));
    assert.equal(picture.caption, `${report.model}: 0 servers, some blocks have no server`);
    assert.equal(picture.first, 'block 0: 0 online servers');
    assert.deepEqual(problems, [], 'the page logged errors or got failed responses');

    await privacyPage(browser, node.url, outbox);
    await impactPage(browser, node.url);
    await pwaShell(browser, node.url);
  });

/** Opens the demo page the node serves as a visitor does; answers the consent dialog with
 *  Allow if it asks (a second tab of the same site finds the answer already given). The CPU
 *  pressure the page reads is held at nominal through DevTools' virtual pressure source: a
 *  serving tab pauses under sustained critical pressure, which this two-core machine running
 *  a node, two tabs and a client reaches by itself. */
async function visit(page, url) {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send('Emulation.setPressureSourceOverrideEnabled', { enabled: true, source: 'cpu' });
  await cdp.send('Emulation.setPressureStateOverride', { source: 'cpu', state: 'nominal' });
  await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
  const dialog = page.locator('dialog.kwaainet-consent');
  const asked = await dialog.waitFor({ state: 'visible', timeout: 5_000 }).then(() => true, () => false);
  if (asked) await dialog.getByRole('button', { name: 'Allow' }).click();
  await page.waitForFunction(() => window.__kw.ready || window.__kw.error !== null, null, { timeout: 120_000, polling: 100 });
  assert.equal(await page.evaluate(() => window.__kw.error), null);
  await page.locator('#serve').waitFor({ state: 'visible', timeout: 60_000 });
}

/** Clicks Serve with the blocks the page suggests; resolves once the span is served. */
async function serveSuggested(page, start, end) {
  assert.deepEqual(await page.evaluate(() => [Number(document.getElementById('serve-start').value),
    Number(document.getElementById('serve-end').value)]), [start, end], 'the blocks the page suggests');
  await page.click('#serve-button');
  await page.waitForFunction(() => /^(Serving|Could not)/.test(document.getElementById('serve-state').textContent), null,
    { timeout: 120_000, polling: 200 });
  assert.match(await page.textContent('#serve-state'), new RegExp(`^Serving blocks ${start}\\.\\.${end} of `));
}

test('the demo: two visitors serve the two halves of the node\'s model from their tabs; a native client, and one of the tabs itself, generate through them',
  { skip, timeout: 600_000 }, async (t) => {
    const node = await npmStart(t);
    const browser = await launch();
    t.after(() => browser.close());
    await recordEvents(browser.context);
    const problems = [];
    const watch = (page, who) => {
      page.on('pageerror', (e) => problems.push(`${who}: page error: ${e.message}`));
      page.on('response', (r) => { if (r.status() >= 400) problems.push(`${who}: HTTP ${r.status()}: ${r.url()}`); });
    };
    const first = browser.page;
    watch(first, 'first visitor');
    await visit(first, node.url);
    // Nobody serves the model yet: the page suggests half of it, and the second visitor the rest.
    const blocks = node.state.models?.[0]?.blocks ?? 30;
    const half = Math.ceil(blocks / 2);
    await serveSuggested(first, 0, half);
    const link = await first.getAttribute('#second-visitor', 'href');
    assert.equal(new URL(link).searchParams.get('serve'), `${half}-${blocks}`);

    // "Open a second visitor": another tab of the same site.
    const second = await browser.context.newPage();
    watch(second, 'second visitor');
    await visit(second, link);
    await serveSuggested(second, half, blocks);

    // The node's swarm report lists the two tabs, relayed, as the model's only servers, and
    // each tab's coverage picture says every block is served.
    const ids = await Promise.all([first, second].map((p) => p.evaluate(() => window.kwaainetNetwork.peerId)));
    const deadline = Date.now() + 60_000;
    let report;
    for (;;) {
      const st = await (await fetch(`${node.url}api/v1/state`)).json();
      report = st.models?.[0];
      if (report?.complete && ids.every((id) => report.servers.some((s) => s.peer_id === id && s.relayed))) break;
      if (Date.now() > deadline) throw new Error(`the node's report never listed both tabs: ${JSON.stringify(report)}`);
      await new Promise((r) => setTimeout(r, 500));
    }
    for (const page of [first, second]) {
      await page.waitForFunction((m) => document.querySelector('#swarm-models figcaption')?.textContent === m,
        `${report.model}: 2 servers, every block served`, { timeout: 30_000, polling: 200 });
    }

    // A native client generates through the two tabs: the same text as local generation.
    const tcp = node.state.listen_addrs.find((a) => a.includes('/tcp/') && !a.includes('/ws'));
    const model = await kwaainet(['fetch-model']);
    const modelPath = model.out.trim();
    const prompt = ['--model', modelPath, '--prompt', 'The capital of France is', '--max-tokens', '16'];
    const local = await kwaainet(['generate', ...prompt]);
    assert.equal(local.code, 0, local.err);
    const swarm = await kwaainet(['generate', '--swarm', '--bootstrap', `${tcp}/p2p/${node.state.peer_id}`, '--codec', 'f32', ...prompt]);
    assert.equal(swarm.code, 0, swarm.err);
    assert.equal(swarm.out, local.out, 'the same text as local generation');
    const route = swarm.err.split('\n').find((l) => l.startsWith('swarm: ')) ?? swarm.err;
    assert.ok(route.includes(`0..${half} on ${ids[0]}`) && route.includes(`${half}..${blocks} on ${ids[1]}`), route);

    // Each tab shows what it served: the span server's counters, 16 steps' tokens, each
    // token through every one of its blocks.
    for (const [page, n] of [[first, half], [second, blocks - half]]) {
      const served = await page.waitForFunction(() => {
        const dl = document.getElementById('served');
        const rows = Object.fromEntries([...dl.querySelectorAll('dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent]));
        return Number(rows.Tokens) >= 16 ? rows : null;
      }, null, { timeout: 10_000, polling: 200 }).then((h) => h.jsonValue());
      assert.equal(Number(served['Block × tokens']), Number(served.Tokens) * n, JSON.stringify(served));
      assert.match(served.Span, new RegExp(`^blocks ${page === first ? 0 : half}\\.\\.${page === first ? half : blocks}$`));
      assert.match(await page.textContent('#consent-state'), /this tab serves blocks/);
    }

    // The first visitor chats through the swarm from its tab: embedding and head there, the
    // blocks on the two tabs (its own half on its own span server, the other through the
    // relay). The answer is llama.cpp's, as in the tab's own engine; the status names the route.
    await first.waitForFunction(() => !document.getElementById('route-swarm').disabled, null, { timeout: 30_000, polling: 100 });
    await first.selectOption('#route', 'swarm');
    await first.fill('#prompt', 'What is the capital of France?');
    await first.click('#send');
    await first.waitForFunction(() => document.querySelectorAll('#log li.assistant').length === 1 &&
      !document.getElementById('send').disabled, null, { timeout: 180_000, polling: 100 });
    const viaSwarm = await first.evaluate(() => ({
      answer: document.querySelector('#log li.assistant').textContent,
      error: document.querySelector('#log li.error')?.textContent ?? null,
      status: document.getElementById('status').textContent,
    }));
    assert.equal(viaSwarm.error, null);
    const reference = avx2.cases.find((c) => c.name === 'capital-chat');
    assert.ok(viaSwarm.answer.startsWith(reference.output_text), `answer: ${viaSwarm.answer}`);
    assert.match(viaSwarm.status, new RegExp(`Through the swarm: 0\\.\\.${half}, ${half}\\.\\.${blocks} on 2 peer\\(s\\)\\.$`), viaSwarm.status);

    // Stop serving: the tab withdraws its span and says so; the node drops it from its report.
    await second.click('#serve-stop');
    await second.waitForFunction(() => /^Stopped serving \(withdrawn\)/.test(document.getElementById('serve-state').textContent), null,
      { timeout: 10_000, polling: 100 });
    const gone = Date.now() + 30_000;
    for (;;) {
      const st = await (await fetch(`${node.url}api/v1/state`)).json();
      if (!st.models?.[0]?.servers?.some((s) => s.peer_id === ids[1])) break;
      if (Date.now() > gone) throw new Error('the withdrawn tab is still listed');
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.deepEqual(problems, [], 'the pages logged errors or got failed responses');
  });

/** The privacy page, at http://localhost (the node's WebAuthn RP ID), as a visitor uses it:
 *  the identity rises anonymous → email (the token read from the node's outbox) → passkey
 *  (a virtual authenticator), survives a reload (the page keeps its key), records consent
 *  per purpose, exports its data (verified in the page), checks the node's audit log, and
 *  erases itself (back to anonymous). */
async function privacyPage(browser, nodeUrl, outbox) {
  const page = await browser.context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  const cdp = await browser.context.newCDPSession(page);
  await cdp.send('WebAuthn.enable');
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  const url = nodeUrl.replace('127.0.0.1', 'localhost') + 'privacy.html';
  const open = async () => {
    const res = await page.goto(url, { waitUntil: 'load', timeout: 30_000 });
    assert.equal(res.status(), 200);
    assert.doesNotMatch(await res.text(), /\{\{/);
    await page.waitForFunction(() => document.body.dataset.ready === 'true' || /^Not joined/.test(document.getElementById('network-status').textContent),
      null, { timeout: 60_000, polling: 100 });
    assert.match(await page.textContent('#network-status'), /^Joined the node /);
  };
  const text = (id) => page.textContent(`#${id}`);
  const idState = async (click, pattern) => {
    await page.evaluate(() => { document.getElementById('id-state').textContent = ''; });
    await click();
    await page.waitForFunction(() => /(\.|failed: .*)$/.test(document.getElementById('id-state').textContent), null, { timeout: 30_000, polling: 100 });
    assert.match(await text('id-state'), pattern);
  };
  await open();
  assert.equal(await text('id-level'), 'anonymous');
  const did = await text('id-did');
  assert.match(did, /^did:key:z6Mk/);

  await page.fill('#email', 'ada@example.org');
  await idState(() => page.click('#email-send'), /^A token was sent to a…@example\.org \(valid 15 minutes\)\.$/);
  const mails = readdirSync(outbox).filter((f) => f.endsWith('.eml')).map((f) => readFileSync(join(outbox, f), 'utf8'));
  assert.equal(mails.length, 1);
  const token = mails[0].split('\r\n').find((l) => /^[A-Za-z0-9_-]{43}$/.test(l));
  await page.fill('#token', token);
  await idState(() => page.click('#token-confirm'), /^Email confirmed: your level is email\.$/);
  assert.equal(await text('id-level'), 'email');
  await idState(() => page.click('#passkey-add'), /^Passkey linked: your level is passkey\.$/);
  assert.equal(await text('id-level'), 'passkey');
  assert.match(await text('id-permissions'), /^contribute, store 256 MiB, sign in elsewhere$/);
  assert.equal(await page.locator('#id-links li').count(), 2);

  // A later visit: the same identity, at the same level.
  await open();
  assert.equal(await text('id-did'), did);
  assert.equal(await text('id-level'), 'passkey');

  // Consent per purpose, recorded and logged.
  await page.check('#purpose-storage');
  await page.uncheck('#purpose-analytics');
  await page.uncheck('#purpose-compute');
  await page.click('#consent-save');
  await page.waitForFunction(() => /^(Recorded|The node did not)/.test(document.getElementById('consent-record').textContent), null, { timeout: 20_000 });
  assert.match(await text('consent-record'), /^Recorded by the node \(3 entries\), signed as did:key:z6Mk.*: compute no, storage yes, analytics no\.$/);

  // Export (verified here), the audit log, erasure.
  const dataSays = async (button, pattern) => {
    await page.evaluate(() => { document.getElementById('data-state').textContent = ''; });
    await page.click(button);
    await page.waitForFunction(() => /^(Your data|Erased|Export failed|Erasure failed)/.test(document.getElementById('data-state').textContent),
      null, { timeout: 30_000, polling: 100 });
    assert.match(await text('data-state'), pattern);
  };
  // Items: the consent record and the two link statements the identity owns.
  await dataSays('#data-export', /^Your data, verified: 1 consent record\(s\), \d+ audit entries proven in the node's signed log, 3 item\(s\)\.$/);
  await page.click('#audit-verify');
  await page.waitForFunction(() => /^(Verified|Check failed)/.test(document.getElementById('audit-state').textContent), null, { timeout: 30_000 });
  assert.match(await text('audit-state'), /^Verified: \d+ entries under a checkpoint signed by the node\.$/);
  const logged = await page.evaluate(() => [...document.querySelectorAll('#audit-entries li')].map((li) => li.textContent));
  assert.ok(logged.some((l) => / store identity allow \(passkey_link\)$/.test(l)), logged.join('\n'));
  await dataSays('#data-erase', /^Erased, receipt signed by the node: 3 item\(s\) deleted, your audit entries unlinked from you\.$/);
  await page.waitForFunction(() => document.getElementById('id-level').textContent === 'anonymous', null, { timeout: 10_000 });
  assert.deepEqual(problems, [], 'the privacy page logged errors');
  await page.close();
}

/** The impact dashboard after one API request to the node: its energy and carbon charts
 *  have a bar for this hour, the totals and the signed record show, the CSV report states
 *  its methods and sources and has this hour's row, and the charts render (a screenshot). */
async function impactPage(browser, nodeUrl) {
  const r = await fetch(`${nodeUrl}v1/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ prompt: 'The sky is', max_tokens: 4, temperature: 0 }),
  });
  assert.equal(r.status, 200);
  const usage = (await r.json()).usage;
  assert.ok(usage.footprint.energy_uwh > 0, JSON.stringify(usage));
  const page = await browser.context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console error: ${m.text()}`); });
  await page.goto(`${nodeUrl}impact.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => document.body.dataset.ready === 'true' || /^No footprint/.test(document.getElementById('impact-status').textContent),
    null, { timeout: 30_000 });
  assert.match(await page.textContent('#impact-status'), /^Accounted since /);
  const bars = await page.evaluate(() => ['energy-chart', 'carbon-chart'].map((id) =>
    [...document.querySelectorAll(`#${id} svg rect`)].map((r) => Number(r.getAttribute('height')))));
  // 24 hourly bars; this hour's (or, across the hour's turn, the last one's) is not empty.
  for (const b of bars) assert.ok(b.length === 24 && b.slice(-2).some((h) => h > 0), JSON.stringify(bars));
  const totals = await page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#totals dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])));
  assert.ok(Number(totals.Requests) >= 1, JSON.stringify(totals));
  assert.match(totals.Energy, /^\d+(\.\d+)? mWh \((modelled|measured), (thread-model|rapl)\)$/);
  assert.match(await page.textContent('#record'), /^Signed by did:key:z6Mk/);
  const csv = await page.evaluate(async () => (await fetch(document.getElementById('report-csv').href)).text());
  const lines = csv.trim().split('\n');
  assert.match(lines[0], /^# KwaaiNet node footprint report$/);
  assert.ok(lines.some((l) => /^# grid data: CodeCarbon .*Our World in Data/.test(l)), csv);
  const header = lines.indexOf('hour_utc,work_tokens,busy_ms,energy_mwh,carbon_mg');
  assert.ok(header > 0 && lines.length > header + 1, csv);
  const json = await page.evaluate(async () => JSON.parse(await (await fetch(document.getElementById('report-json').href)).text()));
  assert.ok(json.contribution.signature && json.footprint.methods.energy, 'the JSON report carries the signed record and the methods');
  // The network view: the leaderboard of verified records (this node alone here: it did the
  // work above), the community's totals, and a chart of the top contributors' work.
  const network = await page.evaluate(() => ({
    totals: Object.fromEntries([...document.querySelectorAll('#network-totals dt')].map((dt) => [dt.textContent, dt.nextElementSibling.textContent])),
    rows: [...document.querySelectorAll('#leaderboard tbody tr')].map((tr) => [...tr.cells].map((td) => td.textContent)),
    verified: document.getElementById('leaderboard-refused').textContent,
    bars: document.querySelectorAll('#leaderboard-chart svg rect').length,
  }));
  assert.ok(Number(network.totals.Contributors) >= 1, JSON.stringify(network));
  assert.ok(network.rows.length >= 1 && Number(network.rows[0][3]) >= 1, JSON.stringify(network));
  assert.equal(network.bars, network.rows.length);
  assert.match(network.verified, /^All \d+ records verified/);
  assert.match(network.totals['Carbon per 1,000 tokens'], /^\d+(\.\d+)? mg$/);
  const shot = await page.locator('#energy-chart').screenshot();
  assert.ok(shot.length > 1_000, `a rendered chart (${shot.length} bytes of PNG)`);
  assert.deepEqual(problems, [], 'the dashboard logged errors');
  await page.close();
}

/** The demo as an installable app: its manifest and icons, Chromium's own install criteria
 *  (DevTools' installability check: no errors), the offline shell (the page reloads with the
 *  network cut), and a phone-sized screen (nothing wider than the viewport). */
async function pwaShell(browser, nodeUrl) {
  const manifest = await (await fetch(`${nodeUrl}manifest.webmanifest`)).json();
  assert.equal(manifest.display, 'standalone');
  assert.equal(manifest.start_url, './');
  for (const icon of manifest.icons.filter((i) => i.type === 'image/png')) {
    const res = await fetch(new URL(icon.src, nodeUrl));
    assert.equal(res.status, 200, icon.src);
    const png = Buffer.from(await res.arrayBuffer());
    // The PNG's IHDR: width and height as the manifest states them.
    const [w, h] = [png.readUInt32BE(16), png.readUInt32BE(20)];
    assert.equal(`${w}x${h}`, icon.sizes, icon.src);
  }
  const page = await browser.context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  await page.setViewportSize({ width: 390, height: 844 });
  await page.goto(`${nodeUrl}impact.html`, { waitUntil: 'load', timeout: 30_000 });
  await page.waitForFunction(() => document.documentElement.dataset.offline !== undefined, null, { timeout: 30_000 });
  assert.equal(await page.evaluate(() => document.documentElement.dataset.offline), 'ready');
  const cdp = await browser.context.newCDPSession(page);
  const app = await cdp.send('Page.getAppManifest');
  assert.deepEqual(app.errors, [], JSON.stringify(app.errors));
  assert.match(app.url, /manifest\.webmanifest$/);
  const { installabilityErrors } = await cdp.send('Page.getInstallabilityErrors');
  assert.deepEqual(installabilityErrors, [], `Chromium's install criteria: ${JSON.stringify(installabilityErrors)}`);
  // Phone-sized: no page wider than the screen.
  for (const path of ['', 'impact.html', 'privacy.html']) {
    await page.goto(`${nodeUrl}${path}`, { waitUntil: 'load', timeout: 30_000 });
    const { scroll, width } = await page.evaluate(() => ({ scroll: document.documentElement.scrollWidth, width: innerWidth }));
    assert.ok(scroll <= width, `/${path} is ${scroll} px wide on a ${width} px screen`);
  }
  // Offline: the shell comes from the service worker's cache.
  await browser.context.setOffline(true);
  try {
    for (const path of ['impact.html', '']) {
      const res = await page.goto(`${nodeUrl}${path}`, { waitUntil: 'domcontentloaded', timeout: 30_000 });
      assert.equal(res.status(), 200, `/${path} offline`);
      assert.ok(res.fromServiceWorker(), `/${path} offline comes from the service worker`);
      assert.match(await page.title(), /KwaaiNet/);
      assert.ok((await page.textContent('h1')).length > 0);
    }
  } finally {
    await browser.context.setOffline(false);
  }
  assert.deepEqual(problems, []);
  await page.close();
}
