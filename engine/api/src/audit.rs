//! What the API tells an audit log: one event per decision about a request that would
//! process someone's data (a completion), and per refusal. Never the request's content,
//! never a key: the client is named by its key's digest or its address, which the log
//! commits to with a salt before writing anything.

use std::sync::Arc;

/// One decision about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who asked: `api-key:<SHA-256 of the key, hex>` or `addr:<IP address>`.
    pub client: String,
    /// The route: `chat`, `completions`, `models` or `other`.
    pub route: &'static str,
    /// Allowed (and so processed) or refused.
    pub allowed: bool,
    /// Why: `ok`, `bad_key` or `rate_limited`.
    pub reason: &'static str,
}

/// Receives the API's decisions (the node's audit log). It must not block: the node's
/// hook hands events to a writer thread.
#[derive(Clone)]
pub struct AuditHook(pub Arc<dyn Fn(AuditEvent) + Send + Sync>);

impl std::fmt::Debug for AuditHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditHook")
    }
}

impl AuditHook {
    pub(crate) fn record(&self, event: AuditEvent) {
        (self.0)(event);
    }
}

/// A finished request, for the node's environmental accounting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobReport {
    /// `chat` or `completions`.
    pub route: &'static str,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// From arrival to the end.
    pub wall: std::time::Duration,
    /// Compute time the node spent on it (its share of the batched steps; through the
    /// swarm, its embedding and head).
    pub busy: std::time::Duration,
    /// Through the swarm: what the route's servers reported for their part.
    pub hops: Option<kwaainet_footprint::Footprint>,
}

/// Accounts each finished request (the node's footprint) and returns what to attach to the
/// response's `usage` as `footprint` (its energy and carbon), if anything. Must not block.
#[derive(Clone)]
pub struct JobHook(pub Arc<JobFn>);

/// What a [`JobHook`] calls.
pub type JobFn = dyn Fn(&JobReport) -> Option<serde_json::Value> + Send + Sync;

impl std::fmt::Debug for JobHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobHook")
    }
}
