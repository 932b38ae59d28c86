//! `frenly check`, `firewall`, `audit`, `monitor`, `bench`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::{CmdResult, Failure, Global};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct FirewallArgs {
    #[arg(long, value_parser = ["iptables", "nftables", "ufw"])]
    pub format: String,
    /// Apply the rules (default: print only).
    #[arg(long)]
    pub apply: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain of one or more files (in order).
    Verify { files: Vec<PathBuf> },
    /// Follow the audit log.
    Tail,
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Run the checks once and exit (1 when something was found).
    #[arg(long)]
    pub once: bool,
    /// Record the file-integrity baseline and exit.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn firewall(_cfg: Config, _a: FirewallArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn check(_g: &Global) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn audit(_g: &Global, _c: AuditCmd) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn monitor(_cfg: Config, _a: MonitorArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
pub fn bench(_g: &Global, _a: BenchArgs) -> CmdResult {
    Err(Failure::refused("not implemented yet"))
}
