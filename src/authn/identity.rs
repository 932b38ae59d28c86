//! Users and API keys: the input rules and the writes, shared by the HTTP
//! handlers and the offline CLI.
//!
//! Threat: malformed identities (usernames that collide or inject), roles
//! that do not exist, keys that outlive their purpose or carry more than
//! their owner. Guarantee: usernames match `^[a-zA-Z0-9_]{3,20}$` and are
//! unique in any letter case (no `Admin` beside `admin`), e-mails
//! the guide's rule (`^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$`, at
//! most 254 characters), passwords have 8..=1024 characters, roles exist
//! (built-in or configured); every broken rule is reported at once, per
//! field. Key names have 1..=100 characters without control characters;
//! `expires_in_days` is a number in (0, 365]; the secret is returned once and
//! only its SHA-256 is stored. Whether a key's permissions are covered by the
//! creator's is the caller's check (it knows the creator).
//!
//! Not covered: authorization of who may create what (routes and handlers).

use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::authz::{PermissionSet, Roles};
use crate::http::respond::FieldErrors;
use crate::store::{self, Db, StoreError};

static USERNAME: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"^[a-zA-Z0-9_]{3,20}$").ok());
/// An address: a local part of RFC 5322 `atext` runs joined by single dots
/// (dot-atom: `o'brien`, `a+tag`, `x!y` are addresses; `o'brien` was
/// refused), `@`, and a domain of dot-separated labels ending in a
/// top-level name of letters. No quoted local parts, comments or address
/// literals: those are not what people type in.
static EMAIL: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(
        r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@([A-Za-z0-9-]+\.)+[A-Za-z]{2,}$",
    )
    .ok()
});

/// Most days a key may live.
pub const MAX_KEY_DAYS: f64 = 365.0;

/// Failures of identity writes.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("validation failed")]
    Validation(FieldErrors),
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Internal(String),
}

impl From<IdentityError> for crate::http::ApiError {
    fn from(e: IdentityError) -> Self {
        use crate::http::ApiError;
        match e {
            IdentityError::Validation(f) => ApiError::Validation(f),
            IdentityError::Conflict(m) => ApiError::Conflict(m),
            IdentityError::NotFound => ApiError::NotFound,
            IdentityError::Store(e) => e.into(),
            IdentityError::Internal(m) => {
                tracing::error!(error = %m, "identity write failed");
                ApiError::Internal
            }
        }
    }
}

fn push(f: &mut FieldErrors, field: &str, msg: impl Into<String>) {
    f.entry(field.to_string()).or_default().push(msg.into());
}

pub fn valid_username(s: &str) -> bool {
    USERNAME.as_ref().is_some_and(|r| r.is_match(s))
}

pub fn valid_email(s: &str) -> bool {
    s.len() <= 254 && EMAIL.as_ref().is_some_and(|r| r.is_match(s))
}

/// A user that passed every rule.
pub struct NewUser {
    pub username: String,
    pub email: String,
    pub password: Zeroizing<String>,
    pub roles: Vec<String>,
}

fn check_username(f: &mut FieldErrors, v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => push(f, "username", "username is required"),
        Some(Value::String(s)) if valid_username(s) => return s.clone(),
        Some(Value::String(_)) => push(
            f,
            "username",
            "username must be 3 to 20 letters, digits or underscores",
        ),
        Some(_) => push(f, "username", "username must be a string"),
    }
    String::new()
}

fn check_password(f: &mut FieldErrors, v: Option<&Value>) -> Zeroizing<String> {
    match v {
        None | Some(Value::Null) => push(f, "password", "password is required"),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if (8..=1024).contains(&n) {
                return Zeroizing::new(s.clone());
            }
            push(f, "password", "password must have 8 to 1024 characters");
        }
        Some(_) => push(f, "password", "password must be a string"),
    }
    Zeroizing::new(String::new())
}

