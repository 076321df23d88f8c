//! `agora bench NAME`: run one benchmark in this process and print its JSON report.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The benchmark: rr, dispatch, gossip, exec, scale, ledger, train or infer (see
    /// BENCHMARKS.md).
    pub name: String,
    /// Print only the JSON report (the default prints it pretty).
    #[arg(long)]
    pub json: bool,
    /// Tiny sizes: checks that the benchmark runs, in seconds (figures are meaningless).
    #[arg(long)]
    pub smoke: bool,
    /// Number of nodes (gossip, scale).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// Idle or run time in seconds (scale).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Requests, messages or runs, depending on the benchmark.
    #[arg(long)]
    pub iterations: Option<usize>,
    /// Injected one-way link latency in milliseconds (gossip).
    #[arg(long)]
    pub latency_ms: Option<u64>,
}

pub fn run(a: BenchArgs) -> Result<ExitCode> {
    let opts = agora_bench::Opts {
        smoke: a.smoke,
        nodes: a.nodes,
        duration_secs: a.duration,
        iterations: a.iterations,
        latency_ms: a.latency_ms,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = rt.block_on(agora_bench::run(&a.name, &opts))?;
    if a.json {
        outln!("{report}");
    } else {
        outln!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
