//! Layer 2 — API security: header and body limits, content type, and the
//! intrusion-detection layer.
//!
//! Threat: oversized headers or bodies exhausting memory, content-type
//! confusion, and injection payloads in the request's structure.
//! Guarantee: more than `limits.header_max_bytes` of headers or more than
//! `limits.header_max_count` fields -> 431; two `Host` headers, one that
//! is not a plain `host[:port]`, or none on an HTTP/1.1 request -> 400; a
//! `Transfer-Encoding` other than one `chunked` -> 400; a
//! declared body over `limits.body_max_bytes` -> 413 before it is read (an
//! undeclared one is cut at the limit while read, also 413); a body with a
//! `Content-Encoding` other than `identity` -> 415 (it is never decoded
//! here, so the IDS would see only the coded bytes of what an upstream may
//! decode: an evasion); a body on a request that is not `application/json`
//! in UTF-8 -> 415 (on a gateway route whatever the method: a GET's body is
//! forwarded too); then the intrusion-detection layer ([`ids`]) inspects
//! the request's structure, body included (buffered up to
//! `limits.body_max_bytes`, then handed on to the handlers unchanged).
//!
//! Gateway routes (`crate::gateway`) are streamed, not buffered: their
//! declared body limit is the route's (`body_max_bytes`, else
//! `limits.body_max_bytes`); only the first `ids.inspect_window_bytes` of the
//! body are buffered and inspected, then replayed and followed by the rest
//! of the stream, which the gateway counts against the same limit.

pub mod validation;

pub mod budget;

pub mod ids;

use axum::body::Body;
use axum::extract::Request;
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
    pub ids: ids::Ids,
    /// Bytes held in buffered bodies, server-wide (`limits.body_budget_bytes`).
    pub budget: std::sync::Arc<budget::BodyBudget>,
    body_timeout: std::time::Duration,
}

impl ApiSecurity {
    /// `budget_used`: the metric that counts the bytes held in buffered bodies.
    pub fn new(cfg: &Config, budget_used: prometheus_client::metrics::gauge::Gauge) -> ApiSecurity {
        ApiSecurity {
            header_max_bytes: cfg.limits.header_max_bytes,
            header_max_count: cfg.limits.header_max_count,
            body_max_bytes: cfg.limits.body_max_bytes,
            ids: ids::Ids::new(&cfg.ids, &cfg.security.api_key_header, &cfg.gateway.routes),
            budget: budget::BodyBudget::new(
                cfg.limits.body_budget(),
                cfg.limits.body_budget_per_address(),
                budget_used,
            ),
            body_timeout: std::time::Duration::from_secs(
                cfg.network.request_timeout_seconds.max(1),
            ),
        }
    }

    /// The structural checks, before any body byte is read.
    pub fn check_head(&self, req: &Request) -> Result<(), ApiError> {
        self.check_head_limit(req, self.body_max_bytes, false)
    }

