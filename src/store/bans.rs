//! The `bans` table: one row per banned (or recently banned) address key.

use super::{col, Db, Result};

/// A stored ban (the key as written by `network::ban::key_string`).
#[derive(Debug, Clone)]
pub struct BanRow {
    pub ip: String,
    pub until_ms: i64,
    pub reason: String,
    pub created_at: i64,
    pub offences: i64,
}

/// Insert or replace the ban of `row.ip`.
pub async fn upsert(db: &Db, row: &BanRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO bans (ip, until_ms, reason, created_at, offences) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (ip) DO UPDATE SET until_ms = excluded.until_ms, reason = excluded.reason, \
         created_at = excluded.created_at, offences = excluded.offences",
    )
    .bind(&row.ip)
    .bind(row.until_ms)
    .bind(&row.reason)
    .bind(row.created_at)
    .bind(i32::try_from(row.offences).unwrap_or(i32::MAX))
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Remove the row of `ip`.
pub async fn delete(db: &Db, ip: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM bans WHERE ip = $1")
        .bind(ip)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Every row whose ban ended at or after `since_ms` (older ones are forgotten).
pub async fn load(db: &Db, since_ms: i64) -> Result<Vec<BanRow>> {
    let rows = sqlx::query(
        "SELECT ip, until_ms, reason, created_at, CAST(offences AS BIGINT) AS offences \
         FROM bans WHERE until_ms >= $1",
    )
    .bind(since_ms)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BanRow {
                ip: col(r, "ip")?,
                until_ms: col(r, "until_ms")?,
                reason: col(r, "reason")?,
                created_at: col(r, "created_at")?,
                offences: col(r, "offences")?,
            })
        })
        .collect()
}

/// Delete rows whose ban ended before `cutoff_ms`.
pub async fn prune(db: &Db, cutoff_ms: i64) -> Result<u64> {
    let r = sqlx::query("DELETE FROM bans WHERE until_ms < $1")
        .bind(cutoff_ms)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}
