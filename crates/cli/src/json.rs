//! The `status --json` document: a stable contract for scripts, apart from the wire types
//! (which change with the protocol). Described in the README; any incompatible change
//! bumps [`SCHEMA_VERSION`]. Session ids are the 16-hex-digit strings the table and
//! `sessions kill` use (a u64 above 2^53 loses digits in jq and JavaScript).

use mirrord_protocol::{
    BodyFilterSpec, Caller, CopyInfo, FilterOverlap, HttpFilterSpec, LicenseSummary, PortOutcome,
    SessionInfo, StatusReport,
};
use serde::Serialize;

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Serialize)]
pub struct Status<'a> {
    schema_version: u32,
    operator_version: &'a str,
    /// Who asked, as the operator authenticated them: `client_user`, `client_id`, `role`.
    caller: &'a Caller,
    /// `null`: the operator enforces no license.
    license: Option<&'a LicenseSummary>,
    copies: Vec<Copy<'a>>,
    sessions: Vec<Session<'a>>,
    /// Sessions the operator left out because the report would not fit one frame.
    omitted_sessions: u64,
    /// The policies that bind the caller: `name`, `targets`, `rules`, `problem`.
    policies: &'a [mirrord_protocol::PolicyInfo],
}

#[derive(Serialize)]
struct Copy<'a> {
    session_id: String,
    original_target: &'a str,
    namespace: &'a str,
    copy_name: &'a str,
    scale_down: bool,
}

#[derive(Serialize)]
pub struct Session<'a> {
    session_id: String,
    target: &'a str,
    namespace: &'a str,
    client_id: &'a str,
    client_user: &'a str,
    client_name: &'a str,
    client_hostname: &'a str,
    ports: Vec<Port<'a>>,
    duration_secs: u64,
    ping_ms: Option<f64>,
    ends_in_secs: Option<u64>,
}

#[derive(Serialize)]
struct Port<'a> {
    /// The target's (pods') port, where the traffic is taken.
    port: u16,
    /// The Service's port the session asked for it by (omitted otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    service_port: Option<u16>,
    /// `"steal"` or `"mirror"`.
    mode: String,
    /// `null` when the port takes all traffic.
    filter: Option<Filter<'a>>,
    /// Other sessions' filtered steals on this port that match some of the same requests.
    overlaps: Vec<Overlap<'a>>,
}

#[derive(Serialize)]
struct Overlap<'a> {
    session_id: String,
    client_user: &'a str,
    filter: &'a str,
    /// `true`: that session subscribed first and gets the requests both filters match.
    first: bool,
    /// That filter matches every request.
    catch_all: bool,
    /// A request both filters match.
    example: &'a str,
}

#[derive(Serialize)]
struct Body<'a> {
    query: &'a str,
    matches: &'a str,
}

#[derive(Serialize)]
struct Filter<'a> {
    header: &'a [String],
    path: &'a [String],
    method: &'a [String],
    /// JSON body filters: a JSONPath `query` and the regex a selected value `matches`.
    body: Vec<Body<'a>>,
    /// `"all"`: every part must match; `"any"`: one is enough.
    combine: &'static str,
    /// Header regexes the operator's policies added: a stolen request matches each too.
    required_header: &'a [String],
    /// The filter as `status` shows it.
    text: &'a str,
}

impl<'a> Status<'a> {
    /// The `sessions` array alone (`sessions list -o json|yaml`).
    pub fn sessions(&self) -> &[Session<'a>] {
        &self.sessions
    }

    pub fn of(r: &'a StatusReport) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            operator_version: &r.operator_version,
            caller: &r.caller,
            license: r.license.as_ref(),
            copies: r.copies.iter().map(Copy::of).collect(),
            sessions: r.sessions.iter().map(Session::of).collect(),
            omitted_sessions: r.omitted_sessions,
            policies: &r.policies,
        }
    }
}

impl<'a> Copy<'a> {
    fn of(c: &'a CopyInfo) -> Self {
        Self {
            session_id: c.session_id.to_string(),
            original_target: &c.original_target,
            namespace: &c.namespace,
            copy_name: &c.copy_name,
            scale_down: c.scale_down,
        }
    }
}

impl<'a> Session<'a> {
    fn of(s: &'a SessionInfo) -> Self {
        Self {
            session_id: s.session_id.to_string(),
            target: &s.target,
            namespace: &s.namespace,
            client_id: &s.client_id,
            client_user: &s.client_user,
            client_name: &s.client_name,
            client_hostname: &s.client_hostname,
            ports: s.ports.iter().map(Port::of).collect(),
            duration_secs: s.duration_secs,
            ping_ms: s.ping_ms,
            ends_in_secs: s.ends_in_secs,
        }
    }
}

