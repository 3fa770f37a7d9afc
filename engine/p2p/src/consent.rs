//! Consent records: what a visitor allowed, per purpose, signed with their own key (the
//! page's Ed25519 key, named by its `did:key`), so the node that records them can show it
//! did not invent them. The node logs each purpose's decision in its audit log.
//!
//! Global Privacy Control: a record made while the browser sends GPC
//! (`navigator.globalPrivacyControl`) cannot grant the purposes that share data (`storage`,
//! `analytics`); compute contribution shares no personal data and still takes an explicit
//! yes. A record is checked for its signature, its shape and its age.

use std::collections::BTreeMap;

use libp2p::identity::Keypair;
use serde::{Deserialize, Serialize};

use crate::did;

/// Purposes a record speaks for.
pub const PURPOSES: [&str; 3] = ["compute", "storage", "analytics"];
/// Purposes GPC says no to.
pub const GPC_DENIES: [&str; 2] = ["storage", "analytics"];
/// Record format version.
pub const CONSENT_VERSION: u8 = 1;
/// How far a record's time may be from the verifier's clock (a replayed old record, or a
/// clock far off, is refused).
pub const MAX_SKEW_MS: u64 = 10 * 60 * 1000;
/// Longest site origin.
pub const MAX_SITE: usize = 256;

/// What a visitor decided on one site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentRecord {
    /// [`CONSENT_VERSION`].
    pub v: u8,
    /// Who decided: the `did:key` of the key that signs.
    pub subject: String,
    /// Where: the page's origin.
    pub site: String,
    /// Each purpose allowed (`true`) or refused (`false`); every one of [`PURPOSES`].
    pub purposes: BTreeMap<String, bool>,
    /// Whether the browser sent Global Privacy Control.
    pub gpc: bool,
    /// When, in milliseconds since the Unix epoch.
    pub issued_at_ms: u64,
}

/// A record and its signature (base58btc of the 64-byte Ed25519 signature).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedConsent {
    /// The record.
    pub record: ConsentRecord,
    /// Its signature by the subject's key.
    pub signature: String,
}

/// Why a consent record is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConsentError {
    /// Malformed: a version, purpose, site or key that is not acceptable.
    #[error("malformed consent record: {0}")]
    Malformed(String),
    /// The signature is not the subject's.
    #[error("the consent record's signature does not verify with its subject's key")]
    Signature,
    /// GPC was on and the record grants a data-sharing purpose.
    #[error("a record made under Global Privacy Control cannot grant {0}")]
    Gpc(String),
    /// Too old or from the future.
    #[error("the consent record's time is {0} ms away from now (at most {MAX_SKEW_MS})")]
    Stale(u64),
}

impl ConsentRecord {
    /// The bytes signed: a domain line, then the record as JSON (its field order is fixed
    /// and its purposes sorted, so the verifier gets the same bytes back).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut out = b"kwaainet/consent/v1\n".to_vec();
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out
    }

    fn check(&self, now_ms: u64) -> Result<(), ConsentError> {
        let bad = |m: &str| ConsentError::Malformed(m.to_owned());
        if self.v != CONSENT_VERSION {
            return Err(bad("unknown version"));
        }
        if self.site.is_empty()
            || self.site.len() > MAX_SITE
            || self.site.chars().any(char::is_control)
        {
            return Err(bad("site must be an origin of at most 256 characters"));
        }
        if self.purposes.len() != PURPOSES.len()
            || !PURPOSES.iter().all(|p| self.purposes.contains_key(*p))
        {
            return Err(bad(
                "purposes must be exactly compute, storage and analytics",
            ));
        }
        if self.gpc
            && let Some(p) = GPC_DENIES.iter().find(|p| self.purposes[**p])
        {
            return Err(ConsentError::Gpc((*p).to_owned()));
        }
        let skew = now_ms.abs_diff(self.issued_at_ms);
        if skew > MAX_SKEW_MS {
            return Err(ConsentError::Stale(skew));
        }
        Ok(())
    }
}

