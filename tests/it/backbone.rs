//! The backbone (issue 2): process, TLS, configuration, error shape,
//! envelope headers, limits, timeouts, panics, shutdown.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::common::{error_code, exchange, run_cli, Opts, TestServer};

#[tokio::test]
async fn embedded_default_serves_https_with_security_headers() {
    let s = TestServer::start().await;
    assert!(s.base.starts_with("https://"));
    let r = s.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let h = r.headers();
    assert!(h.get("x-request-id").is_some());
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert!(h.get("content-security-policy").is_some());
    assert!(h.get("referrer-policy").is_some());
    assert!(h["strict-transport-security"]
        .to_str()
        .unwrap()
        .contains("max-age="));
    assert_eq!(h["cache-control"], "no-store");
    let r = s.get("/readyz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let key = s.admin().to_string();
    assert!(key.starts_with("frn_") && key.len() == 47, "{key}");
}

#[tokio::test]
async fn request_id_is_echoed_when_sane_and_replaced_otherwise() {
    let s = TestServer::start().await;
    let r = s
        .get("/healthz")
        .header("X-Request-Id", "abc-123.X_y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123.X_y");
    let r = s
        .get("/healthz")
        .header("X-Request-Id", "bad id<script>")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(id, "bad id<script>");
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    let long = "a".repeat(129);
    let r = s
        .get("/healthz")
        .header("X-Request-Id", &long)
        .send()
        .await
        .unwrap();
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), long);
    // two lines are the one value "one, two": replaced, not the first echoed
    let r = s
        .get("/healthz")
        .header("X-Request-Id", "one")
        .header("X-Request-Id", "two")
        .send()
        .await
        .unwrap();
    let echoed = r.headers()["x-request-id"].to_str().unwrap();
    assert!(echoed != "one" && echoed != "two", "{echoed}");
    // an API key put there by mistake is neither echoed nor audited
    let key = s.admin().to_string();
    let r = s
        .get("/api/auth/whoami")
        .header("X-Request-Id", &key)
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_ne!(r.headers()["x-request-id"].to_str().unwrap(), key);
}

#[tokio::test]
async fn unknown_route_and_wrong_method_are_json_errors() {
    let s = TestServer::start().await;
    let r = s.get("/no/such/route").header("X-API-Key", s.admin());
    let (st, code, _) = error_code(r.send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (404, "not_found"));
    // without credentials, 401 like a known route (no map of the routes)
    let (st, code, _) = error_code(s.get("/no/such/route").send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (401, "unauthenticated"));
    let r = s.client.delete(s.url("/healthz")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_some());
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (405, "method_not_allowed"));
}

/// A client that sends its whole body before reading (Python's
/// `requests` does) gets the refusal over TLS: 413 on a declared length
/// over the limit, 415, 401 without credentials, each with a body of a few
/// MiB. (The server used to answer and close with the body unread; over
/// TLS the kernel then reset the connection and the client saw an SSL EOF
/// instead of the answer.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_first_reads_the_refusal_over_tls() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = TestServer::start().await;
    let key = format!("X-API-Key: {}\r\n", s.admin());
    for (extra, size, want) in [
        (
            format!("{key}Content-Type: application/json\r\n"),
            3 << 20,
            "413 ",
        ),
        (
            format!("{key}Content-Type: text/plain\r\n"),
            1_000_000,
            "415 ",
        ),
        (
            "Content-Type: application/json\r\n".to_string(),
            1_000_000,
            "401 ",
        ),
    ] {
        let body = vec![b'a'; size];
        let mut c = s.tls_connect().await;
        let head = format!(
            "POST /api/tasks HTTP/1.1\r\nHost: localhost\r\n{extra}Content-Length: {}\r\n\r\n",
            body.len()
        );
        c.write_all(head.as_bytes()).await.unwrap();
        c.write_all(&body)
            .await
            .unwrap_or_else(|e| panic!("{want}: sending the body failed: {e}"));
        c.flush().await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        while !answer.ends_with(b"}") {
            match tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
                other => panic!("{want}: no complete answer: {other:?} after {answer:?}"),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with(&format!("HTTP/1.1 {want}")), "{text}");
        assert!(text.contains("\"error\""), "{text}");
    }
}

/// The contract names `application/json` ("anything else -> 415"): other
/// JSON-based types carry semantics Frenly does not implement (a merge
/// patch, JSON:API) and were accepted as plain JSON.
#[tokio::test]
async fn only_application_json_is_json() {
    let s =
        TestServer::with(Opts::default().config("[limits]\nallowlist = [\"127.0.0.0/8\"]\n")).await;
    for ct in [
        "application/vnd.api+json",
        "application/merge-patch+json",
        "application/problem+json",
    ] {
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", s.admin())
            .header("Content-Type", ct)
            .body(r#"{"title": "x"}"#)
            .send()
            .await
            .unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (415, "unsupported_media_type"), "{ct}");
    }
    for ct in ["application/json; charset=utf-8", "Application/JSON"] {
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", s.admin())
            .header("Content-Type", ct)
            .body(r#"{"title": "x"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{ct}");
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let r = s
            .delete(&format!("/api/tasks/{id}"))
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
}

#[tokio::test]
async fn oversized_body_is_413_and_non_json_body_is_415() {
    let s = TestServer::with(Opts::default().config("[limits]\nbody_max_bytes = 1024\n")).await;
    let big = json!({"title": "x".repeat(5000)});
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .json(&big)
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (413, "payload_too_large"));
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "text/plain")
        .body("title=x")
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (415, "unsupported_media_type"));
    // one media type per message: with two, this check and an upstream
    // could each read a different one (400 whichever comes first; nothing
    // is stored)
    for pair in [
        ["application/json", "text/plain"],
        ["text/plain", "application/json"],
    ] {
        let mut h = reqwest::header::HeaderMap::new();
        for v in pair {
            h.append("content-type", v.parse().unwrap());
        }
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", s.admin())
            .headers(h)
            .body(r#"{"title": "two types"}"#)
            .send()
            .await
            .unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "bad_request"), "{pair:?}");
    }
    let list: serde_json::Value = s
        .admin_get("/api/tasks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"], json!([]), "{list}");
    // JSON is UTF-8: a body labelled otherwise would be read as one encoding
    // here and another by whatever trusts the label
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json; charset=utf-16")
        .body(r#"{"title": "x"}"#)
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (415, "unsupported_media_type"));
    // a declared content coding: never decoded here, so refused (the bytes
    // are plain JSON: only the header decides); `identity` is no coding
    for (coding, want) in [("gzip", 415), ("identity, br", 415), ("identity", 201)] {
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", s.admin())
            .header("Content-Encoding", coding)
            .json(&json!({"title": "t"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "{coding}");
        if want == 415 {
            assert_eq!(r.headers()["accept-encoding"], "identity");
            let (_, code, _) = error_code(r).await;
            assert_eq!(code, "unsupported_media_type");
        }
    }
    // a chunked body without a declared length is cut at the limit too
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![b' '; 200])).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(matches!(r.status().as_u16(), 413 | 404), "{}", r.status());
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431() {
    let s = TestServer::start().await;
    let mut req = s.get("/healthz");
    for i in 0..101 {
        req = req.header(format!("x-h{i}"), "v");
    }
    let (st, code, _) = error_code(req.send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (431, "headers_too_large"));
    let r = s
        .get("/healthz")
        .header("x-big", "a".repeat(17_000))
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (431, "headers_too_large"));
    // over HTTP/2, a block past twice the limit is Frenly's 431 too, in the
    // error shape with a request id (it was the h2 library's bare 431)
    let r = s
        .get("/healthz")
        .header("x-big", "a".repeat(40_000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert!(r.headers().contains_key("x-request-id"));
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (431, "headers_too_large"));
}

