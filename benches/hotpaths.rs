//! Criterion benches of the per-request hot paths that are not benched
//! elsewhere: the cached API-key check, the JWT check, the RBAC decision and
//! the audit line (serialise + hash chain), a task read from the row cache.
//! Targets (issue 8): API-key check under 1 µs when cached.
//!
//! `cargo bench --bench hotpaths`

#![allow(clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use frenly::app::{bootstrap, AppState};
use frenly::authn::jwt::{Claims, Verifier};
use frenly::authz::{Permission, PermissionSet, Roles};
use frenly::config::{self, Source};
use frenly::monitoring::audit::{render, AuditEvent, GENESIS};
use frenly::store::cache::TaskCache;
use frenly::store::tasks::TaskRow;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (state, key) = rt.block_on(async {
        let cfg = config::load(&Source {
            file: None,
            data_dir: Some(dir.path().join("data")),
            env: vec![],
        })
        .expect("config");
        let p = bootstrap::prepare(&cfg).await.expect("prepare");
        let key = bootstrap::create_first_admin(&p.db)
            .await
            .expect("admin")
            .expect("first admin");
        let st = AppState::build(Arc::new(cfg), p.db).await.expect("state");
        (st, key)
    });
    // warm the cache
    rt.block_on(state.authn.api_key_principal(&state.db, &state.roles, &key))
        .expect("valid key");
    c.bench_function("api_key_check_cached", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                state
                    .authn
                    .api_key_principal(&state.db, &state.roles, black_box(&key))
                    .await
                    .is_ok(),
            )
        })
    });

    let verifier = Verifier::new(vec![7u8; 64], &["HS256"], 0).expect("verifier");
    let now = 1_800_000_000;
    let token = verifier
        .sign(&Claims::new(
            "0190f0c0a1b2c3d4e5f60718293a4b5c",
            vec!["read:tasks".into(), "write:tasks".into()],
            now,
            86_400,
        ))
        .expect("sign");
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| black_box(verifier.verify(black_box(&token), now).is_ok()))
    });

    let roles = Roles::new(&Default::default());
    let user_roles = vec!["user".to_string(), "agent".to_string()];
    c.bench_function("rbac_decision", |b| {
        b.iter(|| {
            let set: PermissionSet =
                roles.permissions(black_box(&user_roles).iter().map(String::as_str));
            black_box(set.allows(black_box(Permission::WriteAgent)))
        })
    });

    let ev = AuditEvent::new("api_access")
        .request_id("0190f0c0a1b2c3d4e5f60718293a4b5c")
        .ip("203.0.113.9")
        .user(Some("0190f0c0a1b2c3d4e5f60718293a4b5c"))
        .field("endpoint", "/api/tasks/{id}")
        .field("method", "GET")
        .field("status", 200);
    c.bench_function("audit_line_render_and_chain", |b| {
        b.iter(|| black_box(render(black_box(&ev), GENESIS)))
    });

    // 4,000 tasks of the load benchmark's size (1 KB task: ~2.5 KB stored),
    // read at random: the copy a cached GET of a task costs instead of the
    // SQLite read
    let cache = TaskCache::new();
    let ids: Vec<String> = (0..4000).map(|i| format!("{i:032x}")).collect();
    for id in &ids {
        let row = TaskRow {
            id: id.clone(),
            owner_id: "0190f0c0a1b2c3d4e5f60718293a4b5c".into(),
            title: "Summarise the quarterly agent report".into(),
            description: Some("k1:".to_string() + &"g".repeat(1400)),
            priority: 1,
            status: "queued".into(),
            input: Some("k1:".to_string() + &"g".repeat(600)),
            result: None,
            agent_id: None,
            created_at: 1,
            updated_at: 1,
        };
        if let Err(ticket) = cache.get(id) {
            cache.keep(ticket, &row);
        }
    }
    let mut i = 0usize;
    c.bench_function("task_cache_hit_4000_rows", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            black_box(cache.get(black_box(&ids[i])).is_ok())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
