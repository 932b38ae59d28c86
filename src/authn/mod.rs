//! Layer 3 — authentication: API keys and JWTs become an [`Authenticated`]
//! principal.
//!
//! Threat: forged, stolen, expired or revoked credentials; credentials in
//! URLs (logged everywhere); secrets stored in a form that a database leak
//! turns into working keys. Guarantee: only this module reads the API-key
//! header and `Authorization`; a request either carries no credentials (no
//! principal: routes that need one answer 401), valid ones (an
//! [`Authenticated`] in the request extensions, which only this module can
//! build), or invalid ones (401 at once, whatever the route). Keys are
//! compared by SHA-256 hash; the query string is never read.
//!
//! Not covered: what a principal may do (authz), per-tenant visibility (handlers).

pub mod apikey;

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::request::Parts;

use crate::app::AppState;
use crate::authz::PermissionSet;
use crate::http::ApiError;

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKind {
    /// An API key (its id; the static bootstrap key has id `static`).
    ApiKey { key_id: String },
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
    Store(String),
}

impl From<AuthnError> for ApiError {
    fn from(e: AuthnError) -> ApiError {
        match e {
            AuthnError::Store(msg) => {
                tracing::error!(error = %msg, "credential store failed");
                ApiError::Internal
            }
            _ => ApiError::Unauthenticated,
        }
    }
}

/// The authentication layer (middleware).
pub async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    match authenticate(&state, req.headers()).await {
        Ok(Some(p)) => {
            req.extensions_mut().insert(Authenticated::new(p));
        }
        Ok(None) => {}
        Err(e) => {
            tracing::debug!(error = %e, "authentication failed");
            return ApiError::from(e).into_response();
        }
    }
    next.run(req).await
}

/// Resolve the request's credentials, if any.
pub async fn authenticate(
    state: &AppState,
    headers: &http::HeaderMap,
) -> Result<Option<Principal>, AuthnError> {
    if let Some(v) = headers.get(&state.authn.key_header) {
        let key = v.to_str().map_err(|_| AuthnError::Malformed)?;
        return state.authn.verify_api_key(state, key).await.map(Some);
    }
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let _ = v;
        // JWT verification arrives with the identity layer.
        return Err(AuthnError::Unknown);
    }
    Ok(None)
}

/// Authentication state: the key header and verification helpers.
pub struct Authn {
    pub key_header: http::HeaderName,
    static_key_hash: Option<[u8; 32]>,
}

impl Authn {
    pub fn new(cfg: &crate::config::Config) -> anyhow::Result<Self> {
        let key_header = http::HeaderName::from_bytes(
            cfg.security.api_key_header.to_ascii_lowercase().as_bytes(),
        )?;
        Ok(Authn {
            key_header,
            static_key_hash: cfg.security.api_key.as_deref().map(apikey::hash),
        })
    }

    /// Verify an API key.
    pub async fn verify_api_key(
        &self,
        state: &AppState,
        key: &str,
    ) -> Result<Principal, AuthnError> {
        let hash = apikey::hash(key);
        if let Some(st) = &self.static_key_hash {
            if bool::from(subtle::ConstantTimeEq::ct_eq(&hash[..], &st[..])) {
                let admin = crate::store::users::first_admin(&state.db)
                    .await
                    .map_err(|e| AuthnError::Store(e.to_string()))?
                    .ok_or(AuthnError::Unknown)?;
                let permissions = state
                    .roles
                    .permissions(admin.roles.iter().map(String::as_str));
                return Ok(Principal {
                    user_id: admin.id,
                    username: admin.username,
                    roles: admin.roles,
                    permissions,
                    auth: AuthKind::ApiKey {
                        key_id: "static".into(),
                    },
                });
            }
        }
        if !apikey::well_formed(key) {
            return Err(AuthnError::Malformed);
        }
        let row = crate::store::keys::find_by_hash(&state.db, &hex::encode(hash))
            .await
            .map_err(|e| AuthnError::Store(e.to_string()))?
            .ok_or(AuthnError::Unknown)?;
        let now = crate::store::now_ms();
        if row.revoked_at.is_some() {
            return Err(AuthnError::Revoked);
        }
        if row.expires_at <= now {
            return Err(AuthnError::Expired);
        }
        let user_perms = state
            .roles
            .permissions(row.user_roles.iter().map(String::as_str));
        let key_perms =
            PermissionSet::parse(row.permissions.iter().map(String::as_str)).unwrap_or_default();
        Ok(Principal {
            user_id: row.user_id,
            username: row.username,
            roles: row.user_roles,
            permissions: key_perms.intersect(user_perms),
            auth: AuthKind::ApiKey { key_id: row.id },
        })
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
