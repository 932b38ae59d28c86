//! `/healthz` (liveness) and `/readyz` (readiness: the database answers).

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

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    if !state.db.ping().await {
        return Err(ApiError::Unavailable);
    }
    Ok(Json(
        json!({"status": "ready", "checks": {"database": "ok"}}),
    ))
}
