//! Brute-force protection for logins: failure counters per account and per
//! client address.
//!
//! Threat: password guessing against one account (from many addresses) or
//! against many accounts (from one address). Guarantee: after
//! `auth.login_max_failures` failed logins within `auth.lockout_seconds` for
//! one username, or from one client address (IPv6 grouped by /64), that
//! username or address is locked for `auth.lockout_seconds`: every login
//! attempt fails, even with the right password, and answers exactly like a
//! wrong password. A success clears the account's counter only (so a valid
//! account cannot be used to reset an address's counter). Unknown usernames
//! are counted like known ones (no enumeration through lockout behaviour).
//! Memory is bounded: at most `limits.max_tracked_clients` entries per map,
//! an account counted under a 16-byte digest of its name whatever the
//! name's length; when full, expired then unlocked entries are dropped
//! first, then the lock that ends soonest, so a new failure is always
//! counted (a full table never stops the counting).
//!
//! With Redis (`crate::state`) the counters and locks are Redis keys shared by
//! every instance (TTL `auth.lockout_seconds`), so guesses spread over the
//! instances add up; the in-process tables here are the fallback while
//! Redis is down.
//!
//! Not covered: an attacker with more than `max_tracked_clients` addresses
//! can make unlocked in-process counters restart, and with about five times
//! that many failures push out a lock.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

use parking_lot::Mutex;

/// What is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locked {
    Account,
    Address,
}

