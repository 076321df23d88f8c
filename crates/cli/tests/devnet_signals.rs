//! Process-level: `agora devnet` under a terminal's Ctrl-C. The terminal sends SIGINT to its
//! whole foreground process group; the devnet's nodes run in their own groups, so only the devnet
//! gets it, collects its summary from the still-running nodes, and then stops them. Without a
//! terminal it prints progress lines on stderr while it runs, not only at the end.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Command lines of the live processes that mention `needle` and run `agora node`.
fn node_processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if entry.file_name().to_string_lossy().parse::<i32>().is_err() {
            continue;
        }
        // A zombie has an empty command line: it is not running.
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if text.contains(" node ") && text.contains(needle) {
                out.push(text);
            }
        }
    }
    out
}

/// Waits up to `within` for a line from `rx` that satisfies `want`; every line read is kept.
fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    within: Duration,
    want: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + within;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = want(&line);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

/// The height in a progress line such as `devnet 12 s: peers [3 3 3 3] of 3, ledger height 17`.
fn ledger_height(line: &str) -> Option<u64> {
    let rest = line.split("ledger height ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[test]
fn slow_scenario_devnet_ctrl_c_to_its_process_group_gives_a_real_summary() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("devnet");
    let xdg = dir.path().join("xdg");
    let mut child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args(["devnet", "--nodes", "4", "--duration", "600", "--json"])
        .arg("--data-dir")
        .arg(&base)
        .env("XDG_DATA_HOME", &xdg)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, as a shell gives a foreground job in a terminal.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = Pid::from_raw(i32::try_from(child.id()).unwrap());

    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::sync_channel::<String>(4096);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let stdout = child.stdout.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    // Progress while it runs, without a terminal: each node coming up, then the full mesh and a
    // status line with the ledger's height. Generous bounds: the machine may be loaded.
    let mut seen = Vec::new();
    let all_up = wait_line(&rx, &mut seen, Duration::from_secs(120), |l| {
        l.starts_with("node 3 up:")
    });
    let meshed = all_up
        && wait_line(&rx, &mut seen, Duration::from_secs(120), |l| {
            l.starts_with("every node sees its 3 peers")
        });
    let running = meshed
        && wait_line(&rx, &mut seen, Duration::from_secs(120), |l| {
            l.starts_with("devnet ") && ledger_height(l).is_some_and(|h| h > 0)
        });
    if !running {
        let _ = kill(pgid, Signal::SIGKILL);
        let _ = child.wait();
        panic!(
            "no progress lines while the devnet ran (up {all_up}, meshed {meshed}):\n{}",
            seen.join("\n")
        );
    }
    for i in 0..4 {
        let prefix = format!("node {i} up: 12D3Koo");
        assert!(
            seen.iter().any(|l| l.starts_with(&prefix)),
            "no line for node {i} coming up:\n{}",
            seen.join("\n")
        );
    }
    assert!(
        node_processes_mentioning(base.to_str().unwrap()).len() >= 4,
        "the nodes are not running"
    );

    // Ctrl-C in a terminal: SIGINT to the whole foreground process group.
    let sent = Instant::now();
    kill(Pid::from_raw(-pgid.as_raw()), Signal::SIGINT).unwrap();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(90) {
            let _ = kill(pgid, Signal::SIGKILL);
            let _ = child.wait();
            panic!("devnet still running 90 s after SIGINT");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    reader.join().unwrap();
    seen.extend(rx.try_iter());
    let stderr_text = seen.join("\n");
    let stdout = out_reader.join().unwrap();
    assert!(status.success(), "devnet failed ({status}):\n{stderr_text}");
    assert!(
        stderr_text.contains("SIGINT: collecting the summary"),
        "{stderr_text}"
    );

    let last = stdout.lines().last().expect("no summary on stdout");
    let v: Value = serde_json::from_str(last).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4, "{last}");
    for n in nodes {
        assert!(
            n["peer_id"].as_str().unwrap().starts_with("12D3Koo"),
            "{last}"
        );
        let peers = n["connected_peers"].as_u64();
        assert!(
            peers.is_some_and(|p| p > 0),
            "a node answered no status after Ctrl-C: {last}\n{stderr_text}"
        );
    }
    let l = &v["ledger"];
    assert!(l["height"].as_u64().is_some_and(|h| h > 0), "{last}");
    assert_eq!(l["validators"], 4, "{last}");
    assert_eq!(l["state_roots_agree"], true, "{last}");

    // The nodes were stopped by the devnet and none is left.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = node_processes_mentioning(base.to_str().unwrap());
    while !left.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        left = node_processes_mentioning(base.to_str().unwrap());
    }
    assert!(left.is_empty(), "processes left behind: {left:?}");
}
