//! `/api/ws` with a real WebSocket client over real TLS (issue 4).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::common::TestServer;
use crate::tasks::{create, start};

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

fn connector(s: &TestServer) -> Connector {
    Connector::Rustls(s.tls_client_config())
}

pub async fn connect(
    s: &TestServer,
    key: Option<&str>,
) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut req = format!("wss://{}/api/ws", s.addr)
        .into_client_request()
        .unwrap();
    if let Some(k) = key {
        req.headers_mut().insert("X-API-Key", k.parse().unwrap());
    }
    tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector(s)))
        .await
        .map(|(ws, _)| ws)
}

pub async fn next_event(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            _ => continue,
        }
    }
}

#[tokio::test]
async fn handshake_without_credentials_is_401_and_query_credentials_are_ignored() {
    let s = start().await;
    match connect(&s, None).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected a 401 handshake, got {:?}", other.map(|_| ())),
    }
    // a key in the query string is not a credential
    let req = format!("wss://{}/api/ws?api_key={}", s.addr, s.admin())
        .into_client_request()
        .unwrap();
    match tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector(&s)))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| ())),
    }
    // a plain GET (no upgrade) with credentials is a 400 in the error shape
    let r = s.admin_get("/api/ws").send().await.unwrap();
    let (status, code, _) = crate::common::error_code(r).await;
    assert_eq!((status, code.as_str()), (400, "bad_request"));
}

