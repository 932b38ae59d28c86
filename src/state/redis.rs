//! The Redis backend of the shared state: connection, scripts, pub/sub.
//!
//! Keys (all under `state.redis_prefix`, all with a TTL):
//!
//! | key | what | TTL |
//! |---|---|---|
//! | `ban:<ip>` | hash `until, reason, created, offences` | remaining ban time |
//! | `off:<ip>` | offences (escalation) | ban time + `limits.ddos.max_ban_seconds` |
//! | `burst:<ip>`, `rate:<ip>` | bucket rings (field = bucket number) | the window + one bucket |
//! | `urate:<user id>` | `limits.per_identity` bucket ring | the window + one bucket |
//! | `epoch` | revocation epoch (INCR) | none (one small counter) |
//! | `jti:<jti>` | a revoked JWT | until the token's `exp` |
//! | `ids:<ip>` | IDS blocks (suspicion score) | `incidents.window_seconds` from the first block |
//! | `login:<ip>` | failed logins (the `brute_force` incident) | `monitor.failed_login_window_seconds` from the first failure |
//! | `lk:a:<sha256(user)>`, `lk:i:<ip>` (+ `:locked`, `:pending`) | failed logins, lock, attempts in flight | `auth.lockout_seconds` (attempts: 60 s) |
//!
//! Channel `<prefix>events`: JSON messages `{from, type, ...}` (task events,
//! bans, lifts, revoked tokens); an instance skips its own (`from` = its
//! random instance id).

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::RwLock;
use prometheus_client::metrics::gauge::Gauge;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{Decision, View};
use crate::app::events::{Event, EventKind};
use crate::config::{Config, FailurePolicy};
use crate::http::respond::RateLimitInfo;
use crate::network::ban::{key_string, parse_key, BanRecord, Length};
use crate::network::ratelimit::{Window, BUCKETS};
use crate::network::Network;

/// The most any Redis call may take (connect, command, script) before the
/// instance treats Redis as down.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(300);
/// How often the probe pings Redis while it is down (and while it is up).
const PROBE_DOWN: Duration = Duration::from_millis(250);
const PROBE_UP: Duration = Duration::from_secs(1);
/// Pub/sub messages waiting for the publisher before new ones are dropped.
const PUBLISH_QUEUE: usize = 4096;

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{}", include_str!("lib.lua"), body))
}

struct Scripts {
    check: Script,
    ban: Script,
    count: Script,
    lockout: Script,
    lockout_admit: Script,
    rate: Script,
}

/// The Redis backend.
pub struct RedisState {
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    up: AtomicBool,
    pub policy: FailurePolicy,
    prefix: String,
    /// This instance's id on the pub/sub channel.
    pub instance: String,
    gauge: Gauge,
    scripts: Scripts,
    publisher: mpsc::Sender<String>,
    /// `limits.ddos.max_ban_seconds` in ms: how long offences are remembered.
    memory_ms: u64,
    /// Revocations, bans and lifts made here while Redis was out of reach:
    /// announced again once it is back ([`RedisState::replay`]), so that
    /// instances that never lost Redis learn them too.
    unshared: parking_lot::Mutex<std::collections::VecDeque<Msg>>,
}

/// The most changes kept for [`RedisState::replay`]; beyond, the oldest
/// are dropped (other instances still read them from the database when
/// their own subscription breaks).
const UNSHARED_MAX: usize = 10_000;
/// How often an instance whose subscription is down reads the database for
/// the revocations and bans other instances made meanwhile.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(5);

