//! Shared security state: where rate-limit and burst counters, bans,
//! revocations, lockout counters and IDS suspicion scores live.
//!
//! Threat: several instances behind a load balancer each keeping their own
//! counters, so a client gets N requests *per instance*, a ban or a revoked
//! credential on one instance still works on another, and a password guesser
//! spreads its attempts over the instances.
//!
//! Guarantee: [`SharedState::Local`] (no `state.redis_url`) is the
//! in-process implementation of each layer. [`SharedState::Redis`] keeps the
//! state in Redis, updated atomically by Lua scripts, every key with a TTL:
//!
//! * the hot path is ONE round trip per request ([`SharedState::check`]): ban
//!   check, burst counter (and the escalating burst ban), the sliding-window
//!   rate limit (the same bucket ring and the same bound as
//!   `network::ratelimit`, counted on Redis's clock), the revocation epoch
//!   and — when the request carries a JWT — whether its `jti` is revoked;
//!   with `limits.per_identity`, a second round trip after authentication
//!   counts the user's own window, also shared;
//! * the revocation epoch is INCR'd after every key revocation, rotation,
//!   user deletion and logout, on any instance; authn drops its credential
//!   caches when a request shows a newer epoch than it has seen, before it
//!   verifies that request's credentials, so a key revoked on A fails on B
//!   at the next request (see `authn::Authn::observe_epoch`);
//! * bans, lockout counters, IDS counts and failed-login bursts are Redis
//!   keys with the TTL of what they count; the database stays the durable
//!   record of bans and revoked tokens;
//! * task events, bans and logouts are also published on one pub/sub
//!   channel, so every instance delivers remote events to its WebSocket
//!   clients and mirrors bans and revocations into its local state (used for
//!   listing and as the fallback).
//!
//! Failure: every Redis call is bounded by [`redis::CALL_TIMEOUT`]; a failure
//! marks Redis down (logged once per outage, `redis_up` 0, `/readyz`
//! `"redis": "down"`) and the hot path stops trying it until a background
//! probe sees it again (so a dead Redis never stalls requests). While down,
//! `fail_open` serves on the local state of this instance; `fail_closed`
//! refuses `/api/*` with 503 `unavailable`.
//!
//! While an instance's subscription is down it reads the revocations and
//! bans stored in the database every `redis::CATCH_UP_EVERY` (other
//! instances' announcements may be lost: bans it lacks are added, bans gone
//! from the database lifted), and once more when it is back;
//! revocations, bans and lifts it made while Redis was out of reach are
//! set in Redis and announced then (`RedisState::replay`), for the
//! instances that never lost Redis.
//!
//! Not covered: events published while Redis is down or the subscriber is
//! reconnecting are not replayed; counters kept locally during an outage are
//! not merged back into Redis afterwards.

pub mod redis;

use std::net::IpAddr;
use std::sync::Arc;

use crate::config::{Config, FailurePolicy};
use crate::http::respond::RateLimitInfo;
use crate::network::ban::{BanRecord, Length};
use crate::network::ratelimit::IdentityLimiter;
use crate::network::{Network, Verdict};

/// What one request learnt from the shared state, for the inner layers
/// (a request extension, inserted by the network layer).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// The revocation epoch as of this request.
    pub epoch: u64,
    /// The JWT id the network layer peeked at, and whether it is revoked.
    pub jti: Option<(String, bool)>,
}

/// The hot-path decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allowed(RateLimitInfo),
    Limited(RateLimitInfo),
    /// Banned; seconds until the ban ends.
    Banned(u64),
    /// Over the burst limit: the burst ban just set (None: another request
    /// set it a moment ago).
    BurstBan(Option<BanRecord>),
    /// Redis is down and the policy is `fail_closed`.
    Unavailable,
}

/// The backend of the shared state (cheap to clone).
#[derive(Clone, Default)]
pub enum SharedState {
    /// In-process (one instance).
    #[default]
    Local,
    /// Redis, with the local state as the `fail_open` fallback.
    Redis(Arc<redis::RedisState>),
}

