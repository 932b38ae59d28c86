//! `frenly check`, `firewall`, `audit`, `monitor`, `bench`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::{load_config, runtime, CmdResult, Failure, Global};
use crate::config::Config;
use crate::monitoring::{check as checklist, firewall as fw, monitor as mon};

#[derive(Debug, Args)]
pub struct FirewallArgs {
    /// `iptables` is the IPv4 half, `ip6tables` the IPv6 half (`--apply`
    /// with `iptables` loads both); `nftables` and `ufw` cover both.
    #[arg(long, value_parser = ["iptables", "ip6tables", "nftables", "ufw"])]
    pub format: String,
    /// Apply the rules (default: print only).
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of one or more files, oldest first (rotated
    /// files `<file>.1 <file>.2 ... <file>`): the chain continues across them.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the audit log (default: the configured `audit.file`).
    Tail {
        file: Option<PathBuf>,
        /// Keep printing appended lines, across rotations.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Run the checks once and exit (1 when something was found).
    #[arg(long)]
    pub once: bool,
    /// Record the file-integrity baseline and exit.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn firewall(cfg: Config, a: FirewallArgs) -> CmdResult {
    let format = fw::Format::parse(&a.format)
        .ok_or_else(|| Failure::usage("--format must be iptables, ip6tables, nftables or ufw"))?;
    if let Some(why) = fw::metrics_port_opened(&cfg) {
        return Err(Failure::usage(format!(
            "{why}; give metrics.listen a port of its own"
        )));
    }
    let rules = fw::render(&cfg, format);
    super::write_stdout(format_args!("{rules}"))?;
    if a.apply {
        fw::apply(&cfg, format, &rules).map_err(Failure::refused)?;
        crate::errln!("frenly: firewall rules applied");
    }
    Ok(0)
}

pub fn check(g: &Global) -> CmdResult {
    let cfg = load_config(g)?;
    let mut failed = 0;
    let mut warned = 0;
    for (name, o) in checklist::run(&cfg) {
        match o.status {
            checklist::Status::Fail => failed += 1,
            checklist::Status::Warn => warned += 1,
            checklist::Status::Pass => {}
        }
        outln!("{}", checklist::line(name, &o))?;
    }
    crate::errln!(
        "frenly check: {} items, {failed} failed, {warned} warnings",
        checklist::ITEMS.len()
    );
    Ok(if failed > 0 { 1 } else { 0 })
}

/// `audit verify` of readable files: OK, INCOMPLETE or BROKEN on stdout.
/// `stored`: what the database holds (read before the files), when the
/// last file is the configured `audit.file` or the instance is named.
fn audit_verify(
    files: &[PathBuf],
    stored: Option<(tokio::runtime::Runtime, checklist::Stored)>,
) -> CmdResult {
    let verified = checklist::verify_chain(files);
    let gap = match (&verified, &stored) {
        (Ok(v), Some((rt, s))) => rt.block_on(checklist::stored_gap(v, s)),
        _ => None,
    };
    if let (Some(gap), Ok(v), Some(last)) = (gap, &verified, files.last()) {
        let at = match gap {
            crate::monitoring::audit::StoredGap::Cut { .. } => format!("after line {}", v.lines),
            crate::monitoring::audit::StoredGap::Unknown { .. } if v.lines == 0 => {
                "no lines".to_string()
            }
            crate::monitoring::audit::StoredGap::Unknown { .. } => "line 1".to_string(),
        };
        outln!("BROKEN {}: {at}: {}", last.display(), gap.describe())?;
        return Ok(1);
    }
    match verified {
        Ok(v) if v.incomplete_tail => {
            // Exit 1 all the same: a cut-off tail is also what a
            // truncation looks like; the operator decides.
            outln!(
                "INCOMPLETE verified {} complete lines in {} file(s); line {} (the last) is incomplete: a crash while writing it, or a truncation (the next start removes it)",
                v.lines,
                files.len(),
                v.lines + 1
            )?;
            Ok(1)
        }
        Ok(v) => {
            outln!(
                "OK {} lines in {} file(s): the hash chain is intact",
                v.lines,
                files.len()
            )?;
            Ok(0)
        }
        Err(why) => {
            outln!("BROKEN {why}")?;
            if why.contains("line 1:") && why.contains("prev_hash") {
                crate::errln!(
                    "frenly: if older rotated files exist, pass them first: FILE.1 FILE.2 ... FILE"
                );
            }
            Ok(1)
        }
    }
}

pub fn audit(g: &Global, c: AuditCmd) -> CmdResult {
    match c {
        AuditCmd::Verify { files } => {
            // a file that cannot be read is an error, not a broken chain;
            // so is one that is not a regular file (a directory was
            // "BROKEN", a FIFO blocked, /dev/zero read until memory ran out)
            for f in &files {
                let readable = std::fs::metadata(f).and_then(|m| {
                    if m.is_file() {
                        std::fs::File::open(f).map(|_| ())
                    } else {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            "not a regular file",
                        ))
                    }
                });
                if let Err(e) = readable {
                    return Err(Failure::refused(format!(
                        "cannot read {}: {e}",
                        f.display()
                    )));
                }
            }
            let stored = stored_links_for(g, &files);
            audit_verify(&files, stored)
        }
        AuditCmd::Tail { file, follow } => {
            let (path, named) = match file {
                Some(f) => (f, true),
                None => (load_config(g)?.audit_file, false),
            };
            // the configured log before its first event (`init` writes
            // none): nothing to print, not a failure (it was exit 1, "No
            // such file or directory"); a file named on the command line
            // must exist
            let absent = std::fs::symlink_metadata(&path)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound);
            if !named && !follow && absent {
                return Ok(0);
            }
            tail(&path, follow)
                .map_err(|e| Failure::refused(format!("{}: {e}", path.display())))?;
            Ok(0)
        }
    }
}

