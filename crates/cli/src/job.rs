//! `agora job`: submit work to a node and follow it.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::client::Api;

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Upload a WebAssembly module (a WASI command: stdin in, stdout out) and its input, and
    /// submit the job. With --wait, follow it and print its output.
    Submit(SubmitArgs),
    /// Show a job's state, why it waits or failed, its bids, workers and results.
    Status(IdArgs),
    /// Write a verified job's output to stdout or a file.
    Output(OutputArgs),
    /// List the jobs this node submitted.
    List(ListArgs),
    /// Cancel a job.
    Cancel(IdArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The module, a .wasm file.
    pub module: PathBuf,
    /// The input given on stdin: a file, or - for this process's stdin.
    #[arg(long)]
    pub input: Option<String>,
    /// An argument for the module (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// How many independent workers must agree on the output (1..=9).
    #[arg(long, default_value_t = 3)]
    pub redundancy: u8,
    /// The most paid to one worker per execution.
    #[arg(long, default_value_t = 100)]
    pub max_price: u64,
    /// Fuel limit (about one unit per instruction).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// Memory limit in bytes.
    #[arg(long)]
    pub memory: Option<u64>,
    /// Wall-time limit in milliseconds.
    #[arg(long)]
    pub wall_time_ms: Option<u64>,
    /// Wait for the result, show progress and print the output.
    #[arg(long)]
    pub wait: bool,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's HTTP API.
    #[arg(long, env = "AGORA_API", default_value = "127.0.0.1:7460")]
    pub api: String,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The job id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's HTTP API.
    #[arg(long, env = "AGORA_API", default_value = "127.0.0.1:7460")]
    pub api: String,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// The job id.
    pub id: String,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// The node's HTTP API.
    #[arg(long, env = "AGORA_API", default_value = "127.0.0.1:7460")]
    pub api: String,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The node's HTTP API.
    #[arg(long, env = "AGORA_API", default_value = "127.0.0.1:7460")]
    pub api: String,
}

pub fn run(cmd: JobCommand) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match cmd {
            JobCommand::Submit(a) => submit(a).await,
            JobCommand::Status(a) => status(a).await,
            JobCommand::Output(a) => output(a).await,
            JobCommand::List(a) => list(a).await,
            JobCommand::Cancel(a) => {
                let api = Api::new(&a.api)?;
                let v = api
                    .post_json(&format!("/v1/jobs/{}/cancel", a.id), &json!({}))
                    .await?;
                outln!("{v}");
                Ok(ExitCode::SUCCESS)
            }
        }
    })
}

fn read_input(spec: &Option<String>) -> Result<Vec<u8>> {
    match spec.as_deref() {
        None => Ok(vec![]),
        Some("-") => {
            let mut b = vec![];
            std::io::stdin().read_to_end(&mut b)?;
            Ok(b)
        }
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read input {path}")),
    }
}

/// Uploads a module and input and submits the job; returns the job id.
pub async fn upload_and_submit(
    api: &Api,
    module: &[u8],
    input: &[u8],
    spec: Value,
) -> Result<String> {
    let m = api.post_bytes("/v1/blobs", module.to_vec()).await?;
    let i = api.post_bytes("/v1/blobs", input.to_vec()).await?;
    let mut spec = spec;
    spec["module"] = m["hash"].clone();
    spec["input"] = i["hash"].clone();
    let r = api.post_json("/v1/jobs", &spec).await?;
    r["id"]
        .as_str()
        .map(str::to_string)
        .context("the node answered without a job id")
}

