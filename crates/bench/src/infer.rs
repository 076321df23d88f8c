//! `infer`: ONNX inference through Agora's engine against onnxruntime, same model, same input.
//!
//! The model is `examples/onnx/mlp.onnx` (64 -> 64 ReLU -> 10 softmax, float32), the input
//! `examples/onnx/x1.npy` (one row). Measured in this process, in alternating blocks after a
//! warm-up (the plan is compiled and cached before any timing):
//! - `agora.run_blocking`: `OnnxEngine::run_blocking` on a prepared job: hash-keyed cache
//!   lookup, size checks, `.npy` parse, dtype and shape checks, memory estimate, the run with
//!   per-operator wall-time and memory checks, and the output encoded as `.npy`.
//! - `baseline.tract_bare`: tract alone (`SimplePlan::run`) on an input tensor built once: the
//!   inference without Agora's checks and codec.
//! - `agora.pool`: `Pool::run_onnx`, one job at a time: the above plus the slot semaphore and
//!   the hop to a blocking thread and back.
//! - `agora.throughput`: `Pool::run_onnx` with 2 slots (both cores), 4 jobs in flight, for a
//!   window; jobs per second.
//!
//! onnxruntime, in the same invocation (`crates/bench/py/onnxruntime_infer.py`, a Python with
//! `onnxruntime` and `numpy`; without one the report says `skipped`): one session created once,
//! one intra-op and one inter-op thread, `perf_counter_ns` around each call, the same counts:
//! `run_only` (`sess.run` on a loaded array: compare with `tract_bare`) and `full` (`np.load`
//! of the same `.npy` bytes + `sess.run` + `np.save` of the output: the scope of
//! `run_blocking`), and its throughput with 2 threads on one session.
//!
//! Reported: `ratio_p50` = `agora.run_blocking` p50 / onnxruntime `full` p50 (the same scope:
//! bytes in, bytes out), the goal; and `ratio_p50_inference_only` = `tract_bare` p50 /
//! onnxruntime `run_only` p50 (engine against engine).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agora_exec::{OnnxEngine, OnnxJob, OnnxLimits, Pool, Sandbox};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use tract_onnx::prelude::{
    Datum, Framework, InferenceFact, InferenceModelExt, IntoTValue, TDim, TValue, TVec, Tensor,
    tvec,
};
use tract_onnx::tract_core::plan::SimplePlan;

use crate::Opts;
use crate::util::{self, python_with, ratio, run_python};

/// Goal: Agora's p50 at most this multiple of onnxruntime's, same scope.
const GOAL: f64 = 1.5;

/// The onnxruntime baseline's script.
const ORT_SCRIPT: &str = include_str!("../py/onnxruntime_infer.py");

/// Blocks of alternation between Agora and bare tract.
const BLOCKS: usize = 10;

#[derive(Clone, Copy)]
struct Sizes {
    runs: usize,
    warmup: usize,
    window: Duration,
    slots: usize,
}

fn sizes(opts: &Opts) -> Sizes {
    Sizes {
        runs: opts
            .iterations
            .unwrap_or(if opts.smoke { 20 } else { 2000 })
            .max(1),
        warmup: if opts.smoke { 5 } else { 200 },
        window: if opts.smoke {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(3)
        },
        slots: 2,
    }
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/onnx")
}

type BarePlan = Arc<tract_onnx::prelude::TypedSimplePlan>;

/// Bare tract: the same model optimized and planned, and the input as a tensor.
fn bare(model: &std::path::Path, input: &[f32]) -> anyhow::Result<(BarePlan, Tensor)> {
    // The same symbolic batch dimension as Agora's engine gives the model's unnamed `dim {}`.
    let typed = tract_onnx::onnx()
        .model_for_path(model)
        .and_then(|m| {
            let n = m.symbols.sym("N");
            let fact =
                InferenceFact::dt_shape(f32::datum_type(), tvec![TDim::from(n), TDim::from(64)]);
            m.with_input_fact(0, fact)
        })
        .and_then(|m| m.into_optimized())
        .map_err(|e| anyhow::anyhow!("tract: {e:#}"))?;
    let plan = SimplePlan::new(typed).map_err(|e| anyhow::anyhow!("tract: {e:#}"))?;
    let x = Tensor::from_shape(&[1, input.len()], input).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    Ok((plan, x))
}

