//! JWT (compact JWS with HMAC) issuing and strict verification.
//!
//! Threat: forged tokens through `alg` confusion (`none`, RS256->HS256, an
//! algorithm the operator did not enable), key selection by the token itself
//! (`kid`, `jku`, `x5u`, `jwk`, `x5c`), ambiguous encodings (padding, stray
//! bits, duplicate JSON members), tokens without an expiry, and oversized
//! tokens. Guarantee: [`Verifier::verify`] is a pure function of the token,
//! the configured secret, algorithms and leeway, and `now`; it accepts a token
//! only if it is at most [`MAX_TOKEN_LEN`] characters, exactly three non-empty
//! canonical base64url segments without padding, a header and a payload that
//! are JSON objects without duplicate members, an `alg` that is exactly one
//! of the configured HMAC algorithms, no `crit`, a MAC computed with the
//! configured secret (compared in constant time by `jsonwebtoken`/`ring`), no
//! `aud`, a numeric `exp` with `now < exp + leeway`, and numeric `nbf`/`iat`
//! (when present) not after `now + leeway`. Header members other than `alg`
//! and `crit` never influence verification. An empty secret is refused when
//! the verifier is built, so nothing is ever verified with one.
//!
//! Not covered: what the claims mean (the caller checks `user_id`,
//! `permissions`, `jti` and revocation, see `authn`).

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::http::UniqueValue;

/// Tokens longer than this are rejected before any decoding.
pub const MAX_TOKEN_LEN: usize = 8192;
/// The largest clock leeway the configuration may set.
pub const MAX_LEEWAY_SECONDS: u64 = 60;

/// Why a token was refused (all answered as 401; told apart in logs and tests).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("the JWT secret is empty")]
    EmptySecret,
    #[error("no supported JWT algorithm is configured")]
    NoAlgorithm,
    #[error("token longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("critical header parameters are not supported")]
    Critical,
    #[error("bad signature")]
    Signature,
    #[error("unexpected audience")]
    Audience,
    #[error("invalid claim: {0}")]
    Claim(&'static str),
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token issued in the future")]
    IssuedInFuture,
}

/// The configured secret, algorithms and leeway. `Debug` never shows the secret.
pub struct Verifier {
    secret: zeroize::Zeroizing<Vec<u8>>,
    algorithms: Vec<Algorithm>,
    leeway: f64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("secret", &"<redacted>")
            .field("algorithms", &self.algorithms)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// The HMAC algorithm of this exact (case-sensitive) name.
pub fn hmac_algorithm(name: &str) -> Option<Algorithm> {
    match name {
        "HS256" => Some(Algorithm::HS256),
        "HS384" => Some(Algorithm::HS384),
        "HS512" => Some(Algorithm::HS512),
        _ => None,
    }
}

impl Verifier {
    /// Build a verifier. Names that are not HMAC algorithms are ignored (this
    /// verifier never verifies anything else); none left, or an empty secret,
    /// is an error. The first algorithm is the one [`Verifier::sign`] uses.
    pub fn new<S: AsRef<str>>(
        secret: Vec<u8>,
        algorithms: &[S],
        leeway_seconds: u64,
    ) -> Result<Verifier, JwtError> {
        if secret.is_empty() {
            return Err(JwtError::EmptySecret);
        }
        let mut algs = Vec::new();
        for a in algorithms.iter().filter_map(|a| hmac_algorithm(a.as_ref())) {
            if !algs.contains(&a) {
                algs.push(a);
            }
        }
        if algs.is_empty() {
            return Err(JwtError::NoAlgorithm);
        }
        Ok(Verifier {
            secret: zeroize::Zeroizing::new(secret),
            algorithms: algs,
            leeway: leeway_seconds.min(MAX_LEEWAY_SECONDS) as f64,
        })
    }

