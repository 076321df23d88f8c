//! `ledger`: finalized transactions per second and commit latency of the replicated ledger, with
//! 4 validators; goal >= 5,000 tx/s finalized.
//!
//! Four `agora_chain` validators run in this process on 127.0.0.1 (free ports, redb and WAL in
//! a temporary directory), each driving its own [`BenchApp`]: a [`Ledger`] and a [`Mempool`]
//! behind a mutex, proposing, validating and committing exactly as the node's `LedgerApp` does
//! (`crates/node/src/ledger.rs`): the proposer takes up to `max_block_txs` from the mempool and
//! trims the block under the size cap, validators decode the block and check its height and
//! length, and the decided block goes through [`Ledger::apply_block_with`] (which skips the
//! signature check of transactions its mempool holds: they were verified on the way in) before
//! the mempool is pruned.
//!
//! Load: `K` sender accounts (256) in the genesis, each sending `Transfer`s of 1 token to the
//! next one. Every transaction is signed before the clock starts (Ed25519 signing is the
//! client's cost). A dispatcher releases them in nonce order, round robin over senders, at the
//! offered rate (10,000 tx/s; smoke 500), while at most [`MAX_OUTSTANDING_BLOCKS`] blocks' worth
//! are released but not yet finalized; past that it waits for blocks (so at saturation the
//! latency includes up to that queue). Every released transaction is inserted into **every**
//! validator's mempool by that validator's own feeder thread, which checks its signature before
//! taking the lock: that is what gossip does, each node verifying what it receives once.
//!
//! Figures, over `--duration` seconds (30; smoke 3) from the first release, counted on
//! validator 0: `txs_finalized` (successful receipts in blocks announced as `Committed`, i.e.
//! applied and stored with fsync), `tx_per_s`, the commit latency of each transaction (release
//! -> `Committed` of its block; p50/p99), blocks and transactions per block. Afterwards the four
//! validators are brought to one height and their state roots compared (`roots_agree`).
//!
//! Baseline in the same run: the pure state machine, [`Ledger::apply_block`] on the same signed
//! transactions in blocks of `max_block_txs`, one thread, no consensus, no mempool, no storage
//! (`apply_tx_per_s`); and signature verification alone (`verify_tx_per_s`), the floor of
//! every apply. A replicated ledger in one process does the work of four nodes on this machine's
//! cores: each transaction is verified 4 times (once per validator, on the way into its mempool,
//! off the lock; the apply skips transactions its mempool holds).
//!
//! Settings for exploration (environment): `AGORA_BENCH_LEDGER_BLOCK_MS` (block time, default
//! 200 ms), `AGORA_BENCH_LEDGER_RATE` (offered tx/s).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use agora_chain::{Application, ChainConfig, ChainHandle, Validator};
use agora_ledger::{
    Block, Genesis, GenesisAccount, Ledger, Mempool, PROPOSAL_BUDGET_BYTES, Params, SignedTx, Tx,
    TxKind,
};
use agora_types::ledger::AccountId;
use agora_types::sign::Signed;
use agora_types::{Keypair, codec, now_ms};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::Opts;
use crate::util::{machine, ms, process_cpu, progress, quantile, round};

const VALIDATORS: usize = 4;
const CHAIN_ID: &str = "agora-bench-ledger";
/// Transactions per block at most (the genesis parameter).
const MAX_BLOCK_TXS: usize = 10_000;
/// Blocks' worth of transactions that may be released but not yet finalized.
const MAX_OUTSTANDING_BLOCKS: usize = 2;
/// Leave room under the block size cap for the block's own fields (as the node does).
const GOAL_TX_PER_S: f64 = 5_000.0;

