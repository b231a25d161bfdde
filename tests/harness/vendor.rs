//! A license vendor for tests: keys and licenses made by the real `mirrord-operator license`.

use crate::bin;
use std::path::PathBuf;
use std::process::Command;

pub struct Vendor {
    dir: tempfile::TempDir,
    pub public: String,
}

impl Vendor {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(bin("mirrord-operator"))
            .args(["license", "keygen", "--out"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let public = std::fs::read_to_string(dir.path().join("public.key"))
            .unwrap()
            .trim()
            .to_owned();
        Self { dir, public }
    }

    /// A license valid for `days` from today (negative: already expired).
    pub fn issue(&self, file: &str, days: i64, seats: u32) -> PathBuf {
        let today = chrono::Utc::now().date_naive();
        let expires = (chrono::Utc::now() + chrono::Duration::days(days)).date_naive();
        // Issued a while before it expires (an expired license was issued in the past).
        let issued = today.min(expires - chrono::Duration::days(30));
        self.issue_dated(file, issued, expires, seats)
    }

    /// A license with explicit dates.
    pub fn issue_dated(
        &self,
        file: &str,
        issued: chrono::NaiveDate,
        expires: chrono::NaiveDate,
        seats: u32,
    ) -> PathBuf {
        let out = self.dir.path().join(file);
        let st = Command::new(bin("mirrord-operator"))
            .args(["license", "issue", "--signing-key"])
            .arg(self.dir.path().join("signing.key"))
            .args([
                "--name",
                "Ada Lovelace",
                "--organization",
                "Acme",
                "--expires",
                &expires.to_string(),
                "--issued",
                &issued.to_string(),
                "--seats",
                &seats.to_string(),
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        out
    }

    pub fn config(&self) -> String {
        format!("[license]\npublic_key = \"{}\"\n", self.public)
    }
}

impl Default for Vendor {
    fn default() -> Self {
        Self::new()
    }
}
