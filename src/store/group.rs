//! Group commit of task creations on SQLite.
//!
//! SQLite commits one transaction at a time, and each commit (a WAL append,
//! its bookkeeping and now and then a checkpoint) costs far more than the row
//! it stores. Concurrent `POST /api/tasks` requests therefore hand their row
//! to one writer task, which stores everything waiting in one transaction
//! (multi-row INSERTs) and answers each request after the commit. A batch
//! gathers only what arrived while the previous one committed: no timer, no
//! added delay when the server is idle.
//!
//! Durability is the same as one transaction per task: a request gets its
//! `201` only after the transaction holding its row has committed (WAL,
//! `synchronous = NORMAL`: survives a process crash). If a batch fails, each
//! of its rows is retried alone, so one bad row fails only its own request.

use tokio::sync::{mpsc, oneshot};

use super::tasks::{self, TaskRow};
use super::{Db, Result, StoreError};

/// Rows per INSERT statement (11 parameters each; SQLite looks parameters
/// up by name, so smaller statements bind faster).
const ROWS_PER_STATEMENT: usize = 8;

/// Most rows in one transaction.
const MAX_BATCH: usize = 256;

type Job = (TaskRow, oneshot::Sender<Result<()>>);

/// Handle to the writer task (cheap to clone).
#[derive(Debug, Clone)]
pub struct TaskInserts {
    tx: mpsc::Sender<Job>,
}

impl TaskInserts {
    /// Start the writer on the current runtime, storing through `db`'s pool
    /// (`db` must not hold a `TaskInserts` itself: the writer stops when the
    /// last handle is dropped).
    pub fn start(db: &Db) -> TaskInserts {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(writer(db.clone(), rx));
        TaskInserts { tx }
    }

    /// Store `row`; returns once its transaction has committed.
    pub async fn insert(&self, row: TaskRow) -> Result<()> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send((row, done))
            .await
            .map_err(|_| StoreError::Corrupt("the task writer has stopped".into()))?;
        wait.await
            .map_err(|_| StoreError::Corrupt("the task writer has stopped".into()))?
    }
}

async fn writer(db: Db, mut rx: mpsc::Receiver<Job>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let rows: Vec<&TaskRow> = batch.iter().map(|(r, _)| r).collect();
        match insert_many(&db, &rows).await {
            Ok(()) => {
                for (_, done) in batch.drain(..) {
                    let _ = done.send(Ok(()));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some((_, done)) = batch.pop() {
                    let _ = done.send(Err(e));
                }
            }
            Err(_) => {
                for (row, done) in batch.drain(..) {
                    let _ = done.send(insert_many(&db, &[&row]).await);
                }
            }
        }
    }
}

/// Insert `rows` in one transaction.
async fn insert_many(db: &Db, rows: &[&TaskRow]) -> Result<()> {
    let mut tx = db.pool.begin().await?;
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_sql(chunk.len());
        let mut q = sqlx::query(&sql);
        for t in chunk {
            q = tasks::bind_row(q, t);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// `INSERT INTO tasks (...) VALUES ($1..$11), ($12..$22), ...` for `n` rows.
fn insert_sql(n: usize) -> String {
    super::insert_values_sql(&format!("INSERT INTO tasks ({})", tasks::COLUMNS), n, 11)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::insert_sql;
    use crate::store::tasks::{self, TaskRow};
    use crate::store::Db;

    fn row(id: &str) -> TaskRow {
        TaskRow {
            id: id.into(),
            owner_id: "u".into(),
            title: "t".into(),
            description: None,
            priority: 1,
            status: "queued".into(),
            input: None,
            result: None,
            agent_id: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Concurrent creations share transactions, every one is stored, and a
    /// row the database refuses fails only its own request.
    #[tokio::test]
    async fn batches_store_every_row_and_fail_only_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let db = Db::connect(&url, 1, 1).await.unwrap();
        assert!(db.task_inserts.is_some());
        tasks::insert(&db, &row("dup")).await.unwrap();
        let mut joins = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            let id = if i == 77 {
                "dup".to_string()
            } else {
                format!("t{i}")
            };
            joins.push(tokio::spawn(
                async move { tasks::insert(&db, &row(&id)).await },
            ));
        }
        let mut failed = Vec::new();
        for (i, j) in joins.into_iter().enumerate() {
            if let Err(e) = j.await.unwrap() {
                assert!(e.is_unique_violation(), "{e}");
                failed.push(i);
            }
        }
        assert_eq!(failed, vec![77]);
        let counts = tasks::counts(&db).await.unwrap();
        assert_eq!(counts.get("queued").copied(), Some(200));
    }

    #[test]
    fn placeholders_are_numbered_across_rows() {
        let sql = insert_sql(2);
        assert!(sql.ends_with(
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11), \
             ($12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)"
        ));
    }
}
