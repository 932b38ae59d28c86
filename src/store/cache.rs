//! A bounded cache of task rows by id, on SQLite only.
//!
//! Clients poll their tasks: on the embedded default a `GET /api/tasks/{id}`
//! spent more on SQLite's read transaction (the shared-memory read lock
//! taken and dropped with `fcntl` for every statement) than on anything
//! else Frenly does for it. Rows are kept **as stored**: the description,
//! input and result stay Fernet tokens here and are decrypted per request,
//! so the cache holds no plaintext that the database file does not.
//!
//! Guarantee: a read never returns a row older than the newest committed
//! write that finished (its call returned) before the read started. Every
//! write to a task in this process goes through `store::tasks`, which calls
//! [`TaskCache::forget`] after its statement; a row read from the database
//! is kept only if no `forget` ran in its shard since the reader's miss
//! gave it a [`Ticket`] *before* the database call, so a reader that raced
//! a writer cannot put back the row the writer replaced. New tasks are not
//! kept when inserted (their first read fills the cache: keeping every
//! created row cost task creation 10% in evictions under load). (A writer's
//! bump happens after its commit; a ticket taken after the bump belongs to
//! a read that starts after the commit and sees it.)
//!
//! Scope: only where this process is the one writer of its tasks — an
//! SQLite file that one `frenly serve` owns. PostgreSQL (several instances)
//! has no cache. Bounded by bytes: rows over [`MAX_ROW_BYTES`] are not kept,
//! and each shard evicts its least recently read rows past its share of
//! [`BUDGET_BYTES`].

use std::hash::BuildHasher;

use hashlink::LruCache;
use parking_lot::Mutex;

use super::tasks::TaskRow;

/// Bytes of rows kept at most (the string contents; about 6,000 tasks of
/// 1 KB).
pub const BUDGET_BYTES: usize = 16 << 20;
/// Rows larger than this are read from the database every time.
pub const MAX_ROW_BYTES: usize = 64 << 10;
const SHARDS: usize = 16;

struct Shard {
    /// Moved by every `forget` in this shard.
    generation: u64,
    bytes: usize,
    rows: LruCache<String, TaskRow>,
}

/// Proof that no write was seen in a shard since it was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

pub struct TaskCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: foldhash::quality::RandomState,
}

impl std::fmt::Debug for TaskCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCache").finish_non_exhaustive()
    }
}

impl Default for TaskCache {
    fn default() -> Self {
        TaskCache::new()
    }
}

/// The bytes a row holds (its strings; the fixed part is noise).
fn size(t: &TaskRow) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    t.id.len()
        + t.owner_id.len()
        + t.title.len()
        + t.status.len()
        + opt(&t.description)
        + opt(&t.input)
        + opt(&t.result)
        + opt(&t.agent_id)
}

impl TaskCache {
    pub fn new() -> Self {
        let shards = (0..SHARDS)
            .map(|_| {
                Mutex::new(Shard {
                    generation: 0,
                    bytes: 0,
                    rows: LruCache::new_unbounded(),
                })
            })
            .collect();
        TaskCache {
            shards,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    // The shard count is a non-zero constant.
    #[allow(clippy::indexing_slicing)]
    fn shard(&self, id: &str) -> &Mutex<Shard> {
        let h = u128::from(self.hasher.hash_one(id));
        &self.shards[((h * SHARDS as u128) >> 64) as usize]
    }

    /// The row if kept; otherwise a ticket to [`keep`](Self::keep) what the
    /// database returns next.
    pub fn get(&self, id: &str) -> Result<TaskRow, Ticket> {
        let mut s = self.shard(id).lock();
        match s.rows.get(id) {
            Some(t) => Ok(t.clone()),
            None => Err(Ticket(s.generation)),
        }
    }

    /// Keep `row` if no write to its shard was seen since `ticket`.
    pub fn keep(&self, ticket: Ticket, row: &TaskRow) {
        let n = size(row);
        if n > MAX_ROW_BYTES {
            return;
        }
        let mut s = self.shard(&row.id).lock();
        if s.generation != ticket.0 {
            return;
        }
        if let Some(old) = s.rows.insert(row.id.clone(), row.clone()) {
            s.bytes -= size(&old);
        }
        s.bytes += n;
        while s.bytes > BUDGET_BYTES / SHARDS {
            match s.rows.remove_lru() {
                Some((_, old)) => s.bytes -= size(&old),
                None => break,
            }
        }
    }

    /// The task `id` was (or may have been) written: drop its row and refuse
    /// rows read before now.
    pub fn forget(&self, id: &str) {
        let mut s = self.shard(id).lock();
        if let Some(old) = s.rows.remove(id) {
            s.bytes -= size(&old);
        }
        s.generation += 1;
    }

    /// Any task may have been written: drop every row, refuse rows read
    /// before now.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut s = s.lock();
            s.rows.clear();
            s.bytes = 0;
            s.generation += 1;
        }
    }

    /// Rows kept now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().rows.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes kept now.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn row(id: &str, status: &str, description: usize) -> TaskRow {
        TaskRow {
            id: id.into(),
            owner_id: "u".into(),
            title: "t".into(),
            description: Some("d".repeat(description)),
            priority: 1,
            status: status.into(),
            input: None,
            result: None,
            agent_id: None,
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let c = TaskCache::new();
        // reader misses and takes its ticket, then reads the old row
        let ticket = c.get("a").unwrap_err();
        let old = row("a", "queued", 10);
        // a writer commits and forgets, before the reader keeps its row
        c.forget("a");
        c.keep(ticket, &old);
        assert!(c.get("a").is_err(), "a stale row was kept");
        // a read after the write is kept
        let ticket = c.get("a").unwrap_err();
        c.keep(ticket, &row("a", "running", 10));
        assert_eq!(c.get("a").unwrap().status, "running");
        // and a write after that drops it
        c.forget("a");
        assert!(c.get("a").is_err());
        assert_eq!((c.len(), c.bytes()), (0, 0));
        // a failed write that may have touched anything refuses every
        // earlier read
        let ticket = c.get("b").unwrap_err();
        c.clear();
        c.keep(ticket, &row("b", "queued", 1));
        assert!(c.get("b").is_err());
    }

    #[test]
    fn oversized_rows_are_not_kept_and_the_budget_holds() {
        let c = TaskCache::new();
        let t = c.get("big").unwrap_err();
        c.keep(t, &row("big", "queued", MAX_ROW_BYTES + 1));
        assert!(c.get("big").is_err());
        for i in 0..(4 * BUDGET_BYTES / MAX_ROW_BYTES) {
            let id = format!("r{i}");
            let t = c.get(&id).unwrap_err();
            c.keep(t, &row(&id, "queued", MAX_ROW_BYTES - 100));
        }
        assert!(c.bytes() <= BUDGET_BYTES, "{} bytes kept", c.bytes());
        assert!(!c.is_empty());
        // the most recent one is still there
        let last = format!("r{}", 4 * BUDGET_BYTES / MAX_ROW_BYTES - 1);
        assert!(c.get(&last).is_ok());
    }

    #[test]
    fn keeping_again_replaces_and_counts_bytes_once() {
        let c = TaskCache::new();
        // two readers that missed at the same time both keep what they read
        let t = c.get("a").unwrap_err();
        for n in [10, 20, 5] {
            c.keep(t, &row("a", "queued", n));
        }
        assert_eq!(c.len(), 1);
        assert_eq!(c.bytes(), size(&row("a", "queued", 5)));
    }
}
