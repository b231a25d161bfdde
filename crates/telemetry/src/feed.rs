//! The event feed: a bounded ring of the latest functional events, for live viewers (the
//! operator's console). It owns nothing else: the log line and the metrics are still made
//! by [`crate::Telemetry::record`], which appends here after logging.
//!
//! Why a ring and a `watch` rather than a broadcast channel per viewer: a viewer that
//! falls behind reads from the ring at its own pace (and resumes after a reconnect from
//! the last id it saw); the recording side only takes a short mutex and bumps a counter,
//! so a slow browser can never slow the operator or its log path.

use crate::event::Event;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// One functional event as a viewer sees it: the log line's message and fields.
#[derive(Debug, Clone, Serialize)]
pub struct FeedItem {
    /// Increases by one per event recorded; what `Last-Event-ID` names.
    pub id: u64,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The log line's message (`Session Started`, ...).
    pub message: &'static str,
    /// The user the event is about (a session's owner, the client refused): who besides
    /// admins may see it.
    pub owner: String,
    pub fields: BTreeMap<&'static str, String>,
    /// This item as JSON, made by the first viewer that sends it and shared by the rest.
    #[serde(skip)]
    json: OnceLock<String>,
}

impl FeedItem {
    /// The item as one line of JSON (what an event stream sends).
    pub fn json(&self) -> &str {
        self.json
            .get_or_init(|| serde_json::to_string(self).unwrap_or_default())
    }
}

/// What [`Feed::since`] found.
#[derive(Debug, Default)]
pub struct Catchup {
    pub items: Vec<Arc<FeedItem>>,
    /// Events after the asked id that the ring no longer holds.
    pub missed: u64,
}

pub struct Feed {
    ring: Mutex<Ring>,
    latest: watch::Sender<u64>,
}

struct Ring {
    capacity: usize,
    next_id: u64,
    items: VecDeque<Arc<FeedItem>>,
}

impl Feed {
    /// Keeps the latest `capacity` events.
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring {
                capacity: capacity.max(1),
                next_id: 1,
                items: VecDeque::with_capacity(capacity.max(1)),
            }),
            latest: watch::channel(0).0,
        }
    }

    /// Appends the event if it is a functional one (pings are not).
    pub fn push(&self, event: &Event) {
        let Some((message, owner, fields)) = describe(event) else {
            return;
        };
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let id = {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            let id = ring.next_id;
            ring.next_id += 1;
            if ring.items.len() == ring.capacity {
                ring.items.pop_front();
            }
            ring.items.push_back(Arc::new(FeedItem {
                id,
                time_ms,
                message,
                owner,
                fields,
                json: OnceLock::new(),
            }));
            id
        };
        self.latest.send_replace(id);
    }

    /// Every event held with an id above `after`.
    pub fn since(&self, after: u64) -> Catchup {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let oldest = ring.items.front().map_or(ring.next_id, |i| i.id);
        Catchup {
            missed: oldest.saturating_sub(after + 1),
            items: ring
                .items
                .iter()
                .filter(|i| i.id > after)
                .cloned()
                .collect(),
        }
    }

    /// The id of the latest event; changes whenever one is recorded.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }
}

/// The event's log message, owner and fields (the same names as its log line's, read from
/// the one description of the event).
fn describe(event: &Event) -> Option<(&'static str, String, BTreeMap<&'static str, String>)> {
    let d = event.describe()?;
    let fields = d
        .all_fields()
        .into_iter()
        .map(|(name, value)| (name, value.to_string()))
        .collect();
    Some((d.name, d.owner.to_owned(), fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{ClientInfo, SessionMeta};

    fn started(user: &str) -> Event {
        Event::SessionStarted {
            session: Arc::new(SessionMeta {
                session_id: "00000000000000AB".into(),
                target_type: "deployment".into(),
                target_name: "api".into(),
                target_namespace: "default".into(),
                client: ClientInfo {
                    client_id: "c".into(),
                    client_user: user.into(),
                    client_name: "n".into(),
                    client_hostname: "h".into(),
                    cli_version: "0".into(),
                },
            }),
        }
    }

    #[test]
    fn resumes_after_an_id_and_counts_what_the_ring_dropped() {
        let feed = Feed::new(3);
        for u in ["a", "b", "c", "d", "e"] {
            feed.push(&started(u));
        }
        let all = feed.since(0);
        assert_eq!(
            all.items.iter().map(|i| i.id).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        assert_eq!(all.missed, 2);
        let tail = feed.since(4);
        assert_eq!(tail.items.len(), 1);
        assert_eq!(tail.items[0].owner, "e");
        assert_eq!(tail.missed, 0);
        assert_eq!(*feed.subscribe().borrow(), 5);
        let json: serde_json::Value = serde_json::from_str(tail.items[0].json()).unwrap();
        assert_eq!(json["message"], "Session Started");
        assert_eq!(json["fields"]["target"], "deployment/api");
        assert_eq!(json["id"], 5);
    }
}
