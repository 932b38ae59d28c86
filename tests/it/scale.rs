//! Scale-out (issue 7): two real instances sharing one PostgreSQL database
//! and one Redis behave as one server; Redis going away is handled by the
//! configured policy and the instance reconnects by itself.
//!
//! Without PostgreSQL or Redis on this machine these tests print SKIPPED and
//! pass; with `CI_REQUIRE_SERVICES=1` they fail instead.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::Cuttable;
use crate::common::{
    drop_pg_database, error_code, fresh_pg_database, need, pg_available, redis_available, Opts,
    TestServer,
};

const REDIS: &str = "redis://127.0.0.1:6379";

/// A fresh PostgreSQL database, dropped at the end of the test.
struct PgDb(String);

impl Drop for PgDb {
    fn drop(&mut self) {
        drop_pg_database(&self.0);
    }
}

/// Two instances A and B sharing one database, one Redis (own key prefix),
/// the JWT secret and the keyring; each its own data dir, certificate and
/// audit file. Requests from 127.0.0.1 itself are allowlisted (the test's
/// admin traffic); loopback is a trusted proxy, so a test plays a client by
/// sending `X-Forwarded-For`, and that address is limited and bannable.
struct Pair {
    a: TestServer,
    b: TestServer,
    /// The instances' Redis key prefix (their channel is `{prefix}events`).
    prefix: String,
    _db: PgDb,
}

fn services() -> bool {
    need("PostgreSQL", pg_available()) && need("Redis", redis_available())
}

fn config(limits: &str, prefix: &str, redis: &str, extra: &str) -> String {
    format!(
        "[network]\nlisten = \"127.0.0.1:0\"\ntrusted_proxies = [\"127.0.0.0/8\"]\n\
         [limits]\nallowlist = [\"127.0.0.1/32\"]\n{limits}\n\
         [state]\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n{extra}"
    )
}

fn prefix() -> String {
    format!("frenly_t_{}:", uuid::Uuid::new_v4().simple())
}

async fn pair(limits: &str) -> Pair {
    pair_with(limits, "").await
}

/// Two instances; `extra`: more config sections for both.
async fn pair_with(limits: &str, extra: &str) -> Pair {
    pair_via([REDIS, REDIS], limits, extra).await
}

/// Two instances reaching the same Redis at these URLs (A's, B's).
async fn pair_via(redis: [&str; 2], limits: &str, extra: &str) -> Pair {
    let db = PgDb(fresh_pg_database());
    let prefix = prefix();
    let a = TestServer::with(
        Opts::default()
            .config(&config(limits, &prefix, redis[0], extra))
            .database(&db.0),
    )
    .await;
    let shared = format!(
        "{extra}[auth]\njwt_secret_file = \"{}\"\n[encryption]\nkeyring_file = \"{}\"\n",
        a.data_dir().join("jwt.secret").display(),
        a.data_dir().join("keyring.json").display()
    );
    let mut b = TestServer::with(
        Opts::default()
            .config(&config(limits, &prefix, redis[1], &shared))
            .database(&db.0),
    )
    .await;
    assert!(a.admin_key.is_some(), "A prints the first admin key");
    assert!(
        b.admin_key.is_none(),
        "B finds the admin and prints nothing"
    );
    // the one admin, for B's admin routes (its metrics) too
    b.admin_key = a.admin_key.clone();
    Pair {
        a,
        b,
        prefix,
        _db: db,
    }
}

/// A request as client `ip` (forwarded by the loopback proxy) with a key.
fn as_client(s: &TestServer, ip: &str, key: &str, path: &str) -> reqwest::RequestBuilder {
    s.get(path)
        .header("X-Forwarded-For", ip)
        .header("X-API-Key", key)
}

fn admin_of(p: &Pair) -> &str {
    p.a.admin()
}

