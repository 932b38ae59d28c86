//! `frenly keys`, `frenly users`, `frenly token` (offline identity management).
//!
//! These commands open the database directly (through the same
//! `bootstrap::prepare` as `serve`) and apply the same rules as the HTTP API
//! (`authn::identity`). Secrets go to stdout exactly once (a created key, a
//! minted token); passwords are read from stdin when it is not a terminal,
//! otherwise from a prompt without echo, and are never command-line
//! arguments. A running server notices an offline revoke or removal within
//! `authn::CACHE_TTL_MS` (it re-reads cached credentials that often); with
//! `state.redis_url` the command also moves the shared revocation epoch, so
//! every instance drops its cached credentials at its next request.
//!
//! Every change is audited as the HTTP API audits it (`key_created`,
//! `key_revoked`, `user_created`, `user_deleted`, and `token_issued` for a
//! minted token), with `"via": "cli"` and no `user_id` (the operator is not
//! a Frenly user). The audit log is opened before the change: a command
//! that cannot audit changes nothing.

use std::io::{BufRead, IsTerminal};

use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{runtime, CmdResult, Failure};
use crate::authn::{identity, jwt, password};
use crate::authz::{PermissionSet, Roles};
use crate::config::Config;
use crate::monitoring::audit::{Audit, AuditEvent};
use crate::store::{self, Db};

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a key for a user (the key is printed once).
    Create {
        #[arg(long)]
        user: String,
        #[arg(long, value_delimiter = ',')]
        permissions: Option<Vec<String>>,
        #[arg(long)]
        expires_in_days: Option<f64>,
        /// A label for the key.
        #[arg(long, default_value = "created with frenly keys create")]
        name: String,
    },
    /// List keys (never the secrets).
    List,
    /// Revoke a key by id.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum UsersCmd {
    /// Add a user; the password is read from stdin or a prompt.
    Add {
        username: String,
        #[arg(long, default_value = "user")]
        role: Vec<String>,
        #[arg(long)]
        email: Option<String>,
    },
    /// List users.
    List,
    /// Remove a user (revokes their keys and tokens).
    Remove { username: String },
    /// Set a user's password (read from stdin or a prompt); the JWTs issued
    /// before stop working.
    Passwd { username: String },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub user: String,
}

/// Open the database of an initialised data directory. A SQLite database
/// that does not exist is an error rather than a new data directory with
/// fresh secrets: a mistyped `--data-dir` would otherwise list no keys and
/// no users, and a user added there would stop `serve` from creating the
/// first admin (only `serve` and `init` create it and print its key).
pub(super) async fn open(cfg: &Config) -> Result<Db, Failure> {
    if let Some(path) = cfg.sqlite_path() {
        if !std::path::Path::new(path).exists() {
            return Err(Failure::refused(format!(
                "no database at {path}: run `frenly init` or `frenly serve` with this --data-dir (or database.url) first"
            )));
        }
    } else if !cfg.data_dir.exists() {
        // on PostgreSQL the data dir holds only files: a mistyped one was
        // created, with a JWT secret and a certificate of its own (probe I)
        return Err(Failure::refused(format!(
            "no data directory at {}: run `frenly init` or `frenly serve` with this --data-dir first",
            cfg.data_dir.display()
        )));
    }
    Ok(crate::app::bootstrap::prepare(cfg).await?.db)
}

/// The audit log, opened before a command changes anything.
pub(super) fn open_audit(cfg: &Config, db: &Db) -> Result<Audit, Failure> {
    Audit::start(cfg, db.clone()).map_err(|e| {
        Failure::refused(format!(
            "cannot open the audit log {} (audit.file): {e}",
            cfg.audit_file.display()
        ))
    })
}

/// Record what an offline command did, and wait until it is written.
pub(super) async fn audited(audit: &Audit, ev: AuditEvent) {
    audit.record(ev.field("via", "cli")).await;
    audit.flush().await;
}

fn fail_store(e: store::StoreError) -> Failure {
    Failure::refused(format!("database: {e}"))
}

