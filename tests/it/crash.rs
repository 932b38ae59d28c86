//! Crash safety: SIGKILL while clients create tasks. Every task whose
//! creation was answered 201 survives the crash intact (its encrypted
//! description and input decrypt to what was sent), and the audit chain
//! verifies up to its last complete line; the next start removes an
//! incomplete last line and the chain goes on. Runs on SQLite, and on
//! PostgreSQL in the `TEST_DB=postgres` pass.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode, run_cli};
use crate::common::{Opts, TestServer};

const CLIENTS: usize = 8;

fn opts(db: &Option<String>) -> Opts {
    match db {
        Some(url) => Opts::default().database(url),
        None => Opts::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_while_creating_tasks_loses_no_acknowledged_task() {
    let db = if pg_mode() {
        if !need("PostgreSQL", pg_available()) {
            return;
        }
        Some(fresh_pg_database())
    } else {
        None
    };
    let mut s = TestServer::with(opts(&db)).await;
    let key = s.admin().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let client = s.client.clone();
        let url = s.url("/api/tasks");
        let key = key.clone();
        let stop = stop.clone();
        let acked = acked.clone();
        clients.push(tokio::spawn(async move {
            let mut got: Vec<(String, Value)> = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({
                    "title": format!("crash {c}-{i}"),
                    "description": format!("secret description {c}-{i} ü ✓"),
                    "priority": (["low", "normal", "high"][i % 3]),
                    "input": {"client": c, "n": i, "blob": "x".repeat(i % 500)},
                });
                let r = client
                    .post(&url)
                    .header("X-API-Key", &key)
                    .json(&body)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let Ok(v) = r.json::<Value>().await else {
                            break;
                        };
                        got.push((v["id"].as_str().unwrap().to_string(), body));
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    // killed mid-request: not acknowledged, may or may not exist
                    _ => break,
                }
            }
            got
        }));
    }
    // Let a few hundred creations through, then kill without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while acked.load(Ordering::Relaxed) < 200 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop_kill(); // SIGKILL
    stop.store(true, Ordering::Relaxed);
    let mut sent = Vec::new();
    for c in clients {
        sent.extend(c.await.unwrap());
    }
    assert!(
        sent.len() >= 50,
        "too few tasks acknowledged: {}",
        sent.len()
    );

    // The audit chain as the crash left it: intact up to the last complete
    // line; only the very last line may be incomplete.
    let log = s.data_dir().join("security_audit.log");
    let log_s = log.to_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["audit", "verify", &log_s], None, &[]);
    let incomplete = out.starts_with("INCOMPLETE");
    assert!(
        code == 0 || incomplete,
        "audit chain broken by the crash: {out} {err}"
    );

    // Restart on the same data dir: every acknowledged task is there, intact.
    let s = s.restart(opts(&db)).await;
    let mut missing = Vec::new();
    for (id, body) in &sent {
        let r = s
            .get(&format!("/api/tasks/{id}"))
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        if r.status() != 200 {
            missing.push(id.clone());
            continue;
        }
        let t: Value = r.json().await.unwrap();
        assert_eq!(t["title"], body["title"]);
        assert_eq!(t["description"], body["description"]);
        assert_eq!(t["priority"], body["priority"]);
        assert_eq!(t["input"], body["input"]);
        assert_eq!(t["status"], "queued");
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged tasks lost: {missing:?}",
        missing.len(),
        sent.len()
    );

    // The restarted server appends to the same chain (after removing an
    // incomplete tail); a clean stop leaves it fully verifiable.
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", &key)
        .json(&json!({"title": "after the crash"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut s = s;
    assert_eq!(s.terminate().await, Some(0));
    let (code, out, err) = run_cli(&["audit", "verify", &log_s], None, &[]);
    assert_eq!(code, 0, "{out} {err}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        text.contains("\"event_type\":\"audit_tail_truncated\""),
        incomplete,
        "the repair is recorded in the chain exactly when there was one"
    );
    if let Some(url) = db {
        drop(s);
        drop_pg_database(&url);
    }
}

/// The crash leaves a half-written line: verify says so distinctly, and the
/// next start cuts it and records the repair.
#[tokio::test]
async fn incomplete_last_audit_line_is_reported_then_repaired() {
    let mut s = TestServer::start().await;
    let key = s.admin().to_string();
    for i in 0..5 {
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", &key)
            .json(&json!({"title": format!("t{i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(s.terminate().await, Some(0));
    let log = s.data_dir().join("security_audit.log");
    let log_s = log.to_str().unwrap().to_string();
    let text = std::fs::read_to_string(&log).unwrap();
    let n = text.lines().count();
    // simulate the crash: half of a next line, no line end
    let fake = text.lines().last().unwrap();
    std::fs::write(&log, format!("{text}{}", &fake[..fake.len() / 2])).unwrap();
    let (code, out, _) = run_cli(&["audit", "verify", &log_s], None, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with(&format!("INCOMPLETE verified {n} complete lines"))
            && out.contains(&format!("line {} (the last) is incomplete", n + 1)),
        "{out}"
    );
    // an incomplete line that is NOT the last is a break, not a crash
    let mid = format!("{}\n{text}", &fake[..fake.len() / 2]);
    std::fs::write(log.with_extension("mid"), mid).unwrap();
    let (code, out, _) = run_cli(
        &[
            "audit",
            "verify",
            log.with_extension("mid").to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(code, 1);
    assert!(out.starts_with("BROKEN"), "{out}");

    let mut s = s.restart(Opts::default()).await;
    assert_eq!(
        s.get("/api/auth/whoami")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(s.terminate().await, Some(0));
    let (code, out, err) = run_cli(&["audit", "verify", &log_s], None, &[]);
    assert_eq!(code, 0, "{out} {err}");
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.starts_with(&text), "complete lines kept as they were");
    assert!(after.contains("\"event_type\":\"audit_tail_truncated\""));
}

/// An audit file removed while the server was stopped does not start a
/// fresh chain that verifies as if nothing was lost: the chain goes on from
/// the last line the database holds, the first new line says what
/// happened, and `audit verify` of the new file reports the break.
#[tokio::test]
async fn a_removed_audit_file_does_not_restart_the_chain_unnoticed() {
    let mut s = TestServer::start().await;
    let key = s.admin().to_string();
    for _ in 0..3 {
        let r = s
            .get("/api/auth/whoami")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(s.terminate().await, Some(0));
    let log = s.data_dir().join("security_audit.log");
    let old = std::fs::read_to_string(&log).unwrap();
    let last_hash = old
        .lines()
        .last()
        .unwrap()
        .rsplit('"')
        .nth(1)
        .unwrap()
        .to_string();
    std::fs::remove_file(&log).unwrap();
    let s = s.restart(Opts::default()).await;
    let r = s
        .get("/api/auth/whoami")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let first = crate::common::audit_line(&s, "the new file's first line", |_| true).await;
    assert!(
        first.contains(r#""violation_type":"audit_file_missing""#),
        "{first}"
    );
    assert!(
        first.contains(&format!(r#""prev_hash":"{last_hash}""#)),
        "{first} does not go on from {last_hash}"
    );
    let (code, out, _) = run_cli(&["audit", "verify", log.to_str().unwrap()], None, &[]);
    assert_ne!(code, 0, "{out}");
}

/// A tmpfs of `size` mounted on a fresh directory (root only), unmounted
/// when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: std::path::PathBuf, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(&at).ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(SmallDisk(at))
    }

    /// Fill the disk, then free about `bytes` of it again.
    fn fill_leaving(&self, bytes: u64) -> std::path::PathBuf {
        use std::io::Write;
        let ballast = self.0.join("ballast");
        let mut f = std::fs::File::create(&ballast).unwrap();
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(bytes)).unwrap();
        ballast
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A full disk under the audit log (the database elsewhere, so requests
/// keep being answered): a write the disk cuts short leaves no part of a
/// line behind, the lines it refused wait in memory and are written in
/// order once there is room again, so the chain verifies and holds every
/// request's event. (It left a fragment that the next line was glued to:
/// `audit verify` and `check` called the log tampered with for good, and
/// the events of the full period were missing from the file.)
#[tokio::test]
async fn a_full_disk_under_the_audit_log_leaves_it_whole_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path().join("small"), "64k") else {
        need("a tmpfs mount (root)", false);
        return;
    };
    let log = disk.0.join("audit.log");
    let mut s = TestServer::with(
        Opts::default()
            .plain()
            .config(&format!("[audit]\nfile = \"{}\"\n", log.display())),
    )
    .await;
    let whoami = |s: &TestServer| {
        let s = s.admin_get("/api/auth/whoami");
        async move { s.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(whoami(&s).await, 200);
    let ballast = disk.fill_leaving(6000);
    // one at a time: each event its own batch, so one of them is cut short
    for _ in 0..60 {
        assert_eq!(whoami(&s).await, 200);
    }
    std::fs::remove_file(&ballast).unwrap();
    for _ in 0..5 {
        assert_eq!(whoami(&s).await, 200);
    }
    assert_eq!(s.terminate().await, Some(0), "{}", s.stderr_text());
    assert!(
        s.stderr_text().contains("cannot append to the audit log"),
        "the disk was not full: {}",
        s.stderr_text()
    );
    let (code, out, err) = run_cli(&["audit", "verify", log.to_str().unwrap()], None, &[]);
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let answered = text
        .lines()
        .filter(|l| l.contains("\"api_access\"") && l.contains("/api/auth/whoami"))
        .count();
    assert_eq!(answered, 66, "every answered request has its line");
}

/// A first start on a full disk fails, and leaves no empty or half-written
/// secret, key or certificate behind: once there is room, the next start
/// writes them and succeeds. (It left a 0-byte `tls/key.pem` or
/// `jwt.secret` that every later start refused until removed by hand.)
#[tokio::test]
async fn a_first_start_on_a_full_disk_leaves_nothing_half_written() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(dir.path().join("small"), "4m") else {
        need("a tmpfs mount (root)", false);
        return;
    };
    let data = disk.0.join("data");
    let data = data.to_str().unwrap();
    // room for the directories, not for the files
    let ballast = disk.fill_leaving(0);
    let (code, _, err) = run_cli(&["init", "--data-dir", data], None, &[]);
    assert_ne!(code, 0, "{err}");
    for name in ["jwt.secret", "tls/key.pem", "tls/cert.pem", "keyring.json"] {
        let p = disk.0.join("data").join(name);
        if let Ok(m) = std::fs::metadata(&p) {
            assert!(m.len() > 0, "{name} left empty: {err}");
        }
    }
    std::fs::remove_file(&ballast).unwrap();
    let (code, _, err) = run_cli(&["init", "--data-dir", data], None, &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run_cli(&["check", "--data-dir", data], None, &[]);
    assert!(
        !out.contains("FAIL jwt secret") && !out.contains("FAIL tls"),
        "{code} {out}{err}"
    );
}

/// A server stopped (SIGTERM, exit 0) after answering `n` authenticated
/// requests, each audited.
async fn stopped_after_requests(n: usize) -> TestServer {
    let mut s = TestServer::start().await;
    let key = s.admin().to_string();
    for _ in 0..n {
        let r = s
            .get("/api/auth/whoami")
            .header("X-API-Key", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    assert_eq!(s.terminate().await, Some(0));
    s
}

/// A server's audit file, and `audit verify` / `check` run on it with the
/// instance named (its data dir and database), as an operator would.
struct AuditCli {
    data: std::path::PathBuf,
    data_s: String,
    log: std::path::PathBuf,
    log_s: String,
    env: Vec<(&'static str, String)>,
}

impl AuditCli {
    fn of(s: &TestServer) -> AuditCli {
        let data = s.data_dir();
        let log = data.join("security_audit.log");
        AuditCli {
            data_s: data.to_str().unwrap().to_string(),
            log_s: log.to_str().unwrap().to_string(),
            data,
            log,
            env: s.cli_env(),
        }
    }

    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_cli(args, None, &env)
    }

    /// `audit verify FILE --data-dir DATA`.
    fn verify(&self, file: &str) -> (i32, String, String) {
        self.run(&["audit", "verify", file, "--data-dir", &self.data_s])
    }

    /// `check --data-dir DATA`.
    fn check(&self) -> (i32, String, String) {
        self.run(&["check", "--data-dir", &self.data_s])
    }
}

/// An audit file whose last lines were cut while the server was stopped
/// still verifies as a chain (a prefix of a chain is one); the database,
/// which stores each event after its line, holds what was cut. `audit
/// verify` (given the instance) and `check` name it, and the next start
/// records it in the chain (before, all three went on as if nothing had
/// been lost). Runs on SQLite, and on PostgreSQL in the `TEST_DB=postgres`
/// pass.
#[tokio::test]
async fn a_cut_audit_tail_is_found_by_verify_check_and_the_next_start() {
    let s = stopped_after_requests(5).await;
    let cli = AuditCli::of(&s);
    let (log, log_s) = (cli.log.clone(), cli.log_s.clone());

    let (code, out, err) = cli.verify(&log_s);
    assert_eq!(code, 0, "the whole file: {out}{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() > 3);
    let kept = lines[..lines.len() - 2].join("\n") + "\n";
    std::fs::write(&log, &kept).unwrap();
    // the file alone cannot tell
    let (code, out, _) = run_cli(&["audit", "verify", &log_s], None, &[]);
    assert_eq!(code, 0, "{out}");
    // with the instance named, and for a copy compared with it
    let copy = cli.data.join("copy.log");
    std::fs::write(&copy, &kept).unwrap();
    for file in [&log_s, copy.to_str().unwrap()] {
        let (code, out, err) = cli.verify(file);
        assert_eq!(code, 1, "{out}{err}");
        assert!(
            out.starts_with("BROKEN") && out.contains("2 later event(s)"),
            "{out}"
        );
    }
    std::fs::remove_file(&copy).unwrap();
    let (code, out, err) = cli.check();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL audit log") && l.contains("last lines were cut")),
        "{out}"
    );

    let s = s.restart(Opts::default()).await;
    let line = crate::common::audit_line(&s, "the start's report", |l| {
        l.contains(r#""violation_type":"audit_tail_cut""#)
    })
    .await;
    assert!(line.contains(r#""missing_events":2"#), "{line}");
    assert!(line.starts_with("{"), "{line}");
    assert_eq!(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .nth(lines.len() - 2),
        Some(line.as_str()),
        "the report is the first line after the cut"
    );
}

/// `n` lines of a self-made chain from the all-zero hash, as an attacker
/// with write access to the file alone would forge them.
fn forged_chain(n: usize) -> String {
    use frenly::monitoring::audit::{render_at, AuditEvent, GENESIS};
    let mut prev = GENESIS.to_string();
    let mut out = String::new();
    for i in 0..n {
        let ev = AuditEvent::new("api_access")
            .request_id(format!("forged{i}"))
            .ip("127.0.0.1")
            .field("endpoint", "/api/health")
            .field("status", 200);
        let (line, hash) = render_at(&ev, &prev, 1_700_000_000_000 + i as i64);
        out.push_str(&line);
        out.push('\n');
        prev = hash;
    }
    out
}

/// Regression (probe J): an audit file emptied, or replaced by a forged
/// chain from the all-zero hash, while the server was stopped verified OK
/// with the instance named, passed `check`, and the next start went on
/// from the forged chain; the database, which holds this instance's
/// events, was only asked whether it continues one of the file's lines.
/// Now verify says BROKEN, check FAIL, and the start records
/// `audit_file_missing` and goes on from the newest stored line, so the
/// forged part stays visible. Runs on SQLite, and on PostgreSQL in the
/// `TEST_DB=postgres` pass.
#[tokio::test]
async fn an_emptied_or_replaced_audit_file_is_found_by_verify_check_and_the_next_start() {
    let s = stopped_after_requests(3).await;
    let cli = AuditCli::of(&s);
    let (log, log_s) = (cli.log.clone(), cli.log_s.clone());
    let genuine = std::fs::read_to_string(&log).unwrap();
    let newest = genuine
        .lines()
        .last()
        .unwrap()
        .rsplit('"')
        .nth(1)
        .unwrap()
        .to_string();
    // the genuine file passes
    let (code, out, err) = cli.verify(&log_s);
    assert_eq!(code, 0, "{out}{err}");

    for (what, content) in [("emptied", String::new()), ("forged", forged_chain(3))] {
        std::fs::write(&log, &content).unwrap();
        // the file alone cannot tell
        let (code, out, _) = run_cli(&["audit", "verify", &log_s], None, &[]);
        assert_eq!(code, 0, "{what}: {out}");
        let (code, out, err) = cli.verify(&log_s);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(
            out.starts_with("BROKEN") && out.contains("emptied or replaced"),
            "{what}: {out}"
        );
        let (code, out, err) = cli.check();
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("FAIL audit log") && l.contains("emptied or replaced")),
            "{what}: {out}"
        );
    }

    // the next start on the forged file: recorded, and the chain goes on
    // from the newest stored line, not from the forged one
    let forged = std::fs::read_to_string(&log).unwrap();
    let s = s.restart(Opts::default()).await;
    let line = crate::common::audit_line(&s, "the start's report", |l| {
        l.contains(r#""violation_type":"audit_file_missing""#)
    })
    .await;
    assert!(
        line.contains(&format!(r#""prev_hash":"{newest}""#)),
        "{line} does not go on from {newest}"
    );
    let after = std::fs::read_to_string(&log).unwrap();
    assert!(after.starts_with(&forged));
    assert_eq!(after.lines().nth(3), Some(line.as_str()));
    let (code, out, _) = run_cli(&["audit", "verify", &log_s], None, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 4"), "{out}");
    drop(s);
}

/// Regression (probe J): the live audit file truncated in place while the
/// server ran was not noticed (a removed one was): the next line went on
/// from the old chain, and `check` only warned "rotated files removed?".
/// Now the writer records `audit_file_missing` (`while: "running"`) and
/// `check` fails.
#[tokio::test]
async fn an_audit_file_truncated_while_the_server_runs_is_recorded_and_fails_check() {
    async fn whoami(s: &TestServer, key: &str) {
        let r = s
            .get("/api/auth/whoami")
            .header("X-API-Key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let s = TestServer::start().await;
    let key = s.admin().to_string();
    for _ in 0..3 {
        whoami(&s, &key).await;
    }
    let data = s.data_dir();
    let log = data.join("security_audit.log");
    crate::common::audit_line(&s, "the requests' lines", |l| {
        l.contains("/api/auth/whoami")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let last = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .rsplit('"')
        .nth(1)
        .unwrap()
        .to_string();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    whoami(&s, &key).await;
    let first = crate::common::audit_line(&s, "the writer's report", |_| true).await;
    assert!(
        first.contains(r#""violation_type":"audit_file_missing""#)
            && first.contains(r#""while":"running""#),
        "{first}"
    );
    assert!(
        first.contains(&format!(r#""prev_hash":"{last}""#)),
        "{first} does not go on from {last}"
    );
    let (code, out, err) = AuditCli::of(&s).check();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines().any(|l| l.starts_with("FAIL audit log")
            && l.contains("removed or truncated while the server ran")),
        "{out}"
    );
}
