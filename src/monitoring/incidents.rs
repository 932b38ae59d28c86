//! Incident detection and automated response.
//!
//! Threat: attacks that each single layer only refuses request by request
//! (an injection scanner, a password guesser, a flood) without anyone
//! noticing or the attacker paying for it.
//!
//! Guarantee: the network layer feeds every refusal it can see into the
//! [`Engine`] — IDS blocks (`ApiError::RequestBlocked` coming back from the
//! inner layers), 401s of `POST /api/auth/login`, its own 429s and burst
//! bans — once per request. The engine (pure: time is a parameter) turns
//! them into incidents:
//!
//! | kind | detected when |
//! |---|---|
//! | `sql_injection`, `xss_attempt`, `path_traversal`, `command_injection`, `intrusion_attempt` | an IDS block of family sqli / xss / lfi, rfi / rce, php, java, nodejs / anything else: recorded at the first block (then at most once per `incidents.cooldown_seconds`) and when the address reaches `ids.threshold` blocked requests within `incidents.window_seconds` (the count restarts after that) |
//! | `brute_force` | `monitor.failed_login_burst` failed logins from one address within `monitor.failed_login_window_seconds` |
//! | `rate_limit_exceeded` | a 429 (at most once per cooldown per address) |
//! | `ddos` | a burst ban (more than `limits.ddos.max_requests_per_second` in one second) |
//!
//! Each incident is stored (`incidents` table, listed at
//! `GET /api/security/incidents`), written to the audit log as `incident`
//! (and, with `incidents.audit`, as `security_violation` with
//! `violation_type` and `details`), and answered by the configured actions:
//! `ban` for the kinds in `incidents.ban` (escalating from `ids.ban_seconds`
//! up to `limits.ddos.max_ban_seconds`), `alert` for the kinds in
//! `incidents.alert` (POSTed to `alerts.webhook_url`, never blocking).
//! The ban takes effect in memory before the triggering request's response
//! is returned; storing, auditing and alerting are one background
//! recorder's work, fed through a bounded queue ([`QUEUE`]): identical
//! detections taken together, or finding the queue full, are one
//! aggregated incident (count and a sample of addresses), so a flood of
//! new addresses costs the database a transaction per batch, not a
//! statement per request (docs/TRAFFIC.md, "Under a flood of incidents").
//!
//! Requests refused by Frenly itself before the detectors (a ban) never
//! reach the engine again, so a banned client cannot renew its own ban;
//! details hold only the rule family and counts, never the request's
//! payload, credentials or body.
//!
//! With Redis (`crate::state`), IDS block counts (suspicion scores), failed
//! login bursts and the bans they lead to are shared by every instance, and
//! so are the cooldowns (a Redis key per kind and address, claimed with
//! `SET NX`): n instances record, and alert, once per cooldown, not n times.

use std::net::IpAddr;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::config::{Config, INCIDENT_KINDS};
use crate::monitoring::audit::AuditEvent;
use crate::network::ban::{key_string, BanRecord, Length};
use crate::network::ratelimit::Table;

/// An incident kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    BruteForce,
    SqlInjection,
    XssAttempt,
    PathTraversal,
    CommandInjection,
    IntrusionAttempt,
    RateLimitExceeded,
    Ddos,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::BruteForce,
        Kind::SqlInjection,
        Kind::XssAttempt,
        Kind::PathTraversal,
        Kind::CommandInjection,
        Kind::IntrusionAttempt,
        Kind::RateLimitExceeded,
        Kind::Ddos,
    ];

    // Arrays of `Kind::ALL.len()` indexed by a `Kind` discriminant.
    #[allow(clippy::indexing_slicing)]
    pub fn as_str(self) -> &'static str {
        INCIDENT_KINDS[self as usize]
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The incident kind of an IDS rule family.
    pub fn from_family(family: &str) -> Kind {
        match family {
            "sqli" => Kind::SqlInjection,
            "xss" => Kind::XssAttempt,
            "lfi" | "rfi" | "path_traversal" => Kind::PathTraversal,
            "rce" | "php" | "java" | "nodejs" | "command_injection" => Kind::CommandInjection,
            _ => Kind::IntrusionAttempt,
        }
    }
}

