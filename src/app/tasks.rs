//! The task API: create, list, get, patch, delete, and the task object.
//!
//! Threat: one tenant reading or changing another's tasks, illegal state
//! moves, and task contents readable from the database files. Guarantee:
//! a task is visible to its owner, to the worker that claimed it and to
//! admins; anyone else gets 404 (no existence oracle); only the owner or an
//! admin may change or delete it. Status moves only along
//! queued -> running (claim) -> done/failed (result), queued/running ->
//! cancelled (PATCH), or running -> queued (PATCH: a claim whose worker is
//! gone, put back; the worker's result is refused from then on); anything
//! else is 409. `description`, `input` and
//! `result` are encrypted with the keyring's primary key before they reach
//! the store; `title` is stored in clear (it is searched).

use axum::extract::{RawQuery, State};
use axum::response::IntoResponse;
use base64::Engine;
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::events::{Event, EventKind};
use super::openapi;
use super::AppState;
use crate::apisec::validation::{Kind, Rule, Schema};
use crate::authn::Authenticated;
use crate::authz::{Access, Permission, RouteDoc, Routes};
use crate::config::Config;
use crate::http::{ApiError, FieldErrors, Json, NoBody, Path, UniqueValue};
use crate::store::tasks::{self as store, ListFilter, TaskRow};

pub const PRIORITIES: &[&str] = &["low", "normal", "high"];
pub const STATUSES: &[&str] = &["queued", "running", "done", "failed", "cancelled"];
pub const TITLE_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 100_000;
pub const LIST_DEFAULT: i64 = 50;
pub const LIST_MAX: i64 = 200;

pub fn routes() -> Routes<AppState> {
    use Permission::*;
    Routes::new()
        .route(
            Method::POST,
            "/api/tasks",
            Access::Permission(WriteTasks),
            "create a task",
            create,
        )
        .doc(
            RouteDoc::new()
                .body(|c| TaskRules::new(c).create.json_schema())
                .ok(201, "the created task", |_| task_schema()),
        )
        .route(
            Method::GET,
            "/api/tasks",
            Access::Permission(ReadTasks),
            "list tasks",
            list,
        )
        .doc(
            RouteDoc::new()
                .query(
                    "status",
                    |_| json!({"type": "string", "enum": STATUSES}),
                    "only tasks in this status",
                )
                .query(
                    "q",
                    |_| json!({"type": "string", "maxLength": TITLE_MAX}),
                    "text the title contains",
                )
                .query(
                    "limit",
                    |_| openapi::limit(LIST_MAX),
                    "page size (default 50)",
                )
                .query(
                    "cursor",
                    openapi::cursor,
                    "next_cursor of the previous page",
                )
                .ok(200, "a page of tasks", |_| openapi::list_of(task_schema())),
        )
        .route(
            Method::GET,
            "/api/tasks/{id}",
            Access::Permission(ReadTasks),
            "get a task",
            get,
        )
        .doc(RouteDoc::new().ok(200, "the task", |_| task_schema()))
        .route(
            Method::PATCH,
            "/api/tasks/{id}",
            Access::Permission(WriteTasks),
            "change or cancel a task",
            patch,
        )
        .doc(
            RouteDoc::new()
                .body(|c| TaskRules::new(c).patch.json_schema())
                .ok(200, "the changed task", |_| task_schema())
                .error(409, "conflict: an illegal status move"),
        )
        .route(
            Method::DELETE,
            "/api/tasks/{id}",
            Access::Permission(DeleteTasks),
            "delete a task",
            delete,
        )
        .doc(RouteDoc::new().empty(204, "deleted"))
}

/// The input rules of the task routes (defaults from the contract, tightened
/// by `validation.tasks` in the config).
#[derive(Debug, Clone)]
pub struct TaskRules {
    pub create: Schema,
    pub patch: Schema,
    pub result: Schema,
}

