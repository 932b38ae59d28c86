//! `frenly check`: the guide's pre-deployment checklist, each item a real
//! check of the effective configuration and the data directory.
//!
//! Threat: deploying with a weak or forgotten setting (plain HTTP on a public
//! address, a guessable static key, world-readable secrets, rate limits
//! switched off, an edited audit log). Guarantee: every item in [`ITEMS`]
//! runs and prints one line `PASS|WARN|FAIL <item>: <reason>[; fix: <how>]`;
//! any FAIL makes the command exit 1. The thresholds are the constants
//! below, documented in docs/OPERATIONS.md.
//!
//! Not covered: what the configuration cannot show (the host's own
//! hardening, the firewall actually loaded, the reverse proxy in front).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::config::{Config, IdsMode};

/// Outcome of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    pub reason: String,
    pub fix: Option<String>,
}

fn pass(reason: impl Into<String>) -> Outcome {
    Outcome {
        status: Status::Pass,
        reason: reason.into(),
        fix: None,
    }
}
fn warn(reason: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        status: Status::Warn,
        reason: reason.into(),
        fix: Some(fix.into()),
    }
}
fn fail(reason: impl Into<String>, fix: impl Into<String>) -> Outcome {
    Outcome {
        status: Status::Fail,
        reason: reason.into(),
        fix: Some(fix.into()),
    }
}

/// Smallest JWT secret (bytes).
pub const JWT_SECRET_MIN_BYTES: usize = 32;
/// Smallest static API key (characters).
pub const STATIC_KEY_MIN_CHARS: usize = 32;
/// Smallest estimated entropy of a static API key (bits).
pub const STATIC_KEY_MIN_BITS: f64 = 96.0;
/// Per-address rate limit, requests per minute: above WARN is a warning,
/// above FAIL a failure.
pub const RATE_WARN_PER_MIN: f64 = 1_000.0;
pub const RATE_FAIL_PER_MIN: f64 = 10_000.0;
/// Burst limit, requests per second.
pub const BURST_WARN_PER_S: u32 = 100;
pub const BURST_FAIL_PER_S: u32 = 1_000;
/// Failed logins before lockout.
pub const LOGIN_WARN_FAILURES: u32 = 10;
pub const LOGIN_FAIL_FAILURES: u32 = 100;

/// JWT lifetime (hours) above which a stolen token is a long-lived
/// credential: a week.
pub const JWT_TTL_WARN_HOURS: u64 = 7 * 24;
/// JWT clock leeway (seconds) above which an expired token keeps working
/// noticeably past its `exp` (synchronised clocks differ by far less).
pub const JWT_LEEWAY_WARN_SECONDS: u64 = 30;
/// Request body limit (bytes) above which one request can hold that much
/// memory (buffered for the IDS before credentials are checked): 16 MiB.
pub const BODY_WARN_BYTES: usize = 16 << 20;
/// Audit rotation size (bytes) below which files multiply (one per few
/// events) and removing the oldest cuts the chain's reach: 1 MiB.
pub const AUDIT_ROTATE_WARN_BYTES: u64 = 1 << 20;

/// A checklist item: its name and its check.
pub type Item = (&'static str, fn(&Config) -> Outcome);

/// The checklist, in the order it is printed.
pub const ITEMS: &[Item] = &[
    ("authentication required", authentication),
    ("tls", tls),
    ("jwt secret", jwt_secret),
    ("keyring file", keyring),
    ("tls private key", tls_key),
    ("static api key", static_key),
    ("rate limits", rate_limits),
    ("bans", bans),
    ("login lockout", login_lockout),
    ("token lifetime", token_lifetime),
    ("request body limit", body_limit),
    ("intrusion detection", ids),
    ("audit log", audit_log),
    ("audit coverage", audit_coverage),
    ("database file", database),
    ("data directory", data_dir),
    ("config file", config_file),
    ("trusted proxies", trusted_proxies),
    ("metrics listener", metrics_listener),
    ("alert channel", alert_channel),
];

/// Run every item.
pub fn run(cfg: &Config) -> Vec<(&'static str, Outcome)> {
    ITEMS.iter().map(|(name, f)| (*name, f(cfg))).collect()
}

/// `STATUS item: reason[; fix: how]`.
pub fn line(name: &str, o: &Outcome) -> String {
    match &o.fix {
        Some(fix) => format!("{} {name}: {}; fix: {fix}", o.status.as_str(), o.reason),
        None => format!("{} {name}: {}", o.status.as_str(), o.reason),
    }
}

fn authentication(cfg: &Config) -> Outcome {
    if cfg.security.api_key_required {
        pass("every /api route needs an API key or a JWT")
    } else {
        // it opens nothing (the contract): keys and JWTs are both still
        // accepted, and a JWT-only deployment simply creates no keys
        pass("every /api route needs an API key or a JWT (security.api_key_required = false opens nothing; keys still work: revoke any a JWT-only deployment should not have)")
    }
}

fn tls(cfg: &Config) -> Outcome {
    if cfg.network.tls {
        pass(format!("TLS on {}", cfg.network.listen))
    } else if cfg.listens_on_loopback() {
        warn(
            format!("plain HTTP on loopback {}", cfg.network.listen),
            "set network.tls = true (or keep it behind a TLS-terminating proxy on this host)",
        )
    } else {
        fail(
            format!("plain HTTP on non-loopback {}", cfg.network.listen),
            "set network.tls = true, or listen on 127.0.0.1 behind a TLS proxy",
        )
    }
}

/// Mode check of a secret file: `None` when it is owner-only.
fn loose_mode(path: &Path) -> Option<String> {
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| format!("{} has mode {mode:04o}", path.display()))
}

