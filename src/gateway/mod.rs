//! Gateway mode: every security layer in front of an existing upstream HTTP
//! service (an agent or model server), then the request is forwarded.
//!
//! Threat: an unauthenticated upstream exposed to callers who forge their
//! identity (`X-Frenly-User`, `X-Forwarded-For`), replay Frenly's own
//! credentials to it, smuggle injection payloads through it, flood it, or
//! hold its connections open; and a network path to the upstream that a man
//! in the middle controls.
//!
//! Guarantee — a request under a `[[gateway.routes]]` prefix goes through
//! these phases (named after pingora's):
//!
//! 1. **request filter**: the whole security stack (`server::stack`):
//!    bans, burst and rate limits per address, header limits, content type,
//!    the IDS over path, query, headers and the first
//!    `ids.inspect_window_bytes` of the body (the route's `free_text` fields
//!    are data), authentication, the route's `permission` (403 without it,
//!    checked before anything is forwarded), the per-identity limit, then the
//!    route's own `rate` limit per client address (429).
//! 2. **upstream peer selection**: the route's `upstream` (validated
//!    http/https at config load); the path kept or `strip_prefix`ed under
//!    the upstream's base path, the query string kept as sent.
//! 3. **upstream request** (header rewrite): hop-by-hop headers removed
//!    (`Connection` and the headers it names, `Keep-Alive`, `Proxy-*`, `TE`
//!    except `trailers`, `Trailer`, `Transfer-Encoding`, `HTTP2-Settings`,
//!    `Upgrade` except on a WebSocket upgrade, the only protocol relayed;
//!    `Connection` cannot name `Content-Type`, `-Encoding` or `-Length`);
//!    `X-Forwarded-For` (the one client address every layer
//!    uses), `X-Forwarded-Proto`, `X-Forwarded-Host`, `X-Frenly-User` (the
//!    caller's user id) and `X-Request-Id` set by Frenly, incoming values
//!    (and `Forwarded`, `X-Real-IP`) dropped, so they cannot be forged; the
//!    API-key header and `Authorization` removed unless the route sets
//!    `forward_credentials`. The body streams (byte limit counted on the
//!    way, never buffered whole). HTTPS upstreams are verified ([`tls`]).
//! 4. **response filter**: the client connection's parse-error rewriter
//!    switched off first, so the upstream's bytes reach the client exactly
//!    as sent (`server::parse_error`); hop-by-hop headers removed, the body
//!    streamed as it arrives (server-sent events, chunked output token by
//!    token), a `101 Switching Protocols` joined to the client's connection
//!    (WebSocket pass-through). No response headers within `timeout_seconds` -> 504
//!    `gateway_timeout`; refused, reset, TLS failure -> 502 `bad_gateway`
//!    (one log line naming the upstream and the cause); a stream idle longer
//!    than `timeout_seconds` is cut.
//! 5. **logging**: the monitoring layer records the request (metrics by the
//!    route pattern, an `api_access` audit event with the caller and the
//!    status), as for Frenly's own routes.
//!
//! Not covered: the content of WebSocket messages and of the body beyond the
//! inspection window is not inspected; WebSocket over HTTP/2 (RFC 8441) is
//! not offered; HTTP/2 to upstreams only through TLS (ALPN), cleartext
//! upstreams are spoken to in HTTP/1.1. See docs/GATEWAY.md.

pub mod body;
pub mod tls;
pub mod ws;

use std::net::IpAddr;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, Uri, Version};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::app::AppState;
use crate::authn::Authenticated;
use crate::authz::{Access, Permission, Routes};
use crate::config::{Config, GatewayRoute};
use crate::http::respond::RateLimitInfo;
use crate::http::{ApiError, RequestId};
use crate::network::ratelimit::{Counter, Table, Window};
use crate::network::ClientAddr;
use body::{Guarded, Trip};

type Upstreams = Client<HttpsConnector<HttpConnector>, Body>;