impl TaskRules {
    pub fn new(cfg: &Config) -> TaskRules {
        let extra = &cfg.validation.tasks;
        let fields = |create: bool| {
            let mut title = Rule::new("title", Kind::String)
                .length(Some(1), Some(TITLE_MAX))
                .no_control();
            let mut priority = Rule::new("priority", Kind::OneOf(PRIORITIES));
            if create {
                title = title.required();
            } else {
                // a PATCH's `null` means "clear": only the description can
                // be cleared; title, priority and status always hold a value
                title = title.not_null();
                priority = priority.not_null();
            }
            let mut rules = vec![
                title,
                Rule::new("description", Kind::String).length(None, Some(DESCRIPTION_MAX)),
                priority,
            ];
            rules.push(if create {
                Rule::new("input", Kind::Object)
            } else {
                Rule::new("status", Kind::OneOf(STATUSES)).not_null()
            });
            rules
                .into_iter()
                .map(|r| match extra.get(&r.field) {
                    Some(c) => r.with_config(c, create),
                    None => r,
                })
                .collect()
        };
        for name in extra.keys() {
            if !["title", "description", "priority", "input"].contains(&name.as_str()) {
                tracing::warn!(field = %name, "validation.tasks names an unknown task field; ignored");
            }
        }
        TaskRules {
            create: Schema::new(fields(true)),
            patch: Schema::new(fields(false)),
            result: Schema::new(vec![
                Rule::new("status", Kind::OneOf(&["done", "failed"])).required(),
                Rule::new("result", Kind::Any),
            ]),
        }
    }
}

/// The task object of the contract.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    pub title: String,
    pub description: Option<String>,
    pub priority: &'static str,
    pub status: String,
    /// Stored JSON, passed through as decrypted (never parsed into a tree
    /// and serialised again).
    pub input: Box<RawValue>,
    pub result: Box<RawValue>,
    pub owner_id: String,
    pub agent_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

/// The JSON Schema of [`TaskView`].
pub fn task_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "title", "description", "priority", "status", "input", "result",
                     "owner_id", "agent_id", "created_at", "updated_at"],
        "properties": {
            "id": {"type": "string"},
            "title": {"type": "string"},
            "description": {"type": ["string", "null"]},
            "priority": {"type": "string", "enum": PRIORITIES},
            "status": {"type": "string", "enum": STATUSES},
            "input": {"type": ["object", "null"]},
            "result": {},
            "owner_id": {"type": "string"},
            "agent_id": {"type": ["string", "null"]},
            "created_at": openapi::time(),
            "updated_at": openapi::time(),
        }
    })
}

/// What agent workers learn from `task_available` (not the contents).
#[derive(Debug, Clone, Serialize)]
pub struct AvailableView<'a> {
    pub id: &'a str,
    pub priority: &'static str,
    pub status: &'a str,
    pub created_at: &'a str,
}

pub fn priority_name(p: i32) -> &'static str {
    match p {
        0 => "low",
        2 => "high",
        _ => "normal",
    }
}

fn priority_value(s: &str) -> i32 {
    match s {
        "low" => 0,
        "high" => 2,
        _ => 1,
    }
}

impl TaskView {
    /// Decrypt a stored row.
    pub fn from_row(state: &AppState, r: TaskRow) -> Result<TaskView, ApiError> {
        let json = |c: &Option<String>| -> Result<Box<RawValue>, ApiError> {
            match c {
                None => Ok(null()),
                Some(s) => {
                    let bytes = state.keyring.decrypt(s)?;
                    let text = String::from_utf8(bytes)
                        .map_err(crate::http::respond::internal("stored JSON is not UTF-8"))?;
                    RawValue::from_string(text)
                        .map_err(crate::http::respond::internal("stored JSON is corrupt"))
                }
            }
        };
        Ok(TaskView {
            description: r
                .description
                .as_deref()
                .map(|d| state.keyring.decrypt_string(d))
                .transpose()?,
            input: json(&r.input)?,
            result: json(&r.result)?,
            priority: priority_name(r.priority),
            created_at: crate::store::rfc3339(r.created_at),
            updated_at: crate::store::rfc3339(r.updated_at),
            id: r.id,
            title: r.title,
            status: r.status,
            owner_id: r.owner_id,
            agent_id: r.agent_id,
        })
    }
}

/// May `who` see this task? Owner, claiming worker, admin.
pub fn can_see(who: &Authenticated, t: &TaskRow) -> bool {
    who.is_admin() || t.owner_id == who.user_id || t.agent_id.as_deref() == Some(&who.user_id)
}

/// May `who` change or delete it? Owner, admin.
fn can_change(who: &Authenticated, t: &TaskRow) -> bool {
    who.is_admin() || t.owner_id == who.user_id
}

/// Publish an event about a task.
pub fn publish(state: &AppState, kind: EventKind, t: &TaskView) {
    if !state.events.has_audience() {
        return;
    }
    state
        .events
        .publish(Event::new(kind, &t.owner_id, t.agent_id.as_deref(), t));
    if kind == EventKind::TaskCreated && t.status == "queued" {
        publish_available(state, t);
    }
}

