//! The audit log: one JSON line per security event, SHA-256 hash-chained,
//! also stored in the database for `/api/audit`.
//!
//! Threat: an intruder (or an operator) editing, dropping or reordering
//! audit lines to hide what happened; secrets ending up in logs; a slow disk
//! stalling requests. Guarantee: each line is
//! `{"ts","event_type","request_id","ip","user_id",...,"prev_hash","hash"}`
//! where `hash` = SHA-256 of the line's bytes without the `hash` member and
//! `prev_hash` is the previous line's `hash` (64 zeros for the first line);
//! [`verify_lines`] finds the first line that breaks the chain. Requests only
//! hand events to a bounded queue; a writer task appends them in batches. If
//! the queue is full, `record` waits for room (backpressure, counted in
//! `audit_backpressure`; past 3/4 of the capacity an alert goes out, at most
//! once a minute): no event is ever dropped. [`Audit::flush`] (called at
//! shutdown) puts every accepted event on disk. Past `audit.rotate_bytes`
//! the file is renamed to `<file>.<n>` (`.1` oldest) and the chain continues
//! in a fresh file. Member names that name secrets (`password`, `token`,
//! `secret`, `key`, `authorization`, ... — see [`is_secret_name`]) are
//! written as `[redacted]`, and so is every part of a string value that
//! looks like a Frenly API key, a key's 43-character body or a JWT
//! ([`redact_str`]): paths, header values and names that a client chose
//! keep their shape, not the credential.
//!
//! Not covered: an attacker who can rewrite the whole file and recompute the
//! chain (ship the log off the machine, or anchor the last hash elsewhere).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::store::audit::AuditRecord;
use crate::store::Db;

/// The first line's `prev_hash`.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One security event.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    pub event_type: &'static str,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    /// Extra members (never secrets), kept sorted by name and unique: the
    /// line carries them in this order.
    pub fields: Vec<(&'static str, Value)>,
}

impl AuditEvent {
    pub fn new(event_type: &'static str) -> Self {
        AuditEvent {
            event_type,
            request_id: None,
            ip: None,
            user_id: None,
            fields: Vec::new(),
        }
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    pub fn ip(mut self, ip: impl ToString) -> Self {
        self.ip = Some(ip.to_string());
        self
    }

    pub fn user(mut self, user_id: Option<impl Into<String>>) -> Self {
        self.user_id = user_id.map(Into::into);
        self
    }

    /// Set member `k` (a second call with the same name replaces the value).
    pub fn field(mut self, k: &'static str, v: impl Into<Value>) -> Self {
        let v = v.into();
        match self.fields.binary_search_by(|(n, _)| n.cmp(&k)) {
            Ok(i) => {
                if let Some(slot) = self.fields.get_mut(i) {
                    slot.1 = v;
                }
            }
            Err(i) => self.fields.insert(i, (k, v)),
        }
        self
    }
}

enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
    /// Go on from this hash (the start found the file's own chain unknown
    /// to the database: [`Audit::report_cut_tail`]).
    Rechain(String),
}

/// Where the writer reports its health: the metrics it updates and the alert
/// channel it uses when the queue passes the high-water mark.
#[derive(Clone, Default)]
pub struct AuditHooks {
    pub backpressure: Option<prometheus_client::metrics::counter::Counter>,
    pub depth: Option<prometheus_client::metrics::gauge::Gauge>,
    pub alerts: Option<crate::monitoring::alerts::Alerts>,
    /// The last line the database holds (`store::audit::last_line`): a file
    /// found absent or empty continues the chain from it.
    pub last_stored: Option<String>,
}

/// Seconds between two "audit queue high" alerts.
const HIGH_WATER_ALERT_INTERVAL_MS: i64 = 60_000;

/// Handle to the audit writer.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    pub queued: Arc<AtomicU64>,
    pub waited: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
    capacity: u64,
    hooks: AuditHooks,
    last_alert_ms: std::sync::atomic::AtomicI64,
    /// The hash the chain went on from at start (the file's last line).
    start_prev: String,
    /// The audit file.
    path: PathBuf,
}

impl Audit {
    /// Start the writer task for `cfg.audit_file`.
    pub fn start(cfg: &Config, db: Db) -> anyhow::Result<Audit> {
        Self::start_with(cfg, db, AuditHooks::default())
    }

    /// Start the writer, reporting backpressure to `hooks`.
    pub fn start_with(cfg: &Config, db: Db, hooks: AuditHooks) -> anyhow::Result<Audit> {
        let path = cfg.audit_file.clone();
        let mut file = LogFile::open(path.clone(), cfg.audit.rotate_bytes)?;
        // A crash (SIGKILL, power loss) can leave a last line without its
        // line end; appending after it would glue the next line to it and
        // break the chain for good. Remove it first, and say so in the chain.
        // Under the file's lock: a line another process is writing is whole
        // by the time the lock is ours.
        file.lock()?;
        // the hash is read from the file's end (not a pass over the whole
        // log: every offline command starts a writer too)
        let read = repair_tail(&path).and_then(|cut| {
            let f = file.open_file()?;
            Ok((cut, tail_hash(f, f.metadata()?.len(), &path)?))
        });
        let (cut, mut prev) = file.unlock_after(read)?;
        // No chain in the file (removed, or emptied, while the server was
        // stopped) but events in the database: the chain goes on from the
        // last stored line, so the gap shows (`check`, `audit verify` name
        // it) instead of a fresh chain that verifies as if nothing was lost.
        let mut resumed = None;
        if prev == GENESIS {
            if let Some((_, h)) = hooks.last_stored.as_deref().and_then(split_line) {
                prev = h.to_string();
                resumed = Some(prev.clone());
            }
        }
        let capacity = cfg.audit.queue_capacity.max(16);
        let (tx, rx) = mpsc::channel(capacity);
        let written = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        let start_prev = prev.clone();
        let writer = Writer {
            file,
            prev,
            db,
            rt: tokio::runtime::Handle::try_current()?,
            written: written.clone(),
            queued: queued.clone(),
            depth: hooks.depth.clone(),
            backlog: Vec::new(),
            unwritten: Vec::new(),
        };
        std::thread::Builder::new()
            .name("frenly-audit".into())
            .spawn(move || writer.run(rx))?;
        let audit = Audit {
            tx,
            queued,
            waited: Arc::new(AtomicU64::new(0)),
            written,
            capacity: capacity as u64,
            hooks,
            last_alert_ms: std::sync::atomic::AtomicI64::new(0),
            start_prev,
            path: cfg.audit_file.clone(),
        };
        if let Some(hash) = resumed {
            tracing::warn!(
                file = %cfg.audit_file.display(),
                "the audit file holds no chain but the database holds events: the chain goes on from the last stored line (was the file removed?)"
            );
            audit.queue_at_start(
                AuditEvent::new("security_violation")
                    .field("violation_type", "audit_file_missing")
                    .field(
                        "details",
                        "the audit file held no chain at start while the database held events; the chain goes on from the last stored line",
                    )
                    .field("continues_from", hash),
            );
        }
        if let Some((bytes, hash)) = cut {
            tracing::warn!(
                file = %cfg.audit_file.display(),
                bytes,
                "removed an incomplete last audit line (the process was killed while writing it)"
            );
            audit.queue_at_start(
                AuditEvent::new("audit_tail_truncated")
                    .field("bytes", bytes)
                    .field("sha256", hash),
            );
        }
        Ok(audit)
    }

