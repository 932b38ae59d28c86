//! Configuration: parsed once, typed, passed down.
//!
//! Threat: a mistyped or unknown key silently falling back to a weaker default
//! (for example `limits.rate.max_request = 10` doing nothing). Guarantee: the
//! file (JSON or TOML, by extension) and the `FRENLY_*` environment overrides
//! are merged into [`RawConfig`], which rejects unknown keys and wrong types with
//! one line naming the key; [`Config::from_raw`] then resolves paths against the
//! data directory and checks values (CIDRs, URLs, non-zero limits). Nothing else
//! in Frenly reads the environment or the file.
//!
//! Not covered: secrets inside the config file itself are only as safe as the
//! file's permissions (`frenly check` reports those).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Json, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// The prefix of environment overrides: `FRENLY_SECURITY__API_KEY_HEADER=X-Token`
/// sets `security.api_key_header` (double underscore = nesting).
pub const ENV_PREFIX: &str = "FRENLY_";
/// Separator of nested keys in environment overrides.
pub const ENV_NESTING: &str = "__";

/// A configuration problem, always naming the key (or file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be parsed into the typed structure.
    #[error("{0}")]
    Parse(String),
    /// A key parsed but its value is not acceptable.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// A file the configuration names cannot be read.
    #[error("cannot read {what} `{path}` (key `{key}`): {reason}")]
    Unreadable {
        what: &'static str,
        key: &'static str,
        path: String,
        reason: String,
    },
}

impl ConfigError {
    /// A file named by `key` that cannot be read, written or used.
    pub fn unreadable(
        what: &'static str,
        key: &'static str,
        path: &std::path::Path,
        reason: impl std::fmt::Display,
    ) -> ConfigError {
        ConfigError::Unreadable {
            what,
            key,
            path: path.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// The configuration exactly as written: every key of the contract, its
/// default, and nothing else (unknown keys are errors).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub security: SecurityConfig,
    pub network: NetworkConfig,
    pub limits: LimitsConfig,
    pub ids: IdsConfig,
    pub auth: AuthConfig,
    pub encryption: EncryptionConfig,
    pub database: DatabaseConfig,
    pub state: StateConfig,
    pub audit: AuditConfig,
    pub alerts: AlertsConfig,
    pub metrics: MetricsConfig,
    pub monitor: MonitorConfig,
    /// Custom roles: `{"roles": {"NAME": {"permissions": [...]}}}`.
    pub roles: BTreeMap<String, RoleConfig>,
    pub validation: ValidationConfig,
    pub gateway: GatewayConfig,
    /// Incident detection and automated response.
    pub incidents: IncidentsConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// The guide's switch. `false` only allows JWT-only deployments; it opens
    /// nothing but `/healthz`, `/readyz` and `POST /api/auth/login`.
    pub api_key_required: bool,
    /// Optional static bootstrap key (the guide's `api_key`): authenticates as
    /// the first admin user.
    pub api_key: Option<String>,
    /// Header carrying the API key (case-insensitive).
    pub api_key_header: String,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            api_key_required: true,
            api_key: None,
            api_key_header: "X-API-Key".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    pub listen: SocketAddr,
    pub tls: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CIDRs whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// The one forwarding header the trusted proxies set.
    pub forwarded_header: ForwardedHeader,
    /// Seconds a client may take to send its request headers (slowloris bound).
    pub header_read_timeout_seconds: u64,
    /// Seconds a whole request may take, body included, before 408.
    pub request_timeout_seconds: u64,
    /// Seconds a TLS handshake may take.
    pub tls_handshake_timeout_seconds: u64,
    /// Seconds in-flight requests get to finish on shutdown.
    pub shutdown_grace_seconds: u64,
    /// Open connections at most; further ones wait in the kernel backlog.
    pub max_connections: usize,
    /// Open connections from one address at most; more are closed at once
    /// (trusted proxies and allowlisted addresses are not counted).
    pub max_connections_per_address: usize,
}

/// Which forwarding header carries the client address from a trusted
/// proxy. Only one is read: a proxy appends to the header it knows and
/// passes the other through as the client sent it, so reading both would
/// let the client choose its own address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, cloud load balancers).
    #[serde(rename = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=...`.
    #[serde(rename = "forwarded")]
    Forwarded,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: true,
            tls_cert: None,
            tls_key: None,
            trusted_proxies: Vec::new(),
            forwarded_header: ForwardedHeader::XForwardedFor,
            header_read_timeout_seconds: 10,
            request_timeout_seconds: 30,
            tls_handshake_timeout_seconds: 10,
            shutdown_grace_seconds: 10,
            max_connections: 20_000,
            max_connections_per_address: 256,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// CIDRs never rate-limited or banned.
    pub allowlist: Vec<IpNet>,
    pub header_max_bytes: usize,
    /// Header fields at most (431 beyond).
    pub header_max_count: usize,
    pub body_max_bytes: usize,
    /// Bytes held in buffered request bodies, server-wide (503 beyond);
    /// unset: [`LimitsConfig::body_budget`]'s default.
    pub body_budget_bytes: Option<usize>,
    /// Bytes of that budget one client address may hold; unset:
    /// [`LimitsConfig::body_budget_per_address`]'s default.
    pub body_budget_per_address_bytes: Option<usize>,
    pub rate: RateConfig,
    pub ddos: DdosConfig,
    /// Most distinct client addresses tracked at once (memory bound).
    pub max_tracked_clients: usize,
    /// Most bans (active, or ended and remembered for escalation) held at
    /// once; separate from the tracked clients, so tracking never evicts a
    /// ban (only a newer ban does, past this cap, logged).
    pub max_bans: usize,
    /// Group IPv6 clients by their /64 for limits and bans.
    pub ipv6_group_by_64: bool,
    /// Optional per-identity (user) limit on top of the per-address one.
    pub per_identity: Option<RateConfig>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            allowlist: Vec::new(),
            header_max_bytes: 16384,
            header_max_count: 100,
            body_max_bytes: 1_048_576,
            body_budget_bytes: None,
            body_budget_per_address_bytes: None,
            rate: RateConfig::default(),
            ddos: DdosConfig::default(),
            max_tracked_clients: 100_000,
            max_bans: 1_000_000,
            ipv6_group_by_64: true,
            per_identity: None,
        }
    }
}

