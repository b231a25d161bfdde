//! What the data plane hands to a session, and the queue it goes through. The control
//! plane turns these into frames for the developer's CLI; the data plane only sees streams
//! and channels.

use bytes::Bytes;
use mirrord_protocol::{HttpRequestHead, HttpResponseHead};
use mirrord_tunnel::shared_tcp::DirectWriter;
use tokio::io::DuplexStream;
use tokio::sync::{mpsc, oneshot};

pub use mirrord_tunnel::body::{Body, BoxError};

mod queue;
pub use queue::{channel, HandoffRx, SubscriberTx};

/// Bytes of a stolen connection or upgraded request in flight in one direction.
pub const HANDOFF_BUFFER: usize = 256 * 1024;

/// A byte stream a session can own: the client's socket (with any sniffed bytes in front).
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Io for T {}

pub enum Handoff {
    /// A whole connection, stolen: the session owns the other end of `io`.
    StolenConnection {
        port: u16,
        peer: String,
        /// The client's own connection: the session reads and writes it directly.
        io: Box<dyn Io>,
        /// When `io` is a [`mirrord_tunnel::shared_tcp::SharedTcp`]: its socket, for
        /// the session's frame reader to write into while nothing is queued.
        direct: Option<DirectWriter>,
    },
    /// A copy of a connection's inbound bytes; dropping `rx`'s sender ends it.
    MirroredConnection {
        port: u16,
        peer: String,
        rx: mpsc::Receiver<Bytes>,
    },
    /// One stolen HTTP request, its body streaming; the answer comes back on `respond`.
    StolenRequest {
        port: u16,
        head: Box<HttpRequestHead>,
        body: Body,
        respond: oneshot::Sender<StolenResponse>,
    },
    /// Not traffic: something the session's developer should be told (from a backend).
    Notice { message: String },
    /// A copy of one HTTP request; no answer is expected.
    MirroredRequest {
        port: u16,
        head: Box<HttpRequestHead>,
        body: Bytes,
    },
}

pub enum StolenResponse {
    Response {
        head: HttpResponseHead,
        body: Body,
        /// For a 101 answer: the raw stream to the developer's side.
        upgraded: Option<DuplexStream>,
    },
    Failed(String),
    /// The session was leaving when the request reached it (its routes were already
    /// gone; the request had been routed just before): the developer never saw it, so the
    /// target gets it, body and all, as if no steal had been there.
    GivenBack(Body),
}