fn identity_failure(e: identity::IdentityError) -> Failure {
    match e {
        identity::IdentityError::Validation(f) => Failure::usage(
            f.into_iter()
                .map(|(k, v)| format!("{k}: {}", v.join(", ")))
                .collect::<Vec<_>>()
                .join("; "),
        ),
        identity::IdentityError::Conflict(m) => Failure::refused(m),
        identity::IdentityError::NotFound => Failure::refused("not found"),
        other => Failure::refused(other),
    }
}

/// The user an operator names: names are unique up to letter case (`users
/// add Alice` is refused next to `alice`), so `--user Alice` finds `alice`.
async fn user_by_name(db: &Db, username: &str) -> Result<store::users::User, Failure> {
    store::users::by_username_any_case(db, username)
        .await
        .map_err(fail_store)?
        .ok_or_else(|| Failure::refused(format!("no user named `{username}`")))
}

pub fn keys(cfg: Config, cmd: KeysCmd) -> CmdResult {
    runtime()?.block_on(async move {
        let db = open(&cfg).await?;
        let roles = Roles::new(&cfg.roles);
        match cmd {
            KeysCmd::Create {
                user,
                permissions,
                expires_in_days,
                name,
            } => {
                let u = user_by_name(&db, &user).await?;
                let own = roles.permissions(u.roles.iter().map(String::as_str));
                let perms = match permissions {
                    None => own,
                    Some(list) => PermissionSet::parse(list.iter().map(|s| s.trim()))
                        .map_err(|bad| Failure::usage(format!("unknown permission `{bad}`")))?,
                };
                if !own.covers(perms) {
                    return Err(Failure::refused(format!(
                        "user `{user}` does not hold every requested permission"
                    )));
                }
                let days = match expires_in_days {
                    None => cfg.auth.key_default_expiry_days,
                    Some(d) => identity::check_days(&serde_json::json!(d)).map_err(Failure::usage)?,
                };
                if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
                    return Err(Failure::usage("--name must have 1 to 100 characters"));
                }
                let expires_at = identity::expiry(store::now_ms(), days);
                let audit = open_audit(&cfg, &db)?;
                let k = identity::create_key(&db, &u.id, &name, perms, expires_at)
                    .await
                    .map_err(identity_failure)?;
                let created = AuditEvent::new("key_created")
                    .field("key_id", k.id.as_str())
                    .field("owner_id", u.id.as_str())
                    .field("name", k.name.as_str())
                    .field("permissions", k.permissions.clone())
                    .field("expires_at", store::rfc3339(k.expires_at));
                audited(&audit, created).await;
                if let Err(e) = super::write_stdout(format_args!("{}\n", k.key.as_str())) {
                    // nobody saw the secret: a key no one holds is revoked
                    if store::keys::revoke(&db, &k.id, store::now_ms()).await.is_ok() {
                        let revoked = AuditEvent::new("key_revoked")
                            .field("key_id", k.id.as_str())
                            .field("owner_id", u.id.as_str())
                            .field("reason", "never shown");
                        audited(&audit, revoked).await;
                    }
                    return Err(Failure::refused(format!(
                        "{}; key {} was created but never shown, so it was revoked",
                        e.message, k.id
                    )));
                }
                crate::errln!(
                    "frenly: created key {} for `{}` ({}), expires {}; the key above is shown only once",
                    k.id,
                    u.username,
                    k.permissions.join(","),
                    store::rfc3339(k.expires_at)
                );
                Ok(0)
            }
            KeysCmd::List => {
                let now = store::now_ms();
                outln!("ID\tUSER\tNAME\tPERMISSIONS\tEXPIRES\tLAST_USED\tSTATUS")?;
                for k in store::keys::list(&db, None).await.map_err(fail_store)? {
                    let j = identity::key_json(&k, now);
                    outln!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        k.id,
                        k.username,
                        k.name.replace(['\t', '\n'], " "),
                        k.permissions.join(","),
                        j.get("expires_at").and_then(|v| v.as_str()).unwrap_or("-"),
                        j.get("last_used_at").and_then(|v| v.as_str()).unwrap_or("-"),
                        j.get("status").and_then(|v| v.as_str()).unwrap_or("-"),
                    )?;
                }
                Ok(0)
            }
            KeysCmd::Revoke { id } => {
                let Some(k) = store::keys::by_id(&db, &id).await.map_err(fail_store)? else {
                    return Err(Failure::refused(format!("no key with id `{id}`")));
                };
                let audit = open_audit(&cfg, &db)?;
                store::keys::revoke(&db, &id, store::now_ms())
                    .await
                    .map_err(fail_store)?;
                let revoked = AuditEvent::new("key_revoked")
                    .field("key_id", id.as_str())
                    .field("owner_id", k.user_id.as_str());
                audited(&audit, revoked).await;
                crate::errln!("frenly: key {id} revoked");
                tell_instances(&cfg).await;
                Ok(0)
            }
        }
    })
}

