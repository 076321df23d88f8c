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
    /// The bytes are not an ONNX model tract can run: not ONNX, malformed, several inputs, a
    /// type or shape tract cannot infer, or tract failed (even panicked) on it. The message
    /// says what, and how to fix the export where it can.
    #[error("invalid ONNX model: {0}")]
    InvalidModel(String),
    /// The model uses an operator tract does not implement (the names, with their nodes).
    #[error(
        "unsupported ONNX operator: {0}; tract does not implement it, so re-export the model \
         without it (see examples/onnx/README.md for scikit-learn models)"
    )]
    UnsupportedOperator(String),
    /// The input (or an output) is not a tensor the model takes: not `.npy`, truncated, an
    /// unsupported dtype, or a dtype or shape other than the model's declared input.
    #[error("invalid tensor: {0}")]
    InvalidTensor(String),
    /// A model or tensor is over its limit; refused before it was parsed or run.
    #[error("{what} is {size} {unit}, over the limit of {limit} {unit}")]
    TooLarge {
        /// What was too large ("the model", "the input tensor", ...).
        what: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
        /// The unit of both (`bytes` or `elements`).
        unit: String,
    },
    /// The [`Pool`](crate::Pool) has no free slot and its wait queue is full.
    #[error("executor busy: all slots taken and the wait queue is full")]
    Busy,
    /// A failure of the host side (engine setup, task join, ...), not the
    /// guest's fault.
    #[error("internal sandbox error: {0}")]
    Internal(String),
}

impl ExecError {
    /// True when the job was stopped for breaking one of its [`Limits`](crate::Limits) or
    /// [`OnnxLimits`](crate::OnnxLimits) (fuel, memory, wall time, compile time, output size,
    /// model or tensor size).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            ExecError::FuelExhausted
                | ExecError::MemoryLimit { .. }
                | ExecError::WallTime(_)
                | ExecError::CompileTime(_)
                | ExecError::OutputTooLarge { .. }
                | ExecError::TooLarge { .. }
        )
    }

    /// A short, stable name of the variant, for reports and metrics: `invalid_module`,
    /// `fuel`, `memory`, `wall_time`, `compile_time`, `output`, `trap`, `invalid_model`,
    /// `unsupported_operator`, `invalid_tensor`, `too_large`, `busy` or `internal`.
    pub fn kind(&self) -> &'static str {
        match self {
            ExecError::InvalidModule(_) => "invalid_module",
            ExecError::FuelExhausted => "fuel",
            ExecError::MemoryLimit { .. } => "memory",
            ExecError::WallTime(_) => "wall_time",
            ExecError::CompileTime(_) => "compile_time",
            ExecError::OutputTooLarge { .. } => "output",
            ExecError::Trap(_) => "trap",
            ExecError::InvalidModel(_) => "invalid_model",
            ExecError::UnsupportedOperator(_) => "unsupported_operator",
            ExecError::InvalidTensor(_) => "invalid_tensor",
            ExecError::TooLarge { .. } => "too_large",
            ExecError::Busy => "busy",
            ExecError::Internal(_) => "internal",
        }
    }
}