    /// At start, before serving: does the database hold events the file
    /// does not account for? Either events that go on from the file's last
    /// line (its last lines were cut while no writer ran: the chain of what
    /// is left verifies, and the writer would go on from the cut
    /// unnoticed), recorded as a `security_violation` with
    /// `violation_type: "audit_tail_cut"`; or events none of which is in
    /// the file (the file was replaced by a chain of its own, such as a
    /// forged one from the all-zero hash), recorded as
    /// `violation_type: "audit_file_missing"` like a removed file: the
    /// chain goes on from the newest stored line, not from the file's, so
    /// `audit verify` reports the break at that line. Either way also in
    /// the log and to the alert channel. Returns the number of missing
    /// events.
    pub async fn report_cut_tail(&self, db: &Db) -> usize {
        if self.start_prev == GENESIS {
            // no chain in the file: `start_with` went on from the newest
            // stored line and said so
            return 0;
        }
        let links = match crate::store::audit::recent_links(db, STORED_WINDOW).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "could not compare the audit file with the database");
                return 0;
            }
        };
        let file = std::collections::HashSet::from([self.start_prev.clone()]);
        match stored_gap(&file, &links) {
            None => 0,
            Some(StoredGap::Cut { missing, after }) => {
                self.report_cut(missing, after).await;
                missing
            }
            Some(StoredGap::Unknown { stored, newest }) => {
                // the file's other lines (rows of the last ones may be
                // missing: a database out of reach at the last shutdown),
                // then the whole table for its last line (an instance idle
                // while others wrote)
                let known = match hashes_in(&self.path) {
                    Ok(all) => links
                        .iter()
                        .any(|(p, h)| all.contains(h) || all.contains(p)),
                    Err(_) => false,
                };
                if known
                    || crate::store::audit::holds_hash(db, &self.start_prev)
                        .await
                        .unwrap_or(true)
                {
                    return 0;
                }
                self.report_replaced(stored, newest).await;
                stored
            }
        }
    }

    async fn report_cut(&self, missing: usize, after: String) {
        tracing::error!(
            missing,
            after = %after,
            "the database holds audit events past the audit file's last line: its last lines were cut"
        );
        self.record(
            AuditEvent::new("security_violation")
                .field("violation_type", "audit_tail_cut")
                .field(
                    "details",
                    "the database held events of this chain past the audit file's last line at start: the file's last lines were cut",
                )
                .field("missing_events", missing as u64)
                .field("continues_from", after.as_str()),
        )
        .await;
        if let Some(a) = &self.hooks.alerts {
            a.send(serde_json::json!({
                "type": "audit_tail_cut",
                "ts": crate::store::rfc3339(crate::store::now_ms()),
                "missing_events": missing,
                "continues_from": after,
                "message": "the audit file's last lines were cut while the server was stopped; the database still holds them",
            }));
        }
    }

    /// The file holds a chain none of whose lines the database has: go on
    /// from the newest stored line (`newest`), not the file's.
    async fn report_replaced(&self, stored: usize, newest: String) {
        tracing::error!(
            stored,
            file_ends_at = %self.start_prev,
            continues_from = %newest,
            "the audit file holds none of the events the database holds: it was emptied or replaced while the server was stopped; the chain goes on from the newest stored line"
        );
        if self.tx.send(Msg::Rechain(newest.clone())).await.is_err() {
            tracing::error!("audit writer is gone");
            return;
        }
        self.record(
            AuditEvent::new("security_violation")
                .field("violation_type", "audit_file_missing")
                .field(
                    "details",
                    "at start the audit file held a chain none of whose lines the database holds (replaced while the server was stopped); the chain goes on from the newest stored line",
                )
                .field("file_ends_at", self.start_prev.as_str())
                .field("continues_from", newest.as_str()),
        )
        .await;
        if let Some(a) = &self.hooks.alerts {
            a.send(serde_json::json!({
                "type": "audit_file_replaced",
                "ts": crate::store::rfc3339(crate::store::now_ms()),
                "stored_events": stored,
                "continues_from": newest,
                "message": "the audit file was replaced while the server was stopped: it holds none of the events the database holds",
            }));
        }
    }

    /// Queue what the start found about the file itself, ahead of every
    /// request's event (the queue is empty: it cannot be full).
    fn queue_at_start(&self, ev: AuditEvent) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        if self.tx.try_send(Msg::Event(ev)).is_err() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hand an event to the writer. Waits for room when the queue is full
    /// (backpressure: counted, and alerted past the high-water mark); an
    /// event is never dropped while the writer runs.
    pub async fn record(&self, ev: AuditEvent) {
        let depth = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(g) = &self.hooks.depth {
            g.set(depth as i64);
        }
        if depth * 4 >= self.capacity * 3 {
            self.high_water(depth);
        }
        match self.tx.try_send(Msg::Event(ev)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = &self.hooks.backpressure {
                    c.inc();
                }
                if self.tx.send(m).await.is_err() {
                    tracing::error!("audit writer is gone; event lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is gone; event lost");
            }
        }
    }

    /// The queue is at least 3/4 full: alert, at most once a minute.
    fn high_water(&self, depth: u64) {
        let now = crate::store::now_ms();
        let last = self.last_alert_ms.load(Ordering::Relaxed);
        if now - last < HIGH_WATER_ALERT_INTERVAL_MS
            || self
                .last_alert_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        tracing::warn!(
            depth,
            capacity = self.capacity,
            "audit queue past its high-water mark; requests are being slowed down"
        );
        if let Some(a) = &self.hooks.alerts {
            a.send(serde_json::json!({
                "type": "audit_backpressure",
                "ts": crate::store::rfc3339(now),
                "depth": depth,
                "capacity": self.capacity,
                "message": "the audit writer is falling behind; requests wait for room in the queue",
            }));
        }
    }

    /// Wait until every event recorded before this call is on disk.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Events waiting for the writer.
    pub fn depth(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

/// The open audit file, its size, and the rotation threshold.
///
/// Several processes may append to one file: the server's writer and the
/// offline commands (`frenly keys create`, ...), which audit what they do.
/// Each batch is written under an exclusive `flock` of the file, after
/// checking that the path still names the open file (another process may
/// have rotated it) and that the file has the length this process left it
/// at (else another process appended, and the chain goes on from the hash
/// of its last line).
struct LogFile {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    rotate_bytes: u64,
    /// The length this process last saw the file at, under the lock (None:
    /// not yet, or the file was replaced).
    known: Option<u64>,
    /// The path named no file when the lock was taken: the file was
    /// removed under this process (not rotated: a rotation puts the fresh
    /// file in place before it lets go of the old one's lock).
    removed: bool,
    /// The file was shorter under the lock than this process left it: it
    /// was truncated in place (appends only make it longer; a rotation
    /// names a new file). The length it had, and the length found.
    truncated: Option<(u64, u64)>,
}

impl LogFile {
    fn open(path: PathBuf, rotate_bytes: u64) -> std::io::Result<LogFile> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() {
                crate::app::bootstrap::ensure_data_dir(parent)?;
            }
        }
        let mut f = LogFile {
            path,
            file: None,
            size: 0,
            rotate_bytes,
            known: None,
            removed: false,
            truncated: None,
        };
        f.reopen()?;
        Ok(f)
    }

    /// Take the lock of the file the path names (reopening it if another
    /// process rotated it away).
    fn lock(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        for _ in 0..16 {
            if self.file.is_none() {
                self.reopen()?;
            }
            let f = self.open_file()?;
            f.lock()?;
            let open = f.metadata()?;
            match std::fs::metadata(&self.path) {
                Ok(named) if named.ino() == open.ino() && named.dev() == open.dev() => {
                    self.size = open.len();
                    if let Some(left) = self.known.filter(|&k| open.len() < k) {
                        // the chain goes on from the last line this
                        // process wrote, not from what the cut left, so
                        // the cut shows (the marker line breaks the chain
                        // of what is left)
                        self.truncated = Some((left, open.len()));
                        self.known = Some(open.len());
                    }
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.removed = true;
                    self.file = None;
                    self.known = None;
                }
                _ => {
                    // rotated (or removed) by another process: its lock
                    // goes with the old file
                    self.file = None;
                    self.known = None;
                }
            }
        }
        Err(std::io::Error::other(
            "the audit file keeps being replaced while this process waits for it",
        ))
    }

    /// Release the lock, remembering the length the file is left at.
    fn unlock_after<T>(&mut self, r: std::io::Result<T>) -> std::io::Result<T> {
        if let Some(f) = &self.file {
            self.known = f.metadata().ok().map(|m| m.len());
            let _ = f.unlock();
        }
        r
    }

    /// Under the lock: the hash the chain goes on from, when another
    /// process wrote since this one last did (None: `prev` is current).
    fn moved_chain(&self) -> std::io::Result<Option<String>> {
        if self.known == Some(self.size) || self.size == 0 {
            return Ok(None);
        }
        let f = self.open_file()?;
        tail_hash(f, self.size, &self.path).map(Some)
    }

    fn open_file(&self) -> std::io::Result<&std::fs::File> {
        self.file
            .as_ref()
            .ok_or_else(|| std::io::Error::other("audit file not open"))
    }

    fn reopen(&mut self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)?;
        self.size = file.metadata()?.len();
        self.file = Some(file);
        Ok(())
    }

    /// Append lines, rotating before a line that would take the file past
    /// `rotate_bytes` (a file always holds at least one line). On an error,
    /// says how many of the lines are in the file (whole: a failed write
    /// leaves no part of a line behind).
    fn append<'a>(
        &mut self,
        lines: impl IntoIterator<Item = &'a str>,
        sync: bool,
    ) -> Result<(), (std::io::Error, usize)> {
        let mut buf = Vec::new();
        let (mut done, mut in_buf) = (0, 0);
        for line in lines {
            let len = line.len() as u64 + 1;
            if self.rotate_bytes > 0 && self.size + buf.len() as u64 + len > self.rotate_bytes {
                if !buf.is_empty() {
                    self.write(&buf).map_err(|e| (e, done))?;
                    buf.clear();
                    done += std::mem::take(&mut in_buf);
                }
                if self.size > 0 {
                    self.rotate().map_err(|e| (e, done))?;
                }
            }
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            in_buf += 1;
        }
        if !buf.is_empty() {
            self.write(&buf).map_err(|e| (e, done))?;
            done += in_buf;
        }
        if sync {
            if let Some(f) = &self.file {
                f.sync_data().map_err(|e| (e, done))?;
            }
        }
        Ok(())
    }

    /// Write whole lines; when the write fails (a full disk), cut the file
    /// back to where it was, so no part of a line stays to glue the next
    /// line to and break the chain for good.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("audit file not open"))?;
        if let Err(e) = f.write_all(bytes) {
            if let Err(cut) = f.set_len(self.size) {
                tracing::error!(file = %self.path.display(), error = %cut, "cannot cut a partly written audit line back off");
            }
            return Err(e);
        }
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Rename the full file to `<file>.<n>` (the next free number: `.1` is
    /// the oldest) and continue in a fresh file; the chain goes on.
    fn rotate(&mut self) -> std::io::Result<()> {
        if let Some(f) = &self.file {
            f.sync_all()?;
        }
        let target = next_rotation_name(&self.path);
        std::fs::rename(&self.path, &target)?;
        tracing::info!(rotated = %target.display(), "audit log rotated");
        // The fresh file is locked before the old one (and its lock) goes,
        // so a process waiting on the old one finds the new one taken.
        let old = self.file.take();
        self.reopen()?;
        self.open_file()?.lock()?;
        drop(old);
        Ok(())
    }
}

