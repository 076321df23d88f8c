//! Process-level: `agora devnet` starts real node processes that discover each other through the
//! DHT, reports them in one JSON line, and leaves no process behind.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

use serde_json::Value;

/// Every `agora node` process: its pid and command line.
fn node_processes() -> Vec<(i32, String)> {
    let mut out = vec![];
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&bytes).replace('\0', " ");
            if text.contains(" node ") {
                out.push((pid, text));
            }
        }
    }
    out
}

fn processes_mentioning(needle: &str) -> Vec<String> {
    node_processes()
        .into_iter()
        .filter(|(_, text)| text.contains(needle))
        .map(|(_, text)| text)
        .collect()
}

#[test]
fn slow_scenario_devnet_five_nodes_all_connected_and_cleaned_up() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("devnet");
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args([
            "devnet",
            "--nodes",
            "5",
            "--duration",
            "15",
            "--json",
            "--data-dir",
        ])
        .arg(&base)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let last = stdout.lines().last().expect("no output");
    let v: Value = serde_json::from_str(last).unwrap();
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 5);
    for n in nodes {
        assert_eq!(n["connected_peers"], 4, "{last}\n{stderr}");
        assert!(n["peer_id"].as_str().unwrap().starts_with("12D3Koo"));
    }
    let left = processes_mentioning(base.to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:?}");
}

#[test]
fn slow_scenario_devnet_ledger_pays_honest_workers_and_slashes_the_byzantine() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("devnet");
    let out = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args([
            "devnet",
            "--nodes",
            "6",
            "--jobs",
            "12",
            "--byzantine",
            "1",
            "--json",
            "--data-dir",
        ])
        .arg(&base)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let jobs = &v["jobs"];
    assert_eq!(jobs["verified"], 12, "{v}");
    assert_eq!(jobs["wrong_accepted"], 0, "{v}");
    let l = &v["ledger"];
    assert!(l["height"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(l["validators"], 4, "{v}");
    assert_eq!(l["supply_conserved"], true, "{v}");
    assert_eq!(l["every_verified_job_paid"], true, "{v}");
    assert_eq!(l["settled_jobs"], 12, "{v}");
    assert_eq!(l["honest_paid_exactly_their_bid"], true, "{v}");
    assert_eq!(l["state_roots_agree"], true, "{v}");
    assert!(l["paid"].as_u64().unwrap() > 0, "{v}");
    // The Byzantine worker took part in at least one job and was outvoted, so it was slashed.
    let byz = &l["byzantine_slashed"][0];
    assert_eq!(byz["slashed"], true, "{v}");
    assert!(l["slashed"].as_u64().unwrap() > 0, "{v}");
}

/// The pid of the `agora node` process whose data directory is `dir`.
fn node_pid(dir: &str) -> Option<i32> {
    let flag = format!("--data-dir={dir} ");
    node_processes()
        .into_iter()
        .find(|(_, text)| text.contains(&flag))
        .map(|(pid, _)| pid)
}

#[test]
fn slow_scenario_devnet_validator_killed_chain_goes_on_and_it_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("devnet");
    let child = Command::new(env!("CARGO_BIN_EXE_agora"))
        .args([
            "devnet",
            "--nodes",
            "5",
            "--duration",
            "30",
            "--json",
            "--data-dir",
        ])
        .arg(&base)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Validator 3 is SIGKILLed once the chain runs; the devnet restarts it.
    let victim = base.join("node-3");
    let victim = victim.to_str().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut killed = false;
    while std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let blocks = std::fs::read_to_string(base.join("node-3/node.log"))
            .unwrap_or_default()
            .matches("committed")
            .count();
        if blocks >= 5
            && let Some(pid) = node_pid(victim)
        {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            killed = true;
            break;
        }
    }
    assert!(killed, "validator 3 never reached 5 blocks");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "devnet failed: {stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let v: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(v["nodes"][3]["restarts"], 1, "{v}");
    let l = &v["ledger"];
    assert_eq!(l["state_roots_agree"], true, "{v}");
    assert_eq!(l["supply_conserved"], true, "{v}");
    let heights: Vec<u64> = l["heights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect();
    let top = *heights.iter().max().unwrap();
    // The restarted validator caught up: within a few blocks of the others at the end.
    assert!(heights[3] + 5 >= top, "heights {heights:?}");
    assert!(top >= 10, "heights {heights:?}");
}
