//! Sliding-window rate limiting and burst counting, with a bounded table of
//! tracked clients.
//!
//! Threat: one client (address or identity) sending more than its share, and
//! a flood of distinct sources exhausting memory through the limiter's own
//! bookkeeping.
//!
//! Guarantee (the exact bound, tested by a property test over random arrival
//! times): a [`Counter`] split into `k` = [`BUCKETS`] sub-windows of
//! `b = ceil(W / k)` milliseconds keeps `k + 1` bucket counts and admits a
//! request at time `t` only if the admitted requests counted in the current
//! bucket and the `k` before it are fewer than `N`. Those buckets cover every
//! instant in `[t - W, t]`, so **no interval of length `W` (closed or open)
//! ever contains more than `N` admitted requests**. The approximation only
//! errs on the strict side: a slot is freed at most `b` (a tenth of the
//! window) later than an exact sliding log would free it (when `W` is a
//! multiple of `k` milliseconds, as every whole-second window is), so a
//! request is refused only if `N` were admitted within the last `W + b`.
//! Refused requests are not counted (a client that keeps retrying while limited
//! is admitted again as soon as the window has moved).
//!
//! Memory: one [`Counter`] is 11 `u32` counts plus the newest bucket number
//! (56 bytes). A [`Table`] holds at most `capacity` clients (exactly: the cap
//! is split over the shards); when a shard is full, its least recently seen
//! client is evicted. Consequence of an eviction: that client's counts are
//! forgotten, so it could get up to `N` more requests in the current window.
//! That only happens when more than `limits.max_tracked_clients` distinct
//! clients were seen more recently than it, i.e. under a flood of distinct
//! sources; size the cap above the number of clients active in one window.
//!
//! Concurrency: the table is split into shards, each behind its own mutex,
//! held only for the few nanoseconds of one decision and never across an
//! `.await`. Time is a parameter (`now_ms`, a monotonic millisecond clock in
//! production), so tests and the property test drive it directly.

use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};

use hashlink::LruCache;
use parking_lot::Mutex;

use crate::http::respond::RateLimitInfo;

/// Sub-windows per window (`k`).
pub const BUCKETS: u64 = 10;
const RING: usize = BUCKETS as usize + 1;

/// A limit: at most `limit` requests in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window_ms: u64,
    bucket_ms: u64,
}

impl Window {
    pub fn new(limit: u32, window_ms: u64) -> Window {
        let window_ms = window_ms.max(BUCKETS);
        Window {
            limit,
            window_ms,
            bucket_ms: window_ms.div_ceil(BUCKETS),
        }
    }

    /// The width of one sub-window (the most a slot is freed late).
    pub fn bucket_ms(&self) -> u64 {
        self.bucket_ms
    }
}

/// The per-client counts of one window (fixed size).
#[derive(Debug, Clone, Default)]
pub struct Counter {
    counts: [u32; RING],
    /// The bucket number (`now / bucket_ms`) of the newest slot.
    head: u64,
}

// Ring positions are taken modulo `RING` (the array's length).
#[allow(clippy::indexing_slicing)]
impl Counter {
    /// Move the ring to `now`, clearing buckets that left the window. Time
    /// never goes back: an earlier `now` counts into the newest bucket.
    fn advance(&mut self, w: &Window, now_ms: u64) {
        let cur = now_ms / w.bucket_ms;
        if cur <= self.head {
            return;
        }
        let gap = cur - self.head;
        if gap >= RING as u64 {
            self.counts = [0; RING];
        } else {
            for i in 1..=gap {
                self.counts[((self.head + i) % RING as u64) as usize] = 0;
            }
        }
        self.head = cur;
    }

    fn total(&self) -> u32 {
        self.counts.iter().fold(0u32, |a, &c| a.saturating_add(c))
    }

    fn slot(&self) -> usize {
        (self.head % RING as u64) as usize
    }

    /// Milliseconds from `now` until the counted total drops to at most
    /// `target` (the oldest buckets leave the window one by one).
    fn ms_until_total_at_most(&self, w: &Window, now_ms: u64, target: u32) -> u64 {
        let mut total = self.total();
        for j in 0..RING as u64 {
            if total <= target {
                break;
            }
            // bucket number head - k + j lives in slot (head + 1 + j) % RING
            let idx = ((self.head + 1 + j) % RING as u64) as usize;
            total = total.saturating_sub(self.counts[idx]);
            if total <= target {
                return ((self.head + j + 1) * w.bucket_ms).saturating_sub(now_ms);
            }
        }
        0
    }

