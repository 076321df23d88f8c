//! `agora`: run a node, a local devnet, submit jobs, inspect a node, benchmark.
//!
//! This file only parses arguments and dispatches; each command lives in its own module.

/// `println!` that stops quietly when stdout is closed (`agora job list | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        if writeln!(out, $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

mod bench;
mod client;
mod cmd;
mod dashboard;
mod devnet;
mod estimate;
mod job;
mod jobs;
mod logging;
mod run_node;
mod timefmt;
mod token;
mod wallet;
mod workload;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if let Some(hint) = client::token_hint(&e) {
                eprintln!("{hint}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}
