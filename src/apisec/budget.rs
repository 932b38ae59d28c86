//! The server-wide budget of bytes held in buffered request bodies.
//!
//! Threat: request bodies are buffered (for the IDS, then the handlers)
//! before credentials are checked, so clients that send all but the last
//! byte of many large bodies and stall make the server hold
//! `max_connections` x `body_max_bytes` of memory (probe-G #1: 1,000
//! stalled 1 MiB uploads from 40 addresses, each inside its own limits,
//! took about 1 GB).
//! Guarantee: the bytes of every buffered body (IDS buffer, handler body,
//! the inspected window of a gateway body) count against one budget,
//! `limits.body_budget_bytes`; they are counted as each frame is read and
//! given back when the last reference to the buffer is dropped. A request
//! whose next frame does not fit is answered 503 `unavailable` with
//! `Retry-After` at once (never a wait: a waiting request would hold its
//! connection and what it already read). One client address holds at most
//! `limits.body_budget_per_address_bytes` of it (an eighth by default), so
//! one address's stalled uploads cannot refuse everyone else's. Each
//! growth of a body's buffer (one, with a declared length) costs a short
//! lock of the per-address table and one atomic add; giving it back the
//! same.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use prometheus_client::metrics::gauge::Gauge;

use crate::http::ApiError;

/// The budget: bytes in use (the `frenly_body_budget_used_bytes` gauge's
/// own atomic, so the metric costs nothing more) and the cap, and the bytes
/// each client address holds, capped at its share.
#[derive(Debug)]
pub struct BodyBudget {
    used: Gauge,
    cap: i64,
    per_address: i64,
    by_address: parking_lot::Mutex<HashMap<IpAddr, i64>>,
}

impl BodyBudget {
    pub fn new(cap: usize, per_address: usize, used: Gauge) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            used,
            cap: i64::try_from(cap).unwrap_or(i64::MAX),
            per_address: i64::try_from(per_address).unwrap_or(i64::MAX),
            by_address: parking_lot::Mutex::new(HashMap::new()),
        })
    }

    /// Take `n` bytes for `addr`: its share first, then the whole budget.
    fn take(&self, addr: Option<IpAddr>, n: i64) -> Result<(), ApiError> {
        if let Some(a) = addr {
            let mut m = self.by_address.lock();
            let held = m.entry(a).or_insert(0);
            if held.saturating_add(n) > self.per_address {
                if *held == 0 {
                    m.remove(&a);
                }
                return Err(ApiError::Busy);
            }
            *held += n;
        }
        let before = self.used.inc_by(n);
        if before.saturating_add(n) > self.cap {
            self.give(addr, n);
            return Err(ApiError::Busy);
        }
        Ok(())
    }

    /// Give back `n` bytes taken for `addr`.
    fn give(&self, addr: Option<IpAddr>, n: i64) {
        self.used.dec_by(n);
        if let Some(a) = addr {
            let mut m = self.by_address.lock();
            if let Some(held) = m.get_mut(&a) {
                *held -= n;
                if *held <= 0 {
                    m.remove(&a);
                }
            }
        }
    }

    /// Bytes held in buffered bodies now.
    pub fn used(&self) -> i64 {
        self.used.get()
    }

    /// An empty share of the budget for a body from `addr`, to grow as
    /// the body is read.
    pub fn share(self: &Arc<Self>, addr: Option<IpAddr>) -> Held {
        Held {
            budget: Arc::clone(self),
            addr,
            n: 0,
        }
    }
}

/// Bytes taken from the budget for one body, given back on drop.
#[derive(Debug)]
pub struct Held {
    budget: Arc<BodyBudget>,
    addr: Option<IpAddr>,
    n: i64,
}

impl Held {
    /// Take `n` more bytes; `Busy` (503) when they do not fit.
    pub fn grow(&mut self, n: usize) -> Result<(), ApiError> {
        if n == 0 {
            return Ok(());
        }
        // a frame is at most a body's limit, far below i64::MAX
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        self.budget.take(self.addr, n)?;
        self.n += n;
        Ok(())
    }

