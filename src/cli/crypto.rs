//! `frenly encrypt-file`, `decrypt-file`, `encrypt-field`, `decrypt-field`, `keyring`.
//!
//! The guide's FileEncryption (the output file is the raw Fernet token,
//! readable by Python's `cryptography` and vice versa; a missing key file is
//! generated with mode 0600 on encrypt) and DataEncryption (url-safe base64
//! of the token). Decryption failures (tampered file, wrong key) exit 1 with
//! one line on stderr and leave no output file.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use clap::{Args, Subcommand};

use super::{CmdResult, Failure};
use crate::config::Config;
use crate::data::fernet::{FernetError, Key};
use crate::data::keyring::Keyring;

#[derive(Debug, Args)]
pub struct FileArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    #[arg(long)]
    pub key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct FieldArgs {
    /// The value (read from stdin when absent, without one trailing line
    /// end: `echo secret | frenly encrypt-field` encrypts `secret`).
    pub value: Option<String>,
    #[arg(long)]
    pub key_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeyringCmd {
    /// Add a new data-encryption key; old data stays readable.
    Rotate {
        /// Rewrite existing rows under the new key (after waiting until
        /// running servers encrypt under it, about 6 s).
        #[arg(long)]
        reencrypt: bool,
    },
    /// Rewrite the rows not under the primary key, adding no key (finishes
    /// a `rotate --reencrypt` that left rows, or follows a plain `rotate`).
    Reencrypt,
}

/// A key file is 44 characters; editors and tools add a little.
const MAX_KEY_FILE: u64 = 4096;

/// Refuse a key file that is also the command's input or output: with the
/// output, the key was overwritten by the token (or the plaintext), exit 0,
/// and nothing could ever be decrypted again.
fn key_file_apart(a: &FileArgs) -> Result<(), Failure> {
    for (other, what) in [(&a.output, "output"), (&a.input, "input")] {
        if same_file(&a.key_file, other) {
            return Err(Failure::refused(format!(
                "the key file {} is also the {what}; nothing done",
                a.key_file.display()
            )));
        }
    }
    Ok(())
}

/// Do `a` and `b` name one file: the same inode when both exist, else the
/// same path once their directories are resolved?
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        return x.dev() == y.dev() && x.ino() == y.ino();
    }
    let resolved = |p: &Path| {
        let dir = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::canonicalize(dir)
            .ok()
            .zip(p.file_name())
            .map(|(d, f)| d.join(f))
    };
    matches!((resolved(a), resolved(b)), (Some(x), Some(y)) if x == y)
}

/// Read a key file, or create one (0600) when `create` and it is missing.
fn key_from_file(path: &Path, create: bool) -> Result<Key, Failure> {
    if create && !path.exists() {
        let key = Key::generate();
        crate::app::bootstrap::write_secret(path, key.to_base64().as_bytes()).map_err(|e| {
            Failure::refused(format!("cannot write key file {}: {e}", path.display()))
        })?;
        crate::errln!(
            "frenly: generated a new key in {} (mode 0600); keep it safe",
            path.display()
        );
        return Ok(key);
    }
    // a regular file, read bounded: a FIFO blocked for ever, `/dev/zero`
    // was read until memory ran out
    let bytes = crate::config::read_named_file(path, MAX_KEY_FILE)
        .map_err(|e| Failure::refused(format!("cannot read key file {}: {e}", path.display())))?;
    let text = String::from_utf8_lossy(&bytes);
    Key::from_base64(&text).map_err(|_| {
        Failure::refused(format!(
            "key file {} does not hold a Fernet key (url-safe base64 of 32 bytes)",
            path.display()
        ))
    })
}

fn progress() -> indicatif::ProgressBar {
    if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        bar
    } else {
        indicatif::ProgressBar::hidden()
    }
}

fn crypto_failure(what: &str, input: &Path, output: &Path, e: FernetError) -> Failure {
    match e {
        FernetError::InvalidToken(_) => Failure::refused(format!(
            "{what}: {} is not a valid Fernet token for this key (tampered, corrupted or wrong key); nothing written",
            input.display()
        )),
        FernetError::InvalidKey => Failure::refused(format!("{what}: invalid key")),
        FernetError::Io(e) => Failure::refused(format!(
            "{what} {} -> {}: {e}",
            input.display(),
            output.display()
        )),
    }
}

pub fn encrypt_file(a: FileArgs) -> CmdResult {
    key_file_apart(&a)?;
    let key = key_from_file(&a.key_file, true)?;
    let bar = progress();
    key.encrypt_file(&a.input, &a.output, &bar)
        .map_err(|e| crypto_failure("encrypt-file", &a.input, &a.output, e))?;
    bar.finish_and_clear();
    Ok(0)
}

pub fn decrypt_file(a: FileArgs) -> CmdResult {
    key_file_apart(&a)?;
    let key = key_from_file(&a.key_file, false)?;
    let bar = progress();
    let r = key.decrypt_file(&a.input, &a.output, &bar);
    bar.finish_and_clear();
    r.map_err(|e| crypto_failure("decrypt-file", &a.input, &a.output, e))?;
    Ok(0)
}

/// The value argument, or stdin without one trailing newline.
fn field_value(v: Option<String>) -> Result<Vec<u8>, Failure> {
    if let Some(v) = v {
        return Ok(v.into_bytes());
    }
    let mut buf = Vec::new();
    std::io::stdin()
        .read_to_end(&mut buf)
        .map_err(|e| Failure::refused(format!("cannot read stdin: {e}")))?;
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    Ok(buf)
}