struct Sizes {
    senders: usize,
    duration: Duration,
    rate: f64,
    block_time: Duration,
    baseline_txs: usize,
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

fn sizes(opts: &Opts) -> Sizes {
    let smoke = opts.smoke;
    let secs = opts.duration_secs.unwrap_or(if smoke { 3 } else { 30 });
    Sizes {
        senders: if smoke { 16 } else { 256 },
        duration: Duration::from_secs(secs.max(1)),
        rate: env_u64("AGORA_BENCH_LEDGER_RATE").unwrap_or(if smoke { 500 } else { 10_000 }) as f64,
        block_time: Duration::from_millis(env_u64("AGORA_BENCH_LEDGER_BLOCK_MS").unwrap_or(200)),
        baseline_txs: if smoke { 1_000 } else { 50_000 },
    }
}

/// A ledger and its mempool, shared by a validator's chain task and its feeder thread.
struct State {
    ledger: Ledger,
    mempool: Mempool,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> MutexGuard<'_, State> {
    match s.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// What validator 0 reports of each applied block: the indices of its successful transactions.
#[derive(Default)]
struct Probe {
    /// Sender key -> sender index.
    senders: HashMap<[u8; 32], usize>,
    count: usize,
    /// Height -> (successful tx indices, failed receipts), waiting for the block's `Committed`.
    applied: Mutex<HashMap<u64, (Vec<u32>, usize)>>,
}

/// The node's `LedgerApp`, without its API bookkeeping (receipts kept, history, notices).
struct BenchApp {
    state: Shared,
    probe: Option<Arc<Probe>>,
    /// Time the chain task waited for the state's lock, in ns (a feeder may hold it).
    lock_wait: Arc<AtomicU64>,
}

impl BenchApp {
    fn lock(&self) -> MutexGuard<'_, State> {
        let t = Instant::now();
        let g = lock(&self.state);
        self.lock_wait
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        g
    }
}

impl Application for BenchApp {
    fn validators(&self, _height: u64) -> Vec<Validator> {
        self.lock()
            .ledger
            .validators()
            .iter()
            .map(|v| Validator {
                public_key: v.account.0,
                power: v.power,
            })
            .collect()
    }

    fn propose(&mut self, height: u64) -> Vec<u8> {
        let st = self.lock();
        let max = st.ledger.params().max_block_txs;
        let txs = st
            .mempool
            .take_within(&st.ledger, max, PROPOSAL_BUDGET_BYTES);
        drop(st);
        let block = Block {
            height,
            time_ms: now_ms(),
            txs,
        };
        codec::encode(&block).unwrap_or_default()
    }

    fn validate(&mut self, height: u64, payload: &[u8]) -> bool {
        let Ok(block) = Block::decode(payload) else {
            return false;
        };
        let max = self.lock().ledger.params().max_block_txs;
        block.height == height && block.txs.len() <= max
    }