/// What the network layer saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The IDS blocked a request (403 `request_blocked`).
    IdsBlock { family: String },
    /// `POST /api/auth/login` answered 401.
    LoginFailure,
    /// A 429 (per address or per identity).
    RateLimited,
    /// A burst ban was just set.
    Ddos { ban_seconds: u64, offences: i64 },
}

/// An incident the engine decided to record.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    pub kind: Kind,
    pub details: Value,
    /// Ban the address (escalating).
    pub ban: bool,
    pub alert: bool,
    pub audit: bool,
    /// Recorded because this address's cooldown for the kind had passed
    /// (not because a threshold was reached): with several instances, only
    /// the first to claim the shared cooldown records it.
    pub cooled: bool,
}

#[derive(Debug, Default)]
struct Counts {
    ids: u32,
    ids_since: u64,
    logins: u32,
    logins_since: u64,
    /// When each kind was last recorded.
    recorded: [Option<u64>; 8],
}

/// The detector: per-address counts (a capped table, like the limiter's)
/// and the configured actions.
pub struct Engine {
    table: Table<IpAddr, Counts>,
    threshold: u32,
    window_ms: u64,
    login_burst: u32,
    login_window_ms: u64,
    cooldown_ms: u64,
    ban: [bool; 8],
    alert: [bool; 8],
    audit: bool,
}

// Arrays of `Kind::ALL.len()` indexed by a `Kind` discriminant.
#[allow(clippy::indexing_slicing)]
fn set_of(names: &[String]) -> [bool; 8] {
    let mut s = [false; 8];
    for n in names {
        if let Some(k) = Kind::parse(n) {
            s[k as usize] = true;
        }
    }
    s
}

// Arrays of `Kind::ALL.len()` indexed by a `Kind` discriminant.
#[allow(clippy::indexing_slicing)]
impl Engine {
    pub fn new(cfg: &Config) -> Engine {
        let i = &cfg.incidents;
        Engine {
            table: Table::new(cfg.limits.max_tracked_clients),
            threshold: cfg.ids.threshold.max(1),
            window_ms: i.window_seconds.saturating_mul(1000),
            login_burst: cfg.monitor.failed_login_burst.max(1),
            login_window_ms: cfg.monitor.failed_login_window_seconds.saturating_mul(1000),
            cooldown_ms: i.cooldown_seconds.saturating_mul(1000),
            ban: set_of(&i.ban),
            alert: set_of(&i.alert),
            audit: i.audit,
        }
    }

    fn detection(&self, kind: Kind, details: Value, ban: bool) -> Detection {
        Detection {
            kind,
            details,
            ban: ban && self.ban[kind as usize],
            alert: self.alert[kind as usize],
            audit: self.audit,
            cooled: false,
        }
    }

    /// A detection recorded at most once per cooldown (per instance here;
    /// across instances through the shared claim, see `Detection::cooled`).
    fn cooled_detection(&self, kind: Kind, details: Value, ban: bool) -> Detection {
        Detection {
            cooled: true,
            ..self.detection(kind, details, ban)
        }
    }

    /// Feed one signal from address `key` at `now_ms`.
    pub fn observe(&self, key: IpAddr, signal: &Signal, now_ms: u64) -> Option<Detection> {
        self.observe_counted(key, signal, now_ms, None)
    }

    /// For the signals counted over a window: the counter's name in the
    /// shared state, its window (ms) and its threshold.
    pub fn counted(&self, signal: &Signal) -> Option<(&'static str, u64, u32)> {
        match signal {
            Signal::IdsBlock { .. } => Some(("ids", self.window_ms, self.threshold)),
            Signal::LoginFailure => Some(("login", self.login_window_ms, self.login_burst)),
            _ => None,
        }
    }

