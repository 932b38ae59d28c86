//! Bans: addresses refused before any other work.
//!
//! Threat: an address that floods (burst), probes (IDS blocks) or guesses
//! passwords keeps costing work on every request; a restart forgiving every
//! ban; repeat offenders coming straight back after each ban.
//!
//! Guarantee: a banned address gets 403 `ip_banned` with `Retry-After` from
//! the network layer, before the limiter, the IDS, authentication or any
//! database access. Bans live in memory (one read lock per request; none
//! when no ban exists) and in the `bans` table, loaded at start, so they
//! survive a restart. Escalating bans double with each offence
//! (`base · 2^(offences-1)`, capped); an address's offences are remembered for
//! the cap's length after its last ban ended, then pruned from memory and
//! the database. While an address is banned, further triggers add no offence
//! (a banned client cannot drive its own ban into an endless renewal: its
//! requests never reach a detector). The table holds at most `capacity`
//! addresses: when full, expired entries go first, then the ban ending
//! soonest.
//!
//! Keys are the grouped client address ([`group`]): IPv4 (IPv4-mapped IPv6
//! folded to IPv4), or with `limits.ipv6_group_by_64` the IPv6 /64 network,
//! written `2001:db8:1:2::/64`.
//!
//! With Redis (`crate::state`), bans live in Redis too (checked on every
//! request) and this table mirrors them (pub/sub), for listing and as the
//! `fail_open` fallback.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

use hashlink::DefaultHashBuilder;
use parking_lot::RwLock;

/// The limiter/ban key of a client address.
pub fn group(ip: IpAddr, ipv6_by_64: bool) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if ipv6_by_64 => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        other => other,
    }
}

/// How a key is written (API, database, audit).
pub fn key_string(key: IpAddr, ipv6_by_64: bool) -> String {
    match key {
        IpAddr::V6(_) if ipv6_by_64 => format!("{key}/64"),
        _ => key.to_string(),
    }
}

/// Parse an address (or a written `/64` key) into its key.
pub fn parse_key(s: &str, ipv6_by_64: bool) -> Option<IpAddr> {
    let s = s.trim();
    let ip: IpAddr = match s.strip_suffix("/64") {
        Some(v6) if ipv6_by_64 => match v6.parse().ok()? {
            ip @ IpAddr::V6(_) => ip,
            IpAddr::V4(_) => return None,
        },
        _ => s.parse().ok()?,
    };
    Some(group(ip, ipv6_by_64))
}

/// A ban as stored and listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BanRecord {
    pub key: IpAddr,
    pub until_ms: i64,
    pub reason: String,
    pub created_at: i64,
    pub offences: i64,
}

impl BanRecord {
    /// Seconds until it ends (at least 1 while active).
    pub fn retry_after(&self, now_ms: i64) -> u64 {
        let ms = (self.until_ms - now_ms).max(0) as u64;
        ms.div_ceil(1000).max(1)
    }
}

/// How long a new ban lasts.
#[derive(Debug, Clone, Copy)]
pub enum Length {
    /// Exactly this long (an operator's ban); replaces an active ban.
    Fixed(u64),
    /// `base · 2^(offences-1)` seconds, at most `cap`; no-op while banned.
    Escalating { base: u64, cap: u64 },
}

fn escalated(base: u64, cap: u64, offences: i64) -> u64 {
    let shift = (offences.max(1) - 1).min(40) as u32;
    base.max(1).saturating_mul(1u64 << shift).min(cap.max(base))
}

/// The ban table.
pub struct Bans {
    map: RwLock<HashMap<IpAddr, BanRecord, DefaultHashBuilder>>,
    len: AtomicUsize,
    /// `limits.max_bans`: its own cap, never the tracked clients'.
    capacity: usize,
    /// Active bans evicted by newer ones past the cap.
    evicted: std::sync::atomic::AtomicU64,
    /// How long offences are remembered after a ban ends.
    memory_ms: i64,
}

impl Bans {
    pub fn new(capacity: usize, memory_seconds: u64) -> Bans {
        Bans {
            map: RwLock::new(HashMap::default()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
            evicted: std::sync::atomic::AtomicU64::new(0),
            memory_ms: (memory_seconds.min(i64::MAX as u64 / 1000) * 1000) as i64,
        }
    }

    /// `Some(retry_after)` when `key` is banned at `now_ms`.
    pub fn check(&self, key: &IpAddr, now_ms: i64) -> Option<u64> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let map = self.map.read();
        let b = map.get(key)?;
        (b.until_ms > now_ms).then(|| b.retry_after(now_ms))
    }