/// Check role names: a non-empty list of existing, distinct roles.
pub fn check_roles(f: &mut FieldErrors, v: Option<&Value>, roles: &Roles) -> Vec<String> {
    let list = match v {
        None | Some(Value::Null) => {
            push(f, "roles", "roles is required");
            return Vec::new();
        }
        Some(Value::Array(a)) => a,
        Some(_) => {
            push(f, "roles", "roles must be a list of role names");
            return Vec::new();
        }
    };
    if list.is_empty() || list.len() > 16 {
        push(f, "roles", "roles must name 1 to 16 roles");
    }
    let mut out: Vec<String> = Vec::new();
    for r in list {
        match r.as_str() {
            Some(name) if roles.get(name).is_some() => {
                if !out.iter().any(|o| o == name) {
                    out.push(name.to_string());
                }
            }
            Some(name) if name.len() <= 64 && !name.chars().any(char::is_control) => {
                push(f, "roles", format!("unknown role `{name}`"))
            }
            _ => push(f, "roles", "roles must be existing role names"),
        }
    }
    out
}

/// Validate a user body (`{username, email, password, roles}`), reporting
/// every broken rule at once.
pub fn validate_user(
    body: &serde_json::Map<String, Value>,
    roles: &Roles,
) -> Result<NewUser, IdentityError> {
    let mut f = FieldErrors::new();
    for k in body.keys() {
        if !["username", "email", "password", "roles"].contains(&k.as_str()) {
            push(&mut f, k, "unknown field");
        }
    }
    let username = check_username(&mut f, body.get("username"));
    let email = match body.get("email") {
        None | Some(Value::Null) => {
            push(&mut f, "email", "email is required");
            String::new()
        }
        Some(Value::String(s)) if valid_email(s) => s.clone(),
        Some(Value::String(_)) => {
            push(&mut f, "email", "email is not a valid address");
            String::new()
        }
        Some(_) => {
            push(&mut f, "email", "email must be a string");
            String::new()
        }
    };
    let password = check_password(&mut f, body.get("password"));
    let roles = check_roles(&mut f, body.get("roles"), roles);
    if !f.is_empty() {
        return Err(IdentityError::Validation(f));
    }
    Ok(NewUser {
        username,
        email,
        password,
        roles,
    })
}

/// Validate a CLI password (same rule as the API).
pub fn validate_password(pw: &str) -> Result<(), String> {
    let mut f = FieldErrors::new();
    check_password(&mut f, Some(&Value::String(pw.to_string())));
    match f.remove("password") {
        Some(m) => Err(m.join("; ")),
        None => Ok(()),
    }
}

/// Insert a validated user with its password hash. A username taken in any
/// letter case (`Bob` when `bob` exists) -> conflict.
pub async fn insert_user(
    db: &Db,
    u: &NewUser,
    password_hash: String,
) -> Result<store::users::User, IdentityError> {
    let user = store::users::User {
        id: store::new_id(),
        username: u.username.clone(),
        email: u.email.clone(),
        password_hash: Some(password_hash),
        roles: u.roles.clone(),
        created_at: store::now_ms(),
        tokens_valid_after: 0,
    };
    let taken = || IdentityError::Conflict("a user with this username exists".into());
    match store::users::insert(db, &user).await {
        Ok(true) => Ok(user),
        Ok(false) => Err(taken()),
        Err(e) if e.is_unique_violation() => Err(taken()),
        Err(e) => Err(e.into()),
    }
}

/// The JSON shape of a user (never the password hash).
pub fn user_json(u: &store::users::User) -> Value {
    serde_json::json!({
        "id": u.id,
        "username": u.username,
        "email": u.email,
        "roles": u.roles,
        "created_at": store::rfc3339(u.created_at),
    })
}

/// Delete a user and their keys; refuses to delete the last admin. The
/// tasks the deletion re-queued and cancelled, as stored (for their events).
pub async fn delete_user(
    db: &Db,
    user: &store::users::User,
) -> Result<store::tasks::Released, IdentityError> {
    match store::users::delete(db, &user.id).await? {
        store::users::Deleted::Yes(released) => Ok(released),
        store::users::Deleted::NotFound => Err(IdentityError::NotFound),
        store::users::Deleted::LastAdmin => Err(IdentityError::Conflict(
            "refusing to delete the last admin".into(),
        )),
    }
}

