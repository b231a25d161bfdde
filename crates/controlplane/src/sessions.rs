//! The session registry: every open session, what it holds, and the one way a session ends.

use crate::backend::TargetCopy;
use mirrord_dataplane::RouteTable;
use mirrord_protocol::{CopyInfo, PortMode, PortOutcome, SessionId, SessionInfo};
use mirrord_telemetry::{Event, SessionMeta, Telemetry};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A port a session holds, with the routes it is subscribed in.
pub struct ActivePort {
    pub port: u16,
    pub mode: PortMode,
    pub filter: String,
    pub routes: Arc<RouteTable>,
}

/// What the registry tells a session's task.
pub enum Control {
    /// The session was ended elsewhere (killed, operator shutting down): tell the client.
    Ended(String),
    /// Another session took this port over.
    PortLost { port: u16, reason: String },
}

pub struct SessionEntry {
    pub id: SessionId,
    pub meta: Arc<SessionMeta>,
    pub started: Instant,
    pub ports: Mutex<Vec<ActivePort>>,
    pub copy: Mutex<Option<Box<dyn TargetCopy>>>,
    pub copy_info: Option<CopyInfo>,
    pub ctl: mpsc::UnboundedSender<Control>,
    pub ping: Mutex<Option<Duration>>,
}

impl SessionEntry {
    pub fn user_display(&self) -> String {
        let c = &self.meta.client;
        format!("{}/{}@{}", c.client_name, c.client_user, c.client_hostname)
    }
}

pub struct Sessions {
    map: Mutex<HashMap<SessionId, Arc<SessionEntry>>>,
    telemetry: Telemetry,
}

impl Sessions {
    pub fn new(telemetry: Telemetry) -> Self {
        Self {
            map: Mutex::default(),
            telemetry,
        }
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

    /// Ends a session: releases its ports at once, removes its copy (restoring scaled-down
    /// originals), records Port Released and Session Ended, and tells its task. Safe to
    /// call more than once; only the first call does anything.
    pub fn end(&self, id: SessionId, reason: &str) -> bool {
        let Some(entry) = self.map.lock().expect("sessions lock").remove(&id) else {
            return false;
        };
        let ports = std::mem::take(&mut *entry.ports.lock().expect("ports lock"));
        for p in ports {
            self.release(&entry, p);
        }
        drop(entry.copy.lock().expect("copy lock").take());
        self.telemetry.record(Event::SessionEnded {
            session: Arc::clone(&entry.meta),
            duration: entry.started.elapsed(),
            reason: reason.to_owned(),
        });
        let _ = entry.ctl.send(Control::Ended(reason.to_owned()));
        true
    }

    /// Takes `port` away from `holder`'s steal (concurrent steal `override`).
    pub fn take_over(&self, holder: &SessionEntry, port: u16, by: &str) {
        let taken: Vec<ActivePort> = {
            let mut ports = holder.ports.lock().expect("ports lock");
            let (taken, kept) = std::mem::take(&mut *ports)
                .into_iter()
                .partition(|p| p.port == port && p.mode == PortMode::Steal);
            *ports = kept;
            taken
        };
        for p in taken {
            self.release(holder, p);
            let _ = holder.ctl.send(Control::PortLost {
                port,
                reason: format!("port {port} was taken over by {by}"),
            });
        }
    }

    fn release(&self, entry: &SessionEntry, p: ActivePort) {
        p.routes.remove_session(entry.id.0);
        self.telemetry.record(Event::PortReleased {
            session: Arc::clone(&entry.meta),
            port: p.port,
            mode: match p.mode {
                PortMode::Steal => "steal",
                PortMode::Mirror => "mirror",
            },
            filtered: !p.filter.is_empty(),
        });
    }

    pub fn info(&self) -> (Vec<SessionInfo>, Vec<CopyInfo>) {
        let list = self.list();
        let copies = list.iter().filter_map(|e| e.copy_info.clone()).collect();
        let sessions = list
            .iter()
            .map(|e| SessionInfo {
                session_id: e.id,
                target: e.meta.target(),
                namespace: e.meta.target_namespace.clone(),
                client_id: e.meta.client.client_id.clone(),
                client_user: e.meta.client.client_user.clone(),
                client_name: e.meta.client.client_name.clone(),
                client_hostname: e.meta.client.client_hostname.clone(),
                ports: e
                    .ports
                    .lock()
                    .expect("ports lock")
                    .iter()
                    .map(|p| PortOutcome {
                        port: p.port,
                        mode: p.mode,
                        filter: p.filter.clone(),
                        skipped: None,
                    })
                    .collect(),
                duration_secs: e.started.elapsed().as_secs(),
                ping_ms: e
                    .ping
                    .lock()
                    .expect("ping lock")
                    .map(|d| d.as_secs_f64() * 1000.0),
            })
            .collect();
        (sessions, copies)
    }
}