    fn info(&self, w: &Window, now_ms: u64) -> RateLimitInfo {
        let total = self.total();
        let remaining = w.limit.saturating_sub(total);
        // Until a slot frees: the total must drop below what it is now (when
        // refused: below the limit).
        let target = total.min(w.limit).saturating_sub(1);
        let ms = self.ms_until_total_at_most(w, now_ms, target);
        RateLimitInfo {
            limit: w.limit,
            remaining,
            reset: ms.div_ceil(1000).max(1),
        }
    }

    /// Admit one request at `now_ms` if the window has room. `Ok` carries the
    /// figures after counting it; `Err` the figures of the refusal (`reset` =
    /// seconds until a request would be admitted).
    pub fn try_admit(&mut self, w: &Window, now_ms: u64) -> Result<RateLimitInfo, RateLimitInfo> {
        self.advance(w, now_ms);
        if self.total() >= w.limit {
            return Err(self.info(w, now_ms));
        }
        let s = self.slot();
        self.counts[s] = self.counts[s].saturating_add(1);
        Ok(self.info(w, now_ms))
    }

    /// Count one arrival at `now_ms` (whatever is decided about it); returns
    /// how many are counted in the window, this one included.
    pub fn record(&mut self, w: &Window, now_ms: u64) -> u32 {
        self.advance(w, now_ms);
        let s = self.slot();
        self.counts[s] = self.counts[s].saturating_add(1);
        self.total()
    }

    /// Forget everything (after a ban was decided from it).
    pub fn clear(&mut self) {
        self.counts = [0; RING];
    }
}

/// A sharded, capped LRU table of per-client state.
pub struct Table<K, V> {
    shards: Box<[Mutex<LruCache<K, V>>]>,
    hasher: foldhash::quality::RandomState,
}

const MAX_SHARDS: usize = 64;

impl<K: Hash + Eq, V: Default> Table<K, V> {
    /// A table holding at most `capacity` entries (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let n = capacity.min(MAX_SHARDS);
        let (base, extra) = (capacity / n, capacity % n);
        let shards = (0..n)
            .map(|i| Mutex::new(LruCache::new(base + usize::from(i < extra))))
            .collect();
        Table {
            shards,
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    // The shard is chosen by foldhash's quality variant (a final mixing
    // round over the fast one, random seed), scaled to the (never empty)
    // shard count. The fast variant, which the tables use inside, spread
    // small keys so unevenly over the shards for some seeds that a table of
    // 7 held 2 (a lower real capacity, and a way for a client to crowd out
    // others' counters).
    #[allow(clippy::indexing_slicing)]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<LruCache<K, V>> {
        let h = u128::from(self.hasher.hash_one(key));
        let i = ((h * self.shards.len() as u128) >> 64) as usize;
        &self.shards[i]
    }

    /// Run `f` on the entry of `key` (created when absent, evicting the
    /// shard's least recently seen entry if full); marks it recently seen.
    pub fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&mut V) -> R) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut shard = self.shard(key).lock();
        if let Some(v) = shard.get_mut(key) {
            return f(v);
        }
        let mut v = V::default();
        let r = f(&mut v);
        shard.insert(key.to_owned(), v);
        r
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the table holds.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| s.lock().capacity()).sum()
    }
}

/// The per-address state: the rate window and the one-second burst counter.
#[derive(Debug, Default, Clone)]
pub struct ClientCounters {
    pub rate: Counter,
    pub burst: Counter,
}

/// What the limiter says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(RateLimitInfo),
    Limited(RateLimitInfo),
    /// More than the burst limit arrived within one second.
    Burst,
}

/// Per-address limits: a rate window and a burst (DDoS) window.
pub struct Limiter<K> {
    pub rate: Window,
    /// `limits.ddos.max_requests_per_second` over one second.
    pub burst: Window,
    table: Table<K, ClientCounters>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(rate: Window, burst: Window, capacity: usize) -> Self {
        Limiter {
            rate,
            burst,
            table: Table::new(capacity),
        }
    }

    /// One decision: count the arrival in the burst window (every arrival
    /// counts there, refused or not, so a client that ignores 429s is
    /// caught); then the rate window (only admitted requests count).
    pub fn check(&self, key: &K, now_ms: u64) -> Decision {
        self.table.with(key, |c| {
            if c.burst.record(&self.burst, now_ms) > self.burst.limit {
                c.burst.clear();
                return Decision::Burst;
            }
            match c.rate.try_admit(&self.rate, now_ms) {
                Ok(i) => Decision::Allowed(i),
                Err(i) => Decision::Limited(i),
            }
        })
    }

    /// Tracked clients now.
    pub fn tracked(&self) -> usize {
        self.table.len()
    }

