//! A raw HTTP/2 client over cleartext (prior knowledge), for tests that
//! must see the frames themselves (GOAWAY, PING) rather than what a client
//! library makes of them.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One frame: (type, flags, stream id, payload). Type 255: the server
/// closed the connection.
pub type Frame = (u8, u8, u32, Vec<u8>);

/// The preface, an empty SETTINGS frame and a HEADERS frame on stream 1
/// with `GET http://localhost{path}` and `headers` (HPACK: indexed
/// `:method GET` and `:scheme http`, literal `:path`, `:authority` and each
/// header; names lower case, every length under 127).
pub fn get(path: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x04, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend_from_slice(&[0x01, 9]);
    block.extend_from_slice(b"localhost");
    for (name, value) in headers {
        block.extend_from_slice(&[0x00, name.len() as u8]);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[0, 0, block.len() as u8, 1, 0x05, 0, 0, 0, 1]);
    out.extend_from_slice(&block);
    out
}

/// The next frame from `c`, or `None` at `deadline`.
pub async fn frame(c: &mut TcpStream, deadline: tokio::time::Instant) -> Option<Frame> {
    let mut head = [0u8; 9];
    match tokio::time::timeout_at(deadline, c.read_exact(&mut head)).await {
        Err(_) => return None,
        Ok(Err(_)) => return Some((255, 0, 0, Vec::new())),
        Ok(Ok(_)) => {}
    }
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    if c.read_exact(&mut payload).await.is_err() {
        return Some((255, 0, 0, Vec::new()));
    }
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    Some((head[3], head[4], stream, payload))
}

/// Answer `f` as a live client does: acknowledge SETTINGS, answer PING.
pub async fn answer(c: &mut TcpStream, f: &Frame) {
    let (kind, flags, _, payload) = f;
    match kind {
        4 if flags & 1 == 0 => {
            let _ = c.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await;
        }
        6 if flags & 1 == 0 => {
            let mut ack = vec![0, 0, 8, 6, 1, 0, 0, 0, 0];
            ack.extend_from_slice(payload);
            let _ = c.write_all(&ack).await;
        }
        _ => {}
    }
}
