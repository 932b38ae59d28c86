//! Fernet token decoding. Mode 0: decrypt arbitrary text. Mode 1: encrypt
//! the input, change one byte of the token, and check that the change is
//! rejected (or, for a base64 alias of the same bytes, gives the same
//! plaintext) and that the unchanged token round-trips.
#![no_main]
use frenly::data::fernet::Key;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4=";

fuzz_target!(|data: &[u8]| {
    let Ok(key) = Key::from_base64(KEY) else { return };
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = key.decrypt(s);
            let _ = key.decrypt_with_ttl(s, 60);
        }
        return;
    }
    let Some((pos, msg)) = rest.split_first_chunk::<3>() else {
        return;
    };
    let token = key.encrypt(msg);
    assert_eq!(key.decrypt(&token).ok().as_deref(), Some(msg));
    let mut bytes = token.into_bytes();
    let i = (u16::from_le_bytes([pos[0], pos[1]]) as usize) % bytes.len();
    let Some(b) = bytes.get_mut(i) else { return };
    let new = pos[2];
    if *b == new {
        return;
    }
    *b = new;
    if let Ok(s) = String::from_utf8(bytes) {
        if let Ok(out) = key.decrypt(&s) {
            // Only a non-canonical base64 spelling of the same bytes may pass.
            assert_eq!(out, msg, "a changed token decrypted to something else");
        }
    }
});