impl SharedState {
    /// The backend the config asks for (connects in the background).
    pub fn new(
        cfg: &Config,
        gauge: prometheus_client::metrics::gauge::Gauge,
    ) -> anyhow::Result<SharedState> {
        match &cfg.state.redis_url {
            None => Ok(SharedState::Local),
            Some(url) => Ok(SharedState::Redis(redis::RedisState::start(
                cfg, url, gauge,
            )?)),
        }
    }

    fn redis(&self) -> Option<&redis::RedisState> {
        match self {
            SharedState::Local => None,
            SharedState::Redis(r) => Some(r),
        }
    }

    /// Is state shared with other instances (Redis configured)?
    pub fn is_shared(&self) -> bool {
        matches!(self, SharedState::Redis(_))
    }

    /// `Some(up)` with Redis configured.
    pub fn redis_up(&self) -> Option<bool> {
        self.redis().map(|r| r.is_up())
    }

    /// `Some(reachable)` with Redis configured
    /// ([`redis::RedisState::reachable`]).
    pub async fn redis_reachable(&self, within: std::time::Duration) -> Option<bool> {
        match self.redis() {
            Some(r) => Some(r.reachable(within).await),
            None => None,
        }
    }

    /// Redis is configured, down, and the policy is to refuse.
    pub fn refusing(&self) -> bool {
        self.redis()
            .is_some_and(|r| r.policy == FailurePolicy::FailClosed && !r.is_up())
    }

    /// The one decision per request: ban, burst, rate (and the revocation
    /// epoch and `jti` for the inner layers).
    pub async fn check(
        &self,
        net: &Network,
        key: IpAddr,
        jti: Option<&str>,
        wall_ms: i64,
    ) -> (Decision, Option<View>) {
        if let Some(r) = self.redis() {
            // The local mirror (database at start, pub/sub since) first: a
            // banned client costs no round trip, and a ban survives Redis
            // restarting empty.
            if let Some(retry) = net.bans.check(&key, wall_ms) {
                return (Decision::Banned(retry), r.view(jti).await);
            }
            if let Some((d, view)) = r.check(net, key, jti).await {
                if let Decision::BurstBan(Some(rec)) = &d {
                    net.bans.put(rec.clone());
                    r.publish_ban(net, rec);
                }
                return (d, Some(view));
            }
            if r.policy == FailurePolicy::FailClosed {
                return (Decision::Unavailable, None);
            }
        }
        let d = self.check_local(net, key, wall_ms);
        if let (Some(r), Decision::BurstBan(Some(rec))) = (self.redis(), &d) {
            // Redis configured but out of reach: announce it once back
            r.unshared_ban(net, rec);
        }
        (d, None)
    }

    /// The in-process decision (no Redis, or Redis down with `fail_open`).
    pub fn check_local(&self, net: &Network, key: IpAddr, wall_ms: i64) -> Decision {
        match net.check(&key, crate::network::mono_ms(), wall_ms) {
            Verdict::Allowed(i) => Decision::Allowed(i),
            Verdict::Limited(i) => Decision::Limited(i),
            Verdict::Banned(s) => Decision::Banned(s),
            Verdict::Burst => Decision::BurstBan(net.bans.ban(key, net.ddos_ban, "ddos", wall_ms)),
        }
    }

    /// The per-identity limit (`limits.per_identity`): on Redis shared by
    /// every instance, else (or with Redis down and `fail_open`) this
    /// instance's table. `None`: Redis is down and the policy is
    /// `fail_closed`.
    pub async fn identity(
        &self,
        limiter: &IdentityLimiter,
        user_id: &str,
    ) -> Option<Result<RateLimitInfo, RateLimitInfo>> {
        if let Some(r) = self.redis() {
            if let Some(d) = r.identity(user_id, limiter.rate, None).await {
                return Some(d);
            }
            if r.policy == FailurePolicy::FailClosed {
                return None;
            }
        }
        Some(limiter.check(user_id, crate::network::mono_ms()))
    }

    /// The revocation epoch and `jti` answer alone (for requests that skip
    /// the limits: allowlisted addresses). One round trip.
    pub async fn view(&self, jti: Option<&str>) -> Option<View> {
        self.redis()?.view(jti).await
    }