fn bare_run(plan: &BarePlan, x: &Tensor) -> anyhow::Result<TVec<TValue>> {
    plan.run(tvec![x.clone().into_tvalue()])
        .map_err(|e| anyhow::anyhow!("tract: {e:#}"))
}

/// Agora's `run_blocking` and bare tract, alternating in blocks; both lists of latencies.
fn direct(
    engine: &OnnxEngine,
    job: &OnnxJob,
    plan: &BarePlan,
    x: &Tensor,
    s: &Sizes,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    for _ in 0..s.warmup {
        engine.run_blocking(job)?;
        bare_run(plan, x)?;
    }
    let per = s.runs.div_ceil(BLOCKS);
    let (mut ours, mut theirs) = (Vec::with_capacity(s.runs), Vec::with_capacity(s.runs));
    while ours.len() < s.runs {
        for _ in 0..per.min(s.runs - ours.len()) {
            let t = Instant::now();
            let out = engine.run_blocking(job)?;
            ours.push(t.elapsed());
            std::hint::black_box(out);
        }
        for _ in 0..per.min(s.runs - theirs.len()) {
            let t = Instant::now();
            let out = bare_run(plan, x)?;
            theirs.push(t.elapsed());
            std::hint::black_box(out);
        }
    }
    Ok((ours, theirs))
}

/// `Pool::run_onnx`, one job at a time.
async fn pool_latency(pool: &Pool, job: &OnnxJob, s: &Sizes) -> anyhow::Result<Vec<Duration>> {
    for _ in 0..s.warmup {
        pool.run_onnx(job.clone()).await?;
    }
    let mut lat = Vec::with_capacity(s.runs);
    for _ in 0..s.runs {
        let j = job.clone();
        let t = Instant::now();
        pool.run_onnx(j).await?;
        lat.push(t.elapsed());
    }
    Ok(lat)
}

/// Jobs per second through the pool with every slot busy (twice as many jobs in flight as
/// slots), for `window`.
async fn throughput(pool: &Pool, job: &OnnxJob, s: &Sizes) -> anyhow::Result<Value> {
    let in_flight = 2 * s.slots;
    let started = Instant::now();
    let cpu0 = util::process_cpu();
    let mut set = tokio::task::JoinSet::new();
    let mut done = 0u64;
    let mut failed = 0u64;
    loop {
        while set.len() < in_flight && started.elapsed() < s.window {
            let (pool, j) = (pool.clone(), job.clone());
            set.spawn(async move { pool.run_onnx(j).await });
        }
        match set.join_next().await {
            Some(Ok(Ok(_))) => done += 1,
            Some(_) => failed += 1,
            None => break,
        }
    }
    let elapsed = started.elapsed();
    let cpu = util::process_cpu()
        .zip(cpu0)
        .map(|(b, a)| b.saturating_sub(a).as_secs_f64() / elapsed.as_secs_f64());
    Ok(json!({
        "slots": s.slots,
        "in_flight": in_flight,
        "window_s": util::round(elapsed.as_secs_f64(), 2),
        "jobs": done,
        "failed": failed,
        "jobs_per_s": util::round(done as f64 / elapsed.as_secs_f64(), 1),
        "cpu_cores_busy": cpu.map(|c| util::round(c, 2)),
    }))
}

fn onnxruntime(model: &std::path::Path, input: &std::path::Path, s: &Sizes) -> Value {
    let python = match python_with(&["onnxruntime", "numpy"]) {
        Ok(p) => p,
        Err(why) => return json!({ "skipped": why }),
    };
    let args = vec![
        model.display().to_string(),
        input.display().to_string(),
        s.runs.to_string(),
        s.warmup.to_string(),
        s.window.as_secs_f64().to_string(),
        s.slots.to_string(),
    ];
    match run_python(&python, ORT_SCRIPT, &args, Duration::from_secs(300)) {
        Ok(v) => v,
        Err(why) => json!({ "skipped": why }),
    }
}

