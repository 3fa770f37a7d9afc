//! Compliance policies: which purposes need the visitor's consent, whether stored data must
//! be encrypted, how long data held for others is kept, which regions data may go to, and
//! whether Global Privacy Control is honoured; from named profiles (`gdpr`, `ccpa`,
//! `hipaa`) with per-field overrides, combined strictly (every profile's constraint holds).
//!
//! The profiles are this project's reading of what each regime asks of a node like ours,
//! written down so an operator can see and change them; they are not legal advice.
//!
//! | Profile | Consent needed for | Encryption | Retention of data held for others | Regions | GPC |
//! |---|---|---|---|---|---|
//! | `gdpr` | storage, analytics (Art. 6/7) | required (Art. 32) | 365 days (Art. 5(1)(e)) | EEA (Chapter V) | honoured |
//! | `ccpa` | none (opt-out regime) | required ("reasonable security") | 730 days (disclosed period) | anywhere | honoured (a valid opt-out) |
//! | `hipaa` | storage, analytics (authorization beyond treatment, payment, operations) | required (§164.312) | 2,190 days (6 years, §164.316) | US | honoured |

use std::collections::BTreeSet;
use std::fmt;

use kwaainet_p2p::region::{AllowedRegions, BadRegion};
use serde::{Deserialize, Serialize};

/// A named profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// The EU's General Data Protection Regulation.
    Gdpr,
    /// The California Consumer Privacy Act (as amended by the CPRA).
    Ccpa,
    /// The US Health Insurance Portability and Accountability Act.
    Hipaa,
}

impl Profile {
    /// Parses `gdpr`, `ccpa`, `hipaa` (any case).
    pub fn parse(s: &str) -> Result<Self, PolicyError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "gdpr" => Ok(Self::Gdpr),
            "ccpa" => Ok(Self::Ccpa),
            "hipaa" => Ok(Self::Hipaa),
            other => Err(PolicyError::Profile(other.to_owned())),
        }
    }

    /// What the profile asks.
    pub fn policy(self) -> Policy {
        let purposes = |p: &[&str]| p.iter().map(|s| (*s).to_owned()).collect();
        let regions = |r: &str| AllowedRegions::parse(r).unwrap_or_default();
        let (consent, retention, allowed) = match self {
            Self::Gdpr => (purposes(&["storage", "analytics"]), 365, regions("EEA")),
            Self::Ccpa => (BTreeSet::new(), 730, AllowedRegions::anywhere()),
            Self::Hipaa => (purposes(&["storage", "analytics"]), 2190, regions("US")),
        };
        Policy {
            profiles: vec![self],
            consent_required: consent,
            encryption_required: true,
            retention_days: Some(retention),
            allowed_regions: allowed,
            honour_gpc: true,
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gdpr => "gdpr",
            Self::Ccpa => "ccpa",
            Self::Hipaa => "hipaa",
        })
    }
}

/// Why a policy cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// An unknown profile name.
    #[error("unknown compliance profile {0:?}: gdpr, ccpa or hipaa")]
    Profile(String),
    /// A purpose that is not one of compute, storage, analytics.
    #[error("unknown purpose {0:?}: compute, storage or analytics")]
    Purpose(String),
    /// A malformed region.
    #[error(transparent)]
    Region(#[from] BadRegion),
    /// Profiles (or overrides) whose regions have no place in common.
    #[error("the policy's regions exclude each other: {0}")]
    NoRegion(String),
    /// The node's declared region is not one the policy allows.
    #[error(
        "this node declares region {declared}, but its policy ({profiles}) allows data only in {allowed}: declare a region inside it (--region) or change the policy"
    )]
    NodeRegion {
        /// What the node declares ("none" when it declares nothing).
        declared: String,
        /// The policy's profiles.
        profiles: String,
        /// The regions it allows.
        allowed: String,
    },
}

/// The `[policy]` table of a node's config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyFile {
    /// Profiles to apply (`["gdpr"]`).
    pub profiles: Vec<String>,
    /// Replaces the purposes that need consent.
    pub consent_required: Option<Vec<String>>,
    /// Replaces whether encryption is required.
    pub encryption_required: Option<bool>,
    /// Replaces the retention (days; 0 keeps nothing for others).
    pub retention_days: Option<u32>,
    /// Narrows the allowed regions (`"EU"`, `"DE,FR"`).
    pub allowed_regions: Option<String>,
}

/// The policy a node enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    /// The profiles it comes from.
    pub profiles: Vec<Profile>,
    /// Purposes that need a visitor's consent.
    pub consent_required: BTreeSet<String>,
    /// Stored data must be encrypted (the node holds only sealed blobs).
    pub encryption_required: bool,
    /// Days data held for others is kept (`None`: no limit).
    pub retention_days: Option<u32>,
    /// Where data may go (storage placement, the API's swarm routes, the node itself).
    #[serde(serialize_with = "display")]
    pub allowed_regions: AllowedRegions,
    /// Global Privacy Control counts as a refusal of data-sharing purposes.
    pub honour_gpc: bool,
}

