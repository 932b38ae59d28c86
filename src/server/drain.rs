//! Reading the rest of a refused request's body before its answer goes out.
//!
//! Threat: an answer the client never sees. Most clients (Python's
//! `requests`, `httpx` over HTTP/2) send the whole body before they read a
//! response. When a layer refuses a request before reading its body (413 on
//! a declared length, 415, 431, 401, an IDS block), the server used to answer
//! and close with the body's bytes unread: over TLS the kernel then resets
//! the connection, and the client reports an SSL EOF instead of the 413;
//! over HTTP/2 the client waited for flow-control window that never came.
//!
//! Guarantee: when the answer is ready and the body is neither finished nor
//! still held by someone (a gateway upload streaming upstream), the rest is
//! read and discarded, at most [`max_bytes`] (of the route's body limit),
//! while it keeps coming ([`GAP`] at most between pieces) and within what
//! is left of the request timeout, before the answer goes out, so the
//! client finishes sending and reads it. Past any bound the answer goes out
//! and the connection is closed as before. A body the client has not
//! started sending (`Expect: 100-continue`, never read) is not asked for:
//! the final status tells the client not to send it.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http_body::{Frame, SizeHint};

struct Inner {
    body: Body,
    /// A frame was asked for (so an `Expect: 100-continue` was answered).
    polled: bool,
    done: bool,
}

/// The request's body as the layers and the handler see it: reads go to
/// the shared original, so what they leave stays readable here.
struct Shared(Arc<Mutex<Inner>>);

fn lock(m: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl http_body::Body for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut g = lock(&self.0);
        g.polled = true;
        let r = Pin::new(&mut g.body).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            g.done = true;
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        let g = lock(&self.0);
        g.done || g.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.0).body.size_hint()
    }
}

/// What may be left of a request's body once its answer is ready.
pub struct Unread {
    inner: Arc<Mutex<Inner>>,
    expect_continue: bool,
}

/// The longest pause between two pieces of a body being drained: a client
/// uploading sends without pauses; one that waits for the answer before it
/// sends gets it after this, not at the request timeout.
pub const GAP: Duration = Duration::from_secs(1);

/// How much of an unread body is read to let its answer through: twice the
/// body limit, and at least 8 MiB (a client a little over the limit, or
/// sending a large body to a route that refuses it, gets its answer).
pub fn max_bytes(body_max_bytes: usize) -> usize {
    body_max_bytes.saturating_mul(2).max(8 << 20)
}

/// Put the request's body where [`Unread::drain`] can reach what the layers
/// leave of it. A request without a body is passed on untouched.
pub fn share(req: Request) -> (Request, Option<Unread>) {
    use http_body::Body as _;
    if req.body().is_end_stream() {
        return (req, None);
    }
    let expect_continue = req
        .headers()
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let (parts, body) = req.into_parts();
    let inner = Arc::new(Mutex::new(Inner {
        body,
        polled: false,
        done: false,
    }));
    let req = Request::from_parts(parts, Body::new(Shared(inner.clone())));
    (
        req,
        Some(Unread {
            inner,
            expect_continue,
        }),
    )
}

impl Unread {
    /// Read and discard the rest of the body (see the module doc).
    pub async fn drain(self, max_bytes: usize, deadline: tokio::time::Instant) {
        // still held (a gateway upload in progress): not ours to read
        let Ok(inner) = Arc::try_unwrap(self.inner) else {
            return;
        };
        let inner = inner.into_inner().unwrap_or_else(|p| p.into_inner());
        if inner.done || (self.expect_continue && !inner.polled) {
            return;
        }
        let mut body = inner.body;
        let read = async {
            use http_body_util::BodyExt;
            let mut seen = 0usize;
            while let Ok(Some(Ok(frame))) = tokio::time::timeout(GAP, body.frame()).await {
                seen = seen.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                if seen > max_bytes {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, read).await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_secs(1)
    }

    /// A POST whose body is four 4-byte chunks; `pulled` counts the chunks
    /// read from it.
    fn request(expect: bool, pulled: Arc<AtomicUsize>) -> Request {
        let mut b = http::Request::builder().method("POST").uri("/x");
        if expect {
            b = b.header("expect", "100-continue");
        }
        let stream = futures_util::stream::iter(
            b"0123456789abcdef"
                .chunks(4)
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        )
        .inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        });
        b.body(Body::from_stream(stream)).unwrap()
    }

    use futures_util::StreamExt as _;

    #[tokio::test]
    async fn what_a_layer_leaves_is_drained_and_a_held_body_is_not() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (req, unread) = share(request(false, pulled.clone()));
        let unread = unread.unwrap();
        let mut body = req.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"0123");
        // while a reader holds the body, the drain leaves it alone
        let held = Unread {
            inner: unread.inner.clone(),
            expect_continue: false,
        };
        held.drain(1 << 20, soon()).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 1);
        drop(body);
        unread.drain(1 << 20, soon()).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn the_drain_stops_at_its_byte_bound() {
        let pulled = Arc::new(AtomicUsize::new(0));
        let (req, unread) = share(request(false, pulled.clone()));
        drop(req);
        unread.unwrap().drain(5, soon()).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 2);
    }

    /// A client that stops sending (it waits for the answer before its
    /// body) gets the answer after [`GAP`], not at the request timeout.
    #[tokio::test]
    async fn a_pause_longer_than_the_gap_ends_the_drain() {
        let stream =
            futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"part"))])
                .chain(futures_util::stream::pending());
        let req = http::Request::builder()
            .method("POST")
            .uri("/x")
            .body(Body::from_stream(stream))
            .unwrap();
        let (req, unread) = share(req);
        drop(req);
        let started = tokio::time::Instant::now();
        unread
            .unwrap()
            .drain(1 << 20, started + Duration::from_secs(10))
            .await;
        let took = started.elapsed();
        assert!(took >= GAP && took < GAP * 3, "{took:?}");
    }

    #[tokio::test]
    async fn a_body_not_yet_asked_for_under_expect_continue_is_not_read() {
        let empty = http::Request::builder()
            .method("GET")
            .uri("/x")
            .body(Body::empty())
            .unwrap();
        assert!(share(empty).1.is_none());
        let pulled = Arc::new(AtomicUsize::new(0));
        let (req, unread) = share(request(true, pulled.clone()));
        drop(req);
        unread.unwrap().drain(1 << 20, soon()).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 0);
        // once read from, the client was told to continue: drained
        let (req, unread) = share(request(true, pulled.clone()));
        let mut body = req.into_body();
        body.frame().await.unwrap().unwrap();
        drop(body);
        unread.unwrap().drain(1 << 20, soon()).await;
        assert_eq!(pulled.load(Ordering::SeqCst), 4);
    }
}
