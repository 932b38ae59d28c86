//! The client address: TCP peer, or the forwarded address from a trusted proxy.
//!
//! Addresses are canonical: an IPv4 client reaching a dual-stack (`[::]`)
//! listener, or named that way in a forwarding header, is its IPv4 address
//! (`::ffff:192.0.2.1` is `192.0.2.1`), so that IPv4 trusted proxies,
//! allowlists and bans written in IPv4 match it.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

pub use crate::config::ForwardedHeader;

/// The TCP peer, inserted by the server for every connection.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// The one client address that limits, bans, IDS and audit all use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// Is `ip` one of the trusted proxies?
pub fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    proxies.iter().any(|n| n.contains(&ip))
}

/// The TCP peer as every layer sees it (IPv4-mapped IPv6 as IPv4).
pub fn canonical_peer(peer: SocketAddr) -> SocketAddr {
    SocketAddr::new(peer.ip().to_canonical(), peer.port())
}

/// Parse one hop of `X-Forwarded-For` or a `Forwarded: for=` value.
pub fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    let ip = if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else if let Ok(sa) = s.parse::<SocketAddr>() {
        sa.ip()
    } else {
        // "[v6]" without a port
        s.strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|r| r.parse::<IpAddr>().ok())?
    };
    Some(ip.to_canonical())
}

/// The forwarding chain in `which` header, left (client) to right (nearest
/// proxy). The other header is never read (see [`ForwardedHeader`]).
pub fn forwarded_chain(headers: &HeaderMap, which: ForwardedHeader) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    match which {
        ForwardedHeader::Forwarded => {
            for v in headers.get_all("forwarded") {
                let Ok(v) = v.to_str() else {
                    hops.push(None);
                    continue;
                };
                for elem in v.split(',') {
                    let f = elem
                        .split(';')
                        .filter_map(|kv| kv.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .map(|(_, val)| parse_hop(val));
                    // an element without `for=` is a hop whose client is unknown
                    hops.push(f.flatten());
                }
            }
        }
        ForwardedHeader::XForwardedFor => {
            for v in headers.get_all("x-forwarded-for") {
                match v.to_str() {
                    Ok(v) => hops.extend(v.split(',').map(parse_hop)),
                    Err(_) => hops.push(None),
                }
            }
        }
    }
    hops
}

/// Resolve the client address. Headers count only when `peer` is a trusted
/// proxy; then the right-most hop that is not itself a trusted proxy is the
/// client. An unparsable hop stops the walk at the last good address.
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    proxies: &[IpNet],
    which: ForwardedHeader,
) -> IpAddr {
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_chain(headers, which).into_iter().rev() {
        match hop {
            Some(ip) => {
                client = ip;
                if !trusted(ip, proxies) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    /// A proxy appends to the header it knows and passes the other one on
    /// as the client wrote it: only the configured one may be read.
    #[test]
    fn only_the_configured_header_names_the_client() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let proxies = ["10.0.0.0/8".parse().unwrap()];
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("forwarded", "for=198.51.100.9"),
        ]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            resolve(proxy, &h, &proxies, ForwardedHeader::XForwardedFor),
            ip("203.0.113.7")
        );
        assert_eq!(
            resolve(proxy, &h, &proxies, ForwardedHeader::Forwarded),
            ip("198.51.100.9")
        );
        // the right-most untrusted hop: what the client wrote is to its left
        let h = headers(&[(
            "forwarded",
            "for=1.2.3.4, for=\"[2001:db8::1]:443\";proto=https",
        )]);
        assert_eq!(
            resolve(proxy, &h, &proxies, ForwardedHeader::Forwarded),
            ip("2001:db8::1")
        );
        // an element without `for=` stops the walk at the proxy
        let h = headers(&[("forwarded", "for=1.2.3.4, proto=https")]);
        assert_eq!(
            resolve(proxy, &h, &proxies, ForwardedHeader::Forwarded),
            proxy
        );
        // an IPv4 hop written as IPv4-mapped IPv6 is the IPv4 address
        let h = headers(&[("x-forwarded-for", "::ffff:203.0.113.7, [::ffff:10.0.0.2]")]);
        assert_eq!(
            resolve(proxy, &h, &proxies, ForwardedHeader::XForwardedFor),
            ip("203.0.113.7")
        );
        // an untrusted peer's headers are never read
        let h = headers(&[("x-forwarded-for", "203.0.113.7")]);
        assert_eq!(
            resolve(
                ip("192.0.2.1"),
                &h,
                &proxies,
                ForwardedHeader::XForwardedFor
            ),
            ip("192.0.2.1")
        );
    }
}
