//! Job specs and the market's messages.
//!
//! A submitter signs a [`JobSpec`]; the job's id is the hash of that signed envelope
//! ([`job_id`]). Workers answer an announcement with a signed [`Bid`], the submitter leases the
//! job to the workers it picks ([`Lease`]), and each worker returns a signed [`WorkResult`]. The
//! signatures make bids and results usable as evidence later (payment, slashing).

use serde::{Deserialize, Serialize};

pub use crate::compare::{Compare, MAX_ROUND_DIGITS};
use crate::sign::{Domain, Signed};
use crate::{Hash, PeerId, UnixMillis};

/// The id of a job: the hash of its signed spec.
pub type JobId = Hash;

/// Limits the sandbox enforces on one execution.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobLimits {
    /// WebAssembly fuel (roughly one unit per instruction).
    pub fuel: u64,
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_time_ms: u64,
}

impl Default for JobLimits {
    fn default() -> Self {
        JobLimits {
            fuel: 10_000_000_000,
            memory_bytes: 256 << 20,
            wall_time_ms: 30_000,
        }
    }
}

/// Hard bounds a node puts on any spec it accepts, from a user or the network.
#[derive(Clone, Copy, Debug)]
pub struct SpecBounds {
    /// The largest module, in bytes.
    pub max_module_bytes: u64,
    /// The largest input, in bytes.
    pub max_input_bytes: u64,
    /// Most arguments.
    pub max_args: usize,
    /// Longest argument, in bytes.
    pub max_arg_len: usize,
    /// Most capability tags.
    pub max_capabilities: usize,
    /// Highest redundancy.
    pub max_redundancy: u8,
    /// Largest memory limit.
    pub max_memory_bytes: u64,
    /// Longest wall time.
    pub max_wall_time_ms: u64,
}

impl Default for SpecBounds {
    fn default() -> Self {
        SpecBounds {
            max_module_bytes: 64 << 20,
            max_input_bytes: 64 << 20,
            max_args: 64,
            max_arg_len: 1024,
            max_capabilities: 16,
            max_redundancy: 9,
            max_memory_bytes: 1 << 30,
            max_wall_time_ms: 10 * 60 * 1000,
        }
    }
}

/// What runs a job, and so what `module` and `input` are.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// A WebAssembly WASI command: `module` is the `.wasm`, `input` its stdin, the output its
    /// stdout. Deterministic, so replicas compare outputs bit for bit.
    #[default]
    Wasm,
    /// An ONNX model: `module` is the `.onnx`, `input` one tensor as `.npy`, the output the
    /// model's first output as `.npy`. CPU kernels differ across machines, so replicas compare
    /// their outputs through `compare`.
    Onnx {
        /// How the replicas' outputs are compared.
        compare: Compare,
    },
}

impl Runtime {
    /// The capability tag a worker must advertise to run this runtime.
    pub fn capability(&self) -> &'static str {
        match self {
            Runtime::Wasm => "wasm",
            Runtime::Onnx { .. } => "onnx",
        }
    }

    /// The comparison rule of the replicas: `exact` for WebAssembly.
    pub fn compare(&self) -> Compare {
        match self {
            Runtime::Wasm => Compare::Exact,
            Runtime::Onnx { compare } => *compare,
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.capability())
    }
}

/// What a submitter asks the network to run.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobSpec {
    /// The program, by hash: a WebAssembly module (a WASI command) or an ONNX model, as
    /// [`JobSpec::runtime`] says.
    pub module: Hash,
    /// The module's size in bytes, so workers can refuse before fetching.
    pub module_size: u64,
    /// The input, by hash: stdin of a WebAssembly module, or a `.npy` tensor for a model.
    pub input: Hash,
    /// The input's size in bytes.
    pub input_size: u64,
    /// Command-line arguments after argv\[0\].
    pub args: Vec<String>,
    /// Sandbox limits.
    pub limits: JobLimits,
    /// Capabilities a worker must offer (e.g. `wasm`).
    pub capabilities: Vec<String>,
    /// How many independent workers must agree on the output.
    pub redundancy: u8,
    /// The most the submitter pays one worker for one execution.
    pub max_price: u64,
    /// After this instant the job is abandoned.
    pub deadline_ms: UnixMillis,
    /// Makes otherwise identical submissions distinct.
    pub nonce: u64,
    /// Paid from the submitter's credit lines (one per worker, locked beforehand) rather than
    /// from an escrow locked for this job: the job starts without waiting for a block. Only
    /// workers holding a line from the submitter take it.
    #[serde(default)]
    pub credit: bool,
    /// What runs it (WebAssembly unless said otherwise).
    #[serde(default)]
    pub runtime: Runtime,
}

