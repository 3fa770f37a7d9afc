//! Carbon intensity and generation mix by country: `data/grid.csv`, generated from
//! CodeCarbon's energy-mix table (MIT), whose figures are Our World in Data's (CC BY 4.0;
//! Ember, Energy Institute). 213 countries by ISO 3166-1 code; years 2021–2023 for most.
//!
//! A group of countries (the EU, the EEA: its members come from the caller, which knows
//! the regions) is the generation-weighted mean of its members. The renewable share is
//! renewable generation over total generation: what "renewable detection" can honestly say
//! of a grid. An operator's own supply (on-site solar) is a [`Declared`] share that lowers
//! the intensity of what the node draws ([`GridMix::with_onsite_renewable`]).
//!
//! A live grid signal (a marginal-emissions API) plugs in through [`GridSignal`]; none is
//! built in, and nothing is fetched.
//!
//! [`Declared`]: crate::Method::Declared

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::Method;

/// Where the shipped table comes from.
pub const SOURCE: &str = "CodeCarbon 3.3.2 global_energy_mix (Our World in Data, CC BY 4.0; Ember)";

const TABLE: &str = include_str!("../data/grid.csv");

/// A grid's carbon intensity and renewable share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GridMix {
    /// The region (an ISO 3166-1 alpha-2 code, or a group's name).
    pub region: String,
    /// mg CO2e per kWh.
    pub intensity_mg_per_kwh: u64,
    /// Renewable generation over total, per mille.
    pub renewable_permille: u16,
    /// Low-carbon (renewable and nuclear) generation over total, per mille.
    pub low_carbon_permille: u16,
    /// The data's year (a group: its oldest member's).
    pub year: u16,
    /// How the intensity was obtained (`modelled` from the table; `declared` when the
    /// operator's own supply changed it).
    pub method: Method,
    /// The data's source.
    pub source: String,
}

#[derive(Debug, Clone)]
struct Row {
    alpha2: String,
    alpha3: String,
    mg_per_kwh: u64,
    total_gwh: u64,
    renewable_gwh: u64,
    low_carbon_gwh: u64,
    year: u16,
}

fn rows() -> &'static [Row] {
    static ROWS: OnceLock<Vec<Row>> = OnceLock::new();
    ROWS.get_or_init(|| {
        TABLE
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("alpha2,"))
            .filter_map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                Some(Row {
                    alpha2: f.first()?.to_string(),
                    alpha3: f.get(1)?.to_string(),
                    mg_per_kwh: f.get(2)?.parse().ok()?,
                    total_gwh: f.get(3)?.parse().ok()?,
                    renewable_gwh: f.get(4)?.parse().ok()?,
                    low_carbon_gwh: f.get(5)?.parse().ok()?,
                    year: f.get(6)?.parse().ok()?,
                })
            })
            .collect()
    })
}

fn permille(part: u64, total: u64) -> u16 {
    if total == 0 {
        0
    } else {
        u16::try_from((u128::from(part) * 1_000 + u128::from(total) / 2) / u128::from(total))
            .unwrap_or(1_000)
            .min(1_000)
    }
}

fn row(code: &str) -> Option<&'static Row> {
    let code = code.trim();
    rows()
        .iter()
        .find(|r| r.alpha2.eq_ignore_ascii_case(code) || r.alpha3.eq_ignore_ascii_case(code))
}

/// The grid of a country (`DE` or `DEU`).
pub fn mix(country: &str) -> Option<GridMix> {
    let r = row(country)?;
    Some(GridMix {
        region: r.alpha2.clone(),
        intensity_mg_per_kwh: r.mg_per_kwh,
        renewable_permille: permille(r.renewable_gwh, r.total_gwh),
        low_carbon_permille: permille(r.low_carbon_gwh, r.total_gwh),
        year: r.year,
        method: Method::Modelled,
        source: SOURCE.to_owned(),
    })
}

/// The grid of a group named `name` with these member countries: each member's intensity
/// weighted by its generation. `None` if a member is unknown or none generates.
pub fn mix_of(name: &str, members: &[&str]) -> Option<GridMix> {
    let rows: Vec<&Row> = members.iter().map(|m| row(m)).collect::<Option<_>>()?;
    let total: u128 = rows.iter().map(|r| u128::from(r.total_gwh)).sum();
    if total == 0 {
        return None;
    }
    let weighted: u128 = rows
        .iter()
        .map(|r| u128::from(r.mg_per_kwh) * u128::from(r.total_gwh))
        .sum();
    let sum = |f: fn(&Row) -> u64| rows.iter().map(|r| f(r)).sum::<u64>();
    let total64 = u64::try_from(total).unwrap_or(u64::MAX);
    Some(GridMix {
        region: name.to_owned(),
        intensity_mg_per_kwh: u64::try_from((weighted + total / 2) / total).unwrap_or(u64::MAX),
        renewable_permille: permille(sum(|r| r.renewable_gwh), total64),
        low_carbon_permille: permille(sum(|r| r.low_carbon_gwh), total64),
        year: rows.iter().map(|r| r.year).min().unwrap_or(0),
        method: Method::Modelled,
        source: SOURCE.to_owned(),
    })
}

