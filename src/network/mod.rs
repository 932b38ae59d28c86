//! Layer 1 — network: the client address, bans, burst (DDoS) bans and rate
//! limits.
//!
//! Threat: floods and brute force from one address, and clients dodging
//! per-address defences by forging `X-Forwarded-For`. Guarantee: the client
//! address is the TCP peer, or — only when the peer is in
//! `network.trusted_proxies` — the right-most untrusted hop of the forwarding
//! headers; handlers and every other layer see only this [`ClientAddr`]
//! (limits, bans, IDS and audit alike).
//!
//! Every request except `GET /healthz` and `GET /readyz` with no query (probes of load
//! balancers, which must keep working for a banned or limited address) goes
//! through one decision, in this order, before any other layer does work:
//!
//! 1. `limits.allowlist` (CIDRs): never limited or banned. Loopback is not
//!    special.
//! 2. Ban ([`ban`]): 403 `ip_banned` with `Retry-After`. Nothing else counts
//!    the request: a banned client cannot renew or extend its ban.
//! 3. Burst: every arrival counts; more than
//!    `limits.ddos.max_requests_per_second` within one second bans the
//!    address for `limits.ddos.ban_seconds`, doubling for repeat offenders up
//!    to `limits.ddos.max_ban_seconds` (incident `ddos`).
//! 4. Rate ([`ratelimit`]): at most `limits.rate.max_requests` admitted in
//!    any `window_seconds`; beyond, 429 `rate_limited` with `Retry-After` and
//!    `RateLimit-Limit/Remaining/Reset` (incident `rate_limit_exceeded`).
//!    Admitted responses carry the `RateLimit-*` headers.
//!
//! `/openapi.json`, `/metrics` and unknown paths are limited like `/api/*`:
//! only the two probes are exempt. What hyper refuses as not HTTP at all
//! counts against its TCP peer too ([`admit_probe`]). IPv6 clients count
//! per /64 with `limits.ipv6_group_by_64`. After the inner layers answer, an IDS block
//! (`ApiError::RequestBlocked` in the response extensions) or a 401 from
//! `POST /api/auth/login` feeds incident detection (`monitoring::incidents`).
//!
//! `limits.per_identity` adds a per-user window on top, checked by
//! [`identity_admit`], which runs right after authentication (the principal
//! is not known earlier; with Redis the window is shared by every instance);
//! the response then carries the `RateLimit-*` figures of whichever limit
//! has fewer requests remaining.
//!
//! Backends: [`Network::check`] is the one in-process decision per request
//! (ban, burst and rate at once); with `state.redis_url` the same decision is
//! one atomic round trip to Redis (`crate::state`), with this one as the
//! `fail_open` fallback. With Redis down and `fail_closed`, `/api/*` answers
//! 503 `unavailable` here.

pub mod ban;
pub mod client_addr;
pub mod conns;
pub mod ratelimit;

use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use crate::app::AppState;
use crate::config::Config;
use crate::http::respond::RateLimitInfo;
use crate::http::{ApiError, RequestId};
use crate::monitoring::audit::AuditEvent;
use crate::monitoring::incidents::{Context, Signal};
use crate::state::{Decision as Shared, SharedState};
pub use ban::{BanRecord, Bans, Length};
pub use client_addr::{ClientAddr, PeerAddr};
use ratelimit::{Decision, IdentityLimiter, Limiter, Window};

/// Milliseconds on a monotonic clock (the limiter's time).
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// A new ban is in the database within this long (it is stored in the
/// background after it takes effect): younger ones missing there are not
/// taken for lifted. (One stored later still would be lifted here and set
/// again by the next reading, 5 s on.)
const STORED_WITHIN_MS: i64 = 2_000;

