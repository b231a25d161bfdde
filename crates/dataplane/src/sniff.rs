//! Protocol detection from the first bytes, by the grammar: the HTTP/2 connection preface,
//! or an HTTP/1 request line (RFC 9112 §3: any token method, leading empty lines allowed),
//! else something else. A request line that breaks the grammar but is plainly meant as
//! HTTP (`GET /x HTTP/1.2`, a tab or two spaces between its parts) is told apart from
//! other protocols: under a filter it must be refused as HTTP (400), never relayed to the
//! target unrouted.
//!
//! *How* to detect is decided here; *what to do* with a slow client or a silent one is
//! the caller's choice ([`detect`] reports it). A connection is never taken as "not HTTP"
//! because its client is slow: only bytes that break the grammar, or a server that speaks
//! first, make it so.

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A request line this long with no end is handed to the HTTP server, which refuses it
/// with a status (414) rather than relayed unrouted.
const MAX_SNIFF: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// Meant as an HTTP/1 request, but its request line breaks the grammar.
    Http1Invalid,
    Http2,
    Other,
}

/// What the first bytes are, or `None` while they could still be either.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    let mut headers = [httparse::EMPTY_HEADER; 0];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        // The request line is complete (its version parsed): HTTP/1. Too many headers
        // for our empty array means the same.
        Ok(_) if req.version.is_some() => Some(Protocol::Http1),
        Err(httparse::Error::TooManyHeaders) => Some(Protocol::Http1),
        Ok(_) if buf.len() >= MAX_SNIFF => Some(Protocol::Http1),
        Ok(_) => None,
        Err(_) if meant_as_http(buf) => Some(Protocol::Http1Invalid),
        Err(_) => Some(Protocol::Other),
    }
}

/// Methods common enough that a line starting with one of them and a space is HTTP even
/// with no version in sight (`GET /x` alone, HTTP/0.9's form).
const COMMON_METHODS: &[&[u8]] = &[
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"TRACE", b"CONNECT",
];

