//! Gateway mode (issue 10) with real upstream servers started in the test:
//! plain HTTP (axum) for the proxy behaviour, HTTPS (tokio-rustls + hyper)
//! signed by a test CA for outbound TLS.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::common::user_key;
use crate::common::{audit_line, error_code, h2, Opts, TestServer};

// ------------------------------------------------------------- the upstream

#[derive(Clone, Default)]
struct Upstream {
    hits: Arc<AtomicUsize>,
    /// The SSE handler waits on this before its second event.
    go: Arc<Notify>,
}

async fn echo(State(u): State<Upstream>, req: Request) -> Response {
    u.hits.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let headers: serde_json::Map<String, Value> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or(""))))
        .collect();
    let text = if body.len() <= 65536 {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        String::new()
    };
    let out = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body": text,
        "body_len": body.len(),
    });
    (
        http::StatusCode::CREATED,
        [("x-upstream", "yes"), ("content-type", "application/json")],
        out.to_string(),
    )
        .into_response()
}

async fn sse(State(u): State<Upstream>) -> Response {
    u.hits.fetch_add(1, Ordering::SeqCst);
    let go = u.go.clone();
    let stream = async_stream(go);
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn async_stream(
    go: Arc<Notify>,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures_util::stream::unfold(0u8, move |step| {
        let go = go.clone();
        async move {
            match step {
                0 => Some((Ok(bytes::Bytes::from_static(b"data: one\n\n")), 1)),
                1 => {
                    go.notified().await;
                    Some((Ok(bytes::Bytes::from_static(b"data: two\n\n")), 2))
                }
                _ => None,
            }
        }
    })
}

async fn slow(State(u): State<Upstream>) -> &'static str {
    u.hits.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(5)).await;
    "late"
}

async fn ws_echo(ws: WebSocketUpgrade) -> Response {
    ws.on_upgrade(|mut socket| async move {
        while let Some(Ok(msg)) = socket.recv().await {
            let echo = match msg {
                // one message (one frame) of N bytes from the upstream
                AxMessage::Text(t) if t.as_str().starts_with("big:") => {
                    let n: usize = t.as_str()[4..].parse().unwrap_or(0);
                    let _ = socket.send(AxMessage::Binary(vec![b'x'; n].into())).await;
                    continue;
                }
                AxMessage::Binary(b) => {
                    if socket.send(AxMessage::Binary(b)).await.is_err() {
                        break;
                    }
                    continue;
                }
                AxMessage::Text(t) => t,
                // tells the test a ping reached the upstream
                AxMessage::Ping(p) => format!("ping:{}", String::from_utf8_lossy(&p)).into(),
                _ => continue,
            };
            if socket.send(AxMessage::Text(echo)).await.is_err() {
                break;
            }
        }
    })
}

/// A page with its own caching and content policy.
async fn page() -> Response {
    (
        [
            ("cache-control", "public, max-age=60"),
            ("content-security-policy", "default-src 'self'"),
        ],
        "<p>hello</p>",
    )
        .into_response()
}

fn upstream_router(u: Upstream) -> Router {
    Router::new()
        .route("/v1/sse", get(sse))
        .route("/slow/wait", any(slow))
        .route("/v1/ws", get(ws_echo))
        .route("/v1/page", get(page))
        .fallback(echo)
        .with_state(u)
}

