//! IDS cost: a typical API request, and a 100 KiB JSON task body that is
//! mostly free text with some structured fields.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use frenly::apisec::ids::{Ids, RequestView};
use frenly::config::IdsConfig;

const UA: &[u8] = b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

/// Inspect one request carrying a browser's headers and an API key, plus
/// `extra`; `route` as the router matched it. `true` when it is refused.
fn inspect(
    ids: &Ids,
    (method, target, route): (&str, &str, Option<&str>),
    extra: &[(&'static str, &'static [u8])],
    body: &[u8],
) -> bool {
    let mut headers: Vec<(&str, &[u8])> = vec![
        ("host", b"localhost:8080"),
        ("user-agent", UA),
        ("accept", b"application/json"),
        (
            "x-api-key",
            b"frn_0123456789abcdefghijklmnopqrstuvwxyzABCDEFG",
        ),
    ];
    headers.extend_from_slice(extra);
    let view = RequestView {
        method,
        target,
        headers,
        body,
    };
    ids.inspect_routed(&view, route)
        .map(|v| v.block.is_some())
        .unwrap_or(true)
}

fn typical_get(ids: &Ids) -> bool {
    inspect(
        ids,
        (
            "GET",
            "/api/tasks?status=done&limit=20&cursor=BAUAIeA3fEsuTIt9",
            None,
        ),
        &[("x-request-id", b"3f2c9a7e-5b1d-4e8a-9c0f-1a2b3c4d5e6f")],
        b"",
    )
}

/// `GET /api/tasks/{id}` as the router sees it: only the id is a dynamic
/// segment (the task-poll request of the load benchmark).
fn task_get(ids: &Ids) -> bool {
    inspect(
        ids,
        (
            "GET",
            "/api/tasks/01a2227607657177974598bb9b6107dd",
            Some("/api/tasks/{id}"),
        ),
        &[],
        b"",
    )
}

fn typical_post(ids: &Ids, body: &[u8]) -> bool {
    inspect(
        ids,
        ("POST", "/api/tasks", None),
        &[("content-type", b"application/json")],
        body,
    )
}

fn big_body() -> Vec<u8> {
    let para = "Review this code: ```sql\nSELECT name FROM users WHERE id = 1; -- <script>alert(1)</script> ../../etc/passwd | sh\n``` and summarise what it does in plain English. ";
    let mut description = String::new();
    while description.len() < 90 * 1024 {
        description.push_str(para);
    }
    let items: Vec<serde_json::Value> = (0..40)
        .map(|i| serde_json::json!({"id": format!("step-{i}"), "kind": "shell", "timeout": 30, "tags": ["build", "test"]}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "title": "Summarise the nightly build log",
        "description": description,
        "priority": "high",
        "input": {"steps": items, "notes": "free text, never inspected"},
    }))
    .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let ids = Ids::new(&IdsConfig::default(), "X-API-Key", &[]);
    c.bench_function("ids typical GET /api/tasks", |b| {
        b.iter(|| typical_get(black_box(&ids)))
    });
    c.bench_function("ids GET /api/tasks/{id} (routed)", |b| {
        b.iter(|| task_get(black_box(&ids)))
    });
    let small = br#"{"title":"Nightly build","description":"Summarise the log of the nightly build and list the failing tests.","priority":"normal"}"#;
    // The same requests with the clean-value memo off: the cost of values
    // the detector has not seen before (the memo's hits are the cases above).
    let mut cold = Ids::new(&IdsConfig::default(), "X-API-Key", &[]);
    cold.set_memo(false);
    c.bench_function("ids typical GET /api/tasks, memo off", |b| {
        b.iter(|| typical_get(black_box(&cold)))
    });
    c.bench_function("ids GET /api/tasks/{id} (routed), memo off", |b| {
        b.iter(|| task_get(black_box(&cold)))
    });
    c.bench_function("ids typical POST /api/tasks (small JSON), memo off", |b| {
        b.iter(|| typical_post(black_box(&cold), black_box(small)))
    });
    c.bench_function("ids typical POST /api/tasks (small JSON)", |b| {
        b.iter(|| typical_post(black_box(&ids), black_box(small)))
    });
    let big = big_body();
    let mut g = c.benchmark_group("ids 100 KiB JSON body");
    g.throughput(Throughput::Bytes(big.len() as u64));
    g.bench_function("POST /api/tasks, mostly free text", |b| {
        b.iter(|| typical_post(black_box(&ids), black_box(&big)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
