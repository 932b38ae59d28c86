//! The data-encryption keyring: Fernet keys with ids, one of them primary.
//!
//! Threat: a single key that can never be rotated, or a rotation that makes
//! old rows unreadable. Guarantee: every encrypted column holds
//! `"<key id>:<fernet token>"`; new values are encrypted under the primary
//! key, any key still in the file decrypts; rotation adds a key (old rows stay
//! readable) and an optional re-encryption rewrites them. The file is written
//! atomically with mode 0600. A running server that meets an unknown key id
//! re-reads the file once, so rows re-encrypted by `frenly keyring rotate
//! --reencrypt` stay readable without a restart.
//!
//! Not covered: protecting the keyring file itself (filesystem permissions,
//! or keep it on a separate volume from the database and its backups).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use super::fernet::{FernetError, Key};

/// Keyring failures.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error("keyring file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("keyring file {0} is malformed: {1}")]
    Format(String, String),
    #[error("no key `{0}` in the keyring")]
    UnknownKey(String),
    #[error("stored value is not `<key id>:<token>`")]
    Malformed,
    #[error(transparent)]
    Fernet(#[from] FernetError),
}

impl From<KeyringError> for crate::http::ApiError {
    fn from(e: KeyringError) -> Self {
        tracing::error!(error = %e, "keyring failure");
        crate::http::ApiError::Internal
    }
}

#[derive(Serialize, Deserialize)]
struct FileDoc {
    primary: String,
    keys: Vec<FileKey>,
}

#[derive(Serialize, Deserialize)]
struct FileKey {
    id: String,
    key: String,
    created_at: String,
}

struct Ring {
    primary: String,
    keys: BTreeMap<String, Key>,
}

/// How often a running process looks for a rotated keyring file.
pub const RECHECK_MS: i64 = 5_000;

/// How long after the keyring file changed a running server may still
/// encrypt under the key that was primary before: its
/// [`RECHECK_MS`] interval, and a second for the clocks and the write.
/// `frenly keyring rotate --reencrypt` and `keyring reencrypt` wait this out
/// (from the file's modification) before rewriting rows, so every row a
/// server writes afterwards is under the new primary already.
pub fn switch_wait(path: &Path) -> std::time::Duration {
    let window = std::time::Duration::from_millis(RECHECK_MS as u64 + 1_000);
    let age = mtime(path)
        .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
        .unwrap_or(window);
    window.saturating_sub(age)
}

/// The loaded keyring.
pub struct Keyring {
    path: PathBuf,
    ring: RwLock<Ring>,
    /// (last check in ms, file modification time then)
    seen: parking_lot::Mutex<(i64, Option<std::time::SystemTime>)>,
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("primary", &self.ring.read().primary)
            .finish()
    }
}

fn read_doc(path: &Path) -> Result<FileDoc, KeyringError> {
    let text =
        crate::config::read_named_file(path, crate::config::MAX_NAMED_FILE).map_err(|e| {
            KeyringError::Io {
                path: path.display().to_string(),
                source: e,
            }
        })?;
    serde_json::from_slice(&text)
        .map_err(|e| KeyringError::Format(path.display().to_string(), e.to_string()))
}

fn parse(path: &Path, doc: &FileDoc) -> Result<Ring, KeyringError> {
    let bad = |m: &str| KeyringError::Format(path.display().to_string(), m.to_string());
    let mut keys = BTreeMap::new();
    for k in &doc.keys {
        if k.id.is_empty() || k.id.contains(':') {
            return Err(bad("a key id is empty or contains `:`"));
        }
        let key =
            Key::from_base64(&k.key).map_err(|_| bad(&format!("key `{}` is invalid", k.id)))?;
        if keys.insert(k.id.clone(), key).is_some() {
            // which one decrypts what was written under the id?
            return Err(bad(&format!("key id `{}` appears twice", k.id)));
        }
    }
    if !keys.contains_key(&doc.primary) {
        return Err(bad("the primary key id is not in `keys`"));
    }
    Ok(Ring {
        primary: doc.primary.clone(),
        keys,
    })
}

impl Keyring {
    /// Load the keyring file.
    pub fn load(path: &Path) -> Result<Keyring, KeyringError> {
        let ring = parse(path, &read_doc(path)?)?;
        Ok(Keyring {
            path: path.to_path_buf(),
            ring: RwLock::new(ring),
            seen: parking_lot::Mutex::new((crate::store::now_ms(), mtime(path))),
        })
    }

    /// Is there a key with this id?
    pub fn has_key(&self, id: &str) -> bool {
        self.ring.read().keys.contains_key(id)
    }

    /// The id of the key new values are encrypted under.
    pub fn primary_id(&self) -> String {
        self.ring.read().primary.clone()
    }

    /// Re-read the file when it changed (`keyring rotate` by another
    /// process), at most every few seconds. A broken file keeps the keys
    /// already loaded.
    fn recheck(&self) {
        let now = crate::store::now_ms();
        let changed = {
            let mut seen = self.seen.lock();
            if now - seen.0 < RECHECK_MS {
                return;
            }
            let m = mtime(&self.path);
            let changed = m != seen.1;
            *seen = (now, m);
            changed
        };
        if changed {
            if let Err(e) = self.reload() {
                tracing::error!(error = %e, "keyring file changed but cannot be loaded; keeping the loaded keys");
            }
        }
    }