/// With Redis, tell running instances that credentials changed (the change
/// itself is already in the database; failing here only delays it to the
/// cache's TTL, which the warning says).
async fn tell_instances(cfg: &Config) {
    let Some(url) = &cfg.state.redis_url else {
        return;
    };
    if let Err(e) =
        crate::state::redis::RedisState::bump_epoch_offline(url, &cfg.state.redis_prefix).await
    {
        crate::errln!(
            "frenly: warning: could not reach Redis ({e}); running instances notice within {} s",
            crate::authn::CACHE_TTL_MS / 1000
        );
    }
}

/// The password: one line from stdin when it is not a terminal, else a
/// prompt (twice) without echo.
fn read_password() -> Result<Zeroizing<String>, Failure> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = Zeroizing::new(String::new());
        stdin.lock().read_line(&mut line).map_err(|e| {
            // bytes that are not UTF-8 are a password the rules refuse
            // (exit 2, as for one too short), not a failed read
            if e.kind() == std::io::ErrorKind::InvalidData {
                Failure::usage("the password must be UTF-8 text")
            } else {
                Failure::refused(format!("reading the password from stdin: {e}"))
            }
        })?;
        let pw = line.trim_end_matches(['\n', '\r']).to_string();
        return Ok(Zeroizing::new(pw));
    }
    let a = Zeroizing::new(
        rpassword::prompt_password("Password: ")
            .map_err(|e| Failure::refused(format!("reading the password: {e}")))?,
    );
    let b = Zeroizing::new(
        rpassword::prompt_password("Repeat password: ")
            .map_err(|e| Failure::refused(format!("reading the password: {e}")))?,
    );
    if *a != *b {
        return Err(Failure::refused("the passwords differ"));
    }
    Ok(a)
}

