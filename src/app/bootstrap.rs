//! First-start set-up: data directory, secrets, certificate, database and the
//! first admin.
//!
//! Guarantee: the data directory and every secret file Frenly writes are
//! private (0700 / 0600); the first admin is created only when the database
//! has no users, so a second instance on a shared database creates no second
//! admin; its API key is returned once, for the caller to print to stderr,
//! and never logged.

use std::path::Path;

use crate::config::Config;
use crate::store::{self, Db};

/// What [`prepare`] did.
pub struct Prepared {
    pub db: Db,
}

/// Create the data directory with mode 0700 if missing.
pub fn ensure_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if !dir.exists() {
        // the error names the directory (a bare "No such file or
        // directory" left the operator guessing which path)
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create directory {}: {e}", dir.display()),
                )
            })?;
    }
    Ok(())
}

/// Write a secret file with mode 0600, whole or not at all, refusing to
/// follow or replace an existing file ([`write_new`]).
pub fn write_secret(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    write_new(path, contents, 0o600)
}

/// Write a new file whole or not at all: the bytes go to a temporary file
/// beside it, which is linked to `path` only once written and synced. A
/// full disk at a first start left an empty `jwt.secret` or `tls/key.pem`
/// that every later start refused; now it leaves nothing, and the next
/// start writes the file again. An existing `path` is an error, never
/// followed or replaced.
pub fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() {
            ensure_data_dir(parent)?;
        }
    }
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("not a file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", crate::store::new_id()));
    let tmp = path.with_file_name(tmp_name);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written
}

/// Set up everything a start needs.
pub async fn prepare(cfg: &Config) -> anyhow::Result<Prepared> {
    ensure_data_dir(&cfg.data_dir)?;
    if cfg.network.tls {
        crate::server::tls::ensure_certificate(cfg)?;
    }
    crate::authn::ensure_secrets(cfg)?;
    if let Some(path) = cfg.sqlite_path() {
        if let Some(parent) = Path::new(path).parent() {
            if !parent.as_os_str().is_empty() {
                ensure_data_dir(parent)?;
            }
        }
    }
    // a request waits for a connection at most half its own time limit,
    // up to 10 s, so that an unreachable database is its 503 `unavailable`,
    // not its 408 (`request_timeout_seconds = 8` gave 408s)
    let acquire = std::time::Duration::from_millis(
        (cfg.network.request_timeout_seconds.saturating_mul(500)).clamp(1000, 10_000),
    );
    let db = match Db::connect_waiting(
        &cfg.database_url,
        cfg.database.min_connections,
        cfg.database.max_connections,
        acquire,
    )
    .await
    {
        Ok(db) => db,
        // the pool says only that it timed out (twice, with its source):
        // say where and why, without the URL's password
        Err(e) if e.is_unavailable() && cfg.sqlite_path().is_none() => anyhow::bail!(
            "cannot reach the database (database.url): {}",
            crate::store::unreachable_reason(&cfg.database_url).await
        ),
        Err(e) => return Err(e.into()),
    };
    restrict_sqlite_files(cfg);
    crate::data::check_keyring_reads_the_data(cfg, &db).await?;
    Ok(Prepared { db })
}

/// The database files hold hashes and ciphertext, but still: owner only.
fn restrict_sqlite_files(cfg: &Config) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(path) = cfg.sqlite_path() {
        for suffix in ["", "-wal", "-shm"] {
            let p = format!("{path}{suffix}");
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600));
        }
    }
}

/// Create the `admin` user and its first key when there are no users yet.
pub async fn create_first_admin(db: &Db) -> anyhow::Result<Option<String>> {
    if store::users::count(db).await? > 0 {
        return Ok(None);
    }
    let now = store::now_ms();
    let user = store::users::User {
        id: store::new_id(),
        username: "admin".into(),
        email: "admin@localhost".into(),
        password_hash: None,
        roles: vec!["admin".into()],
        created_at: now,
        tokens_valid_after: 0,
    };
    let key = crate::authn::apikey::generate();
    let hash = crate::authn::apikey::hash_hex(&key);
    let perms = vec!["admin".to_string()];
    // One transaction: a start killed between the two inserts left an
    // `admin` without a key, and every later start saw a user and printed
    // none.
    let mut tx = db.pool.begin().await?;
    match store::users::insert_on(&mut *tx, &user).await {
        Ok(true) => {}
        // Another instance on the same database won the race.
        Ok(false) => return Ok(None),
        Err(e) if e.is_unique_violation() => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    store::keys::insert_on(
        &mut *tx,
        &store::keys::NewKey {
            id: &store::new_id(),
            user_id: &user.id,
            name: "bootstrap admin key",
            key_hash: &hash,
            permissions: &perms,
            created_at: now,
            // The first admin key lasts a year; rotate it after set-up.
            expires_at: now + 365 * 24 * 3600 * 1000,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Some(key))
}