/// The last response in `text` (a connection's whole answer): its status,
/// its head (lowercase) and its body parsed as JSON.
fn last_response(text: &str) -> (u16, String, serde_json::Value) {
    let at = text
        .rfind("HTTP/1.1 ")
        .or_else(|| text.rfind("HTTP/1.0 "))
        .unwrap_or_else(|| panic!("{text:?}"));
    let (head, body) = text[at..].split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (status, head.to_ascii_lowercase(), json)
}

/// The value of header `name` (lowercase) in a lowercased `head`.
fn header_value(head: &str, name: &str) -> String {
    head.split("\r\n")
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
        .to_string()
}

/// What hyper's parser refuses as not HTTP at all (smuggling and
/// parser-confusion probes) is still answered in the contract's shape —
/// status, JSON error, request id, security headers, connection closed —
/// counted and audited, instead of hyper's bare 400/431 with an empty body.
#[tokio::test]
async fn requests_that_are_not_http_get_the_error_shape() {
    let s = &TestServer::with(Opts::default().plain()).await;
    let send = |bytes: Vec<u8>| async move {
        exchange(
            tokio::net::TcpStream::connect(s.addr).await.unwrap(),
            &bytes,
        )
        .await
    };
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(200_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "control character in the request line",
            b"GET /healthz\x01 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "control character in a header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "obsolete header folding",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "two different Content-Lengths",
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\n{}\n"
                .to_vec(),
            400,
            "bad_request",
        ),
        (
            "Content-Length that is no number",
            b"POST /api/tasks HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\n".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a TLS ClientHello on the plain port",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
            400,
            "bad_request",
        ),
        (
            "a header past the parser's buffer",
            big.into_bytes(),
            431,
            "headers_too_large",
        ),
    ];
    let mut ids = Vec::new();
    for (what, bytes, want, code) in &cases {
        let text = send(bytes.clone()).await;
        let (status, head, json) = last_response(&text);
        ids.push(header_value(&head, "x-request-id"));
        assert_eq!(
            (status, &json["error"]["code"]),
            (*want, &json!(code)),
            "{what}: {text}"
        );
        for h in [
            "content-type: application/json",
            "connection: close",
            "x-content-type-options: nosniff",
            "cache-control: no-store",
        ] {
            assert!(head.contains(h), "{what}: no {h} in {head}");
        }
        assert!(head.contains("\r\nx-request-id: "), "{what}: {head}");
        assert!(!head.contains("strict-transport-security"), "{head}");
    }
    // A raw `<` on a later request of a kept-alive connection (the first
    // line alone is normalised): the second answer is shaped too.
    let text = send(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz?q=<b> HTTP/1.1\r\nHost: x\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let (status, head, json) = last_response(&text);
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("bad_request")),
        "{text}"
    );
    ids.push(header_value(&head, "x-request-id"));
    // each one audited as a security_violation under its response's id
    let audited = s
        .audit_rows("type=security_violation&limit=100", ids.len())
        .await;
    for id in &ids {
        let row = audited
            .iter()
            .find(|e| e["request_id"] == json!(id))
            .unwrap_or_else(|| panic!("no audit event for {id}: {audited:?}"));
        assert_eq!(row["violation_type"], json!("malformed_http"), "{row}");
        assert_eq!(row["ip"], json!("127.0.0.1"), "{row}");
    }
    let metrics = s.metrics_text().await;
    let want = format!(
        "frenly_requests_blocked_total{{reason=\"malformed_http\"}} {}",
        cases.len() + 1
    );
    assert!(metrics.contains(&want), "{want} not in:\n{metrics}");
}

/// The same over TLS (the embedded default): the shaped answer goes out
/// through the TLS session, with HSTS.
#[tokio::test]
async fn requests_that_are_not_http_get_the_error_shape_over_tls() {
    let s = TestServer::start().await;
    let text = exchange(
        s.tls_connect().await,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    )
    .await;
    let (status, head, json) = last_response(&text);
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("bad_request")),
        "{text}"
    );
    assert!(
        head.contains("strict-transport-security: max-age="),
        "{head}"
    );
}

