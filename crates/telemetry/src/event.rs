//! The functional events and their log lines.
//!
//! Field names are a contract (see `spec/monitoring.md`): dashboards query
//! `fields.message`, `fields.client_id`, `fields.session_id`, ... Every event carries
//! `target`, the four client fields, and `target_type`, `target_name`, `target_namespace`,
//! `client_cli_version`; the rest depend on the event.

use std::sync::Arc;
use std::time::Duration;

/// Who a session belongs to, as authenticated (`client_id`, `client_user`) and as reported
/// by the client (`client_name`, `client_hostname`, `cli_version`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    pub client_id: String,
    pub client_user: String,
    pub client_name: String,
    pub client_hostname: String,
    pub cli_version: String,
}

/// Everything an event needs to say about its session; shared by all its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionMeta {
    pub session_id: String,
    pub target_type: String,
    pub target_name: String,
    pub target_namespace: String,
    pub client: ClientInfo,
}

impl SessionMeta {
    /// `deployment/api`: the form users address targets by.
    pub fn target(&self) -> String {
        format!("{}/{}", self.target_type, self.target_name)
    }
}

#[derive(Debug, Clone)]
pub enum Event {
    SessionStarted {
        session: Arc<SessionMeta>,
    },
    SessionEnded {
        session: Arc<SessionMeta>,
        duration: Duration,
        reason: String,
    },
    PortStolen {
        session: Arc<SessionMeta>,
        port: u16,
        /// The filter as the user wrote it; empty when unfiltered.
        http_filter: String,
    },
    PortMirrored {
        session: Arc<SessionMeta>,
        port: u16,
        http_filter: String,
    },
    PortReleased {
        session: Arc<SessionMeta>,
        port: u16,
        mode: &'static str,
        filtered: bool,
    },
    TargetCopied {
        session: Arc<SessionMeta>,
        copy_name: String,
        scale_down: bool,
    },
    /// The operator measured a ping round trip to the session's client.
    PingLatency {
        session: Arc<SessionMeta>,
        rtt: Duration,
    },
    /// A session request was refused; `reason` is a metric label (conflict, policy,
    /// license, seats, bad_request).
    SessionRefused {
        reason: &'static str,
        client: ClientInfo,
        /// The target as requested (it may not exist).
        target_type: String,
        target_name: String,
        target_namespace: String,
        message: String,
    },
    /// Audit: a session was ended on request (`mirrordctl sessions kill`), by its owner or
    /// by an admin.
    SessionKilled {
        session: Arc<SessionMeta>,
        by: ClientInfo,
        by_role: &'static str,
    },
    /// Audit: a port was taken from its holder by `--on-concurrent-steal override`.
    PortTakenOver {
        /// The session that lost the port.
        session: Arc<SessionMeta>,
        port: u16,
        by: ClientInfo,
        by_role: &'static str,
        by_session: String,
    },
    /// Audit: something the caller's role does not allow was refused (a session refused
    /// for its role is `SessionRefused` with reason `forbidden`).
    RequestForbidden {
        client: ClientInfo,
        role: &'static str,
        /// What was asked, e.g. `kill session 1F2E...`.
        action: String,
        message: String,
    },
    /// Audit: the operator loaded a revocation list naming this credential; it can no
    /// longer connect and its sessions were ended.
    CredentialRevoked {
        client_user: String,
        client_id: String,
        role: &'static str,
        serial: String,
        revoked_by: String,
        sessions_ended: usize,
    },
}

/// A field's value, as every output writes it (numbers stay numbers in JSON and OTLP).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    Text(std::borrow::Cow<'a, str>),
    Number(u64),
    Flag(bool),
}

impl std::fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Text(t) => f.write_str(t),
            Value::Number(n) => write!(f, "{n}"),
            Value::Flag(b) => write!(f, "{b}"),
        }
    }
}

/// One event as its outputs write it, described once ([`Event::describe`]): the log line
/// (its message and fields), the console's feed and the OpenTelemetry span events read this
/// and nothing else, so they cannot disagree on a name or a field.
#[derive(Debug)]
pub struct Description<'a> {
    /// The log line's message (`Session Started`, ...).
    pub name: &'static str,
    /// The session the event is about; its fields ([`SessionMeta::fields`]) come first.
    pub session: Option<&'a SessionMeta>,
    /// The user the event is about: who besides admins may see it.
    pub owner: &'a str,
    /// The event's own fields, in the log line's order.
    pub fields: Vec<(&'static str, Value<'a>)>,
}

impl Description<'_> {
    /// Every field: the session's, then the event's own.
    pub fn all_fields(&self) -> Vec<(&'static str, Value<'_>)> {
        let mut all = self.session.map(SessionMeta::fields).unwrap_or_default();
        all.extend(self.fields.iter().cloned());
        all
    }
}

