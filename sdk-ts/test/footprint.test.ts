// The page's environmental model: the engine crate's integer formulas (checked against hand
// computations here; the figures themselves are checked against the crate by its
// `sdk_model` test), and the device-class guess.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { PAGE_MODEL, carbonOf, energyOfPower, guessDeviceClass, pageFootprint } from '../src/footprint.js';

describe('page footprint', () => {
  it('computes energy and carbon as the crate does, in integers', () => {
    // 8 W for 1 s = 8,000 mW × 1,000,000 µs / 3,600,000 = 2,222.2 µWh.
    assert.equal(energyOfPower(8_000, 1_000_000), 2_222);
    // A 900 µs decoding step on a phone: 0.5 µWh, rounded half up.
    assert.equal(energyOfPower(2_000, 900), 1);
    assert.equal(energyOfPower(2_000, 0), 0);
    // 2,222 µWh at 480,617 mg/kWh = 1,067.9 µg.
    assert.equal(carbonOf(2_222, 480_617), 1_068);
    const f = pageFootprint(1_000, 'laptop');
    assert.deepEqual(f, {
      energyUwh: 2_222, carbonUg: 1_068, method: 'modelled', deviceClass: 'laptop', gridRegion: 'world',
      gridIntensityMgPerKwh: PAGE_MODEL.world.intensityMgPerKwh, gridYear: PAGE_MODEL.world.year,
    });
    assert.equal(pageFootprint(1_000, 'desktop').energyUwh, 5_556);
  });

  it('guesses the device class from what the browser says', () => {
    assert.equal(guessDeviceClass({ userAgentData: { mobile: true } }), 'phone');
    assert.equal(guessDeviceClass({ userAgent: 'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148' }), 'phone');
    assert.equal(guessDeviceClass({ userAgent: 'Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 Safari/537.36' }), 'tablet');
    assert.equal(guessDeviceClass({ userAgent: 'Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)', maxTouchPoints: 5 }), 'tablet');
    assert.equal(guessDeviceClass({ userAgent: 'Mozilla/5.0 (X11; Linux x86_64)', hardwareConcurrency: 16 }), 'desktop');
    assert.equal(guessDeviceClass({ userAgent: 'Mozilla/5.0 (X11; Linux x86_64)', hardwareConcurrency: 8 }), 'laptop');
    assert.equal(guessDeviceClass(undefined), 'laptop');
  });
});
