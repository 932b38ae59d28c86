//! Reads by primary key on SQLite, without a thread hand-off.
//!
//! sqlx runs every SQLite statement on the connection's worker thread: two
//! context switches and a channel round trip per statement, which cost more
//! than the lookup itself. The hottest read, a task by id (clients poll
//! their tasks), runs here instead, inline on the caller's thread, on
//! separate read-only connections to the same file (`PRAGMA query_only`):
//! in WAL mode readers never wait for the writer and see every transaction
//! committed before the statement starts, so a task is readable as soon as
//! its `POST` answered.
//!
//! Guarantee: only constant, prepared statements with bound values; the
//! connection refuses writes. Cost: a lookup holds the async worker for the
//! few microseconds a primary-key read takes from SQLite's page cache (a
//! cold page means a disk read on that worker). Anything that can scan
//! stays on sqlx.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::tasks::{self, TaskRow};
use super::{Result, StoreError};

/// A few read-only connections (one per core), handed out round robin.
pub struct Reader {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reader")
            .field("connections", &self.conns.len())
            .finish()
    }
}

impl Reader {
    /// Open `n` read-only connections to the database file at `path`.
    pub fn open(path: &Path, n: usize) -> Result<Reader> {
        let conns = (0..n.max(1))
            .map(|_| {
                let c = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                c.execute_batch("PRAGMA query_only = ON; PRAGMA busy_timeout = 10000;")?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Reader {
            conns,
            next: AtomicUsize::new(0),
        })
    }

    fn conn(&self) -> Result<parking_lot::MutexGuard<'_, Connection>> {
        let n = self.conns.len().max(1);
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Some(c) = self.conns.get((start + i) % n).and_then(Mutex::try_lock) {
                return Ok(c);
            }
        }
        // every connection busy: wait for the one in turn
        self.conns
            .get(start % n)
            .map(Mutex::lock)
            .ok_or_else(|| StoreError::Corrupt("no read connection".into()))
    }

    /// The task with this id, if any.
    pub fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(tasks::BY_ID)?;
        let row = stmt
            .query_row([id], |r| {
                Ok(TaskRow {
                    id: r.get(0)?,
                    owner_id: r.get(1)?,
                    title: r.get(2)?,
                    description: r.get(3)?,
                    priority: r.get(4)?,
                    status: r.get(5)?,
                    input: r.get(6)?,
                    result: r.get(7)?,
                    agent_id: r.get(8)?,
                    created_at: r.get(9)?,
                    updated_at: r.get(10)?,
                })
            })
            .optional()?;
        Ok(row)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn db_with_task(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("t.db");
        let w = Connection::open(&path).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE tasks (id TEXT PRIMARY KEY, owner_id TEXT, title TEXT,
               description TEXT, priority INTEGER, status TEXT, input TEXT, result TEXT,
               agent_id TEXT, created_at INTEGER, updated_at INTEGER);
             INSERT INTO tasks VALUES ('t1', 'u1', 'x', NULL, 1, 'queued', 'in', NULL, NULL, 5, 6);",
        )
        .unwrap();
        path
    }

    #[test]
    fn reads_committed_rows_and_refuses_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = db_with_task(dir.path());
        let r = Reader::open(&path, 2).unwrap();
        let t = r.task("t1").unwrap().unwrap();
        assert_eq!(
            (t.owner_id.as_str(), t.priority, t.updated_at),
            ("u1", 1, 6)
        );
        assert!(r.task("nope").unwrap().is_none());
        // a row committed by another connection after the reader opened
        Connection::open(&path)
            .unwrap()
            .execute_batch("UPDATE tasks SET status = 'done' WHERE id = 't1'")
            .unwrap();
        assert_eq!(r.task("t1").unwrap().unwrap().status, "done");
        // the read connections are query-only
        let c = r.conn().unwrap();
        assert!(c.execute_batch("DELETE FROM tasks").is_err());
        drop(c);
        assert!(r.task("t1").unwrap().is_some());
    }
}
