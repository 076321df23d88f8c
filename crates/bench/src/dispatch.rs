//! `dispatch`: a trivial job from submission to verified result through the whole market, on N
//! in-process nodes over loopback TCP (20 by default): with fresh standing offers in the
//! submitter's capability index, a direct lease (the fast path; the auction is the fallback),
//! blob fetch, sandbox run, signed result, quorum.
//!
//! Measured: submit->verified latency at r=1 and r=3 (p50, p99, one job at a time), and the
//! sustained rate of verified r=1 jobs with many in flight. Baseline in the same run: the Ed25519
//! sign and verify rates of this machine. An r=1 job on the fast path costs 2 signatures and 2
//! checks (ARCHITECTURE.md), so `cores / (2 / sign_rate + 2 / verify_rate)` jobs/s is the rate at
//! which the network would do nothing but sign and check; the report gives the measured rate as
//! a fraction of it.
//!
//! The second baseline is Ray, the local task runner users compare with: the same trivial task
//! (a `@ray.remote` function returning `b"ok\n"`, `ray.init(num_cpus=2)`), sync latency and
//! sustained tasks/s with as many in flight, run by `py/ray_trivial.py` in this invocation before
//! the nodes start (a Python with `ray`: `bash bench/venv.sh`; without one the report says so).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agora_node::{FileConfig, JobState, Node, NodeConfig, NodeHandle, SubmitRequest};
use agora_types::job::JobSpec;
use agora_types::sign::Signed;
use agora_types::{Hash, Keypair};
use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::Opts;
use crate::util::{process_cpu, python_with, round, run_python, summary_us};

/// The Ray baseline's script.
const RAY_SCRIPT: &str = include_str!("../py/ray_trivial.py");

/// Ray running the same trivial task: its JSON report, or why it could not run.
async fn ray_baseline(samples: usize, window: Duration, in_flight: usize) -> Value {
    let run = move || -> Result<Value, String> {
        let python = python_with(&["ray"])?;
        let args = vec![
            samples.to_string(),
            window.as_secs_f64().to_string(),
            in_flight.to_string(),
        ];
        run_python(
            &python,
            RAY_SCRIPT,
            &args,
            window * 4 + Duration::from_secs(120),
        )
    };
    match tokio::task::spawn_blocking(run).await {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => json!({ "skipped": why }),
        Err(e) => json!({ "skipped": format!("the baseline task failed: {e}") }),
    }
}

/// A WASI command that writes "ok\n" to stdout.
const TRIVIAL: &str = r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ok\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 3))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#;

async fn start_nodes(n: usize) -> anyhow::Result<(Vec<Node>, Vec<tempfile::TempDir>)> {
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    let mut dirs = vec![];
    let mut bootstrap: Vec<String> = vec![];
    for _ in 0..n {
        let dir = tempfile::tempdir()?;
        let file = FileConfig {
            data_dir: Some(dir.path().to_path_buf()),
            listen: Some(vec!["/ip4/127.0.0.1/tcp/0".into()]),
            bootstrap: Some(bootstrap.clone()),
            mdns: Some(false),
            executor_slots: Some(2),
            ad_interval_secs: Some(1),
            ..Default::default()
        };
        let node = Node::start(NodeConfig::validate(file)?).await?;
        if bootstrap.is_empty() {
            let h = node.handle();
            let deadline = Instant::now() + Duration::from_secs(10);
            let addr = loop {
                if let Some(a) = h.status().await?.listen_addresses.first() {
                    break a.clone();
                }
                if Instant::now() > deadline {
                    bail!("node 0 did not start listening");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            };
            bootstrap.push(format!("{addr}/p2p/{}", h.peer_id()));
        }
        nodes.push(node);
        dirs.push(dir);
    }
    // Wait until every node has every other as a peer (or 60 s), then two ad intervals.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut ok = true;
        for node in &nodes {
            ok &= node.handle().status().await?.connected_peers + 1 >= n;
        }
        if ok || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Ok((nodes, dirs))
}

async fn submit(h: &NodeHandle, module: Hash, r: u8, i: usize) -> anyhow::Result<Hash> {
    Ok(h.submit(SubmitRequest {
        module,
        args: vec![format!("{i}")],
        redundancy: Some(r),
        ..Default::default()
    })
    .await?)
}

/// Waits for the verdict as `ray.get` does: told by the node when it is in, no polling.
async fn until_final(h: &NodeHandle, id: Hash, timeout: Duration) -> anyhow::Result<JobState> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, h.wait_final(id)).await {
            Ok(Some(rec)) if rec.state.is_final() => return Ok(rec.state),
            // The node had too many waiters: ask again shortly.
            Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(1)).await,
            Ok(None) => bail!("job {id} is unknown to its node"),
            Err(_) => bail!("job {id} did not finish within {timeout:?}"),
        }
    }
}

