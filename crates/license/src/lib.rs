//! Licensing: the signed license file, the seat book, and the watcher that keeps the
//! operator's view of both current.
//!
//! - [`file`]: what a license says, how the vendor signs it (Ed25519) and how the operator
//!   verifies it.
//! - [`seats`]: distinct clients per calendar month, persisted in the state directory.
//! - [`licensing`]: the operator's live license state: reload on change, expiry, admission.
#![forbid(unsafe_code)]

pub mod file;
pub mod licensing;
pub mod seats;

pub use file::{generate_keypair, License, LicenseError, PublicKey, SigningKeyFile};
pub use licensing::{Admission, LicenseView, Licensing, Refusal, SeatReservation};
