//! `/openapi.json`: the OpenAPI 3.1 description, generated from the route
//! table, so it can never drift from what the router serves.
//!
//! Every route contributes its method, path, permission and summary
//! ([`RouteSpec`]); its path parameters come from the `{name}` segments; its
//! body, query parameters, success responses and route-specific errors come
//! from the [`crate::authz::RouteDoc`] declared next to the route; the errors
//! every route of its kind can give (authentication, permission, bans and
//! IDS, rate limits, header and body limits, malformed input) are derived
//! here from the path, method and access. Request bodies are strict
//! (`additionalProperties: false`) where the server rejects unknown fields.
//! `scripts/api-fuzz.sh` holds the server to this description with
//! schemathesis.

use axum::extract::State;
use http::Method;
use serde_json::{json, Map, Value};

use super::AppState;
use crate::authz::{Access, RouteSpec, Routes};
use crate::config::Config;
use crate::http::Json;

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(
            Method::GET,
            "/openapi.json",
            Access::Public,
            "this OpenAPI description",
            openapi_json,
        )
        .doc(crate::authz::RouteDoc::new().ok(
            200,
            "the OpenAPI 3.1 description",
            |_| json!({"type": "object", "required": ["openapi", "paths"]}),
        ))
}

async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(describe(
        &state.table,
        &state.cfg.security.api_key_header,
        &state.cfg,
    ))
}

// ------------------------------------------------------------ schema pieces

/// A string in RFC 3339 form.
pub fn time() -> Value {
    json!({"type": "string", "format": "date-time"})
}

/// Nullable `schema`.
pub fn nullable(schema: Value) -> Value {
    json!({"anyOf": [schema, {"type": "null"}]})
}

/// `{"items": [item], "next_cursor": string|null}`.
pub fn list_of(item: Value) -> Value {
    json!({
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": item},
            "next_cursor": {"type": ["string", "null"]},
        }
    })
}

/// A list of permission names.
pub fn permission_names() -> Value {
    let names: Vec<&str> = crate::authz::Permission::ALL
        .iter()
        .map(|p| p.as_str())
        .collect();
    json!({"type": "array", "items": {"type": "string", "enum": names}})
}

/// The `limit` query parameter of a list route.
pub fn limit(max: i64) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": max})
}

/// An opaque `cursor` query parameter.
pub fn cursor(_: &Config) -> Value {
    json!({"type": "string", "maxLength": 128})
}

/// The `limit` and `cursor` parameters of a list kept whole in memory
/// (`paging::page_by_id`): a cursor is an id (32 lowercase hex digits).
pub fn id_paging(doc: crate::authz::RouteDoc) -> crate::authz::RouteDoc {
    doc.query(
        "limit",
        |_| limit(super::paging::MAX_LIMIT as i64),
        "page size (default 100)",
    )
    .query(
        "cursor",
        |_| json!({"type": "string", "pattern": "^([0-9a-f]{32})?$"}),
        "next_cursor of the previous page",
    )
}

/// The contract's error body.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "fields": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}}
            }
        }}
    })
}

// --------------------------------------------------------------- generation

fn error_response(desc: &str) -> Value {
    json!({
        "description": desc,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    })
}

/// The path parameters of `path` (`{name}` segments).
fn path_params(path: &str) -> impl Iterator<Item = &str> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
}

/// The errors every route of this kind can give, by status.
fn common_errors(r: &RouteSpec) -> Vec<(u16, String)> {
    let api = r.path.starts_with("/api/") || r.path == "/openapi.json" || r.path == "/metrics";
    let has_body = r.doc.body.is_some();
    let mut out: Vec<(u16, String)> = Vec::new();
    let mut bad = Vec::new();
    if has_body {
        bad.push("malformed JSON (bad_request) or broken input rules (validation_failed)");
    }
    if !r.doc.query.is_empty() {
        bad.push("an invalid query parameter (validation_failed)");
    }
    if r.path.contains('{') {
        bad.push("an invalid path parameter");
    }
    if !bad.is_empty() {
        out.push((400, bad.join("; ")));
    }
    out.push((
        401,
        if r.access == Access::Public {
            "unauthenticated: credentials were presented and are unknown, expired, revoked or malformed"
        } else {
            "unauthenticated: no, unknown, expired, revoked or malformed credentials"
        }
        .into(),
    ));
    let mut forbidden = vec!["request_blocked (intrusion detection)"];
    if api {
        forbidden.push("ip_banned (with Retry-After)");
    }
    if matches!(r.access, Access::Permission(_)) {
        forbidden.insert(0, "forbidden: the caller lacks the route's permission");
    }
    out.push((403, forbidden.join("; ")));
    if r.path.contains('{') {
        out.push((404, "not_found (also for another user's resources)".into()));
    }
    if matches!(r.method, Method::POST | Method::PUT | Method::PATCH) {
        out.push((
            413,
            "payload_too_large: the body is over limits.body_max_bytes".into(),
        ));
    }
    if has_body {
        out.push((
            415,
            "unsupported_media_type: the body is not application/json".into(),
        ));
    }
    if api {
        out.push((
            429,
            "rate_limited (with Retry-After and RateLimit-* headers)".into(),
        ));
    }
    out.push((
        431,
        "headers_too_large: over limits.header_max_bytes or 100 fields".into(),
    ));
    out.push((500, "internal (never with details)".into()));
    out.push((
        503,
        "unavailable: a dependency is down and the policy is to refuse".into(),
    ));
    out
}