    fn commit(&mut self, height: u64, payload: &[u8], decided_at_ms: u64) -> [u8; 32] {
        let block = match Block::decode(payload) {
            Ok(b) if b.height == height => b,
            _ => Block {
                height,
                time_ms: decided_at_ms,
                txs: vec![],
            },
        };
        let mut guard = self.lock();
        let st = &mut *guard;
        // As the node does: what came through the mempool was verified on the way in.
        let mempool = &st.mempool;
        let receipt = match st
            .ledger
            .apply_block_with(&block, |tx| mempool.contains(tx))
        {
            Ok(r) => r,
            Err(_) => return st.ledger.state_root().0,
        };
        st.mempool.prune(&st.ledger);
        drop(guard);
        if let Some(probe) = &self.probe {
            let mut ok = Vec::with_capacity(block.txs.len());
            let mut failed = 0;
            for (tx, r) in block.txs.iter().zip(&receipt.receipts) {
                match (r.error.is_none(), probe.senders.get(&tx.signer)) {
                    (true, Some(&s)) => {
                        ok.push((tx.payload.nonce as usize * probe.count + s) as u32)
                    }
                    _ => failed += 1,
                }
            }
            if let Ok(mut applied) = probe.applied.lock() {
                applied.insert(height, (ok, failed));
            }
        }
        receipt.state_root.0
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    let port = agora_net::free_loopback_port(agora_net::PortKind::Tcp)?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

fn peer_id(kp: &Keypair) -> String {
    kp.public().to_peer_id().to_string()
}

/// Signs `count` transfers: index `i` is sender `i % senders` at nonce `i / senders`, so that
/// taking them in index order keeps every sender's nonces contiguous. Uses every core.
fn sign_all(keys: &[Keypair], count: usize) -> anyhow::Result<Vec<SignedTx>> {
    let k = keys.len();
    let to: Vec<AccountId> = (0..k)
        .map(|s| {
            agora_types::sign::ed25519_public(&keys[(s + 1) % k])
                .map(AccountId)
                .context("not an Ed25519 key")
        })
        .collect::<anyhow::Result<_>>()?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    let ts = now_ms();
    let parts: Vec<anyhow::Result<Vec<SignedTx>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..count)
            .step_by(chunk)
            .map(|start| {
                let (keys, to) = (&keys, &to);
                scope.spawn(move || {
                    (start..(start + chunk).min(count))
                        .map(|i| {
                            let s = i % k;
                            let tx = Tx {
                                chain_id: CHAIN_ID.into(),
                                nonce: (i / k) as u64,
                                kind: TxKind::Transfer {
                                    to: to[s],
                                    amount: 1,
                                },
                            };
                            Signed::sign(&keys[s], tx, ts).map_err(anyhow::Error::from)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("signer panicked")))
            })
            .collect()
    });
    let mut all = Vec::with_capacity(count);
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}

fn genesis(validators: &[Keypair], senders: &[Keypair]) -> Genesis {
    let mut accounts: Vec<GenesisAccount> = validators
        .iter()
        .map(|kp| GenesisAccount {
            peer_id: peer_id(kp),
            balance: 0,
            stake: 1_000_000,
            consensus_addr: None,
        })
        .collect();
    accounts.extend(senders.iter().map(|kp| GenesisAccount {
        peer_id: peer_id(kp),
        balance: 1_000_000_000,
        stake: 0,
        consensus_addr: None,
    }));
    Genesis {
        chain_id: CHAIN_ID.into(),
        genesis_time_ms: 0,
        params: Params {
            max_block_txs: MAX_BLOCK_TXS,
            ..Params::default()
        },
        mint_authority: None,
        max_supply: 0,
        accounts,
    }
}

/// The pure state machine on the same transactions: (apply tx/s, verify-only tx/s).
fn baseline(genesis: &Genesis, txs: &[SignedTx]) -> anyhow::Result<(f64, f64)> {
    let mut ledger = Ledger::from_genesis(genesis)?;
    let blocks: Vec<Block> = txs
        .chunks(MAX_BLOCK_TXS)
        .enumerate()
        .map(|(i, c)| Block {
            height: i as u64 + 1,
            time_ms: i as u64 + 1,
            txs: c.to_vec(),
        })
        .collect();
    let started = Instant::now();
    let mut ok = 0usize;
    for b in &blocks {
        let r = ledger.apply_block(b)?;
        ok += r.receipts.iter().filter(|r| r.error.is_none()).count();
    }
    let apply = started.elapsed();
    if ok != txs.len() {
        bail!(
            "baseline: {} of {} transactions failed",
            txs.len() - ok,
            txs.len()
        );
    }
    let started = Instant::now();
    for tx in txs {
        tx.verify()?;
    }
    let verify = started.elapsed();
    let per_s = |d: Duration| round(txs.len() as f64 / d.as_secs_f64().max(1e-9), 0);
    Ok((per_s(apply), per_s(verify)))
}

/// A block announced as committed on validator 0.
struct Seen {
    at: Instant,
    ok: Vec<u32>,
    failed: usize,
}

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let sz = sizes(opts);
    let validator_keys: Vec<([u8; 32], Keypair)> = (0..VALIDATORS)
        .map(|i| {
            let secret = [i as u8 + 1; 32];
            Keypair::ed25519_from_bytes(secret).map(|kp| (secret, kp))
        })
        .collect::<Result<_, _>>()?;
    let sender_keys: Vec<Keypair> = (0..sz.senders)
        .map(|_| Keypair::generate_ed25519())
        .collect();
    let validator_kps: Vec<Keypair> = validator_keys.iter().map(|(_, k)| k.clone()).collect();
    let genesis = genesis(&validator_kps, &sender_keys);

    // Enough transactions for the whole run at the offered rate.
    let total = ((sz.rate * sz.duration.as_secs_f64()) as usize).max(sz.senders);
    progress(&format!("ledger: signing {total} transfers"));
    let signed_at = Instant::now();
    let txs = Arc::new(sign_all(&sender_keys, total)?);
    let sign_time = signed_at.elapsed();

