//! Revoked JWTs (logout).
//!
//! Threat: a token that keeps working after its owner logged out.
//! Guarantee: [`Revocations::revoke`] persists the `jti` (until the token's own
//! expiry) and adds it to the in-process set that every JWT verification on
//! this instance consults, so the token fails at once; the set is loaded from
//! the database at start, so a restart forgets nothing. Memory is bounded by
//! the live (unexpired) revoked tokens; expired entries are pruned.
//!
//! With Redis (`crate::state`), a logout also sets `jti:<jti>` in Redis
//! (checked in the same round trip as the rate limit, so it fails on every
//! instance at once) and is mirrored into every instance's set (pub/sub),
//! which serves while Redis is down.

use std::collections::HashMap;

use parking_lot::RwLock;

use crate::store::{self, Db};

/// Prune expired entries when the set grows past this size.
const PRUNE_AT: usize = 10_000;

/// The revoked-`jti` set (in-process implementation, persisted in the database).
#[derive(Default)]
pub struct Revocations {
    jtis: RwLock<HashMap<String, i64>>,
}

impl Revocations {
    pub fn new() -> Revocations {
        Revocations::default()
    }

    /// Load the live revocations from the database (at start, and when
    /// catching up after a Redis outage); how many were new here.
    pub async fn load(&self, db: &Db) -> store::Result<usize> {
        let now = store::now_ms();
        let live = store::revoked::live(db, now).await?;
        let mut m = self.jtis.write();
        let before = m.len();
        m.extend(live);
        Ok(m.len() - before)
    }

    /// Revoke `jti` until `expires_at_ms` (the token's `exp`).
    pub async fn revoke(&self, db: &Db, jti: &str, expires_at_ms: i64) -> store::Result<()> {
        store::revoked::insert(db, jti, expires_at_ms).await?;
        self.insert_local(jti, expires_at_ms);
        Ok(())
    }

    /// Record a revocation another instance made (already persisted there).
    pub fn insert_local(&self, jti: &str, expires_at_ms: i64) {
        let now = store::now_ms();
        let mut m = self.jtis.write();
        if m.len() >= PRUNE_AT {
            m.retain(|_, exp| *exp > now);
        }
        m.insert(jti.to_string(), expires_at_ms);
    }

    /// Has `jti` been revoked?
    pub async fn is_revoked(&self, jti: &str) -> bool {
        self.jtis.read().contains_key(jti)
    }
}
