//! The Fernet spec's acceptance vectors, plus streaming round trips.

use super::*;
use serde_json::Value;

fn vectors(name: &str) -> Vec<Value> {
    let path = format!(
        "{}/tests/data/vectors/fernet/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn secs(v: &Value) -> u64 {
    chrono::DateTime::parse_from_rfc3339(v["now"].as_str().unwrap())
        .unwrap()
        .timestamp() as u64
}

#[test]
fn generate_vectors() {
    let cases = vectors("generate");
    assert!(!cases.is_empty());
    for c in cases {
        let key = Key::from_base64(c["secret"].as_str().unwrap()).unwrap();
        let iv: Vec<u8> = c["iv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        let token = key.encrypt_at(
            c["src"].as_str().unwrap().as_bytes(),
            secs(&c),
            iv.try_into().unwrap(),
        );
        assert_eq!(token, c["token"].as_str().unwrap());
    }
}

#[test]
fn verify_vectors() {
    let cases = vectors("verify");
    assert!(!cases.is_empty());
    for c in cases {
        let key = Key::from_base64(c["secret"].as_str().unwrap()).unwrap();
        let ttl = c["ttl_sec"].as_u64();
        let plain = key
            .decrypt_at(c["token"].as_str().unwrap(), ttl, secs(&c))
            .unwrap();
        assert_eq!(plain, c["src"].as_str().unwrap().as_bytes());
    }
}

#[test]
fn invalid_vectors() {
    let cases = vectors("invalid");
    assert_eq!(cases.len(), 8);
    for c in cases {
        let key = Key::from_base64(c["secret"].as_str().unwrap()).unwrap();
        let r = key.decrypt_at(
            c["token"].as_str().unwrap(),
            c["ttl_sec"].as_u64(),
            secs(&c),
        );
        assert!(
            matches!(r, Err(FernetError::InvalidToken(_))),
            "{}: {r:?}",
            c["desc"]
        );
    }
}

#[test]
fn round_trip_and_wrong_key() {
    let k = Key::generate();
    let k2 = Key::from_base64(&k.to_base64()).unwrap();
    for len in [0usize, 1, 15, 16, 17, 1000] {
        let msg = vec![7u8; len];
        let t = k.encrypt(&msg);
        assert_eq!(k2.decrypt(&t).unwrap(), msg);
        assert!(Key::generate().decrypt(&t).is_err());
    }
    assert!(Key::from_base64("short").is_err());
    assert!(Key::from_base64(&format!("{}\n", k.to_base64())).is_ok());
}

#[test]
fn ttl_is_enforced() {
    let k = Key::generate();
    let t = k.encrypt_at(b"x", 1000, [0; 16]);
    assert!(k.decrypt_at(&t, Some(10), 1010).is_ok());
    assert!(k.decrypt_at(&t, Some(10), 1011).is_err());
    assert!(k.decrypt_at(&t, Some(10), 1000 - 61).is_err());
    assert!(k.decrypt_at(&t, None, 1_000_000).is_ok());
}

#[test]
fn stream_matches_one_shot_format() {
    let k = Key::generate();
    for len in [0usize, 5, 16, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
        let mut out = Vec::new();
        let n = k.encrypt_stream(&msg[..], &mut out).unwrap();
        assert_eq!(n as usize, len);
        let token = String::from_utf8(out).unwrap();
        assert_eq!(k.decrypt(&token).unwrap(), msg, "len {len}");
    }
}

#[test]
fn file_round_trip_and_tamper() {
    let dir = tempfile::tempdir().unwrap();
    let k = Key::generate();
    let bar = indicatif::ProgressBar::hidden();
    for len in [0usize, 1, 16, CHUNK * 2 + 5] {
        let msg: Vec<u8> = (0..len).map(|i| (i % 256) as u8).collect();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let c = dir.path().join("c");
        std::fs::write(&a, &msg).unwrap();
        k.encrypt_file(&a, &b, &bar).unwrap();
        k.decrypt_file(&b, &c, &bar).unwrap();
        assert_eq!(std::fs::read(&c).unwrap(), msg);
        std::fs::remove_file(&c).unwrap();
        // flip one character in the middle of the token
        let mut t = std::fs::read(&b).unwrap();
        let i = t.len() / 2;
        t[i] = if t[i] == b'A' { b'B' } else { b'A' };
        std::fs::write(&b, &t).unwrap();
        assert!(k.decrypt_file(&b, &c, &bar).is_err());
        assert!(!c.exists());
        // wrong key
        k.encrypt_file(&a, &b, &bar).unwrap();
        assert!(Key::generate().decrypt_file(&b, &c, &bar).is_err());
        assert!(!c.exists());
        // nothing left behind but a, b
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// decrypt(encrypt(m)) == m, for any message and key.
        #[test]
        fn encrypt_then_decrypt_is_identity(
            key in proptest::array::uniform32(any::<u8>()),
            msg in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let key = Key::from_bytes(&key);
            let token = key.encrypt(&msg);
            prop_assert_eq!(key.decrypt(&token).unwrap(), msg.clone());
            prop_assert_eq!(key.decrypt_with_ttl(&token, 60).unwrap(), msg);
        }

        /// Any one-byte change of the token text is rejected.
        #[test]
        fn any_one_byte_change_is_rejected(
            key in proptest::array::uniform32(any::<u8>()),
            msg in proptest::collection::vec(any::<u8>(), 0..256),
            pos in any::<proptest::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let key = Key::from_bytes(&key);
            let mut token = key.encrypt(&msg).into_bytes();
            let i = pos.index(token.len());
            prop_assume!(token[i] != byte);
            token[i] = byte;
            let changed = String::from_utf8_lossy(&token).into_owned();
            prop_assert!(key.decrypt(&changed).is_err(), "accepted a changed token at byte {}", i);
        }

        /// Any one-byte change of the decoded token (version, time, IV,
        /// ciphertext or MAC) is rejected.
        #[test]
        fn any_one_byte_change_of_the_raw_token_is_rejected(
            msg in proptest::collection::vec(any::<u8>(), 0..256),
            pos in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let key = Key::generate();
            let mut raw = URL_SAFE.decode(key.encrypt(&msg)).unwrap();
            let i = pos.index(raw.len());
            raw[i] ^= flip;
            prop_assert!(key.decrypt(&URL_SAFE.encode(&raw)).is_err());
        }
    }
}
