//! `frenly monitor`: the guide's security monitor as a tool.
//!
//! Threat: an intruder on the host (scanners and netcat shells, a backdoor
//! listener, a swapped binary or key file) and password-guessing bursts.
//! Guarantee: each pass checks (1) failed-login bursts in the audit log
//! (`login_attempt` with `success: false`, at least `monitor.failed_login_burst`
//! from one address within `monitor.failed_login_window_seconds`);
//! (2) processes whose name (`/proc/PID/comm`, or the base name of argv[0])
//! is one of `monitor.suspicious_processes`; (3) TCP listeners on
//! non-loopback addresses whose port is not in `monitor.allowed_ports` nor
//! Frenly's own; (4) the SHA-256 of the config file, the JWT secret, the
//! keyring, the TLS key and certificate, `monitor.watch_files` and the frenly
//! binary against the baseline in `<data dir>/monitor-baseline.json` (0600,
//! recorded by `--baseline` or on the first run). Every finding is printed
//! and sent through the alert channel incidents use.
//!
//! Not covered: a root attacker can hide processes and rewrite the baseline
//! (keep a copy of the baseline off the host); loopback-only listeners are
//! not reported.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// One thing the monitor found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    /// `failed_logins`, `suspicious_process`, `unexpected_port`, `file_changed`.
    pub kind: &'static str,
    pub detail: String,
}

impl Finding {
    pub fn alert(&self) -> Value {
        json!({
            "type": "monitor_finding",
            "kind": self.kind,
            "detail": self.detail,
            "host": hostname(),
            "ts": crate::store::rfc3339(crate::store::now_ms()),
        })
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Where the baseline lives.
pub fn baseline_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("monitor-baseline.json")
}

/// The files whose integrity is watched.
pub fn watched_files(cfg: &Config) -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(c) = &cfg.config_file {
        v.push(c.clone());
    }
    v.push(cfg.jwt_secret_file.clone());
    v.push(cfg.keyring_file.clone());
    if cfg.network.tls {
        v.push(cfg.tls_key.clone());
        v.push(cfg.tls_cert.clone());
    }
    v.extend(cfg.monitor.watch_files.iter().cloned());
    if let Ok(exe) = std::env::current_exe() {
        v.push(exe);
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|p| seen.insert(p.clone()));
    v
}

fn sha256_file(p: &Path) -> Option<String> {
    std::fs::read(p)
        .ok()
        .map(|b| hex::encode(Sha256::digest(b)))
}

/// One spelling of a watched file, whatever the working directory or the
/// spelling of `--data-dir` (`d/jwt.secret`, `./d/jwt.secret`,
/// `/srv/d/jwt.secret`): its directory canonicalised, its own name kept (a
/// symlinked secret is watched as the link, read through it). Recorded as
/// typed, a baseline taken with a relative `--data-dir` reported a
/// replaced secret as "not in the baseline" when later checked with an
/// absolute one.
pub fn canonical(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// path -> SHA-256 (None when the file is missing), paths [`canonical`].
pub fn snapshot(files: &[PathBuf]) -> BTreeMap<String, Option<String>> {
    files
        .iter()
        .map(|p| (canonical(p).display().to_string(), sha256_file(p)))
        .collect()
}

/// Record the baseline (mode 0600, replaced atomically).
pub fn write_baseline(cfg: &Config) -> anyhow::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = baseline_path(cfg);
    crate::app::bootstrap::ensure_data_dir(&cfg.data_dir)?;
    let body = json!({
        "created": crate::store::rfc3339(crate::store::now_ms()),
        "files": snapshot(&watched_files(cfg)),
    });
    let tmp = path.with_extension("json.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(serde_json::to_string_pretty(&body)?.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// Compare the watched files with the baseline. `Ok(None)`: no baseline yet.
pub fn integrity(cfg: &Config) -> anyhow::Result<Option<Vec<Finding>>> {
    let path = baseline_path(cfg);
    // a regular file, read bounded (a FIFO in its place hung every pass)
    let text = match crate::config::read_named_file(&path, crate::config::MAX_NAMED_FILE) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let base: Value = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a baseline: {e}", path.display()))?;
    let files = base
        .get("files")
        .and_then(Value::as_object)
        .ok_or_else(|| anyhow::anyhow!("{} has no `files`", path.display()))?;
    // a baseline written before paths were canonical is read as if its
    // relative paths were typed here
    let files: BTreeMap<String, &Value> = files
        .iter()
        .map(|(p, v)| (canonical(Path::new(p)).display().to_string(), v))
        .collect();
    let now = snapshot(&watched_files(cfg));
    let mut out = Vec::new();
    for (p, was) in &files {
        if !now.contains_key(p) {
            // never silently dropped: a file no longer watched (a changed
            // config, or a path spelled differently) is not checked
            out.push(Finding {
                kind: "file_changed",
                detail: format!(
                    "{p}: in the baseline but not watched now, so not checked (was: {}; re-run `frenly monitor --baseline` once the watched files are known good)",
                    if was.is_null() { "absent" } else { "present" }
                ),
            });
        }
    }
    for (p, cur) in &now {
        let was = files.get(p).map(|v| v.as_str().map(String::from));
        let detail = match (was, cur) {
            (None, _) => format!("{p}: not in the baseline (re-run `frenly monitor --baseline`)"),
            (Some(a), b) if a == *b => continue,
            (Some(None), Some(_)) => format!("{p}: appeared since the baseline"),
            (Some(Some(_)), None) => format!("{p}: missing since the baseline"),
            (Some(_), _) => format!("{p}: content changed since the baseline (SHA-256 differs)"),
        };
        out.push(Finding {
            kind: "file_changed",
            detail,
        });
    }
    Ok(Some(out))
}

/// Failed-login bursts in audit lines (`now_ms` = the end of the window).
pub fn failed_login_bursts<'a>(
    lines: impl IntoIterator<Item = &'a str>,
    burst: u32,
    window_s: u64,
    now_ms: i64,
) -> Vec<Finding> {
    let since = now_ms - (window_s as i64) * 1000;
    let mut per_ip: HashMap<String, u32> = HashMap::new();
    for line in lines {
        if !line.contains("\"login_attempt\"") {
            continue;
        }
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if v.get("event_type").and_then(Value::as_str) != Some("login_attempt")
            || v.get("success").and_then(Value::as_bool) != Some(false)
        {
            continue;
        }
        let ts = v
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis());
        if !ts.is_some_and(|t| t >= since && t <= now_ms) {
            continue;
        }
        let ip = v
            .get("ip")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        *per_ip.entry(ip).or_default() += 1;
    }
    let mut out: Vec<Finding> = per_ip
        .into_iter()
        .filter(|(_, n)| *n >= burst.max(1))
        .map(|(ip, n)| Finding {
            kind: "failed_logins",
            detail: format!("{n} failed logins from {ip} within {window_s} s"),
        })
        .collect();
    out.sort_by(|a, b| a.detail.cmp(&b.detail));
    out
}