/// `limits.body_budget_bytes` when unset: 256 MiB, or room for 16 bodies of
/// `limits.body_max_bytes` when that is more.
pub const DEFAULT_BODY_BUDGET_BYTES: usize = 256 << 20;

impl LimitsConfig {
    /// The server-wide budget of buffered request body bytes.
    pub fn body_budget(&self) -> usize {
        self.body_budget_bytes.unwrap_or_else(|| {
            DEFAULT_BODY_BUDGET_BYTES.max(self.body_max_bytes.saturating_mul(16))
        })
    }

    /// The share of [`body_budget`](Self::body_budget) one client address
    /// may hold: an eighth of it (at least one largest body) when unset.
    pub fn body_budget_per_address(&self) -> usize {
        self.body_budget_per_address_bytes
            .unwrap_or_else(|| (self.body_budget() / 8).max(self.body_max_bytes))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateConfig {
    pub max_requests: u32,
    pub window_seconds: u32,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            max_requests: 100,
            window_seconds: 60,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DdosConfig {
    pub max_requests_per_second: u32,
    pub ban_seconds: u64,
    /// Cap of escalating ban times for repeat offenders.
    pub max_ban_seconds: u64,
}

impl Default for DdosConfig {
    fn default() -> Self {
        Self {
            max_requests_per_second: 10,
            ban_seconds: 300,
            max_ban_seconds: 86_400,
        }
    }
}

/// `block`, `detect` (log only) or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IdsMode {
    #[default]
    Block,
    Detect,
    Off,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdsConfig {
    pub mode: IdsMode,
    /// Blocked requests from one address before it is banned.
    pub threshold: u32,
    pub ban_seconds: u64,
    /// Per rule family overrides: `{"xss": "detect"}`.
    pub families: BTreeMap<String, IdsMode>,
    /// Per route overrides, keyed by path prefix.
    pub routes: BTreeMap<String, IdsRouteConfig>,
    /// Bytes of a streamed body the detector inspects (gateway mode).
    pub inspect_window_bytes: usize,
}

impl Default for IdsConfig {
    fn default() -> Self {
        Self {
            mode: IdsMode::Block,
            threshold: 5,
            ban_seconds: 300,
            families: BTreeMap::new(),
            routes: BTreeMap::new(),
            inspect_window_bytes: 1_048_576,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct IdsRouteConfig {
    pub mode: Option<IdsMode>,
    pub families: BTreeMap<String, IdsMode>,
    /// JSON fields of this route excluded from inspection (`a.b`, `items[].c`).
    pub exclude_fields: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub login_max_failures: u32,
    pub lockout_seconds: u64,
    pub jwt_ttl_hours: u64,
    pub jwt_secret_file: Option<PathBuf>,
    /// Accepted JWT algorithms (HS256, HS384, HS512).
    pub jwt_algorithms: Vec<String>,
    /// Clock leeway for `exp`/`nbf`/`iat`, at most 60.
    pub jwt_leeway_seconds: u64,
    pub key_default_expiry_days: f64,
    /// Seconds the old secret of a rotated key keeps working.
    pub key_rotation_grace_seconds: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            login_max_failures: 5,
            lockout_seconds: 900,
            jwt_ttl_hours: 24,
            jwt_secret_file: None,
            jwt_algorithms: vec!["HS256".into()],
            jwt_leeway_seconds: 0,
            key_default_expiry_days: 30.0,
            key_rotation_grace_seconds: 3600,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct EncryptionConfig {
    pub keyring_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: Option<String>,
    pub min_connections: u32,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: None,
            min_connections: 5,
            max_connections: 20,
        }
    }
}

/// What an instance does when Redis is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    /// Keep serving on local (per-instance) state.
    #[default]
    FailOpen,
    /// Refuse with 503 until Redis is back.
    FailClosed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub redis_url: Option<String>,
    pub redis_failure_policy: FailurePolicy,
    /// Prefix of every Redis key and of the pub/sub channel, so that several
    /// deployments (or test runs) can share one Redis.
    pub redis_prefix: String,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            redis_url: None,
            redis_failure_policy: FailurePolicy::default(),
            redis_prefix: "frenly:".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    pub file: Option<PathBuf>,
    /// Rotate the file when it grows past this many bytes (0 = never).
    pub rotate_bytes: u64,
    /// Events that may wait for the writer before requests are slowed down.
    pub queue_capacity: usize,
    /// Also log every API access (`api_access`).
    pub log_api_access: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            file: None,
            rotate_bytes: 100 * 1024 * 1024,
            queue_capacity: 65_536,
            log_api_access: true,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub webhook_url: Option<String>,
    /// PEM bundle of CAs trusted for the webhook (system roots otherwise).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// A separate listener for `/metrics` (no authentication there: bind it to
    /// loopback or a private interface).
    pub listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorConfig {
    pub suspicious_processes: Vec<String>,
    /// Listening TCP ports that are expected; others are reported.
    pub allowed_ports: Vec<u16>,
    pub interval_seconds: u64,
    /// Failed logins from one address within the window that count as a burst.
    pub failed_login_burst: u32,
    pub failed_login_window_seconds: u64,
    /// Extra files whose integrity is watched.
    pub watch_files: Vec<PathBuf>,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        Self {
            suspicious_processes: ["nc", "netcat", "nmap", "sqlmap"]
                .map(String::from)
                .to_vec(),
            allowed_ports: vec![22, 80, 443],
            interval_seconds: 60,
            failed_login_burst: 5,
            failed_login_window_seconds: 300,
            watch_files: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    pub permissions: Vec<String>,
}

/// Extra input rules for task fields, in the guide's terms.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    pub tasks: BTreeMap<String, FieldRuleConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct FieldRuleConfig {
    pub required: Option<bool>,
    pub min_length: Option<usize>,
    pub max_length: Option<usize>,
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    pub routes: Vec<GatewayRoute>,
    /// PEM bundle of CAs trusted for HTTPS upstreams (system roots otherwise).
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS with upstreams.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRoute {
    pub prefix: String,
    pub upstream: String,
    pub permission: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub free_text: Vec<String>,
    #[serde(default = "default_gateway_timeout")]
    pub timeout_seconds: u64,
    #[serde(default)]
    pub forward_credentials: bool,
    /// Per-route limit on top of the per-address `limits.rate`, per client address.
    #[serde(default)]
    pub rate: Option<RateConfig>,
    /// Request body limit of this route (streamed, counted on the way);
    /// `limits.body_max_bytes` when unset.
    #[serde(default)]
    pub body_max_bytes: Option<usize>,
}

fn default_gateway_timeout() -> u64 {
    300
}

/// Incident kinds (`/api/security/incidents`, `incidents.ban`, `incidents.alert`).
pub const INCIDENT_KINDS: [&str; 8] = [
    "brute_force",
    "sql_injection",
    "xss_attempt",
    "path_traversal",
    "command_injection",
    "intrusion_attempt",
    "rate_limit_exceeded",
    "ddos",
];

/// The incident kinds the IDS's blocks raise (the others: `brute_force`,
/// `rate_limit_exceeded`, `ddos`).
pub const IDS_INCIDENT_KINDS: [&str; 5] = [
    "sql_injection",
    "xss_attempt",
    "path_traversal",
    "command_injection",
    "intrusion_attempt",
];

/// Incident detection and the automated response to each kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentsConfig {
    /// Kinds whose detection bans the address (escalating, from
    /// `ids.ban_seconds` up to `limits.ddos.max_ban_seconds`): the IDS kinds
    /// once an address has `ids.threshold` blocked requests, `brute_force`
    /// once it has `monitor.failed_login_burst` failed logins in
    /// `monitor.failed_login_window_seconds`. `ddos` always bans
    /// (`limits.ddos`).
    pub ban: Vec<String>,
    /// Kinds POSTed to `alerts.webhook_url`.
    pub alert: Vec<String>,
    /// Write a `security_violation` audit event for each incident.
    pub audit: bool,
    /// The same kind from the same address is recorded at most once per
    /// this many seconds (a ban is always recorded).
    pub cooldown_seconds: u64,
    /// Blocked requests count towards `ids.threshold` within this window.
    pub window_seconds: u64,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        let kinds = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Self {
            ban: kinds(&[
                "sql_injection",
                "xss_attempt",
                "path_traversal",
                "command_injection",
                "intrusion_attempt",
            ]),
            alert: kinds(&[
                "brute_force",
                "sql_injection",
                "xss_attempt",
                "path_traversal",
                "command_injection",
                "intrusion_attempt",
                "ddos",
            ]),
            audit: true,
            cooldown_seconds: 60,
            window_seconds: 3600,
        }
    }
}

/// The effective configuration: [`RawConfig`] with every path resolved
/// against the data directory and every value checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub raw: RawConfig,
    pub data_dir: PathBuf,
    pub config_file: Option<PathBuf>,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub jwt_secret_file: PathBuf,
    pub keyring_file: PathBuf,
    pub database_url: String,
    pub audit_file: PathBuf,
}

impl std::ops::Deref for Config {
    type Target = RawConfig;
    fn deref(&self) -> &RawConfig {
        &self.raw
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Default)]
pub struct Source {
    pub file: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
    /// Environment overrides as `(name, value)` pairs (normally `std::env::vars()`).
    pub env: Vec<(String, String)>,
}

impl Source {
    /// The process's own file, data dir and environment.
    pub fn from_process(file: Option<PathBuf>, data_dir: Option<PathBuf>) -> Self {
        Self {
            file,
            data_dir,
            env: std::env::vars().collect(),
        }
    }
}

/// The keys whose value is text, whatever it looks like.
const STRING_KEYS: &[&str] = &[
    "security.api_key",
    "security.api_key_header",
    "database.url",
    "state.redis_url",
    "state.redis_prefix",
    "alerts.webhook_url",
];

/// Load and check the configuration.
pub fn load(source: &Source) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(RawConfig::default()));
    if let Some(file) = &source.file {
        // exactly this file: figment's `file` would look for a relative
        // name in every parent directory, and a directory or a FIFO in its
        // place (what `docker run -v` makes of a missing host file) would be
        // skipped as "no file" and the defaults served
        match std::fs::metadata(file) {
            Err(e) => {
                return Err(ConfigError::Parse(format!(
                    "cannot read config file `{}`: {e}",
                    file.display()
                )))
            }
            Ok(m) if !m.is_file() => {
                return Err(ConfigError::Parse(format!(
                    "config file `{}` is not a regular file",
                    file.display()
                )))
            }
            Ok(_) => {}
        }
        let ext = file
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        if ext != "json" && ext != "toml" {
            return Err(ConfigError::Parse(format!(
                "config file `{}` must end in .json or .toml (found `.{ext}`)",
                file.display()
            )));
        }
        let bytes = read_named_file(file, MAX_NAMED_FILE).map_err(|e| {
            ConfigError::Parse(format!("cannot read config file `{}`: {e}", file.display()))
        })?;
        let text = String::from_utf8(bytes).map_err(|_| {
            ConfigError::Parse(format!(
                "config error: `{}` is not UTF-8 text",
                file.display()
            ))
        })?;
        // a UTF-8 byte order mark (what some editors write) is no content
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        // The syntax is checked here, not by figment: its errors quote the
        // offending source line, which may hold `security.api_key` or a
        // URL's password. Ours name the line, the column and the key.
        check_syntax(&ext, text).map_err(|why| {
            ConfigError::Parse(format!("config error: {why} (in {})", file.display()))
        })?;
        fig = if ext == "json" {
            fig.merge(Json::string(text))
        } else {
            fig.merge(Toml::string(text))
        };
    }
    // a case variant of the prefix (`frenly_network__tls=false`) was
    // ignored without a word: a typo must not leave a weaker default
    if let Some((k, _)) = source.env.iter().find(|(k, _)| {
        !k.starts_with(ENV_PREFIX)
            && k.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
    }) {
        return Err(ConfigError::Parse(format!(
            "config error: environment variable `{}`: overrides are read only with the upper-case prefix {ENV_PREFIX}",
            k.chars().take(100).collect::<String>()
        )));
    }
    let env: Vec<(String, String)> = source
        .env
        .iter()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .cloned()
        .collect();
    // The pairs are given (not read from the process) so that loading stays a
    // pure function; values are parsed the way figment's `Env` provider does.
    for (k, v) in env {
        let key = k[ENV_PREFIX.len()..]
            .to_ascii_lowercase()
            .replace(ENV_NESTING, ".");
        let value = match v.parse::<figment::value::Value>() {
            // a key that only holds text keeps a value that looks like a
            // number or a boolean as the text it is (an all-digit
            // `FRENLY_SECURITY__API_KEY` was refused, repeating the key)
            Ok(figment::value::Value::String(_, s)) => figment::value::Value::from(s),
            _ if STRING_KEYS.contains(&key.as_str()) => figment::value::Value::from(v.clone()),
            Ok(parsed) => parsed,
            Err(_) => figment::value::Value::from(v.clone()),
        };
        fig = fig.merge((key, value));
    }
    let raw: RawConfig = fig
        .extract()
        .map_err(|e| ConfigError::Parse(describe(e, source.file.as_deref())))?;
    Config::from_raw(raw, source)
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/104`) as the IPv4 network
/// it maps (`10.0.0.0/8`): clients on a dual-stack listener are seen as
/// their IPv4 address, which the mapped form would never match.
pub fn canonical_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => v6
            .network()
            .to_ipv4_mapped()
            .and_then(|a| ipnet::Ipv4Net::new(a, v6.prefix_len() - 96).ok())
            .map_or(n, IpNet::V4),
        other => other,
    }
}

/// Check the syntax of a config file's text; the error names the line, the
/// column and, when it is a known key, the key, never the text itself.
fn check_syntax(ext: &str, text: &str) -> Result<(), String> {
    if ext == "json" {
        return match serde_json::from_str::<crate::http::UniqueValue>(text) {
            Ok(_) => Ok(()),
            Err(e) => {
                // serde_json's message ends with its own position
                let msg = e.to_string();
                let msg = msg.split(" at line ").next().unwrap_or("").to_string();
                Err(format!(
                    "JSON syntax error at line {}, column {}: {msg}",
                    e.line(),
                    e.column()
                ))
            }
        };
    }
    let Err(e) = toml::from_str::<toml::Table>(text) else {
        return Ok(());
    };
    let start = e.span().map_or(0, |s| s.start).min(text.len());
    let before = text.get(..start).unwrap_or("");
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit_once('\n')
        .map_or(before, |(_, l)| l)
        .chars()
        .count()
        + 1;
    let message = e.message().lines().collect::<Vec<_>>().join("; ");
    let key = toml_key_at(text, line)
        .map(|k| format!(" (key `{k}`)"))
        .unwrap_or_default();
    Err(format!(
        "TOML syntax error at line {line}, column {column}{key}: {message}"
    ))
}

/// The key a TOML line assigns (`table.key = ...` under its `[table]`
/// header), if it is one of the configuration's keys: anything else on the
/// line (a value, or a secret where a key was expected) is not repeated.
fn toml_key_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let here = lines.get(line.checked_sub(1)?)?;
    let (name, _) = here.split_once('=')?;
    let name = name.trim();
    let table = lines
        .get(..line - 1)?
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    let full = match table {
        Some(t) if !t.is_empty() => format!("{t}.{name}"),
        _ => name.to_string(),
    };
    let defaults = serde_json::to_value(RawConfig::default()).ok()?;
    let mut at = &defaults;
    for part in full.split('.') {
        at = at.get(part.trim())?;
    }
    Some(full.split('.').map(str::trim).collect::<Vec<_>>().join("."))
}

/// What a value the configuration refused was, without the value: a type
/// error's "found unsigned int `918273645546372819`" repeated a numeric
/// `FRENLY_SECURITY__API_KEY`.
fn actual_kind(a: &figment::error::Actual) -> &'static str {
    use figment::error::Actual;
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Option => "an option",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another type",
    }
}

fn describe(e: figment::Error, file: Option<&Path>) -> String {
    let key = e.path.join(".");
    // the file is given to figment as its text (checked first): its
    // metadata names the format's "source string", not the file
    let from_file = e.metadata.as_ref().and_then(|m| match (&m.source, file) {
        (Some(s), _) => Some(format!(" (in {s})")),
        (None, Some(f)) if m.name.ends_with("source string") => {
            Some(format!(" (in {})", f.display()))
        }
        _ => None,
    });
    let src = from_file.unwrap_or_else(|| {
        if key.is_empty() {
            String::new()
        } else {
            format!(
                " (from the file or the environment variable {ENV_PREFIX}{})",
                key.to_ascii_uppercase().replace('.', ENV_NESTING)
            )
        }
    });
    match &e.kind {
        figment::error::Kind::UnknownField(field, _) => {
            let full = if key.is_empty() || key == *field || key.ends_with(&format!(".{field}")) {
                if key.is_empty() {
                    field.clone()
                } else {
                    key.clone()
                }
            } else {
                format!("{key}.{field}")
            };
            format!("config error: unknown key `{full}`{src}")
        }
        // the kinds that carry the value are described without it
        figment::error::Kind::InvalidType(actual, expected) => format!(
            "config error: key `{key}`: found {}, expected {expected}{src}",
            actual_kind(actual)
        ),
        figment::error::Kind::InvalidValue(actual, expected) => format!(
            "config error: key `{key}`: invalid value ({}), expected {expected}{src}",
            actual_kind(actual)
        ),
        figment::error::Kind::UnknownVariant(_, expected) => format!(
            "config error: key `{key}`: unknown value, expected one of {}{src}",
            expected.join(", ")
        ),
        kind if key.is_empty() => format!("config error: {kind}{src}"),
        kind => format!("config error: key `{key}`: {kind}{src}"),
    }
}

impl Config {
    /// The file of a `sqlite://PATH[?options]` database URL (`None` for
    /// PostgreSQL).
    pub fn sqlite_path(&self) -> Option<&str> {
        let rest = self.database_url.strip_prefix("sqlite://")?;
        Some(rest.split('?').next().unwrap_or(rest))
    }

    /// Resolve paths and check values.
    pub fn from_raw(mut raw: RawConfig, source: &Source) -> Result<Config, ConfigError> {
        // peers are canonical (`network::client_addr`): so are the networks
        for n in raw
            .network
            .trusted_proxies
            .iter_mut()
            .chain(raw.limits.allowlist.iter_mut())
        {
            *n = canonical_net(*n);
        }
        let data_dir = source
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("frenly-data"));
        // a relative path in the config is in the data dir, as the defaults
        // are: read from the working directory, a command run elsewhere
        // made a new JWT secret and keyring there
        let at = |p: &Option<PathBuf>, name: &str| match p {
            Some(p) if p.is_relative() => data_dir.join(p),
            Some(p) => p.clone(),
            None => data_dir.join(name),
        };
        let invalid = |key: &str, reason: &str| ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        };
        if raw.limits.rate.max_requests == 0 || raw.limits.rate.window_seconds == 0 {
            return Err(invalid(
                "limits.rate",
                "max_requests and window_seconds must be > 0",
            ));
        }
        if raw.limits.ddos.max_requests_per_second == 0 {
            return Err(invalid(
                "limits.ddos.max_requests_per_second",
                "must be > 0",
            ));
        }
        for (key, kinds) in [
            ("incidents.ban", &raw.incidents.ban),
            ("incidents.alert", &raw.incidents.alert),
        ] {
            if let Some(k) = kinds.iter().find(|k| !INCIDENT_KINDS.contains(&k.as_str())) {
                return Err(invalid(key, &format!("unknown incident kind `{k}`")));
            }
        }
        if raw.ids.threshold == 0 {
            return Err(invalid("ids.threshold", "must be > 0"));
        }
        if raw.limits.max_tracked_clients == 0 {
            return Err(invalid("limits.max_tracked_clients", "must be > 0"));
        }
        if raw.limits.max_bans == 0 || raw.limits.max_bans > 100_000_000 {
            return Err(invalid("limits.max_bans", "must be 1 to 100,000,000"));
        }
        if let Some(r) = &raw.limits.per_identity {
            if r.max_requests == 0 || r.window_seconds == 0 {
                return Err(invalid(
                    "limits.per_identity",
                    "max_requests and window_seconds must be > 0",
                ));
            }
        }
        if raw.limits.header_max_bytes < 1024 {
            return Err(invalid("limits.header_max_bytes", "must be at least 1024"));
        }
        if raw.limits.body_max_bytes == 0 {
            return Err(invalid("limits.body_max_bytes", "must be > 0"));
        }
        if let Some(p) = raw.limits.body_budget_per_address_bytes {
            if p < raw.limits.body_max_bytes || p > raw.limits.body_budget() {
                return Err(invalid(
                    "limits.body_budget_per_address_bytes",
                    "must be at least limits.body_max_bytes and at most limits.body_budget_bytes",
                ));
            }
        }
        if let Some(b) = raw.limits.body_budget_bytes {
            // one largest body, or one gateway inspection window, must fit
            let window = if raw.gateway.routes.is_empty() {
                0
            } else {
                raw.ids.inspect_window_bytes
            };
            let one = raw.limits.body_max_bytes.max(window);
            if b < one {
                return Err(invalid(
                    "limits.body_budget_bytes",
                    "must be at least limits.body_max_bytes (and ids.inspect_window_bytes with gateway routes)",
                ));
            }
        }
        if raw.auth.jwt_leeway_seconds > 60 {
            return Err(invalid("auth.jwt_leeway_seconds", "must be at most 60"));
        }
        if raw.auth.jwt_ttl_hours == 0 {
            return Err(invalid("auth.jwt_ttl_hours", "must be > 0"));
        }
        // upper bounds: beyond them a value only overflows (a panic at
        // start, tokens born expired) or turns a limit off by wrapping
        // (a header limit of 2^32 was 0 for HTTP/2)
        for (key, value, max) in [
            ("auth.jwt_ttl_hours", raw.auth.jwt_ttl_hours, 8_760),
            (
                "auth.key_rotation_grace_seconds",
                raw.auth.key_rotation_grace_seconds,
                30 * 86_400,
            ),
            (
                "limits.header_max_bytes",
                raw.limits.header_max_bytes as u64,
                1 << 20,
            ),
            (
                "network.max_connections",
                raw.network.max_connections as u64,
                1_000_000,
            ),
            (
                "network.max_connections_per_address",
                raw.network.max_connections_per_address as u64,
                1_000_000,
            ),
            (
                "audit.queue_capacity",
                raw.audit.queue_capacity as u64,
                10_000_000,
            ),
        ] {
            if value > max {
                return Err(invalid(key, &format!("must be at most {max}")));
            }
        }
        for (key, value) in [
            ("network.max_connections", raw.network.max_connections),
            (
                "network.max_connections_per_address",
                raw.network.max_connections_per_address,
            ),
            ("audit.queue_capacity", raw.audit.queue_capacity),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be > 0"));
            }
        }
        // 0 is no "no limit": these were taken as 1 s without a word (an
        // operator meaning "unlimited" got a one-second limit)
        for (key, value) in [
            (
                "network.header_read_timeout_seconds",
                raw.network.header_read_timeout_seconds,
            ),
            (
                "network.request_timeout_seconds",
                raw.network.request_timeout_seconds,
            ),
            (
                "network.tls_handshake_timeout_seconds",
                raw.network.tls_handshake_timeout_seconds,
            ),
        ] {
            if value == 0 {
                return Err(invalid(
                    key,
                    "must be at least 1 (seconds; there is no \"no limit\")",
                ));
            }
        }
        // the API-key header cannot be one HTTP or Frenly gives a meaning:
        // as `Authorization` it refused every JWT, as `Host` every request
        const RESERVED: &[&str] = &[
            "authorization",
            "host",
            "cookie",
            "content-type",
            "content-length",
            "content-encoding",
            "transfer-encoding",
            "connection",
            "upgrade",
            "te",
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "x-real-ip",
            "x-request-id",
            "x-frenly-user",
            "origin",
            "user-agent",
            // hop-by-hop: dropped by proxies, and by HTTP/2 (a key in
            // `Keep-Alive` worked over HTTP/1.1 and was 401 over HTTP/2)
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "trailer",
            "http2-settings",
            // request headers with a meaning of their own; `Referer` is in
            // every combined-format access log
            "referer",
            "expect",
            "range",
            "if-range",
            "if-match",
            "if-none-match",
            "if-modified-since",
            "if-unmodified-since",
            "accept",
            "accept-encoding",
            "accept-language",
            "cache-control",
            "pragma",
            "max-forwards",
            "via",
            "early-data",
            // response headers
            "set-cookie",
            "www-authenticate",
            "retry-after",
            "ratelimit-limit",
            "ratelimit-remaining",
            "ratelimit-reset",
            "strict-transport-security",
            "content-security-policy",
            "x-content-type-options",
            "referrer-policy",
            "location",
            "vary",
        ];
        let header = raw.security.api_key_header.to_ascii_lowercase();
        // `_`: nginx drops such names by default, CGI and WSGI read `_`
        // and `-` as the same character
        if RESERVED.contains(&header.as_str())
            || header.starts_with("sec-")
            || header.starts_with("content-")
            || header.contains('_')
        {
            return Err(invalid(
                "security.api_key_header",
                "names a header HTTP or Frenly already gives a meaning",
            ));
        }
        // the bounds an explicit `expires_in_days` has (API.md): a default
        // of 36500 made century keys, -5 keys born expired
        let days = raw.auth.key_default_expiry_days;
        if !(days > 0.0 && days <= crate::authn::identity::MAX_KEY_DAYS) {
            return Err(invalid(
                "auth.key_default_expiry_days",
                "must be greater than 0 and at most 365",
            ));
        }
        // 0 was taken as 1 s: a lockout that locks nothing
        if raw.auth.lockout_seconds == 0 {
            return Err(invalid("auth.lockout_seconds", "must be > 0"));
        }
        if raw.auth.login_max_failures == 0 {
            return Err(invalid("auth.login_max_failures", "must be > 0"));
        }
        for alg in &raw.auth.jwt_algorithms {
            if !matches!(alg.as_str(), "HS256" | "HS384" | "HS512") {
                return Err(invalid(
                    "auth.jwt_algorithms",
                    &format!("`{alg}` is not one of HS256, HS384, HS512"),
                ));
            }
        }
        if raw.auth.jwt_algorithms.is_empty() {
            return Err(invalid(
                "auth.jwt_algorithms",
                "must name at least one algorithm",
            ));
        }
        if raw.security.api_key_header.is_empty()
            || http::HeaderName::from_bytes(raw.security.api_key_header.as_bytes()).is_err()
        {
            return Err(invalid(
                "security.api_key_header",
                "not a valid header name",
            ));
        }
        if let Some(k) = &raw.security.api_key {
            if k.is_empty() {
                return Err(invalid("security.api_key", "must not be empty when set"));
            }
        }
        if let Some(url) = &raw.alerts.webhook_url {
            validate_url(url).map_err(|r| invalid("alerts.webhook_url", &r))?;
        }
        if let Some(url) = &raw.state.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(invalid(
                    "state.redis_url",
                    "must start with redis:// or rediss://",
                ));
            }
            url_syntax(url).map_err(|r| invalid("state.redis_url", &r))?;
            // what the client makes of it (rediss:// is read only by a
            // client built with TLS: left to the connection's own error)
            let plain = url.starts_with("redis://");
            if plain {
                redis::IntoConnectionInfo::into_connection_info(url.as_str()).map_err(|_| {
                    invalid(
                        "state.redis_url",
                        "not a usable Redis URL (redis://[[user]:password@]host[:port][/db])",
                    )
                })?;
            }
        }
        if raw.state.redis_prefix.len() > 64 || raw.state.redis_prefix.chars().any(char::is_control)
        {
            return Err(invalid(
                "state.redis_prefix",
                "at most 64 characters, no control characters",
            ));
        }
        validate_gateway(&raw.gateway)?;
        for (key, path) in [
            ("alerts.ca_file", &raw.alerts.ca_file),
            ("gateway.ca_file", &raw.gateway.ca_file),
            ("gateway.client_cert", &raw.gateway.client_cert),
            ("gateway.client_key", &raw.gateway.client_key),
        ] {
            if let Some(p) = path {
                check_readable(p, key, "file")?;
            }
        }
        for (name, role) in &raw.roles {
            if crate::authz::BUILTIN_ROLES.contains(&name.as_str()) {
                // Silently keeping the built-in would leave the operator
                // believing the role grants what they wrote.
                return Err(invalid(
                    &format!("roles.{name}"),
                    "redefines a built-in role (admin, user, readonly, agent); choose another name",
                ));
            }
            for p in &role.permissions {
                if !crate::authz::Permission::ALL
                    .iter()
                    .any(|x| x.as_str() == p)
                {
                    return Err(invalid(
                        &format!("roles.{name}.permissions"),
                        &format!("unknown permission `{p}`"),
                    ));
                }
            }
        }
        for (field, rule) in &raw.validation.tasks {
            if let Some(p) = &rule.pattern {
                regex::Regex::new(p).map_err(|e| {
                    invalid(&format!("validation.tasks.{field}.pattern"), &e.to_string())
                })?;
            }
        }
        let database_url = match &raw.database.url {
            Some(u) => {
                if !(u.starts_with("sqlite:")
                    || u.starts_with("postgres://")
                    || u.starts_with("postgresql://"))
                {
                    return Err(invalid(
                        "database.url",
                        "must be sqlite://PATH or postgres://...",
                    ));
                }
                if !u.starts_with("sqlite:") {
                    // the syntax first: a raw `?` in the password made the
                    // parameter check below name the password's tail
                    url_syntax(u).map_err(|r| invalid("database.url", &r))?;
                    postgres_params(u).map_err(|r| invalid("database.url", &r))?;
                    // what the driver makes of it, checked now (an
                    // invalid port was found at start, exit 1, unnamed)
                    <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(u).map_err(
                        |_| {
                            invalid(
                                "database.url",
                                "not a usable PostgreSQL URL (postgres://[user[:password]@]host[:port]/dbname[?params])",
                            )
                        },
                    )?;
                }
                u.clone()
            }
            None => format!("sqlite://{}", data_dir.join("frenly.db").display()),
        };
        let cfg = Config {
            tls_cert: at(&raw.network.tls_cert, "tls/cert.pem"),
            tls_key: at(&raw.network.tls_key, "tls/key.pem"),
            jwt_secret_file: at(&raw.auth.jwt_secret_file, "jwt.secret"),
            keyring_file: at(&raw.encryption.keyring_file, "keyring.json"),
            audit_file: at(&raw.audit.file, "security_audit.log"),
            database_url,
            data_dir,
            config_file: source.file.clone(),
            raw,
        };
        // A TLS file that is configured must be readable now, not at first use.
        if cfg.network.tls {
            // One of the pair alone would take the other from the data
            // directory: a generated key that cannot match the operator's
            // certificate, found only after files were written.
            match (&cfg.raw.network.tls_cert, &cfg.raw.network.tls_key) {
                (Some(_), None) => {
                    return Err(invalid(
                        "network.tls_key",
                        "must be set together with network.tls_cert",
                    ))
                }
                (None, Some(_)) => {
                    return Err(invalid(
                        "network.tls_cert",
                        "must be set together with network.tls_key",
                    ))
                }
                _ => {}
            }
            for (key, path, what) in [
                ("network.tls_cert", &cfg.raw.network.tls_cert, "certificate"),
                ("network.tls_key", &cfg.raw.network.tls_key, "private key"),
            ] {
                if let Some(p) = path {
                    check_readable(p, key, what)?;
                }
            }
        }
        Ok(cfg)
    }

    /// The effective configuration as TOML-like JSON, secrets redacted.
    pub fn redacted(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.raw).unwrap_or(serde_json::Value::Null);
        if let Some(sec) = v.get_mut("security").and_then(|s| s.as_object_mut()) {
            if sec.get("api_key").is_some_and(|k| !k.is_null()) {
                sec.insert("api_key".into(), "<redacted>".into());
            }
        }
        for (section, key) in [
            ("database", "url"),
            ("state", "redis_url"),
            ("alerts", "webhook_url"),
        ] {
            if let Some(u) = v.get_mut(section).and_then(|s| s.get_mut(key)) {
                let redact = if key == "webhook_url" {
                    redact_webhook
                } else {
                    redact_url
                };
                if let Some(url) = u.as_str().map(redact) {
                    *u = url.into();
                }
            }
        }
        let resolved = serde_json::json!({
            "data_dir": self.data_dir,
            "network.tls_cert": self.tls_cert,
            "network.tls_key": self.tls_key,
            "auth.jwt_secret_file": self.jwt_secret_file,
            "encryption.keyring_file": self.keyring_file,
            "database.url": redact_url(&self.database_url),
            "audit.file": self.audit_file,
        });
        if let Some(o) = v.as_object_mut() {
            o.insert("resolved".into(), resolved);
        }
        v
    }

    /// Is the listener bound to a loopback address?
    pub fn listens_on_loopback(&self) -> bool {
        self.network.listen.ip().is_loopback()
    }
}