/// [`loose_mode`] as the warning `serve` logs at start for the secret file
/// `what` (the checklist FAILs the same file).
pub(crate) fn loose_mode_warning(path: &Path, what: &str) -> Option<String> {
    loose_mode(path)
        .map(|why| format!("the {what} is readable by group or others: {why}; chmod 600 it"))
}

fn chmod_fix(path: &Path) -> String {
    format!("chmod 600 {}", path.display())
}

fn secret_file(path: &Path, what: &str) -> Result<Option<Vec<u8>>, Outcome> {
    match crate::config::read_named_file(path, crate::config::MAX_NAMED_FILE) {
        Ok(b) => {
            if let Some(why) = loose_mode(path) {
                return Err(fail(why, chmod_fix(path)));
            }
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(
            format!("cannot read the {what} {}: {e}", path.display()),
            "make it readable by the frenly user only",
        )),
    }
}

fn jwt_secret(cfg: &Config) -> Outcome {
    let p = &cfg.jwt_secret_file;
    match secret_file(p, "JWT secret") {
        Err(o) => o,
        Ok(None) => pass(format!(
            "{} absent: generated (512 bits, mode 0600) on first start",
            p.display()
        )),
        Ok(Some(b)) => {
            let len = b.trim_ascii().len();
            if len < JWT_SECRET_MIN_BYTES {
                fail(
                    format!("{} holds {len} bytes (< {JWT_SECRET_MIN_BYTES})", p.display()),
                    format!(
                        "delete it and restart (a new 512-bit secret is generated; issued tokens become invalid), or write {JWT_SECRET_MIN_BYTES}+ random bytes"
                    ),
                )
            } else if let Some(why) = predictable_symbols(
                &b.trim_ascii()
                    .iter()
                    .map(|&c| u32::from(c))
                    .collect::<Vec<_>>(),
                128.0,
            ) {
                fail(
                    format!("{} is {why}", p.display()),
                    "delete it and restart (a new 512-bit secret is generated; issued tokens become invalid), or write 32+ random bytes",
                )
            } else {
                pass(format!("{} mode 0600, {len} bytes", p.display()))
            }
        }
    }
}

fn keyring(cfg: &Config) -> Outcome {
    let p = &cfg.keyring_file;
    match secret_file(p, "keyring") {
        Err(o) => o,
        Ok(None) => pass(format!(
            "{} absent: generated (mode 0600) on first start",
            p.display()
        )),
        // what `serve` loads: a file it refuses is a FAIL here, not a pass
        // that lets the unit start and fail
        Ok(Some(_)) => match crate::data::keyring::Keyring::load(p) {
            Ok(_) => pass(format!("{} mode 0600", p.display())),
            Err(e) => fail(
                format!("{} cannot be loaded: {e}", p.display()),
                "restore the keyring from its backup (the data encrypted under it is unreadable without it)",
            ),
        },
    }
}

fn tls_key(cfg: &Config) -> Outcome {
    if !cfg.network.tls {
        return pass("TLS off: no private key in use");
    }
    let p = &cfg.tls_key;
    match secret_file(p, "TLS private key") {
        Err(o) => o,
        Ok(None) if !cfg.tls_cert.exists() => pass(format!(
            "{} absent: a self-signed certificate and key (0600) are generated on first start",
            p.display()
        )),
        // one of the pair without the other, or a pair that does not match:
        // `serve` refuses it
        _ => match crate::server::tls::server_config(cfg) {
            Ok(_) => certificate_validity(cfg).unwrap_or_else(|| {
                pass(format!(
                    "{} mode 0600, a usable pair with {}",
                    p.display(),
                    cfg.tls_cert.display()
                ))
            }),
            Err(e) => fail(
                format!("the TLS certificate and key cannot be used: {e:#}"),
                "install a matching certificate and key (network.tls_cert, network.tls_key), or remove both to have a self-signed pair generated",
            ),
        },
    }
}

/// An expired certificate (FAIL: clients refuse it; it passed) or one that
/// expires within 30 days (WARN); `None` when it is valid for longer.
fn certificate_validity(cfg: &Config) -> Option<Outcome> {
    use crate::server::tls::CertificateEnd;
    let end = CertificateEnd::of(&cfg.tls_cert)?;
    let renew = format!(
        "renew the certificate (network.tls_cert), or remove {} and {} to have a self-signed pair generated",
        cfg.tls_cert.display(),
        cfg.tls_key.display()
    );
    let what = end.describe(&cfg.tls_cert);
    Some(match end {
        CertificateEnd::Expired => fail(what, renew),
        CertificateEnd::Soon(_) => warn(what, renew),
    })
}

/// Shannon entropy of the string's characters times its length (bits): an
/// upper-bound estimate that catches repetition and tiny alphabets.
pub fn entropy_bits(s: &str) -> f64 {
    symbol_entropy_bits(&chars(s))
}

fn chars(s: &str) -> Vec<u32> {
    s.chars().map(u32::from).collect()
}

/// [`entropy_bits`] over any symbols: a file secret is rated by its bytes,
/// so random bytes that are not UTF-8 are not all one replacement character.
fn symbol_entropy_bits(syms: &[u32]) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let n = syms.len();
    for c in syms {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let h: f64 = counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum();
    h * n as f64
}

