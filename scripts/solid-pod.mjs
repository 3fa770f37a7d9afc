#!/usr/bin/env node
// A throwaway Solid pod (the Community Solid Server) for kwaainet-storage's SolidStore test.
//
//   node scripts/solid-pod.mjs install   npm ci of engine/storage/tests/solid-pod into
//                                        $KWAAINET_CACHE/solid-pod (else ~/.cache/kwaainet/…);
//                                        skipped when the installed lock file is the same
//   node scripts/solid-pod.mjs start     installs if needed, starts the server on localhost
//                                        with its files in a fresh temporary folder, creates an
//                                        account, a pod and client credentials, prints ONE
//                                        JSON line {url, pod, webid, id, secret} on stdout and
//                                        runs until stdin closes or SIGTERM/SIGINT (then stops
//                                        the server and removes the folder)
//
// The server has no host option (it listens on every interface), so it listens on a Unix
// socket in the temporary folder and this script forwards localhost:<free port> (127.0.0.1
// and ::1) to it: the pod is reachable from this machine only. The server's log goes to a
// file in that folder, shown on stderr when it fails (live with KWAAINET_SOLID_LOG=<level>);
// this script's own messages go to stderr.
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer, connect } from 'node:net';
import { homedir, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const source = join(here, '..', 'engine', 'storage', 'tests', 'solid-pod');
const cache = join(process.env.KWAAINET_CACHE ?? join(homedir(), '.cache', 'kwaainet'), 'solid-pod');
const stamp = join(cache, 'node_modules', '.kwaainet-package-lock.json');
const server = join(cache, 'node_modules', '@solid', 'community-server', 'bin', 'server.js');
/** Longest wait for the server to answer, and for one account API call. */
const START_MS = 90_000;
const CALL_MS = 15_000;

const log = (...a) => console.error('[solid-pod]', ...a);

function same(a, b) {
  try {
    return readFileSync(a).equals(readFileSync(b));
  } catch {
    return false;
  }
}

function install() {
  const lock = join(source, 'package-lock.json');
  if (existsSync(server) && same(lock, stamp)) return;
  log(`installing @solid/community-server into ${cache} (npm ci)`);
  const t0 = Date.now();
  mkdirSync(cache, { recursive: true });
  cpSync(join(source, 'package.json'), join(cache, 'package.json'));
  cpSync(lock, join(cache, 'package-lock.json'));
  // No install scripts: the server is plain JavaScript.
  const r = spawnSync('npm', ['ci', '--no-audit', '--no-fund', '--ignore-scripts', '--loglevel=error'], {
    cwd: cache,
    stdio: ['ignore', 'inherit', 'inherit'],
    timeout: 600_000,
  });
  if (r.status !== 0) throw new Error(`npm ci failed (${r.error?.message ?? `exit ${r.status}`})`);
  cpSync(lock, stamp);
  log(`installed in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

/** A connection handler that pipes each client to `socket`. */
function forwardTo(socket) {
  return (client) => {
    const upstream = connect(socket);
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close).on('close', close);
    upstream.on('error', close).on('close', close);
  };
}

function listen(host, port, socket) {
  const proxy = createServer(forwardTo(socket));
  return new Promise((resolve, reject) => {
    proxy.once('error', reject);
    proxy.listen(port, host, () => resolve(proxy));
  });
}

/**
 * Loopback listeners on one free port forwarding to `socket`: 127.0.0.1, and ::1 where the
 * machine has IPv6 (`localhost` may resolve to either). The pod is named by `localhost`
 * because Solid-OIDC accepts a plain-HTTP WebID only on localhost.
 */
async function forward(socket) {
  for (let attempt = 0; attempt < 10; attempt++) {
    const v4 = await listen('127.0.0.1', 0, socket);
    const { port } = v4.address();
    try {
      return [v4, await listen('::1', port, socket)];
    } catch (e) {
      if (e.code !== 'EADDRINUSE') return [v4]; // no IPv6 here
      v4.close();
    }
  }
  throw new Error('no port free on both 127.0.0.1 and ::1');
}

async function call(url, { method = 'GET', token, body } = {}) {
  const headers = { accept: 'application/json' };
  if (token) headers.authorization = `CSS-Account-Token ${token}`;
  if (body !== undefined) headers['content-type'] = 'application/json';
  const res = await fetch(url, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(CALL_MS),
  });
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(`${method} ${url}: ${res.status} ${JSON.stringify(json).slice(0, 500)}`);
  return json;
}

async function waitReady(url, child) {
  const deadline = Date.now() + START_MS;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`the server exited (${child.exitCode})`);
    try {
      const res = await fetch(`${url}.account/`, { signal: AbortSignal.timeout(2_000) });
      if (res.ok) return;
    } catch {
      // Not listening yet.
    }
    await new Promise((r) => setTimeout(r, 250));
  }
  throw new Error(`the server did not answer within ${START_MS / 1000} s`);
}

/** Account, password login, pod and client credentials through CSS v7's JSON account API. */
async function provision(url) {
  const index = await call(`${url}.account/`);
  const { authorization: token } = await call(index.controls.account.create, { method: 'POST', body: {} });
  const { controls } = await call(`${url}.account/`, { token });
  await call(controls.password.create, {
    method: 'POST',
    token,
    body: { email: 'kwaainet@example.org', password: 'kwaainet-test-only' },
  });
  const pod = await call(controls.account.pod, { method: 'POST', token, body: { name: 'pod' } });
  const creds = await call(controls.account.clientCredentials, {
    method: 'POST',
    token,
    body: { name: 'kwaainet-storage', webId: pod.webId },
  });
  return { url, pod: pod.pod, webid: pod.webId, id: creds.id, secret: creds.secret };
}

async function start() {
  install();
  const dir = mkdtempSync(join(tmpdir(), 'kwaainet-solid-'));
  const socket = join(dir, 'css.sock');
  const proxies = await forward(socket);
  const url = `http://localhost:${proxies[0].address().port}/`;
  // The server's log goes to a file (its file backend logs harmless errors on every
  // deletion), shown when something fails; KWAAINET_SOLID_LOG=<level> shows it live.
  const logFile = join(dir, 'css.log');
  const live = process.env.KWAAINET_SOLID_LOG !== undefined;
  const out = live ? 2 : openSync(logFile, 'a');
  const child = spawn(
    process.execPath,
    [server, '-c', '@css:config/file.json', '-f', join(dir, 'data'), '--socket', socket, '-b', url, '-l', process.env.KWAAINET_SOLID_LOG ?? 'warn'],
    { stdio: ['ignore', out, out] },
  );
  const showLog = () => {
    if (live) return;
    try {
      process.stderr.write(readFileSync(logFile, 'utf8').slice(-8_000));
    } catch {
      // no log yet
    }
  };
  let stopping = false;
  const stop = (code) => {
    if (stopping) return;
    stopping = true;
    child.kill('SIGTERM');
    for (const p of proxies) p.close();
    const done = () => {
      rmSync(dir, { recursive: true, force: true });
      process.exit(code);
    };
    if (child.exitCode !== null) return done();
    const force = setTimeout(() => child.kill('SIGKILL'), 5_000);
    child.once('exit', () => {
      clearTimeout(force);
      done();
    });
  };
  process.on('SIGTERM', () => stop(0));
  process.on('SIGINT', () => stop(0));
  process.stdin.on('end', () => stop(0)).on('close', () => stop(0)).resume();
  child.on('exit', (code) => {
    if (!stopping) {
      showLog();
      log(`the server exited (${code})`);
      stop(1);
    }
  });
  try {
    await waitReady(url, child);
    const info = await provision(url);
    process.stdout.write(`${JSON.stringify(info)}\n`);
    log(`pod ${info.pod} ready`);
  } catch (e) {
    showLog();
    log(e.message);
    stop(1);
  }
}

const command = process.argv[2];
try {
  if (command === 'install') install();
  else if (command === 'start') await start();
  else {
    log('usage: node scripts/solid-pod.mjs install|start');
    process.exit(2);
  }
} catch (e) {
  log(e.message);
  process.exit(1);
}