impl Domain for JobSpec {
    const DOMAIN: &'static str = "agora/job/1";
}

/// Why a spec is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SpecError {
    /// A field is outside what this node accepts.
    #[error("job spec field `{field}` = {value} is invalid: {expected}")]
    Field {
        /// The field's name.
        field: &'static str,
        /// Its value, as shown to the user.
        value: String,
        /// What would be valid.
        expected: String,
    },
}

fn field_err(field: &'static str, value: impl ToString, expected: impl ToString) -> SpecError {
    SpecError::Field {
        field,
        value: value.to_string(),
        expected: expected.to_string(),
    }
}

impl JobSpec {
    /// Checks every field against `bounds`.
    pub fn validate(&self, bounds: &SpecBounds) -> Result<(), SpecError> {
        if self.module_size == 0 || self.module_size > bounds.max_module_bytes {
            return Err(field_err(
                "module_size",
                self.module_size,
                format!("1..={} bytes", bounds.max_module_bytes),
            ));
        }
        if self.input_size > bounds.max_input_bytes {
            return Err(field_err(
                "input_size",
                self.input_size,
                format!("at most {} bytes", bounds.max_input_bytes),
            ));
        }
        if self.args.len() > bounds.max_args {
            return Err(field_err(
                "args",
                format!("{} arguments", self.args.len()),
                format!("at most {}", bounds.max_args),
            ));
        }
        if let Some(a) = self.args.iter().find(|a| a.len() > bounds.max_arg_len) {
            return Err(field_err(
                "args",
                format!("an argument of {} bytes", a.len()),
                format!("arguments of at most {} bytes", bounds.max_arg_len),
            ));
        }
        if self.capabilities.len() > bounds.max_capabilities
            || self
                .capabilities
                .iter()
                .any(|c| c.is_empty() || c.len() > 64)
        {
            return Err(field_err(
                "capabilities",
                format!("{:?}", self.capabilities),
                format!("at most {} tags of 1..=64 bytes", bounds.max_capabilities),
            ));
        }
        if self.redundancy == 0 || self.redundancy > bounds.max_redundancy {
            return Err(field_err(
                "redundancy",
                self.redundancy,
                format!("1..={}", bounds.max_redundancy),
            ));
        }
        if let Runtime::Onnx { .. } = self.runtime {
            if !self.args.is_empty() {
                return Err(field_err(
                    "args",
                    format!("{} arguments", self.args.len()),
                    "none: an ONNX job's only input is its .npy tensor",
                ));
            }
            if !self.capabilities.iter().any(|c| c == "onnx") {
                return Err(field_err(
                    "capabilities",
                    format!("{:?}", self.capabilities),
                    "a list with `onnx` in it, so that only workers with the ONNX runtime bid",
                ));
            }
        }
        let l = &self.limits;
        if l.fuel == 0 {
            return Err(field_err("limits.fuel", l.fuel, "more than 0"));
        }
        if l.memory_bytes < 65_536 || l.memory_bytes > bounds.max_memory_bytes {
            return Err(field_err(
                "limits.memory_bytes",
                l.memory_bytes,
                format!(
                    "65536..={} (one wasm page up to the node's cap)",
                    bounds.max_memory_bytes
                ),
            ));
        }
        if l.wall_time_ms == 0 || l.wall_time_ms > bounds.max_wall_time_ms {
            return Err(field_err(
                "limits.wall_time_ms",
                l.wall_time_ms,
                format!("1..={}", bounds.max_wall_time_ms),
            ));
        }
        Ok(())
    }
}

/// A job spec signed by its submitter.
pub type SignedJob = Signed<JobSpec>;

/// The id of a signed job.
pub fn job_id(job: &SignedJob) -> JobId {
    job.digest()
}

/// A worker's offer to run a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Bid {
    /// The job bid on.
    pub job_id: JobId,
    /// The price asked for one execution.
    pub price: u64,
    /// Executor slots free when bidding.
    pub free_slots: u32,
    /// Executor slots in all.
    pub total_slots: u32,
}

impl Domain for Bid {
    const DOMAIN: &'static str = "agora/bid/1";
}

/// The submitter's grant of a job to one worker, until `expires_ms`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The signed job, so the worker can check it independently of gossip.
    pub job: SignedJob,
    /// The price agreed (the worker's bid).
    pub price: u64,
    /// When the submitter stops waiting for this worker's result.
    pub expires_ms: UnixMillis,
}

