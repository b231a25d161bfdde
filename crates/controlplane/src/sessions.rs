//! The session registry: every open session, how many each client holds, and the one way
//! a session ends. Which ports a session holds is the port locks' business
//! ([`crate::locks`]); a session entry owns its [`Grant`] and its copy, and ending the
//! session releases both, in that order (traffic goes back first, then the copy goes).

use crate::backend::TargetCopy;
use crate::context::SessionContext;
use crate::locks::{Grant, Hold, PortLocks, Taken};
use crate::refusal::Refusal;
use mirrord_protocol::{CopyInfo, PortMode, PortOutcome, SessionId, SessionInfo};
use mirrord_telemetry::{Event, SessionMeta, Telemetry};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// The registry's messages to one session's watchdog. They are rare (an end, a lost port),
/// so this queue allocates nothing until used: a channel would preallocate a block of 32
/// slots and its shared state (~1.5 KB) for every idle session.
#[derive(Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Control>>,
    ready: Notify,
}

impl Mailbox {
    fn send(&self, c: Control) {
        self.queue.lock().expect("mailbox lock").push_back(c);
        // Stores a permit when nobody waits, so a message sent before `recv` is not missed.
        self.ready.notify_one();
    }

    /// The next message, waiting for one.
    pub async fn recv(&self) -> Control {
        loop {
            if let Some(c) = self.queue.lock().expect("mailbox lock").pop_front() {
                return c;
            }
            self.ready.notified().await;
        }
    }
}

/// When a session ends by itself, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub cause: DeadlineCause,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineCause {
    /// `sessions.max_session_time` (this long).
    MaxSessionTime(Duration),
    /// The client's certificate expires (its `notAfter`).
    CredentialExpiry(std::time::SystemTime),
}

impl Deadline {
    /// The earlier of the session's time limit and its credential's expiry.
    pub fn first(
        now: Instant,
        max_session_time: Option<Duration>,
        credential_expires: Option<std::time::SystemTime>,
    ) -> Option<Self> {
        let by_time = max_session_time.map(|d| Deadline {
            at: now + d,
            cause: DeadlineCause::MaxSessionTime(d),
        });
        let by_credential = credential_expires.map(|t| Deadline {
            at: now
                + t.duration_since(std::time::SystemTime::now())
                    .unwrap_or_default(),
            cause: DeadlineCause::CredentialExpiry(t),
        });
        match (by_time, by_credential) {
            (Some(a), Some(b)) => Some(if b.at < a.at { b } else { a }),
            (a, b) => a.or(b),
        }
    }

    /// The reason the session ends with (the client's message and `Session Ended`'s).
    pub fn reason(&self) -> String {
        match self.cause {
            DeadlineCause::MaxSessionTime(d) => {
                format!(
                    "max session time reached ({})",
                    humantime::format_duration(d)
                )
            }
            DeadlineCause::CredentialExpiry(t) => format!(
                "credential expired at {}; ask an admin for a new one",
                humantime::format_rfc3339_seconds(t)
            ),
        }
    }
}

/// What the registry tells a session's actor.
#[derive(Debug)]
pub enum Control {
    /// The session was ended elsewhere (killed, operator shutting down): tell the client.
    Ended(String),
    /// Another session took this port over.
    PortLost { port: u16, reason: String },
    /// Something the client should be told (another user's filter now overlaps theirs).
    Notice(String),
}

pub struct SessionEntry {
    pub id: SessionId,
    pub meta: Arc<SessionMeta>,
    /// The target's key in the port locks.
    pub target_key: String,
    pub started: Instant,
    /// When the session will be ended, and why (its maximum time, its credential's expiry).
    pub deadline: Option<Deadline>,
    /// Boxed: most sessions make no copy, and each entry lives as long as its session.
    pub copy_info: Option<Box<CopyInfo>>,
    pub ping: Mutex<Option<Duration>>,
    grant: Mutex<Option<Grant>>,
    copy: Mutex<Option<Box<dyn TargetCopy>>>,
    /// What the session's process gets of the target (boxed: most sessions have none).
    pub context: Option<Box<SessionContext>>,
    /// Read by the session's watchdog.
    pub ctl: Mailbox,
    slot: Mutex<ClientSlot>,
    /// Per target port the session holds by a Service's port: that port. The client is
    /// handed traffic under the port it asked for.
    service_ports: Mutex<BTreeMap<u16, u16>>,
}

