//! The data plane: one interceptor per target port, in front of the target's replicas.
//!
//! The path of a connection, one module each:
//! [`listener`] accepts (under a per-port cap) and picks a replica -> [`sniff`] detects
//! HTTP/1, HTTP/2 or other by the grammar -> [`relay`] (bytes: pass through, with the HTTP/1
//! requests followed by [`h1`] so the connection can switch to per-request routing when the
//! routes change; a whole connection to a stealer; copies teed to mirrors) or [`http`]
//! (per-request routing: filtered steal, mirror copies, pass through; [`gate`] keeps the
//! header read timeout in front of it). What each port does is a [`routes::PortRoutes`]
//! snapshot the control plane swaps in; the data plane never decides *who* may steal, only
//! applies what it is given.
//!
//! How traffic reached the listener does not matter here: a transparent (iptables)
//! front end would hand the same accepted sockets to [`listener::serve_connection`].
#![forbid(unsafe_code)]

pub mod budget;
pub mod filter;
pub mod gate;
pub mod h1;
pub mod handoff;
pub mod http;
pub mod listener;
pub mod port;
pub mod relay;
pub mod rewind;
pub mod routes;
pub mod sniff;
pub mod tee;

pub use filter::{FilterError, FilterLimits, HttpFilter, Verdict};
pub use handoff::{Body, BoxError, Handoff, Io, StolenResponse, SubscriberTx};
pub use listener::{Endpoint, PortPlane};
pub use port::{InterceptorLimits, PortServices};
pub use routes::{PortRoutes, RouteTable, Subscriber};
