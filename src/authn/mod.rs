//! Layer 3 — authentication: API keys and JWTs become an [`Authenticated`]
//! principal.
//!
//! Threat: forged, stolen, expired or revoked credentials; credentials in
//! URLs (logged everywhere); secrets stored in a form that a database leak
//! turns into working keys; password guessing and user enumeration. Guarantee:
//! only this module reads the API-key header and `Authorization`; a request
//! either carries no credentials (no principal: routes that need one answer
//! 401), valid ones (an [`Authenticated`] in the request extensions, which
//! only this module can build), or invalid ones (401 at once, unless the
//! route is open to all: `Access::Public` routes ignore a credential that
//! fails, so a client holding an expired token can log in again). A key
//! comes in its header or as a bearer token (what SDKs send); keys are
//! compared by SHA-256 hash; the query string is never read.
//! A principal's permissions are never more than its user's current ones (a
//! key's or token's permissions are intersected with the user's roles at
//! verification); a revoked key, a logged-out token and every credential of a
//! deleted user fail at once on this instance (caches are invalidated on
//! write); on other instances at once with Redis (the revocation epoch and
//! the revoked `jti` come with every request's shared-state answer, see
//! `crate::state`), within [`CACHE_TTL_MS`] without it (or while Redis is
//! down).
//!
//! `security.api_key_required = false` weakens nothing: both credential kinds
//! are always accepted, and the only routes open without credentials are the
//! `Access::Public` ones (`/healthz`, `/readyz`, `/openapi.json`,
//! `POST /api/auth/login`) in every configuration. The switch exists for the
//! guide's configuration files; a JWT-only deployment simply creates no keys.
//!
//! Not covered: what a principal may do (authz), per-tenant visibility
//! (handlers); sharing revocations and lockout counters between instances
//! (in-process here, behind [`revocations::Revocations`] and
//! [`lockout::Lockout`], for the shared-state layer to replace).

pub mod apikey;
pub mod cache;
pub mod identity;
pub mod jwt;
pub mod lockout;
pub mod login;
pub mod password;
pub mod revocations;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::app::AppState;
use crate::authz::{PermissionSet, Roles};
use crate::http::ApiError;
use crate::store::{self, Db};

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// An API key: its id (the static bootstrap key has id `static`), the
    /// instant it stops working (its expiry, or the end of the grace period
    /// for a rotated-out secret; `i64::MAX` for the static key), and whether
    /// the secret presented is the rotated-out one.
    ApiKey {
        key_id: String,
        valid_until: i64,
        superseded: bool,
    },
    /// A JWT (its `jti` and `exp`).
    Jwt { jti: String, exp: i64 },
}

impl AuthKind {
    pub fn name(&self) -> &'static str {
        match self {
            AuthKind::ApiKey { .. } => "api_key",
            AuthKind::Jwt { .. } => "jwt",
        }
    }
}

/// Who the caller is and what it may do.
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub roles: Vec<String>,
    /// Already the intersection of the credential's and the user's permissions.
    pub permissions: PermissionSet,
    pub auth: AuthKind,
}

/// Proof that the authn layer verified the caller. Only this module can
/// construct it; handlers take it as an extractor.
#[derive(Debug, Clone)]
pub struct Authenticated(Arc<Principal>);

impl Authenticated {
    pub(crate) fn new(p: Principal) -> Self {
        Authenticated(Arc::new(p))
    }

    pub(crate) fn from_arc(p: Arc<Principal>) -> Self {
        Authenticated(p)
    }

    pub fn is_admin(&self) -> bool {
        self.permissions.allows(crate::authz::Permission::Admin)
    }
}

impl std::ops::Deref for Authenticated {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Authenticated>()
            .cloned()
            .ok_or(ApiError::Unauthenticated)
    }
}

