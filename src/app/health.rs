//! `/healthz` (liveness) and `/readyz` (readiness: the database answers, and
//! Redis when configured, each within 2 s).
//!
//! Readiness is what the contract says: "database and Redis reachable".
//! With a configured Redis out of reach, `/readyz` is 503 `unavailable`
//! under either policy: under `fail_open` the instance still serves, on its
//! own local state (bans, limits and revocations not shared), but a load
//! balancer should prefer the instances that share them. (It answered 200
//! `degraded`, which load balancers read as ready.) `/healthz` stays 200.

use axum::extract::State;
use http::Method;
use serde_json::json;

use super::AppState;
use crate::authz::{Access, RouteDoc, Routes};
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

/// How long `/readyz` waits for the database, and for Redis, before it
/// answers 503: it waited the pool's whole acquire timeout (10 s) while
/// PostgreSQL was down, so a probe with a short timeout saw no answer at
/// all.
const READY_PING: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let (db, redis) = tokio::join!(
        state.db.ping(READY_PING),
        state.shared.redis_reachable(READY_PING)
    );
    if !db || redis == Some(false) {
        return Err(ApiError::Unavailable);
    }
    let mut checks = serde_json::Map::new();
    checks.insert("database".into(), "ok".into());
    if redis.is_some() {
        checks.insert("redis".into(), "ok".into());
    }
    Ok(Json(json!({"status": "ready", "checks": checks})))
}
