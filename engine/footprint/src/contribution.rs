//! Contribution records: what one contributor (a node or a page, named by its did:key) gave
//! over a period — work served, time busy, bytes moved, uptime, energy and carbon — signed
//! with the contributor's own key, so no one can publish numbers in another's name or
//! change theirs without breaking the signature; and a leaderboard built only from records
//! that verify and pass sanity bounds (a period's busy time cannot exceed what its threads
//! could do, work needs busy time, nothing dates from the future).
//!
//! A contributor can still overstate its own work in its own signed record; what stops that
//! is corroboration by the clients it served (their receipts), which is not built yet. The
//! bounds reject the impossible, not the merely generous.

use serde::{Deserialize, Serialize};

use crate::Method;

/// The record format's version.
pub const VERSION: u8 = 1;
/// The most threads a contributor may claim were busy at once.
pub const MAX_THREADS: u64 = 1_024;
/// Longest public name.
pub const MAX_NAME: usize = 40;

/// What a contributor gave over `[from_ms, to_ms)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contribution {
    /// Format version.
    pub v: u8,
    /// The contributor's did:key.
    pub contributor: String,
    /// A public name, only if the contributor opted in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its coarse declared region (a country code or a group), if any; never more precise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The period, Unix milliseconds.
    pub from_ms: u64,
    /// Its end.
    pub to_ms: u64,
    /// API requests run.
    pub jobs: u64,
    /// Tokens processed for API requests.
    pub tokens: u64,
    /// Tokens run through served spans.
    pub served_tokens: u64,
    /// Served tokens × blocks: the work, comparable across span sizes.
    pub block_tokens: u64,
    /// Compute time, ms.
    pub busy_ms: u64,
    /// Bytes moved for served spans.
    pub bytes: u64,
    /// Time online, s.
    pub uptime_s: u64,
    /// Energy, µWh.
    pub energy_uwh: u64,
    /// Carbon, µg CO2e.
    pub carbon_ug: u64,
    /// The renewable share of its supply, per mille.
    pub renewable_permille: u16,
    /// How the energy was obtained.
    pub method: Method,
}

/// A record and its contributor's Ed25519 signature (base64url, over
/// `kwaainet/contribution/v1\n` ‖ the record's JSON text).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedContribution {
    /// The [`Contribution`] as JSON text.
    pub record: String,
    /// The signature.
    pub signature: String,
}

/// Why a record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContributionError {
    /// Not a record.
    #[error("malformed contribution record: {0}")]
    Malformed(String),
    /// Not signed by its contributor.
    #[error("the contribution record is not signed by {0}")]
    Signature(String),
    /// Signed, but impossible.
    #[error("implausible contribution record: {0}")]
    Implausible(String),
}

fn signing_bytes(text: &str) -> Vec<u8> {
    [b"kwaainet/contribution/v1\n".as_slice(), text.as_bytes()].concat()
}

fn b64url(bytes: &[u8]) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
}

fn from_b64url(s: &str) -> Option<Vec<u8>> {
    base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, s).ok()
}

impl Contribution {
    /// Checks the bounds a real contributor's record cannot break, at time `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), ContributionError> {
        let bad = |why: String| Err(ContributionError::Implausible(why));
        if self.v != VERSION {
            return bad(format!("version {}", self.v));
        }
        if self.to_ms < self.from_ms || self.to_ms > now_ms.saturating_add(5 * 60 * 1000) {
            return bad("its period ends before it starts, or in the future".into());
        }
        let period_ms = self.to_ms - self.from_ms;
        if self.busy_ms > period_ms.saturating_mul(MAX_THREADS) {
            return bad(format!(
                "{} ms busy in a period of {period_ms} ms",
                self.busy_ms
            ));
        }
        if self.uptime_s.saturating_mul(1_000) > period_ms.saturating_add(1_000) {
            return bad(format!("{} s up in {period_ms} ms", self.uptime_s));
        }
        if (self.tokens > 0 || self.served_tokens > 0) && self.busy_ms == 0 {
            return bad("work without busy time".into());
        }
        if self.block_tokens < self.served_tokens {
            return bad("fewer block-tokens than served tokens".into());
        }
        if self.renewable_permille > 1_000 {
            return bad("a renewable share above 100 %".into());
        }
        if let Some(n) = &self.name
            && (n.is_empty() || n.chars().count() > MAX_NAME || n.chars().any(char::is_control))
        {
            return bad(format!("public name: 1 to {MAX_NAME} printable characters"));
        }
        if let Some(r) = &self.region
            && (r.len() > 3 || !r.chars().all(|c| c.is_ascii_uppercase()))
        {
            return bad("a region is a country code or a group (DE, EU), never more".into());
        }
        Ok(())
    }
}

