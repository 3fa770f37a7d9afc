/**
 * One JSON POST of a signed statement to a node's data routes (`/api/v1/consent`,
 * `/api/v1/data`): bounded by `timeoutMs` and the caller's signal; the status and the
 * answer's JSON object (empty when it is not JSON). Unreachable is a `NetworkError`.
 */
import { NetworkError, abortErrorFrom, throwIfAborted } from './errors.js';

export async function postToNode(
  nodeUrl: string | URL, path: string, body: unknown, opts: { signal?: AbortSignal; timeoutMs?: number }, defaultMs: number,
): Promise<{ status: number; body: Record<string, unknown> }> {
  throwIfAborted(opts.signal);
  const timeout = AbortSignal.timeout(opts.timeoutMs ?? defaultMs);
  const url = new URL(path, nodeUrl);
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: opts.signal ? AbortSignal.any([opts.signal, timeout]) : timeout,
  }).catch((e: unknown) => {
    if (opts.signal?.aborted) throw abortErrorFrom(opts.signal);
    throw new NetworkError(`${url.pathname}: ${String(e)}`, undefined, { cause: e });
  });
  const answer = (await res.json().catch(() => ({}))) as Record<string, unknown>;
  return { status: res.status, body: answer };
}
