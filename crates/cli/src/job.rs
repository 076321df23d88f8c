//! `agora job`: submit work to a node and follow it.
//!
//! Every answer of the node is read through the API's types ([`agora_api_types`]). A job whose
//! program failed is shown as a failure: its exit code and stderr are printed and the command
//! exits with [`EXIT_PROGRAM_FAILED`] (the program exited non-zero, trapped or broke a limit) or
//! [`EXIT_JOB_FAILED`] (the network gave up: deadline, cancelled, no quorum, no workers).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use agora_api_types::{Client, FailReason, JobState, JobView, SubmitRequest, defaults};
use agora_types::job::Compare;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::cmd::ApiArgs;
use crate::timefmt::{rfc3339, since};

/// The exit code when the job's program failed: it exited non-zero, trapped or broke a limit.
pub const EXIT_PROGRAM_FAILED: u8 = 3;
/// The exit code when the job failed otherwise: deadline, cancelled, no quorum, no workers.
pub const EXIT_JOB_FAILED: u8 = 4;

/// What `--help` says about the exit codes of the commands that report a job's ending.
const EXIT_CODES: &str = "Exit codes: 0 the job succeeded (or is still running, for `status`); \
1 the command itself failed (node unreachable, bad flags); 3 the job's program failed: it exited \
non-zero, trapped or broke a limit (its exit code and stderr are printed); 4 the job failed \
otherwise: deadline, cancelled, no quorum, no workers.";

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Upload a WebAssembly module (a WASI command: stdin in, stdout out) and its input, and
    /// submit the job. With --wait, follow it and print its output.
    #[command(after_help = EXIT_CODES)]
    Submit(SubmitArgs),
    /// Show a job's state, why it waits or failed, its exit code and stderr, its bids, workers,
    /// results and timeline.
    #[command(after_help = EXIT_CODES)]
    Status(IdArgs),
    /// Write a verified job's output to stdout or a file.
    #[command(after_help = EXIT_CODES)]
    Output(OutputArgs),
    /// List the jobs this node submitted.
    List(ListArgs),
    /// Cancel a job: it is no longer leased, and its escrow returns once the ledger allows.
    Cancel(IdArgs),
    /// What a job would cost if submitted now (price range and escrow), from the offers the
    /// node knows; nothing is locked.
    Estimate(crate::estimate::EstimateArgs),
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The module, a .wasm file (a WASI command). For a model, use --onnx instead.
    #[arg(required_unless_present = "onnx")]
    pub module: Option<PathBuf>,
    /// Run an ONNX model instead of a WebAssembly module: the model's first output for the
    /// --input tensor (.npy), verified across replicas by --verify.
    #[arg(long, value_name = "MODEL.onnx", conflicts_with_all = ["module", "args"])]
    pub onnx: Option<PathBuf>,
    /// With --onnx: how replicas' outputs are compared (CPU kernels differ in their last bits
    /// across machines): argmax (the predicted class per row; the default), topk:K, round:N (N
    /// significant digits) or exact.
    #[arg(long, requires = "onnx", value_name = "RULE", value_parser = parse_compare)]
    pub verify: Option<Compare>,
    /// The input: stdin of the module (a file, or - for this process's stdin), or for --onnx
    /// the input tensor as a .npy file.
    #[arg(long)]
    pub input: Option<String>,
    /// An argument for the module (repeatable).
    #[arg(long = "arg", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// How many independent workers must agree on the output (1..=9).
    #[arg(long, default_value_t = defaults::REDUNDANCY)]
    pub redundancy: u8,
    /// The most paid to one worker per execution.
    #[arg(long, default_value_t = defaults::MAX_PRICE)]
    pub max_price: u64,
    /// Fuel limit (about one unit per instruction).
    #[arg(long, default_value_t = defaults::FUEL)]
    pub fuel: u64,
    /// Memory limit in bytes.
    #[arg(long, default_value_t = defaults::MEMORY_BYTES)]
    pub memory: u64,
    /// Wall-time limit in milliseconds.
    #[arg(long, default_value_t = defaults::WALL_TIME_MS)]
    pub wall_time_ms: u64,
    /// Seconds until the job is abandoned if no quorum agreed.
    #[arg(long, default_value_t = defaults::DEADLINE_SECS)]
    pub deadline_secs: u64,
    /// Wait for the result, show progress and print the output.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: write the output to this file (for --onnx, a .npy tensor) instead of stdout.
    #[arg(short, long, requires = "wait")]
    pub output: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: ApiArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The job id.
    pub id: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: ApiArgs,
}

