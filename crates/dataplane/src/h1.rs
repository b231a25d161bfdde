//! HTTP/1.1 message framing over a byte stream that is copied, not parsed into messages:
//! where each request or response starts and ends (RFC 9112 §6), so a relay that forwards
//! bytes verbatim knows its request boundaries, and a reader in front of hyper knows when
//! a request head is still arriving.
//!
//! Heads are parsed with `httparse` (the parser hyper uses); bodies are followed by their
//! `content-length` or chunked framing. Anything that cannot be framed (an upgrade, a
//! `CONNECT` tunnel, a close-delimited body, bytes that are not HTTP) makes the stream
//! *opaque*: it is copied on as it is and never framed again.

use bytes::BytesMut;

/// Heads larger than this are not framed (hyper's default limit is about as large).
pub const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// A chunk-size line or a trailer section longer than this is not HTTP we frame.
const MAX_LINE: usize = 4 * 1024;

/// What a request's head says about its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestInfo {
    /// A `HEAD` request: its response has no body whatever its headers say.
    pub head: bool,
    /// `CONNECT`: a 2xx response turns the connection into a tunnel.
    pub connect: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The first byte of a new head is next (it is not consumed).
    HeadStart,
    /// A request head ended; its body (if any) follows.
    Request(RequestInfo),
    /// An interim (1xx) response ended; the final one follows.
    Interim,
    /// A final response ended, body included.
    End,
    /// From here on the stream is not framed.
    Opaque,
}

#[derive(Debug)]
enum Chunk {
    Size(BytesMut),
    Data(u64),
    DataEnd,
    /// In the trailer section; `true` at the start of a line.
    Trailers {
        line_start: bool,
        seen: usize,
    },
}

#[derive(Debug)]
enum State {
    Idle,
    Head(BytesMut),
    Length(u64),
    Chunked(Chunk),
    Opaque,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Request,
    Response,
}

/// Follows the messages of one direction of a connection.
#[derive(Debug)]
pub struct Framer {
    role: Role,
    state: State,
}

impl Framer {
    pub fn requests() -> Self {
        Self {
            role: Role::Request,
            state: State::Idle,
        }
    }

    pub fn responses() -> Self {
        Self {
            role: Role::Response,
            state: State::Idle,
        }
    }

    pub fn opaque() -> Self {
        Self {
            role: Role::Request,
            state: State::Opaque,
        }
    }

    pub fn is_opaque(&self) -> bool {
        matches!(self.state, State::Opaque)
    }

