//! The `audit_events` table, read side (the writer lives in
//! `monitoring::audit`).

use super::{col, Db, Result};

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

/// Rows stored (tests and `frenly check`).
pub async fn count(db: &Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM audit_events")
        .fetch_one(&db.pool)
        .await?;
    col::<i64>(&row, "n")
}