/// `<file>.<n>` with `n` one past the highest rotated file there (`.1`
/// when there is none): numbers only grow, so the order stays the chain's
/// when old files are removed (retention).
pub fn next_rotation_name(path: &Path) -> PathBuf {
    let n = rotated_files(path).last().map_or(1, |(n, _)| n + 1);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The rotated files of `path` (`<file>.<n>`), by number.
pub fn rotated_files(path: &Path) -> Vec<(u64, PathBuf)> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let n = name
                .to_str()?
                .strip_prefix(base)?
                .strip_prefix('.')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))?
                .parse::<u64>()
                .ok()?;
            Some((n, dir.join(&name)))
        })
        .collect();
    out.sort_unstable();
    out
}

/// The rotated files of `path` in chain order (oldest first), then `path`.
pub fn chain_files(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = rotated_files(path).into_iter().map(|(_, p)| p).collect();
    out.push(path.to_path_buf());
    out
}

/// How long the writer lets events gather after the first one of a batch:
/// requests only queue events, so this adds at most this much delay before
/// an event reaches the file, and lets one write, one hash pass and one
/// database transaction serve a whole batch under load.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

/// Most events written in one batch.
const MAX_BATCH: usize = 4096;

/// The writer's state: it lives on its own thread, so rendering, hashing and
/// the file append never run on (or wait for) the request runtime.
struct Writer {
    file: LogFile,
    prev: String,
    db: Db,
    rt: tokio::runtime::Handle,
    written: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
    depth: Option<prometheus_client::metrics::gauge::Gauge>,
    /// Rows the database refused, oldest first ([`Writer::keep_for_later`]).
    backlog: Vec<AuditRecord>,
    /// Lines the file refused (a full disk, a file that cannot be opened),
    /// oldest first: written before any newer line once the file takes
    /// them, so the chain in the file has no gap.
    unwritten: Vec<String>,
}

