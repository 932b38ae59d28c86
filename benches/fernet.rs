//! Fernet encrypt/decrypt throughput at 1 KiB and 1 MiB (the data layer's hot
//! path: every task description, input and result goes through it).

#![allow(clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use frenly::data::fernet::Key;

fn fernet(c: &mut Criterion) {
    let key = Key::generate();
    let mut g = c.benchmark_group("fernet");
    for (name, size) in [("1KiB", 1024usize), ("1MiB", 1024 * 1024)] {
        let msg = vec![0x5au8; size];
        let token = key.encrypt(&msg);
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::new("encrypt", name), &msg, |b, m| {
            b.iter(|| key.encrypt(m))
        });
        g.bench_with_input(BenchmarkId::new("decrypt", name), &token, |b, t| {
            b.iter(|| key.decrypt(t))
        });
    }
    g.finish();
}

criterion_group!(benches, fernet);
criterion_main!(benches);
