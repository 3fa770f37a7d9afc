/**
 * `ProxyEngine`: the `Engine` interface over messages to a host in a dedicated worker or a
 * service worker (or any `Transport`: a MessagePort in tests).
 *
 * Liveness: while requests are open the proxy pings every `pingIntervalMs`; a host that
 * sends nothing for `pingTimeoutMs` (`loadTimeoutMs` while it parses a model or runs a
 * prompt's prefill, which block it) is declared crashed, and so is one whose pong carries a new instance id (the browser
 * killed and restarted the service worker: the loaded model is gone). Open requests then
 * reject with EngineCrashedError and every later call fails fast; the SDK builds a new
 * proxy (a restart) on the next request.
 */

import {
  EngineCrashedError, ProtocolError, abortErrorFrom, errorFromWire, throwIfAborted,
} from './errors.js';
import type { Engine, GenerateOptions, GenerationResult, LoadOptions } from './engine.js';
import { randomId } from './local-engine.js';
import {
  pageMessage, parseHostMessage, type EngineInfo, type EngineSpec, type GenerateRequest,
  type HostKind, type HostMessage, type HostStatus, type ModelSpec, type PageMessage,
} from './protocol.js';

export interface Transport {
  readonly host: HostKind;
  send(message: PageMessage): void;
  /** Raw incoming data (the proxy validates it) and fatal transport errors. */
  listen(onData: (data: unknown) => void, onFatal: (error: Error) => void): () => void;
  close(): void;
}

export interface ProxyOptions {
  pingIntervalMs?: number;
  pingTimeoutMs?: number;
  /** Silence allowed while the host is in the 'load' phase or a prefill (both block it). */
  loadTimeoutMs?: number;
  now?: () => number;
}

type Handler = (m: HostMessage) => void;

interface Pending {
  onMessage: Handler;
  fail: (error: Error) => void;
}

export class ProxyEngine implements Engine {
  readonly host: HostKind;
  private readonly transport: Transport;
  private readonly pending = new Map<string, Pending>();
  private readonly crashListeners = new Set<(e: Error) => void>();
  private readonly idPrefix = randomId('r');
  private readonly options: Required<Omit<ProxyOptions, 'now'>>;
  private readonly now: () => number;
  private readonly unlisten: () => void;
  private seq = 0;
  private crashed: Error | null = null;
  private disposed = false;
  private instanceId: string | null = null;
  private lastHeard: number;
  private loading = 0;
  /** The host runs the WebGPU engine: each of its steps may block the host's thread for
   *  seconds (shader compilation; SwiftShader computes on the CPU), so a whole generation
   *  gets the load timeout, not only its prefill. */
  private blockingSteps = false;
  private heartbeat: ReturnType<typeof setInterval> | null = null;

  constructor(transport: Transport, options: ProxyOptions = {}) {
    this.transport = transport;
    this.host = transport.host;
    this.options = {
      pingIntervalMs: options.pingIntervalMs ?? 2_000,
      pingTimeoutMs: options.pingTimeoutMs ?? 10_000,
      loadTimeoutMs: options.loadTimeoutMs ?? 120_000,
    };
    this.now = options.now ?? (() => performance.now());
    this.lastHeard = this.now();
    this.unlisten = transport.listen((data) => this.receive(data), (err) => this.crash(err));
  }

  /** The host's instance id, once a pong or status named it. */
  get hostInstanceId(): string | null {
    return this.instanceId;
  }

  get isCrashed(): boolean {
    return this.crashed !== null;
  }

  private nextId(): string {
    this.seq += 1;
    return `${this.idPrefix}-${this.seq}`;
  }

  private receive(data: unknown): void {
    let m: HostMessage;
    try {
      m = parseHostMessage(data);
    } catch (err) {
      // Another page's proxy shares a service worker's message channel only by id; a
      // malformed message is dropped, never half-applied.
      if (err instanceof ProtocolError) return;
      throw err;
    }
    const pending = this.pending.get(m.id);
    if (!pending) return; // not ours (another tab's request on a shared SW) or already settled
    this.lastHeard = this.now();
    if (m.type === 'pong' || m.type === 'status') {
      const id = m.type === 'pong' ? m.instanceId : m.status.instanceId;
      if (this.instanceId !== null && id !== this.instanceId) {
        this.crash(new EngineCrashedError(`the ${this.host} host restarted (its state, the loaded model included, was lost)`));
        return;
      }
      this.instanceId = id;
    }
    pending.onMessage(m);
  }

  private crash(error: Error): void {
    if (this.crashed || this.disposed) return;
    const e = error instanceof EngineCrashedError ? error : new EngineCrashedError(`the ${this.host} host failed: ${error.message}`, { cause: error });
    this.crashed = e;
    this.stopHeartbeat();
    const pending = [...this.pending.values()];
    this.pending.clear();
    for (const p of pending) p.fail(e);
    this.unlisten();
    try {
      this.transport.close();
    } catch {
      // already gone
    }
    for (const l of this.crashListeners) l(e);
  }

