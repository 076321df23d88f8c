//! The connection manager over real loopback TCP: a network of 30 in-process nodes with
//! `target_peers` = 4 settles inside `[1, T + S]` peers per node, stops dialing once settled, and
//! still carries gossip to every node.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use agora_net::{Config, Keypair, Multiaddr, NetEvent, NetHandle, Network};
use agora_types::wire::GossipMessage;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

const NODES: usize = 30;
const TARGET: usize = 4;

struct Node {
    handle: NetHandle,
    registry: Registry,
    addr: Multiaddr,
    inbox: mpsc::Receiver<GossipMessage>,
}

async fn start(bootstrap: Vec<Multiaddr>, tweak: impl FnOnce(&mut Config)) -> Node {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config::local();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = bootstrap;
    config.target_peers = TARGET;
    // Faster rounds than the preset's 10 s, so that the test settles sooner; the rules are the
    // same.
    config.prune_interval = Duration::from_secs(2);
    tweak(&mut config);
    let mut registry = Registry::default();
    let Network {
        handle, mut events, ..
    } = agora_net::spawn(Keypair::generate_ed25519(), config, &mut registry).unwrap();
    let addr = loop {
        let s = handle.status().await.unwrap();
        if let Some(a) = s.listen_addresses.first() {
            break a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let addr = addr.with(agora_net::multiaddr::Protocol::P2p(handle.local_peer_id()));
    let (tx, inbox) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            if let NetEvent::Gossip { message, .. } = e {
                let _ = tx.try_send(message);
            }
        }
    });
    Node {
        handle,
        registry,
        addr,
        inbox,
    }
}

/// The sum of a metric's lines starting with `name` (all label sets), 0 when absent.
fn metric(registry: &Registry, name: &str) -> f64 {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

fn dials(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .map(|n| metric(&n.registry, "agora_net_dials_total"))
        .sum()
}

fn by_source(r: &Registry) -> [f64; 3] {
    ["approved", "discovery", "purposeful"]
        .map(|k| metric(r, &format!("agora_net_dials_total{{source=\"{k}\"}}")))
}

async fn degrees(nodes: &[Node]) -> Vec<usize> {
    let mut out = vec![];
    for n in nodes {
        out.push(n.handle.status().await.unwrap().connected_peers);
    }
    out
}

// Settling takes 73-207 s on this 2-core machine with nothing else running, more than CI's
// loaded second pass can give it: run by hand (`cargo test -p agora-net --test degree --
// --ignored`) until the manager converges faster (issue 11).
#[ignore = "slow to settle: 73-207 s quiet; run by hand with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_nodes_settle_at_target_stop_dialing_and_still_gossip() {
    // One bootstrap node that lets every newcomer in for a while (then prunes back to T + S),
    // as a real bootstrap node would be configured.
    let hub = start(vec![], |c| {
        c.inbound_excess = Some(NODES + 8);
        c.max_connections = 64;
    })
    .await;
    let boot = vec![hub.addr.clone()];
    let mut nodes = vec![hub];
    for _ in 1..NODES {
        nodes.push(start(boot.clone(), |_| {}).await);
    }
    let slack = {
        let mut c = Config::local();
        c.target_peers = TARGET;
        c.slack()
    };
    let high = TARGET + slack;

    // Settled: every node holds between 1 and T + S peers and at most a tenth are below T, for
    // three checks running.
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(420);
    let mut good = 0;
    let mut last = vec![];
    while good < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "did not settle in [1, {high}] peers per node (at most {} below {TARGET}): {last:?}",
            NODES / 10
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = degrees(&nodes).await;
        let below = last.iter().filter(|d| **d < TARGET).count();
        if last.iter().all(|d| (1..=high).contains(d)) && below <= NODES / 10 {
            good += 1;
        } else {
            good = 0;
        }
    }
    eprintln!(
        "settled after {:?}: degrees {last:?}, {} dials so far",
        started.elapsed(),
        dials(&nodes)
    );

    // Quiet: over 10 s, at most 0.05 dials per node per second (the budget), and every
    // node stays inside the band.
    let window = Duration::from_secs(10);
    let before = dials(&nodes);
    let by_node: Vec<[f64; 3]> = nodes.iter().map(|n| by_source(&n.registry)).collect();
    tokio::time::sleep(window).await;
    let during = dials(&nodes) - before;
    for (i, (n, b)) in nodes.iter().zip(&by_node).enumerate() {
        let a = by_source(&n.registry);
        let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
        if d.iter().any(|x| *x > 0.0) {
            eprintln!("node {i}: dials approved/discovery/purposeful {d:?}");
        }
    }
    let after = degrees(&nodes).await;
    let budget = 0.05 * NODES as f64 * window.as_secs_f64();
    eprintln!("quiet window: {during} dials (budget {budget}); degrees {after:?}");
    for reason in [
        "over_capacity",
        "pruned",
        "at_target",
        "paced",
        "handshake_rate",
        "per_ip",
    ] {
        let n: f64 = nodes
            .iter()
            .map(|n| {
                metric(
                    &n.registry,
                    &format!("agora_net_refused_connections_total{{reason=\"{reason}\"}}"),
                )
            })
            .sum();
        eprintln!("refused {reason}: {n}");
    }
    assert!(
        during <= budget,
        "{during} dials in {window:?} after settling (budget {budget}); degrees {after:?}"
    );
    assert!(
        after.iter().all(|d| (1..=high).contains(d)),
        "degrees left [1, {high}]: {after:?}"
    );
    let below = after.iter().filter(|d| **d < TARGET).count();
    assert!(
        below <= NODES / 10,
        "{below} nodes below the target of {TARGET}: {after:?}"
    );

    // Gossip still reaches every node over the bounded meshes.
    let from = NODES - 1;
    let mut got = [false; NODES];
    got[from] = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut k = 0u32;
    while got.iter().any(|g| !g) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gossip did not reach nodes {:?}",
            got.iter()
                .enumerate()
                .filter(|(_, g)| !**g)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        );
        k += 1;
        nodes[from]
            .handle
            .publish(GossipMessage::Text(format!("degree test #{k}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        for (i, n) in nodes.iter_mut().enumerate() {
            while let Ok(m) = n.inbox.try_recv() {
                if matches!(&m, GossipMessage::Text(t) if t.starts_with("degree test")) {
                    got[i] = true;
                }
            }
        }
    }
    for n in &nodes {
        n.handle.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_beyond_target_slack_and_excess_is_refused() {
    // T = 1, S = 0, E = 1: two peers accepted, the third refused before Noise.
    let hub = start(vec![], |c| {
        c.target_peers = 1;
        c.peer_slack = Some(0);
        c.inbound_excess = Some(1);
        c.prune_interval = Duration::from_secs(60);
    })
    .await;
    let boot = vec![hub.addr.clone()];
    let mut others = vec![];
    for _ in 0..4 {
        others.push(start(boot.clone(), |c| c.target_peers = 1).await);
    }
    let refused = |n: &Node| {
        metric(
            &n.registry,
            "agora_net_refused_connections_total{reason=\"over_capacity\"}",
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut max = 0;
    while refused(&hub) < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no over-capacity refusal; hub at {max} peers"
        );
        max = max.max(hub.handle.status().await.unwrap().connected_peers);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        max = max.max(hub.handle.status().await.unwrap().connected_peers);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(max <= 2, "the hub held {max} peers, beyond T + S + E = 2");
    assert_eq!(max, 2, "the hub should fill its band");
}
