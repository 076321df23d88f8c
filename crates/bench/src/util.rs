//! What the benchmarks share: statistics, memory readings, and in-process `agora_net` nodes.

use std::time::Duration;

use agora_net::{Config, Keypair, Multiaddr, NetEvent, NetHandle, Network, multiaddr::Protocol};
use anyhow::{Context, bail};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The `q`-quantile (0..=1) of sorted samples, nearest rank; `None` when there are none.
pub(crate) fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Microseconds, as a JSON number with one decimal.
pub(crate) fn us(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e6, 1)
}

/// Milliseconds, as a JSON number with two decimals.
pub(crate) fn ms(d: Duration) -> f64 {
    round(d.as_secs_f64() * 1e3, 2)
}

/// `x` rounded to `decimals` places.
pub(crate) fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// `a / b` rounded to three decimals (`b` must not be zero).
pub(crate) fn ratio(a: Duration, b: Duration) -> f64 {
    round(a.as_secs_f64() / b.as_secs_f64().max(1e-12), 3)
}

/// p50, p99, mean, min and max of latency samples, in microseconds.
pub(crate) fn summary_us(samples: &[Duration]) -> anyhow::Result<(Duration, Duration, Value)> {
    let mut s = samples.to_vec();
    s.sort();
    let (Some(p50), Some(p99)) = (quantile(&s, 0.50), quantile(&s, 0.99)) else {
        bail!("no samples");
    };
    let mean = s.iter().sum::<Duration>() / s.len() as u32;
    let v = json!({
        "p50_us": us(p50),
        "p99_us": us(p99),
        "mean_us": us(mean),
        "min_us": us(s[0]),
        "max_us": us(s[s.len() - 1]),
        "samples": s.len(),
    });
    Ok((p50, p99, v))
}

/// This process's resident memory, in bytes (`VmRSS` in `/proc/self/status`).
pub(crate) fn rss_bytes() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmRSS line")?
        .parse()
        .context("malformed VmRSS value")?;
    Ok(kb * 1024)
}

/// CPU time this process's live threads have used so far (the sum over
/// `/proc/self/task/*/schedstat`, in nanoseconds); `None` where that is not readable.
pub(crate) fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(task) = task else { continue };
        let Ok(stat) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// This process's limit on open file descriptors (`Max open files` in `/proc/self/limits`).
pub(crate) fn fd_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// TCP connections this network namespace has opened so far (`ActiveOpens` in
/// `/proc/net/snmp`): machine-wide, but on an otherwise quiet loopback it counts the dials of
/// the in-process nodes. `None` where that is not readable.
pub(crate) fn tcp_active_opens() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut tcp = snmp.lines().filter(|l| l.starts_with("Tcp:"));
    let (names, values) = (tcp.next()?, tcp.next()?);
    let i = names.split_whitespace().position(|n| n == "ActiveOpens")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// Open file descriptors of this process (each TCP connection end is one).
pub(crate) fn open_fds() -> Option<usize> {
    std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count())
}

/// Prints a progress line on stderr when `AGORA_BENCH_PROGRESS` is set (the report itself goes
/// to stdout, from the caller).
pub(crate) fn progress(line: &str) {
    if std::env::var_os("AGORA_BENCH_PROGRESS").is_some() {
        eprintln!("[agora-bench] {line}");
    }
}

/// Facts about the machine, stamped on every report.
pub(crate) fn machine() -> Value {
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "os": std::env::consts::OS,
        "arch": std::env::consts::ARCH,
        "debug_build": cfg!(debug_assertions),
    })
}

/// A node configuration for in-process benchmarks: `Config::local()` (its timers, limits and
/// queues), listening on loopback TCP only.
pub(crate) fn local_config() -> anyhow::Result<Config> {
    let mut config = Config::local();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    Ok(config)
}

/// An in-process `agora_net` node.
pub(crate) struct Node {
    pub handle: NetHandle,
    /// Its TCP address, with its `/p2p/` peer id.
    pub addr: Multiaddr,
    pub events: Option<mpsc::Receiver<NetEvent>>,
    pub task: JoinHandle<()>,
}

/// Spawns a node and waits until it listens.
pub(crate) async fn start_node(config: Config) -> anyhow::Result<Node> {
    let mut nodes = start_nodes(vec![config]).await?;
    nodes.pop().context("no node started")
}

/// Spawns nodes, all at once, then waits until every one listens. On error, the ones started
/// are stopped.
pub(crate) async fn start_nodes(configs: Vec<Config>) -> anyhow::Result<Vec<Node>> {
    let mut spawned = Vec::with_capacity(configs.len());
    for config in configs {
        match agora_net::spawn(
            Keypair::generate_ed25519(),
            config,
            &mut Registry::default(),
        ) {
            Ok(network) => spawned.push(network),
            Err(e) => {
                stop_networks(spawned).await;
                return Err(e.into());
            }
        }
    }
    let addrs = futures::future::join_all(spawned.iter().map(|n| listen_addr(&n.handle))).await;
    let mut nodes = Vec::with_capacity(spawned.len());
    let mut failure = None;
    for (network, addr) in spawned.into_iter().zip(addrs) {
        match addr {
            Ok(addr) => nodes.push(Node {
                addr: addr.with(Protocol::P2p(network.handle.local_peer_id())),
                handle: network.handle,
                events: Some(network.events),
                task: network.task,
            }),
            Err(e) => {
                failure.get_or_insert(e);
                let _ = network.handle.shutdown().await;
            }
        }
    }
    if let Some(e) = failure {
        shutdown_all(nodes).await;
        return Err(e);
    }
    Ok(nodes)
}

