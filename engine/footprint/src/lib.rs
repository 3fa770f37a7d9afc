//! Environmental accounting for KwaaiNet jobs: what a job used (its [`Usage`]: wall time,
//! busy CPU time, memory), the energy that took (an [`meter::EnergySource`]: RAPL counters
//! where readable, else a TDP-per-thread model; in a page, busy time × a device class's
//! watts), and its carbon at the grid's intensity ([`grid`]: a country table shipped with
//! the code, with groups such as the EU weighted by generation).
//!
//! Every figure says how it was obtained ([`Method`]: `measured`, `modelled`, `declared`)
//! and the vintage of the data behind it. Units are integers: energy in µWh and carbon in
//! µg CO2e inside (so a single served step of a few milliseconds is not rounded to zero),
//! reported in mWh and mg; sums saturate instead of wrapping.
//!
//! The formulas are the accepted ones ([`formula`]): Green Algorithms (runtime × (cores ×
//! power per core × usage + memory × power per GB) × PUE × carbon intensity) and the Green
//! Software Foundation's SCI (ISO/IEC 21031: (E × I + M) per functional unit; KwaaiNet's
//! unit is 1,000 tokens).

pub mod contribution;
pub mod formula;
pub mod grid;
pub mod meter;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a figure was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Read from a hardware counter (RAPL, a GPU's energy counter).
    Measured,
    /// Estimated from a model (a TDP per thread, a device class's watts).
    Modelled,
    /// Stated by the operator (an on-site solar supply, a region).
    Declared,
}

impl Method {
    /// The weaker of two methods, for a sum (a route of measured and modelled hops is
    /// modelled as a whole; declared is the weakest).
    pub fn weakest(self, other: Self) -> Self {
        self.max(other)
    }
}

/// Energy, in microwatt-hours.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Energy(pub u64);

impl Energy {
    /// From microjoules (1 µWh = 3,600 µJ), rounded.
    pub fn from_uj(uj: u64) -> Self {
        Self(uj.saturating_add(1_800) / 3_600)
    }

    /// Milliwatt-hours, rounded.
    pub fn mwh(self) -> u64 {
        self.0.saturating_add(500) / 1_000
    }

    /// The sum, saturating.
    pub fn plus(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

/// Carbon, in micrograms of CO2-equivalent.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Carbon(pub u64);

impl Carbon {
    /// Milligrams, rounded.
    pub fn mg(self) -> u64 {
        self.0.saturating_add(500) / 1_000
    }

    /// The sum, saturating.
    pub fn plus(self, other: Self) -> Self {
        Self(self.0.saturating_add(other.0))
    }
}

/// What a job used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// From its start to its end.
    pub wall: Duration,
    /// CPU time summed over the threads that worked for it.
    pub cpu: Duration,
    /// Memory it held (the model's weights and caches it used), bytes.
    pub memory_bytes: u64,
}

/// The footprint of a job, or of a sum of jobs (a route's hops, a node's day).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Footprint {
    /// Energy, µWh.
    pub energy_uwh: u64,
    /// How the energy was obtained.
    pub energy_method: Method,
    /// Carbon, µg CO2e.
    pub carbon_ug: u64,
    /// The grid intensity it was computed at, mg CO2e per kWh (of the last part summed).
    pub intensity_mg_per_kwh: u64,
    /// Where that intensity comes from (a country table's source, a declaration).
    pub intensity_source: String,
    /// The year of the grid data.
    pub vintage: u16,
    /// The regions whose grids it ran on (sorted, deduplicated).
    pub regions: Vec<String>,
    /// Busy time behind it, milliseconds.
    pub busy_ms: u64,
}

impl Footprint {
    /// The footprint of `energy` obtained by `method`, on the grid `mix`.
    pub fn of(energy: Energy, method: Method, mix: &grid::GridMix, busy: Duration) -> Self {
        Self {
            energy_uwh: energy.0,
            energy_method: method,
            carbon_ug: formula::carbon(energy, mix.intensity_mg_per_kwh).0,
            intensity_mg_per_kwh: mix.intensity_mg_per_kwh,
            intensity_source: mix.source.clone(),
            vintage: mix.year,
            regions: vec![mix.region.clone()],
            busy_ms: u64::try_from(busy.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Energy, rounded to mWh.
    pub fn energy_mwh(&self) -> u64 {
        Energy(self.energy_uwh).mwh()
    }

    /// Carbon, rounded to mg.
    pub fn carbon_mg(&self) -> u64 {
        Carbon(self.carbon_ug).mg()
    }

    /// Adds another part (a hop of a route, another job): energy and carbon add, the
    /// method becomes the weaker, regions join.
    pub fn add(&mut self, other: &Footprint) {
        self.energy_uwh = self.energy_uwh.saturating_add(other.energy_uwh);
        self.carbon_ug = self.carbon_ug.saturating_add(other.carbon_ug);
        self.busy_ms = self.busy_ms.saturating_add(other.busy_ms);
        self.energy_method = self.energy_method.weakest(other.energy_method);
        self.vintage = self.vintage.min(other.vintage);
        for r in &other.regions {
            if !self.regions.contains(r) {
                self.regions.push(r.clone());
            }
        }
        self.regions.sort();
    }

    /// SCI per 1,000 tokens for `tokens` tokens, µg CO2e (no embodied share).
    pub fn sci_per_1k_tokens(&self, tokens: u64) -> Option<u64> {
        formula::sci(Carbon(self.carbon_ug), Carbon(0), tokens, 1_000).map(|c| c.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn units_round_and_saturate() {
        assert_eq!(Energy::from_uj(3_600), Energy(1));
        assert_eq!(Energy::from_uj(1_799), Energy(0));
        assert_eq!(Energy(1_499).mwh(), 1);
        assert_eq!(Energy(1_500).mwh(), 2);
        assert_eq!(Energy(u64::MAX).plus(Energy(5)), Energy(u64::MAX));
        assert_eq!(Carbon(u64::MAX - 1).plus(Carbon(9)).0, u64::MAX);
        assert_eq!(Carbon(2_500).mg(), 3);
        assert_eq!(Method::Measured.weakest(Method::Modelled), Method::Modelled);
        assert_eq!(Method::Declared.weakest(Method::Measured), Method::Declared);
    }

    #[test]
    fn a_route_sums_its_hops() {
        let de = grid::mix("DE").unwrap();
        let fr = grid::mix("FR").unwrap();
        let mut route = Footprint::of(
            Energy(10_000),
            Method::Measured,
            &de,
            Duration::from_millis(40),
        );
        let hop = Footprint::of(
            Energy(5_000),
            Method::Modelled,
            &fr,
            Duration::from_millis(10),
        );
        let (c1, c2) = (route.carbon_ug, hop.carbon_ug);
        route.add(&hop);
        assert_eq!(route.energy_uwh, 15_000);
        assert_eq!(route.carbon_ug, c1 + c2);
        assert_eq!(route.energy_method, Method::Modelled);
        assert_eq!(route.regions, ["DE", "FR"]);
        assert_eq!(route.busy_ms, 50);
        // 10 mWh at Germany's 380.95 g/kWh: 3,809.5 µg.
        assert_eq!(c1, 3_810);
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["energy_method"], "modelled");
    }
}
