//! The clean-value memo: short values that were inspected with every rule
//! family on and matched nothing, remembered so that the next request
//! carrying the same value (the same `User-Agent`, the task id a client
//! polls) skips the decode and the rule sets.
//!
//! Threat: none of its own; it must never let an attack through. Guarantee:
//! a value is remembered only after a full inspection of it, with every
//! family on, called no rule at all, and inspection is a function of the
//! value, its kind and its `+`-decoding alone (the location only names a
//! hit), so a remembered value is clean under any configuration. The key
//! is the whole value, compared byte for byte, never a hash alone. The memo
//! is bounded (`SHARDS` x `PER_SHARD` values of at most `MAX_LEN` bytes,
//! under 2 MiB): a shard that fills up is emptied, so a flood of distinct
//! values only costs the inspection the memo would have saved. The eval
//! (`ids-eval`, the corpus tests) runs every record through one detector
//! with the memo and one without it and requires the same verdicts.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use super::rules::Kind;

/// Values longer than this are never remembered (bodies, long headers).
const MAX_LEN: usize = 256;
const SHARDS: usize = 16;
const PER_SHARD: usize = 256;

type Map = HashMap<u64, (Kind, bool, Box<str>)>;
type Shard = Mutex<Map>;

/// The memo (one per detector).
pub struct Memo {
    shards: Vec<Shard>,
    hasher: foldhash::fast::RandomState,
}

impl Default for Memo {
    fn default() -> Self {
        Memo {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl Memo {
    fn key(&self, kind: Kind, plus: bool, raw: &str) -> u64 {
        self.hasher.hash_one((kind as u8, plus, raw))
    }

    /// The value's key and its shard, locked; `None` for a value too long
    /// to remember (or a poisoned shard: then nothing is remembered).
    fn slot(&self, kind: Kind, plus: bool, raw: &str) -> Option<(u64, MutexGuard<'_, Map>)> {
        if raw.len() > MAX_LEN {
            return None;
        }
        let key = self.key(kind, plus, raw);
        let shard = self.shards.get((key % SHARDS as u64) as usize)?;
        Some((key, shard.lock().ok()?))
    }

    /// Was this exact value found clean before?
    pub fn is_clean(&self, kind: Kind, plus: bool, raw: &str) -> bool {
        self.slot(kind, plus, raw).is_some_and(|(key, map)| {
            map.get(&key)
                .is_some_and(|(k, p, v)| *k == kind && *p == plus && **v == *raw)
        })
    }

    /// Remember a value that a full inspection found clean.
    pub fn remember_clean(&self, kind: Kind, plus: bool, raw: &str) {
        if let Some((key, mut map)) = self.slot(kind, plus, raw) {
            if map.len() >= PER_SHARD {
                map.clear();
            }
            map.insert(key, (kind, plus, raw.into()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_value_of_the_same_kind_is_clean() {
        let m = Memo::default();
        m.remember_clean(Kind::Header, false, "Mozilla/5.0");
        assert!(m.is_clean(Kind::Header, false, "Mozilla/5.0"));
        assert!(!m.is_clean(Kind::Header, true, "Mozilla/5.0"));
        assert!(!m.is_clean(Kind::Value, false, "Mozilla/5.0"));
        assert!(!m.is_clean(Kind::Header, false, "Mozilla/5.1"));
    }

    #[test]
    fn long_values_are_never_remembered() {
        let m = Memo::default();
        let long = "a".repeat(MAX_LEN + 1);
        m.remember_clean(Kind::Value, false, &long);
        assert!(!m.is_clean(Kind::Value, false, &long));
    }

    #[test]
    fn the_memo_stays_bounded() {
        let m = Memo::default();
        for i in 0..SHARDS * PER_SHARD * 4 {
            m.remember_clean(Kind::Value, false, &format!("value-{i}"));
        }
        let held: usize = m
            .shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum();
        assert!(held <= SHARDS * PER_SHARD, "{held}");
    }
}
