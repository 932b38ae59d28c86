//! `frenly`: parse the command line, run, exit with the contract's code.

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};

/// mimalloc: the request path allocates many small, short-lived buffers;
/// glibc's allocator showed up at ~13% of a profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_LOG: &str = "info,sqlx::postgres::notice=warn";

fn main() {
    let cli = match frenly::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => std::process::exit(parse_failure(&e)),
    };
    init_logging();
    let code = match frenly::cli::run(cli) {
        Ok(code) => code,
        Err(f) => {
            frenly::errln!("frenly: error: {}", f.message.replace('\n', " "));
            f.code
        }
    };
    std::process::exit(code);
}

/// `info` by default (`RUST_LOG` overrides), but PostgreSQL's notices
/// (`relation "_sqlx_migrations" already exists, skipping` at every
/// connect) only from warnings up: a command's stderr is its one line.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// What clap refused, as the contract's one stderr line ("Errors go to
/// stderr, one clear line"; clap's own block was 3-4 lines, and a group
/// without its subcommand, `frenly keys`, printed the whole help), with
/// exit 2; `--help` and `--version` print as clap does, exit 0.
fn parse_failure(e: &clap::Error) -> i32 {
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            0
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
            frenly::errln!(
                "frenly: error: {}",
                missing_subcommand(std::env::args().skip(1))
            );
            2
        }
        _ => {
            frenly::errln!("frenly: error: {}", one_line(&e.render().to_string()));
            2
        }
    }
}

/// Clap's message without its `error: ` prefix, `Usage:` block and
/// closing hint, its remaining lines (the arguments missing, a tip) joined.
fn one_line(rendered: &str) -> String {
    let body = rendered.split("\nUsage:").next().unwrap_or(rendered);
    let body = body.split("\nFor more information").next().unwrap_or(body);
    let parts: Vec<&str> = body
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let text = parts.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    format!("{text} (see --help)")
}

/// `frenly keys` (a group without its subcommand): which subcommands there
/// are, found by walking the arguments down the command tree.
fn missing_subcommand(args: impl Iterator<Item = String>) -> String {
    let mut cmd = frenly::cli::Cli::command();
    let mut path = vec![cmd.get_name().to_string()];
    let mut args = args;
    while let Some(a) = args.next() {
        if a == "--config" || a == "--data-dir" {
            args.next();
            continue;
        }
        let next = cmd
            .get_subcommands()
            .find(|c| c.get_name() == a || c.get_all_aliases().any(|x| x == a))
            .cloned();
        match next {
            Some(c) => {
                path.push(c.get_name().to_string());
                cmd = c;
            }
            None if a.starts_with('-') => {}
            None => break,
        }
    }
    let subs: Vec<&str> = cmd
        .get_subcommands()
        .map(|c| c.get_name())
        .filter(|n| *n != "help")
        .collect();
    let path = path.join(" ");
    format!(
        "`{path}` needs a subcommand: {} (see `{path} --help`)",
        subs.join(", ")
    )
}
