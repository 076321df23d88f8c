//! A bounded pool of executor slots in front of a [`Sandbox`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::{ExecError, Job, OnnxEngine, OnnxJob, OnnxOutcome, Outcome, Sandbox};

/// Default number of jobs allowed to wait for a slot.
pub const DEFAULT_QUEUE: usize = 64;

/// Default number of executor slots: one per available core.
pub fn default_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Inner {
    sandbox: Sandbox,
    onnx: OnnxEngine,
    permits: Arc<Semaphore>,
    slots: usize,
    queue: usize,
    waiting: AtomicUsize,
}

/// Runs jobs from async code on a bounded number of blocking threads.
///
/// WebAssembly jobs ([`Pool::run`]) and ONNX jobs ([`Pool::run_onnx`]) share the slots and the
/// queue: a slot is a core, whatever runs on it.
///
/// At most `slots` jobs execute at once (each on a
/// `tokio::task::spawn_blocking` thread, so the async runtime is never
/// blocked); at most `queue` more wait for a slot, and any job beyond that is
/// refused immediately with [`ExecError::Busy`]. A slot is held by a
/// semaphore permit that moves into the blocking closure, so it is released
/// exactly when the execution ends, even if the caller stops waiting.
/// Cloning is cheap and shares the slots.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("slots", &self.inner.slots)
            .field("free_slots", &self.free_slots())
            .field("queue", &self.inner.queue)
            .field("waiting", &self.inner.waiting.load(Ordering::Relaxed))
            .finish()
    }
}

/// Decrements the waiting counter when a queued job gets its slot or is
/// cancelled while waiting.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Pool {
    /// A pool of `slots` executors (at least 1) with room for `queue` waiting
    /// jobs, with a new [`OnnxEngine`] for ONNX jobs. See [`default_slots`] and
    /// [`DEFAULT_QUEUE`] for the usual values.
    pub fn new(sandbox: Sandbox, slots: usize, queue: usize) -> Self {
        Self::with_onnx(sandbox, OnnxEngine::new(), slots, queue)
    }

    /// [`Pool::new`] with a given [`OnnxEngine`] (to share its plan cache).
    pub fn with_onnx(sandbox: Sandbox, onnx: OnnxEngine, slots: usize, queue: usize) -> Self {
        let slots = slots.max(1);
        Self {
            inner: Arc::new(Inner {
                sandbox,
                onnx,
                permits: Arc::new(Semaphore::new(slots)),
                slots,
                queue,
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// A pool with [`default_slots`] slots and a queue of [`DEFAULT_QUEUE`].
    pub fn with_defaults(sandbox: Sandbox) -> Self {
        Self::new(sandbox, default_slots(), DEFAULT_QUEUE)
    }

    /// Runs `job` on a free slot, waiting for one if needed; fails with
    /// [`ExecError::Busy`] when all slots are taken and the queue is full.
    pub async fn run(&self, job: Job) -> Result<Outcome, ExecError> {
        let permit = self.slot().await?;
        let sandbox = self.inner.sandbox.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            sandbox.run_blocking(&job)
        })
        .await
        .map_err(|e| ExecError::Internal(format!("executor task failed: {e}")))?
    }

    /// Runs an ONNX `job` on a free slot, as [`Pool::run`] does a WebAssembly job (same slots,
    /// same queue, same [`ExecError::Busy`]).
    pub async fn run_onnx(&self, job: OnnxJob) -> Result<OnnxOutcome, ExecError> {
        let permit = self.slot().await?;
        let onnx = self.inner.onnx.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            onnx.run_blocking(&job)
        })
        .await
        .map_err(|e| ExecError::Internal(format!("executor task failed: {e}")))?
    }

    /// A slot: free now, or after waiting in the queue; `Busy` when the queue is full.
    async fn slot(&self) -> Result<OwnedSemaphorePermit, ExecError> {
        let inner = &self.inner;
        match inner.permits.clone().try_acquire_owned() {
            Ok(permit) => Ok(permit),
            Err(TryAcquireError::NoPermits) => {
                if inner.waiting.fetch_add(1, Ordering::AcqRel) >= inner.queue {
                    inner.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(ExecError::Busy);
                }
                let _waiting = Waiting(&inner.waiting);
                inner
                    .permits
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| ExecError::Internal("executor pool closed".into()))
            }
            Err(TryAcquireError::Closed) => Err(ExecError::Internal("executor pool closed".into())),
        }
    }

    /// Number of slots not executing a job right now.
    pub fn free_slots(&self) -> usize {
        self.inner.permits.available_permits()
    }

    /// Total number of slots.
    pub fn slots(&self) -> usize {
        self.inner.slots
    }

    /// The sandbox this pool runs jobs in.
    pub fn sandbox(&self) -> &Sandbox {
        &self.inner.sandbox
    }

    /// The engine this pool runs ONNX jobs with.
    pub fn onnx(&self) -> &OnnxEngine {
        &self.inner.onnx
    }
}
