//! Monitoring and operations (issue 6): the audit chain and its tools,
//! backpressure, shutdown flush, secrets, /metrics, /api/audit, the
//! checklist, firewall rules and the security monitor.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use frenly::monitoring::audit::{Audit, AuditEvent};
use serde_json::Value;

use crate::common::{error_code, run_cli, Opts, TestServer};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// An effective config for an in-process data dir.
fn config(dir: &Path) -> frenly::config::Config {
    frenly::config::load(&frenly::config::Source {
        file: None,
        data_dir: Some(dir.to_path_buf()),
        env: vec![],
    })
    .unwrap()
}

async fn db(cfg: &frenly::config::Config) -> frenly::store::Db {
    frenly::app::bootstrap::ensure_data_dir(&cfg.data_dir).unwrap();
    frenly::store::Db::connect(&cfg.database_url, 1, 4)
        .await
        .unwrap()
}

/// Write `n` events through a real writer with the given rotation size.
async fn write_log(dir: &Path, n: usize, rotate_bytes: u64) -> frenly::config::Config {
    let mut cfg = config(dir);
    cfg.raw.audit.rotate_bytes = rotate_bytes;
    let db = db(&cfg).await;
    let audit = Audit::start(&cfg, db).unwrap();
    for i in 0..n {
        audit
            .record(
                AuditEvent::new("api_access")
                    .ip("10.0.0.1")
                    .field("endpoint", "/api/tasks")
                    .field("n", i as u64),
            )
            .await;
    }
    audit.flush().await;
    cfg
}

fn verify(files: &[&Path]) -> (i32, String) {
    let mut args = vec!["audit", "verify"];
    args.extend(files.iter().map(|p| s(p)));
    let (code, out, err) = run_cli(&args, None, &[]);
    (code, format!("{out}{err}"))
}

fn lines_of(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(String::from)
        .collect()
}

fn write_lines(p: &Path, lines: &[String]) {
    std::fs::write(
        p,
        lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
}

#[tokio::test]
async fn audit_verify_passes_untouched_and_catches_edit_drop_swap_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_log(dir.path(), 20, 0).await;
    let log = cfg.audit_file.clone();
    let (code, out) = verify(&[&log]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK 20 lines"), "{out}");
    // a file that is not there is an error on stderr, not a broken chain
    let missing = dir.path().join("nope.log");
    let (code, out, err) = run_cli(&["audit", "verify", s(&missing)], None, &[]);
    assert_eq!((code, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("cannot read"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // ... and so is one that is not a regular file (a directory was BROKEN on
    // stdout; a FIFO blocked; /dev/zero read until memory ran out)
    let fifo = dir.path().join("fifo.log");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    for not_a_file in [dir.path(), fifo.as_path(), Path::new("/dev/zero")] {
        let (code, out, err) = run_cli(&["audit", "verify", s(not_a_file)], None, &[]);
        assert_eq!((code, out.as_str()), (1, ""), "{err}");
        assert!(err.contains("not a regular file"), "{err}");
    }

    let orig = lines_of(&log);
    let t = dir.path().join("t.log");

    // edited: a member's value changed
    let mut l = orig.clone();
    l[7] = l[7].replace("10.0.0.1", "10.0.0.2");
    write_lines(&t, &l);
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 8") && out.contains("edited"), "{out}");

    // dropped
    let mut l = orig.clone();
    l.remove(5);
    write_lines(&t, &l);
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 6"), "{out}");

    // swapped
    let mut l = orig.clone();
    l.swap(10, 11);
    write_lines(&t, &l);
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 11"), "{out}");

    // truncated mid-line
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&t, &text[..text.len() - 30]).unwrap();
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 20"), "{out}");
    // truncated exactly at the last newline
    std::fs::write(&t, &text[..text.len() - 1]).unwrap();
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");

    // a byte that is not UTF-8 in line 13: named by its line (it was the
    // file's "stream did not contain valid UTF-8", with no line)
    let mut bytes = std::fs::read(&log).unwrap();
    let at = orig[..12].iter().map(|l| l.len() + 1).sum::<usize>() + 40;
    bytes[at] = 0xff;
    std::fs::write(&t, &bytes).unwrap();
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("line 13") && out.contains("not UTF-8"),
        "{out}"
    );

    // dropped first line (the head of the log)
    write_lines(&t, &orig[1..]);
    let (code, out) = verify(&[&t]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("line 1"), "{out}");
}

#[tokio::test]
async fn audit_chain_continues_across_rotation() {
    let dir = tempfile::tempdir().unwrap();
    // Lines are ~300 bytes: ~6 per file.
    let cfg = write_log(dir.path(), 40, 2000).await;
    let files = frenly::monitoring::audit::chain_files(&cfg.audit_file);
    assert!(files.len() >= 5, "{files:?}");
    let total: usize = files.iter().map(|f| lines_of(f).len()).sum();
    assert_eq!(total, 40);
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 2000, "{f:?}");
    }
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let (code, out) = verify(&refs);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("OK 40 lines"), "{out}");
    // A middle file missing, or files out of order: broken.
    let mut missing = refs.clone();
    missing.remove(1);
    assert_eq!(verify(&missing).0, 1);
    let mut swapped = refs.clone();
    swapped.swap(0, 1);
    assert_eq!(verify(&swapped).0, 1);
    // An edit in an old file is found.
    let mut l = lines_of(&files[1]);
    l[0] = l[0].replace("/api/tasks", "/api/tasky");
    write_lines(&files[1], &l);
    let (code, out) = verify(&refs);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(s(&files[1])) && out.contains("line 1"),
        "{out}"
    );
    // The writer continues the chain after a restart.
    let cfg2 = write_log(dir.path(), 3, 0).await;
    assert_eq!(cfg2.audit_file, cfg.audit_file);
}

/// Retention: removing the oldest rotated files leaves a chain that still
/// verifies from what is left (the checklist warns, no longer fails for
/// ever), and the next rotation is numbered past the highest file, so the
/// order stays the chain's (before, it took the freed `.1`).
#[tokio::test]
async fn removing_the_oldest_rotated_files_keeps_the_order_and_warns() {
    let (dir, data) = init_dir();
    let cfg = write_log(&data, 40, 2000).await;
    let files = frenly::monitoring::audit::chain_files(&cfg.audit_file);
    assert!(files.len() >= 5, "{files:?}");
    let highest = files.len() - 1;
    std::fs::remove_file(&files[0]).unwrap();
    std::fs::remove_file(&files[1]).unwrap();
    write_log(&data, 20, 2000).await;
    let after = frenly::monitoring::audit::chain_files(&cfg.audit_file);
    let numbers: Vec<u64> = frenly::monitoring::audit::rotated_files(&cfg.audit_file)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(numbers.first(), Some(&3), "{numbers:?}");
    assert!(numbers.len() > highest - 2, "{numbers:?}");
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{numbers:?}");
    // strictly, the head is missing
    let refs: Vec<&Path> = after.iter().map(PathBuf::as_path).collect();
    let (code, out) = verify(&refs);
    assert_eq!(code, 1, "{out}");
    // the checklist: a warning that names what is left
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN audit log") && l.contains("before it is gone")),
        "{out}"
    );
    // an edit in what is left is still a failure
    let mut l = lines_of(&after[1]);
    l[0] = l[0].replace("/api/tasks", "/api/tasky");
    write_lines(&after[1], &l);
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL audit log"), "{out}");
}

