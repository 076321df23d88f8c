//! Process-level ledger scenarios: four validator processes and a follower replicate the ledger
//! with the embedded BFT engine; one validator is SIGKILLed and restarted; the wallet CLI moves
//! tokens.

// A test reports failure by panicking.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::Network;

/// Every node's ledger height (0 where it does not answer).
fn heights(net: &Network, nodes: &[usize]) -> Vec<u64> {
    nodes
        .iter()
        .map(|&i| {
            net.get(i, "/v1/ledger/status")
                .ok()
                .and_then(|s| s["height"].as_u64())
                .unwrap_or(0)
        })
        .collect()
}

/// Waits until every node in `nodes` is at `height` or above.
fn wait_height(net: &Network, nodes: &[usize], height: u64, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    loop {
        let h = heights(net, nodes);
        if h.iter().all(|x| *x >= height) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: nodes {nodes:?} at heights {h:?}, wanted {height} within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The state root node `i` recorded after block `height`.
fn root_at(net: &Network, i: usize, height: u64) -> String {
    let v = net
        .get(i, &format!("/v1/ledger/blocks?from={height}&limit=1"))
        .unwrap();
    let b = &v["blocks"][0];
    assert_eq!(b["height"], height, "node {i} has no block {height}: {v}");
    b["state_root"].as_str().unwrap().to_string()
}

fn json_cli(net: &Network, i: usize, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = net.cli(i, &all);
    assert!(
        out.status.success(),
        "agora {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn slow_scenario_validator_killed_chain_goes_on_and_it_resyncs() {
    let mut net = Network::start_with(5, Some(4));
    let all = [0, 1, 2, 3, 4];
    wait_height(&net, &all, 3, Duration::from_secs(60), "first blocks");
    let status = net.get(0, "/v1/ledger/status").unwrap();
    assert_eq!(status["validators"].as_array().unwrap().len(), 4);
    assert_eq!(status["supply"]["conserved"], true);

    // The wallet: node 4 (a follower) sends 500 tokens to node 1 and waits for the block.
    let to = net.nodes[1].peer_id.clone();
    let before = json_cli(&net, 1, &["wallet", "balance"])["balance"]
        .as_u64()
        .unwrap();
    let sent = json_cli(&net, 4, &["wallet", "transfer", &to, "500"]);
    assert_eq!(sent["applied"], true, "{sent}");
    let after = json_cli(&net, 1, &["wallet", "balance"])["balance"]
        .as_u64()
        .unwrap();
    assert_eq!(after, before + 500);
    // A transfer beyond the balance is refused by the ledger, with its reason.
    let out = net.cli(4, &["wallet", "transfer", &to, "999999999"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("insufficient balance"), "{err}");

    // SIGKILL validator 3: three of four (75% of the power) keep finalizing.
    net.nodes[3].kill();
    let h = *heights(&net, &[0, 1, 2]).iter().max().unwrap();
    wait_height(
        &net,
        &[0, 1, 2, 4],
        h + 5,
        Duration::from_secs(60),
        "blocks after a validator was killed",
    );

    // Restarted on the same data directory, it replays its blocks and catches up.
    net.nodes[3].spawn();
    net.wait_api(3);
    let target = *heights(&net, &[0, 1, 2]).iter().max().unwrap();
    wait_height(
        &net,
        &[3],
        target,
        Duration::from_secs(90),
        "the restarted validator catching up",
    );
    // Every node reports the same state root at the same height.
    let common = *heights(&net, &all).iter().min().unwrap();
    let root = root_at(&net, 0, common);
    for i in 1..5 {
        assert_eq!(
            root_at(&net, i, common),
            root,
            "node {i} at height {common}"
        );
    }
    // And the restarted validator votes again: the chain still grows with all four.
    wait_height(
        &net,
        &all,
        common + 3,
        Duration::from_secs(60),
        "blocks after the restart",
    );
    net.assert_all_alive();
}

/// `--authorization permissioned`: the staked nodes of the genesis connect to each other; a
/// stranger with no stake is refused before it reaches the application, and counted.
#[test]
fn slow_scenario_permissioned_nodes_refuse_a_peer_without_stake() {
    let mut net = Network::start_full(4, Some(4), &["--authorization=permissioned"]);
    wait_height(
        &net,
        &[0, 1, 2, 3],
        2,
        Duration::from_secs(60),
        "first blocks",
    );
    let dir = net.dir.path().join("stranger");
    std::fs::create_dir_all(&dir).unwrap();
    let api = format!("127.0.0.1:{}", common::free_tcp_port());
    let mut stranger = common::Node {
        peer_id: String::new(),
        api: api.clone(),
        dir: dir.clone(),
        args: vec![
            "node".into(),
            "--preset=local".into(),
            format!("--data-dir={}", dir.display()),
            format!("--listen=/ip4/127.0.0.1/tcp/{}", common::free_tcp_port()),
            format!("--api={api}"),
            "--no-mdns".into(),
            "--exit-with-parent".into(),
            format!("--bootstrap={}", common::bootstrap_of(&net.nodes[0])),
        ],
        child: None,
    };
    stranger.spawn();
    net.nodes.push(stranger);
    net.wait_api(4);
    // Give it time to dial (and be refused) a few times.
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let metrics = net.get_text(0, "/metrics");
        let refused: f64 = metrics
            .lines()
            .filter(|l| {
                l.starts_with("agora_net_refused_connections_total") && l.contains("unauthorized")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if refused > 0.0 || Instant::now() > deadline {
            break refused;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(refused > 0.0, "node 0 counted no unauthorized connection");
    let s = net.get(4, "/v1/status").unwrap();
    assert_eq!(s["connected_peers"], 0, "the stranger got in: {s}");
    let s = net.get(0, "/v1/status").unwrap();
    assert_eq!(
        s["connected_peers"], 3,
        "the staked nodes lost each other: {s}"
    );
    net.assert_all_alive();
}
