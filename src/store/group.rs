//! Group commit of the hot writes on SQLite: task creations and audit rows.
//!
//! SQLite commits one transaction at a time, and each commit (a WAL append,
//! its bookkeeping and now and then a checkpoint) costs far more than the row
//! it stores; two connections writing at once also wait on each other's
//! lock. Concurrent `POST /api/tasks` requests and the audit writer therefore
//! hand their rows to one writer thread with its own connection, which
//! stores everything waiting in one transaction (prepared INSERTs run on
//! its own connection: no hand-off to sqlx's worker per statement; audit
//! rows 16 to a statement, see [`super::audit::CHUNK`]) and
//! answers each sender after the commit. A batch takes what arrived while
//! the previous one committed; when that previous batch held more than one
//! job (concurrent writers), the writer also waits for more, 100 µs at a
//! time while each wait brings some, 2 ms at most ([`gather`]). A lone
//! writer is never delayed: its job is committed as soon as it arrives.
//!
//! Durability is the same as one transaction per write: a request gets its
//! `201` (and the audit writer its acknowledgement) only after the
//! transaction holding its rows has committed (WAL, `synchronous = NORMAL`:
//! survives a process crash). If a batch fails, each job is retried alone,
//! so one bad row fails only its own request.
//!
//! A task row is inserted only if its owner still exists (the `EXISTS` in
//! `tasks::INSERT`, evaluated inside the batch's transaction, which holds
//! SQLite's one write lock): a batch that commits after a user deletion
//! stores none of that user's rows and answers their senders `false`; one
//! that commits before it is seen by the deletion's clean-up.

use std::sync::mpsc::{Receiver, SyncSender};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::audit::AuditRecord;
use super::tasks::{self, TaskRow};
use super::{Result, StoreError};

/// Most jobs in one transaction (an audit job is a whole batch of lines).
const MAX_BATCH: usize = 256;

/// One sender's rows, and where to answer once they are committed.
enum Job {
    Task(TaskRow, oneshot::Sender<Result<bool>>),
    Audit(Vec<AuditRecord>, oneshot::Sender<AuditResult>),
}

/// A batch of audit rows stored, or the error and the rows back (the
/// caller keeps them for its next batch).
pub type AuditResult = std::result::Result<(), (StoreError, Vec<AuditRecord>)>;

/// Handle to the writer thread (cheap to clone).
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

fn stopped() -> StoreError {
    StoreError::Corrupt("the SQLite writer has stopped".into())
}

impl Writer {
    /// Start the writer thread on its own connection `conn`, and its
    /// checkpointer on `checkpoints` (both from [`super::sqlite_writer`]);
    /// they stop when the last handle is dropped.
    pub fn start(conn: Connection, checkpoints: Connection) -> Result<Writer> {
        let spawn_failed =
            |e: std::io::Error| StoreError::Corrupt(format!("cannot start the SQLite writer: {e}"));
        // The writer never checkpoints itself (the fsyncs of a checkpoint
        // would stall every request waiting on its next commit); it nudges
        // the checkpointer after each commit instead.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // when the log starts over, a file grown past this is cut back
        conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
        let (kick, kicked) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("frenly-ckpt".into())
            .spawn(move || checkpointer(checkpoints, kicked))
            .map_err(spawn_failed)?;
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        std::thread::Builder::new()
            .name("frenly-sqlite".into())
            .spawn(move || run(conn, rx, kick))
            .map_err(spawn_failed)?;
        Ok(Writer { tx })
    }

    /// Store `row`; returns once its transaction has committed: `false`
    /// when its owner no longer exists (nothing stored).
    pub async fn insert_task(&self, row: TaskRow) -> Result<bool> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Job::Task(row, done))
            .await
            .map_err(|_| stopped())?;
        wait.await.map_err(|_| stopped())?
    }

    /// Store audit rows; blocks (the audit writer's own thread) until they
    /// are committed.
    pub fn store_audit_blocking(&self, rows: Vec<AuditRecord>) -> AuditResult {
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.tx.blocking_send(Job::Audit(rows, done)) {
            let rows = match job {
                Job::Audit(rows, _) => rows,
                Job::Task(..) => Vec::new(),
            };
            return Err((stopped(), rows));
        }
        wait.blocking_recv()
            .unwrap_or_else(|_| Err((stopped(), Vec::new())))
    }
}

