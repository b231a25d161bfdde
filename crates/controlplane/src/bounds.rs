//! What a client may send: the size and grammar of every string in a request, checked
//! before anything else reads it.
//!
//! Every string a client sends ends up in log lines, events kept for the console, metric
//! labels and other users' `status` replies; unbounded, one client could make each of
//! those fail or grow for everyone. Limits follow the grammar the value stands for:
//! Kubernetes' own name limits for targets, RFC 9110's token grammar for methods.
//! Regexes are bounded where they are compiled (`limits.max_filter_*`).

use crate::refusal::Refusal;
use mirrord_protocol::{ClientHello, PortRequest, SessionRequest, TargetRef};

/// A resource kind (`deployment`, `statefulset`...): a DNS label's length.
pub const MAX_KIND_LEN: usize = 63;
/// A Kubernetes object name: a DNS subdomain's length (RFC 1123), the longest any kind allows.
pub const MAX_NAME_LEN: usize = 253;
/// A namespace, or a container's name: a DNS label's length.
pub const MAX_NAMESPACE_LEN: usize = 63;
/// An HTTP method in a filter. The registered ones are at most 17 bytes
/// (`VERSION-CONTROL`); this leaves room for extension methods.
pub const MAX_METHOD_LEN: usize = 32;
/// Session ids in one `sessions kill` request.
pub const MAX_KILL_IDS: usize = 1024;
/// Environment include/exclude globs: a name pattern each (names are short).
pub const MAX_ENV_GLOB_LEN: usize = 256;
pub const MAX_ENV_GLOBS: usize = 256;
/// A name to resolve (RFC 1035's 253, and room for a trailing dot).
pub const MAX_DNS_NAME_LEN: usize = 255;
/// A path of the target's files (Linux's `PATH_MAX`).
pub const MAX_FILE_PATH_LEN: usize = 4096;

/// What the client says about itself (`client_name`, `client_hostname`, `cli_version`):
/// short, and printable on one line (a line break would forge a log line; U+2028/U+2029
/// break lines in editors and log viewers, bidi controls make text read as something else).
pub fn check_hello(h: &ClientHello, max: usize) -> Result<(), Refusal> {
    for (field, value) in [
        ("client_name", &h.client_name),
        ("client_hostname", &h.client_hostname),
        ("cli_version", &h.cli_version),
    ] {
        if value.len() > max {
            return Err(Refusal::Limit(format!(
                "{field} is {} bytes long; this operator accepts at most {max} (limits.max_client_label_len)",
                value.len()
            )));
        }
        printable(field, value)?;
    }
    Ok(())
}

/// The target and every filter method of a session request.
pub fn check_request(req: &SessionRequest) -> Result<(), Refusal> {
    check_target(&req.target)?;
    check_ports(&req.ports)?;
    for glob in req
        .context
        .env
        .iter()
        .flat_map(|e| e.include.iter().chain(&e.exclude))
    {
        if glob.len() > MAX_ENV_GLOB_LEN {
            return Err(Refusal::Limit(format!(
                "an environment include/exclude pattern is {} bytes long; at most {MAX_ENV_GLOB_LEN} are allowed",
                glob.len()
            )));
        }
        printable("environment pattern", glob)?;
    }
    let globs = req
        .context
        .env
        .as_ref()
        .map_or(0, |e| e.include.len() + e.exclude.len());
    if globs > MAX_ENV_GLOBS {
        return Err(Refusal::Limit(format!(
            "{globs} environment include/exclude patterns; at most {MAX_ENV_GLOBS} are allowed"
        )));
    }
    Ok(())
}

/// Ports asked for when a session opens or later.
pub fn check_ports(ports: &[PortRequest]) -> Result<(), Refusal> {
    for p in ports {
        for m in p.filter.iter().flat_map(|f| &f.method) {
            check_method(p.port, m)?;
        }
    }
    Ok(())
}

fn check_target(t: &TargetRef) -> Result<(), Refusal> {
    let container = t.container.as_deref().unwrap_or_default();
    for (field, value, max) in [
        ("target kind", t.kind.as_str(), MAX_KIND_LEN),
        ("target name", t.name.as_str(), MAX_NAME_LEN),
        ("namespace", t.namespace.as_str(), MAX_NAMESPACE_LEN),
        ("container", container, MAX_NAMESPACE_LEN),
    ] {
        if value.len() > max {
            return Err(Refusal::Limit(format!(
                "the {field} is {} bytes long; at most {max} are allowed (Kubernetes' own limit)",
                value.len()
            )));
        }
        printable(field, value)?;
    }
    Ok(())
}

