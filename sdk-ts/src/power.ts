/**
 * Contribution that is kind to the device: a `PowerGovernor` watches the battery (the
 * Battery Status API: charging, level) and the CPU's compute pressure (the Compute Pressure
 * API: nominal, fair, serious, critical) and says whether the page may contribute now.
 * A served span pauses when the device runs on battery below `minBatteryLevel`, or when the
 * pressure reaches `pauseAtPressure`, and resumes by itself when that ends (serve.ts).
 *
 * Either API may be missing (Firefox and Safari have neither): what cannot be read does not
 * block contribution, and the state says so (`charging: null`, `pressure: null`). A visitor
 * who never wants to contribute on battery sets `minBatteryLevel: 1`.
 */

import { InvalidArgumentError } from './errors.js';
import { Emitter } from './events.js';

export type PressureLevel = 'nominal' | 'fair' | 'serious' | 'critical';

const LEVELS: readonly PressureLevel[] = ['nominal', 'fair', 'serious', 'critical'];

export interface PowerPolicy {
  /** On battery, contribute only at or above this charge (0–1; default 0.5). Charging:
   *  always. */
  minBatteryLevel?: number;
  /** Pause at this compute pressure or worse (default 'critical') … */
  pauseAtPressure?: 'fair' | 'serious' | 'critical';
  /** … once it has lasted this long (ms, default 10 000: a moment's spike is no reason). */
  pressureSustainMs?: number;
}

export const DEFAULT_POWER_POLICY: Required<PowerPolicy> = { minBatteryLevel: 0.5, pauseAtPressure: 'critical', pressureSustainMs: 10_000 };

/** Why contribution is paused, when it is. */
export type PauseReason = 'battery' | 'pressure';

export interface PowerState {
  /** Whether the page may contribute now. */
  allowed: boolean;
  /** Why not, when not. */
  reason: PauseReason | null;
  /** null: the Battery Status API is not available here. */
  charging: boolean | null;
  /** 0–1; null where unknown. */
  level: number | null;
  /** The CPU's compute pressure; null where the Compute Pressure API is not available. */
  pressure: PressureLevel | null;
}

/** The parts of `navigator.getBattery()`'s manager used here. */
interface BatteryLike extends EventTarget {
  readonly charging: boolean;
  readonly level: number;
}

interface PressureRecordLike {
  readonly source: string;
  readonly state: string;
}

interface PressureObserverLike {
  observe(source: 'cpu', options?: { sampleInterval?: number }): Promise<void>;
  disconnect(): void;
}

type PressureObserverCtor = new (callback: (records: PressureRecordLike[]) => void) => PressureObserverLike;

/** Where the governor reads from (the page's by default; tests pass their own). */
export interface PowerEnvironment {
  getBattery?: () => Promise<BatteryLike>;
  PressureObserver?: PressureObserverCtor;
}

function pageEnvironment(): PowerEnvironment {
  const nav = (globalThis as { navigator?: { getBattery?: () => Promise<BatteryLike> } }).navigator;
  const ctor = (globalThis as { PressureObserver?: PressureObserverCtor }).PressureObserver;
  return {
    ...(typeof nav?.getBattery === 'function' && { getBattery: () => (nav.getBattery as () => Promise<BatteryLike>).call(nav) }),
    ...(typeof ctor === 'function' && { PressureObserver: ctor }),
  };
}

export function checkedPolicy(policy: PowerPolicy = {}): Required<PowerPolicy> {
  if (policy === null || typeof policy !== 'object') throw new InvalidArgumentError('power: an object ({ minBatteryLevel, pauseAtPressure })');
  const p = { ...DEFAULT_POWER_POLICY, ...policy };
  if (typeof p.minBatteryLevel !== 'number' || !(p.minBatteryLevel >= 0 && p.minBatteryLevel <= 1)) {
    throw new InvalidArgumentError(`power.minBatteryLevel: a number in [0, 1], got ${String(policy.minBatteryLevel)}`);
  }
  if (typeof p.pressureSustainMs !== 'number' || !(p.pressureSustainMs >= 0 && p.pressureSustainMs <= 600_000)) {
    throw new InvalidArgumentError(`power.pressureSustainMs: 0 to 600000 ms, got ${String(policy.pressureSustainMs)}`);
  }
  if (!['fair', 'serious', 'critical'].includes(p.pauseAtPressure)) {
    throw new InvalidArgumentError(`power.pauseAtPressure: 'fair', 'serious' or 'critical', got ${String(policy.pauseAtPressure)}`);
  }
  return p;
}

