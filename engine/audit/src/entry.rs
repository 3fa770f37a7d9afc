//! One audited operation. By construction it holds no personal data: people and objects
//! appear only as salted commitments, and every other string is a short label from code.

use serde::{Deserialize, Serialize};

use crate::commit::Commitment;
use crate::error::{Error, Result};

/// The most bytes one stored entry may take (a line of the log).
pub const MAX_ENTRY_BYTES: usize = 1024;

/// A short machine label (purpose, reason, region, client kind): 1 to 64 characters of
/// `[A-Za-z0-9._:-]`, so no free text, and so no personal data, can ride in one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Label(String);

impl Label {
    /// Checks and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self> {
        let s = s.into();
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b));
        if ok {
            Ok(Self(s))
        } else {
            Err(Error::Label(s))
        }
    }

    /// The label.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Label {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Self::new(s)
    }
}

impl From<Label> for String {
    fn from(l: Label) -> String {
        l.0
    }
}

impl std::fmt::Display for Label {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Data stored.
    Store,
    /// Data read.
    Read,
    /// Data deleted.
    Delete,
    /// A subject's data exported (GDPR Art. 15/20).
    Export,
    /// A subject's data erased (GDPR Art. 17).
    Erase,
    /// A consent given or withdrawn.
    Consent,
    /// A request processed (an inference job: the prompt is the subject's data).
    Process,
    /// A policy decision: a request allowed or refused, and why.
    Policy,
}

/// A decision's outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Allowed, given, or done.
    Allow,
    /// Refused, withdrawn, or failed.
    Deny,
}

/// One audited operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// When, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What was done.
    pub op: Op,
    /// Whose data, as a salted commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Commitment>,
    /// Which data (a blob, a record), as a commitment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Commitment>,
    /// The purpose it served (`compute`, `storage`, `analytics`, `inference`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purpose: Option<Label>,
    /// Allowed or refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    /// Why (a reason code: `rate_limited`, `bad_key`, `no_consent`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Label>,
    /// The region the operation ran in, where declared (`EU`, `DE`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Label>,
}

impl Entry {
    /// An entry for `op` at `time_ms` with nothing else set.
    pub fn new(time_ms: u64, op: Op) -> Self {
        Self {
            time_ms,
            op,
            subject: None,
            object: None,
            purpose: None,
            decision: None,
            reason: None,
            region: None,
        }
    }

    /// The exact bytes stored for it (one JSON line without its newline); its leaf in the
    /// tree is their SHA-256.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A struct of strings, numbers and enums: serialisation cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses stored bytes (the `index`th entry, for the error).
    pub fn parse(index: u64, bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(Error::Entry {
                index,
                reason: format!("{} bytes, the limit is {MAX_ENTRY_BYTES}", bytes.len()),
            });
        }
        serde_json::from_slice(bytes).map_err(|e| Error::Entry {
            index,
            reason: e.to_string(),
        })
    }
}