#[tokio::test]
async fn events_arrive_within_a_second_of_each_change() {
    let s = start().await;
    let mut ws = connect(&s, Some(s.admin())).await.unwrap();
    let t0 = Instant::now();
    let t = create(&s, json!({"title": "watched", "description": "d"})).await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let ev = tokio::time::timeout(Duration::from_secs(1), next_event(&mut ws))
            .await
            .expect("event within 1 s");
        assert_eq!(ev["task"]["id"], t["id"]);
        kinds.push(ev["type"].as_str().unwrap().to_string());
        if ev["type"] == "task_available" {
            // workers learn that a task exists, not what it says
            assert!(ev["task"].get("description").is_none() && ev["task"].get("title").is_none());
        } else {
            assert_eq!(ev["task"], t);
        }
    }
    kinds.sort();
    assert_eq!(kinds, ["task_available", "task_created"]);
    assert!(t0.elapsed() < Duration::from_secs(2));
    let id = t["id"].as_str().unwrap();
    // claimed, updated, finished
    let c = s
        .admin_post("/api/agent/claim", &json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(c.status(), 200);
    let ev = tokio::time::timeout(Duration::from_secs(1), next_event(&mut ws))
        .await
        .unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["task"]["status"].as_str()),
        (Some("task_claimed"), Some("running"))
    );
    let r = s
        .client
        .patch(s.url(&format!("/api/tasks/{id}")))
        .header("X-API-Key", s.admin())
        .json(&json!({"title": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = tokio::time::timeout(Duration::from_secs(1), next_event(&mut ws))
        .await
        .unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["task"]["title"].as_str()),
        (Some("task_updated"), Some("renamed"))
    );
    let r = s
        .admin_post(
            &format!("/api/tasks/{id}/result"),
            &json!({"status": "done", "result": [1]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ev = tokio::time::timeout(Duration::from_secs(1), next_event(&mut ws))
        .await
        .unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["task"]["status"].as_str()),
        (Some("task_finished"), Some("done"))
    );
    // deleted: its id only (a client mirroring tasks kept it for ever)
    let r = s
        .client
        .delete(s.url(&format!("/api/tasks/{id}")))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let ev = tokio::time::timeout(Duration::from_secs(1), next_event(&mut ws))
        .await
        .unwrap();
    assert_eq!(ev, json!({"type": "task_deleted", "task": {"id": id}}));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_while_others_keep_up() {
    let s = Arc::new(start().await);
    let stalled = connect(&s, Some(s.admin())).await.unwrap();
    let mut reader = connect(&s, Some(s.admin())).await.unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let r2 = received.clone();
    let reading = tokio::spawn(async move {
        while let Some(Ok(m)) = reader.next().await {
            if let Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if v["type"] == "task_created" {
                    r2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    // big events fill the stalled client's socket buffers quickly
    let desc = "z".repeat(90_000);
    let mut created = 0usize;
    for _ in 0..400 {
        create(&s, json!({"title": "flood", "description": desc})).await;
        created += 1;
    }
    // the reader got every event, promptly
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.load(std::sync::atomic::Ordering::SeqCst) < created {
        assert!(
            Instant::now() < deadline,
            "reader fell behind: {} of {created}",
            received.load(std::sync::atomic::Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // the stalled client was disconnected: draining it ends early
    let mut stalled = stalled;
    let mut got = 0usize;
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stalled.next().await {
                Some(Ok(Message::Text(_))) => got += 1,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was never closed");
    assert!(
        got < created * 2,
        "the stalled client got everything ({got}); it was not dropped"
    );
    reading.abort();
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

/// Idle connections are cheap: each costs the server under 24 KiB over TLS
/// (13–19 KB measured here in the debug build; about 7 KB over plain HTTP in
/// release, docs/BENCHMARKS.md). A 128 KiB read buffer per connection,
/// tungstenite's default, made it 130 KB; a kept credential that pinned the
/// handshake's read buffer made it 33 KB here (both caught by this bound).
#[tokio::test]
async fn idle_websockets_cost_little_memory() {
    const N: u64 = 400;
    // mimalloc returns freed pages at once, so RSS follows what is in use
    // (with its default delay, memory freed after start-up, argon2's 19 MiB
    // block among it, absorbed these connections and the test saw 0 bytes)
    let s = TestServer::with(
        crate::common::Opts::default()
            .config(crate::tasks::BASE_CONFIG)
            .env("MIMALLOC_PURGE_DELAY", "0"),
    )
    .await;
    let key = s.admin_key.clone().unwrap();
    let pid = s.child.as_ref().unwrap().id();
    // warm up: the first connections take the memory the allocator kept
    // from start-up (argon2's block, the IDS compilation)
    let mut warm = Vec::new();
    for _ in 0..N {
        warm.push(connect(&s, Some(&key)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = rss_kib(pid);
    let mut open = Vec::new();
    for _ in 0..N {
        open.push(connect(&s, Some(&key)).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let per_conn = (rss_kib(pid).saturating_sub(before)) * 1024 / N;
    assert!(per_conn < 24 * 1024, "{per_conn} bytes per idle WebSocket");
    eprintln!("{per_conn} bytes per idle WebSocket (TLS)");
    drop(open);
    drop(warm);
}

/// A key revoked while its WebSocket is open closes that connection
/// (1008) at the next credential check, and no event reaches it after.
#[tokio::test]
async fn revoking_the_key_closes_its_open_websocket() {
    let s = start().await;
    let key = crate::common::user_key(&s, "wsrevoke", &["user"]).await;
    let mut ws = connect(&s, Some(&key)).await.unwrap();
    let keys: Value = s
        .get("/api/keys")
        .header("X-API-Key", &key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = keys["items"][0]["id"].as_str().unwrap().to_string();
    let r = s
        .client
        .delete(format!("{}/api/keys/{id}", s.base))
        .header("X-API-Key", s.admin())
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let deadline = Instant::now() + frenly::app::ws::RECHECK_EVERY + Duration::from_secs(3);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                assert_eq!(u16::from(f.code), 1008);
                break;
            }
            Ok(Some(Ok(Message::Text(t)))) => panic!("event after revocation: {t}"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a 1008 close, got {other:?}"),
        }
    }
}

/// A WebSocket whose credential is revoked gets no event after the
/// revocation's answer: the next event makes the server verify the
/// credential again and close (1008) at once, not at the periodic check.
/// Both kinds: a JWT logged out, an API key revoked; the events come from
/// the same user's other credential, so they would be visible.
#[tokio::test]
async fn no_event_reaches_a_websocket_after_its_credential_is_revoked() {
    let s = start().await;
    let other_key = crate::common::user_key(&s, "wsgone", &["user"]).await;
    let token = crate::common::login_token(&s, "wsgone", crate::common::PASSPHRASE).await;
    let (revoked_key, revoked_key_id) = {
        let v: Value = s
            .post("/api/keys")
            .header("X-API-Key", &other_key)
            .json(&json!({"name": "second"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["key"].as_str().unwrap().to_string(),
            v["id"].as_str().unwrap().to_string(),
        )
    };
    for case in ["jwt", "key"] {
        let mut req = format!("wss://{}/api/ws", s.addr)
            .into_client_request()
            .unwrap();
        match case {
            "jwt" => req
                .headers_mut()
                .insert("Authorization", format!("Bearer {token}").parse().unwrap()),
            _ => req
                .headers_mut()
                .insert("X-API-Key", revoked_key.parse().unwrap()),
        };
        let (mut ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector(&s)))
                .await
                .unwrap();
        let r = match case {
            "jwt" => s
                .post("/api/auth/logout")
                .bearer_auth(&token)
                .send()
                .await
                .unwrap(),
            _ => s
                .client
                .delete(format!("{}/api/keys/{revoked_key_id}", s.base))
                .header("X-API-Key", &other_key)
                .send()
                .await
                .unwrap(),
        };
        assert_eq!(r.status(), 204, "{case}");
        let revoked = Instant::now();
        let r = s
            .post("/api/tasks")
            .header("X-API-Key", &other_key)
            .json(&json!({"title": "after the revocation", "input": {"secret": 1}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{case}");
        loop {
            match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => {
                    assert_eq!(u16::from(f.code), 1008, "{case}");
                    break;
                }
                Ok(Some(Ok(Message::Text(t)))) => panic!("{case}: event after revocation: {t}"),
                Ok(Some(Ok(_))) => continue,
                other => panic!("{case}: expected a 1008 close, got {other:?}"),
            }
        }
        assert!(
            revoked.elapsed() < frenly::app::ws::RECHECK_EVERY - Duration::from_secs(2),
            "{case}: closed only at the periodic check ({:?})",
            revoked.elapsed()
        );
    }
}

/// The close code the server ends `ws` with (events before it are skipped).
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_frame_the_server_refuses_closes_with_its_reason() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    let s = start().await;
    let key = s.admin().to_string();

    // one byte over the limit: 1009, not a dropped connection
    let mut ws = connect(&s, Some(&key)).await.unwrap();
    let big = "x".repeat(frenly::app::ws::MAX_MESSAGE + 1);
    ws.send(Message::Text(big.into())).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1009);

    // a text frame that is not UTF-8: 1007
    let mut ws = connect(&s, Some(&key)).await.unwrap();
    let bad = Frame::message(vec![b'a', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(bad)).await.unwrap();
    assert_eq!(close_code(&mut ws).await, 1007);

    // a frame within the limit is no reason to close
    let mut ws = connect(&s, Some(&key)).await.unwrap();
    ws.send(Message::Text("x".repeat(1000).into()))
        .await
        .unwrap();
    ws.send(Message::Ping(vec![1].into())).await.unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => break assert_eq!(&p[..], [1]),
            Ok(Some(Ok(Message::Text(_)))) => continue,
            other => panic!("expected the pong, got {other:?}"),
        }
    }
}

/// An open WebSocket keeps its connection's place in
/// `network.max_connections`: before, the slot was freed at the upgrade,
/// and one client held 300 sockets past a limit of 20 (and, under the file
/// limit the docs advise, every descriptor). With the limit taken by
/// sockets, a new connection waits; when one closes, it is served.
#[tokio::test]
async fn open_websockets_count_against_max_connections() {
    let s = TestServer::with(crate::common::Opts::default().config(
        "[network]\nlisten = \"127.0.0.1:0\"\nmax_connections = 2\n\
         [limits]\nallowlist = [\"127.0.0.0/8\"]\n",
    ))
    .await;
    let mut a = connect(&s, Some(s.admin())).await.unwrap();
    let _b = connect(&s, Some(s.admin())).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(1500), s.get("/healthz").send()).await;
    assert!(
        waited.is_err(),
        "a third connection was served past the limit"
    );
    a.close(None).await.unwrap();
    drop(a);
    let r = tokio::time::timeout(Duration::from_secs(10), s.get("/healthz").send())
        .await
        .expect("still waiting after a socket closed")
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// On shutdown an open WebSocket gets a Close with 1001 (going away), so a
/// client can tell a shutdown from a crash (before, the socket just ended:
/// 1006, abnormal closure).
#[tokio::test]
async fn shutdown_closes_websockets_with_going_away() {
    let mut s = start().await;
    let mut ws = connect(&s, Some(s.admin())).await.unwrap();
    let reader = tokio::spawn(async move { close_code(&mut ws).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.terminate().await, Some(0));
    assert_eq!(reader.await.unwrap(), 1001);
}

/// A client's Close is answered with a Close (before, the server just
/// went: Python's `websockets` reported an abnormal closure, 1006).
#[tokio::test]
async fn a_clients_close_is_answered() {
    let s = start().await;
    let mut ws = connect(&s, Some(s.admin())).await.unwrap();
    use futures_util::SinkExt;
    ws.send(Message::Close(Some(
        tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        },
    )))
    .await
    .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return Some(f),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("no answer to the Close");
    let frame = answer.expect("the connection ended without a Close");
    assert_eq!(frame.map(|f| u16::from(f.code)), Some(1000));
}

/// probe-G #4: the events socket only sends, yet every frame a client sent
/// was read and discarded without limit (3 million a second from four
/// sockets). A client past its inbound share is closed with 1008 and
/// audited; one within it stays open.
#[tokio::test]
async fn a_client_flooding_the_events_socket_is_closed_with_1008() {
    use futures_util::SinkExt;
    let s = start().await;
    let key = crate::common::user_key(&s, "wsflood", &["readonly"]).await;
    let mut calm = connect(&s, Some(&key)).await.unwrap();
    for _ in 0..5 {
        calm.send(Message::Text("hello".into())).await.unwrap();
    }
    let mut ws = connect(&s, Some(&key)).await.unwrap();
    let mut closed = None;
    for _ in 0..1000 {
        if ws.send(Message::Text("x".into())).await.is_err() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Ok(Some(m)) = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        ws.next(),
    )
    .await
    {
        match m {
            Ok(Message::Close(Some(f))) => {
                closed = Some((u16::from(f.code), f.reason.to_string()));
                break;
            }
            Ok(_) => continue,
            Err(_) => break,
        }
    }
    assert_eq!(closed, Some((1008, "too many messages".to_string())));
    crate::common::audit_line(&s, "the flood's security_violation", |l| {
        l.contains("ws_message_flood")
    })
    .await;
    // the calm client was not closed: it still answers a ping
    calm.send(Message::Ping(vec![1].into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = calm.next().await {
            if matches!(m, Message::Pong(_)) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(pong, Ok(true));
}