    /// Between messages, nothing of the next one seen.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Idle)
    }

    /// Inside a head (its first byte was seen, its end not yet).
    pub fn in_head(&self) -> bool {
        matches!(self.state, State::Head(_))
    }

    pub fn make_opaque(&mut self) {
        self.state = State::Opaque;
    }

    /// Consumes `data` up to the next event, or all of it. `request` is what the request
    /// being answered said (responses only; `None` if unknown).
    pub fn step(&mut self, data: &[u8], request: Option<RequestInfo>) -> (usize, Option<Event>) {
        match &mut self.state {
            State::Opaque => (data.len(), None),
            State::Idle => match data.iter().position(|b| *b != b'\r' && *b != b'\n') {
                Some(i) => {
                    self.state = State::Head(BytesMut::new());
                    (i, Some(Event::HeadStart))
                }
                None => (data.len(), None),
            },
            State::Head(buf) => {
                // The whole head in this read (the usual case) is parsed where it lies.
                let fast = if buf.is_empty() { head_end(data) } else { None };
                match fast {
                    Some(end) => {
                        let ev = self.head(&data[..end], request);
                        (end, ev)
                    }
                    None => self.head_more(data, request),
                }
            }
            State::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    (n as usize, Some(self.message_end()))
                } else {
                    (n as usize, None)
                }
            }
            State::Chunked(_) => self.chunked(data),
        }
    }

    /// More of a head that did not come in one piece: collected until it is complete.
    fn head_more(&mut self, data: &[u8], request: Option<RequestInfo>) -> (usize, Option<Event>) {
        let State::Head(buf) = &mut self.state else {
            unreachable!("called in the head state")
        };
        let from = buf.len().saturating_sub(2);
        buf.extend_from_slice(data);
        match head_end(&buf[from..]) {
            Some(end) => {
                let end = from + end;
                let used = data.len() - (buf.len() - end);
                buf.truncate(end);
                let head = std::mem::take(buf);
                let ev = self.head(&head, request);
                (used, ev)
            }
            None if buf.len() > MAX_HEAD || !plausible(self.role, buf) => {
                (data.len(), Some(self.opaque_event()))
            }
            None => (data.len(), None),
        }
    }

    fn head(&mut self, head: &[u8], request: Option<RequestInfo>) -> Option<Event> {
        match self.role {
            Role::Request => Some(self.request_head(head)),
            Role::Response => self.response_head(head, request),
        }
    }

    /// The event that ends a message, and the state after it.
    fn message_end(&mut self) -> Event {
        self.state = State::Idle;
        Event::End
    }

    fn request_head(&mut self, head: &[u8]) -> Event {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
            return self.opaque_event();
        }
        let method = req.method.unwrap_or_default();
        let info = RequestInfo {
            head: method == "HEAD",
            connect: method == "CONNECT",
        };
        let upgrade = req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"));
        if info.connect || upgrade {
            // What follows depends on the answer: copy it on as it is.
            self.state = State::Opaque;
            return Event::Request(info);
        }
        match body_framing(req.headers, true) {
            Some(state) => {
                self.state = state;
                Event::Request(info)
            }
            None => self.opaque_event(),
        }
    }

    /// A response head's event; `None` when its body follows.
    fn response_head(&mut self, head: &[u8], request: Option<RequestInfo>) -> Option<Event> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
            return Some(self.opaque_event());
        }
        let status = resp.code.unwrap_or_default();
        let request = request.unwrap_or_default();
        if status == 101 || (request.connect && (200..300).contains(&status)) {
            return Some(self.opaque_event());
        }
        if (100..200).contains(&status) {
            self.state = State::Idle;
            return Some(Event::Interim);
        }
        if request.head || status == 204 || status == 304 {
            return Some(self.message_end());
        }
        match body_framing(resp.headers, false) {
            Some(State::Idle) => Some(self.message_end()),
            Some(state) => {
                self.state = state;
                None
            }
            // Close-delimited: the body ends with the connection.
            None => Some(self.opaque_event()),
        }
    }

    fn opaque_event(&mut self) -> Event {
        self.state = State::Opaque;
        Event::Opaque
    }

    fn chunked(&mut self, data: &[u8]) -> (usize, Option<Event>) {
        let State::Chunked(chunk) = &mut self.state else {
            unreachable!("called in the chunked state")
        };
        let mut i = 0;
        while i < data.len() {
            match chunk {
                Chunk::Size(line) => {
                    let Some(nl) = data[i..].iter().position(|b| *b == b'\n') else {
                        line.extend_from_slice(&data[i..]);
                        if line.len() > MAX_LINE {
                            return (data.len(), Some(self.opaque_event()));
                        }
                        return (data.len(), None);
                    };
                    line.extend_from_slice(&data[i..i + nl + 1]);
                    i += nl + 1;
                    match httparse::parse_chunk_size(line) {
                        Ok(httparse::Status::Complete((_, 0))) => {
                            *chunk = Chunk::Trailers {
                                line_start: true,
                                seen: 0,
                            }
                        }
                        Ok(httparse::Status::Complete((_, n))) => *chunk = Chunk::Data(n),
                        _ => return (i, Some(self.opaque_event())),
                    }
                }
                Chunk::Data(left) => {
                    let n = (*left).min((data.len() - i) as u64);
                    *left -= n;
                    i += n as usize;
                    if *left == 0 {
                        *chunk = Chunk::DataEnd;
                    }
                }
                Chunk::DataEnd => {
                    match data[i] {
                        b'\r' => {}
                        b'\n' => *chunk = Chunk::Size(BytesMut::new()),
                        _ => return (i, Some(self.opaque_event())),
                    }
                    i += 1;
                }
                Chunk::Trailers { line_start, seen } => {
                    let b = data[i];
                    i += 1;
                    *seen += 1;
                    if *seen > MAX_HEAD {
                        return (i, Some(self.opaque_event()));
                    }
                    match (b, *line_start) {
                        (b'\n', true) => return (i, Some(self.message_end())),
                        (b'\n', false) => *line_start = true,
                        (b'\r', _) => {}
                        _ => *line_start = false,
                    }
                }
            }
        }
        (data.len(), None)
    }
}

/// Where the blank line ending a head is: the index just past it.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(nl) = buf[from..].iter().position(|b| *b == b'\n') {
        let at = from + nl;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// Whether an incomplete head can still become a valid one.
fn plausible(role: Role, head: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let parsed = match role {
        Role::Request => httparse::Request::new(&mut headers).parse(head).map(|_| ()),
        Role::Response => httparse::Response::new(&mut headers)
            .parse(head)
            .map(|_| ()),
    };
    parsed.is_ok()
}

