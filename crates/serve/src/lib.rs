//! How the operator's processes serve connections and stop.
//!
//! - [`slots`]: a listener's cap on connections, making room for newcomers by evicting
//!   the connection idle the longest (so idle connections cannot lock anyone out);
//! - [`tls`]: the one TLS accept loop every listener uses (cap, back-off, handshake
//!   deadline, throttled warnings); [`touching`] marks a connection alive as bytes move;
//! - [`shutdown`]: the root cancellation token and task tracker of a process.
#![forbid(unsafe_code)]

pub mod shutdown;
pub mod slots;
pub mod tls;
pub mod touching;

pub use shutdown::Shutdown;
pub use slots::{Activity, Full, PinGuard, Slot, Slots};
pub use tls::{serve_tls, Accepted, Listener};
pub use touching::Touching;
