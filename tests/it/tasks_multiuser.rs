//! Tenancy and agent roles across users (issue 4), with users and keys made
//! through the identity endpoints (`POST /api/users`, login, `POST /api/keys`).

use serde_json::{json, Value};

use crate::common::user_key;
use crate::common::{error_code, TestServer};
use crate::tasks::{create, start};

fn with(s: &TestServer, m: reqwest::Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    s.client.request(m, s.url(path)).header("X-API-Key", key)
}

#[tokio::test]
async fn users_see_only_their_own_tasks_and_admins_see_all() {
    let s = start().await;
    let alice = user_key(&s, "alice", &["user"]).await;
    let bob = user_key(&s, "bob", &["user"]).await;
    let r = with(&s, reqwest::Method::POST, "/api/tasks", &alice)
        .json(&json!({"title": "alice's"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let t: Value = r.json().await.unwrap();
    let id = t["id"].as_str().unwrap();
    let path = format!("/api/tasks/{id}");
    // bob: 404 for get, patch, and his list is empty
    let r = with(&s, reqwest::Method::GET, &path, &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "not_found");
    let r = with(&s, reqwest::Method::PATCH, &path, &bob)
        .json(&json!({"status": "cancelled"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "not_found");
    let page: Value = with(&s, reqwest::Method::GET, "/api/tasks", &bob)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 0);
    // users lack delete:tasks: 403 before any lookup
    let r = with(&s, reqwest::Method::DELETE, &path, &bob)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "forbidden");
    // alice sees hers, the admin sees everything
    let page: Value = with(&s, reqwest::Method::GET, "/api/tasks", &alice)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    create(&s, json!({"title": "admin's"})).await;
    let page: Value = s
        .admin_get("/api/tasks")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    // users cannot claim or see the agent
    let r = with(&s, reqwest::Method::POST, "/api/agent/claim", &alice)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "forbidden");
}

#[tokio::test]
async fn only_the_claiming_worker_posts_the_result() {
    let s = start().await;
    let alice = user_key(&s, "alice", &["user"]).await;
    let w1 = user_key(&s, "worker1", &["agent"]).await;
    let w2 = user_key(&s, "worker2", &["agent"]).await;
    let r = with(&s, reqwest::Method::POST, "/api/tasks", &alice)
        .json(&json!({"title": "job", "description": "d"}))
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    let id = t["id"].as_str().unwrap();
    // a worker cannot read a task before claiming it
    let r = with(&s, reqwest::Method::GET, &format!("/api/tasks/{id}"), &w1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = with(&s, reqwest::Method::POST, "/api/agent/claim", &w1)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c: Value = r.json().await.unwrap();
    assert_eq!(c["id"], t["id"]);
    assert_eq!(c["description"], "d");
    // the claiming worker can read it now
    let r = with(&s, reqwest::Method::GET, &format!("/api/tasks/{id}"), &w1)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let result = format!("/api/tasks/{id}/result");
    // another worker: cannot see it -> 404
    let r = with(&s, reqwest::Method::POST, &result, &w2)
        .json(&json!({"status": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "not_found");
    // the owner lacks write:agent -> 403
    let r = with(&s, reqwest::Method::POST, &result, &alice)
        .json(&json!({"status": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "forbidden");
    // an admin sees it but does not hold it -> 409
    let r = s
        .admin_post(&result, &json!({"status": "done"}))
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r).await.1, "conflict");
    let r = with(&s, reqwest::Method::POST, &result, &w1)
        .json(&json!({"status": "failed", "result": {"e": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // the owner sees the result
    let got: Value = with(
        &s,
        reqwest::Method::GET,
        &format!("/api/tasks/{id}"),
        &alice,
    )
    .send()
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(
        (got["status"].as_str(), got["result"]["e"].as_str()),
        (Some("failed"), Some("x"))
    );
}

#[tokio::test]
async fn websocket_events_follow_tenancy_and_workers_get_task_available() {
    use futures_util::StreamExt;
    let s = start().await;
    let alice = user_key(&s, "alice", &["user"]).await;
    let bob = user_key(&s, "bob", &["user"]).await;
    let worker = user_key(&s, "worker", &["agent"]).await;
    let mut bob_ws = crate::ws::connect(&s, Some(&bob)).await.unwrap();
    let mut worker_ws = crate::ws::connect(&s, Some(&worker)).await.unwrap();
    let r = with(&s, reqwest::Method::POST, "/api/tasks", &alice)
        .json(&json!({"title": "secret title", "description": "secret"}))
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    let ev = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::ws::next_event(&mut worker_ws),
    )
    .await
    .unwrap();
    assert_eq!(ev["type"], "task_available");
    assert_eq!(ev["task"]["id"], t["id"]);
    assert!(ev["task"].get("title").is_none());
    // bob hears nothing about alice's task
    let none = tokio::time::timeout(std::time::Duration::from_millis(500), bob_ws.next()).await;
    assert!(none.is_err(), "bob received {none:?}");
}

/// Task events carry the task's contents, so they go only where
/// `GET /api/tasks/{id}` would answer: a key of alice's narrowed to
/// `write:tasks` (or to nothing) hears none of her tasks' events, though
/// her full key does.
#[tokio::test]
async fn websocket_task_events_need_read_tasks() {
    use futures_util::StreamExt;
    let s = start().await;
    let alice = user_key(&s, "alice", &["user"]).await;
    let mut narrowed = Vec::new();
    for perms in [json!(["write:tasks"]), json!([])] {
        let r = with(&s, reqwest::Method::POST, "/api/keys", &alice)
            .json(&json!({"name": "narrow", "permissions": perms}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let key = r.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        let r = with(&s, reqwest::Method::GET, "/api/tasks", &key)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r).await.1, "forbidden");
        narrowed.push(crate::ws::connect(&s, Some(&key)).await.unwrap());
    }
    let mut full = crate::ws::connect(&s, Some(&alice)).await.unwrap();
    let r = with(&s, reqwest::Method::POST, "/api/tasks", &alice)
        .json(&json!({"title": "secret title", "description": "secret"}))
        .send()
        .await
        .unwrap();
    let t: Value = r.json().await.unwrap();
    let ev = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::ws::next_event(&mut full),
    )
    .await
    .unwrap();
    assert_eq!(
        (ev["type"].as_str(), &ev["task"]["id"]),
        (Some("task_created"), &t["id"])
    );
    for ws in &mut narrowed {
        let none = tokio::time::timeout(std::time::Duration::from_millis(300), ws.next()).await;
        assert!(none.is_err(), "a key without read:tasks received {none:?}");
    }
}

/// Two users about to be deleted and one who stays: a worker who leaves
/// holding the admin's task `held`, and an owner who leaves with a queued
/// task `owned`.
struct Leavers {
    s: TestServer,
    owner_id: String,
    gone_id: String,
    stays: String,
    held: String,
    owned: String,
}

async fn leavers() -> Leavers {
    use reqwest::Method;
    let s = start().await;
    let owner = user_key(&s, "leaving_owner", &["user"]).await;
    let gone = user_key(&s, "leaving_worker", &["agent"]).await;
    let stays = user_key(&s, "staying_worker", &["agent"]).await;
    let owner_id = crate::common::user_id_of(&s, &owner).await;
    let gone_id = crate::common::user_id_of(&s, &gone).await;
    // the worker who leaves holds the admin's task
    let held = create(
        &s,
        json!({"title": "held by the leaver", "priority": "high"}),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = with(&s, Method::POST, "/api/agent/claim", &gone)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], held.as_str());
    // the owner who leaves has a queued task
    let r = with(&s, Method::POST, "/api/tasks", &owner)
        .json(&json!({"title": "owned by the leaver"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let owned = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    Leavers {
        s,
        owner_id,
        gone_id,
        stays,
        held,
        owned,
    }
}

/// A deleted user's work leaves the lifecycle with them: the task they
/// held as a worker goes back to the queue (another worker takes it and
/// finishes it), and their own unfinished tasks are cancelled, never handed
/// to a worker. (Before, the held task stayed `running` for ever and the
/// deleted owner's tasks were still claimed, decrypted and worked on.)
#[tokio::test]
async fn deleting_a_user_releases_their_claims_and_cancels_their_tasks() {
    use reqwest::Method;
    let Leavers {
        s,
        owner_id,
        gone_id,
        stays,
        held,
        owned,
    } = leavers().await;
    for id in [&owner_id, &gone_id] {
        let r = with(&s, Method::DELETE, &format!("/api/users/{id}"), s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let read = |id: String| {
        let s = &s;
        async move {
            s.admin_get(&format!("/api/tasks/{id}"))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let t = read(held.clone()).await;
    assert_eq!(
        (t["status"].as_str(), t["agent_id"].as_str()),
        (Some("queued"), None),
        "{t}"
    );
    assert_eq!(read(owned.clone()).await["status"], "cancelled");
    // the worker who stays gets the released task, not the cancelled one
    let r = with(&s, Method::POST, "/api/agent/claim", &stays)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["id"], held.as_str());
    let r = with(
        &s,
        Method::POST,
        &format!("/api/tasks/{held}/result"),
        &stays,
    )
    .json(&json!({"status": "done", "result": {"ok": true}}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let r = with(&s, Method::POST, "/api/agent/claim", &stays)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "the cancelled task was handed out");
}

/// Reads events until one matches `what` (2 s at most).
async fn event_where(ws: &mut crate::ws::Ws, what: impl Fn(&Value) -> bool) -> Option<Value> {
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let ev = tokio::time::timeout_at(until, crate::ws::next_event(ws))
            .await
            .ok()?;
        if what(&ev) {
            return Some(ev);
        }
    }
}

/// Probe K #3: a user deletion re-queued and cancelled tasks silently. It
/// announces them as a PATCH would: the owner of a task the deleted worker
/// held hears `task_updated` (queued, no agent) and the workers
/// `task_available`; the worker holding a task of the deleted owner hears
/// `task_updated` (cancelled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_user_announces_the_tasks_it_released() {
    use reqwest::Method;
    let Leavers {
        s,
        owner_id,
        gone_id,
        stays,
        held,
        owned,
    } = leavers().await;
    let r = with(&s, Method::POST, "/api/agent/claim", &stays)
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["id"], owned.as_str());
    let mut admin_ws = crate::ws::connect(&s, Some(s.admin())).await.unwrap();
    let mut stays_ws = crate::ws::connect(&s, Some(&stays)).await.unwrap();
    for id in [&gone_id, &owner_id] {
        let r = with(&s, Method::DELETE, &format!("/api/users/{id}"), s.admin())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 204);
    }
    let requeued = event_where(&mut admin_ws, |e| e["task"]["id"] == held.as_str())
        .await
        .expect("the owner heard nothing of the re-queue");
    assert_eq!(
        (
            requeued["type"].as_str(),
            requeued["task"]["status"].as_str(),
            requeued["task"]["agent_id"].as_str()
        ),
        (Some("task_updated"), Some("queued"), None),
        "{requeued}"
    );
    let available = event_where(&mut stays_ws, |e| e["type"] == "task_available")
        .await
        .expect("the workers heard nothing of the re-queued task");
    assert_eq!(available["task"]["id"], held.as_str());
    let cancelled = event_where(&mut stays_ws, |e| {
        e["type"] == "task_updated" && e["task"]["id"] == owned.as_str()
    })
    .await
    .expect("the worker holding the deleted owner's task heard nothing");
    assert_eq!(cancelled["task"]["status"], "cancelled", "{cancelled}");
}

/// Probe K #4: a PATCH with `null` for a field that always holds a value
/// answered 200 and changed nothing; now 400 naming the field, while
/// `description: null` still clears the description.
#[tokio::test]
async fn patch_null_for_a_field_that_cannot_be_empty_is_400() {
    let s = start().await;
    let t = create(&s, json!({"title": "t", "description": "d"})).await;
    let id = t["id"].as_str().unwrap();
    for field in ["title", "priority", "status"] {
        let r = s
            .client
            .patch(s.url(&format!("/api/tasks/{id}")))
            .header("X-API-Key", s.admin())
            .json(&json!({ field: null }))
            .send()
            .await
            .unwrap();
        let (status, code, body) = error_code(r).await;
        assert_eq!(
            (status, code.as_str()),
            (400, "validation_failed"),
            "{body}"
        );
        assert!(body["error"]["fields"].get(field).is_some(), "{body}");
    }
    let r = s
        .client
        .patch(s.url(&format!("/api/tasks/{id}")))
        .header("X-API-Key", s.admin())
        .json(&json!({"description": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t: Value = r.json().await.unwrap();
    assert_eq!(
        (&t["description"], &t["title"]),
        (&Value::Null, &json!("t"))
    );
}
