//! The `tasks` and `agent_settings` tables.
//!
//! Guarantee: every statement is a constant string with bound values; the
//! title search binds a `LIKE` pattern whose `%`, `_` and `\` were escaped by
//! [`like_pattern`] (`ESCAPE '\'`); state changes are conditional updates
//! (`... AND status = $n`), so two writers can never both move a task; a
//! claim is one `UPDATE ... WHERE id = (SELECT ...) AND status = 'queued'
//! RETURNING`, which hands a task to exactly one worker on SQLite (one writer)
//! and PostgreSQL (the loser's re-checked `status` fails; it retries).
//! `description`, `input` and `result` arrive here already encrypted.
//!
//! A task is created, and claimed, only while its user exists: the INSERT
//! and the claim UPDATE carry `EXISTS (SELECT 1 FROM users WHERE id = ...)`,
//! which on PostgreSQL takes the user row `FOR KEY SHARE`; a user deletion
//! (`super::users::delete`) deletes the row first (a `FOR UPDATE` lock), so
//! either the creation or claim commits first and the deletion's clean-up
//! (re-queue, cancel) sees its row, or it runs after the deletion and finds
//! no user (nothing written). On SQLite one writer at a time gives the same.
//! Without it, a request authenticated just before its user was deleted
//! left a task running for a worker that no longer exists, or queued for a
//! deleted owner. Every write moves `updated_at` strictly forward
//! ([`NEXT_UPDATED_AT`]), computed in the statement on the row it changes,
//! and returns the row as stored: a claim that waited behind a re-queue
//! wrote the earlier time it took before waiting.
//!
//! On SQLite, [`get`] reads through the row cache (`super::cache`) and every
//! statement here that can change a task forgets its row once it has run
//! (`changing`), so a read never returns a row older than a write that
//! returned before it.

use std::collections::BTreeMap;

use sqlx::any::AnyRow;

use super::{col, Db, Result, StoreError};

/// A stored task (encrypted columns as stored).
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: String,
    pub owner_id: String,
    pub title: String,
    pub description: Option<String>,
    pub priority: i32,
    pub status: String,
    pub input: Option<String>,
    pub result: Option<String>,
    pub agent_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

macro_rules! cols {
    () => {
        "id, owner_id, title, description, priority, status, input, result, agent_id, created_at, updated_at"
    };
}

fn from_row(r: &AnyRow) -> Result<TaskRow> {
    Ok(TaskRow {
        id: col(r, "id")?,
        owner_id: col(r, "owner_id")?,
        title: col(r, "title")?,
        description: col(r, "description")?,
        priority: col(r, "priority")?,
        status: col(r, "status")?,
        input: col(r, "input")?,
        result: col(r, "result")?,
        agent_id: col(r, "agent_id")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
    })
}

fn opt(row: Option<AnyRow>) -> Result<Option<TaskRow>> {
    row.as_ref().map(from_row).transpose()
}

/// Insert one row if its owner (`$2`) exists, on `$lock` (the row lock
/// clause of the engine).
macro_rules! insert_sql {
    ($lock:literal) => {
        concat!(
            "INSERT INTO tasks (",
            cols!(),
            ") SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11 \
             WHERE EXISTS (SELECT 1 FROM users WHERE id = $2",
            $lock,
            ")"
        )
    };
}

/// Insert one row if its owner exists, on SQLite (also prepared by the
/// group writer): one writer at a time, no lock clause.
pub(super) const INSERT: &str = insert_sql!("");

/// Insert one row if its owner exists, on PostgreSQL: the owner's row is
/// held `FOR KEY SHARE` until the commit, so a deletion of the owner waits
/// for it (and then cancels the task), or went first (nothing inserted).
const INSERT_PG: &str = insert_sql!(" FOR KEY SHARE");

