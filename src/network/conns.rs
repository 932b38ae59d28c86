//! Open connections per client address.
//!
//! Threat: one address holding every connection slot of
//! `network.max_connections` (connections that never finish their request,
//! stall their responses or sit on idle WebSockets), so that nobody else is
//! served; each such connection is bounded in time, but one address could
//! open them as fast as they close.
//! Guarantee: at most `network.max_connections_per_address` connections
//! from one TCP peer (one IPv6 /64 when bans group by /64) are open at
//! once; another is closed at the accept, before a byte of it is read.
//! Trusted proxies and allowlisted addresses are not counted (the clients
//! behind a proxy share its address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// The count of open connections by address.
pub struct PerAddress {
    max: usize,
    group_v6: bool,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection: the count goes down when it is dropped.
pub struct Counted {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut open = self.table.open.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

impl PerAddress {
    pub fn new(max: usize, group_v6: bool) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            max: max.max(1),
            group_v6,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// Count a new connection from `peer`, or `None` when the address has
    /// its maximum open already.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Counted> {
        let key = super::ban::group(peer, self.group_v6);
        let mut open = self.open.lock();
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Counted {
            table: self.clone(),
            key,
        })
    }

    /// Addresses with a connection open (for tests and metrics).
    pub fn addresses(&self) -> usize {
        self.open.lock().len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_its_maximum_and_the_count_follows_drops() {
        let t = PerAddress::new(2, true);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let (x, y) = (t.admit(a).unwrap(), t.admit(a).unwrap());
        assert!(t.admit(a).is_none());
        assert!(t.admit("192.0.2.2".parse().unwrap()).is_some());
        drop(x);
        let z = t.admit(a).unwrap();
        drop((y, z));
        assert_eq!(t.addresses(), 0);
        // one /64 is one address
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _p = t.admit(v6("2001:db8::1")).unwrap();
        let _q = t.admit(v6("2001:db8::2")).unwrap();
        assert!(t.admit(v6("2001:db8::3")).is_none());
    }
}
