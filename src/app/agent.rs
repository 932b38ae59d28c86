//! Agent workers: settings and queue figures, claiming, and results.
//!
//! Threat: two workers running the same task, a worker (or anyone else)
//! writing the result of a task it does not hold. Guarantee: a claim hands
//! the oldest highest-priority queued task to exactly one worker (one
//! conditional UPDATE, see `store::tasks::claim`); `POST
//! /api/tasks/{id}/result` is accepted only from the worker that claimed the
//! task (its user id is the task's `agent_id`) while the task is running:
//! a caller that cannot see the task gets 404, one that can see it but does
//! not hold it (admin, owner, another worker) or a task that is not running
//! gets 409. The worker identity is the caller's user id: processes sharing
//! one agent user act as one worker. A claim whose user was deleted while
//! it was in flight claims nothing and is 401 `unauthenticated` (its
//! credential is revoked); see `store::tasks` for why it cannot slip past
//! the deletion.
//!
//! Settings (`agent_settings` table): `paused` (bool: claims answer 204) and
//! `max_running` (1..=100000: claims answer 204 while that many tasks run;
//! exact on SQLite, a soft cap under PostgreSQL's READ COMMITTED).

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::Value;

use super::events::EventKind;
use super::tasks::{load_visible, publish, TaskView};
use super::AppState;
use crate::apisec::validation::{Kind, Rule, Schema};
use crate::authn::Authenticated;
use crate::authz::{Access, Permission, RouteDoc, Routes};
use crate::http::{ApiError, Json, NoBody, Path, RequestId, UniqueValue};
use crate::network::ClientAddr;
use crate::store::tasks as store;

pub const MAX_RUNNING_DEFAULT: i64 = 1000;
pub const MAX_RUNNING_LIMIT: i64 = 100_000;

pub fn routes() -> Routes<AppState> {
    use Permission::*;
    Routes::new()
        .route(
            Method::GET,
            "/api/agent",
            Access::Permission(ReadAgent),
            "agent status, settings and queue figures",
            status,
        )
        .doc(RouteDoc::new().ok(200, "the agent's status", |_| status_schema()))
        .route(
            Method::PATCH,
            "/api/agent",
            Access::Permission(WriteAgent),
            "change agent settings",
            update,
        )
        .doc(
            RouteDoc::new()
                .body(|_| settings_schema().json_schema())
                .ok(200, "the agent's status after the change", |_| {
                    status_schema()
                }),
        )
        .route(
            Method::POST,
            "/api/agent/claim",
            Access::Permission(WriteAgent),
            "claim the next queued task",
            claim,
        )
        .doc(
            RouteDoc::new()
                .ok(
                    200,
                    "the claimed task (status running, agent_id set)",
                    |_| super::tasks::task_schema(),
                )
                .empty(204, "nothing queued, or the agent is paused"),
        )
        .route(
            Method::POST,
            "/api/tasks/{id}/result",
            Access::Permission(WriteAgent),
            "store a claimed task's result",
            result,
        )
        .doc(
            RouteDoc::new()
                .body(|c| super::tasks::TaskRules::new(c).result.json_schema())
                .ok(200, "the finished task", |_| super::tasks::task_schema())
                .error(
                    409,
                    "conflict: the task is not running or held by another worker",
                ),
        )
}

/// The agent settings.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub paused: bool,
    pub max_running: i64,
}

fn settings_schema() -> Schema {
    Schema::new(vec![
        Rule::new("paused", Kind::Bool),
        Rule::new(
            "max_running",
            Kind::Integer {
                min: 1,
                max: MAX_RUNNING_LIMIT,
            },
        ),
    ])
}

/// The JSON Schema of the agent's status.
fn status_schema() -> serde_json::Value {
    let queue: serde_json::Map<String, serde_json::Value> = super::tasks::STATUSES
        .iter()
        .map(|s| {
            (
                s.to_string(),
                serde_json::json!({"type": "integer", "minimum": 0}),
            )
        })
        .collect();
    serde_json::json!({
        "type": "object",
        "required": ["status", "settings", "queue", "workers"],
        "properties": {
            "status": {"type": "string", "enum": ["paused", "working", "idle"]},
            "settings": {
                "type": "object",
                "required": ["paused", "max_running"],
                "properties": {
                    "paused": {"type": "boolean"},
                    "max_running": {"type": "integer", "minimum": 1, "maximum": MAX_RUNNING_LIMIT},
                }
            },
            "queue": {"type": "object", "properties": queue},
            "workers": {"type": "integer", "minimum": 0},
        }
    })
}