/// Failures of credential checks (all answered as 401, told apart in logs).
#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("malformed credentials")]
    Malformed,
    #[error("unknown credentials")]
    Unknown,
    #[error("expired credentials")]
    Expired,
    #[error("revoked credentials")]
    Revoked,
    #[error("credential store failed: {0}")]
    Store(#[from] crate::store::StoreError),
}

impl From<AuthnError> for ApiError {
    fn from(e: AuthnError) -> ApiError {
        match e {
            // the store's own mapping: a database out of reach is 503
            // `unavailable` with Retry-After (it was 500 here)
            AuthnError::Store(e) => e.into(),
            _ => ApiError::Unauthenticated,
        }
    }
}

/// The authentication step: resolve the request's credentials into
/// [`Authenticated`] (absent for anonymous requests); a credential that does
/// not verify is refused here (`Err` is the response to send).
pub async fn admit(state: &AppState, req: &mut Request) -> Result<(), Response> {
    let view = req.extensions().get::<crate::state::View>().cloned();
    if let Some(v) = &view {
        state.authn.observe_epoch(v.epoch);
    }
    // A route open to all ignores what it cannot verify (at once): a client
    // that keeps an expired token on its session must be able to log in
    // again, and a probe that sends a default header stays healthy (it
    // gives nothing away: the answer does not depend on the credential).
    // A cached key due for its recheck waited the pool's 10 s while the
    // database was away, so `/readyz` answered a load balancer only after
    // its timeout.
    if maybe_public(req.uri().path()) && is_public(state, req) {
        let resolving = resolve(state, req.headers(), view.as_ref());
        if let Ok(Ok(Some(p))) = tokio::time::timeout(PUBLIC_WAIT, resolving).await {
            req.extensions_mut().insert(Authenticated::from_arc(p));
        }
        return Ok(());
    }
    match resolve(state, req.headers(), view.as_ref()).await {
        Ok(Some(p)) => {
            req.extensions_mut().insert(Authenticated::from_arc(p));
            Ok(())
        }
        // anonymous: each route's access rule answers 401, and so does the
        // router's fallback for an unknown path (`app::not_found`)
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::debug!(error = %e, "authentication failed");
            Err(ApiError::from(e).into_response())
        }
    }
}

/// How long a public route waits for its caller's credential to verify
/// before it answers as to an anonymous caller.
const PUBLIC_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

/// Could the path be a public route's (`/healthz`, `/readyz`,
/// `/openapi.json`, login)? One test on the path of every other request.
fn maybe_public(path: &str) -> bool {
    !path.starts_with("/api/") || path == "/api/auth/login"
}

/// Is the request for an `Access::Public` route (none has a path parameter,
/// so the path is compared as it is)?
fn is_public(state: &AppState, req: &Request) -> bool {
    state.table.iter().any(|r| {
        r.access == crate::authz::Access::Public
            && r.method == req.method()
            && r.path == req.uri().path()
    })
}

/// Resolve the request's credentials, if any.
pub async fn authenticate(
    state: &AppState,
    headers: &http::HeaderMap,
) -> Result<Option<Principal>, AuthnError> {
    Ok(resolve(state, headers, None).await?.map(|p| (*p).clone()))
}

/// Resolve the request's credentials to a shared principal.
///
/// The API-key header wins when present (more than one value is malformed);
/// otherwise `Authorization: Bearer <token>` (scheme case-insensitive; any
/// other scheme, or no token, is malformed): a token without a `.` is an API
/// key (SDKs such as OpenAI's send their `api_key` this way; a JWT always
/// holds two dots), any other a JWT. The query string is never read.
async fn resolve(
    state: &AppState,
    headers: &http::HeaderMap,
    view: Option<&crate::state::View>,
) -> Result<Option<Arc<Principal>>, AuthnError> {
    let authn = &state.authn;
    let key = match only_one(headers, &authn.key_header)? {
        Some(v) => v.to_str().map_err(|_| AuthnError::Malformed)?,
        None => match only_one(headers, &http::header::AUTHORIZATION)? {
            None => return Ok(None),
            Some(v) => {
                let token = bearer_token(v)?;
                if token.contains('.') {
                    let shared = view.and_then(|v| v.jti.as_ref());
                    return authn
                        .jwt_principal_with(&state.db, &state.roles, token, shared)
                        .await
                        .map(Some);
                }
                token
            }
        },
    };
    authn
        .api_key_principal(&state.db, &state.roles, key)
        .await
        .map(Some)
}

