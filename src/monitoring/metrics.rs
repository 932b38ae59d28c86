//! Prometheus metrics (prometheus-client): one registry, handles that every
//! layer updates, rendered in the text exposition format at `/metrics`.
//!
//! Threat: a client growing the registry without bound through label values
//! it chooses. Guarantee: every label value comes from a fixed set — route
//! patterns (or `(unmatched)`), the standard methods (or `OTHER`), status
//! codes, refusal reasons.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The route pattern (`/api/tasks/{id}`), never the raw path.
    pub route: String,
    /// One of the standard methods, else `OTHER` ([`method_label`]).
    pub method: &'static str,
    pub status: u16,
}

/// The method as a label: the nine standard methods by name, anything else
/// `OTHER`. HTTP lets a client invent any method token (hyper accepts them
/// and the router answers 405), and a label per invented token would grow
/// the registry, and `/metrics`, by one series per request.
pub fn method_label(m: &http::Method) -> &'static str {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
    ];
    KNOWN
        .into_iter()
        .find(|k| *k == m.as_str())
        .unwrap_or("OTHER")
}

/// Why a request was refused by a security layer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// `rate_limited`, `ip_banned`, `ddos`, `ids:<family>`, `unauthenticated`, ...
    pub reason: String,
}

/// The registry and the handles every layer updates.
pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Histogram,
    pub blocked: Family<ReasonLabel, Counter>,
    pub active_bans: Gauge,
    pub login_failures: Counter,
    pub audit_queue_depth: Gauge,
    /// Times a request waited because the audit queue was full.
    pub audit_backpressure: Counter,
    /// The alert channel's counters (`monitoring::alerts`).
    pub alerts: crate::monitoring::alerts::AlertCounters,
    pub ws_connections: Gauge,
    /// Bytes held in buffered request bodies (`apisec::budget`).
    pub body_budget_used: Gauge,
    /// Requests refused because the body budget was spent.
    pub body_budget_refused: Counter,
    /// Incidents recorded as part of an aggregated incident (a flood).
    pub incidents_aggregated: Counter,
    /// Active bans evicted by newer ones past `limits.max_bans`.
    pub bans_evicted: Gauge,
    /// 1 when Redis (if configured) is reachable.
    pub redis_up: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("frenly");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let latency = Histogram::new(exponential_buckets(0.00005, 2.0, 20));
        registry.register(
            "http_request_duration_seconds",
            "request latency",
            latency.clone(),
        );
        let blocked = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "requests_blocked",
            "requests refused by a security layer, by reason",
            blocked.clone(),
        );
        let active_bans = Gauge::default();
        registry.register("active_bans", "addresses banned now", active_bans.clone());
        let login_failures = Counter::default();
        registry.register("login_failures", "failed logins", login_failures.clone());
        let audit_queue_depth = Gauge::default();
        registry.register(
            "audit_queue_depth",
            "audit events waiting for the writer",
            audit_queue_depth.clone(),
        );
        let audit_backpressure = Counter::default();
        registry.register(
            "audit_backpressure",
            "times a request waited for room in the audit queue",
            audit_backpressure.clone(),
        );
        let ws_connections = Gauge::default();
        registry.register(
            "websocket_connections",
            "open WebSocket connections",
            ws_connections.clone(),
        );
        let body_budget_used = Gauge::default();
        registry.register(
            "body_budget_used_bytes",
            "bytes held in buffered request bodies (limits.body_budget_bytes)",
            body_budget_used.clone(),
        );
        let body_budget_refused = Counter::default();
        registry.register(
            "body_budget_refused",
            "requests answered 503 because the request body budget was spent",
            body_budget_refused.clone(),
        );
        let incidents_aggregated = Counter::default();
        registry.register(
            "incidents_aggregated",
            "incidents recorded inside an aggregated incident (count and sample of addresses)",
            incidents_aggregated.clone(),
        );
        let bans_evicted = Gauge::default();
        registry.register(
            "bans_evicted",
            "active bans evicted by newer bans past limits.max_bans, since the start",
            bans_evicted.clone(),
        );
        let redis_up = Gauge::default();
        registry.register("redis_up", "1 when Redis is reachable", redis_up.clone());
        let alerts = crate::monitoring::alerts::AlertCounters::default();
        for (name, help, c) in [
            (
                "alerts_delivered",
                "alerts the webhook accepted",
                &alerts.delivered,
            ),
            (
                "alerts_failed",
                "alerts not delivered after five tries",
                &alerts.failed,
            ),
            (
                "alerts_dropped",
                "alerts not queued: the queue was full",
                &alerts.dropped,
            ),
            (
                "alerts_suppressed",
                "alerts over the per-kind budget, reported in a summary alert",
                &alerts.suppressed,
            ),
        ] {
            registry.register(name, help, c.clone());
        }
        Metrics {
            registry,
            requests,
            latency,
            blocked,
            active_bans,
            login_failures,
            audit_queue_depth,
            audit_backpressure,
            ws_connections,
            body_budget_used,
            body_budget_refused,
            incidents_aggregated,
            bans_evicted,
            redis_up,
            alerts,
        }
    }

    /// Count a served request.
    pub fn observe(&self, route: &str, method: &http::Method, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_string(),
                method: method_label(method),
                status,
            })
            .inc();
        self.latency.observe(elapsed.as_secs_f64());
    }

    /// Count a refusal.
    pub fn block(&self, reason: &str) {
        self.blocked
            .get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
