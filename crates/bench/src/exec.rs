//! `exec`: the sandbox against bare wasmtime, on the same modules.
//!
//! Trivial job: a WASI command that copies stdin (1 KiB) to stdout. Agora runs it with
//! `agora_exec::Sandbox::run_blocking` (the compiled module is cached after the first run; each
//! run still checks the module hash, builds the deterministic WASI context, a store with fuel,
//! epoch deadline and resource limiter, instantiates and calls `_start`). The baseline is the
//! same module on a default wasmtime `Engine` with a wasmtime-wasi p1 `Linker`, pre-instantiated
//! once (`InstancePre`), then per run: WASI context with memory pipes, store, instantiate, call.
//! The two are timed in alternating blocks; p50 and p99 per run.
//!
//! CPU-bound job: a loop of 10^8 64-bit adds that writes its sum to stdout, under the sandbox
//! (fuel metering and epoch interruption on) against the default engine (fuel off). Two more
//! figures, the default engine with fuel on and with fuel and epoch interruption on, split the
//! overhead between fuel, epoch checks and the rest. The median of several runs of each is
//! reported (the first, compiling, run is not timed).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};
use wasmtime::{Config, Engine, InstancePre, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

use agora_exec::{Job, Limits, Sandbox};

use crate::Opts;
use crate::util;

const GOAL: f64 = 2.0;
const INPUT: usize = 1024;

/// Copies stdin to stdout, 4 KiB at a time, until end of input.
const ECHO_WAT: &str = r#"
(module
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $n i32)
    (block $done
      (loop $more
        ;; iovec at 0: buffer at 64, 4096 bytes; bytes read at 16
        (i32.store (i32.const 0) (i32.const 64))
        (i32.store (i32.const 4) (i32.const 4096))
        (br_if $done (call $fd_read (i32.const 0) (i32.const 0) (i32.const 1) (i32.const 16)))
        (local.set $n (i32.load (i32.const 16)))
        (br_if $done (i32.eqz (local.get $n)))
        ;; iovec at 8: buffer at 64, $n bytes; bytes written at 20
        (i32.store (i32.const 8) (i32.const 64))
        (i32.store (i32.const 12) (local.get $n))
        (br_if $done (call $fd_write (i32.const 1) (i32.const 8) (i32.const 1) (i32.const 20)))
        (br $more)))))
"#;

/// Adds `ITER` numbers (a loop of 64-bit adds) and writes the 8-byte sum to stdout.
fn cpu_wat(iterations: u32) -> String {
    format!(
        r#"
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (local $i i32) (local $acc i64)
    (local.set $i (i32.const {iterations}))
    (loop $l
      (local.set $acc (i64.add (local.get $acc) (i64.extend_i32_u (local.get $i))))
      (local.set $i (i32.sub (local.get $i) (i32.const 1)))
      (br_if $l (local.get $i)))
    (i64.store (i32.const 32) (local.get $acc))
    (i32.store (i32.const 0) (i32.const 32))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))))
"#
    )
}

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let opts = opts.clone();
    tokio::task::spawn_blocking(move || run_blocking(&opts))
        .await
        .context("the exec benchmark thread panicked")?
}

