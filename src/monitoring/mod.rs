//! Layer 6 — monitoring: the audit log, metrics, incidents, and the
//! operator's tools (checklist, firewall rules, security monitor).
//!
//! Threat: attacks nobody sees, and evidence that can be quietly edited.
//! Guarantee: every request is counted in the metrics (route pattern, method,
//! status, latency; refusals by reason); with `audit.log_api_access` (the
//! default) every `/api/*` and gateway request, refused or served, becomes an
//! `api_access` audit event (route pattern, method, status, user id, client
//! address, request id) before its response leaves — but for the refusals
//! of a banned address, audited once a minute with the count of the others
//! ([`refusals`]: a flood from a banned address must not fill the disk).
//! The only cost on the request path is handing the event to the audit
//! queue.
//!
//! How the user id reaches this outer step: the pipeline
//! (`server::stack`) copies the caller's user id from the request's
//! `Authenticated` into the response extensions as [`AccessUser`] when the
//! router answers; requests refused before authn carry none (`user_id`
//! null). The client address is the [`crate::network::ClientAddr`] resolved
//! once, before this step, by `network::set_client_addr`.
//!
//! Not covered: events of requests the TLS/HTTP layer rejects before the
//! stack (malformed HTTP, handshake failures) — those are connection logs.

pub mod alerts;
pub mod api;
pub mod audit;
pub mod check;
pub mod firewall;
pub mod incidents;
pub mod metrics;
pub mod monitor;
pub mod refusals;

use axum::extract::{MatchedPath, Request};
use axum::response::Response;

use crate::app::AppState;
use crate::http::{ApiError, RequestId};

pub use api::routes;

/// The authenticated caller's user id, copied into the response extensions
/// for the monitoring layer.
#[derive(Debug, Clone)]
pub struct AccessUser(pub String);

/// What the monitoring step notes before the request goes on.
pub struct Watch {
    started: std::time::Instant,
    method: http::Method,
    route: Option<String>,
    /// Client address and request id, when the request is `api_access`
    /// audited.
    access: Option<(std::net::IpAddr, Option<String>)>,
}

/// The monitoring step, first half: note the start, the route and (for an
/// audited request) who asked.
pub fn watch(state: &AppState, req: &Request) -> Watch {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = req.uri().path();
    let logged = path.starts_with("/api/") || state.gateway.route_for(path).is_some();
    let access = (state.cfg.audit.log_api_access && logged).then(|| {
        let ip = crate::network::client_of(req, &state.network);
        let rid = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_string());
        (ip, rid)
    });
    Watch {
        started: std::time::Instant::now(),
        method: req.method().clone(),
        route,
        access,
    }
}

/// The monitoring step, second half: count the request, its route, outcome
/// and latency, and every refusal by reason. Returns the `api_access` event
/// to record (the caller awaits the audit queue without holding the
/// response borrowed).
pub fn finish(state: &AppState, watch: Watch, resp: &Response) -> Option<audit::AuditEvent> {
    let route = watch.route.as_deref().unwrap_or("(unmatched)");
    let status = resp.status().as_u16();
    state
        .metrics
        .observe(route, &watch.method, status, watch.started.elapsed());
    let mut banned = false;
    if let Some(e) = resp.extensions().get::<ApiError>() {
        if !matches!(status, 404 | 405) {
            state.metrics.block(e.code());
        }
        banned = e.code() == "ip_banned";
    }
    let (ip, rid) = watch.access?;
    let suppressed = if banned {
        Some(state.banned_refusals.audit(ip, std::time::Instant::now())?)
    } else {
        None
    };
    let user = resp.extensions().get::<AccessUser>().map(|u| u.0.clone());
    let mut ev = audit::AuditEvent::new("api_access")
        .ip(ip)
        .user(user)
        .field("endpoint", route)
        .field("method", watch.method.as_str())
        .field("status", status);
    if let Some(n) = suppressed.filter(|n| *n > 0) {
        ev = ev.field("suppressed", n);
    }
    ev.request_id = rid;
    Some(ev)
}
