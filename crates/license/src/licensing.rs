//! The operator's live view of its license and seats: loaded at start, reloaded when the
//! file changes, consulted for every new session. Sessions already running are never cut:
//! only admission depends on the license.

use crate::file::{License, PublicKey};
use crate::seats::{SeatBook, SeatCheck};
use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Warn about expiry this long before it.
const WARN_BEFORE_DAYS: i64 = 14;

#[derive(Debug, Clone)]
enum State {
    Missing,
    Loaded(License),
    Invalid(String),
}

/// Why a session may not start.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Metric label: `license` or `seats`.
    pub reason: &'static str,
    pub message: String,
}

pub type Admission = Result<(), Refusal>;

/// What `status` shows.
#[derive(Debug, Clone)]
pub struct LicenseView {
    pub enforced: bool,
    pub license: Option<License>,
    pub seats_used: usize,
    pub month: String,
    /// Why new sessions are refused, if they are.
    pub problem: Option<String>,
}

pub struct Licensing {
    key: Option<PublicKey>,
    path: Option<PathBuf>,
    state: RwLock<State>,
    last_text: Mutex<Option<Result<Vec<u8>, String>>>,
    last_warned: Mutex<Option<chrono::NaiveDate>>,
    seats: Mutex<SeatBook>,
}

fn month(now: DateTime<Utc>) -> String {
    now.format("%Y-%m").to_string()
}

impl Licensing {
    /// `key: None` means licensing is not enforced (no trusted key was built in or
    /// configured): every session is admitted and no seats are counted.
    pub fn new(key: Option<PublicKey>, path: Option<PathBuf>, state_dir: &Path) -> Self {
        let me = Self {
            key,
            path,
            state: RwLock::new(State::Missing),
            last_text: Mutex::new(None),
            last_warned: Mutex::new(None),
            seats: Mutex::new(SeatBook::open(state_dir)),
        };
        me.reload();
        me
    }

    pub fn enforced(&self) -> bool {
        self.key.is_some()
    }

    /// Re-reads the license file if its contents changed; logs what happened.
    pub fn reload(&self) {
        let Some(key) = &self.key else { return };
        let text = match &self.path {
            None => Err("no license file given".to_owned()),
            Some(p) => {
                std::fs::read(p).map_err(|e| format!("cannot read license {}: {e}", p.display()))
            }
        };
        {
            let mut last = self.last_text.lock().expect("license lock");
            if last.as_ref() == Some(&text) {
                return;
            }
            *last = Some(text.clone());
        }
        let next = match text {
            Err(_) if self.path.is_none() => State::Missing,
            Err(e) => State::Invalid(e),
            Ok(bytes) => match License::verify(&String::from_utf8_lossy(&bytes), key) {
                Ok(l) => State::Loaded(l),
                Err(e) => State::Invalid(e.to_string()),
            },
        };
        match &next {
            State::Loaded(l) => {
                tracing::info!(
                    name = %l.name,
                    organization = %l.organization,
                    expires = %l.expires,
                    seats = l.seats,
                    fingerprint = %l.fingerprint,
                    "license loaded"
                );
                *self.last_warned.lock().expect("license lock") = None;
            }
            State::Invalid(why) => tracing::error!(error = %why, "license invalid: new sessions will be refused"),
            State::Missing => tracing::error!("no license: new sessions will be refused (start with --license FILE or OPERATOR_LICENSE_PATH)"),
        }
        *self.state.write().expect("license lock") = next;
        self.warn_if_near_expiry(Utc::now());
    }

    fn warn_if_near_expiry(&self, now: DateTime<Utc>) {
        let State::Loaded(l) = &*self.state.read().expect("license lock") else {
            return;
        };
        let left = l.seconds_left(now);
        let today = now.date_naive();
        let mut last = self.last_warned.lock().expect("license lock");
        if left > WARN_BEFORE_DAYS * 86_400 || *last == Some(today) {
            return;
        }
        *last = Some(today);
        if left <= 0 {
            tracing::error!(expires = %l.expires, organization = %l.organization, "license expired: new sessions are refused");
        } else {
            let days = left / 86_400;
            tracing::warn!(expires = %l.expires, days_left = days, "license expires in {days} days (at the end of {})", l.expires);
        }
    }

    /// Seconds until expiry; 0 when there is no valid license.
    pub fn seconds_left(&self, now: DateTime<Utc>) -> f64 {
        match &*self.state.read().expect("license lock") {
            State::Loaded(l) => l.seconds_left(now).max(0) as f64,
            _ => 0.0,
        }
    }

    /// Whether a new session may start as far as the license goes.
    pub fn check(&self, now: DateTime<Utc>) -> Admission {
        if self.key.is_none() {
            return Ok(());
        }
        let refuse = |message: String| {
            Err(Refusal {
                reason: "license",
                message,
            })
        };
        match &*self.state.read().expect("license lock") {
            State::Missing => refuse("no license: this operator requires one; start it with --license FILE or OPERATOR_LICENSE_PATH".into()),
            State::Invalid(why) => refuse(format!("no valid license: {why}")),
            State::Loaded(l) if l.seconds_left(now) <= 0 => refuse(format!(
                "the license of {} ({}) expired at the end of {} ({}); new sessions are refused until a renewed license is installed",
                l.organization,
                l.name,
                l.expires,
                l.expires_at().to_rfc3339()
            )),
            State::Loaded(_) => Ok(()),
        }
    }

