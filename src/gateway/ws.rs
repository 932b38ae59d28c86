//! WebSocket messages through the gateway, inspected by the IDS.
//!
//! Threat: a client that passed the handshake's checks sending injection
//! payloads to the upstream agent inside WebSocket messages, where the
//! request-level IDS never looks.
//!
//! Guarantee: when any IDS family is on for the route's path, every text
//! message from the client, and every binary one that is valid UTF-8
//! (reassembled from its frames), is inspected before it is sent on, as the
//! body of a request to the upgrade's path: a message that is a JSON
//! document is walked like a JSON body (the route's `ids.free_text` fields
//! stay free text), any other message is inspected whole as text. A binary
//! message that is not UTF-8 is data (audio, images, protobuf) and passes
//! uninspected, within the size limit: read as text, random bytes match
//! rules by chance. (An upstream that decodes invalid UTF-8 leniently could
//! read text in it; a route that cannot accept that keeps its clients to
//! text, or sets the IDS off for the path.) A message a `block` family matches
//! never reaches the upstream: the client gets a close frame with code 1008
//! (policy violation) and reason `request_blocked` (`bad_message` for JSON
//! nested deeper than the detector reads, a 400 over HTTP), the upstream a normal
//! close, the audit log a `security_violation` (family, rule and location;
//! never the message), and incident detection an IDS block from the client's
//! address (so repeated attempts lead to a ban). Messages from the upstream
//! pass as they are (up to 64 MiB a message, in any number of frames; a
//! larger one or a broken frame ends the relay with a close code to the
//! client, 1009 or 1002, and a `gateway:` log line). Client messages
//! are bounded by the route's body limit (a larger one closes the connection
//! with 1009, `message_too_large`, and is not sent on; text that is not
//! UTF-8 with 1007, another protocol error with 1002: `app::ws::close_reason`).
//!
//! The handshake's credential is checked again while the relay lasts
//! (`app::ws::Gate`: at once when a change is announced, before the next
//! client message after one, else every
//! 5 s): once it is revoked or expired, or its user deleted, the client gets
//! a close frame with code 1008 and the upstream a normal close (without
//! inspection, the upgraded connection is simply closed).
//!
//! The relay re-frames the messages, so the upgrade request to the upstream
//! carries no `Sec-WebSocket-Extensions` (no compression is negotiated).

use std::net::IpAddr;

use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::apisec::ids::{self, RequestView};
use crate::apisec::{report_verdict, Found};
use crate::app::AppState;
use crate::monitoring::incidents::{Context, Signal};

/// The largest message (and frame) taken from the upstream.
pub const UPSTREAM_MESSAGE_MAX: usize = 64 << 20;

/// Who the connection belongs to, for the audit and incident records.
pub struct Conn {
    pub path: String,
    pub client: IpAddr,
    pub request_id: String,
    pub user: Option<String>,
    pub max_message: usize,
    /// The upstream's authority, for log lines.
    pub upstream: String,
}