const X_FRENLY_USER: HeaderName = HeaderName::from_static("x-frenly-user");
/// The headers Frenly sets for the upstream or removes from the request
/// (whatever the client sent is dropped first), and whose `_` respellings
/// are removed too.
const CONTROLLED: [&str; 21] = [
    "host",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-frenly-user",
    "x-real-ip",
    "x-request-id",
    // what frameworks and CDNs read as the client's address, scheme, port
    // or base path: forgeable, so never passed on from the client
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-forwarded",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-ssl",
    "x-forwarded-server",
    "front-end-https",
    // rewrite the target past the route's base path (Symfony, IIS)
    "x-original-url",
    "x-rewrite-url",
];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Seconds a TCP connect to an upstream may take (then 504).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One configured route, compiled.
pub struct Route {
    pub prefix: String,
    /// The prefix without its trailing `/` (what `strip_prefix` removes).
    base: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The upstream URL's own path, without a trailing `/`.
    upstream_path: String,
    pub access: Access,
    strip_prefix: bool,
    pub timeout: Duration,
    forward_credentials: bool,
    /// Request body limit (`body_max_bytes` of the route, else `limits.body_max_bytes`).
    pub body_max: usize,
    rate: Option<(Window, Table<IpAddr, Counter>)>,
}

/// The gateway: its routes and the pooled upstream clients.
pub struct Gateway {
    routes: Vec<Route>,
    client: Upstreams,
    /// HTTP/1.1 only: upgrades (WebSocket) need an HTTP/1.1 connection.
    upgrade_client: Upstreams,
    key_header: HeaderName,
    proto: HeaderValue,
}