impl<'a> Port<'a> {
    fn of(p: &'a PortOutcome) -> Self {
        Self {
            port: p.port,
            service_port: p.service_port,
            mode: p.mode.to_string(),
            filter: p
                .http_filter
                .as_ref()
                .filter(|f| !f.is_empty())
                .map(|f| Filter::of(f, &p.filter)),
            overlaps: p.overlaps.iter().map(Overlap::of).collect(),
        }
    }
}

impl<'a> Filter<'a> {
    fn of(f: &'a HttpFilterSpec, text: &'a str) -> Self {
        Self {
            header: &f.header,
            path: &f.path,
            method: &f.method,
            body: f.body.iter().map(Body::of).collect(),
            combine: if f.any { "any" } else { "all" },
            required_header: &f.required_header,
            text,
        }
    }
}

impl<'a> Overlap<'a> {
    fn of(o: &'a FilterOverlap) -> Self {
        Self {
            session_id: o.session_id.to_string(),
            client_user: &o.client_user,
            filter: &o.filter,
            first: o.first,
            catch_all: o.catch_all,
            example: &o.example,
        }
    }
}

impl<'a> Body<'a> {
    fn of(b: &'a BodyFilterSpec) -> Self {
        Self {
            query: &b.query,
            matches: &b.matches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mirrord_protocol::{PortMode, SessionId};
    use serde_json::json;

    #[test]
    fn ids_are_hex_strings_modes_lowercase_filters_structured() {
        let spec = HttpFilterSpec {
            header: vec!["^x-user: alice$".into()],
            path: vec![],
            method: vec!["GET".into()],
            body: vec![],
            any: true,
            required_header: Vec::new(),
        };
        let r = StatusReport {
            operator_version: "0.1.0".into(),
            caller: Caller {
                client_user: "alice".into(),
                client_id: "cafe".into(),
                role: "developer".into(),
            },
            license: None,
            copies: vec![CopyInfo {
                original_target: "deployment/api".into(),
                namespace: "default".into(),
                copy_name: "mirrord-copy-api-0a1b2c3d".into(),
                scale_down: false,
                session_id: SessionId(u64::MAX - 1),
            }],
            sessions: vec![SessionInfo {
                session_id: SessionId(u64::MAX - 1),
                target: "deployment/api".into(),
                namespace: "default".into(),
                client_id: "cafe".into(),
                client_user: "alice".into(),
                client_name: "Alice".into(),
                client_hostname: "laptop".into(),
                ports: vec![
                    PortOutcome {
                        port: 80,
                        mode: PortMode::Steal,
                        filter: spec.to_string(),
                        http_filter: Some(spec.clone()),
                        skipped: None,
                        overlaps: vec![FilterOverlap {
                            session_id: SessionId(1),
                            client_user: "bob".into(),
                            filter: ".".into(),
                            first: true,
                            catch_all: true,
                            example: "GET /".into(),
                        }],
                        service_port: None,
                    },
                    PortOutcome {
                        port: 8080,
                        mode: PortMode::Mirror,
                        filter: String::new(),
                        http_filter: None,
                        skipped: None,
                        overlaps: vec![],
                        service_port: Some(80),
                    },
                ],
                duration_secs: 5,
                ping_ms: None,
                ends_in_secs: None,
            }],
            omitted_sessions: 0,
            policies: Vec::new(),
        };
        let v = serde_json::to_value(Status::of(&r)).unwrap();
        assert_eq!(v["schema_version"], 1);
        assert_eq!(v["copies"][0]["session_id"], "FFFFFFFFFFFFFFFE");
        let s = &v["sessions"][0];
        assert_eq!(s["session_id"], "FFFFFFFFFFFFFFFE");
        assert_eq!(
            s["ports"][0],
            json!({"port": 80, "mode": "steal", "filter": {
                "header": ["^x-user: alice$"], "path": [], "method": ["GET"], "body": [],
                "combine": "any", "required_header": [],
                "text": "header=^x-user: alice$ or method=GET"},
                "overlaps": [{"session_id": "0000000000000001", "client_user": "bob",
                    "filter": ".", "first": true, "catch_all": true, "example": "GET /"}]})
        );
        assert_eq!(
            s["ports"][1],
            json!({"port": 8080, "service_port": 80, "mode": "mirror", "filter": null, "overlaps": []})
        );
    }
}
