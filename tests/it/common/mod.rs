//! The integration-test harness: the real `frenly` binary on an ephemeral
//! port, a fresh data directory, and an HTTPS client that trusts exactly the
//! certificate that instance generated.

#![allow(dead_code)]

pub mod h2;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_frenly");

/// A running server.
pub struct TestServer {
    pub child: Option<Child>,
    pub base: String,
    pub addr: std::net::SocketAddr,
    pub admin_key: Option<String>,
    pub dir: tempfile::TempDir,
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    pub client: reqwest::Client,
    pub tls: bool,
    pub data: PathBuf,
    /// The database URL given to the server (None = SQLite in the data dir).
    pub database_url: Option<String>,
    /// A PostgreSQL database this server owns (dropped with it).
    owned_db: Option<String>,
}

/// How to start a server.
#[derive(Clone, Default)]
pub struct Opts {
    /// TOML config (written to `frenly.toml` in the data dir's parent).
    pub config: String,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Reuse this data dir (restart) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Plain HTTP (sets `network.tls = false`).
    pub plain: bool,
    /// Database URL (default: SQLite in the data dir, or a fresh PostgreSQL
    /// database when `TEST_DB=postgres`).
    pub database_url: Option<String>,
}

impl Opts {
    pub fn config(mut self, c: &str) -> Self {
        self.config = c.to_string();
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn plain(mut self) -> Self {
        self.plain = true;
        self
    }
    pub fn database(mut self, url: &str) -> Self {
        self.database_url = Some(url.to_string());
        self
    }
}

/// PostgreSQL server used by the suites (trust auth).
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432";

/// Does this run use PostgreSQL for every server (`TEST_DB=postgres`)?
pub fn pg_mode() -> bool {
    std::env::var("TEST_DB").is_ok_and(|v| v == "postgres")
}

/// Are services mandatory (CI)? Then an unreachable one fails the test.
pub fn services_required() -> bool {
    std::env::var("CI_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Is PostgreSQL reachable?
pub fn pg_available() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:5432".parse().expect("addr"),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Is Redis reachable?
pub fn redis_available() -> bool {
    std::net::TcpStream::connect_timeout(
        &"127.0.0.1:6379".parse().expect("addr"),
        Duration::from_millis(500),
    )
    .is_ok()
}

/// Skip (with a printed reason) or fail (in CI) when a service is missing.
/// Returns true when the test should go on.
pub fn need(service: &str, available: bool) -> bool {
    if available {
        return true;
    }
    if services_required() {
        panic!("{service} is required (CI_REQUIRE_SERVICES=1) but unreachable");
    }
    eprintln!("SKIPPED: {service} is not reachable on this machine");
    false
}

/// Create a fresh PostgreSQL database; returns its URL.
pub fn fresh_pg_database() -> String {
    let name = format!("frenly_t_{}", uuid::Uuid::new_v4().simple());
    psql(&format!("CREATE DATABASE {name}"));
    format!("{PG_ADMIN}/{name}")
}

/// Drop a database created by [`fresh_pg_database`].
pub fn drop_pg_database(url: &str) {
    if let Some(name) = url.rsplit('/').next() {
        if name.starts_with("frenly_t_") {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

pub fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::with(Opts::default()).await
    }

    pub async fn with(opts: Opts) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let mut opts = opts;
        let mut owned_db = None;
        if opts.database_url.is_none() && pg_mode() {
            let url = fresh_pg_database();
            owned_db = Some(url.clone());
            opts.database_url = Some(url);
        }
        let mut s = Self::spawn(opts, dir, data).await;
        s.owned_db = owned_db;
        s
    }

    /// Restart on the same data directory (the old process must be stopped).
    pub async fn restart(mut self, opts: Opts) -> TestServer {
        self.stop_kill();
        let data = self.data_dir();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        let mut opts = opts;
        if opts.database_url.is_none() {
            opts.database_url = self.database_url.clone();
        }
        let owned = self.owned_db.take();
        let mut s = Self::spawn(opts, dir, data).await;
        s.owned_db = owned;
        s
    }

    async fn spawn(opts: Opts, dir: tempfile::TempDir, data: PathBuf) -> TestServer {
        let cfg_path = dir.path().join("frenly.toml");
        let mut cfg = String::new();
        if !opts.config.contains("[network]") {
            cfg.push_str(&format!(
                "[network]\nlisten = \"127.0.0.1:0\"\ntls = {}\n",
                !opts.plain
            ));
        }
        cfg.push_str(&opts.config);
        std::fs::write(&cfg_path, cfg).expect("write config");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&cfg_path)
            .arg("--data-dir")
            .arg(&data)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if let Some(url) = &opts.database_url {
            cmd.env("FRENLY_DATABASE__URL", url);
            // many servers run at once against one PostgreSQL (100 connections)
            cmd.env("FRENLY_DATABASE__MIN_CONNECTIONS", "1");
            cmd.env("FRENLY_DATABASE__MAX_CONNECTIONS", "4");
        }
        // Loopback is not special to Frenly: with the contract's burst limit
        // (10 req/s) a test sending requests in a row would be banned. Tests
        // that say nothing about limits run with loopback allowlisted; tests
        // of the limits configure `[limits]` themselves and get none of this.
        if !opts.config.contains("[limits]") && !opts.config.contains("limits.") {
            cmd.env("FRENLY_LIMITS__ALLOWLIST", "[\"127.0.0.0/8\", \"::1/128\"]");
        }
        let mut child = cmd.spawn().expect("spawn frenly");
        let stderr = child.stderr.take().expect("stderr");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("lock").push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut admin_key = None;
        let mut next_is_key = false;
        let addr;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(l) => l,
                Err(_) => panic!(
                    "server did not start; stderr: {:?}",
                    lines.lock().expect("lock")
                ),
            };
            if next_is_key {
                admin_key = Some(line.trim().to_string());
                next_is_key = false;
                continue;
            }
            if line.contains("API key (shown once") {
                next_is_key = true;
            }
            if let Some(rest) = line.split("frenly: listening on ").nth(1) {
                let a = rest.split("://").nth(1).expect("url");
                addr = a.trim().parse().expect("addr");
                break;
            }
        }
        let tls = !opts.plain && !opts.config.contains("tls = false");
        let base = format!("{}://{}", if tls { "https" } else { "http" }, addr);
        let client = client_for(&data, tls);
        let data = data.clone();
        // keep draining stderr in the background thread (already running)
        drop(rx);
        TestServer {
            child: Some(child),
            base,
            addr,
            admin_key,
            dir,
            stderr: lines,
            client,
            tls,
            data,
            database_url: opts.database_url.clone(),
            owned_db: None,
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }

    /// A rustls client configuration that trusts exactly this instance's
    /// certificate (for raw TLS and WebSocket clients; `client` is the
    /// HTTP one).
    pub fn tls_client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let pem = std::fs::read(self.data.join("tls/cert.pem")).expect("cert");
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut &pem[..]) {
            roots.add(c.expect("certificate")).expect("root");
        }
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        std::sync::Arc::new(cfg)
    }

    /// A raw TLS connection to this instance (a real handshake, trusting
    /// its certificate), for clients that write their own bytes.
    pub async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connect");
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        tokio_rustls::TlsConnector::from(self.tls_client_config())
            .connect(name, tcp)
            .await
            .expect("TLS handshake")
    }

    /// The `/api/audit?{query}` items, once there are at least `n` of them
    /// (the writer batches: polled for up to 5 s).
    pub async fn audit_rows(&self, query: &str, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..100 {
            let r = self
                .admin_get(&format!("/api/audit?{query}"))
                .send()
                .await
                .expect("GET /api/audit");
            assert_eq!(r.status(), 200);
            let body: serde_json::Value = r.json().await.expect("audit JSON");
            let items = body["items"].as_array().expect("items").clone();
            if items.len() >= n {
                return items;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("fewer than {n} audit rows for {query}");
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn admin(&self) -> &str {
        self.admin_key
            .as_deref()
            .expect("admin key printed on first start")
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// The `/metrics` text, read with the admin key (which must get a 200).
    pub async fn metrics_text(&self) -> String {
        let r = self.admin_get("/metrics").send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.text().await.unwrap()
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.post(self.url(path))
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.delete(self.url(path))
    }

    /// GET with the admin key.
    pub fn admin_get(&self, path: &str) -> reqwest::RequestBuilder {
        self.get(path).header("X-API-Key", self.admin())
    }

    /// POST JSON with the admin key.
    pub fn admin_post(&self, path: &str, body: &serde_json::Value) -> reqwest::RequestBuilder {
        self.post(path).header("X-API-Key", self.admin()).json(body)
    }

    /// Environment for offline commands (`frenly keys ...`) that must reach
    /// the same database as this server.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        match &self.database_url {
            Some(url) => vec![("FRENLY_DATABASE__URL", url.clone())],
            None => Vec::new(),
        }
    }

    /// The database's bytes as they sit on disk: the SQLite file and its WAL,
    /// or a `pg_dump` of the PostgreSQL database.
    pub fn database_bytes(&self) -> Vec<u8> {
        match &self.database_url {
            Some(url) => {
                let out = Command::new("pg_dump").arg(url).output().expect("pg_dump");
                assert!(out.status.success(), "pg_dump failed");
                out.stdout
            }
            None => {
                let mut v = std::fs::read(self.data.join("frenly.db")).unwrap_or_default();
                v.extend(std::fs::read(self.data.join("frenly.db-wal")).unwrap_or_default());
                v
            }
        }
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().expect("lock").join("\n")
    }

    /// SIGTERM and wait (without blocking the test's runtime, so that its
    /// client connections can answer the server's GOAWAY); returns the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        self.stop_by("TERM").await
    }

    /// Send the signal (`TERM`, `HUP`, ...) and wait, as [`Self::terminate`].
    pub async fn stop_by(&mut self, signal: &str) -> Option<i32> {
        self.client = reqwest::Client::new();
        let child = self.child.as_mut()?;
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn stop_kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop_kill();
        if let Some(url) = self.owned_db.take() {
            drop_pg_database(&url);
        }
    }
}