/// The world's mean (every country weighted by generation): for a node that declares no
/// region.
pub fn world() -> GridMix {
    let codes: Vec<&str> = rows().iter().map(|r| r.alpha2.as_str()).collect();
    mix_of("world", &codes).unwrap_or_else(|| unreachable!("the shipped table has rows"))
}

impl GridMix {
    /// The mix a node draws when the operator declares that `permille` of its supply is
    /// on-site renewable (solar panels, a green tariff's own plant), at zero operational
    /// intensity: the intensity scales down, the renewable share up, and the method
    /// becomes `declared`.
    pub fn with_onsite_renewable(&self, permille: u16) -> GridMix {
        let p = u64::from(permille.min(1_000));
        let grid = 1_000 - p;
        GridMix {
            region: self.region.clone(),
            intensity_mg_per_kwh: (self.intensity_mg_per_kwh * grid + 500) / 1_000,
            renewable_permille: u16::try_from(
                (u64::from(self.renewable_permille) * grid + p * 1_000 + 500) / 1_000,
            )
            .unwrap_or(1_000),
            low_carbon_permille: u16::try_from(
                (u64::from(self.low_carbon_permille) * grid + p * 1_000 + 500) / 1_000,
            )
            .unwrap_or(1_000),
            year: self.year,
            method: if p == 0 {
                self.method
            } else {
                Method::Declared
            },
            source: if p == 0 {
                self.source.clone()
            } else {
                format!(
                    "{}; {p}‰ on-site renewable, declared by the operator",
                    self.source
                )
            },
        }
    }
}

/// A live grid signal (a marginal-emissions service), for operators who run one. None is
/// built in: the shipped table is used, and nothing is fetched.
pub trait GridSignal: Send + Sync {
    /// The current mix of `region`, if the signal knows it.
    fn current(&self, region: &str) -> Option<GridMix>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_table_has_every_country_with_sane_values() {
        assert_eq!(rows().len(), 213);
        for r in rows() {
            assert_eq!(r.alpha2.len(), 2, "{r:?}");
            assert!(r.mg_per_kwh < 2_000_000, "{r:?}");
            assert!(r.renewable_gwh <= r.total_gwh.max(1) + 1, "{r:?}");
            assert!((2000..2030).contains(&r.year), "{r:?}");
        }
        let de = mix("de").unwrap();
        assert_eq!(
            (de.region.as_str(), de.intensity_mg_per_kwh, de.year),
            ("DE", 380_950, 2023)
        );
        // 264.56 of 504.79 TWh renewable.
        assert_eq!(de.renewable_permille, 524);
        assert_eq!(mix("NOR").unwrap().renewable_permille, 985);
        assert_eq!(de.method, Method::Modelled);
        assert!(mix("XX").is_none() && mix("").is_none());
    }

    #[test]
    fn a_group_is_weighted_by_generation() {
        // France (514.11 TWh at 56.039 g) and Poland (168.75 TWh at 661.926 g):
        // (514,110 × 56,039 + 168,750 × 661,926) / 682,860 = 205,767 mg/kWh.
        let g = mix_of("FR+PL", &["FR", "PL"]).unwrap();
        assert_eq!(g.intensity_mg_per_kwh, 205_767);
        assert_eq!(g.region, "FR+PL");
        assert!(mix_of("bad", &["FR", "XX"]).is_none());
        let w = world();
        assert!(
            (300_000..600_000).contains(&w.intensity_mg_per_kwh),
            "{w:?}"
        );
    }

    #[test]
    fn a_declared_onsite_supply_lowers_the_intensity() {
        let de = mix("DE").unwrap();
        let half = de.with_onsite_renewable(500);
        assert_eq!(half.intensity_mg_per_kwh, 190_475);
        assert_eq!(half.renewable_permille, 762);
        assert_eq!(half.method, Method::Declared);
        assert!(half.source.contains("declared"));
        assert_eq!(de.with_onsite_renewable(0), de);
        assert_eq!(de.with_onsite_renewable(5_000).intensity_mg_per_kwh, 0);
    }
}