impl SignedContribution {
    /// Signs `record` with its contributor's key (`sign`: Ed25519, 64-byte signatures).
    pub fn sign(
        record: &Contribution,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Result<Self, ContributionError> {
        let text = serde_json::to_string(record)
            .map_err(|e| ContributionError::Malformed(e.to_string()))?;
        let signature = b64url(&sign(&signing_bytes(&text)));
        Ok(Self {
            record: text,
            signature,
        })
    }

    /// The record, once its signature by its contributor (resolved by `key_of`, a did:key
    /// to Ed25519 public key) verifies and its bounds hold at `now_ms`.
    pub fn verify(
        &self,
        key_of: impl Fn(&str) -> Option<[u8; 32]>,
        now_ms: u64,
    ) -> Result<Contribution, ContributionError> {
        if self.record.len() > 8 << 10 {
            return Err(ContributionError::Malformed("larger than 8 KiB".into()));
        }
        let c: Contribution = serde_json::from_str(&self.record)
            .map_err(|e| ContributionError::Malformed(e.to_string()))?;
        let unsigned = || ContributionError::Signature(c.contributor.clone());
        let key = key_of(&c.contributor).ok_or_else(unsigned)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| unsigned())?;
        let sig = from_b64url(&self.signature).ok_or_else(unsigned)?;
        let sig = ed25519_dalek::Signature::from_slice(&sig).map_err(|_| unsigned())?;
        key.verify_strict(&signing_bytes(&self.record), &sig)
            .map_err(|_| unsigned())?;
        c.check(now_ms)?;
        Ok(c)
    }
}

/// One row of a leaderboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The contributor.
    pub contributor: String,
    /// Its public name, if it opted in.
    pub name: Option<String>,
    /// Its coarse region.
    pub region: Option<String>,
    /// Block-tokens served plus API tokens processed: the work.
    pub work: u64,
    /// Tokens it processed: its API's and those through its served spans.
    pub tokens: u64,
    /// Its time online, s.
    pub uptime_s: u64,
    /// Its renewable share, per mille.
    pub renewable_permille: u16,
    /// Its energy, µWh.
    pub energy_uwh: u64,
    /// Its carbon, µg.
    pub carbon_ug: u64,
}

/// Contributors ranked by verified work, and separately by renewable share.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaderboard {
    /// By work, most first.
    pub by_work: Vec<Standing>,
    /// By renewable share (those who did work), highest first.
    pub by_renewable: Vec<Standing>,
    /// Records refused, with why.
    pub refused: Vec<String>,
}