impl SessionMeta {
    /// The fields every event about a session carries, in the log line's order.
    pub fn fields(&self) -> Vec<(&'static str, Value<'_>)> {
        let t = |s: &str| Value::Text(s.to_owned().into());
        vec![
            ("target", Value::Text(self.target().into())),
            ("client_hostname", t(&self.client.client_hostname)),
            ("client_name", t(&self.client.client_name)),
            ("client_user", t(&self.client.client_user)),
            ("client_id", t(&self.client.client_id)),
            ("target_type", t(&self.target_type)),
            ("target_name", t(&self.target_name)),
            ("target_namespace", t(&self.target_namespace)),
            ("client_cli_version", t(&self.client.cli_version)),
            ("session_id", t(&self.session_id)),
        ]
    }
}

/// The one table of functional events: for each, its name, level, whose it is and its
/// fields (`name: kind = value`, kind `text`, `number` or `flag`). It makes both the log
/// line (tracing needs its fields spelled out at the call) and [`Event::describe`].
macro_rules! events {
    (
        sessions { $(
            $sv:ident { $($sb:ident),* } => $sname:literal, $slevel:ident,
                [ $( $sf:ident : $sk:ident = $se:expr ),* $(,)? ];
        )* }
        others { $(
            $ov:ident { $($ob:ident),* } => $oname:literal, $olevel:ident, owner = $oowner:expr,
                [ $( $of:ident : $ok:ident = $oe:expr ),* $(,)? ];
        )* }
    ) => {
        pub(crate) fn log(event: &Event) {
            match event {
                $(
                    #[allow(unused_variables)]
                    Event::$sv { session, $($sb,)* .. } => {
                        let s: &SessionMeta = session;
                        tracing::event!(
                            // The event's name: OpenTelemetry log records carry it as `event_name`.
                            name: $sname,
                            tracing::Level::$slevel,
                            target = %s.target(),
                            client_hostname = %s.client.client_hostname,
                            client_name = %s.client.client_name,
                            client_user = %s.client.client_user,
                            client_id = %s.client.client_id,
                            target_type = %s.target_type,
                            target_name = %s.target_name,
                            target_namespace = %s.target_namespace,
                            client_cli_version = %s.client.cli_version,
                            session_id = %s.session_id,
                            $( $sf = events!(@log $sk, $se), )*
                            $sname
                        )
                    }
                )*
                $(
                    #[allow(unused_variables)]
                    Event::$ov { $($ob,)* .. } => tracing::event!(
                        name: $oname,
                        tracing::Level::$olevel,
                        $( $of = events!(@log $ok, $oe), )*
                        $oname
                    ),
                )*
                Event::PingLatency { session, rtt } => tracing::trace!(
                    session_id = %session.session_id,
                    rtt_us = rtt.as_micros() as u64,
                    "ping"
                ),
            }
        }

        impl Event {
            /// The session the event is about, if any (without describing it).
            pub fn session(&self) -> Option<&SessionMeta> {
                match self {
                    $( Event::$sv { session, .. } => Some(session), )*
                    Event::PingLatency { session, .. } => Some(session),
                    $( Event::$ov { .. } => None, )*
                }
            }

            /// The event as its outputs write it; `None` for what is not a functional
            /// event (a ping).
            pub fn describe(&self) -> Option<Description<'_>> {
                match self {
                    $(
                        #[allow(unused_variables)]
                        Event::$sv { session, $($sb,)* .. } => Some(Description {
                            name: $sname,
                            session: Some(session),
                            owner: &session.client.client_user,
                            fields: vec![ $( (stringify!($sf), events!(@value $sk, $se)), )* ],
                        }),
                    )*
                    $(
                        #[allow(unused_variables)]
                        Event::$ov { $($ob,)* .. } => Some(Description {
                            name: $oname,
                            session: None,
                            owner: $oowner,
                            fields: vec![ $( (stringify!($of), events!(@value $ok, $oe)), )* ],
                        }),
                    )*
                    Event::PingLatency { .. } => None,
                }
            }
        }
    };
    (@log text, $e:expr) => { tracing::field::display(&$e) };
    (@log number, $e:expr) => { $e as u64 };
    (@log flag, $e:expr) => { $e };
    (@value text, $e:expr) => { Value::Text((&$e).to_string().into()) };
    (@value number, $e:expr) => { Value::Number($e as u64) };
    (@value flag, $e:expr) => { Value::Flag($e) };
}