/// The `updated_at` a write sets, given the time `$now` it took: strictly
/// greater than the row's value (milliseconds), even when `$now` was taken
/// before the statement waited behind another write of the row, or a clock
/// is behind. Clients keep the state with the latest `updated_at`.
macro_rules! next_updated_at {
    ($now:literal) => {
        concat!(
            "CASE WHEN ",
            $now,
            " > updated_at THEN ",
            $now,
            " ELSE updated_at + 1 END"
        )
    };
}

/// [`next_updated_at`] for a time bound as `$1` (documentation and tests).
pub const NEXT_UPDATED_AT: &str = next_updated_at!("$1");

/// One task by id (also run by `reader` on SQLite).
pub(super) const BY_ID: &str = concat!("SELECT ", cols!(), " FROM tasks WHERE id = $1");

/// Insert one task; `false` (nothing stored) when its owner no longer
/// exists (deleted after the request was authenticated). (Not kept in the
/// cache: its first read fills it.)
pub async fn insert(db: &Db, t: &TaskRow) -> Result<bool> {
    if let Some(writer) = &db.writer {
        return writer.insert_task(t.clone()).await;
    }
    let sql = match db.engine {
        super::Engine::Sqlite => INSERT,
        super::Engine::Postgres => INSERT_PG,
    };
    let done = sqlx::query(sql)
        .bind(t.id.as_str())
        .bind(t.owner_id.as_str())
        .bind(t.title.as_str())
        .bind(t.description.as_deref())
        .bind(t.priority)
        .bind(t.status.as_str())
        .bind(t.input.as_deref())
        .bind(t.result.as_deref())
        .bind(t.agent_id.as_deref())
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn get(db: &Db, id: &str) -> Result<Option<TaskRow>> {
    let ticket = match &db.tasks {
        Some(cache) => match cache.get(id) {
            Ok(row) => return Ok(Some(row)),
            Err(ticket) => Some(ticket),
        },
        None => None,
    };
    let row = match &db.reader {
        Some(reader) => reader.task(id)?,
        None => opt(sqlx::query(BY_ID).bind(id).fetch_optional(&db.pool).await?)?,
    };
    if let (Some(cache), Some(ticket), Some(row)) = (&db.tasks, ticket, &row) {
        cache.keep(ticket, row);
    }
    Ok(row)
}

/// Run a statement that may change task `id` (`None`: the task it returns,
/// or any task if it fails). With a cache, the statement runs as its own
/// task, so it completes and the cache forgets the row afterwards even if
/// the request that started it is dropped (a timeout) mid-statement.
async fn changing<T, F>(
    db: &Db,
    id: Option<String>,
    returned: fn(&T) -> Option<&str>,
    write: impl FnOnce(Db) -> F,
) -> Result<T>
where
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    let Some(cache) = db.tasks.clone() else {
        return write(db.clone()).await;
    };
    let fut = write(db.clone());
    let run = tokio::spawn(async move {
        let r = fut.await;
        match (&id, &r) {
            (Some(id), _) => cache.forget(id),
            (None, Ok(t)) => {
                if let Some(id) = returned(t) {
                    cache.forget(id);
                }
            }
            (None, Err(_)) => cache.clear(),
        }
        r
    });
    run.await
        .map_err(|e| StoreError::Corrupt(format!("a task write stopped: {e}")))?
}

fn returned_id(t: &Option<TaskRow>) -> Option<&str> {
    t.as_ref().map(|t| t.id.as_str())
}

fn nothing<T>(_: &T) -> Option<&str> {
    None
}