/// Relay messages between the client's and the upstream's upgraded
/// connections until either side closes, inspecting the client's.
pub(crate) async fn relay(
    state: AppState,
    conn: Conn,
    client: hyper::upgrade::Upgraded,
    upstream: hyper::upgrade::Upgraded,
    mut gate: Option<crate::app::ws::Gate>,
) {
    // the client's messages are bounded like its request bodies; the
    // upstream's by tungstenite's defaults (64 MiB), like nothing over HTTP
    let from_client = WebSocketConfig::default()
        .max_message_size(Some(conn.max_message))
        .max_frame_size(Some(conn.max_message));
    let client =
        WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(from_client))
            .await;
    // one frame may carry a whole message: tungstenite's 16 MiB frame
    // default would cut the 64 MiB promised
    let from_upstream = WebSocketConfig::default()
        .max_message_size(Some(UPSTREAM_MESSAGE_MAX))
        .max_frame_size(Some(UPSTREAM_MESSAGE_MAX));
    let upstream =
        WebSocketStream::from_raw_socket(TokioIo::new(upstream), Role::Client, Some(from_upstream))
            .await;
    let (mut c_tx, mut c_rx) = client.split();
    let (mut u_tx, mut u_rx) = upstream.split();
    loop {
        tokio::select! {
            m = c_rx.next() => match m {
                Some(Ok(m)) => {
                    let refusal = match blocked(&state, &conn, &m).await {
                        Ok(None) => None,
                        Ok(Some(family)) => Some(("request_blocked", Some(family))),
                        Err(_) => Some(("bad_message", None)),
                    };
                    if let Some((reason, family)) = refusal {
                        let close = CloseFrame {
                            code: CloseCode::Policy,
                            reason: reason.into(),
                        };
                        let _ = c_tx.send(Message::Close(Some(close))).await;
                        let _ = u_tx.send(Message::Close(None)).await;
                        if let Some(family) = family {
                            feed_incidents(&state, &conn, family).await;
                        }
                        break;
                    }
                    let m = match m {
                        // answered here (the protocol layer queued the pong:
                        // flushed now), never passed on: their payload is
                        // not inspected
                        Message::Ping(_) | Message::Pong(_) => {
                            if c_tx.flush().await.is_err() {
                                break;
                            }
                            continue;
                        }
                        // the code goes on, not the reason (uninspected text)
                        Message::Close(Some(f)) => Message::Close(Some(CloseFrame {
                            code: f.code,
                            reason: "".into(),
                        })),
                        m => m,
                    };
                    if let Some(g) = gate.as_mut() {
                        if !g.still_good().await {
                            close_refused(&mut c_tx, &mut u_tx).await;
                            break;
                        }
                    }
                    if u_tx.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    if let Some((code, reason)) = crate::app::ws::close_reason(&e) {
                        let close = CloseFrame {
                            code: CloseCode::from(code),
                            reason: reason.into(),
                        };
                        let _ = c_tx.send(Message::Close(Some(close))).await;
                    }
                    tracing::debug!(request_id = %conn.request_id, error = %e, "gateway: client WebSocket ended");
                    let _ = u_tx.send(Message::Close(None)).await;
                    break;
                }
                None => {
                    // (flushes the reply to a close the client sent)
                    let _ = c_tx.close().await;
                    let _ = u_tx.close().await;
                    break;
                }
            },
            () = state.stopping.cancelled() => {
                let close = CloseFrame {
                    code: CloseCode::Away,
                    reason: "server shutting down".into(),
                };
                let _ = c_tx.send(Message::Close(Some(close))).await;
                let _ = u_tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::Away,
                    reason: "".into(),
                })))
                .await;
                break;
            }
            () = async {
                match gate.as_mut() {
                    Some(g) => g.due().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Some(g) = gate.as_mut() {
                    if !g.verify().await {
                        close_refused(&mut c_tx, &mut u_tx).await;
                        break;
                    }
                }
            }
            m = u_rx.next() => match m {
                Some(Ok(m)) => {
                    if c_tx.send(m).await.is_err() {
                        break;
                    }
                }
                Some(Err(e)) => {
                    // never a silent end: the client learns why (1009 for a
                    // message over 64 MiB, 1002 for a protocol error, else
                    // 1011), the log says which upstream failed
                    let (code, reason) = crate::app::ws::close_reason(&e)
                        .unwrap_or((1011, "upstream_error"));
                    tracing::warn!(request_id = %conn.request_id, upstream = %conn.upstream, error = %e, "gateway: upstream WebSocket failed");
                    let close = CloseFrame {
                        code: CloseCode::from(code),
                        reason: reason.into(),
                    };
                    let _ = c_tx.send(Message::Close(Some(close))).await;
                    let _ = u_tx.send(Message::Close(Some(CloseFrame {
                        code: CloseCode::from(code),
                        reason: "".into(),
                    })))
                    .await;
                    break;
                }
                None => {
                    let _ = c_tx.close().await;
                    break;
                }
            },
        }
    }
}

/// The credential was refused: 1008 to the client, a normal close to the
/// upstream.
async fn close_refused<C, U>(c_tx: &mut C, u_tx: &mut U)
where
    C: futures_util::Sink<Message> + Unpin,
    U: futures_util::Sink<Message> + Unpin,
{
    let close = CloseFrame {
        code: CloseCode::Policy,
        reason: "credential revoked or expired".into(),
    };
    let _ = c_tx.send(Message::Close(Some(close))).await;
    let _ = u_tx.send(Message::Close(None)).await;
}

/// The family that blocks this message, if any (after auditing what the
/// detector found); `Err` for a message the detector cannot read (JSON
/// nested too deep: a 400 over HTTP), which is not passed on unread.
async fn blocked(
    state: &AppState,
    conn: &Conn,
    m: &Message,
) -> Result<Option<String>, ids::IdsError> {
    let body: &[u8] = match m {
        Message::Text(t) => t.as_bytes(),
        // binary that is UTF-8 is read as text would be; other binary
        // (audio, images, protobuf) is data: read as text it matches rules
        // by chance
        Message::Binary(b) if std::str::from_utf8(b).is_ok() => b,
        _ => return Ok(None),
    };
    // a message that looks like JSON is read as JSON by the detector (a
    // broken one, or text after the document, is then inspected whole)
    let ctype: &[u8] = if ids::looks_like_json(body) {
        b"application/json"
    } else {
        b"text/plain"
    };
    let view = RequestView {
        method: "POST",
        target: &conn.path,
        headers: vec![("content-type", ctype)],
        body,
    };
    let verdict = state.apisec.ids.inspect(&view).inspect_err(|e| {
        tracing::info!(request_id = %conn.request_id, error = %e, "gateway: WebSocket message refused unread");
    })?;
    if verdict.is_clean() {
        return Ok(None);
    }
    let found = Found {
        request_id: &conn.request_id,
        ip: conn.client.to_string(),
        user: conn.user.as_deref(),
        method: "WEBSOCKET",
        endpoint: &conn.path,
    };
    let Some(hit) = report_verdict(state, &found, verdict).await else {
        return Ok(None);
    };
    state.metrics.block("request_blocked");
    Ok(Some(hit.family.name().to_string()))
}

async fn feed_incidents(state: &AppState, conn: &Conn, family: String) {
    if state.network.allowlisted(conn.client) {
        return;
    }
    let ctx = Context {
        request_id: Some(conn.request_id.clone()),
        user_id: conn.user.clone(),
    };
    let key = state.network.key(conn.client);
    state
        .incidents
        .handle(state, key, Signal::IdsBlock { family }, ctx, None)
        .await;
}