async fn submit(a: SubmitArgs) -> Result<ExitCode> {
    let module = std::fs::read(&a.module)
        .with_context(|| format!("cannot read module {}", a.module.display()))?;
    if !module.starts_with(b"\0asm") {
        bail!(
            "{} is not a WebAssembly module (it does not start with \\0asm); compile your program to wasm32-wasi",
            a.module.display()
        );
    }
    let input = read_input(&a.input)?;
    let api = Api::new(&a.api)?;
    let mut spec = json!({
        "args": a.args,
        "redundancy": a.redundancy,
        "max_price": a.max_price,
    });
    if let Some(f) = a.fuel {
        spec["fuel"] = json!(f);
    }
    if let Some(m) = a.memory {
        spec["memory_bytes"] = json!(m);
    }
    if let Some(w) = a.wall_time_ms {
        spec["wall_time_ms"] = json!(w);
    }
    let id = upload_and_submit(&api, &module, &input, spec).await?;
    if !a.wait {
        if a.json {
            outln!("{}", json!({"id": id}));
        } else {
            outln!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let record = wait(&api, &id).await?;
    let state = record["state"].as_str().unwrap_or("?");
    if state == "verified" {
        let bytes = api.get_bytes(&format!("/v1/jobs/{id}/output")).await?;
        if a.json {
            outln!(
                "{}",
                json!({"id": id, "state": state, "output": String::from_utf8_lossy(&bytes), "workers": record["quorum"]})
            );
        } else {
            std::io::stdout().write_all(&bytes)?;
        }
        Ok(ExitCode::SUCCESS)
    } else {
        let reason = record["reason"].as_str().unwrap_or("no reason given");
        if a.json {
            outln!("{}", json!({"id": id, "state": state, "reason": reason}));
        }
        bail!("job {id} {state}: {reason}")
    }
}

/// Follows a job until it is final, with a spinner that says what it waits for.
pub async fn wait(api: &Api, id: &str) -> Result<Value> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    loop {
        let r = api.get_json(&format!("/v1/jobs/{id}")).await?;
        let state = r["state"].as_str().unwrap_or("?").to_string();
        let s = &r["summary"];
        bar.set_message(format!(
            "{state}: {} bids, {} results{}",
            s["bids"],
            s["results"],
            r["reason"]
                .as_str()
                .map(|w| format!(" - {w}"))
                .unwrap_or_default()
        ));
        if state == "verified" || state == "failed" {
            bar.finish_and_clear();
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status(a: IdArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api)?;
    let r = api.get_json(&format!("/v1/jobs/{}", a.id)).await?;
    if a.json {
        outln!("{r}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!("job      {}", a.id);
    outln!("state    {}", r["state"].as_str().unwrap_or("?"));
    if let Some(w) = r["reason"].as_str() {
        outln!("reason   {w}");
    }
    outln!("bids     {}", r["bids"].as_array().map_or(0, |b| b.len()));
    for l in r["leases"].as_array().into_iter().flatten() {
        outln!(
            "lease    {} price {} {}",
            l["worker"].as_str().unwrap_or("?"),
            l["price"],
            l["status"].as_str().unwrap_or("?")
        );
    }
    for x in r["results"].as_array().into_iter().flatten() {
        let agreed = match x["agreed"].as_bool() {
            Some(true) => "agreed",
            Some(false) => "OUTVOTED",
            None => "pending",
        };
        outln!(
            "result   {} verdict {} {agreed}",
            x["worker"].as_str().unwrap_or("?"),
            &x["verdict"].as_str().unwrap_or("?")
                [..8.min(x["verdict"].as_str().unwrap_or("?").len())],
        );
    }
    for t in r["timeline"].as_array().into_iter().flatten() {
        outln!("  {}  {}", t["at_ms"], t["event"].as_str().unwrap_or(""));
    }
    Ok(ExitCode::SUCCESS)
}

async fn output(a: OutputArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api)?;
    let bytes = api.get_bytes(&format!("/v1/jobs/{}/output", a.id)).await?;
    match a.output {
        Some(p) => {
            std::fs::write(&p, &bytes).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => std::io::stdout().write_all(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(a: ListArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api)?;
    let v = api.get_json("/v1/jobs").await?;
    if a.json {
        outln!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<66} {:<9} {:>5} {:>8}  REASON",
        "JOB",
        "STATE",
        "BIDS",
        "LATENCY"
    );
    for j in v.as_array().into_iter().flatten() {
        outln!(
            "{:<66} {:<9} {:>5} {:>8}  {}",
            j["id"].as_str().unwrap_or("?"),
            j["state"].as_str().unwrap_or("?"),
            j["bids"],
            j["latency_ms"]
                .as_u64()
                .map_or("-".into(), |l| format!("{l}ms")),
            j["reason"].as_str().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}
