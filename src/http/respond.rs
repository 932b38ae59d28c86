//! The one place where failures become HTTP responses.
//!
//! Threat: error responses that leak internals (SQL, paths, stack traces) or
//! that differ in shape, so clients special-case them. Guarantee: every error
//! Frenly answers is an [`ApiError`], rendered here as
//! `{"error": {"code", "message", "fields"?}}` with the contract's status and
//! headers; `Internal` never carries details (they go to the log only); a
//! `validation_failed` lists at most [`MAX_LISTED_FIELDS`] fields (the count
//! is in the message), so its size never follows the attacker's.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

/// Field name -> every broken rule for it.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Where a failure comes from (pingora's `ErrorSource`): the peer, an upstream
/// in gateway mode, or Frenly itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Upstream,
    Internal,
}

/// `Retry-After` of a 503: a few seconds, the time a restarted database or
/// Redis usually takes.
pub const UNAVAILABLE_RETRY_SECONDS: u64 = 5;

/// Every error response of the contract.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// Input rules broken (client).
    #[error("validation failed")]
    Validation(FieldErrors),
    /// Malformed request (client).
    #[error("{0}")]
    BadRequest(String),
    /// No, unknown, expired, revoked or malformed credentials (client).
    #[error("authentication required")]
    Unauthenticated,
    /// Authenticated but lacking the permission (client).
    #[error("permission denied")]
    Forbidden,
    /// The intrusion-detection layer blocked the request (client).
    #[error("request blocked")]
    RequestBlocked { family: String, request_id: String },
    /// The client address is banned (client).
    #[error("address banned")]
    IpBanned { retry_after: u64 },
    /// Missing, or not the caller's (client).
    #[error("not found")]
    NotFound,
    /// Method not allowed on this route (client).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// State conflict (client).
    #[error("{0}")]
    Conflict(String),
    /// The request took longer than allowed (client).
    #[error("request timeout")]
    RequestTimeout,
    /// Body over the configured limit (client).
    #[error("payload too large")]
    PayloadTooLarge,
    /// Body-carrying request that is not JSON (client).
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A body with a `Content-Encoding` other than `identity` (client): it
    /// would be inspected as the encoded bytes but read decoded behind us.
    #[error("unsupported content encoding")]
    EncodedBody,
    /// Rate limit hit (client).
    #[error("rate limited")]
    RateLimited(RateLimitInfo),
    /// Headers over the configured limit (client).
    #[error("headers too large")]
    HeadersTooLarge,
    /// Gateway: upstream refused or failed (upstream).
    #[error("bad gateway")]
    BadGateway,
    /// A dependency is down and the policy is to refuse (internal).
    #[error("service unavailable")]
    Unavailable,
    /// The server-wide budget of buffered request bodies is spent
    /// (`limits.body_budget_bytes`): 503 `unavailable` with `Retry-After`.
    #[error("request body budget spent")]
    Busy,
    /// Gateway: upstream too slow (upstream).
    #[error("gateway timeout")]
    GatewayTimeout,
    /// A bug or an unexpected failure (internal); details are logged, never sent.
    #[error("internal error")]
    Internal,
}

/// The figures of a rate-limit decision, for the `RateLimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the window frees a slot.
    pub reset: u64,
}

/// `RateLimit-Limit` (names built once: a `&str` name is parsed on every insert).
pub const RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("ratelimit-limit");
/// `RateLimit-Remaining`.
pub const RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("ratelimit-remaining");
/// `RateLimit-Reset`.
pub const RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("ratelimit-reset");

impl RateLimitInfo {
    /// Write the `RateLimit-*` headers.
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        headers.insert(RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(self.reset));
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fields: Option<Listed<'a>>,
}

/// Most fields a `validation_failed` body lists: a request naming thousands
/// of unknown fields (or query parameters) would otherwise get every name
/// echoed back, a response several times the request's size.
pub const MAX_LISTED_FIELDS: usize = 32;

/// The first [`MAX_LISTED_FIELDS`] of a field-error map, in its order.
struct Listed<'a>(&'a FieldErrors);

impl Serialize for Listed<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().take(MAX_LISTED_FIELDS))
    }
}

