/**
 * The one engine interface. `LocalEngine` implements it in the current context (in-page, or
 * inside a worker / service worker behind the host handler); `ProxyEngine` implements it
 * by messages to a host in a dedicated worker or a service worker. The SDK only ever holds
 * an `Engine`, so where the model runs is a construction detail.
 */

import type {
  EngineInfo, EngineSpec, GenerateRequest, GenerationUsage, HostKind, HostStatus, ModelSpec, Progress,
} from './protocol.js';

export interface LoadOptions {
  signal?: AbortSignal;
  onProgress?: (progress: Progress) => void;
}

export interface GenerateOptions {
  signal?: AbortSignal;
  /** Called with each new piece of text, the token ids generated with it, and the
   *  completion token count so far. */
  onChunk?: (text: string, completionTokens: number, tokens: number[]) => void;
  /** Called once the request is accepted, just before the prefill (one blocking call). */
  onStart?: () => void;
}

export interface GenerationResult {
  text: string;
  finishReason: 'stop' | 'length';
  usage: GenerationUsage;
}

export interface Engine {
  readonly host: HostKind;
  /** Fetches (or finds in the cache), verifies and loads a model. Loading the model that is
   *  already loaded returns at once — a service-worker host keeps it across page loads. */
  load(model: ModelSpec, engine: EngineSpec, options?: LoadOptions): Promise<EngineInfo>;
  /** One generation; concurrent calls run one after the other. */
  generate(request: GenerateRequest, options?: GenerateOptions): Promise<GenerationResult>;
  info(): Promise<EngineInfo | null>;
  status(): Promise<HostStatus>;
  hasModel(url: string): Promise<boolean>;
  /** Removes the model from the cache (and unloads it when loaded). */
  deleteModel(url: string): Promise<void>;
  /** Resolves with the host's instance id; rejects with EngineCrashedError on timeout. */
  ping(timeoutMs?: number): Promise<string>;
  /** Called once when the host is found dead (proxies only). */
  onCrash(listener: (error: Error) => void): () => void;
  dispose(): Promise<void>;
}
