//! The machine's memory latency: nanoseconds per dependent load when chasing
//! a random cycle through working sets from 64 KiB to 128 MiB (one load per
//! 64-byte line, each address known only once the previous load returns).
//!
//! Read the limiter's 50,000-client bench against it: where that table
//! (~8 MB) is larger than the caches, each decision costs about two of these
//! loads (the entry, then its neighbours in the recency list) plus ~60 ns of
//! work; where it fits (a 32 MiB L3), it costs little more than the work.
//! VMs differ most here, which is why that bench moves most between them.
//!
//! `cargo run --release --example mem_latency`

#![allow(clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

/// 64-byte lines, counted in `usize`s.
const LINE: usize = 8;

fn main() {
    for kib in [64usize, 512, 4 << 10, 8 << 10, 32 << 10, 128 << 10] {
        let lines = kib * 1024 / 64;
        // a random cyclic order of the lines (Fisher-Yates, xorshift)
        let mut order: Vec<usize> = (0..lines).collect();
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for i in (1..lines).rev() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            order.swap(i, (s % i as u64) as usize);
        }
        let mut next = vec![0usize; lines * LINE];
        for (k, &line) in order.iter().enumerate() {
            next[line * LINE] = order[(k + 1) % lines] * LINE;
        }
        let loads = 4_000_000;
        let mut p = 0usize;
        let start = Instant::now();
        for _ in 0..loads {
            p = next[p];
        }
        let ns = start.elapsed().as_nanos() as f64 / f64::from(loads);
        black_box(p);
        println!("{:>9} KiB: {ns:6.1} ns per dependent load", kib);
    }
}
