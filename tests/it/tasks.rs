//! Tasks and agent workers (issue 4): the task object, validation, the
//! status machine, pagination, search, encryption at rest, claiming.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::common::{error_code, Opts, TestServer};

/// The config every test server of this area uses: the test client's
/// address is never rate-limited or banned (hundreds of requests per test).
pub const BASE_CONFIG: &str = "[limits]\nallowlist = [\"127.0.0.1/32\"]\n";

pub async fn start() -> TestServer {
    TestServer::with(Opts::default().config(BASE_CONFIG)).await
}

pub async fn start_with(extra: &str) -> TestServer {
    TestServer::with(Opts::default().config(&format!("{BASE_CONFIG}{extra}"))).await
}

/// Create a task with the admin key; returns the task JSON.
pub async fn create(s: &TestServer, body: Value) -> Value {
    let r = s.admin_post("/api/tasks", &body).send().await.unwrap();
    assert_eq!(r.status(), 201, "{:?}", r.text().await);
    r.json().await.unwrap()
}

/// `GET /api/tasks/{id}` with the admin key.
async fn get_task(s: &TestServer, id: &str) -> reqwest::Response {
    s.admin_get(&format!("/api/tasks/{id}"))
        .send()
        .await
        .unwrap()
}

/// The task as the holder of `key` reads it (after a restart, when the
/// admin key is no longer printed).
async fn read_task_with(s: &TestServer, id: &str, key: &str) -> Value {
    crate::common::get_json(s, &format!("/api/tasks/{id}"), key).await
}

