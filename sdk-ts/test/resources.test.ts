import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { AbortError, InvalidArgumentError, ModelTooLargeError } from '../src/errors.js';
import {
  DEFAULT_MAX_RESOURCES, DutyCycle, MIB, assertModelFits, parseMaxResources, type Clock,
} from '../src/resources.js';

describe('maxResources parsing', () => {
  it('parses the script-tag form, with units and defaults', () => {
    assert.deepEqual(parseMaxResources('cpu:20,memory:1024,storage:5000'), { cpu: 20, memory: 1024, storage: 5000 });
    assert.deepEqual(parseMaxResources(' cpu : 50% , memory=2GB '), { cpu: 50, memory: 2048, storage: DEFAULT_MAX_RESOURCES.storage });
    assert.deepEqual(parseMaxResources('storage:512MiB'), { ...DEFAULT_MAX_RESOURCES, storage: 512 });
    assert.deepEqual(parseMaxResources(''), { ...DEFAULT_MAX_RESOURCES });
    assert.deepEqual(parseMaxResources(undefined), { ...DEFAULT_MAX_RESOURCES });
    assert.deepEqual(parseMaxResources({ cpu: 5 }), { ...DEFAULT_MAX_RESOURCES, cpu: 5 });
  });

  it('rejects what it cannot honour', () => {
    for (const bad of ['cpu:0', 'cpu:101', 'cpu:20,cpu:30', 'gpu:1', 'cpu', 'cpu:-5', 'memory:1TB', 'memory:10',
      'cpu:20;memory:5', 'x'.repeat(300)]) {
      assert.throws(() => parseMaxResources(bad), InvalidArgumentError, bad);
    }
    assert.throws(() => parseMaxResources({ cpu: '20' }), InvalidArgumentError);
    assert.throws(() => parseMaxResources({ disk: 1 }), InvalidArgumentError);
    assert.throws(() => parseMaxResources(42), InvalidArgumentError);
  });

  it('refuses a model whose weights + KV cache exceed the memory cap', () => {
    assertModelFits(500 * MIB, 100 * MIB, 1024 * MIB);
    assert.throws(() => assertModelFits(900 * MIB, 200 * MIB, 1024 * MIB), ModelTooLargeError);
  });
});

function fakeClock(): Clock & { advance(ms: number): void; slept: number[] } {
  let t = 0;
  const slept: number[] = [];
  return {
    slept,
    now: () => t,
    advance: (ms) => {
      t += ms;
    },
    sleep: async (ms, signal) => {
      if (signal?.aborted) throw new AbortError();
      slept.push(ms);
      t += ms + 0.5; // timers run a little late
    },
  };
}

describe('DutyCycle: contributed work stays under cpu%', () => {
  for (const cpu of [1, 20, 50, 100]) {
    it(`holds busy / (busy + idle) <= ${cpu}%`, async () => {
      const clock = fakeClock();
      const duty = new DutyCycle(cpu, clock);
      for (let i = 0; i < 50; i++) {
        await duty.run(() => clock.advance(5 + (i % 7) * 3)); // uneven slices
        assert.ok(duty.ratio <= cpu / 100 + 1e-9, `ratio ${duty.ratio} after slice ${i}`);
      }
      if (cpu < 100) assert.ok(duty.ratio > (cpu / 100) * 0.95, 'and does not idle much more than needed');
      else assert.equal(clock.slept.length, 0);
    });
  }

  it('credits oversleeping and honours an abort', async () => {
    const clock = fakeClock();
    const duty = new DutyCycle(50, clock);
    const controller = new AbortController();
    await duty.run(() => clock.advance(10));
    controller.abort();
    await assert.rejects(duty.run(() => clock.advance(10), controller.signal), AbortError);
  });

  it('works on the real clock', async () => {
    const duty = new DutyCycle(50);
    const start = performance.now();
    await duty.run(() => {
      const end = performance.now() + 20;
      while (performance.now() < end) { /* busy */ }
    });
    assert.ok(performance.now() - start >= 39, 'slept about as long as it worked');
    assert.ok(duty.ratio <= 0.5 + 1e-6);
  });
});
