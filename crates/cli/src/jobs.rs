//! The job driver of `agora devnet --jobs`: submits example jobs spread across nodes, follows them
//! to the end, and checks every verified output against a local execution of the same job.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agora_api_types::{Client, JobState, SubmitRequest};
use agora_exec::Sandbox;
use anyhow::Result;
use serde::Serialize;

use crate::client::connect;
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
    pub fn summary(&self, _total: usize) -> Summary {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let n = |c: &AtomicUsize| u64::try_from(c.load(Ordering::Relaxed)).unwrap_or(u64::MAX);
        Summary {
            submitted: n(&self.submitted),
            verified: n(&self.verified),
            failed: n(&self.failed),
            wrong_accepted: n(&self.wrong_accepted),
            latency_ms: Latency {
                p50: percentile(&l, 0.5),
                p99: percentile(&l, 0.99),
            },
        }
    }
}

/// The `"jobs"` object of the devnet's JSON summary.
#[derive(Serialize, Clone, Debug)]
pub struct Summary {
    pub submitted: u64,
    pub verified: u64,
    pub failed: u64,
    /// Verified outputs that differ from a local run of the same job: must stay 0.
    pub wrong_accepted: u64,
    pub latency_ms: Latency,
}

/// Submission-to-verdict latency percentiles, in ms.
#[derive(Serialize, Clone, Debug)]
pub struct Latency {
    pub p50: Option<u64>,
    pub p99: Option<u64>,
}

/// Waits until every node sees the others (or 30 s), then one capability-ad interval more.
async fn wait_for_mesh(all: &[String]) {
    let want = all.len().saturating_sub(1) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let mut ok = true;
        for a in all {
            let Ok(api) = connect(a) else { return };
            let peers = api.status().await.map_or(0, |s| s.connected_peers);
            ok &= peers >= want;
        }
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

/// With a ledger: waits (up to 30 s) until every submitter holds a credit line to each of the
/// `want` other nodes, so that jobs are paid from lines and wait for no block.
async fn wait_for_credit_lines(apis: &[String], want: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        let mut ok = true;
        for a in apis {
            let Ok(api) = connect(a) else { return };
            ok &= api.wallet().await.is_ok_and(|w| w.credit_lines >= want);
        }
        if ok {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("not every submitter has a credit line to every worker after 30 s; going on");
}

async fn one(
    api: Client,
    i: usize,
    redundancy: u8,
    expected: Vec<u8>,
    progress: &Progress,
) -> Result<()> {
    let work = workload::nth(i);
    let spec = SubmitRequest {
        redundancy: Some(redundancy),
        ..SubmitRequest::default()
    };
    let id = crate::job::upload_and_submit(&api, work.module, &work.input, spec).await?;
    progress.submitted.fetch_add(1, Ordering::Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    loop {
        let r = api.job(&id).await?;
        match r.state {
            JobState::Verified => {
                let out = api.output(&id).await?;
                if out != expected {
                    progress.wrong_accepted.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(l) = r.summary.latency_ms
                    && let Ok(mut v) = progress.latencies.lock()
                {
                    v.push(l);
                }
                progress.verified.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            JobState::Failed => {
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
    ledger: bool,
    progress: std::sync::Arc<Progress>,
) -> Result<Summary> {
    // Reference outputs, computed here in the same sandbox the workers use.
    let expected = tokio::task::spawn_blocking(move || -> Result<Vec<Vec<u8>>> {
        let sandbox = Sandbox::new()?;
        (0..n)
            .map(|i| Ok(workload::local_output(&sandbox, &workload::nth(i))?))
            .collect()
    })
    .await??;
    wait_for_mesh(&all).await;
    if ledger {
        wait_for_credit_lines(&apis, all.len().saturating_sub(1) as u64).await;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (i, exp) in expected.into_iter().enumerate() {
        let api = connect(&apis[i % apis.len()])?;
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