    /// Encrypt under the primary key: `"<key id>:<token>"`.
    pub fn encrypt(&self, plain: &[u8]) -> String {
        self.recheck();
        let ring = self.ring.read();
        match ring.keys.get(&ring.primary) {
            Some(k) => format!("{}:{}", ring.primary, k.encrypt(plain)),
            // `parse` guarantees the primary is present.
            None => String::new(),
        }
    }

    /// Decrypt a stored `"<key id>:<token>"` with the key it names.
    pub fn decrypt(&self, stored: &str) -> Result<Vec<u8>, KeyringError> {
        let (id, token) = stored.split_once(':').ok_or(KeyringError::Malformed)?;
        if let Some(k) = self.ring.read().keys.get(id) {
            return Ok(k.decrypt(token)?);
        }
        // A key added by `keyring rotate` after this process loaded the file.
        self.reload()?;
        let ring = self.ring.read();
        let k = ring
            .keys
            .get(id)
            .ok_or_else(|| KeyringError::UnknownKey(id.to_string()))?;
        Ok(k.decrypt(token)?)
    }

    /// Decrypt into a UTF-8 string.
    pub fn decrypt_string(&self, stored: &str) -> Result<String, KeyringError> {
        String::from_utf8(self.decrypt(stored)?)
            .map_err(|_| KeyringError::Fernet(FernetError::InvalidToken("not UTF-8")))
    }

    /// Every key's id and [`Key::fingerprint`].
    pub fn fingerprints(&self) -> Vec<(String, String)> {
        self.ring
            .read()
            .keys
            .iter()
            .map(|(id, k)| (id.clone(), k.fingerprint()))
            .collect()
    }

    /// Is this stored value under the primary key?
    pub fn is_primary(&self, stored: &str) -> bool {
        stored
            .split_once(':')
            .is_some_and(|(id, _)| id == self.ring.read().primary)
    }

    fn reload(&self) -> Result<(), KeyringError> {
        let ring = parse(&self.path, &read_doc(&self.path)?)?;
        *self.ring.write() = ring;
        Ok(())
    }

    /// Add a new primary key to the keyring file (atomically, 0600); returns its id.
    ///
    /// Rotations in several processes at once follow one another: each
    /// reads, extends and replaces the file under an exclusive lock of
    /// `<keyring>.lock` (the file itself is replaced, so it cannot carry
    /// the lock). Without it, two rotations read the same keys and the
    /// last rename drops the other's new key, and whatever a `--reencrypt`
    /// wrote under it with it.
    pub fn rotate(path: &Path) -> Result<String, KeyringError> {
        use std::os::unix::fs::OpenOptionsExt;
        // a symlinked keyring (a shared or mounted secret) is rotated where
        // it lives: renaming over the link would leave the shared file
        // without the new key, for every other instance
        let resolved = std::fs::canonicalize(path).ok();
        let path = resolved.as_deref().unwrap_or(path);
        let io = |e: std::io::Error| KeyringError::Io {
            path: path.display().to_string(),
            source: e,
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path.with_extension("lock"))
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let mut doc = read_doc(path)?;
        parse(path, &doc)?;
        let next = doc
            .keys
            .iter()
            .filter_map(|k| k.id.strip_prefix('k').and_then(|n| n.parse::<u64>().ok()))
            .max()
            .unwrap_or(0)
            + 1;
        let mut n = next;
        while doc.keys.iter().any(|k| k.id == format!("k{n}")) {
            n += 1;
        }
        let id = format!("k{n}");
        doc.keys.push(FileKey {
            id: id.clone(),
            key: Key::generate().to_base64(),
            created_at: crate::store::rfc3339(crate::store::now_ms()),
        });
        doc.primary = id.clone();
        let bytes = serde_json::to_vec_pretty(&doc)
            .map_err(|e| KeyringError::Format(path.display().to_string(), e.to_string()))?;
        let tmp = path.with_extension(format!("tmp-{}", crate::store::new_id()));
        crate::app::bootstrap::write_secret(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            io(e)
        })?;
        drop(lock);
        Ok(id)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotate_keeps_old_rows_readable() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg_path = dir.path().to_path_buf();
        cfg_path.push("keyring.json");
        let doc = serde_json::json!({"primary": "k1", "keys": [
            {"id": "k1", "key": Key::generate().to_base64(), "created_at": "x"}]});
        std::fs::write(&cfg_path, serde_json::to_vec(&doc).unwrap()).unwrap();
        let ring = Keyring::load(&cfg_path).unwrap();
        let old = ring.encrypt(b"secret");
        assert!(old.starts_with("k1:"));
        assert_eq!(Keyring::rotate(&cfg_path).unwrap(), "k2");
        // the running ring learns k2 on first sight
        let ring2 = Keyring::load(&cfg_path).unwrap();
        let new = ring2.encrypt(b"secret");
        assert!(new.starts_with("k2:"));
        assert_eq!(ring.decrypt(&new).unwrap(), b"secret");
        assert_eq!(ring2.decrypt(&old).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&cfg_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(ring.decrypt("nokey").is_err());
        assert!(ring.decrypt("k9:abc").is_err());
    }
}
