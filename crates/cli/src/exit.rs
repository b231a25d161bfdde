//! How `mirrordctl` ends: its exit codes (a contract for scripts, listed in the README)
//! and the one line it prints on failure, each cause once.

use mirrord_protocol::ErrorReply;

/// Done (a session ended by the operator or by `sessions kill` is not a success).
pub const OK: u8 = 0;
/// Something failed at run time: the operator unreachable, the session lost, ...
pub const FAILED: u8 = 1;
/// The command line is wrong (clap uses 2 for its own parse errors too).
pub const USAGE: u8 = 2;
/// The operator understood the request and refused it (port locked, license, policy...).
pub const REFUSED: u8 = 3;
/// Stopped by Ctrl-C (SIGINT), as shells report it: 128 + 2.
pub const INTERRUPTED: u8 = 130;
/// Stopped by SIGTERM: 128 + 15.
pub const TERMINATED: u8 = 143;

/// A command line that cannot work, found after clap parsed it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Usage(pub String);

/// The operator's refusal, as it worded it.
#[derive(Debug, thiserror::Error)]
#[error("refused by the operator: {}", .0.message)]
pub struct Refused(pub ErrorReply);

/// The exit code an error ends `mirrordctl` with.
pub fn code_of(e: &anyhow::Error) -> u8 {
    if e.chain().any(|c| c.is::<Usage>()) {
        USAGE
    } else if e.chain().any(|c| c.is::<Refused>()) {
        REFUSED
    } else {
        FAILED
    }
}

/// `context: cause: cause`, skipping a cause its parent already printed: many errors
/// (`io::Error` wrappers among them) show their source in their own message and return it
/// from `source()` as well.
pub fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read /x/ca.crt: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn each_cause_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(Read { source: io }).context("loading credentials");
        let io_text = std::io::Error::from(std::io::ErrorKind::NotFound).to_string();
        assert_eq!(
            message(&e),
            format!("loading credentials: cannot read /x/ca.crt: {io_text}")
        );
    }

    #[test]
    fn codes_follow_the_error_kind_through_context() {
        let usage = anyhow::Error::new(Usage("bad".into())).context("parsing");
        assert_eq!(code_of(&usage), USAGE);
        let refused = anyhow::Error::new(Refused(ErrorReply {
            code: mirrord_protocol::ErrorCode::PortConflict,
            message: "port 80 is stolen".into(),
        }));
        assert_eq!(code_of(&refused), REFUSED);
        assert_eq!(code_of(&anyhow::anyhow!("lost")), FAILED);
    }
}