/// Sequential latency: one job at a time, submitters in turn.
async fn latency(
    handles: &[NodeHandle],
    modules: &[Hash],
    r: u8,
    count: usize,
) -> anyhow::Result<Value> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let k = i % handles.len();
        let t = Instant::now();
        let id = submit(&handles[k], modules[k], r, i).await?;
        let state = until_final(&handles[k], id, Duration::from_secs(60)).await?;
        if state != JobState::Verified {
            bail!("a trivial job ended {state}");
        }
        samples.push(t.elapsed());
    }
    let (_, _, v) = summary_us(&samples)?;
    Ok(v)
}

/// Ed25519 signatures and verifications per second on one core.
fn crypto_rates(budget: Duration) -> anyhow::Result<(f64, f64)> {
    let kp = Keypair::generate_ed25519();
    let spec = JobSpec {
        module: Hash::of(b"m"),
        module_size: 1,
        input: Hash::of(b""),
        input_size: 0,
        args: vec![],
        limits: Default::default(),
        capabilities: vec!["wasm".into()],
        redundancy: 1,
        max_price: 1,
        deadline_ms: 0,
        nonce: 0,
        credit: false,
        runtime: Default::default(),
    };
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < budget / 2 {
        for i in 0..100 {
            Signed::sign(&kp, spec.clone(), i)?;
        }
        n += 100;
    }
    let sign = n as f64 / t.elapsed().as_secs_f64();
    let signed = Signed::sign(&kp, spec, 1)?;
    let t = Instant::now();
    let mut n = 0u64;
    while t.elapsed() < budget / 2 {
        for _ in 0..100 {
            signed.verify()?;
        }
        n += 100;
    }
    Ok((sign, n as f64 / t.elapsed().as_secs_f64()))
}

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let n = opts.nodes.unwrap_or(if opts.smoke { 4 } else { 20 }).max(2);
    let samples = opts.iterations.unwrap_or(if opts.smoke { 3 } else { 100 });
    let window = Duration::from_secs(
        opts.duration_secs
            .unwrap_or(if opts.smoke { 2 } else { 30 }),
    );
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let (sign_rate, rate) =
        tokio::task::spawn_blocking(|| crypto_rates(Duration::from_millis(1000))).await??;
    let in_flight = (8 * n).min(256);
    // Before the nodes start, so that the two do not share the cores.
    let ray = ray_baseline(samples, window, in_flight).await;

    let (nodes, _dirs) = start_nodes(n).await?;
    let handles: Vec<NodeHandle> = nodes.iter().map(|x| x.handle()).collect();
    let wasm = wat::parse_str(TRIVIAL).context("assembling the trivial module")?;
    let mut modules = vec![];
    for h in &handles {
        modules.push(h.put_blob(wasm.clone()).await?);
    }
    // Warm up: every worker compiles the module once.
    for k in 0..handles.len() {
        let id = submit(&handles[k], modules[k], 3.min(n as u8 - 1), 1_000_000 + k).await?;
        until_final(&handles[k], id, Duration::from_secs(60)).await?;
    }
    let r1 = latency(&handles, &modules, 1, samples).await?;
    let r3 = if n > 3 {
        latency(&handles, &modules, 3, samples).await?
    } else {
        json!({"skipped": "needs at least 4 nodes"})
    };

    // Sustained: keep `in_flight` jobs going for `window`, count the verified ones.
    let verified = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let cpu0 = process_cpu();
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..in_flight {
        let (h, m) = (handles[w % n].clone(), modules[w % n]);
        let (verified, failed) = (verified.clone(), failed.clone());
        tasks.spawn(async move {
            let mut i = 2_000_000 + w * 1_000_000;
            while t.elapsed() < window {
                i += 1;
                let ok = match submit(&h, m, 1, i).await {
                    Ok(id) => matches!(
                        until_final(&h, id, Duration::from_secs(60)).await,
                        Ok(JobState::Verified)
                    ),
                    Err(_) => false,
                };
                if t.elapsed() > window {
                    break;
                }
                if ok {
                    verified.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let cpu = process_cpu().zip(cpu0).map(|(b, a)| b.saturating_sub(a));
    let elapsed = t
        .elapsed()
        .as_secs_f64()
        .min(window.as_secs_f64())
        .max(1e-9);
    let jobs_per_s = verified.load(Ordering::Relaxed) as f64 / elapsed;
    // The documented cost of an r=1 job on the fast path (ARCHITECTURE.md, "What a job costs
    // in signatures"): the submitter signs the job and the worker checks it; the worker signs
    // the result and the submitter checks it. Ads, health, reward reports and the batched result
    // notices are per node and interval, not per job, and are left out (they lower the ceiling).
    let (signs, checks) = (2.0, 2.0);
    let per_job_s = signs / sign_rate + checks / rate;
    let ceiling = cores as f64 / per_job_s;
    for node in nodes {
        node.shutdown().await;
    }
    let p50 = |v: &Value| v["p50_us"].as_f64();
    let ray_p50 = ray["sync"]["p50_us"].as_f64();
    let ray_rate = ray["sustained"]["tasks_per_s"].as_f64();
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(round(a / b, 2)),
        _ => None,
    };
    let r1_ratio = ratio(p50(&r1), ray_p50);
    let r3_ratio = ratio(p50(&r3), ray_p50);
    let rate_ratio = ratio(Some(jobs_per_s), ray_rate);
    let met = (
        r1_ratio.is_some_and(|x| x <= 2.0),
        r3_ratio.is_some_and(|x| x <= 3.0),
        rate_ratio.is_some_and(|x| x >= 1.0),
        jobs_per_s / ceiling >= 0.5,
    );
    Ok(json!({
        "bench": "dispatch",
        "nodes": n,
        "latency_r1": r1,
        "latency_r3": r3,
        "sustained": {
            "window_s": window.as_secs(),
            "in_flight": in_flight,
            "verified": verified.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "jobs_per_s": round(jobs_per_s, 1),
            // Where the time goes: CPU of the whole process (all 20 nodes) per verified job,
            // and the share of the machine's cores it used during the window.
            "cpu_ms_per_job": cpu.map(|c| {
                round(c.as_secs_f64() * 1e3 / verified.load(Ordering::Relaxed).max(1) as f64, 3)
            }),
            "cpu_utilization": cpu.map(|c| round(c.as_secs_f64() / elapsed / cores as f64, 2)),
        },
        "baseline": {
            "ed25519_verify_per_s_per_core": round(rate, 0),
            "ed25519_sign_per_s_per_core": round(sign_rate, 0),
            "cores": cores,
            "signatures_per_job": signs,
            "verifications_per_job": checks,
            "crypto_ceiling_jobs_per_s": round(ceiling, 1),
            "ray": ray,
        },
        "ratios": {
            "r1_p50_over_ray_sync_p50": r1_ratio,
            "r3_p50_over_ray_sync_p50": r3_ratio,
            "jobs_per_s_over_ray_tasks_per_s": rate_ratio,
        },
        "fraction_of_crypto_ceiling": round(jobs_per_s / ceiling, 3),
        "goal": "r=1 p50 <= 2x Ray's sync p50, r=3 p50 <= 3x, sustained r=1 jobs/s >= Ray's \
                 tasks/s, >= 0.5 of the crypto ceiling",
        "goal_met": met.0 && met.1 && met.2 && met.3,
        "goals_met": {
            "r1_p50": met.0,
            "r3_p50": met.1,
            "jobs_per_s": met.2,
            "fraction_of_crypto_ceiling": met.3,
        },
    }))
}