/// The database's newest chain links when the last of `files` is the
/// configured `audit.file`, or `--config` / `--data-dir` names the instance
/// it is compared with (a copy taken off the host): the chain alone cannot
/// show that a file's last lines were cut, the rows stored after them can.
/// `None` when the config cannot be loaded, the file is another without an
/// instance named, or there is no database to read.
fn stored_links_for(
    g: &Global,
    files: &[PathBuf],
) -> Option<(tokio::runtime::Runtime, checklist::Stored)> {
    use std::os::unix::fs::MetadataExt;
    let cfg = load_config(g).ok()?;
    let same = |a: &std::path::Path, b: &std::path::Path| match (
        std::fs::metadata(a),
        std::fs::metadata(b),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let named = g.config.is_some() || g.data_dir.is_some();
    if !named && !same(files.last()?, &cfg.audit_file) {
        return None;
    }
    let rt = runtime().ok()?;
    let stored = rt.block_on(checklist::stored_links(&cfg))?;
    Some((rt, stored))
}

/// Print the file; with `follow`, keep printing appended lines and reopen
/// the path when the file is rotated (renamed away) or truncated. Lines
/// are bytes: one that is not UTF-8 (an edited or damaged log) is printed
/// as it is, and the lines after it too (`audit verify` names it).
fn tail(path: &std::path::Path, follow: bool) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::fs::MetadataExt;
    let open = || -> std::io::Result<(BufReader<std::fs::File>, u64)> {
        let f = std::fs::File::open(path)?;
        let ino = f.metadata()?.ino();
        Ok((BufReader::new(f), ino))
    };
    let mut cur = match open() {
        Ok(x) => Some(x),
        Err(e) if follow && e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let mut out = std::io::stdout().lock();
    let mut partial = Vec::new();
    loop {
        if let Some((reader, ino)) = cur.as_mut() {
            loop {
                let n = reader.read_until(b'\n', &mut partial)?;
                if n == 0 || !partial.ends_with(b"\n") {
                    break;
                }
                out.write_all(&partial)?;
                partial.clear();
            }
            out.flush()?;
            if !follow {
                if !partial.is_empty() {
                    out.write_all(&partial)?;
                    out.write_all(b"\n")?;
                }
                return Ok(());
            }
            // Rotated (a new file at the path) or truncated: start over.
            let pos = reader.stream_position_or_zero();
            match std::fs::metadata(path) {
                Ok(m) if m.ino() != *ino || m.len() < pos => {
                    if m.ino() != *ino {
                        // Rotated: what was appended to the old file first.
                        while reader.read_until(b'\n', &mut partial)? > 0 {
                            if partial.ends_with(b"\n") {
                                out.write_all(&partial)?;
                                partial.clear();
                            }
                        }
                    }
                    partial.clear();
                    cur = open().ok();
                    continue;
                }
                _ => {}
            }
        } else {
            cur = open().ok();
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

trait PositionOrZero {
    fn stream_position_or_zero(&mut self) -> u64;
}

impl PositionOrZero for std::io::BufReader<std::fs::File> {
    fn stream_position_or_zero(&mut self) -> u64 {
        use std::io::Seek;
        self.stream_position().unwrap_or(0)
    }
}

pub fn monitor(cfg: Config, a: MonitorArgs) -> CmdResult {
    let rt = runtime()?;
    rt.block_on(async move {
        if a.baseline {
            let p = mon::write_baseline(&cfg).map_err(Failure::from)?;
            outln!(
                "baseline recorded: {} ({} files)",
                p.display(),
                mon::watched_files(&cfg).len()
            )?;
            return Ok(0);
        }
        let alerts = crate::monitoring::alerts::Alerts::start(&cfg)?;
        let mut sent = 0u64;
        let mut previous = std::collections::HashSet::new();
        loop {
            let c = cfg.clone();
            let (findings, note) = tokio::task::spawn_blocking(move || mon::run_once(&c))
                .await
                .map_err(|e| Failure::refused(format!("monitor pass failed: {e}")))??;
            if let Some(n) = note {
                outln!("NOTE {n}")?;
            }
            for f in &findings {
                // a process's argv is anyone's text: a line break in it
                // would print lines of its choosing
                outln!("FINDING {}: {}", f.kind, mon::printable(&f.detail))?;
                // In the loop, alert only what is new since the last pass.
                if a.once || !previous.contains(f) {
                    alerts.send(f.alert());
                    sent += 1;
                }
            }
            if findings.is_empty() {
                outln!("OK nothing found")?;
            }
            if a.once {
                wait_for_alerts(&cfg, &alerts, sent).await;
                return Ok(if findings.is_empty() { 0 } else { 1 });
            }
            previous = findings.into_iter().collect();
            tokio::time::sleep(Duration::from_secs(cfg.monitor.interval_seconds.max(1))).await;
        }
    })
}

/// Give queued alerts time to be delivered before a `--once` run exits.
async fn wait_for_alerts(cfg: &Config, alerts: &crate::monitoring::alerts::Alerts, sent: u64) {
    if cfg.alerts.webhook_url.is_none() || sent == 0 {
        return;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if alerts.settled() >= sent {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    crate::errln!("frenly: some alerts were not delivered before exit");
}

/// `frenly bench ARGS...`: the load benchmark lives in the source tree
/// (`scripts/bench.py`: it builds Frenly, starts the peers, drives wrk); this
/// runs it from the current directory's checkout or the one Frenly was built
/// from, passing the arguments through (`--smoke`, `--only`, `--duration`).
pub fn bench(_g: &Global, a: BenchArgs) -> CmdResult {
    let candidates = [
        PathBuf::from("scripts/bench.py"),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/bench.py"),
    ];
    let Some(script) = candidates.iter().find(|p| p.is_file()) else {
        return Err(Failure::refused(
            "the benchmark needs a Frenly source checkout (scripts/bench.py); run it from there",
        ));
    };
    let status = std::process::Command::new("python3")
        .arg(script)
        .args(&a.args)
        .status()
        .map_err(|e| Failure::refused(format!("cannot run python3: {e}")))?;
    Ok(if status.success() { 0 } else { 1 })
}