/// Escape `%`, `_` and `\` and wrap in `%...%`, lower-cased the way the
/// engine's `LOWER(title)` is: all of Unicode on PostgreSQL, ASCII only on
/// SQLite (a pattern lower-cased further never matched: `ÉCOLE` did not
/// find the title `ÉCOLE`). Case-insensitive for ASCII on every engine.
pub fn like_pattern(q: &str, engine: super::Engine) -> String {
    let folded = match engine {
        super::Engine::Postgres => q.to_lowercase(),
        super::Engine::Sqlite => q.to_ascii_lowercase(),
    };
    let mut p = String::with_capacity(folded.len() + 2);
    p.push('%');
    for c in folded.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// A page filter. Empty `owner`/`status` mean "any"; `after` is the cursor
/// position `(created_at, id)`.
#[derive(Debug, Clone)]
pub struct ListFilter {
    pub owner: String,
    pub status: String,
    pub pattern: String,
    pub after: (i64, String),
    pub limit: i64,
}

/// Stored (encrypted) bytes at most in one page of [`list`]: 200 tasks
/// with megabyte inputs would otherwise be read, decrypted and serialized
/// at once, a gigabyte for one request of an ordinary user. 2 MiB (about
/// 1.5 MB of JSON): a response waits whole in memory until the client
/// reads it, and 20 connections that asked for 12 MB pages and never read
/// held 268 MB until the stall guard dropped them (probe L); at 2 MiB a
/// client at the default rate limit pins at most ~150 MB for those 20 s.
pub const LIST_BYTES_MAX: i64 = 2 * 1024 * 1024;

/// One page of tasks, and whether [`LIST_BYTES_MAX`] cut it short of
/// `f.limit` (more rows follow even though fewer came back). The first
/// query reads only the sizes, the second the rows that fit (at least one).
/// The rows of one page of [`list`], in page order, after the `SELECT`
/// list: both of its queries read the same rows.
macro_rules! page_rows {
    () => {
        " FROM tasks WHERE ($1 = '' OR owner_id = $1) AND ($2 = '' OR status = $2) \
         AND LOWER(title) LIKE $3 ESCAPE '\\' \
         AND (created_at > $4 OR (created_at = $4 AND id > $5)) \
         ORDER BY created_at, id LIMIT $6"
    };
}

/// `sql` (ending in [`page_rows`]) with the filter's values and `limit`.
fn page_query<'q>(
    sql: &'q str,
    f: &'q ListFilter,
    limit: i64,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(&f.owner)
        .bind(&f.status)
        .bind(&f.pattern)
        .bind(f.after.0)
        .bind(&f.after.1)
        .bind(limit)
}

pub async fn list(db: &Db, f: &ListFilter) -> Result<(Vec<TaskRow>, bool)> {
    let sizes = page_query(
        concat!(
            "SELECT CAST(COALESCE(LENGTH(description), 0) + COALESCE(LENGTH(input), 0) \
             + COALESCE(LENGTH(result), 0) AS BIGINT) AS n",
            page_rows!()
        ),
        f,
        f.limit,
    )
    .fetch_all(&db.pool)
    .await?;
    let mut total = 0i64;
    let mut fit = 0i64;
    for r in &sizes {
        let n: i64 = col(r, "n")?;
        total = total.saturating_add(n);
        if fit > 0 && total > LIST_BYTES_MAX {
            break;
        }
        fit += 1;
    }
    let cut = (fit as usize) < sizes.len();
    let rows = page_query(
        concat!("SELECT ", cols!(), page_rows!()),
        f,
        fit.max(1).min(f.limit),
    )
    .fetch_all(&db.pool)
    .await?;
    let rows = rows.iter().map(from_row).collect::<Result<Vec<_>>>()?;
    Ok((rows, cut))
}

