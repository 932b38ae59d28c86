//! `/openapi.json`: the OpenAPI 3.1 description, generated from the route
//! table (every route, its permission and its error responses), so it can
//! never drift from what the router serves.

use axum::extract::State;
use http::Method;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder,
    ResponseBuilder,
};

use super::AppState;
use crate::authz::{Access, RouteSpec, Routes};
use crate::http::Json;

pub fn routes() -> Routes<AppState> {
    Routes::new().route(
        Method::GET,
        "/openapi.json",
        Access::Public,
        "this OpenAPI description",
        openapi_json,
    )
}

async fn openapi_json(State(state): State<AppState>) -> Json<OpenApi> {
    Json(describe(&state.table, &state.cfg.security.api_key_header))
}

fn error_response(desc: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(error_schema())).build(),
        )
        .build()
}

fn error_schema() -> utoipa::openapi::schema::Schema {
    serde_json::from_value(serde_json::json!({
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
    }))
    .unwrap_or_default()
}

fn method_of(m: &Method) -> HttpMethod {
    match *m {
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        _ => HttpMethod::Get,
    }
}

/// Build the description of these routes.
pub fn describe(table: &[RouteSpec], key_header: &str) -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in table {
        let mut op = OperationBuilder::new()
            .summary(Some(r.summary))
            .description(Some(format!("Needs: {}.", r.access.describe())))
            .response("200", ResponseBuilder::new().description("success").build());
        op = op
            .response("400", error_response("bad_request or validation_failed"))
            .response(
                "403",
                error_response("ip_banned or request_blocked (or forbidden)"),
            )
            .response("404", error_response("not_found"))
            .response("413", error_response("payload_too_large"))
            .response("415", error_response("unsupported_media_type"))
            .response("429", error_response("rate_limited"))
            .response("431", error_response("headers_too_large"))
            .response("500", error_response("internal"));
        if r.access != Access::Public {
            op = op
                .response("401", error_response("unauthenticated"))
                .securities(Some([
                    SecurityRequirement::new("api_key", Vec::<String>::new()),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]));
        }
        paths = paths.path(r.path, PathItem::new(method_of(&r.method), op.build()));
    }
    let components = ComponentsBuilder::new()
        .security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new(key_header))),
        )
        .security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        )
        .build();
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Frenly")
                .version(env!("CARGO_PKG_VERSION"))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components))
        .build()
}
