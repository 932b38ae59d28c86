//! Brute-force protection for logins: failure counters per account and per
//! client address.
//!
//! Threat: password guessing against one account (from many addresses) or
//! against many accounts (from one address). Guarantee: after
//! `auth.login_max_failures` failed logins within `auth.lockout_seconds` for
//! one username, or from one client address (IPv6 grouped by /64), that
//! username or address is locked for `auth.lockout_seconds`: every login
//! attempt fails, even with the right password, and answers exactly like a
//! wrong password. An attempt is admitted before its password is checked
//! and holds one of the failures its account and address have left until
//! it ends ([`Attempt`]): however many guesses arrive at once, no more
//! passwords are checked than failures are allowed (the check used to come
//! before the slow password hash and the count after it, so a burst of
//! concurrent guesses was never stopped); an attempt that finds them all
//! held waits for one to end. A success clears the account's counter only (so a valid
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
    /// Attempts admitted and not yet ended.
    pending: u32,
}

/// What [`Lockout::begin`] answers for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    Locked,
    /// Failures and attempts in flight already reach the maximum.
    Wait,
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

    /// Make room for one more key when the table is full: expired, then
    /// unlocked entries first, then the lock that ends soonest.
    fn make_room(m: &mut HashMap<K, Counter>, now: i64, window: i64, cap: usize) {
        m.retain(|_, c| c.locked_until > now || now - c.first_ms < window || c.pending > 0);
        if m.len() >= cap {
            m.retain(|_, c| c.locked_until > now || c.pending > 0);
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

    fn entry<'m>(
        m: &'m mut HashMap<K, Counter>,
        k: &K,
        now: i64,
        window: i64,
        cap: usize,
    ) -> &'m mut Counter {
        if !m.contains_key(k) && m.len() >= cap {
            Self::make_room(m, now, window, cap);
        }
        let c = m.entry(k.clone()).or_insert(Counter {
            failures: 0,
            first_ms: now,
            locked_until: 0,
            pending: 0,
        });
        // a window or a lock that has ended starts the count again
        if c.locked_until <= now && (now - c.first_ms >= window || c.locked_until != 0) {
            *c = Counter {
                failures: 0,
                first_ms: now,
                locked_until: 0,
                pending: c.pending,
            };
        }
        c
    }

    fn admit(&self, k: &K, now: i64, max: u32, window: i64, cap: usize) -> Admit {
        let mut m = self.map.lock();
        let c = Self::entry(&mut m, k, now, window, cap);
        if c.locked_until > now {
            Admit::Locked
        } else if c.failures.saturating_add(c.pending) >= max {
            Admit::Wait
        } else {
            c.pending += 1;
            Admit::Yes
        }
    }

    /// End an admitted attempt; with `failed`, count it: true when this
    /// failure locks the key.
    fn finish(&self, k: &K, now: i64, failed: bool, max: u32, window: i64, cap: usize) -> bool {
        let mut m = self.map.lock();
        let c = Self::entry(&mut m, k, now, window, cap);
        c.pending = c.pending.saturating_sub(1);
        if !failed || c.locked_until > now {
            return false;
        }
        c.failures += 1;
        if c.failures >= max {
            c.locked_until = now + window;
            return true;
        }
        false
    }

    /// Is `k` locked at `now`?
    fn locked(&self, k: &K, now: i64) -> bool {
        self.map.lock().get(k).is_some_and(|c| c.locked_until > now)
    }

    /// Lock `k` until `until` (a lock the shared state set, mirrored here).
    fn lock(&self, k: &K, now: i64, until: i64, window: i64, cap: usize) {
        let mut m = self.map.lock();
        let c = Self::entry(&mut m, k, now, window, cap);
        c.locked_until = c.locked_until.max(until);
    }

    /// A success: the key's failures are forgiven.
    fn clear_failures(&self, k: &K) {
        if let Some(c) = self.map.lock().get_mut(k) {
            c.failures = 0;
        }
    }

    fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// How long an attempt waits for attempts in flight to leave it a failure
/// to spend, and how often it looks.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const RETRY: std::time::Duration = std::time::Duration::from_millis(25);
/// Attempts in flight counted in Redis expire after this (an instance that
/// died mid-attempt does not hold its account's failures for ever).
const PENDING_TTL_MS: i64 = 60_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Abandoned,
    Failed,
    Succeeded,
}