pub fn users(cfg: Config, cmd: UsersCmd) -> CmdResult {
    runtime()?.block_on(async move {
        let roles = Roles::new(&cfg.roles);
        match cmd {
            UsersCmd::Add {
                username,
                role,
                email,
            } => {
                let mut errs = Vec::new();
                if !identity::valid_username(&username) {
                    errs.push(
                        "username must be 3 to 20 letters, digits or underscores".to_string(),
                    );
                }
                if let Some(e) = &email {
                    if !identity::valid_email(e) {
                        errs.push("email is not a valid address".into());
                    }
                }
                let mut f = crate::http::FieldErrors::new();
                let role_value = serde_json::json!(role);
                let role = identity::check_roles(&mut f, Some(&role_value), &roles);
                errs.extend(f.into_values().flatten());
                if !errs.is_empty() {
                    return Err(Failure::usage(errs.join("; ")));
                }
                let pw = read_password()?;
                identity::validate_password(&pw).map_err(Failure::usage)?;
                let db = open(&cfg).await?;
                let audit = open_audit(&cfg, &db)?;
                let hash = tokio::task::spawn_blocking(move || password::hash_blocking(&pw))
                    .await
                    .map_err(Failure::refused)??;
                let new = identity::NewUser {
                    username,
                    email: email.unwrap_or_default(),
                    password: Zeroizing::new(String::new()),
                    roles: role,
                };
                let u = identity::insert_user(&db, &new, hash)
                    .await
                    .map_err(identity_failure)?;
                let created = AuditEvent::new("user_created")
                    .field("target_user_id", u.id.as_str())
                    .field("username", u.username.as_str())
                    .field("roles", u.roles.clone());
                audited(&audit, created).await;
                outln!("{}", u.id)?;
                crate::errln!(
                    "frenly: created user `{}` ({})",
                    u.username,
                    u.roles.join(",")
                );
                Ok(0)
            }
            UsersCmd::List => {
                let db = open(&cfg).await?;
                outln!("ID\tUSERNAME\tEMAIL\tROLES\tCREATED")?;
                for u in store::users::list(&db).await.map_err(fail_store)? {
                    outln!(
                        "{}\t{}\t{}\t{}\t{}",
                        u.id,
                        u.username,
                        u.email,
                        u.roles.join(","),
                        store::rfc3339(u.created_at)
                    )?;
                }
                Ok(0)
            }
            UsersCmd::Passwd { username } => {
                let pw = read_password()?;
                identity::validate_password(&pw).map_err(Failure::usage)?;
                let db = open(&cfg).await?;
                let u = user_by_name(&db, &username).await?;
                let audit = open_audit(&cfg, &db)?;
                let hash = tokio::task::spawn_blocking(move || password::hash_blocking(&pw))
                    .await
                    .map_err(Failure::refused)??;
                // tokens issued up to this millisecond stop working
                // (`Claims::issued_before`); rounded down to the second, the
                // cut-off let a token issued earlier in the same second pass
                let valid_after = store::now_ms();
                if !store::users::set_password(&db, &u.id, &hash, valid_after)
                    .await
                    .map_err(fail_store)?
                {
                    return Err(Failure::refused(format!("no user `{username}`")));
                }
                let changed = AuditEvent::new("password_changed")
                    .field("target_user_id", u.id.as_str())
                    .field("username", u.username.as_str());
                audited(&audit, changed).await;
                crate::errln!(
                    "frenly: set the password of `{username}`; the tokens issued before no longer work"
                );
                tell_instances(&cfg).await;
                Ok(0)
            }
            UsersCmd::Remove { username } => {
                let db = open(&cfg).await?;
                let u = user_by_name(&db, &username).await?;
                let audit = open_audit(&cfg, &db)?;
                identity::delete_user(&db, &u)
                    .await
                    .map_err(identity_failure)?;
                let deleted = AuditEvent::new("user_deleted")
                    .field("target_user_id", u.id.as_str())
                    .field("username", u.username.as_str());
                audited(&audit, deleted).await;
                crate::errln!("frenly: removed user `{username}`, their keys and tokens");
                tell_instances(&cfg).await;
                Ok(0)
            }
        }
    })
}

pub fn token(cfg: Config, args: TokenArgs) -> CmdResult {
    runtime()?.block_on(async move {
        let db = open(&cfg).await?;
        let u = user_by_name(&db, &args.user).await?;
        let roles = Roles::new(&cfg.roles);
        let perms = roles.permissions(u.roles.iter().map(String::as_str));
        let secret = jwt::read_secret(&cfg.jwt_secret_file)?;
        let v = jwt::Verifier::new(
            secret,
            &cfg.auth.jwt_algorithms,
            cfg.auth.jwt_leeway_seconds,
        )
        .map_err(Failure::refused)?;
        let ttl = (cfg.auth.jwt_ttl_hours as i64).saturating_mul(3600);
        let names = perms.names().into_iter().map(String::from).collect();
        let claims = jwt::Claims::issue(&u.id, names, store::now_ms(), ttl);
        let token = v.sign(&claims).map_err(Failure::refused)?;
        let audit = open_audit(&cfg, &db)?;
        let issued = AuditEvent::new("token_issued")
            .field("target_user_id", u.id.as_str())
            .field("username", u.username.as_str())
            .field("jti", claims.jti.as_str())
            .field(
                "expires_at",
                store::rfc3339(claims.exp.saturating_mul(1000)),
            );
        audited(&audit, issued).await;
        outln!("{token}")?;
        crate::errln!(
            "frenly: token for `{}` valid until {}",
            u.username,
            store::rfc3339(claims.exp.saturating_mul(1000))
        );
        Ok(0)
    })
}