/// An audit file removed while its writer runs is created again at the
/// next batch, the chain going on (before, later events went to the
/// unlinked file and were lost from disk); its first line records the
/// removal as a `security_violation`, and its `prev_hash` shows that
/// something came before it.
#[tokio::test]
async fn a_removed_audit_file_is_created_again() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let db = db(&cfg).await;
    let audit = Audit::start(&cfg, db).unwrap();
    audit
        .record(AuditEvent::new("api_access").field("n", 1u64))
        .await;
    audit.flush().await;
    let first = lines_of(&cfg.audit_file);
    std::fs::remove_file(&cfg.audit_file).unwrap();
    audit
        .record(AuditEvent::new("api_access").field("n", 2u64))
        .await;
    audit.flush().await;
    let again = lines_of(&cfg.audit_file);
    assert_eq!(again.len(), 2, "{again:?}");
    let (a, v, b): (Value, Value, Value) = (
        serde_json::from_str(&first[0]).unwrap(),
        serde_json::from_str(&again[0]).unwrap(),
        serde_json::from_str(&again[1]).unwrap(),
    );
    // the removal is recorded (it was only a WARN of `check`, worded as
    // if old rotated files had been cleaned up)
    assert_eq!(v["event_type"], "security_violation");
    assert_eq!(v["violation_type"], "audit_file_missing");
    assert_eq!(v["prev_hash"], a["hash"]);
    assert_eq!(b["n"], 2);
    assert_eq!(b["prev_hash"], v["hash"]);
    assert_eq!(audit.depth(), 0);
}

/// Two writers on one file (the server and an offline command; here two in
/// one process, each with its own open file as two processes have) keep
/// one chain, and one rotation sequence when they rotate.
#[tokio::test]
async fn two_writers_on_one_audit_file_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    for rotate_bytes in [0, 2000] {
        let mut cfg = config(&dir.path().join(format!("r{rotate_bytes}")));
        cfg.raw.audit.rotate_bytes = rotate_bytes;
        let db = db(&cfg).await;
        let a = Audit::start(&cfg, db.clone()).unwrap();
        let b = Audit::start(&cfg, db).unwrap();
        for i in 0..120u64 {
            let w = if i % 3 == 0 { &b } else { &a };
            w.record(
                AuditEvent::new("api_access")
                    .field("endpoint", "/api/tasks")
                    .field("n", i),
            )
            .await;
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        a.flush().await;
        b.flush().await;
        let files = frenly::monitoring::audit::chain_files(&cfg.audit_file);
        if rotate_bytes > 0 {
            assert!(files.len() >= 5, "{files:?}");
        }
        let total: usize = files.iter().map(|f| lines_of(f).len()).sum();
        assert_eq!(total, 120);
        let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
        let (code, out) = verify(&refs);
        assert_eq!(code, 0, "rotate_bytes {rotate_bytes}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn burst_of_100k_events_under_backpressure_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.raw.audit.queue_capacity = 16;
    cfg.raw.audit.rotate_bytes = 0;
    let db = db(&cfg).await;
    let metrics = frenly::monitoring::metrics::Metrics::new();
    let audit = Arc::new(
        Audit::start_with(
            &cfg,
            db.clone(),
            frenly::monitoring::audit::AuditHooks {
                backpressure: Some(metrics.audit_backpressure.clone()),
                depth: Some(metrics.audit_queue_depth.clone()),
                alerts: None,
                last_stored: None,
            },
        )
        .unwrap(),
    );
    const TASKS: usize = 16;
    const PER: usize = 100_000 / TASKS;
    let started = std::time::Instant::now();
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let a = audit.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..PER {
                a.record(
                    AuditEvent::new("api_access")
                        .request_id(format!("t{t}-{i}"))
                        .field("status", 200),
                )
                .await;
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    audit.flush().await;
    let elapsed = started.elapsed();
    let lines = lines_of(&cfg.audit_file);
    assert_eq!(lines.len(), TASKS * PER);
    let rows = frenly::store::audit::count(&db).await.unwrap();
    assert_eq!(rows as usize, TASKS * PER);
    assert!(
        metrics.audit_backpressure.get() > 0,
        "the small queue forced waiting"
    );
    assert_eq!(audit.depth(), 0);
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| {
            l.split("\"request_id\":\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), TASKS * PER, "every event exactly once");
    let (code, out) = verify(&[&cfg.audit_file]);
    assert_eq!(code, 0, "{out}");
    eprintln!(
        "100000 audit events in {elapsed:?} ({:.0}/s), backpressure waits: {}",
        100_000.0 / elapsed.as_secs_f64(),
        metrics.audit_backpressure.get()
    );
}

#[test]
fn secrets_are_redacted_by_the_writer_guard() {
    use frenly::monitoring::audit::render;
    let ev = AuditEvent::new("key_created")
        .field("key_id", "k1")
        .field("api_key", "frn_abc")
        .field("password", "hunter2")
        .field("new_password", "hunter3")
        .field("access_token", "eyJ.x.y")
        .field("Authorization", "Bearer zzz")
        .field(
            "nested",
            serde_json::json!({"client_secret": "s3", "note": "frn_leak"}),
        )
        .field("details", "ok");
    let (line, _) = render(&ev, frenly::monitoring::audit::GENESIS);
    for secret in [
        "frn_abc", "hunter2", "hunter3", "eyJ.x.y", "zzz", "s3", "frn_leak",
    ] {
        assert!(!line.contains(secret), "{secret} in {line}");
    }
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["key_id"], "k1");
    assert_eq!(v["details"], "ok");
    assert_eq!(v["password"], "[redacted]");
}

#[tokio::test]
async fn api_access_is_audited_and_api_audit_filters_and_paginates() {
    let s = TestServer::start().await;
    // Anonymous (401) and authenticated requests.
    let r = s.get("/api/audit").send().await.unwrap();
    assert_eq!(r.status(), 401);
    for _ in 0..4 {
        let r = s.admin_get("/api/audit?limit=1").send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let items = s.audit_rows("type=api_access&limit=1000", 5).await;
    let anon = items
        .iter()
        .find(|i| i["status"] == 401)
        .expect("refused request audited");
    assert!(anon["user_id"].is_null());
    assert_eq!(anon["endpoint"], "/api/audit");
    assert_eq!(anon["method"], "GET");
    assert_eq!(anon["ip"], "127.0.0.1");
    assert!(anon["request_id"].is_string());
    let authed = items.iter().find(|i| i["status"] == 200).unwrap();
    let uid = authed["user_id"]
        .as_str()
        .expect("user id of the admin")
        .to_string();

    // Pagination: pages of 2, newest first, no duplicates, all covered.
    let all = s.audit_rows("type=api_access&limit=1000", 5).await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/api/audit?type=api_access&limit=2&cursor={c}"),
            None => "/api/audit?type=api_access&limit=2".into(),
        };
        let body: Value = s.admin_get(&q).send().await.unwrap().json().await.unwrap();
        let page = body["items"].as_array().unwrap();
        assert!(page.len() <= 2);
        seen.extend(page.iter().map(|i| i["hash"].as_str().unwrap().to_string()));
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let mut dedup = seen.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), seen.len());
    assert!(seen.len() >= all.len());

    // Filters.
    let by_user = s.audit_rows(&format!("user_id={uid}"), 1).await;
    assert!(by_user.iter().all(|i| i["user_id"] == uid.as_str()));
    let by_ip = s.audit_rows("ip=127.0.0.1", 1).await;
    assert!(by_ip.iter().all(|i| i["ip"] == "127.0.0.1"));
    let body: Value = s
        .admin_get("/api/audit?ip=10.9.9.9")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
    let body: Value = s
        .admin_get("/api/audit?since=2999-01-01T00:00:00Z")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0);
    assert!(body["next_cursor"].is_null());
    let body: Value = s
        .admin_get("/api/audit?since=2000-01-01T00:00:00%2B02:00&type=nothing_like_this")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["items"].as_array().unwrap().len(), 0);

    for bad in [
        "since=yesterday",
        "limit=0",
        "limit=5000",
        "ip=not-an-ip",
        "cursor=abc",
        "type=A;B",
        "colour=red",
    ] {
        let r = s
            .admin_get(&format!("/api/audit?{bad}"))
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (400, "validation_failed"), "{bad}");
    }
}

