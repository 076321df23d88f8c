//! Agora's job sandbox: deterministic execution of untrusted WebAssembly.
//!
//! A job in the Agora compute market is a WebAssembly module following the
//! WASI preview 1 *command* ABI: its input arrives on stdin, its result is
//! whatever it writes to stdout, it receives `argv` (`argv[0]` is always
//! `"job"`, followed by the user's arguments) and it finishes either by
//! returning from `_start` (exit code 0) or by calling `proc_exit(n)`. Several
//! providers run the same job and the market compares their stdout byte for
//! byte, so this crate has two equally important goals: *containment* (a
//! hostile module must not hurt the host) and *determinism* (an honest module
//! must produce the same bytes, and burn the same fuel, on every machine).
//!
//! **Containment.** Modules run in [wasmtime] with a minimal WASI surface:
//! stdin/stdout/stderr are in-memory pipes, there are no preopened
//! directories, no environment variables and no sockets, and only imports
//! from `wasi_snapshot_preview1` are accepted (anything else is rejected as
//! [`ExecError::InvalidModule`] before the job runs). Every run is bounded by
//! the job's [`Limits`]: instructions are metered with wasmtime *fuel*
//! ([`ExecError::FuelExhausted`]); real time is bounded with *epoch
//! interruption* driven by one ticker thread per [`Sandbox`]
//! ([`ExecError::WallTime`]); linear memory growth is checked by a
//! `ResourceLimiter` that refuses, before anything is allocated, any memory
//! larger than the limit, including a module whose *initial* memory is too
//! large ([`ExecError::MemoryLimit`]); tables, instances and memories per
//! store are capped too; stdout is captured in a bounded buffer that stops the
//! guest as soon as it overflows ([`ExecError::OutputTooLarge`]) and stderr is
//! silently truncated to [`STDERR_LIMIT`] bytes. The only WASI call that could
//! block the host thread, `poll_oneoff`, is replaced by a version in which
//! every subscription is ready immediately, so a guest cannot sleep its way
//! past the wall-clock limit. Traps, exits and limit breaches all come back as
//! values; nothing a module does can panic the host, and the [`Sandbox`]
//! stays usable for the next job.
//!
//! **Determinism.** The engine canonicalises NaNs produced by floating point
//! arithmetic (the bit pattern of a NaN otherwise depends on the CPU), rejects
//! the non-deterministic proposals (threads and shared memory, relaxed SIMD,
//! and also memory64 and multi-memory to keep the memory accounting simple),
//! replaces the wall clock by a fixed instant ([`FIXED_WALL_CLOCK_SECS`]) and
//! the monotonic clock by a clock stuck at zero, and replaces both WASI random
//! sources by a BLAKE3 extendable-output stream seeded from the job itself
//! (module hash, input and arguments). Two runs of the same [`Job`] therefore
//! produce the same stdout, exit code and [`Outcome::fuel_used`] (fuel
//! accounting is stable for a given wasmtime version and configuration, so
//! replicas that compare fuel should run the same release of this crate).
//!
//! **Execution.** [`Sandbox`] owns the engine and a bounded cache of compiled
//! modules keyed by their BLAKE3 hash; [`Sandbox::run_blocking`] executes one
//! job on the calling thread. [`Pool`] is the asynchronous front end: a fixed
//! number of executor slots (one per core by default) served through
//! `tokio::task::spawn_blocking`, with a bounded wait queue beyond which jobs
//! are refused with [`ExecError::Busy`] instead of piling up.
//!
//! **Compilation** is bounded too: module size by [`MAX_MODULE_BYTES`], and
//! compile time by [`Limits::compile_time`]: compiling runs on its own thread
//! (at most [`MAX_COMPILATIONS`] at once) and a job whose module does not
//! compile in time ends with [`ExecError::CompileTime`], a machine-dependent
//! limit that the market never counts against the worker.
//!
//! **ONNX.** The second runtime: [`OnnxEngine`] runs ONNX models in tract (pure Rust) on
//! `.npy` tensors, with a bounded cache of compiled plans, sizes checked before anything is
//! parsed, the input's dtype and shape checked against the model, and wall time and live tensor
//! memory checked between operators ([`OnnxLimits`]). Inference is not bit-identical across
//! CPUs, so replicas compare outputs through a [`Compare`] rule ([`canonicalize`]). [`Pool`]
//! runs ONNX jobs on the same slots as WebAssembly jobs ([`Pool::run_onnx`]).
//!
//! What this crate does *not* defend against: host-side bookkeeping memory of
//! wasmtime is not counted against [`Limits::memory_bytes`], and side channels
//! between jobs on the same machine are out of scope.

