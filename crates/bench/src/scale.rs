//! `scale`: resident memory per idle node, with many nodes in one process.
//!
//! For each size (100, 300 and 1000 nodes by default), `agora_net` nodes are started in this
//! process on loopback TCP with `Config::local()`, except: each dials one of the first four nodes
//! (the hubs) as its bootstrap peer and then discovers more through Kademlia, with
//! `target_peers` = 4 ("a few others"; with the default peer slack 2 and inbound excess 1: 4..6
//! peers kept, 7 accepted) and at most 12 connections (`MAX_CONNECTIONS`); a hub (a bootstrap
//! node, target 32 as a bootstrap server would be configured) accepts its quarter of the nodes
//! plus some slack, for a while: its connection manager prunes it back to 40. A size that cannot fit in the
//! process's file descriptor limit is reported as skipped.
//! Every node's event queue is drained by a task, as a node's would be. Once every node has a
//! peer, they idle (GossipSub heartbeats, pings, Kademlia refreshes all run) for 30 s, then the
//! process's `VmRSS` is read. The CPU the idle nodes used meanwhile is reported too, and so are
//! the TCP connections dialed per node per second while idle (the network namespace's
//! `ActiveOpens`: connection churn), connected peers and routing-table sizes.
//!
//! The figure is `(RSS after idling - RSS before the first size) / nodes`: memory the allocator
//! kept from an earlier size is charged to the later one, so it errs on the high side. The
//! increase since the start of the same size is reported too. There is no baseline: the goals
//! are absolute budgets (issue 11), checked for every size: every node connected, at most
//! `T + S` = 6 connections on any node but the hubs (their own `T + S` = 40), <= 5 MB per node, idle CPU <= 1 ms per node per second,
//! <= 0.05 TCP dials per node per second.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::{Value, json};

use crate::Opts;
use crate::util::{self, Node};