/// SIGTERM, and SIGHUP too (its default action killed the process with
/// events still queued: 2-3 of 20 answered requests had no line).
#[tokio::test]
async fn sigterm_and_sighup_flush_every_accepted_event() {
    for signal in ["TERM", "HUP"] {
        let mut s = TestServer::start().await;
        let mut ids = Vec::new();
        for i in 0..30 {
            let rid = format!("flush-{i}");
            let r = s
                .admin_get("/api/audit?limit=1")
                .header("X-Request-Id", &rid)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            ids.push(rid);
        }
        assert_eq!(s.stop_by(signal).await, Some(0), "SIG{signal}");
        let text = std::fs::read_to_string(s.data.join("security_audit.log")).unwrap();
        for id in &ids {
            assert!(
                text.contains(&format!("\"request_id\":\"{id}\"")),
                "{id} missing after SIG{signal}"
            );
        }
        let (code, out) = verify(&[&s.data.join("security_audit.log")]);
        assert_eq!(code, 0, "{out}");
    }
}

#[tokio::test]
async fn no_secret_reaches_the_audit_log() {
    let mut s = TestServer::start().await;
    let admin = s.admin().to_string();
    let wrong = format!("frn_{}", "A".repeat(43));
    let static_like = "not-a-key-but-a-password-Hunter2!";
    // A scripted run: good key, wrong key, keys in the path and query,
    // credentials in bodies, bearer tokens.
    let _ = s.admin_get("/api/audit").send().await.unwrap();
    let _ = s
        .get("/api/audit")
        .header("X-API-Key", &wrong)
        .send()
        .await
        .unwrap();
    let _ = s
        .get(&format!("/api/{admin}?api_key={admin}"))
        .send()
        .await
        .unwrap();
    let _ = s
        .post("/api/auth/login")
        .json(&serde_json::json!({"username": "admin", "password": static_like}))
        .send()
        .await
        .unwrap();
    let _ = s
        .get("/api/audit")
        .header("Authorization", format!("Bearer {static_like}"))
        .send()
        .await
        .unwrap();
    let _ = s
        .admin_post("/api/keys", &serde_json::json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(s.terminate().await, Some(0));
    let text = std::fs::read_to_string(s.data.join("security_audit.log")).unwrap();
    assert!(text.lines().count() >= 6, "{text}");
    for secret in [admin.as_str(), &admin[4..], wrong.as_str(), static_like] {
        assert!(!text.contains(secret), "secret in the audit log");
    }
    // Nor in the database copy.
    let db = s.database_bytes();
    let db = String::from_utf8_lossy(&db);
    assert!(!db.contains(&admin[4..]) && !db.contains(static_like));
}

type Types = std::collections::HashMap<String, String>;
type Sample = (String, Vec<(String, String)>, f64);

/// A strict parser of the OpenMetrics / Prometheus text format: every line
/// is a comment of a known kind or a sample of a declared family with a
/// float value; ends with `# EOF`. Returns (family -> type, samples).
fn parse_exposition(text: &str) -> (Types, Vec<Sample>) {
    let mut types = std::collections::HashMap::new();
    let mut samples = Vec::new();
    let mut eof = false;
    for line in text.lines() {
        assert!(!eof, "content after # EOF");
        if line == "# EOF" {
            eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut p = rest.splitn(3, ' ');
            let kind = p.next().unwrap();
            let name = p.next().unwrap();
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            match kind {
                "TYPE" => {
                    let t = p.next().unwrap();
                    assert!(
                        [
                            "counter",
                            "gauge",
                            "histogram",
                            "summary",
                            "unknown",
                            "info",
                            "stateset",
                            "gaugehistogram"
                        ]
                        .contains(&t),
                        "{line}"
                    );
                    types.insert(name.to_string(), t.to_string());
                }
                "HELP" | "UNIT" => {}
                _ => panic!("unknown comment: {line}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, rest)) => {
                let body = rest
                    .strip_suffix('}')
                    .unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut labels = Vec::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    labels.push((k.to_string(), v.trim_end_matches('"').to_string()));
                }
                (n.to_string(), labels)
            }
            None => (series.to_string(), vec![]),
        };
        let family = types
            .keys()
            .filter(|f| {
                name == **f
                    || ["_total", "_bucket", "_sum", "_count", "_created"]
                        .iter()
                        .any(|s| name == format!("{f}{s}"))
            })
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
        let _ = family;
        samples.push((name, labels, v));
    }
    // OpenMetrics ends with `# EOF` (the callers that ask for it check);
    // the Prometheus text format has none
    (types, samples)
}

/// Any token is a valid HTTP method; a label per invented one would grow
/// the registry (and every `/metrics` scrape) by a series per request.
#[tokio::test]
async fn invented_methods_share_one_metrics_label() {
    let s = TestServer::start().await;
    for i in 0..20 {
        let m = reqwest::Method::from_bytes(format!("ZZ{i}").as_bytes()).unwrap();
        let r = s
            .client
            .request(m, s.url("/api/tasks"))
            .header("X-API-Key", s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    }
    let text = s.metrics_text().await;
    let (_, samples) = parse_exposition(&text);
    let known = [
        "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", "OTHER",
    ];
    let mut other = 0.0;
    for (name, labels, v) in &samples {
        for (k, val) in labels.iter().filter(|(k, _)| k == "method") {
            assert!(known.contains(&val.as_str()), "{name} {k}={val}");
            if val == "OTHER" {
                other += v;
            }
        }
    }
    assert_eq!(other, 20.0, "{text}");
}

#[tokio::test]
async fn metrics_are_admin_only_and_parse_as_prometheus_text() {
    let s = TestServer::with(Opts::default().config("[metrics]\nlisten = \"127.0.0.1:0\"\n")).await;
    let r = s.get("/metrics").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s.get("/api/audit").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let _ = s.admin_get("/api/nothing-here").send().await.unwrap();
    // OpenMetrics when the scraper asks for it (Prometheus does)
    let r = s
        .admin_get("/metrics")
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let (types, _) = parse_exposition(&text);
    assert_eq!(
        types.get("frenly_http_requests").map(String::as_str),
        Some("counter")
    );
    // the contract's "Prometheus text format" otherwise (it was always
    // OpenMetrics): 0.0.4, no `# EOF`, a counter's TYPE names its samples
    for accept in [None, Some("text/plain;version=0.0.4"), Some("*/*")] {
        let mut rb = s.admin_get("/metrics");
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()["content-type"],
            "text/plain; version=0.0.4; charset=utf-8",
            "{accept:?}"
        );
        assert!(!r.text().await.unwrap().contains("# EOF"));
    }
    let r = s.admin_get("/metrics").send().await.unwrap();
    let text = r.text().await.unwrap();
    let (types, samples) = parse_exposition(&text);
    for (f, t) in [
        ("frenly_http_requests_total", "counter"),
        ("frenly_http_request_duration_seconds", "histogram"),
        ("frenly_requests_blocked_total", "counter"),
        ("frenly_active_bans", "gauge"),
        ("frenly_login_failures_total", "counter"),
        ("frenly_audit_queue_depth", "gauge"),
        ("frenly_audit_backpressure_total", "counter"),
        ("frenly_websocket_connections", "gauge"),
    ] {
        assert_eq!(types.get(f).map(String::as_str), Some(t), "{f}");
    }
    for (n, _, _) in &samples {
        let family = types.keys().any(|f| {
            n == f
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| *n == format!("{f}{s}"))
        });
        assert!(family, "{n} has no TYPE of its own name");
    }
    let has = |name: &str, labels: &[(&str, &str)]| {
        samples.iter().any(|(n, l, v)| {
            n == name
                && *v >= 1.0
                && labels
                    .iter()
                    .all(|(k, val)| l.iter().any(|(a, b)| a == k && b == val))
        })
    };
    assert!(has(
        "frenly_http_requests_total",
        &[("route", "/metrics"), ("status", "401")]
    ));
    assert!(has(
        "frenly_http_requests_total",
        &[("route", "(unmatched)"), ("status", "404")]
    ));
    assert!(has(
        "frenly_requests_blocked_total",
        &[("reason", "unauthenticated")]
    ));
    assert!(has("frenly_http_request_duration_seconds_count", &[]));

    // The separate listener: no authentication, plain HTTP.
    let err = s.stderr_text();
    let url = err
        .split("metrics listening on ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200);
    parse_exposition(&r.text().await.unwrap());
    let other = url.replace("/metrics", "/api/audit");
    assert_eq!(reqwest::get(&other).await.unwrap().status(), 404);
}

fn init_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (code, _, err) = run_cli(&["init", "--data-dir", s(&data)], None, &[]);
    assert_eq!(code, 0, "{err}");
    (dir, data)
}

