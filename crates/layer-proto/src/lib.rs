//! What the preload layer (`libmirrord_layer.so`) and `mirrordctl exec` say to each other.
//!
//! The layer runs inside the user's process and asks `mirrordctl` — over a UNIX socket whose path is in
//! [`ENV_SOCK`], one connection per thread — to resolve names, open TCP connections and UDP flows, and open,
//! stat and write back files as the target would. Everything it needs to decide *whether* to ask (the outgoing
//! and DNS filters, which paths are the target's) arrives once, in
//! [`ENV_CONFIG`], so deciding never costs a round trip.
//!
//! - [`messages`]: the requests and replies, strictly one reply per request;
//! - [`codec`]: blocking frames (`u32` big-endian length, then postcard), at most [`MAX_FRAME`] bytes;
//! - [`config`]: [`LayerConfig`] and its environment encoding;
//! - [`filter`]: mirrord's `local`/`remote` address filter grammar and what it selects;
//! - [`files`]: mirrord's `feature.fs` modes and path lists, and where a path goes.
#![forbid(unsafe_code)]

pub mod codec;
pub mod config;
pub mod files;
pub mod filter;
pub mod messages;

pub use codec::{read_frame, write_frame};
pub use config::{ConfigError, Dns, LayerConfig, Outgoing};
pub use files::{FileRoutes, Files, FsMode, Route};
pub use filter::{AddressFilter, AddressRule, FilterError, HostPattern, Proto};
pub use messages::{DnsFailure, Family, Reply, Request, Stat};

/// Version of this protocol, sent in [`Request::Hello`].
pub const VERSION: u32 = 1;
/// Absolute path of `mirrordctl`'s UNIX socket.
pub const ENV_SOCK: &str = "MIRRORD_LAYER_SOCK";
/// [`LayerConfig`] as postcard, then base64 (standard alphabet, padded).
pub const ENV_CONFIG: &str = "MIRRORD_LAYER_CONFIG";
/// Optional path the layer appends debug lines to (never stdout or stderr).
pub const ENV_LOG: &str = "MIRRORD_LAYER_LOG";
/// Optional deadline in milliseconds for every request the layer makes, overriding its defaults (15 s for a
/// connect, 10 s for a name); meant for tests and slow links.
pub const ENV_TIMEOUT_MS: &str = "MIRRORD_LAYER_TIMEOUT_MS";
/// Largest frame either side accepts; anything bigger is a protocol error.
pub const MAX_FRAME: usize = 1 << 20;
