//! The application layer: the task API that the security layers protect.
//!
//! [`AppState`] is built once at start from the [`Config`] and handed to every
//! layer; [`routes`] is the whole route table, each route with its declared
//! permission (see `authz`).

pub mod agent;
pub mod auth;
pub mod bootstrap;
pub mod events;
pub mod health;
pub mod keys;
pub mod openapi;
pub mod paging;
pub mod security;
pub mod tasks;
pub mod users;
pub mod ws;

use std::sync::Arc;

use axum::Router;

use crate::authn::Authn;
use crate::authz::{RouteSpec, Routes};
use crate::config::Config;
use crate::store::Db;

/// Everything a request may need, built once.
pub struct AppInner {
    pub cfg: Arc<Config>,
    pub db: Db,
    pub roles: crate::authz::Roles,
    pub authn: Authn,
    pub audit: crate::monitoring::audit::Audit,
    pub metrics: crate::monitoring::metrics::Metrics,
    pub network: crate::network::Network,
    pub apisec: crate::apisec::ApiSecurity,
    pub alerts: crate::monitoring::alerts::Alerts,
    /// The route table (for the OpenAPI description).
    pub table: Vec<RouteSpec>,
    /// Data-encryption keys (task description, input, result).
    pub keyring: crate::data::keyring::Keyring,
    /// Task events for WebSocket clients.
    pub events: events::Events,
    /// Input rules of the task routes.
    pub task_rules: tasks::TaskRules,
    /// Incident detection and response.
    pub incidents: crate::monitoring::incidents::Incidents,
    /// Where shared security state lives (in-process or Redis).
    pub shared: crate::state::SharedState,
    /// Gateway mode: the configured routes and the upstream clients.
    pub gateway: crate::gateway::Gateway,
    /// Which refusals of banned addresses are audited.
    pub banned_refusals: crate::monitoring::refusals::BannedRefusals,
    /// Cancelled when the server shuts down: upgraded connections (WebSocket
    /// on `/api/ws` and through the gateway), which hyper no longer
    /// tracks, close with 1001 then.
    pub stopping: tokio_util::sync::CancellationToken,
    /// The upgraded connections, so that shutdown can wait for their Close.
    pub upgraded: tokio_util::task::TaskTracker,
}

/// Shared, cheap-to-clone application state.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl AppState {
    /// Build the state: database, keys, audit writer.
    pub async fn build(cfg: Arc<Config>, db: Db) -> anyhow::Result<AppState> {
        let roles = crate::authz::Roles::new(&cfg.roles);
        let metrics = crate::monitoring::metrics::Metrics::new();
        let shared = crate::state::SharedState::new(&cfg, metrics.redis_up.clone())?;
        let mut authn = Authn::new(&cfg)?;
        authn.lockout.set_shared(shared.clone());
        // expired rows are dropped once per start (a catch-up only reads)
        let _ = crate::store::revoked::prune(&db, crate::store::now_ms()).await;
        authn.revocations.load(&db).await?;
        let alerts =
            crate::monitoring::alerts::Alerts::start_counted(&cfg, metrics.alerts.clone())?;
        let audit = crate::monitoring::audit::Audit::start_with(
            &cfg,
            db.clone(),
            crate::monitoring::audit::AuditHooks {
                backpressure: Some(metrics.audit_backpressure.clone()),
                depth: Some(metrics.audit_queue_depth.clone()),
                alerts: Some(alerts.clone()),
                last_stored: crate::store::audit::last_line(&db).await.ok().flatten(),
            },
        )
        .map_err(|e| {
            crate::config::ConfigError::unreadable(
                "audit log",
                "audit.file",
                &cfg.audit_file,
                format!("{e:#}"),
            )
        })?;
        audit.report_cut_tail(&db).await;
        let network = crate::network::Network::new(&cfg);
        network.start(&db, metrics.active_bans.clone()).await?;
        let incidents = crate::monitoring::incidents::Incidents::new(&cfg);
        let apisec = crate::apisec::ApiSecurity::new(&cfg, metrics.body_budget_used.clone());
        let (_, table) = routes().into_parts();
        let keyring = crate::data::keyring::Keyring::load(&cfg.keyring_file)
            .map_err(|e| crate::data::unusable_keyring(&cfg, e))?;
        let task_rules = tasks::TaskRules::new(&cfg);
        let gateway = crate::gateway::Gateway::new(&cfg)?;
        let inner = Arc::new(AppInner {
            cfg,
            db,
            roles,
            authn,
            audit,
            metrics,
            network,
            apisec,
            alerts,
            table,
            keyring,
            events: events::Events::with_shared(shared.clone()),
            task_rules,
            incidents,
            gateway,
            shared,
            banned_refusals: Default::default(),
            stopping: Default::default(),
            upgraded: Default::default(),
        });
        inner.shared.start_subscriber(Arc::downgrade(&inner));
        Ok(AppState(inner))
    }
}

/// The complete route table.
pub fn routes() -> Routes<AppState> {
    Routes::new()
        .merge(health::routes())
        .merge(openapi::routes())
        .merge(crate::monitoring::routes())
        .merge(auth::routes())
        .merge(keys::routes())
        .merge(users::routes())
        .merge(tasks::routes().merge(agent::routes()).merge(ws::routes()))
        .merge(security::routes())
}

/// The application router (without the security stack).
pub fn router(state: AppState) -> Router {
    let (router, _) = routes().merge(crate::gateway::routes(&state)).into_parts();
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// An unknown path: 404 for an authenticated caller, 401 for an anonymous
/// one, as a known route's access rule answers it (a 404 for unknown paths
/// and a 401 for known ones told an anonymous caller which routes exist).
/// A credential that fails was already refused by `authn::admit`.
async fn not_found(req: axum::extract::Request) -> crate::http::ApiError {
    if req
        .extensions()
        .get::<crate::authn::Authenticated>()
        .is_some()
    {
        crate::http::ApiError::NotFound
    } else {
        crate::http::ApiError::Unauthenticated
    }
}

async fn method_not_allowed() -> crate::http::ApiError {
    crate::http::ApiError::MethodNotAllowed
}
