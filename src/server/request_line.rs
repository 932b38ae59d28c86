//! Percent-encoding of the bytes in a connection's first request target
//! that HTTP clients send raw but the URI parser refuses.
//!
//! Threat: `GET /api/tasks?q=<script>alert(1)</script>` sent as typed (curl,
//! Python's `http.client`, a raw socket) carries `<`, `>`, `"`, a backtick or
//! non-ASCII bytes in the request target. hyper's URI parser refuses those
//! before any Frenly layer runs and answers a bare `400` with an empty body:
//! no error shape, no `X-Request-Id`, no security headers, and the attack is
//! neither recognised by the intrusion-detection layer nor audited.
//! Guarantee: on the first request of each connection, those bytes of the
//! request target (and only there: not the method, the version, the headers
//! or the body) are percent-encoded before hyper parses the line, as a
//! browser would have sent them. The target means the same once decoded
//! (every layer and handler reads decoded values), so the request goes
//! through the whole stack like any other: the IDS blocks the payload with
//! a 403 `request_blocked`, a harmless one is served. Control characters
//! are left alone (hyper still refuses them: they are no URI at all).
//!
//! Not covered: a later request on a kept-alive connection (its line is
//! parsed by hyper as sent, so hyper refuses it: a 400 in the error shape,
//! see [`super::parse_error`], that the IDS never sees); a first line that
//! does not arrive whole in the connection's first read (up to 8 KiB, read
//! here; a line split across TCP segments is passed on as sent).
//! Clients that keep connections alive encode their URLs.
//!
//! The wrapper also bounds the wait for that first request.
//! Threat: a connection that sends nothing (or only a prefix of the HTTP/2
//! preface) after the TCP accept or the TLS handshake: hyper_util reads the
//! first bytes to choose HTTP/1 or HTTP/2 with no timer of its own, hyper's
//! header-read timer starts only once that choice is made, and the TLS
//! timer stops at the end of the handshake, so the connection held one of
//! `network.max_connections` slots for ever; that many silent sockets
//! locked every client out.
//! Guarantee: from the wrapper's creation (the accept, or the end of the
//! TLS handshake) until the server marks the connection's first request as
//! arrived ([`FirstRequest::arrived`]: its head parsed, HTTP/1 or HTTP/2),
//! every read also polls a timer of `network.header_read_timeout_seconds`;
//! when it fires, the read fails with `TimedOut` and hyper closes the
//! connection (no response: there is no request to answer). After that
//! the wrapper costs one branch per read: the later requests of an HTTP/1
//! connection are hyper's header-read timer's (it also runs while a
//! kept-alive connection is idle between requests).

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use percent_encoding::{percent_encode, AsciiSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// The printable bytes the URI parser refuses in a path or a query;
/// `percent_encode` also encodes every byte past ASCII.
const REFUSED: &AsciiSet = &AsciiSet::EMPTY.add(b'"').add(b'<').add(b'>').add(b'`');

/// `buf` with the first request line's target percent-encoded where
/// [`REFUSED`] says so; `None` when nothing needs it, when `buf` holds no
/// complete first line, or when that line is not `METHOD SP target SP
/// HTTP/x` (an HTTP/2 preface, garbage: passed on as it is).
pub fn normalize(buf: &[u8]) -> Option<Vec<u8>> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = buf.get(..end)?;
    let sp1 = line.iter().position(|&b| b == b' ')?;
    let sp2 = line.iter().rposition(|&b| b == b' ')?;
    let target = line.get(sp1 + 1..sp2)?;
    if sp1 == 0 || !line.get(sp2 + 1..)?.starts_with(b"HTTP/") {
        return None;
    }
    // borrowed: nothing in the target needed encoding
    let Cow::Owned(encoded) = Cow::<str>::from(percent_encode(target, REFUSED)) else {
        return None;
    };
    let mut out = Vec::with_capacity(buf.len() + encoded.len() - target.len());
    out.extend_from_slice(buf.get(..=sp1)?);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(buf.get(sp2..)?);
    Some(out)
}

/// The connection's first read: a whole request head, as a rule.
const FIRST_READ: usize = 8192;

enum State {
    /// The connection's first read has not happened yet.
    First,
    /// The first read's bytes (rewritten or not), handed out from `.1` on.
    Draining(Vec<u8>, usize),
    /// Everything else: reads and writes go straight through.
    Through,
}

/// Whether a connection's first request has arrived: shared by the
/// connection's reads, which stop timing it then, and its service, which
/// marks it.
#[derive(Clone, Default)]
pub struct FirstRequest(Arc<AtomicBool>);

