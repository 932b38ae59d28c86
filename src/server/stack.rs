//! The whole security stack in one place.
//!
//! ```text
//!  request ──►┌ envelope ─ request id, security headers ─────────────────────┐
//!             │┌ catch-panic ─ a panic becomes 500 `internal` ──────────────┐│
//!             ││┌ monitoring ─ metrics, access audit ──────────────────────┐││
//!             │││┌ network ─ client address, bans, burst bans, rate limits ┐│││
//!             ││││┌ apisec ─ header/body limits, content type, IDS ───────┐││││
//!             │││││┌ timeout ─ whole request incl. body (408) ───────────┐│││││
//!             ││││││┌ authn ─ API key / JWT -> Authenticated ──────────┐││││││
//!             │││││││ per-identity rate limit (limits.per_identity)     │││││││
//!             │││││││ router ─ per route: authz (401/403), then handler │││││││
//! ```
//!
//! Layers added later run first (axum's ordering); the list above is read
//! outermost first, which is the order in [`build`].

use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
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
        .layer(from_fn(move |req, next| {
            request_timeout(timeout, req, next)
        }))
        .layer(from_fn_with_state(state.clone(), crate::apisec::layer))
        .layer(from_fn_with_state(state.clone(), crate::network::layer))
        .layer(from_fn_with_state(state.clone(), crate::monitoring::layer))
        .layer(CatchPanicLayer::custom(envelope::panic_response))
        .layer(from_fn_with_state(env, envelope::envelope))
}

async fn request_timeout(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::RequestTimeout.into_response(),
    }
}
