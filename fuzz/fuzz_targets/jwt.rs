//! The JWT verifier. Mode 0: the input is the token itself. Mode 1: the
//! input is a header and a payload (split at the first 0xff byte) that are
//! correctly signed, so the claim checks past the signature see arbitrary
//! JSON too. Any input gives claims or an error, never a panic, and an
//! unsigned or wrongly signed token is never accepted.
#![no_main]
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use frenly::authn::jwt::Verifier;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
const NOW: i64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = Verifier::new(SECRET.to_vec(), &["HS256", "HS512"], 30) else {
        return;
    };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(token) = std::str::from_utf8(rest) {
            // Random bytes can never carry a valid signature.
            assert!(v.verify(token, NOW).is_err());
        }
        return;
    }
    let (header, payload) = match rest.iter().position(|&b| b == 0xff) {
        Some(i) => (rest.get(..i).unwrap_or_default(), rest.get(i + 1..).unwrap_or_default()),
        None => (&b"{\"alg\":\"HS256\",\"typ\":\"JWT\"}"[..], rest),
    };
    let message = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(payload));
    for alg in [Algorithm::HS256, Algorithm::HS384] {
        let Ok(sig) = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(SECRET),
            alg,
        ) else {
            return;
        };
        let token = format!("{message}.{sig}");
        if let Ok(claims) = v.verify(&token, NOW) {
            // Accepted: it must have an exp in the future and no aud.
            assert!(claims.get("exp").and_then(|e| e.as_f64()).is_some());
            assert!(!claims.contains_key("aud"));
            let _ = frenly::authn::jwt::Claims::from_verified(claims);
        }
    }
});
