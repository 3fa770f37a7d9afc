/**
 * Starting a worker from a URL that may be on a CDN. Workers must be same-origin and
 * `new Worker()` takes no integrity, so a script on another origin, or one with an SRI hash
 * to check, is fetched (CORS, the hash checked by the browser) and run from a blob. (A site
 * whose CSP has a worker-src without `blob:` must use same-origin files without baked
 * hashes.) The engine host and the serving worker both start this way.
 */

/** Whether `url` is on this page's origin. */
export function sameOrigin(url: string): boolean {
  const loc = (globalThis as { location?: Location }).location;
  try {
    return loc !== undefined && new URL(url, loc.href).origin === loc.origin;
  } catch {
    return false;
  }
}

/** The worker; `httpError` makes the error for a script the server did not give (status). */
export async function spawnWorker(
  url: string, integrity: string | undefined, options: WorkerOptions, httpError: (status: number) => Error,
): Promise<Worker> {
  if (sameOrigin(url) && !integrity) return new Worker(url, options);
  const init: RequestInit = { mode: 'cors', credentials: 'omit' };
  if (integrity) init.integrity = integrity;
  const res = await fetch(url, init);
  if (!res.ok) throw httpError(res.status);
  const blob = new Blob([await res.text()], { type: 'text/javascript' });
  const blobUrl = URL.createObjectURL(blob);
  try {
    return new Worker(blobUrl, options);
  } finally {
    // The worker has fetched (or will fetch) the blob already; revoking later is safe.
    setTimeout(() => URL.revokeObjectURL(blobUrl), 10_000);
  }
}