/// Write the editable fields of `next` (and its agent, which a re-queue
/// clears), only if the row still holds what
/// `read` held in them (its status, title, priority, description and
/// `updated_at`): a compare-and-set, so a change made between the caller's
/// read and this write is never overwritten. `None`: the row changed (or
/// is gone); read it again.
pub async fn update(db: &Db, next: &TaskRow, read: &TaskRow) -> Result<Option<TaskRow>> {
    let (t, r) = (next.clone(), read.clone());
    changing(db, Some(t.id.clone()), nothing, move |db| async move {
        let row = sqlx::query(concat!(
            "UPDATE tasks SET title = $1, description = $2, priority = $3, status = $4, \
             updated_at = $5, agent_id = $12 WHERE id = $6 AND status = $7 AND title = $8 \
             AND priority = $9 AND COALESCE(description, '') = $10 AND updated_at = $11 RETURNING ",
            cols!()
        ))
        .bind(&t.title)
        .bind(&t.description)
        .bind(t.priority)
        .bind(&t.status)
        .bind(t.updated_at)
        .bind(&t.id)
        .bind(&r.status)
        .bind(&r.title)
        .bind(r.priority)
        .bind(r.description.as_deref().unwrap_or(""))
        .bind(r.updated_at)
        .bind(t.agent_id.as_deref())
        .fetch_optional(&db.pool)
        .await?;
        opt(row)
    })
    .await
}

pub async fn delete(db: &Db, id: &str) -> Result<bool> {
    let id = id.to_owned();
    changing(db, Some(id.clone()), nothing, move |db| async move {
        let r = sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(&id)
            .execute(&db.pool)
            .await?;
        Ok(r.rows_affected() > 0)
    })
    .await
}

/// What a claim found.
#[derive(Debug, Clone)]
pub enum Claim {
    /// This task, now running for the worker.
    Task(Box<TaskRow>),
    /// Nothing to claim: the queue is empty or the running cap is reached.
    Nothing,
    /// The worker's user no longer exists (deleted after the request was
    /// authenticated): nothing was claimed.
    NoWorker,
}

/// The claim UPDATE on `$lock` (the engine's row lock clause for the
/// worker's user row): `$1` the worker, `$2` the time, `$3` the cap.
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE tasks SET status = 'running', agent_id = $1, updated_at = ",
            next_updated_at!("$2"),
            " WHERE id = (SELECT id FROM tasks WHERE status = 'queued' \
                          ORDER BY priority DESC, created_at, id LIMIT 1) \
               AND status = 'queued' \
               AND (SELECT COUNT(*) FROM tasks WHERE status = 'running') < $3 \
               AND EXISTS (SELECT 1 FROM users WHERE id = $1",
            $lock,
            ") RETURNING ",
            cols!()
        )
    };
}

/// One claim attempt: the oldest highest-priority queued task, if the number
/// of running tasks is below `max_running` and the worker's user exists
/// (on PostgreSQL its row held `FOR KEY SHARE`: see the module doc).
async fn claim_once(db: &Db, agent: &str, now: i64, max_running: i64) -> Result<Option<TaskRow>> {
    let agent = agent.to_owned();
    let sql = match db.engine {
        super::Engine::Sqlite => claim_sql!(""),
        super::Engine::Postgres => claim_sql!(" FOR KEY SHARE"),
    };
    changing(db, None, returned_id, move |db| async move {
        let row = sqlx::query(sql)
            .bind(&agent)
            .bind(now)
            .bind(max_running)
            .fetch_optional(&db.pool)
            .await?;
        opt(row)
    })
    .await
}

/// Claim the next task for `agent`. Retries when another worker won the
/// race; [`Claim::Nothing`] when nothing is queued (or the running cap is
/// reached), [`Claim::NoWorker`] when `agent` is no longer a user.
pub async fn claim(db: &Db, agent: &str, max_running: i64) -> Result<Claim> {
    for _ in 0..64 {
        if let Some(t) = claim_once(db, agent, super::now_ms(), max_running).await? {
            return Ok(Claim::Task(Box::new(t)));
        }
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'queued') AS queued, \
                    (SELECT COUNT(*) FROM tasks WHERE status = 'running') AS running, \
                    (SELECT COUNT(*) FROM users WHERE id = $1) AS worker",
        )
        .bind(agent)
        .fetch_one(&db.pool)
        .await?;
        let (queued, running, worker): (i64, i64, i64) = (
            col(&row, "queued")?,
            col(&row, "running")?,
            col(&row, "worker")?,
        );
        if worker == 0 {
            return Ok(Claim::NoWorker);
        }
        if queued == 0 || running >= max_running {
            return Ok(Claim::Nothing);
        }
        tokio::task::yield_now().await;
    }
    Ok(Claim::Nothing)
}