/// The body framing a head declares (RFC 9112 §6.3); `None` when it cannot be framed
/// (an invalid length, a request with a transfer coding other than chunked last, or a
/// close-delimited response).
fn body_framing(headers: &[httparse::Header<'_>], request: bool) -> Option<State> {
    let mut te: Option<bool> = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let last = std::str::from_utf8(h.value).ok()?.rsplit(',').next()?;
            te = Some(last.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for v in std::str::from_utf8(h.value).ok()?.split(',') {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n: u64 = v.parse().ok()?;
                if length.is_some_and(|l| l != n) {
                    return None;
                }
                length = Some(n);
            }
        }
    }
    match (te, length) {
        (Some(true), _) => Some(State::Chunked(Chunk::Size(BytesMut::new()))),
        (Some(false), _) => None,
        (None, Some(0)) => Some(State::Idle),
        (None, Some(n)) => Some(State::Length(n)),
        (None, None) if request => Some(State::Idle),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `data` in pieces of `step` bytes; returns the events with their offsets.
    fn events(
        mut f: Framer,
        data: &[u8],
        step: usize,
        req: Option<RequestInfo>,
    ) -> Vec<(usize, Event)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let end = (at + step).min(data.len());
            let mut piece = &data[at..end];
            let mut base = at;
            while !piece.is_empty() {
                let (n, ev) = f.step(piece, req);
                if let Some(ev) = ev {
                    out.push((base + n, ev));
                }
                base += n;
                piece = &piece[n..];
                if n == 0 && ev.is_none() {
                    panic!("no progress at {base}");
                }
            }
            at = end;
        }
        out
    }

    fn all_steps(f: fn() -> Framer, data: &[u8], req: Option<RequestInfo>) -> Vec<(usize, Event)> {
        let whole = events(f(), data, data.len(), req);
        for step in 1..data.len() {
            assert_eq!(
                events(f(), data, step, req),
                whole,
                "fed {step} bytes at a time"
            );
        }
        whole
    }

    #[test]
    fn pipelined_requests_with_every_body_framing() {
        let data = b"\r\nGET /a HTTP/1.1\r\nhost: x\r\n\r\n\
POST /b HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
PURGE /c HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n3;x=1\r\nabc\r\n0\r\nx-t: 1\r\n\r\n\
HEAD /d HTTP/1.1\n\n";
        let ev = all_steps(Framer::requests, data, None);
        let get = RequestInfo::default();
        let head = RequestInfo {
            head: true,
            connect: false,
        };
        let starts: Vec<usize> = ev
            .iter()
            .filter(|(_, e)| *e == Event::HeadStart)
            .map(|(at, _)| *at)
            .collect();
        let text = std::str::from_utf8(data).unwrap();
        assert_eq!(
            starts,
            vec![
                2,
                text.find("POST").unwrap(),
                text.find("PURGE").unwrap(),
                text.find("HEAD").unwrap()
            ]
        );
        let reqs: Vec<RequestInfo> = ev
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Request(i) => Some(*i),
                _ => None,
            })
            .collect();
        assert_eq!(reqs, vec![get, get, get, head]);
        assert!(!ev.iter().any(|(_, e)| *e == Event::Opaque));
    }

    #[test]
    fn responses_follow_the_request_and_the_status() {
        let data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc\
HTTP/1.1 204 No Content\r\n\r\n\
HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n";
        let ev = all_steps(Framer::responses, data, None);
        let kinds: Vec<Event> = ev
            .iter()
            .map(|(_, e)| *e)
            .filter(|e| *e != Event::HeadStart)
            .collect();
        assert_eq!(
            kinds,
            vec![Event::Interim, Event::End, Event::End, Event::End]
        );
        assert_eq!(ev.last().unwrap().0, data.len());

        // A response to HEAD has no body, whatever its length says.
        let head = Some(RequestInfo {
            head: true,
            connect: false,
        });
        let ev = events(
            Framer::responses(),
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
            64,
            head,
        );
        assert_eq!(ev.last().unwrap().1, Event::End);
    }

    #[test]
    fn what_cannot_be_framed_is_opaque() {
        for data in [
            &b"\x16\x03\x01\x02\x00"[..],
            b"SSH-2.0-OpenSSH\r\n",
            b"GET /x HTTP/1.1\r\nupgrade: websocket\r\n\r\nraw bytes",
            b"GET /x HTTP/1.1\r\ncontent-length: 1, 2\r\n\r\n",
            b"POST /x HTTP/1.1\r\ntransfer-encoding: gzip\r\n\r\n",
        ] {
            let mut f = Framer::requests();
            let mut rest = data;
            while !rest.is_empty() {
                let (n, _) = f.step(rest, None);
                rest = &rest[n..];
            }
            assert!(f.is_opaque(), "{:?}", String::from_utf8_lossy(data));
        }
        let mut f = Framer::responses();
        let mut rest = &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..];
        while !rest.is_empty() {
            rest = &rest[f.step(rest, None).0..];
        }
        assert!(f.is_opaque());
        // A response without a length ends with the connection.
        let mut f = Framer::responses();
        let (_, ev) = f.step(b"HTTP/1.0 200 OK\r\n\r\nxyz", None);
        assert_eq!(ev, Some(Event::HeadStart));
        let (_, ev) = f.step(b"HTTP/1.0 200 OK\r\n\r\nxyz", None);
        assert_eq!(ev, Some(Event::Opaque));
    }
}