    progress("ledger: baseline");
    let base_n = sz.baseline_txs.min(total);
    let (apply_tx_per_s, verify_tx_per_s) = baseline(&genesis, &txs[..base_n])?;

    // The four validators.
    let tmp = tempfile::tempdir()?;
    let addrs: Vec<SocketAddr> = (0..VALIDATORS)
        .map(|_| free_port())
        .collect::<Result<_, _>>()?;
    let max_outstanding = MAX_OUTSTANDING_BLOCKS * MAX_BLOCK_TXS;
    let probe = Arc::new(Probe {
        senders: sender_keys
            .iter()
            .enumerate()
            .map(|(i, kp)| agora_types::sign::ed25519_public(kp).map(|k| (k, i)))
            .collect::<Result<_, _>>()?,
        count: sz.senders,
        applied: Mutex::default(),
    });
    let mut states = Vec::new();
    let mut handles: Vec<ChainHandle> = Vec::new();
    let mut runtimes = Vec::new();
    let lock_wait = Arc::new(AtomicU64::new(0));
    for (i, (secret, _)) in validator_keys.iter().enumerate() {
        let state: Shared = Arc::new(Mutex::new(State {
            ledger: Ledger::from_genesis(&genesis)?,
            mempool: Mempool::new(max_outstanding + 2 * MAX_BLOCK_TXS, usize::MAX),
        }));
        let app = BenchApp {
            state: state.clone(),
            probe: (i == 0).then(|| probe.clone()),
            lock_wait: lock_wait.clone(),
        };
        let dir = tmp.path().join(format!("v{i}"));
        let config = ChainConfig {
            db_path: dir.join("chain.redb"),
            wal_dir: dir.join("wal"),
            listen: addrs[i],
            peers: addrs.iter().copied().filter(|a| *a != addrs[i]).collect(),
            secret_key: *secret,
            block_time: sz.block_time,
            chain_id: CHAIN_ID.into(),
        };
        // Each validator on its own runtime (its own threads), as if in its own process: the
        // chain task applies blocks on a runtime thread, and on one shared runtime that would
        // stall the other validators' consensus.
        let started = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("validator-{i}"))
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .map(|rt| {
                let chain = rt.spawn(agora_chain::start(config, app));
                (rt, chain)
            });
        let outcome = match started {
            Ok((rt, chain)) => {
                runtimes.push(rt);
                chain
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r.map_err(Into::into))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok(h) => handles.push(h),
            Err(e) => {
                for h in &handles {
                    h.shutdown().await;
                }
                runtimes.into_iter().for_each(|rt| rt.shutdown_background());
                return Err(e);
            }
        }
        states.push(state);
    }
    let result = measure(&sz, &txs, &states, &handles, &probe, max_outstanding).await;
    for h in &handles {
        h.shutdown().await;
    }
    runtimes.into_iter().for_each(|rt| rt.shutdown_background());
    let m = result?;