fn audit_bursts(cfg: &Config) -> Vec<Finding> {
    // The window is short: the current file and the newest rotated one.
    let files = super::audit::chain_files(&cfg.audit_file);
    let mut text = String::new();
    let mut out = Vec::new();
    let unreadable = |f: &std::path::Path, why: String| Finding {
        kind: "audit_log_unreadable",
        detail: format!("{}: {why}: failed logins not checked", f.display()),
    };
    for f in files.iter().rev().take(2).rev() {
        // a regular file only: a FIFO in its place hung the monitor, and a
        // directory was skipped without a word
        match std::fs::metadata(f) {
            Ok(m) if m.is_file() => match std::fs::read_to_string(f) {
                Ok(t) => text.push_str(&t),
                Err(e) => out.push(unreadable(f, e.to_string())),
            },
            Ok(_) => out.push(unreadable(f, "not a regular file".into())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => out.push(unreadable(f, e.to_string())),
        }
    }
    out.extend(failed_login_bursts(
        text.lines(),
        cfg.monitor.failed_login_burst,
        cfg.monitor.failed_login_window_seconds,
        crate::store::now_ms(),
    ));
    out
}

/// Processes named like one of `names`.
pub fn suspicious_processes(names: &[String]) -> Vec<Finding> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
        let argv0 = String::from_utf8_lossy(argv0);
        let base = argv0.rsplit('/').next().unwrap_or_default().to_string();
        if let Some(name) = names.iter().find(|n| **n == comm || **n == base) {
            let args = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            out.push(Finding {
                kind: "suspicious_process",
                detail: format!("process `{name}` running (pid {pid}: {})", args.trim()),
            });
        }
    }
    out
}

/// `(address, port)` of TCP sockets in LISTEN state from a /proc/net/tcp(6) text.
pub fn parse_listeners(text: &str, v6: bool) -> Vec<(std::net::IpAddr, u16)> {
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let mut cols = line.split_whitespace();
        let (Some(_), Some(local), _, Some(state)) =
            (cols.next(), cols.next(), cols.next(), cols.next())
        else {
            continue;
        };
        if state != "0A" {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        let ip = if v6 {
            // Four 32-bit words, each in host (little-endian) byte order.
            if addr.len() != 32 {
                continue;
            }
            let mut bytes = [0u8; 16];
            let mut ok = true;
            for (w, out) in bytes.chunks_exact_mut(4).enumerate() {
                match addr
                    .get(w * 8..w * 8 + 8)
                    .and_then(|h| u32::from_str_radix(h, 16).ok())
                {
                    Some(x) => out.copy_from_slice(&x.to_le_bytes()),
                    None => ok = false,
                }
            }
            if !ok {
                continue;
            }
            std::net::IpAddr::from(bytes)
        } else {
            match u32::from_str_radix(addr, 16) {
                Ok(x) => std::net::IpAddr::from(x.to_le_bytes()),
                Err(_) => continue,
            }
        };
        out.push((ip, port));
    }
    out
}

fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => v.is_loopback(),
        std::net::IpAddr::V6(v) => {
            v.is_loopback() || v.to_ipv4_mapped().is_some_and(|m| m.is_loopback())
        }
    }
}

/// Non-loopback listeners on ports not allowed.
pub fn unexpected_ports(cfg: &Config) -> Vec<Finding> {
    let mut allowed: Vec<u16> = cfg.monitor.allowed_ports.clone();
    allowed.push(cfg.network.listen.port());
    if let Some(m) = cfg.metrics.listen {
        allowed.push(m.port());
    }
    let mut seen = std::collections::BTreeSet::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        if let Ok(t) = std::fs::read_to_string(file) {
            for (ip, port) in parse_listeners(&t, v6) {
                if !is_loopback(ip) && !allowed.contains(&port) {
                    seen.insert((port, ip));
                }
            }
        }
    }
    seen.into_iter()
        .map(|(port, ip)| Finding {
            kind: "unexpected_port",
            detail: format!("TCP port {port} listening on {ip} (not in monitor.allowed_ports)"),
        })
        .collect()
}

/// `s` with its control characters escaped (`\n` as the two characters
/// `\` `n`): a finding's detail quotes other people's text (a process's
/// argv), which must not print lines of its own.
pub fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// One pass of every check. The second value is a note to print (for
/// example "baseline recorded").
pub fn run_once(cfg: &Config) -> anyhow::Result<(Vec<Finding>, Option<String>)> {
    let mut out = audit_bursts(cfg);
    out.extend(suspicious_processes(&cfg.monitor.suspicious_processes));
    out.extend(unexpected_ports(cfg));
    let note = match integrity(cfg) {
        Ok(Some(f)) => {
            out.extend(f);
            None
        }
        // an unreadable baseline is a finding, alerted like the others; the
        // other checks still run (before, the whole pass failed: no finding,
        // no alert, a monitor silenced by a bad write)
        Err(e) => {
            out.push(Finding {
                kind: "baseline_unreadable",
                detail: format!(
                    "{e:#}: file integrity not checked (restore the baseline from its copy, or record a new one with `frenly monitor --baseline` once the files are known good)"
                ),
            });
            None
        }
        Ok(None) => {
            // A finding, not only a note: after the first run a missing
            // baseline means someone removed it, and a fresh one would
            // silently bless whatever they changed.
            let p = write_baseline(cfg)?;
            out.push(Finding {
                kind: "baseline_missing",
                detail: format!(
                    "no file-integrity baseline at {}: recorded a new one (expected on the first run only; otherwise it was removed, and changes made before now are not seen)",
                    p.display()
                ),
            });
            Some(format!(
                "no file-integrity baseline yet: recorded {}",
                p.display()
            ))
        }
    };
    Ok((out, note))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn a_detail_prints_on_one_line() {
        let p = printable("nc -l 4444 x\nOK forged line\r\u{1b}[2J");
        assert!(!p.chars().any(char::is_control), "{p}");
        assert_eq!(p, "nc -l 4444 x\\nOK forged line\\r\\u{1b}[2J");
        assert_eq!(printable("plain é"), "plain é");
    }

    #[test]
    fn parses_proc_net_tcp() {
        let v4 = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0\n   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0\n   2: 0100007F:1F90 0100007F:C000 01 00000000:00000000 00:00000000 00000000  1000        0 3 1 0000000000000000 100 0 0 10 0\n";
        let l = parse_listeners(v4, false);
        assert_eq!(
            l,
            vec![
                ("127.0.0.1".parse().unwrap(), 8080),
                ("0.0.0.0".parse().unwrap(), 22)
            ]
        );
        let v6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 0 0 0 0 0 0\n";
        let l = parse_listeners(v6, true);
        assert_eq!(
            l,
            vec![("::1".parse().unwrap(), 8080), ("::".parse().unwrap(), 80)]
        );
    }

    #[test]
    fn counts_bursts_per_address_in_the_window() {
        let now = 1_700_000_000_000i64;
        let at = |ms: i64| crate::store::rfc3339(ms);
        let mut lines = Vec::new();
        for i in 0..5 {
            lines.push(format!(
                r#"{{"ts":"{}","event_type":"login_attempt","ip":"10.0.0.9","success":false}}"#,
                at(now - 1000 * i)
            ));
        }
        lines.push(format!(
            r#"{{"ts":"{}","event_type":"login_attempt","ip":"10.0.0.8","success":false}}"#,
            at(now)
        ));
        lines.push(format!(
            r#"{{"ts":"{}","event_type":"login_attempt","ip":"10.0.0.7","success":true}}"#,
            at(now)
        ));
        for _ in 0..5 {
            lines.push(format!(
                r#"{{"ts":"{}","event_type":"login_attempt","ip":"10.0.0.6","success":false}}"#,
                at(now - 3_600_000)
            ));
        }
        let f = failed_login_bursts(lines.iter().map(String::as_str), 5, 300, now);
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].detail.contains("10.0.0.9"));
    }
}
