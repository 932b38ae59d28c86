//! Password login: brute-force lockout, constant-cost checks, JWT issuing.
//!
//! Threat: password guessing, user enumeration (by message or by timing),
//! passwords leaking into logs. Guarantee: every failure — unknown user,
//! user without a password (the bootstrap admin), wrong password, locked
//! account or address — answers the same 401 `unauthenticated`; unknown users
//! and users without a password cost one argon2 verify like a known one
//! (see `password`); a locked account or address is refused before any
//! password check, even with the right password (concurrent attempts
//! cannot outrun the count: each holds a failure while its password is
//! checked), and its lockout is audited
//! (`security_violation`, `violation_type: "login_lockout"`). Each attempt is
//! audited as `login_attempt` with `username` (at most 64 characters),
//! `success` and, on failure, `reason`; the password is never recorded,
//! and neither is a name that is no user's: that is `username: null` with
//! `unknown_user: true` (a password typed into the name field, the classic
//! slip, was written to the audit log and served by `/api/audit`).
//!
//! Not covered: credential stuffing spread over many accounts and addresses
//! below the thresholds (rate limits and the monitor's burst detection help).

use std::net::IpAddr;

use zeroize::Zeroizing;

use crate::app::AppState;
use crate::http::ApiError;
use crate::monitoring::audit::AuditEvent;
use crate::store;

/// Passwords longer than this are refused without hashing.
const MAX_PASSWORD_BYTES: usize = 4096;

/// A successful login.
pub struct Issued {
    pub access_token: String,
    pub expires_in: i64,
}

/// The name as audited: a user's, at most 64 characters; `null` for a
/// name that is no user's (it may be a password typed in the wrong field).
fn audit_name(username: &str, known: bool) -> serde_json::Value {
    if known {
        serde_json::Value::from(username.chars().take(64).collect::<String>())
    } else {
        serde_json::Value::Null
    }
}

/// Is `username` a user's name? (A name with a control character is no
/// one's: user names are checked when created, and PostgreSQL refuses a
/// NUL in text.)
async fn lookup(state: &AppState, username: &str) -> Result<Option<store::users::User>, ApiError> {
    if username.chars().any(char::is_control) {
        return Ok(None);
    }
    Ok(store::users::by_username(&state.db, username).await?)
}

/// Check `username`/`password` and issue a token.
pub async fn login(
    state: &AppState,
    username: &str,
    password: Zeroizing<String>,
    addr: Option<IpAddr>,
    request_id: Option<&str>,
) -> Result<Issued, ApiError> {
    let authn = &state.authn;
    let event = |success: bool, known: bool| {
        let mut ev = AuditEvent::new("login_attempt")
            .field("username", audit_name(username, known))
            .field("success", success);
        if !known {
            ev = ev.field("unknown_user", true);
        }
        if let Some(r) = request_id {
            ev = ev.request_id(r);
        }
        if let Some(a) = addr {
            ev = ev.ip(a);
        }
        ev
    };
    let fail = |reason: &'static str, user_id: Option<String>| {
        let ev = event(false, user_id.is_some())
            .field("reason", reason)
            .user(user_id);
        async move {
            state.metrics.login_failures.inc();
            state.audit.record(ev).await;
            ApiError::Unauthenticated
        }
    };

    // admitted before the password check, holding one of the failures
    // left until it ends (`lockout`): concurrent guesses cannot outrun it
    let attempt = match authn.lockout.begin(username, addr).await {
        Ok(a) => a,
        Err(what) => {
            tracing::info!(locked = what.as_str(), "login refused: locked out");
            let user_id = lookup(state, username).await?.map(|u| u.id);
            return Err(fail(
                match what {
                    super::lockout::Locked::Account => "account_locked",
                    super::lockout::Locked::Address => "address_locked",
                },
                user_id,
            )
            .await);
        }
    };

    let user = lookup(state, username).await?;
    let ok = if password.len() > MAX_PASSWORD_BYTES {
        false
    } else {
        let stored = user.as_ref().and_then(|u| u.password_hash.clone());
        authn.passwords.verify(stored, password).await
    };

    let user = match (ok, user) {
        (true, Some(u)) => u,
        (_, u) => {
            let newly = attempt.failed().await;
            let known = u.is_some();
            let err = fail("invalid_credentials", u.map(|u| u.id)).await;
            for what in newly {
                tracing::warn!(
                    locked = what.as_str(),
                    "login lockout after repeated failures"
                );
                let mut ev = AuditEvent::new("security_violation")
                    .field("violation_type", "login_lockout")
                    .field(
                        "details",
                        format!(
                            "{} locked for {} s after {} failed logins",
                            what.as_str(),
                            state.cfg.auth.lockout_seconds,
                            state.cfg.auth.login_max_failures
                        ),
                    )
                    .field("locked", what.as_str())
                    .field("username", audit_name(username, known));
                if let Some(r) = request_id {
                    ev = ev.request_id(r);
                }
                if let Some(a) = addr {
                    ev = ev.ip(a);
                }
                state.audit.record(ev).await;
            }
            return Err(err);
        }
    };

    attempt.succeeded().await;
    let perms = state
        .roles
        .permissions(user.roles.iter().map(String::as_str));
    let (token, claims) = authn.issue_token(&user.id, perms).map_err(|e| {
        tracing::error!(error = %e, "token signing failed");
        ApiError::Internal
    })?;
    state
        .audit
        .record(event(true, true).user(Some(user.id.clone())))
        .await;
    Ok(Issued {
        access_token: token,
        expires_in: claims.exp - claims.iat,
    })
}