fn check_with(dir: &Path, data: &Path, toml: &str) -> (i32, String) {
    use std::os::unix::fs::PermissionsExt;
    let cfg = dir.join("check.toml");
    std::fs::write(&cfg, toml).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (code, out, err) = run_cli(
        &["check", "--config", s(&cfg), "--data-dir", s(data)],
        None,
        &[],
    );
    (code, format!("{out}{err}"))
}

#[test]
fn check_passes_on_a_fresh_init_and_with_no_data_dir() {
    let (_dir, data) = init_dir();
    let (code, out, err) = run_cli(&["check", "--data-dir", s(&data)], None, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(
        out.lines()
            .all(|l| l.starts_with("PASS ") || l.starts_with("WARN ")),
        "{out}"
    );
    assert!(out.contains("WARN alert channel"), "{out}");
    // The embedded default before any start also passes.
    let fresh = tempfile::tempdir().unwrap();
    let (code, out, err) = run_cli(
        &["check", "--data-dir", s(&fresh.path().join("d"))],
        None,
        &[],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn check_fails_each_broken_item() {
    use std::os::unix::fs::PermissionsExt;
    let cases: &[(&str, &str)] = &[
        (
            "[network]\nlisten = \"0.0.0.0:8080\"\ntls = false\n",
            "FAIL tls",
        ),
        (
            "[security]\napi_key = \"short-key\"\n",
            "FAIL static api key",
        ),
        (
            &format!("[security]\napi_key = \"{}\"\n", "ab".repeat(24)),
            "FAIL static api key",
        ),
        (
            "[limits]\nrate = { max_requests = 1000000, window_seconds = 1 }\n",
            "FAIL rate limits",
        ),
        (
            "[limits]\nddos = { max_requests_per_second = 5000, ban_seconds = 300 }\n",
            "FAIL rate limits",
        ),
        (
            "[limits]\nddos = { max_requests_per_second = 10, ban_seconds = 0 }\n",
            "FAIL bans",
        ),
        ("[limits]\nallowlist = [\"0.0.0.0/0\"]\n", "FAIL bans"),
        // everything without a literal /0
        (
            "[limits]\nallowlist = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n",
            "FAIL bans",
        ),
        // everything again, as 256 ranges no one of which is too wide
        (
            &format!(
                "[limits]\nallowlist = [{}]\n",
                (0..256)
                    .map(|i| format!("\"{i}.0.0.0/8\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "FAIL bans",
        ),
        (
            &format!(
                "[network]\ntrusted_proxies = [{}]\n",
                (0..16)
                    .map(|i| format!("\"{:x}00::/8\"", 0x20 + i))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "FAIL trusted proxies",
        ),
        (
            "[network]\ntrusted_proxies = [\"2000::/3\"]\n",
            "FAIL trusted proxies",
        ),
        ("[auth]\nlogin_max_failures = 1000\n", "FAIL login lockout"),
        ("[ids]\nmode = \"off\"\n", "FAIL intrusion detection"),
        (
            "[network]\ntrusted_proxies = [\"0.0.0.0/0\"]\n",
            "FAIL trusted proxies",
        ),
        (
            "[network]\ntrusted_proxies = [\"10.0.0.0/8\", \"::/0\"]\n",
            "FAIL trusted proxies",
        ),
        (
            "[metrics]\nlisten = \"0.0.0.0:9100\"\n",
            "FAIL metrics listener",
        ),
        // every IPv4 client, written as IPv4-mapped IPv6
        (
            "[network]\ntrusted_proxies = [\"::ffff:0:0/96\"]\n",
            "FAIL trusted proxies",
        ),
        // the IDS off by its overrides while ids.mode says block
        (
            "[ids.routes.\"/\"]\nmode = \"off\"\n",
            "FAIL intrusion detection",
        ),
        (
            "[ids.families]\nsqli = \"off\"\nxss = \"off\"\nlfi = \"off\"\nrce = \"off\"\n\
             rfi = \"off\"\nphp = \"off\"\njava = \"off\"\nnodejs = \"off\"\n\
             session = \"off\"\ngeneric = \"off\"\n",
            "FAIL intrusion detection",
        ),
        // blocked, never banned
        ("[incidents]\nban = []\n", "FAIL bans"),
        // events written nowhere
        ("[audit]\nfile = \"/dev/null\"\n", "FAIL audit log"),
    ];
    for (toml, expect) in cases {
        let (dir, data) = init_dir();
        let (code, out) = check_with(dir.path(), &data, toml);
        assert_eq!(code, 1, "{toml}: {out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with(expect) && l.contains("; fix: ")),
            "{toml}: expected {expect}: {out}"
        );
    }
    // WARN, not FAIL: plain HTTP on loopback, IDS in detect mode.
    let (dir, data) = init_dir();
    let (code, out) = check_with(
        dir.path(),
        &data,
        "[network]\ntls = false\n[ids]\nmode = \"detect\"\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN tls") && out.contains("WARN intrusion detection"),
        "{out}"
    );
    // WARN: the IDS off for one gateway route, one IDS kind that never bans
    let (code, out) = check_with(
        dir.path(),
        &data,
        "[ids.routes.\"/raw/\"]\nmode = \"off\"\n[incidents]\nban = [\"sql_injection\", \"xss_attempt\", \"path_traversal\", \"command_injection\"]\n",
    );
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN intrusion detection")
                && l.contains("ids.routes.\"/raw/\".mode = off")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("WARN bans") && l.contains("intrusion_attempt never ban")),
        "{out}"
    );
    // A strong static key passes.
    let (code, out) = check_with(
        dir.path(),
        &data,
        "[security]\napi_key = \"kq3ZJ0v9Xb2Lw8TyN4mR7pQ1sU6hE5dGcA_fB-iK\"\n",
    );
    assert_eq!(code, 0, "{out}");

    let perm = |p: &Path, mode: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    // Key files readable by others, or weak.
    for (file, expect) in [
        ("jwt.secret", "FAIL jwt secret"),
        ("keyring.json", "FAIL keyring file"),
        ("tls/key.pem", "FAIL tls private key"),
        ("frenly.db", "FAIL database file"),
    ] {
        let (dir, data) = init_dir();
        perm(&data.join(file), 0o644);
        let (code, out) = check_with(dir.path(), &data, "");
        assert_eq!(code, 1, "{file}: {out}");
        assert!(out.contains(expect), "{file}: {out}");
    }
    // an audit log others may write: the chain has no key, so whoever can
    // write the file can rewrite its history with a valid chain
    for mode in [0o666, 0o620] {
        let (dir, data) = init_dir();
        let (code, _, err) = run_cli(
            &["keys", "create", "--user", "admin", "--data-dir", s(&data)],
            None,
            &[],
        );
        assert_eq!(code, 0, "{err}");
        perm(&data.join("security_audit.log"), mode);
        let (code, out) = check_with(dir.path(), &data, "");
        assert_eq!(code, 1, "{mode:o}: {out}");
        assert!(out.contains("FAIL audit log"), "{mode:o}: {out}");
    }
    let (dir, data) = init_dir();
    let jwt = data.join("jwt.secret");
    std::fs::write(&jwt, "too-short").unwrap();
    perm(&jwt, 0o600);
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 1);
    assert!(
        out.contains("FAIL jwt secret") && out.contains("9 bytes"),
        "{out}"
    );
    // random bytes are a strong secret (rated by bytes, not by a lossy
    // UTF-8 reading, where most became one replacement character); 40, as
    // blanks at either end are not part of the key
    for _ in 0..5 {
        let mut b = [0u8; 40];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut b);
        std::fs::write(&jwt, b).unwrap();
        let (_, out) = check_with(dir.path(), &data, "");
        assert!(out.contains("PASS jwt secret"), "{b:?}: {out}");
    }
    // What `serve` refuses, the checklist fails: a TLS key of another pair,
    // a certificate without its key file's partner, an empty keyring.
    let (other, other_data) = init_dir();
    for (name, broken) in [
        ("mismatched key", "tls/key.pem"),
        ("cert missing", "tls/cert.pem"),
        ("empty keyring", "keyring.json"),
    ] {
        let (dir, data) = init_dir();
        let (code, out) = check_with(dir.path(), &data, "");
        assert_eq!(code, 0, "{name}, before: {out}");
        match name {
            "mismatched key" => {
                std::fs::copy(other_data.join(broken), data.join(broken)).unwrap();
            }
            "cert missing" => std::fs::remove_file(data.join(broken)).unwrap(),
            _ => std::fs::write(data.join(broken), "").unwrap(),
        }
        let (code, out) = check_with(dir.path(), &data, "");
        assert_eq!(code, 1, "{name}: {out}");
        let expect = if broken.starts_with("tls") {
            "FAIL tls private key"
        } else {
            "FAIL keyring file"
        };
        assert!(out.contains(expect), "{name}: {out}");
    }
    drop(other);
    // A world-readable config file holding a secret.
    let (dir, data) = init_dir();
    let cfg = dir.path().join("check.toml");
    let world_readable = |toml: &str| {
        std::fs::write(&cfg, toml).unwrap();
        perm(&cfg, 0o644);
        run_cli(
            &["check", "--config", s(&cfg), "--data-dir", s(&data)],
            None,
            &[],
        )
    };
    let (code, out, _) =
        world_readable("[security]\napi_key = \"kq3ZJ0v9Xb2Lw8TyN4mR7pQ1sU6hE5dGcA_fB-iK\"\n");
    assert_eq!(code, 1);
    assert!(out.contains("FAIL config file"), "{out}");
    // ... or a Redis password in its URL (it passed: only the static key
    // counted)
    let (code, out, _) =
        world_readable("[state]\nredis_url = \"redis://:hunter2hunter2@127.0.0.1:6379/3\"\n");
    assert_eq!(code, 1);
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL config file") && l.contains("state.redis_url")),
        "{out}"
    );
}

#[tokio::test]
async fn check_fails_an_edited_or_unwritable_audit_log() {
    let (dir, data) = init_dir();
    let cfg = write_log(&data, 5, 0).await;
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("PASS audit log") && out.contains("5 lines"),
        "{out}"
    );
    let mut l = lines_of(&cfg.audit_file);
    l.remove(2);
    write_lines(&cfg.audit_file, &l);
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL audit log: chain broken"), "{out}");
    // Unwritable (a directory where the file should be).
    let (code, out) = check_with(
        dir.path(),
        &data,
        &format!("[audit]\nfile = \"{}\"\n", s(&data.join("tls"))),
    );
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL audit log"), "{out}");
}