/// Everything a new entry is made of.
pub struct NewEntry {
    pub id: SessionId,
    pub meta: Arc<SessionMeta>,
    pub deadline: Option<Deadline>,
    pub grant: Grant,
    pub copy: Option<Box<dyn TargetCopy>>,
    pub copy_info: Option<CopyInfo>,
    pub context: Option<SessionContext>,
    pub slot: ClientSlot,
    /// Per target port, the Service's port the session asked for it by.
    pub service_ports: BTreeMap<u16, u16>,
}

impl SessionEntry {
    pub fn new(e: NewEntry) -> Arc<Self> {
        Arc::new(Self {
            id: e.id,
            meta: e.meta,
            target_key: e.grant.target().to_owned(),
            started: Instant::now(),
            deadline: e.deadline,
            copy_info: e.copy_info.map(Box::new),
            ping: Mutex::new(None),
            grant: Mutex::new(Some(e.grant)),
            copy: Mutex::new(e.copy),
            context: e.context.map(Box::new),
            ctl: Mailbox::default(),
            slot: Mutex::new(e.slot),
            service_ports: Mutex::new(e.service_ports),
        })
    }

    /// More target ports held by a Service's port (before their routes go in).
    pub fn name_ports(&self, service_ports: BTreeMap<u16, u16>) {
        let mut m = self.service_ports.lock().expect("service ports lock");
        m.extend(service_ports);
    }

    /// The Service's port the session holds target port `port` by, if any.
    pub fn service_port(&self, port: u16) -> Option<u16> {
        let m = self.service_ports.lock().expect("service ports lock");
        m.get(&port).copied()
    }

    /// The port the client knows target port `port` by: the Service's it asked for, or
    /// `port` itself.
    pub fn client_port(&self, port: u16) -> u16 {
        let m = self.service_ports.lock().expect("service ports lock");
        m.get(&port).copied().unwrap_or(port)
    }

    /// Ports added to the open session: their grant joins the session's (released with it),
    /// their filters' regexes its share of the client's budget. `false` (the grant is
    /// released) when the session has ended meanwhile.
    pub fn add_grant(&self, more: Grant, regexes: &[(u16, usize)]) -> bool {
        let mut grant = self.grant.lock().expect("grant lock");
        match grant.as_mut() {
            Some(g) => {
                g.absorb(more);
                self.slot.lock().expect("slot lock").hold(regexes);
                true
            }
            None => false,
        }
    }

    /// Gives back `ports` of this session's (its process stopped listening on them); returns
    /// what it held of them.
    pub fn release_ports(&self, ports: &[u16]) -> Vec<crate::locks::Hold> {
        let released = match self.grant.lock().expect("grant lock").as_mut() {
            Some(g) => g.release_ports(ports),
            None => return Vec::new(),
        };
        let gone: Vec<u16> = released.iter().map(|h| h.port).collect();
        self.slot.lock().expect("slot lock").release(&gone);
        let mut named = self.service_ports.lock().expect("service ports lock");
        named.retain(|p, _| !gone.contains(p));
        released
    }

    /// Whether the client may hold `regexes` more filter regexes.
    pub fn may_hold(&self, regexes: usize, limit: usize) -> Result<(), Refusal> {
        self.slot
            .lock()
            .expect("slot lock")
            .may_hold(regexes, limit)
    }

    pub fn user_display(&self) -> String {
        let c = &self.meta.client;
        format!("{}/{}@{}", c.client_name, c.client_user, c.client_hostname)
    }
}

/// What one client holds across its sessions.
#[derive(Default)]
struct Usage {
    sessions: usize,
    regexes: usize,
}

/// One of a client's sessions (open or opening) and the filter regexes it holds; given
/// back when dropped.
pub struct ClientSlot {
    usage: Arc<Mutex<HashMap<String, Usage>>>,
    client_id: String,
    regexes: usize,
    /// The regexes of ports added to the open session, by port: given back with the port.
    added: HashMap<u16, usize>,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut usage = self.usage.lock().expect("slots lock");
        if let Some(u) = usage.get_mut(&self.client_id) {
            u.sessions -= 1;
            u.regexes -= self.regexes;
            if u.sessions == 0 {
                usage.remove(&self.client_id);
            }
        }
    }
}

