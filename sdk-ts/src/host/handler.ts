/**
 * The engine host's message handler: validates every incoming message (protocol.ts),
 * drives a `LocalEngine`, and answers with protocol messages. Transport-agnostic — the
 * dedicated-worker and service-worker entries (worker.ts, service-worker.ts) only adapt
 * `postMessage` to it, and tests drive it directly.
 *
 * A page that goes away mid-request must not wedge the engine: every message from a
 * connection (pings included: the page pings while it has requests open) refreshes its
 * `lastSeen`; a watchdog aborts the requests of a connection silent for
 * `heartbeatTimeoutMs`, or whose `alive()` (service worker: `clients.get(id)`) says it is gone.
 */

import { ProtocolError, errorFields, toKwaaiNetError } from '../errors.js';
import type { LocalEngine } from '../local-engine.js';
import {
  LIMITS, hostMessage, parsePageMessage, wireErrorOf, type HostMessage, type PageMessage,
} from '../protocol.js';
import { isRecord } from '../validate.js';

export interface HostConnection {
  send(message: HostMessage): void;
  /** False once the page is known to be gone (optional; the heartbeat covers the rest). */
  alive?(): Promise<boolean>;
}

export interface HandlerOptions {
  /** Abort a connection's requests after this long without a message from it (default 15 s). */
  heartbeatTimeoutMs?: number;
  /** How often the watchdog looks (default 1 s). */
  watchdogIntervalMs?: number;
  now?: () => number;
  /** Where protocol violations are reported (default: console.warn). */
  onProtocolError?: (error: ProtocolError) => void;
}

interface Running {
  controller: AbortController;
  connectionKey: string;
  connection: HostConnection;
}

export class EngineHostHandler {
  readonly engine: LocalEngine;
  private readonly running = new Map<string, Running>();
  private readonly lastSeen = new Map<string, number>();
  private readonly heartbeatTimeoutMs: number;
  private readonly watchdogIntervalMs: number;
  private readonly now: () => number;
  private readonly onProtocolError: (error: ProtocolError) => void;
  private watchdog: ReturnType<typeof setInterval> | null = null;
  private lastCheck: number | null = null;
  /** Connections found silent by the last on-time round: aborted if the next one agrees. */
  private suspects = new Set<string>();

  constructor(engine: LocalEngine, options: HandlerOptions = {}) {
    this.engine = engine;
    this.heartbeatTimeoutMs = options.heartbeatTimeoutMs ?? 15_000;
    this.watchdogIntervalMs = options.watchdogIntervalMs ?? 1_000;
    this.now = options.now ?? (() => performance.now());
    this.onProtocolError = options.onProtocolError ?? ((e) => console.warn(`kwaainet host: ${e.message}`));
  }

  /** Requests in flight (for tests and status). */
  get inFlight(): number {
    return this.running.size;
  }

  /** Handles one incoming message; the promise settles when the request it started is
   *  finished (a service worker passes it to `event.waitUntil`). Never rejects. */
  handle(data: unknown, connection: HostConnection, connectionKey: string): Promise<void> {
    let message: PageMessage;
    try {
      message = parsePageMessage(data);
    } catch (err) {
      const error = err instanceof ProtocolError ? err : new ProtocolError(String(err));
      this.onProtocolError(error);
      const id = isRecord(data) && typeof data.id === 'string' && data.id.length > 0 && data.id.length <= LIMITS.id
        ? data.id : 'invalid';
      this.safeSend(connection, hostMessage({ type: 'error', id, error: wireErrorOf('protocol', error.message) }));
      return Promise.resolve();
    }
    this.lastSeen.set(connectionKey, this.now());
    return this.dispatch(message, connection, connectionKey).catch((err: unknown) => {
      const e = toKwaaiNetError(err);
      this.safeSend(connection, hostMessage({ type: 'error', id: message.id, error: wireErrorOf(e.code, e.message, errorFields(e)) }));
    });
  }

  private safeSend(connection: HostConnection, message: HostMessage): void {
    try {
      connection.send(message);
    } catch {
      // The page is gone (a closed port or client): the watchdog ends its requests.
    }
  }