impl Writer {
    /// Take messages until every sender is gone, a gathered batch at a time.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.blocking_recv() {
            let flush_first = matches!(first, Msg::Flush(_));
            batch.push(first);
            if !flush_first {
                std::thread::sleep(GATHER);
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            self.write_batch(&mut batch);
        }
        if !self.unwritten.is_empty() {
            tracing::error!(
                lines = self.unwritten.len(),
                file = %self.file.path.display(),
                "audit lines the file could not take are lost from the file (the database holds their events unless it was out of reach too)"
            );
        }
        if !self.backlog.is_empty() {
            tracing::error!(
                rows = self.backlog.len(),
                "audit events the database could not take are only in the file"
            );
        }
    }

    fn write_batch(&mut self, batch: &mut Vec<Msg>) {
        let locked = self.file.lock();
        if let Err(e) = &locked {
            // written anyway: a line at risk beats a line lost
            tracing::error!(file = %self.file.path.display(), error = %e, "cannot lock the audit log");
        }
        match self.file.moved_chain() {
            // lines waiting for the file chain from this process's last
            // one: they go first, so the break is where another process
            // wrote in between (said here), not after them too
            Ok(Some(_)) if !self.unwritten.is_empty() => {
                tracing::error!(file = %self.file.path.display(), waiting = self.unwritten.len(), "another process wrote to the audit log while lines waited for it: the chain breaks where they go")
            }
            Ok(Some(prev)) => self.prev = prev,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(file = %self.file.path.display(), error = %e, "cannot read the audit log's last hash")
            }
        }
        let mut records = Vec::with_capacity(batch.len() + 1);
        let mut flushes = Vec::new();
        // events of the writer's own, not counted as queued
        let mut own = 0u64;
        if let Some((left, found)) = self.file.truncated.take() {
            own += 1;
            tracing::error!(file = %self.file.path.display(), left, found, "the audit file was truncated while the server ran: the chain goes on from the last line written (what was cut is gone unless a copy exists; the database holds it)");
            batch.insert(
                0,
                Msg::Event(
                    AuditEvent::new("security_violation")
                        .field("violation_type", "audit_file_missing")
                        .field(
                            "details",
                            "the audit file was truncated while the server ran; the chain goes on from the last line written",
                        )
                        .field("while", "running")
                        .field("bytes_before", left)
                        .field("bytes_found", found)
                        .field("continues_from", self.prev.clone()),
                ),
            );
        }
        if std::mem::take(&mut self.file.removed) {
            own += 1;
            tracing::error!(file = %self.file.path.display(), "the audit file was removed while the server ran: a fresh one goes on from the last line written (what came before is gone unless a copy exists)");
            batch.insert(
                0,
                Msg::Event(
                    AuditEvent::new("security_violation")
                        .field("violation_type", "audit_file_missing")
                        .field(
                            "details",
                            "the audit file was removed while the server ran; the chain goes on in a fresh file from the last line written",
                        )
                        .field("while", "running")
                        .field("continues_from", self.prev.clone()),
                ),
            );
        }
        for m in batch.drain(..) {
            match m {
                Msg::Event(ev) => {
                    let ts_ms = crate::store::now_ms();
                    let ts = crate::store::rfc3339(ts_ms);
                    let (line, hash) = render_with(&ev, &self.prev, &ts);
                    self.prev = hash;
                    records.push(AuditRecord {
                        ts,
                        ts_ms,
                        event_type: ev.event_type,
                        request_id: ev.request_id,
                        ip: ev.ip,
                        user_id: ev.user_id,
                        line,
                    });
                }
                Msg::Flush(done) => flushes.push(done),
                Msg::Rechain(from) => self.prev = from,
            }
        }
        let fresh = records.iter().map(|r| r.line.as_str());
        let sync = !flushes.is_empty();
        let appended = if self.unwritten.is_empty() {
            self.file.append(fresh, sync)
        } else {
            let waiting = self.unwritten.iter().map(String::as_str);
            self.file.append(waiting.chain(fresh), sync)
        };
        let appended = match appended {
            Ok(()) => {
                if !self.unwritten.is_empty() {
                    tracing::warn!(lines = self.unwritten.len(), file = %self.file.path.display(), "the audit lines that waited for the file are written");
                    self.unwritten.clear();
                }
                Ok(())
            }
            Err((e, done)) => {
                let waited = self.unwritten.len();
                self.unwritten.drain(..done.min(waited));
                let fresh_done = done.saturating_sub(waited);
                self.unwritten
                    .extend(records.iter().skip(fresh_done).map(|r| r.line.clone()));
                if self.unwritten.len() > MAX_BACKLOG {
                    let dropped = self.unwritten.len() - MAX_BACKLOG;
                    self.unwritten.drain(..dropped);
                    tracing::error!(dropped, file = %self.file.path.display(), "the audit file was out of reach for too many events: the oldest lines are only in the database, and the file's chain breaks there");
                }
                Err(e)
            }
        };
        let in_file = appended.is_ok();
        if let Err(e) = self.file.unlock_after(appended) {
            tracing::error!(file = %self.file.path.display(), error = %e, waiting = self.unwritten.len(), "cannot append to the audit log; its lines wait in memory and are written, in order, once the file takes them");
        }
        if !records.is_empty() {
            let n = records.len() as u64;
            // rows the database refused before go first, in their order
            let rows = if self.backlog.is_empty() {
                records
            } else {
                let mut rows = std::mem::take(&mut self.backlog);
                rows.extend(records);
                rows
            };
            if let Err((e, rows)) = crate::store::audit::store_blocking(&self.db, &self.rt, rows) {
                self.keep_for_later(rows);
                if in_file {
                    tracing::error!(error = %e, waiting = self.backlog.len(), "cannot store audit events in the database; they are kept for the next batch (the file has them)");
                } else {
                    tracing::error!(error = %e, waiting = self.backlog.len(), "cannot store audit events in the database, nor write them to the file; both wait in memory for the next batch");
                }
            }
            self.written.fetch_add(n, Ordering::Relaxed);
            let n = n - own;
            let left = self
                .queued
                .fetch_sub(n, Ordering::Relaxed)
                .saturating_sub(n);
            if let Some(g) = &self.depth {
                g.set(left as i64);
            }
        }
        if !flushes.is_empty() && !self.unwritten.is_empty() {
            tracing::error!(lines = self.unwritten.len(), file = %self.file.path.display(), "audit lines are not in the file at a flush (shutdown, or an offline command's end): the file cannot take them");
        }
        for f in flushes {
            let _ = f.send(());
        }
    }

    /// Keep rows the database refused (out of reach) for the next batch, the
    /// newest [`MAX_BACKLOG`] at most: a database outage no longer drops the
    /// rows of every event made during it (the file keeps them all).
    fn keep_for_later(&mut self, mut rows: Vec<AuditRecord>) {
        if rows.len() > MAX_BACKLOG {
            let dropped = rows.len() - MAX_BACKLOG;
            rows.drain(..dropped);
            tracing::error!(
                dropped,
                "the database was out of reach for too many audit events: the oldest rows are only in the file"
            );
        }
        self.backlog = rows;
    }
}

/// Audit rows kept while the database is out of reach (about 50 MB).
const MAX_BACKLOG: usize = 100_000;

/// Member names whose values are never written: the last `_`/`-`/`.`
/// separated word of the name (lowercased) is one of these.
const SECRET_WORDS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "passphrase",
    "token",
    "secret",
    "key",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "credentials",
];

/// What a redacted value becomes.
pub const REDACTED: &str = "[redacted]";

