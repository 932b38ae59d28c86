//! `/api/keys`: create, list, revoke and rotate API keys.
//!
//! Tenancy: a caller sees and manages only their own keys; an admin sees and
//! manages all. Another user's key answers 404 (no existence oracle). A new
//! key's permissions must be covered by the caller's own (effective)
//! permissions, else 403; by default it gets exactly the caller's.
//!
//! Threat: a leaked weak credential climbing to a strong one. A key with
//! `read:tasks` only could rotate its owner's admin key and receive the new
//! secret; a rotated-out secret, still valid for its grace period, could
//! rotate the key again and take its current secret; a key about to expire
//! could mint a key that lives a year, or rotate a sibling that does and
//! take its secret. Guarantee: a caller presenting an API key manages
//! (rotates, revokes) only keys whose permissions its own cover (it may
//! always revoke itself), creates only keys that expire no later than it
//! does, cuts the expiry of a key it rotates (itself aside) to its own, and
//! a rotated-out secret manages no key at all (403).
//! A JWT rotates only keys its permissions cover too (a token minted
//! elsewhere may carry fewer than its user has), and revokes any key of
//! its user.

use axum::extract::{Extension, RawQuery, State};
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::auth::event;
use super::AppState;
use crate::authn::identity;
use crate::authn::{AuthKind, Authenticated};
use crate::authz::{Access, PermissionSet, RouteDoc, Routes};
use crate::http::{ApiError, Json, NoBody, Path, RequestId, UniqueValue};
use crate::network::ClientAddr;
use crate::store;

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(
            Method::POST,
            "/api/keys",
            Access::Authenticated,
            "create an API key (the secret is shown once)",
            create,
        )
        .doc(
            RouteDoc::new()
                .body(|_| new_key_schema())
                .ok(201, "the key, with its secret (shown once)", |_| {
                    created_key_schema()
                })
                .error(403, "forbidden: more permissions than the caller has"),
        )
        .route(
            Method::GET,
            "/api/keys",
            Access::Authenticated,
            "list own API keys (admin: all), never the secrets",
            list,
        )
        .doc(
            super::openapi::id_paging(RouteDoc::new())
                .ok(200, "the keys", |_| super::openapi::list_of(key_schema())),
        )
        .route(
            Method::DELETE,
            "/api/keys/{id}",
            Access::Authenticated,
            "revoke an API key (owner or admin)",
            revoke,
        )
        .doc(RouteDoc::new().empty(204, "revoked"))
        .route(
            Method::POST,
            "/api/keys/{id}/rotate",
            Access::Authenticated,
            "new secret; the old one stays valid for the rotation grace period",
            rotate,
        )
        .doc(
            RouteDoc::new()
                .ok(200, "the key with its new secret (shown once)", |_| {
                    created_key_schema()
                })
                .error(409, "conflict: the key is revoked"),
        )
}

fn key_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "name", "user_id", "permissions", "created_at", "expires_at", "status"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "user_id": {"type": "string"},
            "username": {"type": ["string", "null"]},
            "permissions": super::openapi::permission_names(),
            "created_at": super::openapi::time(),
            "expires_at": super::openapi::time(),
            "last_used_at": super::openapi::nullable(super::openapi::time()),
            "revoked_at": super::openapi::nullable(super::openapi::time()),
            "status": {"type": "string", "enum": ["active", "expired", "revoked"]},
        }
    })
}

fn created_key_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "key", "name", "permissions", "expires_at"],
        "properties": {
            "id": {"type": "string"},
            "key": {"type": "string", "pattern": "^frn_[A-Za-z0-9_-]{43}$"},
            "name": {"type": "string"},
            "permissions": super::openapi::permission_names(),
            "expires_at": super::openapi::time(),
        }
    })
}

fn new_key_schema() -> Value {
    json!({
        "type": "object",
        "required": ["name"],
        "additionalProperties": false,
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100,
                     "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
            "permissions": super::openapi::nullable(super::openapi::permission_names()),
            "expires_in_days": {"type": "number", "exclusiveMinimum": 0, "maximum": 365},
        }
    })
}

async fn create(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Json(body): Json<UniqueValue>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.into_object()?;
    let explicit_expiry = body.get("expires_in_days").is_some_and(|v| !v.is_null());
    let req = identity::validate_key(&body, state.cfg.auth.key_default_expiry_days)?;
    let perms = req.permissions.unwrap_or(who.permissions);
    if !who.permissions.covers(perms) {
        return Err(ApiError::Forbidden);
    }
    let mut expires_at = identity::expiry(store::now_ms(), req.expires_in_days);
    if let AuthKind::ApiKey {
        valid_until,
        superseded,
        ..
    } = who.auth
    {
        if superseded {
            return Err(ApiError::Forbidden);
        }
        if expires_at > valid_until {
            if explicit_expiry {
                return Err(crate::http::respond::field_error(
                    "expires_in_days",
                    format!(
                        "a key may not outlive the key that creates it (valid until {})",
                        store::rfc3339(valid_until)
                    ),
                ));
            }
            expires_at = valid_until;
        }
    }
    let k = identity::create_key(&state.db, &who.user_id, &req.name, perms, expires_at).await?;
    state
        .audit
        .record(
            event("key_created", &rid, &addr, &who)
                .field("key_id", k.id.as_str())
                .field("name", k.name.as_str())
                .field("permissions", k.permissions.clone())
                .field("expires_at", store::rfc3339(k.expires_at)),
        )
        .await;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": k.id,
            "key": k.key.as_str(),
            "name": k.name,
            "permissions": k.permissions,
            "expires_at": store::rfc3339(k.expires_at),
        })),
    ))
}

