//! Process-level hardening (issue 18, "Data and disks" and "Processes and ports"): a damaged
//! database, a port already in use, and idle connections against a low open-file limit.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{EXE, clean_env, free_tcp_port, free_udp_port};

/// `agora node` on `dir` with a P2P port and an API port, output captured.
fn node_cmd(dir: &Path, tcp: u16, api: u16) -> Command {
    let mut cmd = Command::new(EXE);
    cmd.args(["node", "--preset=local", "--no-mdns", "--exit-with-parent"])
        .arg(format!("--data-dir={}", dir.display()))
        .arg(format!("--listen=/ip4/127.0.0.1/tcp/{tcp}"))
        .arg(format!("--api=127.0.0.1:{api}"));
    clean_env(&mut cmd);
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    cmd.stdin(Stdio::null());
    cmd
}

/// Waits for `child` to exit, `secs` at most (then kills it and fails).
fn wait_exit(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "the node did not exit within {secs} s; it should have refused to start:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// GET `path` on the API at `api` with a 10 s timeout: the status line and body.
fn http_get(api: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(("127.0.0.1", api)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Waits until the API on `api` answers `GET /v1/status` (60 s at most).
fn wait_api(child: &mut Child, api: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the node exited at start ({status})");
        }
        if http_get(api, "/v1/status").is_ok_and(|r| r.starts_with("HTTP/1.1 200")) {
            return;
        }
        assert!(Instant::now() < deadline, "the API did not answer in 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_damaged_database_is_refused_with_its_name_never_a_panic() {
    let root = tempfile::tempdir().unwrap();
    let good = root.path().join("good");
    {
        let store = agora_node::Store::open(&good).unwrap();
        for i in 0..20u32 {
            store
                .put_job(&agora_types::Hash::of(&i.to_le_bytes()), &[1; 500])
                .unwrap();
        }
    }
    let bytes = std::fs::read(good.join("agora.redb")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        (
            "random",
            (0..bytes.len()).map(|_| rand::random::<u8>()).collect(),
        ),
        ("random after the header", {
            let mut b = bytes.clone();
            for x in b.iter_mut().skip(512) {
                *x = rand::random();
            }
            b
        }),
    ];
    for (name, content) in cases {
        let dir = root.path().join(name.replace(' ', "-"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("agora.redb");
        std::fs::write(&db, &content).unwrap();
        let child = node_cmd(&dir, 0, free_tcp_port())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_exit(child, 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert_ne!(
            code,
            Some(0),
            "{name}: the node started on a damaged database"
        );
        assert_ne!(code, Some(101), "{name}: the node panicked:\n{stderr}");
        assert!(
            stderr.contains(&db.display().to_string()),
            "{name}: stderr does not name {}:\n{stderr}",
            db.display()
        );
        assert!(
            stderr.contains("backup") && stderr.contains("move it away"),
            "{name}: stderr does not say what to do:\n{stderr}"
        );
        assert_eq!(
            std::fs::read(&db).unwrap(),
            content,
            "{name}: the damaged file was modified"
        );
    }
}

#[test]
fn a_second_node_on_a_p2p_port_in_use_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let tcp = free_tcp_port();
    let api = free_tcp_port();
    let mut first = node_cmd(&root.path().join("a"), tcp, api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_api(&mut first, api);
    let _first = Killed(first);
    let second = node_cmd(&root.path().join("b"), tcp, free_tcp_port())
        .arg(format!(
            "--listen=/ip4/127.0.0.1/udp/{}/quic-v1",
            free_udp_port()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(second, 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second node started");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains(&format!("/tcp/{tcp}")) && stderr.contains("already in use"),
        "the error does not name the port in use:\n{stderr}"
    );
}

#[test]
fn a_second_node_on_a_consensus_port_in_use_refuses_to_start() {
    let root = tempfile::tempdir().unwrap();
    let id = |dir: &Path| {
        let out = Command::new(EXE)
            .args(["id", "--data-dir"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    let (peer_a, peer_b) = (id(&a), id(&b));
    let consensus = free_tcp_port();
    let genesis = root.path().join("genesis.json");
    let out = Command::new(EXE)
        .args(["genesis", "--chain-id", "test", "--out"])
        .arg(&genesis)
        .arg("--validator")
        .arg(format!("{peer_a}@127.0.0.1:{consensus}"))
        .arg("--account")
        .arg(&peer_b)
        .output()
        .unwrap();
    assert!(out.status.success(), "agora genesis failed: {out:?}");
    let with_ledger = |dir: &Path, api: u16| {
        let mut c = node_cmd(dir, free_tcp_port(), api);
        c.arg(format!("--genesis={}", genesis.display()))
            .arg(format!("--consensus-listen=127.0.0.1:{consensus}"));
        c
    };
    let api = free_tcp_port();
    let mut first = with_ledger(&a, api)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_api(&mut first, api);
    let _first = Killed(first);
    let second = with_ledger(&b, free_tcp_port())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(second, 60);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second node started");
    assert!(
        stderr.contains(&format!("127.0.0.1:{consensus}")) && stderr.contains("already in use"),
        "the error does not name the consensus port in use:\n{stderr}"
    );
}

#[test]
fn idle_connections_do_not_starve_the_api_under_a_low_file_limit() {
    if Command::new("prlimit").arg("--version").output().is_err() {
        println!("SKIPPED: prlimit (util-linux) is not installed");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (tcp, api) = (free_tcp_port(), free_tcp_port());
    let inner = node_cmd(&root.path().join("n"), tcp, api);
    // The same command under a 64-file limit (soft and hard: the node cannot raise it).
    let mut cmd = Command::new("prlimit");
    cmd.arg("--nofile=64:64")
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args());
    clean_env(&mut cmd);
    cmd.env("RUST_LOG", "info").env("NO_COLOR", "1");
    let log = std::fs::File::create(root.path().join("node.log")).unwrap();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_api(&mut child, api);
    let mut node = Killed(child);
    // 300 raw TCP connections to the P2P port that never say a word.
    let mut idle = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{tcp}").parse().unwrap(),
            Duration::from_secs(2),
        ) {
            Ok(s) => idle.push(s),
            Err(_) => break,
        }
    }
    assert!(idle.len() >= 100, "only {} connections opened", idle.len());
    std::thread::sleep(Duration::from_secs(2));
    for round in 0..3 {
        let started = Instant::now();
        let r = http_get(api, "/v1/status");
        let log = std::fs::read_to_string(root.path().join("node.log")).unwrap_or_default();
        assert!(
            r.as_ref().is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
            "round {round}: with {} idle peer connections the API did not answer ({r:?}) \
             after {:?}:\n{log}",
            idle.len(),
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(
        matches!(node.0.try_wait(), Ok(None)),
        "the node exited under the load"
    );
}
