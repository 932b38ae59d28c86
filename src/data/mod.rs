//! Layer 5 — data protection: Fernet encryption at rest and the keyring.
//!
//! Threat: a stolen database file, backup or WAL revealing task contents.
//! Guarantee: task `description`, `input` and `result` are stored only as
//! Fernet tokens under a key from the keyring (0600 file, key ids so old rows
//! stay readable after rotation).

pub mod fernet;
pub mod keyring;

/// The keyring file (`encryption.keyring_file`) cannot be written or read:
/// a configuration error naming the key.
pub fn unusable_keyring(
    cfg: &crate::config::Config,
    reason: impl std::fmt::Display,
) -> crate::config::ConfigError {
    crate::config::ConfigError::unreadable(
        "keyring",
        "encryption.keyring_file",
        &cfg.keyring_file,
        reason,
    )
}

/// Make sure the keyring reads what the database holds, before serving:
/// generate it (one key, `k1`) only when absent and no stored value is
/// encrypted; refuse to start (a configuration error naming
/// `encryption.keyring_file`) when it is absent but data is (a new key
/// cannot read the old data, and data written under a new `k1` could
/// never be merged with it), or when a key id in use is missing from it or
/// its key does not decrypt that key's data (a key changed under its id).
/// Before, each of these started and answered 500 on every list and claim.
pub async fn check_keyring_reads_the_data(
    cfg: &crate::config::Config,
    db: &crate::store::Db,
) -> anyhow::Result<()> {
    let samples = crate::store::tasks::key_samples(db).await?;
    let in_use = || {
        samples
            .iter()
            .map(|(id, _)| format!("`{id}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if std::fs::symlink_metadata(&cfg.keyring_file).is_err() && !samples.is_empty() {
        return Err(unusable_keyring(
            cfg,
            format!(
                "absent, but the database holds data encrypted under {}: restore the keyring it was written with (a new one cannot read it)",
                in_use()
            ),
        )
        .into());
    }
    ensure_keyring(cfg).map_err(|e| unusable_keyring(cfg, format!("{e:#}")))?;
    let ring = keyring::Keyring::load(&cfg.keyring_file).map_err(|e| unusable_keyring(cfg, e))?;
    if let Some(w) = crate::monitoring::check::loose_mode_warning(&cfg.keyring_file, "keyring") {
        tracing::warn!("{w}");
    }
    for (id, sample) in &samples {
        if ring.decrypt(sample).is_err() {
            let why = if ring.has_key(id) {
                format!("its key `{id}` does not decrypt the data stored under `{id}` (was the key changed?)")
            } else {
                format!("it holds no key `{id}`, which stored data is encrypted under (keys in use: {})", in_use())
            };
            return Err(unusable_keyring(cfg, why).into());
        }
    }
    // instances sharing the database share the keyring: one that made its
    // own `k1` would write rows no other could read, and nothing in the
    // data shows it before the first one is written (probe I)
    let ours = ring.fingerprints();
    for (id, registered) in crate::store::fingerprints::register(db, &ours).await? {
        let Some((_, mine)) = ours.iter().find(|(k, _)| *k == id) else {
            continue;
        };
        if *mine == registered {
            continue;
        }
        let used = samples.iter().any(|(k, _)| *k == id);
        if !used && db.engine == crate::store::Engine::Sqlite {
            // a lone instance's regenerated keyring, before any value used
            // the old key: nothing to read with it, and no other instance
            // on this file can write with it
            tracing::warn!(key = %id, "the keyring's key replaced one no stored value uses; recorded the new one");
            crate::store::fingerprints::replace(db, &id, mine).await?;
            continue;
        }
        return Err(unusable_keyring(
            cfg,
            format!(
                "its key `{id}` is not the `{id}` other instances of this database use: give every instance the same keyring file (if no instance uses that key any more and no value is stored under it, remove its row: DELETE FROM key_fingerprints WHERE key_id = '{id}')"
            ),
        )
        .into());
    }
    Ok(())
}

/// Generate the keyring (one Fernet key, id `k1`) into a 0600 file when absent.
pub fn ensure_keyring(cfg: &crate::config::Config) -> anyhow::Result<()> {
    use base64::Engine;
    use rand::RngCore;
    if !cfg.keyring_file.exists() {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        let doc = serde_json::json!({
            "primary": "k1",
            "keys": [{
                "id": "k1",
                "key": base64::engine::general_purpose::URL_SAFE.encode(key),
                "created_at": crate::store::rfc3339(crate::store::now_ms()),
            }],
        });
        crate::app::bootstrap::write_secret(
            &cfg.keyring_file,
            serde_json::to_vec_pretty(&doc)?.as_slice(),
        )?;
    }
    Ok(())
}
