//! Layer 1 — network: the client address, bans, burst (DDoS) bans and rate
//! limits.
//!
//! Threat: floods and brute force from one address, and clients dodging
//! per-address defences by forging `X-Forwarded-For`. Guarantee: the client
//! address is the TCP peer, or — only when the peer is in
//! `network.trusted_proxies` — the right-most untrusted hop of the forwarding
//! headers; handlers and every other layer see only this [`ClientAddr`].

pub mod client_addr;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::AppState;
use crate::config::Config;
pub use client_addr::{ClientAddr, PeerAddr};

/// Network-layer state.
pub struct Network {
    pub trusted: Vec<ipnet::IpNet>,
}

impl Network {
    pub fn new(cfg: &Config) -> Network {
        Network {
            trusted: cfg.network.trusted_proxies.clone(),
        }
    }
}

/// The network layer (middleware).
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let client = client_addr::resolve(peer, req.headers(), &state.network.trusted);
    req.extensions_mut().insert(ClientAddr(client));
    next.run(req).await
}
