//! The whole security stack in one place.
//!
//! ```text
//!  request ──►┌ envelope ─ request id, security headers ─────────────────────┐
//!             │┌ catch-panic ─ a panic becomes 500 `internal` ──────────────┐│
//!             ││  client address ─ resolved once (network::client_addr_layer)
//!             ││┌ monitoring ─ metrics, access audit ──────────────────────┐││
//!             │││┌ network ─ client address, bans, burst bans, rate limits ┐│││
//!             ││││┌ apisec ─ header/body limits, content type, IDS ───────┐││││
//!             │││││┌ timeout ─ whole request incl. body (408) ───────────┐│││││
//!             ││││││┌ authn ─ API key / JWT -> Authenticated ──────────┐││││││
//!             │││││││ per-identity rate limit (limits.per_identity)     │││││││
//!             │││││││ router ─ per route: authz (401/403), then handler │││││││
//!             │││││││  (gateway routes: route rate limit, then forward)  │││││││
//! ```
//!
//! Gateway routes skip the whole-request timeout: their route's
//! `timeout_seconds` bounds them (504), see `gateway`.
//!
//! Layers added later run first (axum's ordering); the list above is read
//! outermost first, which is the order in [`build`].

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{from_fn, from_fn_with_state, Next};
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
    let timeout = Duration::from_secs(state.cfg.network.request_timeout_seconds.max(1));
    let body_max = state.cfg.limits.body_max_bytes;
    let env = Envelope {
        tls: state.cfg.network.tls,
    };
    router
        .layer(from_fn(crate::monitoring::expose_principal))
        .layer(DefaultBodyLimit::max(body_max))
        .layer(from_fn_with_state(
            state.clone(),
            crate::network::identity_layer,
        ))
        .layer(from_fn_with_state(state.clone(), crate::authn::layer))
        .layer(from_fn_with_state(state.clone(), move |s, req, next| {
            request_timeout(timeout, s, req, next)
        }))
        .layer(from_fn_with_state(state.clone(), crate::apisec::layer))
        .layer(from_fn_with_state(state.clone(), crate::network::layer))
        .layer(from_fn_with_state(state.clone(), crate::monitoring::layer))
        .layer(from_fn_with_state(
            state.clone(),
            crate::network::client_addr_layer,
        ))
        .layer(CatchPanicLayer::custom(envelope::panic_response))
        .layer(from_fn_with_state(env, envelope::envelope))
}

/// `network.request_timeout_seconds` over the whole request (408). Gateway
/// requests are bounded by their route's `timeout_seconds` instead (time to
/// the upstream's response headers, then idle time while streaming), in
/// `gateway`: a model server may think for longer than Frenly's own routes.
async fn request_timeout(
    limit: Duration,
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.gateway.route_for(req.uri().path()).is_some() {
        return next.run(req).await;
    }
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}