fn operation(r: &RouteSpec, cfg: &Config) -> Value {
    let mut op = Map::new();
    op.insert("summary".into(), r.summary.into());
    op.insert(
        "description".into(),
        format!("Needs: {}.", r.access.describe()).into(),
    );
    op.insert(
        "operationId".into(),
        format!(
            "{}{}",
            r.method.as_str().to_ascii_lowercase(),
            r.path.replace(['{', '}'], "").replace(['/', '.'], "_")
        )
        .into(),
    );
    op.insert(
        "x-permission".into(),
        match r.access {
            Access::Public => Value::Null,
            Access::Authenticated => "authenticated".into(),
            Access::Permission(p) => p.as_str().into(),
        },
    );
    let mut params: Vec<Value> = path_params(r.path)
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
        })
        .collect();
    params.extend(r.doc.query.iter().map(|(name, schema, desc)| {
        json!({"name": name, "in": "query", "required": false,
               "description": desc, "schema": schema(cfg)})
    }));
    if !params.is_empty() {
        op.insert("parameters".into(), params.into());
    }
    if let Some(body) = r.doc.body {
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": {"application/json": {"schema": body(cfg)}}}),
        );
    }
    let mut responses = Map::new();
    if r.doc.ok.is_empty() {
        responses.insert("200".into(), json!({"description": "success"}));
    }
    for (status, desc, schema) in &r.doc.ok {
        let resp = match schema {
            Some(s) => json!({"description": desc,
                              "content": {"application/json": {"schema": s(cfg)}}}),
            None => json!({"description": desc}),
        };
        responses.insert(status.to_string(), resp);
    }
    let mut errors = common_errors(r);
    for (status, desc) in &r.doc.errors {
        match errors.iter_mut().find(|(s, _)| s == status) {
            Some((_, d)) => {
                d.push_str("; ");
                d.push_str(desc);
            }
            None => errors.push((*status, (*desc).to_string())),
        }
    }
    errors.sort_by_key(|(s, _)| *s);
    for (status, desc) in errors {
        responses.insert(status.to_string(), error_response(&desc));
    }
    op.insert("responses".into(), responses.into());
    if r.access != Access::Public {
        op.insert("security".into(), json!([{"api_key": []}, {"bearer": []}]));
    }
    op.into()
}

/// Build the description of these routes.
pub fn describe(table: &[RouteSpec], key_header: &str, cfg: &Config) -> Value {
    let mut paths = Map::new();
    for r in table {
        let item = paths
            .entry(r.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(r.method.as_str().to_ascii_lowercase(), operation(r, cfg));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Frenly",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The task API of an AI agent, with every layer of a defence-in-depth guide built in. Every error has the shape of components.schemas.Error.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": error_schema()},
            "securitySchemes": {
                "api_key": {"type": "apiKey", "in": "header", "name": key_header},
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": "a Frenly JWT, or an API key (a token without a '.')"},
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Every route is described, with its permission, its path parameters,
    /// a success response and the errors of its kind; bodies are described
    /// wherever a route takes one.
    #[test]
    fn every_route_is_fully_described() {
        let cfg = crate::config::load(&crate::config::Source::default()).unwrap();
        let (_, table) = crate::app::routes().into_parts();
        let doc = describe(&table, "X-API-Key", &cfg);
        for r in &table {
            let op = &doc["paths"][r.path][r.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} missing", r.method, r.path);
            assert!(op["description"].as_str().unwrap().starts_with("Needs:"));
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2') || k == "101"),
                "{} {}: no success response",
                r.method,
                r.path
            );
            for must in ["403", "431", "500"] {
                assert!(
                    responses.contains_key(must),
                    "{} {}: {must}",
                    r.method,
                    r.path
                );
            }
            if r.access != Access::Public {
                assert!(responses.contains_key("401"));
            }
            for p in path_params(r.path) {
                assert!(
                    op["parameters"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["name"] == p && x["in"] == "path"),
                    "{} {}: path parameter {p}",
                    r.method,
                    r.path
                );
            }
            if matches!(r.method, Method::PATCH)
                || (r.method == Method::POST && r.doc.body.is_none())
            {
                // PATCH always takes a body; a POST without one must say so
                // by declaring none and still list 413.
                assert!(responses.contains_key("413"));
            }
            if r.method == Method::PATCH {
                assert!(r.doc.body.is_some(), "{} {}: body", r.method, r.path);
            }
            if r.doc.body.is_some() {
                assert!(responses.contains_key("415") && responses.contains_key("400"));
            }
        }
    }
}
