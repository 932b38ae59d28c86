//! Traffic defences (issue 5): rate limits, burst bans, bans management,
//! client address behind proxies, incidents and alerts — real HTTP against
//! the real binary (and, where an inner layer's refusal must be produced on
//! demand, the real stack in-process).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{audit_line, client_from, error_code, exchange, wait_for, Opts, TestServer};

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn num(r: &reqwest::Response, name: &str) -> u64 {
    header(r, name)
        .unwrap_or_else(|| panic!("{name} missing"))
        .parse()
        .unwrap()
}

/// A local webhook receiver: every JSON body POSTed to `/hook`.
async fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, got)
}

#[tokio::test]
async fn limit_boundary_headers_and_sliding_window() {
    let s = TestServer::with(Opts::default().config(
        "[limits]\nrate = { max_requests = 5, window_seconds = 2 }\nddos = { max_requests_per_second = 1000 }\n",
    ))
    .await;
    for i in 0..5u64 {
        let r = s.admin_get("/api/security/bans").send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(num(&r, "ratelimit-limit"), 5);
        assert_eq!(num(&r, "ratelimit-remaining"), 4 - i);
        let reset = num(&r, "ratelimit-reset");
        assert!((1..=3).contains(&reset), "reset {reset}");
    }
    let r = s.admin_get("/api/security/bans").send().await.unwrap();
    let retry = num(&r, "retry-after");
    assert!((1..=3).contains(&retry), "retry-after {retry}");
    assert_eq!(num(&r, "ratelimit-limit"), 5);
    assert_eq!(num(&r, "ratelimit-remaining"), 0);
    assert_eq!(num(&r, "ratelimit-reset"), retry);
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (429, "rate_limited"));
    // unauthenticated and unknown routes count too
    let (st, code, _) = error_code(s.get("/api/nothing").send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (429, "rate_limited"));
    // the probes are exempt and carry no RateLimit headers
    let r = s.get("/healthz").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(header(&r, "ratelimit-limit").is_none());
    assert_eq!(s.get("/readyz").send().await.unwrap().status(), 200);
    // the window slides: accepted again once Retry-After has passed
    tokio::time::sleep(Duration::from_millis(retry * 1000 + 50)).await;
    let r = s.admin_get("/api/security/bans").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(num(&r, "ratelimit-remaining") < 5);
}

#[tokio::test]
async fn burst_bans_expire_and_escalate() {
    let s = TestServer::with(Opts::default().config(
        "[limits]\nddos = { max_requests_per_second = 3, ban_seconds = 1, max_ban_seconds = 3 }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(s.get("/openapi.json").send().await.unwrap().status(), 200);
    }
    let r = s.get("/openapi.json").send().await.unwrap();
    assert_eq!(num(&r, "retry-after"), 1);
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (403, "ip_banned"));
    // banned: refused whatever the route, credentials included
    let (st, code, _) = error_code(s.admin_get("/api/security/bans").send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (403, "ip_banned"));
    assert_eq!(s.get("/healthz").send().await.unwrap().status(), 200);
    // only the probe itself: with a query, or another method, it is banned
    for r in [
        s.get("/healthz?x=1"),
        s.get("/readyz?%27or%201=1"),
        s.post("/healthz"),
    ] {
        let (st, code, _) = error_code(r.send().await.unwrap()).await;
        assert_eq!((st, code.as_str()), (403, "ip_banned"));
    }
    // the ban expires
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = s.admin_get("/api/security/bans").send().await.unwrap();
    assert_eq!(r.status(), 200);
    // a repeat offender gets twice as long
    for _ in 0..4 {
        let _ = s.get("/openapi.json").send().await.unwrap();
    }
    let r = s.get("/openapi.json").send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(num(&r, "retry-after"), 2);
}

/// Send `n` requests hyper cannot parse (a control character in the
/// request line), each on a fresh connection, and check that each is
/// still answered as what it is, whatever the limits decided.
async fn malformed_probes(s: &TestServer, n: usize) {
    for i in 0..n {
        let conn = tokio::net::TcpStream::connect(s.addr).await.unwrap();
        let text = exchange(conn, b"GET /x\x01 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            text.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "probe {i}: {text}"
        );
    }
}