/// Does a member name name a secret? (`api_key`, `access_token`, `password`
/// yes; `key_id`, `token_id` no.)
pub fn is_secret_name(name: &str) -> bool {
    let last = name.rsplit(['_', '-', '.']).next().unwrap_or(name);
    SECRET_WORDS.iter().any(|w| last.eq_ignore_ascii_case(w))
        || contains_ignore_case(name, "password")
        || contains_ignore_case(name, "secret")
}

/// `haystack` contains `needle` (ASCII, any case).
fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The length of an API key's body (`frn_` + 32 random bytes in url-safe
/// base64 without padding).
const KEY_BODY_LEN: usize = 43;

/// A byte of the url-safe base64 alphabet (API key bodies, JWT segments).
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The byte ranges of `s` that look like a credential Frenly issues, in
/// order and disjoint:
/// - `frn_` and the url-safe base64 run it starts (an API key, whole or cut);
/// - a JWT: a run holding `eyJ` (the base64 of `{"`, how every JWT header
///   starts) from there on, followed by at least two more `.`-separated
///   segments (JWS has three, JWE five; a segment may be empty);
/// - a key's body without its prefix: a maximal run (bounded by the
///   string's ends or a byte outside the alphabet) of exactly 43 url-safe
///   base64 characters holding both an upper- and a lowercase letter. A
///   random body lacks one of them with a chance of about 4 in 10^10, while
///   the identifiers Frenly writes (UUIDs, hex hashes, route patterns) and
///   most words, slugs and numbers are not such runs: they are left alone.
///
/// One pass over the bytes, no allocation unless something is found: it
/// runs for every string an audit event carries.
fn credential_spans(s: &str) -> Vec<(usize, usize)> {
    let b = s.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if !b.get(i).copied().is_some_and(is_b64url) {
            i += 1;
            continue;
        }
        let start = i;
        while b.get(i).copied().is_some_and(is_b64url) {
            i += 1;
        }
        let run = b.get(start..i).unwrap_or_default();
        let find = |needle: &[u8]| run.windows(needle.len()).position(|w| w == needle);
        if let Some(p) = find(b"eyJ") {
            // the segments after this run
            let (mut end, mut segments) = (i, 0);
            while b.get(end) == Some(&b'.') {
                end += 1;
                while b.get(end).copied().is_some_and(is_b64url) {
                    end += 1;
                }
                segments += 1;
            }
            if segments >= 2 {
                let from = find(b"frn_").filter(|&f| f < p).unwrap_or(p);
                spans.push((start + from, end));
                i = end;
                continue;
            }
        }
        if let Some(p) = find(b"frn_") {
            spans.push((start + p, i));
        } else if run.len() == KEY_BODY_LEN
            && run.iter().any(u8::is_ascii_uppercase)
            && run.iter().any(u8::is_ascii_lowercase)
        {
            spans.push((start, i));
        }
    }
    spans
}

/// Does `s` hold something that looks like a Frenly API key (or its body)
/// or a JWT ([`credential_spans`])?
pub fn holds_credential(s: &str) -> bool {
    !credential_spans(s).is_empty()
}

/// `s` with every credential-looking part ([`credential_spans`]) replaced
/// by [`REDACTED`]: `/etc/passwd/eyJ...` is written `/etc/passwd/[redacted]`,
/// so the event still says where the request went.
pub fn redact_str(s: &str) -> std::borrow::Cow<'_, str> {
    let spans = credential_spans(s);
    if spans.is_empty() {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut at = 0;
    for (from, to) in spans {
        out.push_str(s.get(at..from).unwrap_or_default());
        out.push_str(REDACTED);
        at = to;
    }
    out.push_str(s.get(at..).unwrap_or_default());
    std::borrow::Cow::Owned(out)
}

/// Would [`redact`] change `v`? (Most values are plain: they are written as
/// they are, without the copy `redact` makes.)
fn needs_redaction(v: &Value) -> bool {
    match v {
        Value::Object(m) => m
            .iter()
            .any(|(k, v)| (is_secret_name(k) && !v.is_null()) || needs_redaction(v)),
        Value::Array(a) => a.iter().any(needs_redaction),
        Value::String(s) => holds_credential(s),
        _ => false,
    }
}

/// The secret guard: redact secret-named members, and the credential-looking
/// parts of string values ([`redact_str`]), recursively.
pub fn redact(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    if is_secret_name(k) && !v.is_null() {
                        (k.clone(), Value::from(REDACTED))
                    } else {
                        (k.clone(), redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(redact).collect()),
        Value::String(s) => Value::from(redact_str(s).into_owned()),
        other => other.clone(),
    }
}

/// Serialize one event chained to `prev`; returns the line and its hash.
pub fn render(ev: &AuditEvent, prev: &str) -> (String, String) {
    render_at(ev, prev, crate::store::now_ms())
}

/// [`render`] with the event's time given (Unix ms).
pub fn render_at(ev: &AuditEvent, prev: &str, ts_ms: i64) -> (String, String) {
    render_with(ev, prev, &crate::store::rfc3339(ts_ms))
}

/// Members every line carries, in this order, before the event's own.
const RESERVED: &[&str] = &[
    "ts",
    "event_type",
    "request_id",
    "ip",
    "user_id",
    "prev_hash",
    "hash",
];

/// Serialize one event with its RFC 3339 time, chained to `prev`: members in
/// the order `ts, event_type, request_id, ip, user_id`, the event's own
/// (secret guard applied), `prev_hash`, then `hash` over everything before it.
fn render_with(ev: &AuditEvent, prev: &str, ts: &str) -> (String, String) {
    // an api_access line is ~400 bytes: one allocation, no regrowth
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"ts\":");
    json_str(&mut out, ts);
    out.extend_from_slice(b",\"event_type\":");
    json_str(&mut out, ev.event_type);
    for (name, value) in [
        ("request_id", &ev.request_id),
        ("ip", &ev.ip),
        ("user_id", &ev.user_id),
    ] {
        out.push(b',');
        json_str(&mut out, name);
        out.push(b':');
        match value {
            Some(v) => json_str(&mut out, v),
            None => out.extend_from_slice(b"null"),
        }
    }
    for (k, v) in &ev.fields {
        if RESERVED.contains(k) {
            continue;
        }
        out.push(b',');
        json_str(&mut out, k);
        out.push(b':');
        let written = if is_secret_name(k) && !v.is_null() {
            serde_json::to_writer(&mut out, REDACTED)
        } else if needs_redaction(v) {
            serde_json::to_writer(&mut out, &redact(v))
        } else {
            serde_json::to_writer(&mut out, v)
        };
        if written.is_err() {
            out.extend_from_slice(b"null");
        }
    }
    out.extend_from_slice(b",\"prev_hash\":");
    json_str(&mut out, prev);
    out.push(b'}');
    escape_line_separators(&mut out);
    let hex_hash = line_hash(&out);
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    out.extend_from_slice(&hex_hash);
    out.extend_from_slice(b"\"}");
    // Only JSON text went in (serde_json escapes every string; hex digits).
    let line = String::from_utf8(out).unwrap_or_default();
    let hash = String::from_utf8_lossy(&hex_hash).into_owned();
    (line, hash)
}

