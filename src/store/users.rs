//! The `users` table.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{col, json_list, Db, Result};

/// A user row.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub email: String,
    pub password_hash: Option<String>,
    pub roles: Vec<String>,
    pub created_at: i64,
    pub tokens_valid_after: i64,
}

fn from_row(r: &AnyRow) -> Result<User> {
    Ok(User {
        id: col(r, "id")?,
        username: col(r, "username")?,
        email: col(r, "email")?,
        password_hash: col(r, "password_hash")?,
        roles: json_list(&col::<String>(r, "roles")?)?,
        created_at: col(r, "created_at")?,
        tokens_valid_after: col(r, "tokens_valid_after")?,
    })
}

const COLUMNS: &str = "id, username, email, password_hash, roles, created_at, tokens_valid_after";

pub async fn count(db: &Db) -> Result<i64> {
    let row = sqlx::query("SELECT COUNT(*) AS n FROM users")
        .fetch_one(&db.pool)
        .await?;
    col(&row, "n")
}

/// Insert a user unless one whose name differs only in letter case exists
/// (`Ok(false)` then): `Admin` next to `admin` would be a look-alike
/// account. Two creations racing on PostgreSQL can both pass the check;
/// the unique index on `lower(username)` then refuses the second (a unique
/// violation, which callers answer as taken).
pub async fn insert(db: &Db, u: &User) -> Result<bool> {
    insert_on(&db.pool, u).await
}

/// [`insert`] on a given connection or transaction.
pub async fn insert_on<'e, E>(ex: E, u: &User) -> Result<bool>
where
    E: sqlx::Executor<'e, Database = sqlx::Any>,
{
    let done = sqlx::query(
        "INSERT INTO users (id, username, email, password_hash, roles, created_at, tokens_valid_after) \
         SELECT $1, $2, $3, $4, $5, $6, $7 \
         WHERE NOT EXISTS (SELECT 1 FROM users WHERE lower(username) = lower($2))",
    )
    .bind(&u.id)
    .bind(&u.username)
    .bind(&u.email)
    .bind(&u.password_hash)
    .bind(serde_json::to_string(&u.roles).unwrap_or_else(|_| "[]".into()))
    .bind(u.created_at)
    .bind(u.tokens_valid_after)
    .execute(ex)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn by_id(db: &Db, id: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE id = $1");
    let row = sqlx::query(&sql).bind(id).fetch_optional(&db.pool).await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn by_username(db: &Db, username: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE username = $1");
    let row = sqlx::query(&sql)
        .bind(username)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The user whose name equals `username` up to letter case (names are
/// unique up to letter case, so there is at most one).
pub async fn by_username_any_case(db: &Db, username: &str) -> Result<Option<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users WHERE lower(username) = lower($1)");
    let row = sqlx::query(&sql)
        .bind(username)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(db: &Db) -> Result<Vec<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users ORDER BY created_at, id");
    let rows = sqlx::query(&sql).fetch_all(&db.pool).await?;
    rows.iter().map(from_row).collect()
}

/// Set a user's password hash; JWTs issued before `tokens_valid_after`
/// (ms) stop working. `false` when there is no such user.
pub async fn set_password(
    db: &Db,
    id: &str,
    password_hash: &str,
    tokens_valid_after: i64,
) -> Result<bool> {
    let r =
        sqlx::query("UPDATE users SET password_hash = $1, tokens_valid_after = $2 WHERE id = $3")
            .bind(password_hash)
            .bind(tokens_valid_after)
            .bind(id)
            .execute(&db.pool)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// `roles` (a JSON list) holds `"admin"`.
const ADMIN_LIKE: &str = "%\"admin\"%";

/// The oldest user holding the `admin` role (the bootstrap admin).
pub async fn first_admin(db: &Db) -> Result<Option<User>> {
    let sql =
        format!("SELECT {COLUMNS} FROM users WHERE roles LIKE $1 ORDER BY created_at, id LIMIT 1");
    let row = sqlx::query(&sql)
        .bind(ADMIN_LIKE)
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// What [`delete`] did.
#[derive(Debug, Clone)]
pub enum Deleted {
    /// Deleted; the tasks it left, as stored now (for their events).
    Yes(super::tasks::Released),
    NotFound,
    /// The user is the last one holding the `admin` role: kept.
    LastAdmin,
}

/// Delete a user and their keys, unless they are the last admin; the
/// tasks they held go back to the queue, their unfinished ones are
/// cancelled ([`super::tasks::release_user`]). One transaction that first
/// takes the admins' rows for writing (a no-op UPDATE: row locks on
/// PostgreSQL, the write lock on SQLite), so concurrent deletions of
/// different admins are counted one after the other: counted side by
/// side, each saw another admin left and together they removed every one.
///
/// The user's row is deleted *before* its tasks are released: on
/// PostgreSQL the DELETE holds the row `FOR UPDATE`, which waits for a
/// task creation or claim of that user in flight (they hold it `FOR KEY
/// SHARE`, see `super::tasks`), and the release's statements, which take
/// their snapshots afterwards, see what those wrote; a creation or claim
/// that comes later finds no user and writes nothing. On SQLite the whole
/// transaction holds the one write lock. Either way no unfinished task is
/// owned or held by the user once this returns.
pub async fn delete(db: &Db, id: &str) -> Result<Deleted> {
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE users SET roles = roles WHERE roles LIKE $1")
        .bind(ADMIN_LIKE)
        .execute(&mut *tx)
        .await?;
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM users WHERE id = $1), \
                (SELECT COUNT(*) FROM users WHERE id = $2 AND roles LIKE $3), \
                (SELECT COUNT(*) FROM users WHERE roles LIKE $4)",
    )
    .bind(id)
    .bind(id)
    .bind(ADMIN_LIKE)
    .bind(ADMIN_LIKE)
    .fetch_one(&mut *tx)
    .await?;
    let (exists, is_admin, admins): (i64, i64, i64) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
    if exists == 0 {
        return Ok(Deleted::NotFound);
    }
    if is_admin > 0 && admins <= 1 {
        return Ok(Deleted::LastAdmin);
    }
    let gone = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    if gone.rows_affected() == 0 {
        // deleted meanwhile by a concurrent deletion (PostgreSQL)
        return Ok(Deleted::NotFound);
    }
    sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    let released = super::tasks::release_user(&mut tx, id, super::now_ms()).await?;
    tx.commit().await?;
    // rows kept as they were before the updates
    if let Some(cache) = &db.tasks {
        cache.clear();
    }
    Ok(Deleted::Yes(released))
}