fn p50_of(v: &Value, key: &str) -> Option<Duration> {
    v[key]["p50_us"]
        .as_f64()
        .filter(|x| *x > 0.0)
        .map(|us| Duration::from_secs_f64(us / 1e6))
}

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let s = sizes(opts);
    let dir = examples();
    let (model_path, input_path) = (dir.join("mlp.onnx"), dir.join("x1.npy"));
    let model =
        std::fs::read(&model_path).with_context(|| format!("reading {}", model_path.display()))?;
    let input =
        std::fs::read(&input_path).with_context(|| format!("reading {}", input_path.display()))?;
    let job = OnnxJob::new(model, input, OnnxLimits::default());

    let engine = OnnxEngine::new();
    let out = engine.run_blocking(&job)?;
    if out.shape != [1, 10] {
        bail!("unexpected output shape {:?}", out.shape);
    }
    let row = {
        // The same 64 floats as x1.npy, for bare tract: the .npy data follows its header.
        let data = &job.input[job.input.len() - 64 * 4..];
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect::<Vec<_>>()
    };
    let (plan, x) = bare(&model_path, &row)?;
    util::progress("infer: run_blocking against bare tract");
    let (engine2, job2) = (engine.clone(), job.clone());
    let (ours, tract) = tokio::task::spawn_blocking(move || direct(&engine2, &job2, &plan, &x, &s))
        .await
        .context("the timing thread failed")??;
    let (ours_p50, _, ours_v) = util::summary_us(&ours)?;
    let (tract_p50, _, tract_v) = util::summary_us(&tract)?;

    util::progress("infer: pool");
    let pool = Pool::with_onnx(Sandbox::new()?, engine.clone(), s.slots, 64);
    let (_, _, pool_v) = util::summary_us(&pool_latency(&pool, &job, &s).await?)?;
    let tp = throughput(&pool, &job, &s).await?;

    util::progress("infer: onnxruntime");
    let ort = tokio::task::spawn_blocking(move || onnxruntime(&model_path, &input_path, &s))
        .await
        .context("the baseline thread failed")?;
    let ratio_p50 = p50_of(&ort, "full").map(|b| ratio(ours_p50, b));
    let ratio_inference = p50_of(&ort, "run_only").map(|b| ratio(tract_p50, b));
    Ok(json!({
        "bench": "infer",
        "model": "examples/onnx/mlp.onnx (64 -> 64 ReLU -> 10 softmax, float32)",
        "input": "examples/onnx/x1.npy (float32 [1, 64])",
        "runs": s.runs,
        "warmup": s.warmup,
        "agora": {
            "run_blocking": ours_v,
            "pool": pool_v,
            "throughput": tp,
            "compilations": engine.compilations(),
        },
        "baseline": {
            "tract_bare": tract_v,
            "onnxruntime": ort,
        },
        "scopes": {
            "agora.run_blocking": "cache lookup, size checks, .npy parse, dtype/shape checks, memory estimate, run with per-operator checks, output encoded as .npy",
            "agora.pool": "run_blocking plus the slot semaphore and the spawn_blocking round trip",
            "tract_bare": "SimplePlan::run on a prepared tensor (clone of the input tensor included)",
            "onnxruntime.run_only": "sess.run on a prepared numpy array",
            "onnxruntime.full": "np.load of the .npy bytes + sess.run + np.save of the output",
        },
        "ratio_p50": ratio_p50,
        "ratio_p50_inference_only": ratio_inference,
        "goal": format!("ratio_p50 (run_blocking / onnxruntime full, same scope) <= {GOAL}"),
        "goal_met": ratio_p50.is_some_and(|r| r <= GOAL),
        "machine": util::machine(),
    }))
}