    /// Ban `key`. Returns the new record, or `None` when an escalating ban
    /// finds the address already banned (nothing changes).
    pub fn ban(&self, key: IpAddr, len: Length, reason: &str, now_ms: i64) -> Option<BanRecord> {
        let mut map = self.map.write();
        let prev = map.get(&key);
        if let (Some(p), Length::Escalating { .. }) = (prev, len) {
            if p.until_ms > now_ms {
                return None;
            }
        }
        let offences = prev.map_or(0, |p| p.offences) + 1;
        let seconds = match len {
            Length::Fixed(s) => s,
            Length::Escalating { base, cap } => escalated(base, cap, offences),
        };
        let rec = BanRecord {
            key,
            until_ms: now_ms.saturating_add((seconds.min(i64::MAX as u64 / 2000) * 1000) as i64),
            reason: reason.to_string(),
            created_at: now_ms,
            offences,
        };
        if prev.is_none() && map.len() >= self.capacity {
            self.make_room(&mut map, now_ms);
        }
        map.insert(key, rec.clone());
        self.len.store(map.len(), Ordering::Relaxed);
        Some(rec)
    }

    fn make_room(&self, map: &mut HashMap<IpAddr, BanRecord, DefaultHashBuilder>, now_ms: i64) {
        map.retain(|_, b| b.until_ms > now_ms);
        while map.len() >= self.capacity {
            let Some(k) = map.values().min_by_key(|b| b.until_ms).map(|b| b.key) else {
                break;
            };
            map.remove(&k);
            let n = self.evicted.fetch_add(1, Ordering::Relaxed) + 1;
            // the soonest to end goes; an operator should know bans are
            // being cut short (logged at the first and every 1,000th)
            if n == 1 || n.is_multiple_of(1000) {
                tracing::warn!(
                    evicted = n,
                    cap = self.capacity,
                    "ban table full (limits.max_bans): the ban that ends soonest was evicted for a newer one"
                );
            }
        }
    }

    /// Insert a ban decided elsewhere (the shared state, another instance),
    /// replacing this address's entry.
    pub fn put(&self, rec: BanRecord) {
        let mut map = self.map.write();
        if !map.contains_key(&rec.key) && map.len() >= self.capacity {
            self.make_room(&mut map, rec.created_at);
        }
        map.insert(rec.key, rec);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// Insert a stored ban unless this address already has one lasting at
    /// least as long (catching up from the database).
    pub fn merge(&self, rec: BanRecord) {
        let longer = self
            .map
            .read()
            .get(&rec.key)
            .is_some_and(|b| b.until_ms >= rec.until_ms);
        if !longer {
            self.put(rec);
        }
    }

    /// Lift the active bans set before `before_ms` whose address is not in
    /// `stored` (the database's active bans): lifted elsewhere while this
    /// instance could not hear of it. Younger bans may not be stored yet.
    /// Returns the addresses lifted.
    pub fn lift_absent(
        &self,
        stored: &std::collections::HashSet<IpAddr>,
        before_ms: i64,
        now_ms: i64,
    ) -> Vec<IpAddr> {
        let mut map = self.map.write();
        let mut lifted = Vec::new();
        map.retain(|k, b| {
            let keep = b.until_ms <= now_ms || b.created_at >= before_ms || stored.contains(k);
            if !keep {
                lifted.push(*k);
            }
            keep
        });
        self.len.store(map.len(), Ordering::Relaxed);
        lifted
    }

    /// Lift an active ban (offences are forgotten too). `false` when `key`
    /// is not banned now.
    pub fn lift(&self, key: &IpAddr, now_ms: i64) -> bool {
        let mut map = self.map.write();
        let active = map.get(key).is_some_and(|b| b.until_ms > now_ms);
        if active {
            map.remove(key);
            self.len.store(map.len(), Ordering::Relaxed);
        }
        active
    }

    /// Active bans, ordered by key.
    pub fn active(&self, now_ms: i64) -> Vec<BanRecord> {
        let mut v: Vec<BanRecord> = self
            .map
            .read()
            .values()
            .filter(|b| b.until_ms > now_ms)
            .cloned()
            .collect();
        v.sort_by_key(|b| b.key);
        v
    }

    pub fn active_count(&self, now_ms: i64) -> usize {
        self.map
            .read()
            .values()
            .filter(|b| b.until_ms > now_ms)
            .count()
    }

    /// Load stored bans (at start).
    pub fn load(&self, rows: impl IntoIterator<Item = BanRecord>) {
        let mut map = self.map.write();
        for r in rows {
            if map.len() < self.capacity {
                map.insert(r.key, r);
            }
        }
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// Forget entries whose ban ended longer than the offence memory ago;
    /// returns the cut-off (`until_ms` below it is gone) for the database.
    pub fn prune(&self, now_ms: i64) -> i64 {
        let cutoff = now_ms.saturating_sub(self.memory_ms);
        let mut map = self.map.write();
        map.retain(|_, b| b.until_ms >= cutoff);
        self.len.store(map.len(), Ordering::Relaxed);
        cutoff
    }

    /// Active bans evicted by newer ones past the cap, since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
    }

    /// Entries held (active or remembered).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn grouping() {
        assert_eq!(
            group(ip("2001:db8:1:2:aaaa::1"), true),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            group(ip("2001:db8:1:2:aaaa::1"), false),
            ip("2001:db8:1:2:aaaa::1")
        );
        assert_eq!(group(ip("::ffff:10.0.0.1"), true), ip("10.0.0.1"));
        assert_eq!(key_string(ip("2001:db8::"), true), "2001:db8::/64");
        assert_eq!(parse_key("2001:db8::/64", true), Some(ip("2001:db8::")));
        assert_eq!(parse_key("2001:db8::7", true), Some(ip("2001:db8::")));
        assert_eq!(parse_key("10.0.0.1/64", true), None);
        assert_eq!(parse_key("nonsense", true), None);
    }