    /// [`ApiSecurity::check_head`] with the body limit of the request's
    /// route; `gateway`: the route forwards the body whatever the method,
    /// so a body on any method must be JSON (a GET's multipart upload would
    /// reach the upstream otherwise).
    pub fn check_head_limit(
        &self,
        req: &Request,
        body_max_bytes: usize,
        gateway: bool,
    ) -> Result<(), ApiError> {
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
        if !host_is_sound(req.version(), req.uri(), headers) {
            return Err(ApiError::BadRequest(
                "the Host header must appear once, as host[:port]".into(),
            ));
        }
        if !transfer_coding_is_sound(headers) {
            return Err(ApiError::BadRequest(
                "the only transfer coding accepted is chunked, once".into(),
            ));
        }
        if headers
            .get_all(header::CONTENT_TYPE)
            .iter()
            .nth(1)
            .is_some()
        {
            // RFC 9110 8.3: one media type per message. With two, this
            // check would read the first (JSON) while an upstream behind a
            // gateway route may read the last (a form): a body that is not
            // JSON would pass the JSON-only rule.
            return Err(ApiError::BadRequest(
                "the Content-Type header must appear at most once".into(),
            ));
        }
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > body_max_bytes as u64) {
            return Err(ApiError::PayloadTooLarge);
        }
        // HTTP/2 needs neither Content-Length nor Transfer-Encoding for a
        // body: without a declared length, ask the body itself.
        use http_body::Body as _;
        let has_body = declared.is_some_and(|n| n > 0)
            || headers.contains_key(header::TRANSFER_ENCODING)
            || (declared.is_none() && !req.body().is_end_stream());
        if has_body && is_encoded(headers) {
            return Err(ApiError::EncodedBody);
        }
        let body_method =
            gateway || matches!(*req.method(), Method::POST | Method::PUT | Method::PATCH);
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

/// At most one `Host`, and that one a plain `host[:port]` (RFC 9112 3.2
/// answers anything else with 400): two hosts, or one carrying blanks, a
/// userinfo (`u@evil.example`) or a path, are what Host-header injection
/// sends to whatever builds links from it, such as the `X-Forwarded-Host`
/// a gateway route hands its upstream. An HTTP/1.1 request must carry one
/// (RFC 9112 3.2: "MUST respond with a 400"); HTTP/1.0 may go without, and
/// HTTP/2 carries `:authority` instead. The request target's authority
/// (HTTP/2's `:authority`, an HTTP/1 absolute-form target) is held to the
/// same rule, and a `Host` beside it must name the same authority (RFC 9113
/// 8.3.1 for HTTP/2; on HTTP/1 Frenly refuses what RFC 9112 3.2.2 resolves
/// for the target, as readers disagree). A port must fit in 16 bits.
fn host_is_sound(version: http::Version, uri: &http::Uri, headers: &http::HeaderMap) -> bool {
    let plain = |a: &http::uri::Authority| plain_authority(a.as_str());
    if uri.authority().is_some_and(|a| !plain(a)) {
        return false;
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    let Some(host) = hosts.next() else {
        return version != http::Version::HTTP_11;
    };
    let Some(host) = host
        .to_str()
        .ok()
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
    else {
        return false;
    };
    // HTTP/2's `:authority`, or an HTTP/1 absolute-form target, that names
    // another authority than `Host`: which one is meant depends on who reads
    // it (RFC 9112 3.2.2 has the target win, much software reads `Host`)
    if uri
        .authority()
        .is_some_and(|a| !a.as_str().eq_ignore_ascii_case(host.as_str()))
    {
        return false;
    }
    hosts.next().is_none() && plain(&host)
}

/// One plain `host[:port]`: a reg-name or IPv4 address of unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`), or an `[IPv6]` literal; a port of
/// digits without a leading zero, at most 65535. Anything else (a comma
/// that makes `X-Forwarded-Host` a list, `;`, quotes, `*`, a userinfo)
/// is not a host some reader downstream agrees on.
fn plain_authority(s: &str) -> bool {
    let port_ok = |p: &str| {
        !p.is_empty()
            && p.bytes().all(|b| b.is_ascii_digit())
            && !(p.len() > 1 && p.starts_with('0'))
            && p.parse::<u16>().is_ok()
    };
    if let Some(rest) = s.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        let v6_ok = !v6.is_empty()
            && v6
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        return v6_ok && (after.is_empty() || after.strip_prefix(':').is_some_and(port_ok));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        && port.is_none_or(port_ok)
}

/// No `Transfer-Encoding`, or one field that is exactly `chunked`. hyper
/// reads any list that ends in `chunked` (`gzip, chunked`, or two fields)
/// as chunked and passes the other codings on undecoded: the IDS would
/// inspect coded bytes that something further on might decode, the same
/// evasion as a content coding; `chunked` twice is malformed (RFC 9112
/// 6.1: a sender must not apply it more than once).
fn transfer_coding_is_sound(headers: &http::HeaderMap) -> bool {
    let mut codings = headers.get_all(header::TRANSFER_ENCODING).iter();
    match codings.next() {
        None => true,
        Some(v) => {
            codings.next().is_none()
                && v.to_str()
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
        }
    }
}

/// Does the request declare a content coding other than `identity`? Its
/// body would be inspected (and validated) as the coded bytes while the
/// application behind a gateway route may decode it: refused, whatever the
/// coding is, since none is decoded here.
fn is_encoded(headers: &http::HeaderMap) -> bool {
    headers.get_all(header::CONTENT_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |v| {
            v.split(',')
                .map(str::trim)
                .any(|c| !c.is_empty() && !c.eq_ignore_ascii_case("identity"))
        })
    })
}

/// The body limit of the route at `path`: a gateway route's own
/// `body_max_bytes`, else `limits.body_max_bytes`.
pub fn body_limit(state: &AppState, path: &str) -> usize {
    gateway_body_limit(state, path).unwrap_or(state.apisec.body_max_bytes)
}

fn gateway_body_limit(state: &AppState, path: &str) -> Option<usize> {
    state.gateway.route_for(path).map(|r| r.body_max)
}