/// The one value of header `name`, if any; more than one is malformed (which
/// of two credentials counts would be the attacker's choice).
fn only_one<'h>(
    headers: &'h http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<&'h http::HeaderValue>, AuthnError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(AuthnError::Malformed);
    }
    Ok(first)
}

/// The token of `Authorization: Bearer <token>` (RFC 6750 §2.1; the scheme
/// name is case-insensitive, RFC 9110 §11.1).
pub fn bearer_token(v: &http::HeaderValue) -> Result<&str, AuthnError> {
    let s = v.to_str().map_err(|_| AuthnError::Malformed)?;
    let (scheme, rest) = s.split_once(' ').ok_or(AuthnError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthnError::Malformed);
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty() {
        return Err(AuthnError::Malformed);
    }
    Ok(token)
}

/// A verified API key, cached by the SHA-256 of the key.
struct KeyEntry {
    principal: Arc<Principal>,
    /// Unix ms from which the key (or rotated-out secret) is no longer valid.
    valid_until: i64,
    /// Last `last_used_at` written (Unix ms); 0 = never.
    last_touch: AtomicI64,
    touch: bool,
}

/// A user as JWT verification needs it, cached by user id.
struct UserEntry {
    user_id: String,
    username: String,
    roles: Vec<String>,
    permissions: PermissionSet,
    tokens_valid_after: i64,
}

/// Seconds a cached credential is served before it is read again (bounds how
/// long another instance's revoke, rotate or delete takes to be seen here).
pub const CACHE_TTL_MS: i64 = 5_000;
/// `last_used_at` is written at most once per this many ms per key.
pub const TOUCH_INTERVAL_MS: i64 = 60_000;
const CACHE_CAP: usize = 65_536;