async fn start_upstream() -> (SocketAddr, Upstream) {
    let u = Upstream::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = upstream_router(u.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (addr, u)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn config(up: SocketAddr) -> String {
    format!(
        r#"
[limits]
rate = {{ max_requests = 100000, window_seconds = 60 }}
ddos = {{ max_requests_per_second = 100000, ban_seconds = 1 }}
body_max_bytes = 65536

[ids]
threshold = 1000
inspect_window_bytes = 1024

[[gateway.routes]]
prefix = "/v1/"
upstream = "http://{up}"
permission = "write:agent"
free_text = ["messages[].content", "prompt"]
timeout_seconds = 10
body_max_bytes = 8388608

[[gateway.routes]]
prefix = "/oai/"
upstream = "http://{up}"
permission = "write:agent"
free_text = [{OPENAI_FREE_TEXT}]

[[gateway.routes]]
prefix = "/anth/"
upstream = "http://{up}"
permission = "write:agent"
free_text = [{ANTHROPIC_FREE_TEXT}]

[[gateway.routes]]
prefix = "/strip"
upstream = "http://{up}/base/"
permission = "read:tasks"
strip_prefix = true
forward_credentials = true

[[gateway.routes]]
prefix = "/limited/"
upstream = "http://{up}"
permission = "read:tasks"
rate = {{ max_requests = 3, window_seconds = 60 }}

[[gateway.routes]]
prefix = "/slow/"
upstream = "http://{up}"
permission = "read:tasks"
timeout_seconds = 1

[[gateway.routes]]
prefix = "/down/"
upstream = "http://127.0.0.1:{down}"
permission = "read:tasks"
"#,
        down = closed_port(),
        OPENAI_FREE_TEXT = toml_list(OPENAI_FREE_TEXT),
        ANTHROPIC_FREE_TEXT = toml_list(ANTHROPIC_FREE_TEXT),
    )
}

/// docs/GATEWAY.md's free-text list for OpenAI-compatible APIs, as written
/// there.
const OPENAI_FREE_TEXT: &[&str] = &[
    "messages[].content:string",
    "messages[].content[].text",
    "messages[].tool_calls[].function.arguments",
    "messages[].function_call.arguments",
    "tools[].function.description",
    "tools[].function.parameters",
    "tools[].description",
    "tools[].parameters",
    "functions[].description",
    "functions[].parameters",
    "response_format.json_schema",
    "text.format.schema",
    "prediction.content:string",
    "prediction.content[].text",
    "prompt",
    "input:string",
    "input[]:string",
    "input[].content:string",
    "input[].content[].text",
    "input[].arguments",
    "input[].output:string",
    "input[].output[].text",
    "instructions",
];

/// docs/GATEWAY.md's free-text list for Anthropic's messages API.
const ANTHROPIC_FREE_TEXT: &[&str] = &[
    "system:string",
    "system[].text",
    "messages[].content:string",
    "messages[].content[].text",
    "messages[].content[].input",
    "messages[].content[].content:string",
    "messages[].content[].content[].text",
    "tools[].description",
    "tools[].input_schema",
];

fn toml_list(list: &[&str]) -> String {
    list.iter()
        .map(|f| format!("{f:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn setup() -> (TestServer, Upstream) {
    let (addr, u) = start_upstream().await;
    let s = TestServer::with(Opts::default().config(&config(addr))).await;
    (s, u)
}

/// The server's stderr once `done` holds for it (log lines reach the
/// harness through a reader thread, a moment after the response).
async fn log_when(s: &TestServer, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let log = s.stderr_text();
        if done(&log) || std::time::Instant::now() > deadline {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// -------------------------------------------------------------------- tests

#[tokio::test]
async fn passes_method_path_query_headers_and_body_through() {
    let (s, u) = setup().await;
    let body = json!({"model": "llama3", "stream": false});
    let r = s
        .client
        .post(s.url("/v1/echo/a%20b?x=1&y=two"))
        .header("X-API-Key", s.admin())
        .header("X-Custom", "kept")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-upstream"], "yes");
    // Frenly's envelope still applies to forwarded responses.
    assert!(r.headers().contains_key("x-request-id"));
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v1/echo/a%20b");
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["headers"]["x-custom"], "kept");
    assert_eq!(v["headers"]["content-type"], "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(v["body"].as_str().unwrap()).unwrap(),
        body
    );
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(v["headers"]["x-forwarded-host"], s.addr.to_string());
    // every method goes through
    for m in ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        let r = s
            .client
            .request(m.parse().unwrap(), s.url("/v1/any"))
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{m}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["method"], m);
    }
    // strip_prefix under the upstream's base path, query kept
    let r = s
        .get("/strip/a/b?k=v")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["path"], "/base/a/b");
    assert_eq!(v["query"], "k=v");
    let v: Value = s
        .get("/strip")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["path"], "/base/");
    assert_eq!(u.hits.load(Ordering::SeqCst), 8);
    // the access audit records gateway requests like Frenly's own
    audit_line(&s, "an api_access event for the gateway route", |l| {
        l.contains("\"api_access\"") && l.contains("/v1/{*rest}")
    })
    .await;
}

#[tokio::test]
async fn credentials_and_identity_headers_are_frenlys_own() {
    let (s, _u) = setup().await;
    let admin_id = crate::common::user_id_of(&s, s.admin()).await;
    let v: Value = s
        .get("/v1/who")
        .header("X-API-Key", s.admin())
        .header("X-Frenly-User", "someone-else")
        .header("X-Forwarded-For", "203.0.113.9")
        .header("X-Forwarded-Host", "evil.example")
        .header("Forwarded", "for=203.0.113.9")
        .header("X-Real-IP", "203.0.113.9")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("Connection", "X-Secret-Hop")
        .header("X-Secret-Hop", "1")
        // CGI and WSGI servers read `_` as `-`: the same headers, respelled
        .header("X_Frenly_User", "someone-else")
        .header("X_Forwarded_For", "203.0.113.9")
        .header("x_real_ip", "203.0.113.9")
        .header("X_API_Key", "frn_forged")
        .header("X-Kept_Header", "1")
        // what frameworks and CDNs read as the client's address or the
        // target: forgeable
        .header("X-Client-IP", "203.0.113.9")
        .header("True-Client-IP", "203.0.113.9")
        .header("CF-Connecting-IP", "203.0.113.9")
        .header("X-Forwarded-Port", "1")
        .header("X-Forwarded-Prefix", "/admin")
        .header("X-Original-URL", "/admin")
        .header("X-Rewrite-URL", "/admin")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let h = &v["headers"];
    for respelled in ["x_frenly_user", "x_forwarded_for", "x_real_ip", "x_api_key"] {
        assert!(h.get(respelled).is_none(), "{respelled} forwarded: {h}");
    }
    assert_eq!(
        h["x-kept_header"], "1",
        "other underscore headers pass: {h}"
    );
    assert!(h.get("x-api-key").is_none(), "API key forwarded: {h}");
    assert!(h.get("authorization").is_none());
    assert!(h.get("proxy-authorization").is_none());
    assert!(
        h.get("x-secret-hop").is_none(),
        "a header named by Connection was forwarded"
    );
    assert!(h.get("forwarded").is_none());
    assert!(h.get("x-real-ip").is_none());
    for forgeable in [
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-original-url",
        "x-rewrite-url",
    ] {
        assert!(h.get(forgeable).is_none(), "{forgeable} forwarded: {h}");
    }
    assert_eq!(h["x-frenly-user"], admin_id.as_str());
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-host"], s.addr.to_string());
    assert!(h["x-request-id"].as_str().is_some_and(|r| !r.is_empty()));

    // a JWT is not forwarded either
    let login: Value = s
        .admin_post("/api/users", &json!({"username": "jwtuser", "email": "j@example.test", "password": "a long enough passphrase 123", "roles": ["agent"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(login["id"].is_string());
    let tok = crate::common::login_token(&s, "jwtuser", "a long enough passphrase 123").await;
    let v: Value = s
        .get("/v1/who")
        .bearer_auth(tok)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["headers"].get("authorization").is_none());
    assert_eq!(v["headers"]["x-frenly-user"], login["id"]);

    // an API key as a bearer token (OpenAI's SDK with `api_key="frn_..."`)
    // authenticates and is not forwarded
    let v: Value = s
        .post("/v1/chat/completions")
        .bearer_auth(s.admin())
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert_eq!(v["headers"]["x-frenly-user"], admin_id.as_str());

    // forward_credentials = true: the route gets them
    let v: Value = s
        .get("/strip/who")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["headers"]["x-api-key"], s.admin());
}

#[tokio::test]
async fn permission_and_route_rate_limit_are_enforced_per_route() {
    let (s, u) = setup().await;
    let ro = user_key(&s, "reader", &["readonly"]).await;
    // /v1/ needs write:agent
    let (status, code, _) = error_code(
        s.get("/v1/x")
            .header("X-API-Key", &ro)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let (status, code, _) = error_code(s.get("/v1/x").send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    assert_eq!(
        u.hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the upstream"
    );
    // /limited/ needs read:tasks, which readonly has; 3 per minute
    for i in 0..3 {
        let r = s
            .get("/limited/x")
            .header("X-API-Key", &ro)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "request {i}");
        assert_eq!(r.headers()["ratelimit-limit"], "3");
    }
    let r = s
        .get("/limited/x")
        .header("X-API-Key", &ro)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
    // other routes are not limited by it
    let r = s
        .get("/v1/x")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// A gateway stream over HTTP/2 that outlasts the idle limit is a request
/// in progress: the server sends no GOAWAY while it streams (Python's h2,
/// under httpx, gives up the stream on a GOAWAY and the PING after it),
/// and closes the connection once it is done and the idle time has passed.
/// (The idle bookkeeping used to end a request at its response's head.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_http2_stream_is_not_taken_for_an_idle_connection() {
    use tokio::io::AsyncWriteExt;
    let (addr, u) = start_upstream().await;
    let s = TestServer::with(Opts::default().config(&format!(
        "{}\n[network]\nlisten = \"127.0.0.1:0\"\ntls = false\nheader_read_timeout_seconds = 1\n",
        config(addr)
    )))
    .await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    c.write_all(&h2::get("/v1/sse", &[("x-api-key", s.admin())]))
        .await
        .unwrap();

    let started = tokio::time::Instant::now();
    let (mut data, mut goaway_at, mut ended_at) = (Vec::new(), None, None);
    let mut released = false;
    let deadline = started + Duration::from_secs(12);
    loop {
        // the first event, then 2.5 s (2.5x the idle limit) of an open,
        // quiet stream, then the second event and the stream's end
        if !released
            && data.ends_with(b"data: one\n\n")
            && started.elapsed() > Duration::from_millis(2500)
        {
            u.go.notify_one();
            released = true;
        }
        let step = tokio::time::Instant::now() + Duration::from_millis(100);
        let Some(f) = h2::frame(&mut c, step.min(deadline)).await else {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still open after 12 s"
            );
            continue;
        };
        h2::answer(&mut c, &f).await;
        let (kind, flags, stream, payload) = f;
        match kind {
            0 if stream == 1 => {
                data.extend_from_slice(&payload);
                if flags & 1 == 1 {
                    ended_at = Some(started.elapsed());
                }
            }
            1 if stream == 1 && flags & 1 == 1 => ended_at = Some(started.elapsed()),
            7 => {
                goaway_at.get_or_insert(started.elapsed());
            }
            255 => break,
            _ => {}
        }
    }
    assert_eq!(data, b"data: one\n\ndata: two\n\n");
    let ended = ended_at.expect("the stream did not end");
    let goaway = goaway_at.expect("the idle connection got no GOAWAY");
    assert!(
        goaway > ended,
        "GOAWAY after {goaway:?}, while the stream was open (it ended after {ended:?})"
    );
}

#[tokio::test]
async fn sse_arrives_incrementally() {
    let (s, u) = setup().await;
    let r = s
        .get("/v1/sse")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut stream = r.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the first event did not arrive before the upstream finished")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: one\n\n");
    u.go.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .unwrap()
    {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(rest, b"data: two\n\n");
}

fn connector(s: &TestServer) -> tokio_tungstenite::Connector {
    tokio_tungstenite::Connector::Rustls(s.tls_client_config())
}

#[tokio::test]
async fn websocket_echo_through_the_gateway() {
    let (s, _u) = setup().await;
    let (mut ws, resp) = open_ws(&s, Some(s.admin())).await.unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["hello", "through the gateway"] {
        ws.send(Message::text(text)).await.unwrap();
        let got = next_message(&mut ws).await;
        assert_eq!(got.into_text().unwrap().as_str(), text);
    }
    // without credentials the upgrade is refused before the upstream
    match open_ws(&s, None).await.unwrap_err() {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 401),
        e => panic!("unexpected {e}"),
    }
}

/// A client's pings are answered by the relay and never reach the upstream
/// (their payload is not inspected; before, each went on, one for one).
#[tokio::test]
async fn websocket_pings_are_answered_by_the_relay() {
    let (s, _u) = setup().await;
    let (mut ws, _) = open_ws(&s, Some(s.admin())).await.unwrap();
    ws.send(Message::Ping("' OR 1=1--".as_bytes().to_vec().into()))
        .await
        .unwrap();
    match next_message(&mut ws).await {
        Message::Pong(p) => assert_eq!(&p[..], b"' OR 1=1--"),
        m => panic!("expected the pong, got {m:?}"),
    }
    ws.send(Message::text("after the ping")).await.unwrap();
    let got = next_message(&mut ws).await;
    assert_eq!(got.into_text().unwrap().as_str(), "after the ping");
}

/// WebSocket messages from the client go through the IDS (`gateway::ws`):
/// free text in a declared field passes, an injection in a structured
/// field closes the socket with 1008 before the upstream sees it.
#[tokio::test]
async fn websocket_messages_are_inspected_before_the_upstream() {
    let (s, _u) = setup().await;
    let (mut ws, _) = open_ws(&s, Some(s.admin())).await.unwrap();
    // SQL and HTML as chat text in the declared free-text field, plain
    // text without an attack: echoed
    let chat = json!({
        "model": "llama3",
        "prompt": "Explain: SELECT * FROM users WHERE id = 1 OR 1=1; DROP TABLE users; -- and <script>alert(1)</script>",
    })
    .to_string();
    for text in [chat.as_str(), "hello there"] {
        ws.send(Message::text(text)).await.unwrap();
        let got = next_message(&mut ws).await;
        assert_eq!(got.into_text().unwrap().as_str(), text);
    }
    // the same SQL in a structured field: closed with 1008, never echoed
    let bad = json!({"model": "x' UNION SELECT password FROM users--", "prompt": "hi"}).to_string();
    ws.send(Message::text(bad)).await.unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1008);
            assert_eq!(f.reason.as_str(), "request_blocked");
        }
        m => panic!("expected a policy close, got {m:?}"),
    }
    // the audit log names the family and the WebSocket, not the message
    let line = audit_line(&s, "the WebSocket's security_violation", |l| {
        l.contains("\"security_violation\"") && l.contains("\"WEBSOCKET\"")
    })
    .await;
    assert!(line.contains("\"action\":\"blocked\""), "{line}");
    assert!(line.contains("\"endpoint\":\"/v1/ws\""), "{line}");
    assert!(!line.contains("UNION"), "{line}");

    // JSON nested deeper than the detector reads (a 400 over HTTP) is not
    // passed on unread; an attack after a JSON document is seen; a message over the route's body limit (8 MiB)
    // closes with 1009
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for (text, code, reason) in [
        (deep, 1008u16, "bad_message"),
        (
            r#"{"prompt": "hi"} ' UNION SELECT password FROM users--"#.to_string(),
            1008,
            "request_blocked",
        ),
        ("a".repeat(8 * 1024 * 1024 + 1), 1009, "message_too_large"),
    ] {
        let (mut ws, _) = open_ws(&s, Some(s.admin())).await.unwrap();
        let _ = ws.send(Message::text(text)).await;
        match next_message(&mut ws).await {
            Message::Close(Some(f)) => {
                assert_eq!((u16::from(f.code), f.reason.as_str()), (code, reason));
            }
            m => panic!("expected close {code}, got {m:?}"),
        }
    }
}

