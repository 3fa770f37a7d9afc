// The power governor's rule and its watching: a battery (an EventTarget as Chromium's
// BatteryManager is) and a pressure observer driven by the test, as the browser test drives
// the real ones through DevTools.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { InvalidArgumentError } from '../src/errors.js';
import { DEFAULT_POWER_POLICY, PowerGovernor, checkedPolicy, decide, type PowerState } from '../src/power.js';

class FakeBattery extends EventTarget {
  charging = true;
  level = 1;
  set(charging: boolean, level: number): void {
    const changed = charging !== this.charging;
    this.charging = charging;
    this.level = level;
    this.dispatchEvent(new Event(changed ? 'chargingchange' : 'levelchange'));
  }
}

class FakePressure {
  static last: FakePressure | null = null;
  disconnected = false;
  constructor(readonly callback: (records: { source: string; state: string }[]) => void) {
    FakePressure.last = this;
  }
  async observe(): Promise<void> {}
  disconnect(): void {
    this.disconnected = true;
  }
  report(state: string): void {
    this.callback([{ source: 'cpu', state }]);
  }
}

describe('power policy', () => {
  it('pauses on battery below the level, or at the pressure, and never for what it cannot read', () => {
    const p = DEFAULT_POWER_POLICY;
    assert.equal(decide(p, true, 0.05, 'nominal').allowed, true, 'charging: always');
    assert.deepEqual(decide(p, false, 0.2, null), { allowed: false, reason: 'battery', charging: false, level: 0.2, pressure: null });
    assert.equal(decide(p, false, 0.5, 'serious').allowed, true, 'at the level, below critical');
    assert.equal(decide(p, true, 1, 'critical').reason, 'pressure');
    assert.equal(decide({ ...p, pauseAtPressure: 'fair' }, true, 1, 'fair').reason, 'pressure');
    assert.equal(decide(p, false, 0.1, 'critical').reason, 'battery', 'the battery first');
    assert.equal(decide(p, null, null, null).allowed, true, 'no API: no pause');
  });

  it('refuses a policy it cannot honour', () => {
    for (const bad of [{ minBatteryLevel: 1.5 }, { minBatteryLevel: -0.1 }, { minBatteryLevel: Number.NaN }, { pauseAtPressure: 'nominal' as 'fair' }]) {
      assert.throws(() => checkedPolicy(bad), InvalidArgumentError, JSON.stringify(bad));
    }
    assert.throws(() => checkedPolicy({ pressureSustainMs: -1 }), InvalidArgumentError);
    assert.deepEqual(checkedPolicy({ minBatteryLevel: 1 }), { minBatteryLevel: 1, pauseAtPressure: 'critical', pressureSustainMs: 10_000 });
    assert.equal(decide(DEFAULT_POWER_POLICY, true, 1, 'critical', false).allowed, true, 'not sustained yet');
  });
});

describe('PowerGovernor', () => {
  it('follows the battery and the pressure, and stops watching when closed', async () => {
    const battery = new FakeBattery();
    const g = await PowerGovernor.watch({ minBatteryLevel: 0.3, pressureSustainMs: 0 }, {
      getBattery: async () => battery,
      PressureObserver: FakePressure,
    });
    const seen: PowerState[] = [];
    g.onChange((s) => seen.push(s));
    assert.deepEqual(g.state, { allowed: true, reason: null, charging: true, level: 1, pressure: null });
    battery.set(false, 0.8);
    battery.set(false, 0.2);
    assert.equal(g.state.reason, 'battery');
    battery.set(true, 0.2);
    assert.equal(g.state.allowed, true);
    FakePressure.last?.report('critical');
    assert.equal(g.state.reason, 'pressure');
    FakePressure.last?.report('bogus');
    assert.equal(g.state.pressure, 'critical', 'an unknown state is ignored');
    FakePressure.last?.report('fair');
    assert.deepEqual(seen.map((s) => s.reason), [null, 'battery', null, 'pressure', null]);
    g.close();
    assert.equal(FakePressure.last?.disconnected, true);
    battery.set(false, 0.1);
    assert.equal(seen.length, 5, 'no event after close');
  });

  it('pauses for pressure only once it has lasted, and resumes as soon as it eases', async () => {
    const g = await PowerGovernor.watch({ pressureSustainMs: 150 }, { PressureObserver: FakePressure });
    const seen: (string | null)[] = [];
    g.onChange((s) => seen.push(s.reason));
    FakePressure.last?.report('critical');
    assert.equal(g.state.allowed, true, 'a spike');
    FakePressure.last?.report('nominal');
    FakePressure.last?.report('critical');
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(g.state.allowed, true, 'the timer restarted with the second spike');
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(g.state.reason, 'pressure', 'sustained');
    FakePressure.last?.report('serious');
    assert.equal(g.state.allowed, true);
    g.close();
  });

  it('serves where neither API exists, or where they refuse', async () => {
    assert.equal((await PowerGovernor.watch({}, {})).state.allowed, true);
    const g = await PowerGovernor.watch({}, {
      getBattery: async () => { throw new Error('not allowed'); },
      PressureObserver: class {
        async observe(): Promise<void> { throw new Error('NotSupportedError'); }
        disconnect(): void {}
      },
    });
    assert.deepEqual(g.state, { allowed: true, reason: null, charging: null, level: null, pressure: null });
  });
});
