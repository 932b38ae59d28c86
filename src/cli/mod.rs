//! The command line: every command of the contract, one place that turns
//! failures into one stderr line and an exit code (0 success, 1 check failed
//! or operation refused, 2 usage or configuration error).
//!
//! Command output goes through [`outln!`] / [`write_stdout`], never
//! `println!`: `println!` panics when standard output is a closed pipe
//! (`frenly firewall --format nftables | nft -c -f -` with `nft` missing,
//! `frenly users list | head -1`), and the contract allows no panic. A
//! failed write is one stderr line and exit 1, like any refused operation.
//! Notes and errors go through [`errln!`], never `eprintln!`, for the same
//! reason on standard error.

/// `eprintln!` for notes and errors, which ignores a failed write:
/// `eprintln!` panics when standard error is a closed pipe too
/// (`frenly keys list 2>&1 | head -1`), and there is nowhere left to say so.
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `println!` for command output, returning `Result<(), Failure>`.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

pub mod crypto;
pub mod identity;
pub mod ops;
pub mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, Source};

#[derive(Debug, Parser)]
#[command(
    name = "frenly",
    version,
    about = "A security server for AI-agent task APIs"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts, before or after its name.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Configuration file (.json or .toml).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (default ./frenly-data).
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve,
    /// Write a commented config, keys and a certificate; print the admin key once.
    Init,
    /// Configuration commands.
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Manage API keys offline.
    #[command(subcommand)]
    Keys(identity::KeysCmd),
    /// Manage users offline.
    #[command(subcommand)]
    Users(identity::UsersCmd),
    /// Mint a JWT for a user.
    Token(identity::TokenArgs),
    /// Encrypt a file into a raw Fernet token (the guide's FileEncryption).
    EncryptFile(crypto::FileArgs),
    /// Decrypt a raw Fernet token file.
    DecryptFile(crypto::FileArgs),
    /// Encrypt one value (the guide's DataEncryption: base64 of the token).
    EncryptField(crypto::FieldArgs),
    /// Decrypt one value.
    DecryptField(crypto::FieldArgs),
    /// Data-encryption keyring commands.
    #[command(subcommand)]
    Keyring(crypto::KeyringCmd),
    /// Print firewall rules derived from the config.
    Firewall(ops::FirewallArgs),
    /// The pre-deployment checklist.
    Check,
    /// Audit log commands.
    #[command(subcommand)]
    Audit(ops::AuditCmd),
    /// The security monitor.
    Monitor(ops::MonitorArgs),
    /// The load benchmark (see docs/BENCHMARKS.md).
    Bench(ops::BenchArgs),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Print the effective configuration, secrets redacted.
    Show,
}

/// A command failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn usage(msg: impl std::fmt::Display) -> Failure {
        Failure {
            code: 2,
            message: msg.to_string(),
        }
    }
    pub fn refused(msg: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            message: msg.to_string(),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        if let Some(c) = e.downcast_ref::<config::ConfigError>() {
            return Failure::usage(c);
        }
        Failure::refused(chain_text(&e))
    }
}

/// An error and its causes on one line, each cause once: a cause whose
/// text its error already holds (thiserror's `{0}` over a `#[from]`
/// source, sqlx's wrapped database errors) is not repeated (a corrupt
/// database printed the same text four times).
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(text.as_str()) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

impl From<config::ConfigError> for Failure {
    fn from(e: config::ConfigError) -> Failure {
        Failure::usage(e)
    }
}

pub type CmdResult = Result<i32, Failure>;

/// Load the configuration for a command.
pub fn load_config(g: &Global) -> Result<Config, Failure> {
    Ok(config::load(&Source::from_process(
        g.config.clone(),
        g.data_dir.clone(),
    ))?)
}

/// Run a parsed command line; returns the exit code.
pub fn run(cli: Cli) -> CmdResult {
    let g = &cli.global;
    match cli.command {
        Command::Serve => serve::serve(load_config(g)?),
        Command::Init => serve::init(load_config(g)?),
        Command::Config(ConfigCmd::Show) => {
            let cfg = load_config(g)?;
            let text = serde_json::to_string_pretty(&cfg.redacted()).map_err(Failure::refused)?;
            outln!("{text}")?;
            Ok(0)
        }
        Command::Keys(c) => identity::keys(load_config(g)?, c),
        Command::Users(c) => identity::users(load_config(g)?, c),
        Command::Token(a) => identity::token(load_config(g)?, a),
        Command::EncryptFile(a) => crypto::encrypt_file(a),
        Command::DecryptFile(a) => crypto::decrypt_file(a),
        Command::EncryptField(a) => crypto::encrypt_field(a),
        Command::DecryptField(a) => crypto::decrypt_field(a),
        Command::Keyring(c) => crypto::keyring(load_config(g)?, c),
        Command::Firewall(a) => ops::firewall(load_config(g)?, a),
        Command::Check => ops::check(g),
        Command::Audit(c) => ops::audit(g, c),
        Command::Monitor(a) => ops::monitor(load_config(g)?, a),
        Command::Bench(a) => ops::bench(g, a),
    }
}

/// Write command output to standard output (see the module docs).
pub fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|e| Failure::refused(format!("cannot write the output: {e}")))
}

/// A multi-threaded runtime for commands that need async.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::refused(format!("cannot start the runtime: {e}")))
}

#[cfg(test)]
mod chain_tests {
    use super::chain_text;

    #[derive(Debug, thiserror::Error)]
    #[error("migration failed: {0}")]
    struct Outer(#[from] std::io::Error);

    #[test]
    fn an_error_line_names_each_cause_once() {
        let e = anyhow::Error::from(Outer(std::io::Error::other("disk is full")));
        assert_eq!(chain_text(&e), "migration failed: disk is full");
        let e = anyhow::Error::from(std::io::Error::other("denied")).context("cannot open x");
        assert_eq!(chain_text(&e), "cannot open x: denied");
    }
}
