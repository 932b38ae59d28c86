//! `/healthz` (liveness) and `/readyz` (readiness: the database answers, and
//! Redis when configured).
//!
//! With Redis down, `/readyz` answers 200 `{"status": "degraded", "checks":
//! {"redis": "down"}}` under `fail_open` (the instance serves, on local
//! state) and 503 `unavailable` under `fail_closed` (it refuses `/api/*`, so
//! a load balancer should route around it).

use axum::extract::State;
use http::Method;
use serde_json::json;

use super::AppState;
use crate::authz::{Access, RouteDoc, Routes};
use crate::config::FailurePolicy;
use crate::http::{ApiError, Json};

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(Method::GET, "/healthz", Access::Public, "liveness", healthz)
        .doc(RouteDoc::new().ok(200, "alive", |_| {
            json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})
        }))
        .route(Method::GET, "/readyz", Access::Public, "readiness", readyz)
        .doc(
            RouteDoc::new()
                .ok(200, "ready", |_| {
                    json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ready"}}})
                })
                .error(503, "unavailable: the database (or Redis) does not answer"),
        )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// How long `/readyz` waits for the database before it answers 503: it
/// waited the pool's whole acquire timeout (10 s) while PostgreSQL was
/// down, so a probe with a short timeout saw no answer at all.
const READY_PING: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.db.ping(READY_PING).await {
        return Err(ApiError::Unavailable);
    }
    let mut checks = serde_json::Map::new();
    checks.insert("database".into(), "ok".into());
    let mut status = "ready";
    if let Some(up) = state.shared.redis_up() {
        checks.insert("redis".into(), if up { "ok" } else { "down" }.into());
        if !up {
            if state.cfg.state.redis_failure_policy == FailurePolicy::FailClosed {
                return Err(ApiError::Unavailable);
            }
            status = "degraded";
        }
    }
    Ok(Json(json!({"status": status, "checks": checks})))
}