/// Why `s` is a guessable secret: low estimated entropy, or mostly runs
/// of neighbouring characters (`abcdef...`, `123456...`, `zyxw...`), which
/// a character count alone rates as random.
fn predictable(s: &str, min_bits: f64) -> Option<String> {
    predictable_symbols(&chars(s), min_bits)
}

fn predictable_symbols(syms: &[u32], min_bits: f64) -> Option<String> {
    let bits = symbol_entropy_bits(syms);
    if bits < min_bits {
        return Some(format!("low-entropy (~{bits:.0} bits < {min_bits:.0})"));
    }
    let steps = syms
        .iter()
        .zip(syms.iter().skip(1))
        .filter(|(a, b)| a.abs_diff(**b) <= 1)
        .count();
    if syms.len() > 1 && steps * 2 > syms.len() - 1 {
        return Some("mostly a run of neighbouring characters (abcd..., 1234...)".into());
    }
    None
}

const WEAK_WORDS: &[&str] = &[
    "password",
    "changeme",
    "change-me",
    "secret",
    "example",
    "your-api-key",
    "optional-static-bootstrap-key",
    "123456",
    "qwerty",
    "admin",
];

fn static_key(cfg: &Config) -> Outcome {
    let Some(k) = &cfg.security.api_key else {
        return pass("no static security.api_key (keys are per user, hashed)");
    };
    let fix = "remove security.api_key (use `frenly keys create`), or set 32+ random characters: openssl rand -base64 33";
    let len = k.chars().count();
    if len < STATIC_KEY_MIN_CHARS {
        return fail(
            format!("security.api_key is {len} characters (< {STATIC_KEY_MIN_CHARS})"),
            fix,
        );
    }
    let lower = k.to_ascii_lowercase();
    if let Some(w) = WEAK_WORDS.iter().find(|w| lower.contains(*w)) {
        return fail(format!("security.api_key contains `{w}`"), fix);
    }
    if let Some(why) = predictable(k, STATIC_KEY_MIN_BITS) {
        return fail(format!("security.api_key is {why}"), fix);
    }
    let bits = entropy_bits(k);
    pass(format!(
        "security.api_key is {len} characters, ~{bits:.0} bits"
    ))
}

fn rate_limits(cfg: &Config) -> Outcome {
    let r = &cfg.limits.rate;
    let per_min = r.max_requests as f64 * 60.0 / r.window_seconds as f64;
    let burst = cfg.limits.ddos.max_requests_per_second;
    let what = format!(
        "{} requests / {} s per address (~{per_min:.0}/min), burst {burst}/s",
        r.max_requests, r.window_seconds
    );
    let fix = format!(
        "lower limits.rate (<= {RATE_WARN_PER_MIN:.0}/min) and limits.ddos.max_requests_per_second (<= {BURST_WARN_PER_S})"
    );
    if per_min > RATE_FAIL_PER_MIN || burst > BURST_FAIL_PER_S {
        fail(format!("{what}: effectively unlimited"), fix)
    } else if per_min > RATE_WARN_PER_MIN || burst > BURST_WARN_PER_S {
        warn(format!("{what}: high"), fix)
    } else {
        pass(what)
    }
}

/// A range wider than any one operator's: an IPv4 prefix shorter than /8
/// (10.0.0.0/8, the widest private range, passes; `0.0.0.0/1` and
/// `128.0.0.0/1` together are everything) or an IPv6 prefix shorter than
/// /7 (`fc00::/7`, all unique-local addresses, passes); or narrower ranges
/// that together cover more than two such ranges' worth (each family's
/// ranges merged and their addresses summed: every private IPv4 range
/// with the carrier-grade NAT one, 22 million addresses, passes; 256 /16s
/// or /8s listed one by one do not).
fn too_wide(nets: &[ipnet::IpNet]) -> Option<String> {
    if let Some(n) = nets.iter().find(|n| match n {
        ipnet::IpNet::V4(v4) => v4.prefix_len() < 8,
        ipnet::IpNet::V6(v6) => v6.prefix_len() < 7,
    }) {
        return Some(n.to_string());
    }
    // prefixes here are >= 8 / >= 7, so no shift overflows a u128
    let merged = ipnet::IpNet::aggregate(&nets.to_vec());
    let (mut v4, mut v6) = (0u128, 0u128);
    for n in &merged {
        match n {
            ipnet::IpNet::V4(n) => v4 += 1u128 << (32 - n.prefix_len()),
            ipnet::IpNet::V6(n) => v6 = v6.saturating_add(1u128 << (128 - n.prefix_len())),
        }
    }
    let ranges = |v6: bool| {
        merged
            .iter()
            .filter(|n| matches!(n, ipnet::IpNet::V6(_)) == v6)
            .count()
    };
    if v4 > 1 << 25 {
        Some(format!(
            "{} IPv4 ranges that together cover {v4} addresses (more than two /8s)",
            ranges(false)
        ))
    } else if v6 > 1 << 122 {
        Some(format!(
            "{} IPv6 ranges that together cover more than two /7s",
            ranges(true)
        ))
    } else {
        None
    }
}