impl ApiError {
    /// The contract's status.
    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            Validation(_) | BadRequest(_) => StatusCode::BAD_REQUEST,
            Unauthenticated => StatusCode::UNAUTHORIZED,
            Forbidden | RequestBlocked { .. } | IpBanned { .. } => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Conflict(_) => StatusCode::CONFLICT,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType | EncodedBody => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            BadGateway => StatusCode::BAD_GATEWAY,
            Unavailable | Busy => StatusCode::SERVICE_UNAVAILABLE,
            GatewayTimeout => StatusCode::GATEWAY_TIMEOUT,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The contract's machine-readable code.
    pub fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            Validation(_) => "validation_failed",
            BadRequest(_) => "bad_request",
            Unauthenticated => "unauthenticated",
            Forbidden => "forbidden",
            RequestBlocked { .. } => "request_blocked",
            IpBanned { .. } => "ip_banned",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            Conflict(_) => "conflict",
            RequestTimeout => "request_timeout",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType | EncodedBody => "unsupported_media_type",
            RateLimited(_) => "rate_limited",
            HeadersTooLarge => "headers_too_large",
            BadGateway => "bad_gateway",
            Unavailable | Busy => "unavailable",
            GatewayTimeout => "gateway_timeout",
            Internal => "internal",
        }
    }

    /// The contract error for a bare status that some library produced
    /// without going through [`ApiError`] (see `envelope::into_contract`):
    /// the same status where the contract has one, otherwise 400 for a
    /// client error and 500 for anything else.
    pub fn from_status(status: StatusCode) -> ApiError {
        match status.as_u16() {
            401 => ApiError::Unauthenticated,
            403 => ApiError::Forbidden,
            404 => ApiError::NotFound,
            405 => ApiError::MethodNotAllowed,
            408 => ApiError::RequestTimeout,
            409 => ApiError::Conflict("the request conflicts with the resource's state".into()),
            413 => ApiError::PayloadTooLarge,
            415 => ApiError::UnsupportedMediaType,
            431 => ApiError::HeadersTooLarge,
            502 => ApiError::BadGateway,
            503 => ApiError::Unavailable,
            504 => ApiError::GatewayTimeout,
            400..=499 => ApiError::BadRequest("the request could not be processed".into()),
            _ => ApiError::Internal,
        }
    }

    /// The JSON body: `{"error": {"code", "message", "fields"?}}`.
    pub fn body_bytes(&self) -> Vec<u8> {
        let fields = match self {
            ApiError::Validation(f) => Some(Listed(f)),
            _ => None,
        };
        let body = Body {
            error: Inner {
                code: self.code(),
                message: self.message(),
                fields,
            },
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"internal error"}}"#.to_vec()
        })
    }

    /// Whose fault it is.
    pub fn source(&self) -> ErrorSource {
        match self {
            ApiError::BadGateway | ApiError::GatewayTimeout => ErrorSource::Upstream,
            ApiError::Unavailable | ApiError::Busy | ApiError::Internal => ErrorSource::Internal,
            _ => ErrorSource::Client,
        }
    }

    fn message(&self) -> String {
        use ApiError::*;
        match self {
            Validation(f) if f.len() > MAX_LISTED_FIELDS => format!(
                "the request failed validation ({} fields; the first {MAX_LISTED_FIELDS} are listed)",
                f.len()
            ),
            Validation(_) => "the request failed validation".into(),
            BadRequest(m) => m.clone(),
            Unauthenticated => "valid credentials are required".into(),
            Forbidden => "you lack the permission this route needs".into(),
            RequestBlocked { family, request_id } => format!(
                "request blocked by intrusion detection (rule family: {family}, request id: {request_id})"
            ),
            IpBanned { retry_after } => {
                format!("this address is banned; retry after {retry_after} s")
            }
            NotFound => "no such resource".into(),
            MethodNotAllowed => "method not allowed on this route".into(),
            Conflict(m) => m.clone(),
            RequestTimeout => "the request took too long".into(),
            PayloadTooLarge => "the body is over the configured limit".into(),
            UnsupportedMediaType => "request bodies must be application/json, in UTF-8".into(),
            EncodedBody => {
                "request bodies must not be compressed (no Content-Encoding but identity)".into()
            }
            RateLimited(i) => format!("rate limit exceeded; retry after {} s", i.reset),
            HeadersTooLarge => "the request headers are over the configured limit".into(),
            BadGateway => "the upstream service failed".into(),
            Unavailable => "a dependency is unavailable; try again later".into(),
            Busy => "the server holds as many request bodies as it may; try again later".into(),
            GatewayTimeout => "the upstream service did not answer in time".into(),
            Internal => "internal error".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body_bytes()).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match &self {
            ApiError::Unauthenticated => {
                h.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"frenly\", ApiKey realm=\"frenly\""),
                );
            }
            ApiError::IpBanned { retry_after } => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            // RFC 9110 12.5.3: say which content codings are accepted
            ApiError::EncodedBody => {
                h.insert(
                    header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
            ApiError::RateLimited(info) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(info.reset.max(1)));
                info.apply(h);
            }
            // RFC 9110 15.6.4: a dependency (the database, Redis under
            // fail_closed) is down; a client's backoff has a hint
            ApiError::Unavailable | ApiError::Busy => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(UNAVAILABLE_RETRY_SECONDS),
                );
            }
            _ => {}
        }
        resp.extensions_mut().insert(self);
        resp
    }
}

/// Anything a store or internal component fails with: logged, answered as 500.
pub fn internal<E: std::fmt::Display>(context: &'static str) -> impl FnOnce(E) -> ApiError {
    move |e| {
        tracing::error!(error = %e, "{context}");
        ApiError::Internal
    }
}

/// Build a validation error for one field.
pub fn field_error(field: &str, message: impl Into<String>) -> ApiError {
    let mut f = FieldErrors::new();
    f.insert(field.to_string(), vec![message.into()]);
    ApiError::Validation(f)
}