/// Probes never limited or banned: `GET` (or `HEAD`) of `/healthz` or
/// `/readyz`, exactly, without a query string (a probe sends none; any
/// other request there is counted like the rest).
pub fn is_exempt<B>(req: &http::Request<B>) -> bool {
    matches!(req.uri().path(), "/healthz" | "/readyz")
        && req.uri().query().is_none()
        && matches!(*req.method(), http::Method::GET | http::Method::HEAD)
}

/// The decision for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed(RateLimitInfo),
    Limited(RateLimitInfo),
    /// Banned; seconds until the ban ends.
    Banned(u64),
    /// This request pushed the address over the burst limit (not banned yet).
    Burst,
}

/// Network-layer state.
pub struct Network {
    pub trusted: Vec<IpNet>,
    /// The forwarding header the trusted proxies set.
    pub forwarded_header: crate::config::ForwardedHeader,
    pub allowlist: Vec<IpNet>,
    pub group_v6: bool,
    pub limiter: Limiter<IpAddr>,
    pub identity: Option<IdentityLimiter>,
    pub bans: Arc<Bans>,
    pub ddos_ban: Length,
    /// Bans in force whose row could not be written (the database out of
    /// reach), by address: written by the next [`Network::reload_bans`],
    /// and never taken meanwhile for bans lifted elsewhere.
    unstored: Arc<Unstored>,
}

type Unstored = parking_lot::Mutex<std::collections::HashMap<String, crate::store::bans::BanRow>>;

/// Write the bans waiting in `unstored` that are still in force; the
/// addresses of those the database still refused.
async fn write_unstored(
    unstored: &Unstored,
    bans: &Bans,
    group_v6: bool,
    db: &crate::store::Db,
    now: i64,
) -> std::collections::HashSet<IpAddr> {
    let waiting: Vec<_> = unstored.lock().values().cloned().collect();
    let mut kept = std::collections::HashSet::new();
    for row in waiting {
        let key = ban::parse_key(&row.ip, group_v6);
        let active = key.is_some_and(|k| bans.check(&k, now).is_some());
        if active && crate::store::bans::upsert(db, &row).await.is_err() {
            kept.extend(key);
            continue;
        }
        unstored.lock().remove(&row.ip);
    }
    kept
}

/// At most this many unstored bans are kept for a later write.
const MAX_UNSTORED: usize = 10_000;

impl Network {
    pub fn new(cfg: &Config) -> Network {
        let l = &cfg.limits;
        let rate = Window::new(l.rate.max_requests, u64::from(l.rate.window_seconds) * 1000);
        let burst = Window::new(l.ddos.max_requests_per_second, 1000);
        Network {
            trusted: cfg.network.trusted_proxies.clone(),
            forwarded_header: cfg.network.forwarded_header,
            allowlist: l.allowlist.clone(),
            group_v6: l.ipv6_group_by_64,
            limiter: Limiter::new(rate, burst, l.max_tracked_clients),
            identity: l.per_identity.as_ref().map(|r| {
                IdentityLimiter::new(
                    Window::new(r.max_requests, u64::from(r.window_seconds) * 1000),
                    l.max_tracked_clients,
                )
            }),
            bans: Arc::new(Bans::new(l.max_bans, l.ddos.max_ban_seconds)),
            ddos_ban: Length::Escalating {
                base: l.ddos.ban_seconds,
                cap: l.ddos.max_ban_seconds,
            },
            unstored: Default::default(),
        }
    }

    /// Keep `row` for a later write (its first one failed, here or on the
    /// instance that announced it).
    pub fn keep_unstored(&self, row: crate::store::bans::BanRow) {
        let mut m = self.unstored.lock();
        if m.len() < MAX_UNSTORED || m.contains_key(&row.ip) {
            m.insert(row.ip.clone(), row);
        } else {
            tracing::error!(ip = %row.ip, "too many bans wait for the database: this one will not be stored");
        }
    }