/// `task_available` to the workers: the task's id, priority, status and
/// time, not its contents.
fn publish_available(state: &AppState, t: &TaskView) {
    let v = AvailableView {
        id: &t.id,
        priority: t.priority,
        status: &t.status,
        created_at: &t.created_at,
    };
    state
        .events
        .publish(Event::new(EventKind::TaskAvailable, &t.owner_id, None, &v));
}

/// A running task put back in the queue: `task_updated` to its owner and
/// to the worker that held it (its claim is withdrawn), `task_available`
/// to the workers.
fn requeued_events(state: &AppState, t: &TaskView, held_by: Option<&str>) {
    if !state.events.has_audience() {
        return;
    }
    state
        .events
        .publish(Event::new(EventKind::TaskUpdated, &t.owner_id, held_by, t));
    publish_available(state, t);
}

/// The events of the tasks a user deletion released (as stored after it,
/// published after the deletion's answer is decided and the user's
/// credentials are dropped): a re-queued task as a PATCH re-queue
/// announces it (`task_updated` to its owner, `task_available` to the
/// workers; nothing to the deleted worker that held it), a cancelled one
/// `task_updated` (to the worker holding it, and admins). Without them an
/// event-driven worker pool idled with a task queued and an owner's
/// mirror showed it running for ever.
pub fn released_events(state: &AppState, released: crate::store::tasks::Released) {
    if !state.events.has_audience() {
        return;
    }
    for row in released.requeued {
        match TaskView::from_row(state, row) {
            Ok(view) => requeued_events(state, &view, None),
            Err(e) => tracing::warn!(error = %e, "a re-queued task cannot be read for its event"),
        }
    }
    for row in released.cancelled {
        match TaskView::from_row(state, row) {
            Ok(view) => publish(state, EventKind::TaskUpdated, &view),
            Err(e) => tracing::warn!(error = %e, "a cancelled task cannot be read for its event"),
        }
    }
}

/// JSON `null`.
fn null() -> Box<RawValue> {
    RawValue::NULL.to_owned()
}

/// `v` as JSON text, and that text encrypted for storage.
fn encrypt_json(state: &AppState, v: &Value) -> Result<(Box<RawValue>, String), ApiError> {
    let raw = serde_json::value::to_raw_value(v)
        .map_err(crate::http::respond::internal("serialising JSON"))?;
    let sealed = state.keyring.encrypt(raw.get().as_bytes());
    Ok((raw, sealed))
}

async fn create(
    State(state): State<AppState>,
    who: Authenticated,
    Json(UniqueValue(body)): Json<UniqueValue>,
) -> Result<impl IntoResponse, ApiError> {
    let obj = state.task_rules.create.validate(&body)?;
    let now = crate::store::now_ms();
    let description = obj.get("description").and_then(Value::as_str);
    let (input, sealed_input) = match obj.get("input") {
        Some(v @ Value::Object(_)) => encrypt_json(&state, v)?,
        _ => encrypt_json(&state, &Value::Object(Map::new()))?,
    };
    let row = TaskRow {
        id: crate::store::new_id(),
        owner_id: who.user_id.clone(),
        title: obj
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        description: description.map(|d| state.keyring.encrypt(d.as_bytes())),
        priority: priority_value(
            obj.get("priority")
                .and_then(Value::as_str)
                .unwrap_or("normal"),
        ),
        status: "queued".into(),
        input: Some(sealed_input),
        result: None,
        agent_id: None,
        created_at: now,
        updated_at: now,
    };
    if !store::insert(&state.db, &row).await? {
        // the caller's user was deleted after this request was
        // authenticated: its credential is revoked, and nothing is stored
        return Err(ApiError::Unauthenticated);
    }
    let view = TaskView {
        id: row.id,
        title: row.title,
        description: description.map(str::to_string),
        priority: priority_name(row.priority),
        status: row.status,
        input,
        result: null(),
        owner_id: row.owner_id,
        agent_id: None,
        created_at: crate::store::rfc3339(now),
        updated_at: crate::store::rfc3339(now),
    };
    publish(&state, EventKind::TaskCreated, &view);
    let location = format!("/api/tasks/{}", view.id);
    Ok((
        StatusCode::CREATED,
        [(http::header::LOCATION, location)],
        Json(view),
    ))
}

/// A page of tasks.
#[derive(Debug, Serialize)]
pub struct Page {
    pub items: Vec<TaskView>,
    pub next_cursor: Option<String>,
}

