//! One execution on this node as a worker: fetch the job's blobs from its submitter, run it in
//! the executor pool (WebAssembly or ONNX), and report the outcome to the core, however the
//! task ends ([`WorkGuard`]).

use std::time::Duration;

use agora_exec::{
    Compare, ExecError, Limits as ExecLimits, OnnxJob, OnnxLimits, Pool, canonicalize, perturb,
};
use agora_net::{NetHandle, PeerId};
use agora_types::job::{JobId, JobSpec, Lease, MAX_STDERR_BYTES, Outcome, Runtime};
use agora_types::wire::limits;
use agora_types::{Hash, Keypair};
use tokio::sync::mpsc;

use crate::blobs;
use crate::core::Internal;
use crate::store::Store;

/// One execution on this node as a worker.
pub(crate) struct Work {
    pub(crate) net: NetHandle,
    pub(crate) store: Store,
    pub(crate) pool: Pool,
    pub(crate) keypair: Keypair,
    pub(crate) byzantine: bool,
}

/// Reports a work task's end to the core, however it ends: if the task is aborted or panics
/// before it reported, its drop tells the core the work was given up, so the lease-book slot is
/// freed (and if even that message cannot be queued, the lease's expiry timer frees it).
pub(crate) struct WorkGuard {
    pub(crate) job_id: JobId,
    pub(crate) token: u64,
    pub(crate) tx: mpsc::Sender<Internal>,
    pub(crate) reported: bool,
}

impl WorkGuard {
    async fn report(mut self, result: Result<Report, String>) {
        let ended = Internal::WorkEnded {
            job_id: self.job_id,
            token: self.token,
            result,
        };
        self.reported = self.tx.send(ended).await.is_ok();
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if !self.reported {
            let _ = self.tx.try_send(Internal::WorkEnded {
                job_id: self.job_id,
                token: self.token,
                result: Err("the work ended without a report".into()),
            });
        }
    }
}

/// What a worker reports: the outcome, stdout, and the first bytes of stderr.
pub(crate) type Report = (Outcome, Vec<u8>, Vec<u8>);

/// A failed execution as the replicas vote on it: the error's stable tag
/// ([`ExecError::kind`]) and its message.
fn failure(e: &ExecError) -> Outcome {
    Outcome::Failed {
        kind: e.kind().into(),
        detail: e.to_string(),
    }
}

impl Work {
    /// Fetches, runs, and reports through `guard`. Heartbeats are the worker machine's timers,
    /// sent by the core meanwhile: fetching, waiting for a slot, compiling and running all count
    /// as progress, so a slow but alive worker keeps its lease.
    pub(crate) async fn run(self, submitter: PeerId, lease: Box<Lease>, guard: WorkGuard) {
        let result = self.execute(submitter, &lease).await;
        guard.report(result).await;
    }

    async fn execute(&self, submitter: PeerId, lease: &Lease) -> Result<Report, String> {
        let spec = &lease.job.payload;
        let module = blobs::fetch(
            &self.net,
            &self.store,
            submitter,
            spec.module,
            spec.module_size,
        )
        .await
        .map_err(|e| e.to_string())?;
        let input = blobs::fetch(
            &self.net,
            &self.store,
            submitter,
            spec.input,
            spec.input_size,
        )
        .await
        .map_err(|e| e.to_string())?;
        match spec.runtime {
            Runtime::Wasm => self.run_wasm(spec, module, input).await,
            Runtime::Onnx { compare } => self.run_onnx(spec, module, input, compare).await,
        }
    }

    async fn run_wasm(
        &self,
        spec: &JobSpec,
        module: Vec<u8>,
        input: Vec<u8>,
    ) -> Result<Report, String> {
        let limits = ExecLimits {
            fuel: spec.limits.fuel,
            memory_bytes: spec.limits.memory_bytes,
            wall_time: Duration::from_millis(spec.limits.wall_time_ms),
            max_output_bytes: limits::MAX_OUTPUT_BYTES,
            compile_time: agora_exec::DEFAULT_COMPILE_TIME,
        };
        let job = agora_exec::Job::new(module, input, spec.args.clone(), limits);
        match self.pool.run(job).await {
            Ok(o) => {
                let mut stderr = o.stderr;
                stderr.truncate(MAX_STDERR_BYTES);
                let mut output = o.stdout;
                if self.byzantine {
                    // Each Byzantine worker corrupts differently: independent faults, not a
                    // colluding cartel (see ARCHITECTURE.md on collusion).
                    let me = self.keypair.public().to_peer_id();
                    output.extend_from_slice(format!("\ncorrupted by {me}").as_bytes());
                }
                Ok((
                    Outcome::Completed {
                        exit_code: o.exit_code,
                        output_hash: Hash::of(&output),
                        fuel_used: o.fuel_used,
                        compared: None,
                    },
                    output,
                    stderr,
                ))
            }
            Err(e) => Self::exec_failure(e),
        }
    }