  private startHeartbeat(): void {
    if (this.heartbeat !== null) return;
    this.lastHeard = this.now();
    this.heartbeat = setInterval(() => this.beat(), this.options.pingIntervalMs);
  }

  private stopHeartbeat(): void {
    if (this.heartbeat !== null) clearInterval(this.heartbeat);
    this.heartbeat = null;
  }

  private beat(): void {
    if (this.pending.size === 0) {
      this.stopHeartbeat();
      return;
    }
    const limit = this.loading > 0 ? this.options.loadTimeoutMs : this.options.pingTimeoutMs;
    if (this.now() - this.lastHeard > limit) {
      this.crash(new EngineCrashedError(`the ${this.host} host stopped answering (${Math.round(limit / 1000)} s without a message)`));
      return;
    }
    // The pong only refreshes lastHeard; nobody awaits it.
    const id = this.nextId();
    this.pending.set(id, { onMessage: () => void this.pending.delete(id), fail: () => {} });
    this.post(pageMessage({ type: 'ping', id }), id);
  }

  private post(message: PageMessage, id: string): void {
    try {
      this.transport.send(message);
    } catch (err) {
      this.pending.delete(id);
      this.crash(err instanceof Error ? err : new Error(String(err)));
    }
  }

  private check(): void {
    if (this.disposed) throw new EngineCrashedError('this engine proxy was disposed');
    if (this.crashed) throw this.crashed;
  }