fn bans(cfg: &Config) -> Outcome {
    if let Some(n) = too_wide(&cfg.limits.allowlist) {
        return fail(
            format!("limits.allowlist contains {n}: most addresses are never limited or banned"),
            "list only your own monitoring/proxy addresses in limits.allowlist",
        );
    }
    if cfg.limits.ddos.ban_seconds == 0 || cfg.ids.ban_seconds == 0 || cfg.ids.threshold == 0 {
        return fail(
            "bans are off (limits.ddos.ban_seconds, ids.ban_seconds or ids.threshold is 0)",
            "set limits.ddos.ban_seconds and ids.ban_seconds (default 300) and ids.threshold (default 5)",
        );
    }
    let unbanned: Vec<&str> = crate::config::IDS_INCIDENT_KINDS
        .into_iter()
        .filter(|k| !cfg.incidents.ban.iter().any(|b| b == k))
        .collect();
    let fix_ban = format!(
        "list the IDS kinds in incidents.ban (default: {})",
        crate::config::IDS_INCIDENT_KINDS.join(", ")
    );
    if unbanned.len() == crate::config::IDS_INCIDENT_KINDS.len() {
        return fail(
            "IDS bans are off: incidents.ban lists no IDS kind, so an attacker is blocked but never banned",
            fix_ban,
        );
    }
    if !unbanned.is_empty() {
        return warn(
            format!(
                "burst ban {} s, but {} never ban (not in incidents.ban)",
                cfg.limits.ddos.ban_seconds,
                unbanned.join(", ")
            ),
            fix_ban,
        );
    }
    pass(format!(
        "burst ban {} s, IDS ban after {} blocked requests for {} s",
        cfg.limits.ddos.ban_seconds, cfg.ids.threshold, cfg.ids.ban_seconds
    ))
}

fn login_lockout(cfg: &Config) -> Outcome {
    let a = &cfg.auth;
    let what = format!(
        "lockout after {} failures for {} s",
        a.login_max_failures, a.lockout_seconds
    );
    let fix = format!(
        "set auth.login_max_failures <= {LOGIN_WARN_FAILURES} and auth.lockout_seconds > 0"
    );
    if a.login_max_failures > LOGIN_FAIL_FAILURES {
        fail(format!("{what}: brute force is not slowed"), fix)
    } else if a.login_max_failures > LOGIN_WARN_FAILURES {
        warn(format!("{what}: high"), fix)
    } else {
        pass(what)
    }
}

fn token_lifetime(cfg: &Config) -> Outcome {
    let a = &cfg.auth;
    let what = format!(
        "JWTs live {} h, clock leeway {} s",
        a.jwt_ttl_hours, a.jwt_leeway_seconds
    );
    let mut weak = Vec::new();
    if a.jwt_ttl_hours > JWT_TTL_WARN_HOURS {
        weak.push(format!(
            "a leaked token works for more than {} days",
            JWT_TTL_WARN_HOURS / 24
        ));
    }
    if a.jwt_leeway_seconds > JWT_LEEWAY_WARN_SECONDS {
        weak.push("an expired token keeps working that long past its exp".to_string());
    }
    if weak.is_empty() {
        pass(what)
    } else {
        warn(
            format!("{what}: {}", weak.join("; ")),
            format!(
                "set auth.jwt_ttl_hours <= {JWT_TTL_WARN_HOURS} and auth.jwt_leeway_seconds <= {JWT_LEEWAY_WARN_SECONDS}"
            ),
        )
    }
}

fn body_limit(cfg: &Config) -> Outcome {
    let b = cfg.limits.body_max_bytes;
    let what = format!("request bodies up to {b} bytes");
    if b > BODY_WARN_BYTES {
        warn(
            format!("{what}: each is buffered (for the IDS, before credentials are checked), so a few clients hold that much memory"),
            format!("set limits.body_max_bytes <= {BODY_WARN_BYTES} (a gateway route may allow more for itself)"),
        )
    } else {
        pass(what)
    }
}

fn audit_coverage(cfg: &Config) -> Outcome {
    let mut off = Vec::new();
    let mut fix = Vec::new();
    if !cfg.audit.log_api_access {
        off.push("API requests are not audited (audit.log_api_access = false)".to_string());
        fix.push("audit.log_api_access = true");
    }
    if !cfg.incidents.audit {
        off.push(
            "incidents write no security_violation event (incidents.audit = false)".to_string(),
        );
        fix.push("incidents.audit = true");
    }
    let r = cfg.audit.rotate_bytes;
    if r != 0 && r < AUDIT_ROTATE_WARN_BYTES {
        off.push(format!(
            "audit.rotate_bytes = {r} makes a new file every few events"
        ));
        fix.push("audit.rotate_bytes >= 1048576 (or 0: never)");
    }
    if off.is_empty() {
        pass("API requests and incidents are audited")
    } else {
        warn(off.join("; "), format!("set {}", fix.join(", ")))
    }
}

/// The API's own routes: the IDS may not be off on all of them.
const API_PATHS: [&str; 6] = [
    "/api/tasks",
    "/api/auth/login",
    "/api/keys",
    "/api/users",
    "/api/agent",
    "/api/security/bans",
];

fn mode_name(m: IdsMode) -> &'static str {
    match m {
        IdsMode::Block => "block",
        IdsMode::Detect => "detect",
        IdsMode::Off => "off",
    }
}

