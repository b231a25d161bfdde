//! What a filter's regex costs per header line: `regex` alone, fancy-regex (which hands a
//! pattern with no look-around to `regex`, behind a wrapper), and what the operator's
//! filters use (`regex` itself for such patterns), for the patterns filters are made of.
//! Printed as ratios against `regex`, measured in the same run (`bench/bounds.sh`).

use mirrord_dataplane::filter::compile_regex;
use mirrord_dataplane::FilterLimits;

pub fn run(rounds: usize) -> anyhow::Result<()> {
    let lines = [
        "host: api.default.svc.cluster.local:80",
        "user-agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36",
        "accept: text/html,application/xhtml+xml,application/xml;q=0.9",
        "x-user: alice",
        "baggage: k=v,mirrord-session=local-dev-123,other=1",
    ];
    for pattern in [
        "^x-user: alice$",
        "^baggage: .*mirrord-session=local-dev-123.*",
        "x-user: (alice|bob|carol)",
        "^/api/v[0-9]+/items",
    ] {
        let plain = regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .build()?;
        let fancy = fancy_regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .build()?;
        let ours = compile_regex("header", pattern, &FilterLimits::default())?;
        let time = |f: &dyn Fn(&str) -> bool| {
            let start = std::time::Instant::now();
            let mut hits = 0;
            for _ in 0..rounds {
                for l in &lines {
                    hits += f(std::hint::black_box(l)) as usize;
                }
            }
            std::hint::black_box(hits);
            start.elapsed().as_nanos() as f64 / (rounds * lines.len()) as f64
        };
        let a = time(&|l| plain.is_match(l));
        let b = time(&|l| fancy.is_match(l).unwrap_or(false));
        let c = time(&|l| ours.is_match(l).unwrap_or(false));
        println!(
            "{pattern:48} regex {a:5.1} ns/line; fancy-regex {b:5.1} (ratio {:.2}); filters {c:5.1} (ratio {:.2})",
            b / a,
            c / a
        );
    }
    Ok(())
}
