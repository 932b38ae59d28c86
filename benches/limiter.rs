//! The cost of one limiter decision (ban check + burst + rate window), the
//! work the network layer does per request. Target: < 250 ns.
//!
//! `cargo bench --bench limiter`

#![allow(clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{criterion_group, criterion_main, Criterion};
use frenly::network::ban::Bans;
use frenly::network::ratelimit::{Limiter, Window};

fn bench(c: &mut Criterion) {
    // the defaults: 100 per 60 s, burst 10/s, 100k tracked clients
    let lim = Limiter::new(Window::new(100, 60_000), Window::new(10, 1000), 100_000);
    let bans = Bans::new(100_000, 86_400);
    // Keys are computed, not read from a table: a request's address is in
    // hand (hot in cache) when the limiter runs, and a 50,000-entry array of
    // them (850 KB) would add a cache miss of the bench's own per decision.
    const CLIENTS: u32 = 50_000;
    let key = |i: u32| IpAddr::from((0x0a00_0000 + i).to_be_bytes());
    for i in 0..CLIENTS {
        lim.check(&key(i), u64::from(i));
    }
    let mut now = 100_000u64;
    c.bench_function("limiter_check_one_client", |b| {
        let k = key(7);
        b.iter(|| {
            now += 1;
            black_box(lim.check(black_box(&k), now))
        })
    });
    let mut i = 0u32;
    c.bench_function("limiter_check_50k_clients", |b| {
        b.iter(|| {
            i = (i + 7919) % CLIENTS;
            now += 1;
            black_box(lim.check(black_box(&key(i)), now))
        })
    });
    // with some bans present (the read-locked lookup is then taken)
    for i in (0..CLIENTS).step_by(100) {
        bans.ban(key(i), frenly::network::ban::Length::Fixed(3600), "x", 0);
    }
    c.bench_function("ban_check_plus_limiter", |b| {
        b.iter(|| {
            i = (i + 7919) % CLIENTS;
            now += 1;
            let k = key(i);
            black_box(bans.check(&k, 1));
            black_box(lim.check(black_box(&k), now))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