fn run_blocking(opts: &Opts) -> anyhow::Result<Value> {
    let runs = opts
        .iterations
        .unwrap_or(if opts.smoke { 20 } else { 2000 });
    let block = if opts.smoke { 10 } else { 100 };
    let iterations: u32 = if opts.smoke { 1_000_000 } else { 100_000_000 };
    let cpu_runs = if opts.smoke { 2 } else { 7 };

    let sandbox = Sandbox::new().map_err(|e| anyhow!("sandbox: {e}"))?;
    let bare = Bare::new(false, false)?;
    let bare_fuel = Bare::new(true, false)?;
    let bare_fuel_epoch = Bare::new(true, true)?;

    // Trivial job.
    let echo: Arc<[u8]> = wat::parse_str(ECHO_WAT)?.into();
    let input: Vec<u8> = (0..INPUT).map(|i| (i % 251) as u8).collect();
    let job = Job::new(echo.clone(), input.clone(), vec![], Limits::default());
    let echo_pre = bare.prepare(&echo)?;
    let warmup = (runs / 10).max(5);
    for _ in 0..warmup {
        agora_run(&sandbox, &job, &input)?;
        bare.run(&echo_pre, &input, &input)?;
    }
    let mut agora_t = Vec::with_capacity(runs);
    let mut bare_t = Vec::with_capacity(runs);
    while agora_t.len() < runs {
        let k = block.min(runs - agora_t.len());
        for _ in 0..k {
            agora_t.push(agora_run(&sandbox, &job, &input)?);
        }
        for _ in 0..k {
            bare_t.push(bare.run(&echo_pre, &input, &input)?);
        }
    }
    let (a50, a99, agora) = util::summary_us(&agora_t)?;
    let (b50, b99, baseline) = util::summary_us(&bare_t)?;
    let trivial_ratio = util::ratio(a50, b50);

    // CPU-bound job.
    let cpu: Arc<[u8]> = wat::parse_str(cpu_wat(iterations))?.into();
    let expected = (u64::from(iterations) * (u64::from(iterations) + 1) / 2).to_le_bytes();
    let cpu_job = Job::new(cpu.clone(), vec![], vec![], Limits::default());
    let cpu_pre = bare.prepare(&cpu)?;
    let cpu_pre_fuel = bare_fuel.prepare(&cpu)?;
    let cpu_pre_fuel_epoch = bare_fuel_epoch.prepare(&cpu)?;
    // The first runs compile; they are not timed.
    agora_run(&sandbox, &cpu_job, &expected)?;
    let mut fuel_used = 0;
    bare.run(&cpu_pre, &[], &expected)?;
    bare_fuel.run(&cpu_pre_fuel, &[], &expected)?;
    bare_fuel_epoch.run(&cpu_pre_fuel_epoch, &[], &expected)?;
    let (mut a, mut b, mut bf, mut bfe) = (vec![], vec![], vec![], vec![]);
    for _ in 0..cpu_runs {
        let t = Instant::now();
        let out = sandbox
            .run_blocking(&cpu_job)
            .map_err(|e| anyhow!("sandbox run: {e}"))?;
        a.push(t.elapsed());
        if out.stdout != expected {
            bail!("the sandboxed CPU job printed the wrong sum");
        }
        fuel_used = out.fuel_used;
        b.push(bare.run(&cpu_pre, &[], &expected)?);
        bf.push(bare_fuel.run(&cpu_pre_fuel, &[], &expected)?);
        bfe.push(bare_fuel_epoch.run(&cpu_pre_fuel_epoch, &[], &expected)?);
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        util::quantile(v, 0.5).unwrap_or_default()
    };
    let (cpu_a, cpu_b) = (median(&mut a), median(&mut b));
    let (cpu_bf, cpu_bfe) = (median(&mut bf), median(&mut bfe));
    let cpu_ratio = util::ratio(cpu_a, cpu_b);

    Ok(json!({
        "bench": "exec",
        "smoke": opts.smoke,
        "machine": util::machine(),
        "trivial": {
            "module": "WASI echo, stdin -> stdout",
            "input_bytes": INPUT,
            "runs": runs,
            "agora": agora,
            "baseline": baseline,
            "baseline_is": "bare wasmtime: default Engine, wasmtime-wasi p1 Linker, InstancePre cached; per run: WASI ctx with memory pipes, Store, instantiate, call _start",
            "ratio_p50": trivial_ratio,
            "ratio_p99": util::ratio(a99, b99),
        },
        "cpu": {
            "module": "loop of 64-bit adds, sum to stdout",
            "iterations": iterations,
            "runs": cpu_runs,
            "agora_ms": util::ms(cpu_a),
            "fuel_used": fuel_used,
            "baseline_ms": util::ms(cpu_b),
            "baseline_is": "same module on a default wasmtime Engine, fuel off (median of runs)",
            "diagnostic": {
                "bare_fuel_ms": util::ms(cpu_bf),
                "bare_fuel_and_epoch_ms": util::ms(cpu_bfe),
                "note": "the default engine with fuel metering on, then also epoch interruption (as the sandbox's engine has): splits the overhead between fuel, epoch checks and the rest of the sandbox",
            },
            "ratio": cpu_ratio,
        },
        "goal": format!("trivial p50 ratio <= {GOAL} and CPU-bound ratio <= {GOAL}"),
        "goal_met": trivial_ratio <= GOAL && cpu_ratio <= GOAL,
    }))
}

/// One sandboxed run, checked; returns its duration.
fn agora_run(sandbox: &Sandbox, job: &Job, expected: &[u8]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let out = sandbox
        .run_blocking(job)
        .map_err(|e| anyhow!("sandbox run: {e}"))?;
    let dt = t.elapsed();
    if out.exit_code != 0 || out.stdout != expected {
        bail!(
            "the sandboxed job exited {} with {} bytes of output, expected {}",
            out.exit_code,
            out.stdout.len(),
            expected.len()
        );
    }
    Ok(dt)
}

/// Bare wasmtime with wasmtime-wasi p1: the default engine, optionally with fuel metering and
/// epoch interruption (its deadline never reached).
struct Bare {
    engine: Engine,
    linker: Linker<WasiP1Ctx>,
    fuel: bool,
    epoch: bool,
}

impl Bare {
    fn new(fuel: bool, epoch: bool) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.consume_fuel(fuel).epoch_interruption(epoch);
        let engine = Engine::new(&config).map_err(|e| anyhow!("engine: {e}"))?;
        let mut linker = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |ctx: &mut WasiP1Ctx| ctx)
            .map_err(|e| anyhow!("linker: {e}"))?;
        Ok(Bare {
            engine,
            linker,
            fuel,
            epoch,
        })
    }

    fn prepare(&self, wasm: &[u8]) -> anyhow::Result<InstancePre<WasiP1Ctx>> {
        let module = Module::new(&self.engine, wasm).map_err(|e| anyhow!("compile: {e}"))?;
        self.linker
            .instantiate_pre(&module)
            .map_err(|e| anyhow!("instantiate_pre: {e}"))
    }

    /// Instantiates and calls `_start` with `input` on stdin; checks stdout is `expected`.
    fn run(
        &self,
        pre: &InstancePre<WasiP1Ctx>,
        input: &[u8],
        expected: &[u8],
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let stdout = MemoryOutputPipe::new(1 << 20);
        let ctx = WasiCtxBuilder::new()
            .stdin(MemoryInputPipe::new(input.to_vec()))
            .stdout(stdout.clone())
            .arg("job")
            .build_p1();
        let mut store = Store::new(&self.engine, ctx);
        if self.fuel {
            store
                .set_fuel(u64::MAX)
                .map_err(|e| anyhow!("set_fuel: {e}"))?;
        }
        if self.epoch {
            store.set_epoch_deadline(u64::MAX / 2);
        }
        let instance = pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("instantiate: {e}"))?;
        instance
            .get_typed_func::<(), ()>(&mut store, "_start")
            .and_then(|start| start.call(&mut store, ()))
            .map_err(|e| anyhow!("_start: {e}"))?;
        drop(store);
        let dt = t.elapsed();
        if stdout.contents() != expected {
            bail!("the bare run printed something else than expected");
        }
        Ok(dt)
    }
}