    /// Until when (Unix milliseconds) a token whose `exp` is `exp` (whole
    /// seconds, rounded down) may still verify: past its `exp`'s second
    /// and the leeway. A logout is kept that long (kept only to `exp`, a
    /// restart inside the leeway brought a logged-out token back).
    pub fn accepted_until_ms(&self, exp: i64) -> i64 {
        exp.saturating_add(1)
            .saturating_add(self.leeway as i64)
            .saturating_mul(1000)
    }

    /// Verify `token` at `now` (Unix seconds) and return its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Map<String, Value>, JwtError> {
        self.verify_ms(token, now.saturating_mul(1000))
    }

    /// [`verify`](Verifier::verify) at `now_ms` (Unix milliseconds): a
    /// fractional `exp` (PyJWT's `time.time() + ttl`) ends at its fraction,
    /// not at the end of its second.
    pub fn verify_ms(&self, token: &str, now_ms: i64) -> Result<Map<String, Value>, JwtError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(JwtError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed("not three segments"));
        };
        let header = object(&segment(h)?)?;
        let payload_bytes = segment(p)?;
        segment(s)?;

        let alg = match header.get("alg") {
            Some(Value::String(name)) => hmac_algorithm(name)
                .filter(|a| self.algorithms.contains(a))
                .ok_or(JwtError::Algorithm)?,
            _ => return Err(JwtError::Algorithm),
        };
        if header.contains_key("crit") {
            return Err(JwtError::Critical);
        }
        let message = &token[..h.len() + 1 + p.len()];
        let key = DecodingKey::from_secret(&self.secret);
        match jsonwebtoken::crypto::verify(s, message.as_bytes(), &key, alg) {
            Ok(true) => {}
            _ => return Err(JwtError::Signature),
        }

        let claims = object(&payload_bytes)?;
        if claims.contains_key("aud") {
            return Err(JwtError::Audience);
        }
        let now = now_ms as f64 / 1000.0;
        match claims.get("exp") {
            Some(Value::Number(n)) => {
                let exp = n.as_f64().ok_or(JwtError::Claim("exp"))?;
                if now >= exp + self.leeway {
                    return Err(JwtError::Expired);
                }
            }
            _ => return Err(JwtError::Claim("exp")),
        }
        if let Some(v) = claims.get("nbf") {
            // whole seconds: a fraction within the current second (PyJWT's
            // `time.time()`, a clock a little ahead) is not in the future
            let nbf = v.as_f64().ok_or(JwtError::Claim("nbf"))?.floor();
            if nbf > now + self.leeway {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(v) = claims.get("iat") {
            let iat = v.as_f64().ok_or(JwtError::Claim("iat"))?.floor();
            if iat > now + self.leeway {
                return Err(JwtError::IssuedInFuture);
            }
        }
        Ok(claims)
    }

    /// Sign `claims` with the first configured algorithm.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, JwtError> {
        let alg = self
            .algorithms
            .first()
            .copied()
            .ok_or(JwtError::NoAlgorithm)?;
        jsonwebtoken::encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(&self.secret),
        )
        .map_err(|_| JwtError::Malformed("claims could not be encoded"))
    }
}

/// Decode one segment: non-empty, only the url-safe alphabet, canonical.
fn segment(seg: &str) -> Result<Vec<u8>, JwtError> {
    if seg.is_empty() {
        return Err(JwtError::Malformed("empty segment"));
    }
    if !seg
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(JwtError::Malformed("segment is not base64url"));
    }
    // URL_SAFE_NO_PAD refuses padding and non-zero trailing bits.
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(seg)
        .map_err(|_| JwtError::Malformed("segment is not canonical base64url"))
}

/// Parse a JSON object, refusing duplicate member names at any depth (with
/// the request bodies' own check, `http::UniqueValue`).
fn object(bytes: &[u8]) -> Result<Map<String, Value>, JwtError> {
    match serde_json::from_slice::<UniqueValue>(bytes) {
        Ok(UniqueValue(Value::Object(m))) => Ok(m),
        Ok(_) => Err(JwtError::Malformed("not a JSON object")),
        Err(_) => Err(JwtError::Malformed("invalid JSON")),
    }
}

