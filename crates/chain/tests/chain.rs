//! Multi-node scenarios: four validators and a late follower, all in this process on 127.0.0.1.
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_chain::{Application, ChainConfig, ChainError, ChainHandle, Validator};

const BLOCK_TIME: Duration = Duration::from_millis(250);
const CHAIN_ID: &str = "agora-chain-test";

/// A list of strings; the state root is the blake3 of the list so far.
struct ListApp {
    name: String,
    validators: Vec<Validator>,
    items: Arc<Mutex<Vec<String>>>,
    root: blake3::Hasher,
}

impl ListApp {
    fn new(name: &str, validators: Vec<Validator>) -> Self {
        Self {
            name: name.to_string(),
            validators,
            items: Arc::default(),
            root: blake3::Hasher::new(),
        }
    }
}

impl Application for ListApp {
    fn validators(&self, _height: u64) -> Vec<Validator> {
        self.validators.clone()
    }

    fn propose(&mut self, height: u64) -> Vec<u8> {
        let mut payload = format!("item {height} from {}", self.name).into_bytes();
        if height.is_multiple_of(3) {
            // Big enough to stream in several parts.
            payload.resize(payload.len() + 300_000, b'.');
        }
        payload
    }

    fn validate(&mut self, height: u64, payload: &[u8]) -> bool {
        payload.starts_with(format!("item {height} ").as_bytes())
    }

    fn commit(&mut self, height: u64, payload: &[u8], _decided_at_ms: u64) -> [u8; 32] {
        let mut items = self.items.lock().unwrap();
        assert_eq!(items.len() as u64 + 1, height, "commit out of order");
        items.push(String::from_utf8_lossy(payload).into_owned());
        self.root.update(&(payload.len() as u64).to_le_bytes());
        self.root.update(payload);
        *self.root.finalize().as_bytes()
    }
}