/// Binary messages: valid UTF-8 is inspected as text is; other binary is
/// data and passes (random bytes read as text matched rules by chance, and
/// the client was banned); an upstream message of one 20 MB frame reaches
/// the client (the relay's reader took frames up to 16 MiB only).
#[tokio::test]
async fn websocket_binary_data_passes_and_big_upstream_frames_are_relayed() {
    let (s, _u) = setup().await;
    let (mut ws, _) = open_ws(&s, Some(s.admin())).await.unwrap();
    // not UTF-8, and holding what the rules match when read as text
    let mut data = b"\xff\xfe' OR 1=1 -- ; cat /etc/passwd | sh \x00\x80".to_vec();
    data.extend((0..=255u8).cycle().take(4096));
    for _ in 0..8 {
        ws.send(Message::binary(data.clone())).await.unwrap();
        let got = next_message(&mut ws).await;
        assert_eq!(got.into_data().as_ref(), data.as_slice());
    }
    // an upstream message in one 20 MB frame
    let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
    cfg = cfg
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let mut req = format!("wss://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("X-API-Key", s.admin().parse().unwrap());
    let (mut big, _) = tokio_tungstenite::connect_async_tls_with_config(
        req,
        Some(cfg),
        false,
        Some(connector(&s)),
    )
    .await
    .unwrap();
    big.send(Message::text("big:20000000")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), big.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().len(), 20_000_000);
    // binary that is UTF-8 is inspected like text
    ws.send(Message::binary(
        b"{\"model\": \"x' UNION SELECT password FROM users--\"}".to_vec(),
    ))
    .await
    .unwrap();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1008, "request_blocked")
            );
        }
        m => panic!("expected a policy close, got {m:?}"),
    }
}

