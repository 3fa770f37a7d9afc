//! The API's Prometheus metrics (`kwaainet_api_*`), served in the node's `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of a finished request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `chat`, `completions` or `models`.
    pub route: &'static str,
    /// HTTP status.
    pub status: u16,
}

/// Counters, gauges and histograms of the API.
#[derive(Debug)]
pub struct Metrics {
    /// Requests by route and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Seconds from arrival to the first token.
    pub ttft: Histogram,
    /// Seconds between consecutive tokens of a request.
    pub itl: Histogram,
    /// Seconds a request waited for a slot.
    pub queue_wait: Histogram,
    /// Seconds from arrival to the last byte.
    pub duration: Histogram,
    /// Prompt tokens processed.
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub completion_tokens: Counter,
    /// Requests waiting for a slot.
    pub queue_depth: Gauge,
    /// Requests generating now.
    pub active: Gauge,
    /// Requests dropped because their client went away.
    pub cancelled: Counter,
}

fn seconds(lo: f64, n: u16) -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        lo, 2.0, n,
    ))
}

impl Metrics {
    /// The metrics, registered under `kwaainet_api_` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            ttft: seconds(0.005, 14),
            itl: seconds(0.001, 14),
            queue_wait: seconds(0.001, 16),
            duration: seconds(0.01, 14),
            prompt_tokens: Counter::default(),
            completion_tokens: Counter::default(),
            queue_depth: Gauge::default(),
            active: Gauge::default(),
            cancelled: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("kwaainet_api");
        r.register(
            "requests",
            "API requests by route and status",
            m.requests.clone(),
        );
        r.register(
            "time_to_first_token_seconds",
            "Seconds from a request's arrival to its first token",
            m.ttft.clone(),
        );
        r.register(
            "inter_token_latency_seconds",
            "Seconds between consecutive tokens of a request",
            m.itl.clone(),
        );
        r.register(
            "queue_wait_seconds",
            "Seconds a request waited for a slot",
            m.queue_wait.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Seconds from a request's arrival to its last byte",
            m.duration.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens processed",
            m.prompt_tokens.clone(),
        );
        r.register(
            "completion_tokens",
            "Tokens generated",
            m.completion_tokens.clone(),
        );
        r.register(
            "queue_depth",
            "Requests waiting for a slot",
            m.queue_depth.clone(),
        );
        r.register("active_slots", "Requests generating now", m.active.clone());
        r.register(
            "cancelled",
            "Requests dropped because their client went away",
            m.cancelled.clone(),
        );
        m
    }
}
