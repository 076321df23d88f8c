//! The engine, the compiled-module cache and the execution of one job.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, ExternType, InstancePre, Linker, Module, ResourceLimiter, Store, Trap,
    WasmFeatures,
};
use wasmtime_wasi::p1::{self, WasiP1Ctx};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{I32Exit, WasiCtxBuilder};

use crate::wasi::{self, CapturedOutput, FixedMonotonicClock, FixedWallClock, Overflow, SeededRng};
use crate::{ExecError, Job, Limits, Outcome, STDERR_LIMIT};

/// Number of compiled modules kept by a [`Sandbox`]; the least recently used
/// one is evicted beyond that.
pub const MODULE_CACHE_CAPACITY: usize = 64;

/// Largest module accepted, in bytes (bounds compilation work).
pub const MAX_MODULE_BYTES: usize = 64 * 1024 * 1024;

/// Compilations that may run at once (each on its own thread); more wait for a slot within
/// their compile-time limit. A compilation that outlives its job's [`Limits::compile_time`]
/// finishes in the background (and fills the cache), so this bounds the CPU that slow modules
/// can take.
pub const MAX_COMPILATIONS: usize = 4;

/// Period of the epoch ticker that enforces wall-clock limits.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Maximum number of elements in any table of a job.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The only import namespace a job may use.
const WASI_MODULE: &str = "wasi_snapshot_preview1";

/// Per-job store state: the WASI context plus the resource limiter.
pub(crate) struct StoreData {
    wasi: WasiP1Ctx,
    limiter: JobLimiter,
}

/// Refuses memory and table growth beyond the job's limits and remembers
/// what was asked for, so that the refusal can be reported precisely.
struct JobLimiter {
    memory_limit: u64,
    memory_refused: Option<u64>,
    table_refused: Option<usize>,
}

impl ResourceLimiter for JobLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = u64::try_from(desired).unwrap_or(u64::MAX);
        if desired > self.memory_limit {
            self.memory_refused = Some(desired);
            // An error (rather than `Ok(false)`, which would make
            // `memory.grow` return -1) stops the guest: breaking the memory
            // limit ends the job.
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.table_refused = Some(desired);
            return Err(wasmtime::Error::msg("table limit exceeded"));
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        8
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Compiled modules, ready to instantiate, keyed by module hash.
#[derive(Default)]
struct ModuleCache {
    entries: HashMap<[u8; 32], (InstancePre<StoreData>, u64)>,
    clock: u64,
}

impl ModuleCache {
    fn get(&mut self, hash: &[u8; 32]) -> Option<InstancePre<StoreData>> {
        self.clock += 1;
        let now = self.clock;
        self.entries.get_mut(hash).map(|(pre, used)| {
            *used = now;
            pre.clone()
        })
    }

    fn insert(&mut self, hash: [u8; 32], pre: InstancePre<StoreData>) {
        self.clock += 1;
        if !self.entries.contains_key(&hash) && self.entries.len() >= MODULE_CACHE_CAPACITY {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| *h);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(hash, (pre, self.clock));
    }
}

struct Inner {
    engine: Engine,
    linker: Linker<StoreData>,
    cache: Mutex<ModuleCache>,
    /// Compilations running now (at most [`MAX_COMPILATIONS`]), and the signal that one ended.
    compiling: Mutex<usize>,
    compile_done: Condvar,
    /// Dropping this sender (with the last `Sandbox` clone) stops the epoch
    /// ticker thread.
    _ticker: mpsc::Sender<()>,
}

/// One of the [`MAX_COMPILATIONS`] compile slots, released on drop (when the compilation ends,
/// even after its caller stopped waiting).
struct CompileSlot(Arc<Inner>);

impl Drop for CompileSlot {
    fn drop(&mut self) {
        let mut n = self
            .0
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n = n.saturating_sub(1);
        self.0.compile_done.notify_one();
    }
}

/// A WebAssembly execution environment: a wasmtime engine configured for
/// deterministic, metered execution, the WASI linker, an epoch ticker thread
/// and a cache of compiled modules.
///
/// Cloning is cheap and shares everything; the ticker thread stops when the
/// last clone is dropped. A `Sandbox` is `Send + Sync` and can run jobs from
/// several threads at once.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("cached_modules", &self.cache().entries.len())
            .finish_non_exhaustive()
    }
}