/// Write U+0085, U+2028 and U+2029 as `\u` escapes. serde_json leaves them
/// raw (valid JSON), but readers that split text on every Unicode line
/// break (Python's `str.splitlines`, some log shippers) would cut the line
/// there, so a value such as a login name could forge a line break in the
/// log. They occur only inside strings (the rest of a line is ASCII), and
/// the escape parses back to the same text.
fn escape_line_separators(out: &mut Vec<u8>) {
    // UTF-8: U+0085 is C2 85, U+2028/2029 are E2 80 A8/A9.
    if !out.iter().any(|&b| b == 0xC2 || b == 0xE2) {
        return;
    }
    let mut escaped = Vec::with_capacity(out.len() + 16);
    let mut rest = out.as_slice();
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (0xC2, [0x85, ..]) => {
                escaped.extend_from_slice(b"\\u0085");
                rest = tail.get(1..).unwrap_or_default();
            }
            (0xE2, [0x80, c @ (0xA8 | 0xA9), ..]) => {
                escaped.extend_from_slice(if *c == 0xA8 { b"\\u2028" } else { b"\\u2029" });
                rest = tail.get(2..).unwrap_or_default();
            }
            _ => {
                escaped.push(b);
                rest = tail;
            }
        }
    }
    *out = escaped;
}

/// A line's `hash`: SHA-256 of its bytes without the `hash` member, as 64
/// lowercase hex digits (written by [`render_with`], checked by
/// [`verify_lines`]).
fn line_hash(body: &[u8]) -> [u8; 64] {
    let mut hex_hash = [0u8; 64];
    // 32 digest bytes fill the 64 hex digits exactly: this cannot fail
    let _ = hex::encode_to_slice(Sha256::digest(body), &mut hex_hash);
    hex_hash
}

/// Append `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// Why a line breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("line {line}: not a complete audit line (truncated or edited)")]
    Malformed { line: usize },
    #[error("line {line}: hash does not match its content (edited)")]
    BadHash { line: usize },
    #[error(
        "line {line}: prev_hash does not match the previous line (dropped, reordered or inserted)"
    )]
    BadLink { line: usize },
}

/// Audit rows read back to compare the file with the database: the
/// newest this many.
pub const STORED_WINDOW: i64 = 100_000;

/// The `hash` of a line (unchecked).
pub fn hash_of_line(line: &str) -> Option<&str> {
    split_line(line).map(|(_, h)| h)
}

/// Stored events that continue the file's chain but are not in the file:
/// its last lines were cut (a truncated file verifies, as a prefix of a
/// chain is a chain). `file_hashes` are the hashes of the file's lines
/// (its tail), `links` the database's newest rows' `(prev_hash, hash)`,
/// newest first. A row whose `prev_hash` is a line of the file and whose
/// own hash is not starts what was cut; the rows chaining on from it are
/// counted too. Rows of other chains (other instances sharing a
/// PostgreSQL database write their own files) never link to this file's
/// lines. `None` when nothing was cut; else the count and the hash of the
/// file's line after which lines are missing.
pub fn missing_from_file(
    file_hashes: &std::collections::HashSet<String>,
    links: &[(String, String)],
) -> Option<(usize, String)> {
    let mut after: std::collections::HashMap<&str, Vec<&str>> = Default::default();
    let mut forks = Vec::new();
    for (prev, hash) in links.iter().rev() {
        if file_hashes.contains(hash) {
            continue;
        }
        if file_hashes.contains(prev) {
            forks.push((prev.as_str(), hash.as_str()));
        } else {
            after.entry(prev.as_str()).or_default().push(hash.as_str());
        }
    }
    let (first_prev, _) = *forks.first()?;
    let mut seen = std::collections::HashSet::new();
    let mut todo: Vec<&str> = forks.iter().map(|(_, h)| *h).collect();
    while let Some(h) = todo.pop() {
        if seen.insert(h) {
            todo.extend(after.get(h).into_iter().flatten());
        }
    }
    Some((seen.len(), first_prev.to_string()))
}

/// What the database holds that an audit file does not account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredGap {
    /// Stored events continue the chain from one of the file's lines but
    /// are not in it: its last lines were cut ([`missing_from_file`]).
    Cut { missing: usize, after: String },
    /// The database holds events, yet none of them is a line of the file
    /// or continues one: the file was emptied, or replaced by a chain of
    /// its own (a forged one, recomputed from the all-zero hash). `stored`:
    /// the events read. `newest`: the hash of the newest of them.
    Unknown { stored: usize, newest: String },
}

impl StoredGap {
    /// One line for `audit verify`, `check` and the server's log.
    pub fn describe(&self) -> String {
        match self {
            StoredGap::Cut { missing, .. } => format!(
                "the database holds {missing} later event(s) of this chain that the file does not: its last lines were cut"
            ),
            StoredGap::Unknown { stored, .. } => format!(
                "the database holds {stored} event(s) and the file holds none of them: the file was emptied or replaced"
            ),
        }
    }
}

/// [`missing_from_file`], then: does the file's chain touch the database's
/// rows at all? `file_hashes` as there (every line of the last file, and
/// the hash its first line goes on from). A file none of whose lines is
/// among the rows is [`StoredGap::Unknown`]; the caller then asks the
/// whole table for the file's last line ([`crate::store::audit::holds_hash`])
/// before it says so, as the rows are only the newest [`STORED_WINDOW`].
///
/// Other instances on a shared PostgreSQL database write rows of their own
/// chains; an instance's file is told apart by its lines being among the
/// rows. What stays ambiguous: an empty file while the rows are another
/// instance's (an instance whose file exists but never held a line).
pub fn stored_gap(
    file_hashes: &std::collections::HashSet<String>,
    links: &[(String, String)],
) -> Option<StoredGap> {
    if let Some((missing, after)) = missing_from_file(file_hashes, links) {
        return Some(StoredGap::Cut { missing, after });
    }
    let (_, newest) = links.first()?;
    if links
        .iter()
        .any(|(p, h)| file_hashes.contains(h) || file_hashes.contains(p))
    {
        return None;
    }
    Some(StoredGap::Unknown {
        stored: links.len(),
        newest: newest.clone(),
    })
}

/// The hashes of every line of the log at `path` (none if it is absent).
pub fn hashes_in(path: &Path) -> std::io::Result<std::collections::HashSet<String>> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(e),
    };
    let mut out = std::collections::HashSet::new();
    for line in std::io::BufReader::new(f).split(b'\n') {
        let line = line?;
        if let Some(h) = std::str::from_utf8(&line).ok().and_then(hash_of_line) {
            out.insert(h.to_string());
        }
    }
    Ok(out)
}

/// Split a line into (body without hash, hash).
fn split_line(line: &str) -> Option<(String, &str)> {
    const SUFFIX_LEN: usize = 9 + 64 + 2; // ,"hash":" + 64 hex + "}
    if line.len() < SUFFIX_LEN + 2 || !line.is_char_boundary(line.len() - SUFFIX_LEN) {
        return None;
    }
    let (head, tail) = line.split_at(line.len() - SUFFIX_LEN);
    let hash = tail.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some((format!("{head}}}"), hash))
}