/// A WebSocket through the gateway ends when its credential does, as
/// `/api/ws` does: a deleted user's (and so revoked) key closes it with 1008
/// and nothing more reaches the upstream.
#[tokio::test]
async fn a_gateway_websocket_ends_when_its_credential_is_revoked() {
    let (s, _u) = setup().await;
    let key = user_key(&s, "wsagent", &["agent"]).await;
    let (mut ws, _) = open_ws(&s, Some(&key)).await.unwrap();
    ws.send(Message::text("before")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await.into_text().unwrap().as_str(),
        "before"
    );
    let id = crate::common::user_id_of(&s, &key).await;
    let r = s
        .delete(&format!("/api/users/{id}"))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // closed at once (the deletion is announced), within the 5 s recheck
    // at the latest; an echo of anything sent meanwhile is not expected
    let _ = ws.send(Message::text("after")).await;
    let closed = tokio::time::timeout(Duration::from_secs(8), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(Message::Text(t))) => {
                    assert_ne!(t.as_str(), "after", "relayed after the revocation")
                }
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("the relay outlived its credential");
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1008));
}

/// On shutdown a relayed WebSocket gets a Close with 1001 (going away).
#[tokio::test]
async fn shutdown_closes_relayed_websockets_with_going_away() {
    let (mut s, _u) = setup().await;
    let (mut ws, _) = open_ws(&s, Some(s.admin())).await.unwrap();
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await.into_text().unwrap().as_str(),
        "hello"
    );
    let reader = tokio::spawn(async move {
        match next_message(&mut ws).await {
            Message::Close(Some(f)) => u16::from(f.code),
            m => panic!("expected a close frame, got {m:?}"),
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.terminate().await, Some(0));
    assert_eq!(reader.await.unwrap(), 1001);
}

/// The route's upstream base path confines every request whatever the
/// IDS's mode: a `.` or `..` segment (raw, `%2e`, or behind `%2f`/`\`) is
/// 400 before the upstream.
#[tokio::test]
async fn dot_segments_never_reach_the_upstream_even_with_the_ids_off() {
    let (addr, u) = start_upstream().await;
    let cfg = config(addr).replace("[ids]\n", "[ids]\nmode = \"detect\"\n");
    let s = TestServer::with(Opts::default().config(&cfg)).await;
    for path in [
        "/strip/../admin",
        "/strip/%2e%2e/admin",
        "/strip/a/%2E%2E%2Fadmin",
        "/strip/a/..%5cadmin",
        "/strip/./x",
        "/v1/x/%2e%2e/%2e%2e/admin",
        // a servlet container drops a segment's `;parameters` first
        "/strip/..;/admin",
        "/strip/a/..;/..;/admin",
        "/strip/%2e%2e;x/admin",
        "/strip/.;x/admin",
        "/strip/..%3b/admin",
        // an upstream that decodes twice (or more)
        "/strip/%252e%252e/admin",
        "/strip/a/..%252f..%252fadmin",
        "/strip/%25252e%25252e/admin",
    ] {
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
            s.addr,
            s.admin()
        );
        let text = crate::common::exchange(s.tls_connect().await, req.as_bytes()).await;
        assert!(text.starts_with("HTTP/1.1 400 "), "{path}: {text}");
    }
    assert_eq!(u.hits.load(Ordering::SeqCst), 0);
    // a dot inside a segment, and an encoded slash without dots, pass
    for path in [
        "/strip/v1.2/models/org%2Fname..json",
        "/strip/a;v=1.2/b..;c/%2541",
    ] {
        let r = s
            .get(path)
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket to the gateway's `/v1/ws` (the upstream's echo), with `key`.
async fn open_ws(
    s: &TestServer,
    key: Option<&str>,
) -> Result<
    (
        Ws,
        tokio_tungstenite::tungstenite::handshake::client::Response,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let mut req = format!("wss://{}/v1/ws", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("X-API-Key", k.parse().unwrap());
    }
    tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector(s))).await
}

async fn next_message<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn upstream_refused_is_502_and_too_slow_is_504() {
    let (s, _u) = setup().await;
    let (status, code, _) = error_code(
        s.get("/down/x")
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));
    let started = std::time::Instant::now();
    let (status, code, _) = error_code(
        s.get("/slow/wait")
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (504, "gateway_timeout"));
    assert!(started.elapsed() < Duration::from_secs(4));
    let log = log_when(&s, |l| {
        l.contains("gateway: upstream failed")
            && l.contains("gateway: upstream sent no response headers in time")
    })
    .await;
    assert!(log.contains("gateway: upstream failed"), "{log}");
    assert!(
        log.contains("gateway: upstream sent no response headers in time"),
        "{log}"
    );
}

#[tokio::test]
async fn ids_blocks_attacks_before_the_upstream_and_lets_chat_free_text_through() {
    let (s, u) = setup().await;
    // an attack in the query string never reaches the upstream
    let r = s
        .get("/v1/search?q=1%27%20UNION%20SELECT%20password%20FROM%20users--")
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 0);

    // SQL and HTML in the declared free-text fields pass
    let sql = "SELECT * FROM users WHERE id = 1 OR 1=1; DROP TABLE users; --";
    let html = "<script>alert(document.cookie)</script><img src=x onerror=alert(1)>";
    let chat = json!({
        "model": "llama3",
        "messages": [{"role": "user", "content": format!("Explain: {sql} and {html}")}],
        "prompt": format!("{html} {sql}"),
    });
    let r = s
        .post("/v1/chat/completions")
        .header("X-API-Key", s.admin())
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(v["body"].as_str().unwrap()).unwrap(),
        chat
    );
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);

    // the same SQL in `model` (an identifier) is blocked
    let bad = json!({"model": "x' UNION SELECT password FROM users--", "messages": []});
    let (status, code, _) = error_code(
        s.post("/v1/chat/completions")
            .header("X-API-Key", s.admin())
            .json(&bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);
}

