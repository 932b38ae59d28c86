//! The listener: TCP accept, TLS handshake, HTTP/1.1 and HTTP/2 connections,
//! graceful shutdown.
//!
//! Threat: connection-level exhaustion (slowloris, stalled TLS handshakes,
//! silent connections, connection floods). Guarantee: a TLS handshake must
//! finish within `network.tls_handshake_timeout_seconds`; the first
//! request's head must arrive within `network.header_read_timeout_seconds`
//! of the accept (plain) or of the handshake's end (TLS), whether the peer
//! sends nothing, part of the HTTP/2 preface or part of a head
//! ([`request_line`]); every later HTTP/1 request's headers within the same
//! time (hyper's header-read timer, which also runs while a kept-alive
//! connection is idle between requests); a connection of either version
//! with no request in progress for that time is closed gracefully (an
//! HTTP/2 peer that answers the server's pings would otherwise hold its
//! slot for ever; [`Activity`]); at most `network.max_connections`
//! connections are served at once. On shutdown the listener closes first,
//! in-flight requests get `network.shutdown_grace_seconds` to finish,
//! WebSockets (which hyper hands over) a close frame with 1001 (up to 2 s
//! for it, within the grace), then the audit log is flushed. A connection's first request target has the
//! bytes the URI parser refuses but clients send raw (`<`, `"`, ...)
//! percent-encoded first ([`request_line`]), so such a request meets every
//! layer instead of hyper's bare 400; what hyper still refuses as not
//! HTTP at all gets its answer in the contract's error shape
//! ([`parse_error`]), until the connection has carried bytes Frenly did
//! not write (a gateway upstream's body, an upgrade, HTTP/2), which the
//! rewriter then never touches.

pub mod drain;
pub mod parse_error;
pub mod request_line;
pub mod stack;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::app::AppState;
use crate::monitoring::audit::AuditEvent;
use crate::network::PeerAddr;
use parse_error::{Passthrough, ShapedParseErrors};

/// A running server's settings.
pub struct Server {
    pub listener: TcpListener,
    pub tls: Option<TlsAcceptor>,
    pub app: Router,
    pub state: AppState,
}

impl Server {
    /// Bind and build the stack for `state`.
    pub async fn bind(state: AppState) -> anyhow::Result<Server> {
        let app = stack::build(state.clone());
        Self::bind_with(state, app).await
    }

