//! API-key format, generation and hashing.
//!
//! Keys are `frn_` + 43 url-safe base64 characters (32 bytes from the OS
//! random source). Only the SHA-256 of the whole key is ever stored.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

pub const PREFIX: &str = "frn_";
pub const BODY_LEN: usize = 43;

/// A fresh key from the OS random source.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let body = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    format!("{PREFIX}{body}")
}

/// SHA-256 of the key as given.
pub fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Hex SHA-256, as stored.
pub fn hash_hex(key: &str) -> String {
    hex::encode(hash(key))
}

/// Does `key` have the shape of a Frenly key? (Checked before any lookup.)
pub fn well_formed(key: &str) -> bool {
    key.len() == PREFIX.len() + BODY_LEN
        && key.starts_with(PREFIX)
        && key[PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