/// A key request that passed every rule.
pub struct KeyRequest {
    pub name: String,
    /// `None`: the creator's own permissions.
    pub permissions: Option<PermissionSet>,
    pub expires_in_days: f64,
}

/// Check `expires_in_days`: a number in (0, 365].
pub fn check_days(v: &Value) -> Result<f64, String> {
    match v.as_f64() {
        Some(d) if v.is_number() && d > 0.0 && d <= MAX_KEY_DAYS => Ok(d),
        _ => Err("expires_in_days must be a number greater than 0 and at most 365".into()),
    }
}

/// Check a permission list: known names.
pub fn check_permissions(v: &Value) -> Result<PermissionSet, String> {
    let Some(list) = v.as_array() else {
        return Err("permissions must be a list of permission names".into());
    };
    let mut names = Vec::new();
    for p in list {
        match p.as_str() {
            Some(s) => names.push(s),
            None => return Err("permissions must be a list of permission names".into()),
        }
    }
    PermissionSet::parse(names.iter().copied()).map_err(|bad| {
        if bad.len() <= 64 && !bad.chars().any(char::is_control) {
            format!("unknown permission `{bad}`")
        } else {
            "unknown permission".into()
        }
    })
}

/// Validate a key body (`{name, permissions?, expires_in_days?}`).
pub fn validate_key(
    body: &serde_json::Map<String, Value>,
    default_days: f64,
) -> Result<KeyRequest, IdentityError> {
    let mut f = FieldErrors::new();
    for k in body.keys() {
        if !["name", "permissions", "expires_in_days"].contains(&k.as_str()) {
            push(&mut f, k, "unknown field");
        }
    }
    let name = match body.get("name") {
        None | Some(Value::Null) => {
            push(&mut f, "name", "name is required");
            String::new()
        }
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if !(1..=100).contains(&n) || s.chars().any(char::is_control) {
                push(
                    &mut f,
                    "name",
                    "name must have 1 to 100 characters and no control characters",
                );
            }
            s.clone()
        }
        Some(_) => {
            push(&mut f, "name", "name must be a string");
            String::new()
        }
    };
    let permissions = match body.get("permissions") {
        None | Some(Value::Null) => None,
        Some(v) => match check_permissions(v) {
            Ok(p) => Some(p),
            Err(m) => {
                push(&mut f, "permissions", m);
                None
            }
        },
    };
    let expires_in_days = match body.get("expires_in_days") {
        None => default_days,
        Some(v) => check_days(v).unwrap_or_else(|m| {
            push(&mut f, "expires_in_days", m);
            default_days
        }),
    };
    if !f.is_empty() {
        return Err(IdentityError::Validation(f));
    }
    Ok(KeyRequest {
        name,
        permissions,
        expires_in_days,
    })
}

/// The instant (ms) a key created at `now` for `days` days expires: at
/// least a second later (`expires_in_days: 1e-9`, positive as the contract
/// asks, rounded to 0 ms: a 201 with a key that had already expired).
pub fn expiry(now: i64, days: f64) -> i64 {
    now.saturating_add(((days * 86_400_000.0).ceil() as i64).max(MIN_KEY_LIFETIME_MS))
}

/// The shortest life a key is given.
pub const MIN_KEY_LIFETIME_MS: i64 = 1000;

/// A freshly created key: the secret is here and nowhere else.
pub struct CreatedKey {
    pub id: String,
    pub key: Zeroizing<String>,
    pub name: String,
    pub permissions: Vec<String>,
    pub created_at: i64,
    pub expires_at: i64,
}