fn internal(context: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::Internal(format!("{context}: {e}"))
}

/// Renders a wasmtime error with its causes, on one line.
fn describe(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if parts.last() != Some(&s) {
            parts.push(s);
        }
    }
    parts.join(": ")
}

impl Sandbox {
    /// Creates the engine, the WASI linker and the epoch ticker thread.
    pub fn new() -> Result<Self, ExecError> {
        let mut config = Config::new();
        config
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_nan_canonicalization(true)
            .wasm_features(
                WasmFeatures::THREADS | WasmFeatures::SHARED_EVERYTHING_THREADS,
                false,
            )
            .shared_memory(false)
            .wasm_relaxed_simd(false)
            .relaxed_simd_deterministic(true)
            .wasm_memory64(false)
            .wasm_multi_memory(false)
            .wasm_backtrace_max_frames(None)
            .parallel_compilation(true)
            // Every 32-bit memory gets its own 4 GiB reservation plus guard
            // pages, so bounds checks are elided and memories never move;
            // this is virtual address space only (about 1/30000 of it per
            // instance), committed memory is bounded by the limiter.
            .memory_reservation(1 << 32)
            .memory_guard_size(32 << 20)
            .memory_reservation_for_growth(0)
            .memory_may_move(false)
            .max_wasm_stack(1 << 20);
        let engine = Engine::new(&config).map_err(|e| internal("engine", describe(&e)))?;

        let mut linker: Linker<StoreData> = Linker::new(&engine);
        p1::add_to_linker_sync(&mut linker, |d: &mut StoreData| &mut d.wasi)
            .map_err(|e| internal("linker", describe(&e)))?;
        linker.allow_shadowing(true);
        linker
            .func_wrap(WASI_MODULE, "poll_oneoff", wasi::poll_oneoff::<StoreData>)
            .map_err(|e| internal("linker", describe(&e)))?;
        linker.allow_shadowing(false);

        let (tx, rx) = mpsc::channel::<()>();
        let ticker_engine = engine.clone();
        std::thread::Builder::new()
            .name("agora-exec-epoch".into())
            .spawn(move || {
                // Ends when the sender (held by the last `Sandbox` clone)
                // is dropped.
                while let Err(RecvTimeoutError::Timeout) = rx.recv_timeout(EPOCH_TICK) {
                    ticker_engine.increment_epoch();
                }
            })
            .map_err(|e| internal("epoch ticker thread", e))?;

        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                linker,
                cache: Mutex::new(ModuleCache::default()),
                compiling: Mutex::new(0),
                compile_done: Condvar::new(),
                _ticker: tx,
            }),
        })
    }

    fn cache(&self) -> MutexGuard<'_, ModuleCache> {
        self.inner
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Checks that `module` is a WebAssembly WASI command this sandbox can
    /// run (valid, only allowed features, only known `wasi_snapshot_preview1`
    /// imports, a `_start: [] -> []` export) and that it compiles within
    /// [`DEFAULT_COMPILE_TIME`](crate::DEFAULT_COMPILE_TIME). The compiled module is cached,
    /// so a later run of the same module does not compile it again.
    pub fn validate(&self, module: &[u8]) -> Result<(), ExecError> {
        let hash = *blake3::hash(module).as_bytes();
        self.prepare(&Arc::from(module), &hash, crate::DEFAULT_COMPILE_TIME)
            .map(|_| ())
    }

    /// Returns the ready-to-instantiate module, from the cache or compiled.
    /// The compiled module for `bytes`, from the cache or compiled within `limit`. Compiling
    /// runs on its own thread: past `limit` the caller gets [`ExecError::CompileTime`] at once
    /// and the compilation finishes in the background (filling the cache), at most
    /// [`MAX_COMPILATIONS`] at a time.
    fn prepare(
        &self,
        bytes: &Arc<[u8]>,
        hash: &[u8; 32],
        limit: Duration,
    ) -> Result<InstancePre<StoreData>, ExecError> {
        if let Some(pre) = self.cache().get(hash) {
            return Ok(pre);
        }
        if bytes.len() > MAX_MODULE_BYTES {
            return Err(ExecError::InvalidModule(format!(
                "module is {} bytes, the maximum is {MAX_MODULE_BYTES}",
                bytes.len()
            )));
        }
        let deadline = Instant::now() + limit;
        let slot = self.compile_slot(deadline, limit)?;
        // Another run may have compiled the same module while this one waited for a slot.
        if let Some(pre) = self.cache().get(hash) {
            return Ok(pre);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let this = self.clone();
        let (bytes, hash) = (bytes.clone(), *hash);
        std::thread::Builder::new()
            .name("agora-exec-compile".into())
            .spawn(move || {
                let _slot = slot;
                let _ = tx.send(this.compile(&bytes, &hash));
            })
            .map_err(|e| internal("compile thread", e))?;
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => Err(ExecError::CompileTime(limit)),
            Err(RecvTimeoutError::Disconnected) => {
                Err(internal("compile thread", "ended without an answer"))
            }
        }
    }

    /// Waits until fewer than [`MAX_COMPILATIONS`] run, at most until `deadline`.
    fn compile_slot(&self, deadline: Instant, limit: Duration) -> Result<CompileSlot, ExecError> {
        let inner = &self.inner;
        let mut n = inner
            .compiling
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *n >= MAX_COMPILATIONS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ExecError::CompileTime(limit));
            }
            n = inner
                .compile_done
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *n += 1;
        Ok(CompileSlot(self.inner.clone()))
    }

    fn compile(&self, bytes: &[u8], hash: &[u8; 32]) -> Result<InstancePre<StoreData>, ExecError> {
        // Compile outside the cache lock; two concurrent first runs of the
        // same module may both compile it, which is harmless.
        let module = Module::new(&self.inner.engine, bytes)
            .map_err(|e| ExecError::InvalidModule(describe(&e)))?;
        check_command(&module)?;
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| ExecError::InvalidModule(describe(&e)))?;
        self.cache().insert(*hash, pre.clone());
        Ok(pre)
    }

    /// Runs `job` to completion on the current thread.
    ///
    /// Blocks for up to the job's wall-clock limit (plus compilation on a
    /// cache miss). Must not be called from inside an async task: use
    /// [`Pool::run`](crate::Pool::run) there, or `spawn_blocking`.
    pub fn run_blocking(&self, job: &Job) -> Result<Outcome, ExecError> {
        if blake3::hash(&job.module).as_bytes() != &job.module_hash {
            return Err(ExecError::InvalidModule(
                "module bytes do not match module_hash".into(),
            ));
        }
        let pre = self.prepare(&job.module, &job.module_hash, job.limits.compile_time)?;
        let limits = &job.limits;

        let stdout = CapturedOutput::new(limits.max_output_bytes, Overflow::Trap);
        let stderr = CapturedOutput::new(STDERR_LIMIT, Overflow::Truncate);
        let seed = job_seed(job);
        let mut builder = WasiCtxBuilder::new();
        builder
            .stdin(MemoryInputPipe::new(job.input.clone()))
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .arg("job")
            .args(&job.args)
            .wall_clock(FixedWallClock)
            .monotonic_clock(FixedMonotonicClock)
            .secure_random(SeededRng::new("agora-exec v1 random_get", &seed))
            .insecure_random(SeededRng::new("agora-exec v1 insecure random", &seed))
            .insecure_random_seed(u128::from_le_bytes(
                blake3::derive_key("agora-exec v1 insecure seed", &seed)[..16]
                    .try_into()
                    .unwrap_or([0; 16]),
            ));
        let data = StoreData {
            wasi: builder.build_p1(),
            limiter: JobLimiter {
                memory_limit: limits.memory_bytes,
                memory_refused: None,
                table_refused: None,
            },
        };

        let mut store = Store::new(&self.inner.engine, data);
        store.limiter(|d| &mut d.limiter);
        store
            .set_fuel(limits.fuel)
            .map_err(|e| internal("set_fuel", describe(&e)))?;
        store.set_epoch_deadline(deadline_ticks(limits.wall_time));
        store.epoch_deadline_trap();

        let result = pre.instantiate(&mut store).and_then(|instance| {
            let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
            start.call(&mut store, ())
        });

        let fuel_used = limits.fuel.saturating_sub(store.get_fuel().unwrap_or(0));
        let limiter = &store.data().limiter;
        if let Some(requested) = limiter.memory_refused {
            return Err(ExecError::MemoryLimit {
                requested,
                limit: limits.memory_bytes,
            });
        }
        if let Some(requested) = limiter.table_refused {
            return Err(ExecError::Trap(format!(
                "table growth to {requested} elements refused (limit {MAX_TABLE_ELEMENTS})"
            )));
        }
        if stdout.overflowed() {
            return Err(ExecError::OutputTooLarge {
                limit: limits.max_output_bytes,
            });
        }
        let exit_code = match result {
            Ok(()) => 0,
            Err(e) => classify(&e, limits)?,
        };
        drop(store);
        let outcome = Outcome {
            exit_code,
            stdout: stdout.take(),
            stderr: stderr.take(),
            fuel_used,
        };
        tracing::debug!(
            exit_code,
            fuel_used,
            stdout_len = outcome.stdout.len(),
            "job finished"
        );
        Ok(outcome)
    }
}