  private async dispatch(m: PageMessage, conn: HostConnection, key: string): Promise<void> {
    const reply = (msg: Parameters<typeof hostMessage>[0]): void => this.safeSend(conn, hostMessage(msg));
    switch (m.type) {
      case 'ping':
        reply({ type: 'pong', id: m.id, instanceId: this.engine.instanceId });
        return;
      case 'status':
        reply({ type: 'status', id: m.id, status: await this.engine.status() });
        return;
      case 'info':
        reply({ type: 'info', id: m.id, info: await this.engine.info() });
        return;
      case 'has-model':
        reply({ type: 'model-state', id: m.id, present: await this.engine.hasModel(m.url) });
        return;
      case 'delete-model':
        await this.engine.deleteModel(m.url);
        reply({ type: 'model-state', id: m.id, present: false });
        return;
      case 'abort':
        this.running.get(m.id)?.controller.abort();
        return;
      case 'load':
        await this.track(m.id, conn, key, async (signal) => {
          const info = await this.engine.load(m.model, m.engine, {
            signal,
            onProgress: (progress) => reply({ type: 'progress', id: m.id, progress }),
          });
          reply({ type: 'loaded', id: m.id, info });
        });
        return;
      case 'chat':
        await this.track(m.id, conn, key, async (signal) => {
          const result = await this.engine.generate(m.request, {
            signal,
            onStart: () => reply({ type: 'started', id: m.id }),
            onChunk: (text, completionTokens, tokens) => reply({ type: 'chunk', id: m.id, text, tokens, completionTokens }),
          });
          reply({ type: 'done', id: m.id, finishReason: result.finishReason, usage: result.usage });
        });
        return;
    }
  }

  private async track(id: string, connection: HostConnection, connectionKey: string,
    run: (signal: AbortSignal) => Promise<void>): Promise<void> {
    if (this.running.has(id)) throw new ProtocolError(`request id ${id} is already in flight`);
    const controller = new AbortController();
    this.running.set(id, { controller, connectionKey, connection });
    this.startWatchdog();
    try {
      await run(controller.signal);
    } finally {
      this.running.delete(id);
      if (this.running.size === 0) this.stopWatchdog();
    }
  }

  private startWatchdog(): void {
    if (this.watchdog !== null) return;
    this.watchdog = setInterval(() => void this.check(), this.watchdogIntervalMs);
  }

  private stopWatchdog(): void {
    if (this.watchdog !== null) clearInterval(this.watchdog);
    this.watchdog = null;
    this.lastCheck = null;
    this.suspects.clear();
  }

  /** Aborts the requests of connections that went silent or away. */
  async check(): Promise<void> {
    const now = this.now();
    const previous = this.lastCheck;
    this.lastCheck = now;
    // The watchdog ran late: the host's own thread was blocked (a WebGPU engine step can
    // take seconds), so the pages' pings of that time are still queued behind this check.
    // Judge silence on the next round, after they have been read.
    if (previous !== null && now - previous > 3 * this.watchdogIntervalMs) return;
    // Silence is judged on two on-time rounds in a row: between them the event loop turns,
    // so pings queued behind a long engine step (a WebGPU prefill between two short awaits)
    // are read before a page is given up on.
    const suspects = new Set<string>();
    const checked = new Map<string, boolean>();
    for (const [, r] of this.running) {
      if (r.controller.signal.aborted) continue;
      let alive = checked.get(r.connectionKey);
      if (alive === undefined) {
        const seen = this.lastSeen.get(r.connectionKey) ?? 0;
        alive = now - seen <= this.heartbeatTimeoutMs;
        if (!alive && !this.suspects.has(r.connectionKey)) {
          suspects.add(r.connectionKey);
          alive = true;
        }
        if (alive && r.connection.alive) alive = await r.connection.alive().catch(() => true);
        checked.set(r.connectionKey, alive);
      }
      if (!alive) r.controller.abort(new Error('the page went away'));
    }
    this.suspects = suspects;
    for (const key of [...this.lastSeen.keys()]) {
      if (!checked.has(key) && now - (this.lastSeen.get(key) ?? 0) > this.heartbeatTimeoutMs) this.lastSeen.delete(key);
    }
  }

  /** Aborts everything (the host is shutting down). */
  close(): void {
    for (const r of this.running.values()) r.controller.abort();
    this.stopWatchdog();
  }
}
