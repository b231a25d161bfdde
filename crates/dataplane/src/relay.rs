//! Byte paths: a connection relayed to its replica as it is, a whole connection handed to
//! a stealer, and copies of a connection's bytes teed to mirrors.
//!
//! A relayed connection is not parsed into messages, but its HTTP/1 requests and
//! responses are *followed* ([`crate::h1::Framer`]): at each request boundary one atomic
//! load tells whether the routes changed since the connection was accepted. If they did,
//! the relay stops there, once every response already asked for has been delivered, and
//! the connection goes on with per-request routing ([`crate::http`]) with the replica
//! connection it already has. So connections that predate a session (pools, gateways,
//! sidecars keep theirs for hours) follow it from their next request, with nothing lost,
//! while connections with no session in sight pay for little more than a byte copy.

use crate::h1::{Event, Framer, RequestInfo};
use crate::handoff::{Handoff, Io};
use crate::routes::{RouteTable, Subscriber};
use crate::sniff::{self, Protocol};
use bytes::{Buf, Bytes, BytesMut};
use mirrord_serve::Activity;
use mirrord_tunnel::shared_tcp::SharedTcp;
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Notify};

/// Copies of a mirrored connection a slow mirror may fall behind by before it is cut off;
/// the real path never waits for a mirror.
pub const MIRROR_BACKLOG: usize = 256;
/// Read size of each direction.
const CHUNK: usize = 8 * 1024;

pub async fn connect(upstream: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect(upstream).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Hands the connection itself to the stealer: the session relays it, and closes it when
/// the session ends (no zombie connections). Gives the connection back if the session is
/// gone (it ended between the route lookup and now), so the caller can pass it through.
pub async fn steal(
    down: SharedTcp,
    peer: SocketAddr,
    port: u16,
    sub: &Subscriber,
) -> Result<(), Box<dyn Io>> {
    let handoff = Handoff::StolenConnection {
        port,
        peer: peer.to_string(),
        direct: Some(down.direct_writer()),
        io: Box::new(down),
    };
    match sub.tx.send(handoff).await {
        Ok(()) => {
            sub.counters.connections.inc();
            Ok(())
        }
        Err(back) => match back {
            Handoff::StolenConnection { io, .. } => Err(io),
            _ => unreachable!("we sent a StolenConnection"),
        },
    }
}

/// Offers a copy of a connection to each mirror; returns where its bytes go.
pub fn mirror_copies(
    mirrors: &[Subscriber],
    peer: SocketAddr,
    port: u16,
) -> Vec<mpsc::Sender<Bytes>> {
    let mut copies = Vec::with_capacity(mirrors.len());
    for m in mirrors {
        let (tx, rx) = mpsc::channel(MIRROR_BACKLOG);
        let handoff = Handoff::MirroredConnection {
            port,
            peer: peer.to_string(),
            rx,
        };
        // A mirror that is behind does not get this connection.
        if m.tx.try_send(handoff).is_ok() {
            copies.push(tx);
        }
    }
    copies
}

/// The routes a relayed connection was accepted under.
pub struct Watch<'a> {
    pub table: &'a RouteTable,
    pub version: u64,
}

impl Watch<'_> {
    /// Whether the routes changed to something this relay does not serve (any session at
    /// all). One atomic load when nothing changed.
    fn moved(&mut self) -> bool {
        let v = self.table.version();
        if v == self.version {
            return false;
        }
        self.version = v;
        !self.table.load().is_empty()
    }
}

/// How to follow the client's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// HTTP/1: follow the requests.
    Http1,
    /// Copy, never follow (not HTTP).
    Opaque,
}

#[derive(Debug)]
pub enum Ended {
    Closed,
    /// The routes changed: the connection continues with per-request routing from the
    /// request that starts `held` (the client's bytes not yet forwarded). `upstream` says
    /// whether the replica connection can carry on.
    Http1 {
        held: Bytes,
        upstream: bool,
    },
}

#[derive(Default)]
struct Shared {
    /// What each request still waiting for its response asked.
    waiting: VecDeque<RequestInfo>,
    /// The request side stopped at a boundary: stop once `waiting` is empty.
    switching: bool,
    /// The responses can no longer be followed (upgrade, close-delimited body...).
    responses_opaque: bool,
    /// The replica closed its side.
    upstream_closed: bool,
}

enum RequestsEnd {
    Eof,
    Http1(Bytes),
}

/// How a relay follows and shares what it carries.
pub struct Relaying<'a> {
    pub track: Track,
    /// The routes the connection was accepted under (HTTP/1 leaves at the next request
    /// boundary once they change).
    pub watch: Option<Watch<'a>>,
    /// Mirrors that get everything the client sends.
    pub copies: Vec<mpsc::Sender<Bytes>>,
    /// The connection's place under the port's cap, told whenever bytes move.
    pub activity: Option<&'a Activity>,
}

/// Relays `client` to `up` both ways until both sides close, or until the connection
/// should continue with per-request routing. `client_prefix` goes to `up` first and
/// `up_prefix` to `client` first (bytes read while detecting).
pub async fn run(
    client: &mut TcpStream,
    client_prefix: Bytes,
    up: &mut TcpStream,
    up_prefix: Bytes,
    how: Relaying<'_>,
) -> io::Result<Ended> {
    let Relaying {
        track,
        watch,
        copies,
        activity,
    } = how;
    let (cr, cw) = client.split();
    let (ur, uw) = up.split();
    let shared = Mutex::new(Shared::default());
    let stop = Notify::new();
    let requests = Requests {
        from: cr,
        to: uw,
        buf: BytesMut::from(client_prefix),
        watch,
        copies,
        shared: &shared,
        stop: &stop,
        activity,
    };
    let (end, upstream) = tokio::try_join!(
        requests.run(track),
        responses(ur, cw, BytesMut::from(up_prefix), &shared, &stop, activity)
    )?;
    Ok(match end {
        RequestsEnd::Eof => Ended::Closed,
        RequestsEnd::Http1(held) => Ended::Http1 { held, upstream },
    })
}