/// A free port below the ephemeral range, never handed out twice in this process.
fn free_port() -> SocketAddr {
    let port = agora_net::free_loopback_port(agora_net::PortKind::Tcp).unwrap();
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Node {
    secret: [u8; 32],
    listen: SocketAddr,
    dir: PathBuf,
}

impl Node {
    fn config(&self, peers: &[SocketAddr]) -> ChainConfig {
        ChainConfig {
            db_path: self.dir.join("chain.redb"),
            wal_dir: self.dir.join("wal"),
            listen: self.listen,
            peers: peers
                .iter()
                .copied()
                .filter(|p| *p != self.listen)
                .collect(),
            secret_key: self.secret,
            block_time: BLOCK_TIME,
            chain_id: CHAIN_ID.into(),
        }
    }

    async fn start(&self, peers: &[SocketAddr], validators: &[Validator]) -> ChainHandle {
        let app = ListApp::new(&self.listen.to_string(), validators.to_vec());
        agora_chain::start(self.config(peers), app).await.unwrap()
    }
}

fn nodes(root: &Path, count: u8) -> Vec<Node> {
    (0..count)
        .map(|i| Node {
            secret: [i + 1; 32],
            listen: free_port(),
            dir: root.join(format!("node{i}")),
        })
        .collect()
}

async fn wait_height(handle: &ChainHandle, height: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = handle.status().await;
        if status.height >= height {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "stuck at height {} waiting for {height}",
            status.height
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn root_at(handle: &ChainHandle, height: u64) -> [u8; 32] {
    handle
        .block(height)
        .await
        .unwrap()
        .expect("block decided")
        .state_root
}

async fn min_height(handles: &[&ChainHandle]) -> u64 {
    let mut min = u64::MAX;
    for h in handles {
        min = min.min(h.status().await.height);
    }
    min
}

async fn max_height(handles: &[&ChainHandle]) -> u64 {
    let mut max = 0;
    for h in handles {
        max = max.max(h.status().await.height);
    }
    max
}

async fn assert_same_root(handles: &[&ChainHandle], height: u64) {
    let expected = root_at(handles[0], height).await;
    for h in &handles[1..] {
        assert_eq!(
            root_at(h, height).await,
            expected,
            "roots differ at {height}"
        );
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_scenario_four_validators_stop_restart_and_follower() {
    init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let all = nodes(tmp.path(), 5);
    let (vals, follower) = all.split_at(4);
    let validators: Vec<Validator> = vals
        .iter()
        .enumerate()
        .map(|(i, n)| Validator {
            public_key: agora_chain::public_key(&n.secret),
            power: 10 + i as u64,
        })
        .collect();
    let addrs: Vec<SocketAddr> = vals.iter().map(|n| n.listen).collect();
    let started = Instant::now();

    // 1. Four validators reach height 5 and agree on the state root.
    let mut handles = Vec::new();
    for n in vals {
        handles.push(n.start(&addrs, &validators).await);
    }
    for h in &handles {
        wait_height(h, 5, Duration::from_secs(30)).await;
    }
    let all_refs: Vec<&ChainHandle> = handles.iter().collect();
    assert_same_root(&all_refs, 5).await;
    let status = handles[0].status().await;
    assert_eq!(status.validators.len(), 4);
    let block = handles[0].block(5).await.unwrap().unwrap();
    assert!(!block.certificate.is_empty());
    assert!(block.payload.starts_with(b"item 5 "));
    let mut committed = handles[0].subscribe();
    let next = committed.recv().await.unwrap();
    assert_eq!(next.state_root, root_at(&handles[0], next.height).await);
    eprintln!("step 1: height 5 after {:?}", started.elapsed());

    // 2. One validator stops; the other three keep deciding.
    let stopped = handles.pop().unwrap();
    stopped.shutdown().await;
    let stopped_at = stopped.status().await.height;
    let live: Vec<&ChainHandle> = handles.iter().collect();
    let base = max_height(&live).await;
    for h in &live {
        wait_height(h, base + 3, Duration::from_secs(30)).await;
    }
    assert_same_root(&live, base + 3).await;
    eprintln!(
        "step 2: 3 validators at {} after {:?}",
        base + 3,
        started.elapsed()
    );

    // 3. It restarts from its database and WAL, replays, and catches up.
    let restarted = vals[3].start(&addrs, &validators).await;
    assert!(
        restarted.status().await.height >= stopped_at,
        "replay lost blocks"
    );
    let target = max_height(&live).await;
    wait_height(&restarted, target + 2, Duration::from_secs(30)).await;
    wait_height(live[0], target + 2, Duration::from_secs(30)).await;
    assert_same_root(&[live[0], &restarted], target + 2).await;
    eprintln!(
        "step 3: restarted node caught up to {} after {:?}",
        target + 2,
        started.elapsed()
    );
    handles.push(restarted);

    // 4. A fifth node, not a validator, starts late and syncs.
    let late = follower[0].start(&addrs, &validators).await;
    let all_refs: Vec<&ChainHandle> = handles.iter().collect();
    let target = min_height(&all_refs).await;
    wait_height(&late, target + 2, Duration::from_secs(30)).await;
    wait_height(all_refs[0], target + 2, Duration::from_secs(30)).await;
    assert_same_root(&[all_refs[0], &late], target + 2).await;
    assert_eq!(late.status().await.validators.len(), 4);
    eprintln!(
        "step 4: follower synced to {} after {:?}",
        target + 2,
        started.elapsed()
    );

    late.shutdown().await;
    for h in &handles {
        h.shutdown().await;
    }
    assert!(matches!(late.block(1).await, Err(ChainError::Stopped)));
}

#[tokio::test]
async fn port_zero_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node {
        secret: [1; 32],
        listen: "127.0.0.1:0".parse().unwrap(),
        dir: tmp.path().to_path_buf(),
    };
    let app = ListApp::new("x", Vec::new());
    let err = agora_chain::start(node.config(&[]), app).await.err();
    assert!(matches!(err, Some(ChainError::Config(_))));
}
