//! The operator's budget of file descriptors. Every intercepted connection costs two (the
//! client's and the replica's), every API client one. The soft limit is raised to the hard
//! one at start (the default soft limit of 1024 would lock out the API after about 500
//! idle connections to a port), and intercepted connections are capped per port so that
//! descriptors stay free for the API, the metrics endpoint and the replicas however many
//! clients connect.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the limit now in force.
pub fn raise() -> u64 {
    let (soft, hard) = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the open-file limit; assuming 1024");
            return 1024;
        }
    };
    if soft >= hard {
        return soft;
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => {
            tracing::info!(
                from = soft,
                to = hard,
                "open-file limit raised to the hard limit"
            );
            hard
        }
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
            soft
        }
    }
}

/// Descriptors kept for everything but intercepted connections.
fn reserve(nofile: u64) -> u64 {
    (nofile / 8).max(64)
}

/// Connections each of `ports` intercepted ports may hold at once.
pub fn per_port(nofile: u64, ports: usize) -> usize {
    let left = nofile.saturating_sub(reserve(nofile));
    let per_port = left / 2 / ports.max(1) as u64;
    per_port.clamp(1, usize::MAX as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intercepted_connections_leave_room_for_the_api() {
        // 256 descriptors, one port: 96 connections (192 descriptors), 64 kept.
        assert_eq!(per_port(256, 1), 96);
        assert_eq!(per_port(1024, 2), 224);
        assert_eq!(per_port(1 << 20, 4), 114_688);
        assert_eq!(per_port(10, 3), 1);
    }
}
