//! Shared helpers of the process-level tests: real `agora node` processes on loopback.

#![allow(dead_code)] // each test binary uses its own subset

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const EXE: &str = env!("CARGO_BIN_EXE_agora");

/// A free TCP port below the ephemeral range (see `agora_net::free_loopback_port`).
pub fn free_tcp_port() -> u16 {
    agora_net::free_loopback_port(agora_net::PortKind::Tcp).expect("a free TCP port")
}

/// A free UDP port below the ephemeral range.
pub fn free_udp_port() -> u16 {
    agora_net::free_loopback_port(agora_net::PortKind::Udp).expect("a free UDP port")
}

pub struct Node {
    pub peer_id: String,
    pub api: String,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub child: Option<Child>,
}

impl Node {
    pub fn spawn(&mut self) {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .unwrap();
        let mut cmd = Command::new(EXE);
        cmd.args(&self.args);
        clean_env(&mut cmd);
        // Plain info-level logs: readable tails on failure, and the lines a test waits for.
        cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(cmd.spawn().expect("cannot start agora node"));
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// The children read their configuration from flags only.
pub fn clean_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AGORA_") {
            cmd.env_remove(k);
        }
    }
}

/// A small network of real nodes; every child is killed on drop.
pub struct Network {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<Node>,
    pub rt: tokio::runtime::Runtime,
    pub http: reqwest::Client,
}

impl Network {
    /// Starts `n` nodes without a ledger, waits for every API to answer and every node to be
    /// connected to all the others, then 3 s more so that capability ads (every 2 s in the local
    /// preset) have spread.
    pub fn start(n: usize) -> Network {
        Network::start_with(n, None)
    }

    /// Like [`Network::start`]; with `Some(v)`, writes a genesis (`agora genesis`) in which the
    /// first `v` nodes validate and every node has a balance and a worker's stake, and starts
    /// every node with it.
    pub fn start_with(n: usize, validators: Option<usize>) -> Network {
        Network::start_full(n, validators, &[])
    }

    /// Like [`Network::start_with`], with `extra` flags for every node.
    pub fn start_full(n: usize, validators: Option<usize>, extra: &[&str]) -> Network {
        let dir = tempfile::tempdir().unwrap();
        let mut net = Network {
            nodes: Vec::with_capacity(n),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            dir,
        };
        let mut ids = Vec::with_capacity(n);
        for i in 0..n {
            let dir = net.dir.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let out = Command::new(EXE)
                .args(["id", "--data-dir"])
                .arg(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "agora id failed: {out:?}");
            let peer_id = String::from_utf8(out.stdout).unwrap().trim().to_string();
            ids.push((dir, peer_id, free_tcp_port()));
        }
        let genesis = validators.map(|v| {
            let path = net.dir.path().join("genesis.json");
            let mut cmd = Command::new(EXE);
            cmd.args(["genesis", "--chain-id", "test", "--out"])
                .arg(&path);
            for (i, (_, peer, port)) in ids.iter().enumerate() {
                if i < v {
                    cmd.arg("--validator")
                        .arg(format!("{peer}@127.0.0.1:{port}"));
                } else {
                    cmd.arg("--account").arg(peer);
                }
            }
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "agora genesis failed: {out:?}");
            path
        });
        let mut bootstrap: Option<String> = None;
        for (dir, peer_id, consensus_port) in ids {
            let tcp = free_tcp_port();
            let api = format!("127.0.0.1:{}", free_tcp_port());
            let mut args = vec![
                "node".to_string(),
                "--preset=local".into(),
                format!("--data-dir={}", dir.display()),
                format!("--listen=/ip4/127.0.0.1/tcp/{tcp}"),
                format!("--listen=/ip4/127.0.0.1/udp/{}/quic-v1", free_udp_port()),
                format!("--api={api}"),
                "--no-mdns".into(),
                // Dies with this test's thread even if the test process is killed.
                "--exit-with-parent".into(),
            ];
            if let Some(g) = &genesis {
                args.push(format!("--genesis={}", g.display()));
                args.push(format!("--consensus-listen=127.0.0.1:{consensus_port}"));
            }
            args.extend(extra.iter().map(|e| e.to_string()));
            if let Some(b) = &bootstrap {
                args.push(format!("--bootstrap={b}"));
            } else {
                bootstrap = Some(format!("/ip4/127.0.0.1/tcp/{tcp}/p2p/{peer_id}"));
            }
            let mut node = Node {
                peer_id,
                api,
                dir,
                args,
                child: None,
            };
            node.spawn();
            net.nodes.push(node);
        }
        for i in 0..n {
            net.wait_api(i);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let counts: Vec<u64> = (0..n)
                .map(|i| {
                    net.get(i, "/v1/status")
                        .ok()
                        .and_then(|s| s["connected_peers"].as_u64())
                        .unwrap_or(0)
                })
                .collect();
            if counts.iter().all(|c| *c + 1 >= n as u64) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the {n} nodes did not all connect to each other within 60 s: connected_peers {counts:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        std::thread::sleep(Duration::from_secs(3));
        net
    }

    /// Waits (60 s at most) until node `i` answers GET /v1/status.
    pub fn wait_api(&mut self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(Some(status))) = self.nodes[i].child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "node {i} exited at start ({status}):\n{}",
                    self.nodes[i].log_tail(20)
                );
            }
            if self.get(i, "/v1/status").is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {i} did not answer on {} within 60 s:\n{}",
                self.nodes[i].api,
                self.nodes[i].log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn get(&self, i: usize, path: &str) -> Result<Value, String> {
        let url = format!("http://{}{path}", self.nodes[i].api);
        self.rt.block_on(async {
            let r = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = r.status();
            let body: Value = r.json().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(body)
            } else {
                Err(format!("{url} answered {status}: {body}"))
            }
        })
    }

    /// GET `path` on node `i` as text (e.g. `/metrics`); empty if it does not answer.
    pub fn get_text(&self, i: usize, path: &str) -> String {
        let url = format!("http://{}{path}", self.nodes[i].api);
        self.rt.block_on(async {
            match self.http.get(&url).send().await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        })
    }

    /// Runs `agora ARGS --api <node i>`.
    pub fn cli(&self, i: usize, args: &[&str]) -> Output {
        let mut cmd = Command::new(EXE);
        cmd.args(args).arg("--api").arg(&self.nodes[i].api);
        clean_env(&mut cmd);
        cmd.stdin(Stdio::null()).output().unwrap()
    }

    /// Writes a file into the network's temporary directory.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    pub fn index_of(&self, peer_id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.peer_id == peer_id)
    }

    /// Panics if a node that should be running has exited.
    pub fn assert_all_alive(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            if let Some(c) = n.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("node {i} exited ({status}):\n{}", n.log_tail(30));
            }
        }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        if std::thread::panicking() {
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!(
                    "---- node {i} ({}), last lines of its log:\n{}",
                    n.peer_id,
                    n.log_tail(40)
                );
            }
        }
    }
}

/// The bootstrap address of node `i` (its TCP listen address with its peer id).
pub fn bootstrap_of(node: &Node) -> String {
    let tcp = node
        .args
        .iter()
        .find_map(|a| a.strip_prefix("--listen=").filter(|l| l.contains("/tcp/")))
        .expect("a TCP listen address");
    format!("{tcp}/p2p/{}", node.peer_id)
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}
