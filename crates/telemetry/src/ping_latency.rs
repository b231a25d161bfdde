//! `mirrord_operator_ping_latency`: one histogram per session, kept and written out here
//! rather than by the `prometheus` crate.
//!
//! It is the exposition's bulk: 18 lines per session (15 buckets, `+Inf`, sum, count), so
//! 180,000 lines at 10,000 sessions. Through the crate, each series cost ~1.1 KB of objects
//! (label pairs, two bucket shards, a descriptor) and every scrape built a protobuf-like
//! copy of all of them (a `String` per label and per printed value), which made a scrape
//! at 10,000 sessions 84-200 ms and left tens of MB of freed heap behind. Here a series is
//! its label text, escaped once, and 17 numbers, and a scrape writes the text straight
//! from them. The text is what the crate's encoder printed for the same data (a test
//! checks it line for line).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

pub const NAME: &str = "mirrord_operator_ping_latency";
pub const HELP: &str = "Histogram for round trip latency between CLI and Operator";

/// Ping round trips: 100 µs to 5 s.
pub const BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// The family: every live session's series, by session id.
pub struct PingLatency {
    /// `le` label values, as the text format prints them.
    le: Vec<String>,
    series: Mutex<BTreeMap<Box<str>, Arc<Series>>>,
}

pub struct Series {
    /// `k8s_user="..",session_id="..",target=".."`, escaped, in label-name order.
    labels: Box<str>,
    counts: Mutex<Counts>,
}

#[derive(Clone, Copy, Default)]
struct Counts {
    /// Per bucket, not cumulative (made cumulative when written).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Default for PingLatency {
    fn default() -> Self {
        Self {
            le: BUCKETS.iter().map(f64::to_string).collect(),
            series: Mutex::default(),
        }
    }
}

impl PingLatency {
    /// The session's series, created (empty) if it does not exist yet.
    pub fn series(&self, session_id: &str, user: &str, target: &str) -> Arc<Series> {
        let mut map = self.series.lock().expect("ping series lock");
        if let Some(s) = map.get(session_id) {
            return Arc::clone(s);
        }
        let labels = format!(
            "k8s_user=\"{}\",session_id=\"{}\",target=\"{}\"",
            escape(user),
            escape(session_id),
            escape(target)
        );
        let s = Arc::new(Series {
            labels: labels.into_boxed_str(),
            counts: Mutex::default(),
        });
        map.insert(session_id.into(), Arc::clone(&s));
        s
    }

    pub fn observe(&self, session_id: &str, user: &str, target: &str, secs: f64) {
        self.series(session_id, user, target).observe(secs);
    }

    pub fn remove(&self, session_id: &str) {
        self.series
            .lock()
            .expect("ping series lock")
            .remove(session_id);
    }

    /// The series to write, in the order the crate's encoder printed them (by label text),
    /// taken under the lock so that writing them holds it for no time at all.
    pub fn snapshot(&self) -> Vec<Arc<Series>> {
        let mut all: Vec<_> = self
            .series
            .lock()
            .expect("ping series lock")
            .values()
            .cloned()
            .collect();
        all.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        all
    }

    /// `# HELP` and `# TYPE`.
    pub fn write_header(out: &mut Vec<u8>) {
        let _ = write!(out, "# HELP {NAME} {HELP}\n# TYPE {NAME} histogram\n");
    }

    /// One series' 18 lines.
    pub fn write_series(&self, s: &Series, out: &mut Vec<u8>) {
        let c = *s.counts.lock().expect("ping counts lock");
        let mut num = itoa::Buffer::new();
        let mut cumulative = 0u64;
        for (n, le) in c.buckets.iter().zip(&self.le) {
            cumulative += n;
            line(out, "_bucket", &s.labels, Some(le), num.format(cumulative));
        }
        line(out, "_bucket", &s.labels, Some("+Inf"), num.format(c.count));
        let mut sum = String::new();
        let _ = std::fmt::Write::write_fmt(&mut sum, format_args!("{}", c.sum));
        line(out, "_sum", &s.labels, None, &sum);
        line(out, "_count", &s.labels, None, num.format(c.count));
    }
}

impl Series {
    pub fn observe(&self, secs: f64) {
        let mut c = self.counts.lock().expect("ping counts lock");
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            c.buckets[i] += 1;
        }
        c.count += 1;
        c.sum += secs;
    }
}

fn line(out: &mut Vec<u8>, suffix: &str, labels: &str, le: Option<&str>, value: &str) {
    out.extend_from_slice(NAME.as_bytes());
    out.extend_from_slice(suffix.as_bytes());
    out.push(b'{');
    out.extend_from_slice(labels.as_bytes());
    if let Some(le) = le {
        out.extend_from_slice(b",le=\"");
        out.extend_from_slice(le.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"} ");
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// A label value as the text format needs it: `\`, newline and `"` escaped.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '\n', '"']) {
        return v.into();
    }
    let mut s = String::with_capacity(v.len() + 8);
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{Encoder, HistogramOpts, HistogramVec, Registry, TextEncoder};

    /// Same observations, same labels (awkward ones included): the same text as the
    /// `prometheus` crate's encoder printed before this family moved out of it.
    #[test]
    fn writes_what_the_prometheus_crate_wrote() {
        let reg = Registry::new();
        let vec = HistogramVec::new(
            HistogramOpts::new(NAME, HELP).buckets(BUCKETS.to_vec()),
            &["session_id", "k8s_user", "target"],
        )
        .unwrap();
        reg.register(Box::new(vec.clone())).unwrap();
        let ours = PingLatency::default();
        let sessions = [
            ("00000000000000AB", "alice", "deployment/api"),
            ("00000000000000AC", "bob \"the\" \\ builder\nx", "pod/p"),
            ("0000000000000001", "alice", "deployment/api"),
            ("00000000000000FF", "carol", "statefulset/db"),
        ];
        let rtts = [
            0.00005,
            0.0001,
            0.0003,
            0.0042,
            0.7,
            1.0,
            3.0,
            9.5,
            0.000123456789,
        ];
        for (i, (id, user, target)) in sessions.iter().enumerate() {
            let _ = vec.with_label_values(&[id, user, target]);
            ours.series(id, user, target);
            for rtt in rtts.iter().skip(i * 2) {
                vec.with_label_values(&[id, user, target]).observe(*rtt);
                ours.observe(id, user, target, *rtt);
            }
        }
        let mut theirs = Vec::new();
        TextEncoder::new()
            .encode(&reg.gather(), &mut theirs)
            .unwrap();
        let mut mine = Vec::new();
        PingLatency::write_header(&mut mine);
        for s in ours.snapshot() {
            ours.write_series(&s, &mut mine);
        }
        assert_eq!(
            String::from_utf8(mine).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn removed_series_are_not_written() {
        let p = PingLatency::default();
        p.observe("A", "alice", "deployment/api", 0.001);
        p.series("B", "bob", "deployment/api");
        p.remove("A");
        let names: Vec<_> = p.snapshot().iter().map(|s| s.labels.to_string()).collect();
        assert_eq!(
            names,
            ["k8s_user=\"bob\",session_id=\"B\",target=\"deployment/api\""]
        );
    }
}