/// Create a key for `user_id` with exactly `permissions`.
pub async fn create_key(
    db: &Db,
    user_id: &str,
    name: &str,
    permissions: PermissionSet,
    expires_at: i64,
) -> Result<CreatedKey, IdentityError> {
    let key = Zeroizing::new(super::apikey::generate());
    let now = store::now_ms();
    let names: Vec<String> = permissions.names().into_iter().map(String::from).collect();
    let id = store::new_id();
    store::keys::insert(
        db,
        &store::keys::NewKey {
            id: &id,
            user_id,
            name,
            key_hash: &super::apikey::hash_hex(&key),
            permissions: &names,
            created_at: now,
            expires_at,
        },
    )
    .await?;
    Ok(CreatedKey {
        id,
        key,
        name: name.to_string(),
        permissions: names,
        created_at: now,
        expires_at,
    })
}

/// The JSON shape of a key in lists (never the secret nor its hash).
pub fn key_json(k: &store::keys::KeyRow, now: i64) -> Value {
    let status = if k.revoked_at.is_some() {
        "revoked"
    } else if k.expires_at <= now {
        "expired"
    } else {
        "active"
    };
    serde_json::json!({
        "id": k.id,
        "name": k.name,
        "user_id": k.user_id,
        "username": k.username,
        "permissions": k.permissions,
        "created_at": store::rfc3339(k.created_at),
        "expires_at": store::rfc3339(k.expires_at),
        "last_used_at": k.last_used_at.map(store::rfc3339),
        "revoked_at": k.revoked_at.map(store::rfc3339),
        "status": status,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_key_lives_at_least_a_second() {
        for days in [1e-9, 5e-324, 1e-300, 1e-8] {
            assert_eq!(expiry(1_000, days), 1_000 + MIN_KEY_LIFETIME_MS, "{days}");
        }
        assert_eq!(expiry(0, 0.5), 43_200_000);
        assert_eq!(expiry(0, 365.0), 365 * 86_400_000);
    }

    #[test]
    fn user_rules_report_every_field() {
        let roles = Roles::new(&Default::default());
        let Err(IdentityError::Validation(f)) = validate_user(
            &obj(
                json!({"username": "a b", "email": "nope", "password": "short", "roles": ["root"], "x": 1}),
            ),
            &roles,
        ) else {
            panic!()
        };
        for k in ["username", "email", "password", "roles", "x"] {
            assert!(f.contains_key(k), "{k}: {f:?}");
        }
        let ok = validate_user(
            &obj(json!({"username": "bob_1", "email": "bob@example.com", "password": "long enough", "roles": ["user", "user"]})),
            &roles,
        )
        .unwrap();
        assert_eq!(ok.roles, vec!["user"]);
    }

    #[test]
    fn username_and_email_rules() {
        for good in ["abc", "A_b_9", "abcdefghijklmnopqrst"] {
            assert!(valid_username(good), "{good}");
        }
        for bad in ["ab", "abcdefghijklmnopqrstu", "a-b", "ä12", "abc\n", ""] {
            assert!(!valid_username(bad), "{bad}");
        }
        for good in [
            "a.b+c@x-y.example.org",
            "o'brien@example.org",
            "a!#$%&'*+/=?^_`{|}~-z@example.org",
            "first.last@sub.example.co",
        ] {
            assert!(valid_email(good), "{good}");
        }
        for bad in [
            "a@b",
            "@x.org",
            "a@@x.org",
            "a b@x.org",
            "a@x.o",
            "a@x.org\n",
            ".a@x.org",
            "a.@x.org",
            "a..b@x.org",
            "a\"b@x.org",
            "a(b)@x.org",
            "a<b>@x.org",
            "a@x..org",
            "a@x_y.org",
            "a,b@x.org",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn key_expiry_rules() {
        for good in [json!(1), json!(0.5), json!(365), json!(364.99)] {
            assert!(check_days(&good).is_ok(), "{good}");
        }
        for bad in [
            json!(0),
            json!(-1),
            json!(365.01),
            json!("30"),
            json!(null),
            json!(true),
            json!(1e308),
        ] {
            assert!(check_days(&bad).is_err(), "{bad}");
        }
        let r = validate_key(&obj(json!({"name": "ci"})), 30.0).unwrap();
        assert_eq!(r.expires_in_days, 30.0);
        assert!(r.permissions.is_none());
        assert!(validate_key(&obj(json!({"name": "ci", "expires_in_days": null})), 30.0).is_err());
    }
}
