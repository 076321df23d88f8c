//! `agora devnet`: N real `agora node` processes on loopback, watched live.
//!
//! Each node gets a fresh data directory, free ports and no mDNS; node 0 is every other node's
//! bootstrap peer, so discovery runs through the DHT. On a terminal a live table on stderr shows
//! each node's peers; in both cases short progress lines go to stderr as the nodes come up, when
//! what they see changes, and (without a terminal) every 10 s. At Ctrl-C or the end of
//! `--duration` the devnet first collects its summary from the still-running nodes, then stops
//! every child (SIGTERM, then SIGKILL after 10 s); with `--json` the last line on stdout is a
//! one-line JSON summary.
//!
//! Each child runs in its own process group, so a terminal's Ctrl-C (SIGINT to the foreground
//! group) reaches only the devnet, which stops the nodes itself once it has their final state; a
//! second Ctrl-C skips the summary. Children also die with the devnet process itself
//! (`agora node --exit-with-parent`: a parent-death signal), so none is left behind.
//! A node that exits (a crash, or a SIGKILL to try the network's resilience) is restarted on its
//! data directory, up to 5 times: it resumes its jobs and resyncs the ledger.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_api_types::{HistoryQuery, LedgerEvent, LedgerStatus, NodeStatus};
use anyhow::{Context, Result, bail};
use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crate::client::connect;
use crate::jobs;

#[derive(Args, Debug)]
pub struct DevnetArgs {
    /// How many nodes to run (1..=64).
    #[arg(long, default_value_t = 5)]
    pub nodes: usize,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration: Option<u64>,
    /// Print a one-line JSON summary as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Keep the nodes' data directories (and logs) after stopping.
    #[arg(long)]
    pub keep: bool,
    /// Where to put the nodes' data directories (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Submit this many example jobs (primes, mandelbrot, sha256chain), spread across the honest
    /// nodes, and report how they ended. Without --duration the devnet stops when all are done.
    #[arg(long, default_value_t = 0)]
    pub jobs: usize,
    /// Run this many of the nodes (the last ones) as Byzantine workers that bid normally and
    /// return corrupted outputs. Test only.
    #[arg(long, default_value_t = 0)]
    pub byzantine: usize,
    /// Redundancy of the submitted jobs.
    #[arg(long, default_value_t = agora_api_types::defaults::REDUNDANCY)]
    pub redundancy: u8,
    /// How many of the nodes (the first ones) validate the ledger; the others follow it.
    #[arg(long, default_value_t = 4)]
    pub validators: usize,
    /// Run without a ledger: no genesis, no escrow, no staking (jobs are not paid).
    #[arg(long)]
    pub no_ledger: bool,
}

pub(crate) struct Child_ {
    pub index: usize,
    pub peer_id: String,
    pub api: String,
    pub dir: PathBuf,
    pub child: Child,
    /// The `agora node` flags it runs with, to restart it the same way.
    pub args: Vec<String>,
    /// How many times it was restarted after exiting.
    pub restarts: u32,
}

/// The most restarts of one node before the devnet gives up on it.
const MAX_RESTARTS: u32 = 5;

/// How long a node has to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Without a terminal, a progress line at least this often.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Progress lines on stderr: above the live table on a terminal, plain lines otherwise (the table
/// is not drawn there). stdout stays for the summary.
struct Notes {
    multi: MultiProgress,
    tty: bool,
}

impl Notes {
    fn line(&self, text: impl AsRef<str>) {
        let text = text.as_ref();
        if !self.tty || self.multi.println(text).is_err() {
            eprintln!("{text}");
        }
    }
}

/// Starts `agora node ARGS` with its output appended to `dir/node.log`.
fn spawn_child(dir: &Path, args: &[String]) -> Result<Child> {
    let exe = std::env::current_exe().context("cannot find the agora executable")?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))?;
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    // The children read their configuration from flags only.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AGORA_") {
            cmd.env_remove(k);
        }
    }
    // Its own process group: a terminal's Ctrl-C goes to the devnet alone, which collects the
    // nodes' final state before it stops them (the child's `--exit-with-parent` still ties its
    // life to the devnet's).
    #[cfg(unix)]
    cmd.process_group(0);
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().context("cannot start an agora node process")
}