/// Ranks the contributors of `records` (each one's latest verified record counts).
pub fn leaderboard(
    records: &[SignedContribution],
    key_of: impl Fn(&str) -> Option<[u8; 32]>,
    now_ms: u64,
) -> Leaderboard {
    let mut latest: std::collections::BTreeMap<String, Contribution> = Default::default();
    let mut refused = Vec::new();
    for r in records {
        match r.verify(&key_of, now_ms) {
            Ok(c) => {
                if latest
                    .get(&c.contributor)
                    .is_none_or(|old| old.to_ms < c.to_ms)
                {
                    latest.insert(c.contributor.clone(), c);
                }
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    let standings: Vec<Standing> = latest
        .into_values()
        .map(|c| Standing {
            work: c.block_tokens.saturating_add(c.tokens),
            tokens: c.tokens.saturating_add(c.served_tokens),
            uptime_s: c.uptime_s,
            contributor: c.contributor,
            name: c.name,
            region: c.region,
            renewable_permille: c.renewable_permille,
            energy_uwh: c.energy_uwh,
            carbon_ug: c.carbon_ug,
        })
        .collect();
    let mut by_work = standings.clone();
    by_work.sort_by(|a, b| b.work.cmp(&a.work).then(a.contributor.cmp(&b.contributor)));
    let mut by_renewable: Vec<Standing> = standings.into_iter().filter(|s| s.work > 0).collect();
    by_renewable.sort_by(|a, b| {
        b.renewable_permille
            .cmp(&a.renewable_permille)
            .then(b.work.cmp(&a.work))
            .then(a.contributor.cmp(&b.contributor))
    });
    Leaderboard {
        by_work,
        by_renewable,
        refused,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};

    const NOW: u64 = 1_800_000_000_000;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn did(seed: u8) -> String {
        format!("did:test:{seed}")
    }

    fn key_of(d: &str) -> Option<[u8; 32]> {
        let seed: u8 = d.strip_prefix("did:test:")?.parse().ok()?;
        Some(key(seed).verifying_key().to_bytes())
    }

    fn record(seed: u8, block_tokens: u64, renewable: u16) -> Contribution {
        Contribution {
            v: VERSION,
            contributor: did(seed),
            name: (seed == 1).then(|| "Ada's node".into()),
            region: Some("FR".into()),
            from_ms: NOW - 3_600_000,
            to_ms: NOW,
            jobs: 3,
            tokens: 100,
            served_tokens: block_tokens / 10,
            block_tokens,
            busy_ms: 60_000,
            bytes: 1 << 20,
            uptime_s: 3_600,
            energy_uwh: 66_000,
            carbon_ug: 3_700,
            renewable_permille: renewable,
            method: Method::Modelled,
        }
    }

    fn signed(seed: u8, c: &Contribution) -> SignedContribution {
        SignedContribution::sign(c, |b| key(seed).sign(b).to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn a_record_verifies_and_edits_or_forgeries_do_not() {
        let c = record(1, 5_000, 263);
        let s = signed(1, &c);
        assert_eq!(s.verify(key_of, NOW).unwrap(), c);
        // Inflated after signing.
        let mut inflated = s.clone();
        inflated.record = inflated
            .record
            .replace("\"block_tokens\":5000", "\"block_tokens\":5000000");
        assert_ne!(inflated.record, s.record);
        assert_eq!(
            inflated.verify(key_of, NOW),
            Err(ContributionError::Signature(did(1)))
        );
        // Signed by another in this contributor's name.
        let forged = signed(2, &c);
        assert!(matches!(
            forged.verify(key_of, NOW),
            Err(ContributionError::Signature(_))
        ));
        // Garbage.
        let junk = SignedContribution {
            record: "{}".into(),
            signature: "x".into(),
        };
        assert!(matches!(
            junk.verify(key_of, NOW),
            Err(ContributionError::Malformed(_))
        ));
        let bad_sig = SignedContribution {
            signature: "!!".into(),
            ..s.clone()
        };
        assert!(matches!(
            bad_sig.verify(key_of, NOW),
            Err(ContributionError::Signature(_))
        ));
    }

    #[test]
    fn impossible_records_are_refused_even_when_signed() {
        type Edit = fn(&mut Contribution);
        let cases: [(&str, Edit); 8] = [
            ("busy beyond the threads' time", |c| {
                c.busy_ms = 3_600_000 * 2_000
            }),
            ("up longer than the period", |c| c.uptime_s = 7_200),
            ("from the future", |c| c.to_ms = NOW + 3_600_000),
            ("work without busy time", |c| c.busy_ms = 0),
            ("a share above 100 %", |c| c.renewable_permille = 1_001),
            ("a precise location", |c| {
                c.region = Some("48.1,11.6".into())
            }),
            ("a name with control characters", |c| {
                c.name = Some("a\u{7}".into())
            }),
            ("fewer block-tokens than tokens", |c| {
                c.served_tokens = c.block_tokens + 1
            }),
        ];
        for (what, edit) in cases {
            let mut c = record(1, 5_000, 100);
            edit(&mut c);
            let r = signed(1, &c).verify(key_of, NOW);
            assert!(
                matches!(r, Err(ContributionError::Implausible(_))),
                "{what}: {r:?}"
            );
        }
    }

    #[test]
    fn the_leaderboard_ranks_verified_work_and_renewable_share() {
        let mut records = vec![
            signed(1, &record(1, 5_000, 263)),
            signed(2, &record(2, 9_000, 50)),
            signed(3, &record(3, 1_000, 985)),
        ];
        // An older record of 2 does not count; a forged one is refused.
        let mut old = record(2, 100_000, 50);
        old.to_ms -= 1_000;
        records.push(signed(2, &old));
        records.push(signed(4, &record(3, 1_000_000, 1_000)));
        let board = leaderboard(&records, key_of, NOW);
        let order = |v: &[Standing]| v.iter().map(|s| s.contributor.clone()).collect::<Vec<_>>();
        assert_eq!(order(&board.by_work), [did(2), did(1), did(3)]);
        assert_eq!(board.by_work[0].work, 9_100);
        assert_eq!(order(&board.by_renewable), [did(3), did(1), did(2)]);
        assert_eq!(board.by_work[1].name.as_deref(), Some("Ada's node"));
        assert_eq!(board.refused.len(), 1);
    }
}
