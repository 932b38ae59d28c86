//! The `key_fingerprints` table: which encryption key each key id names
//! for every instance sharing this database (`data::check_keyring_reads_the_data`).

use super::{col, Db, Result};

/// Record `ours` (key id, fingerprint) where the id is not recorded yet,
/// then return every recorded pair. The first instance to use an id names
/// its key; later ones compare against it.
pub async fn register(db: &Db, ours: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let now = super::now_ms();
    for (id, fp) in ours {
        sqlx::query(
            "INSERT INTO key_fingerprints (key_id, fingerprint, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(id)
        .bind(fp)
        .bind(now)
        .execute(&db.pool)
        .await?;
    }
    let rows = sqlx::query("SELECT key_id, fingerprint FROM key_fingerprints")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| Ok((col(r, "key_id")?, col(r, "fingerprint")?)))
        .collect()
}

/// Replace the recorded fingerprint of `id` (a keyring regenerated on a
/// lone SQLite instance before any value used the key).
pub async fn replace(db: &Db, id: &str, fp: &str) -> Result<()> {
    sqlx::query("UPDATE key_fingerprints SET fingerprint = $1, created_at = $2 WHERE key_id = $3")
        .bind(fp)
        .bind(super::now_ms())
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
