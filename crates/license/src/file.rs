//! The license file: a JSON object holding the license and the vendor's Ed25519 signature
//! over its canonical encoding.
//!
//! ```json
//! {"license":{"name":"...","organization":"...","expires":"2027-01-31","seats":10,
//!             "fingerprint":"...","issued":"2026-11-24"},
//!  "signature":"<hex>"}
//! ```
//!
//! The signed bytes are the license re-encoded by this crate (fixed field order, no
//! whitespace), so reformatting the file changes nothing and altering any value breaks the
//! signature. Unknown fields are refused rather than ignored.

use chrono::{DateTime, NaiveDate, Utc};
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LicenseError {
    #[error("cannot read license {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("license file is malformed: {0}")]
    Malformed(String),
    #[error("license signature does not verify: the file was altered, or it was not signed by the key this operator trusts (public key {trusted})")]
    BadSignature { trusted: String },
    #[error("key is malformed: {0}")]
    Key(String),
    #[error("license dates are inconsistent: {0}; ask the vendor for a corrected license")]
    Dates(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct License {
    pub name: String,
    pub organization: String,
    /// Last day of validity (UTC): the license expires when this day ends.
    pub expires: NaiveDate,
    pub seats: u32,
    /// Unique id of this license, for support and audit.
    pub fingerprint: String,
    pub issued: NaiveDate,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct LicenseFile {
    license: License,
    signature: String,
}

impl License {
    /// The instant the license stops being valid: the end of its `expires` day, UTC.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.expires
            .succ_opt()
            .unwrap_or(self.expires)
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc()
    }

    /// Seconds until expiry (negative once expired).
    pub fn seconds_left(&self, now: DateTime<Utc>) -> i64 {
        (self.expires_at() - now).num_seconds()
    }

    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("license encodes")
    }

    /// The vendor's side: a new license, signed, as file text.
    pub fn issue(
        key: &SigningKeyFile,
        name: &str,
        organization: &str,
        issued: NaiveDate,
        expires: NaiveDate,
        seats: u32,
    ) -> String {
        let nonce: [u8; 16] = rand::random();
        let mut h = Sha256::new();
        h.update(name.as_bytes());
        h.update([0]);
        h.update(organization.as_bytes());
        h.update([0]);
        h.update(expires.to_string().as_bytes());
        h.update(seats.to_be_bytes());
        h.update(nonce);
        let license = License {
            name: name.to_owned(),
            organization: organization.to_owned(),
            expires,
            seats,
            fingerprint: hex::encode(&h.finalize()[..16]),
            issued,
        };
        let signature = key.0.sign(&license.canonical());
        let file = LicenseFile {
            license,
            signature: hex::encode(signature.to_bytes()),
        };
        serde_json::to_string_pretty(&file).expect("license file encodes") + "\n"
    }

    /// Reads the license without checking who signed it (for `license inspect`).
    pub fn parse_unverified(text: &str) -> Result<(License, String), LicenseError> {
        let f: LicenseFile =
            serde_json::from_str(text).map_err(|e| LicenseError::Malformed(e.to_string()))?;
        Ok((f.license, f.signature))
    }

    /// Parses and checks the signature against `key`.
    pub fn verify(text: &str, key: &PublicKey) -> Result<License, LicenseError> {
        let (license, sig) = Self::parse_unverified(text)?;
        let bad = || LicenseError::BadSignature {
            trusted: key.to_string(),
        };
        let bytes: [u8; 64] = hex::decode(sig.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        key.0
            .verify(&license.canonical(), &Signature::from_bytes(&bytes))
            .map_err(|_| bad())?;
        license.check_dates(Utc::now().date_naive())?;
        Ok(license)
    }

    /// A signed license can still be wrong: issued after it expires, or issued in the
    /// future (a clock or a vendor mistake that would otherwise pass silently).
    pub fn check_dates(&self, today: NaiveDate) -> Result<(), LicenseError> {
        if self.issued > self.expires {
            return Err(LicenseError::Dates(format!(
                "issued {} is after its expiry {}",
                self.issued, self.expires
            )));
        }
        // A day of slack: the vendor's "today" may be ahead of ours by a time zone.
        if self.issued > today + chrono::Days::new(1) {
            return Err(LicenseError::Dates(format!(
                "issued {} is in the future (today is {today} UTC)",
                self.issued
            )));
        }
        Ok(())
    }
}

/// The vendor's signing key (32-byte seed, hex, in a file).
pub struct SigningKeyFile(SigningKey);

impl SigningKeyFile {
    pub fn load(path: &Path) -> Result<Self, LicenseError> {
        let text = std::fs::read_to_string(path).map_err(|e| LicenseError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                LicenseError::Key(format!("{}: expected 64 hex digits", path.display()))
            })?;
        Ok(Self(SigningKey::from_bytes(&seed)))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
}

/// The public key an operator trusts (hex).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl std::str::FromStr for PublicKey {
    type Err = LicenseError;
    fn from_str(s: &str) -> Result<Self, LicenseError> {
        let bytes: [u8; 32] = hex::decode(s.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                LicenseError::Key("expected 64 hex digits of an Ed25519 public key".into())
            })?;
        VerifyingKey::from_bytes(&bytes)
            .map(PublicKey)
            .map_err(|e| LicenseError::Key(e.to_string()))
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0.to_bytes()))
    }
}

