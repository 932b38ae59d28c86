//! `GET /metrics` (admin on the main listener; see [`metrics_router`] for the
//! separate, unauthenticated listener) and `GET /api/audit` (admin).
//!
//! Threat: metrics and audit events tell an attacker what is watched and who
//! did what. Guarantee: both routes need the `admin` permission; the
//! separate metrics listener (`metrics.listen`) has no authentication and
//! must be bound to loopback or a private interface (`frenly check` fails a
//! public one). `/api/audit` filters are validated (a bad value is 400, an
//! unknown parameter too, so a typo never silently widens the result).

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use axum::Router;
use http::{header, HeaderValue, Method};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::authz::{Access, Permission, RouteDoc, Routes};
use crate::http::{ApiError, FieldErrors, Json};
use crate::store::audit::AuditFilter;

/// The OpenMetrics content type (what prometheus-client's encoder writes),
/// served to a scraper whose `Accept` names it (Prometheus does).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The Prometheus text format (0.0.4): the contract's "Prometheus text
/// format", served unless `Accept` asks for OpenMetrics.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Largest page of `/api/audit`.
pub const AUDIT_MAX_LIMIT: i64 = 1000;
const AUDIT_DEFAULT_LIMIT: i64 = 100;

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(
            Method::GET,
            "/metrics",
            Access::Permission(Permission::Admin),
            "Prometheus metrics (Prometheus text; OpenMetrics on request)",
            metrics,
        )
        .doc(RouteDoc::new().empty(200, "the metrics, in the Prometheus text format (0.0.4), or OpenMetrics when Accept asks for application/openmetrics-text"))
        .route(
            Method::GET,
            "/api/audit",
            Access::Permission(Permission::Admin),
            "audit events, filterable by type, since, user_id, ip",
            audit_list,
        )
        .doc(
            RouteDoc::new()
                .query("type", |_| json!({"type": "string", "pattern": "^[a-z_]{1,64}$"}), "only events of this type")
                .query("since", |_| json!({"type": "string", "format": "date-time"}), "only events at or after this time")
                .query("user_id", |_| json!({"type": "string", "minLength": 1, "maxLength": 128}), "only events of this user")
                .query("ip", |_| json!({"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]}), "only events from this address")
                .query("limit", |_| crate::app::openapi::limit(AUDIT_MAX_LIMIT), "page size (default 100)")
                .query("cursor", |_| json!({"type": "string", "pattern": "^[0-9]{1,19}$"}), "next_cursor of the previous page")
                .ok(200, "audit events, newest first", |_| {
                    crate::app::openapi::list_of(json!({
                        "type": "object",
                        "required": ["ts", "event_type"],
                        "properties": {"ts": crate::app::openapi::time(), "event_type": {"type": "string"}}
                    }))
                }),
        )
}

/// The router of the separate metrics listener: `GET /metrics`, nothing else,
/// no authentication.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// Refresh the gauges that are read at scrape time, then encode.
pub fn render_metrics(state: &AppState) -> String {
    state
        .metrics
        .audit_queue_depth
        .set(state.audit.depth() as i64);
    state.metrics.render()
}

async fn metrics(State(state): State<AppState>, headers: http::HeaderMap) -> Response {
    let openmetrics = wants_openmetrics(&headers);
    let text = render_metrics(&state);
    let (body, content_type) = if openmetrics {
        (text, METRICS_CONTENT_TYPE)
    } else {
        (to_prometheus_text(&text), PROMETHEUS_CONTENT_TYPE)
    };
    let mut resp = body.into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    resp
}

/// Does `Accept` name `application/openmetrics-text` (with a non-zero
/// quality)? Prometheus asks for it first; other clients get the
/// Prometheus text format.
fn wants_openmetrics(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|range| {
            let mut parts = range.split(';');
            let mime = parts.next().unwrap_or("").trim();
            let zero = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, q)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && q.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            mime.eq_ignore_ascii_case("application/openmetrics-text") && !zero
        })
}