/// Signs a record of `site`'s decisions with `key` (its `subject` is set from the key).
/// Under GPC the data-sharing purposes are recorded as refused, whatever was asked.
pub fn sign(
    key: &Keypair,
    site: &str,
    purposes: &BTreeMap<String, bool>,
    gpc: bool,
    now_ms: u64,
) -> Result<SignedConsent, ConsentError> {
    let public = key
        .public()
        .try_into_ed25519()
        .map_err(|_| ConsentError::Malformed("consent is signed with an Ed25519 key".into()))?;
    let subject = did::from_ed25519(&public);
    let mut purposes = purposes.clone();
    if gpc {
        for p in GPC_DENIES {
            purposes.insert(p.to_owned(), false);
        }
    }
    let record = ConsentRecord {
        v: CONSENT_VERSION,
        subject,
        site: site.to_owned(),
        purposes,
        gpc,
        issued_at_ms: now_ms,
    };
    record.check(now_ms)?;
    let sig = key
        .sign(&record.signing_bytes())
        .map_err(|e| ConsentError::Malformed(e.to_string()))?;
    Ok(SignedConsent {
        record,
        signature: bs58::encode(sig).into_string(),
    })
}

/// Checks a signed record at `now_ms`: its shape, its age, GPC, and its signature by the
/// key its `subject` names.
pub fn verify(signed: &SignedConsent, now_ms: u64) -> Result<&ConsentRecord, ConsentError> {
    let r = &signed.record;
    r.check(now_ms)?;
    let key = did::to_ed25519(&r.subject).map_err(|e| ConsentError::Malformed(e.to_string()))?;
    if signed.signature.len() > 100 {
        return Err(ConsentError::Signature);
    }
    let sig = bs58::decode(&signed.signature)
        .into_vec()
        .map_err(|_| ConsentError::Signature)?;
    if !key.verify(&r.signing_bytes(), &sig) {
        return Err(ConsentError::Signature);
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn asked(compute: bool, storage: bool, analytics: bool) -> BTreeMap<String, bool> {
        [
            ("compute", compute),
            ("storage", storage),
            ("analytics", analytics),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn signed_records_verify_and_forgeries_do_not() {
        let key = Keypair::generate_ed25519();
        let s = sign(
            &key,
            "https://example.org",
            &asked(true, true, false),
            false,
            NOW,
        )
        .unwrap();
        let r = verify(&s, NOW + 1000).unwrap();
        assert_eq!(
            r.subject,
            did::from_peer_id(&key.public().to_peer_id()).unwrap()
        );
        assert!(r.purposes["compute"] && r.purposes["storage"] && !r.purposes["analytics"]);
        // Through JSON, as a node receives it.
        let back: SignedConsent =
            serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert!(verify(&back, NOW).is_ok());

        let mut granted = s.clone();
        granted.record.purposes.insert("analytics".into(), true);
        assert_eq!(verify(&granted, NOW), Err(ConsentError::Signature));
        let mut other = s.clone();
        other.record.subject =
            did::from_peer_id(&Keypair::generate_ed25519().public().to_peer_id()).unwrap();
        assert_eq!(verify(&other, NOW), Err(ConsentError::Signature));
        let mut junk = s.clone();
        junk.signature = "0OIl".into();
        assert_eq!(verify(&junk, NOW), Err(ConsentError::Signature));
        assert!(matches!(
            verify(&s, NOW + MAX_SKEW_MS + 1),
            Err(ConsentError::Stale(_))
        ));
        let mut extra = s.clone();
        extra.record.purposes.insert("ads".into(), false);
        assert!(matches!(
            verify(&extra, NOW),
            Err(ConsentError::Malformed(_))
        ));
        assert!(
            serde_json::from_str::<SignedConsent>(r#"{"record":{},"signature":"x","more":1}"#)
                .is_err()
        );
    }

    #[test]
    fn gpc_says_no_to_data_sharing() {
        let key = Keypair::generate_ed25519();
        // Asked for everything under GPC: storage and analytics are recorded as refused.
        let s = sign(
            &key,
            "https://example.org",
            &asked(true, true, true),
            true,
            NOW,
        )
        .unwrap();
        let r = verify(&s, NOW).unwrap();
        assert!(
            r.gpc && r.purposes["compute"] && !r.purposes["storage"] && !r.purposes["analytics"]
        );
        // A record claiming GPC yet granting analytics (signed, so made that way on purpose).
        let mut record = s.record.clone();
        record.purposes.insert("analytics".into(), true);
        let sig = key.sign(&record.signing_bytes()).unwrap();
        let forged = SignedConsent {
            record,
            signature: bs58::encode(sig).into_string(),
        };
        assert_eq!(
            verify(&forged, NOW),
            Err(ConsentError::Gpc("analytics".into()))
        );
    }
}