/// The most a file the configuration names (a secret, a certificate, a
/// keyring) may hold.
pub const MAX_NAMED_FILE: u64 = 16 << 20;

/// Read a file the configuration names: a regular file of at most `max`
/// bytes. A FIFO in its place blocked every command (even `config show`)
/// at the open, and a device such as `/dev/zero` read until memory ran out.
pub fn read_named_file(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let (file, meta) = open_named_file(path)?;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than {max} bytes"),
        )
    };
    if meta.len() > max {
        return Err(too_large());
    }
    let mut out = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(too_large());
    }
    Ok(out)
}

/// Open a file the configuration names, if it is a regular file (a FIFO
/// would block the open).
fn open_named_file(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((std::fs::File::open(path)?, meta))
}

fn check_readable(p: &Path, key: &'static str, what: &'static str) -> Result<(), ConfigError> {
    open_named_file(p)
        .map(|_| ())
        .map_err(|e| ConfigError::Unreadable {
            what,
            key,
            path: p.display().to_string(),
            reason: e.to_string(),
        })
}

/// Frenly's own paths, which no gateway prefix may cover or fall under.
const OWN_PATHS: [&str; 5] = ["/api", "/healthz", "/readyz", "/metrics", "/openapi.json"];

fn validate_gateway(g: &GatewayConfig) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: &str| ConfigError::Invalid {
        key,
        reason: reason.into(),
    };
    if g.client_cert.is_some() != g.client_key.is_some() {
        return Err(invalid(
            "gateway.client_cert".into(),
            "gateway.client_cert and gateway.client_key must be set together",
        ));
    }
    let overlap = |a: &str, b: &str| {
        let (a, b) = (a.trim_end_matches('/'), b.trim_end_matches('/'));
        let under = |x: &str, y: &str| x == y || x.starts_with(&format!("{y}/"));
        under(a, b) || under(b, a)
    };
    for (i, r) in g.routes.iter().enumerate() {
        let key = |k: &str| format!("gateway.routes[{i}].{k}");
        validate_url(&r.upstream).map_err(|why| invalid(key("upstream"), &why))?;
        let up: http::Uri = r
            .upstream
            .parse()
            .map_err(|_| invalid(key("upstream"), "not a valid URL"))?;
        if up.query().is_some() || r.upstream.contains('@') || r.upstream.contains('#') {
            return Err(invalid(
                key("upstream"),
                "must be scheme://host[:port][/path], without credentials, query or fragment",
            ));
        }
        let p = &r.prefix;
        if !p.starts_with('/') || p.trim_end_matches('/').is_empty() {
            return Err(invalid(
                key("prefix"),
                "must start with / and name a path (not /)",
            ));
        }
        if p.contains("//")
            || !p
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~'))
            || p.split('/').any(|s| s == "." || s == "..")
        {
            return Err(invalid(
                key("prefix"),
                "may only hold letters, digits, `/`, `-`, `_`, `.` and `~` (no empty, `.` or `..` segment)",
            ));
        }
        if let Some(own) = OWN_PATHS.iter().find(|own| overlap(p, own)) {
            return Err(invalid(
                key("prefix"),
                &format!("overlaps Frenly's own `{own}`"),
            ));
        }
        if let Some(j) = g.routes.iter().take(i).position(|o| overlap(p, &o.prefix)) {
            return Err(invalid(
                key("prefix"),
                &format!("overlaps gateway.routes[{j}].prefix"),
            ));
        }
        if crate::authz::Permission::parse(&r.permission).is_none() {
            return Err(invalid(
                key("permission"),
                &format!("unknown permission `{}`", r.permission),
            ));
        }
        if r.timeout_seconds == 0 {
            return Err(invalid(key("timeout_seconds"), "must be > 0"));
        }
        if let Some(rate) = &r.rate {
            if rate.max_requests == 0 || rate.window_seconds == 0 {
                return Err(invalid(
                    key("rate"),
                    "max_requests and window_seconds must be > 0",
                ));
            }
        }
        if r.body_max_bytes == Some(0) {
            return Err(invalid(key("body_max_bytes"), "must be > 0"));
        }
    }
    Ok(())
}