impl ClientSlot {
    fn may_hold(&self, regexes: usize, limit: usize) -> Result<(), Refusal> {
        let usage = self.usage.lock().expect("slots lock");
        let held = usage.get(&self.client_id).map_or(0, |u| u.regexes);
        match held + regexes > limit {
            true => Err(Refusal::Limit(format!(
                "these ports' filters have {regexes} regexes and your sessions hold {held}; this operator allows {limit} per client"
            ))),
            false => Ok(()),
        }
    }

    /// Ports added to the session, with their filters' regexes.
    fn hold(&mut self, per_port: &[(u16, usize)]) {
        let mut usage = self.usage.lock().expect("slots lock");
        if let Some(u) = usage.get_mut(&self.client_id) {
            for (port, regexes) in per_port {
                u.regexes += regexes;
                self.regexes += regexes;
                *self.added.entry(*port).or_default() += regexes;
            }
        }
    }

    /// Ports given back: their regexes leave the client's budget.
    fn release(&mut self, ports: &[u16]) {
        let freed: usize = ports.iter().filter_map(|p| self.added.remove(p)).sum();
        let mut usage = self.usage.lock().expect("slots lock");
        if let Some(u) = usage.get_mut(&self.client_id) {
            u.regexes -= freed;
            self.regexes -= freed;
        }
    }
}

/// How much a client may hold.
pub struct ClientLimits {
    pub sessions: usize,
    pub regexes: usize,
}

pub struct Sessions {
    map: Mutex<HashMap<SessionId, Arc<SessionEntry>>>,
    per_client: Arc<Mutex<HashMap<String, Usage>>>,
    locks: Arc<PortLocks>,
    telemetry: Telemetry,
}

impl Sessions {
    pub fn new(telemetry: Telemetry, locks: Arc<PortLocks>) -> Self {
        Self {
            map: Mutex::default(),
            per_client: Arc::default(),
            locks,
            telemetry,
        }
    }

    /// Counts one more session holding `regexes` filter regexes for `client_id`, or
    /// refuses when that would go beyond `limits`.
    pub fn reserve_slot(
        &self,
        client_id: &str,
        regexes: usize,
        limits: ClientLimits,
    ) -> Result<ClientSlot, Refusal> {
        let mut usage = self.per_client.lock().expect("slots lock");
        let u = usage.entry(client_id.to_owned()).or_default();
        if u.sessions >= limits.sessions {
            return Err(Refusal::Limit(format!(
                "you already have {} sessions open, the most this operator allows per client; end one (mirrordctl sessions list / kill) and retry",
                u.sessions
            )));
        }
        if u.regexes + regexes > limits.regexes {
            let held = u.regexes;
            if u.sessions == 0 {
                usage.remove(client_id);
            }
            return Err(Refusal::Limit(format!(
                "this session's filters have {regexes} regexes and your other sessions hold {held}; this operator allows {} per client",
                limits.regexes
            )));
        }
        u.sessions += 1;
        u.regexes += regexes;
        Ok(ClientSlot {
            usage: Arc::clone(&self.per_client),
            client_id: client_id.to_owned(),
            regexes,
            added: HashMap::new(),
        })
    }

    pub fn new_id(&self) -> SessionId {
        let map = self.map.lock().expect("sessions lock");
        loop {
            let id = SessionId(rand::random::<u64>());
            if id.0 != 0 && !map.contains_key(&id) {
                return id;
            }
        }
    }

    pub fn insert(&self, entry: Arc<SessionEntry>) {
        self.map
            .lock()
            .expect("sessions lock")
            .insert(entry.id, entry);
    }

    pub fn get(&self, id: SessionId) -> Option<Arc<SessionEntry>> {
        self.map.lock().expect("sessions lock").get(&id).cloned()
    }

    pub fn list(&self) -> Vec<Arc<SessionEntry>> {
        let mut v: Vec<_> = self
            .map
            .lock()
            .expect("sessions lock")
            .values()
            .cloned()
            .collect();
        v.sort_by_key(|e| e.started);
        v
    }

    /// The ports `entry` holds now.
    pub fn holds(&self, entry: &SessionEntry) -> Vec<Hold> {
        self.locks.holds(&entry.target_key, entry.id)
    }