fn ids(cfg: &Config) -> Outcome {
    if cfg.ids.mode == IdsMode::Off {
        return fail("ids.mode = off", "set ids.mode = \"block\"");
    }
    // the overrides, as the detector itself resolves them
    let ids =
        crate::apisec::ids::Ids::new(&cfg.ids, &cfg.security.api_key_header, &cfg.gateway.routes);
    if let Some(path) = API_PATHS
        .iter()
        .find(|p| ids.modes_for(p).iter().all(|m| *m == IdsMode::Off))
    {
        return fail(
            format!("ids.mode = {}, but ids.routes / ids.families turn every rule family off for {path}", mode_name(cfg.ids.mode)),
            "remove the overrides that set mode = \"off\" for the API's routes",
        );
    }
    let mut weaker: Vec<String> = cfg
        .ids
        .families
        .iter()
        .filter(|(_, m)| **m != IdsMode::Block)
        .map(|(f, m)| format!("ids.families.{f} = {}", mode_name(*m)))
        .collect();
    for (prefix, r) in &cfg.ids.routes {
        if let Some(m) = r.mode.filter(|m| *m != IdsMode::Block) {
            weaker.push(format!("ids.routes.\"{prefix}\".mode = {}", mode_name(m)));
        }
        for (f, m) in r.families.iter().filter(|(_, m)| **m != IdsMode::Block) {
            weaker.push(format!(
                "ids.routes.\"{prefix}\".families.{f} = {}",
                mode_name(*m)
            ));
        }
    }
    if cfg.ids.mode == IdsMode::Detect {
        return warn(
            "ids.mode = detect: attacks are logged, not blocked",
            "set ids.mode = \"block\" once the logs show no false positives",
        );
    }
    if !weaker.is_empty() {
        return warn(
            format!("ids.mode = block, but {}", weaker.join(", ")),
            "keep such overrides to the routes that need them (a gateway's raw route), and prefer detect to off",
        );
    }
    pass("ids.mode = block")
}

fn audit_log(cfg: &Config) -> Outcome {
    let p = &cfg.audit_file;
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
            match dir.map(std::fs::metadata) {
                Some(Ok(m)) if m.permissions().readonly() => fail(
                    format!(
                        "{} cannot be created: its directory is read-only",
                        p.display()
                    ),
                    "make the directory writable by the frenly user",
                ),
                _ => pass(format!(
                    "{} absent: created (0600) on first start",
                    p.display()
                )),
            }
        }
        Err(e) => fail(
            format!("cannot stat {}: {e}", p.display()),
            "make it readable and writable by the frenly user",
        ),
        Ok(m) if !m.is_file() => fail(
            format!(
                "{} is not a regular file: audit events would not be kept",
                p.display()
            ),
            "point audit.file at a regular file (mode 0600) in a directory the frenly user owns",
        ),
        Ok(_) => {
            if let Err(e) = std::fs::OpenOptions::new().append(true).open(p) {
                return fail(
                    format!("{} is not writable: {e}", p.display()),
                    "chown it to the frenly user, mode 0600",
                );
            }
            let files = super::audit::chain_files(p);
            let (verified, gap) = gap_blocking(cfg, || verify_chain(&files));
            if let Some(gap) = gap {
                return fail(
                    format!("{}: {}", p.display(), gap.describe()),
                    "investigate (the file was truncated, emptied or replaced; GET /api/audit still serves the events); archive it and let Frenly start a new file",
                );
            }
            match verified.map(|v| v.lines) {
                Ok(n) => {
                    let mode = std::fs::metadata(p)
                        .map(|m| m.permissions().mode() & 0o777)
                        .unwrap_or(0);
                    if mode & 0o022 != 0 {
                        // the chain has no key: whoever may write the file
                        // can rewrite its history with a recomputed chain
                        fail(
                            format!(
                                "{} has mode {mode:04o}: writable by group or others, who can rewrite the log with a valid chain",
                                p.display()
                            ),
                            chmod_fix(p),
                        )
                    } else if let Some(why) = loose_mode(p) {
                        warn(
                            format!("chain valid ({n} lines) but {why}"),
                            chmod_fix(p),
                        )
                    } else {
                        pass(format!(
                            "writable, chain valid ({n} lines in {} files)",
                            files.len()
                        ))
                    }
                }
                Err(why) => match head_removed(&files) {
                    // the writer found the file removed or truncated under
                    // it and said so in its first line: no rotation
                    Some(n) if lost_while_running(&files) => fail(
                        format!(
                            "chain valid from {} on ({n} lines), but its first line records that the file was removed or truncated while the server ran: what came before it is gone from the file",
                            files.first().unwrap_or(p).display()
                        ),
                        "investigate (GET /api/audit still serves the events); archive the file and let Frenly start a new one",
                    ),
                    // old rotated files deleted (retention): what is left
                    // is whole, but the check cannot vouch for what went
                    Some(n) => warn(
                        format!(
                            "chain valid from {} on ({n} lines), but what came before it is gone (rotated files removed?)",
                            files.first().unwrap_or(p).display()
                        ),
                        "archive rotated files off the host before removing them",
                    ),
                    None => fail(
                        format!("chain broken: {why}"),
                        "investigate (the log was edited, truncated or reordered); archive it and let Frenly start a new file",
                    ),
                },
            }
        }
    }
}

/// What `cfg`'s database holds of the audit chains: the newest rows'
/// links, and the database to ask further ([`stored_gap`]).
pub struct Stored {
    pub links: Vec<(String, String)>,
    db: crate::store::Db,
}

/// The chain links of the newest [`super::audit::STORED_WINDOW`] audit
/// rows of `cfg`'s database, newest first; `None` when there is none to
/// read (no SQLite file yet, PostgreSQL out of reach within 2 s).
pub async fn stored_links(cfg: &Config) -> Option<Stored> {
    if let Some(path) = cfg.sqlite_path() {
        if !Path::new(path).is_file() {
            return None;
        }
    }
    let within = std::time::Duration::from_secs(2);
    let db = tokio::time::timeout(
        within,
        crate::store::Db::connect_waiting(&cfg.database_url, 1, 1, within),
    )
    .await
    .ok()?
    .ok()?;
    let links = crate::store::audit::recent_links(&db, super::audit::STORED_WINDOW)
        .await
        .ok()?;
    Some(Stored { links, db })
}

