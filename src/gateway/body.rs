//! Streaming bodies of the gateway: the inspection window, the byte limit
//! and the idle timeout, without buffering a whole body.
//!
//! - [`read_window`] buffers the first `window` bytes of a request body (at
//!   most one frame more) for the intrusion-detection layer and gives back a
//!   body that replays them and then streams the rest ([`Prefixed`]).
//! - [`Guarded`] counts the bytes of a body while they stream (an error once
//!   over the limit) and ends it with an error when no frame arrives within
//!   the idle timeout; what stopped it is recorded in a [`Trip`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;

use crate::http::ApiError;

/// Boxed error of the gateway's bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Buffer at most `window` bytes of `body` (plus the rest of the frame that
/// crosses it) within `timeout`. Returns the buffered bytes and the whole
/// body again (the bytes replayed, then the rest, streamed). More than
/// `limit` bytes in the buffered part -> 413. The buffered bytes are taken
/// from the server-wide body budget (`held`; 503 when they do not fit) and
/// given back when the last clone of the head is dropped. The flag says
/// whether the body may go on past the first `window` bytes (the window is
/// then a cut prefix of it).
pub async fn read_window(
    mut body: Body,
    window: usize,
    limit: usize,
    timeout: Duration,
    mut held: crate::apisec::budget::Held,
) -> Result<(Bytes, Body, bool), ApiError> {
    use http_body::Body as _;
    if body.is_end_stream() {
        return Ok((Bytes::new(), Body::empty(), false));
    }
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut ended = false;
    while buf.len() < window {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(ApiError::RequestTimeout),
            Ok(None) => {
                ended = true;
                break;
            }
            Ok(Some(Err(_))) => {
                return Err(ApiError::BadRequest(
                    "the request body could not be read".into(),
                ))
            }
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    held.grow(data.len())?;
                    buf.extend_from_slice(&data);
                    if buf.len() > limit {
                        return Err(ApiError::PayloadTooLarge);
                    }
                }
            }
        }
    }
    let head = held.attach(buf.freeze());
    let ended = ended || body.is_end_stream();
    let truncated = head.len() > window || !ended;
    let rest = if ended {
        Body::from(head.clone())
    } else {
        Body::new(Prefixed {
            head: Some(head.clone()),
            rest: body,
        })
    };
    Ok((head, rest, truncated))
}

/// The buffered head of a body, then the rest of it.
pub struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if let Some(head) = self.head.take() {
            if !head.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(head))));
            }
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.as_ref().is_none_or(Bytes::is_empty) && self.rest.is_end_stream()
    }
}

/// Why a [`Guarded`] body stopped early.
#[derive(Debug, Clone, Default)]
pub struct Trip(Arc<AtomicU8>);

impl Trip {
    const LIMIT: u8 = 1;
    const IDLE: u8 = 2;

    fn set(&self, v: u8) {
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The body went over its byte limit.
    pub fn over_limit(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::LIMIT
    }

    /// No frame arrived within the idle timeout.
    pub fn idle(&self) -> bool {
        self.0.load(Ordering::Relaxed) == Self::IDLE
    }
}

/// The error a [`Guarded`] body ends with.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("body over the limit of {0} bytes")]
    TooLarge(u64),
    #[error("no data for {0:?}")]
    Idle(Duration),
}

/// A body with a byte limit and an idle timeout (see the module docs).
pub struct Guarded<B> {
    inner: B,
    limit: u64,
    seen: u64,
    idle: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    trip: Trip,
    /// `request` or `response`, for the log line.
    what: &'static str,
    /// The upstream and the request id, for the log line.
    log: Option<(String, String)>,
}

impl<B> Guarded<B> {
    pub fn new(inner: B, limit: u64, idle: Duration, trip: Trip, what: &'static str) -> Self {
        Guarded {
            inner,
            limit,
            seen: 0,
            idle,
            sleep: Box::pin(tokio::time::sleep(idle)),
            trip,
            what,
            log: None,
        }
    }

    /// Name the upstream and the request in the log lines of a failure.
    pub fn logged(mut self, upstream: &str, request_id: &str) -> Self {
        self.log = Some((upstream.to_string(), request_id.to_string()));
        self
    }

    fn log_fields(&self) -> (&str, &str) {
        self.log
            .as_ref()
            .map_or(("", ""), |(u, r)| (u.as_str(), r.as_str()))
    }
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.seen += d.len() as u64;
                    if this.seen > this.limit {
                        this.trip.set(Trip::LIMIT);
                        return Poll::Ready(Some(Err(GuardError::TooLarge(this.limit).into())));
                    }
                }
                let next = tokio::time::Instant::now() + this.idle;
                this.sleep.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                // a malformed or broken body: the response head may be on
                // its way already, so the client sees the stream end; the
                // log says why
                if this.log.is_some() {
                    let mut chain = e.to_string();
                    let mut cur = std::error::Error::source(&*e);
                    while let Some(c) = cur {
                        chain.push_str(": ");
                        chain.push_str(&c.to_string());
                        cur = c.source();
                    }
                    let (upstream, request_id) = this.log_fields();
                    tracing::warn!(
                        upstream,
                        request_id,
                        body = this.what,
                        "gateway: upstream body failed: {chain}"
                    );
                }
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.sleep.as_mut().poll(cx).is_ready() {
                    this.trip.set(Trip::IDLE);
                    let (upstream, request_id) = this.log_fields();
                    tracing::warn!(
                        upstream,
                        request_id,
                        body = this.what,
                        idle_seconds = this.idle.as_secs(),
                        "gateway: stream idle longer than the route's timeout_seconds; cut"
                    );
                    return Poll::Ready(Some(Err(GuardError::Idle(this.idle).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
