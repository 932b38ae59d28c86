//! `/api/auth/login`, `/api/auth/logout`, `/api/auth/whoami`.
//!
//! Logout revokes the presented JWT's `jti` (the token fails at once). An API
//! key caller gets 400 `bad_request` there: keys are revoked with
//! `DELETE /api/keys/{id}`, and silently answering 204 would suggest a
//! revocation that did not happen.

use axum::extract::{Extension, State};
use axum::response::{IntoResponse, Response};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::AppState;
use crate::apisec::validation::{Kind, Rule, Schema};
use crate::authn::{AuthKind, Authenticated};
use crate::authz::{Access, RouteDoc, Routes};
use crate::http::{ApiError, Json, NoBody, RequestId, UniqueValue};
use crate::monitoring::audit::AuditEvent;
use crate::network::ClientAddr;

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(
            Method::POST,
            "/api/auth/login",
            Access::Public,
            "log in with username and password; returns a JWT",
            login,
        )
        .doc(
            RouteDoc::new()
                .body(|_| login_schema().json_schema())
                .ok(200, "a JWT", |_| {
                    json!({
                        "type": "object",
                        "required": ["access_token", "token_type", "expires_in"],
                        "properties": {
                            "access_token": {"type": "string"},
                            "token_type": {"const": "Bearer"},
                            "expires_in": {"type": "integer", "minimum": 0},
                        }
                    })
                })
                .error(
                    401,
                    "unauthenticated: wrong username or password, or locked out",
                ),
        )
        .route(
            Method::POST,
            "/api/auth/logout",
            Access::Authenticated,
            "revoke the presented JWT (API keys: 400)",
            logout,
        )
        .doc(
            RouteDoc::new()
                .empty(204, "the token is revoked")
                .error(400, "bad_request: the caller used an API key, not a JWT"),
        )
        .route(
            Method::GET,
            "/api/auth/whoami",
            Access::Authenticated,
            "the caller's identity and permissions",
            whoami,
        )
        .doc(RouteDoc::new().ok(200, "the caller", |_| {
            json!({
                "type": "object",
                "required": ["user_id", "username", "roles", "permissions", "auth"],
                "properties": {
                    "user_id": {"type": "string"},
                    "username": {"type": "string"},
                    "roles": {"type": "array", "items": {"type": "string"}},
                    "permissions": super::openapi::permission_names(),
                    "auth": {"type": "string", "enum": ["api_key", "jwt"]},
                }
            })
        }))
}

/// A login body: two strings and nothing else (a missing, mistyped or
/// unknown field is `validation_failed`; the values are never echoed).
fn login_schema() -> Schema {
    Schema::new(vec![
        Rule::new("username", Kind::String).required(),
        Rule::new("password", Kind::String).required(),
    ])
}

async fn login(
    State(state): State<AppState>,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Json(UniqueValue(body)): Json<UniqueValue>,
) -> Result<Response, ApiError> {
    let obj = login_schema().validate(&body)?;
    let text = |f: &str| obj.get(f).and_then(Value::as_str).unwrap_or_default();
    let issued = crate::authn::login::login(
        &state,
        text("username"),
        Zeroizing::new(text("password").to_string()),
        addr.map(|a| a.0 .0),
        rid.as_ref().map(|r| r.0.as_str()),
    )
    .await?;
    let mut resp = Json(json!({
        "access_token": issued.access_token,
        "token_type": "Bearer",
        "expires_in": issued.expires_in,
    }))
    .into_response();
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(resp)
}

async fn logout(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    let AuthKind::Jwt { jti, exp } = &who.auth else {
        return Err(ApiError::BadRequest(
            "logout revokes a JWT; revoke an API key with DELETE /api/keys/{id}".into(),
        ));
    };
    let until = state.authn.revoke_token(&state.db, jti, *exp).await?;
    state.shared.token_revoked(jti, until).await;
    state.audit.record(event("logout", &rid, &addr, &who)).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn whoami(who: Authenticated) -> Json<serde_json::Value> {
    Json(json!({
        "user_id": who.user_id,
        "username": who.username,
        "roles": who.roles,
        "permissions": who.permissions.names(),
        "auth": who.auth.name(),
    }))
}

/// An audit event about an action of `who` (shared by the identity routes).
pub(super) fn event(
    kind: &'static str,
    rid: &Option<Extension<RequestId>>,
    addr: &Option<Extension<ClientAddr>>,
    who: &Authenticated,
) -> AuditEvent {
    base_event(kind, rid, addr).user(Some(who.user_id.clone()))
}

fn base_event(
    kind: &'static str,
    rid: &Option<Extension<RequestId>>,
    addr: &Option<Extension<ClientAddr>>,
) -> AuditEvent {
    let mut ev = AuditEvent::new(kind);
    if let Some(r) = rid {
        ev = ev.request_id(r.0.as_str());
    }
    if let Some(a) = addr {
        ev = ev.ip(a.0 .0);
    }
    ev
}