/// A client trusting the certificate in `data/tls/cert.pem`.
pub fn client_for(data: &Path, tls: bool) -> reqwest::Client {
    builder_for(data, tls).build().expect("client")
}

/// [`client_for`], connecting from `local` (another loopback address: a
/// second client address for per-address tests).
pub fn client_from(data: &Path, tls: bool, local: std::net::IpAddr) -> reqwest::Client {
    builder_for(data, tls)
        .local_address(local)
        .build()
        .expect("client")
}

fn builder_for(data: &Path, tls: bool) -> reqwest::ClientBuilder {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0);
    if tls {
        let pem = std::fs::read(data.join("tls/cert.pem")).expect("cert");
        let cert = reqwest::Certificate::from_pem(&pem).expect("pem");
        b = b.add_root_certificate(cert).use_rustls_tls();
    }
    b
}

/// Poll `f` (every 100 ms, for up to 10 s) until it gives a value: for
/// what the server does moments after a response (audit lines, alerts).
pub async fn wait_for<T, F>(what: &str, mut f: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait for the first line of the server's audit file that `matches`.
pub async fn audit_line(s: &TestServer, what: &str, matches: impl Fn(&str) -> bool) -> String {
    let path = s.data_dir().join("security_audit.log");
    wait_for(what, || {
        let line = std::fs::read_to_string(&path)
            .ok()
            .and_then(|log| log.lines().find(|l| matches(l)).map(str::to_string));
        async move { line }
    })
    .await
}

/// Parse an error body and return its code.
pub async fn error_code(resp: reqwest::Response) -> (u16, String, serde_json::Value) {
    let status = resp.status().as_u16();
    let body: serde_json::Value = resp.json().await.expect("json error body");
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("not the error shape: {body}"))
        .to_string();
    assert!(
        body["error"]["message"].is_string(),
        "message missing: {body}"
    );
    (status, code, body)
}

