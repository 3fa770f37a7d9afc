/**
 * `maxResources`: what a visitor's browser may spend. Parsed from options or from the
 * script tag's `data-max-resources="cpu:20,memory:1024,storage:5000"`, then enforced:
 *
 * - cpu (percent of one core's time): a duty cycle for *contributed* work — after each
 *   slice the scheduler sleeps so that busy / (busy + idle) ≤ cpu%. The visitor's own chat
 *   requests are not throttled.
 * - memory (MiB): a model whose weights + KV cache exceed it is refused (ModelTooLargeError).
 * - storage (MiB): the model cache may not grow past it (QuotaExceededError, limit
 *   'maxResources').
 */

import { InvalidArgumentError, ModelTooLargeError, abortErrorFrom, throwIfAborted } from './errors.js';
import { isRecord } from './validate.js';

export interface MaxResources {
  /** Percent of CPU time contributed work may use, in (0, 100]. */
  cpu: number;
  /** MiB of memory the engine may use (model weights + KV cache). */
  memory: number;
  /** MiB of persistent storage the model cache may use. */
  storage: number;
}

export const DEFAULT_MAX_RESOURCES: Readonly<MaxResources> = Object.freeze({ cpu: 20, memory: 1024, storage: 5000 });

export const MIB = 1024 * 1024;

const BOUNDS: Record<keyof MaxResources, { min: number; max: number; units: Record<string, number> }> = {
  cpu: { min: 1, max: 100, units: { '': 1, '%': 1 } },
  memory: { min: 64, max: 1 << 20, units: { '': 1, mb: 1, mib: 1, gb: 1024, gib: 1024 } },
  storage: { min: 0, max: 1 << 24, units: { '': 1, mb: 1, mib: 1, gb: 1024, gib: 1024 } },
};

function isKey(key: string): key is keyof MaxResources {
  return key === 'cpu' || key === 'memory' || key === 'storage';
}

function checked(key: keyof MaxResources, value: number): number {
  const { min, max } = BOUNDS[key];
  if (!Number.isFinite(value) || value < min || value > max) {
    throw new InvalidArgumentError(`maxResources.${key}: ${value} is outside [${min}, ${max}]`);
  }
  return value;
}

/** Parses `cpu:20,memory:1024,storage:5000` (units optional: `20%`, `1GB`, `512MiB`). Keys
 *  left out keep their defaults; unknown or repeated keys are errors. */
export function parseMaxResourcesString(text: string): MaxResources {
  if (text.length > 256) throw new InvalidArgumentError('maxResources: longer than 256 characters');
  const out: MaxResources = { ...DEFAULT_MAX_RESOURCES };
  const seen = new Set<string>();
  for (const part of text.split(',')) {
    const item = part.trim();
    if (item === '') continue;
    const match = /^([a-z]+)\s*[:=]\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z%]*)$/i.exec(item);
    if (!match) throw new InvalidArgumentError(`maxResources: cannot parse "${item.slice(0, 40)}" (expected key:value)`);
    const key = (match[1] ?? '').toLowerCase();
    if (!isKey(key)) throw new InvalidArgumentError(`maxResources: unknown key "${key.slice(0, 20)}" (cpu, memory, storage)`);
    if (seen.has(key)) throw new InvalidArgumentError(`maxResources: "${key}" given twice`);
    seen.add(key);
    const unit = (match[3] ?? '').toLowerCase();
    const factor = BOUNDS[key].units[unit];
    if (factor === undefined) throw new InvalidArgumentError(`maxResources.${key}: unknown unit "${unit.slice(0, 8)}"`);
    out[key] = checked(key, Number(match[2]) * factor);
  }
  return out;
}

/** Options object or script-tag string → validated MaxResources (defaults filled in). */
export function parseMaxResources(input: unknown): MaxResources {
  if (input === undefined || input === null) return { ...DEFAULT_MAX_RESOURCES };
  if (typeof input === 'string') return parseMaxResourcesString(input);
  if (!isRecord(input)) throw new InvalidArgumentError('maxResources: expected an object or a "cpu:20,memory:1024" string');
  const out: MaxResources = { ...DEFAULT_MAX_RESOURCES };
  for (const [key, value] of Object.entries(input)) {
    if (!isKey(key)) throw new InvalidArgumentError(`maxResources: unknown key "${key.slice(0, 20)}" (cpu, memory, storage)`);
    if (value === undefined) continue;
    if (typeof value !== 'number') throw new InvalidArgumentError(`maxResources.${key}: expected a number`);
    out[key] = checked(key, value);
  }
  return out;
}

export function formatMaxResources(r: MaxResources): string {
  return `cpu:${r.cpu},memory:${r.memory},storage:${r.storage}`;
}

/** Refuses a model whose weights + KV cache exceed the memory cap. */
export function assertModelFits(weightBytes: number, kvCacheBytes: number, memoryLimitBytes: number): void {
  const need = weightBytes + kvCacheBytes;
  if (need > memoryLimitBytes) {
    throw new ModelTooLargeError(
      `the model needs ${(need / MIB).toFixed(1)} MiB (weights ${(weightBytes / MIB).toFixed(1)} + KV cache ` +
      `${(kvCacheBytes / MIB).toFixed(1)}) but maxResources.memory allows ${(memoryLimitBytes / MIB).toFixed(1)} MiB`,
    );
  }
}

export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => performance.now(),
  sleep: (ms, signal) => new Promise<void>((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortErrorFrom(signal));
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortErrorFrom(signal as AbortSignal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  }),
};

/**
 * Runs contributed work in slices and sleeps between them so that, over the scheduler's
 * life, busy / (busy + idle) ≤ cpu%. Idle time is measured (not assumed), so oversleeping
 * is credited and a slow timer never pushes the ratio over the cap.
 */
export class DutyCycle {
  readonly cpuPercent: number;
  private readonly clock: Clock;
  private busy = 0;
  private idle = 0;

  constructor(cpuPercent: number, clock: Clock = realClock) {
    this.cpuPercent = checked('cpu', cpuPercent);
    this.clock = clock;
  }

  get busyMs(): number {
    return this.busy;
  }

  get idleMs(): number {
    return this.idle;
  }

  /** busy / (busy + idle), 0 before any work. */
  get ratio(): number {
    const total = this.busy + this.idle;
    return total === 0 ? 0 : this.busy / total;
  }

  /** Runs one slice, then sleeps until the ratio is back under the cap. */
  async run<T>(slice: () => T | Promise<T>, signal?: AbortSignal): Promise<T> {
    throwIfAborted(signal);
    const start = this.clock.now();
    let result: T;
    try {
      result = await slice();
    } finally {
      this.busy += Math.max(0, this.clock.now() - start);
    }
    await this.rest(signal);
    return result;
  }

  private async rest(signal?: AbortSignal): Promise<void> {
    const p = this.cpuPercent / 100;
    // Bounded: each pass sleeps at least the whole debt, and measured time only grows.
    for (let pass = 0; pass < 8; pass++) {
      const owed = (this.busy * (1 - p)) / p - this.idle;
      if (owed <= 0) return;
      const start = this.clock.now();
      await this.clock.sleep(owed, signal);
      this.idle += Math.max(0, this.clock.now() - start);
    }
  }
}