    /// Bind with an already wrapped router.
    pub async fn bind_with(state: AppState, app: Router) -> anyhow::Result<Server> {
        let listener = TcpListener::bind(state.cfg.network.listen)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {} (network.listen): {e}",
                    state.cfg.network.listen
                )
            })?;
        let tls = if state.cfg.network.tls {
            let acceptor = TlsAcceptor::from(tls::server_config(&state.cfg)?);
            for w in tls::start_warnings(&state.cfg) {
                tracing::warn!("{w}");
            }
            Some(acceptor)
        } else {
            None
        };
        Ok(Server {
            listener,
            tls,
            app,
            state,
        })
    }

    /// Serve until `shutdown` resolves, then drain.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let cfg = self.state.cfg.clone();
        let header_read = Duration::from_secs(cfg.network.header_read_timeout_seconds.max(1));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_read)
            .max_buf_size((cfg.limits.header_max_bytes * 2).max(8192) + 8192)
            .max_headers(cfg.limits.header_max_count.max(100) * 2);
        builder
            .http2()
            .timer(TokioTimer::new())
            // well above the app's own limit, so that what exceeds that is
            // the app's 431 in the error shape: at 2x, a block between 2x
            // and h2's own cut-off got h2's bare 431 (no body, no request
            // id); past 4x, h2 ends the connection (COMPRESSION_ERROR)
            .max_header_list_size((cfg.limits.header_max_bytes as u32).saturating_mul(4))
            .max_concurrent_streams(128)
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);
        // shutdown: `stop` tells every connection to finish gracefully; the
        // last `live` sender gone means every connection has ended
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let (live, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
        let permits = Arc::new(tokio::sync::Semaphore::new(
            cfg.network.max_connections.max(1),
        ));
        let handshake = Duration::from_secs(cfg.network.tls_handshake_timeout_seconds.max(1));
        let per_address = crate::network::conns::PerAddress::new(
            cfg.network.max_connections_per_address,
            self.state.network.group_v6,
        );
        tokio::pin!(shutdown);
        let mut accept_warned: Option<std::time::Instant> = None;
        loop {
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                _ = &mut shutdown => break,
            };
            let (stream, peer) = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, peer)) => (s, crate::network::client_addr::canonical_peer(peer)),
                    Err(e) => {
                        // out of descriptors (EMFILE/ENFILE) fails every
                        // retry until a connection ends: one line a second
                        // at most, and a longer pause
                        if accept_warned.is_none_or(|t: std::time::Instant| t.elapsed() >= Duration::from_secs(1)) {
                            tracing::warn!(error = %e, "accept failed");
                            accept_warned = Some(std::time::Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let net = &self.state.network;
            let counted = if net.allowlisted(peer.ip())
                || crate::network::client_addr::trusted(peer.ip(), &net.trusted)
            {
                None
            } else {
                match per_address.admit(peer.ip()) {
                    Some(c) => Some(c),
                    None => {
                        tracing::debug!(%peer, "connection closed: its address has network.max_connections_per_address open");
                        self.state.metrics.block("connections_per_address");
                        continue;
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            let app = self.app.clone();
            let builder = builder.clone();
            let conn = ConnCtl {
                stop: stop.clone(),
                _live: live.clone(),
                idle: header_read,
                slot: ConnSlot(Arc::new((permit, counted))),
            };
            let tls = self.tls.clone();
            let state = self.state.clone();
            let passthrough = Passthrough::default();
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        let mut stop = conn.stop.clone();
                        let deadline = tokio::time::Instant::now() + handshake;
                        // a TLS client speaks first with a handshake record
                        // (0x16); a method's capital letter is plain HTTP
                        let mut first = [0u8; 1];
                        let peeked = tokio::select! {
                            r = tokio::time::timeout_at(deadline, stream.peek(&mut first)) => r,
                            _ = stop.wait_for(|s| *s) => return,
                        };
                        if matches!(peeked, Ok(Ok(1))) && first[0].is_ascii_uppercase() {
                            plain_http_on_tls_port(stream, peer, state).await;
                            return;
                        }
                        let accepted = tokio::select! {
                            r = tokio::time::timeout_at(deadline, acceptor.accept(stream)) => r,
                            // a handshake in progress is not a request
                            _ = stop.wait_for(|s| *s) => return,
                        };
                        match accepted {
                            Ok(Ok(s)) => {
                                let io = ShapedParseErrors::new(
                                    s,
                                    true,
                                    report(state, peer),
                                    passthrough.clone(),
                                );
                                serve_conn(io, peer, app, &builder, header_read, passthrough, conn)
                                    .await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => {
                        let io = ShapedParseErrors::new(
                            stream,
                            false,
                            report(state, peer),
                            passthrough.clone(),
                        );
                        serve_conn(io, peer, app, &builder, header_read, passthrough, conn).await
                    }
                }
            });
        }
        drop(self.listener);
        let grace = Duration::from_secs(cfg.network.shutdown_grace_seconds);
        let _ = stop_tx.send(true);
        drop(live);
        // upgraded connections say goodbye (1001) rather than vanish
        self.state.stopping.cancel();
        self.state.upgraded.close();
        let started = tokio::time::Instant::now();
        if tokio::time::timeout(grace, all_ended.recv()).await.is_err() {
            tracing::warn!("in-flight requests did not finish within the shutdown grace period");
        }
        let left = grace.saturating_sub(started.elapsed()).min(UPGRADED_CLOSE);
        let _ = tokio::time::timeout(left, self.state.upgraded.wait()).await;
        self.state.audit.flush().await;
        Ok(())
    }
}

/// How a connection reports an answer [`parse_error`] replaced: counted in
/// the metrics, counted against the TCP peer's burst and rate windows
/// ([`crate::network::admit_probe`]), and, while the peer is admitted,
/// audited as a `security_violation`.
fn report(state: AppState, peer: std::net::SocketAddr) -> parse_error::Report {
    Box::new(move |status, request_id| {
        state.metrics.block("malformed_http");
        let state = state.clone();
        let request_id = request_id.to_string();
        tokio::spawn(async move {
            if !crate::network::admit_probe(&state, peer.ip(), &request_id).await {
                return;
            }
            let event = AuditEvent::new("security_violation")
                .request_id(request_id)
                .ip(peer.ip())
                .field("violation_type", "malformed_http")
                .field(
                    "details",
                    format!("not HTTP/1.1; answered {}", status.as_u16()),
                )
                .field("action", "blocked");
            state.audit.record(event).await;
        });
    })
}

/// Plain HTTP on the TLS listener: answer a 400 in the error shape the
/// client's HTTP parser can read (it got a raw TLS alert), counted and
/// audited like any request that is not HTTPS-shaped, then close. Whatever
/// the client sent is left unread: no request of it is served in clear.
async fn plain_http_on_tls_port(
    mut stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    state: AppState,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let id = crate::http::envelope::new_request_id();
    report(state, peer)(http::StatusCode::BAD_REQUEST, &id);
    let answer = parse_error::plain_http_on_tls_port(&id);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if stream.write_all(&answer).await.is_err() || stream.shutdown().await.is_err() {
            return;
        }
        // a close with the request unread would reset the connection,
        // and a reset can reach the client before the answer: read what
        // it sent (64 KiB at most) until it closes too
        let mut sink = [0u8; 4096];
        let mut left = 64 * 1024usize;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What a connection's task holds besides the connection: the shutdown
/// signal, its share of the "connections alive" count, and the idle limit.
struct ConnCtl {
    stop: tokio::sync::watch::Receiver<bool>,
    _live: tokio::sync::mpsc::Sender<()>,
    idle: Duration,
    slot: ConnSlot,
}

/// The connection's place in `network.max_connections`, in every request's
/// extensions: a WebSocket (or a gateway upgrade) keeps a clone for as long
/// as it lives, so an upgraded connection still counts against the limit
/// (before, its slot was freed at the upgrade, and a client held hundreds
/// of sockets past a limit of 20, up to the process's file limit).
#[derive(Clone)]
pub struct ConnSlot(
    #[allow(dead_code)]
    Arc<(
        tokio::sync::OwnedSemaphorePermit,
        Option<crate::network::conns::Counted>,
    )>,
);

/// Requests in progress on one connection, and when the last one ended.
///
/// hyper bounds an idle HTTP/1 connection (its header-read timer) but not
/// an HTTP/2 one: its keep-alive pings only detect a dead peer, and a peer
/// that answers them held a connection slot with no stream open for ever.
/// The connection's task closes it gracefully (GOAWAY on HTTP/2; streams
/// in progress finish) once no request has been in progress for the idle
/// limit.
///
/// A request in progress is not always activity: a response whose body
/// hyper does not pull (an HTTP/2 peer that keeps its flow-control window
/// at 0, a peer that stops reading) would hold the slot for ever while the
/// peer answers pings. Such a connection is stalled, and dropped, once
/// response bodies are waiting to be sent and none has been pulled for the
/// idle limit. A body waiting on its own source (a stream of events with
/// nothing to say) is not stalled.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `born` to the end of the last request.
    last_end_ms: std::sync::atomic::AtomicU64,
    /// Response bodies that are ready to give hyper more (created, or
    /// their last poll gave a frame) and not finished.
    sending: std::sync::atomic::AtomicUsize,
    /// Milliseconds from `born` to the last time hyper pulled a body.
    last_pull_ms: std::sync::atomic::AtomicU64,
    born: std::time::Instant,
}

/// How the connection's watch ended.
enum Quiet {
    /// No request in progress for the limit: close gracefully.
    Idle,
    /// Responses waiting to be sent and none pulled for the limit.
    Stalled,
}

/// Held while a request is in progress: until its response body is done
/// or dropped, or the request is cancelled.
struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.last_end_ms.store(self.0.elapsed_ms(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: Default::default(),
            last_end_ms: Default::default(),
            sending: Default::default(),
            last_pull_ms: Default::default(),
            born: std::time::Instant::now(),
        })
    }

    fn pulled(&self) {
        self.last_pull_ms
            .store(self.elapsed_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self.clone())
    }

    fn in_progress(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Resolves once no request has been in progress for `limit`, or the
    /// connection's responses have stalled for it.
    async fn idle(&self, limit: Duration) -> Quiet {
        use std::sync::atomic::Ordering::Relaxed;
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            // the clock that runs: since the last request ended (none in
            // progress), since a ready body was last pulled, or none
            let (mark, quiet) = if self.in_progress() == 0 {
                (&self.last_end_ms, Quiet::Idle)
            } else if self.sending.load(Relaxed) > 0 {
                (&self.last_pull_ms, Quiet::Stalled)
            } else {
                tokio::time::sleep(limit).await;
                continue;
            };
            let since = self.elapsed_ms().saturating_sub(mark.load(Relaxed));
            if since >= limit_ms {
                return quiet;
            }
            tokio::time::sleep(Duration::from_millis(limit_ms - since)).await;
        }
    }
}

