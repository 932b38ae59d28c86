//! `/healthz` (liveness) and `/readyz` (readiness: the database answers).

use axum::extract::State;
use http::Method;
use serde_json::json;

use super::AppState;
use crate::authz::{Access, Routes};
use crate::http::{ApiError, Json};

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(Method::GET, "/healthz", Access::Public, "liveness", healthz)
        .route(Method::GET, "/readyz", Access::Public, "readiness", readyz)
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