/// An agent's turn as OpenAI's API carries it — tool definitions whose
/// descriptions and schemas show commands, a tool call whose arguments run
/// one, the tool's output — passes a route with the documented free-text
/// list (it is blocked with only `messages[].content`); SQL in a tool's
/// *name* is still structure and blocked.
#[tokio::test]
async fn an_agents_tool_calling_turn_passes_the_documented_openai_free_text() {
    let (s, u) = setup().await;
    let turn = json!({
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "You operate a Linux box. Never run `rm -rf /`."},
            {"role": "user", "content": "Which users can log in? Check /etc/passwd."},
            {"role": "assistant", "content": null, "tool_calls": [{
                "id": "call_1", "type": "function",
                "function": {"name": "run_shell", "arguments": "{\"cmd\": \"cat /etc/passwd | grep -v nologin; id\"}"}
            }]},
            {"role": "tool", "tool_call_id": "call_1", "content": "root:x:0:0:root:/root:/bin/bash"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "run_shell",
            "description": "Run a command such as `ls -la; cat /etc/hosts` or `psql -c \"SELECT * FROM users WHERE 1=1\"`",
            "parameters": {"type": "object", "required": ["cmd"], "properties": {
                "cmd": {"type": "string", "description": "e.g. `make && ./run.sh > out.log`", "pattern": "^[^\\x00]*$"}
            }}
        }}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {
            "type": "object", "properties": {"path": {"type": "string", "description": "like ../../etc/shadow"}}
        }}}
    });
    let post = |path: &'static str, body: Value| {
        s.post(path)
            .header("X-API-Key", s.admin())
            .json(&body)
            .send()
    };
    let r = post("/oai/chat/completions", turn.clone()).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);
    // the same turn on a route that declares only the message text
    let (status, code, _) =
        error_code(post("/v1/chat/completions", turn.clone()).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    // a tool's name is an identifier: SQL there is blocked
    let mut bad = turn;
    bad["tools"][0]["function"]["name"] = json!("x' UNION SELECT password FROM users--");
    let (status, code, _) = error_code(post("/oai/chat/completions", bad).await.unwrap()).await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);
    // the Responses API's flat tools and structured output, the legacy
    // `functions`, and predicted outputs (the code being edited)
    let responses = json!({
        "model": "gpt-4.1",
        "input": "Fix the query in db.py",
        "tools": [{"type": "function", "name": "run_sql",
                   "description": "Runs e.g. `SELECT * FROM users WHERE 1=1; DROP TABLE t`",
                   "parameters": {"type": "object", "properties": {
                       "q": {"type": "string", "description": "like ' OR 1=1 --"}}}}],
        "text": {"format": {"type": "json_schema", "name": "a", "schema": {
            "type": "object", "properties": {"p": {"type": "string", "description": "../../etc/shadow"}}}}},
        "prediction": {"type": "content", "content": "os.system('cat /etc/passwd; id')"}
    });
    let r = post("/oai/responses", responses).await.unwrap();
    assert_eq!(r.status(), 201);
    let legacy = json!({
        "model": "gpt-3.5-turbo",
        "messages": [{"role": "user", "content": "list files"}],
        "functions": [{"name": "sh", "description": "runs `ls; cat /etc/hosts`",
                       "parameters": {"type": "object", "properties": {"c": {"type": "string", "description": "`rm -rf /tmp/x`"}}}}]
    });
    let r = post("/oai/chat/completions", legacy).await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
}

