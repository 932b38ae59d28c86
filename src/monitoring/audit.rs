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
//! metrics): no event is ever dropped. [`Audit::shutdown`] flushes every
//! accepted event.
//!
//! Not covered: an attacker who can rewrite the whole file and recompute the
//! chain (ship the log off the machine, or anchor the last hash elsewhere).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
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
    /// Extra members (never secrets).
    pub fields: Map<String, Value>,
}

impl AuditEvent {
    pub fn new(event_type: &'static str) -> Self {
        AuditEvent {
            event_type,
            request_id: None,
            ip: None,
            user_id: None,
            fields: Map::new(),
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

    pub fn field(mut self, k: &str, v: impl Into<Value>) -> Self {
        self.fields.insert(k.to_string(), v.into());
        self
    }
}

enum Msg {
    Event(AuditEvent),
    Flush(oneshot::Sender<()>),
}

/// Handle to the audit writer.
pub struct Audit {
    tx: mpsc::Sender<Msg>,
    pub queued: Arc<AtomicU64>,
    pub waited: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

impl Audit {
    /// Start the writer task for `cfg.audit_file`.
    pub fn start(cfg: &Config, db: Db) -> anyhow::Result<Audit> {
        let path = cfg.audit_file.clone();
        let prev = last_hash(&path)?;
        let (tx, rx) = mpsc::channel(cfg.audit.queue_capacity.max(16));
        let written = Arc::new(AtomicU64::new(0));
        let queued = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(path, prev, rx, db, written.clone(), queued.clone()));
        Ok(Audit {
            tx,
            queued,
            waited: Arc::new(AtomicU64::new(0)),
            written,
        })
    }

    /// Hand an event to the writer. Waits for room when the queue is full.
    pub async fn record(&self, ev: AuditEvent) {
        self.queued.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(Msg::Event(ev)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(m)) => {
                self.waited.fetch_add(1, Ordering::Relaxed);
                if self.tx.send(m).await.is_err() {
                    tracing::error!("audit writer is gone; event lost");
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!("audit writer is gone; event lost");
            }
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

async fn writer(
    path: PathBuf,
    mut prev: String,
    mut rx: mpsc::Receiver<Msg>,
    db: Db,
    written: Arc<AtomicU64>,
    queued: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(1024);
    loop {
        batch.clear();
        if rx.recv_many(&mut batch, 4096).await == 0 {
            return;
        }
        let mut lines = Vec::new();
        let mut flushes = Vec::new();
        for m in batch.drain(..) {
            match m {
                Msg::Event(ev) => {
                    let (line, hash) = render(&ev, &prev);
                    prev = hash;
                    lines.push((ev, line));
                }
                Msg::Flush(done) => flushes.push(done),
            }
        }
        if !lines.is_empty() {
            let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
            let p = path.clone();
            let res = tokio::task::spawn_blocking(move || append(&p, text.as_bytes())).await;
            if !matches!(res, Ok(Ok(()))) {
                tracing::error!(file = %path.display(), "cannot append to the audit log");
            }
            if let Err(e) = store_lines(&db, &lines).await {
                tracing::error!(error = %e, "cannot store audit events in the database");
            }
            written.fetch_add(lines.len() as u64, Ordering::Relaxed);
            queued.fetch_sub(lines.len() as u64, Ordering::Relaxed);
        }
        for f in flushes {
            let _ = f.send(());
        }
    }
}

fn append(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.flush()
}

async fn store_lines(db: &Db, lines: &[(AuditEvent, String)]) -> crate::store::Result<()> {
    let mut tx = db.pool.begin().await?;
    for (ev, line) in lines {
        let ts_ms = crate::store::now_ms();
        sqlx::query(
            "INSERT INTO audit_events (ts, ts_ms, event_type, request_id, ip, user_id, line) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(crate::store::rfc3339(ts_ms))
        .bind(ts_ms)
        .bind(ev.event_type)
        .bind(&ev.request_id)
        .bind(&ev.ip)
        .bind(&ev.user_id)
        .bind(line)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Serialize one event chained to `prev`; returns the line and its hash.
pub fn render(ev: &AuditEvent, prev: &str) -> (String, String) {
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        crate::store::rfc3339(crate::store::now_ms()).into(),
    );
    obj.insert("event_type".into(), ev.event_type.into());
    obj.insert("request_id".into(), ev.request_id.clone().into());
    obj.insert("ip".into(), ev.ip.clone().into());
    obj.insert("user_id".into(), ev.user_id.clone().into());
    for (k, v) in &ev.fields {
        if !matches!(k.as_str(), "prev_hash" | "hash" | "ts" | "event_type") {
            obj.insert(k.clone(), v.clone());
        }
    }
    obj.insert("prev_hash".into(), prev.into());
    let body = Value::Object(obj).to_string();
    let hash = hex::encode(Sha256::digest(body.as_bytes()));
    let line = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    (line, hash)
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
        if hex::encode(Sha256::digest(body.as_bytes())) != hash {
            return Err(ChainError::BadHash { line: no });
        }
        if v.get("prev_hash").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(ChainError::BadLink { line: no });
        }
        prev = hash.to_string();
    }
    Ok(prev)
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