async fn list(
    State(state): State<AppState>,
    who: Authenticated,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = crate::http::query::params_only(q.as_deref(), &["limit", "cursor"])?;
    let owner = (!who.is_admin()).then_some(who.user_id.as_str());
    let rows = store::keys::list(&state.db, owner).await?;
    let (page, next) = super::paging::page_by_id(rows, |k| k.id.as_str(), &params)?;
    let now = store::now_ms();
    let items: Vec<Value> = page.iter().map(|k| identity::key_json(k, now)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

/// May the caller rotate or revoke `k` (which it can see)? Rotating hands
/// out the key's power, so the credential's permissions must cover the
/// key's, a JWT's as much as an API key's (a token minted elsewhere with
/// fewer permissions than its user has got an admin secret by rotating the
/// user's admin key). Revoking only takes access away: a login session may
/// revoke any of its user's keys, and a key may always revoke itself; a
/// superseded secret (in its rotation grace) may do neither (module docs).
fn may_manage(who: &Authenticated, k: &store::keys::KeyRow, revoking: bool) -> bool {
    let covers = || {
        who.permissions.covers(
            PermissionSet::parse(k.permissions.iter().map(String::as_str)).unwrap_or_default(),
        )
    };
    match &who.auth {
        AuthKind::Jwt { .. } => revoking || covers(),
        AuthKind::ApiKey {
            superseded: true, ..
        } => false,
        AuthKind::ApiKey { key_id, .. } => (revoking && *key_id == k.id) || covers(),
    }
}

/// The key, if the caller may manage it (owner or admin); else 404.
async fn visible_key(
    state: &AppState,
    who: &Authenticated,
    id: &str,
) -> Result<store::keys::KeyRow, ApiError> {
    match store::keys::by_id(&state.db, id).await? {
        Some(k) if k.user_id == who.user_id || who.is_admin() => Ok(k),
        _ => Err(ApiError::NotFound),
    }
}

async fn revoke(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    let k = visible_key(&state, &who, &id).await?;
    if !may_manage(&who, &k, true) {
        return Err(ApiError::Forbidden);
    }
    let changed = store::keys::revoke(&state.db, &k.id, store::now_ms()).await?;
    state.authn.invalidate_key(&k.id);
    state.shared.credentials_changed().await;
    if changed {
        state
            .audit
            .record(
                event("key_revoked", &rid, &addr, &who)
                    .field("key_id", k.id.as_str())
                    .field("owner_id", k.user_id.as_str()),
            )
            .await;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    addr: Option<Extension<ClientAddr>>,
    Path(id): Path<String>,
    _: NoBody,
) -> Result<Json<Value>, ApiError> {
    let k = visible_key(&state, &who, &id).await?;
    if !may_manage(&who, &k, false) {
        return Err(ApiError::Forbidden);
    }
    if k.revoked_at.is_some() {
        return Err(ApiError::Conflict("the key is revoked".into()));
    }
    // a new secret for an expired key would never work: create a new key
    if k.expires_at <= store::now_ms() {
        return Err(ApiError::Conflict(
            "the key has expired; create a new one".into(),
        ));
    }
    let secret = zeroize::Zeroizing::new(crate::authn::apikey::generate());
    let grace_ms = (state.cfg.auth.key_rotation_grace_seconds as i64).saturating_mul(1000);
    // strictly later than the last rotation's, so that a rotation is told
    // apart from the one before it even within one millisecond
    let old_valid_until = store::now_ms()
        .saturating_add(grace_ms)
        .max(k.old_valid_until.map_or(i64::MIN, |t| t.saturating_add(1)));
    // the new secret lives no longer than the API key that asks for it, as
    // a key it creates (a key about to expire rotated a sibling and took
    // its year-long secret); a key rotating itself keeps its expiry
    let expires_at = match &who.auth {
        AuthKind::ApiKey {
            key_id,
            valid_until,
            ..
        } if *key_id != k.id => k.expires_at.min(*valid_until),
        _ => k.expires_at,
    };
    let hash = crate::authn::apikey::hash_hex(&secret);
    if !store::keys::rotate(
        &state.db,
        &k.id,
        &hash,
        old_valid_until,
        k.old_valid_until,
        expires_at,
    )
    .await?
    {
        return Err(ApiError::Conflict(
            "the key was revoked or rotated meanwhile; read it again".into(),
        ));
    }
    state.authn.invalidate_key(&k.id);
    state.shared.credentials_changed().await;
    state
        .audit
        .record(
            event("key_rotated", &rid, &addr, &who)
                .field("key_id", k.id.as_str())
                .field("owner_id", k.user_id.as_str())
                .field(
                    "old_valid_until",
                    store::rfc3339(old_valid_until.min(expires_at)),
                )
                .field("expires_at", store::rfc3339(expires_at)),
        )
        .await;
    Ok(Json(json!({
        "id": k.id,
        "key": secret.as_str(),
        "name": k.name,
        "permissions": k.permissions,
        "expires_at": store::rfc3339(expires_at),
        // the old secret ends with the key at the latest (the stored value
        // stays as it is: the next rotation compares against it)
        "old_valid_until": store::rfc3339(old_valid_until.min(expires_at)),
    })))
}