events! {
    sessions {
        SessionStarted {} => "Session Started", INFO, [];
        SessionEnded { duration, reason } => "Session Ended", INFO, [
            session_duration: number = duration.as_secs(),
            reason: text = reason,
        ];
        PortStolen { port, http_filter } => "Port Stolen", INFO, [
            port: number = *port,
            http_filter: text = http_filter,
        ];
        PortMirrored { port, http_filter } => "Port Mirrored", INFO, [
            port: number = *port,
            http_filter: text = http_filter,
        ];
        PortReleased { port } => "Port Released", INFO, [port: number = *port];
        TargetCopied { copy_name, scale_down } => "Target Copied", INFO, [
            scale_down: flag = *scale_down,
            copy_name: text = copy_name,
        ];
        SessionKilled { by, by_role } => "Session Killed", INFO, [
            by_user: text = by.client_user,
            by_client_id: text = by.client_id,
            by_role: text = by_role,
        ];
        PortTakenOver { port, by, by_role, by_session } => "Port Taken Over", INFO, [
            port: number = *port,
            by_user: text = by.client_user,
            by_client_id: text = by.client_id,
            by_role: text = by_role,
            by_session: text = by_session,
        ];
    }
    others {
        SessionRefused { reason, client, target_type, target_name, target_namespace, message }
            => "Session Refused", WARN, owner = &client.client_user, [
            reason: text = reason,
            target: text = format_args!("{target_type}/{target_name}"),
            target_type: text = target_type,
            target_name: text = target_name,
            target_namespace: text = target_namespace,
            client_id: text = client.client_id,
            client_user: text = client.client_user,
            client_name: text = client.client_name,
            client_hostname: text = client.client_hostname,
            error: text = message,
        ];
        RequestForbidden { client, role, action, message }
            => "Request Forbidden", WARN, owner = &client.client_user, [
            reason: text = "forbidden",
            client_id: text = client.client_id,
            client_user: text = client.client_user,
            client_name: text = client.client_name,
            client_hostname: text = client.client_hostname,
            client_role: text = role,
            action: text = action,
            error: text = message,
        ];
        CredentialRevoked { client_user, client_id, role, serial, revoked_by, sessions_ended }
            => "Credential Revoked", INFO, owner = client_user, [
            client_user: text = client_user,
            client_id: text = client_id,
            client_role: text = role,
            serial: text = serial,
            revoked_by: text = revoked_by,
            sessions_ended: number = *sessions_ended,
        ];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};

    /// One logged event's fields: name, value as text (the message included).
    type Line = Vec<(String, String)>;

    /// The events logged.
    #[derive(Default, Clone)]
    struct Seen(Arc<Mutex<Vec<Line>>>);

    struct Fields<'a>(&'a mut Vec<(String, String)>);
    impl Visit for Fields<'_> {
        fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
            self.0.push((f.name().to_owned(), format!("{v:?}")));
        }
        fn record_str(&mut self, f: &Field, v: &str) {
            self.0.push((f.name().to_owned(), v.to_owned()));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Seen {
        fn on_event(&self, e: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Vec::new();
            e.record(&mut Fields(&mut fields));
            self.0.lock().unwrap().push(fields);
        }
    }

    fn client() -> ClientInfo {
        ClientInfo {
            client_id: "c1".into(),
            client_user: "alice".into(),
            client_name: "Alice".into(),
            client_hostname: "laptop".into(),
            cli_version: "0.1.0".into(),
        }
    }

    fn every_event() -> Vec<Event> {
        let session = Arc::new(SessionMeta {
            session_id: "00000000000000AB".into(),
            target_type: "deployment".into(),
            target_name: "api".into(),
            target_namespace: "default".into(),
            client: client(),
        });
        let s = || Arc::clone(&session);
        vec![
            Event::SessionStarted { session: s() },
            Event::SessionEnded {
                session: s(),
                duration: Duration::from_secs(42),
                reason: "bye".into(),
            },
            Event::PortStolen {
                session: s(),
                port: 80,
                http_filter: "header=x".into(),
            },
            Event::PortMirrored {
                session: s(),
                port: 81,
                http_filter: String::new(),
            },
            Event::PortReleased {
                session: s(),
                port: 80,
                mode: "steal",
                filtered: true,
            },
            Event::TargetCopied {
                session: s(),
                copy_name: "mirrord-copy-api".into(),
                scale_down: true,
            },
            Event::SessionKilled {
                session: s(),
                by: client(),
                by_role: "admin",
            },
            Event::PortTakenOver {
                session: s(),
                port: 80,
                by: client(),
                by_role: "admin",
                by_session: "CD".into(),
            },
            Event::SessionRefused {
                reason: "limit",
                client: client(),
                target_type: "deployment".into(),
                target_name: "api".into(),
                target_namespace: "default".into(),
                message: "too big".into(),
            },
            Event::RequestForbidden {
                client: client(),
                role: "developer",
                action: "kill".into(),
                message: "no".into(),
            },
            Event::CredentialRevoked {
                client_user: "alice".into(),
                client_id: "c1".into(),
                role: "developer",
                serial: "01".into(),
                revoked_by: "carol".into(),
                sessions_ended: 2,
            },
        ]
    }

    /// The log line and the description (which the feed and OTel read) have the same
    /// fields with the same values.
    #[test]
    fn every_log_line_is_its_description() {
        let seen = Seen::default();
        let sub = tracing_subscriber::registry().with(seen.clone());
        let events = every_event();
        tracing::subscriber::with_default(sub, || events.iter().for_each(log));
        let logged = seen.0.lock().unwrap().clone();
        assert_eq!(logged.len(), events.len());
        for (event, line) in events.iter().zip(logged) {
            let d = event.describe().expect("a functional event");
            let mut want: Vec<(String, String)> = d
                .all_fields()
                .into_iter()
                .map(|(n, v)| (n.to_owned(), v.to_string()))
                .collect();
            want.push(("message".into(), d.name.to_owned()));
            let mut got = line;
            got.sort();
            want.sort();
            assert_eq!(got, want, "{}", d.name);
        }
    }
}