/** Whether `pressure` is at the policy's level or worse. */
export function atPressure(policy: Required<PowerPolicy>, pressure: PressureLevel | null): boolean {
  return pressure !== null && LEVELS.indexOf(pressure) >= LEVELS.indexOf(policy.pauseAtPressure);
}

/** The decision for what is known now (pure: the policy's whole rule). `sustained`: the
 *  pressure has been at the policy's level for its `pressureSustainMs`. */
export function decide(policy: Required<PowerPolicy>, charging: boolean | null, level: number | null, pressure: PressureLevel | null,
  sustained = true): PowerState {
  const onLowBattery = charging === false && level !== null && level < policy.minBatteryLevel;
  const pressed = sustained && atPressure(policy, pressure);
  const reason: PauseReason | null = onLowBattery ? 'battery' : pressed ? 'pressure' : null;
  return { allowed: reason === null, reason, charging, level, pressure };
}

/** Watches the battery and the compute pressure; emits `change` when the decision or what
 *  it rests on changes. */
export class PowerGovernor {
  readonly policy: Required<PowerPolicy>;
  private readonly events = new Emitter<{ change: PowerState }>();
  private battery: BatteryLike | null = null;
  private observer: PressureObserverLike | null = null;
  private pressure: PressureLevel | null = null;
  /** Since when the pressure has been at the policy's level (performance.now()), if it is. */
  private pressedSince: number | null = null;
  private sustainTimer: ReturnType<typeof setTimeout> | null = null;
  private current: PowerState;
  private readonly onBattery = (): void => this.update();
  private closed = false;

  private constructor(policy: Required<PowerPolicy>) {
    this.policy = policy;
    this.current = decide(policy, null, null, null);
  }

  /** Starts watching (what the environment offers; nothing missing is an error). */
  static async watch(policy: PowerPolicy = {}, env: PowerEnvironment = pageEnvironment()): Promise<PowerGovernor> {
    const g = new PowerGovernor(checkedPolicy(policy));
    if (env.getBattery) {
      try {
        g.battery = await env.getBattery();
        g.battery.addEventListener('chargingchange', g.onBattery);
        g.battery.addEventListener('levelchange', g.onBattery);
      } catch {
        g.battery = null; // not allowed here (a permissions policy): unknown
      }
    }
    if (env.PressureObserver) {
      try {
        const observer = new env.PressureObserver((records) => {
          const last = records.filter((r) => r.source === 'cpu').at(-1);
          if (last && (LEVELS as readonly string[]).includes(last.state)) {
            g.pressure = last.state as PressureLevel;
            g.pressureChanged();
          }
        });
        await observer.observe('cpu', { sampleInterval: 1000 });
        g.observer = observer;
      } catch {
        g.observer = null; // no CPU source on this device, or not allowed: unknown
      }
    }
    g.update();
    return g;
  }

  get state(): PowerState {
    return this.current;
  }

  onChange(listener: (state: PowerState) => void): () => void {
    return this.events.on('change', listener);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.battery?.removeEventListener('chargingchange', this.onBattery);
    this.battery?.removeEventListener('levelchange', this.onBattery);
    this.observer?.disconnect();
    if (this.sustainTimer !== null) clearTimeout(this.sustainTimer);
    this.events.clear();
  }

  /** The pressure changed: it pauses once it has lasted `pressureSustainMs` at the
   *  policy's level (a timer looks again then), and stops pausing as soon as it eases. */
  private pressureChanged(): void {
    if (!atPressure(this.policy, this.pressure)) {
      this.pressedSince = null;
      if (this.sustainTimer !== null) clearTimeout(this.sustainTimer);
      this.sustainTimer = null;
    } else if (this.pressedSince === null) {
      this.pressedSince = performance.now();
      if (this.policy.pressureSustainMs > 0) {
        this.sustainTimer = setTimeout(() => {
          this.sustainTimer = null;
          this.update();
        }, this.policy.pressureSustainMs);
      }
    }
    this.update();
  }

  private update(): void {
    if (this.closed) return;
    const b = this.battery;
    const sustained = this.pressedSince !== null && performance.now() - this.pressedSince >= this.policy.pressureSustainMs - 10;
    const next = decide(this.policy, b ? b.charging : null, b ? b.level : null, this.pressure, sustained);
    const c = this.current;
    if (next.allowed === c.allowed && next.reason === c.reason && next.charging === c.charging
      && next.level === c.level && next.pressure === c.pressure) return;
    this.current = next;
    this.events.emit('change', next);
  }
}