    let secs = sz.duration.as_secs_f64();
    let tx_per_s = round(m.finalized as f64 / secs, 1);
    let mut lat = m.latencies;
    lat.sort();
    let p = |q| quantile(&lat, q).map_or(Value::Null, |d| json!(ms(d)));
    Ok(json!({
        "bench": "ledger",
        "validators": VALIDATORS,
        "duration_s": round(secs, 1),
        "txs_finalized": m.finalized,
        "tx_per_s": tx_per_s,
        "commit_latency_ms": { "p50": p(0.50), "p99": p(0.99), "samples": lat.len() },
        "blocks": m.blocks,
        "txs_per_block": round(m.finalized as f64 / m.blocks.max(1) as f64, 1),
        "block_time_ms": sz.block_time.as_millis() as u64,
        "max_block_txs": MAX_BLOCK_TXS,
        "senders": sz.senders,
        "load": {
            "offered_tx_per_s": sz.rate,
            "max_outstanding": max_outstanding,
            "released": m.released,
            "presigned": total,
            "sign_tx_per_s": round(total as f64 / sign_time.as_secs_f64().max(1e-9), 0),
            "mempool_refused": m.insert_errors,
            "failed_receipts": m.failed,
            "delivery": "every transaction inserted into every validator's mempool, as gossip does",
        },
        "cpu": {
            "process_cores_busy": m.cores_busy,
            "cpu_s_by_thread_during_run": m.cpu_by_thread,
            "chain_lock_wait_ms": ms(Duration::from_nanos(lock_wait.load(Ordering::Relaxed))),
            "available_cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
        },
        "baseline": {
            "apply_tx_per_s": apply_tx_per_s,
            "verify_tx_per_s": verify_tx_per_s,
            "txs": base_n,
            "what": "Ledger::apply_block on the same signed txs, one thread, no consensus",
        },
        "ratio_to_state_machine": round(tx_per_s / apply_tx_per_s.max(1e-9), 3),
        "goal": "finalized >= 5000 tx/s",
        "goal_met": tx_per_s >= GOAL_TX_PER_S && m.roots_agree,
        "roots_agree": m.roots_agree,
        "root_height": m.root_height,
        "machine": machine(),
    }))
}

struct Measured {
    finalized: usize,
    failed: usize,
    blocks: usize,
    latencies: Vec<Duration>,
    released: usize,
    insert_errors: usize,
    roots_agree: bool,
    root_height: u64,
    cores_busy: Option<f64>,
    cpu_by_thread: serde_json::Map<String, Value>,
}

/// CPU time of this process's threads, summed by thread name (digits and `-` trimmed), from
/// `/proc/self/task/*/{comm,schedstat}`.
fn thread_cpu() -> HashMap<String, Duration> {
    let mut out: HashMap<String, Duration> = HashMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for task in tasks.flatten() {
        let (Ok(comm), Ok(stat)) = (
            std::fs::read_to_string(task.path().join("comm")),
            std::fs::read_to_string(task.path().join("schedstat")),
        ) else {
            continue;
        };
        let Some(ns) = stat
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
        else {
            continue;
        };
        let name = comm
            .trim()
            .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-');
        *out.entry(name.to_string()).or_default() += Duration::from_nanos(ns);
    }
    out
}