    /// [`observe`](Engine::observe), with the count of a [`counted`]
    /// signal kept elsewhere (the shared state: this one included, reset
    /// there at the threshold).
    ///
    /// [`counted`]: Engine::counted
    pub fn observe_counted(
        &self,
        key: IpAddr,
        signal: &Signal,
        now_ms: u64,
        shared: Option<u32>,
    ) -> Option<Detection> {
        self.table.with(&key, |c| {
            let cooled = |c: &Counts, k: Kind| {
                c.recorded[k as usize].is_none_or(|t| now_ms.saturating_sub(t) >= self.cooldown_ms)
            };
            match signal {
                Signal::IdsBlock { family } => {
                    let n = match shared {
                        Some(n) => n,
                        None => {
                            if c.ids == 0 || now_ms.saturating_sub(c.ids_since) > self.window_ms {
                                c.ids = 0;
                                c.ids_since = now_ms;
                            }
                            c.ids += 1;
                            c.ids
                        }
                    };
                    let kind = Kind::from_family(family);
                    let details = json!({
                        "family": family,
                        "blocked_requests": n,
                        "threshold": self.threshold,
                    });
                    if n >= self.threshold {
                        c.ids = 0;
                        c.recorded[kind as usize] = Some(now_ms);
                        return Some(self.detection(kind, details, true));
                    }
                    if cooled(c, kind) {
                        c.recorded[kind as usize] = Some(now_ms);
                        return Some(self.cooled_detection(kind, details, false));
                    }
                    None
                }
                Signal::LoginFailure => {
                    let n = match shared {
                        Some(n) => n,
                        None => {
                            if c.logins == 0
                                || now_ms.saturating_sub(c.logins_since) > self.login_window_ms
                            {
                                c.logins = 0;
                                c.logins_since = now_ms;
                            }
                            c.logins += 1;
                            c.logins
                        }
                    };
                    if n < self.login_burst {
                        return None;
                    }
                    c.logins = 0;
                    c.recorded[Kind::BruteForce as usize] = Some(now_ms);
                    let details = json!({
                        "failed_logins": n,
                        "window_seconds": self.login_window_ms / 1000,
                    });
                    Some(self.detection(Kind::BruteForce, details, true))
                }
                Signal::RateLimited => {
                    let k = Kind::RateLimitExceeded;
                    if !cooled(c, k) {
                        return None;
                    }
                    c.recorded[k as usize] = Some(now_ms);
                    Some(self.cooled_detection(k, json!({}), true))
                }
                Signal::Ddos {
                    ban_seconds,
                    offences,
                } => {
                    c.recorded[Kind::Ddos as usize] = Some(now_ms);
                    let details = json!({"ban_seconds": ban_seconds, "offences": offences});
                    // the burst ban is already in place
                    Some(self.detection(Kind::Ddos, details, false))
                }
            }
        })
    }
}

/// Incident state in `AppState`.
pub struct Incidents {
    pub engine: Engine,
    /// Detections waiting for the recorder (bounded: [`QUEUE`]).
    queue: tokio::sync::mpsc::Sender<Pending>,
    /// The recorder's end, taken when it starts (at the first detection).
    receiver: std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Pending>>>,
    /// Detections that found the queue full, folded per kind.
    overflow: std::sync::Mutex<Vec<Group>>,
}

/// Detections waiting for the recorder at most; beyond, they are folded
/// into one aggregated incident per kind (count and a sample of addresses).
pub const QUEUE: usize = 4096;
/// Detections the recorder takes at once (one transaction of incident rows).
const BATCH: usize = 512;
/// Addresses named in an aggregated incident.
pub const SAMPLE: usize = 10;

/// A detection on its way to the recorder.
struct Pending {
    key: IpAddr,
    det: Detection,
    ctx: Context,
    ban: Option<BanRecord>,
    now: i64,
}

/// Identical detections (same kind, details and user, no ban) recorded as
/// one incident: how many, and the first [`SAMPLE`] addresses.
#[derive(Debug)]
pub struct Group {
    pub kind: Kind,
    pub details: Value,
    pub user_id: Option<String>,
    pub request_id: Option<String>,
    pub audit: bool,
    pub alert: bool,
    pub count: u64,
    pub addresses: Vec<IpAddr>,
}

impl Group {
    fn of(key: IpAddr, det: &Detection, ctx: &Context) -> Group {
        Group {
            kind: det.kind,
            details: det.details.clone(),
            user_id: ctx.user_id.clone(),
            request_id: ctx.request_id.clone(),
            audit: det.audit,
            alert: det.alert,
            count: 1,
            addresses: vec![key],
        }
    }

