//! The error type of the sandbox.

use std::time::Duration;

/// Why a job did not produce an [`Outcome`](crate::Outcome).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ExecError {
    /// The bytes are not WebAssembly, fail validation, use a disabled
    /// proposal, are too large, do not match their hash, or are not a WASI
    /// command (no `_start: [] -> []` export, or imports other than known
    /// `wasi_snapshot_preview1` functions).
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The guest used up its fuel budget.
    #[error("fuel budget exhausted")]
    FuelExhausted,
    /// The guest asked for more linear memory than allowed.
    #[error("memory limit exceeded: requested {requested} bytes, limit is {limit} bytes")]
    MemoryLimit {
        /// Size in bytes the memory would have had after the refused growth.
        requested: u64,
        /// The configured [`Limits::memory_bytes`](crate::Limits::memory_bytes).
        limit: u64,
    },
    /// The guest ran longer than its wall-clock limit (the value is the limit).
    #[error("wall-clock limit of {0:?} exceeded")]
    WallTime(Duration),
    /// The module did not compile within its compile-time limit (the value is
    /// the limit). Like wall time, this depends on the machine.
    #[error("the module did not compile within {0:?}")]
    CompileTime(Duration),
    /// The guest wrote more than the allowed number of bytes to stdout.
    #[error("stdout exceeded the limit of {limit} bytes")]
    OutputTooLarge {
        /// The configured [`Limits::max_output_bytes`](crate::Limits::max_output_bytes).
        limit: usize,
    },
    /// The guest trapped (unreachable, out-of-bounds access, division by
    /// zero, stack overflow, invalid WASI use, ...).
    #[error("guest trapped: {0}")]
    Trap(String),
    /// The [`Pool`](crate::Pool) has no free slot and its wait queue is full.
    #[error("executor busy: all slots taken and the wait queue is full")]
    Busy,
    /// A failure of the host side (engine setup, task join, ...), not the
    /// guest's fault.
    #[error("internal sandbox error: {0}")]
    Internal(String),
}

impl ExecError {
    /// True when the job was stopped for breaking one of its [`Limits`](crate::Limits)
    /// (fuel, memory, wall time or output size).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ExecError::FuelExhausted
                | ExecError::MemoryLimit { .. }
                | ExecError::WallTime(_)
                | ExecError::CompileTime(_)
                | ExecError::OutputTooLarge { .. }
        )
    }
}
