//! The job driver of `agora devnet --jobs`: submits example jobs spread across nodes, follows them
//! to the end, and checks every verified output against a local execution of the same job.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agora_exec::Sandbox;
use anyhow::Result;
use serde_json::{Value, json};

use crate::client::Api;
use crate::workload;

/// Counters the live table shows while jobs run.
#[derive(Default)]
pub struct Progress {
    pub submitted: AtomicUsize,
    pub verified: AtomicUsize,
    pub failed: AtomicUsize,
    pub wrong_accepted: AtomicUsize,
    pub latencies: Mutex<Vec<u64>>,
}

fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied()
}

impl Progress {
    pub fn line(&self, total: usize) -> String {
        format!(
            "jobs {}/{total} submitted, {} verified, {} failed",
            self.submitted.load(Ordering::Relaxed),
            self.verified.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed)
        )
    }

    /// The `"jobs"` object of the devnet's JSON summary.
    pub fn summary(&self, _total: usize) -> Value {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        json!({
            "submitted": self.submitted.load(Ordering::Relaxed),
            "verified": self.verified.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "wrong_accepted": self.wrong_accepted.load(Ordering::Relaxed),
            "latency_ms": {"p50": percentile(&l, 0.5), "p99": percentile(&l, 0.99)},
        })
    }
}

/// Waits until every node sees the others (or 30 s), then one capability-ad interval more.
async fn wait_for_mesh(all: &[String]) {
    let want = all.len().saturating_sub(1) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let mut ok = true;
        for a in all {
            let Ok(api) = Api::new(a) else { return };
            let peers = api
                .get_json("/v1/status")
                .await
                .ok()
                .and_then(|s| s["connected_peers"].as_u64())
                .unwrap_or(0);
            ok &= peers >= want;
        }
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

async fn one(
    api: Api,
    i: usize,
    redundancy: u8,
    expected: Vec<u8>,
    progress: &Progress,
) -> Result<()> {
    let work = workload::nth(i);
    let spec = json!({"redundancy": redundancy, "max_price": 100, "wall_time_ms": 30_000});
    let id = crate::job::upload_and_submit(&api, work.module, &work.input, spec).await?;
    progress.submitted.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let r = api.get_json(&format!("/v1/jobs/{id}")).await?;
        match r["state"].as_str() {
            Some("verified") => {
                let out = api.get_bytes(&format!("/v1/jobs/{id}/output")).await?;
                if out != expected {
                    progress.wrong_accepted.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(l) = r["summary"]["latency_ms"].as_u64()
                    && let Ok(mut v) = progress.latencies.lock()
                {
                    v.push(l);
                }
                progress.verified.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            Some("failed") => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ if tokio::time::Instant::now() > deadline => {
                progress.failed.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Submits `n` jobs round-robin to `apis`, follows them all, and returns the summary.
pub async fn drive(
    apis: Vec<String>,
    all: Vec<String>,
    n: usize,
    redundancy: u8,
    progress: std::sync::Arc<Progress>,
) -> Result<Value> {
    // Reference outputs, computed here in the same sandbox the workers use.
    let expected = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>> {
        let sandbox = Sandbox::new()?;
        (0..n)
            .map(|i| Ok(workload::local_output(&sandbox, &workload::nth(i))?))
            .collect()
    })
    .await??;
    wait_for_mesh(&all).await;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, exp) in expected.into_iter().enumerate() {
        let api = Api::new(&apis[i % apis.len()])?;
        let progress = progress.clone();
        tasks.spawn(async move {
            if let Err(e) = one(api, i, redundancy, exp, &progress).await {
                eprintln!("job {i} ({}): {e:#}", workload::nth(i).name);
                progress.failed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(progress.summary(n))
}