    /// Holds a seat for the client this month, or refuses. The seat is counted once the
    /// reservation is committed ([`SeatReservation::commit`]); dropped before that, it is
    /// given back.
    pub fn reserve_seat(
        self: &Arc<Self>,
        client_id: &str,
        now: DateTime<Utc>,
    ) -> Result<SeatReservation, Refusal> {
        let seats = match &*self.state.read().expect("license lock") {
            State::Loaded(l) => l.seats,
            _ => return Ok(SeatReservation::none()),
        };
        let m = month(now);
        match self
            .seats
            .lock()
            .expect("seat lock")
            .reserve(&m, client_id, seats)
        {
            SeatCheck::Known => Ok(SeatReservation::none()),
            SeatCheck::Reserved => Ok(SeatReservation {
                held: Some((Arc::clone(self), client_id.to_owned(), m)),
            }),
            SeatCheck::Full => Err(Refusal {
                reason: "seats",
                message: format!("Maximum seat count ({seats}) reached"),
            }),
        }
    }

    pub fn view(&self, now: DateTime<Utc>) -> LicenseView {
        let m = month(now);
        let seats_used = self.seats.lock().expect("seat lock").used(&m);
        let license = match &*self.state.read().expect("license lock") {
            State::Loaded(l) => Some(l.clone()),
            _ => None,
        };
        LicenseView {
            enforced: self.enforced(),
            license,
            seats_used,
            month: m,
            problem: self.check(now).err().map(|r| r.message),
        }
    }

    /// Reloads on change and reports seconds left, every `every`, until the process ends.
    pub async fn watch(
        self: std::sync::Arc<Self>,
        every: Duration,
        report: impl Fn(f64) + Send + 'static,
    ) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            self.reload();
            let now = Utc::now();
            self.warn_if_near_expiry(now);
            report(self.seconds_left(now));
        }
    }
}

/// A seat held for a client whose first session of the month is opening.
#[must_use = "a seat reservation is given back when dropped"]
pub struct SeatReservation {
    held: Option<(Arc<Licensing>, String, String)>,
}

impl SeatReservation {
    fn none() -> Self {
        Self { held: None }
    }

    /// Records the seat durably; a seat that cannot be recorded is not granted.
    pub fn commit(mut self) -> Result<(), Refusal> {
        let Some((lic, client, month)) = self.held.take() else {
            return Ok(());
        };
        let mut book = lic.seats.lock().expect("seat lock");
        let res = book.commit(&month, &client);
        book.cancel(&client);
        res.map_err(|e| {
            tracing::error!(error = %e, "cannot record a seat in the seat book; refusing the session");
            Refusal {
                reason: "seats",
                message: format!("the operator cannot record your seat ({e}); ask its administrator to check the state directory"),
            }
        })
    }
}

impl Drop for SeatReservation {
    fn drop(&mut self) {
        if let Some((lic, client, _)) = self.held.take() {
            lic.seats.lock().expect("seat lock").cancel(&client);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::generate_keypair;

    #[test]
    fn admission_follows_the_license() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate_keypair();
        let path = dir.path().join("license.json");
        let now = Utc::now();

        let lic = Arc::new(Licensing::new(
            Some(key.public()),
            Some(path.clone()),
            dir.path(),
        ));
        let e = lic.check(now).unwrap_err();
        assert!(e.message.contains("cannot read license"), "{}", e.message);

        std::fs::write(
            &path,
            License::issue(
                &key,
                "Ada",
                "Acme",
                (now - chrono::Days::new(40)).date_naive(),
                (now + chrono::Days::new(30)).date_naive(),
                1,
            ),
        )
        .unwrap();
        lic.reload();
        assert!(lic.check(now).is_ok());
        assert!(lic.seconds_left(now) > 29.0 * 86_400.0);
        let a = lic.reserve_seat("a", now).unwrap();
        // Held, not yet recorded: the only seat is taken meanwhile.
        assert_eq!(
            lic.reserve_seat("b", now).err().unwrap().message,
            "Maximum seat count (1) reached"
        );
        a.commit().unwrap();
        assert!(lic.reserve_seat("a", now).is_ok());
        assert!(lic.reserve_seat("b", now).is_err());

        std::fs::write(
            &path,
            License::issue(
                &key,
                "Ada",
                "Acme",
                (now - chrono::Days::new(40)).date_naive(),
                (now - chrono::Days::new(2)).date_naive(),
                1,
            ),
        )
        .unwrap();
        lic.reload();
        let e = lic.check(now).unwrap_err();
        assert!(e.message.contains("expired at the end of"), "{}", e.message);
        assert_eq!(lic.seconds_left(now), 0.0);

        let open = Licensing::new(None, None, dir.path());
        assert!(open.check(now).is_ok());
    }
}