/// Plain HTTP sent to the TLS port: a 400 in the error shape the client
/// can read, naming https (probe L: a raw TLS alert, which curl reports as
/// "Received HTTP/0.9"); no HSTS outside TLS, and TLS clients unaffected.
#[tokio::test]
async fn plain_http_sent_to_the_tls_port_gets_a_readable_400() {
    let s = TestServer::start().await;
    let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let text = exchange(
        conn,
        b"GET /api/auth/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (status, head, json) = last_response(&text);
    assert_eq!(
        (status, &json["error"]["code"]),
        (400, &json!("bad_request")),
        "{text}"
    );
    assert!(
        json["error"]["message"].as_str().unwrap().contains("https"),
        "{json}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(!head.contains("strict-transport-security"), "{head}");
    let r = s.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn host_must_appear_once_as_host_and_port() {
    let s = &TestServer::with(Opts::default().plain()).await;
    let key = s.admin();
    let send = |version: &'static str, hosts: &'static [&'static str]| async move {
        let head: String = hosts.iter().map(|h| format!("Host: {h}\r\n")).collect();
        let req = format!(
            "GET /api/auth/whoami {version}\r\n{head}X-API-Key: {key}\r\nConnection: close\r\n\r\n"
        );
        let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        last_response(&exchange(conn, req.as_bytes()).await)
    };
    let good: [(&'static str, &'static [&'static str]); 4] = [
        ("HTTP/1.1", &["api.example"]),
        ("HTTP/1.1", &["127.0.0.1:8443"]),
        ("HTTP/1.1", &["[::1]:8080"]),
        // HTTP/1.0 predates Host: its absence is no error there
        ("HTTP/1.0", &[]),
    ];
    for (version, hosts) in good {
        let (status, _, body) = send(version, hosts).await;
        assert_eq!(status, 200, "{version} {hosts:?}: {body}");
    }
    let bad: [(&'static str, &'static [&'static str]); 7] = [
        ("HTTP/1.1", &["a.example", "b.example"]),
        ("HTTP/1.1", &["user@evil.example"]),
        ("HTTP/1.1", &["evil.example/reset?x="]),
        ("HTTP/1.1", &["a b"]),
        ("HTTP/1.1", &[""]),
        // RFC 9112 3.2: an HTTP/1.1 request without Host MUST get a 400
        ("HTTP/1.1", &[]),
        ("HTTP/1.0", &["a.example", "b.example"]),
    ];
    for (version, hosts) in bad {
        let (status, _, body) = send(version, hosts).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request")),
            "{version} {hosts:?}"
        );
    }
}

/// A body in chunks is read; any other transfer coding is refused before
/// the task exists: hyper would pass `gzip, chunked` (or `chunked` in two
/// fields) on as plain chunked, and the IDS would see coded bytes.
#[tokio::test]
async fn only_one_chunked_transfer_coding_is_accepted() {
    let s = &TestServer::with(Opts::default().plain()).await;
    let key = s.admin();
    let send = |codings: &'static [&'static str], title: &'static str| async move {
        let head: String = codings
            .iter()
            .map(|c| format!("Transfer-Encoding: {c}\r\n"))
            .collect();
        let body = format!("{{\"title\":\"{title}\"}}");
        let req = format!(
            "POST /api/tasks HTTP/1.1\r\nHost: a\r\nX-API-Key: {key}\r\n\
             Content-Type: application/json\r\n{head}Connection: close\r\n\r\n\
             {:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        last_response(&exchange(conn, req.as_bytes()).await)
    };
    let good: [&'static [&'static str]; 3] = [&["chunked"], &["Chunked"], &[" chunked "]];
    for codings in good {
        let (status, _, body) = send(codings, "in chunks").await;
        assert_eq!(status, 201, "{codings:?}: {body}");
    }
    let bad: [&'static [&'static str]; 4] = [
        &["gzip, chunked"],
        &["deflate,chunked"],
        &["chunked", "chunked"],
        &["identity, chunked"],
    ];
    for codings in bad {
        let (status, _, body) = send(codings, "coded").await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_request")),
            "{codings:?}"
        );
    }
    let list: serde_json::Value = s
        .admin_get("/api/tasks?q=coded")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        list["items"],
        json!([]),
        "a refused request stored its task"
    );
}

#[tokio::test]
async fn tls_1_1_is_refused_and_1_2_and_1_3_work() {
    let s = TestServer::start().await;
    let addr = s.addr.to_string();
    for (flag, ok) in [("-tls1_1", false), ("-tls1_2", true), ("-tls1_3", true)] {
        let out = std::process::Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &addr,
                flag,
                "-servername",
                "localhost",
            ])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("openssl s_client");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let negotiated = text.contains("Cipher is") && !text.contains("Cipher is (NONE)");
        assert_eq!(negotiated, ok, "{flag}: {text}");
    }
}

#[tokio::test]
async fn slowloris_client_is_cut_off() {
    let s = TestServer::with(Opts::default().config(
        "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\nheader_read_timeout_seconds = 1\n",
    ))
    .await;
    let addr = s.addr;
    let started = std::time::Instant::now();
    let res = tokio::task::spawn_blocking(move || {
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .unwrap();
        let mut buf = [0u8; 1024];
        // never finish the headers: the server must close the connection
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    })
    .await
    .unwrap();
    assert!(res, "connection was not closed");
    assert!(started.elapsed() < Duration::from_secs(8));
}

#[tokio::test]
async fn sigterm_exits_zero() {
    let mut s = TestServer::start().await;
    assert_eq!(s.get("/healthz").send().await.unwrap().status(), 200);
    assert_eq!(s.terminate().await, Some(0));
}

