//! `/api/security/*` (admin): list, add and lift bans; list incidents.
//!
//! Bans are keyed like the network layer keys them (IPv4, or the IPv6 /64
//! with `limits.ipv6_group_by_64`, written `2001:db8::/64`): any address of a
//! /64 names that /64's ban. Operator bans last exactly `seconds`
//! (1..=31,536,000) and replace an active ban; an address in
//! `limits.allowlist` cannot be banned (it would have no effect). Every
//! change is audited (`ban_added`, `ban_lifted`) with the admin's user id.

use axum::extract::{RawQuery, State};
use axum::Extension;
use http::{Method, StatusCode};
use serde_json::{json, Value};

use super::openapi;
use super::paging::{limit_param, param, MAX_LIMIT};
use super::AppState;
use crate::authn::Authenticated;
use crate::authz::{Access, Permission, RouteDoc, Routes};
use crate::http::{ApiError, FieldErrors, Json, NoBody, Path, RequestId, UniqueValue};
use crate::monitoring::audit::AuditEvent;
use crate::network::ban::{key_string, parse_key, BanRecord, Length};

/// Longest operator ban: one year.
pub const MAX_BAN_SECONDS: u64 = 31_536_000;

pub fn routes() -> Routes<AppState> {
    let admin = Access::Permission(Permission::Admin);
    Routes::new()
        .route(
            Method::GET,
            "/api/security/bans",
            admin,
            "list active bans",
            list_bans,
        )
        .doc(
            RouteDoc::new()
                .query("limit", |_| openapi::limit(MAX_LIMIT as i64), "page size (default 100)")
                .query("cursor", openapi::cursor, "next_cursor of the previous page")
                .ok(200, "active bans", |_| openapi::list_of(ban_schema())),
        )
        .route(
            Method::POST,
            "/api/security/bans",
            admin,
            "ban an address",
            add_ban,
        )
        .doc(
            RouteDoc::new()
                .body(|_| {
                    json!({
                        "type": "object",
                        "required": ["ip", "seconds"],
                        "additionalProperties": false,
                        "properties": {
                            "ip": {"type": "string", "description": "an IPv4 or IPv6 address (not in limits.allowlist)"},
                            "seconds": {"type": "integer", "minimum": 1, "maximum": MAX_BAN_SECONDS},
                            "reason": {"anyOf": [
                                {"type": "string", "minLength": 1, "maxLength": 200,
                                 "pattern": "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"},
                                {"type": "null"}]},
                        }
                    })
                })
                .ok(201, "the ban", |_| ban_schema()),
        )
        .route(
            Method::DELETE,
            "/api/security/bans/{ip}",
            admin,
            "lift a ban",
            lift_ban,
        )
        .doc(RouteDoc::new().empty(204, "lifted"))
        .route(
            Method::GET,
            "/api/security/incidents",
            admin,
            "detected incidents and the response taken",
            list_incidents,
        )
        .doc(
            RouteDoc::new()
                .query("kind", |_| {
                    let kinds: Vec<&str> = crate::monitoring::incidents::Kind::ALL
                        .iter()
                        .map(|k| k.as_str())
                        .collect();
                    json!({"type": "string", "enum": kinds})
                }, "only incidents of this kind")
                .query("limit", |_| openapi::limit(MAX_LIMIT as i64), "page size (default 100)")
                .query("cursor", |_| json!({"type": "string", "pattern": "^[0-9a-fA-F]{0,64}$"}), "next_cursor of the previous page")
                .ok(200, "incidents, newest first", |_| {
                    openapi::list_of(json!({
                        "type": "object",
                        "required": ["id", "kind", "created_at"],
                        "properties": {
                            "id": {"type": "string"},
                            "kind": {"type": "string"},
                            "ip": {"type": ["string", "null"]},
                            "user_id": {"type": ["string", "null"]},
                            "details": {},
                            "actions": {},
                            "created_at": openapi::time(),
                        }
                    }))
                }),
        )
}

