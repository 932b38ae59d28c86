//! Layer 6 — monitoring: the audit log, metrics, incidents, and the
//! operator's tools (checklist, firewall rules, security monitor).
//!
//! Threat: attacks nobody sees, and evidence that can be quietly edited.
//! Guarantee: every request is counted in the metrics (route pattern, method,
//! status, latency; refusals by reason); with `audit.log_api_access` (the
//! default) every `/api/*` and gateway request, refused or served, becomes an
//! `api_access` audit event (route pattern, method, status, user id, client
//! address, request id) before its response leaves. The only cost on the
//! request path is handing the event to the audit queue.
//!
//! How the user id reaches this outer layer: [`expose_principal`] sits just
//! outside the router (inside authn), and copies the caller's user id from
//! the request's `Authenticated` into the response extensions as
//! [`AccessUser`]; requests refused before authn carry none (`user_id` null).
//! The client address is the [`crate::network::ClientAddr`] resolved once,
//! outside this layer, by `network::client_addr_layer`.
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

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::authn::Authenticated;
use crate::http::{ApiError, RequestId};

pub use api::routes;

/// The authenticated caller's user id, copied into the response extensions
/// for the monitoring layer.
#[derive(Debug, Clone)]
pub struct AccessUser(pub String);

/// The monitoring layer: counts every request, its route, outcome and
/// latency, and every refusal by reason; records `api_access` events.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let path = req.uri().path();
    let logged = path.starts_with("/api/") || state.gateway.route_for(path).is_some();
    let access = (state.cfg.audit.log_api_access && logged).then(|| {
        let ip = crate::network::client_of(&req, &state.network.trusted);
        let rid = req
            .extensions()
            .get::<RequestId>()
            .map(|r| r.as_str().to_string());
        (ip, rid)
    });
    let resp = next.run(req).await;
    let route = route.as_deref().unwrap_or("(unmatched)");
    let status = resp.status().as_u16();
    state
        .metrics
        .observe(route, method.as_str(), status, started.elapsed());
    if let Some(e) = resp.extensions().get::<ApiError>() {
        if !matches!(status, 404 | 405) {
            state.metrics.block(e.code());
        }
    }
    if let Some((ip, rid)) = access {
        let user = resp.extensions().get::<AccessUser>().map(|u| u.0.clone());
        let mut ev = audit::AuditEvent::new("api_access")
            .ip(ip)
            .user(user)
            .field("endpoint", route)
            .field("method", method.as_str())
            .field("status", status);
        ev.request_id = rid;
        state.audit.record(ev).await;
    }
    resp
}

/// Copies the caller's user id into the response (see the module docs).
pub async fn expose_principal(req: Request, next: Next) -> Response {
    let user = req
        .extensions()
        .get::<Authenticated>()
        .map(|a| a.user_id.clone());
    let mut resp = next.run(req).await;
    if let Some(u) = user {
        resp.extensions_mut().insert(AccessUser(u));
    }
    resp
}