/// The claims Frenly issues (and requires on top of the profile above).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub user_id: String,
    pub permissions: Vec<String>,
    #[serde(deserialize_with = "numeric_date")]
    pub iat: i64,
    #[serde(deserialize_with = "numeric_date")]
    pub exp: i64,
    pub jti: String,
    /// Frenly's private claim: when Frenly issued the token, in Unix
    /// milliseconds (its second is `iat`). `iat` alone cannot tell a token
    /// issued in the second of a password change before the change from one
    /// issued after it ([`Claims::issued_before`]). Absent from tokens
    /// minted elsewhere (PyJWT with the secret), which are judged by `iat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat_ms: Option<i64>,
}

/// RFC 7519 2: a NumericDate is a JSON number, possibly with a fraction
/// (PyJWT users often write `time.time() + 3600`): whole seconds, rounded
/// down. Frenly itself writes integers. The verifier has already compared
/// the exact values with the clock.
fn numeric_date<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(i) = n.as_i64() {
        return Ok(i);
    }
    match n.as_f64() {
        Some(f) if f.is_finite() && f.abs() < 9.0e15 => Ok(f.floor() as i64),
        _ => Err(serde::de::Error::custom("a NumericDate out of range")),
    }
}

impl Claims {
    /// Claims for `user_id`, valid `ttl_seconds` from `now`.
    pub fn new(user_id: &str, permissions: Vec<String>, now: i64, ttl_seconds: i64) -> Claims {
        Claims {
            sub: user_id.to_string(),
            user_id: user_id.to_string(),
            permissions,
            iat: now,
            exp: now.saturating_add(ttl_seconds),
            jti: crate::store::new_id(),
            iat_ms: None,
        }
    }

    /// The claims Frenly issues for `user_id` at `now_ms` (Unix
    /// milliseconds), valid `ttl_seconds`: [`Claims::new`] with the issue
    /// time to the millisecond in `iat_ms`.
    pub fn issue(user_id: &str, permissions: Vec<String>, now_ms: i64, ttl_seconds: i64) -> Claims {
        Claims {
            iat_ms: Some(now_ms),
            ..Claims::new(user_id, permissions, now_ms.div_euclid(1000), ttl_seconds)
        }
    }

    /// Was this token issued at or before `cut_off` (Unix ms; 0 = none), the
    /// moment its user's earlier tokens stopped working (a password change)?
    /// A token is judged by the earliest moment it may have been issued:
    /// its `iat_ms`, or, without one, the start of its `iat` second. So a
    /// token issued in the same second as the change, before it, is refused
    /// (it was not, when the cut-off and `iat` were compared in whole
    /// seconds), one Frenly issued a millisecond after it is not, and one
    /// minted elsewhere in that second is refused (it cannot show it came
    /// after). A token issued in the very millisecond of the change counts
    /// as before it.
    pub fn issued_before(&self, cut_off: i64) -> bool {
        if cut_off <= 0 {
            return false;
        }
        let earliest = self.iat_ms.unwrap_or_else(|| self.iat.saturating_mul(1000));
        earliest <= cut_off
    }

    /// The server's requirements on verified claims: `sub`, `user_id` (equal
    /// strings), `permissions` (strings), `jti`, integer `iat` and `exp`.
    pub fn from_verified(claims: Map<String, Value>) -> Result<Claims, JwtError> {
        let c: Claims = serde_json::from_value(Value::Object(claims))
            .map_err(|_| JwtError::Claim("required claims missing"))?;
        if c.sub != c.user_id || c.sub.is_empty() || c.jti.is_empty() {
            return Err(JwtError::Claim("sub/user_id/jti"));
        }
        // `iat_ms` is within `iat`'s second, or the token is not one
        // Frenly issued
        if c.iat_ms.is_some_and(|ms| ms.div_euclid(1000) != c.iat) {
            return Err(JwtError::Claim("iat_ms"));
        }
        Ok(c)
    }
}