    pub fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

/// A plain rate limit keyed by identity (user id), for `limits.per_identity`.
pub struct IdentityLimiter {
    pub rate: Window,
    table: Table<String, Counter>,
}

impl IdentityLimiter {
    pub fn new(rate: Window, capacity: usize) -> Self {
        IdentityLimiter {
            rate,
            table: Table::new(capacity),
        }
    }

    pub fn check(&self, user_id: &str, now_ms: u64) -> Result<RateLimitInfo, RateLimitInfo> {
        self.table
            .with(user_id, |c| c.try_admit(&self.rate, now_ms))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn boundary_and_headers() {
        let w = Window::new(3, 2000);
        let mut c = Counter::default();
        let a = c.try_admit(&w, 10_000).unwrap();
        assert_eq!((a.limit, a.remaining), (3, 2));
        assert_eq!(c.try_admit(&w, 10_001).unwrap().remaining, 1);
        assert_eq!(c.try_admit(&w, 10_002).unwrap().remaining, 0);
        let r = c.try_admit(&w, 10_003).unwrap_err();
        assert_eq!(r.remaining, 0);
        // all three sit in bucket 50 (200 ms buckets): it leaves the window
        // at bucket 61 = 12_200 ms
        assert_eq!(r.reset, 3);
        assert!(c.try_admit(&w, 12_199).is_err());
        assert!(c.try_admit(&w, 12_200).is_ok());
    }

    #[test]
    fn reset_on_success_is_when_the_oldest_slot_frees() {
        let w = Window::new(10, 60_000);
        let mut c = Counter::default();
        let i = c.try_admit(&w, 0).unwrap();
        assert_eq!(i.reset, 66); // bucket 0 leaves at bucket 11 = 66 s
        let i = c.try_admit(&w, 30_000).unwrap();
        assert_eq!(i.reset, 36);
    }

    #[test]
    fn burst_counts_every_arrival() {
        let lim = Limiter::new(Window::new(2, 60_000), Window::new(3, 1000), 10);
        let k = 1u32;
        assert!(matches!(lim.check(&k, 0), Decision::Allowed(_)));
        assert!(matches!(lim.check(&k, 1), Decision::Allowed(_)));
        assert!(matches!(lim.check(&k, 2), Decision::Limited(_)));
        assert_eq!(lim.check(&k, 3), Decision::Burst);
        // two seconds later the burst window is empty again
        assert!(matches!(lim.check(&k, 2500), Decision::Limited(_)));
    }

    #[test]
    fn table_stays_at_its_cap() {
        for cap in [1usize, 7, 100, 1000] {
            let lim = Limiter::new(Window::new(5, 1000), Window::new(100, 1000), cap);
            for i in 0..(10 * cap as u32) {
                lim.check(&i, u64::from(i));
            }
            // never above the cap; each shard fills to its share, so the
            // table is at (or, when the random hash seed spreads keys
            // unevenly, just under) the cap
            assert!(lim.tracked() <= cap, "{} > {cap}", lim.tracked());
            assert!(lim.tracked() * 10 >= cap * 9, "{} of {cap}", lim.tracked());
            assert_eq!(lim.capacity(), cap);
        }
    }

    #[test]
    fn least_recently_seen_is_evicted() {
        let t: Table<u32, u32> = Table::new(1);
        t.with(&1, |v| *v = 5);
        t.with(&2, |v| *v = 6);
        assert_eq!(t.with(&1, |v| *v), 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Never more than N admitted in any interval of length W, over random
        /// arrival times; and the limiter is not much stricter than exact (a
        /// request is refused only if N were admitted in the last (k+1)·b).
        #[test]
        fn never_more_than_n_in_any_window(
            limit in 1u32..20,
            window in 10u64..5000,
            gaps in proptest::collection::vec(0u64..400, 1..400),
        ) {
            let w = Window::new(limit, window);
            let mut c = Counter::default();
            let mut now = 0u64;
            let mut admitted: Vec<u64> = Vec::new();
            for g in gaps {
                now += g;
                let span = (BUCKETS + 1) * w.bucket_ms();
                let recent = admitted.iter().filter(|&&t| t + span > now).count();
                match c.try_admit(&w, now) {
                    Ok(_) => admitted.push(now),
                    Err(_) => prop_assert!(recent >= limit as usize, "refused with {} in W+b", recent),
                }
            }
            // every closed interval [s, s + W]: check those starting at an admission
            for (i, &s) in admitted.iter().enumerate() {
                let n = admitted[i..].iter().take_while(|&&t| t <= s + window).count();
                prop_assert!(n <= limit as usize, "{} admitted in [{}, {}]", n, s, s + window);
            }
        }
    }
}