/// The documented lists name the text leaves, not whole content subtrees:
/// code in text, tool arguments and tool output passes, while a URL the
/// model server fetches (an SSRF target), a content part's `type`, a role,
/// a tool's name or a call id inside the content is structure and blocked.
#[tokio::test]
async fn urls_roles_and_names_inside_model_content_are_structure() {
    let (s, u) = setup().await;
    let post = |path: &'static str, body: Value| {
        s.post(path)
            .header("X-API-Key", s.admin())
            .json(&body)
            .send()
    };
    let code = "SELECT * FROM users WHERE 1=1; cat /etc/passwd | sh; <script>alert(1)</script>";
    let meta = "http://169.254.169.254/latest/meta-data/iam/security-credentials/";
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": code},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    ]}]});
    let responses = json!({"model": "m", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": code},
                                     {"type": "input_image", "image_url": "https://example.com/cat.png"}]},
        {"type": "function_call", "call_id": "call_1", "name": "run_shell", "arguments": format!("{{\"cmd\": \"{code}\"}}")},
        {"type": "function_call_output", "call_id": "call_1", "output": code}
    ]});
    let anthropic = json!({"model": "claude", "system": code, "messages": [
        {"role": "user", "content": [{"type": "text", "text": code},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "bash", "input": {"command": code}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": code}]}
    ]});
    for (path, body) in [
        ("/oai/chat/completions", chat.clone()),
        ("/oai/responses", responses.clone()),
        ("/anth/messages", anthropic.clone()),
    ] {
        let r = post(path, body).await.unwrap();
        assert_eq!(r.status(), 201, "{path}");
    }
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
    let mut bad: Vec<(&'static str, Value)> = Vec::new();
    let mut b = chat.clone();
    b["messages"][0]["content"][1]["image_url"]["url"] = json!(meta);
    bad.push(("/oai/chat/completions", b));
    let mut b = chat.clone();
    b["messages"][0]["content"][0]["type"] = json!("../../etc/passwd");
    bad.push(("/oai/chat/completions", b));
    let mut b = responses.clone();
    b["input"][0]["content"][1]["image_url"] = json!(meta);
    bad.push(("/oai/responses", b));
    let mut b = responses.clone();
    b["input"][0]["content"][1] =
        json!({"type": "input_file", "file_url": "http://127.0.0.1:2375/containers/json"});
    bad.push(("/oai/responses", b));
    let mut b = responses.clone();
    b["input"][0]["role"] = json!("<script>alert(1)</script>");
    bad.push(("/oai/responses", b));
    let mut b = responses.clone();
    b["input"][1]["name"] = json!("x' UNION SELECT password FROM users--");
    bad.push(("/oai/responses", b));
    let mut b = responses.clone();
    b["input"][2]["call_id"] = json!("../../etc/passwd");
    bad.push(("/oai/responses", b));
    let mut b = anthropic.clone();
    b["messages"][0]["content"][1]["source"]["url"] = json!(meta);
    bad.push(("/anth/messages", b));
    let mut b = anthropic.clone();
    b["messages"][1]["content"][0]["name"] = json!("x' UNION SELECT password FROM users--");
    bad.push(("/anth/messages", b));
    let mut b = anthropic.clone();
    b["messages"][2]["content"][0]["tool_use_id"] = json!("../../etc/passwd");
    bad.push(("/anth/messages", b));
    for (path, body) in bad {
        let shown = body.to_string();
        let (status, code, _) = error_code(post(path, body).await.unwrap()).await;
        assert_eq!((status, code.as_str()), (403, "request_blocked"), "{shown}");
    }
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn compressed_bodies_are_refused_before_the_upstream() {
    // The IDS would see only the coded bytes of a body the upstream may
    // decode (an evasion): any coding but identity is refused.
    let (s, u) = setup().await;
    let body = json!({"model": "x' UNION SELECT password FROM users--"}).to_string();
    for coding in ["gzip", "deflate", "br, gzip", "x-anything"] {
        let r = s
            .post("/v1/chat/completions")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .header("Content-Encoding", coding)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["accept-encoding"], "identity", "{coding}");
        let (status, code, _) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (415, "unsupported_media_type"),
            "{coding}"
        );
    }
    // a streamed body (no Content-Length; over HTTP/2 no Transfer-Encoding
    // either) is no way around it
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(body.clone().into_bytes())];
    let r = s
        .post("/v1/chat/completions")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .header("Content-Encoding", "gzip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (415, "unsupported_media_type"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 0);
    let r = s
        .post("/v1/chat/completions")
        .header("X-API-Key", s.admin())
        .header("Content-Encoding", "identity")
        .json(&json!({"model": "llama3", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn streamed_bodies_are_inspected_only_in_the_window_and_counted() {
    let (s, u) = setup().await;
    // 3 MB of benign JSON (the window is 1 KB): streams through, and more
    // than `limits.body_max_bytes` (64 KB) as the route allows 8 MB.
    let big = json!({"model": "llama3", "prompt": "benign text ".repeat(250_000)}).to_string();
    let len = big.len();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = big
        .into_bytes()
        .chunks(16 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let r = s
        .post("/v1/upload")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["body_len"], len);
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);

    // an attack in the first window of a big body is blocked
    let bad = format!(
        r#"{{"model": "x' UNION SELECT password FROM users--", "prompt": "{}"}}"#,
        "a".repeat(2_000_000)
    );
    let (status, code, _) = error_code(
        s.post("/v1/upload")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 1);

    // over the route's limit: declared -> 413 at once; streamed -> 413 too
    let huge = "a".repeat(9 * 1024 * 1024);
    let (status, code, _) = error_code(
        s.post("/v1/upload")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(huge.clone())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = format!("{{\"prompt\": \"{huge}\"}}")
        .into_bytes()
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let (status, code, _) = error_code(
        s.post("/v1/upload")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (413, "payload_too_large"));
}

/// A JSON body longer than the inspection window (1 KB here) is walked as
/// a prefix: free text stays free text however long the body is (it was
/// inspected whole as text, code blocked, the client banned), structure in
/// the window is still blocked.
#[tokio::test]
async fn free_text_stays_free_past_the_inspection_window() {
    let (s, u) = setup().await;
    let code = "SELECT password FROM users WHERE name = '' OR 1=1 --; cat /etc/passwd | sh; <script>alert(1)</script>\n";
    let history: Vec<Value> = (0..40)
        .map(|i| json!({"role": if i % 2 == 0 { "user" } else { "assistant" }, "content": code.repeat(5)}))
        .collect();
    let body = json!({"model": "llama3", "messages": history}).to_string();
    assert!(body.len() > 20 * 1024);
    for _ in 0..3 {
        let r = s
            .post("/oai/chat/completions")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
    // the same history behind SQL in a structured field of the window
    let bad = json!({"messages": history, "model": "x"})
        .to_string()
        .replacen(
            "\"role\":\"user\"",
            "\"role\":\"x' UNION SELECT password FROM users--\"",
            1,
        );
    let (status, code, _) = error_code(
        s.post("/oai/chat/completions")
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"));
    assert_eq!(u.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bad_gateway_config_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (route, key) in [
        (
            "prefix = \"/v1/\"\nupstream = \"ftp://x\"\npermission = \"read:tasks\"",
            "gateway.routes[0].upstream",
        ),
        (
            "prefix = \"/v1/\"\nupstream = \"http://x\"\npermission = \"read:everything\"",
            "gateway.routes[0].permission",
        ),
        (
            "prefix = \"/api/\"\nupstream = \"http://x\"\npermission = \"read:tasks\"",
            "gateway.routes[0].prefix",
        ),
        (
            "prefix = \"/\"\nupstream = \"http://x\"\npermission = \"read:tasks\"",
            "gateway.routes[0].prefix",
        ),
    ] {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, format!("[[gateway.routes]]\n{route}\n")).unwrap();
        let (code, _, err) = crate::common::run_cli(
            &[
                "config",
                "show",
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
                dir.path().join("d").to_str().unwrap(),
            ],
            None,
            &[],
        );
        assert_ne!(code, 0, "{route}");
        assert!(err.contains(key), "{route}: {err}");
    }
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[alerts]\nwebhook_url = \"file:///etc/passwd\"\n").unwrap();
    let (code, _, err) = crate::common::run_cli(
        &["config", "show", "--config", cfg.to_str().unwrap()],
        None,
        &[],
    );
    assert_ne!(code, 0);
    assert!(err.contains("alerts.webhook_url"), "{err}");
}

// ------------------------------------------------------------ outbound TLS

struct Pki {
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = p.self_signed(&ca_key).unwrap();
        Pki { ca, ca_key }
    }

    /// A leaf for `names` (PEM cert, PEM key).
    fn leaf(&self, names: &[&str], client: bool) -> (String, String) {
        let mut p =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        p.extended_key_usages = vec![if client {
            rcgen::ExtendedKeyUsagePurpose::ClientAuth
        } else {
            rcgen::ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

fn certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// An HTTPS upstream (h2 and HTTP/1.1 by ALPN); with `client_ca`, it
/// requires a client certificate signed by it.
async fn tls_upstream(leaf: (String, String), client_ca: Option<&Pki>) -> SocketAddr {
    let key = rustls_pemfile::private_key(&mut leaf.1.as_bytes())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let b = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.ca.der().clone()).unwrap();
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let mut sc = b.with_single_cert(certs(&leaf.0), key).unwrap();
    sc.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(sc));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = Router::new().fallback(|req: Request| async move {
        axum::Json(json!({"tls": true, "version": format!("{:?}", req.version())}))
    });
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let router = router.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper_util::service::TowerToHyperService::new(router);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                .await;
            });
        }
    });
    addr
}

fn tls_routes(routes: &[(&str, SocketAddr)]) -> String {
    routes
        .iter()
        .map(|(prefix, addr)| {
            format!(
                "[[gateway.routes]]\nprefix = \"{prefix}\"\nupstream = \"https://{addr}\"\npermission = \"read:tasks\"\n"
            )
        })
        .collect()
}

#[tokio::test]
async fn outbound_tls_verifies_chain_and_hostname_and_does_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ours = Pki::new("ours");
    let other = Pki::new("other");
    let trusted = tls_upstream(ours.leaf(&["127.0.0.1", "localhost"], false), None).await;
    let untrusted = tls_upstream(other.leaf(&["127.0.0.1"], false), None).await;
    let wrong_name = tls_upstream(ours.leaf(&["other.example"], false), None).await;
    let mtls = tls_upstream(ours.leaf(&["127.0.0.1"], false), Some(&ours)).await;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ours.ca.pem()).unwrap();
    let (cc, ck) = ours.leaf(&["frenly-gateway"], true);
    std::fs::write(dir.path().join("client.pem"), cc).unwrap();
    std::fs::write(dir.path().join("client.key"), ck).unwrap();
    let routes = tls_routes(&[
        ("/trusted/", trusted),
        ("/untrusted/", untrusted),
        ("/wrongname/", wrong_name),
        ("/mtls/", mtls),
    ]);
    let gw = format!("[gateway]\nca_file = \"{}\"\n", ca_file.display());
    let with_client = format!(
        "{gw}client_cert = \"{}\"\nclient_key = \"{}\"\n{routes}",
        dir.path().join("client.pem").display(),
        dir.path().join("client.key").display()
    );
    let s = TestServer::with(Opts::default().config(&with_client)).await;
    let get = |p: &'static str| s.get(p).header("X-API-Key", s.admin()).send();

    let r = get("/trusted/x").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["tls"], true);
    assert_eq!(v["version"], "HTTP/2.0", "h2 negotiated by ALPN");

    let (status, code, _) = error_code(get("/untrusted/x").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));
    let (status, code, _) = error_code(get("/wrongname/x").await.unwrap()).await;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));
    let r = get("/mtls/x").await.unwrap();
    assert_eq!(
        r.status(),
        200,
        "mutual TLS with the configured client certificate"
    );

    let marker = "gateway: TLS with the upstream failed";
    let log = log_when(&s, |l| l.matches(marker).count() >= 2).await;
    let tls_lines: Vec<&str> = log.lines().filter(|l| l.contains(marker)).collect();
    assert_eq!(tls_lines.len(), 2, "{log}");
    assert!(
        tls_lines
            .iter()
            .any(|l| l.contains("UnknownIssuer") && l.contains(&untrusted.to_string())),
        "{log}"
    );
    assert!(
        tls_lines
            .iter()
            .any(|l| l.contains("not valid for name") || l.contains("NotValidForName")),
        "{log}"
    );
    drop(s);

    // Without a client certificate the mTLS upstream refuses: 502. And
    // without a CA file the test CA is not trusted (system roots only).
    let without = format!("{gw}{routes}");
    let s = TestServer::with(Opts::default().config(&without)).await;
    let (status, code, _) = error_code(
        s.get("/mtls/x")
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));
    drop(s);
    let s = TestServer::with(Opts::default().config(&routes)).await;
    let (status, _, _) = error_code(
        s.get("/trusted/x")
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status, 502,
        "a test CA must not be trusted without gateway.ca_file"
    );
}

