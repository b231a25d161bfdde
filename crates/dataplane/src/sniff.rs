//! Protocol detection from the first bytes a client sends.

use bytes::{Bytes, BytesMut};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: &[&[u8]] = &[
    b"GET", b"POST", b"PUT", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Other,
}

fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    let maybe_h2 = H2_PREFACE.starts_with(&buf[..buf.len().min(H2_PREFACE.len())]);
    let mut maybe_h1 = false;
    for m in METHODS {
        if buf.len() > m.len() {
            if buf.starts_with(m) && buf[m.len()] == b' ' {
                return Some(Protocol::Http1);
            }
        } else if m.starts_with(buf) {
            maybe_h1 = true;
        }
    }
    if maybe_h2 || maybe_h1 {
        None
    } else {
        Some(Protocol::Other)
    }
}

/// Reads until the protocol is known. Protocols where the server speaks first send
/// nothing, so after `wait` the connection is treated as not HTTP.
pub async fn detect<T: AsyncRead + Unpin>(
    io: &mut T,
    wait: Duration,
) -> std::io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await {
            Err(_) => return Ok((Protocol::Other, buf.freeze())),
            Ok(Ok(0)) => return Ok((Protocol::Other, buf.freeze())),
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok((p, buf.freeze()));
                }
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Protocol::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"\x16\x03\x01"), Some(Protocol::Other));
        assert_eq!(classify(b"GETX"), Some(Protocol::Other));
    }
}