/// The API-security step: header and body limits, content type and the IDS.
/// `Ok` is the request to pass on (its body buffered if the IDS read it);
/// `Err` the refusal to send.
pub async fn admit(state: &AppState, req: Request) -> Result<Request, Response> {
    let gateway_limit = gateway_body_limit(state, req.uri().path());
    let body_max = gateway_limit.unwrap_or(state.apisec.body_max_bytes);
    if let Err(e) = state
        .apisec
        .check_head_limit(&req, body_max, gateway_limit.is_some())
    {
        return Err(e.into_response());
    }
    let inspect = state.apisec.ids.active_for(req.uri().path());
    if !inspect && gateway_limit.is_some() {
        return Ok(req);
    }
    let (parts, body) = req.into_parts();
    let (bytes, body, truncated) = if gateway_limit.is_some() {
        let window = state.apisec.ids.inspect_window();
        match crate::gateway::body::read_window(
            body,
            window,
            body_max,
            state.apisec.body_timeout,
            state.apisec.budget.share(client_of(&parts)),
        )
        .await
        {
            Ok((head, body, truncated)) => (head.slice(..head.len().min(window)), body, truncated),
            Err(e) => return Err(body_refused(state, e)),
        }
    } else {
        // buffered here even when the IDS does not look: the handler
        // would buffer it anyway, outside the budget
        match read_body(&state.apisec, &parts, body).await {
            Ok(b) if !inspect => return Ok(Request::from_parts(parts, Body::from(b))),
            Ok(b) => (b.clone(), Body::from(b), false),
            Err(e) => return Err(body_refused(state, e)),
        }
    };
    let route = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str());
    let verdict = state.apisec.ids.inspect_window_of(
        &ids::RequestView::from_parts(&parts, &bytes),
        route,
        truncated,
    );
    match verdict {
        Err(e) => return Err(ApiError::from(e).into_response()),
        // a clean request (nearly all) has nothing to audit: no strings built
        Ok(v) if !v.is_clean() => {
            if let Some(refusal) = report(state, &parts, v).await {
                return Err(refusal.into_response());
            }
        }
        Ok(_) => {}
    }
    Ok(Request::from_parts(parts, body))
}

/// The client address a body's bytes are counted against.
fn client_of(parts: &http::request::Parts) -> Option<std::net::IpAddr> {
    parts
        .extensions
        .get::<crate::network::ClientAddr>()
        .map(|c| c.0)
}

/// The answer to a body that could not be buffered; a spent budget is
/// counted (`frenly_body_budget_refused`).
fn body_refused(state: &AppState, e: ApiError) -> Response {
    if matches!(e, ApiError::Busy) {
        state.metrics.body_budget_refused.inc();
    }
    e.into_response()
}

/// Buffer the body (only when there is one), at most `body_max_bytes`
/// (413 beyond), within the request timeout (408 beyond), each frame taken
/// from the server-wide budget as it is read (503 `unavailable` when it
/// does not fit, see [`budget`]); the budget is given back when the last
/// clone of the returned buffer is dropped.
async fn read_body(
    sec: &ApiSecurity,
    parts: &http::request::Parts,
    mut body: Body,
) -> Result<bytes::Bytes, ApiError> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // HTTP/2 bodies need neither Content-Length nor Transfer-Encoding: ask
    // the body itself whether it is empty.
    use http_body::Body as _;
    if declared == Some(0) || body.is_end_stream() {
        return Ok(bytes::Bytes::new());
    }
    use http_body_util::BodyExt;
    let deadline = tokio::time::Instant::now() + sec.body_timeout;
    let declared = declared
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| *d <= sec.body_max_bytes);
    let mut buf = budget::Buffer::new(sec.budget.share(client_of(parts)), declared);
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(ApiError::BadRequest(
                    "the request body could not be read".into(),
                ))
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len().saturating_add(data.len()) > sec.body_max_bytes {
                    return Err(ApiError::PayloadTooLarge);
                }
                buf.push(&data)?;
            }
        }
    }
    Ok(buf.freeze())
}

/// Audit and count what the detector found in a request; the refusal when
/// a `block` family matched.
async fn report(
    state: &AppState,
    parts: &http::request::Parts,
    v: ids::Verdict,
) -> Option<ApiError> {
    let request_id = parts
        .extensions
        .get::<crate::http::RequestId>()
        .map(|r| r.as_str().to_string())
        .unwrap_or_default();
    let ip = parts
        .extensions
        .get::<crate::network::ClientAddr>()
        .map(|c| c.0.to_string())
        .unwrap_or_default();
    let found = Found {
        request_id: &request_id,
        ip,
        user: None,
        method: parts.method.as_str(),
        endpoint: parts.uri.path(),
    };
    let hit = report_verdict(state, &found, v).await?;
    Some(ApiError::RequestBlocked {
        family: hit.family.name().to_string(),
        request_id,
    })
}