    /// Load stored bans and start pruning expired ones (every minute).
    pub async fn start(
        &self,
        db: &crate::store::Db,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> crate::store::Result<()> {
        let now = crate::store::now_ms();
        let cutoff = self.bans.prune(now);
        let rows = crate::store::bans::load(db, cutoff).await?;
        self.bans
            .load(rows.into_iter().filter_map(|r| self.record_of(r)));
        gauge.set(self.bans.active_count(now) as i64);
        let weak = Arc::downgrade(&self.bans);
        let unstored = Arc::downgrade(&self.unstored);
        let group_v6 = self.group_v6;
        let db = db.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                let (Some(bans), Some(unstored)) = (weak.upgrade(), unstored.upgrade()) else {
                    return;
                };
                let now = crate::store::now_ms();
                let cutoff = bans.prune(now);
                gauge.set(bans.active_count(now) as i64);
                // bans in force whose first write failed
                write_unstored(&unstored, &bans, group_v6, &db, now).await;
                drop(bans);
                if let Err(e) = crate::store::bans::prune(&db, cutoff).await {
                    tracing::warn!(error = %e, "cannot prune expired bans");
                }
            }
        });
        Ok(())
    }

    /// Bring this instance's table in line with the active bans stored in
    /// the database: merge the bans, and lift those (older than
    /// [`STORED_WITHIN_MS`]) that are no longer there — what other instances
    /// did while their announcements could not reach this one.
    /// Returns the addresses it lifted.
    pub async fn reload_bans(&self, db: &crate::store::Db) -> crate::store::Result<Vec<IpAddr>> {
        let now = crate::store::now_ms();
        // bans this instance could not store: written now, and in any case
        // not "lifted elsewhere" for being absent (a ban whose write failed
        // was lifted on every instance by the next Redis outage)
        let mut stored = write_unstored(&self.unstored, &self.bans, self.group_v6, db, now).await;
        let rows = crate::store::bans::load(db, now).await?;
        for rec in rows.into_iter().filter_map(|r| self.record_of(r)) {
            stored.insert(rec.key);
            self.bans.merge(rec);
        }
        Ok(self
            .bans
            .lift_absent(&stored, now.saturating_sub(STORED_WITHIN_MS), now))
    }

    /// A stored ban as the table holds it (`None`: an address that no
    /// longer parses).
    fn record_of(&self, r: crate::store::bans::BanRow) -> Option<BanRecord> {
        Some(BanRecord {
            key: ban::parse_key(&r.ip, self.group_v6)?,
            until_ms: r.until_ms,
            reason: r.reason,
            created_at: r.created_at,
            offences: r.offences,
        })
    }

    pub fn allowlisted(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.allowlist.iter().any(|n| n.contains(&ip))
    }

    /// The limiter/ban key of an address.
    pub fn key(&self, ip: IpAddr) -> IpAddr {
        ban::group(ip, self.group_v6)
    }

    /// The one decision per request: ban, burst, rate.
    pub fn check(&self, key: &IpAddr, mono_ms: u64, wall_ms: i64) -> Verdict {
        if let Some(retry) = self.bans.check(key, wall_ms) {
            return Verdict::Banned(retry);
        }
        match self.limiter.check(key, mono_ms) {
            Decision::Allowed(i) => Verdict::Allowed(i),
            Decision::Limited(i) => Verdict::Limited(i),
            Decision::Burst => Verdict::Burst,
        }
    }
}