/// What the database holds that the verified files do not account for
/// ([`super::audit::stored_gap`]): stored events past the files' end (a
/// cut tail), or stored events none of which is in the last file (emptied
/// or replaced) — unless the whole table holds the files' last line (an
/// instance idle while others on a shared database wrote).
pub async fn stored_gap(v: &Verified, stored: &Stored) -> Option<super::audit::StoredGap> {
    let gap = super::audit::stored_gap(&v.tail_hashes, &stored.links)?;
    if matches!(gap, super::audit::StoredGap::Unknown { .. })
        && v.lines > 0
        && crate::store::audit::holds_hash(&stored.db, &v.last)
            .await
            .unwrap_or(true)
    {
        return None;
    }
    Some(gap)
}

/// [`stored_links`] then [`stored_gap`] for `frenly check` (synchronous):
/// the database read before the files, as each row's line was in the file
/// before the row was written, so a row read first must be in the file
/// read after it. `verified` runs in between. `None` without a database
/// to read.
fn gap_blocking(
    cfg: &Config,
    verified: impl FnOnce() -> Result<Verified, String>,
) -> (Result<Verified, String>, Option<super::audit::StoredGap>) {
    let rt = tokio::runtime::Handle::try_current()
        .is_err()
        .then(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()
        })
        .flatten();
    let Some(rt) = rt else {
        return (verified(), None);
    };
    let stored = rt.block_on(stored_links(cfg));
    let v = verified();
    let gap = match (&v, &stored) {
        (Ok(v), Some(s)) => rt.block_on(stored_gap(v, s)),
        _ => None,
    };
    (v, gap)
}

/// The first file's first line is the writer's record of a file removed
/// or truncated under the running server (`audit_file_missing` with
/// `while: "running"`), not the first line after a rotation.
fn lost_while_running(files: &[std::path::PathBuf]) -> bool {
    use std::io::{BufRead, Read};
    let Some(f) = files.first().and_then(|f| std::fs::File::open(f).ok()) else {
        return false;
    };
    let mut first = String::new();
    if std::io::BufReader::new(f)
        .take(1 << 20)
        .read_line(&mut first)
        .is_err()
    {
        return false;
    }
    serde_json::from_str::<serde_json::Value>(&first).is_ok_and(|v| {
        v.get("violation_type").and_then(|t| t.as_str()) == Some("audit_file_missing")
            && v.get("while").and_then(|t| t.as_str()) == Some("running")
    })
}

/// The chain holds from the first line present on, though that line does
/// not start it (older files removed): the count of lines, else None.
fn head_removed(files: &[std::path::PathBuf]) -> Option<usize> {
    let first = std::fs::read_to_string(files.first()?).ok()?;
    let line: serde_json::Value = serde_json::from_str(first.lines().next()?).ok()?;
    let prev = line.get("prev_hash")?.as_str()?.to_string();
    verify_chain_from(files, prev).ok().map(|v| v.lines)
}

/// The outcome of verifying a chain of audit files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Complete lines whose chain is intact.
    pub lines: usize,
    /// The hashes of the last file's complete lines, and the hash its first
    /// line continues from (unless the chain starts there): where a tail
    /// cut from the file would have left the database's rows hanging
    /// ([`super::audit::missing_from_file`]).
    pub tail_hashes: std::collections::HashSet<String>,
    /// The last file ends in an incomplete line (no line end): the process
    /// was killed while writing it. Only the very last line may be
    /// incomplete; the next start removes it before appending
    /// (see docs/RELIABILITY.md).
    pub incomplete_tail: bool,
    /// The hash of the last complete line (the all-zero hash when none).
    pub last: String,
}

/// Verify files in order (the chain continues across them); the number of
/// complete lines, or the first place the chain breaks. An incomplete last
/// line of the last file is not a break (see [`Verified`]).
pub fn verify_chain(files: &[std::path::PathBuf]) -> Result<Verified, String> {
    verify_chain_from(files, super::audit::GENESIS.to_string())
}

/// [`verify_chain`] for a chain whose first line's `prev_hash` is `prev`.
fn verify_chain_from(files: &[std::path::PathBuf], mut prev: String) -> Result<Verified, String> {
    let mut total = 0;
    let mut incomplete_tail = false;
    let mut tail_hashes = std::collections::HashSet::new();
    for (i, f) in files.iter().enumerate() {
        let bytes = std::fs::read(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            let bad = e.utf8_error().valid_up_to();
            let line = e
                .as_bytes()
                .iter()
                .take(bad)
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!(
                "{}: line {line}: not UTF-8 (the log was edited or damaged)",
                f.display()
            )
        })?;
        let (complete, tail) = match text.rfind('\n') {
            Some(end) => text.split_at(end + 1),
            None => ("", text.as_str()),
        };
        // split on `\n` only: `str::lines` also strips a `\r` before it,
        // so a log rewritten with CRLF line ends verified as intact
        let lines: Vec<&str> = match complete.strip_suffix('\n') {
            Some(body) => body.split('\n').collect(),
            None => Vec::new(),
        };
        let from = prev.clone();
        prev = super::audit::verify_lines(lines.iter().copied(), prev, 1)
            .map_err(|e| format!("{}: {e}", f.display()))?;
        if i + 1 == files.len() {
            if from != super::audit::GENESIS {
                tail_hashes.insert(from);
            }
            tail_hashes.extend(
                lines
                    .iter()
                    .filter_map(|l| super::audit::hash_of_line(l))
                    .map(str::to_string),
            );
        }
        if !tail.is_empty() {
            if i + 1 != files.len() {
                return Err(format!(
                    "{}: line {}: no line end in a file that is not the last (the file was truncated)",
                    f.display(),
                    lines.len() + 1
                ));
            }
            incomplete_tail = true;
        }
        total += lines.len();
    }
    Ok(Verified {
        lines: total,
        tail_hashes,
        incomplete_tail,
        last: prev,
    })
}