impl Locked {
    pub fn as_str(self) -> &'static str {
        match self {
            Locked::Account => "account",
            Locked::Address => "address",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Counter {
    failures: u32,
    first_ms: i64,
    locked_until: i64,
}

struct Table<K> {
    map: Mutex<HashMap<K, Counter>>,
}

impl<K: Hash + Eq + Clone> Table<K> {
    fn new() -> Self {
        Table {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn locked(&self, k: &K, now: i64) -> bool {
        self.map.lock().get(k).is_some_and(|c| c.locked_until > now)
    }

    /// Count a failure; true when this failure locks the key.
    fn fail(&self, k: &K, now: i64, max: u32, window: i64, cap: usize) -> bool {
        let mut m = self.map.lock();
        if !m.contains_key(k) && m.len() >= cap {
            m.retain(|_, c| c.locked_until > now || now - c.first_ms < window);
            if m.len() >= cap {
                m.retain(|_, c| c.locked_until > now);
            }
            if m.len() >= cap {
                let soonest = m
                    .iter()
                    .min_by_key(|(_, c)| c.locked_until)
                    .map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    m.remove(&k);
                }
            }
        }
        let c = m.entry(k.clone()).or_insert(Counter {
            failures: 0,
            first_ms: now,
            locked_until: 0,
        });
        if c.locked_until > now {
            return false;
        }
        if now - c.first_ms >= window || c.locked_until != 0 {
            *c = Counter {
                failures: 0,
                first_ms: now,
                locked_until: 0,
            };
        }
        c.failures += 1;
        if c.failures >= max {
            c.locked_until = now + window;
            return true;
        }
        false
    }

    fn clear(&self, k: &K) {
        self.map.lock().remove(k);
    }

    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// The lockout counters (in-process implementation).
pub struct Lockout {
    max_failures: u32,
    window_ms: i64,
    cap: usize,
    accounts: Table<AccountKey>,
    addresses: Table<IpAddr>,
    /// Redis when configured (this in-process state is the fallback).
    shared: crate::state::SharedState,
}

/// An account's key: the first 16 bytes of the SHA-256 of its name, so an
/// entry's size does not depend on what a client sends as a username.
type AccountKey = [u8; 16];

pub(crate) fn account(username: &str) -> AccountKey {
    use sha2::Digest;
    let d = sha2::Sha256::digest(username.as_bytes());
    let mut k = [0u8; 16];
    for (k, d) in k.iter_mut().zip(d) {
        *k = d;
    }
    k
}

/// IPv6 addresses count by their /64 (one subscriber's prefix).
fn group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

impl Lockout {
    pub fn new(max_failures: u32, lockout_seconds: u64, cap: usize) -> Lockout {
        Lockout {
            max_failures: max_failures.max(1),
            window_ms: (lockout_seconds.max(1) as i64).saturating_mul(1000),
            cap: cap.max(16),
            accounts: Table::new(),
            addresses: Table::new(),
            shared: crate::state::SharedState::Local,
        }
    }

    /// Keep the counters in the shared state (Redis) from now on.
    pub fn set_shared(&mut self, shared: crate::state::SharedState) {
        self.shared = shared;
    }

    pub fn from_config(cfg: &crate::config::Config) -> Lockout {
        Lockout::new(
            cfg.auth.login_max_failures,
            cfg.auth.lockout_seconds,
            cfg.limits.max_tracked_clients,
        )
    }

    /// Is this username or this address locked at `now` (ms)?
    pub async fn check(&self, username: &str, addr: Option<IpAddr>, now: i64) -> Option<Locked> {
        if let Some([account, address]) = self.shared.lockout_check(username, addr.map(group)).await
        {
            return if account {
                Some(Locked::Account)
            } else if address {
                Some(Locked::Address)
            } else {
                None
            };
        }
        if self.accounts.locked(&account(username), now) {
            return Some(Locked::Account);
        }
        if let Some(a) = addr {
            if self.addresses.locked(&group(a), now) {
                return Some(Locked::Address);
            }
        }
        None
    }

    /// Count a failed login; returns what this failure locked, if anything.
    pub async fn failure(&self, username: &str, addr: Option<IpAddr>, now: i64) -> Vec<Locked> {
        let mut out = Vec::new();
        let (max, w, cap) = (self.max_failures, self.window_ms, self.cap);
        if let Some([account, address]) = self
            .shared
            .lockout_failure(username, addr.map(group), max, w)
            .await
        {
            if account {
                out.push(Locked::Account);
            }
            if address {
                out.push(Locked::Address);
            }
            return out;
        }
        if self.accounts.fail(&account(username), now, max, w, cap) {
            out.push(Locked::Account);
        }
        if let Some(a) = addr {
            if self.addresses.fail(&group(a), now, max, w, cap) {
                out.push(Locked::Address);
            }
        }
        out
    }

    /// A successful login clears the account's counter (not the address's).
    pub async fn success(&self, username: &str) {
        if self.shared.lockout_success(username).await.is_some() {
            return;
        }
        self.accounts.clear(&account(username));
    }

    /// Entries tracked (accounts, addresses).
    pub fn tracked(&self) -> (usize, usize) {
        (self.accounts.len(), self.addresses.len())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const A: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)));

    #[tokio::test]
    async fn locks_after_max_and_releases_after_window() {
        let l = Lockout::new(3, 10, 100);
        assert!(l.failure("bob", A, 0).await.is_empty());
        assert!(l.failure("bob", A, 1).await.is_empty());
        assert_eq!(
            l.failure("bob", A, 2).await,
            vec![Locked::Account, Locked::Address]
        );
        assert_eq!(l.check("bob", None, 3).await, Some(Locked::Account));
        assert_eq!(l.check("eve", A, 3).await, Some(Locked::Address));
        assert_eq!(l.check("bob", None, 10_002).await, None);
        // after release the count starts again
        assert!(l.failure("bob", None, 10_003).await.is_empty());
    }

    #[tokio::test]
    async fn success_clears_account_not_address() {
        let l = Lockout::new(2, 10, 100);
        l.failure("bob", A, 0).await;
        l.success("bob").await;
        assert!(l.failure("bob", None, 1).await.is_empty());
        assert_eq!(l.failure("alice", A, 2).await, vec![Locked::Address]);
    }

    #[tokio::test]
    async fn ipv6_counts_by_64_and_memory_is_bounded() {
        let l = Lockout::new(2, 10, 16);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        l.failure("x", Some(a), 0).await;
        assert_eq!(l.failure("y", Some(b), 0).await, vec![Locked::Address]);
        for i in 0..1000 {
            l.failure(&format!("u{i}"), None, 5).await;
        }
        assert!(l.tracked().0 <= 16);
    }

    /// A table full of locked entries still counts a new failure: it drops
    /// the lock that ends soonest instead (it used to stop counting, so
    /// guesses against one more account were never locked).
    #[tokio::test]
    async fn a_full_table_of_locks_still_counts_new_failures() {
        let l = Lockout::new(2, 10, 16);
        for i in 0..16 {
            let name = format!("junk{i}");
            l.failure(&name, None, i).await;
            l.failure(&name, None, i).await;
            assert_eq!(l.check(&name, None, i).await, Some(Locked::Account));
        }
        assert_eq!(l.tracked().0, 16);
        assert!(l.failure("alice", None, 100).await.is_empty());
        assert_eq!(l.failure("alice", None, 101).await, vec![Locked::Account]);
        assert_eq!(l.check("alice", None, 102).await, Some(Locked::Account));
        assert!(l.tracked().0 <= 16);
        // a name of any length is one small entry, and the same account
        let long = "u".repeat(1 << 20);
        l.failure(&long, None, 200).await;
        assert_eq!(l.failure(&long, None, 201).await, vec![Locked::Account]);
        assert_eq!(l.check(&long, None, 202).await, Some(Locked::Account));
    }
}