/// The audit file's `malformed_http` violations.
fn malformed_lines(s: &TestServer) -> usize {
    std::fs::read_to_string(s.data_dir().join("security_audit.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(r#""violation_type":"malformed_http""#))
        .count()
}

#[tokio::test]
async fn a_flood_of_malformed_requests_ends_in_a_burst_ban() {
    let s = TestServer::with(Opts::default().plain().config(
        "[limits]\nallowlist = []\nddos = { max_requests_per_second = 3, ban_seconds = 60 }\n",
    ))
    .await;
    malformed_probes(&s, 5).await;
    // the fourth probe set a burst ban, with its incident
    audit_has(&s, &["ban_added", "incident"]).await;
    let (st, code, _) = error_code(s.get("/openapi.json").send().await.unwrap()).await;
    assert_eq!((st, code.as_str()), (403, "ip_banned"));
    // only the probes admitted before the ban are audited one by one (three
    // within a second; a fourth when a loaded machine spread them over more
    // than a second): the flood does not turn into an audit line per probe
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = malformed_lines(&s);
    assert!((3..=4).contains(&before), "{before}");
    malformed_probes(&s, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(malformed_lines(&s), before);
}

#[tokio::test]
async fn malformed_requests_from_a_trusted_proxy_are_not_held_against_it() {
    let s = TestServer::with(Opts::default().plain().config(
        "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [limits]\nallowlist = []\nddos = { max_requests_per_second = 3, ban_seconds = 60 }\n",
    ))
    .await;
    malformed_probes(&s, 5).await;
    wait_for("every probe audited", || async {
        (malformed_lines(&s) == 5).then_some(())
    })
    .await;
    // the proxy's other clients are still served
    assert_eq!(s.get("/openapi.json").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn spoofed_forwarded_for_is_ignored_without_trusted_proxies() {
    let s = TestServer::with(
        Opts::default().config("[limits]\nrate = { max_requests = 2, window_seconds = 60 }\n"),
    )
    .await;
    for (i, xff) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let r = s
            .get("/openapi.json")
            .header("X-Forwarded-For", *xff)
            .header("Forwarded", format!("for={xff}"))
            .send()
            .await
            .unwrap();
        let want = if i < 2 { 200 } else { 429 };
        assert_eq!(r.status(), want, "request {i}");
    }
}

#[tokio::test]
async fn forwarded_for_is_honoured_from_trusted_proxies() {
    let s = TestServer::with(Opts::default().config(
        "[network]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [limits]\nrate = { max_requests = 2, window_seconds = 60 }\n",
    ))
    .await;
    let get = |xff: &'static str| s.get("/openapi.json").header("X-Forwarded-For", xff).send();
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.1").await.unwrap().status(), 429);
    // another client behind the same proxy has its own limit
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 200);
    assert_eq!(get("198.51.100.2").await.unwrap().status(), 429);
    // a client cannot pick its address: what it sends is left of the hop the
    // proxy appends (the right-most untrusted hop wins)
    assert_eq!(
        get("203.0.113.50, 198.51.100.1").await.unwrap().status(),
        429
    );
    // nor with the other forwarding header, which the proxy passes through
    // as the client wrote it: only `network.forwarded_header` is read
    for i in 0..3 {
        let r = s
            .get("/openapi.json")
            .header("X-Forwarded-For", "198.51.100.1")
            .header("Forwarded", format!("for=192.0.2.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 429, "Forwarded must not pick the address");
    }
}

/// A dual-stack listener sees IPv4 peers as IPv4-mapped IPv6
/// (`::ffff:127.0.0.1`); every layer sees them as their IPv4 address. Before,
/// an IPv4 trusted proxy never matched: its forwarding header was ignored,
/// and a ban of one client behind it banned the proxy, so everyone. A
/// mapped network in the config is the IPv4 network it maps.
#[tokio::test]
async fn ipv4_peers_of_a_dual_stack_listener_are_their_ipv4_address() {
    for proxies in ["127.0.0.0/8", "::ffff:127.0.0.0/104"] {
        let s = TestServer::with(Opts::default().plain().config(&format!(
            "[network]\nlisten = \"[::ffff:127.0.0.1]:0\"\ntls = false\n\
             trusted_proxies = [\"{proxies}\"]\n\
             [limits]\nrate = {{ max_requests = 2, window_seconds = 60 }}\n",
        )))
        .await;
        let get = |xff: &'static str| s.get("/openapi.json").header("X-Forwarded-For", xff).send();
        assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
        assert_eq!(get("198.51.100.1").await.unwrap().status(), 200);
        assert_eq!(
            get("198.51.100.1").await.unwrap().status(),
            429,
            "{proxies}"
        );
        assert_eq!(
            get("198.51.100.2").await.unwrap().status(),
            200,
            "{proxies}"
        );
        // a ban of one client behind the proxy is that client's only
        let r = s
            .post("/api/security/bans")
            .header("X-API-Key", s.admin())
            .header("X-Forwarded-For", "198.51.100.3")
            .json(&json!({"ip": "::ffff:198.51.100.4", "seconds": 60, "reason": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let (st, code, _) = error_code(get("198.51.100.4").await.unwrap()).await;
        assert_eq!((st, code.as_str()), (403, "ip_banned"), "{proxies}");
        assert_eq!(
            get("198.51.100.5").await.unwrap().status(),
            200,
            "{proxies}"
        );
    }
}

#[tokio::test]
async fn a_ban_cannot_be_dodged_with_forwarded_for() {
    // without trusted proxies: the TCP peer is banned, headers change nothing
    let s = TestServer::with(Opts::default().config("[limits]\nallowlist = []\n")).await;
    // the admin bans 127.0.0.1 from another address (not its own)
    let other = crate::common::client_from(&s.data_dir(), true, [127, 0, 0, 2].into());
    let r = other
        .post(s.url("/api/security/bans"))
        .header("X-API-Key", s.admin())
        .json(&json!({"ip": "127.0.0.1", "seconds": 1, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for xff in ["198.51.100.7", "10.0.0.1", "::1"] {
        let r = s
            .get("/openapi.json")
            .header("X-Forwarded-For", xff)
            .header("X-Real-IP", xff)
            .send()
            .await
            .unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (403, "ip_banned"));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.get("/openapi.json").send().await.unwrap().status(), 200);

    // with trusted proxies: the banned client prepending another address
    // still arrives as itself (the proxy appends the real peer)
    let s = TestServer::with(
        Opts::default()
            .config("[network]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n"),
    )
    .await;
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "203.0.113.9", "seconds": 600, "reason": "test"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for xff in [
        "203.0.113.9",
        "1.2.3.4, 203.0.113.9",
        "127.0.0.1, 203.0.113.9",
    ] {
        let r = s
            .get("/openapi.json")
            .header("X-Forwarded-For", xff)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{xff}");
        assert!(header(&r, "retry-after").is_some());
    }
    let r = s
        .get("/openapi.json")
        .header("X-Forwarded-For", "203.0.113.10")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn admin_ban_endpoints_add_list_lift_and_validate() {
    // many admin requests in a row: lift the burst limit (10/s by default)
    let s = TestServer::with(
        Opts::default().config("[limits]\nddos = { max_requests_per_second = 1000 }\n"),
    )
    .await;
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "198.51.100.20", "seconds": 600, "reason": "scanner"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["ip"], "198.51.100.20");
    assert_eq!(b["reason"], "scanner");
    assert!(b["retry_after"].as_u64().unwrap() > 590);
    // IPv6 is grouped by /64
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "2001:db8:1:2::abcd", "seconds": 60, "reason": "v6"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let list: Value = s
        .admin_get("/api/security/bans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ips: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["ip"].as_str().unwrap())
        .collect();
    assert_eq!(ips, ["198.51.100.20", "2001:db8:1:2::/64"]);
    assert!(list["next_cursor"].is_null());
    // paging
    let page: Value = s
        .admin_get("/api/security/bans?limit=1")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap().to_string();
    let page: Value = s
        .admin_get(&format!("/api/security/bans?limit=1&cursor={cursor}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"][0]["ip"], "2001:db8:1:2::/64");
    // validation
    for (body, field) in [
        (json!({"ip": "not-an-ip", "seconds": 10}), "ip"),
        (json!({"ip": "10.0.0.1/8", "seconds": 10}), "ip"),
        (json!({"seconds": 10}), "ip"),
        (json!({"ip": "10.0.0.1", "seconds": 0}), "seconds"),
        (json!({"ip": "10.0.0.1", "seconds": 31_536_001}), "seconds"),
        (json!({"ip": "10.0.0.1", "seconds": -5}), "seconds"),
        (json!({"ip": "10.0.0.1", "seconds": 1.5}), "seconds"),
        (json!({"ip": "10.0.0.1", "seconds": "10"}), "seconds"),
        (json!({"ip": "10.0.0.1"}), "seconds"),
        // the address this request comes from: the ban would lock the
        // admin out before a DELETE could lift it
        (json!({"ip": "127.0.0.1", "seconds": 10}), "ip"),
        (json!({"ip": " 127.0.0.1 ", "seconds": 10}), "ip"),
        (
            json!({"ip": "10.0.0.1", "seconds": 10, "reason": "a\nb"}),
            "reason",
        ),
    ] {
        let r = s
            .admin_post("/api/security/bans", &body)
            .send()
            .await
            .unwrap();
        let (st, code, e) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "validation_failed"), "{body}");
        assert!(e["error"]["fields"][field].is_array(), "{body}: {e}");
    }
    // an unknown member or a body that is not an object: validation_failed
    // naming it, and no ban
    for (body, field) in [
        (
            json!({"ip": "10.0.0.1", "seconds": 10, "extra": 1}),
            "extra",
        ),
        (json!([]), "body"),
    ] {
        let r = s
            .admin_post("/api/security/bans", &body)
            .send()
            .await
            .unwrap();
        let (st, code, e) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "validation_failed"), "{body}");
        assert!(e["error"]["fields"][field].is_array(), "{body}: {e}");
    }
    // a misspelt filter never widens a list silently
    for list in [
        "/api/security/bans?bogus=1",
        "/api/security/incidents?kynd=ddos",
    ] {
        let r = s.admin_get(list).send().await.unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "validation_failed"), "{list}");
    }
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "10.0.0.1", "seconds": 31_536_000}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // no credentials: 401
    let r = s
        .post("/api/security/bans")
        .json(&json!({"ip": "10.0.0.2", "seconds": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // lift: 204, then 404; any address of the /64 names the v6 ban
    let del = |p: &str| {
        s.client
            .delete(s.url(p))
            .header("X-API-Key", s.admin())
            .send()
    };
    assert_eq!(
        del("/api/security/bans/198.51.100.20")
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        del("/api/security/bans/198.51.100.20")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        del("/api/security/bans/2001:db8:1:2::1")
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        del("/api/security/bans/198.51.100.99")
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(del("/api/security/bans/junk").await.unwrap().status(), 400);
    let list: Value = s
        .admin_get("/api/security/bans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // the changes are audited: `ip` is the requester's address (the
    // admin's, as on every event), the banned address is `target_ip`
    // (before, `ip` held the target: `?ip=198.51.100.20` listed the
    // admin's actions as that address's)
    for kind in ["ban_added", "ban_lifted"] {
        let needle = format!("\"event_type\":\"{kind}\"");
        let line = audit_line(&s, kind, |l| {
            l.contains(&needle) && l.contains("198.51.100.20")
        })
        .await;
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ip"], "127.0.0.1", "{line}");
        assert_eq!(v["target_ip"], "198.51.100.20", "{line}");
        assert!(v["user_id"].is_string(), "{line}");
        let by_target = s
            .audit_rows(&format!("type={kind}&ip=198.51.100.20"), 0)
            .await;
        assert!(by_target.is_empty(), "{by_target:?}");
        let by_admin = s.audit_rows(&format!("type={kind}&ip=127.0.0.1"), 1).await;
        assert!(
            by_admin.iter().any(|i| i["target_ip"] == "198.51.100.20"),
            "{by_admin:?}"
        );
    }
}

#[tokio::test]
async fn bans_survive_a_restart() {
    let config = "[network]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n";
    let s = TestServer::with(Opts::default().config(config)).await;
    let key = s.admin().to_string();
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "203.0.113.77", "seconds": 3600, "reason": "persist"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let s = s.restart(Opts::default().config(config)).await;
    let list: Value = s
        .get("/api/security/bans")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["ip"], "203.0.113.77");
    assert_eq!(list["items"][0]["reason"], "persist");
    let r = s
        .get("/openapi.json")
        .header("X-Forwarded-For", "203.0.113.77")
        .send()
        .await
        .unwrap();
    let (st, code, _) = error_code(r).await;
    assert_eq!((st, code.as_str()), (403, "ip_banned"));
}

#[tokio::test]
async fn the_allowlist_is_never_limited_or_banned() {
    let s = TestServer::with(Opts::default().config(
        "[limits]\nallowlist = [\"127.0.0.0/8\"]\nrate = { max_requests = 2, window_seconds = 60 }\n\
         ddos = { max_requests_per_second = 3 }\n",
    ))
    .await;
    for _ in 0..15 {
        let r = s.get("/openapi.json").send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(header(&r, "ratelimit-limit").is_none());
    }
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "127.0.0.1", "seconds": 60}),
        )
        .send()
        .await
        .unwrap();
    let (st, code, e) = error_code(r).await;
    assert_eq!((st, code.as_str()), (400, "validation_failed"));
    assert!(e["error"]["fields"]["ip"].is_array());
}

#[tokio::test]
async fn ddos_incident_is_stored_audited_and_alerted_to_the_webhook() {
    let (url, got) = webhook().await;
    let s = TestServer::with(Opts::default().config(&format!(
        "[network]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [limits]\nddos = {{ max_requests_per_second = 3, ban_seconds = 60 }}\n\
         allowlist = [\"127.0.0.1/32\"]\n\
         [alerts]\nwebhook_url = \"{url}\"\n"
    )))
    .await;
    // the flood comes from 198.51.100.66 (behind the trusted proxy); the
    // admin's requests come from 127.0.0.1 (allowlisted, so polling is free)
    for _ in 0..4 {
        let _ = s
            .get("/openapi.json")
            .header("X-Forwarded-For", "198.51.100.66")
            .send()
            .await
            .unwrap();
    }
    let alert = wait_for("the webhook alert", || {
        let first = got.lock().unwrap().first().cloned();
        async move { first }
    })
    .await;
    assert_eq!(alert["kind"], "ddos");
    assert_eq!(alert["ip"], "198.51.100.66");
    assert_eq!(alert["actions"], json!(["ban", "audit", "alert"]));
    assert_eq!(alert["details"]["ban_seconds"], 60);
    let incidents: Value = wait_for("the stored incident", || {
        let req = s.admin_get("/api/security/incidents");
        async move {
            let v: Value = req.send().await.unwrap().json().await.unwrap();
            (!v["items"].as_array().unwrap().is_empty()).then_some(v)
        }
    })
    .await;
    let i = &incidents["items"][0];
    assert_eq!(i["kind"], "ddos");
    assert_eq!(i["ip"], "198.51.100.66");
    assert_eq!(i["id"], alert["id"]);
    assert!(incidents["next_cursor"].is_null());
    let list: Value = s
        .admin_get("/api/security/bans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"][0]["ip"], "198.51.100.66");
    assert_eq!(list["items"][0]["reason"], "ddos");
    // filter by kind; bad parameters are 400
    let v: Value = s
        .admin_get("/api/security/incidents?kind=brute_force")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(v["items"].as_array().unwrap().is_empty());
    for q in ["kind=nope", "limit=0", "limit=x", "cursor=not-a-cursor"] {
        let r = s
            .admin_get(&format!("/api/security/incidents?{q}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
    }
    // exactly one alert for the one burst, though more requests were refused
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got.lock().unwrap().len(), 1);
    audit_has(&s, &["incident", "security_violation", "ban_added"]).await;
}

/// Wait until the server's audit log holds each of these event types (the
/// writer appends within moments; no shutdown needed).
/// A banned address's refusals are audited once a minute (with the count of
/// the others), not once a request: a flood from a banned address must not
/// be a way to fill the disk with audit lines.
#[tokio::test]
async fn a_banned_addresss_flood_is_audited_once_not_once_a_request() {
    let s = TestServer::with(Opts::default().plain().config(
        "[limits]\nallowlist = []\nddos = { max_requests_per_second = 3, ban_seconds = 60 }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(s.get("/api/tasks").send().await.unwrap().status(), 401);
    }
    for _ in 0..40 {
        let (st, code, _) = error_code(s.get("/api/tasks").send().await.unwrap()).await;
        assert_eq!((st, code.as_str()), (403, "ip_banned"));
    }
    // another address is audited as ever; once its line is written, every
    // line queued before it is too
    let other = client_from(&s.data_dir(), false, "127.0.0.2".parse().unwrap());
    let r = other
        .get(s.url("/api/tasks?probe=after-the-flood"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    audit_line(&s, "the other address's access", |l| {
        l.contains(r#""event_type":"api_access""#) && l.contains(r#""ip":"127.0.0.2""#)
    })
    .await;
    let log = std::fs::read_to_string(s.data_dir().join("security_audit.log")).unwrap();
    let access = |status: &str| {
        log.lines()
            .filter(|l| {
                l.contains(r#""event_type":"api_access""#)
                    && l.contains(r#""ip":"127.0.0.1""#)
                    && l.contains(&format!(r#""status":{status}"#))
            })
            .count()
    };
    assert_eq!(access("401"), 3, "every request before the ban: {log}");
    assert_eq!(access("403"), 1, "the first refusal of the ban only: {log}");
    assert!(log.contains(r#""event_type":"ban_added""#));
    // the metrics still count every refusal
    let metrics = other
        .get(s.url("/metrics"))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let refused = metrics
        .lines()
        .find(|l| l.contains("ip_banned") && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<f64>().ok());
    assert_eq!(refused, Some(40.0), "{metrics}");
}

async fn audit_has(s: &TestServer, events: &[&str]) {
    for e in events {
        let needle = format!("\"event_type\":\"{e}\"");
        audit_line(s, e, |l| l.contains(&needle)).await;
    }
}

/// In-process: the real stack around routes that answer like the IDS
/// (`request_blocked`) and like a failing login, so the incident path from
/// an inner layer's refusal to ban, incident and webhook is exercised over
/// real HTTP without the IDS and identity modules.
mod in_process {
    use super::*;
    use frenly::app::{bootstrap, AppState};
    use frenly::config::{self, Source};
    use frenly::http::ApiError;

    async fn serve(dir: &std::path::Path, toml: &str) -> String {
        let file = dir.join("c.toml");
        std::fs::write(
            &file,
            format!("[network]\nlisten = \"127.0.0.1:0\"\ntls = false\n{toml}"),
        )
        .unwrap();
        let cfg = config::load(&Source {
            file: Some(file),
            data_dir: Some(dir.join("data")),
            env: vec![],
        })
        .unwrap();
        let p = bootstrap::prepare(&cfg).await.unwrap();
        let st = AppState::build(Arc::new(cfg), p.db).await.unwrap();
        let probes = axum::Router::new()
            .route(
                "/api/probe",
                axum::routing::get(|| async {
                    ApiError::RequestBlocked {
                        family: "sqli".into(),
                        request_id: "x".into(),
                    }
                }),
            )
            .route(
                "/api/auth/login",
                axum::routing::post(|| async { ApiError::Unauthenticated }),
            );
        let app = frenly::server::stack::wrap(probes, st.clone());
        let server = frenly::server::Server::bind_with(st, app).await.unwrap();
        let addr = server.listener.local_addr().unwrap();
        tokio::spawn(server.run(std::future::pending()));
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn ids_blocks_lead_to_ban_incident_and_alert_at_the_threshold() {
        let dir = tempfile::tempdir().unwrap();
        let (hook, got) = webhook().await;
        let base = serve(
            dir.path(),
            &format!(
                "[ids]\nthreshold = 3\nban_seconds = 120\n[alerts]\nwebhook_url = \"{hook}\"\n"
            ),
        )
        .await;
        let c = reqwest::Client::new();
        for _ in 0..3 {
            let r = c.get(format!("{base}/api/probe")).send().await.unwrap();
            assert_eq!(r.status(), 403);
            let (_, code, _) = error_code(r).await;
            assert_eq!(code, "request_blocked");
        }
        // banned from the next request on, before the IDS sees it
        let r = c.get(format!("{base}/api/probe")).send().await.unwrap();
        assert!(num(&r, "retry-after") > 100);
        let (_, code, _) = error_code(r).await;
        assert_eq!(code, "ip_banned");
        let alerts: Vec<Value> = wait_for("two alerts", || {
            let g = got.lock().unwrap().clone();
            async move { (g.len() >= 2).then_some(g) }
        })
        .await;
        // the first block is recorded and alerted; the third bans (each
        // incident is answered in its own background task: any order)
        let mut alerts = alerts;
        alerts.sort_by_key(|a| a["details"]["blocked_requests"].as_u64());
        assert_eq!(alerts[0]["kind"], "sql_injection");
        assert_eq!(alerts[0]["actions"], json!(["audit", "alert"]));
        assert_eq!(alerts[1]["kind"], "sql_injection");
        assert_eq!(alerts[1]["actions"], json!(["ban", "audit", "alert"]));
        assert_eq!(alerts[1]["details"]["blocked_requests"], 3);
        assert_eq!(alerts[1]["details"]["ban_seconds"], 120);
        assert_eq!(alerts[1]["ip"], "127.0.0.1");
        // the banned client's further requests never feed a detector again
        for _ in 0..10 {
            let _ = c.get(format!("{base}/api/probe")).send().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(got.lock().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn repeated_login_failures_are_a_brute_force_incident() {
        let dir = tempfile::tempdir().unwrap();
        let (hook, got) = webhook().await;
        let base = serve(
            dir.path(),
            &format!(
                "[monitor]\nfailed_login_burst = 3\n[incidents]\nban = [\"brute_force\"]\n\
                 [alerts]\nwebhook_url = \"{hook}\"\n"
            ),
        )
        .await;
        let c = reqwest::Client::new();
        for _ in 0..3 {
            let r = c
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"username": "admin", "password": "wrong"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 401);
        }
        let alert = wait_for("the alert", || {
            let first = got.lock().unwrap().first().cloned();
            async move { first }
        })
        .await;
        assert_eq!(alert["kind"], "brute_force");
        assert_eq!(alert["details"]["failed_logins"], 3);
        // the alert carries no credentials
        assert!(!alert.to_string().contains("wrong"));
        let r = c
            .post(format!("{base}/api/auth/login"))
            .json(&json!({"username": "admin", "password": "x"}))
            .send()
            .await
            .unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (403, "ip_banned"));
    }
}

/// probe-G #3: bans were capped by `limits.max_tracked_clients`, so an
/// attacker with more addresses than that freed its first-banned address
/// by getting newer ones banned. Bans have their own cap
/// (`limits.max_bans`): many bans past the tracked clients' cap keep the
/// first one.
#[tokio::test]
async fn bans_past_the_tracked_clients_cap_do_not_evict_earlier_bans() {
    let s = TestServer::with(Opts::default().config(
        "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [limits]\nmax_tracked_clients = 5\n[ids]\nthreshold = 1\n",
    ))
    .await;
    let attack = |n: u32| {
        s.get("/api/tasks?q=%27%20or%201%3D1--")
            .header(
                "X-Forwarded-For",
                format!("198.51.{}.{}", n / 250, n % 250 + 1),
            )
            .send()
    };
    assert_eq!(attack(0).await.unwrap().status(), 403);
    let first = attack(0).await.unwrap();
    let (_, code, _) = crate::common::error_code(first).await;
    assert_eq!(code, "ip_banned");
    for n in 1..40 {
        assert_eq!(attack(n).await.unwrap().status(), 403);
    }
    let again = attack(0).await.unwrap();
    let (status, code, _) = crate::common::error_code(again).await;
    assert_eq!((status, code.as_str()), (403, "ip_banned"));
}