/// How an execution ended, as compared between replicas.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The module ran to completion (or `proc_exit`).
    Completed {
        /// The process exit code.
        exit_code: i32,
        /// blake3 of stdout.
        output_hash: Hash,
        /// Fuel consumed.
        fuel_used: u64,
        /// For a job compared by a rule ([`Runtime::Onnx`]): blake3 of the output's canonical
        /// form under the job's [`Compare`] rule, which replicas compare instead of
        /// `output_hash`. `None` for WebAssembly: the output itself is compared.
        #[serde(default)]
        compared: Option<Hash>,
    },
    /// The module broke a limit or trapped. `kind` is a short stable tag (`fuel`, `memory`,
    /// `wall_time`, `output`, `trap`, `invalid_module`); `detail` is for people.
    Failed {
        /// Stable tag for comparison.
        kind: String,
        /// Human-readable reason.
        detail: String,
    },
}

impl Outcome {
    /// The value replicas must agree on: the output hash and exit code, or the failure kind.
    /// Fuel is excluded: it is reported, not compared, so that a worker cannot be outvoted for a
    /// metering difference alone.
    pub fn verdict(&self) -> Hash {
        match self {
            Outcome::Completed {
                exit_code,
                output_hash,
                compared,
                ..
            } => {
                let mut b = Vec::with_capacity(40);
                b.extend_from_slice(b"ok");
                b.extend_from_slice(&exit_code.to_be_bytes());
                b.extend_from_slice(compared.as_ref().unwrap_or(output_hash).as_bytes());
                Hash::of(&b)
            }
            Outcome::Failed { kind, .. } => {
                // Every deterministic resource limit is one verdict: the job's answer is the
                // same, it does not fit. Machine-dependent failures (wall time, compile time)
                // are not votes at all (see [`Outcome::is_vote`]); their verdict is their own.
                let kind = match kind.as_str() {
                    "fuel" | "memory" | "output" => "limit",
                    other => other,
                };
                Hash::of(format!("failed:{kind}").as_bytes())
            }
        }
    }

    /// Whether this outcome depends on the machine that produced it rather than on the job:
    /// a wall-time or compile-time limit (a slow or loaded machine trips it, a fast one does
    /// not) or a host-side failure. Such an outcome is not a vote: it neither agrees with a
    /// quorum nor counts against one, so it can never be paid as agreement or slashed as
    /// invalid compute.
    pub fn is_machine_dependent(&self) -> bool {
        match self {
            Outcome::Completed { .. } => false,
            Outcome::Failed { kind, .. } => MACHINE_DEPENDENT_KINDS.contains(&kind.as_str()),
        }
    }

    /// Whether this outcome takes part in the quorum (see [`Outcome::is_machine_dependent`]).
    pub fn is_vote(&self) -> bool {
        !self.is_machine_dependent()
    }

    /// The exit code, for a completed run.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Completed { exit_code, .. } => Some(*exit_code),
            Outcome::Failed { .. } => None,
        }
    }
}

/// Failure tags that depend on the machine, not on the job: never compared, never slashed.
pub const MACHINE_DEPENDENT_KINDS: [&str; 3] = ["wall_time", "compile_time", "internal"];

/// The most stderr bytes a worker sends beside its result (the sandbox keeps as much).
pub const MAX_STDERR_BYTES: usize = 64 * 1024;

/// A worker's sign of life for a lease it accepted and is still working on, sent to the
/// submitter at most once per heartbeat interval. The submitter extends the lease while these
/// arrive (up to a cap); a worker that falls silent loses its lease at the old expiry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The job being worked on.
    pub job_id: JobId,
    /// What the worker is doing, for the job's timeline (`fetching`, `queued`, `running`).
    pub stage: String,
}

impl Domain for Heartbeat {
    const DOMAIN: &'static str = "agora/heartbeat/1";
}

/// A worker's signed claim about one execution. The output bytes travel beside it (see
/// [`Request::Result`](crate::wire::Request::Result)) and are checked against `output_hash`, so
/// the claim stays small enough to serve as evidence on the ledger (payment and slashing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WorkResult {
    /// The job run.
    pub job_id: JobId,
    /// How it ended.
    pub outcome: Outcome,
    /// The price the worker was leased at: what settlement pays it.
    pub price: u64,
}

impl Domain for WorkResult {
    const DOMAIN: &'static str = "agora/result/1";
}