/// Run a rule checker; None = the kernel refused the check (skip).
fn tool_check(prog: &str, args: &[&str], input: &str) -> Option<(bool, String)> {
    use std::io::Write;
    let mut child = match std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            assert!(
                std::env::var("FRENLY_CI").is_err(),
                "{prog} missing in CI: {e}"
            );
            eprintln!("SKIP: {prog} not installed ({e})");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lower = err.to_lowercase();
    if !out.status.success()
        && (lower.contains("operation not permitted")
            || lower.contains("permission denied")
            || lower.contains("netlink")
            || lower.contains("you must be root")
            || lower.contains("can't initialize"))
    {
        eprintln!(
            "SKIP: the kernel refused `{prog} {}`: {}",
            args.join(" "),
            err.trim()
        );
        return None;
    }
    Some((out.status.success(), err))
}

/// Output into a closed pipe (`frenly firewall ... | nft -c -f -` with
/// `nft` missing, `frenly users list | head -0`): one stderr line and exit
/// 1, never a panic and its backtrace.
#[test]
fn output_into_a_closed_pipe_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (code, _, err) = crate::common::run_cli(&["init", "--data-dir", data], None, &[]);
    assert_eq!(code, 0, "{err}");
    for args in [
        vec!["firewall", "--format", "nftables"],
        vec!["config", "show"],
        vec!["users", "list"],
        vec!["check"],
        vec!["keys", "create", "--user", "admin", "--name", "lost"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let child = std::process::Command::new(crate::common::BIN)
            .args(&args)
            .args(["--data-dir", data])
            .env("RUST_BACKTRACE", "1")
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let last = err.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("frenly: error: cannot write the output"),
            "{args:?}: {err}"
        );
    }
    // standard error into the same closed pipe (`2>&1 | head -1`): the
    // error line cannot be written either, and still no panic (exit 1)
    for args in [
        vec!["keys", "list"],
        vec!["config", "show"],
        vec!["users", "list"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let status = std::process::Command::new(crate::common::BIN)
            .args(&args)
            .args(["--data-dir", data])
            .stdin(std::process::Stdio::null())
            .stdout(writer.try_clone().unwrap())
            .stderr(writer)
            .status()
            .unwrap();
        assert_eq!(status.code(), Some(1), "{args:?}");
    }
    // a key whose secret was never shown is revoked
    let (code, out, err) = crate::common::run_cli(&["keys", "list", "--data-dir", data], None, &[]);
    assert_eq!(code, 0, "{err}");
    let row = out
        .lines()
        .find(|l| l.split('\t').nth(2) == Some("lost"))
        .unwrap_or_else(|| panic!("the key is not listed: {out}"));
    assert!(row.ends_with("revoked"), "{row}");
}