#[derive(Args, Debug)]
pub struct OutputArgs {
    /// The job id.
    pub id: String,
    /// Write to this file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    pub node: ApiArgs,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: ApiArgs,
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
            JobCommand::Cancel(a) => cancel(a).await,
            JobCommand::Estimate(a) => crate::estimate::run(a).await,
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

/// Uploads a module and input and submits `req` with their hashes; returns the job id.
pub async fn upload_and_submit(
    api: &Client,
    module: &[u8],
    input: &[u8],
    mut req: SubmitRequest,
) -> Result<String> {
    let m = api.put_blob(module.to_vec()).await?;
    let i = api.put_blob(input.to_vec()).await?;
    req.module = m.hash;
    req.input = Some(i.hash);
    Ok(api.submit(&req).await?.id)
}

/// How a final job ended, as the CLI reports it.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Verified, and the program exited 0.
    Success,
    /// Verified, but the program exited with this code.
    ProgramExited(i32),
    /// The quorum agreed the program broke a limit or trapped.
    ProgramFailed {
        /// The stable tag (`fuel`, `trap`, ...).
        kind: String,
        /// For people.
        detail: String,
    },
    /// The job failed for another reason (the sentence says which).
    JobFailed(String),
    /// Not final yet.
    Pending,
}

impl Ending {
    pub fn of(r: &JobView) -> Ending {
        match r.state {
            JobState::Verified => match r.program_exit_code() {
                Some(code) => Ending::ProgramExited(code),
                None => Ending::Success,
            },
            JobState::Failed => match &r.fail_reason {
                Some(FailReason::Failed { kind, detail }) => Ending::ProgramFailed {
                    kind: kind.clone(),
                    detail: detail.clone(),
                },
                _ => Ending::JobFailed(
                    r.reason
                        .clone()
                        .unwrap_or_else(|| "no reason given".to_string()),
                ),
            },
            _ => Ending::Pending,
        }
    }

    /// The process exit code for this ending.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Ending::Success | Ending::Pending => ExitCode::SUCCESS,
            Ending::ProgramExited(_) | Ending::ProgramFailed { .. } => {
                ExitCode::from(EXIT_PROGRAM_FAILED)
            }
            Ending::JobFailed(_) => ExitCode::from(EXIT_JOB_FAILED),
        }
    }

    /// The sentence that says what failed, if something did.
    pub fn message(&self, id: &str) -> Option<String> {
        match self {
            Ending::Success | Ending::Pending => None,
            Ending::ProgramExited(code) => Some(format!(
                "job {id} is verified, but the job's program exited with code {code}"
            )),
            Ending::ProgramFailed { kind, detail } => Some(format!(
                "job {id} failed: the job's program failed ({kind}) on every agreeing worker: \
                 {detail}"
            )),
            Ending::JobFailed(reason) => Some(format!("job {id} failed: {reason}")),
        }
    }
}

/// The program's stderr as recorded, indented, or a note that there is none.
fn stderr_block(r: &JobView) -> String {
    let text = r.stderr.as_deref().filter(|s| !s.is_empty()).or_else(|| {
        r.results
            .iter()
            .find(|x| x.agreed != Some(false) && !x.stderr.is_empty())
            .map(|x| x.stderr.as_str())
    });
    match text {
        Some(s) => s
            .lines()
            .map(|l| format!("  | {l}\n"))
            .collect::<String>()
            .trim_end()
            .to_string(),
        None => "  (the program wrote nothing to stderr)".to_string(),
    }
}

/// Says on stderr how the job ended when it failed, with the program's stderr; returns the
/// exit code.
fn report_ending(r: &JobView) -> ExitCode {
    let ending = Ending::of(r);
    if let Some(msg) = ending.message(&r.id) {
        eprintln!("{msg}");
        if matches!(
            ending,
            Ending::ProgramExited(_) | Ending::ProgramFailed { .. }
        ) {
            eprintln!("the program's stderr:\n{}", stderr_block(r));
        }
    }
    ending.exit_code()
}

/// What `job submit --wait --json` prints.
#[derive(Serialize)]
struct WaitReport<'a> {
    id: &'a str,
    state: JobState,
    reason: Option<&'a str>,
    exit_code: Option<i32>,
    stderr: Option<&'a str>,
    output: Option<String>,
    workers: &'a [String],
}

fn parse_compare(s: &str) -> Result<Compare, String> {
    s.parse()
}