fn encode_cursor(created_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{created_at}:{id}"))
}

fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (t, id) = s.split_once(':')?;
    let ok = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| Some((t.parse().ok()?, id.to_string())))?
}

fn list_filter(
    who: &Authenticated,
    q: &std::collections::HashMap<String, String>,
    engine: crate::store::Engine,
) -> Result<ListFilter, ApiError> {
    let mut errs = FieldErrors::new();
    for k in q.keys() {
        if !["status", "q", "limit", "cursor"].contains(&k.as_str()) {
            errs.insert(
                k.chars().take(64).collect(),
                vec!["unknown query parameter".into()],
            );
        }
    }
    let status = q.get("status").cloned().unwrap_or_default();
    if q.contains_key("status") && !STATUSES.contains(&status.as_str()) {
        errs.insert(
            "status".into(),
            vec![format!("status must be one of {}", STATUSES.join(", "))],
        );
    }
    let text = q.get("q").cloned().unwrap_or_default();
    if text.chars().count() > TITLE_MAX {
        errs.insert(
            "q".into(),
            vec![format!("q must be at most {TITLE_MAX} characters")],
        );
    } else if text.chars().any(char::is_control) {
        // A title never holds one (see `create`), so nothing could match;
        // and PostgreSQL refuses a NUL in text outright.
        errs.insert(
            "q".into(),
            vec!["q must not contain control characters".into()],
        );
    }
    let limit = match q.get("limit") {
        None => LIST_DEFAULT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=LIST_MAX).contains(&n) => n,
            _ => {
                errs.insert(
                    "limit".into(),
                    vec![format!("limit must be an integer from 1 to {LIST_MAX}")],
                );
                0
            }
        },
    };
    let after = match q.get("cursor") {
        None => (-1, String::new()),
        Some(c) => decode_cursor(c).unwrap_or_else(|| {
            errs.insert(
                "cursor".into(),
                vec!["cursor is not one this server issued".into()],
            );
            (-1, String::new())
        }),
    };
    if !errs.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    Ok(ListFilter {
        owner: if who.is_admin() {
            String::new()
        } else {
            who.user_id.clone()
        },
        status,
        pattern: store::like_pattern(&text, engine),
        after,
        limit,
    })
}

async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<Page>, ApiError> {
    let q = crate::http::query::params(query.as_deref())?
        .into_iter()
        .collect();
    let mut f = list_filter(&who, &q, state.db.engine)?;
    let limit = f.limit;
    f.limit += 1;
    let (mut rows, cut) = store::list(&state.db, &f).await?;
    let more = cut || rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = match rows.last() {
        Some(last) if more => Some(encode_cursor(last.created_at, &last.id)),
        _ => None,
    };
    let items = rows
        .into_iter()
        .map(|r| TaskView::from_row(&state, r))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(Page { items, next_cursor }))
}

