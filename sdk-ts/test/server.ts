/**
 * A real HTTP server on 127.0.0.1 (random port) serving one model file, with switches for
 * the failures the downloader must survive. Every test closes it; `unref` keeps a forgotten
 * one from holding the process.
 */

import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ModelServerOptions {
  /** Cut the connection after this many body bytes, for the first `cuts` responses. */
  cutAfter?: number;
  cuts?: number;
  /** Answer 200 with the whole file even to a Range request. */
  ignoreRange?: boolean;
  etag?: string;
}

export interface ModelServer {
  url: string;
  requests: Array<{ range: string | undefined; ifRange: string | undefined; status: number }>;
  close(): Promise<void>;
}

export const sha256 = (bytes: Uint8Array): string => createHash('sha256').update(bytes).digest('hex');

export async function serveModel(body: Uint8Array, options: ModelServerOptions = {}): Promise<ModelServer> {
  const requests: ModelServer['requests'] = [];
  let cutsLeft = options.cuts ?? (options.cutAfter !== undefined ? 1 : 0);
  const etag = options.etag ?? '"model-v1"';
  const server: Server = createServer((req: IncomingMessage, res) => {
    const range = req.headers.range;
    const m = range && !options.ignoreRange ? /^bytes=(\d+)-$/.exec(range) : null;
    const start = m ? Number(m[1]) : 0;
    if (m && start >= body.byteLength) {
      requests.push({ range, ifRange: req.headers['if-range'] as string | undefined, status: 416 });
      res.writeHead(416, { 'content-range': `bytes */${body.byteLength}` }).end();
      return;
    }
    const status = m ? 206 : 200;
    requests.push({ range, ifRange: req.headers['if-range'] as string | undefined, status });
    const headers: Record<string, string> = {
      'content-type': 'application/octet-stream',
      'content-length': String(body.byteLength - start),
      'accept-ranges': 'bytes',
      etag,
    };
    if (m) headers['content-range'] = `bytes ${start}-${body.byteLength - 1}/${body.byteLength}`;
    res.writeHead(status, headers);
    const rest = body.subarray(start);
    if (cutsLeft > 0 && options.cutAfter !== undefined && options.cutAfter < rest.byteLength) {
      cutsLeft--;
      res.write(rest.subarray(0, options.cutAfter), () => {
        // Give the bytes time to reach the client, then drop the connection mid-body.
        setTimeout(() => req.socket.destroy(), 20);
      });
      return;
    }
    res.end(rest);
  });
  server.unref();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/model.gguf`,
    requests,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
