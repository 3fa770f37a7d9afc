//! A compliance report over a time range of the log: what was done, for which purposes,
//! allowed or refused and why, in which regions, for how many distinct subjects. Counts
//! only: subjects stay commitments, so a report can be shared with an auditor.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::commit::Commitment;
use crate::entry::{Decision, Entry};

/// Allowed and refused counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Allowed, given, done.
    pub allow: u64,
    /// Refused, withdrawn, failed.
    pub deny: u64,
    /// Entries without a decision.
    pub none: u64,
}

impl Tally {
    fn add(&mut self, d: Option<Decision>) {
        match d {
            Some(Decision::Allow) => self.allow += 1,
            Some(Decision::Deny) => self.deny += 1,
            None => self.none += 1,
        }
    }
}

/// The summary of the entries whose time lies in `from_ms..to_ms`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Start of the range (inclusive), ms since the Unix epoch.
    pub from_ms: u64,
    /// End of the range (exclusive).
    pub to_ms: u64,
    /// Entries in the range.
    pub entries: u64,
    /// The first and last index of those entries in the log.
    pub first_index: Option<u64>,
    /// See `first_index`.
    pub last_index: Option<u64>,
    /// Per operation (`process`, `policy`, `consent`, …).
    pub by_op: BTreeMap<String, Tally>,
    /// Per purpose (`inference`, `compute`, `storage`, `analytics`, …).
    pub by_purpose: BTreeMap<String, Tally>,
    /// Per reason (`chat:ok`, `chat:rate_limited`, `gpc`, …).
    pub by_reason: BTreeMap<String, u64>,
    /// Per region an operation ran in, where one was recorded.
    pub by_region: BTreeMap<String, u64>,
    /// Distinct subjects (commitments) named.
    pub subjects: u64,
}

/// Summarises `(index, entry)` pairs in log order over `from_ms..to_ms`.
pub fn summarize(
    entries: impl IntoIterator<Item = (u64, Entry)>,
    from_ms: u64,
    to_ms: u64,
) -> Report {
    let mut r = Report {
        from_ms,
        to_ms,
        ..Report::default()
    };
    let mut subjects: BTreeSet<Commitment> = BTreeSet::new();
    for (i, e) in entries {
        if e.time_ms < from_ms || e.time_ms >= to_ms {
            continue;
        }
        r.entries += 1;
        r.first_index.get_or_insert(i);
        r.last_index = Some(i);
        let op = serde_json::to_value(e.op)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        r.by_op.entry(op).or_default().add(e.decision);
        if let Some(p) = &e.purpose {
            r.by_purpose
                .entry(p.to_string())
                .or_default()
                .add(e.decision);
        }
        if let Some(why) = &e.reason {
            *r.by_reason.entry(why.to_string()).or_default() += 1;
        }
        if let Some(region) = &e.region {
            *r.by_region.entry(region.to_string()).or_default() += 1;
        }
        subjects.extend(e.subject);
    }
    r.subjects = subjects.len() as u64;
    r
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::{Label, Op, Salts};

    #[test]
    fn a_report_counts_the_range_only() {
        let mut salts = Salts::default();
        let (a, _) = salts.commit("a").unwrap();
        let (b, _) = salts.commit("b").unwrap();
        let entry = |t: u64, op: Op, who, purpose: &str, d: Decision, why: &str| {
            let mut e = Entry::new(t, op);
            e.subject = Some(who);
            e.purpose = Some(Label::new(purpose).unwrap());
            e.decision = Some(d);
            e.reason = Some(Label::new(why).unwrap());
            e
        };
        let log = vec![
            entry(5, Op::Process, a, "inference", Decision::Allow, "chat:ok"),
            entry(10, Op::Process, a, "inference", Decision::Allow, "chat:ok"),
            entry(
                11,
                Op::Policy,
                b,
                "inference",
                Decision::Deny,
                "chat:rate_limited",
            ),
            entry(12, Op::Consent, b, "analytics", Decision::Deny, "gpc"),
            entry(20, Op::Process, b, "inference", Decision::Allow, "chat:ok"),
        ];
        let r = summarize(
            log.into_iter().enumerate().map(|(i, e)| (i as u64, e)),
            10,
            20,
        );
        assert_eq!(
            (r.entries, r.first_index, r.last_index, r.subjects),
            (3, Some(1), Some(3), 2)
        );
        assert_eq!(
            r.by_op["process"],
            Tally {
                allow: 1,
                deny: 0,
                none: 0
            }
        );
        assert_eq!(r.by_op["policy"].deny, 1);
        assert_eq!(
            r.by_purpose["inference"],
            Tally {
                allow: 1,
                deny: 1,
                none: 0
            }
        );
        assert_eq!(r.by_purpose["analytics"].deny, 1);
        assert_eq!(r.by_reason["gpc"], 1);
        assert!(r.by_region.is_empty());
    }
}
