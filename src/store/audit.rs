//! The `audit_events` table. `monitoring::audit` renders and chains the
//! lines on its own thread; [`store_blocking`] stores each batch in one
//! transaction.

use super::{col, Db, Result, StoreError};

/// One audit line as stored, with the columns it is filtered by.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub ts: String,
    pub ts_ms: i64,
    pub event_type: &'static str,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    pub line: String,
}

/// The head of every audit INSERT (the columns of [`AuditRecord`]).
macro_rules! insert_head {
    () => {
        "INSERT INTO audit_events (ts, ts_ms, event_type, request_id, ip, user_id, line)"
    };
}

/// Insert one row (prepared by the group writer).
pub(super) const INSERT: &str = concat!(insert_head!(), " VALUES ($1, $2, $3, $4, $5, $6, $7)");

/// Columns of an audit row: the parameters each row binds.
const COLUMNS: usize = 7;

/// Rows per INSERT statement ([`COLUMNS`] parameters each), on the pool and in the
/// group writer: SQLite runs each statement's bookkeeping once (on this
/// `AUTOINCREMENT` table, a read and a rewrite of `sqlite_sequence`), not
/// once per row.
pub(super) const CHUNK: usize = 16;

/// Insert [`CHUNK`] rows (prepared by the group writer).
pub(super) static INSERT_CHUNK: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::insert_values_sql(insert_head!(), CHUNK, COLUMNS));

impl AuditRecord {
    /// Bind this row as the `nth` row of `stmt` (0-based; [`COLUMNS`] parameters a row).
    pub(super) fn bind(
        &self,
        stmt: &mut rusqlite::Statement<'_>,
        nth: usize,
    ) -> rusqlite::Result<()> {
        let at = nth * COLUMNS;
        stmt.raw_bind_parameter(at + 1, &self.ts)?;
        stmt.raw_bind_parameter(at + 2, self.ts_ms)?;
        stmt.raw_bind_parameter(at + 3, self.event_type)?;
        stmt.raw_bind_parameter(at + 4, &self.request_id)?;
        stmt.raw_bind_parameter(at + 5, &self.ip)?;
        stmt.raw_bind_parameter(at + 6, &self.user_id)?;
        stmt.raw_bind_parameter(at + 7, &self.line)
    }
}

/// How long one batch of audit rows waits for the database (PostgreSQL).
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Store `rows` in one transaction, blocking the calling thread (the audit
/// writer's own; never a runtime worker): on an SQLite file through the
/// group-commit writer ([`super::group`]), on PostgreSQL through the pool,
/// driven by `rt`, for [`POOL_WAIT`] at most. On failure the rows come
/// back with the error.
pub fn store_blocking(
    db: &Db,
    rt: &tokio::runtime::Handle,
    rows: Vec<AuditRecord>,
) -> super::group::AuditResult {
    match &db.writer {
        Some(w) => w.store_audit_blocking(rows),
        // bounded: while the database is out of reach the writer keeps the
        // rows for its next batch instead of waiting the pool's 10 s on
        // each, so the file's lines behind them (and a shutdown's flush) do
        // not wait too
        // (the timer is made inside the runtime's context: made outside,
        // it panicked the writer thread)
        None => match rt
            .block_on(async { tokio::time::timeout(POOL_WAIT, store_pool(db, &rows)).await })
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((e, rows)),
            Err(_) => Err((StoreError::Sqlx(sqlx::Error::PoolTimedOut), rows)),
        },
    }
}

async fn store_pool(db: &Db, rows: &[AuditRecord]) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(CHUNK) {
        // One statement per chunk: only the placeholder list depends on the
        // chunk's length; every value is bound (never spliced into the SQL).
        let sql = super::insert_values_sql(insert_head!(), chunk.len(), COLUMNS);
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q
                .bind(r.ts.as_str())
                .bind(r.ts_ms)
                .bind(r.event_type)
                .bind(r.request_id.as_deref())
                .bind(r.ip.as_deref())
                .bind(r.user_id.as_deref())
                .bind(r.line.as_str());
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Filters of `GET /api/audit` (empty strings / zero mean "any").
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub event_type: Option<String>,
    pub since_ms: Option<i64>,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    /// Only rows with `seq` below this (the cursor), newest first.
    pub before_seq: Option<i64>,
    pub limit: i64,
}

const LIST: &str = "SELECT seq, line FROM audit_events \
     WHERE ($1 = '' OR event_type = $1) AND ts_ms >= $2 \
     AND ($3 = '' OR user_id = $3) AND ($4 = '' OR ip = $4) AND seq < $5 \
     ORDER BY seq DESC LIMIT $6";

/// `(seq, line)` rows matching `f`, newest first.
pub async fn list(db: &Db, f: &AuditFilter) -> Result<Vec<(i64, String)>> {
    let rows = sqlx::query(LIST)
        .bind(f.event_type.clone().unwrap_or_default())
        .bind(f.since_ms.unwrap_or(i64::MIN))
        .bind(f.user_id.clone().unwrap_or_default())
        .bind(f.ip.clone().unwrap_or_default())
        .bind(f.before_seq.unwrap_or(i64::MAX))
        .bind(f.limit)
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((col::<i64>(r, "seq")?, col::<String>(r, "line")?)))
        .collect()
}

/// The last line stored, if any: where the file's chain goes on when the
/// file is found absent or empty at start.
pub async fn last_line(db: &Db) -> Result<Option<String>> {
    let row = sqlx::query("SELECT line FROM audit_events ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&db.pool)
        .await?;
    row.map(|r| col::<String>(&r, "line")).transpose()
}

/// The chain links (`prev_hash`, `hash`) of the newest `limit` rows, newest
/// first. Every line ends with `,"prev_hash":"<64 hex>","hash":"<64 hex>"}`
/// (`monitoring::audit::render`), so the two are cut from the line's end in
/// SQL (ASCII: characters and bytes agree) rather than sent whole. A row
/// that is not such a line is left out.
pub async fn recent_links(db: &Db, limit: i64) -> Result<Vec<(String, String)>> {
    const LINKS: &str = "SELECT substr(line, length(line) - 139, 64) AS prev, \
         substr(line, length(line) - 65, 64) AS hash FROM audit_events \
         ORDER BY seq DESC LIMIT $1";
    let rows = sqlx::query(LINKS).bind(limit).fetch_all(&db.pool).await?;
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    let mut links = Vec::with_capacity(rows.len());
    for r in &rows {
        let (prev, hash) = (col::<String>(r, "prev")?, col::<String>(r, "hash")?);
        if hex(&prev) && hex(&hash) {
            links.push((prev, hash));
        }
    }
    Ok(links)
}

/// Does any stored row (not only the newest [`recent_links`]) have this
/// `hash`? One pass over the table (no index holds the hash): only asked
/// when none of a file's lines is among the newest rows (an instance idle
/// while others on a shared PostgreSQL wrote more than that window).
pub async fn holds_hash(db: &Db, hash: &str) -> Result<bool> {
    const FIND: &str = "SELECT COUNT(*) AS n FROM audit_events \
         WHERE substr(line, length(line) - 65, 64) = $1";
    let row = sqlx::query(FIND).bind(hash).fetch_one(&db.pool).await?;
    Ok(col::<i64>(&row, "n")? > 0)
}

/// Rows stored (tests and `frenly check`).
pub async fn count(db: &Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_events")
        .fetch_one(&db.pool)
        .await?;
    col::<i64>(&row, "n")
}