#[tokio::test]
async fn second_start_keeps_everything_and_prints_no_key() {
    let s = TestServer::start().await;
    let key = s.admin().to_string();
    let data = s.data_dir();
    let cert1 = std::fs::read(data.join("tls/cert.pem")).unwrap();
    let s = s.restart(Opts::default()).await;
    assert!(s.admin_key.is_none(), "a key was printed again");
    assert!(!s.stderr_text().contains(&key));
    assert_eq!(std::fs::read(data.join("tls/cert.pem")).unwrap(), cert1);
    // the same admin key still works (identity layer)
    let r = s.get("/openapi.json").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_key_appears_in_no_file() {
    let mut s = TestServer::start().await;
    let key = s.admin().to_string();
    let _ = s
        .get("/healthz")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    s.terminate().await;
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(key.as_bytes()))
    };
    for entry in walk(&s.data_dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&key),
            "admin key found in {}",
            entry.display()
        );
        let _ = &hash;
    }
    // secret files are 0600
    use std::os::unix::fs::PermissionsExt;
    for f in ["jwt.secret", "keyring.json", "tls/key.pem"] {
        let mode = std::fs::metadata(s.data_dir().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
}

pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Probe I: a key header HTTP already gives a meaning was accepted: in
/// `Keep-Alive` a key worked over HTTP/1.1 and was 401 over HTTP/2, in
/// `Referer` it sat in every proxy's access log, with `_` nginx drops it.
#[test]
fn an_api_key_header_http_gives_a_meaning_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let show = |name: &str| {
        std::fs::write(&cfg, format!("[security]\napi_key_header = \"{name}\"\n")).unwrap();
        run_cli(
            &["config", "show", "--config", cfg.to_str().unwrap()],
            None,
            &[],
        )
    };
    for name in [
        "Keep-Alive",
        "Proxy-Authorization",
        "Referer",
        "Expect",
        "Range",
        "Set-Cookie",
        "WWW-Authenticate",
        "Sec-Fetch-Site",
        "Content-Disposition",
        "X_API_Key",
    ] {
        let (code, _, err) = show(name);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("security.api_key_header"), "{name}: {err}");
    }
    for name in ["X-Token", "X-Agent-Key", "Api-Key"] {
        let (code, out, err) = show(name);
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.contains(name), "{name}: {out}");
    }
}

