//! Runs one benchmark and prints its JSON report: the way to measure before `agora bench` is
//! wired in the CLI, and a handy harness afterwards.
//!
//! ```text
//! cargo run --release -p agora-bench --example run -- NAME [--smoke] [--nodes N]
//!     [--secs S] [--iterations K] [--latency-ms L]
//! ```

use agora_bench::{BENCHES, Opts};

fn usage() -> String {
    format!(
        "usage: run NAME [--smoke] [--nodes N] [--secs S] [--iterations K] [--latency-ms L]\nNAME: {}",
        BENCHES.join(", ")
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or_else(|| anyhow::anyhow!(usage()))?;
    let mut opts = Opts::default();
    while let Some(flag) = args.next() {
        let mut value = || -> anyhow::Result<String> {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{}", usage()))
        };
        match flag.as_str() {
            "--smoke" => opts.smoke = true,
            "--nodes" => opts.nodes = Some(value()?.parse()?),
            "--secs" => opts.duration_secs = Some(value()?.parse()?),
            "--iterations" => opts.iterations = Some(value()?.parse()?),
            "--latency-ms" => opts.latency_ms = Some(value()?.parse()?),
            other => anyhow::bail!("unknown flag {other}\n{}", usage()),
        }
    }
    let report = agora_bench::run(&name, &opts).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