/// Persist a new ban and audit it (`ban_added`). Returns false when the
/// database refused it (the ban still holds in memory).
///
/// The event's `target_ip` is the banned address (an IPv6 ban's /64 when
/// bans group them); its `ip` is the client address of the request that
/// made the ban, as on every event: `client` (the admin's address for a
/// ban made with `POST /api/security/bans`). A ban the detection layer made
/// (`client` None) was made because of the banned client's own requests:
/// there `ip` is the banned address too, as on the incident it goes with.
pub async fn record_ban(
    state: &AppState,
    rec: &BanRecord,
    by: Option<&str>,
    client: Option<IpAddr>,
    request_id: Option<&str>,
) -> bool {
    let ip = ban::key_string(rec.key, state.network.group_v6);
    let row = crate::store::bans::BanRow {
        ip: ip.clone(),
        until_ms: rec.until_ms,
        reason: rec.reason.clone(),
        created_at: rec.created_at,
        offences: rec.offences,
    };
    let stored = match crate::store::bans::upsert(&state.db, &row).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "cannot store ban; it will be written when the database is back");
            state.shared.announce_unstored(&row);
            state.network.keep_unstored(row);
            false
        }
    };
    state
        .metrics
        .active_bans
        .set(state.network.bans.active_count(crate::store::now_ms()) as i64);
    state
        .metrics
        .bans_evicted
        .set(i64::try_from(state.network.bans.evicted()).unwrap_or(i64::MAX));
    let mut ev = AuditEvent::new("ban_added")
        .ip(client.map_or_else(|| ip.clone(), |c| c.to_string()))
        .user(by)
        .field("target_ip", ip.as_str())
        .field("reason", rec.reason.clone())
        .field("seconds", (rec.until_ms - rec.created_at).max(0) / 1000)
        .field("until", crate::store::rfc3339(rec.until_ms))
        .field("offences", rec.offences);
    if let Some(r) = request_id {
        ev = ev.request_id(r);
    }
    state.audit.record(ev).await;
    stored
}

/// Set the `RateLimit-*` headers unless an inner limit already set figures
/// with fewer requests remaining.
fn merge_headers(resp: &mut Response, info: RateLimitInfo) {
    let inner = resp
        .headers()
        .get(crate::http::respond::RATELIMIT_REMAINING)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok());
    if inner.is_none_or(|r| info.remaining < r) {
        info.apply(resp.headers_mut());
    }
}

fn request_id(req: &Request) -> Option<String> {
    req.extensions()
        .get::<RequestId>()
        .map(|r| r.as_str().to_string())
}

/// Resolve the request's client address from its TCP peer and forwarding
/// headers (trusted proxies only).
fn resolve_request(req: &Request, net: &Network) -> IpAddr {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    client_addr::resolve(peer, req.headers(), &net.trusted, net.forwarded_header)
}

/// The request's client address: the [`ClientAddr`] that
/// [`client_addr_layer`] set (resolved here only if the stack lacks it).
pub fn client_of(req: &Request, net: &Network) -> IpAddr {
    match req.extensions().get::<ClientAddr>() {
        Some(c) => c.0,
        None => resolve_request(req, net),
    }
}

/// Resolve the client address once per request, before every step that
/// uses it (monitoring, network, apisec, audit), and store it as
/// [`ClientAddr`].
pub fn set_client_addr(state: &AppState, req: &mut Request) {
    let client = resolve_request(req, &state.network);
    req.extensions_mut().insert(ClientAddr(client));
}

/// What [`admit`] let through, for [`finish`] to complete.
pub struct Admitted {
    key: IpAddr,
    info: RateLimitInfo,
    login: bool,
    request_id: Option<String>,
}