const GOAL_MB: f64 = 5.0;
/// Idle CPU budget, milliseconds per node per second.
const GOAL_CPU_MS: f64 = 1.0;
/// Churn budget: TCP dials per node per second while idle.
const GOAL_DIALS: f64 = 0.05;
const HUBS: usize = 4;
const MB: f64 = 1024.0 * 1024.0;
/// Connections per node (hubs excepted): a ceiling above the connection manager's band
/// (`T + S + E` = 7). A size whose nodes could not all hold it within the process's file
/// descriptor limit (two descriptors per in-process connection) is skipped, not measured.
const MAX_CONNECTIONS: u32 = 12;
/// Peers a node keeps: `target_peers` 4 plus the default slack of 2.
const KEPT: usize = 6;
/// The hubs' own degree: bootstrap nodes are configured for more peers than the others, as in
/// any deployed network, so that the newcomers they admit are not pruned back into the search
/// at once (with the common target, 4 hubs serving 1000 newcomers churn: each prune round
/// cuts a hub back to 6 and the nodes still below target dial it again).
const HUB_TARGET: usize = 32;
/// What a hub keeps: its target plus its default slack (`max(T / 4, 2)` = 8).
const HUB_KEPT: usize = HUB_TARGET + HUB_TARGET / 4;

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let sizes = match opts.nodes {
        Some(n) => vec![n],
        None if opts.smoke => vec![10],
        None => vec![100, 300, 1000],
    };
    let idle = Duration::from_secs(
        opts.duration_secs
            .unwrap_or(if opts.smoke { 2 } else { 30 }),
    );
    let rss0 = util::rss_bytes()?;
    let mut reports = Vec::new();
    let mut worst: f64 = 0.0;
    let mut measured = 0usize;
    let mut all_met = true;
    for &n in &sizes {
        if n == 0 {
            bail!("the scale benchmark needs at least one node");
        }
        // Every node may hold MAX_CONNECTIONS connections, plus its listener; keep a margin
        // for dials in flight and the rest of the process.
        let fds_needed = n as u64 * (u64::from(MAX_CONNECTIONS) + 2) + 1000;
        if let Some(limit) = util::fd_limit()
            && fds_needed > limit
        {
            reports.push(json!({
                "nodes": n,
                "status": "skipped",
                "reason": format!(
                    "{n} nodes with up to {MAX_CONNECTIONS} connections each need about \
                     {fds_needed} file descriptors in one process; the limit here is {limit} \
                     (raise it with `ulimit -n`)"
                ),
            }));
            continue;
        }
        let before = util::rss_bytes()?;
        let started = Instant::now();
        let nodes = start(n).await?;
        // Wait until every node has a peer and none holds more than its `T + S` (the hubs have
        // pruned the newcomers they let in), or the deadline (then measure anyway, and say so).
        // A thousand nodes on two cores take minutes to settle (the hubs admit and prune).
        let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 4);
        loop {
            let counts = util::peer_counts(&nodes).await?;
            let (hubs, rest) = counts.split_at(HUBS.min(n));
            let min = counts.iter().copied().min().unwrap_or(0);
            let within = hubs.iter().all(|&c| c <= HUB_KEPT) && rest.iter().all(|&c| c <= KEPT);
            if (min >= 1 && within) || n == 1 || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let setup = started.elapsed();
        util::progress(&format!(
            "scale: {n} nodes connected in {setup:?}; idling {idle:?}; {:?} fds",
            util::open_fds()
        ));
        let mut peak = util::rss_bytes()?;
        let (cpu0, wall0) = (util::process_cpu(), Instant::now());
        let opens0 = util::tcp_active_opens();
        let idle_end = Instant::now() + idle;
        while Instant::now() < idle_end {
            tokio::time::sleep(Duration::from_secs(1).min(idle)).await;
            peak = peak.max(util::rss_bytes()?);
        }
        let after = util::rss_bytes()?;
        let idle_wall = wall0.elapsed().as_secs_f64();
        // Connections dialed per node per second while idle (churn: Kademlia walks dial peers
        // that the connection cap then refuses after the Noise handshake).
        let dials = match (opens0, util::tcp_active_opens()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / n as f64 / idle_wall),
            _ => None,
        };
        // CPU the idle nodes burn (timers, pings, DHT refreshes), in cores.
        let idle_cores = match (cpu0, util::process_cpu()) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a).as_secs_f64() / idle_wall),
            _ => None,
        };
        // One status round, all nodes at once: peers and routing-table sizes.
        let statuses = futures::future::join_all(nodes.iter().map(|n| n.handle.status())).await;
        let (mut peers, mut tables) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for s in statuses {
            let s = s?;
            peers.push(s.connected_peers);
            tables.push(s.routing_table_size);
        }
        let (min, max) = (
            peers.iter().copied().min().unwrap_or(0),
            peers.iter().copied().max().unwrap_or(0),
        );
        let (hub_peers, rest_peers) = peers.split_at(HUBS.min(n));
        let max_rest = rest_peers.iter().copied().max().unwrap_or(0);
        let max_hub = hub_peers.iter().copied().max().unwrap_or(0);
        let mean = util::round(peers.iter().sum::<usize>() as f64 / n as f64, 1);
        let isolated = peers.iter().filter(|&&c| c == 0).count();
        let fds = util::open_fds();
        util::shutdown_all(nodes).await;

        let per_node = after.saturating_sub(rss0) as f64 / MB / n as f64;
        let per_node_delta = after.saturating_sub(before) as f64 / MB / n as f64;
        worst = worst.max(per_node);
        measured += 1;
        let cpu_ms = idle_cores.map(|c| c * 1000.0 / n as f64);
        let goals = json!({
            "every_node_connected": isolated == 0,
            "degree_within_target_plus_slack": max_rest <= KEPT && max_hub <= HUB_KEPT,
            "memory": per_node <= GOAL_MB,
            "idle_cpu": cpu_ms.is_some_and(|c| c <= GOAL_CPU_MS),
            "dials": dials.is_some_and(|d| d <= GOAL_DIALS),
        });
        let met = goals
            .as_object()
            .is_some_and(|g| g.values().all(|v| v.as_bool() == Some(true)));
        all_met &= met;
        let report = json!({
            "nodes": n,
            "rss_before_mb": util::round(before as f64 / MB, 1),
            "rss_after_idle_mb": util::round(after as f64 / MB, 1),
            "rss_peak_mb": util::round(peak as f64 / MB, 1),
            "per_node_mb": util::round(per_node, 3),
            "per_node_delta_mb": util::round(per_node_delta, 3),
            "status": "measured",
            "connected_peers": {
                "min": min,
                "mean": mean,
                "max": max,
                "nodes_without_peers": isolated,
                "max_except_hubs": max_rest,
                "hubs": hub_peers,
            },
            "routing_table": {
                "min": tables.iter().copied().min().unwrap_or(0),
                "mean": util::round(tables.iter().sum::<usize>() as f64 / n as f64, 1),
            },
            "tcp_dials_per_node_per_sec": dials.map(|d| util::round(d, 2)),
            "idle_cpu_cores": idle_cores.map(|c| util::round(c, 3)),
            "idle_cpu_ms_per_node_per_sec": cpu_ms.map(|c| util::round(c, 3)),
            "open_fds": fds,
            "setup_secs": util::round(setup.as_secs_f64(), 1),
            "goals": goals,
            "goals_met": met,
        });
        util::progress(&format!("scale: {report}"));
        reports.push(report);
    }
    Ok(json!({
        "bench": "scale",
        "smoke": opts.smoke,
        "machine": util::machine(),
        "idle_secs": idle.as_secs(),
        "rss_at_start_mb": util::round(rss0 as f64 / MB, 1),
        "sizes": reports,
        "per_node_mb_worst": util::round(worst, 3),
        "config": {
            "base": "Config::local(), loopback TCP only",
            "target_peers": 4,
            "hub_target_peers": HUB_TARGET,
            "max_connections": MAX_CONNECTIONS,
            "hubs": HUBS,
        },
        "baseline": Value::Null,
        "baseline_is": "none: an absolute budget per node",
        "goal": format!(
            "every size: every node connected, <= {KEPT} connections per node and <= {HUB_KEPT} \
             per hub (each its target + slack), \
             <= {GOAL_MB} MB per node, idle CPU <= {GOAL_CPU_MS} ms per node per second, \
             <= {GOAL_DIALS} TCP dials per node per second"
        ),
        "goal_met": measured == sizes.len() && all_met,
        "sizes_measured": measured,
    }))
}

