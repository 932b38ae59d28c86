//! The `users` table.

use sqlx::any::AnyRow;

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
    .execute(&db.pool)
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

pub async fn list(db: &Db) -> Result<Vec<User>> {
    let sql = format!("SELECT {COLUMNS} FROM users ORDER BY created_at, id");
    let rows = sqlx::query(&sql).fetch_all(&db.pool).await?;
    rows.iter().map(from_row).collect()
}

/// The oldest user holding the `admin` role (the bootstrap admin).
pub async fn first_admin(db: &Db) -> Result<Option<User>> {
    let sql =
        format!("SELECT {COLUMNS} FROM users WHERE roles LIKE $1 ORDER BY created_at, id LIMIT 1");
    let row = sqlx::query(&sql)
        .bind("%\"admin\"%")
        .fetch_optional(&db.pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Delete a user (their keys go with them by cascade).
pub async fn delete(db: &Db, id: &str) -> Result<bool> {
    sqlx::query("DELETE FROM api_keys WHERE user_id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    let r = sqlx::query("DELETE FROM users WHERE id = $1")
        .bind(id)
        .execute(&db.pool)
        .await?;
    Ok(r.rows_affected() > 0)
}