/// The network step, before the request goes on: bans, burst bans and the
/// sliding-window limit for the client address. `Err` is the refusal to
/// send; `Ok(None)` means the request is exempt or allowlisted (nothing to
/// do afterwards).
pub async fn admit(state: &AppState, req: &mut Request) -> Result<Option<Admitted>, Response> {
    let client = client_of(req, &state.network);
    let net = &state.network;
    let (exempt, api) = (is_exempt(req), req.uri().path().starts_with("/api/"));
    if exempt {
        return Ok(None);
    }
    if api && state.shared.refusing() {
        return Err(ApiError::Unavailable.into_response());
    }
    let jti = match &state.shared {
        SharedState::Redis(_) => state.authn.peek_jti(req.headers()),
        SharedState::Local => None,
    };
    if net.allowlisted(client) {
        if let Some(view) = state.shared.view(jti.as_deref()).await {
            req.extensions_mut().insert(view);
        }
        return Ok(None);
    }
    let key = net.key(client);
    let wall = crate::store::now_ms();
    let (mut decision, view) = state.shared.check(net, key, jti.as_deref(), wall).await;
    if decision == Shared::Unavailable && !api {
        decision = state.shared.check_local(net, key, wall);
    }
    if let Some(view) = view {
        req.extensions_mut().insert(view);
    }
    let rid = request_id(req);
    let info = outcome(state, key, decision, wall, rid.as_deref())
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(Some(Admitted {
        key,
        info,
        login: req.method() == http::Method::POST && req.uri().path() == "/api/auth/login",
        request_id: rid,
    }))
}

/// Carry out a network decision: `Ok` with the limit's figures when the
/// request is admitted, else the refusal to send, after the incident the
/// decision signals (a burst ban just set, a 429) has been handled.
async fn outcome(
    state: &AppState,
    key: IpAddr,
    decision: Shared,
    wall: i64,
    request_id: Option<&str>,
) -> Result<RateLimitInfo, ApiError> {
    match decision {
        Shared::Allowed(info) => Ok(info),
        Shared::Unavailable => Err(ApiError::Unavailable),
        Shared::Banned(retry_after) => Err(ApiError::IpBanned { retry_after }),
        Shared::BurstBan(Some(rec)) => {
            let retry_after = rec.retry_after(wall);
            let signal = Signal::Ddos {
                ban_seconds: (rec.until_ms - rec.created_at).max(0) as u64 / 1000,
                offences: rec.offences,
            };
            let ctx = Context {
                request_id: request_id.map(str::to_string),
                user_id: None,
            };
            state
                .incidents
                .handle(state, key, signal, ctx, Some(rec))
                .await;
            Err(ApiError::IpBanned { retry_after })
        }
        // a concurrent request set the ban a moment ago
        Shared::BurstBan(None) => Err(ApiError::IpBanned {
            retry_after: state.network.bans.check(&key, wall).unwrap_or(1),
        }),
        Shared::Limited(info) => {
            let ctx = Context {
                request_id: request_id.map(str::to_string),
                user_id: None,
            };
            state
                .incidents
                .handle(state, key, Signal::RateLimited, ctx, None)
                .await;
            Err(ApiError::RateLimited(info))
        }
    }
}

/// A request hyper refused as not HTTP (answered by
/// `server::parse_error`; it never becomes a [`Request`]) counts against
/// its TCP peer's burst and rate windows like any request, so a flood of
/// garbage ends in the same ban, incident and alert as a flood of requests,
/// not in an audit line per probe. Not counted when the peer is
/// allowlisted, or a trusted proxy (the client behind it is unknown, and a
/// ban would shut out every client of the proxy). Returns whether the probe
/// was admitted: once the address is limited or banned, the incident (with
/// its cooldown) speaks for the probes, which are then not audited one by
/// one. The answer itself stays the 400 already sent.
pub async fn admit_probe(state: &AppState, peer: IpAddr, request_id: &str) -> bool {
    let net = &state.network;
    if net.allowlisted(peer) || client_addr::trusted(peer, &net.trusted) {
        return true;
    }
    let key = net.key(peer);
    let wall = crate::store::now_ms();
    let (mut decision, _) = state.shared.check(net, key, None, wall).await;
    if decision == Shared::Unavailable {
        decision = state.shared.check_local(net, key, wall);
    }
    outcome(state, key, decision, wall, Some(request_id))
        .await
        .is_ok()
}