async fn serve_conn<IO>(
    io: IO,
    peer: std::net::SocketAddr,
    app: Router,
    builder: &auto::Builder<TokioExecutor>,
    header_read: Duration,
    passthrough: Passthrough,
    mut ctl: ConnCtl,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper calls the service as soon as a request's head is parsed: from
    // then on hyper's own timers bound the connection, so the wait for the
    // first request ends there (request_line's module docs).
    let first = request_line::FirstRequest::default();
    let io = request_line::FirstRequestLine::new(io, header_read, first.clone());
    let on_upgrade = passthrough.clone();
    let slot = ctl.slot.clone();
    let svc = app
        .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
            first.arrived();
            // hyper writes no HTTP/1 head on an HTTP/2 connection, and a
            // DATA frame's payload may go out as a write of its own: the
            // rewriter has nothing to do there and must not touch it
            if req.version() == http::Version::HTTP_2 {
                passthrough.set();
            }
            req.extensions_mut().insert(PeerAddr(peer));
            req.extensions_mut().insert(slot.clone());
            // the gateway turns the rewriter off before an upstream's body
            req.extensions_mut().insert(passthrough.clone());
            req.map(axum::body::Body::new)
        })
        .map_response(move |resp: axum::response::Response| {
            // whatever follows a 101 (WebSocket, a gateway upgrade) is not
            // Frenly's HTTP/1: off before hyper writes the 101
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                on_upgrade.set();
            }
            resp
        });
    let activity = Activity::new();
    let tracked = activity.clone();
    let svc = tower::service_fn(move |req| {
        let busy = tracked.begin();
        let call = svc.clone().oneshot(req);
        async move {
            // in progress until the response body is done (a stream of
            // events may last minutes), not only until its head
            let resp: Result<_, std::convert::Infallible> = call.await;
            resp.map(|r| r.map(|body| Tracked::new(body, busy)))
        }
    });
    let svc = TowerToHyperService::new(svc);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let mut closing = false;
    // after an idle close: when to drop the connection if the peer has not
    // finished the close (HTTP/2's graceful close waits for a PING's answer)
    let mut drop_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                break;
            }
            _ = ctl.stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            quiet = activity.idle(ctl.idle), if !closing => match quiet {
                Quiet::Idle => {
                    tracing::debug!(%peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                    drop_at = Some(tokio::time::Instant::now() + ctl.idle);
                }
                Quiet::Stalled => {
                    tracing::debug!(%peer, "connection dropped: its responses were not taken");
                    break;
                }
            },
            _ = sleep_until_some(drop_at), if drop_at.is_some() => {
                if activity.in_progress() == 0 {
                    tracing::debug!(%peer, "idle connection dropped: the peer did not finish the close");
                    break;
                }
                drop_at = Some(tokio::time::Instant::now() + ctl.idle);
            }
        }
    }
}