/// Authentication state: the key header, the JWT verifier, caches, the
/// password hasher, lockout counters and revocations.
pub struct Authn {
    pub key_header: http::HeaderName,
    static_key_hash: Option<[u8; 32]>,
    pub jwt: jwt::Verifier,
    pub jwt_ttl_seconds: i64,
    pub passwords: password::Passwords,
    pub lockout: lockout::Lockout,
    pub revocations: revocations::Revocations,
    keys: cache::TtlCache<[u8; 32], KeyEntry>,
    users: cache::TtlCache<String, UserEntry>,
    /// The newest revocation epoch seen (shared state; 0 without Redis).
    epoch: std::sync::atomic::AtomicU64,
    /// Moved whenever a credential may have stopped working on this instance
    /// (a revocation, rotation or user change here, or one another instance
    /// announced): open WebSockets verify theirs again before their next
    /// event ([`Authn::watch_changes`]).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Authn {
    /// Reads the JWT secret file (refusing an empty or short one) and prepares
    /// the password hasher.
    pub fn new(cfg: &crate::config::Config) -> anyhow::Result<Self> {
        let key_header = http::HeaderName::from_bytes(
            cfg.security.api_key_header.to_ascii_lowercase().as_bytes(),
        )?;
        let secret = jwt::read_secret(&cfg.jwt_secret_file)?;
        // whoever reads it mints admin tokens: warned like the keyring and
        // the TLS key (the checklist FAILs it)
        if let Some(w) =
            crate::monitoring::check::loose_mode_warning(&cfg.jwt_secret_file, "JWT secret")
        {
            tracing::warn!("{w}");
        }
        let verifier = jwt::Verifier::new(
            secret,
            &cfg.auth.jwt_algorithms,
            cfg.auth.jwt_leeway_seconds,
        )
        .map_err(|e| anyhow::anyhow!("auth: {e}"))?;
        Ok(Authn {
            key_header,
            static_key_hash: cfg.security.api_key.as_deref().map(apikey::hash),
            jwt: verifier,
            jwt_ttl_seconds: (cfg.auth.jwt_ttl_hours as i64).saturating_mul(3600),
            passwords: password::Passwords::new()?,
            lockout: lockout::Lockout::from_config(cfg),
            revocations: revocations::Revocations::new(),
            keys: cache::TtlCache::new(CACHE_TTL_MS, CACHE_CAP),
            users: cache::TtlCache::new(CACHE_TTL_MS, CACHE_CAP),
            epoch: std::sync::atomic::AtomicU64::new(0),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Verify an API key.
    pub async fn verify_api_key(
        &self,
        state: &AppState,
        key: &str,
    ) -> Result<Principal, AuthnError> {
        self.api_key_principal(&state.db, &state.roles, key)
            .await
            .map(|p| (*p).clone())
    }

    /// Verify an API key: the cache first (one SHA-256 and one map lookup),
    /// then the static bootstrap key, then the database.
    pub async fn api_key_principal(
        &self,
        db: &Db,
        roles: &Roles,
        key: &str,
    ) -> Result<Arc<Principal>, AuthnError> {
        let now = store::now_ms();
        let hash = apikey::hash(key);
        if let Some(e) = self.keys.get(&hash, now) {
            if now >= e.valid_until {
                return Err(AuthnError::Expired);
            }
            self.touch(db, &e, now);
            return Ok(e.principal.clone());
        }
        if let Some(st) = &self.static_key_hash {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &st[..])) {
                let admin = store::users::first_admin(db)
                    .await
                    .map_err(AuthnError::Store)?
                    .ok_or(AuthnError::Unknown)?;
                let permissions = roles.permissions(admin.roles.iter().map(String::as_str));
                let principal = Arc::new(Principal {
                    user_id: admin.id,
                    username: admin.username,
                    roles: admin.roles,
                    permissions,
                    auth: AuthKind::ApiKey {
                        key_id: "static".into(),
                        valid_until: i64::MAX,
                        superseded: false,
                    },
                });
                let entry = KeyEntry {
                    principal: principal.clone(),
                    valid_until: i64::MAX,
                    last_touch: AtomicI64::new(0),
                    touch: false,
                };
                self.keys.insert(hash, Arc::new(entry), now);
                return Ok(principal);
            }
        }
        if !apikey::well_formed(key) {
            return Err(AuthnError::Malformed);
        }
        let generation = self.keys.generation();
        let row = store::keys::find_by_hash(db, &hex::encode(hash))
            .await
            .map_err(AuthnError::Store)?
            .ok_or(AuthnError::Unknown)?;
        if row.revoked_at.is_some() {
            return Err(AuthnError::Revoked);
        }
        let mut valid_until = row.expires_at;
        if row.matched_old {
            valid_until = valid_until.min(row.old_valid_until.unwrap_or(0));
        }
        if now >= valid_until {
            return Err(AuthnError::Expired);
        }
        let user_perms = roles.permissions(row.user_roles.iter().map(String::as_str));
        let key_perms =
            PermissionSet::parse(row.permissions.iter().map(String::as_str)).unwrap_or_default();
        let principal = Arc::new(Principal {
            user_id: row.user_id,
            username: row.username,
            roles: row.user_roles,
            permissions: key_perms.intersect(user_perms),
            auth: AuthKind::ApiKey {
                key_id: row.id,
                valid_until,
                superseded: row.matched_old,
            },
        });
        let entry = Arc::new(KeyEntry {
            principal: principal.clone(),
            valid_until,
            last_touch: AtomicI64::new(row.last_used_at.unwrap_or(0)),
            touch: true,
        });
        self.touch(db, &entry, now);
        self.keys.insert_at(hash, entry, now, generation);
        Ok(principal)
    }

    /// Write `last_used_at` off the request path, at most once a minute per key.
    fn touch(&self, db: &Db, e: &KeyEntry, now: i64) {
        if !e.touch {
            return;
        }
        let last = e.last_touch.load(Ordering::Relaxed);
        if now - last < TOUCH_INTERVAL_MS
            || e.last_touch
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        if let AuthKind::ApiKey { key_id, .. } = &e.principal.auth {
            let (db, id) = (db.clone(), key_id.clone());
            tokio::spawn(async move {
                if let Err(err) = store::keys::touch(&db, &id, now).await {
                    tracing::warn!(error = %err, "could not record key use");
                }
            });
        }
    }

    /// Verify a JWT: the strict verifier, then revocation, then the user as
    /// it is now (deleted -> 401; permissions = token's ∩ user's current).
    pub async fn jwt_principal(
        &self,
        db: &Db,
        roles: &Roles,
        token: &str,
    ) -> Result<Arc<Principal>, AuthnError> {
        self.jwt_principal_with(db, roles, token, None).await
    }

    /// [`jwt_principal`](Authn::jwt_principal) with the shared state's answer
    /// for a `jti` (used only when it is this token's `jti`).
    pub async fn jwt_principal_with(
        &self,
        db: &Db,
        roles: &Roles,
        token: &str,
        shared: Option<&(String, bool)>,
    ) -> Result<Arc<Principal>, AuthnError> {
        let now = store::now_ms();
        let claims = self
            .jwt
            .verify_ms(token, now)
            .and_then(jwt::Claims::from_verified)
            .map_err(|e| {
                tracing::debug!(error = %e, "JWT refused");
                match e {
                    jwt::JwtError::Expired => AuthnError::Expired,
                    jwt::JwtError::Signature => AuthnError::Unknown,
                    _ => AuthnError::Malformed,
                }
            })?;
        let shared_revoked = shared.is_some_and(|(j, r)| *r && *j == claims.jti);
        if shared_revoked || self.revocations.is_revoked(&claims.jti).await {
            return Err(AuthnError::Revoked);
        }
        let user = self.user(db, roles, &claims.user_id, now).await?;
        if claims.issued_before(user.tokens_valid_after) {
            return Err(AuthnError::Revoked);
        }
        let token_perms = PermissionSet::parse(claims.permissions.iter().map(String::as_str))
            .map_err(|_| AuthnError::Malformed)?;
        Ok(Arc::new(Principal {
            user_id: user.user_id.clone(),
            username: user.username.clone(),
            roles: user.roles.clone(),
            permissions: token_perms.intersect(user.permissions),
            auth: AuthKind::Jwt {
                jti: claims.jti,
                exp: claims.exp,
            },
        }))
    }

    async fn user(
        &self,
        db: &Db,
        roles: &Roles,
        user_id: &str,
        now: i64,
    ) -> Result<Arc<UserEntry>, AuthnError> {
        let key = user_id.to_string();
        if let Some(u) = self.users.get(&key, now) {
            return Ok(u);
        }
        let generation = self.users.generation();
        let u = store::users::by_id(db, user_id)
            .await
            .map_err(AuthnError::Store)?
            .ok_or(AuthnError::Unknown)?;
        let entry = Arc::new(UserEntry {
            permissions: roles.permissions(u.roles.iter().map(String::as_str)),
            user_id: u.id,
            username: u.username,
            roles: u.roles,
            tokens_valid_after: u.tokens_valid_after,
        });
        self.users.insert_at(key, entry.clone(), now, generation);
        Ok(entry)
    }

    /// Sign a fresh token for a user; returns the token and its claims.
    pub fn issue_token(
        &self,
        user_id: &str,
        permissions: PermissionSet,
    ) -> Result<(String, jwt::Claims), jwt::JwtError> {
        let names = permissions.names().into_iter().map(String::from).collect();
        let claims = jwt::Claims::issue(user_id, names, store::now_ms(), self.jwt_ttl_seconds);
        Ok((self.jwt.sign(&claims)?, claims))
    }

    /// A request saw revocation epoch `epoch` in the shared state: when it
    /// changed, drop every cached credential before verifying that request
    /// (revocations, rotations and deletions on other instances; the cache's
    /// generation keeps a verification that started earlier from
    /// re-inserting what it read before). Any change counts, not only an
    /// increase: a Redis that restarted empty starts the epoch again.
    pub fn observe_epoch(&self, epoch: u64) {
        if self.epoch.swap(epoch, Ordering::AcqRel) != epoch {
            self.forget_all();
        }
    }

    /// Another instance changed credentials: drop every cached one.
    pub fn forget_all(&self) {
        self.keys.clear();
        self.users.clear();
        self.changed();
    }

    /// Log a JWT out: persisted, refused here at once (and open WebSockets
    /// carrying it are closed before their next event). Kept until the
    /// token could no longer verify anyway (`exp` and the leeway), the
    /// time returned, for the shared state's copy.
    pub async fn revoke_token(&self, db: &Db, jti: &str, exp: i64) -> store::Result<i64> {
        let until = self.jwt.accepted_until_ms(exp);
        self.revocations.revoke(db, jti, until).await?;
        self.changed();
        Ok(until)
    }

    /// Another instance logged a JWT out.
    pub fn token_revoked_elsewhere(&self, jti: &str, expires_at_ms: i64) {
        self.revocations.insert_local(jti, expires_at_ms);
        self.changed();
    }

    /// Revocations loaded from the database (catching up after a Redis
    /// outage, when other instances' announcements may have been lost).
    pub async fn reload_revocations(&self, db: &Db) -> store::Result<()> {
        if self.revocations.load(db).await? > 0 {
            self.changed();
        }
        Ok(())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells when a credential may have stopped working: a long-lived
    /// connection checks `has_changed` before it serves anything more and,
    /// when it has, verifies its credential again.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The `jti` of the request's bearer JWT, read WITHOUT verifying it, so
    /// that the network layer can ask the shared state about its revocation
    /// in the same round trip as the rate limit. Authn later verifies the
    /// token and uses that answer only for this same `jti`. `None` when an
    /// API key is present (it wins) or the token is not a plausible JWT.
    pub fn peek_jti(&self, headers: &http::HeaderMap) -> Option<String> {
        use base64::Engine;
        if headers.contains_key(&self.key_header) {
            return None;
        }
        let token = bearer_token(headers.get(http::header::AUTHORIZATION)?).ok()?;
        let payload = token.split('.').nth(1)?;
        if payload.len() > 8192 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .ok()?;
        #[derive(serde::Deserialize)]
        struct Peek {
            jti: String,
        }
        let jti = serde_json::from_slice::<Peek>(&bytes).ok()?.jti;
        let sane = (1..=128).contains(&jti.len())
            && jti
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
        sane.then_some(jti)
    }

    /// A key was revoked or rotated: forget it at once.
    pub fn invalidate_key(&self, key_id: &str) {
        self.keys.invalidate(
            |e| matches!(&e.principal.auth, AuthKind::ApiKey { key_id: k, .. } if k == key_id),
        );
        self.changed();
    }

    /// A user was deleted or changed: forget their keys and user entry at once.
    pub fn invalidate_user(&self, user_id: &str) {
        self.keys.invalidate(|e| e.principal.user_id == user_id);
        self.users.invalidate(|u| u.user_id == user_id);
        self.changed();
    }
}

/// Generate the JWT secret (512 random bits, base64) into a 0600 file when absent.
pub fn ensure_secrets(cfg: &crate::config::Config) -> anyhow::Result<()> {
    use base64::Engine;
    use rand::RngCore;
    if !cfg.jwt_secret_file.exists() {
        let mut bytes = [0u8; 64];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let text = base64::engine::general_purpose::STANDARD.encode(bytes);
        crate::app::bootstrap::write_secret(&cfg.jwt_secret_file, text.as_bytes())?;
    }
    Ok(())
}
