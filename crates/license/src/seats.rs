//! Seats: the distinct `client_id`s that opened a session in the current calendar month
//! (UTC). Kept in the state directory so a restart does not hand out seats again.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    month: String,
    clients: BTreeSet<String>,
}

pub struct SeatBook {
    path: PathBuf,
    book: Book,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SeatCheck {
    /// Already counted this month.
    Known,
    /// A new client, now counted.
    Taken,
    /// No seat left.
    Full,
}

impl SeatBook {
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("seats.json");
        let book = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self { path, book }
    }

    fn roll(&mut self, month: &str) {
        if self.book.month != month {
            self.book = Book {
                month: month.to_owned(),
                clients: BTreeSet::new(),
            };
        }
    }

    /// Counts `client_id` for `month` unless that would exceed `seats`.
    pub fn admit(
        &mut self,
        month: &str,
        client_id: &str,
        seats: u32,
    ) -> std::io::Result<SeatCheck> {
        self.roll(month);
        if self.book.clients.contains(client_id) {
            return Ok(SeatCheck::Known);
        }
        if self.book.clients.len() >= seats as usize {
            return Ok(SeatCheck::Full);
        }
        self.book.clients.insert(client_id.to_owned());
        self.save()?;
        Ok(SeatCheck::Taken)
    }

    pub fn used(&mut self, month: &str) -> usize {
        self.roll(month);
        self.book.clients.len()
    }

    fn save(&self) -> std::io::Result<()> {
        // Write then rename: a crash never leaves a half-written book.
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.book)?)?;
        std::fs::rename(tmp, &self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_counted_per_month_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SeatBook::open(dir.path());
        assert_eq!(b.admit("2026-11", "a", 2).unwrap(), SeatCheck::Taken);
        assert_eq!(b.admit("2026-11", "a", 2).unwrap(), SeatCheck::Known);
        assert_eq!(b.admit("2026-11", "b", 2).unwrap(), SeatCheck::Taken);
        assert_eq!(b.admit("2026-11", "c", 2).unwrap(), SeatCheck::Full);
        let mut again = SeatBook::open(dir.path());
        assert_eq!(again.used("2026-11"), 2);
        assert_eq!(again.admit("2026-11", "c", 2).unwrap(), SeatCheck::Full);
        assert_eq!(again.admit("2026-12", "c", 2).unwrap(), SeatCheck::Taken);
    }
}
