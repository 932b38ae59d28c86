//! `frenly`: parse the command line, run, exit with the contract's code.

use clap::Parser;

fn main() {
    let cli = frenly::cli::Cli::parse();
    init_logging();
    let code = match frenly::cli::run(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("frenly: error: {}", f.message.replace('\n', " "));
            f.code
        }
    };
    std::process::exit(code);
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
