//! `train`: federated training of the digits example (`examples/train`) against Flower.
//!
//! Agora: `agora_train::simulate`, 8 trainers (one per committed shard), the real training step
//! (`examples/wasm/train.wasm`) in the sandbox for every task and every verifier's re-execution
//! (5 per proposal), FedAvg, 20 rounds (smoke: 2); once with no Byzantine trainer and once with
//! 2, plus the centralized baseline (the same module on all shards). Flower, in the same
//! invocation: `examples/train/flower/fedavg.py`, FedAvg over the same shards with a numpy
//! softmax regression client (same learning rate, local steps, batch), an in-process gRPC server
//! and one client thread per shard (a Python with `flwr` and `numpy`; without one the report
//! says so). Reported: per-round held-out accuracy side by side, and the mean round time as a
//! ratio (Agora's rounds include 6 sandbox runs per trainer: its task and 5 re-executions).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agora_exec::Sandbox;
use agora_train::{Data, SimConfig, centralized, simulate};
use anyhow::Context;
use serde_json::{Value, json};

use crate::Opts;
use crate::util::{python_with, round, run_python};

/// The Flower baseline's script.
const FLOWER_SCRIPT: &str = include_str!("../../../examples/train/flower/fedavg.py");

/// Goal: final held-out accuracy within this many points of Flower's.
const GOAL_POINTS: f64 = 1.0;

fn flower(data: PathBuf, cfg: &SimConfig) -> Value {
    let python = match python_with(&["flwr", "numpy"]) {
        Ok(p) => p,
        Err(why) => return json!({ "skipped": why }),
    };
    let args = vec![
        data.display().to_string(),
        cfg.rounds.to_string(),
        cfg.local_steps.to_string(),
        cfg.batch.to_string(),
        (f64::from(cfg.learning_rate) / 65536.0).to_string(),
    ];
    let timeout = Duration::from_secs(120 + 30 * cfg.rounds);
    match run_python(&python, FLOWER_SCRIPT, &args, timeout) {
        Ok(v) => v,
        Err(why) => json!({ "skipped": why }),
    }
}

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let rounds = opts
        .iterations
        .map(|n| n as u64)
        .unwrap_or(if opts.smoke { 2 } else { 20 });
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let module = std::fs::read(root.join("examples/wasm/train.wasm"))
        .context("reading examples/wasm/train.wasm (run examples/build.sh)")?;
    let data_dir = root.join("examples/train/data");
    let data = Data::load(&data_dir)?;
    let cfg = SimConfig {
        rounds,
        ..SimConfig::recommended(0)
    };
    let cfg2 = SimConfig {
        rounds,
        ..SimConfig::recommended(2)
    };
    let (c1, c2) = (cfg.clone(), cfg2.clone());
    let agora = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let sandbox = Sandbox::new()?;
        let (_, central) = centralized(&sandbox, &module, &data, &c1)?;
        let t = Instant::now();
        let honest = simulate(&sandbox, &module, &data, &c1)?;
        let elapsed = t.elapsed();
        let byz = simulate(&sandbox, &module, &data, &c2)?;
        Ok((central, honest, elapsed, byz))
    })
    .await
    .context("the simulation task failed")??;
    let (central, honest, elapsed, byz) = agora;
    let flower_cfg = cfg.clone();
    let flower = tokio::task::spawn_blocking(move || flower(data_dir, &flower_cfg))
        .await
        .unwrap_or_else(|e| json!({ "skipped": format!("the baseline task failed: {e}") }));

    let agora_acc: Vec<f64> = honest.rounds.iter().map(|r| round(r.accuracy, 2)).collect();
    let agora_round = elapsed.as_secs_f64() / rounds.max(1) as f64;
    let flower_acc: Option<Vec<f64>> = flower["accuracy"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect());
    let flower_round = flower["round_secs"].as_array().and_then(|a| {
        let v: Vec<f64> = a.iter().filter_map(Value::as_f64).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    });
    let per_round: Vec<Value> = agora_acc
        .iter()
        .enumerate()
        .map(|(i, a)| {
            json!({
                "round": i + 1,
                "agora": a,
                "flower": flower_acc.as_ref().and_then(|f| f.get(i)).map(|x| round(*x, 2)),
            })
        })
        .collect();
    let final_diff = flower_acc
        .as_ref()
        .and_then(|f| f.last())
        .map(|f| round(honest.accuracy - f, 2));
    Ok(json!({
        "bench": "train",
        "rounds": rounds,
        "trainers": honest.rounds.first().map_or(0, |r| r.accepted.len() + r.rejected.len()),
        "accuracy": round(honest.accuracy, 2),
        "centralized_accuracy": round(central.accuracy_percent(), 2),
        "byzantine": {
            "byzantine": cfg2.byzantine,
            "accuracy": round(byz.accuracy, 2),
            "byzantine_proposals": byz.byzantine_proposals,
            "rejected_byzantine_updates": byz.rejected_byzantine,
            "accepted_honest_updates": byz.accepted_honest,
            "honest_slashed": byz.honest_slashed,
        },
        "per_round": per_round,
        "agora_round_secs": round(agora_round, 4),
        "flower_round_secs": flower_round.map(|x| round(x, 4)),
        "round_time_ratio": flower_round.filter(|f| *f > 0.0).map(|f| round(agora_round / f, 3)),
        "flower": flower,
        "baseline": "Flower FedAvg, numpy softmax regression, same shards and hyper-parameters",
        "goal": format!("final accuracy within {GOAL_POINTS} point of Flower's"),
        "goal_met": final_diff.is_some_and(|d| d.abs() <= GOAL_POINTS),
        "accuracy_minus_flower": final_diff,
    }))
}