impl FirstRequest {
    /// The first request's head has been parsed: the wait is over.
    pub fn arrived(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn has_arrived(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection whose first request line is normalised and whose first
/// request must arrive in time (module docs).
pub struct FirstRequestLine<IO> {
    io: IO,
    state: State,
    /// Fires when the first request has not arrived in time; `None` once it
    /// has.
    deadline: Option<Pin<Box<Sleep>>>,
    first: FirstRequest,
}

impl<IO> FirstRequestLine<IO> {
    /// `first` must be marked when the first request arrives, `within` from
    /// now (the accept or the end of the TLS handshake). Needs a Tokio
    /// runtime with the timer enabled.
    pub fn new(io: IO, within: Duration, first: FirstRequest) -> Self {
        FirstRequestLine {
            io,
            state: State::First,
            deadline: Some(Box::pin(tokio::time::sleep(within))),
            first,
        }
    }

    /// `TimedOut` once the deadline has passed and no request has arrived.
    /// Polling the timer before the read registers this read's waker with
    /// it, so a silent peer is woken up to fail; a peer that trickles bytes
    /// is checked on every read.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(deadline) = &mut self.deadline else {
            return Ok(());
        };
        if self.first.has_arrived() {
            self.deadline = None;
            return Ok(());
        }
        match deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within network.header_read_timeout_seconds",
            )),
            Poll::Pending => Ok(()),
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstRequestLine<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.check_deadline(cx)?;
        match &mut this.state {
            State::Through => Pin::new(&mut this.io).poll_read(cx, out),
            State::Draining(rest, at) => {
                let left = rest.get(*at..).unwrap_or_default();
                let n = left.len().min(out.remaining());
                out.put_slice(left.get(..n).unwrap_or_default());
                *at += n;
                if *at >= rest.len() {
                    this.state = State::Through;
                }
                Poll::Ready(Ok(()))
            }
            State::First => {
                // Read into a buffer of our own: the caller's may be smaller
                // than the line (hyper_util reads 24 bytes first, to tell an
                // HTTP/2 preface from HTTP/1).
                let mut own = vec![0u8; FIRST_READ];
                let mut first = ReadBuf::new(&mut own);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut first))?;
                let n = first.filled().len();
                own.truncate(n);
                if n == 0 {
                    this.state = State::Through;
                    return Poll::Ready(Ok(()));
                }
                let bytes = normalize(&own).unwrap_or(own);
                this.state = State::Draining(bytes, 0);
                self.poll_read(cx, out)
            }
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FirstRequestLine<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_the_targets_refused_bytes_are_encoded() {
        let got =
            normalize(b"GET /a?q=<script>\"x\"`\xC3\xBC HTTP/1.1\r\nHost: <h>\r\n\r\n").unwrap();
        assert_eq!(
            got,
            b"GET /a?q=%3Cscript%3E%22x%22%60%C3%BC HTTP/1.1\r\nHost: <h>\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn clean_lines_previews_and_non_requests_are_left_alone() {
        for buf in [
            &b"GET /api/tasks?q=a%3Cb HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET /a?q=<b",          // no complete line yet
            b"GET /a?q=<b\r\n",      // no version
            b"<<<< /a HTTP/1.1\r\n", // refused bytes in the method only
            b" /a<b HTTP/1.1\r\n",   // no method
            b"GET /a<b XTTP/1.1\r\n",
            b"",
        ] {
            assert_eq!(normalize(buf), None, "{:?}", String::from_utf8_lossy(buf));
        }
    }

    /// Through the wrapper, with a reader whose buffer is smaller than the
    /// line (hyper_util's first read is 24 bytes): every byte of the
    /// rewritten line arrives, in order, and later reads (a second request)
    /// pass unchanged.
    #[tokio::test]
    async fn a_small_reader_gets_the_whole_rewritten_stream() {
        let (mut client, server) = tokio::io::duplex(4096);
        let first = b"GET /x?q=<<<<<<<<<<<<<<<< HTTP/1.1\r\nHost: h\r\n\r\n";
        client.write_all(first).await.unwrap();
        let mut conn =
            FirstRequestLine::new(server, Duration::from_secs(60), FirstRequest::default());
        let want = normalize(first).unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 7];
        while got.len() < want.len() {
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, want);
        client.write_all(b"GET /y?q=<b HTTP/1.1\r\n").await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        conn.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"GET /y?q=<b HTTP/1.1\r\n".to_vec());
    }

    /// A peer that sends nothing, or only a prefix of the HTTP/2 preface
    /// (hyper_util waits for the rest), gets `TimedOut` once the deadline
    /// passes.
    #[tokio::test]
    async fn a_silent_or_stalled_first_request_times_out() {
        for sent in [&b""[..], b"PRI * HTTP/2.0\r\n"] {
            let (mut client, server) = tokio::io::duplex(4096);
            client.write_all(sent).await.unwrap();
            let mut conn =
                FirstRequestLine::new(server, Duration::from_millis(100), FirstRequest::default());
            let started = std::time::Instant::now();
            let mut got = vec![0u8; sent.len()];
            conn.read_exact(&mut got).await.unwrap();
            let err = conn.read(&mut [0u8; 64]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(started.elapsed() < Duration::from_secs(5));
            drop(client);
        }
    }

    /// Once the first request has arrived, the connection may stay quiet as
    /// long as it likes (hyper's own timers are in charge).
    #[tokio::test]
    async fn after_the_first_request_reads_are_not_timed() {
        let (mut client, server) = tokio::io::duplex(4096);
        let first = FirstRequest::default();
        let mut conn = FirstRequestLine::new(server, Duration::from_millis(50), first.clone());
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut head = [0u8; 18];
        conn.read_exact(&mut head).await.unwrap();
        first.arrived();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.write_all(b"next").await.unwrap();
        });
        let mut next = [0u8; 4];
        conn.read_exact(&mut next).await.unwrap();
        assert_eq!(&next, b"next");
        writer.await.unwrap();
    }
}
