//! Data residency: the coarse region a node declares, and the regions a request allows.
//!
//! A region is an ISO 3166-1 alpha-2 country code (`DE`, `US`, …) or a group: `EU` (the 27
//! member states) or `EEA` (the EU with Iceland, Liechtenstein and Norway). Regions are
//! declared by operators and coarse by design: never coordinates, never a city (the real
//! KwaaiNet's map once leaked operators' locations).
//!
//! A request that allows regions only goes to nodes whose declared region lies wholly
//! inside one of them: `DE` satisfies `EU`, `EU` does not satisfy `DE` (it may be anywhere
//! in the EU), and a node that declares nothing satisfies no constraint.

use std::collections::BTreeSet;
use std::fmt;

/// The EU's 27 member states (ISO 3166-1 alpha-2; Greece is `GR`).
pub const EU: [&str; 27] = [
    "AT", "BE", "BG", "CY", "CZ", "DE", "DK", "EE", "ES", "FI", "FR", "GR", "HR", "HU", "IE", "IT",
    "LT", "LU", "LV", "MT", "NL", "PL", "PT", "RO", "SE", "SI", "SK",
];
/// The EEA's members beyond the EU.
pub const EEA_EXTRA: [&str; 3] = ["IS", "LI", "NO"];

/// A declared or allowed region.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Region {
    /// One country (ISO 3166-1 alpha-2, upper case).
    Country(String),
    /// The European Union.
    Eu,
    /// The European Economic Area.
    Eea,
}

/// Why a string is not a region.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a region: an ISO 3166-1 alpha-2 country code (DE, US, …), EU or EEA")]
pub struct BadRegion(pub String);

impl Region {
    /// Parses `DE`, `de`, `EU`, `eea`.
    pub fn parse(s: &str) -> Result<Self, BadRegion> {
        let up = s.trim().to_ascii_uppercase();
        match up.as_str() {
            "EU" => Ok(Self::Eu),
            "EEA" => Ok(Self::Eea),
            c if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) => Ok(Self::Country(up)),
            _ => Err(BadRegion(s.to_owned())),
        }
    }

    /// The countries it spans.
    pub fn countries(&self) -> Vec<&str> {
        match self {
            Self::Country(c) => vec![c.as_str()],
            Self::Eu => EU.to_vec(),
            Self::Eea => EU.iter().chain(EEA_EXTRA.iter()).copied().collect(),
        }
    }

    /// Whether every place in `self` lies inside `outer`.
    pub fn within(&self, outer: &Region) -> bool {
        let inner = self.countries();
        let outer = outer.countries();
        inner.iter().all(|c| outer.contains(c))
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Country(c) => f.write_str(c),
            Self::Eu => f.write_str("EU"),
            Self::Eea => f.write_str("EEA"),
        }
    }
}

/// The regions a request allows (none listed: anywhere).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedRegions(BTreeSet<Region>);

impl AllowedRegions {
    /// Anywhere.
    pub fn anywhere() -> Self {
        Self::default()
    }

    /// Parses a comma-separated list (`EU,CH`); empty means anywhere.
    pub fn parse(list: &str) -> Result<Self, BadRegion> {
        let mut set = BTreeSet::new();
        for part in list.split(',').filter(|p| !p.trim().is_empty()) {
            set.insert(Region::parse(part)?);
        }
        Ok(Self(set))
    }

    /// The regions both allow: a node allowed by the result is allowed by each. `None` when
    /// no place is in both (`DE` and `US`).
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        if !self.is_constrained() {
            return Some(other.clone());
        }
        if !other.is_constrained() {
            return Some(self.clone());
        }
        let mut set = BTreeSet::new();
        for a in &self.0 {
            for b in &other.0 {
                if a.within(b) {
                    set.insert(a.clone());
                } else if b.within(a) {
                    set.insert(b.clone());
                } else {
                    let theirs = b.countries();
                    set.extend(
                        (a.countries().into_iter())
                            .filter(|c| theirs.contains(c))
                            .map(|c| Region::Country(c.to_owned())),
                    );
                }
            }
        }
        (!set.is_empty()).then_some(Self(set))
    }

    /// Whether any region is required.
    pub fn is_constrained(&self) -> bool {
        !self.0.is_empty()
    }

    /// Whether a node that declares `declared` may serve the request.
    pub fn allows(&self, declared: Option<&str>) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let Some(region) = declared.and_then(|d| Region::parse(d).ok()) else {
            return false;
        };
        self.0.iter().any(|outer| region.within(outer))
    }
}

impl fmt::Display for AllowedRegions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("anywhere");
        }
        let list: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&list.join(","))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn intersections_allow_what_both_allow() {
        let p = |s: &str| AllowedRegions::parse(s).unwrap();
        assert_eq!(p("EEA").intersect(&p("EU")), Some(p("EU")));
        assert_eq!(p("EU").intersect(&p("DE,US")), Some(p("DE")));
        assert_eq!(p("").intersect(&p("US")), Some(p("US")));
        assert_eq!(p("EU").intersect(&p("US")), None);
        let both = p("EU,NO").intersect(&p("EEA")).unwrap();
        assert!(both.allows(Some("NO")) && both.allows(Some("FR")) && !both.allows(Some("IS")));
    }

    #[test]
    fn regions_parse_and_nest() {
        assert_eq!(Region::parse("de").unwrap(), Region::Country("DE".into()));
        assert_eq!(Region::parse(" EU ").unwrap(), Region::Eu);
        for bad in ["", "DEU", "eu-west", "D1", "48.1,11.6", "É"] {
            assert!(Region::parse(bad).is_err(), "{bad}");
        }
        let eu = AllowedRegions::parse("EU").unwrap();
        assert!(eu.allows(Some("DE")) && eu.allows(Some("fr")) && eu.allows(Some("EU")));
        assert!(!eu.allows(Some("US")) && !eu.allows(Some("NO")) && !eu.allows(Some("EEA")));
        assert!(
            !eu.allows(None),
            "an undeclared node satisfies no constraint"
        );
        assert!(!eu.allows(Some("eu-west")), "nor does an unparsable one");
        let de = AllowedRegions::parse("DE").unwrap();
        assert!(de.allows(Some("DE")) && !de.allows(Some("EU")) && !de.allows(Some("FR")));
        let eea_ch = AllowedRegions::parse("EEA,CH").unwrap();
        assert!(
            eea_ch.allows(Some("NO")) && eea_ch.allows(Some("CH")) && eea_ch.allows(Some("EU"))
        );
        assert_eq!(eea_ch.to_string(), "CH,EEA");
        let any = AllowedRegions::parse("").unwrap();
        assert!(!any.is_constrained() && any.allows(None) && any.allows(Some("US")));
        assert!(AllowedRegions::parse("EU,nowhere").is_err());
        assert_eq!(EU.len(), 27);
    }
}