fn check_method(port: u16, m: &str) -> Result<(), Refusal> {
    if m.len() > MAX_METHOD_LEN {
        return Err(Refusal::Limit(format!(
            "port {port}: a method filter of {} bytes; methods are at most {MAX_METHOD_LEN} bytes",
            m.len()
        )));
    }
    if m.is_empty() || !m.bytes().all(is_tchar) {
        return Err(Refusal::InvalidFilter(format!(
            "port {port}: invalid method filter `{}`: expected an HTTP method such as GET (RFC 9110 token characters)",
            m.escape_debug()
        )));
    }
    Ok(())
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Characters that must never reach a log line or a terminal from a client: controls
/// (newlines included), Unicode line and paragraph separators, bidi overrides.
pub fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

fn printable(field: &str, value: &str) -> Result<(), Refusal> {
    match value.chars().find(|c| unsafe_char(*c)) {
        None => Ok(()),
        Some(c) => Err(Refusal::BadRequest(format!(
            "the {field} {:?} contains {} (U+{:04X}); use printable characters",
            clip(value, 64),
            if c.is_control() {
                "control characters"
            } else {
                "a line separator or bidi control"
            },
            c as u32
        ))),
    }
}

/// `s` cut to at most `max` bytes (at a character boundary), marked when cut: for what a
/// refused request is logged with, which may be over its limit.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::{ConcurrentSteal, HttpFilterSpec, PortMode, PortRequest};

    fn hello(name: &str, host: &str) -> ClientHello {
        ClientHello {
            protocol_version: mirrord_protocol::PROTOCOL_VERSION,
            cli_version: "0.1.0".into(),
            client_name: name.into(),
            client_hostname: host.into(),
        }
    }

    fn request(name: &str, methods: &[&str]) -> SessionRequest {
        SessionRequest {
            target: TargetRef {
                kind: "deployment".into(),
                name: name.into(),
                namespace: "default".into(),
                container: None,
            },
            ports: vec![PortRequest {
                port: 80,
                mode: PortMode::Steal,
                filter: Some(HttpFilterSpec {
                    method: methods.iter().map(|m| m.to_string()).collect(),
                    ..Default::default()
                }),
            }],
            on_concurrent_steal: ConcurrentSteal::Abort,
            copy_target: false,
            scale_down: false,
            context: Default::default(),
            listen: false,
            profile: None,
        }
    }

    #[test]
    fn labels_are_short_and_printable() {
        assert!(check_hello(&hello("Ada Lovelace", "laptop"), 64).is_ok());
        let e = check_hello(&hello("Ada\nINFO forged line", "laptop"), 64).unwrap_err();
        assert!(e.to_string().contains("client_name") && e.to_string().contains("control"));
        let e = check_hello(&hello("a", &"h".repeat(65)), 64).unwrap_err();
        assert!(matches!(e, Refusal::Limit(_)), "{e:?}");
        assert!(e.to_string().contains("client_hostname is 65 bytes"), "{e}");
        for sneaky in ["bob\u{2028}x", "bob\u{2029}", "\u{202E}toor", "a\u{85}b"] {
            let e = check_hello(&hello(sneaky, "laptop"), 64).unwrap_err();
            assert_eq!(e.reason(), "bad_request", "{sneaky:?}: {e}");
        }
    }

    #[test]
    fn targets_and_methods_are_bounded_by_their_grammar() {
        assert!(check_request(&request("api", &["GET", "PROPFIND", "M-SEARCH"])).is_ok());
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            check_request(&request(&long, &[])),
            Err(Refusal::Limit(_))
        ));
        let method = "G".repeat(MAX_METHOD_LEN + 1);
        let e = check_request(&request("api", &[&method])).unwrap_err();
        assert!(matches!(e, Refusal::Limit(_)), "{e:?}");
        assert!(e.to_string().len() < 200, "the message is bounded: {e}");
        for bad in ["G T", "", "GET\r\n", "GÉT"] {
            assert!(
                matches!(
                    check_request(&request("api", &[bad])),
                    Err(Refusal::InvalidFilter(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn clips_at_a_character_boundary() {
        assert_eq!(clip("short", 10), "short");
        assert_eq!(clip("ééé", 3), "é... (6 bytes)");
    }
}