    #[test]
    fn escalation_doubles_up_to_the_cap() {
        let b = Bans::new(10, 3600);
        let k = ip("10.0.0.1");
        let len = Length::Escalating { base: 10, cap: 35 };
        let r = b.ban(k, len, "ddos", 0).unwrap();
        assert_eq!((r.until_ms, r.offences), (10_000, 1));
        // already banned: no new offence
        assert!(b.ban(k, len, "ddos", 5_000).is_none());
        assert_eq!(b.check(&k, 5_000), Some(5));
        assert_eq!(b.check(&k, 10_000), None);
        let r = b.ban(k, len, "ddos", 10_000).unwrap();
        assert_eq!((r.until_ms, r.offences), (30_000, 2));
        let r = b.ban(k, len, "ddos", 30_000).unwrap();
        assert_eq!(r.until_ms, 65_000); // 40 capped at 35
    }

    #[test]
    fn offences_are_forgotten_after_the_memory() {
        let b = Bans::new(10, 100);
        let k = ip("10.0.0.1");
        let len = Length::Escalating {
            base: 10,
            cap: 1000,
        };
        b.ban(k, len, "x", 0).unwrap();
        b.prune(10_000 + 100_000);
        assert_eq!(b.len(), 1);
        b.prune(10_000 + 100_001);
        assert_eq!(b.len(), 0);
        assert_eq!(b.ban(k, len, "x", 200_000).unwrap().offences, 1);
    }

    #[test]
    fn capacity_is_kept() {
        let b = Bans::new(3, 10);
        for i in 0..30u8 {
            b.ban(
                IpAddr::from([10, 0, 0, i]),
                Length::Fixed(100 + u64::from(i)),
                "x",
                0,
            );
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.evicted(), 27);
        // the longest bans are kept
        assert!(b.check(&IpAddr::from([10, 0, 0, 29]), 1).is_some());
    }

    #[test]
    fn lift_only_active() {
        let b = Bans::new(3, 10);
        let k = ip("10.0.0.1");
        assert!(!b.lift(&k, 0));
        b.ban(k, Length::Fixed(1), "x", 0);
        assert!(!b.lift(&k, 1000));
        b.ban(k, Length::Fixed(1), "x", 0);
        assert!(b.lift(&k, 999));
        assert_eq!(b.check(&k, 1), None);
    }
}
