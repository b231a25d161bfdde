//! Log output: human-readable by default, tracing-subscriber's JSON layout when asked.
//!
//! Level: `RUST_LOG` (e.g. `mirrord=debug`) wins, then `OPERATOR_LOG_LEVEL` (a level or a
//! directive list), else `info`.
//!
//! Lines are written by a dedicated thread, so a slow stdout (a full pipe, a stalled log
//! shipper) never blocks a data-plane task. Ordinary lines wait in a bounded queue and are
//! dropped when it is full; functional events and warnings are never dropped. The writer
//! says how many lines it dropped, as a warning, once the pressure is over.

use crate::throttle::Throttle;
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use std::io::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::{filter_fn, FilterExt};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{fmt, EnvFilter, Layer, Registry};

/// Ordinary (droppable) lines that may wait for the writer thread.
pub const QUEUE_LINES: usize = 16 * 1024;

/// The module whose events are the functional log lines.
const FUNCTIONAL_TARGET: &str = "mirrord_telemetry::event";

struct Shared {
    tx: mpsc::Sender<Vec<u8>>,
    queued: AtomicUsize,
    dropped: AtomicU64,
    capacity: usize,
}

/// Creates one writer per event; the line is queued when the writer is dropped.
#[derive(Clone)]
pub struct QueueWriter {
    shared: Arc<Shared>,
}

pub struct LineWriter {
    shared: Arc<Shared>,
    buf: Vec<u8>,
    keep: bool,
}

impl Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let s = &self.shared;
        if !self.keep {
            if s.queued.fetch_add(1, Ordering::AcqRel) >= s.capacity {
                s.queued.fetch_sub(1, Ordering::AcqRel);
                s.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Marks the line as counted in `queued` (see the writer thread).
            self.buf.push(0);
        }
        let _ = s.tx.send(std::mem::take(&mut self.buf));
    }
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            shared: Arc::clone(&self.shared),
            buf: Vec::with_capacity(256),
            keep: true,
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        let mut w = self.make_writer();
        w.keep = meta.target() == FUNCTIONAL_TARGET || *meta.level() <= Level::WARN;
        w
    }
}

