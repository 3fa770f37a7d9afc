/**
 * The energy and carbon of a page's work, by the same model as the engine's footprint crate
 * (engine/footprint: `DeviceModel`, `formula::energy_of_power`, `formula::carbon`): browsers
 * expose no power readings, so energy is busy time × the device class's watts while
 * computing (`modelled`), and carbon that energy at the grid's intensity — the world's mean
 * from the crate's country table unless the site declares a region (a served span's figures
 * are computed by the crate itself, in the serving worker). Integer units, as the crate's:
 * µWh and µg CO2e.
 */

/* The crate's figures. engine/footprint's `the_sdk_models_pages_with_the_crates_figures`
 * test reads this block and fails if it differs from the crate. */
// BEGIN page-model
export const PAGE_MODEL = {
  "busyMw": { "phone": 2000, "tablet": 3500, "laptop": 8000, "desktop": 20000 },
  "world": { "intensityMgPerKwh": 480617, "renewablePermille": 302, "year": 2009 }
} as const;
// END page-model

export type DeviceClass = keyof typeof PAGE_MODEL.busyMw;

export const DEVICE_CLASSES = Object.freeze(Object.keys(PAGE_MODEL.busyMw)) as readonly DeviceClass[];

export const GRID_SOURCE = 'CodeCarbon 3.3.2 global_energy_mix (Our World in Data, CC BY 4.0; Ember)';

/** What a piece of a page's work cost. */
export interface PageFootprint {
  energyUwh: number;
  carbonUg: number;
  /** Always 'modelled' in a page. */
  method: 'modelled';
  deviceClass: DeviceClass;
  /** The grid's region ('world': its mean). */
  gridRegion: string;
  gridIntensityMgPerKwh: number;
  gridYear: number;
}

interface NavigatorLike {
  userAgentData?: { mobile?: boolean };
  userAgent?: string;
  maxTouchPoints?: number;
  hardwareConcurrency?: number;
}

/** The device's class as the page can tell it: a phone when the browser says mobile (or the
 *  user agent does), a tablet when touch-first on a tablet's user agent, a desktop with
 *  many cores, else a laptop (the conservative middle). */
export function guessDeviceClass(nav: NavigatorLike | undefined = globalThis.navigator as NavigatorLike | undefined): DeviceClass {
  if (!nav) return 'laptop';
  const ua = nav.userAgent ?? '';
  if (nav.userAgentData?.mobile === true || /\bMobile\b|iPhone|Android.+Mobile/.test(ua)) return 'phone';
  if (/iPad|Tablet|Android/.test(ua) || (/Macintosh/.test(ua) && (nav.maxTouchPoints ?? 0) > 1)) return 'tablet';
  if ((nav.hardwareConcurrency ?? 0) >= 12) return 'desktop';
  return 'laptop';
}

/** mW × µs / 3,600,000 = µWh, rounded (`formula::energy_of_power`). */
export function energyOfPower(mw: number, busyUs: number): number {
  return Math.floor((mw * Math.max(0, Math.round(busyUs)) + 1_800_000) / 3_600_000);
}

/** µWh × mg/kWh / 10⁶ = µg, rounded (`formula::carbon`). */
export function carbonOf(energyUwh: number, mgPerKwh: number): number {
  return Math.floor((energyUwh * mgPerKwh + 500_000) / 1_000_000);
}

/** The footprint of `busyMs` of one busy thread on a `device` drawing from the world's grid. */
export function pageFootprint(busyMs: number, device: DeviceClass): PageFootprint {
  const energyUwh = energyOfPower(PAGE_MODEL.busyMw[device], busyMs * 1000);
  const world = PAGE_MODEL.world;
  return {
    energyUwh,
    carbonUg: carbonOf(energyUwh, world.intensityMgPerKwh),
    method: 'modelled',
    deviceClass: device,
    gridRegion: 'world',
    gridIntensityMgPerKwh: world.intensityMgPerKwh,
    gridYear: world.year,
  };
}