  /** Sends one request; `onMessage` returns a value to settle with, or undefined to keep
   *  listening. An abort sends `abort` to the host and rejects at once. */
  private request<T>(build: (id: string) => PageMessage, onMessage: (m: HostMessage) => T | undefined,
    signal?: AbortSignal): Promise<T> {
    try {
      this.check();
      throwIfAborted(signal);
    } catch (err) {
      return Promise.reject(err); // callers always get a promise, never a synchronous throw
    }
    const id = this.nextId();
    return new Promise<T>((resolve, reject) => {
      const cleanup = (): void => {
        this.pending.delete(id);
        signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = (): void => {
        cleanup();
        try {
          this.transport.send(pageMessage({ type: 'abort', id }));
        } catch {
          // host gone: nothing to stop
        }
        reject(abortErrorFrom(signal as AbortSignal));
      };
      this.pending.set(id, {
        onMessage: (m) => {
          if (m.type === 'error') {
            cleanup();
            reject(errorFromWire(m.error.code, m.error.message, m.error.fields));
            return;
          }
          let value: T | undefined;
          try {
            value = onMessage(m);
          } catch (err) {
            cleanup();
            reject(err);
            return;
          }
          if (value !== undefined) {
            cleanup();
            resolve(value);
          }
        },
        fail: (e) => {
          cleanup();
          reject(e);
        },
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      this.startHeartbeat();
      this.post(build(id), id);
    });
  }

  private unexpected(m: HostMessage, wanted: string): never {
    throw new ProtocolError(`host answered '${m.type}' where '${wanted}' was expected`);
  }

  async load(model: ModelSpec, engine: EngineSpec, options: LoadOptions = {}): Promise<EngineInfo> {
    let inLoadPhase = false;
    const leaveLoadPhase = (): void => {
      if (inLoadPhase) this.loading -= 1;
      inLoadPhase = false;
    };
    try {
      return await this.request((id) => pageMessage({ type: 'load', id, model, engine }), (m) => {
        if (m.type === 'progress') {
          if (m.progress.phase === 'load' && !inLoadPhase) {
            inLoadPhase = true;
            this.loading += 1;
          }
          options.onProgress?.(m.progress);
          return undefined;
        }
        if (m.type !== 'loaded') return this.unexpected(m, 'loaded');
        this.blockingSteps = m.info.backend === 'webgpu';
        return m.info;
      }, options.signal);
    } finally {
      leaveLoadPhase();
    }
  }

  async generate(request: GenerateRequest, options: GenerateOptions = {}): Promise<GenerationResult> {
    // The prefill runs as one synchronous engine call (seconds for a long prompt, during
    // which the host answers nothing): from the host's 'started' (it is alive and about to
    // block) to the first chunk, allow the load timeout; with the WebGPU engine, whose steps
    // may block the host for seconds each, until the generation ends.
    let inPrefill = false;
    const prefillDone = (): void => {
      if (inPrefill) this.loading -= 1;
      inPrefill = false;
    };
    let text = '';
    try {
      return await this.request((id) => pageMessage({ type: 'chat', id, request }), (m) => {
        if (m.type === 'started') {
          if (!inPrefill) this.loading += 1;
          inPrefill = true;
          return undefined;
        }
        if (m.type === 'chunk') {
          if (!this.blockingSteps) prefillDone();
          text += m.text;
          options.onChunk?.(m.text, m.completionTokens, m.tokens);
          return undefined;
        }
        if (m.type === 'done') return { text, finishReason: m.finishReason, usage: m.usage };
        return this.unexpected(m, 'done');
      }, options.signal);
    } finally {
      prefillDone();
    }
  }

  info(): Promise<EngineInfo | null> {
    return this.request((id) => pageMessage({ type: 'info', id }), (m) => (m.type === 'info' ? m.info : this.unexpected(m, 'info')));
  }

  status(): Promise<HostStatus> {
    return this.request((id) => pageMessage({ type: 'status', id }), (m) => (m.type === 'status' ? m.status : this.unexpected(m, 'status')));
  }

  hasModel(url: string): Promise<boolean> {
    return this.request((id) => pageMessage({ type: 'has-model', id, url }),
      (m) => (m.type === 'model-state' ? m.present : this.unexpected(m, 'model-state')));
  }

  async deleteModel(url: string): Promise<void> {
    await this.request((id) => pageMessage({ type: 'delete-model', id, url }),
      (m) => (m.type === 'model-state' ? m.present : this.unexpected(m, 'model-state')));
  }

  /** Resolves with the host's instance id; a silent host is declared crashed. By default
   *  the wait is `loadTimeoutMs` while the host is in a phase that blocks it (parsing a
   *  model, a prefill), else `pingTimeoutMs`. */
  ping(timeoutMs = this.loading > 0 ? this.options.loadTimeoutMs : this.options.pingTimeoutMs): Promise<string> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    return this.request((id) => pageMessage({ type: 'ping', id }), (m) => (m.type === 'pong' ? m.instanceId : this.unexpected(m, 'pong')),
      controller.signal).catch((err: unknown) => {
      if (controller.signal.aborted && !this.crashed) {
        this.crash(new EngineCrashedError(`the ${this.host} host did not answer a ping within ${timeoutMs} ms`));
        throw this.crashed ?? err;
      }
      throw err;
    }).finally(() => clearTimeout(timer));
  }

  onCrash(listener: (error: Error) => void): () => void {
    this.crashListeners.add(listener);
    return () => void this.crashListeners.delete(listener);
  }

  /** Aborts open requests (telling the host) and closes the transport. */
  async dispose(): Promise<void> {
    if (this.disposed) return;
    const ids = [...this.pending.keys()];
    for (const id of ids) {
      try {
        this.transport.send(pageMessage({ type: 'abort', id }));
      } catch {
        // host gone
      }
    }
    const pending = [...this.pending.values()];
    this.pending.clear();
    this.disposed = true;
    this.stopHeartbeat();
    for (const p of pending) p.fail(new EngineCrashedError('the engine was disposed'));
    this.unlisten();
    this.transport.close();
  }
}

/** A transport over a MessagePort-like object (MessageChannel in-page and in tests). */
export function portTransport(port: MessagePort, host: HostKind): Transport {
  return {
    host,
    send: (m) => port.postMessage(m),
    listen(onData, onFatal) {
      const onMessage = (e: MessageEvent): void => onData(e.data);
      const onError = (): void => onFatal(new Error('a message could not be deserialised'));
      port.addEventListener('message', onMessage);
      port.addEventListener('messageerror', onError);
      port.start();
      return () => {
        port.removeEventListener('message', onMessage);
        port.removeEventListener('messageerror', onError);
      };
    },
    close: () => port.close(),
  };
}

/** A transport to a dedicated worker; `close` terminates it. */
export function workerTransport(worker: Worker): Transport {
  return {
    host: 'worker',
    send: (m) => worker.postMessage(m),
    listen(onData, onFatal) {
      const onMessage = (e: MessageEvent): void => onData(e.data);
      const onError = (e: ErrorEvent): void => onFatal(new Error(e.message || 'the worker failed'));
      worker.addEventListener('message', onMessage);
      worker.addEventListener('error', onError);
      return () => {
        worker.removeEventListener('message', onMessage);
        worker.removeEventListener('error', onError);
      };
    },
    close: () => worker.terminate(),
  };
}

/** A transport to a service worker: requests go by `postMessage` to the active worker,
 *  answers come to this page's `navigator.serviceWorker` (the proxy keeps only its ids). */
export function serviceWorkerTransport(registration: ServiceWorkerRegistration, container: ServiceWorkerContainer): Transport {
  const target = (): ServiceWorker => {
    const sw = registration.active;
    if (!sw) throw new EngineCrashedError('the service worker is not active');
    return sw;
  };
  return {
    host: 'service-worker',
    send: (m) => target().postMessage(m),
    listen(onData) {
      const onMessage = (e: MessageEvent): void => onData(e.data);
      container.addEventListener('message', onMessage);
      container.startMessages();
      return () => container.removeEventListener('message', onMessage);
    },
    close: () => {
      // The SW is shared with other tabs: leave it running.
    },
  };
}
