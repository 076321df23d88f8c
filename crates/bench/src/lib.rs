//! Agora's benchmarks, behind `agora bench NAME [--json]`.
//!
//! Every benchmark runs in this one process, over loopback, and returns a JSON object that
//! always holds `"bench"` (its name), its figures, a **baseline measured in the same run**, the
//! ratio of the two, and `"goal"` / `"goal_met"`. Timings on a shared or small machine move by
//! tens of percent from one run to the next, so an absolute figure alone says little; the same
//! work done by the bare underlying library, on the same machine, at the same moment, under the
//! same background load, gives it a scale. Where it helps, the two are measured in alternating
//! blocks so that a burst of noise hits both.
//!
//! | bench | measures | baseline in the same run | goal |
//! |---|---|---|---|
//! | `rr` | a 1 KiB `Request::Echo` between two in-process `agora_net` nodes (TCP, Noise, Yamux, plus the node's handle and event queues): p50 and p99 over sequential requests | a bare libp2p request-response swarm pair (TCP, Noise, Yamux, a length-prefixed codec), same payload | p50 ratio <= 1.2 |
//! | `gossip` | `N` `agora_net` nodes (200) bootstrapped to node 0, links delayed by `L` (20 ms) with [`agora_net::Config::link_latency`]; time for a message from a random node to reach 99% of the others (p50, p95), and the delivery ratio | the GossipSub bound `(hops + 1) * L`, `hops = ceil(log_6 N)`; plus a measured echo round trip over one delayed link, which shows the injected latency is what it claims | p95 / bound <= 1.5 up to 100 nodes, <= 2.0 beyond; delivery 100% |
//! | `exec` | a trivial WASI echo job through `agora_exec::Sandbox` (cached module), p50; a CPU-bound loop of 10^8 adds with fuel metering | bare wasmtime (own engine and linker, wasmtime-wasi p1, cached module) running the same modules, fuel off | both ratios <= 2 |
//! | `scale` | resident memory (VmRSS), idle CPU, TCP dials and connections per idle `agora_net` node with 100, 300 and 1000 nodes in the process, idle for 30 s | none: absolute budgets | every node connected, <= 6 connections (hubs: their own target + slack, 40), <= 5 MB, <= 1 ms CPU per node per second, <= 0.05 dials per node per second |
//! | `ledger` | 4 in-process `agora_chain` validators (Malachite) over the ledger: finalized transfers per second and commit latency (p50, p99) under an offered load | the pure state machine (`Ledger::apply_block`, one thread) and signature verification alone | >= 5,000 tx/s finalized |
//! | `dispatch` | `N` in-process nodes (20): submit -> verified latency of a trivial job at r=1 and r=3 (p50, p99), and jobs/s sustained | Ray running the same trivial task (sync p50, tasks/s; `bash bench/venv.sh`), and the Ed25519 verification rate (the crypto ceiling) | r=1 p50 <= 2x Ray's, r=3 <= 3x, jobs/s >= Ray's, >= 50% of the ceiling |
//! | `train` | federated training of `examples/train` (8 trainers, real wasm step, 5 re-executions per proposal, FedAvg): held-out accuracy per round, mean round time; also with 2 Byzantine trainers | Flower FedAvg on the same shards with a numpy softmax regression (`flwr`) | final accuracy within 1 point of Flower's |
//! | `infer` | ONNX inference of `examples/onnx/mlp.onnx` on one row through `agora_exec::OnnxEngine::run_blocking` (bytes in, `.npy` bytes out) and `Pool::run_onnx`: p50, p99; jobs/s with 2 slots busy | onnxruntime (`crates/bench/py/onnxruntime_infer.py`), one session, one thread, the same `.npy` in and out, same counts; and bare tract on a prepared tensor | p50 ratio <= 1.5 |
//!
//! [`Opts::smoke`] shrinks every size so that the whole set runs in seconds (CI checks the
//! shape of the JSON, never the timings). Each benchmark is one module with a
//! `run(&Opts) -> Result<Value>`; adding one is a module plus a line in [`run`] and [`BENCHES`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod dispatch;
mod exec;
mod gossip;
mod infer;
mod ledger;
mod rr;
mod scale;
mod train;
mod util;

use serde_json::Value;

/// The benchmarks [`run`] knows, in the order `agora bench` lists them.
pub const BENCHES: &[&str] = &[
    "rr", "gossip", "exec", "scale", "ledger", "dispatch", "train", "infer",
];

/// Options of a benchmark run. Fields a benchmark does not use are ignored; `None` means that
/// benchmark's default size. Build it as `Opts { smoke: true, ..Opts::default() }`.
#[derive(Clone, Debug, Default)]
pub struct Opts {
    /// Tiny sizes, for CI: checks that every benchmark runs and reports, in seconds.
    pub smoke: bool,
    /// `gossip`: number of nodes (default 200, smoke 20). `scale`: measure only this many
    /// nodes instead of 100, 300 and 1000 (smoke 10).
    pub nodes: Option<usize>,
    /// `scale`: how long the nodes stay idle before memory is read (default 30 s, smoke 2 s).
    pub duration_secs: Option<u64>,
    /// `rr`: sequential requests (default 2000, smoke 50). `gossip`: messages published
    /// (default 40, smoke 3). `exec`: runs of the trivial job (default 2000, smoke 20).
    /// `infer`: timed inferences of each kind (default 2000, smoke 20).
    pub iterations: Option<usize>,
    /// `gossip`: the injected one-way link latency in milliseconds (default 20; 0 runs plain
    /// TCP, and then there is no bound to compare with).
    pub latency_ms: Option<u64>,
}

/// Runs the benchmark `name` (one of [`BENCHES`]) and returns its report. Must be called within
/// a tokio runtime; a multi-threaded one gives the intended figures.
pub async fn run(name: &str, opts: &Opts) -> anyhow::Result<Value> {
    match name {
        "rr" => rr::run(opts).await,
        "gossip" => gossip::run(opts).await,
        "exec" => exec::run(opts).await,
        "scale" => scale::run(opts).await,
        "ledger" => ledger::run(opts).await,
        "dispatch" => dispatch::run(opts).await,
        "train" => train::run(opts).await,
        "infer" => infer::run(opts).await,
        other => anyhow::bail!(
            "unknown benchmark `{other}`; the benchmarks are: {}",
            BENCHES.join(", ")
        ),
    }
}