/// The offline identity commands work on an initialised data directory
/// only: a mistyped `--data-dir` is an error naming the database, and
/// nothing is created there (it used to answer "no keys" from a brand-new
/// data directory with fresh secrets).
#[test]
fn offline_identity_commands_need_an_initialised_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("typo");
    let data = data.to_str().unwrap();
    for (args, stdin) in [
        (vec!["keys", "list"], None),
        (vec!["users", "list"], None),
        (vec!["keys", "revoke", "k1"], None),
        (vec!["token", "--user", "admin"], None),
        (vec!["users", "add", "alice"], Some("a long password 123\n")),
    ] {
        let mut all = args.clone();
        all.extend(["--data-dir", data]);
        let (code, out, err) = crate::common::run_cli(&all, stdin, &[]);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.contains("no database at"), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        assert!(!Path::new(data).exists(), "{args:?} created {data}");
    }
}

#[test]
fn firewall_rules_are_accepted_by_nft_and_iptables_restore() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fw.toml");
    std::fs::write(
        &cfg,
        "[network]\nlisten = \"0.0.0.0:8443\"\n[metrics]\nlisten = \"10.0.0.5:9100\"\n",
    )
    .unwrap();
    let data = dir.path().join("d");
    let mut outputs = Vec::new();
    for format in ["nftables", "iptables", "ufw", "ip6tables"] {
        let (code, out, err) = run_cli(
            &[
                "firewall",
                "--format",
                format,
                "--config",
                s(&cfg),
                "--data-dir",
                s(&data),
            ],
            None,
            &[],
        );
        assert_eq!(code, 0, "{err}");
        for port in ["22", "80", "443", "8443"] {
            assert!(out.contains(port), "{format} lacks {port}: {out}");
        }
        // the unauthenticated metrics port is named, but only in a comment
        // (to complete with the Prometheus server's address)
        assert!(out.contains("9100"), "{format}: {out}");
        for l in out.lines().filter(|l| l.contains("9100")) {
            assert!(l.trim_start().starts_with('#'), "{format} opens 9100: {l}");
        }
        outputs.push(out);
    }
    // iptables is the IPv4 half and says where the IPv6 half is
    assert!(outputs[1].contains("--format ip6tables"), "{}", outputs[1]);
    assert!(outputs[3].contains("neighbour-solicitation") && outputs[3].contains(":INPUT DROP"));
    assert!(outputs[0].contains("policy drop") && outputs[0].contains("log prefix"));
    assert!(outputs[1].contains(":INPUT DROP") && outputs[1].contains("-j LOG"));
    assert!(outputs[2].contains("ufw default deny incoming"));
    // Loopback listeners (the default 127.0.0.1:8080 and the metrics one):
    // reachable from this host only, not opened.
    std::fs::write(&cfg, "[metrics]\nlisten = \"127.0.0.1:9100\"\n").unwrap();
    let (_, out, _) = run_cli(
        &["firewall", "--format", "nftables", "--config", s(&cfg)],
        None,
        &[],
    );
    assert!(!out.contains("9100") && !out.contains("8080") && out.contains("443"));
    // a metrics port the rules open anyway (HTTPS's, Frenly's own) is
    // refused, not printed under "Not opened", and `check` fails it
    for toml in [
        "[metrics]\nlisten = \"10.0.0.5:443\"\n",
        "[network]\nlisten = \"10.0.0.5:8443\"\n[metrics]\nlisten = \"10.0.0.6:8443\"\n",
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let (code, out, err) = run_cli(
            &["firewall", "--format", "nftables", "--config", s(&cfg)],
            None,
            &[],
        );
        assert_eq!((code, out.as_str()), (2, ""), "{toml}: {err}");
        assert!(err.contains("metrics.listen"), "{err}");
        let (code, out, _) = run_cli(
            &["check", "--config", s(&cfg), "--data-dir", s(&data)],
            None,
            &[],
        );
        assert_eq!(code, 1, "{out}");
        assert!(
            out.lines().any(|l| l.starts_with("FAIL metrics listener")),
            "{out}"
        );
    }

    if let Some((ok, err)) = tool_check("nft", &["-c", "-f", "-"], &outputs[0]) {
        assert!(ok, "nft -c refused the rules: {err}\n{}", outputs[0]);
        // And the checker really checks.
        let (ok, _) = tool_check(
            "nft",
            &["-c", "-f", "-"],
            "table inet x { chain y { bogus } }",
        )
        .unwrap();
        assert!(!ok);
    }
    if let Some((ok, err)) = tool_check("iptables-restore", &["--test"], &outputs[1]) {
        assert!(
            ok,
            "iptables-restore --test refused the rules: {err}\n{}",
            outputs[1]
        );
    }
    if let Some((ok, err)) = tool_check("ip6tables-restore", &["--test"], &outputs[3]) {
        assert!(
            ok,
            "ip6tables-restore --test refused the rules: {err}\n{}",
            outputs[3]
        );
    }
    // --apply refuses clearly when not root (only meaningful as non-root).
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        let (code, _, err) = run_cli(&["firewall", "--format", "nftables", "--apply"], None, &[]);
        assert_eq!(code, 1);
        assert!(err.contains("root"), "{err}");
    }
}

/// A tiny webhook receiver: records every POST body.
fn webhook() -> (String, Arc<Mutex<Vec<Value>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", l.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut len = 0usize;
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        line.clear();
                        r.read_line(&mut line).unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    if let Ok(v) = serde_json::from_slice(&body) {
                        sink.lock().unwrap().push(v);
                    }
                    c.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .unwrap();
                }
            });
        }
    });
    (url, got)
}

/// The webhook URL's token, redacted by `config show`, stays out of the log
/// when a delivery fails (reqwest's error names the URL it failed on).
#[test]
fn a_failed_alert_delivery_does_not_log_the_webhooks_token() {
    let (dir, data) = init_dir();
    // a port nothing listens on: every delivery attempt fails to connect
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = dir.path().join("mon.toml");
    std::fs::write(
        &cfg,
        format!("[alerts]\nwebhook_url = \"http://127.0.0.1:{port}/hook?token=WEBHOOKTOKEN123\"\n"),
    )
    .unwrap();
    // no baseline yet: `baseline_missing` is a finding, and alerted
    let (code, out, err) = run_cli(
        &[
            "monitor",
            "--once",
            "--config",
            s(&cfg),
            "--data-dir",
            s(&data),
        ],
        None,
        &[],
    );
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("alert webhook failed"), "{err}");
    assert!(!err.contains("WEBHOOKTOKEN123"), "{err}");
    assert!(!out.contains("WEBHOOKTOKEN123"), "{out}");
}