#![warn(missing_docs)]

mod error;
mod onnx;
mod pool;
mod sandbox;
mod wasi;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

pub use error::ExecError;
pub use onnx::{
    Compare, Dtype, MAX_NPY_HEADER_BYTES, MAX_ONNX_COMPILATIONS, MAX_RANK, MAX_ROUND_DIGITS,
    ModelInfo, ONNX_CACHE_CAPACITY, OnnxEngine, OnnxJob, OnnxLimits, OnnxOutcome, TensorInfo,
    canonicalize, perturb,
};
pub use pool::{DEFAULT_QUEUE, Pool, default_slots};
pub use sandbox::{MAX_COMPILATIONS, MAX_MODULE_BYTES, MODULE_CACHE_CAPACITY, Sandbox};
pub use wasi::FIXED_WALL_CLOCK_SECS;

/// Maximum number of stderr bytes kept in [`Outcome::stderr`]; anything the
/// guest writes beyond this is discarded (it is not an error).
pub const STDERR_LIMIT: usize = 64 * 1024;

/// The compile-time limit of [`Limits::default`] and [`Sandbox::validate`].
pub const DEFAULT_COMPILE_TIME: Duration = Duration::from_secs(10);

/// Resource limits applied to one job run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Fuel budget: roughly one unit per WebAssembly instruction executed.
    pub fuel: u64,
    /// Maximum size in bytes of the guest's linear memory (initial size and
    /// every growth are checked against it).
    pub memory_bytes: u64,
    /// Maximum real time the guest may run (compilation excluded).
    pub wall_time: Duration,
    /// Maximum number of bytes the guest may write to stdout.
    pub max_output_bytes: usize,
    /// Maximum real time to compile the module on a cache miss
    /// ([`ExecError::CompileTime`]).
    pub compile_time: Duration,
}

impl Default for Limits {
    /// 10 billion fuel, 256 MiB of memory, 30 s of wall time, 16 MiB of output.
    fn default() -> Self {
        Self {
            fuel: 10_000_000_000,
            memory_bytes: 256 * 1024 * 1024,
            wall_time: Duration::from_secs(30),
            max_output_bytes: 16 * 1024 * 1024,
            compile_time: DEFAULT_COMPILE_TIME,
        }
    }
}

/// One unit of work: a WASI command module, its stdin, its arguments and the
/// limits it runs under.
#[derive(Clone, PartialEq, Eq)]
pub struct Job {
    /// The WebAssembly module (binary format).
    pub module: Arc<[u8]>,
    /// BLAKE3 hash of `module`; checked before running and used as the key of
    /// the compiled-module cache.
    pub module_hash: [u8; 32],
    /// Bytes presented to the guest on stdin.
    pub input: Vec<u8>,
    /// Arguments after `argv[0]` (which is always `"job"`).
    pub args: Vec<String>,
    /// Limits for this run.
    pub limits: Limits,
}

impl Job {
    /// Builds a job, computing [`Job::module_hash`] from `module`.
    pub fn new(
        module: impl Into<Arc<[u8]>>,
        input: Vec<u8>,
        args: Vec<String>,
        limits: Limits,
    ) -> Self {
        let module = module.into();
        let module_hash = *blake3::hash(&module).as_bytes();
        Self {
            module,
            module_hash,
            input,
            args,
            limits,
        }
    }
}

impl std::fmt::Debug for Job {
    /// Shows sizes and the module hash rather than the (possibly large) bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("module_len", &self.module.len())
            .field(
                "module_hash",
                &blake3::Hash::from_bytes(self.module_hash).to_hex(),
            )
            .field("input_len", &self.input.len())
            .field("args", &self.args)
            .field("limits", &self.limits)
            .finish()
    }
}

/// Result of a job that ran to completion (returned from `_start` or called
/// `proc_exit`) without breaking its limits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    /// Exit code: 0 when `_start` returns, `n` after `proc_exit(n)`.
    pub exit_code: i32,
    /// Everything the guest wrote to stdout (at most
    /// [`Limits::max_output_bytes`]).
    pub stdout: Vec<u8>,
    /// What the guest wrote to stderr, truncated to [`STDERR_LIMIT`] bytes.
    pub stderr: Vec<u8>,
    /// Fuel consumed: the budget minus what was left at the end.
    pub fuel_used: u64,
}