/// OpenMetrics text (prometheus-client's encoding) as the Prometheus text
/// format 0.0.4: no `# EOF` or `# UNIT` lines, a counter's `# HELP` and
/// `# TYPE` name its samples (`x_total`, where OpenMetrics names the family
/// `x`), `unknown` is `untyped`, and no exemplars.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            out.push_str(prefix);
            out.push_str(name);
            if counters.contains(name) && !name.ends_with("_total") {
                out.push_str("_total");
            }
            out.push(' ');
            out.push_str(if prefix == "# TYPE " && tail == "unknown" {
                "untyped"
            } else {
                tail
            });
        } else {
            // a sample; an exemplar follows ` # ` after the value
            out.push_str(line.split_once(" # ").map_or(line, |(sample, _)| sample));
        }
        out.push('\n');
    }
    out
}

/// Parse and check the query of `/api/audit`.
pub fn parse_audit_query(query: Option<&str>) -> Result<AuditFilter, ApiError> {
    let pairs = crate::http::query::params(query)?;
    let mut f = AuditFilter {
        limit: AUDIT_DEFAULT_LIMIT,
        ..AuditFilter::default()
    };
    let mut errors: FieldErrors = BTreeMap::new();
    let mut err = |k: &str, m: &str| errors.entry(k.to_string()).or_default().push(m.into());
    for (k, v) in pairs {
        match k.as_str() {
            "type" => {
                if (1..=64).contains(&v.len())
                    && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    f.event_type = Some(v);
                } else {
                    err("type", "an event type: 1..64 of a-z and _");
                }
            }
            "since" => match chrono::DateTime::parse_from_rfc3339(&v) {
                Ok(t) => f.since_ms = Some(t.timestamp_millis()),
                Err(_) => err("since", "an RFC 3339 time, e.g. 2025-01-31T12:00:00Z"),
            },
            "user_id" => {
                if (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()) {
                    f.user_id = Some(v);
                } else {
                    err("user_id", "1..128 printable characters");
                }
            }
            // as events record it: an IPv4 client is `1.2.3.4`, also when
            // asked for as `::ffff:1.2.3.4`
            "ip" => match v.parse::<std::net::IpAddr>() {
                Ok(ip) => f.ip = Some(ip.to_canonical().to_string()),
                Err(_) => err("ip", "an IPv4 or IPv6 address"),
            },
            "limit" => match v.parse::<i64>() {
                Ok(n) if (1..=AUDIT_MAX_LIMIT).contains(&n) => f.limit = n,
                _ => err("limit", "an integer from 1 to 1000"),
            },
            "cursor" => match v.parse::<i64>() {
                Ok(n) if n > 0 => f.before_seq = Some(n),
                _ => err("cursor", "a cursor returned as next_cursor"),
            },
            other => err(other, "unknown parameter"),
        }
    }
    if errors.is_empty() {
        Ok(f)
    } else {
        Err(ApiError::Validation(errors))
    }
}

async fn audit_list(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut f = parse_audit_query(query.as_deref())?;
    let limit = f.limit;
    f.limit = limit + 1;
    let mut rows = crate::store::audit::list(&state.db, &f).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|(seq, _)| seq.to_string())
    } else {
        None
    };
    let items: Vec<Value> = rows
        .iter()
        .map(|(_, line)| serde_json::from_str(line).unwrap_or(Value::Null))
        .collect();
    Ok(Json(json!({"items": items, "next_cursor": next_cursor})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn audit_query_filters() {
        let f = parse_audit_query(Some(
            "type=login_attempt&since=2025-01-01T00:00:00Z&ip=10.0.0.1&limit=5&cursor=9",
        ))
        .unwrap();
        assert_eq!(f.event_type.as_deref(), Some("login_attempt"));
        assert_eq!(f.since_ms, Some(1_735_689_600_000));
        assert_eq!(f.limit, 5);
        assert_eq!(f.before_seq, Some(9));
        for bad in [
            "since=yesterday",
            "limit=0",
            "limit=1001",
            "limit=x",
            "ip=1.2.3",
            "type=DROP%20TABLE",
            "cursor=-1",
            "bogus=1",
            "type=a&type=b",
        ] {
            assert!(
                matches!(parse_audit_query(Some(bad)), Err(ApiError::Validation(_))),
                "{bad}"
            );
        }
        assert_eq!(parse_audit_query(None).unwrap().limit, 100);
        // an IPv4 address in its IPv6-mapped spelling is the address events carry
        let f = parse_audit_query(Some("ip=%3A%3Affff%3A127.0.0.1")).unwrap();
        assert_eq!(f.ip.as_deref(), Some("127.0.0.1"));
    }
}
