//! The accepted formulas, in integers.
//!
//! - **Green Algorithms** (Lannelongue, Grealey, Inouye 2021): energy = runtime × (cores ×
//!   power per core × usage + memory × power per GB) × PUE; carbon = energy × carbon
//!   intensity.
//! - **SCI** (Green Software Foundation, ISO/IEC 21031:2024): (E × I + M) per functional unit
//!   R; here E × I is the carbon of the energy used and M the embodied share.
//!
//! Intermediate products are `u128`, results saturate at `u64::MAX`.

use std::time::Duration;

use crate::{Carbon, Energy};

fn sat(x: u128) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// Energy of a job by Green Algorithms: `runtime`, `cores` at `mw_per_core` each, used at
/// `usage_permille`, `memory_mb` at `mw_per_gb`, in a facility of `pue_milli` (1,000 = a
/// PUE of 1.0: a device at home).
pub fn green_algorithms(
    runtime: Duration,
    cores: u32,
    mw_per_core: u32,
    usage_permille: u32,
    memory_mb: u64,
    mw_per_gb: u32,
    pue_milli: u32,
) -> Energy {
    // Power in µW: cores × mW × permille (= µW) + MB × mW/GB (= µW, as 1 GB = 1,000 MB).
    let power_uw = u128::from(cores) * u128::from(mw_per_core) * u128::from(usage_permille)
        + u128::from(memory_mb) * u128::from(mw_per_gb);
    let power_uw = power_uw * u128::from(pue_milli) / 1_000;
    // µW × ms / 3,600,000 = µWh.
    Energy(sat((power_uw * runtime.as_millis() + 1_800_000) / 3_600_000))
}

/// Energy of `mw` milliwatts for `time` (to the microsecond: a served decoding step takes
/// about a millisecond, and would round to nothing in whole milliseconds).
pub fn energy_of_power(mw: u64, time: Duration) -> Energy {
    // mW × µs / 3,600,000 = µWh.
    Energy(sat(
        (u128::from(mw) * time.as_micros() + 1_800_000) / 3_600_000
    ))
}

/// The carbon of `energy` at `mg_per_kwh` (mg CO2e per kWh): µWh × mg/kWh / 10⁶ = µg.
pub fn carbon(energy: Energy, mg_per_kwh: u64) -> Carbon {
    Carbon(sat((u128::from(energy.0) * u128::from(mg_per_kwh)
        + 500_000)
        / 1_000_000))
}

/// SCI: (`operational` + `embodied`) per `per` units of work, for `units` units done.
/// `None` when nothing was done.
pub fn sci(operational: Carbon, embodied: Carbon, units: u64, per: u64) -> Option<Carbon> {
    if units == 0 {
        return None;
    }
    let total = u128::from(operational.0) + u128::from(embodied.0);
    Some(Carbon(sat((total * u128::from(per)
        + u128::from(units) / 2)
        / u128::from(units))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn green_algorithms_by_hand() {
        // 1 hour, 4 cores × 10 W at 100 %, 8 GB × 0.3725 W/GB, PUE 1.67:
        // (40 + 2.98) W × 1.67 = 71.7766 W → 71.7766 Wh = 71,776,600 µWh.
        let e = green_algorithms(
            Duration::from_secs(3_600),
            4,
            10_000,
            1_000,
            8_000,
            373,
            1_670,
        );
        // 8,000 MB × 373 mW/GB = 2,984 mW (0.373 W/GB, the nearest mW).
        assert_eq!(e, Energy((40_000_000 + 2_984_000) * 1_670 / 1_000));
        assert_eq!(e.mwh(), 71_783);
        // At 475 g/kWh: 71.783 Wh × 0.475 g/Wh = 34.097 g.
        assert_eq!(carbon(e, 475_000).mg(), 34_097);
        // Half usage, no memory, PUE 1: 4 × 10 W × 0.5 for 90 s = 0.5 Wh.
        let e = green_algorithms(Duration::from_secs(90), 4, 10_000, 500, 0, 0, 1_000);
        assert_eq!(e, Energy(500_000));
    }

    #[test]
    fn power_and_carbon_by_hand() {
        // 4 W for 9 ms = 0.036 J = 10 µWh.
        assert_eq!(energy_of_power(4_000, Duration::from_millis(9)), Energy(10));
        // 1 kWh at 56.039 g/kWh (France) = 56.039 g.
        assert_eq!(carbon(Energy(1_000_000_000), 56_039), Carbon(56_039_000));
        // 1 mWh at 661.926 g/kWh (Poland) = 0.661926 mg = 662 µg.
        assert_eq!(carbon(Energy(1_000), 661_926), Carbon(662));
        assert_eq!(carbon(Energy(u64::MAX), u64::MAX), Carbon(u64::MAX));
    }

    #[test]
    fn sci_by_hand() {
        // 2 g operational + 0.5 g embodied over 250 tokens, per 1,000 tokens: 10 g.
        let s = sci(Carbon(2_000_000), Carbon(500_000), 250, 1_000).unwrap();
        assert_eq!(s, Carbon(10_000_000));
        assert_eq!(sci(Carbon(1), Carbon(0), 0, 1_000), None);
        assert_eq!(
            sci(Carbon(u64::MAX), Carbon(u64::MAX), 1, 1_000),
            Some(Carbon(u64::MAX))
        );
    }
}