async fn measure(
    sz: &Sizes,
    txs: &Arc<Vec<SignedTx>>,
    states: &[Shared],
    handles: &[ChainHandle],
    probe: &Arc<Probe>,
    max_outstanding: usize,
) -> anyhow::Result<Measured> {
    // Wait until consensus runs (a first block), so that start-up is not measured.
    let start_height = wait_all_at_least(handles, 1, Duration::from_secs(30)).await?;
    progress(&format!("ledger: chain at height {start_height}, loading"));

    let base = Instant::now();
    // Release time of each transaction, in ns since `base` (+1, so 0 means not released).
    let released_at: Arc<Vec<AtomicU64>> =
        Arc::new((0..txs.len()).map(|_| AtomicU64::new(0)).collect());
    let released = Arc::new(AtomicUsize::new(0));
    let finalized = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let insert_errors = Arc::new(AtomicUsize::new(0));

    // One feeder per validator: its gossip handler, checking and inserting each transaction.
    let feeders: Vec<std::thread::JoinHandle<()>> = states
        .iter()
        .map(|state| {
            let (state, txs, released, stop, errors) = (
                state.clone(),
                txs.clone(),
                released.clone(),
                stop.clone(),
                insert_errors.clone(),
            );
            std::thread::Builder::new()
                .name("feeder".into())
                .spawn(move || {
                    let mut next = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let upto = released.load(Ordering::Acquire);
                        if next >= upto {
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        // As the node does: the signature is verified once, off the lock (by
                        // gossip validation), then one transaction per lock.
                        for tx in &txs[next..upto] {
                            if tx.verify().is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let mut guard = lock(&state);
                            let st = &mut *guard;
                            if st.mempool.insert_verified(tx.clone(), &st.ledger).is_err() {
                                errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        next = upto;
                    }
                })
        })
        .collect::<Result<_, _>>()?;

    // Validator 0's committed blocks, stamped on arrival.
    let mut sub = handles[0].subscribe();
    let (stop_collector, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let collector = {
        let (probe, finalized) = (probe.clone(), finalized.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let next = tokio::select! {
                    c = sub.recv() => c,
                    _ = &mut stopped => break,
                };
                match next {
                    Ok(c) => {
                        let at = Instant::now();
                        let entry = probe
                            .applied
                            .lock()
                            .ok()
                            .and_then(|mut a| a.remove(&c.height));
                        let (ok, failed) = entry.unwrap_or_default();
                        finalized.fetch_add(ok.len() + failed, Ordering::Relaxed);
                        progress(&format!(
                            "ledger: height {} committed at {:?}, {} txs",
                            c.height,
                            at.duration_since(base),
                            ok.len() + failed
                        ));
                        seen.push(Seen { at, ok, failed });
                    }
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
            }
            seen
        })
    };

    // The dispatcher: release at the offered rate, within the outstanding bound.
    let cpu_before = process_cpu();
    let threads_before = thread_cpu();
    let end = base + sz.duration;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0usize;
    while Instant::now() < end {
        tick.tick().await;
        let now = Instant::now();
        let by_rate = (sz.rate * now.duration_since(base).as_secs_f64()) as usize;
        let by_room = finalized.load(Ordering::Relaxed) + max_outstanding;
        let target = by_rate.min(by_room).min(txs.len());
        if target > sent {
            let stamp = now.duration_since(base).as_nanos() as u64 + 1;
            for t in &released_at[sent..target] {
                t.store(stamp, Ordering::Relaxed);
            }
            sent = target;
            released.store(sent, Ordering::Release);
        }
    }
    let cpu_after = process_cpu();
    let threads_after = thread_cpu();
    let wall = base.elapsed();
    stop.store(true, Ordering::Relaxed);
    for f in feeders {
        let _ = f.join();
    }

    // Bring every validator to one height and compare the roots there.
    let h = max_height(handles).await + 1;
    wait_all_at_least(handles, h, Duration::from_secs(30)).await?;
    let mut roots = Vec::new();
    for handle in handles {
        let block = handle
            .block(h)
            .await?
            .context("a validator lacks the block")?;
        roots.push(block.state_root);
    }
    let roots_agree = roots.windows(2).all(|w| w[0] == w[1]);
    let _ = stop_collector.send(());
    let seen = collector.await.unwrap_or_default();

    let mut out = Measured {
        finalized: 0,
        failed: 0,
        blocks: 0,
        latencies: Vec::new(),
        released: sent,
        insert_errors: insert_errors.load(Ordering::Relaxed),
        roots_agree,
        root_height: h,
        cpu_by_thread: threads_after
            .iter()
            .map(|(k, v)| {
                let before = threads_before.get(k).copied().unwrap_or_default();
                (
                    k.clone(),
                    json!(round(v.saturating_sub(before).as_secs_f64(), 2)),
                )
            })
            .collect(),
        cores_busy: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| round((b - a).as_secs_f64() / wall.as_secs_f64(), 2)),
    };
    for s in seen.iter().filter(|s| s.at <= end) {
        out.blocks += 1;
        out.finalized += s.ok.len();
        out.failed += s.failed;
        let at = s.at.duration_since(base).as_nanos() as u64;
        for &i in &s.ok {
            let r = released_at
                .get(i as usize)
                .map_or(0, |t| t.load(Ordering::Relaxed));
            if r > 0 {
                out.latencies
                    .push(Duration::from_nanos(at.saturating_sub(r - 1)));
            }
        }
    }
    Ok(out)
}

async fn max_height(handles: &[ChainHandle]) -> u64 {
    let mut max = 0;
    for h in handles {
        max = max.max(h.status().await.height);
    }
    max
}

/// Waits until every validator has decided `height`; returns the lowest height then.
async fn wait_all_at_least(
    handles: &[ChainHandle],
    height: u64,
    within: Duration,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + within;
    loop {
        let mut min = u64::MAX;
        for h in handles {
            min = min.min(h.status().await.height);
        }
        if min >= height {
            return Ok(min);
        }
        if Instant::now() > deadline {
            bail!("validators stuck at height {min}, waiting for {height}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