/// Read the JWT secret file: its bytes, without surrounding ASCII
/// whitespace (a trailing newline), are the HMAC key. That is what a
/// Python client gets from `open(path).read().strip()` and hands to PyJWT,
/// the guide's `SECRET_KEY` style, so tokens minted on either side verify on
/// the other; Frenly writes 64 random bytes as base64 text (512 bits of
/// entropy in 88 characters) and uses that text as it is. At least 32 bytes
/// (256 bits) are required.
pub fn read_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    // a configuration error (exit 2, naming the key and the file), as the
    // keyring's and the audit file's are: it said only "Permission denied"
    let unusable = |reason: String| {
        crate::config::ConfigError::unreadable(
            "the JWT secret file",
            "auth.jwt_secret_file",
            path,
            reason,
        )
    };
    let raw =
        crate::config::read_named_file(path, 64 << 10).map_err(|e| unusable(e.to_string()))?;
    let bytes = raw.trim_ascii().to_vec();
    if bytes.len() < 32 {
        return Err(unusable("it holds fewer than 256 bits; refusing to start".into()).into());
    }
    Ok(bytes)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v() -> Verifier {
        Verifier::new(b"0123456789abcdef0123456789abcdef".to_vec(), &["HS256"], 0).unwrap()
    }

    /// A password change at 1000.500 s: a Frenly token from 1000.499 s is
    /// before it, one from 1000.501 s after it (both have `iat` 1000, which
    /// alone cannot tell them apart); a token minted elsewhere in that
    /// second (no `iat_ms`) cannot show it came after and is refused.
    #[test]
    fn the_cut_off_is_judged_to_the_millisecond() {
        let cut = 1_000_500;
        let at = |ms| Claims::issue("u", vec![], ms, 60);
        assert!(at(1_000_499).issued_before(cut));
        assert!(at(1_000_500).issued_before(cut));
        assert!(!at(1_000_501).issued_before(cut));
        assert!(!at(1_001_000).issued_before(cut));
        assert_eq!(at(1_000_501).iat, 1000);
        let foreign = Claims::new("u", vec![], 1000, 60);
        assert!(foreign.issued_before(cut));
        assert!(!Claims::new("u", vec![], 1001, 60).issued_before(cut));
        assert!(!at(5).issued_before(0), "no cut-off");
        // an `iat_ms` outside `iat`'s second is not Frenly's
        let c = serde_json::to_value(at(1_000_499)).unwrap();
        let mut m = c.as_object().unwrap().clone();
        assert!(Claims::from_verified(m.clone()).is_ok());
        m.insert("iat_ms".into(), serde_json::json!(999_999));
        assert!(Claims::from_verified(m).is_err());
    }

    #[test]
    fn fractional_numeric_dates_are_whole_seconds() {
        use serde_json::json;
        let mut m = Map::new();
        for (k, val) in [
            ("sub", json!("u1")),
            ("user_id", json!("u1")),
            ("permissions", json!(["read:tasks"])),
            ("iat", json!(1000.25)),
            ("exp", json!(4600.75)),
            ("jti", json!("j")),
        ] {
            m.insert(k.into(), val);
        }
        let c = Claims::from_verified(m.clone()).unwrap();
        assert_eq!((c.iat, c.exp), (1000, 4600));
        m.insert("exp".into(), json!("4600"));
        assert!(Claims::from_verified(m.clone()).is_err());
        m.insert("exp".into(), json!(1e300));
        assert!(Claims::from_verified(m).is_err());
    }

    #[test]
    fn round_trip_and_claims() {
        let v = v();
        let c = Claims::new("u1", vec!["read:tasks".into()], 1000, 60);
        let t = v.sign(&c).unwrap();
        let back = Claims::from_verified(v.verify(&t, 1000).unwrap()).unwrap();
        assert_eq!(back, c);
        assert_eq!(v.verify(&t, 1060), Err(JwtError::Expired));
        assert_eq!(v.verify(&t, 999), Err(JwtError::IssuedInFuture));
    }

    #[test]
    fn empty_secret_is_refused() {
        assert_eq!(
            Verifier::new(vec![], &["HS256"], 0).unwrap_err(),
            JwtError::EmptySecret
        );
        assert_eq!(
            Verifier::new(vec![1], &["RS256", "none"], 0).unwrap_err(),
            JwtError::NoAlgorithm
        );
    }

    #[test]
    fn leeway_extends_exp() {
        let v = Verifier::new(b"k".repeat(32), &["HS256"], 30).unwrap();
        let t = v.sign(&Claims::new("u", vec![], 1000, 10)).unwrap();
        assert!(v.verify(&t, 1039).is_ok());
        assert_eq!(v.verify(&t, 1040), Err(JwtError::Expired));
    }

    /// A fractional `exp` ends at its fraction (the clock was cut to whole
    /// seconds: `exp = time.time() + 0.3` verified up to a second late),
    /// and a logout outlives every instant the token verifies at.
    #[test]
    fn a_fractional_exp_ends_at_its_fraction_and_logouts_outlive_it() {
        let v = v();
        let t = v
            .sign(
                &serde_json::json!({"sub": "u", "user_id": "u", "permissions": [],
                                      "jti": "j", "iat": 1000, "exp": 1000.3}),
            )
            .unwrap();
        assert!(v.verify_ms(&t, 1_000_299).is_ok());
        assert_eq!(v.verify_ms(&t, 1_000_300), Err(JwtError::Expired));
        assert_eq!(v.verify_ms(&t, 1_000_700), Err(JwtError::Expired));
        for leeway in [0, 30] {
            let v = Verifier::new(b"k".repeat(32), &["HS256"], leeway).unwrap();
            let t = v
                .sign(
                    &serde_json::json!({"sub": "u", "user_id": "u", "permissions": [],
                                          "jti": "j", "iat": 1000, "exp": 1000.999}),
                )
                .unwrap();
            let exp = Claims::from_verified(v.verify(&t, 1000).unwrap())
                .unwrap()
                .exp;
            let until = v.accepted_until_ms(exp);
            // the last instant it verifies at is 1000.998 s + leeway
            assert_eq!(until, 1000 * (1001 + leeway as i64), "{leeway}");
            assert!(v.verify_ms(&t, until - 2).is_ok(), "{leeway}");
            assert!(v.verify_ms(&t, until).is_err(), "{leeway}");
        }
    }

    #[test]
    fn claims_without_user_id_are_refused() {
        let v = v();
        let t = v
            .sign(&serde_json::json!({"sub": "u", "exp": 2000, "jti": "j", "permissions": []}))
            .unwrap();
        let m = v.verify(&t, 1000).unwrap();
        assert!(Claims::from_verified(m).is_err());
    }

    #[test]
    fn the_secret_files_text_is_the_key_as_pyjwt_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("jwt.secret");
        // valid base64 (48 characters): used as text, never decoded
        let text = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlq";
        std::fs::write(&f, format!("  {text}\r\n")).unwrap();
        assert_eq!(read_secret(&f).unwrap(), text.as_bytes());
        // binary bytes are kept as they are (no lossy UTF-8 on the way)
        let bin: Vec<u8> = (0..40u8).map(|i| 0x80 | i).collect();
        std::fs::write(&f, &bin).unwrap();
        assert_eq!(read_secret(&f).unwrap(), bin);
        // fewer than 32 bytes once trimmed: refused
        std::fs::write(&f, format!("{}\n\n", "k".repeat(31))).unwrap();
        assert!(read_secret(&f).is_err());
    }
}