#[test]
fn monitor_once_finds_a_changed_key_file_and_an_nmap_process() {
    let (dir, data) = init_dir();
    let (url, got) = webhook();
    let cfg = dir.path().join("mon.toml");
    std::fs::write(&cfg, format!("[alerts]\nwebhook_url = \"{url}\"\n")).unwrap();
    let args = |extra: &[&str]| {
        let mut v = vec!["monitor", "--config", s(&cfg), "--data-dir", s(&data)];
        v.extend_from_slice(extra);
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let run = |extra: &[&str]| {
        let a = args(extra);
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        run_cli(&refs, None, &[])
    };
    let (code, out, err) = run(&["--baseline"]);
    assert_eq!(code, 0, "{out}{err}");
    let baseline = data.join("monitor-baseline.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&baseline).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (_, out, _) = run(&["--once"]);
    assert!(!out.contains("file_changed"), "{out}");
    assert!(!out.contains("`nmap`"), "{out}");

    // A changed key file and a scanner running.
    std::fs::write(data.join("jwt.secret"), "x".repeat(88)).unwrap();
    let bin = dir.path().join("nmap");
    std::fs::copy("/bin/sleep", &bin).unwrap();
    let mut nmap = std::process::Command::new(&bin).arg("30").spawn().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let (code, out, err) = run(&["--once"]);
    let _ = nmap.kill();
    let _ = nmap.wait();
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FINDING file_changed") && l.contains("jwt.secret")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("FINDING suspicious_process")
                && l.contains("`nmap`")
                && l.contains(&nmap.id().to_string())),
        "{out}"
    );
    // Each finding went through the alert channel.
    let alerts = got.lock().unwrap().clone();
    assert!(
        alerts
            .iter()
            .any(|a| a["kind"] == "file_changed"
                && a["detail"].as_str().unwrap().contains("jwt.secret")),
        "{alerts:?}"
    );
    assert!(
        alerts.iter().any(|a| a["kind"] == "suspicious_process"),
        "{alerts:?}"
    );
    // A removed baseline is a finding (and alerted), not silently replaced.
    std::fs::remove_file(&baseline).unwrap();
    let (code, out, err) = run(&["--once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FINDING baseline_missing")),
        "{out}"
    );
    assert!(baseline.exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !got
        .lock()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == "baseline_missing")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no baseline_missing alert"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A corrupt baseline (a bad write, a full disk) is a finding, alerted
    // (before, the pass failed: no finding, no alert, and the other checks'
    // findings were dropped with it)
    std::fs::write(&baseline, "{ half a baseline").unwrap();
    let (code, out, err) = run(&["--once"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FINDING baseline_unreadable")),
        "{out}{err}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !got
        .lock()
        .unwrap()
        .iter()
        .any(|a| a["kind"] == "baseline_unreadable")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no baseline_unreadable alert"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn audit_tail_follows_appends_and_rotation() {
    use std::io::{BufRead, BufReader, Write};
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    std::fs::write(&log, "one\n").unwrap();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["audit", "tail", "--follow", s(&log)])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let next = || rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(next(), "one");
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"two\n").unwrap();
    assert_eq!(next(), "two");
    f.write_all(b"three\n").unwrap();
    drop(f);
    std::fs::rename(&log, dir.path().join("a.log.1")).unwrap();
    std::fs::write(&log, "four\n").unwrap();
    assert_eq!(next(), "three");
    assert_eq!(next(), "four");
    let _ = child.kill();
    let _ = child.wait();
}

/// A line that is not UTF-8 (an edited or damaged log) is printed as it is,
/// and so are the lines after it: `tail` stopped there with an error.
#[test]
fn audit_tail_prints_past_a_line_that_is_not_utf8() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("a.log");
    std::fs::write(&log, b"one\nt\xffwo\nthree\n").unwrap();
    let out = std::process::Command::new(crate::common::BIN)
        .args(["audit", "tail", s(&log)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"one\nt\xffwo\nthree\n");
}

