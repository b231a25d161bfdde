//! The wire protocol between `mirrordctl` and the operator.
//!
//! One mutual-TLS connection carries one conversation: a [`ClientHello`], then either a
//! session (which stays open and multiplexes the traffic handed to the developer), a
//! status query, or a kill request. Every message is one length-prefixed frame
//! ([`codec`]) holding a postcard-encoded [`ClientMessage`] or [`ServerMessage`].
#![forbid(unsafe_code)]

pub mod agent;
pub mod codec;
pub mod context;
pub mod files;
pub mod filter;
pub mod messages;
pub mod session_id;

pub use codec::{encoded_len, Charge, FrameCodec, FrameError, MAX_FRAME_LEN};
pub use context::{
    ConnectFailure, ContextReply, ContextRequest, DnsFailure, EnvSelect, Family, OutgoingConnected,
    Resolution,
};
pub use files::{DirEntry, FileAnswer, FileFailure, FileRequest, FileStat, FilesAccess};
pub use filter::{BodyFilterSpec, HttpFilterSpec};
pub use messages::*;
pub use session_id::SessionId;

/// Bumped on any incompatible change of [`messages`] (2: HTTP trailers; 3: structured
/// filters in port outcomes; 4: the caller's role in `Welcome` and `StatusReport`; 5: console login
/// links; 6: notices; 7: JSON body filters, a target's container, overlapping filters in port
/// outcomes; 8: sessions a status report leaves out; 9: a session's context (environment,
/// outgoing connections, name resolution), ports added to an open session; 10: outgoing UDP flows, ports removed from an open session; 11: the target's files; 12: a Service's port in port outcomes); the operator refuses other versions
/// with a message that names both.
pub const PROTOCOL_VERSION: u32 = 12;