impl Outcome {
    /// The outcome as `lockout.lua` takes it.
    fn wire(self) -> u8 {
        match self {
            Outcome::Abandoned => 0,
            Outcome::Failed => 1,
            Outcome::Succeeded => 2,
        }
    }
}

/// An admitted login attempt ([`Lockout::begin`]): it holds one of the
/// failures its account and address have left until [`Attempt::failed`]
/// or [`Attempt::succeeded`]; dropped unfinished (the client went away
/// during the password check), it gives it back.
pub struct Attempt<'a> {
    lockout: &'a Lockout,
    username: String,
    /// Grouped (IPv6 by /64).
    addr: Option<IpAddr>,
    /// Admitted by the shared state (Redis).
    shared: bool,
    open: bool,
}

impl Attempt<'_> {
    /// The password was wrong: the failure is counted; what it locked.
    pub async fn failed(self) -> Vec<Locked> {
        self.failed_at(crate::store::now_ms()).await
    }

    /// The password was right: the account's failures are cleared (the
    /// address's are not, so a valid account cannot reset them).
    pub async fn succeeded(self) {
        self.succeeded_at(crate::store::now_ms()).await;
    }

    async fn failed_at(mut self, now: i64) -> Vec<Locked> {
        self.end(Outcome::Failed, now).await
    }

    async fn succeeded_at(mut self, now: i64) {
        self.end(Outcome::Succeeded, now).await;
    }

    async fn end(&mut self, outcome: Outcome, now: i64) -> Vec<Locked> {
        self.open = false;
        let l = self.lockout;
        if self.shared {
            if let Some([account_locked, address_locked]) = l
                .shared
                .lockout_finish(
                    &self.username,
                    self.addr,
                    l.max_failures,
                    l.window_ms,
                    outcome.wire(),
                )
                .await
            {
                // mirrored here and on every instance, so the lock outlives
                // a Redis that forgets it
                let until = now + l.window_ms;
                let acc = account_locked.then(|| account(&self.username));
                let ip = self.addr.filter(|_| address_locked);
                if acc.is_some() || ip.is_some() {
                    l.mirror(acc, ip, until);
                    l.shared.announce_lock(acc, ip, until);
                }
                let mut out = Vec::new();
                if account_locked {
                    out.push(Locked::Account);
                }
                if address_locked {
                    out.push(Locked::Address);
                }
                return out;
            }
            // Redis went away mid-attempt: its attempts in flight expire
            // there; the outcome is counted here
        }
        l.finish_local(&self.username, self.addr, outcome, now)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let l = self.lockout;
        if !self.shared {
            l.finish_local(
                &self.username,
                self.addr,
                Outcome::Abandoned,
                crate::store::now_ms(),
            );
            return;
        }
        // give the Redis hold back without waiting (else it expires)
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = l.shared.clone();
            let (name, addr) = (std::mem::take(&mut self.username), self.addr);
            let (max, w) = (l.max_failures, l.window_ms);
            rt.spawn(async move {
                shared
                    .lockout_finish(&name, addr, max, w, Outcome::Abandoned.wire())
                    .await;
            });
        }
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

    /// Admit a login attempt for `username` from `addr`, before its
    /// password is checked: `Err` when the account or the address is
    /// locked. When the failures left are all held by attempts in flight,
    /// waits (up to [`WAIT`]) for one of them to end.
    pub async fn begin(&self, username: &str, addr: Option<IpAddr>) -> Result<Attempt<'_>, Locked> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match self.try_begin(username, addr, crate::store::now_ms()).await {
                Ok(a) => return Ok(a),
                Err((what, Admit::Wait)) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(locked = what.as_str(), "login waits for attempts in flight");
                    tokio::time::sleep(RETRY).await;
                }
                Err((what, _)) => return Err(what),
            }
        }
    }

    async fn try_begin(
        &self,
        username: &str,
        addr: Option<IpAddr>,
        now: i64,
    ) -> Result<Attempt<'_>, (Locked, Admit)> {
        let addr = addr.map(group);
        let mut attempt = Attempt {
            lockout: self,
            username: username.to_string(),
            addr,
            shared: false,
            open: false,
        };
        let (max, w, cap) = (self.max_failures, self.window_ms, self.cap);
        // a lock this instance holds stands whatever Redis says: one set
        // here while Redis was away, or one Redis set and then lost (a
        // restart emptied it)
        let key = account(username);
        if self.accounts.locked(&key, now) {
            return Err((Locked::Account, Admit::Locked));
        }
        if addr.is_some_and(|ip| self.addresses.locked(&ip, now)) {
            return Err((Locked::Address, Admit::Locked));
        }
        let flag = |f: u8| match f {
            0 => Admit::Yes,
            2 => Admit::Wait,
            _ => Admit::Locked,
        };
        if let Some([account, address]) = self
            .shared
            .lockout_admit(username, addr, max, PENDING_TTL_MS)
            .await
        {
            return match (flag(account), flag(address)) {
                (Admit::Yes, Admit::Yes) => {
                    attempt.shared = true;
                    attempt.open = true;
                    Ok(attempt)
                }
                (Admit::Yes, a) => Err((Locked::Address, a)),
                (a, _) => Err((Locked::Account, a)),
            };
        }
        match self.accounts.admit(&key, now, max, w, cap) {
            Admit::Yes => {}
            a => return Err((Locked::Account, a)),
        }
        if let Some(ip) = addr {
            match self.addresses.admit(&ip, now, max, w, cap) {
                Admit::Yes => {}
                a => {
                    // give the account's hold back
                    self.accounts.finish(&key, now, false, max, w, cap);
                    return Err((Locked::Address, a));
                }
            }
        }
        attempt.open = true;
        Ok(attempt)
    }

    /// Hold a lock set through Redis in this process's tables too (until
    /// `until_ms`): here, or announced by the instance that set it.
    pub fn mirror(&self, account: Option<AccountKey>, addr: Option<IpAddr>, until_ms: i64) {
        let (now, w, cap) = (crate::store::now_ms(), self.window_ms, self.cap);
        if let Some(k) = account {
            self.accounts.lock(&k, now, until_ms, w, cap);
        }
        if let Some(ip) = addr {
            self.addresses.lock(&group(ip), now, until_ms, w, cap);
        }
    }

    /// End an attempt here, in this process's tables.
    fn finish_local(
        &self,
        username: &str,
        addr: Option<IpAddr>,
        outcome: Outcome,
        now: i64,
    ) -> Vec<Locked> {
        let (max, w, cap) = (self.max_failures, self.window_ms, self.cap);
        let failed = outcome == Outcome::Failed;
        let mut out = Vec::new();
        let key = account(username);
        if self.accounts.finish(&key, now, failed, max, w, cap) {
            out.push(Locked::Account);
        }
        if outcome == Outcome::Succeeded {
            self.accounts.clear_failures(&key);
        }
        if let Some(ip) = addr {
            if self.addresses.finish(&ip, now, failed, max, w, cap) {
                out.push(Locked::Address);
            }
        }
        out
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

    fn at(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 1, last)))
    }

    /// One failed login at `now`: what it locked, or what refused it.
    async fn fail(
        l: &Lockout,
        name: &str,
        addr: Option<IpAddr>,
        now: i64,
    ) -> Result<Vec<Locked>, Locked> {
        match l.try_begin(name, addr, now).await {
            Ok(a) => Ok(a.failed_at(now).await),
            Err((what, _)) => Err(what),
        }
    }

    /// What refuses a login at `now`, if anything.
    async fn check(l: &Lockout, name: &str, addr: Option<IpAddr>, now: i64) -> Option<Locked> {
        l.try_begin(name, addr, now)
            .await
            .err()
            .map(|(what, _)| what)
    }

    #[tokio::test]
    async fn locks_after_max_and_releases_after_window() {
        let l = Lockout::new(3, 10, 100);
        assert_eq!(fail(&l, "bob", A, 0).await, Ok(vec![]));
        assert_eq!(fail(&l, "bob", A, 1).await, Ok(vec![]));
        assert_eq!(
            fail(&l, "bob", A, 2).await,
            Ok(vec![Locked::Account, Locked::Address])
        );
        assert_eq!(check(&l, "bob", None, 3).await, Some(Locked::Account));
        assert_eq!(check(&l, "eve", A, 3).await, Some(Locked::Address));
        assert_eq!(check(&l, "bob", None, 10_002).await, None);
        // after release the count starts again
        assert_eq!(fail(&l, "bob", None, 10_003).await, Ok(vec![]));
    }

    #[tokio::test]
    async fn success_clears_account_not_address() {
        let l = Lockout::new(2, 10, 100);
        fail(&l, "bob", A, 0).await.unwrap();
        l.try_begin("bob", None, 0)
            .await
            .unwrap()
            .succeeded_at(0)
            .await;
        assert_eq!(fail(&l, "bob", None, 1).await, Ok(vec![]));
        assert_eq!(fail(&l, "alice", A, 2).await, Ok(vec![Locked::Address]));
    }

    /// Attempts in flight hold the failures left: with three allowed, a
    /// fourth concurrent guess is not admitted until one ends, and is
    /// refused once they have failed. (The lock used to be checked before
    /// the slow password check and the failure counted after it, so any
    /// number of concurrent guesses got their password checked.)
    #[tokio::test]
    async fn attempts_in_flight_hold_the_failures_left() {
        let l = Lockout::new(3, 10, 100);
        let a1 = l.try_begin("bob", at(1), 0).await.unwrap();
        let a2 = l.try_begin("bob", at(2), 0).await.unwrap();
        let a3 = l.try_begin("bob", at(3), 0).await.unwrap();
        assert!(matches!(
            l.try_begin("bob", at(4), 0).await,
            Err((Locked::Account, Admit::Wait))
        ));
        assert!(a1.failed_at(0).await.is_empty());
        assert!(a2.failed_at(0).await.is_empty());
        assert_eq!(a3.failed_at(0).await, vec![Locked::Account]);
        assert!(matches!(
            l.try_begin("bob", at(4), 0).await,
            Err((Locked::Account, Admit::Locked))
        ));
        // the same for one address guessing many accounts
        let held: Vec<_> = [
            l.try_begin("u1", A, 0).await.unwrap(),
            l.try_begin("u2", A, 0).await.unwrap(),
            l.try_begin("u3", A, 0).await.unwrap(),
        ]
        .into();
        assert!(matches!(
            l.try_begin("u4", A, 0).await,
            Err((Locked::Address, Admit::Wait))
        ));
        // ... whose account hold was given back
        drop(held);
        assert!(l.try_begin("u4", at(9), 0).await.is_ok());
        // an attempt dropped unfinished (the client left) gives its hold back
        let l = Lockout::new(1, 10, 100);
        drop(l.try_begin("amy", A, 0).await.unwrap());
        assert!(l.try_begin("amy", A, 0).await.is_ok());
    }

    /// `begin` waits for an attempt in flight to end instead of refusing.
    #[tokio::test]
    async fn a_waiting_attempt_goes_on_when_one_in_flight_succeeds() {
        let l = Lockout::new(1, 10, 100);
        let first = l.begin("bob", at(1)).await.unwrap();
        let (second, ()) = tokio::join!(l.begin("bob", at(2)), async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            first.succeeded().await;
        });
        assert!(second.is_ok());
    }

    #[tokio::test]
    async fn ipv6_counts_by_64_and_memory_is_bounded() {
        let l = Lockout::new(2, 10, 16);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        fail(&l, "x", Some(a), 0).await.unwrap();
        assert_eq!(fail(&l, "y", Some(b), 0).await, Ok(vec![Locked::Address]));
        for i in 0..1000 {
            let _ = fail(&l, &format!("u{i}"), None, 5).await;
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
            fail(&l, &name, None, i).await.unwrap();
            fail(&l, &name, None, i).await.unwrap();
            assert_eq!(check(&l, &name, None, i).await, Some(Locked::Account));
        }
        assert_eq!(l.tracked().0, 16);
        assert_eq!(fail(&l, "alice", None, 100).await, Ok(vec![]));
        assert_eq!(
            fail(&l, "alice", None, 101).await,
            Ok(vec![Locked::Account])
        );
        assert_eq!(check(&l, "alice", None, 102).await, Some(Locked::Account));
        assert!(l.tracked().0 <= 16);
        // a name of any length is one small entry, and the same account
        let long = "u".repeat(1 << 20);
        fail(&l, &long, None, 200).await.unwrap();
        assert_eq!(fail(&l, &long, None, 201).await, Ok(vec![Locked::Account]));
        assert_eq!(check(&l, &long, None, 202).await, Some(Locked::Account));
    }
}