fn ban_schema() -> Value {
    json!({
        "type": "object",
        "required": ["ip", "reason", "created_at", "until", "retry_after", "offences"],
        "properties": {
            "ip": {"type": "string"},
            "reason": {"type": "string"},
            "created_at": openapi::time(),
            "until": openapi::time(),
            "retry_after": {"type": "integer", "minimum": 0},
            "offences": {"type": "integer", "minimum": 0},
        }
    })
}

fn ban_json(b: &BanRecord, group_v6: bool, now: i64) -> Value {
    json!({
        "ip": key_string(b.key, group_v6),
        "reason": b.reason,
        "created_at": crate::store::rfc3339(b.created_at),
        "until": crate::store::rfc3339(b.until_ms),
        "retry_after": b.retry_after(now),
        "offences": b.offences,
    })
}

async fn list_bans(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = crate::http::query::params_only(q.as_deref(), &["limit", "cursor"])?;
    let limit = limit_param(&params)?;
    let cursor = param(&params, "cursor").unwrap_or("");
    let now = crate::store::now_ms();
    let group = state.network.group_v6;
    let after = match cursor {
        "" => None,
        c => Some(
            parse_key(c, group)
                .ok_or_else(|| crate::http::respond::field_error("cursor", "invalid cursor"))?,
        ),
    };
    let bans: Vec<BanRecord> = state
        .network
        .bans
        .active(now)
        .into_iter()
        .filter(|b| after.is_none_or(|a| b.key > a))
        .collect();
    let page = bans.get(..limit).unwrap_or(&bans);
    let next = (bans.len() > limit)
        .then(|| page.last().map(|b| key_string(b.key, group)))
        .flatten();
    let items: Vec<Value> = page.iter().map(|b| ban_json(b, group, now)).collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}

/// The members a new ban may have.
const NEW_BAN_FIELDS: [&str; 3] = ["ip", "seconds", "reason"];

async fn add_ban(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    caller: Option<Extension<crate::network::ClientAddr>>,
    Json(body): Json<UniqueValue>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = body.into_object()?;
    let group = state.network.group_v6;
    // a ban on the caller's own address (or /64) would lock the admin out
    // before the DELETE that lifts it could arrive
    let own = caller.as_ref().map(|c| state.network.key(c.0 .0));
    let mut errors = FieldErrors::new();
    let mut err = |f: &str, m: &str| errors.entry(f.into()).or_default().push(m.into());
    for name in body.keys() {
        if !NEW_BAN_FIELDS.contains(&name.as_str()) {
            err(name, "unknown field");
        }
    }
    let ip = match body.get("ip") {
        Some(Value::String(s)) => match s.trim().parse::<std::net::IpAddr>() {
            Ok(ip) if state.network.allowlisted(ip) => {
                err("ip", "is in limits.allowlist, which is never banned");
                None
            }
            Ok(ip) => Some(ip),
            Err(_) => match parse_key(s, group) {
                Some(k) => Some(k),
                None => {
                    err("ip", "must be an IPv4 or IPv6 address");
                    None
                }
            },
        },
        Some(_) => {
            err("ip", "must be a string");
            None
        }
        None => {
            err("ip", "ip is required");
            None
        }
    };
    let ip = match ip {
        Some(ip) if own == Some(state.network.key(ip)) => {
            err(
                "ip",
                "is the address of this request; banning it would lock you out",
            );
            None
        }
        other => other,
    };
    let seconds = match body.get("seconds").map(Value::as_u64) {
        Some(Some(s)) if (1..=MAX_BAN_SECONDS).contains(&s) => Some(s),
        Some(_) => {
            err(
                "seconds",
                &format!("must be a whole number from 1 to {MAX_BAN_SECONDS}"),
            );
            None
        }
        None => {
            err("seconds", "seconds is required");
            None
        }
    };
    let reason = match body.get("reason") {
        None => Some("manual".to_string()),
        Some(Value::String(r))
            if (1..=200).contains(&r.chars().count()) && !r.chars().any(char::is_control) =>
        {
            Some(r.clone())
        }
        Some(_) => {
            err(
                "reason",
                "must be 1 to 200 characters without control characters",
            );
            None
        }
    };
    let (Some(ip), Some(seconds), Some(reason), true) = (ip, seconds, reason, errors.is_empty())
    else {
        return Err(ApiError::Validation(errors));
    };
    let now = crate::store::now_ms();
    let key = state.network.key(ip);
    let rec = state
        .shared
        .ban(&state.network, key, Length::Fixed(seconds), &reason, now)
        .await
        .ok_or(ApiError::Internal)?;
    let rid = rid.map(|r| r.0.as_str().to_string());
    let client = caller.map(|c| c.0 .0);
    if !crate::network::record_ban(&state, &rec, Some(&who.user_id), client, rid.as_deref()).await {
        // in force (Redis and memory) but not yet stored: stored when the
        // database is back (`Network::reload_bans`); the caller hears that
        // the database is out of reach, not a server fault
        return Err(ApiError::Unavailable);
    }
    Ok((StatusCode::CREATED, Json(ban_json(&rec, group, now))))
}