/// Reads the program and input of `job submit`: a .wasm module and its stdin, or an ONNX model
/// and its .npy input tensor, each checked for its form before anything is uploaded.
fn read_job(a: &SubmitArgs) -> Result<(Vec<u8>, Vec<u8>)> {
    if let Some(model) = &a.onnx {
        let bytes = std::fs::read(model)
            .with_context(|| format!("cannot read model {}", model.display()))?;
        let Some(path) = a.input.as_deref().filter(|p| *p != "-") else {
            bail!(
                "an ONNX job needs its input tensor: --input x.npy (numpy: np.save('x.npy', x), \
                 with the model's input dtype and shape)"
            );
        };
        let input = std::fs::read(path).with_context(|| format!("cannot read input {path}"))?;
        if !input.starts_with(b"\x93NUMPY") {
            bail!(
                "{path} is not a .npy file (it does not start with \\x93NUMPY); write the tensor \
                 with numpy: np.save('x.npy', x)"
            );
        }
        return Ok((bytes, input));
    }
    let Some(path) = &a.module else {
        bail!("name a .wasm module, or an ONNX model with --onnx MODEL.onnx");
    };
    if let Some(rule) = a.verify {
        bail!(
            "--verify {rule} applies to ONNX jobs (--onnx MODEL.onnx): a WebAssembly job is \
             deterministic and its replicas are compared bit for bit; drop --verify"
        );
    }
    let module =
        std::fs::read(path).with_context(|| format!("cannot read module {}", path.display()))?;
    if !module.starts_with(b"\0asm") {
        bail!(
            "{} is not a WebAssembly module (it does not start with \\0asm); compile your program \
             to wasm32-wasi, or run an ONNX model with --onnx",
            path.display()
        );
    }
    Ok((module, read_input(&a.input)?))
}