/// Load a task the caller may see, or 404.
pub async fn load_visible(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<TaskRow, ApiError> {
    match store::get(&state.db, id).await? {
        Some(t) if can_see(who, &t) => Ok(t),
        _ => Err(ApiError::NotFound),
    }
}

async fn get(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let t = load_visible(&state, &who, &id).await?;
    Ok(Json(TaskView::from_row(&state, t)?))
}

fn is_final(status: &str) -> bool {
    matches!(status, "done" | "failed" | "cancelled")
}

/// The status machine for PATCH: `Ok` when `from -> to` is allowed there.
pub fn patch_move(from: &str, to: &str) -> Result<(), ApiError> {
    if from == to && !is_final(from) {
        return Ok(());
    }
    if is_final(from) {
        return Err(ApiError::Conflict(format!(
            "the task is {from}; finished tasks cannot change"
        )));
    }
    match to {
        "cancelled" => Ok(()),
        // a claim whose worker died or never got the answer: the owner (or
        // an admin) puts the task back in the queue; the worker's result
        // is refused from then on (404: no longer its task to see)
        "queued" if from == "running" => Ok(()),
        "running" => Err(ApiError::Conflict(
            "a task starts running only when a worker claims it (POST /api/agent/claim)".into(),
        )),
        "done" | "failed" => Err(ApiError::Conflict(
            "only the claiming worker finishes a task (POST /api/tasks/{id}/result)".into(),
        )),
        _ => Err(ApiError::Conflict(format!(
            "a task cannot move from {from} to {to}"
        ))),
    }
}

/// How often a PATCH re-reads a task that changed between its read and its
/// write before it answers 409.
const PATCH_ATTEMPTS: usize = 8;

async fn patch(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
    Json(UniqueValue(body)): Json<UniqueValue>,
) -> Result<Json<TaskView>, ApiError> {
    let obj = state.task_rules.patch.validate(&body)?;
    for _ in 0..PATCH_ATTEMPTS {
        let cur = match store::get(&state.db, &id).await? {
            Some(t) if can_change(&who, &t) => t,
            _ => return Err(ApiError::NotFound),
        };
        let to = obj
            .get("status")
            .and_then(Value::as_str)
            .unwrap_or(&cur.status)
            .to_string();
        patch_move(&cur.status, &to)?;
        if !patch_changes(&state, &cur, obj, &to)? {
            // nothing to write: no new `updated_at`, no `task_updated` event
            return Ok(Json(TaskView::from_row(&state, cur)?));
        }
        let mut next = cur.clone();
        if let Some(t) = obj.get("title").and_then(Value::as_str) {
            next.title = t.to_string();
        }
        match obj.get("description") {
            Some(Value::String(d)) => next.description = Some(state.keyring.encrypt(d.as_bytes())),
            Some(Value::Null) => next.description = None,
            _ => {}
        }
        if let Some(p) = obj.get("priority").and_then(Value::as_str) {
            next.priority = priority_value(p);
        }
        let requeued = cur.status == "running" && to == "queued";
        if requeued {
            next.agent_id = None;
        }
        next.status = to;
        next.updated_at = crate::store::now_ms().max(cur.updated_at + 1);
        // Written only if nothing changed since `cur` was read; otherwise
        // another PATCH, a claim or a re-encryption got there first: apply
        // this one to what it left (each PATCH sets only its own fields).
        if let Some(row) = store::update(&state.db, &next, &cur).await? {
            let view = TaskView::from_row(&state, row)?;
            if requeued {
                requeued_events(&state, &view, cur.agent_id.as_deref());
            } else {
                publish(&state, EventKind::TaskUpdated, &view);
            }
            return Ok(Json(view));
        }
    }
    Err(ApiError::Conflict(
        "the task kept changing meanwhile; read it again".into(),
    ))
}

/// Does a validated PATCH body change anything in `cur`? (`{}`, or the
/// values the task already has, change nothing.)
fn patch_changes(
    state: &AppState,
    cur: &TaskRow,
    obj: &serde_json::Map<String, Value>,
    to: &str,
) -> Result<bool, ApiError> {
    let title = obj.get("title").and_then(Value::as_str);
    let priority = obj.get("priority").and_then(Value::as_str);
    let description = match obj.get("description") {
        None => false,
        Some(Value::String(d)) => match cur.description.as_deref() {
            Some(c) => state.keyring.decrypt_string(c)? != *d,
            None => true,
        },
        Some(_) => cur.description.is_some(),
    };
    Ok(to != cur.status
        || title.is_some_and(|t| t != cur.title)
        || priority.is_some_and(|p| priority_value(p) != cur.priority)
        || description)
}

async fn delete(
    State(state): State<AppState>,
    who: Authenticated,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    match store::get(&state.db, &id).await? {
        Some(t) if can_change(&who, &t) => {
            // a client mirroring tasks from events kept deleted ones for
            // ever, and a worker learnt only from its result's 404
            if store::delete(&state.db, &id).await? && state.events.has_audience() {
                #[derive(Serialize)]
                struct Deleted<'a> {
                    id: &'a str,
                }
                state.events.publish(Event::new(
                    EventKind::TaskDeleted,
                    &t.owner_id,
                    t.agent_id.as_deref(),
                    &Deleted { id: &t.id },
                ));
            }
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_machine() {
        for (from, to, ok) in [
            ("queued", "cancelled", true),
            ("running", "cancelled", true),
            ("queued", "queued", true),
            ("queued", "running", false),
            ("queued", "done", false),
            ("running", "queued", true),
            ("done", "cancelled", false),
            ("cancelled", "cancelled", false),
            ("failed", "queued", false),
        ] {
            assert_eq!(patch_move(from, to).is_ok(), ok, "{from} -> {to}");
        }
    }

    #[test]
    fn cursor_round_trip() {
        let c = encode_cursor(42, "abc123");
        assert_eq!(decode_cursor(&c), Some((42, "abc123".into())));
        assert_eq!(decode_cursor("!!"), None);
        assert_eq!(decode_cursor(&encode_cursor(1, "a' OR 1=1")), None);
    }
}