/// The task as the admin reads it (200 required).
async fn read_task(s: &TestServer, id: &str) -> Value {
    let r = get_task(s, id).await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// `DELETE /api/tasks/{id}` with the admin key.
async fn delete_task(s: &TestServer, id: &str) -> reqwest::Response {
    s.client
        .delete(s.url(&format!("/api/tasks/{id}")))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap()
}

async fn patch(s: &TestServer, id: &str, body: Value) -> reqwest::Response {
    s.client
        .patch(s.url(&format!("/api/tasks/{id}")))
        .header("X-API-Key", s.admin())
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn raw_post(s: &TestServer, path: &str, body: Vec<u8>) -> reqwest::Response {
    s.post(path)
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn fields(r: reqwest::Response) -> serde_json::Map<String, Value> {
    let (status, code, body) = error_code(r).await;
    assert_eq!(
        (status, code.as_str()),
        (400, "validation_failed"),
        "{body}"
    );
    body["error"]["fields"].as_object().unwrap().clone()
}

#[tokio::test]
async fn task_object_is_the_contracts_and_crud_works() {
    let s = start().await;
    let t = create(
        &s,
        json!({"title": "t1", "description": "d", "priority": "high", "input": {"a": [1, 2]}}),
    )
    .await;
    let keys: HashSet<&str> = t.as_object().unwrap().keys().map(String::as_str).collect();
    let want: HashSet<&str> = [
        "id",
        "title",
        "description",
        "priority",
        "status",
        "input",
        "result",
        "owner_id",
        "agent_id",
        "created_at",
        "updated_at",
    ]
    .into_iter()
    .collect();
    assert_eq!(keys, want);
    assert_eq!(t["priority"], "high");
    assert_eq!(t["status"], "queued");
    assert_eq!(t["input"], json!({"a": [1, 2]}));
    assert!(t["result"].is_null() && t["agent_id"].is_null());
    chrono::DateTime::parse_from_rfc3339(t["created_at"].as_str().unwrap()).unwrap();
    let id = t["id"].as_str().unwrap();

    let got = read_task(&s, id).await;
    assert_eq!(got, t);
    // 201 names the new task (RFC 9110 15.3.2)
    let r = s
        .admin_post("/api/tasks", &json!({"title": "located"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let made: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/api/tasks/{}", made["id"].as_str().unwrap())
    );
    assert_eq!(read_task(&s, made["id"].as_str().unwrap()).await, made);

    // a PATCH that changes nothing writes nothing: the task comes back as
    // it was, `updated_at` included
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    for same in [
        json!({}),
        json!({"title": t["title"], "description": t["description"], "priority": "high", "status": "queued"}),
    ] {
        let r = patch(&s, id, same.clone()).await;
        assert_eq!(r.status(), 200, "{same}");
        assert_eq!(r.json::<Value>().await.unwrap(), t, "{same}");
    }
    assert_eq!(read_task(&s, id).await, t);

    let r = patch(
        &s,
        id,
        json!({"title": "t2", "priority": "low", "description": null}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let p: Value = r.json().await.unwrap();
    assert_ne!(p["updated_at"], t["updated_at"]);
    assert_eq!(
        (p["title"].as_str(), p["priority"].as_str()),
        (Some("t2"), Some("low"))
    );
    assert!(p["description"].is_null());

    // defaults
    let d = create(&s, json!({"title": "x"})).await;
    assert_eq!(d["priority"], "normal");
    assert_eq!(d["input"], json!({}));

    let r = delete_task(&s, id).await;
    assert_eq!(r.status(), 204);
    let r = get_task(&s, id).await;
    assert_eq!(error_code(r).await.1, "not_found");
    let r = s.admin_get("/api/tasks/nope").send().await.unwrap();
    assert_eq!(r.status(), 404);
    // without credentials
    let r = s.get("/api/tasks").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn validation_reports_every_rule_at_once() {
    let s = start().await;
    // every field broken at once, plus an unknown one
    let long = "x".repeat(100_001);
    let r = s
        .admin_post(
            "/api/tasks",
            &json!({"title": "", "description": long, "priority": "urgent", "input": [1], "owner_id": "me"}),
        )
        .send()
        .await
        .unwrap();
    let f = fields(r).await;
    assert_eq!(f["title"], json!(["title must be at least 1 characters"]));
    assert_eq!(
        f["description"],
        json!(["description must be at most 100000 characters"])
    );
    assert_eq!(
        f["priority"],
        json!(["priority must be one of low, normal, high"])
    );
    assert_eq!(f["input"], json!(["input must be a JSON object"]));
    assert!(f["owner_id"][0].as_str().unwrap().contains("unknown field"));

    for (body, field, msg) in [
        (json!({}), "title", "title is required"),
        (json!({"title": null}), "title", "title is required"),
        (
            json!({"title": "x".repeat(201)}),
            "title",
            "title must be at most 200 characters",
        ),
        (
            json!({"title": "a\u{0}b"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "a\nb"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "a\u{9b}b"}),
            "title",
            "title must not contain control characters",
        ),
        // invisible characters that change how a title reads: a bidi
        // override ("Trojan Source"), an isolate, a zero-width space, a BOM,
        // a line separator
        (
            json!({"title": "invoice \u{202E}fdp.exe"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "a\u{2066}b"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "ad\u{200B}min"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "\u{FEFF}title"}),
            "title",
            "title must not contain control characters",
        ),
        (
            json!({"title": "one\u{2028}two"}),
            "title",
            "title must not contain control characters",
        ),
        // wrong types, reported per field
        (json!({"title": 5}), "title", "title must be a string"),
        (
            json!({"title": "t", "description": 1}),
            "description",
            "description must be a string",
        ),
        (
            json!({"title": "t", "priority": 2}),
            "priority",
            "priority must be one of low, normal, high",
        ),
        (
            json!({"title": "t", "input": "s"}),
            "input",
            "input must be a JSON object",
        ),
    ] {
        let r = s.admin_post("/api/tasks", &body).send().await.unwrap();
        let f = fields(r).await;
        assert_eq!(f[field], json!([msg]), "{body}");
    }
    // boundaries pass: 200 characters (multi-byte), 100,000-character description
    let t = create(
        &s,
        json!({"title": "é".repeat(200), "description": "y".repeat(100_000)}),
    )
    .await;
    assert_eq!(t["title"].as_str().unwrap().chars().count(), 200);
    // the joiners are text: an emoji sequence, a Persian word with ZWNJ
    for title in [
        "family 👨\u{200D}👩\u{200D}👧",
        "می\u{200C}خواهم",
        "עברית and العربية",
    ] {
        assert_eq!(create(&s, json!({"title": title})).await["title"], title);
    }

    // not an object
    let r = s
        .admin_post("/api/tasks", &json!([1]))
        .send()
        .await
        .unwrap();
    assert!(fields(r).await.contains_key("body"));
    // malformed JSON, invalid UTF-8, deep nesting: 400 bad_request, never a crash
    for body in [
        b"{\"title\": ".to_vec(),
        b"{title: 1}".to_vec(),
        b"{\"title\": \"\xff\xfe\"}".to_vec(),
        format!(
            "{{\"title\": \"t\", \"input\": {}{}}}",
            "[".repeat(10_000),
            "]".repeat(10_000)
        )
        .into_bytes(),
        format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
    ] {
        let r = raw_post(&s, "/api/tasks", body).await;
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (400, "bad_request"));
    }
    // wrong content type
    let r = s
        .post("/api/tasks")
        .header("X-API-Key", s.admin())
        .body("title=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    // the server is still fine
    create(&s, json!({"title": "still alive"})).await;
    // patch rules too
    let t = create(&s, json!({"title": "p"})).await;
    let r = patch(
        &s,
        t["id"].as_str().unwrap(),
        json!({"title": "", "input": {}, "status": "bogus"}),
    )
    .await;
    let f = fields(r).await;
    assert!(
        f.contains_key("title") && f.contains_key("input") && f.contains_key("status"),
        "{f:?}"
    );
}

/// Thousands of unknown body members or query parameters get a bounded
/// answer: the first fields listed, the count in the message, never every
/// name echoed back (a response several times the request's size).
#[tokio::test]
async fn a_flood_of_unknown_fields_gets_a_bounded_answer() {
    let s = start().await;
    let max = frenly::http::respond::MAX_LISTED_FIELDS;
    let mut body = serde_json::Map::new();
    body.insert("title".into(), json!("t"));
    for i in 0..5000 {
        body.insert(format!("k{i:05}"), json!(1));
    }
    let request_bytes = serde_json::to_vec(&body).unwrap();
    let query: Vec<String> = (0..2000).map(|i| format!("p{i:04}=1")).collect();
    let query = query.join("&");
    let answers = [
        (
            request_bytes.len(),
            raw_post(&s, "/api/tasks", request_bytes.clone()).await,
        ),
        (
            query.len(),
            s.admin_get(&format!("/api/tasks?{query}"))
                .send()
                .await
                .unwrap(),
        ),
    ];
    for (sent, r) in answers {
        let (status, code, body) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "validation_failed"),
            "{body}"
        );
        let listed = body["error"]["fields"].as_object().unwrap();
        assert_eq!(listed.len(), max);
        assert!(
            listed
                .keys()
                .all(|k| k.starts_with('k') || k.starts_with('p')),
            "{listed:?}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&format!("the first {max} are listed")),
            "{message}"
        );
        let answered = body.to_string().len();
        assert!(
            answered < 4096 && answered < sent / 4,
            "{answered} bytes for {sent}"
        );
    }
    // a few broken rules are all listed, as before
    let r = raw_post(&s, "/api/tasks", br#"{"title":"","nope":1}"#.to_vec()).await;
    assert_eq!(fields(r).await.len(), 2);
}

#[tokio::test]
async fn configured_rules_tighten_the_defaults() {
    let s = start_with(
        "[validation.tasks.title]\npattern = \"[A-Z]\"\nmax_length = 10\n\
         [validation.tasks.description]\nrequired = true\nmin_length = 3\n",
    )
    .await;
    let r = s
        .admin_post("/api/tasks", &json!({"title": "lowercase title"}))
        .send()
        .await
        .unwrap();
    let f = fields(r).await;
    assert_eq!(
        f["title"],
        json!([
            "title must be at most 10 characters",
            "title has an invalid format"
        ])
    );
    assert_eq!(f["description"], json!(["description is required"]));
    let r = s
        .admin_post("/api/tasks", &json!({"title": "Ok", "description": "ab"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        fields(r).await["description"],
        json!(["description must be at least 3 characters"])
    );
    create(&s, json!({"title": "Ok", "description": "abc"})).await;
}

/// The admin claims the next task as a worker.
async fn admin_claim(s: &TestServer) -> Value {
    s.admin_post("/api/agent/claim", &json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The admin, as the claiming worker, stores a result.
async fn admin_result(s: &TestServer, id: &str, body: Value) -> reqwest::Response {
    s.admin_post(&format!("/api/tasks/{id}/result"), &body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn status_machine_refuses_illegal_moves() {
    let s = start().await;
    let t = create(&s, json!({"title": "m"})).await;
    let id = t["id"].as_str().unwrap();
    for to in ["running", "done", "failed"] {
        let r = patch(&s, id, json!({"status": to})).await;
        assert_eq!(error_code(r).await.1, "conflict", "queued -> {to}");
    }
    // result on a queued task
    let r = admin_result(&s, id, json!({"status": "done"})).await;
    assert_eq!(error_code(r).await.1, "conflict");
    // claim -> running
    let c = admin_claim(&s).await;
    assert_eq!(c["id"], t["id"]);
    assert_eq!(c["status"], "running");
    for to in ["done", "failed"] {
        let r = patch(&s, id, json!({"status": to})).await;
        assert_eq!(error_code(r).await.1, "conflict", "running -> {to}");
    }
    // bad result bodies
    let r = admin_result(&s, id, json!({"status": "cancelled"})).await;
    assert_eq!(error_code(r).await.1, "validation_failed");
    let r = s
        .admin_post(&format!("/api/tasks/{id}/result"), &json!({"result": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "validation_failed");
    let r = admin_result(&s, id, json!({"status": "done", "result": {"answer": 42}})).await;
    assert_eq!(r.status(), 200);
    let d: Value = r.json().await.unwrap();
    assert_eq!(
        (d["status"].as_str(), d["result"]["answer"].as_i64()),
        (Some("done"), Some(42))
    );
    // finished: everything is a conflict
    for body in [json!({"status": "cancelled"}), json!({"title": "new"})] {
        let r = patch(&s, id, body).await;
        assert_eq!(error_code(r).await.1, "conflict");
    }
    let r = admin_result(&s, id, json!({"status": "failed"})).await;
    assert_eq!(error_code(r).await.1, "conflict");
    // running -> queued: a claim whose worker is gone is put back (it stayed
    // running for ever); the worker's late result is refused, the next claim
    // takes the task again
    let t4 = create(&s, json!({"title": "lost claim"})).await;
    let id4 = t4["id"].as_str().unwrap();
    let c = admin_claim(&s).await;
    assert_eq!(c["id"], t4["id"]);
    let r = patch(&s, id4, json!({"status": "queued"})).await;
    assert_eq!(r.status(), 200);
    let q: Value = r.json().await.unwrap();
    assert_eq!(
        (q["status"].as_str(), &q["agent_id"]),
        (Some("queued"), &Value::Null)
    );
    let r = admin_result(&s, id4, json!({"status": "done", "result": 1})).await;
    assert_eq!(error_code(r).await.1, "conflict");
    let c = admin_claim(&s).await;
    assert_eq!(
        (&c["id"], c["status"].as_str()),
        (&t4["id"], Some("running"))
    );
    let r = admin_result(&s, id4, json!({"status": "done", "result": 1})).await;
    assert_eq!(r.status(), 200);

    // queued -> cancelled and running -> cancelled are allowed; cancelled is final
    let t2 = create(&s, json!({"title": "c"})).await;
    let id2 = t2["id"].as_str().unwrap();
    let r = patch(&s, id2, json!({"status": "cancelled"})).await;
    assert_eq!(r.status(), 200);
    let r = patch(&s, id2, json!({"status": "queued"})).await;
    assert_eq!(error_code(r).await.1, "conflict");
    let t3 = create(&s, json!({"title": "c3"})).await;
    let c = admin_claim(&s).await;
    assert_eq!(c["id"], t3["id"]);
    let r = patch(
        &s,
        t3["id"].as_str().unwrap(),
        json!({"status": "cancelled"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // the worker's result on a cancelled task is a conflict
    let r = s
        .admin_post(
            &format!("/api/tasks/{}/result", t3["id"].as_str().unwrap()),
            &json!({"status": "done"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "conflict");
    // result for an unknown task
    let r = s
        .admin_post("/api/tasks/nope/result", &json!({"status": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

async fn list_all(s: &TestServer, query: &str, limit: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("/api/tasks?limit={limit}{query}");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = s.admin_get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        out.extend(items.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    out
}

/// A page stops at a bounded size of stored data, whatever `limit` says:
/// one list of 200 megabyte tasks would otherwise cost a gigabyte. The
/// cursor still walks every task once.
#[tokio::test]
async fn a_page_of_large_tasks_is_cut_by_size_and_the_cursor_goes_on() {
    let s = TestServer::with(
        Opts::default().config(&format!("{BASE_CONFIG}body_max_bytes = 3000000\n")),
    )
    .await;
    let big = "x".repeat(2_500_000);
    let mut ids = Vec::new();
    for i in 0..9 {
        let t = create(
            &s,
            json!({"title": format!("big {i}"), "input": {"blob": big}}),
        )
        .await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    let r = s.admin_get("/api/tasks?limit=200").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    let n = page["items"].as_array().unwrap().len();
    // 2 MiB of stored text a page: each of these tasks alone
    assert_eq!(n, 1, "one page held {n} tasks of 3.3 MB stored each");
    assert!(page["next_cursor"].is_string());
    let all = list_all(&s, "", 200).await;
    let got: Vec<&str> = all.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids);
    assert!(all
        .iter()
        .all(|t| t["input"]["blob"].as_str().unwrap().len() == big.len()));
}

#[tokio::test]
async fn pagination_is_stable_and_complete_and_search_escapes_wildcards() {
    let s = start().await;
    let titles = [
        "100% done",
        "100 percent",
        "a_b",
        "axb",
        "back\\slash",
        "plain",
    ];
    let mut ids = Vec::new();
    for i in 0..23 {
        let t = create(
            &s,
            json!({"title": format!("{} #{i}", titles[i % titles.len()])}),
        )
        .await;
        ids.push(t["id"].as_str().unwrap().to_string());
    }
    for limit in [1, 7, 23, 200] {
        let got: Vec<String> = list_all(&s, "", limit)
            .await
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, ids, "limit {limit}");
    }
    // a task created while paging shows up at the end, nothing repeats
    let first: Value = s
        .admin_get("/api/tasks?limit=5")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    create(&s, json!({"title": "late"})).await;
    let c = first["next_cursor"].as_str().unwrap();
    let rest = list_all(&s, &format!("&cursor={c}"), 50).await;
    assert_eq!(rest.len(), 23 - 5 + 1);

    let count = |q: &str| {
        let q = q.to_string();
        let s = &s;
        async move {
            list_all(s, &format!("&q={}", urlencode(&q)), 200)
                .await
                .len()
        }
    };
    assert_eq!(count("%").await, 4, "% is literal");
    assert_eq!(count("_").await, 4, "_ is literal");
    assert_eq!(count("\\").await, 4, "the escape character is literal");
    assert_eq!(count("100").await, 8);
    assert_eq!(count("PLAIN").await, 3, "ASCII case-insensitive");
    // a title's own non-ASCII capitals find it on every engine (SQLite's
    // LOWER folds ASCII only: a pattern folded further never matched)
    create(&s, json!({"title": "ÉCOLE Ärger ΑΒΓ"})).await;
    for q in ["ÉCOLE", "Ärger", "ΑΒΓ", "École"] {
        assert_eq!(count(q).await, 1, "{q}");
    }
    // SQL in a search is refused by the IDS before the store sees it...
    let r = s
        .admin_get(&format!("/api/tasks?q={}", urlencode("' OR 1=1 --")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // ...and with the IDS off for this route, the store treats it as text.
    let s2 = start_with("[ids.routes.\"/api/tasks\"]\nmode = \"off\"\n").await;
    create(&s2, json!({"title": "plain one"})).await;
    let unsafe_q = list_all(&s2, &format!("&q={}", urlencode("' OR 1=1 --")), 200).await;
    assert_eq!(unsafe_q.len(), 0, "the search text is never SQL");
    // status filter
    let r: Value = s
        .admin_get("/api/tasks?status=done")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["items"].as_array().unwrap().len(), 0);
    assert_eq!(list_all(&s, "&status=queued", 200).await.len(), 25);
    // bad parameters
    for q in [
        "limit=0",
        "limit=201",
        "limit=x",
        "limit=-1",
        "status=weird",
        "cursor=abc",
        "cursor=%00",
        "sort=title",
    ] {
        let r = s
            .admin_get(&format!("/api/tasks?{q}"))
            .send()
            .await
            .unwrap();
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (400, "validation_failed"), "{q}");
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn files_under(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[tokio::test]
async fn task_contents_never_reach_the_disk_in_clear() {
    let mut s = start().await;
    let marker = format!("MARKER{}", uuid::Uuid::new_v4().simple());
    let t = create(
        &s,
        json!({"title": "visible title", "description": format!("secret {marker} here"), "input": {"k": marker}}),
    )
    .await;
    let id = t["id"].as_str().unwrap();
    // a result and a patched description as well
    let c = admin_claim(&s).await;
    assert_eq!(c["description"], format!("secret {marker} here"));
    let r = admin_result(&s, id, json!({"status": "done", "result": {"out": marker}})).await;
    assert_eq!(r.status(), 200);
    let t2 = create(&s, json!({"title": "second"})).await;
    let r = patch(
        &s,
        t2["id"].as_str().unwrap(),
        json!({"description": marker}),
    )
    .await;
    assert_eq!(r.status(), 200);
    // the same task reads back
    let got = read_task(&s, id).await;
    assert_eq!(got["input"]["k"], marker.as_str());
    assert_eq!(got["result"]["out"], marker.as_str());
    // stop the server, then scan every file (database, WAL, logs, keys)
    let data = s.data_dir();
    s.terminate().await;
    let mut files = Vec::new();
    files_under(&data, &mut files);
    if s.database_url.is_some() {
        // PostgreSQL: the database's contents, as pg_dump reads them
        let dump = s.database_bytes();
        assert!(!dump.windows(marker.len()).any(|w| w == marker.as_bytes()));
        assert!(String::from_utf8_lossy(&dump).contains("visible title"));
    } else {
        assert!(files
            .iter()
            .any(|f| f.to_string_lossy().contains("frenly.db")));
    }
    let mut saw_title = false;
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "marker found in {}",
            f.display()
        );
        saw_title |= bytes.windows(13).any(|w| w == b"visible title");
    }
    assert!(
        saw_title || s.database_url.is_some(),
        "the scan reads the database (the clear title is there)"
    );
}

#[tokio::test]
async fn eight_workers_claim_two_hundred_tasks_each_exactly_once() {
    let s = start().await;
    let mut all = HashSet::new();
    for i in 0..200 {
        let t = create(&s, json!({"title": format!("job {i}")})).await;
        let id = t["id"].as_str().unwrap().to_string();
        // read once: the row cache (SQLite) now keeps it as `queued`
        read_task(&s, &id).await;
        all.insert(id);
    }
    let s = std::sync::Arc::new(s);
    let mut workers = Vec::new();
    for _ in 0..8 {
        let s = s.clone();
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let r = s
                    .admin_post("/api/agent/claim", &json!({}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 204 {
                    break;
                }
                assert_eq!(r.status(), 200);
                let t: Value = r.json().await.unwrap();
                assert_eq!(t["status"], "running");
                let id = t["id"].as_str().unwrap().to_string();
                let r = s
                    .admin_post(
                        &format!("/api/tasks/{id}/result"),
                        &json!({"status": "done", "result": null}),
                    )
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "result for {id}");
                mine.push(id);
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    let mut busy = 0;
    for w in workers {
        let mine = w.await.unwrap();
        busy += usize::from(!mine.is_empty());
        for id in mine {
            assert!(seen.insert(id.clone()), "{id} claimed twice");
        }
    }
    assert_eq!(seen, all);
    assert!(busy > 1, "the claims really ran concurrently");
    // every task was kept by the row cache as `queued` before the claims:
    // the claims and results must have replaced it
    for id in &all {
        let t = read_task(&s, id).await;
        assert_eq!(t["status"], "done", "{id} reads as {t}");
    }
    let a: Value = s
        .admin_get("/api/agent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["queue"]["done"], 200);
    assert_eq!(a["queue"]["queued"], 0);
}

#[tokio::test]
async fn claims_take_the_oldest_highest_priority_task_and_respect_settings() {
    let s = start().await;
    let low = create(&s, json!({"title": "low", "priority": "low"})).await;
    let n1 = create(&s, json!({"title": "n1"})).await;
    let high = create(&s, json!({"title": "high", "priority": "high"})).await;
    let n2 = create(&s, json!({"title": "n2"})).await;
    let a: Value = s
        .admin_get("/api/agent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a["status"], "idle");
    assert_eq!(a["settings"], json!({"paused": false, "max_running": 1000}));
    assert_eq!(a["queue"]["queued"], 4);

    // settings: validated, every broken rule at once
    let r = s
        .client
        .patch(s.url("/api/agent"))
        .header("X-API-Key", s.admin())
        .json(&json!({"paused": "yes", "max_running": 0, "x": 1}))
        .send()
        .await
        .unwrap();
    let f = fields(r).await;
    assert_eq!(f.len(), 3, "{f:?}");
    let set = |body: Value| {
        s.client
            .patch(s.url("/api/agent"))
            .header("X-API-Key", s.admin())
            .json(&body)
            .send()
    };
    let r = set(json!({"paused": true})).await.unwrap();
    assert_eq!(r.status(), 200);
    // the change is audited with who, from where, and which request
    let mut ev = Value::Null;
    for _ in 0..50 {
        let v: Value = s
            .admin_get("/api/audit?type=agent_settings_changed")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(e) = v["items"].as_array().and_then(|a| a.first()) {
            ev = e.clone();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(ev["paused"], true, "{ev}");
    assert_eq!(ev["ip"], "127.0.0.1", "{ev}");
    assert!(ev["request_id"].is_string(), "{ev}");
    assert!(ev["user_id"].is_string(), "{ev}");
    let r = s
        .admin_post("/api/agent/claim", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "paused");
    set(json!({"paused": false, "max_running": 1}))
        .await
        .unwrap();

    let claim = || async {
        let r = s
            .admin_post("/api/agent/claim", &json!({}))
            .send()
            .await
            .unwrap();
        if r.status() == 204 {
            return None;
        }
        Some(r.json::<Value>().await.unwrap())
    };
    let c = claim().await.unwrap();
    assert_eq!(c["id"], high["id"]);
    assert!(c["agent_id"].is_string());
    assert!(claim().await.is_none(), "max_running = 1");
    let a: Value = s
        .admin_get("/api/agent")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (a["status"].as_str(), a["workers"].as_i64()),
        (Some("working"), Some(1))
    );
    set(json!({"max_running": 100})).await.unwrap();
    for want in [&n1, &n2, &low] {
        assert_eq!(claim().await.unwrap()["id"], want["id"]);
    }
    assert!(claim().await.is_none());
}

/// Rotations started at once follow one another: every one adds its key
/// (before, they read the same file and the last rename dropped the
/// others' keys, with whatever a `--reencrypt` had written under them).
#[test]
fn concurrent_keyring_rotations_each_add_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap().to_string();
    let (code, _, err) = crate::common::run_cli(&["init", "--data-dir", &data], None, &[]);
    assert_eq!(code, 0, "{err}");
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let data = data.clone();
            std::thread::spawn(move || {
                crate::common::run_cli(&["keyring", "rotate", "--data-dir", &data], None, &[])
            })
        })
        .collect();
    for r in runs {
        let (code, _, err) = r.join().unwrap();
        assert_eq!(code, 0, "{err}");
    }
    let ring: Value = serde_json::from_slice(
        &std::fs::read(std::path::Path::new(&data).join("keyring.json")).unwrap(),
    )
    .unwrap();
    let mut ids: Vec<&str> = ring["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 7, "{ring}");
    assert_eq!(ring["primary"], "k7");
}

#[tokio::test]
async fn keyring_rotation_keeps_rows_readable_and_reencrypt_rewrites_them() {
    let s = start().await;
    let t = create(
        &s,
        json!({"title": "rot", "description": "before", "input": {"x": 1}}),
    )
    .await;
    let id = t["id"].as_str().unwrap().to_string();
    let data = s.data_dir();
    let cfg = s.dir.path().join("frenly.toml");
    let cfg = cfg.to_str().unwrap().to_string();
    let data_s = data.to_str().unwrap().to_string();
    let env = s.cli_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // rotate while running: old rows readable, new rows under k2
    let (code, _, err) = crate::common::run_cli(
        &["keyring", "rotate", "--config", &cfg, "--data-dir", &data_s],
        None,
        &env,
    );
    assert_eq!(code, 0, "{err}");
    let ring: Value =
        serde_json::from_slice(&std::fs::read(data.join("keyring.json")).unwrap()).unwrap();
    assert_eq!(ring["primary"], "k2");
    let got = read_task(&s, &id).await;
    assert_eq!(got["description"], "before");
    let key = s.admin().to_string();
    let mut s = s;
    s.terminate().await;
    let (code, _, err) = crate::common::run_cli(
        &[
            "keyring",
            "rotate",
            "--reencrypt",
            "--config",
            &cfg,
            "--data-dir",
            &data_s,
        ],
        None,
        &env,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("re-encrypted 1 task"), "{err}");
    // drop every old key: the row must still decrypt, so it was rewritten
    let mut ring: Value =
        serde_json::from_slice(&std::fs::read(data.join("keyring.json")).unwrap()).unwrap();
    assert_eq!(ring["primary"], "k3");
    ring["keys"]
        .as_array_mut()
        .unwrap()
        .retain(|k| k["id"] == "k3");
    std::fs::write(
        data.join("keyring.json"),
        serde_json::to_vec(&ring).unwrap(),
    )
    .unwrap();
    let s = s.restart(Opts::default().config(BASE_CONFIG)).await;
    let got = read_task_with(&s, &id, &key).await;
    assert_eq!(got["description"], "before");
    assert_eq!(got["input"], json!({"x": 1}));
}

/// `frenly serve` expected to refuse to start: its exit code (`None` when
/// it served instead, killed after 20 s) and stderr.
fn serve_refused(s: &TestServer) -> (Option<i32>, String) {
    serve_beside(s, &s.data_dir(), &[], std::time::Duration::from_secs(20))
}

/// A keyring that cannot read the stored data stops the start, naming
/// `encryption.keyring_file`: absent (before, a new `k1` was generated over
/// the data: every read 500, new rows under a key that could never be
/// merged with the old one), without a key id in use, with a key changed
/// under its id, or with an id twice. Restored, the data reads again.
#[tokio::test]
async fn a_keyring_that_cannot_read_the_stored_data_stops_the_start() {
    let mut s = start().await;
    let t = create(&s, json!({"title": "kept", "description": "secret text"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    let key = s.admin().to_string();
    s.terminate().await;
    let ring = s.data_dir().join("keyring.json");
    let original = std::fs::read(&ring).unwrap();
    let doc: Value = serde_json::from_slice(&original).unwrap();
    let refused = |why: &str, needle: &str| {
        let (code, err) = serve_refused(&s);
        assert_eq!(code, Some(2), "{why}: {err}");
        assert!(err.contains("encryption.keyring_file"), "{why}: {err}");
        assert!(err.contains(needle), "{why}: {err}");
    };
    std::fs::remove_file(&ring).unwrap();
    refused("absent", "`k1`");
    assert!(!ring.exists(), "a new keyring was generated over the data");
    let write = |d: &Value| std::fs::write(&ring, serde_json::to_vec(d).unwrap()).unwrap();
    let other_key = frenly::data::fernet::Key::generate().to_base64();
    let mut without = doc.clone();
    without["keys"][0]["id"] = json!("k9");
    without["primary"] = json!("k9");
    write(&without);
    refused("the key in use removed", "no key `k1`");
    let mut changed = doc.clone();
    changed["keys"][0]["key"] = json!(other_key);
    write(&changed);
    refused("the key changed under its id", "does not decrypt");
    let mut twice = doc.clone();
    let mut second = doc["keys"][0].clone();
    second["key"] = json!(other_key);
    twice["keys"].as_array_mut().unwrap().push(second);
    write(&twice);
    refused("an id twice", "appears twice");
    std::fs::write(&ring, &original).unwrap();
    let s = s.restart(Opts::default().config(BASE_CONFIG)).await;
    let got = read_task_with(&s, &id, &key).await;
    assert_eq!(got["description"], "secret text");
}

/// `frenly serve` with `s`'s config (listening on a free port), the data
/// dir `data` and `env` added to `s`'s: its exit code, or `None` when it
/// still served after `wait` (then stopped), and its stderr.
fn serve_beside(
    s: &TestServer,
    data: &std::path::Path,
    env: &[(&str, String)],
    wait: std::time::Duration,
) -> (Option<i32>, String) {
    let cfg = s.dir.path().join("frenly.toml");
    let mut cmd = std::process::Command::new(crate::common::BIN);
    cmd.args(["serve", "--config", cfg.to_str().unwrap(), "--data-dir"])
        .arg(data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    for (k, v) in s.cli_env().into_iter().chain(env.iter().cloned()) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + wait;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (code, err)
}

/// Instances sharing a PostgreSQL database share the keyring. A second
/// instance that generated its own (a fleet brought up before the file was
/// copied) is refused at start, before any task exists: before, both
/// wrote rows under their own `k1` and every list answered 500 on both
/// (probe I). With the first one's keyring it starts. A lone SQLite
/// instance whose keyring was regenerated before any value used it still
/// starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_its_own_keyring_on_a_shared_database_is_refused() {
    if !crate::common::pg_mode() {
        // SQLite: one instance per file, so a regenerated keyring that no
        // value used is recorded anew
        let mut s = start().await;
        let key = s.admin().to_string();
        s.terminate().await;
        std::fs::remove_file(s.data_dir().join("keyring.json")).unwrap();
        let mut s = s.restart(Opts::default().config(BASE_CONFIG)).await;
        s.admin_key = Some(key);
        create(&s, json!({"title": "t", "description": "d"})).await;
        return;
    }
    if !crate::common::need("PostgreSQL", crate::common::pg_available()) {
        return;
    }
    let url = crate::common::fresh_pg_database();
    let a = TestServer::with(Opts::default().config(BASE_CONFIG).database(&url)).await;
    let other = tempfile::tempdir().unwrap();
    let wait = std::time::Duration::from_secs(20);
    let (code, err) = serve_beside(&a, &other.path().join("b"), &[], wait);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("encryption.keyring_file"), "{err}");
    assert!(err.contains("other instances"), "{err}");
    let shared = [
        (
            "FRENLY_ENCRYPTION__KEYRING_FILE",
            a.data_dir().join("keyring.json").display().to_string(),
        ),
        (
            "FRENLY_AUTH__JWT_SECRET_FILE",
            a.data_dir().join("jwt.secret").display().to_string(),
        ),
    ];
    let started = std::time::Duration::from_secs(4);
    let (code, err) = serve_beside(&a, &other.path().join("c"), &shared, started);
    assert_eq!(code, None, "refused with the shared keyring: {err}");
    // the first instance is unaffected
    create(&a, json!({"title": "t", "description": "d"})).await;
    drop(a);
    crate::common::drop_pg_database(&url);
}

/// `keyring rotate` in a directory with neither a keyring nor a database (a
/// mistyped `--data-dir`) is refused and creates nothing (before: exit 0
/// and a new keyring there, the real one unrotated).
#[test]
fn keyring_rotate_in_an_uninitialised_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("dta");
    let (code, _, err) = crate::common::run_cli(
        &["keyring", "rotate", "--data-dir", typo.to_str().unwrap()],
        None,
        &[],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--data-dir"), "{err}");
    assert!(!typo.join("keyring.json").exists());
}

/// A symlinked keyring (a shared or mounted secret) is rotated where it
/// lives: before, the rename replaced the link with a file, and the shared
/// keyring never got the new key.
#[test]
fn a_symlinked_keyring_is_rotated_where_it_lives() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap().to_string();
    let (code, _, err) = crate::common::run_cli(&["init", "--data-dir", &data_s], None, &[]);
    assert_eq!(code, 0, "{err}");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::rename(data.join("keyring.json"), shared.join("keyring.json")).unwrap();
    std::os::unix::fs::symlink(shared.join("keyring.json"), data.join("keyring.json")).unwrap();
    let (code, _, err) =
        crate::common::run_cli(&["keyring", "rotate", "--data-dir", &data_s], None, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(std::fs::symlink_metadata(data.join("keyring.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    let ring: Value =
        serde_json::from_slice(&std::fs::read(shared.join("keyring.json")).unwrap()).unwrap();
    assert_eq!(ring["primary"], "k2", "{ring}");
}

/// `GET /api/tasks/{id}` reads through a cache of rows on SQLite
/// (`store::cache`): after every kind of write, the next read shows it.
#[tokio::test]
async fn a_task_read_again_shows_every_write_before_it() {
    let s = start().await;
    let t = create(&s, json!({"title": "first", "description": "d"})).await;
    let id = t["id"].as_str().unwrap().to_string();
    for _ in 0..3 {
        assert_eq!(read_task(&s, &id).await["title"], "first");
    }
    // PATCH
    let r = patch(&s, &id, json!({"title": "second", "priority": "high"})).await;
    assert_eq!(r.status(), 200);
    let t = read_task(&s, &id).await;
    assert_eq!(
        (t["title"].as_str(), t["priority"].as_str()),
        (Some("second"), Some("high"))
    );
    // claim
    let r = s
        .admin_post("/api/agent/claim", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t = read_task(&s, &id).await;
    assert_eq!(t["status"], "running");
    assert!(t["agent_id"].is_string(), "{t}");
    // result
    let r = admin_result(&s, &id, json!({"status": "failed", "result": {"why": "x"}})).await;
    assert_eq!(r.status(), 200);
    let t = read_task(&s, &id).await;
    assert_eq!(
        (t["status"].as_str(), &t["result"]),
        (Some("failed"), &json!({"why": "x"}))
    );
    // DELETE
    let r = delete_task(&s, &id).await;
    assert_eq!(r.status(), 204);
    assert_eq!(get_task(&s, &id).await.status(), 404);
    // cancel (a PATCH of the status) of another, read while queued
    let t = create(&s, json!({"title": "other"})).await;
    let other = t["id"].as_str().unwrap().to_string();
    assert_eq!(read_task(&s, &other).await["status"], "queued");
    assert_eq!(
        patch(&s, &other, json!({"status": "cancelled"}))
            .await
            .status(),
        200
    );
    assert_eq!(read_task(&s, &other).await["status"], "cancelled");
}

/// A path parameter that percent-decodes to invalid UTF-8 is a 400 in the
/// error shape on every route that takes one (axum's own rejection is a
/// `text/plain` body naming the parameter).
#[tokio::test]
async fn malformed_path_parameters_are_400_in_the_error_shape() {
    let s = start().await;
    let routes = [
        (reqwest::Method::GET, "/api/tasks/%ff"),
        (reqwest::Method::PATCH, "/api/tasks/%ff%fe"),
        (reqwest::Method::DELETE, "/api/tasks/%c3%28"),
        (reqwest::Method::POST, "/api/tasks/%ff/result"),
        (reqwest::Method::DELETE, "/api/keys/%ff"),
        (reqwest::Method::POST, "/api/keys/%ff/rotate"),
        (reqwest::Method::GET, "/api/users/%ff"),
        (reqwest::Method::DELETE, "/api/users/%ff"),
        (reqwest::Method::DELETE, "/api/security/bans/%ff"),
        // and in a query string (it was decoded to U+FFFD and searched for)
        (reqwest::Method::GET, "/api/tasks?q=%c3"),
        (reqwest::Method::GET, "/api/tasks?q=%ff%fe"),
        (reqwest::Method::GET, "/api/keys?cursor=%80"),
    ];
    each_is_a_bad_request(&s, &routes).await;
}

/// Send each `(method, path)` with the admin key (a body on PATCH and POST)
/// and expect a 400 `bad_request` in the error shape, with a request id.
async fn each_is_a_bad_request(s: &TestServer, routes: &[(reqwest::Method, &str)]) {
    for (method, path) in routes {
        let mut req = s
            .client
            .request(method.clone(), s.url(path))
            .header("X-API-Key", s.admin());
        if matches!(*method, reqwest::Method::PATCH | reqwest::Method::POST) {
            req = req.json(&json!({"status": "done", "result": {}}));
        }
        let r = req.send().await.unwrap();
        assert!(r.headers().get("x-request-id").is_some(), "{method} {path}");
        let (st, code, body) = error_code(r).await;
        assert_eq!(
            (st, code.as_str()),
            (400, "bad_request"),
            "{method} {path}: {body}"
        );
    }
}

/// A NUL (or any control character) in a path parameter, the search text
/// or a login name is refused in the error shape on every backend:
/// PostgreSQL refuses a NUL in text, which answered 500 before the handlers
/// checked for it.
#[tokio::test]
async fn control_characters_in_ids_search_and_login_names_are_4xx() {
    let s = start().await;
    let c = &s.client;
    let routes = [
        (reqwest::Method::GET, "/api/tasks/x%00"),
        (
            reqwest::Method::GET,
            "/api/tasks/01a22887295e7515973691547f644f61%00",
        ),
        (reqwest::Method::PATCH, "/api/tasks/%00"),
        (reqwest::Method::DELETE, "/api/tasks/a%0Ab"),
        (reqwest::Method::POST, "/api/tasks/x%00/result"),
        (reqwest::Method::DELETE, "/api/keys/x%00"),
        (reqwest::Method::POST, "/api/keys/x%00/rotate"),
        (reqwest::Method::GET, "/api/users/x%00"),
        (reqwest::Method::DELETE, "/api/users/x%1b"),
        (reqwest::Method::DELETE, "/api/security/bans/127.0.0.9%00"),
    ];
    each_is_a_bad_request(&s, &routes).await;
    for q in ["a%00b", "%00", "line%0A"] {
        let r = s
            .admin_get(&format!("/api/tasks?q={q}"))
            .send()
            .await
            .unwrap();
        let (st, code, body) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "validation_failed"), "{q}");
        assert!(body["error"]["fields"]["q"].is_array(), "{q}: {body}");
    }
    // a name no user can have fails like any wrong name
    for name in ["admin\0", "a\0b"] {
        let r = c
            .post(s.url("/api/auth/login"))
            .json(&json!({"username": name, "password": "x"}))
            .send()
            .await
            .unwrap();
        let (st, code, _) = error_code(r).await;
        assert_eq!((st, code.as_str()), (401, "unauthenticated"), "{name:?}");
    }
    // and the server still serves
    let r = s.admin_get("/api/tasks?q=plain").send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// HTTP parameter pollution: a query parameter given twice is refused on
/// every list (the task list used to keep the last value, the security
/// lists the first), naming the parameter; once is fine.
#[tokio::test]
async fn a_query_parameter_given_twice_is_refused_on_every_list() {
    let s = start().await;
    let cases = [
        ("/api/tasks?status=queued&status=done", "status"),
        ("/api/tasks?q=a&limit=1&q=b", "q"),
        ("/api/audit?type=api_access&type=login_attempt", "type"),
        ("/api/security/bans?limit=1&limit=500", "limit"),
        ("/api/security/incidents?limit=5&limit=5", "limit"),
    ];
    for (path, name) in cases {
        let r = s.admin_get(path).send().await.unwrap();
        let (st, code, body) = error_code(r).await;
        assert_eq!((st, code.as_str()), (400, "validation_failed"), "{path}");
        assert_eq!(
            body["error"]["fields"][name],
            json!(["given more than once"]),
            "{path}: {body}"
        );
        let once = path.split_once('&').map_or(path, |(first, _)| first);
        let r = s.admin_get(once).send().await.unwrap();
        assert_eq!(r.status(), 200, "{once}");
    }
}

/// The net under every text the handlers do not check: PostgreSQL's refusal
/// of a NUL in text is the input's fault, a 400, not a 500.
#[tokio::test]
async fn a_value_postgres_cannot_store_is_a_400() {
    use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode};
    if !pg_mode() || !need("PostgreSQL", pg_available()) {
        return;
    }
    let url = fresh_pg_database();
    let db = frenly::store::Db::connect(&url, 1, 1).await.unwrap();
    let e = frenly::store::users::by_username(&db, "a\0b")
        .await
        .expect_err("PostgreSQL refuses a NUL in text");
    assert!(e.is_unstorable_text(), "{e}");
    let api = frenly::http::ApiError::from(e);
    assert_eq!(api.status(), 400, "{api:?}");
    let other = frenly::store::StoreError::Corrupt("x".into());
    assert!(!other.is_unstorable_text());
    assert_eq!(frenly::http::ApiError::from(other).status(), 500);
    drop(db);
    drop_pg_database(&url);
}

/// PATCHes of one task at the same moment, each setting its own field:
/// every one answered 200 is in the task afterwards (none overwritten by
/// another's stale read).
#[tokio::test]
async fn concurrent_patches_of_one_task_lose_no_change() {
    let s = start().await;
    for round in 0..10 {
        let id = create(
            &s,
            json!({"title": "orig", "description": "d0", "priority": "low"}),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_string();
        let bodies = [
            json!({"title": format!("title {round}")}),
            json!({"priority": "high"}),
            json!({"description": format!("description {round}")}),
        ];
        let sends: Vec<_> = bodies
            .iter()
            .map(|b| {
                let req = s
                    .client
                    .patch(s.url(&format!("/api/tasks/{id}")))
                    .header("X-API-Key", s.admin())
                    .json(b);
                tokio::spawn(req.send())
            })
            .collect();
        for send in sends {
            let r = send.await.unwrap().unwrap();
            assert_eq!(r.status(), 200, "{:?}", r.text().await);
        }
        let t: Value = get_task(&s, &id).await.json().await.unwrap();
        assert_eq!(
            (&t["title"], &t["priority"], &t["description"]),
            (
                &json!(format!("title {round}")),
                &json!("high"),
                &json!(format!("description {round}"))
            ),
            "round {round}: {t}"
        );
    }
}

/// A database that goes away is a dependency down, not a server fault:
/// every route that needs it answers 503 `unavailable` with `Retry-After`
/// (the contract's code), fast, and `/readyz` takes the instance out of
/// rotation. And the mapping itself: a pool that found no free connection
/// within its wait is 503, a corrupt row stays 500.
#[tokio::test]
async fn a_database_gone_is_503_unavailable_not_500() {
    use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode};
    use frenly::store::StoreError;
    let busy = frenly::http::ApiError::from(StoreError::Sqlx(sqlx::Error::PoolTimedOut));
    assert_eq!(busy.status(), 503, "{busy:?}");
    assert_eq!(
        frenly::http::ApiError::from(StoreError::Corrupt("x".into())).status(),
        500
    );
    if !pg_mode() || !need("PostgreSQL", pg_available()) {
        return;
    }
    let url = fresh_pg_database();
    let s = TestServer::with(Opts::default().database(&url)).await;
    let id = create(&s, json!({"title": "before"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    // a key never presented yet: its check needs the database
    let uncached = crate::common::user_key(&s, "uncached", &["user"]).await;
    let r = s
        .admin_post(
            "/api/security/bans",
            &json!({"ip": "198.51.100.77", "seconds": 300}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    drop_pg_database(&url);
    let started = std::time::Instant::now();
    let requests = [
        s.admin_get("/api/tasks"),
        s.admin_get(&format!("/api/tasks/{id}")),
        s.admin_post("/api/tasks", &json!({"title": "after"})),
        s.admin_get("/api/audit"),
        // the credential check too (it was 500 `internal`)
        s.get("/api/auth/whoami").header("X-API-Key", &uncached),
        // a ban in force but not stored, a lift not made
        s.admin_post(
            "/api/security/bans",
            &json!({"ip": "198.51.100.78", "seconds": 300}),
        ),
        s.client
            .delete(s.url("/api/security/bans/198.51.100.77"))
            .header("X-API-Key", s.admin()),
    ];
    for r in requests {
        let r = r.send().await.unwrap();
        assert_eq!(r.headers()["retry-after"], "5");
        let (status, code, _) = error_code(r).await;
        assert_eq!((status, code.as_str()), (503, "unavailable"));
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(16),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.get("/readyz").send().await.unwrap().status(), 503);
    // the lift that could not delete its row lifted nothing
    let bans: Value = s
        .admin_get("/api/security/bans")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = bans["items"].to_string();
    assert!(
        listed.contains("198.51.100.77") && listed.contains("198.51.100.78"),
        "{bans}"
    );
}

/// Audit events made while PostgreSQL refuses connections reach the
/// database copy once it is back (they were written to the file and
/// dropped from the database: `/api/audit` never showed them).
#[tokio::test]
async fn audit_events_made_while_the_database_is_away_are_stored_when_it_is_back() {
    use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode, psql};
    if !pg_mode() || !need("PostgreSQL", pg_available()) {
        return;
    }
    let url = fresh_pg_database();
    let name = url.rsplit('/').next().unwrap().to_string();
    let s = TestServer::with(Opts::default().database(&url)).await;
    // the admin key is cached: its requests need no database
    let whoami = |id: &str| {
        s.admin_get("/api/auth/whoami")
            .header("X-Request-Id", id)
            .send()
    };
    assert_eq!(whoami("warm-up").await.unwrap().status(), 200);
    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    for i in 0..3 {
        assert_eq!(whoami(&format!("away-{i}")).await.unwrap().status(), 200);
    }
    // the writer's batches meanwhile fail (connections refused)
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    assert_eq!(whoami("back").await.unwrap().status(), 200);
    let rows = s.audit_rows("type=api_access&limit=200", 6).await;
    let ids: Vec<&str> = rows
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    for i in 0..3 {
        assert!(ids.contains(&format!("away-{i}").as_str()), "{ids:?}");
    }
    assert!(
        s.stderr_text().contains("kept for the next batch"),
        "the outage was not seen"
    );
    drop(s);
    drop_pg_database(&url);
}

/// While PostgreSQL refuses connections, `/readyz` answers 503 within its
/// own 2 s (it waited the pool's 10 s, past a probe's timeout), and a
/// request that needs the database gets its 503 `unavailable` before its
/// own time limit (with `request_timeout_seconds = 8` it was a 408).
#[tokio::test]
async fn a_database_that_is_away_is_a_prompt_503_not_a_hang_or_a_408() {
    use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode, psql};
    if !pg_mode() || !need("PostgreSQL", pg_available()) {
        return;
    }
    let url = fresh_pg_database();
    let name = url.rsplit('/').next().unwrap().to_string();
    let s = TestServer::with(
        Opts::default()
            .database(&url)
            .config("[network]\nrequest_timeout_seconds = 8\n"),
    )
    .await;
    assert_eq!(s.get("/readyz").send().await.unwrap().status(), 200);
    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    // the first request may meet a dead connection: then come the waits
    let _ = s.admin_get("/api/tasks").send().await;
    for _ in 0..2 {
        let t = std::time::Instant::now();
        let r = s.get("/readyz").send().await.unwrap();
        assert_eq!(r.status(), 503);
        assert!(
            t.elapsed() < std::time::Duration::from_secs(4),
            "{:?}",
            t.elapsed()
        );
        let t = std::time::Instant::now();
        let (status, code, body) =
            error_code(s.admin_get("/api/tasks").send().await.unwrap()).await;
        assert_eq!((status, code.as_str()), (503, "unavailable"), "{body}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(7),
            "{:?}",
            t.elapsed()
        );
    }
    psql(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.get("/readyz").send().await.unwrap().status() != 200 {
        assert!(std::time::Instant::now() < deadline, "not ready again");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(s);
    drop_pg_database(&url);
}

/// PostgreSQL unreachable (connections refused: the pool retries for its
/// whole wait), probed with the key a client keeps on every request: once
/// the key's cached check is due (5 s), its recheck waited the pool's 10 s
/// before `/readyz` even ran, past a load balancer's probe timeout. A
/// public route answers as to an anonymous caller instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_answers_promptly_with_the_key_due_and_the_database_unreachable() {
    use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available, pg_mode};
    if !pg_mode() || !need("PostgreSQL", pg_available()) {
        return;
    }
    let relay = crate::common::Cuttable::to("127.0.0.1:5432", "").await;
    let url = fresh_pg_database();
    let via = url.replace("127.0.0.1:5432", &relay.url);
    // a request waits 6 s for a connection
    let s = TestServer::with(
        Opts::default()
            .database(&via)
            .config("[network]\nrequest_timeout_seconds = 12\n"),
    )
    .await;
    assert_eq!(s.admin_get("/readyz").send().await.unwrap().status(), 200);
    let cut = std::time::Instant::now();
    relay.close();
    // the pool's idle connections fail at once when used; then it waits
    for _ in 0..5 {
        let t = std::time::Instant::now();
        let _ = s.admin_get("/api/tasks").send().await;
        if t.elapsed() > std::time::Duration::from_secs(3) {
            break;
        }
    }
    let due = std::time::Duration::from_millis(5500).saturating_sub(cut.elapsed());
    tokio::time::sleep(due).await;
    let t = std::time::Instant::now();
    let r = s.admin_get("/readyz").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );
    drop(s);
    drop_pg_database(&url);
}

/// A body naming a member twice is ambiguous (serde_json and Python keep
/// the last, other parsers the first): every route that takes a JSON body
/// refuses it with 400 `bad_request`, at any depth, and nothing is stored.
#[tokio::test]
async fn bodies_naming_a_member_twice_are_refused() {
    let s = start().await;
    let id = create(&s, json!({"title": "kept"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let cases: [(&str, String, &[u8]); 7] = [
        ("POST", "/api/tasks".into(), br#"{"title":"a","title":"b"}"#),
        (
            "POST",
            "/api/tasks".into(),
            br#"{"title":"a","input":{"cmd":"ls","cmd":"rm -rf /"}}"#,
        ),
        ("PATCH", format!("/api/tasks/{id}"), br#"{"priority":"low","priority":"high"}"#),
        (
            "POST",
            "/api/users".into(),
            br#"{"username":"dup","email":"d@example.com","password":"a long enough password","roles":["user"],"roles":["admin"]}"#,
        ),
        ("POST", "/api/keys".into(), br#"{"name":"k","name":"k2"}"#),
        ("PATCH", "/api/agent".into(), br#"{"paused":false,"paused":true}"#),
        (
            "POST",
            "/api/auth/login".into(),
            br#"{"username":"admin","username":"x","password":"p"}"#,
        ),
    ];
    for (method, path, body) in cases {
        let r = s
            .client
            .request(method.parse().unwrap(), s.url(&path))
            .header("X-API-Key", s.admin())
            .header("Content-Type", "application/json")
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        let (status, code, err) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "bad_request"),
            "{method} {path}: {err}"
        );
        let msg = err["error"]["message"].as_str().unwrap();
        assert!(msg.contains("duplicate field"), "{method} {path}: {msg}");
    }
    // nothing was created or changed
    let all = list_all(&s, "", 100).await;
    assert_eq!(all.len(), 1, "{all:?}");
    assert_eq!(read_task(&s, &id).await["priority"], json!("normal"));
    let r = s.admin_get("/api/users").send().await.unwrap();
    assert!(!r.text().await.unwrap().contains("\"dup\""));
}

/// A route that takes no body (claim, key rotation and revocation, logout,
/// the deletions) refuses a malformed or non-JSON one before it acts (the
/// body used to be ignored: `{` rotated a key and claimed a task), and
/// still takes none, or well-formed JSON it ignores.
#[tokio::test]
async fn routes_without_a_body_refuse_a_malformed_one_before_acting() {
    let s = start().await;
    let id = create(&s, json!({"title": "stays queued"})).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let worker = crate::common::user_key(&s, "nobody_worker", &["user"]).await;
    let key_id = {
        let r = s
            .admin_post("/api/keys", &json!({"name": "spare"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let token = crate::common::login_token(&s, "nobody_worker", crate::common::PASSPHRASE).await;
    let uid = crate::common::user_id_of(&s, &worker).await;
    // (method, path, credential, whether it is a bearer token)
    let admin = |method: &'static str, path: String| (method, path, s.admin().to_string(), false);
    let routes = [
        admin("POST", "/api/agent/claim".into()),
        admin("POST", format!("/api/keys/{key_id}/rotate")),
        admin("DELETE", format!("/api/keys/{key_id}")),
        ("POST", "/api/auth/logout".into(), token.clone(), true),
        admin("DELETE", format!("/api/tasks/{id}")),
        admin("DELETE", format!("/api/users/{uid}")),
        admin("DELETE", "/api/security/bans/192.0.2.7".into()),
    ];
    for (body, ctype, want) in [
        ("{", "application/json", (400, "bad_request")),
        ("not json", "application/json", (400, "bad_request")),
        (
            "a=1",
            "application/x-www-form-urlencoded",
            (415, "unsupported_media_type"),
        ),
    ] {
        for (method, path, cred, bearer) in &routes {
            let req = s
                .client
                .request(method.parse().unwrap(), s.url(path))
                .header("Content-Type", ctype)
                .body(body);
            let req = if *bearer {
                req.bearer_auth(cred)
            } else {
                req.header("X-API-Key", cred)
            };
            let (status, code, err) = error_code(req.send().await.unwrap()).await;
            assert_eq!(
                (status, code.as_str()),
                want,
                "{method} {path} {body:?}: {err}"
            );
        }
    }
    // nothing happened: the task is queued, the user, their login and the
    // spare key are all there
    assert_eq!(read_task(&s, &id).await["status"], "queued");
    let r = s
        .get("/api/auth/whoami")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let keys: Value = s
        .admin_get("/api/keys?limit=100")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let spare = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap();
    assert_eq!(spare["status"], "active", "{spare}");
    // no body, or an ignored `{}`, still works
    let r = s
        .client
        .post(s.url("/api/agent/claim"))
        .header("X-API-Key", s.admin())
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .post(s.url(&format!("/api/keys/{key_id}/rotate")))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // that rotation is the only one
    let rotated = s.audit_rows("type=key_rotated", 1).await;
    assert_eq!(rotated.len(), 1, "{rotated:?}");
    let r = s
        .client
        .delete(s.url(&format!("/api/keys/{key_id}")))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
}

/// Store-level checks of a user deletion against that user's in-flight
/// writes and of `updated_at` (probe K #1, #2), on one database.
mod deletion_races {
    use frenly::store::tasks::{self, Claim, TaskRow};
    use frenly::store::users::{self, Deleted, User};
    use frenly::store::Db;

    async fn user(db: &Db, name: &str, role: &str) -> String {
        let u = User {
            id: frenly::store::new_id(),
            username: name.into(),
            email: format!("{name}@example.test"),
            password_hash: None,
            roles: vec![role.into()],
            created_at: 1,
            tokens_valid_after: 0,
        };
        assert!(users::insert(db, &u).await.unwrap());
        u.id
    }

    fn task(owner: &str, updated_at: i64) -> TaskRow {
        TaskRow {
            id: frenly::store::new_id(),
            owner_id: owner.into(),
            title: "t".into(),
            description: None,
            priority: 1,
            status: "queued".into(),
            input: None,
            result: None,
            agent_id: None,
            created_at: 1,
            updated_at,
        }
    }

    fn released(d: Deleted) -> tasks::Released {
        match d {
            Deleted::Yes(r) => r,
            other => panic!("not deleted: {other:?}"),
        }
    }

    /// A request authenticated before its user was deleted and writing
    /// after: its claim claims nothing and its task is not stored (they
    /// left a task running for a worker that no longer exists, or queued
    /// for a deleted owner). And every write moves `updated_at` past the
    /// row's value even when the writer's clock is behind it.
    pub async fn late_writes_of_a_deleted_user_store_nothing(db: &Db) {
        let owner = user(db, "owner", "user").await;
        let worker = user(db, "worker", "agent").await;
        let leaver = user(db, "leaver", "user").await;
        // a row stamped in the future: the writers' clocks are behind it
        let ahead = frenly::store::now_ms() + 100_000;
        let t = task(&owner, ahead);
        assert!(tasks::insert(db, &t).await.unwrap());
        // claimed: strictly after the stored time, the row as stored returned
        let Claim::Task(c) = tasks::claim(db, &worker, 1000).await.unwrap() else {
            panic!("nothing claimed");
        };
        assert_eq!(c.id, t.id);
        assert!(
            c.updated_at > ahead,
            "claim went back: {} <= {ahead}",
            c.updated_at
        );
        // the worker is deleted while it holds it: re-queued, later
        let r = released(users::delete(db, &worker).await.unwrap());
        assert_eq!(r.requeued.len(), 1);
        let q = &r.requeued[0];
        assert_eq!((q.status.as_str(), q.agent_id.as_deref()), ("queued", None));
        assert!(q.updated_at > c.updated_at, "re-queue went back");
        // its claim in flight finds no worker and claims nothing
        match tasks::claim(db, &worker, 1000).await.unwrap() {
            Claim::NoWorker => {}
            other => panic!("a deleted worker's claim: {other:?}"),
        }
        let now = tasks::get(db, &t.id).await.unwrap().unwrap();
        assert_eq!(
            (now.status.as_str(), now.agent_id.as_deref()),
            ("queued", None)
        );
        // finish moves it on too
        let worker2 = user(db, "worker2", "agent").await;
        let Claim::Task(c2) = tasks::claim(db, &worker2, 1000).await.unwrap() else {
            panic!("nothing claimed");
        };
        assert!(c2.updated_at > q.updated_at);
        let f = tasks::finish(db, &t.id, &worker2, "done", None, 1)
            .await
            .unwrap()
            .unwrap();
        assert!(f.updated_at > c2.updated_at, "finish went back");
        // a deleted owner's creation in flight stores nothing
        let mine = task(&leaver, 1);
        assert!(tasks::insert(db, &mine).await.unwrap());
        let r = released(users::delete(db, &leaver).await.unwrap());
        assert_eq!(r.cancelled.len(), 1);
        assert_eq!(r.cancelled[0].status, "cancelled");
        let late = task(&leaver, 1);
        assert!(
            !tasks::insert(db, &late).await.unwrap(),
            "stored for a deleted owner"
        );
        assert!(tasks::get(db, &late.id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("d.db").display());
        let db = Db::connect(&url, 1, 2).await.unwrap();
        late_writes_of_a_deleted_user_store_nothing(&db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        use crate::common::{drop_pg_database, fresh_pg_database, need, pg_available};
        if !need("PostgreSQL", pg_available()) {
            return;
        }
        let url = fresh_pg_database();
        let db = Db::connect(&url, 1, 4).await.unwrap();
        late_writes_of_a_deleted_user_store_nothing(&db).await;
        concurrent_claim_and_deletion(&db).await;
        drop(db);
        drop_pg_database(&url);
    }

    /// PostgreSQL, both orders of a claim racing its worker's deletion,
    /// made deterministic with a transaction that stands for the other side:
    /// the deletion waits for a claim that holds the worker's row and then
    /// re-queues what it claimed; a claim behind a deletion in progress
    /// waits and then claims nothing.
    async fn concurrent_claim_and_deletion(db: &Db) {
        let owner = user(db, "owner3", "user").await;
        let worker = user(db, "worker3", "agent").await;
        let t = task(&owner, 1);
        assert!(tasks::insert(db, &t).await.unwrap());
        // a claim in flight: it holds the worker's row (as the claim's
        // sub-select does) and writes its task after the deletion started
        let mut claim = db.pool.begin().await.unwrap();
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE")
            .bind(&worker)
            .fetch_one(&mut *claim)
            .await
            .unwrap();
        let deletion = {
            let (db, worker) = (db.clone(), worker.clone());
            tokio::spawn(async move { users::delete(&db, &worker).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::query("UPDATE tasks SET status = 'running', agent_id = $1 WHERE id = $2")
            .bind(&worker)
            .bind(&t.id)
            .execute(&mut *claim)
            .await
            .unwrap();
        claim.commit().await.unwrap();
        let r = released(deletion.await.unwrap().unwrap());
        assert_eq!(r.requeued.len(), 1, "the claim in flight was not released");
        let now = tasks::get(db, &t.id).await.unwrap().unwrap();
        assert_eq!(
            (now.status.as_str(), now.agent_id.as_deref()),
            ("queued", None)
        );
        // the other order: a deletion in progress holds the row; the claim
        // waits for it and finds no worker
        let worker = user(db, "worker4", "agent").await;
        let mut deletion = db.pool.begin().await.unwrap();
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(&worker)
            .execute(&mut *deletion)
            .await
            .unwrap();
        let claim = {
            let (db, worker) = (db.clone(), worker.clone());
            tokio::spawn(async move { tasks::claim(&db, &worker, 1000).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !claim.is_finished(),
            "the claim did not wait for the deletion"
        );
        deletion.commit().await.unwrap();
        match claim.await.unwrap().unwrap() {
            Claim::NoWorker => {}
            other => panic!("a claim behind the deletion: {other:?}"),
        }
        let now = tasks::get(db, &t.id).await.unwrap().unwrap();
        assert_eq!(
            (now.status.as_str(), now.agent_id.as_deref()),
            ("queued", None)
        );
    }
}

/// The stored `description` of a task, as written (SQLite test servers).
fn stored_description(s: &TestServer, id: &str) -> String {
    let db = rusqlite::Connection::open(s.data_dir().join("frenly.db")).unwrap();
    db.query_row("SELECT description FROM tasks WHERE id = ?1", [id], |r| {
        r.get(0)
    })
    .unwrap()
}

/// After `keyring rotate --reencrypt` returns, a running server writes
/// under the new key (it re-reads the keyring at most every 5 s: values
/// written meanwhile were left under the old key, and a new task right
/// after the command was still under it); `keyring reencrypt` finishes a
/// pass without adding a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reencrypt_waits_until_running_servers_use_the_new_key() {
    if crate::common::pg_mode() {
        return; // reads the SQLite file
    }
    let s = start().await;
    let first = create(&s, json!({"title": "a", "description": "before"})).await;
    let first = first["id"].as_str().unwrap().to_string();
    assert!(stored_description(&s, &first).starts_with("k1:"));
    let cfg = s.dir.path().join("frenly.toml");
    let cfg = cfg.to_str().unwrap().to_string();
    let data = s.data_dir();
    let data_s = data.to_str().unwrap().to_string();
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["keyring".into()];
        v.extend(extra.iter().map(|a| a.to_string()));
        v.extend([
            "--config".into(),
            cfg.clone(),
            "--data-dir".into(),
            data_s.clone(),
        ]);
        v
    };
    let run = |a: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            crate::common::run_cli(&refs, None, &[])
        })
        .await
        .unwrap()
    };
    let (code, _, err) = run(args(&["rotate", "--reencrypt"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("re-encrypted 1 task"), "{err}");
    let after = create(&s, json!({"title": "b", "description": "after"})).await;
    let after = after["id"].as_str().unwrap().to_string();
    assert!(
        stored_description(&s, &after).starts_with("k2:"),
        "written under the old key"
    );
    assert!(stored_description(&s, &first).starts_with("k2:"));
    // a plain rotate, then the pass alone: no third key
    let (code, _, err) = run(args(&["rotate"])).await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(args(&["reencrypt"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("re-encrypted 2 task(s) under `k3`"), "{err}");
    let ring: Value =
        serde_json::from_slice(&std::fs::read(data.join("keyring.json")).unwrap()).unwrap();
    assert_eq!(ring["primary"], "k3");
    assert_eq!(ring["keys"].as_array().unwrap().len(), 3, "{ring}");
    assert!(stored_description(&s, &first).starts_with("k3:"));
    assert_eq!(read_task(&s, &after).await["description"], "after");
}