/// Connection parameters of a `postgres://` URL that sqlx acts on.
const POSTGRES_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Every query parameter of a PostgreSQL URL must be one sqlx acts on: it
/// ignores any other with only a log line that carries the value, so a typo
/// (`ssl_mode=require`) silently connects without TLS, and a libpq-only
/// secret (`sslpassword=...`) lands in the log. The reason names the
/// parameter, never its value.
fn postgres_params(url: &str) -> Result<(), String> {
    let Some(query) = url::Url::parse(url)
        .ok()
        .and_then(|u| u.query().map(String::from))
    else {
        return Ok(());
    };
    let query = query.as_str();
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| "its query is not well-formed".to_string())?;
    for (name, _) in pairs {
        let known = POSTGRES_PARAMS.contains(&name.as_str())
            || (name.starts_with("options[") && name.ends_with(']'));
        if !known {
            return Err(format!(
                "unknown connection parameter `{}` (it would be ignored); known: {}",
                name.escape_debug(),
                POSTGRES_PARAMS.join(", ")
            ));
        }
    }
    Ok(())
}

/// The URL syntax (RFC 3986 as the WHATWG parser reads it) of a database
/// or Redis URL: the reason is the parser's own fixed description, never a
/// part of the URL (which may hold a password).
fn url_syntax(u: &str) -> Result<(), String> {
    url::Url::parse(u)
        .map(|_| ())
        .map_err(|e| format!("not a valid URL: {e}"))
}

