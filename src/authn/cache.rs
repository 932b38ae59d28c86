//! A small bounded cache with a time-to-live, for verified credentials.
//!
//! Guarantee: an entry is served for at most `ttl` after it was read from the
//! database; writers invalidate affected entries at once (revoke, rotate, user
//! deletion), so on this instance those take effect immediately and on other
//! instances within `ttl`. At most `cap` entries: a full cache is emptied
//! (simple and bounded; the next requests refill it from the database).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

pub struct TtlCache<K, V> {
    map: RwLock<HashMap<K, (i64, Arc<V>)>>,
    ttl_ms: i64,
    cap: usize,
    /// Bumped by every invalidation: a value read from the database before
    /// an invalidation is not inserted after it ([`TtlCache::insert_at`]).
    generation: AtomicU64,
}

impl<K: Hash + Eq, V> TtlCache<K, V> {
    pub fn new(ttl_ms: i64, cap: usize) -> Self {
        TtlCache {
            map: RwLock::new(HashMap::new()),
            ttl_ms,
            cap: cap.max(1),
            generation: AtomicU64::new(0),
        }
    }

    /// The entry, if read from the database less than `ttl` ago.
    pub fn get(&self, k: &K, now: i64) -> Option<Arc<V>> {
        let m = self.map.read();
        match m.get(k) {
            Some((at, v)) if now - *at < self.ttl_ms => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, k: K, v: Arc<V>, now: i64) {
        let mut m = self.map.write();
        if m.len() >= self.cap {
            m.clear();
        }
        m.insert(k, (now, v));
    }

    /// The generation to pass to [`TtlCache::insert_at`]; read it before
    /// reading the value from the database.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Insert unless an invalidation happened since `generation` was read
    /// (the value may predate that invalidation).
    pub fn insert_at(&self, k: K, v: Arc<V>, now: i64, generation: u64) {
        let mut m = self.map.write();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if m.len() >= self.cap {
            m.clear();
        }
        m.insert(k, (now, v));
    }

    /// Drop every entry for which `f` says so.
    pub fn invalidate(&self, mut f: impl FnMut(&V) -> bool) {
        let mut m = self.map.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.retain(|_, (_, v)| !f(v));
    }

    pub fn clear(&self) {
        let mut m = self.map.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        m.clear();
    }
}
