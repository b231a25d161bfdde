//! Log output: human-readable by default, tracing-subscriber's JSON layout when asked.
//!
//! Level: `RUST_LOG` (e.g. `mirrord=debug`) wins, then `OPERATOR_LOG_LEVEL` (a level or a
//! directive list), else `info`.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init(json: bool) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("OPERATOR_LOG_LEVEL").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|e| {
        eprintln!("invalid log filter `{filter}` ({e}); using `info`");
        EnvFilter::new("info")
    });
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stdout);
    if json {
        builder
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .init();
    } else {
        builder.with_ansi(false).init();
    }
}