/// The upstream's own caching and content policy survive the envelope;
/// Frenly's defaults fill in what the upstream left unset, and Frenly's own
/// answers (a 401 on a gateway route) carry its full set.
#[tokio::test]
async fn upstream_policy_headers_are_kept_and_defaults_fill_the_rest() {
    let (s, _) = setup().await;
    let r = s.admin_get("/v1/page").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert_eq!(h["cache-control"], "public, max-age=60");
    assert_eq!(h["content-security-policy"], "default-src 'self'");
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.contains_key("x-request-id"));
    let r = s.admin_get("/v1/echo").send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = s.get("/v1/page").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(
        r.headers()["content-security-policy"],
        "default-src 'none'; frame-ancestors 'none'"
    );
}

// ------------------------------------ upstream bytes that look like hyper's

/// Exactly the head hyper writes by itself for a request it cannot parse
/// (47 bytes): what `server::parse_error` replaces with a shaped answer.
const BARE_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";

/// A raw upstream: each request gets its head (a 200 with
/// `Content-Length: 47`, or a 101 to `Upgrade: websocket` when asked), flushed
/// on its own, then after a pause [`BARE_400`] as the body or as the first
/// bytes of the upgraded stream, so that Frenly writes them in a write of
/// their own.
async fn bare_400_upstream() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let upgrade = String::from_utf8_lossy(&head)
                    .to_ascii_lowercase()
                    .contains("\r\nupgrade: websocket\r\n");
                let answer: &[u8] = if upgrade {
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 47\r\nConnection: close\r\n\r\n"
                };
                c.write_all(answer).await.unwrap();
                c.flush().await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                c.write_all(BARE_400).await.unwrap();
                c.flush().await.unwrap();
                // hold an upgraded stream until the client leaves
                while upgrade && matches!(c.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

async fn bare_400_setup() -> TestServer {
    let up = bare_400_upstream().await;
    TestServer::with(Opts::default().plain().config(&format!(
        "[ids.routes.\"/raw/\"]\nmode = \"off\"\n\n[[gateway.routes]]\nprefix = \"/raw/\"\nupstream = \"http://{up}\"\npermission = \"read:tasks\"\n"
    )))
    .await
}

/// Reads from `c` until `done` holds for what arrived (or the server
/// closes), within 10 s.
async fn read_until(c: &mut tokio::net::TcpStream, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !done(&got) {
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf))
            .await
            .expect("the server sent nothing more for 10 s")
            .unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    got
}

/// An upstream's body that is byte for byte hyper's bare 400 head reaches
/// the client as sent: the declared length still holds, the pipelined
/// request after it is answered on the same connection, and nothing is
/// counted as a malformed request.
#[tokio::test]
async fn an_upstream_body_that_looks_like_hypers_400_passes_untouched() {
    use tokio::io::AsyncWriteExt;
    let s = bare_400_setup().await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let pipelined = format!(
        "GET /raw/body HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        s.admin()
    );
    c.write_all(pipelined.as_bytes()).await.unwrap();
    let got = read_until(&mut c, |_| false).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let end = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a first response head")
        + 4;
    let (head, rest) = got.split_at(end);
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200 ok\r\n"), "{text}");
    assert!(head.contains("\r\ncontent-length: 47\r\n"), "{text}");
    assert!(rest.len() >= 47, "{text}");
    let (body, second) = rest.split_at(47);
    assert_eq!(body, BARE_400, "{text}");
    let second = String::from_utf8_lossy(second);
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(second.contains("\r\nx-request-id: "), "{text}");
    let metrics = s.metrics_text().await;
    assert!(!metrics.contains("reason=\"malformed_http\""), "{metrics}");
}

