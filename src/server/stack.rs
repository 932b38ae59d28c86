//! The whole security stack in one place.
//!
//! ```text
//!  request ──►┌ envelope ─ request id, security headers ─────────────────────┐
//!             │┌ catch-panic ─ a panic becomes 500 `internal` ──────────────┐│
//!             ││┌ pipeline (one middleware, steps in this order) ──────────┐││
//!             │││  client address ─ resolved once (network::set_client_addr)│││
//!             │││┌ monitoring ─ metrics, access audit ────────────────────┐│││
//!             ││││┌ network ─ bans, burst bans, rate limits ─────────────┐││││
//!             │││││┌ apisec ─ header/body limits, content type, IDS ────┐│││││
//!             ││││││┌ timeout ─ whole request incl. body (408) ────────┐││││││
//!             │││││││  authn ─ API key / JWT -> Authenticated          │││││││
//!             │││││││  per-identity rate limit (limits.per_identity)   │││││││
//!             │││││││  router ─ per route: authz (401/403), handler    │││││││
//!             │││││││  (gateway routes: route rate limit, then forward)│││││││
//! ```
//!
//! Gateway routes skip the whole-request timeout: their route's
//! `timeout_seconds` bounds them (504), see `gateway`.
//!
//! Layers added later run first (axum's ordering); the list above is read
//! outermost first, which is the order in [`build`].

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;

use crate::app::AppState;
use crate::http::envelope::{self, Envelope};
use crate::http::ApiError;

/// The application router wrapped in every security layer.
pub fn build(state: AppState) -> Router {
    wrap(crate::app::router(state.clone()), state)
}

/// Wrap any router (tests use this for routes that must never exist in
/// production, such as one that panics) in the security stack.
pub fn wrap(router: Router, state: AppState) -> Router {
    let body_max = state.cfg.limits.body_max_bytes;
    let env = Envelope {
        tls: state.cfg.network.tls,
    };
    router
        .layer(from_fn_with_state(state, pipeline))
        .layer(DefaultBodyLimit::max(body_max))
        .layer(CatchPanicLayer::custom(envelope::panic_response))
        .layer(from_fn_with_state(env, envelope::envelope))
}

/// Every security layer between the envelope and the handler, in order, as
/// one middleware: each layer is a step (`admit` before, `finish` after) of
/// its own module, and this function is the only place that orders them.
/// (One middleware instead of one per layer: every axum middleware clones
/// and boxes the stack beneath it per request, which cost a quarter of a
/// small request's CPU.)
async fn pipeline(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    crate::network::set_client_addr(&state, &mut req);
    let watch = crate::monitoring::watch(&state, &req);
    let started = tokio::time::Instant::now();
    let (req, unread) = super::drain::share(req);
    // only a request with a body needs its route's limit
    let unread = unread.map(|u| (u, crate::apisec::body_limit(&state, req.uri().path())));
    let resp = guarded(&state, req, next).await;
    if let Some((unread, body_max)) = unread {
        // the client may still be sending: let it finish so it reads this,
        // within what is left of the request's time
        let whole = Duration::from_secs(state.cfg.network.request_timeout_seconds.max(1));
        unread
            .drain(super::drain::max_bytes(body_max), started + whole)
            .await;
    }
    if let Some(ev) = crate::monitoring::finish(&state, watch, &resp) {
        state.audit.record(ev).await;
    }
    resp
}

/// Network, then API security, then (under the request timeout) the rest.
async fn guarded(state: &AppState, mut req: Request, next: Next) -> Response {
    let admitted = match crate::network::admit(state, &mut req).await {
        Ok(a) => a,
        Err(refusal) => return refusal,
    };
    let mut resp = match crate::apisec::admit(state, req).await {
        Ok(req) => within_timeout(state, req, next).await,
        Err(refusal) => refusal,
    };
    crate::network::finish(state, admitted, &mut resp).await;
    resp
}

/// `network.request_timeout_seconds` over the whole request (408). Gateway
/// requests are bounded by their route's `timeout_seconds` instead (time to
/// the upstream's response headers, then idle time while streaming), in
/// `gateway`: a model server may think for longer than Frenly's own routes.
async fn within_timeout(state: &AppState, req: Request, next: Next) -> Response {
    if state.gateway.route_for(req.uri().path()).is_some() {
        return authenticated(state, req, next).await;
    }
    let limit = Duration::from_secs(state.cfg.network.request_timeout_seconds.max(1));
    match tokio::time::timeout(limit, authenticated(state, req, next)).await {
        Ok(r) => r,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}

/// Authentication, the per-identity limit, then the router (authorization
/// per route, then the handler); the caller's user id goes back on the
/// response for the monitoring step.
async fn authenticated(state: &AppState, mut req: Request, next: Next) -> Response {
    if let Err(refusal) = crate::authn::admit(state, &mut req).await {
        return refusal;
    }
    let identity = match crate::network::identity_admit(state, &mut req).await {
        Ok(i) => i,
        Err(refusal) => return refusal,
    };
    let user = req
        .extensions()
        .get::<crate::authn::Authenticated>()
        .map(|a| a.user_id.clone());
    let mut resp = next.run(req).await;
    crate::network::identity_finish(identity, &mut resp);
    if let Some(u) = user {
        resp.extensions_mut()
            .insert(crate::monitoring::AccessUser(u));
    }
    resp
}