/// Store the result of a running task claimed by `agent`.
pub async fn finish(
    db: &Db,
    id: &str,
    agent: &str,
    status: &str,
    result: Option<&str>,
    now: i64,
) -> Result<Option<TaskRow>> {
    let (id, agent, status) = (id.to_owned(), agent.to_owned(), status.to_owned());
    let result = result.map(str::to_owned);
    changing(db, Some(id.clone()), nothing, move |db| async move {
        let row = sqlx::query(concat!(
            "UPDATE tasks SET status = $1, result = $2, updated_at = ",
            next_updated_at!("$3"),
            " WHERE id = $4 AND status = 'running' AND agent_id = $5 RETURNING ",
            cols!()
        ))
        .bind(&status)
        .bind(&result)
        .bind(now)
        .bind(&id)
        .bind(&agent)
        .fetch_optional(&db.pool)
        .await?;
        opt(row)
    })
    .await
}

/// The tasks a deleted user leaves, as stored after [`release_user`].
#[derive(Debug, Clone, Default)]
pub struct Released {
    /// Tasks the user held as a worker (owned by others): queued again,
    /// `agent_id` cleared.
    pub requeued: Vec<TaskRow>,
    /// The user's own unfinished tasks: cancelled (`agent_id` kept: the
    /// worker that held one learns it from the event).
    pub cancelled: Vec<TaskRow>,
}

/// In the deletion's transaction (after the user's row is deleted): put the
/// tasks `user` held as a worker back in the queue (no one else could
/// finish them) and cancel its own unfinished ones (never handed to a
/// worker; one it held itself is cancelled, not re-queued first).
pub(super) async fn release_user(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user: &str,
    now: i64,
) -> Result<Released> {
    let requeued = sqlx::query(concat!(
        "UPDATE tasks SET status = 'queued', agent_id = NULL, updated_at = ",
        next_updated_at!("$1"),
        " WHERE agent_id = $2 AND status = 'running' AND owner_id <> $3 RETURNING ",
        cols!()
    ))
    .bind(now)
    .bind(user)
    .bind(user)
    .fetch_all(&mut **tx)
    .await?;
    let cancelled = sqlx::query(concat!(
        "UPDATE tasks SET status = 'cancelled', updated_at = ",
        next_updated_at!("$1"),
        " WHERE owner_id = $2 AND status IN ('queued', 'running') RETURNING ",
        cols!()
    ))
    .bind(now)
    .bind(user)
    .fetch_all(&mut **tx)
    .await?;
    Ok(Released {
        requeued: requeued.iter().map(from_row).collect::<Result<_>>()?,
        cancelled: cancelled.iter().map(from_row).collect::<Result<_>>()?,
    })
}

/// Number of tasks by status.
pub async fn counts(db: &Db) -> Result<BTreeMap<String, i64>> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM tasks GROUP BY status")
        .fetch_all(&db.pool)
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(col::<String>(r, "status")?, col::<i64>(r, "n")?);
    }
    Ok(out)
}

/// Number of distinct workers with a running task.
pub async fn active_workers(db: &Db) -> Result<i64> {
    let row =
        sqlx::query("SELECT COUNT(DISTINCT agent_id) AS n FROM tasks WHERE status = 'running'")
            .fetch_one(&db.pool)
            .await?;
    col(&row, "n")
}

pub async fn settings(db: &Db) -> Result<BTreeMap<String, String>> {
    let rows = sqlx::query("SELECT name, value FROM agent_settings")
        .fetch_all(&db.pool)
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        out.insert(col::<String>(r, "name")?, col::<String>(r, "value")?);
    }
    Ok(out)
}