fn print(bytes: &[u8]) -> CmdResult {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|_| out.write_all(b"\n"))
        .and_then(|_| out.flush())
        .map_err(|e| Failure::refused(format!("cannot write stdout: {e}")))?;
    Ok(0)
}

pub fn encrypt_field(a: FieldArgs) -> CmdResult {
    let key = key_from_file(&a.key_file, true)?;
    let token = key.encrypt(&field_value(a.value)?);
    print(
        base64::engine::general_purpose::URL_SAFE
            .encode(token)
            .as_bytes(),
    )
}

pub fn decrypt_field(a: FieldArgs) -> CmdResult {
    let key = key_from_file(&a.key_file, false)?;
    let value = field_value(a.value)?;
    let bad = || {
        Failure::refused(
            "decrypt-field: not a valid encrypted value for this key (tampered, corrupted or wrong key)",
        )
    };
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let token = lenient
        .decode(value.trim_ascii())
        .ok()
        .and_then(|t| String::from_utf8(t).ok())
        .ok_or_else(bad)?;
    let plain = key.decrypt(&token).map_err(|_| bad())?;
    print(&plain)
}

pub fn keyring(cfg: Config, c: KeyringCmd) -> CmdResult {
    let (rotate, reencrypt) = match c {
        KeyringCmd::Rotate { reencrypt } => (true, reencrypt),
        KeyringCmd::Reencrypt => (false, true),
    };
    crate::app::bootstrap::ensure_data_dir(&cfg.data_dir)
        .map_err(|e| Failure::refused(format!("data directory: {e}")))?;
    let rt = super::runtime()?;
    rt.block_on(async {
        // audited in an initialised data directory (a keyring with no
        // database yet encrypts nothing)
        let db = match super::identity::open(&cfg).await {
            Ok(db) => Some(db),
            Err(_) if !reencrypt => None,
            Err(e) => return Err(e),
        };
        // as at a start: an absent keyring is made only when no stored
        // value needs the old one
        match &db {
            Some(db) => crate::data::check_keyring_reads_the_data(&cfg, db)
                .await
                .map_err(|e| Failure::refused(format!("{e:#}")))?,
            // neither a keyring nor a database: a mistyped --data-dir, not
            // a keyring to make and rotate there
            None if std::fs::symlink_metadata(&cfg.keyring_file).is_err() => {
                return Err(Failure::refused(format!(
                    "no keyring at {} and no database beside it: nothing to rotate (is --data-dir right?)",
                    cfg.keyring_file.display()
                )))
            }
            None => {}
        }
        let audit = match &db {
            Some(db) => Some((super::identity::open_audit(&cfg, db)?, db)),
            None => None,
        };
        let (id, mut ev) = if rotate {
            let id = Keyring::rotate(&cfg.keyring_file).map_err(Failure::refused)?;
            crate::errln!(
                "frenly: new primary data-encryption key `{id}`; old data stays readable"
            );
            let ev = crate::monitoring::audit::AuditEvent::new("keyring_rotated")
                .field("primary_key_id", id.as_str());
            (id, ev)
        } else {
            let ring = Keyring::load(&cfg.keyring_file).map_err(Failure::refused)?;
            let id = ring.primary_id();
            let ev = crate::monitoring::audit::AuditEvent::new("keyring_reencrypted")
                .field("primary_key_id", id.as_str());
            (id, ev)
        };
        let mut outcome = Ok(0);
        if let (true, Some((_, db))) = (reencrypt, &audit) {
            // a running server re-reads the keyring at most every few
            // seconds: rows it writes meanwhile are under the old key, and
            // a pass started at once left them there
            let wait = crate::data::keyring::switch_wait(&cfg.keyring_file);
            if !wait.is_zero() {
                crate::errln!(
                    "frenly: waiting {:.0} s for running servers to load key `{id}`",
                    wait.as_secs_f64().ceil()
                );
                tokio::time::sleep(wait).await;
            }
            let ring = Keyring::load(&cfg.keyring_file).map_err(Failure::refused)?;
            match reencrypt_all(db, &ring).await {
                Ok((done, skipped)) => {
                    crate::errln!("frenly: re-encrypted {done} task(s) under `{id}`; {skipped} changed meanwhile and were left as written (run `frenly keyring reencrypt` to check them again)");
                    ev = ev.field("reencrypted", done).field("skipped", skipped);
                }
                Err(e) => {
                    ev = ev.field("reencrypt_error", e.to_string());
                    outcome = Err(Failure::refused(format!("re-encryption stopped: {e}")));
                }
            }
        }
        if let Some((audit, _)) = audit {
            super::identity::audited(&audit, ev).await;
        }
        outcome
    })
}

/// Rewrite every encrypted task column not under the primary key.
pub async fn reencrypt_all(db: &crate::store::Db, ring: &Keyring) -> anyhow::Result<(u64, u64)> {
    use crate::store::tasks;
    let (mut done, mut skipped) = (0u64, 0u64);
    let mut after = String::new();
    loop {
        let page = tasks::encrypted_page(db, &after, 200).await?;
        let Some((last, _)) = page.last() else { break };
        after = last.clone();
        for (id, old) in page {
            if old.iter().flatten().all(|v| ring.is_primary(v)) {
                continue;
            }
            let mut new: [Option<String>; 3] = Default::default();
            for (slot, v) in new.iter_mut().zip(old.iter()) {
                *slot = match v {
                    Some(v) if !ring.is_primary(v) => Some(ring.encrypt(&ring.decrypt(v)?)),
                    other => other.clone(),
                };
            }
            if tasks::replace_encrypted(db, &id, &old, &new).await? {
                done += 1;
            } else {
                skipped += 1;
            }
        }
    }
    Ok((done, skipped))
}