#[test]
fn config_with_unknown_key_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    let show = |toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        run_cli(
            &["config", "show", "--config", cfg.to_str().unwrap()],
            None,
            &[],
        )
    };
    let (code, _, err) = show("[limits]\nrate = { max_request = 10 }\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("max_request"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // wrong type
    let (code, _, err) = show("[network]\ntls = \"yes please\"\n");
    assert_eq!(code, 2);
    assert!(err.contains("network.tls"), "{err}");
    // unreadable TLS file
    std::fs::write(&cfg, "[network]\ntls_cert = \"/nonexistent/cert.pem\"\n").unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", cfg.to_str().unwrap()], None, &[]);
    assert_eq!(code, 2);
    assert!(err.contains("network.tls_cert"), "{err}");
    // half a TLS pair: refused before any file is written
    let data = dir.path().join("half");
    std::fs::write(
        &cfg,
        format!("[network]\ntls_cert = \"{}\"\n", cfg.display()),
    )
    .unwrap();
    let (code, _, err) = run_cli(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("network.tls_key"), "{err}");
    assert!(!data.join("frenly.db").exists());
    // files that exist but are not what their key says: a TLS pair that is
    // not PEM, a keyring that is not one, an audit log that cannot be
    // opened: exit 2 and one line naming the key
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "not pem\n").unwrap();
    let bad_keyring = dir.path().join("keyring.json");
    std::fs::write(&bad_keyring, "{ nope").unwrap();
    for (i, (toml, key)) in [
        (
            format!(
                "[network]\ntls_cert = \"{0}\"\ntls_key = \"{0}\"\n",
                junk.display()
            ),
            "network.tls_cert",
        ),
        (
            format!(
                "[network]\ntls = false\n[encryption]\nkeyring_file = \"{}\"\n",
                bad_keyring.display()
            ),
            "encryption.keyring_file",
        ),
        (
            "[network]\ntls = false\n[audit]\nfile = \"/proc/nope/audit.log\"\n".to_string(),
            "audit.file",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&cfg, &toml).unwrap();
        let data = dir.path().join(format!("broken{i}"));
        let (code, _, err) = run_cli(
            &[
                "serve",
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            None,
            &[],
        );
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(err.contains(key), "{toml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // values out of range: one line naming the key and exit 2, never a
    // panic at start (exit 101) or a limit that wraps to nothing
    for (toml, key) in [
        (
            "[audit]\nqueue_capacity = 4611686018427387904\n",
            "audit.queue_capacity",
        ),
        ("[audit]\nqueue_capacity = 0\n", "audit.queue_capacity"),
        (
            "[network]\nmax_connections = 4611686018427387904\n",
            "network.max_connections",
        ),
        (
            "[limits]\nheader_max_bytes = 4294967296\n",
            "limits.header_max_bytes",
        ),
        (
            "[auth]\njwt_ttl_hours = 9007199254740992\n",
            "auth.jwt_ttl_hours",
        ),
        (
            "[auth]\nkey_rotation_grace_seconds = 9007199254740992\n",
            "auth.key_rotation_grace_seconds",
        ),
        (
            "[auth]\nkey_default_expiry_days = 36500\n",
            "auth.key_default_expiry_days",
        ),
        (
            "[auth]\nkey_default_expiry_days = -5\n",
            "auth.key_default_expiry_days",
        ),
        ("[auth]\nlockout_seconds = 0\n", "auth.lockout_seconds"),
        (
            "[security]\napi_key_header = \"Authorization\"\n",
            "security.api_key_header",
        ),
        (
            "[security]\napi_key_header = \"host\"\n",
            "security.api_key_header",
        ),
        // sqlx ignores a parameter it does not know, logging its value: a
        // typo would connect without TLS, a libpq-only secret be logged
        (
            "[database]\nurl = \"postgres://u@127.0.0.1/db?ssl_mode=require\"\n",
            "database.url",
        ),
        (
            "[database]\nurl = \"postgres://u@127.0.0.1/db?sslmode=verify-full&sslpassword=KEYPW\"\n",
            "database.url",
        ),
    ] {
        let (code, _, err) = show(toml);
        assert_eq!(code, 2, "{toml}: {err}");
        assert!(err.contains(key), "{toml}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // ... and the value of an unknown parameter is not echoed
    let (_, _, err) = show("[database]\nurl = \"postgres://u@127.0.0.1/db?sslpassword=KEYPW\"\n");
    assert!(
        err.contains("sslpassword") && !err.contains("KEYPW"),
        "{err}"
    );
    // the parameters sqlx acts on pass
    let (code, _, err) = show(
        "[database]\nurl = \"postgres://u@127.0.0.1/db?sslmode=require&application_name=f&options[statement_timeout]=5s\"\n",
    );
    assert_eq!(code, 0, "{err}");
    // a configured role may not redefine a built-in one
    let (code, _, err) = show("[roles.user]\npermissions = [\"admin\"]\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("roles.user"), "{err}");
    // secrets in a URL's userinfo and query are redacted by `config show`
    let (code, out, err) = show(
        "[alerts]\nwebhook_url = \"https://u:hookpw@alerts.example.com/hook?token=abc123&x=1\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("hookpw") && !out.contains("abc123"), "{out}");
    assert!(
        out.contains(
            "https://u:<redacted>@alerts.example.com/<redacted>?token=<redacted>&x=<redacted>"
        ),
        "{out}"
    );
    // ... and a webhook's path, often its secret (Slack-style URLs)
    let (code, out, err) = show(
        "[alerts]\nwebhook_url = \"https://hooks.example.com/services/T000/B000/PATHSECRET\"\n",
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("PATHSECRET"), "{out}");
    assert!(
        out.contains("https://hooks.example.com/<redacted>"),
        "{out}"
    );
}

/// `--config` names exactly one regular file: a directory or a FIFO in its
/// place (what `docker run -v` makes of a missing host file) is an error,
/// not the defaults, and a relative name is never looked up in the parent
/// directories (where another `frenly.toml` may say `tls = false`).
#[test]
fn config_file_must_be_exactly_the_named_regular_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sub = dir.path().join("up/sub");
    std::fs::create_dir_all(sub.join("frenly.toml")).unwrap();
    std::fs::write(
        dir.path().join("up/frenly.toml"),
        "[network]\nlisten = \"0.0.0.0:18399\"\ntls = false\n",
    )
    .unwrap();
    let show = |cwd: &std::path::Path, cfg: &str| {
        let out = std::process::Command::new(crate::common::BIN)
            .args(["config", "show", "--config", cfg, "--data-dir"])
            .arg(&data)
            .current_dir(cwd)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // a directory, named relatively from a directory whose parent holds a
    // file of that name, and absolutely
    let (code, out, err) = show(&sub, "frenly.toml");
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("not a regular file"), "{err}");
    assert!(!out.contains("0.0.0.0:18399"), "{out}");
    let abs = sub.join("frenly.toml");
    let (code, _, err) = show(dir.path(), abs.to_str().unwrap());
    assert_eq!(code, 2, "{err}");
    // a FIFO: an error at once, not a read that blocks for ever
    let fifo = dir.path().join("fifo.toml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let (code, _, err) = show(dir.path(), fifo.to_str().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a regular file"), "{err}");
    // a FIFO named for a file the config uses: refused at once (the open
    // blocked every command, `config show` included); a device such as
    // /dev/zero is refused the same way instead of read without end
    let named = dir.path().join("named.toml");
    std::fs::write(
        &named,
        format!(
            "[network]\ntls_cert = \"{0}\"\ntls_key = \"{0}\"\n",
            fifo.display()
        ),
    )
    .unwrap();
    let (code, _, err) = show(dir.path(), named.to_str().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("network.tls_cert"), "{err}");
    // JSON naming a key twice is refused, as TOML refuses it (the last one
    // won: TLS off)
    let twice = dir.path().join("twice.json");
    std::fs::write(&twice, r#"{"network": {"tls": true, "tls": false}}"#).unwrap();
    let (code, out, err) = show(dir.path(), twice.to_str().unwrap());
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("duplicate field `tls`"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A relative secret path in the config is in the data dir, whatever the
/// working directory: read from the working directory, a command run from
/// elsewhere made a new JWT secret and keyring there.
#[test]
fn relative_secret_paths_are_in_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("rel.toml");
    std::fs::write(
        &cfg,
        "[auth]\njwt_secret_file = \"secrets/jwt\"\n[encryption]\nkeyring_file = \"ring.json\"\n",
    )
    .unwrap();
    for wd in ["wd1", "wd2"] {
        let wd = dir.path().join(wd);
        std::fs::create_dir_all(wd.join("secrets")).unwrap();
        let out = std::process::Command::new(crate::common::BIN)
            .args(["init", "--config"])
            .arg(&cfg)
            .arg("--data-dir")
            .arg(&data)
            .current_dir(&wd)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(!wd.join("secrets/jwt").exists() && !wd.join("ring.json").exists());
    }
    assert!(data.join("secrets/jwt").is_file() && data.join("ring.json").is_file());
}

/// One server per SQLite file: a second `serve` on the file is refused at
/// start (it kept its own cache of task rows and served tasks the first had
/// finished long before); the first goes on serving.
#[tokio::test]
async fn a_second_server_on_one_sqlite_file_is_refused() {
    let s = TestServer::start().await;
    if s.database_url.is_some() {
        return; // PostgreSQL: shared by design
    }
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["serve", "--data-dir"])
        .arg(s.data_dir())
        .env("FRENLY_NETWORK__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("a second server started on the same SQLite file");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("one server per SQLite file"), "{err}");
    let r = s.admin_get("/api/auth/whoami").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn json_config_and_env_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(
        &cfg,
        r#"{"security": {"api_key_required": true, "api_key": "static-secret-value-123456", "api_key_header": "X-From-File"}}"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(
        &["--config", cfg.to_str().unwrap(), "config", "show"],
        None,
        &[
            ("FRENLY_SECURITY__API_KEY_HEADER", "X-From-Env"),
            ("FRENLY_LIMITS__RATE__MAX_REQUESTS", "7"),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["security"]["api_key_header"], "X-From-Env");
    assert_eq!(v["limits"]["rate"]["max_requests"], 7);
    assert!(
        !out.contains("static-secret-value-123456"),
        "secret not redacted"
    );
    // a case variant of the prefix was silently ignored (probe I)
    let (code, _, err) = run_cli(
        &["--config", cfg.to_str().unwrap(), "config", "show"],
        None,
        &[("frenly_network__tls", "false")],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("frenly_network__tls"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// In-process: a panicking handler and a slow one, behind the real stack.
mod in_process {
    use super::*;
    use axum::routing::get;
    use frenly::app::{bootstrap, AppState};
    use frenly::config::{self, Source};

    async fn state(dir: &std::path::Path, toml: &str) -> AppState {
        let file = dir.join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let cfg = config::load(&Source {
            file: Some(file),
            data_dir: Some(dir.join("data")),
            env: vec![],
        })
        .unwrap();
        let p = bootstrap::prepare(&cfg).await.unwrap();
        AppState::build(Arc::new(cfg), p.db).await.unwrap()
    }

    /// Serve `router` behind the real stack on a plain loopback listener
    /// (`extra` lines added to its `[network]` table) for the rest of the
    /// test; returns its address and the data dir, to be kept alive.
    async fn serve_plain(
        router: axum::Router,
        extra: &str,
    ) -> (std::net::SocketAddr, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let toml = format!("[network]\nlisten = \"127.0.0.1:0\"\ntls = false\n{extra}");
        let st = state(dir.path(), &toml).await;
        let app = frenly::server::stack::wrap(router, st.clone());
        let server = frenly::server::Server::bind_with(st, app).await.unwrap();
        let addr = server.listener.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        (addr, dir)
    }

    async fn boom() -> &'static str {
        panic!("secret detail /etc/passwd")
    }

    #[tokio::test]
    async fn panic_is_500_without_details_and_server_keeps_serving() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(
            dir.path(),
            "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\n",
        )
        .await;
        let router = axum::Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "fine" }));
        let app = frenly::server::stack::wrap(router, st.clone());
        let server = frenly::server::Server::bind_with(st, app).await.unwrap();
        let addr = server.listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let c = reqwest::Client::new();
        let r = c.get(format!("http://{addr}/boom")).send().await.unwrap();
        assert_eq!(r.status(), 500);
        assert!(r.headers().get("x-request-id").is_some());
        let text = r.text().await.unwrap();
        assert!(
            !text.contains("secret detail") && !text.contains("passwd"),
            "{text}"
        );
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["code"], "internal");
        let r = c.get(format!("http://{addr}/ok")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let _ = tx.send(());
        h.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn shutdown_lets_in_flight_requests_finish() {
        let dir = tempfile::tempdir().unwrap();
        let st = state(
            dir.path(),
            "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\n",
        )
        .await;
        let router = axum::Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(800)).await;
                "done"
            }),
        );
        let app = frenly::server::stack::wrap(router, st.clone());
        let server = frenly::server::Server::bind_with(st, app).await.unwrap();
        let addr = server.listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let h = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        let c = reqwest::Client::new();
        let req = tokio::spawn(async move { c.get(format!("http://{addr}/slow")).send().await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = tx.send(());
        let r = req.await.unwrap().unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), "done");
        h.await.unwrap().unwrap();
        // the listener is closed after shutdown
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[tokio::test]
    async fn slow_body_is_cut_by_the_request_timeout() {
        let router = axum::Router::new().route(
            "/echo",
            axum::routing::post(
                |frenly::http::Json(frenly::http::UniqueValue(v)): frenly::http::Json<
                    frenly::http::UniqueValue,
                >| async move { frenly::http::Json(v) },
            ),
        );
        let (addr, _dir) = serve_plain(router, "request_timeout_seconds = 1\n").await;
        let out = tokio::task::spawn_blocking(move || {
            let mut c = std::net::TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            c.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
            let mut buf = Vec::new();
            let _ = c.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).to_string()
        })
        .await
        .unwrap();
        assert!(out.starts_with("HTTP/1.1 408"), "{out}");
        assert!(out.contains("request_timeout"), "{out}");
    }

    #[tokio::test]
    async fn json_rejections_have_the_error_shape() {
        #[derive(serde::Deserialize, serde::Serialize)]
        #[serde(deny_unknown_fields)]
        struct In {
            n: u32,
        }
        impl frenly::http::RequestBody for In {}
        let router = axum::Router::new().route(
            "/in",
            axum::routing::post(|frenly::http::Json(v): frenly::http::Json<In>| async move {
                frenly::http::Json(v)
            }),
        );
        let (addr, _dir) = serve_plain(router, "").await;
        let c = reqwest::Client::new();
        let url = format!("http://{addr}/in");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        let cases: Vec<(Vec<u8>, u16, &str)> = vec![
            (b"{\"n\": 1".to_vec(), 400, "bad_request"),
            (b"{\"n\": \"x\"}".to_vec(), 400, "bad_request"),
            (b"{\"n\": 1, \"extra\": 2}".to_vec(), 400, "bad_request"),
            (
                vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
                400,
                "bad_request",
            ),
            (deep.into_bytes(), 400, "bad_request"),
        ];
        for (body, status, code) in cases {
            let r = c
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let (st, c2, _) = error_code(r).await;
            assert_eq!((st, c2.as_str()), (status, code));
        }
        let r = c
            .post(&url)
            .json(&serde_json::json!({"n": 3}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }

    /// Rejections that axum or a library answers on its own (a path segment
    /// that does not parse, a handler's bare status with a text body) reach
    /// the client in the contract's shape, with the envelope's headers and
    /// the original's other headers, never with the original's body.
    #[tokio::test]
    async fn library_rejections_have_the_error_shape() {
        let router = axum::Router::new()
            .route(
                "/ours/{n}",
                get(|frenly::http::Path(n): frenly::http::Path<u32>| async move { n.to_string() }),
            )
            .route(
                "/axums/{n}",
                get(
                    |axum::extract::Path(n): axum::extract::Path<u32>| async move { n.to_string() },
                ),
            )
            .route(
                "/bare",
                get(|| async {
                    (
                        http::StatusCode::UNPROCESSABLE_ENTITY,
                        [("retry-after", "7"), ("content-encoding", "gzip")],
                        "detail: /etc/secret.conf line 3",
                    )
                }),
            )
            .route(
                "/gone",
                get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "db down at 10.0.0.5") }),
            );
        let (addr, _dir) = serve_plain(router, "").await;
        let c = reqwest::Client::new();
        let get = |path: &str| c.get(format!("http://{addr}{path}")).send();
        // valid parameters still work through both extractors
        assert_eq!(get("/ours/5").await.unwrap().text().await.unwrap(), "5");
        assert_eq!(get("/axums/6").await.unwrap().text().await.unwrap(), "6");
        for path in ["/ours/%ff", "/ours/abc", "/axums/%ff%fe", "/axums/-1"] {
            let r = get(path).await.unwrap();
            assert!(r.headers().get("x-request-id").is_some(), "{path}");
            assert_eq!(r.headers()["content-type"], "application/json", "{path}");
            let (st, code, body) = error_code(r).await;
            assert_eq!((st, code.as_str()), (400, "bad_request"), "{path}: {body}");
            let text = body.to_string();
            assert!(
                !text.contains("abc") && !text.contains("-1"),
                "{path}: echoed {text}"
            );
        }
        let r = get("/bare").await.unwrap();
        assert_eq!(r.headers()["retry-after"], "7");
        assert!(
            r.headers().get("content-encoding").is_none(),
            "the old body's encoding stays behind"
        );
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        let (st, code, body) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "bad_request"));
        assert!(!body.to_string().contains("secret"), "{body}");
        let (st, code, body) = error_code(get("/gone").await.unwrap()).await;
        assert_eq!((st, code.as_str()), (503, "unavailable"));
        assert!(!body.to_string().contains("10.0.0.5"), "{body}");
    }
}