    /// Ban `key` everywhere (escalating bans are a no-op while banned).
    pub async fn ban(
        &self,
        net: &Network,
        key: IpAddr,
        len: Length,
        reason: &str,
        now_ms: i64,
    ) -> Option<BanRecord> {
        if let Some(r) = self.redis() {
            if let Some(res) = r.ban(net, key, len, reason).await {
                if let Some(rec) = &res {
                    net.bans.put(rec.clone());
                    r.publish_ban(net, rec);
                }
                return res;
            }
        }
        let rec = net.bans.ban(key, len, reason, now_ms);
        if let (Some(r), Some(rec)) = (self.redis(), &rec) {
            // Redis configured but out of reach: announce it once back
            r.unshared_ban(net, rec);
        }
        rec
    }

    /// Lift an active ban everywhere; false when it was not banned.
    pub async fn lift(&self, net: &Network, key: IpAddr, now_ms: i64) -> bool {
        let local = net.bans.lift(&key, now_ms);
        if let Some(r) = self.redis() {
            if let Some(shared) = r.lift(net, key).await {
                return shared || local;
            }
            r.unshared_lift(net, key);
        }
        local
    }

    /// A credential was revoked, rotated or its user deleted: move the
    /// revocation epoch so every instance drops its cached credentials.
    pub async fn credentials_changed(&self) {
        if let Some(r) = self.redis() {
            r.bump_epoch(None).await;
        }
    }

    /// A JWT was revoked (logout): record its `jti` until `exp_ms`.
    pub async fn token_revoked(&self, jti: &str, exp_ms: i64) {
        if let Some(r) = self.redis() {
            r.bump_epoch(Some((jti, exp_ms))).await;
        }
    }

    /// Count one event of kind `name` (`ids`: IDS blocks, `login`: failed
    /// logins) from `key` in a window from its first event, reset at
    /// `threshold`; `None` = count locally.
    pub async fn count(
        &self,
        name: &'static str,
        key: IpAddr,
        window_ms: u64,
        threshold: u32,
    ) -> Option<u32> {
        self.redis()?.count(name, key, window_ms, threshold).await
    }

    /// Claim the incident cooldown of `kind` for `key` for `ms`: `Some(true)`
    /// when this instance is the first within it, `Some(false)` when another
    /// one claimed it, `None` without (or with a down) Redis.
    pub async fn claim_cooldown(&self, kind: &str, key: IpAddr, ms: u64) -> Option<bool> {
        self.redis()?.claim_cooldown(kind, key, ms).await
    }

    /// Publish a task event to the other instances (never waits).
    pub fn publish_event(&self, ev: &crate::app::events::Event) {
        if let Some(r) = self.redis() {
            r.publish_event(ev);
        }
    }

    /// Lockout: admit a login attempt (`authn::lockout`): per account and
    /// address 0 admits, 1 locked, 2 wait. `None` = ask locally.
    pub async fn lockout_admit(
        &self,
        account: &str,
        addr: Option<IpAddr>,
        max: u32,
        pending_ttl_ms: i64,
    ) -> Option<[u8; 2]> {
        self.redis()?
            .lockout_admit(account, addr, max, pending_ttl_ms)
            .await
    }

    /// Lockout: finish an admitted attempt (0 abandoned, 1 failed, 2
    /// succeeded); what a failure locked (account, address).
    pub async fn lockout_finish(
        &self,
        account: &str,
        addr: Option<IpAddr>,
        max: u32,
        window_ms: i64,
        outcome: u8,
    ) -> Option<[bool; 2]> {
        self.redis()?
            .lockout_finish(account, addr, max, window_ms, outcome)
            .await
    }

    /// Announce a ban whose row could not be stored (never waits).
    pub fn announce_unstored(&self, row: &crate::store::bans::BanRow) {
        if let Some(r) = self.redis() {
            r.publish_unstored(row);
        }
    }

    /// Announce a login lock set through Redis (never waits).
    pub fn announce_lock(&self, account: Option<[u8; 16]>, ip: Option<IpAddr>, until_ms: i64) {
        if let Some(r) = self.redis() {
            r.publish_lock(account, ip, until_ms);
        }
    }

    /// Start the subscriber that delivers other instances' events, bans and
    /// revocations here.
    pub fn start_subscriber(&self, app: std::sync::Weak<crate::app::AppInner>) {
        if let SharedState::Redis(r) = self {
            r.clone().start_subscriber(app);
        }
    }
}