/// How long one wait for more jobs lasts when writes are concurrent.
const GATHER_SLICE: Duration = Duration::from_micros(100);

/// The longest the writer lets jobs gather before it commits.
const GATHER_MAX: Duration = Duration::from_millis(2);

/// Move whatever is queued into `batch`, up to [`MAX_BATCH`] jobs.
fn take_waiting(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(job) => batch.push(job),
            Err(_) => break,
        }
    }
}

/// Let more jobs join `batch` before its commit: wait [`GATHER_SLICE`] at a
/// time while each wait brings some, for at most [`GATHER_MAX`] (`sleep`
/// is the wait; a parameter so the policy is tested without a clock).
///
/// Every commit rewrites the last page of each b-tree it touches (the tasks
/// table, its three indexes, the audit table) and their parents; taking
/// only what had queued during the previous commit, the writer committed
/// 2–3 tasks at a time under 64 concurrent clients, about three WAL frames
/// (six `pwrite`s) per 1 KB task whose row fills half a page.
fn gather(rx: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, mut sleep: impl FnMut(Duration)) {
    let until = Instant::now() + GATHER_MAX;
    while batch.len() < MAX_BATCH && Instant::now() < until {
        let before = batch.len();
        sleep(GATHER_SLICE);
        take_waiting(rx, batch);
        if batch.len() == before {
            break;
        }
    }
}

/// Take everything waiting (up to [`MAX_BATCH`] jobs) and store it in one
/// transaction; on failure retry each job alone. When the previous batch
/// held more than one job (writers are concurrent), [`gather`] first; a
/// lone writer commits at once, never delayed.
fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, kick: SyncSender<()>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut concurrent = false;
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        take_waiting(&mut rx, &mut batch);
        if concurrent {
            gather(&mut rx, &mut batch, std::thread::sleep);
        }
        concurrent = batch.len() > 1;
        match store(&mut conn, &batch) {
            Ok(stored) => {
                let _ = kick.try_send(());
                for (job, stored) in batch.drain(..).zip(stored) {
                    answer(job, Ok(stored));
                }
            }
            Err(e) if batch.len() == 1 => {
                if let Some(job) = batch.pop() {
                    answer(job, Err(e));
                }
            }
            Err(_) => {
                for job in batch.drain(..) {
                    let r = store(&mut conn, std::slice::from_ref(&job))
                        .map(|stored| stored.first().copied().unwrap_or(false));
                    answer(job, r);
                }
            }
        }
    }
}

/// How often at most the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(if cfg!(test) { 20 } else { 200 });

/// WAL frames (pages) past which the checkpointer restarts the log. Under
/// steady writes a `PASSIVE` checkpoint is always a few commits behind the
/// writer, and SQLite starts the log over only when every frame has been
/// copied: without a restart the WAL file grows for as long as the load
/// lasts (it reached 400 MB in 15 s of small GETs).
const RESTART_FRAMES: i64 = if cfg!(test) { 256 } else { 4096 };