fn free_tcp_port() -> Result<u16> {
    Ok(agora_net::free_loopback_port(agora_net::PortKind::Tcp)?)
}

fn free_udp_port() -> Result<u16> {
    Ok(agora_net::free_loopback_port(agora_net::PortKind::Udp)?)
}

fn log_tail(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Starts `n` nodes under `base`, node 0 as everyone's bootstrap peer. `extra(i)` adds flags.
pub(crate) async fn spawn_nodes(
    base: &Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
) -> Result<Vec<Child_>> {
    let mut nodes: Vec<Child_> = Vec::with_capacity(n);
    let mut bootstrap: Option<String> = None;
    for i in 0..n {
        let dir = base.join(format!("node-{i}"));
        let (key, _) = agora_node::identity::load_or_create(&dir)?;
        let peer_id = key.public().to_peer_id().to_string();
        let tcp = free_tcp_port()?;
        let udp = free_udp_port()?;
        let api = format!("127.0.0.1:{}", free_tcp_port()?);
        let _ = std::fs::remove_file(dir.join("node.log"));
        let mut args = vec![
            "node".to_string(),
            "--preset=local".into(),
            format!("--data-dir={}", dir.display()),
            format!("--listen=/ip4/127.0.0.1/tcp/{tcp}"),
            format!("--listen=/ip4/127.0.0.1/udp/{udp}/quic-v1"),
            format!("--api={api}"),
            "--no-mdns".into(),
            "--exit-with-parent".into(),
        ];
        if let Some(b) = &bootstrap {
            args.push(format!("--bootstrap={b}"));
        }
        args.extend(extra(i));
        let child = spawn_child(&dir, &args)?;
        if i == 0 {
            bootstrap = Some(format!("/ip4/127.0.0.1/tcp/{tcp}/p2p/{peer_id}"));
        }
        nodes.push(Child_ {
            index: i,
            peer_id,
            api,
            dir,
            child,
            args,
            restarts: 0,
        });
    }
    // Wait for every API to answer.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    for node in &mut nodes {
        let api = connect(&node.api)?;
        loop {
            if let Some(status) = node.child.try_wait()? {
                bail!(
                    "node {} exited at start ({status}); its log, {}:\n{}",
                    node.index,
                    node.dir.join("node.log").display(),
                    log_tail(&node.dir)
                );
            }
            if api.status().await.is_ok() {
                eprintln!(
                    "node {} up: {}  api {}  ({:.1} s)",
                    node.index,
                    node.peer_id,
                    node.api,
                    started.elapsed().as_secs_f64()
                );
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} did not answer on {} within 30 s; see {}",
                    node.index,
                    node.api,
                    node.dir.join("node.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(nodes)
}

/// Stops every child: SIGTERM, then SIGKILL for any still running after [`STOP_GRACE`].
pub(crate) async fn stop_nodes(nodes: &mut [Child_]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    for n in nodes.iter_mut() {
        if tokio::time::timeout_at(deadline, n.child.wait())
            .await
            .is_err()
        {
            eprintln!(
                "node {} did not stop within {} s of SIGTERM; killing it",
                n.index,
                STOP_GRACE.as_secs()
            );
            let _ = n.child.kill().await;
        }
    }
}

/// Each node's status, or `None` where it does not answer.
pub(crate) async fn statuses(nodes: &[Child_]) -> Vec<Option<NodeStatus>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        let s = match connect(&n.api) {
            Ok(api) => api.status().await.ok(),
            Err(_) => None,
        };
        out.push(s);
    }
    out
}

pub fn run(a: DevnetArgs) -> Result<ExitCode> {
    if a.nodes == 0 || a.nodes > 64 {
        bail!("--nodes {} is out of range: choose 1..=64", a.nodes);
    }
    if a.byzantine >= a.nodes {
        bail!(
            "--byzantine {} must leave at least one honest node among --nodes {}",
            a.byzantine,
            a.nodes
        );
    }
    if a.jobs > 10_000 {
        bail!("--jobs {} is out of range: choose 0..=10000", a.jobs);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(a))
}

async fn run_async(a: DevnetArgs) -> Result<ExitCode> {
    let (base, temp) = match &a.data_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!(
                "agora-devnet-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )),
            true,
        ),
    };
    std::fs::create_dir_all(&base)?;
    let launched = Instant::now();
    eprintln!(
        "starting {} nodes in {} (Ctrl-C to stop)",
        a.nodes,
        base.display()
    );
    let first_byzantine = a.nodes - a.byzantine;
    let ledger_flags = if a.no_ledger {
        vec![Vec::new(); a.nodes]
    } else {
        write_genesis(&base, a.nodes, a.validators)?
    };
    let mut nodes = spawn_nodes(&base, a.nodes, |i| {
        let mut flags = ledger_flags[i].clone();
        if i >= first_byzantine {
            flags.push("--byzantine".to_string());
        }
        flags
    })
    .await?;
    let byzantine_ids: Vec<String> = nodes[first_byzantine..]
        .iter()
        .map(|n| n.peer_id.clone())
        .collect();
    let progress = Arc::new(jobs::Progress::default());
    let mut driver = if a.jobs > 0 {
        let apis: Vec<String> = nodes[..first_byzantine]
            .iter()
            .map(|n| n.api.clone())
            .collect();
        let all: Vec<String> = nodes.iter().map(|n| n.api.clone()).collect();
        Some(tokio::spawn(jobs::drive(
            apis,
            all,
            a.jobs,
            a.redundancy,
            !a.no_ledger,
            progress.clone(),
        )))
    } else {
        None
    };
    let mut job_summary: Option<jobs::Summary> = None;

    let multi = MultiProgress::new();
    let notes = Notes {
        multi: multi.clone(),
        tty: std::io::stderr().is_terminal(),
    };
    let style = ProgressStyle::with_template("{prefix:>8} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    let header = multi.add(ProgressBar::new_spinner());
    header.set_style(style.clone());
    header.set_prefix("devnet");
    let rows: Vec<ProgressBar> = nodes
        .iter()
        .map(|n| {
            let b = multi.add(ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(format!("node {}", n.index));
            b
        })
        .collect();

    let started = Instant::now();
    let end = a.duration.map(|d| started + Duration::from_secs(d));
    let signal = crate::run_node::wait_for_signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut early_exit: Option<String> = None;
    let mut watch = Watch::default();
    let mut stopped_by: Option<&str> = None;
    loop {
        tokio::select! {
            s = &mut signal => {
                stopped_by = Some(s);
                break;
            }
            _ = tick.tick() => {}
        }
        // A node that exits (crashed, or killed to try the network's resilience) is restarted
        // on the same data directory: it resumes its jobs and resyncs the ledger.
        for n in nodes.iter_mut() {
            if let Ok(Some(status)) = n.child.try_wait() {
                if n.restarts >= MAX_RESTARTS {
                    early_exit = Some(format!(
                        "node {} exited {} times, last {status}; its log, {}:\n{}",
                        n.index,
                        n.restarts + 1,
                        n.dir.join("node.log").display(),
                        log_tail(&n.dir)
                    ));
                    continue;
                }
                n.restarts += 1;
                notes.line(format!(
                    "node {} exited ({status}); restarting it (restart {})",
                    n.index, n.restarts
                ));
                match spawn_child(&n.dir, &n.args) {
                    Ok(c) => n.child = c,
                    Err(e) => early_exit = Some(format!("cannot restart node {}: {e:#}", n.index)),
                }
            }
        }
        if early_exit.is_some() {
            break;
        }
        let st = statuses(&nodes).await;
        for ((n, s), row) in nodes.iter().zip(&st).zip(&rows) {
            row.set_message(format!(
                "{}  api {}  peers {}/{}  routing {}",
                n.peer_id,
                n.api,
                s.as_ref()
                    .map_or("?".into(), |s| s.connected_peers.to_string()),
                nodes.len() - 1,
                s.as_ref()
                    .map_or("?".into(), |s| s.routing_table_size.to_string()),
            ));
        }
        let elapsed = started.elapsed().as_secs();
        let jobs_line = if a.jobs > 0 {
            format!(", {}", progress.line(a.jobs))
        } else {
            String::new()
        };
        header.set_message(match a.duration {
            Some(d) => format!("{} nodes, {elapsed}/{d} s{jobs_line}", nodes.len()),
            None => format!(
                "{} nodes, {elapsed} s{jobs_line} (Ctrl-C to stop)",
                nodes.len()
            ),
        });
        let peers: Vec<Option<u64>> = st
            .iter()
            .map(|s| s.as_ref().map(|s| s.connected_peers))
            .collect();
        if watch.meshed(&peers) {
            notes.line(format!(
                "every node sees its {} peers ({:.1} s after the start)",
                nodes.len() - 1,
                launched.elapsed().as_secs_f64()
            ));
        }
        if watch.due(peers, notes.tty, Instant::now()) {
            let height = if a.no_ledger {
                String::new()
            } else {
                ledger_height(&nodes)
                    .await
                    .map_or(", ledger height ?".into(), |h| {
                        format!(", ledger height {h}")
                    })
            };
            notes.line(format!(
                "devnet {elapsed} s: peers {} of {}{height}{jobs_line}",
                watch.peers_text(),
                nodes.len() - 1
            ));
        }
        if driver.as_ref().is_some_and(|d| d.is_finished()) {
            if let Some(d) = driver.take() {
                job_summary = Some(d.await??);
            }
            if a.duration.is_none() {
                break;
            }
        }
        if end.is_some_and(|e| Instant::now() >= e) {
            break;
        }
    }

    if let Some(s) = stopped_by {
        notes.line(format!(
            "{s}: collecting the summary from the running nodes, then stopping them \
             (Ctrl-C again to skip the summary)"
        ));
    }
    if let Some(d) = driver.take() {
        d.abort();
        job_summary = Some(progress.summary(a.jobs));
    }
    header.set_message(if a.no_ledger {
        "collecting the nodes' final state"
    } else {
        "collecting the final state; waiting for the ledger to settle verified jobs"
    });
    let verified = job_summary.as_ref().map_or(0, |j| j.verified);
    let collected = tokio::select! {
        c = final_state(&nodes, &byzantine_ids, verified, !a.no_ledger) => Some(c),
        s = crate::run_node::wait_for_signal() => {
            notes.line(format!("{s} again: stopping the nodes without the summary"));
            None
        }
    };
    let (ledger_summary, final_statuses) = collected.unwrap_or_else(|| {
        let ledger = (!a.no_ledger).then_some(Value::Null);
        (ledger, nodes.iter().map(|_| None).collect())
    });
    header.set_message(format!("stopping {} nodes", nodes.len()));
    notes.line(format!("stopping {} nodes", nodes.len()));
    stop_nodes(&mut nodes).await;
    let _ = multi.clear();

    let summary: Vec<Value> = nodes
        .iter()
        .zip(&final_statuses)
        .map(|(n, s)| {
            json!({
                "peer_id": n.peer_id,
                "api": n.api,
                "connected_peers": s.as_ref().map(|s| s.connected_peers),
                "restarts": n.restarts,
            })
        })
        .collect();
    for (n, s) in nodes.iter().zip(&final_statuses) {
        eprintln!(
            "node {}  {}  peers {}",
            n.index,
            n.peer_id,
            s.as_ref().map_or("? (not answering)".into(), |s| s
                .connected_peers
                .to_string())
        );
    }
    if temp && !a.keep && early_exit.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    } else {
        eprintln!("data directories and logs kept in {}", base.display());
    }
    if let Some(j) = &job_summary {
        eprintln!("jobs: {}", serde_json::to_string(j)?);
    }
    if let Some(l) = &ledger_summary {
        eprintln!("ledger: {l}");
    }
    if a.json {
        let byzantine = job_summary.is_some().then_some(byzantine_ids.as_slice());
        let out = DevnetSummary {
            nodes: summary,
            jobs: job_summary,
            byzantine,
            ledger: ledger_summary,
        };
        outln!("{}", serde_json::to_string(&out)?);
    }
    if let Some(e) = early_exit {
        bail!(e);
    }
    Ok(ExitCode::SUCCESS)
}

/// When to print a progress line: when what the nodes see changes, and without a terminal (where
/// no live table is drawn) at least every [`HEARTBEAT`]; and once when the mesh is complete.
#[derive(Default)]
struct Watch {
    peers: Option<Vec<Option<u64>>>,
    printed: Option<Instant>,
    meshed: bool,
}

impl Watch {
    /// True the first time every node answers and sees all the others.
    fn meshed(&mut self, peers: &[Option<u64>]) -> bool {
        let want = u64::try_from(peers.len().saturating_sub(1)).unwrap_or(u64::MAX);
        if self.meshed || !peers.iter().all(|p| p.is_some_and(|p| p >= want)) {
            return false;
        }
        self.meshed = true;
        true
    }

    /// Records `peers`; true when a line is due now.
    fn due(&mut self, peers: Vec<Option<u64>>, tty: bool, now: Instant) -> bool {
        let changed = self.peers.as_ref() != Some(&peers);
        let heartbeat = !tty
            && self
                .printed
                .is_none_or(|t| now.duration_since(t) >= HEARTBEAT);
        self.peers = Some(peers);
        if changed || heartbeat {
            self.printed = Some(now);
        }
        changed || heartbeat
    }

    /// The last peer counts, `?` for a node that did not answer: `[4 4 ? 4]`.
    fn peers_text(&self) -> String {
        let counts: Vec<String> = self
            .peers
            .iter()
            .flatten()
            .map(|p| p.map_or("?".into(), |p| p.to_string()))
            .collect();
        format!("[{}]", counts.join(" "))
    }
}

/// Node 0's ledger height, if it answers.
async fn ledger_height(nodes: &[Child_]) -> Option<u64> {
    let api = connect(&nodes.first()?.api).ok()?;
    api.ledger_status().await.ok().map(|s| s.height)
}

/// The summary's inputs, read from the still-running nodes: the ledger (when there is one) and
/// each node's status.
async fn final_state(
    nodes: &[Child_],
    byzantine: &[String],
    verified: u64,
    ledger: bool,
) -> (Option<Value>, Vec<Option<NodeStatus>>) {
    let ledger = if ledger {
        Some(ledger_summary(nodes, byzantine, verified).await)
    } else {
        None
    };
    (ledger, statuses(nodes).await)
}

/// The one-line JSON summary `--json` prints at the end.
#[derive(serde::Serialize)]
struct DevnetSummary<'a> {
    nodes: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jobs: Option<jobs::Summary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    byzantine: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger: Option<Value>,
}