pub async fn set_setting(db: &Db, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO agent_settings (name, value) VALUES ($1, $2) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// The encrypted columns of a page of tasks after `after_id`.
pub async fn encrypted_page(
    db: &Db,
    after_id: &str,
    limit: i64,
) -> Result<Vec<(String, [Option<String>; 3])>> {
    let rows = sqlx::query(
        "SELECT id, description, input, result FROM tasks WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(after_id)
    .bind(limit)
    .fetch_all(&db.pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                col(r, "id")?,
                [col(r, "description")?, col(r, "input")?, col(r, "result")?],
            ))
        })
        .collect()
}

/// One stored value per data-encryption key id the encrypted columns use
/// (`"<key id>:<token>"`; a value without `:` gives the id `""`), for the
/// start's check that the keyring reads the data. A full scan: once per
/// start.
pub async fn key_samples(db: &Db) -> Result<Vec<(String, String)>> {
    // one text for both engines: only the name of the substring search
    // differs (`instr` in SQLite, `strpos` in PostgreSQL)
    macro_rules! key_samples_sql {
        ($pos:literal) => {
            concat!(
                "SELECT kid, MIN(v) AS sample FROM (",
                "SELECT substr(description, 1, ", $pos, "(description, ':') - 1) AS kid, description AS v FROM tasks WHERE description IS NOT NULL ",
                "UNION ALL SELECT substr(input, 1, ", $pos, "(input, ':') - 1), input FROM tasks WHERE input IS NOT NULL ",
                "UNION ALL SELECT substr(result, 1, ", $pos, "(result, ':') - 1), result FROM tasks WHERE result IS NOT NULL",
                ") AS t GROUP BY kid ORDER BY kid"
            )
        };
    }
    let sql = match db.engine {
        super::Engine::Sqlite => key_samples_sql!("instr"),
        super::Engine::Postgres => key_samples_sql!("strpos"),
    };
    let rows = sqlx::query(sql).fetch_all(&db.pool).await?;
    rows.iter()
        .map(|r| Ok((col(r, "kid")?, col(r, "sample")?)))
        .collect()
}

/// Replace the encrypted columns if they still hold `old` (a concurrent
/// writer wins; the caller counts the skip).
pub async fn replace_encrypted(
    db: &Db,
    id: &str,
    old: &[Option<String>; 3],
    new: &[Option<String>; 3],
) -> Result<bool> {
    let (id, old, new) = (id.to_owned(), old.clone(), new.clone());
    changing(db, Some(id.clone()), nothing, move |db| async move {
        let r = sqlx::query(
            "UPDATE tasks SET description = $1, input = $2, result = $3 WHERE id = $4 \
             AND COALESCE(description, '') = $5 AND COALESCE(input, '') = $6 \
             AND COALESCE(result, '') = $7",
        )
        .bind(&new[0])
        .bind(&new[1])
        .bind(&new[2])
        .bind(&id)
        .bind(old[0].as_deref().unwrap_or(""))
        .bind(old[1].as_deref().unwrap_or(""))
        .bind(old[2].as_deref().unwrap_or(""))
        .execute(&db.pool)
        .await?;
        Ok(r.rows_affected() > 0)
    })
    .await
}

#[cfg(test)]
mod tests {
    use crate::store::Engine;

    #[test]
    fn like_escapes_wildcards_and_escape() {
        for e in [Engine::Sqlite, Engine::Postgres] {
            assert_eq!(super::like_pattern("a%b_c\\D", e), "%a\\%b\\_c\\\\d%");
        }
    }

    /// Folded as the engine's `LOWER` folds the title.
    #[test]
    fn like_folds_as_the_engine_does() {
        assert_eq!(super::like_pattern("ÉCOLE", Engine::Sqlite), "%École%");
        assert_eq!(super::like_pattern("ÉCOLE", Engine::Postgres), "%école%");
    }
}
