//! The IDS decoder and detector: any request (method, target, headers and
//! body from the input, split at 0x00 bytes; headers as `name:value`) gives
//! a verdict or an `IdsError`, never a panic or a hang.
#![no_main]
use std::sync::OnceLock;

use frenly::apisec::ids::{decode, Ids, RequestView};
use frenly::config::{load, Source};
use libfuzzer_sys::fuzz_target;

fn ids() -> Option<&'static Ids> {
    static IDS: OnceLock<Option<Ids>> = OnceLock::new();
    IDS.get_or_init(|| {
        load(&Source::default())
            .ok()
            .map(|c| Ids::new(&c.ids, &c.security.api_key_header, &c.gateway.routes))
    })
    .as_ref()
}

fuzz_target!(|data: &[u8]| {
    let Some(ids) = ids() else { return };
    let mut parts = data.splitn(4, |&b| b == 0);
    let method = parts.next().and_then(|m| std::str::from_utf8(m).ok()).unwrap_or("GET");
    let target = parts.next().and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("/");
    let headers: Vec<(&str, &[u8])> = parts
        .next()
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter_map(|h| {
            let i = h.iter().position(|&b| b == b':')?;
            let (name, value) = h.split_at(i);
            Some((std::str::from_utf8(name).ok()?, value.get(1..)?))
        })
        .collect();
    let body = parts.next().unwrap_or_default();
    let view = RequestView { method, target, headers, body };
    let _ = ids.inspect(&view);
    let _ = ids.inspect_routed(&view, Some("/api/tasks/{id}"));
    let _ = decode::decode(target, true);
    let _ = decode::decode(target, false);
});
