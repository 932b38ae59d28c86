//! `frenly encrypt-file`, `decrypt-file`, `encrypt-field`, `decrypt-field`, `keyring`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CmdResult, Failure};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct FileArgs {
    pub input: PathBuf,
    pub output: PathBuf,
    #[arg(long)]
    pub key_file: PathBuf,
}

#[derive(Debug, Args)]
pub struct FieldArgs {
    /// The value (read from stdin when absent).
    pub value: Option<String>,
    #[arg(long)]
    pub key_file: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum KeyringCmd {
    /// Add a new data-encryption key; old data stays readable.
    Rotate {
        /// Rewrite existing rows under the new key.
        #[arg(long)]
        reencrypt: bool,
    },
}

pub fn encrypt_file(_a: FileArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn decrypt_file(_a: FileArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn encrypt_field(_a: FieldArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn decrypt_field(_a: FieldArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn keyring(_cfg: Config, _c: KeyringCmd) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