impl WorkResult {
    /// Checks that `output` is the output this result claims.
    pub fn output_matches(&self, output: &[u8]) -> bool {
        match &self.outcome {
            Outcome::Completed { output_hash, .. } => Hash::of(output) == *output_hash,
            Outcome::Failed { .. } => output.is_empty(),
        }
    }
}

/// What a node offers, gossiped periodically on `agora/capabilities/1`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CapabilityAd {
    /// The execution engine, e.g. `wasmtime-48`.
    pub engine: String,
    /// Capability tags this node satisfies (e.g. `wasm`).
    pub capabilities: Vec<String>,
    /// CPU cores.
    pub cores: u32,
    /// Memory it will give one job, in bytes.
    pub memory_bytes: u64,
    /// Executor slots free now.
    pub free_slots: u32,
    /// Executor slots in all.
    pub total_slots: u32,
    /// Its price for one execution.
    pub price: u64,
    /// Software version.
    pub version: String,
    /// A sequence number, increasing per node, so stale ads are ignored.
    pub seq: u64,
    /// The standing offer's limits: the largest input and module, in bytes, and the longest
    /// wall time, in ms, it takes (0: not said). A submitter leases directly only jobs within
    /// them.
    #[serde(default)]
    pub max_input_bytes: u64,
    /// See [`CapabilityAd::max_input_bytes`].
    #[serde(default)]
    pub max_module_bytes: u64,
    /// See [`CapabilityAd::max_input_bytes`].
    #[serde(default)]
    pub max_wall_time_ms: u64,
}

impl Domain for CapabilityAd {
    const DOMAIN: &'static str = "agora/capability/1";
}

/// A job's verified outcome, gossiped on `agora/results/1` by its submitter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultNotice {
    /// The job.
    pub job_id: JobId,
    /// The verdict the quorum agreed on.
    pub verdict: Hash,
    /// The workers in the quorum.
    pub workers: Vec<PeerId>,
}

impl Domain for ResultNotice {
    const DOMAIN: &'static str = "agora/result-notice/1";
}

/// The results a submitter verified since its last beacon, gossiped together on
/// `agora/results/1`: one signature per batch rather than one per job, since every node checks
/// each gossiped signature.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultNotices {
    /// The notices, at most [`MAX_NOTICES`].
    pub notices: Vec<ResultNotice>,
}

/// The most notices in one [`ResultNotices`].
pub const MAX_NOTICES: usize = 256;

impl Domain for ResultNotices {
    const DOMAIN: &'static str = "agora/result-notices/1";
}

/// A change of one peer's reputation as seen by the reporter: one entry of a
/// [`ReputationReport`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReputationUpdate {
    /// Whose reputation changed.
    pub subject: PeerId,
    /// The named action (see the market's `ReputationAction`).
    pub action: String,
    /// The signed change.
    pub delta: i64,
    /// The job it concerns, if any.
    pub job_id: Option<JobId>,
}

/// A node's reputation changes, in one signed message on `agora/reputation/1`: a penalty
/// goes out at once (a report of one), rewards are summed per worker and go out together with
/// the node's beacon. One report per node and beacon, not one per worker: every report costs
/// every node a signature check, and a busy submitter pays many workers each second.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ReputationReport {
    /// The changes, at most [`MAX_REPUTATION_UPDATES`], each peer at most once.
    pub updates: Vec<ReputationUpdate>,
}

/// The most updates in one [`ReputationReport`] (a report of that many stays well under the
/// gossip size cap).
pub const MAX_REPUTATION_UPDATES: usize = 128;

impl Domain for ReputationReport {
    const DOMAIN: &'static str = "agora/reputation/2";
}

/// A node's periodic health beacon, on `agora/health/1`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Connected peers.
    pub connected_peers: u32,
    /// Jobs executing now.
    pub running_jobs: u32,
}

impl Domain for Health {
    const DOMAIN: &'static str = "agora/health/1";
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Keypair;

    pub(crate) fn spec() -> JobSpec {
        JobSpec {
            module: Hash::of(b"m"),
            module_size: 10,
            input: Hash::of(b""),
            input_size: 0,
            args: vec![],
            limits: JobLimits::default(),
            capabilities: vec!["wasm".into()],
            redundancy: 3,
            max_price: 100,
            deadline_ms: 0,
            nonce: 1,
            credit: false,
            runtime: Default::default(),
        }
    }

    #[test]
    fn validate_names_the_field() {
        let b = SpecBounds::default();
        spec().validate(&b).unwrap();
        let mut s = spec();
        s.redundancy = 0;
        let e = s.validate(&b).unwrap_err().to_string();
        assert!(e.contains("redundancy"), "{e}");
        let mut s = spec();
        s.limits.memory_bytes = 4 << 30;
        assert!(
            s.validate(&b)
                .unwrap_err()
                .to_string()
                .contains("memory_bytes")
        );
    }