/// One pub/sub message.
#[derive(Debug, Serialize, Deserialize)]
struct Wire {
    from: String,
    #[serde(flatten)]
    msg: Msg,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Msg {
    Event {
        kind: EventKind,
        owner_id: String,
        agent_id: Option<String>,
        json: String,
    },
    Ban {
        ip: String,
        until_ms: i64,
        reason: String,
        created_at: i64,
        offences: i64,
    },
    Lift {
        ip: String,
    },
    Revoked {
        jti: String,
        exp_ms: i64,
    },
    /// A key was revoked or rotated, or a user deleted or changed: drop
    /// cached credentials (the epoch tells the same to the next request).
    Credentials,
    /// A ban in force whose row the sender could not store: every instance
    /// keeps it for writing and never lifts it for being absent from the
    /// table (`Network::keep_unstored`).
    Unstored {
        ip: String,
        until_ms: i64,
        reason: String,
        created_at: i64,
        offences: i64,
    },
    /// A login lock set through Redis, mirrored in every instance's local
    /// table (`account`: the hex of `lockout::account`), so it outlives a
    /// Redis that forgets it.
    Locked {
        account: Option<String>,
        ip: Option<String>,
        until_ms: i64,
    },
}

/// The `{limit, remaining, reset}` a script's rate window returned (lib.lua's
/// `info`), clamped into the header figures.
fn rate_info(limit: i64, remaining: i64, reset: i64) -> RateLimitInfo {
    RateLimitInfo {
        limit: limit.clamp(0, i64::from(u32::MAX)) as u32,
        remaining: remaining.clamp(0, i64::from(u32::MAX)) as u32,
        reset: reset.max(1) as u64,
    }
}

/// Errors that mean "Redis is not reachable" (as opposed to a refused command).
fn is_outage(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl RedisState {
    /// Parse the URL and start the probe (which connects, and reconnects
    /// after an outage) and the publisher.
    pub fn start(cfg: &Config, url: &str, gauge: Gauge) -> anyhow::Result<Arc<RedisState>> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("state.redis_url: {}", e.category()))?;
        let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
        gauge.set(0);
        let state = Arc::new(RedisState {
            client,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            policy: cfg.state.redis_failure_policy,
            prefix: cfg.state.redis_prefix.clone(),
            instance: crate::store::new_id(),
            gauge,
            scripts: Scripts {
                check: script(include_str!("check.lua")),
                ban: script(include_str!("ban.lua")),
                count: script(include_str!("count.lua")),
                lockout: script(include_str!("lockout.lua")),
                lockout_admit: script(include_str!("lockout_admit.lua")),
                rate: script(include_str!("rate.lua")),
            },
            publisher: tx,
            memory_ms: cfg.limits.ddos.max_ban_seconds.saturating_mul(1000),
            unshared: parking_lot::Mutex::new(std::collections::VecDeque::new()),
        });
        tokio::spawn(probe(Arc::downgrade(&state)));
        tokio::spawn(publish_loop(Arc::downgrade(&state), rx));
        Ok(state)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Is Redis reachable now: up by the probe's last look, and answering a
    /// `PING` within `within` (`/readyz`, bounded like its database ping)?
    pub async fn reachable(&self, within: Duration) -> bool {
        if !self.is_up() {
            return false;
        }
        let Some(mut c) = self.conn.read().clone() else {
            return false;
        };
        tokio::time::timeout(within, redis::cmd("PING").query_async::<String>(&mut c))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn mark_down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            self.gauge.set(0);
            match self.policy {
                FailurePolicy::FailOpen => tracing::warn!(
                    error = why,
                    "Redis unreachable: serving on this instance's local state (fail_open)"
                ),
                FailurePolicy::FailClosed => tracing::error!(
                    error = why,
                    "Redis unreachable: refusing /api/* with 503 (fail_closed)"
                ),
            }
        }
    }