/// [`verify_chain`]'s count of complete lines.
pub fn verify_files(files: &[std::path::PathBuf]) -> Result<usize, String> {
    verify_chain(files).map(|v| v.lines)
}

fn database(cfg: &Config) -> Outcome {
    let Some(path) = cfg.sqlite_path() else {
        return pass("PostgreSQL: no local database file");
    };
    let mut worst = pass(format!("{path} mode 0600"));
    let mut found = false;
    for suffix in ["", "-wal", "-shm"] {
        let p = format!("{path}{suffix}");
        let Ok(m) = std::fs::metadata(&p) else {
            continue;
        };
        found = true;
        let mode = m.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            return fail(
                format!("{p} is world-accessible (mode {mode:04o})"),
                format!("chmod 600 {p}"),
            );
        }
        if mode & 0o070 != 0 {
            worst = warn(
                format!("{p} is group-accessible (mode {mode:04o})"),
                format!("chmod 600 {p}"),
            );
        }
    }
    if !found {
        return pass(format!("{path} absent: created (0600) on first start"));
    }
    worst
}

fn data_dir(cfg: &Config) -> Outcome {
    let d = &cfg.data_dir;
    match std::fs::metadata(d) {
        Err(_) => {
            // it can be created only under a writable directory (a path
            // under /proc passed, and every start then failed)
            let ancestor = d
                .ancestors()
                .skip(1)
                .filter(|a| !a.as_os_str().is_empty())
                .find_map(|a| std::fs::metadata(a).ok().map(|m| (a, m)));
            match ancestor {
                Some((a, m)) if !m.is_dir() || m.permissions().readonly() => fail(
                    format!(
                        "{} absent and cannot be created: {} is {}",
                        d.display(),
                        a.display(),
                        if m.is_dir() {
                            "read-only"
                        } else {
                            "not a directory"
                        }
                    ),
                    "set --data-dir to a path the frenly user can create",
                ),
                _ => pass(format!(
                    "{} absent: created (0700) on first start",
                    d.display()
                )),
            }
        }
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if mode & 0o002 != 0 {
                fail(
                    format!("{} is world-writable (mode {mode:04o})", d.display()),
                    format!("chmod 700 {}", d.display()),
                )
            } else if mode & 0o077 != 0 {
                warn(
                    format!("{} mode {mode:04o}", d.display()),
                    format!("chmod 700 {}", d.display()),
                )
            } else {
                pass(format!("{} mode 0700", d.display()))
            }
        }
    }
}

fn config_file(cfg: &Config) -> Outcome {
    let Some(p) = &cfg.config_file else {
        return pass("no config file (embedded defaults)");
    };
    let Ok(m) = std::fs::metadata(p) else {
        return pass("config file not found");
    };
    let mode = m.permissions().mode() & 0o777;
    if mode & 0o002 != 0 {
        return fail(
            format!("{} is world-writable (mode {mode:04o})", p.display()),
            format!("chmod 640 {} (owner root, group frenly)", p.display()),
        );
    }
    // the values `config show` redacts: the static key, and URLs carrying
    // a password or a token (a database or Redis password passed before)
    let mut secrets: Vec<&str> = Vec::new();
    if cfg.security.api_key.is_some() {
        secrets.push("security.api_key");
    }
    for (key, url, redact) in [
        (
            "database.url",
            Some(cfg.database_url.as_str()),
            crate::config::redact_url as fn(&str) -> String,
        ),
        (
            "state.redis_url",
            cfg.state.redis_url.as_deref(),
            crate::config::redact_url,
        ),
        (
            "alerts.webhook_url",
            cfg.alerts.webhook_url.as_deref(),
            crate::config::redact_webhook,
        ),
    ] {
        if url.is_some_and(|u| redact(u) != u) {
            secrets.push(key);
        }
    }
    if !secrets.is_empty() && mode & 0o004 != 0 {
        return fail(
            format!(
                "{} holds {} and is world-readable (mode {mode:04o})",
                p.display(),
                secrets.join(", ")
            ),
            format!("chmod 600 {}", p.display()),
        );
    }
    pass(format!("{} mode {mode:04o}", p.display()))
}

fn trusted_proxies(cfg: &Config) -> Outcome {
    if let Some(n) = too_wide(&cfg.network.trusted_proxies) {
        return fail(
            format!("network.trusted_proxies contains {n}: most clients can forge X-Forwarded-For"),
            "list only your reverse proxies' addresses",
        );
    }
    if cfg.network.trusted_proxies.is_empty() {
        pass("none: the client address is the TCP peer")
    } else {
        pass(format!(
            "{} proxy range(s), none covering everything",
            cfg.network.trusted_proxies.len()
        ))
    }
}

