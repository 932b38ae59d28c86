//! How often a banned address's refused requests reach the audit log.
//!
//! Threat: a banned client (or a botnet of them) flooding the server. Each
//! refusal is cheap to send, and an `api_access` event per refusal is a line
//! in the hash-chained file and a row in the database: about 0.7 KB of disk
//! per request, so a single client at 40k requests a second writes
//! ~100 GB an hour, and the audit log (whose rotated files are never deleted)
//! becomes the way to fill the disk and take the server down.
//!
//! Guarantee: the first `ip_banned` refusal of an address in each
//! [`WINDOW`] is audited as ever; the others are counted, and the count is
//! the `suppressed` field of the next audited one (so the log still tells
//! how many requests a ban refused). The ban itself (`ban_added`) and every
//! request before it are audited one by one; every refusal is still counted
//! in the metrics. The table is an LRU of [`CAPACITY`] addresses: an address
//! pushed out is audited again at its next refusal, never silenced.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// One audited refusal per banned address per window.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Addresses tracked at once (least recently refused forgotten first).
const CAPACITY: usize = 65_536;

struct Seen {
    audited_at: Instant,
    suppressed: u64,
}

/// Per-address sampling of `ip_banned` refusals for the audit log.
pub struct BannedRefusals {
    seen: Mutex<hashlink::LruCache<IpAddr, Seen>>,
}

impl Default for BannedRefusals {
    fn default() -> Self {
        BannedRefusals {
            seen: Mutex::new(hashlink::LruCache::new(CAPACITY)),
        }
    }
}

impl BannedRefusals {
    /// Whether this refusal of `ip` at `now` is audited: `Some(n)` with the
    /// refusals not audited since the previous audited one, `None` when it
    /// is only counted.
    pub fn audit(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock();
        match seen.get_mut(&ip) {
            Some(s) if now.saturating_duration_since(s.audited_at) < WINDOW => {
                s.suppressed += 1;
                None
            }
            Some(s) => {
                let n = s.suppressed;
                *s = Seen {
                    audited_at: now,
                    suppressed: 0,
                };
                Some(n)
            }
            None => {
                seen.insert(
                    ip,
                    Seen {
                        audited_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn one_refusal_per_window_is_audited_with_the_count_of_the_others() {
        let r = BannedRefusals::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(r.audit(a, t0), Some(0));
        for i in 1..=9 {
            assert_eq!(r.audit(a, t0 + Duration::from_secs(i)), None);
        }
        // another address is not silenced by the first
        assert_eq!(r.audit(b, t0 + Duration::from_secs(5)), Some(0));
        assert_eq!(r.audit(a, t0 + WINDOW), Some(9));
        assert_eq!(r.audit(a, t0 + WINDOW + Duration::from_secs(1)), None);
        assert_eq!(r.audit(a, t0 + WINDOW * 2), Some(1));
    }

    #[test]
    fn an_address_pushed_out_of_the_table_is_audited_again() {
        let r = BannedRefusals::default();
        let t0 = Instant::now();
        let first: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(r.audit(first, t0), Some(0));
        for i in 0..CAPACITY as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0b00_0000 + i));
            r.audit(ip, t0);
        }
        assert_eq!(r.audit(first, t0), Some(0));
    }
}
