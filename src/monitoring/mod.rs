//! Layer 6 — monitoring: the audit log, metrics, incidents, and the
//! operator's tools (checklist, firewall rules, security monitor).

pub mod alerts;
pub mod audit;
pub mod incidents;
pub mod metrics;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::http::ApiError;

/// The monitoring layer: counts every request, its route, outcome and
/// latency, and every refusal by reason.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
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
    resp
}
