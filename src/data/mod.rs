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
