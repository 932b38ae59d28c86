//! `frenly`: parse the command line, run, exit with the contract's code.

use clap::Parser;

/// mimalloc: the request path allocates many small, short-lived buffers;
/// glibc's allocator showed up at ~13% of a profile under load.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_LOG: &str = "info,sqlx::postgres::notice=warn";

fn main() {
    let cli = frenly::cli::Cli::parse();
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