/// Run the binary with arguments; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn");
    if let Some(input) = stdin {
        if let Some(mut s) = child.stdin.take() {
            let _ = s.write_all(input.as_bytes());
        }
    } else {
        drop(child.stdin.take());
    }
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The password of the users [`user_key`] makes.
pub const PASSPHRASE: &str = "a long enough passphrase 123";

/// `POST /api/auth/login` as `name` (answered 200): the access token.
pub async fn login_token(s: &TestServer, name: &str, password: &str) -> String {
    let r = s
        .post("/api/auth/login")
        .json(&serde_json::json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login as {name}");
    let v: serde_json::Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_string()
}

/// A user with `roles` (made by the admin, password [`PASSPHRASE`]), logged
/// in, and an API key of theirs made with that login.
pub async fn user_key(s: &TestServer, name: &str, roles: &[&str]) -> String {
    let r = s
        .admin_post(
            "/api/users",
            &serde_json::json!({"username": name, "email": format!("{name}@example.test"), "password": PASSPHRASE, "roles": roles}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    let token = login_token(s, name, PASSPHRASE).await;
    let r = s
        .post("/api/keys")
        .bearer_auth(token)
        .json(&serde_json::json!({"name": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<serde_json::Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `GET path` with the API key `key`: the JSON answer.
pub async fn get_json(s: &TestServer, path: &str, key: &str) -> serde_json::Value {
    s.get(path)
        .header("X-API-Key", key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The id of the user whose API key `key` is (`GET /api/auth/whoami`).
pub async fn user_id_of(s: &TestServer, key: &str) -> String {
    let v = get_json(s, "/api/auth/whoami", key).await;
    v["user_id"].as_str().unwrap().to_string()
}

/// `bytes` sent on `conn`, everything the server answers before it closes
/// (10 s at most), as text.
pub async fn exchange<C>(mut conn: C, bytes: &[u8]) -> String
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let read = conn.read_to_end(&mut buf);
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    String::from_utf8_lossy(&buf).to_string()
}

/// A TCP relay to one of the suite's services (Redis, PostgreSQL) that the
/// test can cut (every relayed
/// connection dropped, new ones refused) or silence (connections stay open,
/// nothing is forwarded: a Redis host that crashed or is partitioned), and
/// restore: one instance losing Redis while the other keeps it.
pub struct Cuttable {
    pub url: String,
    state: tokio::sync::watch::Sender<Relay>,
    accept: tokio::task::AbortHandle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    Open,
    Cut,
    Silent,
}

impl Cuttable {
    /// A relay to the suite's Redis (`url` is a `redis://` URL).
    pub async fn redis() -> Cuttable {
        Self::to("127.0.0.1:6379", "redis://").await
    }

    /// A relay to `target`; `url` is `scheme` and the relay's address.
    pub async fn to(target: &'static str, scheme: &str) -> Cuttable {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("{scheme}{}", listener.local_addr().unwrap());
        let (state, watch) = tokio::sync::watch::channel(Relay::Open);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let now = *watch.borrow_and_update();
                    match now {
                        Relay::Cut => return,
                        // accepted, never answered
                        Relay::Silent => {
                            let _ = watch.wait_for(|s| *s != Relay::Silent).await;
                            return;
                        }
                        Relay::Open => {}
                    }
                    let Ok(mut service) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let silenced = tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut service) => false,
                        s = async {
                            let s = watch.wait_for(|s| *s != Relay::Open).await;
                            s.map(|s| *s == Relay::Silent).unwrap_or(false)
                        } => s,
                    };
                    // silenced: both ends stay open, forwarding nothing,
                    // until restored
                    if silenced {
                        let _ = watch.wait_for(|s| *s != Relay::Silent).await;
                    }
                });
            }
        });
        Cuttable {
            url,
            state,
            accept: accept.abort_handle(),
        }
    }

    /// Cut, and stop listening: new connections are refused, as by a
    /// host whose service is down.
    pub fn close(&self) {
        self.set(true);
        self.accept.abort();
    }

    pub fn set(&self, cut: bool) {
        self.state
            .send_replace(if cut { Relay::Cut } else { Relay::Open });
    }

    pub fn silence(&self) {
        self.state.send_replace(Relay::Silent);
    }
}