/// Copy committed WAL frames into the database file, on a connection of its
/// own, at most every [`CHECKPOINT_EVERY`] while there are commits.
/// `PASSIVE` never blocks the writer or readers; frames it cannot copy yet
/// (a reader still uses them) wait for the next round. Once the log holds
/// [`RESTART_FRAMES`], a `RESTART` checkpoint waits for the writer's current
/// transaction and for readers of old frames, copies the rest and makes the
/// next commit start the log over: the WAL stays bounded (a pause of the
/// writer of one short checkpoint, every few rounds under heavy writes).
/// Durability is unchanged: a commit is in the WAL before its sender is
/// answered.
fn checkpointer(conn: Connection, kicked: Receiver<()>) {
    while kicked.recv().is_ok() {
        let restart = match checkpoint(&conn, Checkpoint::Passive) {
            Ok(wal_frames) => wal_frames >= RESTART_FRAMES,
            Err(e) => {
                tracing::warn!(error = %e, "WAL checkpoint failed; retrying after the next commit");
                false
            }
        };
        if restart {
            if let Err(e) = checkpoint(&conn, Checkpoint::Restart) {
                tracing::warn!(error = %e, "WAL restart failed; retrying after the next commit");
            }
        }
        std::thread::sleep(CHECKPOINT_EVERY);
    }
    // the writer is gone: leave the WAL checkpointed
    let _ = checkpoint(&conn, Checkpoint::Passive);
}

enum Checkpoint {
    Passive,
    Restart,
}

/// Run a checkpoint; returns the frames in the WAL.
fn checkpoint(conn: &Connection, mode: Checkpoint) -> rusqlite::Result<i64> {
    let sql = match mode {
        Checkpoint::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        Checkpoint::Restart => "PRAGMA wal_checkpoint(RESTART)",
    };
    conn.query_row(sql, [], |r| r.get(1))
}

/// Answer a job: for a task, whether its row was stored.
fn answer(job: Job, r: Result<bool>) {
    match job {
        Job::Task(_, done) => {
            let _ = done.send(r);
        }
        Job::Audit(rows, done) => {
            let _ = done.send(r.map(|_| ()).map_err(|e| (e, rows)));
        }
    }
}

