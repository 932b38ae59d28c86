//! Password hashing: argon2id (RFC 9106) with OWASP's parameters.
//!
//! Threat: a database leak turning into passwords (offline cracking), user
//! enumeration by timing (a login for an unknown user answering faster), and
//! memory exhaustion by many concurrent logins (each hash uses 19 MiB).
//! Guarantee: hashes are PHC strings of argon2id, m = 19 MiB, t = 2, p = 1,
//! 16-byte random salt; [`Passwords::verify`] always runs one argon2 verify,
//! against a dummy hash with the same parameters when there is no stored hash
//! (unknown user, or the bootstrap admin without password), so both cost the
//! same; hashing runs off the async workers, at most `2 × cores` at a time.
//!
//! Not covered: password strength beyond a length rule (see `identity`).

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore;
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

/// argon2id with m = 19 MiB, t = 2, p = 1 (OWASP's first recommendation).
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hash a password (blocking: ~tens of ms).
pub fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

/// Verify a password against a PHC hash (blocking). A malformed hash never matches.
pub fn verify_blocking(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// The password hasher shared by requests.
pub struct Passwords {
    permits: Arc<Semaphore>,
    dummy: Arc<str>,
}

impl Passwords {
    /// Computes the dummy hash once (so the first unknown-user login costs
    /// no more than any other).
    pub fn new() -> anyhow::Result<Passwords> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut pw = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut pw);
        let dummy = hash_blocking(&hex::encode(pw))?;
        Ok(Passwords {
            permits: Arc::new(Semaphore::new((cores * 2).max(2))),
            dummy: dummy.into(),
        })
    }

    /// Hash a password off the async workers.
    pub async fn hash(&self, password: Zeroizing<String>) -> anyhow::Result<String> {
        let _permit = self.permits.acquire().await?;
        tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
    }

    /// Verify `password` against `stored`; with no stored hash, verify against
    /// the dummy hash (same cost) and answer false.
    pub async fn verify(&self, stored: Option<String>, password: Zeroizing<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let dummy = self.dummy.clone();
        let r = tokio::task::spawn_blocking(move || match stored {
            Some(h) => verify_blocking(&h, &password),
            None => {
                let _ = verify_blocking(&dummy, &password);
                false
            }
        })
        .await;
        r.unwrap_or(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_argon2id_and_verifies() {
        let h = hash_blocking("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify_blocking(&h, "correct horse"));
        assert!(!verify_blocking(&h, "correct horsE"));
        assert!(!verify_blocking("not a hash", "x"));
        assert_ne!(h, hash_blocking("correct horse").unwrap(), "salted");
    }

    #[tokio::test]
    async fn missing_hash_never_verifies() {
        let p = Passwords::new().unwrap();
        assert!(!p.verify(None, Zeroizing::new(String::new())).await);
    }
}