    fn mark_up(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            self.gauge.set(1);
            tracing::info!("Redis reachable: shared state in use");
        }
    }

    fn key(&self, kind: &str, rest: &str) -> String {
        format!("{}{kind}:{rest}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// Run one bounded call; `None` when Redis is down or the call failed.
    async fn call<T, F, Fut>(&self, f: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return None;
        }
        let conn = self.conn.read().clone()?;
        match tokio::time::timeout(CALL_TIMEOUT, f(conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) if is_outage(&e) => {
                self.mark_down(&e.to_string());
                None
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "Redis refused a command");
                None
            }
            Err(_) => {
                self.mark_down("timed out");
                None
            }
        }
    }

    /// The hot path (one EVALSHA).
    pub async fn check(
        &self,
        net: &Network,
        key: IpAddr,
        jti: Option<&str>,
    ) -> Option<(Decision, View)> {
        self.check_at(net, key, jti, None).await
    }

    /// [`check`](RedisState::check) at a given time instead of Redis's clock
    /// (tests drive the window with it).
    pub async fn check_at(
        &self,
        net: &Network,
        key: IpAddr,
        jti: Option<&str>,
        now_ms: Option<u64>,
    ) -> Option<(Decision, View)> {
        let ks = key_string(key, net.group_v6);
        let (rate, burst) = (net.limiter.rate, net.limiter.burst);
        let (base, cap) = match net.ddos_ban {
            Length::Escalating { base, cap } => (base, cap),
            Length::Fixed(s) => (s, s),
        };
        let mut inv = self.scripts.check.prepare_invoke();
        inv.key(self.key("ban", &ks))
            .key(self.key("off", &ks))
            .key(self.key("burst", &ks))
            .key(self.key("rate", &ks))
            .key(format!("{}epoch", self.prefix));
        if let Some(j) = jti {
            inv.key(self.key("jti", j));
        }
        inv.arg(rate.limit)
            .arg(rate.bucket_ms())
            .arg(burst.limit)
            .arg(burst.bucket_ms())
            .arg(base)
            .arg(cap)
            .arg(self.memory_ms)
            .arg(BUCKETS);
        if let Some(t) = now_ms {
            inv.arg(t);
        }
        let r: Vec<i64> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let [tag, a, b, c, epoch, revoked] = r[..] else {
            tracing::error!("unexpected reply from the check script");
            return None;
        };
        let d = match tag {
            0 => Decision::Allowed(rate_info(a, b, c)),
            1 => Decision::Limited(rate_info(a, b, c)),
            2 => Decision::Banned(a.max(1) as u64),
            _ => Decision::BurstBan(Some(BanRecord {
                key,
                until_ms: a,
                reason: "ddos".into(),
                created_at: b,
                offences: c,
            })),
        };
        let view = View {
            epoch: epoch.max(0) as u64,
            jti: jti.map(|j| (j.to_string(), revoked == 1)),
        };
        Some((d, view))
    }

    /// The per-identity limit (`limits.per_identity`) of `user_id`, shared
    /// by every instance (one EVALSHA); `now_ms` only in tests.
    pub async fn identity(
        &self,
        user_id: &str,
        window: Window,
        now_ms: Option<u64>,
    ) -> Option<Result<RateLimitInfo, RateLimitInfo>> {
        let mut inv = self.scripts.rate.prepare_invoke();
        inv.key(self.key("urate", user_id))
            .arg(window.limit)
            .arg(window.bucket_ms())
            .arg(BUCKETS);
        if let Some(t) = now_ms {
            inv.arg(t);
        }
        let r: Vec<i64> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        let [tag, a, b, c] = r[..] else {
            tracing::error!("unexpected reply from the rate script");
            return None;
        };
        let info = rate_info(a, b, c);
        Some(if tag == 0 { Ok(info) } else { Err(info) })
    }

    /// The revocation epoch (and a `jti`'s revocation) without the limits.
    pub async fn view(&self, jti: Option<&str>) -> Option<View> {
        let mut p = redis::pipe();
        p.get(format!("{}epoch", self.prefix));
        if let Some(j) = jti {
            p.exists(self.key("jti", j));
        }
        let (epoch, revoked): (Option<u64>, Option<bool>) = if jti.is_some() {
            self.call(|mut c| async move { p.query_async(&mut c).await })
                .await?
        } else {
            let (e,): (Option<u64>,) = self
                .call(|mut c| async move { p.query_async(&mut c).await })
                .await?;
            (e, None)
        };
        Some(View {
            epoch: epoch.unwrap_or(0),
            jti: jti.map(|j| (j.to_string(), revoked.unwrap_or(false))),
        })
    }

    /// Set a ban; `Some(None)` = an escalating ban found it already banned.
    pub async fn ban(
        &self,
        net: &Network,
        key: IpAddr,
        len: Length,
        reason: &str,
    ) -> Option<Option<BanRecord>> {
        let ks = key_string(key, net.group_v6);
        let (fixed, secs, cap) = match len {
            Length::Fixed(s) => (1, s, s),
            Length::Escalating { base, cap } => (0, base, cap),
        };
        let mut inv = self.scripts.ban.prepare_invoke();
        inv.key(self.key("ban", &ks))
            .key(self.key("off", &ks))
            .arg(fixed)
            .arg(secs.min(i64::MAX as u64 / 2000))
            .arg(cap.min(i64::MAX as u64 / 2000))
            .arg(reason)
            .arg(self.memory_ms);
        let r: Option<Vec<i64>> = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Some(r.and_then(|v| match v[..] {
            [until_ms, created_at, offences] => Some(BanRecord {
                key,
                until_ms,
                reason: reason.to_string(),
                created_at,
                offences,
            }),
            _ => None,
        }))
    }

    /// Lift a ban (and forget the offences); `Some(was_banned)`.
    pub async fn lift(&self, net: &Network, key: IpAddr) -> Option<bool> {
        let ks = key_string(key, net.group_v6);
        let (ban, off) = (self.key("ban", &ks), self.key("off", &ks));
        let (n, _): (i64, i64) = self
            .call(|mut c| async move {
                redis::pipe()
                    .atomic()
                    .del(ban)
                    .del(off)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        self.send(Msg::Lift { ip: ks });
        Some(n > 0)
    }

    /// For offline commands (`frenly keys revoke`, `frenly users remove`):
    /// move the revocation epoch once, so that every running instance drops
    /// its cached credentials at its next request. Bounded by 3 s.
    pub async fn bump_epoch_offline(url: &str, prefix: &str) -> Result<(), String> {
        let client = redis::Client::open(url).map_err(|e| e.category().to_string())?;
        // announced as well, as a server's own revocations are: instances
        // act on it at once (open WebSockets re-check their credential),
        // not at their next request's epoch read
        let wire = serde_json::to_string(&Wire {
            from: crate::store::new_id(),
            msg: Msg::Credentials,
        })
        .map_err(|e| e.to_string())?;
        let bump = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            redis::pipe()
                .atomic()
                .incr(format!("{prefix}epoch"), 1)
                .ignore()
                .publish(format!("{prefix}events"), wire)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        };
        match tokio::time::timeout(Duration::from_secs(3), bump).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.category().to_string()),
            Err(_) => Err("timed out".into()),
        }
    }

    /// INCR the revocation epoch (and record a revoked `jti`) and announce
    /// it, atomically, before the caller answers. The announcement does not
    /// go through the publish queue: behind a backlog of task events there,
    /// a WebSocket on another instance received an event the revoked
    /// credential's owner caused after the revocation's 204 (Redis delivers
    /// one connection's messages in order, so the announcement now reaches
    /// every instance before any event published after the answer), and a
    /// full queue dropped it.
    pub async fn bump_epoch(&self, jti: Option<(&str, i64)>) {
        let epoch = format!("{}epoch", self.prefix);
        let mut p = redis::pipe();
        p.atomic();
        let msg = match jti {
            Some((j, exp_ms)) => Msg::Revoked {
                jti: j.to_string(),
                exp_ms,
            },
            None => Msg::Credentials,
        };
        if let Some((j, exp_ms)) = jti {
            let ttl = (exp_ms - crate::store::now_ms()).max(1000);
            p.cmd("SET")
                .arg(self.key("jti", j))
                .arg(1)
                .arg("PX")
                .arg(ttl)
                .ignore();
        }
        p.incr(&epoch, 1).ignore();
        let wire = Wire {
            from: self.instance.clone(),
            msg,
        };
        if let Ok(text) = serde_json::to_string(&wire) {
            p.publish(self.channel(), text).ignore();
        }
        let done: Option<()> = self
            .call(|mut c| async move { p.query_async(&mut c).await })
            .await;
        if done.is_none() {
            tracing::warn!("revocation not shared yet: announced again when Redis is back");
            self.unshared_push(wire.msg);
        }
    }

    /// Remember a change other instances could not be told about.
    fn unshared_push(&self, msg: Msg) {
        let mut v = self.unshared.lock();
        if v.len() >= UNSHARED_MAX {
            v.pop_front();
        }
        v.push_back(msg);
    }

    /// A ban or lift decided while Redis was out of reach.
    pub fn unshared_ban(&self, net: &Network, rec: &BanRecord) {
        self.unshared_push(Msg::Ban {
            ip: key_string(rec.key, net.group_v6),
            until_ms: rec.until_ms,
            reason: rec.reason.clone(),
            created_at: rec.created_at,
            offences: rec.offences,
        });
    }

    pub fn unshared_lift(&self, net: &Network, key: IpAddr) {
        self.unshared_push(Msg::Lift {
            ip: key_string(key, net.group_v6),
        });
    }

    /// Redis is back: set in it, and announce, what was decided here while
    /// it was out of reach (in order; what fails again stays queued).
    async fn replay(&self, net: &Network) {
        let pending = std::mem::take(&mut *self.unshared.lock());
        if !pending.is_empty() {
            tracing::info!(
                changes = pending.len(),
                "announcing changes made while Redis was out of reach"
            );
        }
        let now = crate::store::now_ms();
        for msg in pending {
            match msg {
                Msg::Revoked { jti, exp_ms } => self.bump_epoch(Some((&jti, exp_ms))).await,
                Msg::Credentials => self.bump_epoch(None).await,
                Msg::Ban {
                    ip,
                    until_ms,
                    reason,
                    ..
                } if until_ms > now => {
                    let Some(key) = parse_key(&ip, net.group_v6) else {
                        continue;
                    };
                    let secs = ((until_ms - now) as u64).div_ceil(1000);
                    match self.ban(net, key, Length::Fixed(secs), &reason).await {
                        Some(Some(rec)) => self.publish_ban(net, &rec),
                        Some(None) => {}
                        None => self.unshared_push(Msg::Ban {
                            ip,
                            until_ms,
                            reason,
                            created_at: now,
                            offences: 1,
                        }),
                    }
                }
                Msg::Lift { ip } => {
                    if let Some(key) = parse_key(&ip, net.group_v6) {
                        if self.lift(net, key).await.is_none() {
                            self.unshared_lift(net, key);
                        }
                    }
                }
                Msg::Ban { .. } | Msg::Event { .. } | Msg::Unstored { .. } | Msg::Locked { .. } => {
                }
            }
        }
    }

    /// Count one hit of a thresholded window counter.
    pub async fn count(
        &self,
        kind: &str,
        key: IpAddr,
        window_ms: u64,
        threshold: u32,
    ) -> Option<u32> {
        let mut inv = self.scripts.count.prepare_invoke();
        inv.key(self.key(kind, &key.to_string()))
            .arg(window_ms.max(1))
            .arg(threshold.max(1));
        let n: i64 = self
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Some(n.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// `SET cool:<kind>:<addr> NX PX ms`: was it free?
    pub async fn claim_cooldown(&self, kind: &str, key: IpAddr, ms: u64) -> Option<bool> {
        let k = self.key("cool", &format!("{kind}:{key}"));
        let set: Option<String> = self
            .call(|mut c| async move {
                redis::cmd("SET")
                    .arg(k)
                    .arg(1)
                    .arg("NX")
                    .arg("PX")
                    .arg(ms.max(1))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Some(set.is_some())
    }

    fn account_key(&self, account: &str) -> String {
        self.key(
            "lk:a",
            &hex::encode(crate::authn::lockout::account(account)),
        )
    }

    /// Run a lockout script on the account's and the address's keys, as
    /// triples: `<base>` counts failures, `<base>:locked` is the lock,
    /// `<base>:pending` the attempts in flight; then `args`.
    async fn lockout_script(
        &self,
        script: &Script,
        account: &str,
        addr: Option<IpAddr>,
        args: &[i64],
    ) -> Option<Vec<i64>> {
        let mut inv = script.prepare_invoke();
        let mut bases = vec![self.account_key(account)];
        bases.extend(addr.map(|a| self.key("lk:i", &a.to_string())));
        for k in bases {
            inv.key(&k)
                .key(format!("{k}:locked"))
                .key(format!("{k}:pending"));
        }
        for a in args {
            inv.arg(*a);
        }
        self.call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await
    }

    pub async fn lockout_admit(
        &self,
        account: &str,
        addr: Option<IpAddr>,
        max: u32,
        pending_ttl_ms: i64,
    ) -> Option<[u8; 2]> {
        let args = [i64::from(max.max(1)), pending_ttl_ms.max(1)];
        let v = self
            .lockout_script(&self.scripts.lockout_admit, account, addr, &args)
            .await?;
        let flag = |i: usize| v.get(i).map_or(0, |&x| u8::try_from(x).unwrap_or(1));
        Some([flag(0), flag(1)])
    }

    /// `outcome`: 0 abandoned, 1 failed, 2 succeeded (`lockout.lua`).
    pub async fn lockout_finish(
        &self,
        account: &str,
        addr: Option<IpAddr>,
        max: u32,
        window_ms: i64,
        outcome: u8,
    ) -> Option<[bool; 2]> {
        let args = [i64::from(max.max(1)), window_ms.max(1), i64::from(outcome)];
        let v = self
            .lockout_script(&self.scripts.lockout, account, addr, &args)
            .await?;
        Some([
            v.first().is_some_and(|&x| x == 1),
            v.get(1).is_some_and(|&x| x == 1),
        ])
    }

    fn send(&self, msg: Msg) {
        let wire = Wire {
            from: self.instance.clone(),
            msg,
        };
        if let Ok(s) = serde_json::to_string(&wire) {
            // full queue or Redis down: other instances miss this message
            let _ = self.publisher.try_send(s);
        }
    }

    pub fn publish_event(&self, ev: &Event) {
        self.send(Msg::Event {
            kind: ev.kind,
            owner_id: ev.owner_id.clone(),
            agent_id: ev.agent_id.clone(),
            json: ev.json.to_string(),
        });
    }

    /// Tell the other instances a ban's row could not be stored.
    pub fn publish_unstored(&self, row: &crate::store::bans::BanRow) {
        self.send(Msg::Unstored {
            ip: row.ip.clone(),
            until_ms: row.until_ms,
            reason: row.reason.clone(),
            created_at: row.created_at,
            offences: row.offences,
        });
    }

    /// Tell the other instances of a login lock until `until_ms`.
    pub fn publish_lock(&self, account: Option<[u8; 16]>, ip: Option<IpAddr>, until_ms: i64) {
        self.send(Msg::Locked {
            account: account.map(hex::encode),
            ip: ip.map(|a| a.to_string()),
            until_ms,
        });
    }

    pub fn publish_ban(&self, net: &Network, rec: &BanRecord) {
        self.send(Msg::Ban {
            ip: key_string(rec.key, net.group_v6),
            until_ms: rec.until_ms,
            reason: rec.reason.clone(),
            created_at: rec.created_at,
            offences: rec.offences,
        });
    }

    /// Subscribe to the channel (reconnecting after any failure) and apply
    /// other instances' messages here.
    pub fn start_subscriber(self: Arc<Self>, app: Weak<crate::app::AppInner>) {
        let me = Arc::downgrade(&self);
        drop(self);
        tokio::spawn(async move {
            // Whether messages may have been missed since the state was
            // loaded (at start) or last caught up: the subscription broke or
            // never came up.
            let mut missed = false;
            let mut caught_up = tokio::time::Instant::now();
            loop {
                let Some(r) = me.upgrade() else { return };
                let (client, channel) = (r.client.clone(), r.channel());
                drop(r);
                let sub = tokio::time::timeout(CALL_TIMEOUT * 3, async {
                    let mut ps = client.get_async_pubsub().await?;
                    ps.subscribe(&channel).await?;
                    Ok::<_, RedisError>(ps)
                })
                .await;
                if let Ok(Ok(ps)) = sub {
                    if std::mem::take(&mut missed) {
                        // subscribed first, so nothing falls between the
                        // database read and the messages
                        let (Some(r), Some(app)) = (me.upgrade(), app.upgrade()) else {
                            return;
                        };
                        catch_up(&app, &r).await;
                        // the probe marks Redis up on its own beat (calls
                        // are skipped until it has)
                        let wait = tokio::time::Instant::now() + PROBE_DOWN * 8;
                        while !r.is_up() && tokio::time::Instant::now() < wait {
                            tokio::time::sleep(PROBE_DOWN / 5).await;
                        }
                        r.replay(&app.network).await;
                    }
                    let mut stream = ps.into_on_message();
                    // A Redis that goes silent (its host down, a partition)
                    // never ends the stream: the subscription is left once
                    // the probe, which has seen Redis up since, finds it
                    // down, so the database catch-up below runs (it never
                    // did: logouts and bans made meanwhile never arrived).
                    let mut live = tokio::time::interval(PROBE_DOWN);
                    let mut seen_up = false;
                    loop {
                        tokio::select! {
                            msg = stream.next() => {
                                let Some(msg) = msg else { break };
                                let (Some(r), Some(app)) = (me.upgrade(), app.upgrade()) else {
                                    return;
                                };
                                if let Ok(w) = serde_json::from_slice::<Wire>(msg.get_payload_bytes()) {
                                    if w.from != r.instance {
                                        apply(&app, w.msg);
                                    }
                                }
                            }
                            _ = live.tick() => {
                                let Some(r) = me.upgrade() else { return };
                                if r.is_up() {
                                    seen_up = true;
                                } else if seen_up {
                                    break;
                                }
                            }
                        }
                    }
                }
                missed = true;
                if caught_up.elapsed() >= CATCH_UP_EVERY {
                    let (Some(r), Some(app)) = (me.upgrade(), app.upgrade()) else {
                        return;
                    };
                    catch_up(&app, &r).await;
                    caught_up = tokio::time::Instant::now();
                }
                tokio::time::sleep(PROBE_DOWN).await;
            }
        });
    }
}

/// Read the revocations and bans other instances stored in the database
/// (what their messages would have said) into this instance's mirrors:
/// every [`CATCH_UP_EVERY`] while the subscription is down, and once when
/// it is back. A ban lifted elsewhere meanwhile may still be a Redis key
/// (the lift could not reach Redis): it is lifted there too with the
/// changes replayed on reconnect, whichever instance gets there first.
async fn catch_up(app: &crate::app::AppInner, r: &RedisState) {
    if let Err(e) = app.authn.reload_revocations(&app.db).await {
        tracing::warn!(error = %e, "cannot read revocations from the database");
    }
    match app.network.reload_bans(&app.db).await {
        Ok(lifted) => {
            for key in lifted {
                r.unshared_lift(&app.network, key);
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read bans from the database"),
    }
    let now = crate::store::now_ms();
    app.metrics
        .active_bans
        .set(app.network.bans.active_count(now) as i64);
}

/// Apply another instance's message to this instance.
fn apply(app: &crate::app::AppInner, msg: Msg) {
    let group = app.network.group_v6;
    match msg {
        Msg::Event {
            kind,
            owner_id,
            agent_id,
            json,
        } => app.events.publish_local(Event {
            kind,
            owner_id,
            agent_id,
            json: json.into(),
        }),
        Msg::Ban {
            ip,
            until_ms,
            reason,
            created_at,
            offences,
        } => {
            if let Some(key) = parse_key(&ip, group) {
                app.network.bans.put(BanRecord {
                    key,
                    until_ms,
                    reason,
                    created_at,
                    offences,
                });
                let now = crate::store::now_ms();
                app.metrics
                    .active_bans
                    .set(app.network.bans.active_count(now) as i64);
            }
        }
        Msg::Lift { ip } => {
            if let Some(key) = parse_key(&ip, group) {
                let now = crate::store::now_ms();
                app.network.bans.lift(&key, now);
                app.metrics
                    .active_bans
                    .set(app.network.bans.active_count(now) as i64);
            }
        }
        Msg::Revoked { jti, exp_ms } => app.authn.token_revoked_elsewhere(&jti, exp_ms),
        Msg::Credentials => app.authn.forget_all(),
        Msg::Unstored {
            ip,
            until_ms,
            reason,
            created_at,
            offences,
        } => app.network.keep_unstored(crate::store::bans::BanRow {
            ip,
            until_ms,
            reason,
            created_at,
            offences,
        }),
        Msg::Locked {
            account,
            ip,
            until_ms,
        } => {
            let account = account
                .and_then(|h| hex::decode(h).ok())
                .and_then(|b| <[u8; 16]>::try_from(b).ok());
            let ip = ip.and_then(|a| a.parse().ok());
            app.authn.lockout.mirror(account, ip, until_ms);
        }
    }
}

/// Connect (and reconnect): ping Redis every [`PROBE_UP`] while up and
/// every [`PROBE_DOWN`] while down; flips the up flag both ways.
async fn probe(me: Weak<RedisState>) {
    let cfg = ConnectionManagerConfig::new()
        .set_connection_timeout(CALL_TIMEOUT)
        .set_response_timeout(CALL_TIMEOUT)
        .set_number_of_retries(0);
    loop {
        let Some(r) = me.upgrade() else { return };
        let existing = r.conn.read().clone();
        let conn = match existing {
            Some(c) => Some(c),
            None => {
                let made = tokio::time::timeout(
                    CALL_TIMEOUT * 2,
                    ConnectionManager::new_with_config(r.client.clone(), cfg.clone()),
                )
                .await;
                match made {
                    Ok(Ok(c)) => {
                        *r.conn.write() = Some(c.clone());
                        Some(c)
                    }
                    Ok(Err(e)) => {
                        r.mark_down(&e.to_string());
                        None
                    }
                    Err(_) => {
                        r.mark_down("connect timed out");
                        None
                    }
                }
            }
        };
        if let Some(mut c) = conn {
            let pong = tokio::time::timeout(
                CALL_TIMEOUT,
                redis::cmd("PING").query_async::<String>(&mut c),
            )
            .await;
            match pong {
                Ok(Ok(_)) => r.mark_up(),
                Ok(Err(e)) => r.mark_down(&e.to_string()),
                Err(_) => r.mark_down("ping timed out"),
            }
        }
        let wait = if r.is_up() { PROBE_UP } else { PROBE_DOWN };
        drop(r);
        tokio::time::sleep(wait).await;
    }
}

async fn publish_loop(me: Weak<RedisState>, mut rx: mpsc::Receiver<String>) {
    while let Some(payload) = rx.recv().await {
        let Some(r) = me.upgrade() else { return };
        let channel = r.channel();
        let _: Option<i64> = r
            .call(|mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::network::ratelimit::{Counter, Window};

    /// Redis at 127.0.0.1:6379, or SKIPPED (a failure with
    /// `CI_REQUIRE_SERVICES=1`).
    fn redis_here() -> bool {
        let up = std::net::TcpStream::connect_timeout(
            &"127.0.0.1:6379".parse().unwrap(),
            Duration::from_millis(500),
        )
        .is_ok();
        if !up {
            assert!(
                std::env::var("CI_REQUIRE_SERVICES").map_or(true, |v| v != "1"),
                "Redis is required (CI_REQUIRE_SERVICES=1) but unreachable"
            );
            eprintln!("SKIPPED: Redis is not reachable on this machine");
        }
        up
    }

    fn config(toml: &str) -> (Config, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let prefix = format!("frenly_unit_{}:", uuid::Uuid::new_v4().simple());
        std::fs::write(
            &f,
            format!(
                "{toml}\n[state]\nredis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"{prefix}\"\n"
            ),
        )
        .unwrap();
        let cfg = crate::config::load(&crate::config::Source {
            file: Some(f),
            data_dir: Some(dir.path().into()),
            env: vec![],
        })
        .unwrap();
        (cfg, dir)
    }

    async fn connected(cfg: &Config) -> Arc<RedisState> {
        let url = cfg.state.redis_url.clone().unwrap();
        let r = RedisState::start(cfg, &url, Gauge::default()).unwrap();
        for _ in 0..100 {
            if r.is_up() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("Redis did not come up");
    }

    /// The per-identity window on Redis decides like the local one, and two
    /// instances count into the same window.
    #[tokio::test]
    async fn the_identity_window_is_the_local_window_and_is_shared() {
        if !redis_here() {
            return;
        }
        let (cfg, _dir) = config("");
        let (a, b) = (connected(&cfg).await, connected(&cfg).await);
        let w = Window::new(5, 2000);
        let mut local = Counter::default();
        let mut now = 5_000_000u64;
        let mut admitted = 0;
        for (i, g) in gaps(9, 200, 300).into_iter().enumerate() {
            now += g;
            let r = if i % 2 == 0 { &a } else { &b };
            let shared = r.identity("u1", w, Some(now)).await.unwrap();
            assert_eq!(shared, local.try_admit(&w, now), "at {now}");
            admitted += usize::from(shared.is_ok());
        }
        assert!(admitted > 5 && admitted < 200, "{admitted}");
        // another user has a window of its own
        assert!(a.identity("u2", w, Some(now)).await.unwrap().is_ok());
    }

    /// A small deterministic generator (the arrival gaps).
    fn gaps(seed: u64, n: usize, max: u64) -> Vec<u64> {
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) % max
            })
            .collect()
    }

    /// The Redis ring decides exactly like the in-process ring (same
    /// admissions, same `RateLimit-*` figures), so it keeps the same bound:
    /// never more than N admitted in any interval of length W.
    #[tokio::test]
    async fn the_redis_window_is_the_local_window_and_keeps_the_bound() {
        if !redis_here() {
            return;
        }
        for (limit, secs, seed) in [(3u32, 1u64, 1u64), (7, 2, 2), (20, 3, 3)] {
            let (cfg, _dir) = config(&format!(
                "[limits]\nrate.max_requests = {limit}\nrate.window_seconds = {secs}\n\
                 ddos.max_requests_per_second = 100000\n"
            ));
            let r = connected(&cfg).await;
            let net = Network::new(&cfg);
            let w = Window::new(limit, secs * 1000);
            let mut local = Counter::default();
            let key: IpAddr = "198.51.100.7".parse().unwrap();
            let mut now = 1_000_000u64;
            let mut admitted = Vec::new();
            for g in gaps(seed, 400, 300 * secs) {
                now += g;
                let (d, _) = r.check_at(&net, key, None, Some(now)).await.unwrap();
                match (d, local.try_admit(&w, now)) {
                    (Decision::Allowed(a), Ok(b)) => {
                        assert_eq!(a, b, "at {now}");
                        admitted.push(now);
                    }
                    (Decision::Limited(a), Err(b)) => assert_eq!(a, b, "at {now}"),
                    (d, l) => panic!("at {now}: Redis {d:?}, local {l:?}"),
                }
            }
            assert!(admitted.len() > limit as usize);
            for (i, &s) in admitted.iter().enumerate() {
                let n = admitted[i..]
                    .iter()
                    .take_while(|&&t| t <= s + secs * 1000)
                    .count();
                assert!(
                    n <= limit as usize,
                    "{n} admitted in [{s}, {}]",
                    s + secs * 1000
                );
            }
        }
    }

    #[tokio::test]
    async fn burst_bans_escalate_and_keys_expire() {
        if !redis_here() {
            return;
        }
        let (cfg, _dir) = config(
            "[limits]\nddos.max_requests_per_second = 3\nddos.ban_seconds = 1\n\
             ddos.max_ban_seconds = 4\n",
        );
        let r = connected(&cfg).await;
        let net = Network::new(&cfg);
        let key: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..3 {
            let (d, _) = r.check(&net, key, None).await.unwrap();
            assert!(matches!(d, Decision::Allowed(_)), "{d:?}");
        }
        let (d, _) = r.check(&net, key, None).await.unwrap();
        let Decision::BurstBan(Some(rec)) = d else {
            panic!("{d:?}")
        };
        assert_eq!((rec.offences, rec.until_ms - rec.created_at), (1, 1000));
        let (d, _) = r.check(&net, key, None).await.unwrap();
        assert!(matches!(d, Decision::Banned(1)), "{d:?}");
        // every key of this address carries a TTL
        let mut c = r.conn.read().clone().unwrap();
        let ks = key.to_string();
        for k in ["ban", "off", "rate"] {
            let ttl: i64 = redis::cmd("PTTL")
                .arg(r.key(k, &ks))
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(ttl > 0, "{k} has no TTL ({ttl})");
        }
        // a second offence doubles the ban
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let len = Length::Escalating { base: 1, cap: 4 };
        let rec = r.ban(&net, key, len, "x").await.unwrap().unwrap();
        assert_eq!((rec.offences, rec.until_ms - rec.created_at), (2, 2000));
        assert_eq!(
            r.ban(&net, key, len, "x").await,
            Some(None),
            "no-op while banned"
        );
        assert_eq!(r.lift(&net, key).await, Some(true));
        assert_eq!(r.lift(&net, key).await, Some(false));
    }
}
