//! What both ends of a session run to carry its traffic over its frames: the operator's
//! session actor and `mirrordctl`'s session loop. The wire itself (frames, messages) is
//! `mirrord_protocol`'s; this is the runtime around it.
//!
//! - [`pump`]: the single writer of a connection's frames, and the relay between a carried
//!   stream and its frames (with a per-connection backlog bound);
//! - [`shared_tcp`]: a socket the frame reader may write into directly while nothing is
//!   queued for it;
//! - [`body`]: HTTP bodies (and trailers) sent and received as frames;
//! - [`demux`]: where the peer's bytes for each carried connection and body go, by id;
//! - [`datagrams`]: a UDP flow as a byte stream of length-prefixed datagrams.
#![forbid(unsafe_code)]

pub mod body;
pub mod datagrams;
pub mod demux;
pub mod pump;
pub mod shared_tcp;
