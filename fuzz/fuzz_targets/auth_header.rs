//! API-key and `Authorization` header parsing: any header bytes give a
//! token or an error, never a panic.
#![no_main]
use frenly::authn::{apikey, bearer_token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        if let Ok(token) = bearer_token(&v) {
            // A token is never empty and always a suffix of the header.
            assert!(!token.is_empty());
            assert!(v.to_str().is_ok_and(|s| s.ends_with(token)));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if apikey::well_formed(s) {
            assert_eq!(s.len(), apikey::PREFIX.len() + apikey::BODY_LEN);
            assert!(s.starts_with(apikey::PREFIX));
        }
        let _ = apikey::hash_hex(s);
        let _ = frenly::authz::PermissionSet::parse(s.split(','));
    }
});