/// Tokens each devnet node locks per worker in a credit line (of a balance of 1,000,000).
const CREDIT_PER_WORKER: u64 = 20_000;

/// Writes the devnet's genesis: every node gets a balance and a worker's stake, the first
/// `validators` a validator's stake and a consensus endpoint. Returns each node's ledger flags.
fn write_genesis(base: &Path, n: usize, validators: usize) -> Result<Vec<Vec<String>>> {
    let validators = validators.clamp(1, n);
    let mut peers = Vec::with_capacity(n);
    let mut ports = Vec::with_capacity(n);
    for i in 0..n {
        let (key, _) = agora_node::identity::load_or_create(&base.join(format!("node-{i}")))?;
        peers.push(key.public().to_peer_id().to_string());
        ports.push(free_tcp_port()?);
    }
    let args = crate::wallet::GenesisArgs {
        out: base.join("genesis.json"),
        chain_id: "agora-devnet".into(),
        validators: (0..validators)
            .map(|i| format!("{}@127.0.0.1:{}", peers[i], ports[i]))
            .collect(),
        accounts: peers[validators..].to_vec(),
        balance: 1_000_000,
        stake: 1_000,
        validator_stake: 10_000,
        min_bid_stake: 100,
        unbonding_blocks: 100,
        // About 30 s at the devnet's 300 ms blocks.
        refund_after_blocks: 100,
        force: true,
    };
    let genesis = crate::wallet::build_genesis(&args)?;
    std::fs::write(&args.out, genesis.to_json())?;
    Ok((0..n)
        .map(|i| {
            vec![
                format!("--genesis={}", args.out.display()),
                format!("--consensus-listen=127.0.0.1:{}", ports[i]),
                // Jobs are paid from credit lines (opened once per worker), not from an escrow
                // per job: they start without waiting for a block.
                format!("--credit-per-worker={CREDIT_PER_WORKER}"),
            ]
        })
        .collect())
}