    /// An ONNX job: the model's first output as `.npy`, and the hash of its canonical form under
    /// the job's rule, which is what the replicas vote on.
    async fn run_onnx(
        &self,
        spec: &JobSpec,
        model: Vec<u8>,
        input: Vec<u8>,
        compare: Compare,
    ) -> Result<Report, String> {
        let limits = OnnxLimits::for_spec(spec, limits::MAX_OUTPUT_BYTES);
        let out = match self.pool.run_onnx(OnnxJob::new(model, input, limits)).await {
            Ok(o) => o.output,
            Err(e) => return Self::exec_failure(e),
        };
        // A Byzantine worker returns a well-formed wrong answer of its own (see `perturb`),
        // which only the vote can reject.
        let byzantine = self.byzantine.then(|| {
            let me = self.keypair.public().to_peer_id().to_bytes();
            u64::from_le_bytes(Hash::of(&me).as_bytes()[..8].try_into().unwrap_or([0; 8]))
        });
        // Canonical forms read the whole output: off the async threads.
        let judged = tokio::task::spawn_blocking(move || {
            let output = match byzantine {
                Some(salt) => perturb(&out, salt)?,
                None => out,
            };
            let canonical = canonicalize(&output, &compare)?;
            Ok::<_, ExecError>((Hash::of(&output), Hash::of(&canonical), output))
        })
        .await
        .map_err(|e| format!("sandbox failure: {e}"))?;
        match judged {
            Ok((output_hash, compared, output)) => Ok((
                Outcome::Completed {
                    exit_code: 0,
                    output_hash,
                    fuel_used: 0,
                    compared: Some(compared),
                },
                output,
                vec![],
            )),
            Err(e) => Self::exec_failure(e),
        }
    }

    fn exec_failure(e: ExecError) -> Result<Report, String> {
        match e {
            ExecError::Busy => Err("the executor pool is full".into()),
            ExecError::Internal(e) => Err(format!("sandbox failure: {e}")),
            e => Ok((failure(&e), vec![], vec![])),
        }
    }
}

/// What a result for a job of `runtime` must claim: for an ONNX job, the hash of its output's
/// canonical form (`compared`, returned with the job's rule so that the output can be checked
/// against it); for WebAssembly, nothing beside the output hash. A failed outcome claims no
/// output. The error says what was wrong, for the worker's log.
pub(crate) fn claimed_form(
    runtime: Runtime,
    outcome: &Outcome,
) -> Result<Option<(Compare, Hash)>, &'static str> {
    match (runtime, outcome) {
        (
            Runtime::Onnx { compare },
            Outcome::Completed {
                compared: Some(c), ..
            },
        ) => Ok(Some((compare, *c))),
        (Runtime::Onnx { .. }, Outcome::Completed { compared: None, .. }) => Err(
            "an ONNX job's result must carry the hash of its output under the job's comparison \
             rule (`compared`)",
        ),
        (
            Runtime::Wasm,
            Outcome::Completed {
                compared: Some(_), ..
            },
        ) => Err("a WebAssembly job's outputs are compared bit for bit: `compared` must be empty"),
        _ => Ok(None),
    }
}

/// Checks that `output` gives `claimed` under `rule`. The vote counts `compared`, so without this
/// a worker could vote with the quorum and hand back any output at all.
pub(crate) fn check_compared(output: &[u8], rule: &Compare, claimed: &Hash) -> Result<(), String> {
    match canonicalize(output, rule) {
        Ok(c) if Hash::of(&c) == *claimed => Ok(()),
        Ok(_) => Err(format!(
            "the output's {rule} form does not match the result's `compared` hash"
        )),
        Err(e) => Err(format!("the output is not a tensor: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MLP: &[u8] = include_bytes!("../../../examples/onnx/mlp.onnx");
    const X16: &[u8] = include_bytes!("../../../examples/onnx/x16.npy");

    fn completed(compared: Option<Hash>) -> Outcome {
        Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(b"out"),
            fuel_used: 0,
            compared,
        }
    }

    #[test]
    fn a_result_claims_the_form_its_runtime_needs() {
        let onnx = Runtime::Onnx {
            compare: Compare::Argmax,
        };
        let h = Hash::of(b"canonical");
        assert_eq!(
            claimed_form(onnx, &completed(Some(h))),
            Ok(Some((Compare::Argmax, h)))
        );
        assert!(
            claimed_form(onnx, &completed(None))
                .unwrap_err()
                .contains("compared")
        );
        assert!(claimed_form(Runtime::Wasm, &completed(Some(h))).is_err());
        assert_eq!(claimed_form(Runtime::Wasm, &completed(None)), Ok(None));
        let failed = Outcome::Failed {
            kind: "invalid_model".into(),
            detail: "x".into(),
        };
        assert_eq!(claimed_form(onnx, &failed), Ok(None));
    }

    /// A worker that votes with the quorum's `compared` hash but returns another output (here
    /// the perturbed one, or garbage) is refused; the honest pair passes.
    #[test]
    fn a_result_whose_output_does_not_give_its_compared_hash_is_refused() {
        let engine = agora_exec::OnnxEngine::new();
        let out = engine
            .run_blocking(&OnnxJob::new(MLP, X16.to_vec(), OnnxLimits::default()))
            .expect("the example model runs")
            .output;
        let rule = Compare::Argmax;
        let honest = Hash::of(&canonicalize(&out, &rule).expect("canonical"));
        assert_eq!(check_compared(&out, &rule, &honest), Ok(()));
        let wrong = perturb(&out, 7).expect("perturbed");
        let e = check_compared(&wrong, &rule, &honest).unwrap_err();
        assert!(e.contains("does not match"), "{e}");
        let e = check_compared(b"not a tensor", &rule, &honest).unwrap_err();
        assert!(e.contains("not a tensor"), "{e}");
        // Under `exact` the same perturbation is caught as well.
        let exact = Hash::of(&out);
        assert!(check_compared(&wrong, &Compare::Exact, &exact).is_err());
    }
}
