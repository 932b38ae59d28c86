//! The `incidents` table: detected incidents and the response taken.

use super::{col, json_list, Db, Result, StoreError};

/// A stored incident.
#[derive(Debug, Clone)]
pub struct IncidentRow {
    pub id: String,
    pub kind: String,
    pub ip: Option<String>,
    pub user_id: Option<String>,
    /// A JSON object.
    pub details: serde_json::Value,
    /// The actions taken (`ban`, `audit`, `alert`, ...).
    pub actions: Vec<String>,
    pub created_at: i64,
}

pub async fn insert(db: &Db, row: &IncidentRow) -> Result<()> {
    insert_many(db, std::slice::from_ref(row)).await
}

/// Store `rows` in one transaction (multi-row statements of at most 64).
pub async fn insert_many(db: &Db, rows: &[IncidentRow]) -> Result<()> {
    const COLS: usize = 7;
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(64) {
        let sql = super::insert_values_sql(
            "INSERT INTO incidents (id, kind, ip, user_id, details, action, created_at)",
            chunk.len(),
            COLS,
        );
        let mut q = sqlx::query(&sql);
        for row in chunk {
            q = q
                .bind(&row.id)
                .bind(&row.kind)
                .bind(&row.ip)
                .bind(&row.user_id)
                .bind(row.details.to_string())
                .bind(serde_json::to_string(&row.actions).unwrap_or_else(|_| "[]".into()))
                .bind(row.created_at);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Newest first. `kind` and `before_id` filter when non-empty (ids are
/// time-ordered, so `before_id` is the cursor).
pub async fn list(db: &Db, kind: &str, before_id: &str, limit: i64) -> Result<Vec<IncidentRow>> {
    let rows = sqlx::query(
        "SELECT id, kind, ip, user_id, details, action, created_at FROM incidents \
         WHERE ($1 = '' OR kind = $2) AND ($3 = '' OR id < $4) \
         ORDER BY id DESC LIMIT $5",
    )
    .bind(kind)
    .bind(kind)
    .bind(before_id)
    .bind(before_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            let details: String = col(r, "details")?;
            Ok(IncidentRow {
                id: col(r, "id")?,
                kind: col(r, "kind")?,
                ip: col(r, "ip")?,
                user_id: col(r, "user_id")?,
                details: serde_json::from_str(&details)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                actions: json_list(&col::<String>(r, "action")?)?,
                created_at: col(r, "created_at")?,
            })
        })
        .collect()
}