/// Does `path` fall under `prefix` (`/v1` covers `/v1` and `/v1/x`, `/v1/`
/// covers `/v1/x`; neither covers `/v1x`)? The same rule as the router's
/// (`{base}`, `{base}/`, `{base}/{*rest}`) and the IDS's free-text lookup.
pub fn covers(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len()
            || prefix.ends_with('/')
            || path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

impl Route {
    fn new(r: &GatewayRoute, cfg: &Config) -> anyhow::Result<Route> {
        let uri: Uri = r.upstream.parse()?;
        let parts = uri.into_parts();
        let (Some(scheme), Some(authority)) = (parts.scheme, parts.authority) else {
            anyhow::bail!("gateway upstream `{}` has no scheme or host", r.upstream);
        };
        let upstream_path = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        // Validated at config load; an unknown name can only fail closed.
        let permission = Permission::parse(&r.permission).unwrap_or(Permission::Admin);
        let window_of = |rc: &crate::config::RateConfig| {
            Window::new(rc.max_requests, u64::from(rc.window_seconds) * 1000)
        };
        Ok(Route {
            prefix: r.prefix.clone(),
            base: r.prefix.trim_end_matches('/').to_string(),
            scheme,
            authority,
            upstream_path,
            access: Access::Permission(permission),
            strip_prefix: r.strip_prefix,
            timeout: Duration::from_secs(r.timeout_seconds.max(1)),
            forward_credentials: r.forward_credentials,
            body_max: r.body_max_bytes.unwrap_or(cfg.limits.body_max_bytes),
            rate: r
                .rate
                .as_ref()
                .map(|rc| (window_of(rc), Table::new(cfg.limits.max_tracked_clients))),
        })
    }

    /// Phase 2: the upstream URI for an incoming one.
    fn upstream_uri(&self, incoming: &Uri) -> Result<Uri, ApiError> {
        let path = incoming.path();
        // confined to the upstream's base path whatever the IDS's mode
        if has_dot_segment(path) {
            return Err(ApiError::BadRequest(
                "the path has a `.` or `..` segment".into(),
            ));
        }
        let rest = if self.strip_prefix {
            path.get(self.base.len()..).unwrap_or("")
        } else {
            path
        };
        let mut target = String::with_capacity(self.upstream_path.len() + rest.len() + 16);
        target.push_str(&self.upstream_path);
        if !rest.starts_with('/') {
            target.push('/');
        }
        target.push_str(rest);
        if let Some(q) = incoming.query() {
            target.push('?');
            target.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(target)
            .build()
            .map_err(|_| ApiError::BadRequest("the request target cannot be forwarded".into()))
    }

    /// The route's own rate limit for this address.
    fn admit(&self, key: IpAddr) -> Option<Result<RateLimitInfo, RateLimitInfo>> {
        let (w, table) = self.rate.as_ref()?;
        Some(table.with(&key, |c| c.try_admit(w, crate::network::mono_ms())))
    }
}

/// Does `path` hold a `.` or `..` segment, as an upstream that normalises
/// paths would read it: `%2e` as a dot, `%2f`, `%5c` and a backslash as
/// separators, a segment's `;parameters` dropped (servlet containers read
/// `..;x` as `..`), and percent-decoded again and again (`%252e%252e` is
/// `..` to an upstream that decodes twice; until nothing changes, at most
/// [`DECODE_ROUNDS`] times — a path still changing after them is refused
/// too). (`/v1/../admin` would leave the route's upstream base path.)
fn has_dot_segment(path: &str) -> bool {
    if !path.bytes().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return false;
    }
    let mut p = path.to_string();
    for _ in 0..=DECODE_ROUNDS {
        let lower = p.to_ascii_lowercase();
        let mut q = lower.clone();
        for (from, to) in [
            ("%2e", "."),
            ("%2f", "/"),
            ("%5c", "/"),
            ("%3b", ";"),
            ("\\", "/"),
        ] {
            q = q.replace(from, to);
        }
        let dot = q.split('/').any(|seg| {
            let name = seg.split(';').next().unwrap_or(seg);
            name == "." || name == ".."
        });
        if dot {
            return true;
        }
        // `%XX` decoded, other bytes kept, read as UTF-8 lossily
        let next = percent_encoding::percent_decode_str(&lower)
            .decode_utf8_lossy()
            .into_owned();
        if next == lower {
            return false;
        }
        p = next;
    }
    // still encoded after every round: no upstream needs that many
    true
}

/// How many times a path is percent-decoded looking for dot segments.
const DECODE_ROUNDS: usize = 4;

impl Gateway {
    /// Compile the routes and build the upstream clients.
    pub fn new(cfg: &Config) -> anyhow::Result<Gateway> {
        let mut routes = cfg
            .gateway
            .routes
            .iter()
            .map(|r| Route::new(r, cfg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let g = &cfg.gateway;
        let client_auth = match (&g.client_cert, &g.client_key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            _ => None,
        };
        let (client, upgrade_client) = if routes.is_empty() {
            // No route: no TLS material is read, the clients stay unused.
            let tls = tls::client_config(None, None)?;
            (upstreams(tls.clone(), true), upstreams(tls, false))
        } else {
            let tls = tls::client_config(g.ca_file.as_deref(), client_auth)?;
            (upstreams(tls.clone(), true), upstreams(tls, false))
        };
        Ok(Gateway {
            routes,
            client,
            upgrade_client,
            key_header: HeaderName::from_bytes(
                cfg.security.api_key_header.to_ascii_lowercase().as_bytes(),
            )?,
            proto: HeaderValue::from_static(if cfg.network.tls { "https" } else { "http" }),
        })
    }

    /// The route a path belongs to (the longest prefix).
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        if self.routes.is_empty() {
            return None;
        }
        self.routes.iter().find(|r| covers(&r.prefix, path))
    }
}

fn upstreams(tls: rustls::ClientConfig, h2: bool) -> Upstreams {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let connector = if h2 {
        b.enable_http2().wrap_connector(http)
    } else {
        b.wrap_connector(http)
    };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// The gateway's routes: each prefix for every method, guarded by its
/// permission (see `authz::Routes::route_prefix`).
pub fn routes(state: &AppState) -> Routes<AppState> {
    let mut r = Routes::new();
    for route in &state.gateway.routes {
        let prefix = route.prefix.clone();
        let handler = move |State(state): State<AppState>, req: Request| {
            let prefix = prefix.clone();
            async move { proxy(state, &prefix, req).await }
        };
        r = r.route_prefix(&route.prefix, route.access, handler);
    }
    r
}

/// Is this an HTTP/1.1 WebSocket upgrade (`Connection: upgrade` +
/// `Upgrade: websocket`)? The only upgrade the gateway relays: any other
/// protocol (`h2c`, a made-up token) would turn the connection into a raw
/// tunnel to the upstream that no layer sees (h2c smuggling: later requests
/// to any upstream path, uninspected, unaudited, unlimited), so its
/// `Upgrade` is dropped with the other hop-by-hop headers and the request
/// goes on as a plain one.
fn is_upgrade(headers: &HeaderMap) -> bool {
    let mut protocols = headers.get_all(header::UPGRADE).iter();
    let websocket = match (protocols.next(), protocols.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"),
        _ => false,
    };
    websocket
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Remove the hop-by-hop headers (RFC 9110 §7.6.1), keeping `Upgrade` and
/// `Connection: upgrade` when `upgrade`, and `TE: trailers`.
fn strip_hop_by_hop(h: &mut HeaderMap, upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !(upgrade && *n == header::UPGRADE))
        // end-to-end headers a sender cannot make hop-by-hop: the layers
        // judged the body by its type and coding, the upstream must too
        .filter(|n| {
            ![
                header::CONTENT_TYPE,
                header::CONTENT_ENCODING,
                header::CONTENT_LENGTH,
            ]
            .contains(n)
        })
        .collect();
    for n in named {
        h.remove(n);
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for n in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        // h2c's upgrade parameters: meaningless without that upgrade
        HeaderName::from_static("http2-settings"),
    ] {
        if upgrade && n == header::UPGRADE {
            continue;
        }
        h.remove(n);
    }
    let proxy: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for n in proxy {
        h.remove(n);
    }
    if upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if te_trailers {
        h.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Phases 2 to 4 for one request (phase 1 ran in the stack).
async fn proxy(state: AppState, prefix: &str, mut req: Request) -> Response {
    let Some(route) = state.gateway.routes.iter().find(|r| r.prefix == prefix) else {
        return ApiError::NotFound.into_response();
    };
    // Frenly is no forward proxy: a CONNECT's 2xx would make hyper hand the
    // connection over as a tunnel (before, the client got no bytes at all)
    if req.method() == http::Method::CONNECT {
        return ApiError::MethodNotAllowed.into_response();
    }
    let client = req
        .extensions()
        .get::<ClientAddr>()
        .map(|c| c.0)
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.as_str().to_string())
        .unwrap_or_default();
    let who = req.extensions().get::<Authenticated>().cloned();
    let user = who.as_ref().map(|a| a.user_id.clone());
    let passthrough = req
        .extensions()
        .get::<crate::server::parse_error::Passthrough>()
        .cloned();

    // The route's own rate limit (end of the request filter).
    let mut limit_info = None;
    if !state.network.allowlisted(client) {
        let key = state.network.key(client);
        match route.admit(key) {
            None => {}
            Some(Ok(info)) => limit_info = Some(info),
            Some(Err(info)) => {
                let ctx = crate::monitoring::incidents::Context {
                    request_id: Some(request_id.clone()),
                    user_id: user.clone(),
                };
                state
                    .incidents
                    .handle(
                        &state,
                        key,
                        crate::monitoring::incidents::Signal::RateLimited,
                        ctx,
                        None,
                    )
                    .await;
                return ApiError::RateLimited(info).into_response();
            }
        }
    }

    // Phase 2: upstream peer selection.
    let uri = match route.upstream_uri(req.uri()) {
        Ok(u) => u,
        Err(e) => return e.into_response(),
    };

    // Phase 3: the upstream request.
    let upgrade = req.version() == Version::HTTP_11 && is_upgrade(req.headers());
    // WebSocket messages go through the IDS when it is on for this path
    // (`ws.rs`); the relay re-frames them, so no extension is negotiated
    let inspect_ws = (upgrade && state.apisec.ids.active_for(req.uri().path())).then(|| ws::Conn {
        path: req.uri().path().to_string(),
        client,
        request_id: request_id.clone(),
        user: user.clone(),
        max_message: route.body_max,
        upstream: route.authority.to_string(),
    });
    let on_client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // an upgraded connection's credential is checked again while it lasts
    let credential =
        upgrade.then(|| crate::app::ws::credential_of(&state.gateway.key_header, req.headers()));
    let slot = req.extensions().get::<crate::server::ConnSlot>().cloned();
    let (parts, incoming) = req.into_parts();
    let forwarded_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers, upgrade);
    for n in CONTROLLED {
        headers.remove(n);
    }
    if inspect_ws.is_some() {
        headers.remove(header::SEC_WEBSOCKET_EXTENSIONS);
    }
    if !route.forward_credentials {
        headers.remove(header::AUTHORIZATION);
        headers.remove(&state.gateway.key_header);
    }
    // CGI and WSGI servers read `X_Frenly_User` as `X-Frenly-User` (and
    // join the two): a respelling of a header Frenly sets or removes goes
    let respelled: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().contains('_'))
        .filter(|n| {
            let dashed = n.as_str().replace('_', "-");
            CONTROLLED.contains(&dashed.as_str())
                || (!route.forward_credentials
                    && (dashed == "authorization"
                        || dashed == "proxy-authorization"
                        || dashed == state.gateway.key_header.as_str()))
        })
        .cloned()
        .collect();
    for n in respelled {
        headers.remove(n);
    }
    if let Ok(v) = HeaderValue::from_str(&client.to_string()) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    headers.insert(X_FORWARDED_PROTO, state.gateway.proto.clone());
    if let Some(h) = forwarded_host {
        headers.insert(X_FORWARDED_HOST, h);
    }
    if let Some(v) = user.as_deref().and_then(|u| HeaderValue::from_str(u).ok()) {
        headers.insert(X_FRENLY_USER, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert(crate::http::envelope::X_REQUEST_ID, v);
    }
    let trip = Trip::default();
    let body = Guarded::new(
        incoming,
        route.body_max as u64,
        route.timeout,
        trip.clone(),
        "request",
    );
    let mut out = http::Request::new(Body::new(body));
    *out.method_mut() = parts.method.clone();
    *out.uri_mut() = uri;
    *out.version_mut() = Version::HTTP_11;
    *out.headers_mut() = headers;

    let upstream = route.authority.as_str();
    let client_pool = if upgrade {
        &state.gateway.upgrade_client
    } else {
        &state.gateway.client
    };
    let mut resp = match tokio::time::timeout(route.timeout, client_pool.request(out)).await {
        Err(_) => {
            tracing::warn!(
                upstream,
                request_id,
                timeout_seconds = route.timeout.as_secs(),
                "gateway: upstream sent no response headers in time"
            );
            return ApiError::GatewayTimeout.into_response();
        }
        Ok(Err(e)) => return upstream_error(upstream, &request_id, &trip, &e).into_response(),
        Ok(Ok(r)) => r,
    };

    // Phase 4: the response filter.
    // The upstream's body may hold any bytes, even exactly one of hyper's
    // bare error heads: the connection's parse-error rewriter must never
    // see it (`server::parse_error`), from before hyper has the response.
    if let Some(p) = &passthrough {
        p.set();
    }
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching && !upgrade {
        // a 101 to a request that asked for no upgrade it may have: never
        // joined, never passed on
        tracing::warn!(
            upstream,
            request_id,
            "gateway: upstream switched protocols unasked"
        );
        return ApiError::BadGateway.into_response();
    }
    if switching {
        if let Some(on_client) = on_client_upgrade {
            let on_upstream = hyper::upgrade::on(&mut resp);
            let request_id = request_id.clone();
            let state = state.clone();
            let tracker = state.upgraded.clone();
            tokio::spawn(tracker.track_future(async move {
                // the relay holds the client connection's slot until it ends
                let _slot = slot;
                // the credential, checked again as on /api/ws: the relay
                // closes when it is refused
                let gate = who
                    .zip(credential)
                    .map(|(w, c)| crate::app::ws::Gate::new(&state, w, c));
                match tokio::try_join!(on_client, on_upstream) {
                    Ok((c, u)) => match inspect_ws {
                        Some(conn) => ws::relay(state, conn, c, u, gate).await,
                        None => {
                            let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                            tokio::select! {
                                r = tokio::io::copy_bidirectional(&mut c, &mut u) => {
                                    if let Err(e) = r {
                                        tracing::debug!(request_id, error = %e, "gateway: upgraded connection ended");
                                    }
                                }
                                () = async {
                                    match gate {
                                        Some(g) => g.refused().await,
                                        None => std::future::pending().await,
                                    }
                                } => {
                                    tracing::debug!(request_id, "gateway: credential refused; upgraded connection closed");
                                }
                                () = state.stopping.cancelled() => {}
                            }
                        }
                    },
                    Err(e) => tracing::warn!(request_id, error = %e, "gateway: upgrade failed"),
                }
            }));
        }
    }
    let (mut rparts, rbody) = resp.into_parts();
    strip_hop_by_hop(&mut rparts.headers, switching && upgrade);
    // the client gets the server's own HTTP version (RFC 9110 2.5), not an
    // HTTP/1.0 upstream's: hyper then frames and keeps the connection as it
    // does for any response (and answers an HTTP/1.0 client in HTTP/1.0)
    rparts.version = Version::HTTP_11;
    let body = Guarded::new(rbody, u64::MAX, route.timeout, Trip::default(), "response")
        .logged(upstream, &request_id);
    let mut response = Response::from_parts(rparts, Body::new(body));
    response
        .extensions_mut()
        .insert(crate::http::envelope::Forwarded);
    if let Some(info) = limit_info {
        info.apply(response.headers_mut());
    }
    tracing::debug!(
        upstream,
        request_id,
        status = response.status().as_u16(),
        "gateway: forwarded"
    );
    response
}

/// Map a failed upstream exchange: 413 when the client's body went over the
/// limit, 504 for a connect timeout, 502 otherwise — with one log line.
fn upstream_error(
    upstream: &str,
    request_id: &str,
    trip: &Trip,
    e: &hyper_util::client::legacy::Error,
) -> ApiError {
    if trip.over_limit() {
        return ApiError::PayloadTooLarge;
    }
    if trip.idle() {
        return ApiError::RequestTimeout;
    }
    let mut chain = e.to_string();
    let mut cur = std::error::Error::source(e);
    let mut timed_out = false;
    while let Some(s) = cur {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            timed_out = true;
        }
        cur = s.source();
    }
    if let Some(why) = tls::tls_failure(e) {
        tracing::warn!(upstream, request_id, "gateway: TLS with the upstream failed (certificate not trusted or not valid for this host?): {why}");
        return ApiError::BadGateway;
    }
    if timed_out {
        tracing::warn!(
            upstream,
            request_id,
            "gateway: upstream connect timed out: {chain}"
        );
        return ApiError::GatewayTimeout;
    }
    tracing::warn!(upstream, request_id, "gateway: upstream failed: {chain}");
    ApiError::BadGateway
}

#[cfg(test)]
mod path_tests {
    use super::has_dot_segment;

    #[test]
    fn dot_segments_are_found_behind_parameters_and_repeated_encoding() {
        for bad in [
            "/v1/../a",
            "/v1/%2e%2e/a",
            "/v1/..;/a",
            "/v1/a/..;/..;/admin",
            "/v1/%2e%2e;x/a",
            "/v1/.;x/a",
            "/v1/..%3bx/a",
            "/v1/%252e%252e/a",
            "/v1/a/..%252f..%252fadmin",
            "/v1/%25252e%25252e/a",
            "/v1/%252525252525252e/a",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/v1/a.b/c",
            "/v1/a;v=1.2/b",
            "/v1/b..;c",
            "/v1/org%2Fname..json",
            "/v1/%2541",
            "/v1/...",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