/// Where the detector looked: the request (or WebSocket message) its audit
/// events name.
pub struct Found<'a> {
    pub request_id: &'a str,
    pub ip: String,
    pub user: Option<&'a str>,
    pub method: &'a str,
    pub endpoint: &'a str,
}

/// Audit and count what the detector found (each `detect` match, then the
/// block); returns the blocking hit, if any. Neither the audit events nor
/// the log carry the matched text: only the family, the rule id and where
/// it sat. (Requests here; WebSocket messages in `gateway::ws`.)
pub async fn report_verdict(state: &AppState, at: &Found<'_>, v: ids::Verdict) -> Option<ids::Hit> {
    let event = |hit: &ids::Hit, action: &str| {
        crate::monitoring::audit::AuditEvent::new("security_violation")
            .request_id(at.request_id)
            .ip(&at.ip)
            .user(at.user)
            .field("violation_type", hit.family.name())
            .field("details", format!("rule {} at {}", hit.rule, hit.location))
            .field("action", action)
            .field("method", at.method)
            .field("endpoint", at.endpoint)
    };
    for hit in &v.detected {
        state
            .metrics
            .block(&format!("ids_detect:{}", hit.family.name()));
        tracing::info!(family = hit.family.name(), rule = hit.rule, location = %hit.location, request_id = %at.request_id, method = at.method, "IDS detect-mode match");
        state.audit.record(event(hit, "detected")).await;
    }
    let hit = v.block?;
    tracing::warn!(family = hit.family.name(), rule = hit.rule, location = %hit.location, request_id = %at.request_id, method = at.method, "IDS blocked a request");
    state.audit.record(event(&hit, "blocked")).await;
    Some(hit)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod host_tests {
    use super::*;

    fn sound(version: http::Version, uri: &str, hosts: &[&str]) -> bool {
        let mut h = http::HeaderMap::new();
        for v in hosts {
            h.append(header::HOST, v.parse().unwrap());
        }
        host_is_sound(version, &uri.parse().unwrap(), &h)
    }

    /// The request target's authority (HTTP/2's `:authority`, an absolute
    /// form) is held to the Host rule: before, `:authority: u@evil.example`
    /// and an HTTP/1.0 absolute form without Host reached a gateway
    /// upstream as `X-Forwarded-Host: u@evil.example`.
    #[test]
    fn the_targets_authority_is_a_plain_host_too() {
        use http::Version as V;
        assert!(sound(V::HTTP_2, "https://api.example/x", &[]));
        assert!(sound(
            V::HTTP_2,
            "https://api.example:8443/x",
            &["API.example:8443"]
        ));
        assert!(sound(V::HTTP_11, "/x", &["api.example:8443"]));
        assert!(!sound(V::HTTP_2, "https://u@evil.example/x", &[]));
        assert!(!sound(V::HTTP_10, "http://u@evil.example/x", &[]));
        assert!(!sound(
            V::HTTP_2,
            "https://api.example/x",
            &["evil.example"]
        ));
        // an HTTP/1 absolute-form target naming another authority than Host
        assert!(!sound(
            V::HTTP_11,
            "http://evil.example/x",
            &["api.example"]
        ));
        assert!(sound(V::HTTP_11, "http://API.example/x", &["api.example"]));
        assert!(!sound(V::HTTP_11, "/x", &["evil:99999999"]));
        assert!(!sound(V::HTTP_2, "https://evil:99999999/x", &[]));
        assert!(!sound(V::HTTP_11, "/x", &[]));
    }

    #[test]
    fn a_host_is_one_plain_host_and_port() {
        for ok in [
            "a.example",
            "a.example:8080",
            "127.0.0.1:1",
            "[::1]",
            "[::1]:443",
            "x_y~z-1.example:65535",
            "h:0",
        ] {
            assert!(plain_authority(ok), "{ok}");
        }
        for bad in [
            "a.example,b.example",
            "a.example;b",
            "a'b.example",
            "a\"b",
            "*",
            "*.example",
            "a.example:08080",
            "a.example:65536",
            "a.example:",
            "u@a.example",
            "[::1]x",
            "[]:80",
            "",
            ":80",
        ] {
            assert!(!plain_authority(bad), "{bad}");
        }
    }
}