/// Keeps the writer thread alive; dropping it writes out what is queued.
pub struct LogGuard {
    shared: Option<Arc<Shared>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        // The subscriber holds another sender, so signal the end in-band.
        if let Some(s) = self.shared.take() {
            let _ = s.tx.send(Vec::new());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A queue writer over `out` with room for `capacity` droppable lines.
pub fn queue_writer(
    mut out: impl Write + Send + 'static,
    capacity: usize,
) -> (QueueWriter, LogGuard) {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let shared = Arc::new(Shared {
        tx,
        queued: AtomicUsize::new(0),
        dropped: AtomicU64::new(0),
        capacity,
    });
    let s = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("mirrord-log-writer".into())
        .spawn(move || {
            let write = |out: &mut dyn Write, mut line: Vec<u8>| {
                if line.last() == Some(&0) {
                    line.pop();
                    s.queued.fetch_sub(1, Ordering::AcqRel);
                }
                let _ = out.write_all(&line);
            };
            'outer: while let Ok(line) = rx.recv() {
                if line.is_empty() {
                    break;
                }
                write(&mut out, line);
                while let Ok(more) = rx.try_recv() {
                    if more.is_empty() {
                        break 'outer;
                    }
                    write(&mut out, more);
                }
                let _ = out.flush();
                let dropped = s.dropped.swap(0, Ordering::Relaxed);
                if dropped > 0 {
                    tracing::warn!(dropped, "log output could not keep up: dropped {dropped} log lines (functional events are never dropped)");
                }
            }
            while let Ok(line) = rx.try_recv() {
                if !line.is_empty() {
                    write(&mut out, line);
                }
            }
            let _ = out.flush();
        })
        .expect("spawn log writer thread");
    (
        QueueWriter {
            shared: Arc::clone(&shared),
        },
        LogGuard {
            shared: Some(shared),
            thread: Some(thread),
        },
    )
}

fn filter() -> EnvFilter {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .or_else(|| std::env::var("OPERATOR_LOG_LEVEL").ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "info".to_owned());
    EnvFilter::try_new(&spec).unwrap_or_else(|e| {
        eprintln!("invalid log filter `{spec}` ({e}); using `info`");
        EnvFilter::new("info")
    })
}

/// Where the OpenTelemetry SDK reports its own problems (export failures among them).
fn from_otel_sdk(meta: &Metadata<'_>) -> bool {
    meta.target().starts_with("opentelemetry")
}

/// The OpenTelemetry SDK's warnings and errors (a collector that cannot be reached, an
/// export refused), whatever the level filter says, at most a burst per minute: a broken
/// export must show, and must not flood the log while the collector is down.
struct ExportFailures(Throttle);

impl<S> Filter<S> for ExportFailures {
    fn enabled(&self, meta: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        from_otel_sdk(meta) && *meta.level() <= Level::WARN && self.0.admit().is_some()
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        match from_otel_sdk(meta) && *meta.level() <= Level::WARN {
            true => Interest::sometimes(),
            false => Interest::never(),
        }
    }
}

/// The log lines' filter: the level filter for our own events, [`ExportFailures`] for the
/// SDK's.
fn lines_filter<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>(
) -> impl Filter<S> {
    let ours = filter().and(filter_fn(|m| !from_otel_sdk(m)));
    ours.or(ExportFailures(Throttle::new(
        std::time::Duration::from_secs(60),
        5,
    )))
}

/// Installs the global subscriber writing to stdout; with `otel`, functional events are
/// also bridged to OpenTelemetry log records (same fields, same filter). Keep the guard
/// until exit.
pub fn init(json: bool, otel: Option<&SdkLoggerProvider>) -> LogGuard {
    let (writer, guard) = queue_writer(std::io::stdout(), QUEUE_LINES);
    let lines: Box<dyn Layer<Registry> + Send + Sync> = if json {
        fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(lines_filter())
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(false)
            .fmt_fields(crate::text_fields::SafeFields)
            .with_writer(writer)
            .with_filter(lines_filter())
            .boxed()
    };
    let records = otel.map(|provider| {
        OpenTelemetryTracingBridge::new(provider)
            .with_filter(filter())
            .with_filter(filter_fn(|m: &Metadata<'_>| {
                m.target() == FUNCTIONAL_TARGET && *m.level() <= Level::INFO
            }))
    });
    tracing_subscriber::registry()
        .with(lines)
        .with(records)
        .init();
    guard
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that blocks until released, like a full pipe.
    #[derive(Clone)]
    struct Gate(Arc<(Mutex<bool>, std::sync::Condvar)>, Arc<Mutex<Vec<u8>>>);
    impl Write for Gate {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let (lock, cv) = &*self.0;
            let mut open = lock.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            self.1.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_output_drops_ordinary_lines_but_never_functional_ones() {
        let gate = Gate(Arc::default(), Arc::default());
        let (writer, guard) = queue_writer(gate.clone(), 10);
        let sub = fmt()
            .with_writer(writer)
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, || {
            for i in 0..100 {
                tracing::debug!(target: "mirrord_dataplane::x", i, "noise");
            }
            for i in 0..50 {
                tracing::info!(target: "mirrord_telemetry::event", i, "Port Stolen");
            }
        });
        {
            let (lock, cv) = &*gate.0;
            *lock.lock().unwrap() = true;
            cv.notify_all();
        }
        drop(guard);
        let text = String::from_utf8(gate.1.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text.matches("Port Stolen").count(),
            50,
            "a functional event was lost"
        );
        let noise = text.matches("noise").count();
        assert!((1..=11).contains(&noise), "{noise} ordinary lines written");
    }
}
