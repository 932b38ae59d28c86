//! hyper's own answers to requests that are not HTTP, in the contract's
//! error shape.
//!
//! Threat: parser-confusion and smuggling probes — control characters or
//! spaces in the request line, obsolete header folding, a `Content-Length`
//! that is not a number or appears twice with different values, a header
//! past the size limit — are refused by hyper's HTTP/1 parser before any
//! Frenly layer runs, and hyper answers them itself (400, 414 or 431) with
//! an empty body: no error shape, no `X-Request-Id`, no security headers,
//! nothing counted. Clients and scanners then see a server that answers in
//! two dialects, and operators see nothing.
//! Guarantee: the response head hyper writes for such a request, recognised
//! exactly (status 400, 414 or 431; no headers but `content-length: 0`,
//! `date` and `connection`; no body), is replaced on its way out by a whole
//! response in the contract's shape: the same status line (431 stays
//! `headers_too_large`, 400 and 414 are `bad_request`), a JSON
//! `{"error": {"code", "message"}}` body, a fresh `X-Request-Id`, the
//! envelope's security headers (HSTS under TLS) and `Connection: close`
//! (hyper closes the connection after it, as before). Each one is
//! reported (the server counts it in
//! `frenly_requests_blocked_total{reason="malformed_http"}` and audits a
//! `security_violation` with `violation_type: "malformed_http"` under the
//! response's request id). Every other byte passes through untouched.
//!
//! The server also counts each probe against its TCP peer's rate and
//! burst limits (`network::admit_probe`), and stops auditing them one by
//! one once the peer is limited or banned; the answer itself stays the
//! one written here. A head that hyper flushes
//! in the same write as an earlier response's bytes (pipelined requests) is
//! passed on as hyper wrote it.
//!
//! Threat (of the rewriting itself): a write is recognised by its bytes
//! alone, so a response body chunk or bytes after a protocol upgrade that
//! happen to be such a head would be replaced: the declared
//! `Content-Length` no longer matches, the next pipelined response is
//! misread, a `malformed_http` violation is audited that never happened
//! and a probe is counted against the client. Frenly's own bodies are JSON
//! and can never be such a head; bytes from a gateway upstream or an
//! upgraded stream can.
//! Guarantee: the rewriter never alters bytes of a body it did not write
//! or of an upgraded stream. Each connection has a [`Passthrough`] switch,
//! in every request's extensions: the gateway turns it on before it hands
//! back a response whose body comes from an upstream, the server turns it
//! on for any `101 Switching Protocols` (before hyper writes it) and on an
//! HTTP/2 connection (hyper writes no HTTP/1 head there, and a DATA
//! payload may be written on its own). Once on, it stays on for the
//! connection: every byte passes through untouched, and a parse error
//! hyper answers later on that connection goes out bare, as hyper wrote
//! it, unreported (the rewriter cannot tell where an upstream's body ends;
//! safety over shape).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http::envelope::{new_request_id, policy_headers, X_REQUEST_ID};
use crate::http::ApiError;

/// The status and `date` value of `buf` when it is exactly one of hyper's
/// automatic parse-error heads; `None` for anything else.
pub fn automatic_head(buf: &[u8]) -> Option<(StatusCode, &[u8])> {
    let head = buf.strip_suffix(b"\r\n\r\n")?;
    let mut lines = head.split(|&b| b == b'\n');
    let status_line = lines.next()?.strip_suffix(b"\r")?;
    let code = status_line.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let status = match code {
        b"400" => StatusCode::BAD_REQUEST,
        b"414" => StatusCode::URI_TOO_LONG,
        b"431" => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        _ => return None,
    };
    let mut date: &[u8] = b"";
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line.get(..colon)?;
        let value = line.get(colon + 1..)?.trim_ascii();
        if name.eq_ignore_ascii_case(b"date") {
            date = value;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            if value != b"0" {
                return None;
            }
        } else if !name.eq_ignore_ascii_case(b"connection") {
            return None;
        }
    }
    Some((status, date))
}

/// What a connection does with each answer it replaced: told the status
/// and the response's request id.
pub type Report = Box<dyn Fn(StatusCode, &str) + Send + Sync>;