/// Poll `f` until it returns true or `limit` passes; returns the time taken.
async fn within<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return Some(start.elapsed());
        }
        if start.elapsed() > limit {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_ban_made_on_a_refuses_the_address_on_b_within_a_second() {
    if !services() {
        return;
    }
    let p = pair("").await;
    let admin = admin_of(&p).to_string();
    let ip = "203.0.113.9";
    let r = as_client(&p.b, ip, &admin, "/api/auth/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r =
        p.a.admin_post(
            "/api/security/bans",
            &json!({"ip": ip, "seconds": 120, "reason": "test"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let banned = within(Duration::from_secs(1), || async {
        let r = as_client(&p.b, ip, &admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap();
        r.status() == 403
    })
    .await;
    assert!(
        banned.is_some(),
        "B still serves the banned address after 1 s"
    );
    let r = as_client(&p.b, ip, &admin, "/api/auth/whoami")
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (403, "ip_banned"));
    // B lists it (mirrored through pub/sub) and lifting it on B frees it on A
    let listed = within(Duration::from_secs(1), || async {
        let v: Value =
            p.b.client
                .get(p.b.url("/api/security/bans"))
                .header("X-API-Key", &admin)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        v["items"].as_array().unwrap().iter().any(|b| b["ip"] == ip)
    })
    .await;
    assert!(listed.is_some(), "B does not list A's ban");
    let r =
        p.b.client
            .delete(p.b.url(&format!("/api/security/bans/{ip}")))
            .header("X-API-Key", &admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    let lifted = within(Duration::from_secs(1), || async {
        let r = as_client(&p.a, ip, &admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap();
        r.status() == 200
    })
    .await;
    assert!(lifted.is_some(), "lifted on B, still banned on A after 1 s");
}

#[tokio::test]
async fn the_rate_limit_is_global() {
    if !services() {
        return;
    }
    let n = 12u32;
    let p = pair(&format!(
        "rate.max_requests = {n}\nrate.window_seconds = 60\nddos.max_requests_per_second = 1000\n"
    ))
    .await;
    let admin = admin_of(&p).to_string();
    let ip = "203.0.113.20";
    use_up_shared_window(&p, n, |_| ip.to_string(), [ip, ip]).await;
    // another address is not affected
    let r = as_client(&p.b, "203.0.113.21", &admin, "/api/auth/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `limits.per_identity` counts one user's requests over every instance
/// (here from a new address each time, so only the identity limit binds).
#[tokio::test]
async fn the_per_identity_limit_is_global() {
    if !services() {
        return;
    }
    let n = 10u32;
    let p = pair(&format!(
        "rate.max_requests = 100000\nddos.max_requests_per_second = 100000\n\
         per_identity = {{ max_requests = {n}, window_seconds = 60 }}\n"
    ))
    .await;
    use_up_shared_window(
        &p,
        n,
        |i| format!("203.0.113.{}", 40 + i),
        ["203.0.113.90", "203.0.113.91"],
    )
    .await;
}

/// `n` admin requests alternating A and B (request `i` from address
/// `ip(i)`) are each admitted with one less remaining in the shared window;
/// then one more on A (from `refused[0]`) and on B (from `refused[1]`) is
/// refused with 429.
async fn use_up_shared_window(p: &Pair, n: u32, ip: impl Fn(u32) -> String, refused: [&str; 2]) {
    let admin = admin_of(p);
    for i in 0..n {
        let s = if i % 2 == 0 { &p.a } else { &p.b };
        let r = as_client(s, &ip(i), admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        let remaining: u32 = r.headers()["ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(remaining, n - i - 1, "request {i}: the count is shared");
    }
    for (s, ip) in [(&p.a, refused[0]), (&p.b, refused[1])] {
        let r = as_client(s, ip, admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap();
        assert!(r.headers().contains_key("retry-after"));
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (429, "rate_limited"));
    }
}

/// Failed logins from one address spread over the instances add up to the
/// `brute_force` incident, and its ban holds on both.
#[tokio::test]
async fn failed_logins_spread_over_instances_are_one_brute_force_incident() {
    if !services() {
        return;
    }
    // limits far above the probes below, so only the incident can ban
    let p = pair_with(
        "rate.max_requests = 100000\nddos.max_requests_per_second = 100000\n",
        "[monitor]\nfailed_login_burst = 3\n[incidents]\nban = [\"brute_force\"]\n",
    )
    .await;
    let ip = "198.51.100.60";
    let login = |s: &TestServer, user: &str| {
        s.post("/api/auth/login")
            .header("X-Forwarded-For", ip)
            .json(&json!({"username": user, "password": "wrong password"}))
            .send()
    };
    // asks without another login failure (which would count on its own)
    let probe = |s: &TestServer| {
        s.get("/api/auth/whoami")
            .header("X-Forwarded-For", ip)
            .send()
    };
    // three accounts (no account lockout): A, B, then A
    for (s, user) in [(&p.a, "nobody1"), (&p.b, "nobody2")] {
        assert_eq!(login(s, user).await.unwrap().status(), 401);
        assert_eq!(probe(&p.a).await.unwrap().status(), 401, "not banned yet");
    }
    assert_eq!(login(&p.a, "nobody3").await.unwrap().status(), 401);
    // the ban is in place on both (Redis, and each one's mirror)
    let banned = within(Duration::from_secs(2), || async {
        let (a, b) = (probe(&p.a).await.unwrap(), probe(&p.b).await.unwrap());
        a.status() == 403 && b.status() == 403
    })
    .await;
    assert!(
        banned.is_some(),
        "not banned on both after 3 failures over 2 instances"
    );
}

#[tokio::test]
async fn a_key_revoked_on_a_fails_on_b_at_once_and_so_do_tokens_and_lockouts() {
    if !services() {
        return;
    }
    let p = pair("").await;
    let admin = admin_of(&p).to_string();
    let ip = "203.0.113.30";
    // key: verified (and cached) on B, revoked on A, refused on B at once
    let r =
        p.a.admin_post("/api/keys", &json!({"name": "k"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    let key = k["key"].as_str().unwrap().to_string();
    for _ in 0..3 {
        let r = as_client(&p.b, ip, &key, "/api/auth/whoami")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        // allowlisted requests (no limits) learn of revocations too
        let r =
            p.b.get("/api/auth/whoami")
                .header("X-API-Key", &key)
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 200);
    }
    let r =
        p.a.client
            .delete(p.a.url(&format!("/api/keys/{}", k["id"].as_str().unwrap())))
            .header("X-API-Key", &admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    let r = as_client(&p.b, ip, &key, "/api/auth/whoami")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "revoked on A, still accepted on B");
    let r =
        p.b.get("/api/auth/whoami")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 401);

    // JWT: logout on B, refused on A at once
    let user = json!({"username": "scale_user", "email": "s@example.com",
                      "password": "a long enough password 1", "roles": ["user"]});
    let r = p.a.admin_post("/api/users", &user).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let login = |s: &TestServer, pw: &str, from: &str| {
        s.post("/api/auth/login")
            .header("X-Forwarded-For", from)
            .json(&json!({"username": "scale_user", "password": pw}))
    };
    let r = login(&p.b, "a long enough password 1", ip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_string();
    let bearer = |s: &TestServer, path: &str| {
        s.get(path)
            .header("X-Forwarded-For", ip)
            .header("Authorization", format!("Bearer {token}"))
    };
    assert_eq!(
        bearer(&p.a, "/api/auth/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r =
        p.b.post("/api/auth/logout")
            .header("X-Forwarded-For", ip)
            .header("Authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        bearer(&p.a, "/api/auth/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // lockout: failures spread over A and B add up (5 by default); then
    // even the right password is refused on either instance
    for i in 0..5 {
        let s = if i % 2 == 0 { &p.a } else { &p.b };
        let r = login(s, "wrong password", &format!("198.51.100.{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let r = login(&p.a, "a long enough password 1", "198.51.100.99")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the account is locked on every instance");
}

#[tokio::test]
async fn eight_workers_over_two_instances_claim_200_tasks_each_exactly_once() {
    if !services() {
        return;
    }
    let p = pair("").await;
    let admin = admin_of(&p).to_string();
    for i in 0..200 {
        let s = if i % 2 == 0 { &p.a } else { &p.b };
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", &admin)
            .json(&json!({"title": format!("task {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    let mut workers = Vec::new();
    for w in 0..8 {
        let s = if w % 2 == 0 { &p.a } else { &p.b };
        let (client, url, key) = (s.client.clone(), s.url("/api/agent/claim"), admin.clone());
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let r = client
                    .post(&url)
                    .header("X-API-Key", &key)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                match r.status().as_u16() {
                    200 => {
                        let t: Value = r.json().await.unwrap();
                        assert_eq!(t["status"], "running");
                        got.push(t["id"].as_str().unwrap().to_string());
                    }
                    204 => return got,
                    s => panic!("claim answered {s}"),
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut per_worker = Vec::new();
    for w in workers {
        let got = w.await.unwrap();
        per_worker.push(got.len());
        all.extend(got);
    }
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 200, "claims per worker: {per_worker:?}");
    assert_eq!(distinct.len(), 200, "a task was claimed twice");
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 2,
        "both instances served claims: {per_worker:?}"
    );
}

#[tokio::test]
async fn a_task_created_on_a_reaches_a_websocket_on_b() {
    if !services() {
        return;
    }
    let p = pair("").await;
    let mut ws = crate::ws::connect(&p.b, Some(admin_of(&p))).await.unwrap();
    // the subscriber on B may still be connecting: retry with new tasks
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = crate::tasks::create(&p.a, json!({"title": "hello from A"})).await;
        let id = t["id"].as_str().unwrap().to_string();
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                let ev = crate::ws::next_event(&mut ws).await;
                if ev["type"] == "task_created" && ev["task"]["id"] == id.as_str() {
                    return ev;
                }
            }
        })
        .await;
        if let Ok(ev) = got {
            assert_eq!(ev["task"]["title"], "hello from A");
            break;
        }
        assert!(Instant::now() < deadline, "no event from A reached B");
    }
}

/// A revocation is announced on the channel before its answer, not queued
/// behind the instance's backlog of task events: there, an event another
/// instance published after the 204 reached a WebSocket of the revoked key
/// on a third instance before the announcement did (Redis delivers in the
/// order it receives). Checked on the channel itself: a marker published
/// after the 204 must come after the announcement while A is busy.
#[tokio::test]
async fn a_revocation_is_announced_before_its_answer_even_when_busy() {
    use futures_util::StreamExt;
    if !services() {
        return;
    }
    let p = pair("").await;
    let client = redis::Client::open(REDIS).unwrap();
    let mut ps = client.get_async_pubsub().await.unwrap();
    let channel = format!("{}events", p.prefix);
    ps.subscribe(&channel).await.unwrap();
    let mut messages = ps.into_on_message();
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    // A busy: task creations, each an event on A's publish queue
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut busy = Vec::new();
    for _ in 0..12 {
        let (c, url, key, stop) = (
            p.a.client.clone(),
            p.a.url("/api/tasks"),
            admin_of(&p).to_string(),
            stop.clone(),
        );
        busy.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = c
                    .post(&url)
                    .header("X-API-Key", &key)
                    .json(&json!({"title": "noise", "description": "x".repeat(2000)}))
                    .send()
                    .await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for trial in 0..5 {
        let r =
            p.a.admin_post("/api/keys", &json!({"name": format!("k{trial}")}))
                .send()
                .await
                .unwrap();
        let k: Value = r.json().await.unwrap();
        let r =
            p.a.delete(&format!("/api/keys/{}", k["id"].as_str().unwrap()))
                .header("X-API-Key", admin_of(&p))
                .send()
                .await
                .unwrap();
        assert_eq!(r.status(), 204);
        let marker = format!("{{\"marker\":{trial}}}");
        let _: () = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(&marker)
            .query_async(&mut publisher)
            .await
            .unwrap();
        let order = tokio::time::timeout(Duration::from_secs(10), async {
            let mut announced = false;
            loop {
                let m = messages.next().await.unwrap();
                let text: String = m.get_payload().unwrap();
                if text.contains("\"type\":\"credentials\"") {
                    announced = true;
                }
                if text == marker {
                    return announced;
                }
            }
        })
        .await
        .expect("the marker came back");
        assert!(
            order,
            "trial {trial}: the marker came before the announcement"
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for b in busy {
        let _ = b.await;
    }
}

// ---------------------------------------------------------------- outages

/// A private Redis (never the machine's shared one) on a fixed free port.
struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = PrivateRedis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "private redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

async fn readyz(s: &TestServer) -> (u16, Value) {
    let r = s.get("/readyz").send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn redis_up_metric(s: &TestServer) -> String {
    let text = s.metrics_text().await;
    text.lines()
        .find(|l| l.starts_with("frenly_redis_up"))
        .unwrap_or_default()
        .to_string()
}

async fn whoami(s: &TestServer) -> u16 {
    s.admin_get("/api/auth/whoami")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn redis_going_away_is_handled_by_each_policy_and_the_instances_reconnect() {
    if !need("redis-server (binary)", redis_server_installed()) {
        return;
    }
    let mut redis = PrivateRedis::start();
    let start = |policy: &'static str| {
        let cfg = config(
            "",
            &prefix(),
            &redis.url(),
            &format!("redis_failure_policy = \"{policy}\"\n"),
        );
        TestServer::with(Opts::default().config(&cfg))
    };
    let open = start("fail_open").await;
    let closed = start("fail_closed").await;
    for s in [&open, &closed] {
        let up = within(Duration::from_secs(5), || async {
            readyz(s).await.1["checks"]["redis"] == "ok"
        })
        .await;
        assert!(up.is_some(), "{:?}", readyz(s).await);
        assert_eq!(whoami(s).await, 200);
        assert!(redis_up_metric(s).await.ends_with(" 1"));
    }

    redis.kill();
    // fail_open: keeps serving, at once (the request that finds Redis gone
    // falls back to local state), and is not ready: readiness is "database
    // and Redis reachable" (it was 200 `degraded`, which a load balancer
    // reads as ready)
    assert_eq!(whoami(&open).await, 200);
    let not_ready = within(Duration::from_secs(3), || async {
        let (status, v) = readyz(&open).await;
        status == 503 && v["error"]["code"] == "unavailable"
    })
    .await;
    assert!(not_ready.is_some(), "{:?}", readyz(&open).await);
    assert_eq!(open.get("/healthz").send().await.unwrap().status(), 200);
    assert!(redis_up_metric(&open).await.ends_with(" 0"));
    for _ in 0..20 {
        assert_eq!(whoami(&open).await, 200);
    }
    // fail_closed: /api/* refused with 503, probes still answer
    let refused = within(Duration::from_secs(3), || async {
        whoami(&closed).await == 503
    })
    .await;
    assert!(refused.is_some());
    let r = closed.admin_get("/api/tasks").send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    let (status, code, _) = error_code(r).await;
    assert_eq!((status, code.as_str()), (503, "unavailable"));
    assert_eq!(closed.get("/healthz").send().await.unwrap().status(), 200);
    let (status, _) = readyz(&closed).await;
    assert_eq!(status, 503);
    assert!(redis_up_metric(&closed).await.ends_with(" 0"));

    // Redis back on the same port: both reconnect by themselves
    redis.spawn();
    for s in [&open, &closed] {
        let back = within(Duration::from_secs(5), || async {
            let (status, v) = readyz(s).await;
            status == 200 && v["checks"]["redis"] == "ok"
        })
        .await;
        assert!(back.is_some(), "no reconnect: {:?}", readyz(s).await);
        assert_eq!(whoami(s).await, 200);
        assert!(redis_up_metric(s).await.ends_with(" 1"));
    }
    // logged once per outage
    for s in [&open, &closed] {
        let n = s.stderr_text().matches("Redis unreachable").count();
        assert_eq!(n, 1, "{}", s.stderr_text());
    }
}

/// `frenly keys revoke` run offline against the shared database moves the
/// Redis revocation epoch: a key cached on a running instance fails there
/// at once, not after the cache's 5 s.
#[tokio::test]
async fn an_offline_revoke_reaches_running_instances_at_once() {
    if !services() {
        return;
    }
    let p = pair("").await;
    let r =
        p.a.admin_post("/api/keys", &json!({"name": "offline"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 201);
    let k: Value = r.json().await.unwrap();
    let key = k["key"].as_str().unwrap().to_string();
    let whoami = |s: &TestServer| s.get("/api/auth/whoami").header("X-API-Key", &key).send();
    assert_eq!(whoami(&p.b).await.unwrap().status(), 200, "cached on B");
    let mut ws = crate::ws::connect(&p.b, Some(&key)).await.unwrap();
    let cfg = p.a.dir.path().join("frenly.toml");
    let data = p.a.data_dir();
    let env = p.a.cli_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, _, err) = crate::common::run_cli(
        &[
            "keys",
            "revoke",
            k["id"].as_str().unwrap(),
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("warning"), "{err}");
    // the command announces it: B's socket on that key takes no event of a
    // task created after it (it took them until its 5 s re-check)
    let r =
        p.a.admin_post("/api/tasks", &json!({"title": "after the revoke"}))
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 201);
    let ended = tokio::time::timeout(Duration::from_secs(3), async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => panic!("an event after the revoke: {t}"),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "B's socket stayed open");
    assert_eq!(
        whoami(&p.b).await.unwrap().status(),
        401,
        "B still accepts it"
    );
    assert_eq!(whoami(&p.a).await.unwrap().status(), 401);
}

/// Two instances, each reaching Redis through a [`Cuttable`] of its own
/// (A's, B's).
async fn relayed_pair() -> (Cuttable, Cuttable, Pair) {
    let (ra, rb) = (Cuttable::redis().await, Cuttable::redis().await);
    let p = pair_via([ra.url.as_str(), rb.url.as_str()], "", "").await;
    (ra, rb, p)
}

/// The password of the users [`add_user`] makes.
const PASSWORD: &str = "a long enough passphrase 1";

/// A `user` called `name`, made on A.
async fn add_user(p: &Pair, name: &str) {
    let r =
        p.a.admin_post(
            "/api/users",
            &json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD, "roles": ["user"]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
}

/// Does `s` report its Redis `state` ("ok", "down") within 5 s?
/// Has the instance itself taken Redis for `state` ("down" or "ok")? Its
/// metric says (`/readyz` pings Redis on its own, whatever the instance
/// concluded).
async fn redis_becomes(s: &TestServer, state: &str) -> bool {
    let want = if state == "down" { " 0" } else { " 1" };
    within(Duration::from_secs(5), || async {
        redis_up_metric(s).await.ends_with(want)
    })
    .await
    .is_some()
}

/// A ban set while PostgreSQL refused connections is announced as not
/// stored: the instance that catches up from the database later writes it
/// instead of taking its absence for a lift elsewhere (which it then
/// replayed to every instance, lifting the ban everywhere).
#[tokio::test]
async fn a_ban_that_could_not_be_stored_is_not_lifted_by_a_catch_up() {
    if !services() {
        return;
    }
    let (_ra, rb, p) = relayed_pair().await;
    let admin = admin_of(&p).to_string();
    let name = p._db.0.rsplit('/').next().unwrap().to_string();
    let stored = || {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-U", "postgres", "-d", &name, "-tAc"])
            .arg("SELECT count(*) FROM bans WHERE ip = '203.0.113.41'")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    };
    let ip_status = |s: &TestServer| {
        let r = as_client(s, "203.0.113.41", &admin, "/api/auth/whoami").send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert!(redis_becomes(&p.a, "ok").await && redis_becomes(&p.b, "ok").await);
    // warm the admin key on both (its check needs the database)
    assert_eq!(
        as_client(&p.a, "198.51.100.1", &admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        as_client(&p.b, "198.51.100.1", &admin, "/api/auth/whoami")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    crate::common::psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    crate::common::psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let r =
        p.a.admin_post(
            "/api/security/bans",
            &json!({"ip": "203.0.113.41", "seconds": 300}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "in force, not stored");
    assert_eq!(ip_status(&p.b).await, 403);
    // old enough to be taken for a lift when found absent
    tokio::time::sleep(Duration::from_millis(2500)).await;
    crate::common::psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    assert!(!stored());
    // only B loses Redis: only B catches up from the database
    rb.set(true);
    assert!(redis_becomes(&p.b, "down").await);
    let written = within(Duration::from_secs(10), || async { stored() }).await;
    assert!(written.is_some(), "the ban was never written");
    assert_eq!(ip_status(&p.b).await, 403);
    rb.set(false);
    assert!(redis_becomes(&p.b, "ok").await);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ip_status(&p.a).await, 403);
    assert_eq!(ip_status(&p.b).await, 403);
}

/// A lockout outlives a Redis that forgets it: one Redis set and then lost
/// (a restart emptied it), on every instance, and one set while Redis was
/// away (before, both let the right password in as soon as Redis answered).
#[tokio::test]
async fn a_lockout_outlives_redis_forgetting_it() {
    if !services() {
        return;
    }
    let (ra, _rb, p) = relayed_pair().await;
    for name in ["forgotten", "offline"] {
        add_user(&p, name).await;
    }
    assert!(redis_becomes(&p.a, "ok").await);
    // each attempt from its own address: only the account locks
    let attempt_on = |s: &TestServer, name: &'static str, password: &'static str, n: u32| {
        let r = s
            .post("/api/auth/login")
            .header("X-Forwarded-For", format!("10.77.0.{n}"))
            .json(&json!({"username": name, "password": password}))
            .send();
        async move { r.await.unwrap().status().as_u16() }
    };
    let attempt = |name, password, n| attempt_on(&p.a, name, password, n);
    // (a) locked through Redis, then Redis loses the lock
    for n in 1..=5 {
        assert_eq!(attempt("forgotten", "wrong guess", n).await, 401);
    }
    assert_eq!(attempt("forgotten", PASSWORD, 6).await, 401);
    let hash = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(b"forgotten")[..16])
    };
    let client = redis::Client::open(REDIS).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*lk:a:{hash}*"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!keys.is_empty(), "no lock in Redis");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(attempt("forgotten", PASSWORD, 7).await, 401);
    // ... on the other instance too, which heard of the lock when it was set
    assert_eq!(attempt_on(&p.b, "forgotten", PASSWORD, 8).await, 401);
    // (b) locked while Redis was away, then Redis answers again
    ra.set(true);
    assert!(redis_becomes(&p.a, "down").await);
    for n in 11..=15 {
        assert_eq!(attempt("offline", "wrong guess", n).await, 401);
    }
    ra.set(false);
    assert!(redis_becomes(&p.a, "ok").await);
    assert_eq!(attempt("offline", PASSWORD, 16).await, 401);
}

/// A Redis that goes silent (no reset: its host crashed or is cut off) is
/// left like one that went away: each instance then reads the revocations
/// and bans from the database, so a logout and a ban made on A reach B.
/// (The subscription waited for ever on the silent connection, so the
/// catch-up never ran: 30 s later B still took both.)
#[tokio::test]
async fn a_logout_and_a_ban_reach_the_other_instance_when_redis_goes_silent() {
    if !services() {
        return;
    }
    let (ra, rb, p) = relayed_pair().await;
    let admin = admin_of(&p).to_string();
    add_user(&p, "silent").await;
    assert!(redis_becomes(&p.a, "ok").await && redis_becomes(&p.b, "ok").await);
    let jwt = crate::common::login_token(&p.a, "silent", PASSWORD).await;
    let jwt_status = |s: &TestServer| {
        let r = s.get("/api/auth/whoami").bearer_auth(&jwt).send();
        async move { r.await.unwrap().status().as_u16() }
    };
    let ip_status = |s: &TestServer| {
        let r = as_client(s, "203.0.113.31", &admin, "/api/auth/whoami").send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert_eq!(jwt_status(&p.b).await, 200);
    ra.silence();
    rb.silence();
    assert!(redis_becomes(&p.a, "down").await && redis_becomes(&p.b, "down").await);
    let r =
        p.a.post("/api/auth/logout")
            .bearer_auth(&jwt)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    let r =
        p.a.admin_post(
            "/api/security/bans",
            &json!({"ip": "203.0.113.31", "seconds": 300}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let reached = within(Duration::from_secs(12), || async {
        jwt_status(&p.b).await == 401 && ip_status(&p.b).await == 403
    })
    .await;
    assert!(
        reached.is_some(),
        "B still takes the logged-out token or the banned address"
    );
    ra.set(false);
    rb.set(false);
    assert!(redis_becomes(&p.a, "ok").await && redis_becomes(&p.b, "ok").await);
    assert_eq!(jwt_status(&p.b).await, 401);
    assert_eq!(ip_status(&p.b).await, 403);
}

/// Revocations and bans made while Redis is out of reach still reach every
/// instance: while both have lost it, through the database (each reads it
/// every few seconds while its subscription is down); when only the one
/// that made them has, by being announced when it is back.
#[tokio::test]
async fn a_logout_and_a_ban_made_without_redis_reach_the_other_instance() {
    if !services() {
        return;
    }
    let (ra, rb, p) = relayed_pair().await;
    let admin = admin_of(&p).to_string();
    add_user(&p, "outage").await;
    let login = || crate::common::login_token(&p.a, "outage", PASSWORD);
    // on A, whose Redis the test cuts: each answered as asked
    let ban = |ip: &str| {
        let r =
            p.a.admin_post("/api/security/bans", &json!({"ip": ip, "seconds": 300}))
                .send();
        async move { assert_eq!(r.await.unwrap().status(), 201) }
    };
    let logout = |jwt: &str| {
        let r = p.a.post("/api/auth/logout").bearer_auth(jwt).send();
        async move { assert_eq!(r.await.unwrap().status(), 204) }
    };
    let jwt_status = |s: &TestServer, jwt: String| {
        let r = s.get("/api/auth/whoami").bearer_auth(jwt).send();
        async move { r.await.unwrap().status().as_u16() }
    };
    let ip_status = |s: &TestServer, ip: &'static str| {
        let r = as_client(s, ip, &admin, "/api/auth/whoami").send();
        async move { r.await.unwrap().status().as_u16() }
    };
    assert!(redis_becomes(&p.a, "ok").await && redis_becomes(&p.b, "ok").await);

    // both lose Redis: the database carries the change
    let jwt = login().await;
    assert_eq!(jwt_status(&p.b, jwt.clone()).await, 200);
    ban("203.0.113.23").await;
    let banned = within(Duration::from_secs(2), || async {
        ip_status(&p.b, "203.0.113.23").await == 403
    })
    .await;
    assert!(banned.is_some());
    ra.set(true);
    rb.set(true);
    assert!(redis_becomes(&p.a, "down").await && redis_becomes(&p.b, "down").await);
    let r =
        p.a.client
            .delete(p.a.url("/api/security/bans/203.0.113.23"))
            .header("X-API-Key", &admin)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status(), 204);
    logout(&jwt).await;
    ban("203.0.113.21").await;
    let refused = within(Duration::from_secs(9), || async {
        jwt_status(&p.b, jwt.clone()).await == 401
            && ip_status(&p.b, "203.0.113.21").await == 403
            && ip_status(&p.b, "203.0.113.23").await == 200
    })
    .await;
    assert!(
        refused.is_some(),
        "B still takes the logged-out token or the banned address, or refuses the lifted one"
    );
    // Redis back for B only (A stays cut off, as if gone): B alone sets
    // right what Redis still holds, the lifted ban's key from before the
    // outage, which A's lift never reached
    rb.set(false);
    assert!(redis_becomes(&p.b, "ok").await);
    let settled = within(Duration::from_secs(3), || async {
        jwt_status(&p.b, jwt.clone()).await == 401
            && ip_status(&p.b, "203.0.113.21").await == 403
            && ip_status(&p.b, "203.0.113.23").await == 200
    })
    .await;
    assert!(settled.is_some(), "not settled on B with Redis back");
    ra.set(false);
    assert!(redis_becomes(&p.a, "ok").await);
    let settled = within(Duration::from_secs(3), || async {
        ip_status(&p.a, "203.0.113.23").await == 200
    })
    .await;
    assert!(settled.is_some(), "not settled on A with Redis back");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(jwt_status(&p.b, jwt.clone()).await, 401);
    assert_eq!(ip_status(&p.b, "203.0.113.21").await, 403);
    assert_eq!(ip_status(&p.b, "203.0.113.23").await, 200);

    // only A loses Redis: A announces its changes when it is back
    let jwt = login().await;
    assert_eq!(jwt_status(&p.b, jwt.clone()).await, 200);
    ra.set(true);
    assert!(redis_becomes(&p.a, "down").await);
    logout(&jwt).await;
    ban("203.0.113.22").await;
    ra.set(false);
    assert!(redis_becomes(&p.a, "ok").await);
    let refused = within(Duration::from_secs(3), || async {
        jwt_status(&p.b, jwt.clone()).await == 401 && ip_status(&p.b, "203.0.113.22").await == 403
    })
    .await;
    assert!(refused.is_some(), "B never learnt what A did without Redis");
}

/// The incident cooldown is shared: IDS blocks from one address spread
/// over both instances within the cooldown make one `sql_injection`
/// incident (and one alert), not one per instance.
#[tokio::test]
async fn an_attack_spread_over_instances_is_one_incident_per_cooldown() {
    if !services() {
        return;
    }
    let p = pair_with(
        "rate.max_requests = 100000\nddos.max_requests_per_second = 100000\n",
        "[ids]\nthreshold = 100\n[incidents]\ncooldown_seconds = 60\n",
    )
    .await;
    let ip = "198.51.100.61";
    let admin = admin_of(&p).to_string();
    for s in [&p.a, &p.b, &p.a, &p.b] {
        let r = as_client(s, ip, &admin, "/api/tasks?q=1%27%20or%20%271%27%3D%271")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403);
    }
    let incidents = || async {
        let v: Value =
            p.a.admin_get("/api/security/incidents")
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|i| i["ip"] == ip && i["kind"] == "sql_injection")
            .count()
    };
    // recorded in the background: wait for the first, then for any other
    let first = within(Duration::from_secs(3), || async { incidents().await >= 1 }).await;
    assert!(first.is_some(), "no incident recorded");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(incidents().await, 1);
}

/// Two instances on one PostgreSQL database each keep their own audit
/// chain, and the database check that finds an emptied or replaced file
/// (the file holds none of the stored events) tells them apart: each
/// file verifies with its instance named while the other's rows are
/// there too, and emptying A's file is found while B's still verifies.
#[tokio::test]
async fn each_instances_audit_file_verifies_against_the_shared_database() {
    if !services() {
        return;
    }
    let mut p = pair("").await;
    let admin = admin_of(&p).to_string();
    for s in [&p.a, &p.b, &p.a] {
        let r = s
            .get("/api/auth/whoami")
            .header("X-API-Key", &admin)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(p.a.terminate().await, Some(0));
    assert_eq!(p.b.terminate().await, Some(0));
    let verify = |s: &TestServer| {
        let data = s.data_dir();
        let log = data.join("security_audit.log");
        let env = s.cli_env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        crate::common::run_cli(
            &[
                "audit",
                "verify",
                log.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
            ],
            None,
            &env,
        )
    };
    for s in [&p.a, &p.b] {
        let (code, out, err) = verify(s);
        assert_eq!(code, 0, "{out}{err}");
    }
    std::fs::write(p.a.data_dir().join("security_audit.log"), "").unwrap();
    let (code, out, err) = verify(&p.a);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("emptied or replaced"), "{out}");
    let (code, out, err) = verify(&p.b);
    assert_eq!(code, 0, "{out}{err}");
}