async fn submit(a: SubmitArgs) -> Result<ExitCode> {
    let (module, input) = read_job(&a)?;
    let api = a.node.connect()?;
    let onnx = a.onnx.is_some();
    let req = SubmitRequest {
        runtime: onnx.then(|| "onnx".to_string()),
        verify: a.verify.map(|v| v.to_string()),
        args: a.args.clone(),
        redundancy: Some(a.redundancy),
        max_price: Some(a.max_price),
        fuel: Some(a.fuel),
        memory_bytes: Some(a.memory),
        wall_time_ms: Some(a.wall_time_ms),
        deadline_secs: Some(a.deadline_secs),
        ..SubmitRequest::default()
    };
    let id = upload_and_submit(&api, &module, &input, req).await?;
    if !a.wait {
        if a.json {
            outln!(
                "{}",
                serde_json::to_string(&agora_api_types::JobCreated { id })?
            );
        } else {
            outln!("{id}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    // The id first, so that a user who stops waiting can still follow or cancel the job.
    eprintln!("job {id}");
    let record = wait(&api, &id).await?;
    let output = match record.state {
        JobState::Verified => Some(api.output(&id).await?),
        _ => None,
    };
    if a.json {
        // A tensor is not text: with --json it goes to the -o file only.
        if let (Some(bytes), Some(path)) = (&output, a.output.as_deref()) {
            write_output(bytes, Some(path), onnx)?;
        }
        let report = WaitReport {
            id: &id,
            state: record.state,
            reason: record.reason.as_deref(),
            exit_code: record.exit_code(),
            stderr: record.stderr.as_deref(),
            output: output
                .as_deref()
                .filter(|_| !onnx)
                .map(|b| String::from_utf8_lossy(b).into_owned()),
            workers: &record.quorum,
        };
        outln!("{}", serde_json::to_string(&report)?);
    } else if let Some(bytes) = &output {
        write_output(bytes, a.output.as_deref(), onnx)?;
    }
    Ok(report_ending(&record))
}

/// Writes a job's output to `path`, or to stdout; a tensor (`binary`) is not written to a
/// terminal, where it would be noise: the user is told how to save it instead.
fn write_output(bytes: &[u8], path: Option<&std::path::Path>, binary: bool) -> Result<()> {
    use std::io::IsTerminal as _;
    match path {
        Some(p) => {
            std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display()))?;
        }
        None if binary && std::io::stdout().is_terminal() => {
            eprintln!(
                "the output is a .npy tensor of {} bytes; save it with -o y.npy (or redirect \
                 stdout) and read it with numpy.load",
                bytes.len()
            );
        }
        None => std::io::stdout().write_all(bytes)?,
    }
    Ok(())
}

/// Follows a job until it is final, with a spinner that says what it waits for.
pub async fn wait(api: &Client, id: &str) -> Result<JobView> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    loop {
        let r = api.job(id).await?;
        bar.set_message(format!(
            "{}: {} bids, {} results{}",
            r.state,
            r.summary.bids,
            r.summary.results,
            r.reason
                .as_deref()
                .map(|w| format!(" - {w}"))
                .unwrap_or_default()
        ));
        if r.state.is_final() {
            bar.finish_and_clear();
            return Ok(r);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends `key  value` with the keys aligned.
fn kv(s: &mut String, k: &str, v: &str) {
    s.push_str(&format!("{k:<10}{v}\n"));
}

/// The human-readable view of a job (`agora job status`): instants as RFC 3339 and offsets from
/// submission, the exit code, and the program's stderr when it failed.
pub fn render(r: &JobView) -> String {
    let mut s = String::new();
    kv(&mut s, "job", &r.id);
    kv(&mut s, "state", r.state.as_str());
    let runtime = if r.spec.runtime == "wasm" {
        "wasm (outputs compared bit for bit)".to_string()
    } else {
        format!(
            "{} (replicas compared by {})",
            r.spec.runtime, r.spec.verify
        )
    };
    kv(&mut s, "runtime", &runtime);
    if let Some(w) = &r.reason {
        kv(&mut s, "reason", w);
    }
    kv(&mut s, "submitted", &rfc3339(r.created_ms));
    if let Some(t) = r.started_ms {
        kv(&mut s, "started", &since(t, r.created_ms));
    }
    if let Some(f) = r.finished_ms {
        kv(&mut s, "finished", &since(f, r.created_ms));
    }
    if let Some(code) = r.exit_code() {
        kv(&mut s, "exit code", &code.to_string());
    }
    if matches!(
        Ending::of(r),
        Ending::ProgramExited(_) | Ending::ProgramFailed { .. }
    ) {
        kv(&mut s, "stderr", "");
        s.push_str(&stderr_block(r));
        s.push('\n');
    }
    kv(&mut s, "bids", &r.bids.len().to_string());
    for l in &r.leases {
        let lease = format!("{} price {} {}", l.worker, l.price, l.status.as_str());
        kv(&mut s, "lease", &lease);
    }
    for x in &r.results {
        let agreed = match x.agreed {
            Some(true) => "agreed",
            Some(false) => "OUTVOTED",
            None => "pending",
        };
        let verdict = x.verdict.get(..8).unwrap_or(&x.verdict);
        kv(
            &mut s,
            "result",
            &format!("{} verdict {verdict} {agreed}", x.worker),
        );
    }
    if !r.timeline.is_empty() {
        s.push_str("timeline\n");
    }
    for t in &r.timeline {
        let at = since(t.at_ms, r.created_ms);
        s.push_str(&format!("  {at:>11}  {}\n", t.event));
    }
    s
}

async fn status(a: IdArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let r = api.job(&a.id).await?;
    if a.json {
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(Ending::of(&r).exit_code());
    }
    let text = render(&r);
    outln!("{}", text.trim_end());
    Ok(Ending::of(&r).exit_code())
}

async fn output(a: OutputArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let bytes = match api.output(&a.id).await {
        Ok(b) => b,
        Err(e) if e.status().is_some_and(|s| s.as_u16() == 409) => {
            // No verified output: say why, as a failure of the job when it is one.
            let r = api.job(&a.id).await?;
            match Ending::of(&r) {
                Ending::Pending => bail!(
                    "job {} has no output yet: it is {}{}",
                    a.id,
                    r.state,
                    r.reason.map(|w| format!(" ({w})")).unwrap_or_default()
                ),
                _ => return Ok(report_ending(&r)),
            }
        }
        Err(e) => return Err(e.into()),
    };
    // A verified output may come from a program that reported failure.
    let r = api.job(&a.id).await?;
    write_output(&bytes, a.output.as_deref(), r.spec.runtime == "onnx")?;
    Ok(report_ending(&r))
}

async fn list(a: ListArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let jobs = api.jobs().await?;
    if a.json {
        outln!("{}", serde_json::to_string(&jobs)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "{:<66} {:<9} {:>5} {:>5} {:>9}  REASON",
        "JOB",
        "STATE",
        "EXIT",
        "BIDS",
        "LATENCY"
    );
    for j in &jobs {
        outln!(
            "{:<66} {:<9} {:>5} {:>5} {:>9}  {}",
            j.id,
            j.state.as_str(),
            j.exit_code.map_or("-".into(), |c| c.to_string()),
            j.bids,
            j.latency_ms
                .map_or("-".into(), |l| format!("{:.3} s", l as f64 / 1000.0)),
            j.reason.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(a: IdArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let c = api.cancel(&a.id).await?;
    if a.json {
        outln!("{}", serde_json::to_string(&c)?);
    } else {
        outln!("cancelled {}", c.cancelled);
    }
    Ok(ExitCode::SUCCESS)
}