/// TLS files that cannot serve, or should not: an expired certificate was
/// PASS in `check` and served silently; a key others can read was used
/// silently; a passphrase-protected key was "no private key in FILE" and
/// an RSA key too short for ring was blamed on `network.tls_cert`.
#[test]
fn tls_certificates_that_expired_and_keys_that_cannot_serve_are_named() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let (dir, data) = init_dir();
    let (cert, key) = (data.join("tls/cert.pem"), data.join("tls/key.pem"));
    // an expired self-signed pair in place of the generated one
    let kp = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2019, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 1);
    let old = params.self_signed(&kp).unwrap();
    std::fs::write(&cert, old.pem()).unwrap();
    std::fs::write(&key, kp.serialize_pem()).unwrap();
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL tls private key") && l.contains("has expired")),
        "{out}"
    );
    // serve starts (the operator may be renewing) but says so, and says the
    // key is readable by others
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "[network]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["serve", "--config", s(&cfg), "--data-dir", s(&data)])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let (mut expired, mut loose) = (false, false);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(expired && loose) && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            expired |= l.contains("has expired");
            loose |= l.contains("readable by group or others");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(expired && loose, "expired {expired}, loose {loose}");

    // keys that cannot be used: named as the key, with what to do
    let openssl = |args: &[&str]| {
        let st = std::process::Command::new("openssl")
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "{args:?}");
    };
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let enc = tls.join("enc.key");
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-aes256",
        "-pass",
        "pass:secret",
        "-out",
        s(&enc),
    ]);
    let short = tls.join("short.key");
    let short_cert = tls.join("short.pem");
    openssl(&["genrsa", "-out", s(&short), "1024"]);
    openssl(&[
        "req",
        "-new",
        "-x509",
        "-key",
        s(&short),
        "-out",
        s(&short_cert),
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
    ]);
    for (c, k, says) in [
        (&cert, &enc, "encrypted with a passphrase"),
        (&short_cert, &short, "2048"),
    ] {
        std::fs::set_permissions(k, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(
            &cfg,
            format!(
                "[network]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
                c.display(),
                k.display()
            ),
        )
        .unwrap();
        let (code, _, err) = run_cli(
            &["serve", "--config", s(&cfg), "--data-dir", s(&data)],
            None,
            &[],
        );
        assert_eq!(code, 2, "{err}");
        assert!(
            err.contains("network.tls_key") && err.contains(says),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// `audit tail` of a freshly initialised data dir (no audit file yet:
/// `init` writes no event) prints nothing and exits 0 (it was exit 1, "No
/// such file or directory"); a file named on the command line must exist.
#[test]
fn audit_tail_before_the_first_event_prints_nothing() {
    let (_dir, data) = init_dir();
    assert!(!data.join("security_audit.log").exists());
    let (code, out, err) = run_cli(&["audit", "tail", "--data-dir", s(&data)], None, &[]);
    assert_eq!((code, out.as_str(), err.as_str()), (0, "", ""));
    let missing = data.join("nope.log");
    let (code, _, err) = run_cli(&["audit", "tail", s(&missing)], None, &[]);
    assert_eq!(code, 1, "{err}");
}

/// Usage errors are one stderr line with exit 2 (the contract: "Errors go
/// to stderr, one clear line"); clap printed its error, the usage and a
/// hint (3-4 lines), and a group without its subcommand the whole help.
#[test]
fn usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = s(dir.path());
    for (args, says) in [
        (&["token"][..], "--user"),
        (&["keys", "create"], "--user"),
        (&["config", "show", "extra-arg"], "extra-arg"),
        (
            &["keys"],
            "`frenly keys` needs a subcommand: create, list, revoke",
        ),
        (
            &["--data-dir", d, "keys"],
            "`frenly keys` needs a subcommand",
        ),
        (
            &["audit"],
            "`frenly audit` needs a subcommand: verify, tail",
        ),
        (&["nosuchcommand"], "nosuchcommand"),
        (
            &[
                "keys",
                "create",
                "--user",
                "admin",
                "--expires-in-days",
                "-1",
            ],
            "-1",
        ),
        (&["firewall", "--format", "pf"], "pf"),
    ] {
        let mut all = args.to_vec();
        all.extend(["--data-dir", d]);
        let (code, out, err) = run_cli(&all, None, &[]);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?}: {out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: {err}");
        assert!(lines[0].starts_with("frenly: error: "), "{err}");
        assert!(lines[0].contains(says), "{args:?}: {err}");
    }
    let (code, out, _) = run_cli(&["--help"], None, &[]);
    assert_eq!(code, 0);
    assert!(out.contains("Usage:"), "{out}");
}

/// The monitor's baseline names files canonically: recorded with a
/// relative `--data-dir` and checked with the absolute one, a replaced
/// secret is a content change (it was "not in the baseline", the
/// recorded entry never compared); an entry no longer watched is named.
#[test]
fn monitor_baseline_matches_files_whatever_the_data_dir_spelling() {
    let (dir, data) = init_dir();
    let run_in = |cwd: &Path, args: &[&str]| {
        let out = std::process::Command::new(crate::common::BIN)
            .args(args)
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let (code, out) = run_in(dir.path(), &["monitor", "--baseline", "--data-dir", "data"]);
    assert_eq!(code, 0, "{out}");
    let (_, out) = run_in(dir.path(), &["monitor", "--once", "--data-dir", "./data"]);
    assert!(!out.contains("file_changed"), "{out}");
    std::fs::write(data.join("jwt.secret"), "y".repeat(88)).unwrap();
    let (code, out) = run_in(
        Path::new("/"),
        &["monitor", "--once", "--data-dir", s(&data)],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("FINDING file_changed")
            && l.contains("jwt.secret")
            && l.contains("content changed")),
        "{out}"
    );
    assert!(!out.contains("not in the baseline"), "{out}");
    // a file watched when the baseline was taken and no longer is
    let watched = dir.path().join("extra.txt");
    std::fs::write(&watched, "x").unwrap();
    let cfg = dir.path().join("mon.toml");
    std::fs::write(
        &cfg,
        format!("[monitor]\nwatch_files = [\"{}\"]\n", watched.display()),
    )
    .unwrap();
    let (code, out) = run_in(
        dir.path(),
        &[
            "monitor",
            "--baseline",
            "--config",
            "mon.toml",
            "--data-dir",
            "data",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let (_, out) = run_in(dir.path(), &["monitor", "--once", "--data-dir", "data"]);
    assert!(
        out.lines()
            .any(|l| l.contains("extra.txt") && l.contains("not watched now")),
        "{out}"
    );
}

/// `serve` warns about a JWT secret others can read, as it does for the
/// keyring and the TLS key (whoever reads it mints admin tokens).
#[test]
fn serve_warns_about_a_jwt_secret_others_can_read() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    let (dir, data) = init_dir();
    std::fs::set_permissions(
        data.join("jwt.secret"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let cfg = dir.path().join("serve.toml");
    std::fs::write(&cfg, "[network]\nlisten = \"127.0.0.1:0\"\ntls = false\n").unwrap();
    let mut child = std::process::Command::new(crate::common::BIN)
        .args(["serve", "--config", s(&cfg), "--data-dir", s(&data)])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut warned = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !warned && std::time::Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            warned |= l.contains("JWT secret is readable by group or others");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(warned, "no warning about the JWT secret's mode");
}

/// `check` warns about settings that weaken without breaking: year-long
/// tokens, a large leeway, a huge body limit, auditing switched off, a
/// rotation size that makes a file per event; and fails a data directory
/// that cannot be created.
#[test]
fn check_warns_about_weak_settings() {
    let (dir, data) = init_dir();
    for (toml, item) in [
        ("[auth]\njwt_ttl_hours = 8760\n", "WARN token lifetime"),
        ("[auth]\njwt_leeway_seconds = 60\n", "WARN token lifetime"),
        (
            "[limits]\nbody_max_bytes = 1073741824\n",
            "WARN request body limit",
        ),
        ("[audit]\nlog_api_access = false\n", "WARN audit coverage"),
        ("[incidents]\naudit = false\n", "WARN audit coverage"),
        ("[audit]\nrotate_bytes = 1\n", "WARN audit coverage"),
    ] {
        let (code, out) = check_with(dir.path(), &data, toml);
        assert_eq!(code, 0, "{toml}: {out}");
        assert!(out.lines().any(|l| l.starts_with(item)), "{toml}: {out}");
    }
    let (code, out) = check_with(dir.path(), &data, "");
    assert_eq!(code, 0, "{out}");
    for item in ["token lifetime", "request body limit", "audit coverage"] {
        assert!(out.contains(&format!("PASS {item}")), "{out}");
    }
    let (code, out) = check_with(dir.path(), Path::new("/proc/frenly-x"), "");
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("FAIL data directory") && l.contains("cannot be created")),
        "{out}"
    );
}

/// Offline commands find a user by name up to letter case, the rule
/// names are unique by (`users add Alice` is refused next to `alice`, and
/// `token --user Alice` said there was no such user); `init` on an
/// initialised directory does not claim to have written frenly.toml, and
/// a data directory that cannot be created is named.
#[test]
fn offline_commands_name_users_and_paths_consistently() {
    let (dir, data) = init_dir();
    let d = s(&data);
    let (code, _, err) = run_cli(
        &["users", "add", "alice", "--data-dir", d],
        Some("a long password 123\n"),
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run_cli(
        &["users", "add", "Alice", "--data-dir", d],
        Some("a long password 123\n"),
        &[],
    );
    assert_ne!(code, 0, "{err}");
    let (code, out, err) = run_cli(&["token", "--user", "Alice", "--data-dir", d], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.trim().is_empty());
    std::fs::write(data.join("frenly.toml"), "# mine\n").unwrap();
    let (code, _, err) = run_cli(&["init", "--data-dir", d], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("defaults are written"), "{err}");
    assert!(err.contains("left as it is"), "{err}");
    assert_eq!(
        std::fs::read_to_string(data.join("frenly.toml")).unwrap(),
        "# mine\n"
    );
    drop(dir);
    for cmd in ["init", "serve"] {
        let (code, _, err) = run_cli(&[cmd, "--data-dir", "/proc/frenly-x"], None, &[]);
        assert_ne!(code, 0, "{cmd}: {err}");
        assert!(err.contains("/proc/frenly-x"), "{cmd}: {err}");
    }
}
