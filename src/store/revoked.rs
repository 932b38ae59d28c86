//! The `revoked_tokens` table: `jti`s of logged-out JWTs until they expire.

use super::{col, Db, Result};

/// Record a revoked `jti` (idempotent).
pub async fn insert(db: &Db, jti: &str, expires_at: i64) -> Result<()> {
    let r = sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2)")
        .bind(jti)
        .bind(expires_at)
        .execute(&db.pool)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(e) => {
            let e = super::StoreError::from(e);
            if e.is_unique_violation() {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Every revoked `jti` that has not expired yet, with its expiry.
pub async fn live(db: &Db, now: i64) -> Result<Vec<(String, i64)>> {
    let rows = sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
        .bind(now)
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "jti")?, col(r, "expires_at")?)))
        .collect()
}

/// Is this `jti` revoked?
pub async fn contains(db: &Db, jti: &str) -> Result<bool> {
    let row = sqlx::query("SELECT jti FROM revoked_tokens WHERE jti = $1")
        .bind(jti)
        .fetch_optional(&db.pool)
        .await?;
    Ok(row.is_some())
}

/// Forget entries whose tokens have expired anyway.
pub async fn prune(db: &Db, now: i64) -> Result<u64> {
    let r = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at <= $1")
        .bind(now)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected())
}
