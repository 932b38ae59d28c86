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
    let keys: Vec<IpAddr> = (0..50_000u32)
        .map(|i| IpAddr::from((0x0a00_0000 + i).to_be_bytes()))
        .collect();
    for (i, k) in keys.iter().enumerate() {
        lim.check(k, i as u64);
    }
    let mut now = 100_000u64;
    c.bench_function("limiter_check_one_client", |b| {
        let k = keys[7];
        b.iter(|| {
            now += 1;
            black_box(lim.check(black_box(&k), now))
        })
    });
    let mut i = 0usize;
    c.bench_function("limiter_check_50k_clients", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            now += 1;
            black_box(lim.check(black_box(&keys[i]), now))
        })
    });
    // with some bans present (the read-locked lookup is then taken)
    for k in keys.iter().step_by(100) {
        bans.ban(*k, frenly::network::ban::Length::Fixed(3600), "x", 0);
    }
    c.bench_function("ban_check_plus_limiter", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            now += 1;
            let k = &keys[i];
            black_box(bans.check(k, 1));
            black_box(lim.check(black_box(k), now))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