    /// Ends a session: gives its ports back to the target, removes its copy (restoring
    /// scaled-down originals), records Port Released and Session Ended, and tells its
    /// actor. Safe to call more than once; only the first call does anything.
    pub fn end(&self, id: SessionId, reason: &str) -> bool {
        let Some(entry) = self.map.lock().expect("sessions lock").remove(&id) else {
            return false;
        };
        let released = entry
            .grant
            .lock()
            .expect("grant lock")
            .take()
            .map(|mut g| g.release())
            .unwrap_or_default();
        for h in released {
            self.record_released(&entry.meta, &h);
        }
        drop(entry.copy.lock().expect("copy lock").take());
        self.telemetry.record(Event::SessionEnded {
            session: Arc::clone(&entry.meta),
            duration: entry.started.elapsed(),
            reason: reason.to_owned(),
        });
        entry.ctl.send(Control::Ended(reason.to_owned()));
        true
    }

    /// Gives back `ports` of session `id` and records each; returns the ports it held.
    pub fn release_ports(&self, id: SessionId, ports: &[u16]) -> Vec<u16> {
        let Some(entry) = self.get(id) else {
            return Vec::new();
        };
        let released = entry.release_ports(ports);
        for h in &released {
            self.record_released(&entry.meta, h);
        }
        released.iter().map(|h| h.port).collect()
    }

    /// A port was taken from its holder by `override`: record it and tell the holder.
    /// Returns the holder's session, if it is still open.
    pub fn port_taken(&self, taken: &Taken, by: &str) -> Option<Arc<SessionMeta>> {
        let holder = self.get(taken.hold.holder.session)?;
        self.record_released(&holder.meta, &taken.hold);
        let port = taken.hold.port;
        holder.ctl.send(Control::PortLost {
            port,
            reason: format!("port {port} was taken over by {by}"),
        });
        Some(Arc::clone(&holder.meta))
    }

    /// Tells session `id`'s client `message` (if the session is still there).
    pub fn notify(&self, id: SessionId, message: String) {
        if let Some(s) = self.get(id) {
            s.ctl.send(Control::Notice(message));
        }
    }

    fn record_released(&self, meta: &Arc<SessionMeta>, h: &Hold) {
        self.telemetry.record(Event::PortReleased {
            session: Arc::clone(meta),
            port: h.port,
            mode: match h.mode {
                PortMode::Steal => "steal",
                PortMode::Mirror => "mirror",
            },
            filtered: !h.filter.is_empty(),
        });
    }

    /// Sessions and copies, of the sessions `visible` admits.
    pub fn info(
        &self,
        visible: impl Fn(&SessionMeta) -> bool,
    ) -> (Vec<SessionInfo>, Vec<CopyInfo>) {
        let list: Vec<_> = self
            .list()
            .into_iter()
            .filter(|e| visible(&e.meta))
            .collect();
        let copies = list
            .iter()
            .filter_map(|e| e.copy_info.as_deref().cloned())
            .collect();
        let sessions = list.iter().map(|e| self.info_of(e)).collect();
        (sessions, copies)
    }

    fn info_of(&self, e: &SessionEntry) -> SessionInfo {
        SessionInfo {
            session_id: e.id,
            target: e.meta.target(),
            namespace: e.meta.target_namespace.clone(),
            client_id: e.meta.client.client_id.clone(),
            client_user: e.meta.client.client_user.clone(),
            client_name: e.meta.client.client_name.clone(),
            client_hostname: e.meta.client.client_hostname.clone(),
            ports: self
                .holds(e)
                .into_iter()
                .map(|h| PortOutcome {
                    port: h.port,
                    mode: h.mode,
                    filter: h.filter,
                    http_filter: h.spec,
                    skipped: None,
                    overlaps: h.overlaps,
                    service_port: e.service_port(h.port),
                })
                .collect(),
            duration_secs: e.started.elapsed().as_secs(),
            ping_ms: e.ping.lock().expect("ping lock").map(ping_millis),
            ends_in_secs: e
                .deadline
                .map(|d| d.at.saturating_duration_since(Instant::now()).as_secs()),
        }
    }
}

/// A round trip in milliseconds with microsecond precision: finer digits are noise, and a
/// short decimal reads back as the same number in every format `status` prints
/// (0.468016 written by one encoder came back as 0.46801600000000004 from another).
fn ping_millis(rtt: Duration) -> f64 {
    rtt.as_micros() as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ping_is_whole_microseconds() {
        assert_eq!(ping_millis(Duration::from_nanos(468_016)), 0.468);
        assert_eq!(
            ping_millis(Duration::from_micros(12_345)).to_string(),
            "12.345"
        );
    }
}
