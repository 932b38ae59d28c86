//! Forwarded-header parsing: any `Forwarded` / `X-Forwarded-For` values give
//! one client address, which is the peer when the peer is not a trusted
//! proxy and otherwise the peer or an address named in the headers.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use frenly::network::client_addr::{forwarded_chain, resolve, ForwardedHeader};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let mut headers = HeaderMap::new();
    for (i, part) in rest.split(|&b| b == b'\n').enumerate() {
        let name = if (sel >> (i % 8)) & 1 == 0 {
            "x-forwarded-for"
        } else {
            "forwarded"
        };
        if let Ok(v) = HeaderValue::from_bytes(part) {
            headers.append(HeaderName::from_static(name), v);
        }
    }
    let proxies: Vec<IpNet> = ["10.0.0.0/8", "::1/128", "192.168.0.0/16"]
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let trusted_peer = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
    let other_peer = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
    for which in [ForwardedHeader::XForwardedFor, ForwardedHeader::Forwarded] {
        assert_eq!(resolve(other_peer, &headers, &proxies, which), other_peer);
        let chain = forwarded_chain(&headers, which);
        let got = resolve(trusted_peer, &headers, &proxies, which);
        assert!(got == trusted_peer || chain.contains(&Some(got)));
    }
});
