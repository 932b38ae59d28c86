//! Layer 2 — API security: header and body limits, content type, and the
//! intrusion-detection layer.
//!
//! Threat: oversized headers or bodies exhausting memory, content-type
//! confusion, and injection payloads in the request's structure.
//! Guarantee: more than `limits.header_max_bytes` of headers or more than
//! `limits.header_max_count` fields -> 431; a declared body over
//! `limits.body_max_bytes` -> 413 before it is read (an undeclared one is cut
//! at the limit while read, also 413); a body on a request that is not
//! `application/json` -> 415.

pub mod validation;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, Method};

use crate::app::AppState;
use crate::config::Config;
use crate::http::ApiError;

/// API-security state.
pub struct ApiSecurity {
    pub header_max_bytes: usize,
    pub header_max_count: usize,
    pub body_max_bytes: usize,
}

impl ApiSecurity {
    pub fn new(cfg: &Config) -> ApiSecurity {
        ApiSecurity {
            header_max_bytes: cfg.limits.header_max_bytes,
            header_max_count: cfg.limits.header_max_count,
            body_max_bytes: cfg.limits.body_max_bytes,
        }
    }

    /// The structural checks, before any body byte is read.
    pub fn check_head(&self, req: &Request) -> Result<(), ApiError> {
        let headers = req.headers();
        if headers.len() > self.header_max_count {
            return Err(ApiError::HeadersTooLarge);
        }
        let bytes: usize = headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if bytes > self.header_max_bytes {
            return Err(ApiError::HeadersTooLarge);
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.body_max_bytes as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        let has_body =
            declared.is_some_and(|n| n > 0) || headers.contains_key(header::TRANSFER_ENCODING);
        let body_method = matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
        if has_body && body_method {
            let json = headers
                .get(header::CONTENT_TYPE)
                .is_some_and(crate::http::json::is_json_content_type);
            if !json {
                return Err(ApiError::UnsupportedMediaType);
            }
        }
        Ok(())
    }
}

/// The API-security layer (middleware).
pub async fn layer(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Err(e) = state.apisec.check_head(&req) {
        return e.into_response();
    }
    next.run(req).await
}