/// The response that replaces hyper's automatic one (module docs), under
/// request id `id`.
pub fn shaped_response(status: StatusCode, date: &[u8], tls: bool, id: &str) -> Vec<u8> {
    let err = match status {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => ApiError::HeadersTooLarge,
        StatusCode::URI_TOO_LONG => ApiError::BadRequest("the request target is too long".into()),
        _ => ApiError::BadRequest("the request is not well-formed HTTP/1.1".into()),
    };
    shaped(status, &err, date, tls, id)
}

/// The answer to plain HTTP sent to the TLS listener (what nginx does
/// too): a 400 in the error shape the client can read, rather than a TLS
/// alert its HTTP parser cannot (probe L). Without HSTS: not under TLS.
pub fn plain_http_on_tls_port(id: &str) -> Vec<u8> {
    let err = ApiError::BadRequest(
        "plain HTTP was sent to the HTTPS port: use https:// (network.tls is on)".into(),
    );
    shaped(StatusCode::BAD_REQUEST, &err, b"", false, id)
}

fn shaped(status: StatusCode, err: &ApiError, date: &[u8], tls: bool, id: &str) -> Vec<u8> {
    let body = err.body_bytes();
    let mut out = Vec::with_capacity(512 + body.len());
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nconnection: close\r\n");
    if !date.is_empty() {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(date);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(X_REQUEST_ID.as_str().as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(id.as_bytes());
    out.extend_from_slice(b"\r\n");
    let nosniff = (http::header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    for (name, value) in std::iter::once(nosniff).chain(policy_headers(tls)) {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

/// A connection's switch that turns its rewriter off for good, because
/// bytes Frenly did not write (an upstream's body, an upgraded stream) may
/// follow (module docs). Shared between the connection's IO and its
/// requests' extensions.
#[derive(Clone, Default, Debug)]
pub struct Passthrough(Arc<AtomicBool>);

impl Passthrough {
    /// From now on every byte of the connection passes untouched. Must
    /// happen before the response that brings foreign bytes is handed to
    /// hyper.
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// A connection whose parse-error responses are shaped (module docs).
pub struct ShapedParseErrors<IO> {
    io: IO,
    tls: bool,
    report: Report,
    passthrough: Passthrough,
    /// A replacement response not yet all written, from `.1` on.
    pending: Option<(Vec<u8>, usize)>,
}

impl<IO> ShapedParseErrors<IO> {
    /// `report` hears of each replaced response; `tls` adds HSTS to them;
    /// once `passthrough` is set nothing is replaced any more.
    pub fn new(io: IO, tls: bool, report: Report, passthrough: Passthrough) -> Self {
        ShapedParseErrors {
            io,
            tls,
            report,
            passthrough,
            pending: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> ShapedParseErrors<IO> {
    /// Write out the pending replacement, if any.
    fn drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, at)) = &mut self.pending {
            let left = bytes.get(*at..).unwrap_or_default();
            if left.is_empty() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, left))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *at += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Take `buf` as written when it is an automatic head (its replacement
    /// goes out instead, now or on the next flush); `None` to pass it on.
    fn replace(&mut self, cx: &mut Context<'_>, buf: &[u8]) -> Option<Poll<io::Result<usize>>> {
        if self.passthrough.is_set() {
            return None;
        }
        let (status, date) = automatic_head(buf)?;
        tracing::debug!(
            status = status.as_u16(),
            "malformed request; hyper's answer sent in the error shape"
        );
        let id = new_request_id();
        self.pending = Some((shaped_response(status, date, self.tls, &id), 0));
        (self.report)(status, &id);
        Some(match self.drain(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            // the rest goes out on the flush hyper does next
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ShapedParseErrors<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ShapedParseErrors<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        if let Some(done) = this.replace(cx, buf) {
            return done;
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.drain(cx))?;
        let mut filled = bufs.iter().filter(|b| !b.is_empty());
        if let (Some(only), None) = (filled.next(), filled.next()) {
            if let Some(done) = this.replace(cx, only) {
                return done;
            }
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.drain(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const DATE: &[u8] = b"Sun, 29 Nov 2026 08:00:00 GMT";

    #[test]
    fn only_hypers_automatic_heads_are_recognised() {
        let hyper_400 =
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: Sun, 29 Nov 2026 08:00:00 GMT\r\n\r\n";
        assert_eq!(
            automatic_head(hyper_400),
            Some((StatusCode::BAD_REQUEST, DATE))
        );
        let hyper_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(
            automatic_head(hyper_431),
            Some((StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, &b""[..]))
        );
        for other in [
            // Frenly's own errors carry a body, a type and an id
            &b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 12\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n{}",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.0 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            b"{\"error\":1}\r\n\r\n",
            b"",
        ] {
            assert_eq!(automatic_head(other), None, "{:?}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn the_replacement_is_a_whole_response_in_the_error_shape() {
        let out = shaped_response(StatusCode::BAD_REQUEST, DATE, true, "r1");
        let text = String::from_utf8(out).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let head = format!("{head}\r\n");
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{head}");
        for h in [
            "content-type: application/json",
            "connection: close",
            "date: Sun, 29 Nov 2026 08:00:00 GMT",
            "x-request-id: r1",
            "x-content-type-options: nosniff",
            "cache-control: no-store",
            "strict-transport-security: max-age=31536000; includeSubDomains",
        ] {
            assert!(
                head.contains(&format!("\r\n{h}\r\n")),
                "{h} missing in {head}"
            );
        }
        assert!(head.contains(&format!("\r\ncontent-length: {}\r\n", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "bad_request");
        let plain = String::from_utf8(shaped_response(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            b"",
            false,
            "r2",
        ))
        .unwrap();
        assert!(plain.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(!plain.contains("strict-transport-security"));
        assert!(!plain.contains("\r\ndate:"));
        assert!(plain.contains("\"headers_too_large\""));
    }

    /// Through the wrapper, over a pipe that takes 16 bytes at a time: an
    /// automatic head goes out whole as its replacement (by the flush);
    /// anything else goes out byte for byte.
    #[tokio::test]
    async fn replacements_survive_short_writes_and_other_bytes_pass() {
        let (client, server) = tokio::io::duplex(16);
        let reported = Arc::new(Mutex::new(Vec::new()));
        let seen = reported.clone();
        let report: Report = Box::new(move |status, id| {
            seen.lock().unwrap().push((status, id.to_string()));
        });
        let mut conn = ShapedParseErrors::new(server, false, report, Passthrough::default());
        let reader = tokio::spawn(async move {
            let mut client = client;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        conn.write_all(ok).await.unwrap();
        conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        conn.flush().await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
        let got = String::from_utf8(reader.await.unwrap()).unwrap();
        let rest = got.strip_prefix(std::str::from_utf8(ok).unwrap()).unwrap();
        assert!(rest.starts_with("HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"));
        assert!(rest.ends_with("}"), "{rest}");
        assert!(rest.contains("\"bad_request\""));
        let reported = reported.lock().unwrap().clone();
        assert_eq!(reported.len(), 1);
        assert_eq!(reported[0].0, StatusCode::BAD_REQUEST);
        assert!(rest.contains(&format!("\r\nx-request-id: {}\r\n", reported[0].1)));
    }

    /// Once the connection's switch is on, even a write that is exactly an
    /// automatic head passes byte for byte, unreported.
    #[tokio::test]
    async fn nothing_is_replaced_once_passthrough_is_set() {
        let (client, server) = tokio::io::duplex(4096);
        let reported = Arc::new(Mutex::new(0));
        let seen = reported.clone();
        let report: Report = Box::new(move |_, _| *seen.lock().unwrap() += 1);
        let passthrough = Passthrough::default();
        let mut conn = ShapedParseErrors::new(server, false, report, passthrough.clone());
        passthrough.set();
        let bare = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        conn.write_all(bare).await.unwrap();
        conn.shutdown().await.unwrap();
        drop(conn);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, bare.to_vec());
        assert_eq!(*reported.lock().unwrap(), 0);
    }
}
