//! One filter regex, compiled by the engine it needs: `regex` (linear time, no backtracking)
//! for every pattern it accepts, fancy-regex (look-around, backreferences: a backtracking
//! engine with a step limit) only for the others. Both read the same syntax and fancy-regex
//! hands plain patterns to `regex` anyway: choosing here saves its wrapper on the common
//! path (measured in `plain_patterns_cost_what_regex_costs`).

use super::{Check, FilterError, FilterLimits, Limited};

#[derive(Debug, Clone)]
pub enum Pattern {
    Plain(regex::Regex),
    Fancy(fancy_regex::Regex),
}

impl Pattern {
    pub fn compile(
        kind: &'static str,
        pattern: &str,
        limits: &FilterLimits,
    ) -> Result<Self, FilterError> {
        let too_big = || {
            FilterError::TooLarge(format!(
                "{kind} filter `{pattern}` compiles to more than {} bytes, this operator's limit; simplify it",
                limits.regex_size
            ))
        };
        let plain = regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .size_limit(limits.regex_size)
            .dfa_size_limit(limits.regex_size)
            .build();
        match plain {
            Ok(re) => return Ok(Pattern::Plain(re)),
            Err(regex::Error::CompiledTooBig(_)) => return Err(too_big()),
            Err(_) => {}
        }
        fancy_regex::RegexBuilder::new(pattern)
            .case_insensitive(true)
            .backtrack_limit(limits.backtrack_limit)
            .delegate_size_limit(limits.regex_size)
            .delegate_dfa_size_limit(limits.regex_size)
            .build()
            .map(Pattern::Fancy)
            .map_err(|e| match &e {
                fancy_regex::Error::CompileError(c) if fancy_too_big(c) => too_big(),
                _ => FilterError::Regex {
                    kind,
                    pattern: pattern.to_owned(),
                    reason: e
                        .to_string()
                        .lines()
                        .last()
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                },
            })
    }

    /// Whether the pattern matches `text`; the backtracking limit (or any other run-time
    /// failure of the backtracking engine) is reported, never taken as a match.
    pub fn is_match(&self, text: &str) -> Check {
        match self {
            Pattern::Plain(re) => Ok(re.is_match(text)),
            Pattern::Fancy(re) => re.is_match(text).map_err(|_| Limited),
        }
    }
}

fn fancy_too_big(e: &fancy_regex::CompileError) -> bool {
    match e {
        fancy_regex::CompileError::InnerError(b) => b.size_limit().is_some(),
        fancy_regex::CompileError::PatternTooComplex => true,
        _ => false,
    }
}
