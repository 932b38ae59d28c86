//! `/api/users` (admin only): create, list, show and delete users.
//!
//! Deleting a user deletes their keys and invalidates every cached credential
//! of theirs at once; their JWTs fail because the user no longer exists.

use axum::extract::{Extension, RawQuery, State};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::auth::event;
use super::AppState;
use crate::authn::identity;
use crate::authn::Authenticated;
use crate::authz::{Access, Permission, RouteDoc, Routes};
use crate::http::{ApiError, Json, NoBody, Path, RequestId, UniqueValue};
use crate::network::ClientAddr;
use crate::store;

pub fn routes() -> Routes<AppState> {
    const ADMIN: Access = Access::Permission(Permission::Admin);
    Routes::new()
        .route(Method::POST, "/api/users", ADMIN, "create a user", create)
        .doc(
            RouteDoc::new()
                .body(new_user_schema)
                .ok(201, "the created user", |_| user_schema())
                .error(409, "conflict: the username is taken"),
        )
        .route(Method::GET, "/api/users", ADMIN, "list users", list)
        .doc(
            super::openapi::id_paging(RouteDoc::new()).ok(200, "users, by id", |_| {
                super::openapi::list_of(user_schema())
            }),
        )
        .route(Method::GET, "/api/users/{id}", ADMIN, "show a user", show)
        .doc(RouteDoc::new().ok(200, "the user", |_| user_schema()))
        .route(
            Method::DELETE,
            "/api/users/{id}",
            ADMIN,
            "delete a user, their keys and tokens",
            remove,
        )
        .doc(
            RouteDoc::new()
                .empty(204, "deleted")
                .error(409, "conflict: the last admin cannot be deleted"),
        )
}

fn user_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "username", "email", "roles", "created_at"],
        "properties": {
            "id": {"type": "string"},
            "username": {"type": "string"},
            "email": {"type": "string"},
            "roles": {"type": "array", "items": {"type": "string"}},
            "created_at": super::openapi::time(),
        }
    })
}

fn new_user_schema(cfg: &crate::config::Config) -> Value {
    let roles: Vec<String> = crate::authz::Roles::new(&cfg.roles)
        .names()
        .map(String::from)
        .collect();
    json!({
        "type": "object",
        "required": ["username", "email", "password", "roles"],
        "additionalProperties": false,
        "properties": {
            "username": {"type": "string", "pattern": "^[a-zA-Z0-9_]{3,20}$"},
            "email": {"type": "string", "maxLength": 254,
                      "pattern": "^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\\.[a-zA-Z]{2,}$"},
            "password": {"type": "string", "minLength": 8, "maxLength": 1024},
            "roles": {"type": "array", "minItems": 1, "maxItems": 16,
                      "items": {"type": "string", "enum": roles}},
        }
    })
}

async fn create(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<UniqueValue>,
) -> Result<impl axum::response::IntoResponse, ApiError> {
    let new = identity::validate_user(&body.into_object()?, &state.roles)?;
    if store::users::by_username(&state.db, &new.username)
        .await?
        .is_some()
    {
        return Err(ApiError::Conflict(
            "a user with this username exists".into(),
        ));
    }
    let pw = Zeroizing::new(new.password.to_string());
    let hash = state
        .authn
        .passwords
        .hash(pw)
        .await
        .map_err(crate::http::respond::internal("password hashing failed"))?;
    let user = identity::insert_user(&state.db, &new, hash).await?;
    state
        .audit
        .record(
            event("user_created", &rid, &addr, &who)
                .field("target_user_id", user.id.as_str())
                .field("username", user.username.as_str())
                .field("roles", user.roles.clone()),
        )
        .await;
    let location = format!("/api/users/{}", user.id);
    Ok((
        StatusCode::CREATED,
        [(http::header::LOCATION, location)],
        Json(identity::user_json(&user)),
    ))
}

async fn list(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = crate::http::query::params_only(q.as_deref(), &["limit", "cursor"])?;
    let users = store::users::list(&state.db).await?;
    let (page, next) = super::paging::page_by_id(users, |u| u.id.as_str(), &params)?;
    let items: Vec<Value> = page.iter().map(identity::user_json).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    match store::users::by_id(&state.db, &id).await? {
        Some(u) => Ok(Json(identity::user_json(&u))),
        None => Err(ApiError::NotFound),
    }
}

async fn remove(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    let Some(user) = store::users::by_id(&state.db, &id).await? else {
        return Err(ApiError::NotFound);
    };
    let result = identity::delete_user(&state.db, &user).await;
    // Forget cached credentials even if the delete raced with another one.
    state.authn.invalidate_user(&user.id);
    state.shared.credentials_changed().await;
    let released = result?;
    super::tasks::released_events(&state, released);
    state
        .audit
        .record(
            event("user_deleted", &rid, &addr, &who)
                .field("target_user_id", user.id.as_str())
                .field("username", user.username.as_str()),
        )
        .await;
    Ok(StatusCode::NO_CONTENT)
}