    #[test]
    fn job_id_changes_with_nonce() {
        let kp = Keypair::generate_ed25519();
        let a = Signed::sign(&kp, spec(), 1).unwrap();
        let mut s2 = spec();
        s2.nonce = 2;
        let b = Signed::sign(&kp, s2, 1).unwrap();
        assert_ne!(job_id(&a), job_id(&b));
    }

    #[test]
    fn verdict_ignores_fuel_but_not_output() {
        let a = Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(b"x"),
            fuel_used: 1,
            compared: None,
        };
        let b = Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(b"x"),
            fuel_used: 2,
            compared: None,
        };
        let c = Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(b"y"),
            fuel_used: 1,
            compared: None,
        };
        assert_eq!(a.verdict(), b.verdict());
        assert_ne!(a.verdict(), c.verdict());
    }

    #[test]
    fn wall_time_is_not_a_vote_and_never_equals_a_deterministic_limit() {
        let failed = |kind: &str| Outcome::Failed {
            kind: kind.into(),
            detail: String::new(),
        };
        for k in ["wall_time", "compile_time", "internal"] {
            assert!(failed(k).is_machine_dependent(), "{k}");
            assert!(!failed(k).is_vote(), "{k}");
            assert_ne!(failed(k).verdict(), failed("fuel").verdict(), "{k}");
        }
        for k in ["fuel", "memory", "output", "trap", "invalid_module"] {
            assert!(failed(k).is_vote(), "{k}");
        }
        assert_eq!(failed("fuel").verdict(), failed("memory").verdict());
        let ok = Outcome::Completed {
            exit_code: 7,
            output_hash: Hash::of(b""),
            fuel_used: 1,
            compared: None,
        };
        assert!(ok.is_vote());
        assert_eq!(ok.exit_code(), Some(7));
    }

    #[test]
    fn onnx_specs_name_their_rule_take_no_args_and_ask_for_the_runtime() {
        let b = SpecBounds::default();
        let mut s = spec();
        assert_eq!(
            s.runtime,
            Runtime::Wasm,
            "WebAssembly unless said otherwise"
        );
        s.runtime = Runtime::Onnx {
            compare: Compare::TopK(3),
        };
        let e = s.validate(&b).unwrap_err().to_string();
        assert!(e.contains("capabilities") && e.contains("onnx"), "{e}");
        s.capabilities = vec!["onnx".into()];
        s.validate(&b).unwrap();
        s.args = vec!["x".into()];
        let e = s.validate(&b).unwrap_err().to_string();
        assert!(e.contains("args") && e.contains(".npy"), "{e}");
        s.args.clear();
        // The rule is part of what is signed, on every wire and in JSON.
        let bytes = crate::codec::encode(&s).unwrap();
        let back: JobSpec = crate::codec::decode(&bytes, 1 << 20).unwrap();
        assert_eq!(back, s);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json["runtime"],
            serde_json::json!({"onnx": {"compare": "topk:3"}})
        );
        // A record written before the runtime field reads as WebAssembly.
        let mut old = serde_json::to_value(spec()).unwrap();
        old.as_object_mut().unwrap().remove("runtime");
        assert_eq!(
            serde_json::from_value::<JobSpec>(old).unwrap().runtime,
            Runtime::Wasm
        );
        assert_eq!(s.runtime.capability(), "onnx");
        assert_eq!(s.runtime.compare(), Compare::TopK(3));
        assert_eq!(Runtime::Wasm.compare(), Compare::Exact);
    }

    #[test]
    fn replicas_compared_by_a_rule_vote_on_the_compared_hash() {
        let done = |raw: &[u8], compared: Option<&[u8]>| Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(raw),
            fuel_used: 0,
            compared: compared.map(Hash::of),
        };
        // Two honest ONNX replicas whose floats differ in the last bits agree on the class.
        assert_eq!(
            done(b"probs a", Some(b"class 3")).verdict(),
            done(b"probs b", Some(b"class 3")).verdict()
        );
        assert_ne!(
            done(b"probs a", Some(b"class 3")).verdict(),
            done(b"probs a", Some(b"class 4")).verdict()
        );
        // Without a rule the output itself is compared.
        assert_ne!(done(b"a", None).verdict(), done(b"b", None).verdict());
        assert_eq!(done(b"a", None).verdict(), done(b"a", None).verdict());
    }
}
