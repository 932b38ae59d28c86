//! `GET /api/ws`: task events over WebSocket (wss under TLS).
//!
//! Threat: credentials leaking through URLs, and clients that exhaust memory
//! or stall the server. Guarantee: the route needs an authenticated principal
//! from headers (the authn layer never reads the query string), so a
//! handshake without credentials is 401 before any upgrade. Each connection
//! gets the events it may see ([`Event::visible_to`]) through a bounded
//! subscription: a client more than [`BUFFER`](super::events::BUFFER) events behind, or one
//! whose socket does not accept a frame within [`WRITE_TIMEOUT`], is
//! disconnected and never slows the publisher or other clients. Frames from
//! the client are limited to [`MAX_MESSAGE`] bytes; the server pings every
//! [`PING_EVERY`] and drops a client silent for [`IDLE_TIMEOUT`].
//!
//! Not covered: a credential revoked while a connection is open keeps that
//! connection until it closes (the principal is fixed at the handshake).

use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use http::Method;

use super::events::{Event, Next, Subscription};
use super::AppState;
use crate::authn::Authenticated;
use crate::authz::{Access, RouteDoc, Routes};
use crate::http::ApiError;

pub const MAX_MESSAGE: usize = 64 * 1024;
/// Initial read buffer per connection.
pub const READ_BUFFER: usize = 4 * 1024;
pub const PING_EVERY: Duration = Duration::from_secs(20);
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route(
            Method::GET,
            "/api/ws",
            Access::Authenticated,
            "task events (WebSocket)",
            ws,
        )
        .doc(
            RouteDoc::new()
                .empty(101, "switching to the WebSocket protocol")
                .error(400, "bad_request: not a WebSocket upgrade request"),
        )
}

async fn ws(
    State(state): State<AppState>,
    who: Authenticated,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade =
        upgrade.map_err(|_| ApiError::BadRequest("a WebSocket upgrade is required".into()))?;
    let sub = state.events.subscribe();
    Ok(upgrade
        // tungstenite's default (128 KiB, allocated up front) made each idle
        // connection cost 130 KB: 1.3 GB for 10,000 clients. Clients send
        // small frames; the buffer grows for the rare large one.
        .read_buffer_size(READ_BUFFER)
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(state, who, sub, socket)))
}

/// Keeps the connection gauge right whatever way the connection ends.
struct Gauge(prometheus_client::metrics::gauge::Gauge);

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn send(socket: &mut WebSocket, msg: Message) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, socket.send(msg)).await,
        Ok(Ok(()))
    )
}

async fn serve(state: AppState, who: Authenticated, mut sub: Subscription, mut socket: WebSocket) {
    state.metrics.ws_connections.inc();
    let _gauge = Gauge(state.metrics.ws_connections.clone());
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            next = sub.next() => match next {
                Next::Event(ev) => {
                    if deliver(&who, &ev) && !send(&mut socket, Message::Text(ev.json.as_ref().into())).await {
                        tracing::debug!(user = %who.user_id, "websocket client too slow; disconnected");
                        break;
                    }
                }
                Next::Lagged => {
                    tracing::debug!(user = %who.user_id, "websocket client fell behind; disconnected");
                    let frame = CloseFrame { code: 1013, reason: "too slow; reconnect".into() };
                    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(Some(frame)))).await;
                    break;
                }
                Next::Closed => break,
            },
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                // Pings are answered by the protocol layer; anything else only
                // proves the client is alive.
                Some(Ok(_)) => last_heard = Instant::now(),
            },
            _ = ping.tick() => {
                if last_heard.elapsed() > IDLE_TIMEOUT || !send(&mut socket, Message::Ping(Default::default())).await {
                    break;
                }
            }
        }
    }
}

fn deliver(who: &Authenticated, ev: &Event) -> bool {
    ev.visible_to(who)
}