async fn lift_ban(
    State(state): State<AppState>,
    who: Authenticated,
    rid: Option<Extension<RequestId>>,
    caller: Option<Extension<crate::network::ClientAddr>>,
    Path(ip): Path<String>,
    _: NoBody,
) -> Result<StatusCode, ApiError> {
    let group = state.network.group_v6;
    let key = parse_key(&ip, group).ok_or_else(|| {
        crate::http::respond::field_error("ip", "must be an IPv4 or IPv6 address")
    })?;
    let now = crate::store::now_ms();
    // the stored row first: with the database out of reach the answer is
    // 503 and nothing is lifted (lifted in Redis and memory first, the ban
    // came back from its row after the next restart or Redis outage, and
    // the retry found nothing to lift)
    let written = key_string(key, group);
    crate::store::bans::delete(&state.db, &written).await?;
    if !state.shared.lift(&state.network, key, now).await {
        return Err(ApiError::NotFound);
    }
    state
        .metrics
        .active_bans
        .set(state.network.bans.active_count(now) as i64);
    // `ip` is the requester's address (the admin's), as on every event;
    // the address the ban was lifted from is `target_ip`
    let mut ev = AuditEvent::new("ban_lifted")
        .user(Some(who.user_id.clone()))
        .field("target_ip", written.as_str());
    if let Some(c) = caller {
        ev = ev.ip(c.0 .0);
    }
    if let Some(r) = rid {
        ev = ev.request_id(r.0.as_str());
    }
    state.audit.record(ev).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_incidents(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = crate::http::query::params_only(q.as_deref(), &["limit", "kind", "cursor"])?;
    let limit = limit_param(&params)?;
    let kind = param(&params, "kind").unwrap_or("");
    if !kind.is_empty() && crate::monitoring::incidents::Kind::parse(kind).is_none() {
        return Err(crate::http::respond::field_error(
            "kind",
            "unknown incident kind",
        ));
    }
    let cursor = param(&params, "cursor").unwrap_or("");
    if cursor.len() > 64 || !cursor.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(crate::http::respond::field_error(
            "cursor",
            "invalid cursor",
        ));
    }
    let rows = crate::store::incidents::list(&state.db, kind, cursor, limit as i64 + 1).await?;
    let more = rows.len() > limit;
    let page = rows.get(..limit).unwrap_or(&rows);
    let next = more.then(|| page.last().map(|r| r.id.clone())).flatten();
    let items: Vec<Value> = page
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "kind": r.kind,
                "ip": r.ip,
                "user_id": r.user_id,
                "details": r.details,
                "actions": r.actions,
                "created_at": crate::store::rfc3339(r.created_at),
            })
        })
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next})))
}
