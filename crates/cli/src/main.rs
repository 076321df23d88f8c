//! `agora`: run a node, a local devnet, submit jobs, inspect a node, benchmark.
//!
//! This file only parses arguments and dispatches; each command lives in its own module.

mod client;
mod cmd;
mod devnet;
mod logging;
mod run_node;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cmd::Cli::parse();
    match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
