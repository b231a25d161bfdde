//! Fields of the human-readable log format, written so that a value can never pass for
//! another field or another line.
//!
//! tracing-subscriber's default writes a Display value as it is: a client name
//! `bob" client_user=root x="` then reads as `client_user=root`. Here a value is written
//! bare only when it is one plain word; anything else is quoted with Rust's escapes
//! (quotes, backslashes, line breaks, U+2028 and other unprintable characters escaped).
//! The message itself is our own text, but may quote client input: its line breaks are
//! escaped so one event is always one line. (The JSON format escapes through serde.)

use std::fmt::{self, Write as _};
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::FormatFields;

/// The human-readable format's field formatter (`fmt::layer().fmt_fields(SafeFields)`).
#[derive(Debug, Default, Clone, Copy)]
pub struct SafeFields;

impl<'writer> FormatFields<'writer> for SafeFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut v = Visitor {
            writer,
            first: true,
            result: Ok(()),
        };
        fields.record(&mut v);
        v.result
    }
}

struct Visitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl Visitor<'_> {
    fn write(&mut self, field: &Field, value: &str, debug: bool) {
        if self.result.is_err() {
            return;
        }
        let sep = if self.first { "" } else { " " };
        self.first = false;
        let name = field.name();
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", one_line(value))
        } else if is_word(value) || (debug && is_quoted_literal(value)) {
            write!(self.writer, "{sep}{name}={value}")
        } else {
            write!(self.writer, "{sep}{name}=\"{}\"", value.escape_debug())
        };
    }
}

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Display values (`%x`) arrive here too: `debug` only allows a value that is
        // already a well-formed quoted literal to be written as it is.
        let text = format!("{value:?}");
        self.write(field, &text, true);
    }
}

/// A value safe to write bare: one word of characters that cannot start another field.
fn is_word(v: &str) -> bool {
    !v.is_empty()
        && v.chars()
            .all(|c| c.is_alphanumeric() || "-_.:/@+,()[]*%#~^".contains(c))
}

/// A Rust string literal as `{:?}` writes it: quoted, every inner quote escaped, nothing
/// unprintable left raw.
fn is_quoted_literal(v: &str) -> bool {
    let Some(inner) = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return false;
    };
    let mut escaped = false;
    for c in inner.chars() {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return false,
            (false, c) if needs_escape(c) => return false,
            _ => {}
        }
    }
    !escaped
}

fn needs_escape(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// The message with its line breaks (and U+2028/U+2029) escaped.
fn one_line(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return s.into();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c) {
            let _ = write!(out, "{}", c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn line(f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let w = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || w.clone())
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .fmt_fields(SafeFields)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        text.trim_start().to_owned()
    }

    #[test]
    fn a_value_cannot_pass_for_another_field() {
        let forged = "bob\" client_user=root x=\"";
        let l =
            line(|| tracing::info!(client_name = %forged, client_user = "bob", "Session Started"));
        assert_eq!(
            l,
            "Session Started client_name=\"bob\\\" client_user=root x=\\\"\" client_user=bob\n"
        );
        // Read as a logfmt reader would: the forged text stays inside client_name.
        let fields = logfmt(l.trim_end().trim_start_matches("Session Started "));
        assert_eq!(
            fields,
            vec![
                ("client_name".to_owned(), forged.to_owned()),
                ("client_user".to_owned(), "bob".to_owned())
            ]
        );
    }

    /// `key=value` pairs, values bare or quoted with backslash escapes.
    fn logfmt(line: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut chars = line.chars().peekable();
        while chars.peek().is_some() {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => value.push(chars.next().unwrap()),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                chars.next();
            } else {
                value = chars.by_ref().take_while(|c| *c != ' ').collect();
            }
            out.push((key.trim().to_owned(), value));
        }
        out
    }

    #[test]
    fn every_event_is_one_line() {
        let l = line(|| {
            tracing::info!(client_name = %"a\u{2028}b\nc", "x\ny {}", "z\u{2029}");
        });
        assert_eq!(l.lines().count(), 1, "{l:?}");
        assert!(l.contains("\\u{2028}") && l.contains("\\n"), "{l}");
    }

    #[test]
    fn plain_values_stay_plain_and_debug_strings_are_not_quoted_twice() {
        let l = line(|| {
            tracing::info!(port = 80, target = %"deployment/api", who = ?"alice", empty = "", "Port Stolen");
        });
        assert_eq!(
            l,
            "Port Stolen port=80 target=deployment/api who=\"alice\" empty=\"\"\n"
        );
    }
}