/// h2c smuggling: an upgrade to anything but WebSocket (`h2c`, a made-up
/// protocol) is never relayed, even to an upstream that would switch: the
/// upstream sees a plain request (no `Upgrade`, no `HTTP2-Settings`), the
/// client a plain answer on a connection that stays HTTP/1.1, so a request
/// sent after it is still Frenly's to check. And `Connection` cannot strip
/// the `Content-Type` the layers judged the body by.
#[tokio::test]
async fn only_websocket_upgrades_reach_the_upstream() {
    use tokio::io::AsyncWriteExt;
    let (up, _) = start_upstream().await;
    let s = TestServer::with(Opts::default().plain().config(&config(up))).await;
    for (upgrade, connection) in [
        ("h2c", "Upgrade, HTTP2-Settings"),
        ("foo", "upgrade"),
        ("websocket, h2c", "upgrade"),
    ] {
        let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let req = format!(
            "GET /v1/anything HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nConnection: {connection}\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n\
             GET /v1/admin?x=%3Cscript%3Ealert(1)%3C/script%3E HTTP/1.1\r\nHost: x\r\n\
             X-API-Key: {}\r\nConnection: close\r\n\r\n",
            s.admin(),
            s.admin()
        );
        c.write_all(req.as_bytes()).await.unwrap();
        let got = read_until(&mut c, |_| false).await;
        let text = String::from_utf8_lossy(&got).into_owned();
        assert!(text.starts_with("HTTP/1.1 201 "), "{upgrade}: {text}");
        assert!(!text.contains(" 101 "), "{upgrade}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(!lower.contains("\"upgrade\""), "{upgrade}: {text}");
        assert!(!lower.contains("http2-settings"), "{upgrade}: {text}");
        // the second request was parsed and judged by Frenly: blocked
        assert!(text.contains("request_blocked"), "{upgrade}: {text}");
    }
    let r = s
        .post("/v1/typed")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .header(
            "Connection",
            "Content-Type, Content-Encoding, Content-Length",
        )
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["headers"]["content-type"], "application/json", "{v}");
    assert_eq!(v["body"], r#"{"a":1}"#, "{v}");
}

/// The same bytes as the first of an upgraded stream (a WebSocket upgrade
/// on a route with the IDS off, relayed byte for byte) arrive as sent.
#[tokio::test]
async fn upgraded_bytes_that_look_like_hypers_400_pass_untouched() {
    use tokio::io::AsyncWriteExt;
    let s = bare_400_setup().await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let upgrade = format!(
        "GET /raw/up HTTP/1.1\r\nHost: x\r\nX-API-Key: {}\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        s.admin()
    );
    c.write_all(upgrade.as_bytes()).await.unwrap();
    let head_end = |got: &[u8]| got.windows(4).position(|w| w == b"\r\n\r\n");
    let got = read_until(&mut c, |got| {
        head_end(got).is_some_and(|at| got.len() >= at + 4 + BARE_400.len())
    })
    .await;
    let text = String::from_utf8_lossy(&got).into_owned();
    let at = head_end(&got).expect("a response head") + 4;
    assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
    assert_eq!(&got[at..], BARE_400, "{text}");
    let metrics = s.metrics_text().await;
    assert!(!metrics.contains("reason=\"malformed_http\""), "{metrics}");
}

/// Gateway routes take JSON bodies only, whatever the method: a GET,
/// DELETE or OPTIONS body is forwarded too.
#[tokio::test]
async fn non_json_bodies_are_refused_on_every_method() {
    let (s, u) = setup().await;
    for method in ["GET", "DELETE", "OPTIONS", "POST"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for ctype in [
            Some("multipart/form-data; boundary=x"),
            Some("text/plain"),
            None,
        ] {
            let mut req = s
                .client
                .request(m.clone(), s.url("/v1/anything"))
                .header("X-API-Key", s.admin())
                .body("--x\r\nContent-Disposition: form-data; name=\"f\"\r\n\r\nhi\r\n--x--\r\n");
            if let Some(c) = ctype {
                req = req.header("Content-Type", c);
            }
            let (status, code, _) = error_code(req.send().await.unwrap()).await;
            assert_eq!(
                (status, code.as_str()),
                (415, "unsupported_media_type"),
                "{method} {ctype:?}"
            );
        }
        // JSON, and no body at all, still pass
        let r = s
            .client
            .request(m.clone(), s.url("/v1/anything"))
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body("{\"a\": 1}")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{method}");
    }
    assert_eq!(u.hits.load(Ordering::SeqCst), 4);
}

/// Frenly is no forward proxy: `CONNECT` on a gateway route is 405 (before,
/// the client got no bytes at all and the audit said 200).
#[tokio::test]
async fn connect_on_a_gateway_route_is_405() {
    let (s, _u) = setup().await;
    let out = crate::common::exchange(
        s.tls_connect().await,
        format!(
            "CONNECT /v1/x HTTP/1.1\r\nHost: {}\r\nX-API-Key: {}\r\nConnection: close\r\n\r\n",
            s.addr,
            s.admin()
        )
        .as_bytes(),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 405"), "{out}");
    assert!(out.contains("method_not_allowed"), "{out}");
}

/// An upstream that answers every request with `answer` and closes.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = c.write_all(answer).await;
                let _ = c.flush().await;
            });
        }
    });
    addr
}

/// An HTTP/1.0 upstream's answer reaches an HTTP/1.1 client in HTTP/1.1,
/// chunked and kept alive (it came close-delimited, in HTTP/1.0); an
/// upstream body with a malformed chunk leaves a `gateway:` log line naming
/// the upstream and the request.
#[tokio::test]
async fn the_client_gets_frenlys_http_version_and_a_broken_body_is_logged() {
    use tokio::io::AsyncWriteExt;
    let old =
        raw_upstream(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello from 1.0").await;
    let bad = raw_upstream(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nxx\r\n",
    )
    .await;
    let s = TestServer::with(Opts::default().plain().config(&format!(
        "[[gateway.routes]]\nprefix = \"/old/\"\nupstream = \"http://{old}\"\npermission = \"read:tasks\"\n\n\
         [[gateway.routes]]\nprefix = \"/bad/\"\nupstream = \"http://{bad}\"\npermission = \"read:tasks\"\n"
    )))
    .await;
    let mut c = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let two = format!(
        "GET /old/a HTTP/1.1\r\nHost: x\r\nX-API-Key: {k}\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        k = s.admin()
    );
    c.write_all(two.as_bytes()).await.unwrap();
    let got = read_until(&mut c, |_| false).await;
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("\r\ntransfer-encoding: chunked\r\n"),
        "{text}"
    );
    assert!(text.contains("hello from 1.0"), "{text}");
    // kept alive: the second request is answered on the same connection
    assert_eq!(text.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{text}");

    let r = s.get("/bad/x").header("X-API-Key", s.admin()).send().await;
    if let Ok(r) = r {
        assert!(r.bytes().await.is_err());
    }
    let log = log_when(&s, |l| l.contains("gateway: upstream body failed")).await;
    let line = log
        .lines()
        .find(|l| l.contains("gateway: upstream body failed"))
        .unwrap_or_else(|| panic!("no log line: {log}"));
    assert!(line.contains(&bad.to_string()), "{line}");
    assert!(line.contains("request_id"), "{line}");
}