    fn same(&self, det: &Detection, ctx: &Context) -> bool {
        self.kind == det.kind && self.details == det.details && self.user_id == ctx.user_id
    }

    fn add(&mut self, key: IpAddr, n: u64) {
        self.count = self.count.saturating_add(n);
        if self.addresses.len() < SAMPLE && !self.addresses.contains(&key) {
            self.addresses.push(key);
        }
    }
}

/// Fold detections without a ban into groups of identical ones, in order of
/// their first appearance.
pub fn fold<'a>(
    items: impl IntoIterator<Item = (IpAddr, &'a Detection, &'a Context)>,
) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (key, det, ctx) in items {
        match groups.iter_mut().find(|g| g.same(det, ctx)) {
            Some(g) => g.add(key, 1),
            None => groups.push(Group::of(key, det, ctx)),
        }
    }
    groups
}

/// Who and what a signal is about, besides the address.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub request_id: Option<String>,
    pub user_id: Option<String>,
}

impl Incidents {
    pub fn new(cfg: &Config) -> Incidents {
        let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE);
        Incidents {
            engine: Engine::new(cfg),
            queue,
            receiver: std::sync::Mutex::new(Some(receiver)),
            overflow: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Start the recorder if it is not running: one task for the process,
    /// holding the state weakly (it ends with it).
    fn start(&self, state: &AppState) {
        let rx = match self.receiver.lock() {
            Ok(mut r) => r.take(),
            Err(_) => None,
        };
        if let Some(rx) = rx {
            tokio::spawn(record(std::sync::Arc::downgrade(&state.0), rx));
        }
    }

    /// Fold a detection the queue had no room for.
    fn overflowed(&self, p: &Pending) {
        if let Ok(mut o) = self.overflow.lock() {
            match o.iter_mut().find(|g| g.kind == p.det.kind) {
                Some(g) => g.add(p.key, 1),
                None => {
                    let mut g = Group::of(p.key, &p.det, &p.ctx);
                    // the kind's incidents differ in their details: keep none
                    g.details = json!({});
                    g.user_id = None;
                    g.request_id = None;
                    o.push(g);
                }
            }
        }
    }

    fn take_overflow(&self) -> Vec<Group> {
        self.overflow
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default()
    }

    /// Feed a signal; apply the detection's ban now (in memory, and in Redis
    /// when shared: one bounded call) and store, audit and alert in the
    /// background.
    /// `ban` is a ban already set by the caller (burst bans).
    pub async fn handle(
        &self,
        state: &AppState,
        key: IpAddr,
        signal: Signal,
        ctx: Context,
        ban: Option<BanRecord>,
    ) {
        let shared = match self.engine.counted(&signal) {
            Some((name, window, threshold)) => {
                state.shared.count(name, key, window, threshold).await
            }
            None => None,
        };
        let Some(det) =
            self.engine
                .observe_counted(key, &signal, crate::network::mono_ms(), shared)
        else {
            return;
        };
        if det.cooled {
            let cooldown = self.engine.cooldown_ms;
            if state
                .shared
                .claim_cooldown(det.kind.as_str(), key, cooldown)
                .await
                == Some(false)
            {
                // another instance recorded this kind for this address
                // within the cooldown
                return;
            }
        }
        let now = crate::store::now_ms();
        let mut ban = ban;
        if det.ban {
            let len = Length::Escalating {
                base: state.cfg.ids.ban_seconds,
                cap: state.cfg.limits.ddos.max_ban_seconds,
            };
            let kind = det.kind.as_str();
            if let Some(rec) = state.shared.ban(&state.network, key, len, kind, now).await {
                ban = Some(rec);
            }
        }
        self.start(state);
        let p = Pending {
            key,
            det,
            ctx,
            ban,
            now,
        };
        if p.ban.is_some() {
            // a ban's row must be written: wait for room (only the banned
            // address's own request waits)
            if let Err(e) = self.queue.send(p).await {
                respond(state, e.0.key, e.0.det, e.0.ctx, e.0.ban, e.0.now).await;
            }
            return;
        }
        match self.queue.try_send(p) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(p)) => self.overflowed(&p),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(p)) => {
                respond(state, p.key, p.det, p.ctx, p.ban, p.now).await;
            }
        }
    }
}

