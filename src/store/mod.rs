//! The database: one pool, migrations, and the queries of each table.
//!
//! Threat: SQL injection and lost writes. Guarantee: every statement is a
//! constant string with `$n` placeholders and bound values (no SQL is ever
//! built from input text); the same statement runs on SQLite and PostgreSQL
//! through sqlx's `Any` driver. SQLite runs in WAL mode with
//! `synchronous = NORMAL`: a committed write survives a process crash
//! (SIGKILL); a power loss may lose the last transactions (use PostgreSQL, or
//! `FULL`, where that matters).

pub mod audit;
pub mod bans;
pub mod cache;
pub mod fingerprints;
pub mod group;
pub mod incidents;
pub mod keys;
pub mod reader;
pub mod revoked;
pub mod tasks;
pub mod users;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor};

/// The settings of every SQLite write connection (the pool's and the group
/// writer's): WAL, `synchronous = NORMAL` (see the module doc), foreign keys.
macro_rules! sqlite_pragmas {
    () => {
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;"
    };
}

/// Which engine the pool talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A database handle (cheap to clone).
#[derive(Debug, Clone)]
pub struct Db {
    pub pool: AnyPool,
    pub engine: Engine,
    /// Inline reads by primary key (SQLite files only; see [`reader`]).
    pub reader: Option<std::sync::Arc<reader::Reader>>,
    /// Group commit of task creations and audit rows (SQLite files only;
    /// see [`group`]).
    pub writer: Option<group::Writer>,
    /// Task rows by id, as stored (SQLite only: this process is their one
    /// writer; see [`cache`]).
    pub tasks: Option<std::sync::Arc<cache::TaskCache>>,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0} is not an SQLite database (database.url): move it away, or point database.url at the right file")]
    NotSqlite(String),
    #[error("the database was written by a newer Frenly (its migration {0} is unknown to this version): run that version or restore a backup; nothing was changed")]
    NewerSchema(i64),
}

impl StoreError {
    /// Did a UNIQUE constraint reject the write?
    pub fn is_unique_violation(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(e)) => e.is_unique_violation(),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.extended_code,
                rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                    | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY
            ),
            _ => false,
        }
    }

    /// Did the write refer to a row that is gone (a key for a user deleted
    /// while the request that creates it ran)?
    pub fn is_foreign_key_violation(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(e)) => e.is_foreign_key_violation(),
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY
            }
            _ => false,
        }
    }

    /// Did PostgreSQL refuse a value's characters (a NUL in text: SQLSTATE
    /// 22021 `character_not_in_repertoire`; 22P05 `untranslatable_character`)?
    /// The input's fault, not the server's.
    pub fn is_unstorable_text(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(e)) => {
                matches!(e.code().as_deref(), Some("22021" | "22P05"))
            }
            _ => false,
        }
    }

    /// Is the database out of reach or out of room rather than the request
    /// at fault: no connection free within the pool's wait, the server
    /// refusing or dropping connections (SQLSTATE classes 08 connection
    /// exception and 53 insufficient resources, 57P01-57P03 shutdown or
    /// starting up, 3D000 the database gone, 25006 a read-only standby), or
    /// SQLite still locked after its busy wait, its disk full, its file
    /// read-only or failing? Answered 503 `unavailable` with
    /// `Retry-After`: the contract's code for a dependency that is down.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Sqlx(
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed,
            ) => true,
            StoreError::Sqlx(sqlx::Error::Database(e)) => match e.code().as_deref() {
                // PostgreSQL's SQLSTATEs
                Some(code) if code.len() == 5 => {
                    code.starts_with("08")
                        || code.starts_with("53")
                        // 55000: "database is not currently accepting
                        // connections" (ALLOW_CONNECTIONS false: was a 500);
                        // 55P03: a lock not available
                        // 25006: a read-only transaction (a standby
                        // after a failover)
                        || matches!(code, "57P01" | "57P02" | "57P03" | "3D000" | "55000" | "55P03" | "25006")
                }
                // SQLite through sqlx reports its (extended) result code,
                // whose low byte is the primary one: BUSY, LOCKED, FULL,
                // READONLY (a file or file system that cannot be written:
                // was a 500 on every write), IOERR, CANTOPEN
                Some(code) => code
                    .parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 8 | 10 | 13 | 14)),
                _ => false,
            },
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy
                    | rusqlite::ErrorCode::DatabaseLocked
                    | rusqlite::ErrorCode::DiskFull
                    | rusqlite::ErrorCode::ReadOnly
                    | rusqlite::ErrorCode::SystemIoFailure
                    | rusqlite::ErrorCode::CannotOpen
            ),
            _ => false,
        }
    }
}