fn display<S: serde::Serializer>(v: &AllowedRegions, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

impl Default for Policy {
    /// No profile: nothing beyond what the node always does.
    fn default() -> Self {
        Self {
            profiles: Vec::new(),
            consent_required: BTreeSet::new(),
            encryption_required: false,
            retention_days: None,
            allowed_regions: AllowedRegions::anywhere(),
            honour_gpc: true,
        }
    }
}

const PURPOSES: [&str; 3] = ["compute", "storage", "analytics"];

impl Policy {
    /// Both policies at once: the union of consent requirements, encryption if either asks,
    /// the shorter retention, the regions both allow.
    pub fn and(self, other: Policy) -> Result<Policy, PolicyError> {
        let allowed_regions = self
            .allowed_regions
            .intersect(&other.allowed_regions)
            .ok_or_else(|| {
                PolicyError::NoRegion(format!(
                    "{} and {}",
                    self.allowed_regions, other.allowed_regions
                ))
            })?;
        let mut profiles = self.profiles;
        profiles.extend(other.profiles);
        profiles.sort();
        profiles.dedup();
        Ok(Policy {
            profiles,
            consent_required: self
                .consent_required
                .union(&other.consent_required)
                .cloned()
                .collect(),
            encryption_required: self.encryption_required || other.encryption_required,
            retention_days: match (self.retention_days, other.retention_days) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
            allowed_regions,
            honour_gpc: self.honour_gpc || other.honour_gpc,
        })
    }

    /// The policy of a config table and `--policy` profiles (comma-separated).
    pub fn build(file: &PolicyFile, flag_profiles: Option<&str>) -> Result<Policy, PolicyError> {
        let names = flag_profiles
            .map(|s| {
                s.split(',')
                    .filter(|p| !p.trim().is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|| file.profiles.clone());
        let mut policy = Policy::default();
        for name in &names {
            policy = policy.and(Profile::parse(name)?.policy())?;
        }
        if let Some(list) = &file.consent_required {
            if let Some(bad) = list.iter().find(|p| !PURPOSES.contains(&p.as_str())) {
                return Err(PolicyError::Purpose(bad.clone()));
            }
            policy.consent_required = list.iter().cloned().collect();
        }
        if let Some(e) = file.encryption_required {
            policy.encryption_required = e;
        }
        if let Some(d) = file.retention_days {
            policy.retention_days = Some(d);
        }
        if let Some(r) = &file.allowed_regions {
            let narrower = AllowedRegions::parse(r)?;
            policy.allowed_regions =
                policy.allowed_regions.intersect(&narrower).ok_or_else(|| {
                    PolicyError::NoRegion(format!("{} and {narrower}", policy.allowed_regions))
                })?;
        }
        Ok(policy)
    }

    /// Whether a node declaring `region` may run under this policy (its own data stays on
    /// it, so it must be in an allowed region).
    pub fn check_node(&self, region: Option<&str>) -> Result<(), PolicyError> {
        if self.allowed_regions.allows(region) {
            Ok(())
        } else {
            Err(PolicyError::NodeRegion {
                declared: region.unwrap_or("none").to_owned(),
                profiles: self.profile_names(),
                allowed: self.allowed_regions.to_string(),
            })
        }
    }

    /// `gdpr+hipaa`, or `none`.
    pub fn profile_names(&self) -> String {
        if self.profiles.is_empty() {
            return "none".into();
        }
        let names: Vec<String> = self.profiles.iter().map(ToString::to_string).collect();
        names.join("+")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn profiles_combine_strictly() {
        let gdpr = Profile::Gdpr.policy();
        assert!(gdpr.consent_required.contains("storage") && gdpr.encryption_required);
        assert!(
            gdpr.allowed_regions.allows(Some("DE")) && !gdpr.allowed_regions.allows(Some("US"))
        );
        // GDPR and HIPAA at once: EEA and US have no place in common.
        let both = Policy::build(&PolicyFile::default(), Some("gdpr,hipaa"));
        assert!(matches!(both, Err(PolicyError::NoRegion(_))), "{both:?}");
        // GDPR and CCPA: EEA, the shorter retention.
        let p = Policy::build(&PolicyFile::default(), Some("ccpa,gdpr")).unwrap();
        assert_eq!(p.retention_days, Some(365));
        assert_eq!(p.profile_names(), "gdpr+ccpa");
        assert!(p.check_node(Some("FR")).is_ok());
        assert!(matches!(
            p.check_node(Some("US")),
            Err(PolicyError::NodeRegion { .. })
        ));
        assert!(matches!(
            p.check_node(None),
            Err(PolicyError::NodeRegion { .. })
        ));
        assert!(Policy::default().check_node(None).is_ok());
    }

    #[test]
    fn a_config_table_narrows_and_overrides() {
        let file: PolicyFile = serde_json::from_str(
            r#"{"profiles":["gdpr"],"allowed_regions":"DE","retention_days":30,"consent_required":["compute","storage"]}"#,
        )
        .unwrap();
        let p = Policy::build(&file, None).unwrap();
        assert_eq!(p.allowed_regions.to_string(), "DE");
        assert_eq!(p.retention_days, Some(30));
        assert_eq!(
            p.consent_required.iter().collect::<Vec<_>>(),
            ["compute", "storage"]
        );
        let bad: PolicyFile =
            serde_json::from_str(r#"{"consent_required":["marketing"]}"#).unwrap();
        assert!(matches!(
            Policy::build(&bad, None),
            Err(PolicyError::Purpose(_))
        ));
        assert!(matches!(
            Policy::build(&PolicyFile::default(), Some("sox")),
            Err(PolicyError::Profile(_))
        ));
        let outside: PolicyFile =
            serde_json::from_str(r#"{"profiles":["hipaa"],"allowed_regions":"EU"}"#).unwrap();
        assert!(matches!(
            Policy::build(&outside, None),
            Err(PolicyError::NoRegion(_))
        ));
    }
}