/// A new vendor key pair.
pub fn generate_keypair() -> SigningKeyFile {
    SigningKeyFile(SigningKey::from_bytes(&rand::random::<[u8; 32]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn signed_but_inconsistent_dates_are_refused() {
        let key = generate_keypair();
        let today = Utc::now().date_naive();
        let after = License::issue(
            &key,
            "Ada",
            "Acme",
            date("2026-03-01"),
            date("2026-02-01"),
            5,
        );
        let e = License::verify(&after, &key.public()).unwrap_err();
        assert!(e.to_string().contains("is after its expiry"), "{e}");
        let future = License::issue(
            &key,
            "Ada",
            "Acme",
            today + chrono::Days::new(10),
            today + chrono::Days::new(400),
            5,
        );
        let e = License::verify(&future, &key.public()).unwrap_err();
        assert!(e.to_string().contains("in the future"), "{e}");
        // Issued today (or tomorrow, a time zone ahead) is fine.
        let ok = License::issue(
            &key,
            "Ada",
            "Acme",
            today + chrono::Days::new(1),
            today + chrono::Days::new(400),
            5,
        );
        assert!(License::verify(&ok, &key.public()).is_ok());
    }

    #[test]
    fn signed_licenses_verify_and_altered_ones_do_not() {
        let key = generate_keypair();
        let text = License::issue(
            &key,
            "Ada",
            "Acme",
            date("2026-01-01"),
            date("2030-01-31"),
            5,
        );
        let l = License::verify(&text, &key.public()).unwrap();
        assert_eq!((l.name.as_str(), l.seats), ("Ada", 5));
        assert_eq!(l.expires_at().to_rfc3339(), "2030-02-01T00:00:00+00:00");

        let tampered = text.replace("\"seats\": 5", "\"seats\": 500");
        assert!(matches!(
            License::verify(&tampered, &key.public()),
            Err(LicenseError::BadSignature { .. })
        ));
        let other = generate_keypair();
        assert!(matches!(
            License::verify(&text, &other.public()),
            Err(LicenseError::BadSignature { .. })
        ));
        let extra = text.replacen("{", "{\"x\":1,", 1);
        assert!(matches!(
            License::verify(&extra, &key.public()),
            Err(LicenseError::Malformed(_))
        ));
        // Reformatting is harmless.
        let compact: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(License::verify(&compact.to_string(), &key.public()).is_ok());
    }
}