/// Verify a sequence of lines continuing from `prev` (GENESIS for the first
/// file). Returns the last hash.
pub fn verify_lines<'a, I: IntoIterator<Item = &'a str>>(
    lines: I,
    mut prev: String,
    first_line_no: usize,
) -> Result<String, ChainError> {
    for (i, line) in lines.into_iter().enumerate() {
        let no = first_line_no + i;
        let (body, hash) = split_line(line).ok_or(ChainError::Malformed { line: no })?;
        let v: Value =
            serde_json::from_str(&body).map_err(|_| ChainError::Malformed { line: no })?;
        if line_hash(body.as_bytes()) != hash.as_bytes() {
            return Err(ChainError::BadHash { line: no });
        }
        if v.get("prev_hash").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(ChainError::BadLink { line: no });
        }
        prev = hash.to_string();
    }
    Ok(prev)
}

/// Remove an incomplete last line (bytes after the last line end) from the
/// log at `path`; returns how many bytes were removed and their SHA-256
/// (hex), or `None` when the file ends in a line end, is empty or absent.
pub fn repair_tail(path: &Path) -> std::io::Result<Option<(u64, String)>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    // Scan backwards in blocks for the last line end.
    let mut end = len;
    let mut keep = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    'scan: while end > 0 {
        let start = end.saturating_sub(buf.len() as u64);
        let n = usize::try_from(end - start).unwrap_or(0);
        let Some(block) = buf.get_mut(..n) else { break };
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(block)?;
        if let Some(i) = block.iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break 'scan;
        }
        end = start;
    }
    if keep == len {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(keep))?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail)?;
    f.set_len(keep)?;
    f.sync_all()?;
    Ok(Some((len - keep, hex::encode(Sha256::digest(&tail)))))
}

/// The hash of the last line of the first `len` bytes of `f`, read from its
/// end (every line ends `,"hash":"<64 hex>"}` and a line end); a file whose
/// tail is not such a line is read whole by [`last_hash`].
fn tail_hash(f: &std::fs::File, len: u64, path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    const TAIL: usize = 9 + 64 + 2 + 1;
    let mut buf = [0u8; TAIL];
    if let Some(at) = len.checked_sub(TAIL as u64) {
        f.read_exact_at(&mut buf, at)?;
        let hash = buf
            .strip_prefix(b",\"hash\":\"")
            .and_then(|b| b.strip_suffix(b"\"}\n"))
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
        if let Some(h) = hash {
            return Ok(String::from_utf8_lossy(h).into_owned());
        }
    }
    last_hash(path)
}

/// The hash of the last line of an existing log (GENESIS if none).
pub fn last_hash(path: &Path) -> std::io::Result<String> {
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(GENESIS.into()),
        Err(e) => return Err(e),
    };
    let mut last = None;
    for line in std::io::BufReader::new(f).lines() {
        let line = line?;
        if let Some((_, h)) = split_line(&line) {
            last = Some(h.to_string());
        }
    }
    Ok(last.unwrap_or_else(|| GENESIS.into()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    /// A chain of `n` events with varied fields, as the writer renders it.
    fn chain(values: &[String]) -> Vec<String> {
        let mut prev = GENESIS.to_string();
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let ev = AuditEvent::new("api_access")
                    .request_id(format!("r{i}"))
                    .ip("203.0.113.7")
                    .user(Some(format!("u{i}")))
                    .field("endpoint", v.as_str())
                    .field("status", 200 + i as u64);
                let (line, hash) = render_at(&ev, &prev, 1_700_000_000_000 + i as i64);
                prev = hash;
                line
            })
            .collect()
    }

    /// Regression (crash safety): a SIGKILL mid-write leaves a last line
    /// without its line end; appending after it glued the next line to it.
    #[test]
    fn incomplete_tail_after_crash_is_removed_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.log");
        let lines = chain(&["a".into(), "b".into(), "c".into()]);
        let full = format!("{}\n{}\n", lines[0], lines[1]);
        let cut = &lines[2][..lines[2].len() / 2];
        std::fs::write(&p, format!("{full}{cut}")).unwrap();
        let (n, hash) = repair_tail(&p).unwrap().unwrap();
        assert_eq!(n as usize, cut.len());
        assert_eq!(hash, hex::encode(Sha256::digest(cut.as_bytes())));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), full);
        assert_eq!(repair_tail(&p).unwrap(), None);
        // the chain goes on from the last complete line
        assert_eq!(
            last_hash(&p).unwrap(),
            verify_lines(lines[..2].iter().map(String::as_str), GENESIS.into(), 1).unwrap()
        );
        // no line end at all: everything goes
        std::fs::write(&p, cut).unwrap();
        assert!(repair_tail(&p).unwrap().is_some());
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        assert_eq!(repair_tail(&dir.path().join("absent")).unwrap(), None);
    }

    #[test]
    fn secret_names_are_recognised_in_any_case() {
        for n in [
            "password",
            "api_key",
            "X-Api-Key",
            "access_token",
            "DB_PASSWORD",
            "clientSecret",
            "Authorization",
            "cookie",
        ] {
            assert!(is_secret_name(n), "{n}");
        }
        for n in [
            "key_id", "token_id", "endpoint", "status", "monkey", "passage",
        ] {
            assert!(!is_secret_name(n), "{n}");
        }
    }

    /// Regression (probe J): a JWT, or a key's body without `frn_`, inside
    /// an attacker-chosen string (the path of an IDS-blocked request) was
    /// written verbatim: only whole values were redacted.
    #[test]
    fn credentials_inside_strings_are_redacted() {
        let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlX29mX3RoZV90b2tlbl9oZXJlX3h4eA";
        let body = "Qm9keU9mQUtleV9UaGF0SXM0M0NoYXJzTG9uZ18tWFz";
        assert_eq!(body.len(), 43);
        for (input, want) in [
            (
                format!("/etc/passwd/{jwt}"),
                "/etc/passwd/[redacted]".to_string(),
            ),
            (format!("/x?t={jwt}&a=1"), "/x?t=[redacted]&a=1".into()),
            (
                format!("/api/tasks/<script>{body}"),
                "/api/tasks/<script>[redacted]".into(),
            ),
            (format!("/k/frn_{body}/x"), "/k/[redacted]/x".into()),
            (
                format!("Bearer {jwt} and {body}"),
                "Bearer [redacted] and [redacted]".into(),
            ),
            // alg none: an empty signature
            (
                "a eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0. b".into(),
                "a [redacted] b".into(),
            ),
        ] {
            assert_eq!(redact_str(&input), want, "{input}");
            let ev = AuditEvent::new("security_violation")
                .field("endpoint", input.as_str())
                .field("details", serde_json::json!({"h": [input.as_str()]}));
            let (line, _) = render_at(&ev, GENESIS, 0);
            assert!(!line.contains(jwt) && !line.contains(body), "{line}");
        }
        // what Frenly writes itself is left alone
        for plain in [
            "/api/tasks/{id}",
            "0190a1b2c3d4e5f60718293a4b5c6d7e",
            &"ab12".repeat(16),
            "this-is-a-lowercase-slug-of-43-characters-x",
            "rule sqli.union at query:q",
            "x.y",
        ] {
            assert!(!holds_credential(plain), "{plain}");
        }
        assert!(crate::http::envelope::is_sane_request_id(b"req-1.2"));
        assert!(!crate::http::envelope::is_sane_request_id(body.as_bytes()));
    }

    /// Members sorted by name, a repeated name replaced, and the line keeps
    /// that order (the render does not re-sort).
    #[test]
    fn fields_are_unique_and_sorted() {
        let ev = AuditEvent::new("x")
            .field("status", 1)
            .field("endpoint", "/a")
            .field("status", 2);
        let names: Vec<&str> = ev.fields.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["endpoint", "status"]);
        let (line, _) = render_at(&ev, GENESIS, 0);
        assert!(
            line.contains(r#""endpoint":"/a","status":2,"prev_hash""#),
            "{line}"
        );
    }

    /// A value holding Unicode line breaks stays on one line (for readers
    /// that split on them) and reads back as written; the chain verifies.
    #[test]
    fn unicode_line_breaks_are_escaped() {
        let name = "evil\u{2028}{\"event_type\":\"x\"}\u{85}\u{2029}é€";
        let ev = AuditEvent::new("login_attempt").field("username", name);
        let (line, hash) = render_at(&ev, GENESIS, 0);
        for c in ['\u{85}', '\u{2028}', '\u{2029}', '\n', '\r'] {
            assert!(!line.contains(c), "{line:?}");
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["username"], name);
        assert_eq!(v["hash"], hash.as_str());
        verify_lines([line.as_str()], GENESIS.to_string(), 1).unwrap();
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            prop::sample::select(vec!["plain", "frn_abc", "eyJa.b.c", "x.y", ""])
                .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop::sample::select(vec!["a", "password", "key_id", "api_key", "note"]),
                        inner
                    ),
                    0..4
                )
                .prop_map(|kv| Value::Object(
                    kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
                )),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// The shortcut that writes plain values as they are agrees with
        /// the guard: a value needs redaction exactly when redacting it
        /// changes it.
        #[test]
        fn needs_redaction_agrees_with_redact(v in json_value()) {
            prop_assert_eq!(needs_redaction(&v), redact(&v) != v);
        }

        /// An unedited chain verifies; changing any one byte of any line to
        /// any other printable ASCII byte is detected.
        #[test]
        fn any_edit_of_any_line_is_rejected(
            values in proptest::collection::vec("[ -~é]{0,40}", 1..8),
            which in any::<proptest::sample::Index>(),
            pos in any::<proptest::sample::Index>(),
            byte in 0x20u8..0x7f,
        ) {
            let lines = chain(&values);
            prop_assert!(verify_lines(lines.iter().map(String::as_str), GENESIS.into(), 1).is_ok());
            let l = which.index(lines.len());
            let mut bytes = lines[l].clone().into_bytes();
            let i = pos.index(bytes.len());
            prop_assume!(bytes[i] != byte && bytes[i].is_ascii());
            bytes[i] = byte;
            let mut edited = lines.clone();
            edited[l] = String::from_utf8(bytes).unwrap();
            let res = verify_lines(edited.iter().map(String::as_str), GENESIS.into(), 1);
            prop_assert!(res.is_err(), "edit at line {} byte {} not detected", l + 1, i);
        }

        /// Dropping, duplicating or swapping lines is detected.
        #[test]
        fn dropped_or_reordered_lines_are_rejected(
            values in proptest::collection::vec("[a-z]{0,10}", 2..8),
            a in any::<proptest::sample::Index>(),
            b in any::<proptest::sample::Index>(),
        ) {
            let lines = chain(&values);
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            let verify = |ls: &[String]| verify_lines(ls.iter().map(String::as_str), GENESIS.into(), 1);
            let mut dropped = lines.clone();
            dropped.remove(a);
            // Dropping the last line leaves a valid (shorter) chain: that is
            // what the database copy and the file's length are for.
            if a + 1 != lines.len() {
                prop_assert!(verify(&dropped).is_err());
            }
            let mut dup = lines.clone();
            dup.insert(a, lines[a].clone());
            prop_assert!(verify(&dup).is_err());
            if a != b {
                let mut swapped = lines.clone();
                swapped.swap(a, b);
                prop_assert!(verify(&swapped).is_err());
            }
        }
    }
}

