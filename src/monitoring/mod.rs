//! Layer 6 — monitoring: the audit log, metrics, incidents, and the
//! operator's tools (checklist, firewall rules, security monitor).

pub mod audit;
pub mod metrics;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;

/// The monitoring layer: counts every request and its outcome.
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe(resp.status().as_u16(), started.elapsed());
    resp
}