/// The recorder: takes up to [`BATCH`] detections at once; those with a ban
/// are answered one by one, the rest folded into groups of identical ones
/// (one incident each, with the count and a sample of addresses when more
/// than one), stored in one transaction, then audited and alerted.
/// Every second it also records what found the queue full.
async fn record(
    state: std::sync::Weak<crate::app::AppInner>,
    mut rx: tokio::sync::mpsc::Receiver<Pending>,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(1),
            rx.recv_many(&mut buf, BATCH),
        )
        .await;
        if matches!(got, Ok(0)) {
            return;
        }
        let Some(inner) = state.upgrade() else {
            return;
        };
        let state = AppState(inner);
        let mut plain = Vec::new();
        for p in buf.drain(..) {
            if p.ban.is_some() {
                respond(&state, p.key, p.det, p.ctx, p.ban, p.now).await;
            } else {
                plain.push(p);
            }
        }
        let now = plain.first().map_or_else(crate::store::now_ms, |p| p.now);
        let mut groups = fold(plain.iter().map(|p| (p.key, &p.det, &p.ctx)));
        groups.extend(state.incidents.take_overflow());
        if !groups.is_empty() {
            record_groups(&state, groups, now).await;
        }
    }
}

/// Store, audit and alert `groups` (one incident each).
async fn record_groups(state: &AppState, groups: Vec<Group>, now: i64) {
    let group_v6 = state.network.group_v6;
    let mut rows = Vec::with_capacity(groups.len());
    let mut folded = 0u64;
    for g in &groups {
        let mut details = g.details.clone();
        let ip = if g.count == 1 {
            g.addresses.first().map(|a| key_string(*a, group_v6))
        } else {
            folded = folded.saturating_add(g.count);
            if let Some(o) = details.as_object_mut() {
                o.insert("aggregated".into(), true.into());
                o.insert("count".into(), g.count.into());
                o.insert(
                    "addresses".into(),
                    json!(g
                        .addresses
                        .iter()
                        .map(|a| key_string(*a, group_v6))
                        .collect::<Vec<_>>()),
                );
            }
            None
        };
        let mut actions = Vec::new();
        if g.audit {
            actions.push("audit".to_string());
        }
        if g.alert {
            actions.push("alert".to_string());
        }
        rows.push(crate::store::incidents::IncidentRow {
            id: crate::store::new_id(),
            kind: g.kind.as_str().to_string(),
            ip,
            user_id: g.user_id.clone(),
            details,
            actions,
            created_at: now,
        });
    }
    if folded > 0 {
        state.metrics.incidents_aggregated.inc_by(folded);
        tracing::warn!(
            incidents = folded,
            rows = rows.len(),
            "incident flood: identical incidents recorded as aggregated incidents"
        );
    }
    if let Err(e) = crate::store::incidents::insert_many(&state.db, &rows).await {
        tracing::error!(error = %e, rows = rows.len(), "cannot store incidents");
    }
    for (g, row) in groups.iter().zip(&rows) {
        // one incident's request id only: an aggregate stands for many
        let request_id = g.request_id.as_deref().filter(|_| g.count == 1);
        announce(state, row, request_id, g.audit, g.alert).await;
    }
}

/// The background part of the response: persist the ban, store the
/// incident, audit, alert.
async fn respond(
    state: &AppState,
    key: IpAddr,
    det: Detection,
    ctx: Context,
    ban: Option<BanRecord>,
    now: i64,
) {
    let ip = key_string(key, state.network.group_v6);
    let mut details = det.details.clone();
    let mut actions = Vec::new();
    if let Some(rec) = &ban {
        crate::network::record_ban(state, rec, None, None, ctx.request_id.as_deref()).await;
        let secs = (rec.until_ms - rec.created_at).max(0) / 1000;
        if let Some(o) = details.as_object_mut() {
            o.insert("ban_seconds".into(), secs.into());
            o.insert(
                "ban_until".into(),
                crate::store::rfc3339(rec.until_ms).into(),
            );
            o.insert("offences".into(), rec.offences.into());
        }
        actions.push("ban".to_string());
    }
    if det.audit {
        actions.push("audit".to_string());
    }
    if det.alert {
        actions.push("alert".to_string());
    }
    let row = crate::store::incidents::IncidentRow {
        id: crate::store::new_id(),
        kind: det.kind.as_str().to_string(),
        ip: Some(ip),
        user_id: ctx.user_id.clone(),
        details,
        actions,
        created_at: now,
    };
    if let Err(e) = crate::store::incidents::insert(&state.db, &row).await {
        tracing::error!(error = %e, "cannot store incident");
    }
    announce(state, &row, ctx.request_id.as_deref(), det.audit, det.alert).await;
}