/// Whether bytes that break the request-line grammar were still meant as an HTTP request:
/// a token, blanks, and then either an `HTTP/` version on the same line or a common
/// method's target. Other line protocols (`SET k v`, SMTP's `EHLO x`) are not.
fn meant_as_http(buf: &[u8]) -> bool {
    let start = buf
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(buf.len());
    let line = &buf[start..];
    let line = &line[..line.iter().position(|b| *b == b'\n').unwrap_or(line.len())];
    let method_len = line
        .iter()
        .position(|b| !is_token(*b))
        .unwrap_or(line.len());
    if method_len == 0 || !matches!(line.get(method_len), Some(b' ' | b'\t')) {
        return false;
    }
    let method = &line[..method_len];
    let has_version = line.windows(5).any(|w| w.eq_ignore_ascii_case(b"HTTP/"));
    has_version || COMMON_METHODS.contains(&method)
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// How [`detect`] ended.
#[derive(Debug)]
pub enum Detected {
    /// The client's bytes (all read so far) are this protocol. `server`: what the server
    /// said before the client spoke, held back (an HTTP/2 server's SETTINGS: it belongs
    /// to whoever speaks HTTP/2 to the server next).
    Client {
        protocol: Protocol,
        client: Bytes,
        server: Bytes,
    },
    /// The server spoke first (`server` is what it said), and not as an HTTP/2 server
    /// does: not HTTP, relayed as it is.
    ServerFirst { server: Bytes },
    /// Nothing decisive before the deadline; what the client had sent.
    TimedOut(Bytes),
    /// The client closed (or the server did, before anyone said anything).
    Closed,
}

/// Reads the client until its protocol is known, the deadline (if any) passes, or the
/// server (when connected) speaks first.
pub async fn detect(
    client: &mut TcpStream,
    mut server: Option<&mut TcpStream>,
    deadline: Option<Instant>,
) -> std::io::Result<Detected> {
    let mut buf = BytesMut::with_capacity(1024);
    // Most clients have sent their first request by the time it is accepted: no waiting.
    match client.try_read_buf(&mut buf) {
        Ok(0) => return Ok(Detected::Closed),
        Ok(_) => {
            if let Some(protocol) = classify(&buf) {
                return Ok(Detected::Client {
                    protocol,
                    client: buf.freeze(),
                    server: Bytes::new(),
                });
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    let mut from_server = BytesMut::new();
    // Whether the server's bytes still need a look (nothing decided about them yet).
    let mut watch_server = server.is_some();
    loop {
        // Once the client has spoken, what the server says is its own business.
        let watching = watch_server && buf.is_empty();
        let server_read = async {
            match server.as_deref_mut() {
                Some(s) if watching => s.read_buf(&mut from_server).await,
                _ => std::future::pending().await,
            }
        };
        let timeout = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = client.read_buf(&mut buf) => {
                if r? == 0 {
                    return Ok(Detected::Closed);
                }
                if let Some(protocol) = classify(&buf) {
                    return Ok(Detected::Client { protocol, client: buf.freeze(), server: from_server.freeze() });
                }
            }
            r = server_read => match r {
                Ok(n) if n > 0 => match h2_server_preface(&from_server) {
                    Some(true) => watch_server = false,
                    Some(false) => return Ok(Detected::ServerFirst { server: from_server.freeze() }),
                    None => {}
                },
                // The server closed (or failed) before the client said anything.
                _ => return Ok(Detected::Closed),
            },
            _ = timeout => return Ok(Detected::TimedOut(buf.freeze())),
        }
    }
}

/// Whether a server's first bytes are the start of an HTTP/2 server preface (a SETTINGS
/// frame: type 4, no flags, stream 0); `None` while too few bytes have arrived to tell.
pub fn h2_server_preface(bytes: &[u8]) -> Option<bool> {
    let header = [
        (3, 0x04u8), // type: SETTINGS
        (4, 0x00),   // flags: not an ACK
        (5, 0x00),   // stream 0
        (6, 0x00),
        (7, 0x00),
        (8, 0x00),
    ];
    for (at, want) in header {
        match bytes.get(at) {
            Some(b) if *b != want => return Some(false),
            Some(_) => {}
            None => return None,
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_the_grammar() {
        use Protocol::*;
        for (bytes, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Some(Http1)),
            (b"PURGE /cache HTTP/1.1\r\n", Some(Http1)),
            (b"PROPFIND /dav HTTP/1.1\n", Some(Http1)),
            (b"\r\n\r\nGET / HTTP/1.1\r\n", Some(Http1)),
            (b"M-SEARCH * HTTP/1.1\r\n", Some(Http1)),
            (b"GE", None),
            (b"\r\n", None),
            (b"GET /slow", None),
            (b"GET / HTTP/1.", None),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Some(Http2)),
            (b"PRI * HT", None),
            (b"\x16\x03\x01\x02\x00", Some(Other)),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Some(Other)),
            (b"GET / FTP/1.1\r\n", Some(Http1Invalid)),
            (b"SET k v\r\n", Some(Other)),
            (b"EHLO mail.example\r\n", Some(Other)),
            // Meant as HTTP, broken: refused as HTTP under a filter, never relayed.
            (b"GET /x HTTP/1.2\r\n", Some(Http1Invalid)),
            (b"GET\t/x HTTP/1.1\r\n", Some(Http1Invalid)),
            (b"GET  /x HTTP/1.1\r\n", Some(Http1Invalid)),
            (b"GET /x HTTP/2.0\r\n", Some(Http1Invalid)),
            (b"FOO /x HTTP/1.7\r\n", Some(Http1Invalid)),
            (b"*1\r\n$4\r\nPING\r\n", Some(Other)),
        ] {
            assert_eq!(
                classify(bytes),
                want,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A request line too long to wait for is still HTTP: the server refuses it.
        let long = format!("GET /{}", "a".repeat(MAX_SNIFF));
        assert_eq!(classify(long.as_bytes()), Some(Http1));
    }

    #[test]
    fn knows_an_http2_server_preface_from_a_greeting() {
        let settings = [0, 0, 12, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 200];
        assert_eq!(h2_server_preface(&settings), Some(true));
        assert_eq!(h2_server_preface(&settings[..5]), None);
        assert_eq!(
            h2_server_preface(b"220 smtp.example ESMTP\r\n"),
            Some(false)
        );
        // MySQL's handshake: length, sequence 0, protocol 10.
        assert_eq!(h2_server_preface(&[74, 0, 0, 0, 10, b'8']), Some(false));
    }
}