/// Store every row of `jobs` in one transaction, one prepared statement
/// per table; per job, whether its rows were stored (a task whose owner no
/// longer exists is not).
fn store(conn: &mut Connection, jobs: &[Job]) -> Result<Vec<bool>> {
    let tx = conn.transaction()?;
    let mut stored = Vec::with_capacity(jobs.len());
    for job in jobs {
        match job {
            Job::Task(t, _) => {
                let n = tx
                    .prepare_cached(tasks::INSERT)?
                    .execute(rusqlite::params![
                        t.id,
                        t.owner_id,
                        t.title,
                        t.description,
                        t.priority,
                        t.status,
                        t.input,
                        t.result,
                        t.agent_id,
                        t.created_at,
                        t.updated_at
                    ])?;
                stored.push(n == 1);
            }
            Job::Audit(rows, _) => {
                // Whole chunks in one multi-row statement, the rest a row
                // at a time (two cached statements, whatever the count).
                let mut chunks = rows.chunks_exact(super::audit::CHUNK);
                if chunks.len() > 0 {
                    let mut stmt = tx.prepare_cached(&super::audit::INSERT_CHUNK)?;
                    for chunk in &mut chunks {
                        for (nth, r) in chunk.iter().enumerate() {
                            r.bind(&mut stmt, nth)?;
                        }
                        stmt.raw_execute()?;
                    }
                }
                let mut stmt = tx.prepare_cached(super::audit::INSERT)?;
                for r in chunks.remainder() {
                    r.bind(&mut stmt, 0)?;
                    stmt.raw_execute()?;
                }
                stored.push(true);
            }
        }
    }
    tx.commit()?;
    Ok(stored)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
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

    /// The user `u` every [`row`] belongs to (a task is stored only while
    /// its owner exists).
    async fn owner(db: &Db) {
        let u = crate::store::users::User {
            id: "u".into(),
            username: "owner".into(),
            email: "u@example.test".into(),
            password_hash: None,
            roles: vec!["user".into()],
            created_at: 1,
            tokens_valid_after: 0,
        };
        assert!(crate::store::users::insert(db, &u).await.unwrap());
    }

    /// Concurrent creations share transactions, every one is stored, a
    /// row the database refuses fails only its own request, and a row
    /// whose owner does not exist (deleted after its request was
    /// authenticated) is not stored and answered `false` in the same batch.
    #[tokio::test]
    async fn batches_store_every_row_and_fail_only_the_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("g.db").display());
        let db = Db::connect(&url, 1, 1).await.unwrap();
        assert!(db.writer.is_some());
        owner(&db).await;
        assert!(tasks::insert(&db, &row("dup")).await.unwrap());
        let mut joins = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            let mut r = row(&if i == 77 {
                "dup".to_string()
            } else {
                format!("t{i}")
            });
            if i % 50 == 3 {
                r.owner_id = "gone".into();
            }
            joins.push(tokio::spawn(async move { tasks::insert(&db, &r).await }));
        }
        let (mut failed, mut refused) = (Vec::new(), Vec::new());
        for (i, j) in joins.into_iter().enumerate() {
            match j.await.unwrap() {
                Ok(true) => {}
                Ok(false) => refused.push(i),
                Err(e) => {
                    assert!(e.is_unique_violation(), "{e}");
                    failed.push(i);
                }
            }
        }
        assert_eq!(failed, vec![77]);
        assert_eq!(refused, vec![3, 53, 103, 153]);
        let counts = tasks::counts(&db).await.unwrap();
        assert_eq!(counts.get("queued").copied(), Some(196));
    }

    /// An audit batch longer than a chunk is stored in whole multi-row
    /// statements and single rows: every row, in order (the hash chain is
    /// verified in `seq` order), each column bound to its own row.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audit_batches_keep_order_and_columns_across_chunks() {
        use crate::store::audit::{self, AuditFilter, AuditRecord};
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("a.db").display());
        let db = Db::connect(&url, 1, 1).await.unwrap();
        assert!(db.writer.is_some());
        let n = 2 * audit::CHUNK + 3;
        let rows: Vec<AuditRecord> = (0..n)
            .map(|i| AuditRecord {
                ts: format!("t{i}"),
                ts_ms: i as i64,
                event_type: if i % 2 == 0 { "even" } else { "odd" },
                request_id: Some(format!("r{i}")),
                ip: (i % 3 == 0).then(|| format!("10.0.0.{i}")),
                user_id: (i % 5 == 0).then(|| format!("u{i}")),
                line: format!("line {i}"),
            })
            .collect();
        let (d, rt) = (db.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || audit::store_blocking(&d, &rt, rows))
            .await
            .unwrap()
            .unwrap();
        let list = |f: AuditFilter| {
            let db = db.clone();
            async move {
                let mut rows = audit::list(&db, &AuditFilter { limit: 1000, ..f })
                    .await
                    .unwrap();
                rows.reverse();
                rows.into_iter().map(|(_, l)| l).collect::<Vec<_>>()
            }
        };
        let lines = |f: fn(usize) -> bool| {
            (0..n)
                .filter(|&i| f(i))
                .map(|i| format!("line {i}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(list(AuditFilter::default()).await, lines(|_| true));
        let odd = AuditFilter {
            event_type: Some("odd".into()),
            ..Default::default()
        };
        assert_eq!(list(odd).await, lines(|i| i % 2 == 1));
        let ip = AuditFilter {
            ip: Some("10.0.0.18".into()),
            ..Default::default()
        };
        assert_eq!(list(ip).await, lines(|i| i == 18));
        let user = AuditFilter {
            user_id: Some("u35".into()),
            since_ms: Some(30),
            ..Default::default()
        };
        assert_eq!(list(user).await, lines(|i| i == 35));
    }

    fn job(id: &str) -> super::Job {
        let (done, _) = tokio::sync::oneshot::channel();
        super::Job::Task(row(id), done)
    }

    /// While writers are concurrent, jobs that arrive during each wait join
    /// the batch; the first wait that brings none ends the gathering.
    #[test]
    fn gathering_takes_jobs_while_they_keep_arriving() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let mut batch = vec![job("first")];
        let mut waits = 0;
        super::gather(&mut rx, &mut batch, |d| {
            assert_eq!(d, super::GATHER_SLICE);
            waits += 1;
            // two jobs arrive during each of the first three waits
            if waits <= 3 {
                for i in 0..2 {
                    tx.try_send(job(&format!("w{waits}-{i}"))).unwrap();
                }
            }
        });
        assert_eq!(waits, 4, "one more wait, which brought nothing");
        assert_eq!(batch.len(), 7);
    }

    /// Gathering never waits past `GATHER_MAX` nor grows a batch past
    /// `MAX_BATCH`, however fast jobs keep coming.
    #[test]
    fn gathering_is_bounded_in_time_and_size() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4 * super::MAX_BATCH);
        let mut batch = vec![job("first")];
        let mut n = 0;
        super::gather(&mut rx, &mut batch, |_| {
            std::thread::sleep(std::time::Duration::from_micros(500));
            n += 1;
            let _ = tx.try_send(job(&format!("j{n}")));
        });
        assert_eq!(batch.len(), 1 + n, "every job that arrived was taken");
        assert!(n <= 4, "{n} waits of 0.5 ms or more within a 2 ms bound");

        let mut batch = vec![job("first")];
        super::gather(&mut rx, &mut batch, |_| {
            for i in 0..super::MAX_BATCH {
                let _ = tx.try_send(job(&format!("k{i}")));
            }
        });
        assert_eq!(batch.len(), super::MAX_BATCH);
    }

    /// Regression: under writes that never pause, the WAL grew without
    /// bound (PASSIVE checkpoints were always behind the writer, and the log
    /// only starts over when everything has been copied). With the restart
    /// it starts over again and again while the writes go on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stays_bounded_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.db");
        let wal = dir.path().join("w.db-wal");
        let db = Db::connect(&format!("sqlite://{}", file.display()), 1, 1)
            .await
            .unwrap();
        owner(&db).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let (db, stop) = (db.clone(), stop.clone());
            writers.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut r = row(&format!("w{w}-{i}"));
                    r.description = Some("x".repeat(2000));
                    assert!(tasks::insert(&db, &r).await.unwrap());
                    i += 1;
                }
            }));
        }
        // Two seconds of writes. A WAL that starts over gets new salts in its
        // header (bytes 16..24): count the distinct ones seen. (The file's
        // size is no measure: it keeps its high-water mark, and a starved
        // checkpointer in a busy test run lets that mark climb.)
        let mut salts = std::collections::HashSet::new();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until {
            if let Ok(bytes) = std::fs::read(&wal) {
                if let Some(salt) = bytes.get(16..24) {
                    salts.insert(salt.to_vec());
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        let db_len = std::fs::metadata(&file).unwrap().len();
        let threshold = super::RESTART_FRAMES as u64 * 4096;
        assert!(db_len >= 8 * threshold, "only {db_len} bytes written");
        eprintln!(
            "{} WAL restarts seen, {db_len} bytes written",
            salts.len().saturating_sub(1)
        );
        assert!(
            salts.len() >= 3,
            "the WAL started over {} times while {db_len} bytes were written",
            salts.len().saturating_sub(1)
        );
    }

    /// The writer never checkpoints; the checkpointer copies committed WAL
    /// frames into the database file while writes go on.
    #[tokio::test]
    async fn the_checkpointer_moves_commits_into_the_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.db");
        let db = Db::connect(&format!("sqlite://{}", file.display()), 1, 1)
            .await
            .unwrap();
        owner(&db).await;
        let before = std::fs::metadata(&file).unwrap().len();
        for i in 0..200 {
            let mut r = row(&format!("c{i}"));
            r.description = Some("x".repeat(2000));
            assert!(tasks::insert(&db, &r).await.unwrap());
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let grown = loop {
            let now = std::fs::metadata(&file).unwrap().len();
            if now >= before + 200 * 2000 || std::time::Instant::now() > deadline {
                break now;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(
            grown >= before + 200 * 2000,
            "database file {before} -> {grown} bytes: the WAL was not checkpointed"
        );
    }
}