/// Loopback or private (RFC 1918, ULA, link-local).
pub fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v) => v.is_loopback() || v.is_private() || v.is_link_local(),
        std::net::IpAddr::V6(v) => {
            v.is_loopback()
                || (v.segments()[0] & 0xfe00) == 0xfc00
                || (v.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

fn metrics_listener(cfg: &Config) -> Outcome {
    if let Some(why) = crate::monitoring::firewall::metrics_port_opened(cfg) {
        return fail(why, "give metrics.listen a port of its own");
    }
    match cfg.metrics.listen {
        None => pass("no separate listener (/metrics is admin-only on the main one)"),
        Some(a) if is_private(a.ip()) => pass(format!("{a} (loopback/private)")),
        Some(a) => fail(
            format!("metrics.listen = {a}: unauthenticated metrics on a public address"),
            "bind metrics.listen to 127.0.0.1 or a private interface",
        ),
    }
}

fn alert_channel(cfg: &Config) -> Outcome {
    match &cfg.alerts.webhook_url {
        None => warn(
            "no alerts.webhook_url: incidents and monitor findings are only logged",
            "set alerts.webhook_url to your alert receiver (https)",
        ),
        Some(u) if u.starts_with("http://") => warn(
            "alerts.webhook_url is plain http",
            "use an https:// receiver",
        ),
        Some(_) => pass("alerts.webhook_url set (https)"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_too_wide_alone_or_together() {
        let nets = |list: &[&str]| -> Vec<ipnet::IpNet> {
            list.iter().map(|n| n.parse().unwrap()).collect()
        };
        // what operators list: private ranges, carrier-grade NAT, ULA
        let private = nets(&[
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "fc00::/7",
            "fe80::/10",
        ]);
        assert_eq!(too_wide(&private), None);
        assert!(too_wide(&nets(&["0.0.0.0/7"])).is_some());
        assert!(too_wide(&nets(&["::/6"])).is_some());
        // three /8s: each passes alone
        let three = too_wide(&nets(&["10.0.0.0/8", "11.0.0.0/8", "12.0.0.0/8"]));
        assert!(
            three.as_deref().is_some_and(|d| d.contains("50331648")),
            "{three:?}"
        );
        // one range listed twice, or inside another, counts once
        assert_eq!(
            too_wide(&nets(&[
                "10.0.0.0/8",
                "10.0.0.0/8",
                "10.1.0.0/16",
                "11.0.0.0/8"
            ])),
            None
        );
        assert!(too_wide(&nets(&["fc00::/7", "2000::/7", "4000::/7"])).is_some());
    }

    #[test]
    fn predictable_secrets_are_named() {
        let seq = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        assert!(entropy_bits(seq) > 300.0, "a count alone rates it random");
        assert!(predictable(seq, 96.0).is_some());
        assert!(predictable("ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210", 96.0).is_some());
        assert!(predictable(&"a".repeat(40), 96.0).is_some());
        assert!(predictable("kq3ZJ0v9Xb2Lw8TyN4mR7pQ1sU6hE5dGcA_fB-iK", 96.0).is_none());
    }

    /// A file secret of random bytes is rated by its bytes: through a
    /// lossy UTF-8 decoding, 32 random bytes became mostly one replacement
    /// character and failed the checklist most of the time.
    #[test]
    fn random_bytes_are_not_low_entropy() {
        use rand::RngCore;
        for _ in 0..50 {
            let mut b = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut b);
            let syms: Vec<u32> = b.iter().map(|&c| u32::from(c)).collect();
            assert!(predictable_symbols(&syms, 128.0).is_none(), "{b:?}");
        }
        let zeros: Vec<u32> = vec![0; 64];
        assert!(predictable_symbols(&zeros, 128.0).is_some());
    }

    #[test]
    fn entropy_separates_random_from_repetitive() {
        assert!(entropy_bits("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa") < 1.0);
        assert!(entropy_bits("abababababababababababababababababababab") < 64.0);
        assert!(entropy_bits("kq3ZJ0v9Xb2Lw8TyN4mR7pQ1sU6hE5dGcA_fB-iK") > 150.0);
    }

    /// Regression (probe J): a log whose line ends were rewritten to CRLF
    /// verified as intact (`str::lines` strips the `\r`); the bytes are not
    /// what was written.
    #[test]
    fn crlf_line_ends_break_the_chain() {
        use crate::monitoring::audit::{render_at, AuditEvent, GENESIS};
        let dir = tempfile::tempdir().unwrap();
        let mut prev = GENESIS.to_string();
        let mut lines = Vec::new();
        for i in 0..3 {
            let (line, hash) = render_at(&AuditEvent::new("api_access"), &prev, i);
            lines.push(line);
            prev = hash;
        }
        let p = dir.path().join("a.log");
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        assert_eq!(verify_chain(std::slice::from_ref(&p)).unwrap().lines, 3);
        std::fs::write(&p, lines.join("\r\n") + "\r\n").unwrap();
        let e = verify_chain(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.contains("line 1:"), "{e}");
        // only the last line's end
        std::fs::write(&p, lines.join("\n") + "\r\n").unwrap();
        let e = verify_chain(std::slice::from_ref(&p)).unwrap_err();
        assert!(e.contains("line 3:"), "{e}");
    }

    #[test]
    fn private_addresses() {
        for a in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "::1", "fd00::1"] {
            assert!(is_private(a.parse().unwrap()), "{a}");
        }
        for a in ["0.0.0.0", "8.8.8.8", "2001:db8::1", "::"] {
            assert!(!is_private(a.parse().unwrap()), "{a}");
        }
    }
}
