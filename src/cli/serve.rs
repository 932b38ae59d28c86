//! `frenly serve` and `frenly init`.

use std::sync::Arc;

use super::{runtime, CmdResult, Failure};
use crate::app::{bootstrap, AppState};
use crate::config::Config;
use crate::server::Server;

fn print_admin_key(key: &str) {
    crate::errln!(
        "frenly: first start: created user `admin`; its API key (shown once, store it now):"
    );
    crate::errln!("{key}");
}

pub fn serve(cfg: Config) -> CmdResult {
    let rt = runtime()?;
    rt.block_on(async move {
        let prepared = bootstrap::prepare(&cfg).await.map_err(Failure::from)?;
        let _one_server = lock_sqlite(&cfg)?;
        let db = prepared.db.clone();
        let cfg = Arc::new(cfg);
        let state = AppState::build(cfg.clone(), prepared.db).await?;
        if let Some(addr) = cfg.metrics.listen {
            start_metrics_listener(addr, state.clone()).await?;
        }
        let server = Server::bind(state).await?;
        // Only once the port is ours: a failed start must not consume the
        // one-time display of the first admin's key.
        if let Some(k) = bootstrap::create_first_admin(&db)
            .await
            .map_err(Failure::from)?
        {
            print_admin_key(&k);
        }
        let addr = server.listener.local_addr().map_err(Failure::refused)?;
        let scheme = if cfg.network.tls { "https" } else { "http" };
        tracing::info!("listening on {scheme}://{addr}");
        crate::errln!("frenly: listening on {scheme}://{addr}");
        server.run(crate::server::shutdown_signal()).await?;
        crate::errln!("frenly: stopped");
        Ok(0)
    })
}

/// One `serve` per SQLite file, held until the process ends: a second
/// server on the file kept its own cache of task rows and served tasks
/// other instances had long finished (instances that serve as one share
/// PostgreSQL). Offline commands (`keys`, `users`, ...) do not take it.
fn lock_sqlite(cfg: &Config) -> Result<Option<std::fs::File>, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(db) = cfg.sqlite_path() else {
        return Ok(None);
    };
    let path = format!("{db}.serve.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| Failure::refused(format!("cannot open {path}: {e}")))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(Failure::refused(format!(
            "another `frenly serve` is running on {db}: one server per SQLite file \
             (instances that serve as one share PostgreSQL: database.url)"
        ))),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Failure::refused(format!("cannot lock {path}: {e}")))
        }
    }
}

/// The separate `/metrics` listener (`metrics.listen`): plain HTTP, no
/// authentication — it must be bound to loopback or a private interface
/// (`frenly check` fails a public address). It stops with the process.
async fn start_metrics_listener(
    addr: std::net::SocketAddr,
    state: AppState,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::refused(format!("cannot listen on {addr} (metrics.listen): {e}")))?;
    let local = listener.local_addr().map_err(Failure::refused)?;
    tracing::info!("metrics listening on http://{local}/metrics");
    crate::errln!("frenly: metrics listening on http://{local}/metrics");
    let app = crate::monitoring::api::metrics_router(state);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

pub fn init(cfg: Config) -> CmdResult {
    let rt = runtime()?;
    rt.block_on(async move {
        let prepared = bootstrap::prepare(&cfg).await.map_err(Failure::from)?;
        let wrote = write_sample_config(&cfg)
            .map_err(|e| Failure::refused(format!("writing config: {e}")))?;
        let key = bootstrap::create_first_admin(&prepared.db)
            .await
            .map_err(Failure::from)?;
        match &key {
            Some(k) => print_admin_key(k),
            None => crate::errln!("frenly: already initialised; no new admin key"),
        }
        crate::errln!("frenly: initialised {}", cfg.data_dir.display());
        if cfg.config_file.is_none() {
            // the sample is read only when named: serve never looks for it
            let path = cfg.data_dir.join("frenly.toml");
            if wrote {
                crate::errln!(
                    "frenly: the defaults are written to {}; edit it and pass it with --config",
                    path.display()
                );
            } else {
                crate::errln!(
                    "frenly: {} exists and was left as it is; pass it with --config",
                    path.display()
                );
            }
        }
        Ok(0)
    })
}

/// A commented TOML config beside the data, unless one exists (`false`).
fn write_sample_config(cfg: &Config) -> std::io::Result<bool> {
    let path = cfg.data_dir.join("frenly.toml");
    if path.exists() {
        return Ok(false);
    }
    std::fs::write(path, SAMPLE_CONFIG).map(|()| true)
}

/// The commented default configuration written by `frenly init`.
pub const SAMPLE_CONFIG: &str = r#"# Frenly configuration. Every key is optional; the values shown are the defaults.
# Environment overrides: FRENLY_SECTION__KEY=value (for example FRENLY_NETWORK__LISTEN).

[security]
api_key_required = true
# api_key = "a long random static bootstrap key"   # authenticates as the first admin
api_key_header = "X-API-Key"

[network]
listen = "127.0.0.1:8080"
tls = true                    # plain HTTP only with tls = false, and only on loopback
# tls_cert = "/path/cert.pem"  # generated in the data dir when absent
# tls_key = "/path/key.pem"
trusted_proxies = []          # CIDRs whose X-Forwarded-For is believed
max_connections = 20000       # open connections (WebSockets included); more wait
max_connections_per_address = 256   # from one address (trusted proxies, allowlist exempt)

[limits]
allowlist = []                # CIDRs never rate-limited or banned
header_max_bytes = 16384
body_max_bytes = 1048576
# body_budget_bytes = 268435456  # all buffered request bodies together (503 beyond); default 256 MiB or 16 bodies
# body_budget_per_address_bytes = 33554432  # of that, one client address (default an eighth)
rate = { max_requests = 100, window_seconds = 60 }
ddos = { max_requests_per_second = 10, ban_seconds = 300, max_ban_seconds = 86400 }
max_tracked_clients = 100000  # memory bound of the limiter (least recently seen evicted)
max_bans = 1000000            # bans held at once, apart from tracked clients (past it the soonest to end is evicted)
ipv6_group_by_64 = true

[ids]
mode = "block"                # block, detect or off
threshold = 5                 # blocked requests before the address is banned
ban_seconds = 300

[incidents]
# kinds that ban the address (IDS kinds at ids.threshold blocked requests;
# brute_force at monitor.failed_login_burst failures); ddos always bans
ban = ["sql_injection", "xss_attempt", "path_traversal", "command_injection", "intrusion_attempt"]
alert = ["brute_force", "sql_injection", "xss_attempt", "path_traversal", "command_injection", "intrusion_attempt", "ddos"]
audit = true                  # security_violation audit event per incident
cooldown_seconds = 60         # same kind from one address recorded at most once per this
window_seconds = 3600         # blocked requests count towards ids.threshold within this

[auth]
login_max_failures = 5
lockout_seconds = 900
jwt_ttl_hours = 24

[audit]
# file = "<data dir>/security_audit.log"

[alerts]
# webhook_url = "https://alerts.example.com/frenly"

# [database]
# url = "postgres://frenly@127.0.0.1/frenly"
# min_connections = 5
# max_connections = 20
# [state]            # several instances as one: see docs/SCALING.md
# redis_url = "redis://127.0.0.1:6379"
# redis_failure_policy = "fail_open"   # or "fail_closed" (503 while Redis is down)
# redis_prefix = "frenly:"
"#;
