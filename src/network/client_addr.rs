//! The client address: TCP peer, or the forwarded address from a trusted proxy.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;

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

/// Parse one hop of `X-Forwarded-For` or a `Forwarded: for=` value.
pub fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim().trim_matches('"');
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    // "[v6]" without a port
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// The forwarding chain, left (client) to right (nearest proxy).
pub fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
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
            if let Some(h) = f {
                hops.push(h);
            }
        }
    }
    if hops.is_empty() {
        for v in headers.get_all("x-forwarded-for") {
            match v.to_str() {
                Ok(v) => hops.extend(v.split(',').map(parse_hop)),
                Err(_) => hops.push(None),
            }
        }
    }
    hops
}

/// Resolve the client address. Headers count only when `peer` is a trusted
/// proxy; then the right-most hop that is not itself a trusted proxy is the
/// client. An unparsable hop stops the walk at the last good address.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, proxies: &[IpNet]) -> IpAddr {
    if proxies.is_empty() || !trusted(peer, proxies) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_chain(headers).into_iter().rev() {
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