/// The network step on the way back: the rate-limit headers, and the
/// incident signals the response carries (an IDS block, a failed login).
pub async fn finish(state: &AppState, admitted: Option<Admitted>, resp: &mut Response) {
    let Some(a) = admitted else { return };
    merge_headers(resp, a.info);
    let signal = match resp.extensions().get::<ApiError>() {
        Some(ApiError::RequestBlocked { family, .. }) => Some(Signal::IdsBlock {
            family: family.clone(),
        }),
        _ if a.login && resp.status() == http::StatusCode::UNAUTHORIZED => {
            Some(Signal::LoginFailure)
        }
        _ => None,
    };
    if let Some(signal) = signal {
        let ctx = Context {
            request_id: a.request_id,
            user_id: None,
        };
        state
            .incidents
            .handle(state, a.key, signal, ctx, None)
            .await;
    }
}

/// The per-identity limit (`limits.per_identity`), right after
/// authentication: keyed by the authenticated user id; anonymous requests
/// and allowlisted addresses pass.
///
/// (`req` is `&mut` only because a shared borrow of a request cannot be
/// held across an await: its body is not `Sync`.)
pub async fn identity_admit(
    state: &AppState,
    req: &mut Request,
) -> Result<Option<RateLimitInfo>, Response> {
    let Some(limiter) = &state.network.identity else {
        return Ok(None);
    };
    let Some(who) = req.extensions().get::<crate::authn::Authenticated>() else {
        return Ok(None);
    };
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    if is_exempt(req) || client.is_some_and(|c| state.network.allowlisted(c)) {
        return Ok(None);
    }
    let Some(decision) = state.shared.identity(limiter, &who.user_id).await else {
        return Err(ApiError::Unavailable.into_response());
    };
    match decision {
        Ok(info) => Ok(Some(info)),
        Err(info) => {
            if let Some(c) = client {
                let ctx = Context {
                    request_id: request_id(req),
                    user_id: Some(who.user_id.clone()),
                };
                let key = state.network.key(c);
                state
                    .incidents
                    .handle(state, key, Signal::RateLimited, ctx, None)
                    .await;
            }
            Err(ApiError::RateLimited(info).into_response())
        }
    }
}

/// The per-identity limit's headers on the response (the tighter of the
/// address and identity limits is what a client sees).
pub fn identity_finish(info: Option<RateLimitInfo>, resp: &mut Response) {
    if let Some(info) = info {
        merge_headers(resp, info);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A ban in force whose row could not be written is neither lifted by
    /// the catch-up for being absent from the database (it was, on every
    /// instance, by the next Redis outage) nor left unwritten: the next
    /// catch-up (or the minute's pruning) writes it.
    #[tokio::test]
    async fn a_ban_whose_write_failed_is_written_later_not_lifted() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::load(&crate::config::Source {
            file: None,
            data_dir: Some(dir.path().to_path_buf()),
            env: vec![],
        })
        .unwrap();
        let db = crate::store::Db::connect(&cfg.database_url, 1, 1)
            .await
            .unwrap();
        let net = Network::new(&cfg);
        let key: IpAddr = "198.51.100.9".parse().unwrap();
        // set well before the catch-up's grace for bans not stored yet
        let then = crate::store::now_ms() - 10 * STORED_WITHIN_MS;
        let rec = net
            .bans
            .ban(key, ban::Length::Fixed(300), "test", then)
            .unwrap();
        net.keep_unstored(crate::store::bans::BanRow {
            ip: ban::key_string(key, net.group_v6),
            until_ms: rec.until_ms,
            reason: rec.reason.clone(),
            created_at: rec.created_at,
            offences: rec.offences,
        });
        let lifted = net.reload_bans(&db).await.unwrap();
        assert!(lifted.is_empty(), "{lifted:?}");
        let now = crate::store::now_ms();
        assert!(net.bans.check(&key, now).is_some());
        let rows = crate::store::bans::load(&db, now).await.unwrap();
        assert!(rows.iter().any(|r| r.ip == "198.51.100.9"), "{rows:?}");
        assert!(net.unstored.lock().is_empty());
    }
}