#[cfg(test)]
mod cut_tail {
    use super::*;

    /// A file cut after line `b` of the chain a-b-c-d: the stored rows c
    /// and d go on from b and are not in the file; rows of another chain
    /// (another instance's file on a shared PostgreSQL) are not counted.
    #[test]
    fn rows_past_the_files_end_are_found() {
        let h = |c: char| c.to_string().repeat(64);
        let links = vec![
            (h('9'), h('8')), // another chain, newest
            (h('c'), h('d')),
            (h('b'), h('c')),
            (h('7'), h('9')),
            (h('a'), h('b')),
            (GENESIS.to_string(), h('a')),
        ];
        let file = |hs: &[char]| hs.iter().map(|&c| h(c)).collect();
        assert_eq!(
            missing_from_file(&file(&['a', 'b']), &links),
            Some((2, h('b')))
        );
        assert_eq!(
            missing_from_file(&file(&['a', 'b', 'c']), &links),
            Some((1, h('c')))
        );
        assert_eq!(
            missing_from_file(&file(&['a', 'b', 'c', 'd']), &links),
            None
        );
        // only the file's last line known (the server's start)
        assert_eq!(missing_from_file(&file(&['d']), &links), None);
        assert_eq!(missing_from_file(&file(&['b']), &links), Some((2, h('b'))));
        // a file ahead of the database (its rows not written yet)
        assert_eq!(missing_from_file(&file(&['e']), &links), None);
    }

    /// Regression (probe J): a file emptied or replaced by a chain of its
    /// own was not told from a file ahead of the database: only rows
    /// continuing one of its lines were looked for.
    #[test]
    fn a_file_none_of_whose_lines_is_stored_is_unknown() {
        let h = |c: char| c.to_string().repeat(64);
        let links = vec![
            (h('c'), h('d')),
            (h('b'), h('c')),
            (h('a'), h('b')),
            (GENESIS.to_string(), h('a')),
        ];
        let file = |hs: &[char]| hs.iter().map(|&c| h(c)).collect();
        let unknown = Some(StoredGap::Unknown {
            stored: 4,
            newest: h('d'),
        });
        // emptied; replaced by a forged chain
        assert_eq!(stored_gap(&file(&[]), &links), unknown);
        assert_eq!(stored_gap(&file(&['x', 'y']), &links), unknown);
        // the genuine file, a file ahead of the database, a cut one
        assert_eq!(stored_gap(&file(&['a', 'b', 'c', 'd']), &links), None);
        assert_eq!(stored_gap(&file(&['c', 'd', 'e']), &links), None);
        assert_eq!(
            stored_gap(&file(&['a', 'b']), &links),
            Some(StoredGap::Cut {
                missing: 2,
                after: h('b')
            })
        );
        // a fresh database
        assert_eq!(stored_gap(&file(&[]), &[]), None);
    }
}