/// Turns the error of an instantiation or `_start` call into an exit code
/// (`proc_exit`) or the matching [`ExecError`].
fn classify(e: &wasmtime::Error, limits: &Limits) -> Result<i32, ExecError> {
    if let Some(exit) = e.downcast_ref::<I32Exit>() {
        return Ok(exit.0);
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return Err(match trap {
            Trap::OutOfFuel => ExecError::FuelExhausted,
            Trap::Interrupt => ExecError::WallTime(limits.wall_time),
            other => ExecError::Trap(other.to_string()),
        });
    }
    Err(ExecError::Trap(describe(e)))
}

/// Epoch ticks until the deadline: rounded up, plus one because the current
/// tick may be about to end.
fn deadline_ticks(wall_time: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    let ticks = wall_time.as_nanos().div_ceil(tick).saturating_add(1);
    u64::try_from(ticks).unwrap_or(u64::MAX)
}

/// Seed of the job's random streams: a hash of everything that defines the
/// job, so that all replicas see the same "random" bytes.
fn job_seed(job: &Job) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("agora-exec v1 job seed");
    h.update(&job.module_hash);
    h.update(&(job.input.len() as u64).to_le_bytes());
    h.update(&job.input);
    for arg in &job.args {
        h.update(&(arg.len() as u64).to_le_bytes());
        h.update(arg.as_bytes());
    }
    *h.finalize().as_bytes()
}

/// Rejects modules that are not WASI commands: imports outside
/// `wasi_snapshot_preview1` (or non-function imports), or no proper `_start`.
fn check_command(module: &Module) -> Result<(), ExecError> {
    for import in module.imports() {
        if import.module() != WASI_MODULE || !matches!(import.ty(), ExternType::Func(_)) {
            return Err(ExecError::InvalidModule(format!(
                "import `{}::{}` is not allowed: only functions from `{WASI_MODULE}` may be imported",
                import.module(),
                import.name()
            )));
        }
    }
    match module.get_export("_start") {
        Some(ExternType::Func(f)) if f.params().len() == 0 && f.results().len() == 0 => Ok(()),
        Some(_) => Err(ExecError::InvalidModule(
            "export `_start` must be a function without parameters or results".into(),
        )),
        None => Err(ExecError::InvalidModule(
            "not a WASI command: no `_start` export".into(),
        )),
    }
}