async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A response body that keeps its request counted as in progress until it
/// is done or dropped, and tells its connection when hyper pulls it and
/// whether it is ready to give more ([`Activity`]).
struct Tracked<B> {
    body: B,
    busy: Busy,
    /// Counted in `Activity::sending`.
    ready: bool,
}

impl<B> Tracked<B> {
    fn new(body: B, busy: Busy) -> Self {
        busy.0
            .sending
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        busy.0.pulled();
        Tracked {
            body,
            busy,
            ready: true,
        }
    }

    fn set_ready(&mut self, ready: bool) {
        use std::sync::atomic::Ordering::Relaxed;
        if ready != self.ready {
            self.ready = ready;
            if ready {
                self.busy.0.sending.fetch_add(1, Relaxed);
            } else {
                self.busy.0.sending.fetch_sub(1, Relaxed);
            }
        }
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.set_ready(false);
    }
}

impl<B: http_body::Body + Unpin> http_body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        self.busy.0.pulled();
        let r = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        // waiting on its own source is not a stall; a frame given (or the
        // end) hands the next move to hyper
        let ready = matches!(r, std::task::Poll::Ready(Some(_)));
        self.set_ready(ready);
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How long shutdown waits at most for upgraded connections to close.
const UPGRADED_CLOSE: Duration = Duration::from_secs(2);

/// Resolves on SIGTERM, SIGHUP or Ctrl-C. A hang-up (the terminal that
/// started the server closed, or a `kill -HUP` meant as "reload", which
/// Frenly does not do: configuration is read at start) stops the server
/// as gracefully as SIGTERM does: its default action killed the process
/// with events still queued for the audit log.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let on = |kind: SignalKind, name: &'static str| async move {
        match signal(kind) {
            Ok(mut s) => {
                s.recv().await;
                tracing::info!(signal = name, "stopping");
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = on(SignalKind::terminate(), "SIGTERM") => {},
        _ = on(SignalKind::hangup(), "SIGHUP") => {},
    }
}