/// The client-to-replica direction.
struct Requests<'a, 'b> {
    from: ReadHalf<'a>,
    to: WriteHalf<'a>,
    buf: BytesMut,
    watch: Option<Watch<'b>>,
    copies: Vec<mpsc::Sender<Bytes>>,
    shared: &'b Mutex<Shared>,
    stop: &'b Notify,
    activity: Option<&'b Activity>,
}

impl Requests<'_, '_> {
    async fn run(mut self, track: Track) -> io::Result<RequestsEnd> {
        let mut framer = match track {
            Track::Opaque => Framer::opaque(),
            Track::Http1 => Framer::requests(),
        };
        loop {
            if self.buf.is_empty() && !self.fill().await? {
                return self.eof().await;
            }
            let mut ready = 0;
            let mut boundary = false;
            while ready < self.buf.len() {
                let (n, ev) = framer.step(&self.buf[ready..], None);
                match ev {
                    Some(Event::HeadStart) if self.should_leave() => {
                        ready += n;
                        boundary = true;
                        break;
                    }
                    // Known before its bytes go out, so before its response can arrive.
                    Some(Event::Request(info)) => self.lock().waiting.push_back(info),
                    _ => {}
                }
                ready += n;
            }
            self.forward(ready).await?;
            if boundary {
                match self.head_protocol().await? {
                    // A broken request line goes to per-request routing too, which
                    // refuses it (400) rather than relaying it past a new filter.
                    Some(Protocol::Http1 | Protocol::Http1Invalid) => {
                        return Ok(self.leave(RequestsEnd::Http1))
                    }
                    Some(_) => {}
                    None => return self.eof().await,
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("relay state")
    }

    /// At a request boundary: whether the routes moved and the connection can leave here.
    fn should_leave(&mut self) -> bool {
        let moved = self.watch.as_mut().is_some_and(|w| w.moved());
        if !moved {
            return false;
        }
        let s = self.lock();
        !s.responses_opaque && !s.upstream_closed
    }

    /// Reads until the next head's request line shows whether it is HTTP/1 (`None`: the
    /// client closed first). Nothing is forwarded meanwhile.
    async fn head_protocol(&mut self) -> io::Result<Option<Protocol>> {
        loop {
            if let Some(p) = sniff::classify(&self.buf) {
                return Ok(Some(p));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// Reads more; `false` at the client's end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        self.buf.reserve(CHUNK);
        let got = self.from.read_buf(&mut self.buf).await? > 0;
        if let (true, Some(a)) = (got, self.activity) {
            a.touch();
        }
        Ok(got)
    }

    async fn forward(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if self.copies.is_empty() {
            self.to.write_all(&self.buf[..n]).await?;
            self.buf.advance(n);
        } else {
            let chunk = self.buf.split_to(n).freeze();
            self.to.write_all(&chunk).await?;
            // A mirror that cannot keep up loses its copy, never slows the real path.
            self.copies.retain(|c| c.try_send(chunk.clone()).is_ok());
        }
        Ok(())
    }

    /// The client is done sending: the replica learns it too (half-close), and its
    /// answers keep flowing back until it closes.
    async fn eof(mut self) -> io::Result<RequestsEnd> {
        let n = self.buf.len();
        self.forward(n).await?;
        self.to.shutdown().await?;
        Ok(RequestsEnd::Eof)
    }

    /// Stops here: the response side stops once nothing is awaited any more.
    fn leave(self, end: fn(Bytes) -> RequestsEnd) -> RequestsEnd {
        let idle = {
            let mut s = self.lock();
            s.switching = true;
            s.waiting.is_empty()
        };
        if idle {
            self.stop.notify_one();
        }
        end(self.buf.freeze())
    }
}

/// The replica-to-client direction. Returns whether the replica connection is still
/// usable (it stopped cleanly between responses).
async fn responses(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    mut buf: BytesMut,
    shared: &Mutex<Shared>,
    stop: &Notify,
    activity: Option<&Activity>,
) -> io::Result<bool> {
    let lock = || shared.lock().expect("relay state");
    let mut framer = Framer::responses();
    loop {
        if buf.is_empty() {
            buf.reserve(CHUNK);
            let n = tokio::select! {
                r = from.read_buf(&mut buf) => r?,
                _ = stop.notified() => {
                    let s = lock();
                    if s.switching && s.waiting.is_empty() {
                        return Ok(true);
                    }
                    continue;
                }
            };
            if n == 0 {
                lock().upstream_closed = true;
                to.shutdown().await?;
                return Ok(false);
            }
            if let Some(a) = activity {
                a.touch();
            }
        }
        let mut ready = 0;
        let mut done = false;
        while ready < buf.len() && !framer.is_opaque() {
            let front = lock().waiting.front().copied();
            let (n, ev) = framer.step(&buf[ready..], front);
            ready += n;
            match ev {
                Some(Event::End) => {
                    let mut s = lock();
                    s.waiting.pop_front();
                    if s.switching && s.waiting.is_empty() {
                        done = true;
                        break;
                    }
                }
                Some(Event::Opaque) => lock().responses_opaque = true,
                _ => {}
            }
        }
        if framer.is_opaque() {
            ready = buf.len();
        }
        to.write_all(&buf[..ready]).await?;
        buf.advance(ready);
        if done {
            // Bytes nobody asked for make the replica connection unfit to reuse.
            return Ok(buf.is_empty());
        }
    }
}