impl From<StoreError> for crate::http::ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            tracing::warn!(error = %e, "database unavailable");
            return crate::http::ApiError::Unavailable;
        }
        if e.is_unstorable_text() {
            // The handlers refuse NUL where they read text; this is the net
            // under any value they do not check.
            tracing::warn!(error = %e, "a value the database cannot store");
            return crate::http::ApiError::BadRequest(
                "a value holds a character that cannot be stored (NUL)".into(),
            );
        }
        if e.is_foreign_key_violation() {
            // a race with a deletion, not a server fault
            tracing::info!(error = %e, "a write refers to a row deleted meanwhile");
            return crate::http::ApiError::Conflict(
                "what this request refers to was deleted meanwhile".into(),
            );
        }
        tracing::error!(error = %e, "store failure");
        crate::http::ApiError::Internal
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/postgres");

impl Db {
    /// Connect (creating an SQLite file if needed) and run migrations; a
    /// request waits at most 10 s for a connection.
    pub async fn connect(url: &str, min: u32, max: u32) -> Result<Db> {
        Db::connect_waiting(url, min, max, Duration::from_secs(10)).await
    }

    /// [`connect`](Db::connect) with the longest wait for a connection
    /// (`acquire`): what a request waits while PostgreSQL is unreachable
    /// before its 503.
    pub async fn connect_waiting(url: &str, min: u32, max: u32, acquire: Duration) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let engine = if url.starts_with("sqlite:") {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        let url = match engine {
            Engine::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let (min, max) = match engine {
            // SQLite has one writer; several connections only add lock
            // contention and thread hand-offs (measured: one connection
            // doubles task creations per second and speeds reads too).
            Engine::Sqlite => (1, 1),
            Engine::Postgres => (min.min(max), max.max(1)),
        };
        // a file that is not a database failed only after the pool's whole
        // wait, as "pool timed out"
        if let Some(path) = sqlite_file(&url) {
            if !looks_like_sqlite(&path) {
                return Err(StoreError::NotSqlite(path.display().to_string()));
            }
        }
        let pool = AnyPoolOptions::new()
            .min_connections(min)
            .max_connections(max)
            .acquire_timeout(acquire)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if engine == Engine::Sqlite {
                        conn.execute(concat!(sqlite_pragmas!(), " PRAGMA busy_timeout = 10000;"))
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let mut db = Db {
            pool,
            engine,
            reader: None,
            writer: None,
            tasks: (engine == Engine::Sqlite).then(Default::default),
        };
        let migrated = match engine {
            Engine::Sqlite => SQLITE_MIGRATIONS.run(&db.pool).await,
            Engine::Postgres => POSTGRES_MIGRATIONS.run(&db.pool).await,
        };
        match migrated {
            Err(sqlx::migrate::MigrateError::VersionMissing(v)) => {
                return Err(StoreError::NewerSchema(v))
            }
            other => other?,
        }
        if let Some(path) = sqlite_file(&url) {
            let n = std::thread::available_parallelism().map_or(1, usize::from);
            db.reader = Some(std::sync::Arc::new(reader::Reader::open(&path, n)?));
            db.writer = Some(group::Writer::start(
                sqlite_writer(&path)?,
                sqlite_writer(&path)?,
            )?);
        }
        Ok(db)
    }

    /// Is the database answering within `within`? (A readiness probe
    /// waited the pool's whole acquire timeout while PostgreSQL was down,
    /// past the probe's own timeout.)
    pub async fn ping(&self, within: Duration) -> bool {
        tokio::time::timeout(within, sqlx::query("SELECT 1").execute(&self.pool))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Why a PostgreSQL database cannot be reached, in one line naming where
/// (host and port, never the URL's password): one direct connection
/// attempt, since the pool reports only that it timed out.
pub async fn unreachable_reason(url: &str) -> String {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let Ok(opts) = sqlx::postgres::PgConnectOptions::from_str(url) else {
        return "the URL cannot be read".into();
    };
    let at = format!("{}:{}", opts.get_host(), opts.get_port());
    match tokio::time::timeout(Duration::from_secs(3), opts.connect()).await {
        Ok(Ok(_)) => format!("{at} answers, but no connection was free in time"),
        Ok(Err(e)) => format!("{at}: {e}"),
        Err(_) => format!("{at}: no answer within 3 s"),
    }
}

/// Is the file at `path` absent, empty (a new database) or an SQLite
/// database by its header?
fn looks_like_sqlite(path: &std::path::Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        // absent (created next), or not readable: the open says why
        return true;
    };
    let mut head = [0u8; 16];
    match f.read(&mut head) {
        Ok(0) => true,
        Ok(n) => n == head.len() && &head == b"SQLite format 3\0",
        Err(_) => true,
    }
}

/// The file behind an SQLite URL (`None` for PostgreSQL and in-memory
/// databases, which a second connection could not share).
fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    use std::str::FromStr;
    if !url.starts_with("sqlite:") || url.contains("mode=memory") {
        return None;
    }
    let opts = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let file = opts.get_filename();
    (file.as_os_str() != ":memory:" && !file.as_os_str().is_empty()).then(|| file.to_path_buf())
}

/// A write connection to the SQLite file at `path`, for the writer that
/// batches the hot writes on its own thread ([`group`]), with the pool's
/// settings (`sqlite_pragmas!`). SQLite lets one writer at a
/// time commit: when another connection holds the lock this one retries
/// every 100 µs (the default handler sleeps whole milliseconds) for up to
/// 10 s, then fails with SQLITE_BUSY.
pub(crate) fn sqlite_writer(path: &std::path::Path) -> Result<rusqlite::Connection> {
    let c = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.execute_batch(sqlite_pragmas!())?;
    c.busy_handler(Some(|tries: i32| {
        std::thread::sleep(Duration::from_micros(100));
        tries < 100_000
    }))?;
    Ok(c)
}

/// `<head> VALUES ($1..$cols), ($cols+1..), ...` for `rows` rows: the SQL of
/// a multi-row INSERT. Only the placeholder list depends on `rows`; every
/// value is bound, never spliced into the SQL.
pub fn insert_values_sql(head: &str, rows: usize, cols: usize) -> String {
    use std::fmt::Write;
    let mut sql = format!("{head} VALUES ");
    for r in 0..rows {
        sql.push_str(if r > 0 { ", (" } else { "(" });
        for c in 0..cols {
            let sep = if c > 0 { ", " } else { "" };
            let _ = write!(sql, "{sep}${}", r * cols + c + 1);
        }
        sql.push(')');
    }
    sql
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC for a millisecond timestamp.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Decode a JSON array of strings stored in a TEXT column.
pub fn json_list(s: &str) -> Result<Vec<String>> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A new opaque, time-ordered id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().simple().to_string()
}

/// Read a column, mapping errors.
pub fn col<'r, T>(row: &'r AnyRow, name: &str) -> Result<T>
where
    T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>,
{
    use sqlx::Row;
    row.try_get(name).map_err(StoreError::from)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::StoreError;

    /// A database that cannot be written (a read-only file, a file system
    /// remounted read-only after an I/O error) is the dependency being
    /// down, 503, on both SQLite paths: every write was a 500 `internal`.
    /// A constraint stays the request's fault.
    #[tokio::test]
    async fn a_read_only_database_is_unavailable_not_internal() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ro.db");
        let c = rusqlite::Connection::open(&p).unwrap();
        c.execute_batch("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .unwrap();
        c.execute("INSERT INTO t VALUES (1)", []).unwrap();
        let dup = StoreError::from(c.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert!(!dup.is_unavailable() && dup.is_unique_violation(), "{dup}");
        drop(c);
        let ro =
            rusqlite::Connection::open_with_flags(&p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .unwrap();
        let e = StoreError::from(ro.execute("INSERT INTO t VALUES (2)", []).unwrap_err());
        assert!(e.is_unavailable(), "{e}");
        let url = format!("sqlite://{}?mode=ro", p.display());
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let e = StoreError::from(
            sqlx::query("INSERT INTO t VALUES (2)")
                .execute(&pool)
                .await
                .unwrap_err(),
        );
        assert!(e.is_unavailable(), "{e}");
    }
}
