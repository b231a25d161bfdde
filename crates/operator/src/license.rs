//! `license keygen|issue|inspect`: the vendor's side of licensing, and a way to read one.

use anyhow::Context;
use chrono::{NaiveDate, Utc};
use mirrord_license::{generate_keypair, License, PublicKey, SigningKeyFile};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum LicenseCommand {
    /// Create a vendor key pair: `signing.key` (keep secret) and `public.key`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign a license.
    Issue {
        #[arg(long)]
        signing_key: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        organization: String,
        /// Last day of validity, YYYY-MM-DD (UTC).
        #[arg(long)]
        expires: NaiveDate,
        /// Issue date, YYYY-MM-DD (UTC); default today. Operators refuse a license issued
        /// in the future or after its expiry.
        #[arg(long)]
        issued: Option<NaiveDate>,
        #[arg(long)]
        seats: u32,
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a license; with --public-key, also check its signature.
    Inspect {
        file: PathBuf,
        /// Hex public key, or a file holding one.
        #[arg(long)]
        public_key: Option<String>,
    },
}

pub fn run(cmd: LicenseCommand) -> anyhow::Result<()> {
    match cmd {
        LicenseCommand::Keygen { out } => {
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            let key = generate_keypair();
            write_secret(&out.join("signing.key"), &format!("{}\n", key.to_hex()))?;
            std::fs::write(out.join("public.key"), format!("{}\n", key.public()))?;
            println!("public key: {}", key.public());
            println!(
                "wrote {0}/signing.key (secret) and {0}/public.key",
                out.display()
            );
        }
        LicenseCommand::Issue {
            signing_key,
            name,
            organization,
            expires,
            issued,
            seats,
            out,
        } => {
            let key = SigningKeyFile::load(&signing_key)?;
            let issued = issued.unwrap_or_else(|| chrono::Utc::now().date_naive());
            if issued > expires {
                anyhow::bail!("--issued {issued} is after --expires {expires}: operators would refuse this license");
            }
            let text = License::issue(&key, &name, &organization, issued, expires, seats);
            std::fs::write(&out, text).with_context(|| format!("writing {}", out.display()))?;
            println!(
                "license for {organization} ({name}), {seats} seats, valid through {expires}: {}",
                out.display()
            );
        }
        LicenseCommand::Inspect { file, public_key } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let (l, _) = License::parse_unverified(&text)?;
            println!("name:         {}", l.name);
            println!("organization: {}", l.organization);
            println!("seats:        {}", l.seats);
            println!("issued:       {}", l.issued);
            println!("expires:      {} (end of day, UTC)", l.expires);
            println!("fingerprint:  {}", l.fingerprint);
            let left = l.seconds_left(Utc::now());
            if left > 0 {
                println!("valid for:    {} more days", left / 86_400);
            } else {
                println!("valid for:    expired {} days ago", -left / 86_400);
            }
            if let Some(k) = public_key {
                let hex = if Path::new(&k).exists() {
                    std::fs::read_to_string(&k)?
                } else {
                    k
                };
                let key: PublicKey = hex.parse()?;
                License::verify(&text, &key)?;
                println!("signature:    valid for key {key}");
            } else {
                println!("signature:    not checked (pass --public-key)");
            }
        }
    }
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}
