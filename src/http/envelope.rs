//! The request envelope: the outermost layer.
//!
//! Threat: responses that a browser or cache mishandles (sniffed content
//! types, framed pages, cached credentials), untraceable requests, and a panic
//! in a handler tearing down a connection or leaking a backtrace.
//! Guarantee: every response — errors included, whatever layer produced them —
//! carries `X-Request-Id` (a sane incoming one echoed, otherwise generated),
//! `X-Content-Type-Options: nosniff`, `Content-Security-Policy`,
//! `Referrer-Policy`, `X-Frame-Options`, `Cache-Control: no-store`, and HSTS
//! under TLS. A panic becomes a 500 `internal` without details (the panic is
//! logged), and the server keeps serving. An error response that did not
//! come from an [`ApiError`] (an extractor's or a library's own rejection,
//! with its `text/plain` body) is rewritten into the contract's error shape
//! ([`into_contract`]), so no client ever has to special-case one.
//!
//! A response forwarded from a gateway upstream (marked [`Forwarded`])
//! keeps the upstream's own `Content-Security-Policy`, `Cache-Control`,
//! `X-Frame-Options`, `Referrer-Policy` and HSTS: the upstream knows what it
//! serves (a UI with its own CSP, cacheable assets). Frenly's values fill in
//! whichever of them the upstream did not set; `nosniff` and `X-Request-Id`
//! are always Frenly's.

use std::sync::Arc;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue};

use super::ApiError;

/// Marks a response relayed from a gateway upstream (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Forwarded;

/// The request's id, as echoed in `X-Request-Id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Is an incoming request id sane: 1..128 characters of `[A-Za-z0-9._-]`,
/// holding nothing that looks like a Frenly API key, a key's body or a JWT
/// (`monitoring::audit::holds_credential`: a client that put its key there
/// would have it echoed and written to the audit log, whose `request_id`
/// is not redacted)?
pub fn is_sane_request_id(v: &[u8]) -> bool {
    (1..=128).contains(&v.len())
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && std::str::from_utf8(v).is_ok_and(|s| !crate::monitoring::audit::holds_credential(s))
}

/// Options of the envelope.
#[derive(Debug, Clone, Copy)]
pub struct Envelope {
    pub tls: bool,
}

/// The envelope as middleware (`axum::middleware::from_fn_with_state`).
pub async fn envelope(
    axum::extract::State(opts): axum::extract::State<Envelope>,
    mut req: Request,
    next: Next,
) -> Response {
    // two header lines are one value "a, b" (RFC 9110), never sane: the
    // first line alone was echoed (probe L)
    let mut sent = req.headers().get_all(&X_REQUEST_ID).iter();
    let id = match (sent.next(), sent.next()) {
        (Some(v), None) if is_sane_request_id(v.as_bytes()) => {
            Arc::<str>::from(v.to_str().unwrap_or_default())
        }
        _ => Arc::<str>::from(new_request_id()),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let mut resp = next.run(req).await;
    into_contract(&mut resp);
    decorate(&mut resp, &id, opts.tls);
    resp
}

/// A fresh request id: a random (v4) UUID from the thread's CSPRNG (no
/// system call per request, still unguessable), 32 hex digits.
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .simple()
        .to_string()
}

/// Rewrite an error response that is not an [`ApiError`]'s (nor relayed
/// from a gateway upstream, whose errors are the upstream's to shape) into
/// the contract's `{"error": {...}}` shape, keeping its status where the
/// contract has it and its headers (`Allow`, `Retry-After`, ...) but not its
/// body, which may name internals.
pub fn into_contract(resp: &mut Response) {
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error())
        || resp.extensions().get::<ApiError>().is_some()
        || resp.extensions().get::<Forwarded>().is_some()
    {
        return;
    }
    tracing::debug!(
        status = status.as_u16(),
        "error response rewritten into the contract's shape"
    );
    let mut fixed = ApiError::from_status(status).into_response();
    let own: Vec<HeaderName> = fixed.headers().keys().cloned().collect();
    // The body is replaced: what described the old one goes with it.
    let body_headers = [
        http::header::CONTENT_LENGTH,
        http::header::CONTENT_ENCODING,
        http::header::TRANSFER_ENCODING,
    ];
    for (name, value) in resp.headers() {
        if !body_headers.contains(name) && !own.contains(name) {
            fixed.headers_mut().append(name.clone(), value.clone());
        }
    }
    *resp = fixed;
}

/// Turn a caught panic into a 500 without details.
pub fn panic_response(err: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| err.downcast_ref::<&str>().copied())
        .unwrap_or("(non-string panic)");
    tracing::error!(panic = detail, "handler panicked");
    ApiError::Internal.into_response()
}

fn decorate(resp: &mut Response, id: &str, tls: bool) {
    let forwarded = resp.extensions().get::<Forwarded>().is_some();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(X_REQUEST_ID, v);
    }
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    for (name, value) in policy_headers(tls) {
        if forwarded {
            h.entry(name).or_insert(HeaderValue::from_static(value));
        } else {
            h.insert(name, HeaderValue::from_static(value));
        }
    }
}

/// The policy headers every Frenly response carries besides `nosniff` and
/// `X-Request-Id` (HSTS only under TLS). Every API response is either
/// authenticated or an error about it: none may be stored by a cache.
pub fn policy_headers(tls: bool) -> impl Iterator<Item = (HeaderName, &'static str)> {
    [
        (
            http::header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; frame-ancestors 'none'",
        ),
        (http::header::REFERRER_POLICY, "no-referrer"),
        (http::header::X_FRAME_OPTIONS, "DENY"),
        (http::header::CACHE_CONTROL, "no-store"),
        (
            http::header::STRICT_TRANSPORT_SECURITY,
            "max-age=31536000; includeSubDomains",
        ),
    ]
    .into_iter()
    .filter(move |(name, _)| tls || name != http::header::STRICT_TRANSPORT_SECURITY)
}
