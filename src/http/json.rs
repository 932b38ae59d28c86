//! A JSON body extractor whose rejections are contract errors.
//!
//! Threat: malformed, oversized, deeply nested or mistyped bodies reaching a
//! handler, or axum's plain-text rejections escaping the error shape.
//! Guarantee: `Json<T>` yields a `T` or an [`ApiError`]: 415 for a body that is
//! not `application/json`, 413 over the body limit, 400 for invalid UTF-8,
//! syntax, nesting deeper than serde_json's recursion limit (128) and type
//! mismatches (the message names the field, never echoes a value).

use axum::extract::{FromRequest, Request};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ApiError;

/// JSON request body (extractor) or response body (responder).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

/// Does this `Content-Type` name JSON (`application/json`, optionally with
/// parameters, or an `application/*+json` type)?
pub fn is_json_content_type(value: &http::HeaderValue) -> bool {
    let Ok(s) = value.to_str() else { return false };
    let mime = s
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let ok = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(is_json_content_type);
        if !ok {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|rej| match rej.status() {
                http::StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
                _ => ApiError::BadRequest("the request body could not be read".into()),
            })?;
        parse(&bytes).map(Json)
    }
}

/// Parse a JSON body into `T`, with contract errors.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if std::str::from_utf8(bytes).is_err() {
        return Err(ApiError::BadRequest("the body is not valid UTF-8".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let msg = match e.classify() {
            serde_json::error::Category::Data => {
                format!("invalid JSON body: {}", strip_position(&e))
            }
            serde_json::error::Category::Eof => "invalid JSON body: unexpected end of input".into(),
            _ => format!("malformed JSON body: {}", strip_position(&e)),
        };
        ApiError::BadRequest(msg)
    })
}

fn strip_position(e: &serde_json::Error) -> String {
    let s = e.to_string();
    match s.find(" at line ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