/// A start with an unreachable PostgreSQL says where and why in one line
/// without the URL's password (it said "pool timed out while waiting for an
/// open connection" twice, after 10 s), and waits no longer than half the
/// request time limit for it.
#[test]
fn an_unreachable_database_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[network]\ntls = false\nlisten = \"127.0.0.1:0\"\nrequest_timeout_seconds = 2\n\
             [database]\nurl = \"postgres://frenly:s3cret@127.0.0.1:{port}/frenly\"\n"
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, _, err) = run_cli(
        &[
            "serve",
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            dir.path().join("d").to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("database.url") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(err.to_lowercase().contains("refused"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// A database file that is not a database, or one a newer Frenly wrote,
/// stops the start at once with one line that says so (the first waited
/// the pool's 10 s and said "pool timed out"; the second printed sqlx's
/// migration error twice, without saying what to do).
#[test]
fn a_database_that_is_not_one_or_is_newer_is_named_at_start() {
    let serve = |data: &std::path::Path| {
        let started = std::time::Instant::now();
        let (code, _, err) = run_cli(
            &["serve", "--data-dir", data.to_str().unwrap()],
            None,
            &[
                ("FRENLY_NETWORK__TLS", "false"),
                ("FRENLY_NETWORK__LISTEN", "127.0.0.1:0"),
            ],
        );
        (code, err, started.elapsed())
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("frenly.db"),
        b"this is not a database\n".repeat(100),
    )
    .unwrap();
    let (code, err, took) = serve(&data);
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("is not an SQLite database") && err.contains("database.url"),
        "{err}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");

    let data = dir.path().join("e");
    let (code, _, err) = run_cli(&["init", "--data-dir", data.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{err}");
    let db = rusqlite::Connection::open(data.join("frenly.db")).unwrap();
    db.execute(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', 1, x'00', 0)",
        [],
    )
    .unwrap();
    drop(db);
    let (code, err, _) = serve(&data);
    assert_ne!(code, 0, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("newer Frenly") && err.contains("99990101000000"),
        "{err}"
    );
}

/// A JWT secret file that cannot be read or is too short is a
/// configuration error: exit 2, one line naming `auth.jwt_secret_file` and
/// the file (it was exit 1 with only "Permission denied").
#[test]
fn an_unusable_jwt_secret_is_a_config_error_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let (code, _, err) = run_cli(&["init", "--data-dir", data.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{err}");
    let secret = data.join("jwt.secret");
    for bad in ["a directory", "short"] {
        let _ = std::fs::remove_file(&secret);
        if bad == "short" {
            let _ = std::fs::remove_dir(&secret);
            std::fs::write(&secret, "too-short").unwrap();
        } else {
            std::fs::create_dir(&secret).unwrap();
        }
        let (code, _, err) = run_cli(
            &["serve", "--data-dir", data.to_str().unwrap()],
            None,
            &[
                ("FRENLY_NETWORK__TLS", "false"),
                ("FRENLY_NETWORK__LISTEN", "127.0.0.1:0"),
            ],
        );
        assert_eq!(code, 2, "{bad}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{bad}: {err}");
        assert!(
            err.contains("auth.jwt_secret_file") && err.contains("jwt.secret"),
            "{bad}: {err}"
        );
    }
}

/// `config show` on `text` written to `c.<ext>`, with `env`.
fn show_config(ext: &str, text: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join(format!("c.{ext}"));
    std::fs::write(&cfg, text).unwrap();
    run_cli(
        &["config", "show", "--config", cfg.to_str().unwrap()],
        None,
        env,
    )
}

/// Config errors never repeat a value: a TOML syntax error quoted the
/// offending line (`security.api_key = S3CRET...`, a URL's password), and an
/// all-digit `FRENLY_SECURITY__API_KEY` was refused repeating the key.
#[test]
fn config_errors_name_the_key_and_position_never_the_value() {
    for (ext, text, key) in [
        (
            "toml",
            "network.tls = false\nsecurity.api_key = S3CRET-static-key-value\n",
            Some("security.api_key"),
        ),
        (
            "toml",
            "[security]\napi_key = \"S3CRET-unterminated\n",
            Some("security.api_key"),
        ),
        (
            "toml",
            "[database]\nurl = \"postgres://app:S3CRETpw@db/app\"x\n",
            Some("database.url"),
        ),
        (
            "toml",
            "[alerts]\nwebhook_url = 'https://h.example.com/S3CRET\n",
            Some("alerts.webhook_url"),
        ),
        (
            "json",
            "{\"security\": {\"api_key\": \"S3CRET-json\"\n",
            None,
        ),
        ("json", "{\"security\": {\"api_key\": S3CRET}}", None),
    ] {
        let (code, _, err) = show_config(ext, text, &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(!err.contains("S3CRET"), "{text}: {err}");
        assert!(err.contains("line "), "{text}: {err}");
        if let Some(key) = key {
            assert!(err.contains(key), "{text}: {err}");
        }
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // a value of the wrong type is described, not repeated
    let (code, _, err) = show_config("toml", "[network]\nmax_connections = \"S3CRETx\"\n", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("network.max_connections") && !err.contains("S3CRET"),
        "{err}"
    );
    let (code, _, err) = show_config("toml", "", &[("FRENLY_NETWORK__TLS", "918273645546372819")]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("network.tls") && !err.contains("918273645546372819"),
        "{err}"
    );
    // a key that only holds text takes digits as text
    let (code, out, err) = show_config(
        "toml",
        "",
        &[(
            "FRENLY_SECURITY__API_KEY",
            "918273645546372819918273645546372819",
        )],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        !out.contains("918273645546372819") && !err.contains("918273645546372819"),
        "{out}{err}"
    );
    assert!(out.contains("\"api_key\": \"<redacted>\""), "{out}");
    // a UTF-8 byte order mark is no content, in JSON as in TOML
    let (code, out, err) = show_config("json", "\u{feff}{\"network\": {\"tls\": false}}", &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"tls\": false"), "{out}");
}

/// `config show` redacts whatever sits between `://` and the last `@` (a
/// raw `?` in a password was taken for the query and printed), and every
/// query part, with or without `=`; a URL with a raw `?` in its password
/// is refused without its tail being named as a parameter.
#[test]
fn redaction_and_url_errors_cover_every_url_shape() {
    let (code, out, err) = show_config(
        "toml",
        "[state]\nredis_url = \"redis://:pa%3FS3CRETtail@127.0.0.1:6379/11?token=S3CRETq\"\n[alerts]\nwebhook_url = \"https://hooks.example.com/hook?S3CRETTOKEN\"\n",
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("S3CRET"), "{out}");
    assert!(
        out.contains("https://hooks.example.com/<redacted>?<redacted>"),
        "{out}"
    );
    for (name, url) in [
        (
            "redact_url",
            frenly::config::redact_url("redis://:pa?S3CRETtail@127.0.0.1:6379/11"),
        ),
        (
            "redact_url",
            frenly::config::redact_url("postgres://u:a/b#S3CRET@h/db?x=S3CRET&S3CRET"),
        ),
        (
            "redact_webhook",
            frenly::config::redact_webhook("https://h.example.com/p?S3CRETTOKEN#S3CRETfrag"),
        ),
        (
            "redact_webhook",
            frenly::config::redact_webhook("https://u:p?S3CRET@h.example.com/"),
        ),
    ] {
        assert!(!url.contains("S3CRET"), "{name}: {url}");
    }
    assert_eq!(
        frenly::config::redact_url("redis://:pa?S3CRETtail@127.0.0.1:6379/11"),
        "redis://:<redacted>@127.0.0.1:6379/11"
    );
    for (text, key) in [
        (
            "[database]\nurl = \"postgres://u:pa?S3CRETtail@127.0.0.1/db\"\n",
            "database.url",
        ),
        (
            "[state]\nredis_url = \"redis://:pa?S3CRETtail@127.0.0.1:6379/11\"\n",
            "state.redis_url",
        ),
    ] {
        let (code, _, err) = show_config("toml", text, &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains(key) && !err.contains("S3CRET"),
            "{text}: {err}"
        );
    }
}

/// A database or Redis URL that cannot work is refused with the config
/// (exit 2 naming the key, so `check` catches it), not at the first
/// connection (exit 1, the PostgreSQL one not naming `database.url`).
#[test]
fn unusable_database_and_redis_urls_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (text, key) in [
        (
            "[state]\nredis_url = \"redis://:S3CRETpw@127.0.0.1:notaport/11\"\n",
            "state.redis_url",
        ),
        (
            "[state]\nredis_url = \"redis://:S3CRETpw@127.0.0.1:6379/notadb\"\n",
            "state.redis_url",
        ),
        (
            "[database]\nurl = \"postgres://u:S3CRETpw@127.0.0.1:99999/db\"\n",
            "database.url",
        ),
        (
            "[database]\nurl = \"postgres://u:S3CRETpw@[::1/db\"\n",
            "database.url",
        ),
    ] {
        let (code, _, err) = show_config("toml", text, &[]);
        assert_eq!(code, 2, "{text}: {err}");
        assert!(
            err.contains(key) && !err.contains("S3CRET"),
            "{text}: {err}"
        );
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, text).unwrap();
        let data = dir.path().join("d");
        for cmd in ["check", "serve"] {
            let (code, _, err) = run_cli(
                &[
                    cmd,
                    "--config",
                    cfg.to_str().unwrap(),
                    "--data-dir",
                    data.to_str().unwrap(),
                ],
                None,
                &[],
            );
            assert_eq!(code, 2, "{cmd} {text}: {err}");
            assert!(
                err.contains(key) && !err.contains("S3CRET"),
                "{cmd} {text}: {err}"
            );
        }
    }
    // the usual shapes pass
    for text in [
        "[state]\nredis_url = \"redis://127.0.0.1:6379/11\"\n",
        "[state]\nredis_url = \"rediss://user:pw@cache.example.com\"\n",
        "[database]\nurl = \"postgres://u:p%40ss@db.example.com:5432/app?sslmode=require\"\n",
        "[database]\nurl = \"postgresql:///app?host=/var/run/postgresql\"\n",
    ] {
        let (code, _, err) = show_config("toml", text, &[]);
        assert_eq!(code, 0, "{text}: {err}");
    }
}

/// A zero timeout meant one second without a word (an operator writing 0
/// for "no limit" got a 1 s limit): refused, like a zero connection limit.
#[test]
fn zero_timeouts_and_connection_limits_are_refused_naming_the_key() {
    for key in [
        "header_read_timeout_seconds",
        "request_timeout_seconds",
        "tls_handshake_timeout_seconds",
        "max_connections_per_address",
    ] {
        let (code, _, err) = show_config("toml", &format!("[network]\n{key} = 0\n"), &[]);
        assert_eq!(code, 2, "{key}: {err}");
        assert!(err.contains(&format!("network.{key}")), "{err}");
        let (code, _, err) = show_config("toml", &format!("[network]\n{key} = 1\n"), &[]);
        assert_eq!(code, 0, "{key}: {err}");
    }
}