pub async fn load_settings(state: &AppState) -> Result<Settings, ApiError> {
    let m = store::settings(&state.db).await?;
    Ok(Settings {
        paused: m.get("paused").is_some_and(|v| v == "true"),
        max_running: m
            .get("max_running")
            .and_then(|v| v.parse().ok())
            .filter(|n| (1..=MAX_RUNNING_LIMIT).contains(n))
            .unwrap_or(MAX_RUNNING_DEFAULT),
    })
}

#[derive(Debug, Serialize)]
struct Status {
    status: &'static str,
    settings: Settings,
    queue: std::collections::BTreeMap<&'static str, i64>,
    workers: i64,
}

async fn figures(state: &AppState) -> Result<Status, ApiError> {
    let settings = load_settings(state).await?;
    let counts = store::counts(&state.db).await?;
    let queue = super::tasks::STATUSES
        .iter()
        .map(|s| (*s, counts.get(*s).copied().unwrap_or(0)))
        .collect::<std::collections::BTreeMap<_, _>>();
    let workers = store::active_workers(&state.db).await?;
    let status = if settings.paused {
        "paused"
    } else if queue.get("running").copied().unwrap_or(0) > 0 {
        "working"
    } else {
        "idle"
    };
    Ok(Status {
        status,
        settings,
        queue,
        workers,
    })
}

async fn status(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(figures(&state).await?))
}

async fn update(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Json(UniqueValue(body)): Json<UniqueValue>,
) -> Result<impl IntoResponse, ApiError> {
    let obj = settings_schema().validate(&body)?;
    if let Some(p) = obj.get("paused").and_then(Value::as_bool) {
        store::set_setting(&state.db, "paused", if p { "true" } else { "false" }).await?;
    }
    if let Some(n) = obj.get("max_running").and_then(Value::as_i64) {
        store::set_setting(&state.db, "max_running", &n.to_string()).await?;
    }
    let f = figures(&state).await?;
    state
        .audit
        .record(
            super::auth::event("agent_settings_changed", &rid, &addr, &who)
                .field("paused", f.settings.paused)
                .field("max_running", f.settings.max_running),
        )
        .await;
    Ok(Json(f))
}

async fn claim(
    State(state): State<AppState>,
    who: Authenticated,
    _: NoBody,
) -> Result<Response, ApiError> {
    let s = load_settings(&state).await?;
    if s.paused {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    match store::claim(&state.db, &who.user_id, s.max_running).await? {
        store::Claim::Task(row) => {
            let view = TaskView::from_row(&state, *row)?;
            publish(&state, EventKind::TaskClaimed, &view);
            Ok(Json(view).into_response())
        }
        store::Claim::Nothing => Ok(StatusCode::NO_CONTENT.into_response()),
        // the worker's user was deleted after this request was
        // authenticated: its credential is revoked, nothing was claimed
        store::Claim::NoWorker => Err(ApiError::Unauthenticated),
    }
}

async fn result(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
    Json(UniqueValue(body)): Json<UniqueValue>,
) -> Result<Json<TaskView>, ApiError> {
    let rules = &state.task_rules.result;
    let obj = rules.validate(&body)?;
    let t = load_visible(&state, &who, &id).await?;
    if t.status != "running" {
        return Err(ApiError::Conflict(format!(
            "the task is {}, not running",
            t.status
        )));
    }
    if t.agent_id.as_deref() != Some(who.user_id.as_str()) {
        return Err(ApiError::Conflict(
            "the task is held by another worker".into(),
        ));
    }
    let status = obj.get("status").and_then(Value::as_str).unwrap_or("done");
    let result = obj.get("result").cloned().unwrap_or(Value::Null);
    let bytes =
        serde_json::to_vec(&result).map_err(crate::http::respond::internal("serialising JSON"))?;
    let enc = state.keyring.encrypt(&bytes);
    let row = store::finish(
        &state.db,
        &id,
        &who.user_id,
        status,
        Some(&enc),
        crate::store::now_ms(),
    )
    .await?
    .ok_or_else(|| {
        ApiError::Conflict("the task changed meanwhile (cancelled or finished)".into())
    })?;
    let view = TaskView::from_row(&state, row)?;
    publish(&state, EventKind::TaskFinished, &view);
    Ok(Json(view))
}
