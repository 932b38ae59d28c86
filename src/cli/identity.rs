//! `frenly keys`, `frenly users`, `frenly token` (offline identity management).

use clap::{Args, Subcommand};

use super::{CmdResult, Failure};
use crate::config::Config;

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
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[arg(long)]
    pub user: String,
}

pub fn keys(_cfg: Config, _cmd: KeysCmd) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}

pub fn users(_cfg: Config, _cmd: UsersCmd) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}

pub fn token(_cfg: Config, _args: TokenArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