/// Starts `n` nodes: the first [`HUBS`] (bootstrapping to node 0), then all the others at once,
/// each bootstrapping to one of the hubs.
async fn start(n: usize) -> anyhow::Result<Vec<Node>> {
    let config = |i: usize, bootstrap: Option<&agora_net::Multiaddr>| -> anyhow::Result<_> {
        let mut config = util::local_config()?;
        config.target_peers = 4;
        if i < HUBS {
            config.target_peers = HUB_TARGET;
            // Its share of the others, the other hubs, and some slack.
            config.max_connections = MAX_CONNECTIONS
                .max((n.div_ceil(HUBS) + 16) as u32)
                .max((HUB_KEPT + 8) as u32);
            config.max_pending_incoming = config.max_pending_incoming.max(n as u32);
            // A bootstrap node lets every newcomer in (then prunes back to T + S).
            config.inbound_excess =
                Some((config.max_connections as usize).saturating_sub(HUB_TARGET + config.slack()));
        } else {
            config.max_connections = MAX_CONNECTIONS;
        }
        config.bootstrap = bootstrap.into_iter().cloned().collect();
        Ok(config)
    };
    let mut nodes = vec![util::start_node(config(0, None)?).await?];
    let hub0 = nodes[0].addr.clone();
    let hubs = (1..HUBS.min(n))
        .map(|i| config(i, Some(&hub0)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rest = util::start_nodes(hubs).await;
    let rest = match rest {
        Ok(hubs) => {
            nodes.extend(hubs);
            let configs = (HUBS..n)
                .map(|i| config(i, Some(&nodes[i % HUBS].addr)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            util::start_nodes(configs).await
        }
        Err(e) => Err(e),
    };
    match rest {
        Ok(rest) => nodes.extend(rest),
        Err(e) => {
            util::shutdown_all(nodes).await;
            return Err(e);
        }
    }
    for node in &mut nodes {
        util::serve(node, |_| {});
    }
    Ok(nodes)
}
