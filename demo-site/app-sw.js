// The demo site's own service worker: the offline shell that makes it an installable app.
// (The engine's service worker, kwaainet-sw.js, lives under /cdn/ with a scope of its own
// and never intercepts fetches; this one does, for the site's pages only.)
//
// - install: caches the shell (pages, styles, scripts, icons, manifest);
// - fetch: pages and the shell network-first (a deploy shows at once; offline, the cached
//   copy), the SDK bundle under /cdn/ (versioned, immutable) cache-first and cached as
//   it is first loaded; never the API, the metrics, the model (the SDK caches the model
//   itself, with its integrity check) or a range request.
'use strict';

const SHELL_CACHE = 'kwaainet-shell-v1';
const SHELL = [
  './', 'index.html', 'impact.html', 'privacy.html', 'demo.css', 'demo.js', 'pwa.mjs',
  'impact.mjs', 'privacy.mjs', 'rights-ui.mjs', 'coverage.mjs', 'favicon.svg', 'manifest.webmanifest',
  'icons/icon-192.png', 'icons/icon-512.png', 'icons/maskable-512.png',
];
/** Paths this worker never answers (relative to its scope). */
const PASS = ['api/', 'v1/', 'metrics', 'models/'];
/** Most bundle files kept (the CDN folder holds a few engines; older versions go). */
const MAX_CDN_ENTRIES = 64;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(SHELL_CACHE).then((c) => c.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const name of await caches.keys()) {
      if (name.startsWith('kwaainet-shell-') && name !== SHELL_CACHE) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET' || req.headers.has('range')) return;
  const url = new URL(req.url);
  const scope = new URL(self.registration.scope);
  if (url.origin !== scope.origin || !url.pathname.startsWith(scope.pathname)) return;
  const path = url.pathname.slice(scope.pathname.length);
  if (PASS.some((p) => path.startsWith(p))) return;
  event.respondWith(path.startsWith('cdn/') ? cacheFirst(req) : networkFirst(req));
});

async function networkFirst(req) {
  const cache = await caches.open(SHELL_CACHE);
  try {
    const res = await fetch(req);
    if (res.ok && res.type === 'basic') await cache.put(req, res.clone());
    return res;
  } catch (err) {
    const hit = await cache.match(req, { ignoreSearch: true })
      ?? (req.mode === 'navigate' ? await cache.match('index.html') : undefined);
    if (hit) return hit;
    throw err;
  }
}

async function cacheFirst(req) {
  const cache = await caches.open(SHELL_CACHE);
  const hit = await cache.match(req);
  if (hit) return hit;
  const res = await fetch(req);
  if (res.ok && (res.type === 'basic' || res.type === 'cors')) {
    await cache.put(req, res.clone());
    const keys = (await cache.keys()).filter((k) => new URL(k.url).pathname.includes('/cdn/'));
    for (const old of keys.slice(0, Math.max(0, keys.length - MAX_CDN_ENTRIES))) await cache.delete(old);
  }
  return res;
}