async fn listen_addr(handle: &NetHandle) -> anyhow::Result<Multiaddr> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(a) = handle.status().await?.listen_addresses.first() {
            return Ok(a.clone());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("a node did not start listening within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop_networks(networks: Vec<Network>) {
    futures::future::join_all(networks.into_iter().map(|n| async move {
        let _ = n.handle.shutdown().await;
    }))
    .await;
}

/// Takes a node's event queue and serves it in a task: echo requests are answered, gossip is
/// passed to `on_gossip`, the rest is dropped (as a node would, it keeps the queue drained).
pub(crate) fn serve(
    node: &mut Node,
    on_gossip: impl Fn(agora_types::wire::GossipMessage) + Send + 'static,
) {
    let Some(mut events) = node.events.take() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                NetEvent::Request {
                    request: agora_types::wire::Request::Echo(b),
                    reply,
                    ..
                } => {
                    let _ = reply.send(agora_types::wire::Response::Echo(b));
                }
                NetEvent::Gossip { message, .. } => on_gossip(message),
                _ => {}
            }
        }
    });
}

/// Stops every node (concurrently; each takes at most about a second) and waits for their tasks.
pub(crate) async fn shutdown_all(nodes: Vec<Node>) {
    let stops = nodes.into_iter().map(|n| async move {
        let _ = n.handle.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), n.task).await;
    });
    futures::future::join_all(stops).await;
}

/// Connected-peer count of every node, asked of all nodes at once: on a saturated runtime each
/// answer waits for its node's task to be scheduled, and asking 300 nodes one after the other
/// took minutes.
pub(crate) async fn peer_counts(nodes: &[Node]) -> anyhow::Result<Vec<usize>> {
    let statuses = futures::future::join_all(nodes.iter().map(|n| n.handle.status())).await;
    statuses
        .into_iter()
        .map(|s| Ok(s?.connected_peers))
        .collect()
}

/// Connected-peer counts of every node: (min, mean, max).
pub(crate) async fn connectivity(nodes: &[Node]) -> anyhow::Result<(usize, f64, usize)> {
    let counts = peer_counts(nodes).await?;
    let min = counts.iter().copied().min().unwrap_or(0);
    let max = counts.iter().copied().max().unwrap_or(0);
    let mean = counts.iter().sum::<usize>() as f64 / counts.len().max(1) as f64;
    Ok((min, round(mean, 1), max))
}

/// A Python interpreter that can `import` every module in `modules`, for a baseline run in the
/// same invocation: `$AGORA_BENCH_PYTHON`, then this checkout's `target/bench-venv` (made by
/// `bash bench/venv.sh`) and `target/ci-venv`, then `python3` on the PATH. The error says what
/// was tried and how to get one.
pub(crate) fn python_with(modules: &[&str]) -> Result<std::path::PathBuf, String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates: Vec<std::path::PathBuf> = vec![];
    if let Some(p) = std::env::var_os("AGORA_BENCH_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push(root.join("target/bench-venv/bin/python"));
    candidates.push(root.join("target/ci-venv/bin/python"));
    candidates.push("python3".into());
    let probe = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    for c in &candidates {
        let ok = std::process::Command::new(c)
            .args(["-c", &probe])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(c.clone());
        }
    }
    Err(format!(
        "no Python with {} found (tried $AGORA_BENCH_PYTHON, target/bench-venv, target/ci-venv, \
         python3); run `bash bench/venv.sh` in the checkout to install the baselines",
        modules.join(", ")
    ))
}

/// Runs the Python `script` (its source) with `python` and `args`, `timeout` at most, and
/// parses the last line it prints as JSON. The error carries the tail of its stderr.
pub(crate) fn run_python(
    python: &std::path::Path,
    script: &str,
    args: &[String],
    timeout: Duration,
) -> Result<Value, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("no temporary directory: {e}"))?;
    let path = dir.path().join("baseline.py");
    std::fs::write(&path, script).map_err(|e| format!("cannot write the script: {e}"))?;
    // Output goes to files, not pipes: a baseline's own helper processes (Ray starts several)
    // may outlive it holding a pipe open, and a full pipe cannot block it.
    let file = |name: &str| {
        std::fs::File::create(dir.path().join(name))
            .map_err(|e| format!("cannot create {name}: {e}"))
    };
    let mut child = std::process::Command::new(python)
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file("stdout")?)
        .stderr(file("stderr")?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", python.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("the baseline did not finish within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for the baseline: {e}")),
        }
    };
    let out = std::fs::read_to_string(dir.path().join("stdout")).unwrap_or_default();
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    if !status.success() {
        let tail: Vec<&str> = err.lines().rev().take(8).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "the baseline failed ({status}): {}",
            tail.join("\n")
        ));
    }
    let last = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    serde_json::from_str(last).map_err(|e| format!("the baseline printed no JSON ({e}): {last:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let s: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&s, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&s, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(quantile(&s, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(quantile(&s, 0.0), Some(Duration::from_millis(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn rss_is_readable() {
        assert!(rss_bytes().expect("VmRSS") > 0);
    }
}