/// The guide's `validate_url`: only `http` and `https` URLs with a host.
pub fn validate_url(url: &str) -> Result<(), String> {
    let parsed: http::Uri = url.parse().map_err(|_| "not a valid URL".to_string())?;
    match parsed.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err("only http:// and https:// URLs are allowed".into()),
    }
    match parsed.host() {
        Some(h) if !h.is_empty() => Ok(()),
        _ => Err("URL has no host".into()),
    }
}

/// [`redact_url`] for a webhook, whose path is often its secret
/// (`https://hooks.example.com/services/T000/B000/XXXX`): the path goes too.
pub fn redact_webhook(url: &str) -> String {
    redact(url, true)
}

/// Hide the secrets of a URL: everything between `://` and the last `@`
/// but a plain user name (`scheme://user:<redacted>@host`), whatever it
/// holds (a raw `?`, `/` or `#` in a password is not taken for the end of
/// the authority), every query part (`?token=<redacted>`, and a part
/// without `=`, `?<redacted>`) and a fragment.
pub fn redact_url(url: &str) -> String {
    redact(url, false)
}

fn redact(url: &str, path_too: bool) -> String {
    const R: &str = "<redacted>";
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, rest) = match rest.rsplit_once('@') {
                Some((auth, after)) => {
                    let user = auth.split(':').next().unwrap_or("");
                    let auth = if user.contains(['/', '?', '#']) {
                        format!("{R}@")
                    } else {
                        format!("{user}:{R}@")
                    };
                    (auth, after)
                }
                None => (String::new(), rest),
            };
            (format!("{scheme}://{auth}"), rest)
        }
        None => (String::new(), url),
    };
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, _)) => (r, Some(R)),
        None => (rest, None),
    };
    let (base, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = prefix;
    match base.split_once('/') {
        Some((host, path)) if path_too && !path.is_empty() && url.contains("://") => {
            out.push_str(host);
            out.push('/');
            out.push_str(R);
        }
        _ => out.push_str(base),
    }
    if let Some(q) = query {
        let parts: Vec<String> = q
            .split('&')
            .map(|part| match part.split_once('=') {
                Some((name, _)) => format!("{name}={R}"),
                None if part.is_empty() => String::new(),
                None => R.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&parts.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

#[cfg(test)]
mod tests;
