//! The `api_keys` table. Only SHA-256 hashes of keys are stored.

use sqlx::any::AnyRow;

use super::{col, json_list, Db, Result};

/// A key joined with its owner.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub user_id: String,
    pub username: String,
    pub user_roles: Vec<String>,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub old_valid_until: Option<i64>,
    /// Did the lookup match the previous (rotated-out) secret?
    pub matched_old: bool,
}

/// A key to insert.
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    pub id: &'a str,
    pub user_id: &'a str,
    pub name: &'a str,
    pub key_hash: &'a str,
    pub permissions: &'a [String],
    pub created_at: i64,
    pub expires_at: i64,
}

const SELECT: &str = "SELECT k.id, k.user_id, u.username, u.roles, k.name, k.permissions, \
     k.created_at, k.expires_at, k.revoked_at, k.last_used_at, k.old_valid_until, \
     k.key_hash \
     FROM api_keys k JOIN users u ON u.id = k.user_id";

fn from_row(r: &AnyRow, hash: Option<&str>) -> Result<KeyRow> {
    let key_hash: String = col(r, "key_hash")?;
    Ok(KeyRow {
        id: col(r, "id")?,
        user_id: col(r, "user_id")?,
        username: col(r, "username")?,
        user_roles: json_list(&col::<String>(r, "roles")?)?,
        name: col(r, "name")?,
        permissions: json_list(&col::<String>(r, "permissions")?)?,
        created_at: col(r, "created_at")?,
        expires_at: col(r, "expires_at")?,
        revoked_at: col(r, "revoked_at")?,
        last_used_at: col(r, "last_used_at")?,
        old_valid_until: col(r, "old_valid_until")?,
        matched_old: hash.is_some_and(|h| h != key_hash),
    })
}

pub async fn insert(db: &Db, k: &NewKey<'_>) -> Result<()> {
    insert_on(&db.pool, k).await
}

/// [`insert`] on a given connection or transaction.
pub async fn insert_on<'e, E>(ex: E, k: &NewKey<'_>) -> Result<()>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    sqlx::query(
        "INSERT INTO api_keys (id, user_id, name, key_hash, permissions, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(k.id)
    .bind(k.user_id)
    .bind(k.name)
    .bind(k.key_hash)
    .bind(serde_json::to_string(k.permissions).unwrap_or_else(|_| "[]".into()))
    .bind(k.created_at)
    .bind(k.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Find a key by the hash of its current or (rotated-out) previous secret.
pub async fn find_by_hash(db: &Db, hash: &str) -> Result<Option<KeyRow>> {
    let sql = format!("{SELECT} WHERE k.key_hash = $1 OR k.old_key_hash = $2");
    let row = sqlx::query(&sql)
        .bind(hash)
        .bind(hash)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(|r| from_row(r, Some(hash))).transpose()
}

pub async fn by_id(db: &Db, id: &str) -> Result<Option<KeyRow>> {
    let sql = format!("{SELECT} WHERE k.id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    row.as_ref().map(|r| from_row(r, None)).transpose()
}

/// Keys of one user, or all keys (`None`).
pub async fn list(db: &Db, user_id: Option<&str>) -> Result<Vec<KeyRow>> {
    let rows = match user_id {
        Some(u) => {
            let sql = format!("{SELECT} WHERE k.user_id = $1 ORDER BY k.created_at, k.id");
            sqlx::query(&sql).bind(u).fetch_all(&db.pool).await?
        }
        None => {
            let sql = format!("{SELECT} ORDER BY k.created_at, k.id");
            sqlx::query(&sql).fetch_all(&db.pool).await?
        }
    };
    rows.iter().map(|r| from_row(r, None)).collect()
}

/// Revoke a key; false if it did not exist or was already revoked.
pub async fn revoke(db: &Db, id: &str, now: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}

/// Replace a key's secret, keeping the old one valid until `old_valid_until`,
/// if the key is not revoked and was not rotated since it was read (its
/// `old_valid_until` still `read_old_valid_until`): two rotations at once
/// would otherwise both answer with a secret, the first one's already dead.
pub async fn rotate(
    db: &Db,
    id: &str,
    new_hash: &str,
    old_valid_until: i64,
    read_old_valid_until: Option<i64>,
    expires_at: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE api_keys SET old_key_hash = key_hash, old_valid_until = $1, key_hash = $2, \
         expires_at = $5 \
         WHERE id = $3 AND revoked_at IS NULL AND COALESCE(old_valid_until, -1) = $4",
    )
    .bind(old_valid_until)
    .bind(new_hash)
    .bind(id)
    .bind(read_old_valid_until.unwrap_or(-1))
    .bind(expires_at)
    .execute(&db.pool)
    .await?;
    Ok(r.rows_affected() > 0)
}

/// Record a use (best effort, coarse-grained by the caller).
pub async fn touch(db: &Db, id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2")
        .bind(now)
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(())
}