/// The ledger as node 0 sees it, after waiting (up to 20 s) for verified jobs to be settled:
/// height, validators, whether supply is conserved, totals paid and slashed, whether each
/// Byzantine worker was slashed, and whether the nodes agree on the state root.
async fn ledger_summary(nodes: &[Child_], byzantine: &[String], verified: u64) -> Value {
    let Ok(api) = connect(&nodes[0].api) else {
        return Value::Null;
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status: Option<LedgerStatus> = None;
    loop {
        if let Ok(s) = api.ledger_status().await {
            status = Some(s);
        }
        let (settled, open) = status
            .as_ref()
            .map_or((0, 0), |s| (s.settled_jobs, s.open_escrows));
        if (settled >= verified && open == 0) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut slashed = Vec::new();
    for id in byzantine {
        let stake = api.account(id).await.ok().map(|a| a.stake);
        slashed.push(
            json!({"peer_id": id, "stake": stake, "slashed": stake.is_some_and(|s| s < 1_000)}),
        );
    }
    // Roots agree where heights agree: ask every node, compare those at node 0's height.
    let mut roots = std::collections::BTreeMap::new();
    let mut heights = Vec::with_capacity(nodes.len());
    for n in nodes {
        let s = match connect(&n.api) {
            Ok(api) => api.ledger_status().await.ok(),
            Err(_) => None,
        };
        heights.push(s.as_ref().map(|s| s.height));
        if let Some(s) = s {
            roots
                .entry(s.height)
                .or_insert_with(std::collections::BTreeSet::new)
                .insert(s.state_root);
        }
    }
    let roots_agree = roots.values().all(|r| r.len() == 1);
    // Every payment to an honest worker is exactly the price it bids at.
    let mut payments = 0u64;
    let mut exact = true;
    for n in nodes.iter().filter(|n| !byzantine.contains(&n.peer_id)) {
        let Ok(api) = connect(&n.api) else { continue };
        let price = api.status().await.ok().map(|s| s.price);
        let history = api
            .history(&HistoryQuery {
                limit: Some(10_000),
            })
            .await
            .map(|h| h.events)
            .unwrap_or_default();
        for e in &history {
            if let LedgerEvent::Paid { amount, .. } = e.event {
                payments += 1;
                exact &= Some(amount) == price;
            }
        }
    }
    let s = status.as_ref();
    let settled = s.map(|s| s.settled_jobs);
    let open = s.map(|s| s.open_escrows);
    json!({
        "height": s.map(|s| s.height),
        "validators": s.map_or(0, |s| s.validators.len()),
        "supply_conserved": s.map(|s| s.supply.conserved),
        "paid": s.map(|s| s.supply.paid),
        "slashed": s.map(|s| s.supply.slashed),
        "settled_jobs": settled,
        "open_escrows": open,
        "verified_jobs": verified,
        "every_verified_job_paid": settled.unwrap_or(0) >= verified && open == Some(0),
        "byzantine_slashed": slashed,
        "honest_payments": payments,
        "honest_paid_exactly_their_bid": exact && payments > 0,
        "state_roots_agree": roots_agree,
        "heights": heights,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_line_once_when_every_node_sees_all_others() {
        let mut w = Watch::default();
        assert!(!w.meshed(&[Some(2), None, Some(2)]));
        assert!(!w.meshed(&[Some(2), Some(1), Some(2)]));
        assert!(w.meshed(&[Some(2), Some(2), Some(2)]));
        assert!(!w.meshed(&[Some(2), Some(2), Some(2)]));
    }

    #[test]
    fn progress_line_on_change_and_heartbeat_without_terminal() {
        let t0 = Instant::now();
        let mut tty = Watch::default();
        assert!(tty.due(vec![Some(1)], true, t0));
        assert!(!tty.due(vec![Some(1)], true, t0 + HEARTBEAT * 3));
        assert!(tty.due(vec![None], true, t0 + HEARTBEAT * 3));
        assert_eq!(tty.peers_text(), "[?]");

        let mut plain = Watch::default();
        assert!(plain.due(vec![Some(1), Some(1)], false, t0));
        assert!(!plain.due(vec![Some(1), Some(1)], false, t0 + HEARTBEAT / 2));
        assert!(plain.due(vec![Some(1), Some(1)], false, t0 + HEARTBEAT));
        assert!(!plain.due(vec![Some(1), Some(1)], false, t0 + HEARTBEAT * 3 / 2));
        assert!(plain.due(vec![Some(1), Some(0)], false, t0 + HEARTBEAT * 3 / 2));
        assert_eq!(plain.peers_text(), "[1 0]");
    }
}