    /// `bytes` as a buffer that gives this share back when its last clone
    /// is dropped (the IDS's view and the handler's body are clones).
    pub fn attach(self, bytes: Bytes) -> Bytes {
        if self.n == 0 {
            return bytes;
        }
        Bytes::from_owner(Owned { bytes, _held: self })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.n > 0 {
            self.budget.give(self.addr, self.n);
        }
    }
}

struct Owned {
    bytes: Bytes,
    _held: Held,
}

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

/// A body being buffered into one allocation whose every byte of
/// capacity is taken from the budget: with a declared length, exactly that
/// (taken at the first frame, so a client that sends only headers holds
/// nothing); without one, growing by doubling, each growth taken first.
pub struct Buffer {
    buf: bytes::BytesMut,
    held: Held,
    declared: Option<usize>,
}

impl Buffer {
    pub fn new(held: Held, declared: Option<usize>) -> Buffer {
        Buffer {
            buf: BytesMut::new(),
            held,
            declared,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// Append `data`, first taking from the budget whatever capacity it
    /// needs (`Busy` when that does not fit).
    pub fn push(&mut self, data: &[u8]) -> Result<(), ApiError> {
        let need = self.buf.len().saturating_add(data.len());
        if need > self.buf.capacity() {
            let want = match self.declared {
                Some(d) if d >= need => d,
                _ => need.max(self.buf.capacity().saturating_mul(2)).max(4096),
            };
            let extra = want.saturating_sub(self.held_bytes());
            self.held.grow(extra)?;
            self.buf.reserve(want - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    fn held_bytes(&self) -> usize {
        usize::try_from(self.held.n).unwrap_or(0)
    }

    /// The bytes, giving their share back when the last clone is dropped.
    pub fn freeze(self) -> Bytes {
        let Buffer { buf, held, .. } = self;
        held.attach(buf.freeze())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_refused_past_the_cap_and_given_back_with_the_last_clone() {
        let b = BodyBudget::new(100, 100, Gauge::default());
        let mut one = b.share(None);
        one.grow(60).expect("fits");
        let mut two = b.share(None);
        assert!(matches!(two.grow(41), Err(ApiError::Busy)));
        assert_eq!(b.used(), 60, "a refused grow takes nothing");
        two.grow(40).expect("fits exactly");
        let bytes = one.attach(Bytes::from(vec![0u8; 60]));
        let clone = bytes.clone();
        drop(bytes);
        assert_eq!(b.used(), 100, "a clone still holds the share");
        drop(clone);
        assert_eq!(b.used(), 40);
        drop(two);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_buffer_takes_its_whole_capacity_from_the_budget() {
        let b = BodyBudget::new(12_000, 12_000, Gauge::default());
        let mut buf = Buffer::new(b.share(None), Some(6000));
        assert_eq!(b.used(), 0, "nothing before the first byte");
        buf.push(b"ab").unwrap();
        assert_eq!(b.used(), 6000, "the declared length at the first frame");
        buf.push(b"cd").unwrap();
        let mut other = Buffer::new(b.share(None), None);
        other.push(&[0u8; 3000]).unwrap();
        assert_eq!(b.used(), 6000 + 4096, "without a length: at least a page");
        // doubling to 8192 does not fit beside the 6000
        assert!(matches!(other.push(&[0u8; 3000]), Err(ApiError::Busy)));
        let bytes = buf.freeze();
        assert_eq!(&bytes[..], b"abcd");
        drop(other);
        drop(bytes);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn one_address_holds_at_most_its_share() {
        let b = BodyBudget::new(1000, 300, Gauge::default());
        let a: IpAddr = [192, 0, 2, 1].into();
        let c: IpAddr = [192, 0, 2, 2].into();
        let mut one = b.share(Some(a));
        one.grow(300).unwrap();
        let mut two = b.share(Some(a));
        assert!(matches!(two.grow(1), Err(ApiError::Busy)));
        let mut other = b.share(Some(c));
        other.grow(300).unwrap();
        drop(one);
        two.grow(300).unwrap();
        assert_eq!(b.used(), 600);
        drop(two);
        drop(other);
        assert_eq!(b.used(), 0);
        assert!(b.by_address.lock().is_empty(), "no address is kept at 0");
    }
}
