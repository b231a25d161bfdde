//! Seats: the distinct `client_id`s that opened a session in the current calendar month
//! (UTC). Kept in the state directory so a restart does not hand out seats again.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Book {
    month: String,
    clients: BTreeSet<String>,
}

pub struct SeatBook {
    path: PathBuf,
    book: Book,
    /// Clients whose first session of the month is opening: they hold a seat that is not
    /// written yet (by how many openings).
    pending: HashMap<String, usize>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SeatCheck {
    /// Already counted this month.
    Known,
    /// A new client: a seat is held for it until [`SeatBook::commit`] or
    /// [`SeatBook::cancel`].
    Reserved,
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
        Self {
            path,
            book,
            pending: HashMap::new(),
        }
    }

    fn roll(&mut self, month: &str) {
        if self.book.month != month {
            self.book = Book {
                month: month.to_owned(),
                clients: BTreeSet::new(),
            };
        }
    }

    /// Holds a seat for `client_id` in `month` unless that would exceed `seats`.
    pub fn reserve(&mut self, month: &str, client_id: &str, seats: u32) -> SeatCheck {
        self.roll(month);
        if self.book.clients.contains(client_id) {
            return SeatCheck::Known;
        }
        if let Some(n) = self.pending.get_mut(client_id) {
            *n += 1;
            return SeatCheck::Reserved;
        }
        if self.book.clients.len() + self.pending.len() >= seats as usize {
            return SeatCheck::Full;
        }
        self.pending.insert(client_id.to_owned(), 1);
        SeatCheck::Reserved
    }

    /// Records a reserved seat durably. On error the seat is not counted (and stays
    /// reserved until cancelled).
    pub fn commit(&mut self, month: &str, client_id: &str) -> std::io::Result<()> {
        self.roll(month);
        if self.book.clients.contains(client_id) {
            return Ok(());
        }
        self.book.clients.insert(client_id.to_owned());
        if let Err(e) = self.save() {
            self.book.clients.remove(client_id);
            return Err(e);
        }
        Ok(())
    }

    /// Gives back one reservation of `client_id`.
    pub fn cancel(&mut self, client_id: &str) {
        if let Some(n) = self.pending.get_mut(client_id) {
            *n -= 1;
            if *n == 0 {
                self.pending.remove(client_id);
            }
        }
    }

    pub fn used(&mut self, month: &str) -> usize {
        self.roll(month);
        self.book.clients.len()
    }

    /// Write a temporary file, flush it to disk, rename it over the book and flush the
    /// directory: after a crash the book is either the old one or the new one, and a
    /// seat reported as recorded is on disk.
    fn save(&self) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&self.book)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_are_counted_per_month_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SeatBook::open(dir.path());
        let take = |b: &mut SeatBook, m: &str, c: &str| {
            let check = b.reserve(m, c, 2);
            if check == SeatCheck::Reserved {
                b.commit(m, c).unwrap();
                b.cancel(c);
            }
            check
        };
        assert_eq!(take(&mut b, "2026-11", "a"), SeatCheck::Reserved);
        assert_eq!(take(&mut b, "2026-11", "a"), SeatCheck::Known);
        assert_eq!(take(&mut b, "2026-11", "b"), SeatCheck::Reserved);
        assert_eq!(take(&mut b, "2026-11", "c"), SeatCheck::Full);
        let mut again = SeatBook::open(dir.path());
        assert_eq!(again.used("2026-11"), 2);
        assert_eq!(take(&mut again, "2026-11", "c"), SeatCheck::Full);
        assert_eq!(take(&mut again, "2026-12", "c"), SeatCheck::Reserved);
    }

    #[test]
    fn a_reservation_holds_a_seat_until_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SeatBook::open(dir.path());
        assert_eq!(b.reserve("2026-11", "a", 1), SeatCheck::Reserved);
        // The last seat is held: another new client is refused meanwhile.
        assert_eq!(b.reserve("2026-11", "b", 1), SeatCheck::Full);
        b.cancel("a");
        assert_eq!(b.used("2026-11"), 0);
        assert_eq!(b.reserve("2026-11", "b", 1), SeatCheck::Reserved);
    }

    #[test]
    fn a_seat_that_cannot_be_written_is_not_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = SeatBook::open(dir.path());
        // A directory where the temporary file goes makes the write fail.
        std::fs::create_dir(dir.path().join("seats.json.tmp")).unwrap();
        assert_eq!(b.reserve("2026-11", "a", 5), SeatCheck::Reserved);
        assert!(b.commit("2026-11", "a").is_err());
        b.cancel("a");
        assert_eq!(b.used("2026-11"), 0);
    }
}