/// Audit a stored incident (`incident`, and `security_violation` when the
/// detection audits) and send its alert when it alerts.
async fn announce(
    state: &AppState,
    row: &crate::store::incidents::IncidentRow,
    request_id: Option<&str>,
    audit: bool,
    alert: bool,
) {
    let event = |t: &'static str| {
        let mut ev = AuditEvent::new(t).user(row.user_id.clone());
        if let Some(ip) = &row.ip {
            ev = ev.ip(ip);
        }
        if let Some(r) = request_id {
            ev = ev.request_id(r);
        }
        ev
    };
    state
        .audit
        .record(
            event("incident")
                .field("incident_id", row.id.clone())
                .field("kind", row.kind.clone())
                .field("actions", json!(row.actions))
                .field("details", row.details.clone()),
        )
        .await;
    if audit {
        state
            .audit
            .record(
                event("security_violation")
                    .field("violation_type", row.kind.clone())
                    .field("details", row.details.clone()),
            )
            .await;
    }
    if alert {
        state.alerts.send(alert_body(row));
    }
}

/// The JSON POSTed to the webhook for an incident.
pub fn alert_body(row: &crate::store::incidents::IncidentRow) -> Value {
    json!({
        "source": "frenly",
        "type": "incident",
        "id": row.id,
        "kind": row.kind,
        "ip": row.ip,
        "user_id": row.user_id,
        "actions": row.actions,
        "details": row.details,
        "created_at": crate::store::rfc3339(row.created_at),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::config::{load, Source};

    fn config(toml: &str) -> Result<Config, crate::config::ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, toml).unwrap();
        load(&Source {
            file: Some(f),
            data_dir: Some(dir.path().into()),
            env: vec![],
        })
    }

    fn engine(toml: &str) -> Engine {
        Engine::new(&config(toml).unwrap())
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn block(f: &str) -> Signal {
        Signal::IdsBlock { family: f.into() }
    }

    #[test]
    fn the_sample_config_parses_with_the_default_actions() {
        let cfg = config(crate::cli::serve::SAMPLE_CONFIG).unwrap();
        let d = crate::config::IncidentsConfig::default();
        assert_eq!(cfg.incidents.ban, d.ban);
        assert_eq!(cfg.incidents.alert, d.alert);
    }

    #[test]
    fn families_map_to_kinds() {
        assert_eq!(Kind::from_family("sqli"), Kind::SqlInjection);
        assert_eq!(Kind::from_family("xss"), Kind::XssAttempt);
        assert_eq!(Kind::from_family("lfi"), Kind::PathTraversal);
        assert_eq!(Kind::from_family("rce"), Kind::CommandInjection);
        assert_eq!(Kind::from_family("session"), Kind::IntrusionAttempt);
        for k in Kind::ALL {
            assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn ids_blocks_ban_at_the_threshold() {
        let e = engine("[ids]\nthreshold = 3\n");
        let d = e.observe(ip(1), &block("sqli"), 0).unwrap();
        assert_eq!((d.kind, d.ban), (Kind::SqlInjection, false));
        // second block within the cooldown: nothing recorded
        assert!(e.observe(ip(1), &block("sqli"), 10).is_none());
        // another address counts on its own
        assert!(!e.observe(ip(2), &block("xss"), 10).unwrap().ban);
        let d = e.observe(ip(1), &block("xss"), 20).unwrap();
        assert_eq!(
            (d.kind, d.ban, d.alert, d.audit),
            (Kind::XssAttempt, true, true, true)
        );
        assert_eq!(d.details["blocked_requests"], 3);
        // the count restarts after a ban
        assert!(e.observe(ip(1), &block("xss"), 30).is_none());
    }

    #[test]
    fn blocks_outside_the_window_do_not_add_up() {
        let e = engine("[ids]\nthreshold = 2\n[incidents]\nwindow_seconds = 10\n");
        e.observe(ip(1), &block("sqli"), 0);
        let d = e.observe(ip(1), &block("sqli"), 10_001);
        assert!(d.is_none_or(|d| !d.ban));
        assert!(e.observe(ip(1), &block("sqli"), 10_002).unwrap().ban);
    }

    #[test]
    fn configured_actions_are_honoured() {
        let e = engine("[incidents]\nban = []\nalert = []\naudit = false\n[ids]\nthreshold = 1\n");
        let d = e.observe(ip(1), &block("rce"), 0).unwrap();
        assert_eq!((d.ban, d.alert, d.audit), (false, false, false));
        let err = config("[incidents]\nban = [\"nope\"]\n").unwrap_err();
        assert!(err.to_string().contains("incidents.ban"), "{err}");
    }

    #[test]
    fn brute_force_after_the_burst() {
        let e = engine(
            "[monitor]\nfailed_login_burst = 3\nfailed_login_window_seconds = 60\n\
             [incidents]\nban = [\"brute_force\"]\n",
        );
        assert!(e.observe(ip(1), &Signal::LoginFailure, 0).is_none());
        assert!(e.observe(ip(1), &Signal::LoginFailure, 1).is_none());
        let d = e.observe(ip(1), &Signal::LoginFailure, 2).unwrap();
        assert_eq!((d.kind, d.ban), (Kind::BruteForce, true));
        // spread over more than the window: no incident
        let e = engine("[monitor]\nfailed_login_burst = 2\nfailed_login_window_seconds = 1\n");
        assert!(e.observe(ip(1), &Signal::LoginFailure, 0).is_none());
        assert!(e.observe(ip(1), &Signal::LoginFailure, 1500).is_none());
        let d = e.observe(ip(1), &Signal::LoginFailure, 1600).unwrap();
        assert!(!d.ban, "brute_force does not ban by default");
    }

    #[test]
    fn rate_limit_incidents_respect_the_cooldown() {
        let e = engine("[incidents]\ncooldown_seconds = 5\n");
        let d = e.observe(ip(1), &Signal::RateLimited, 0).unwrap();
        assert_eq!(
            (d.kind, d.ban, d.alert),
            (Kind::RateLimitExceeded, false, false)
        );
        assert!(e.observe(ip(1), &Signal::RateLimited, 4999).is_none());
        assert!(e.observe(ip(1), &Signal::RateLimited, 5000).is_some());
    }

    #[test]
    fn ddos_is_always_recorded_and_never_bans_again() {
        let e = engine("");
        let s = Signal::Ddos {
            ban_seconds: 10,
            offences: 1,
        };
        let d = e.observe(ip(1), &s, 0).unwrap();
        assert_eq!((d.kind, d.ban, d.alert), (Kind::Ddos, false, true));
        assert!(e.observe(ip(1), &s, 1).is_some());
    }

    /// probe-G #2: a flood of first blocks from new addresses was one
    /// incident row (and one statement on SQLite's one connection) each.
    /// Identical detections taken together are one incident with a count
    /// and a sample of addresses; different ones stay apart.
    #[test]
    fn identical_detections_fold_into_one_group_with_a_count_and_a_sample() {
        let e = engine("");
        let ctx = Context::default();
        let mut dets = Vec::new();
        for n in 1..=30u8 {
            dets.push((ip(n), e.observe(ip(n), &block("sqli"), 0).unwrap()));
        }
        dets.push((ip(31), e.observe(ip(31), &block("xss"), 0).unwrap()));
        let groups = fold(dets.iter().map(|(k, d)| (*k, d, &ctx)));
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].kind, groups[0].count), (Kind::SqlInjection, 30));
        assert_eq!(groups[0].addresses.len(), SAMPLE);
        assert_eq!(groups[0].addresses[0], ip(1));
        assert_eq!((groups[1].kind, groups[1].count), (Kind::XssAttempt, 1));
    }
}
