//! Blobs and jobs: `POST /v1/blobs`, `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`,
//! `GET /v1/jobs/{id}/output`, `POST /v1/jobs/{id}/cancel`.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/blobs` answer (201): the stored blob's hash.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct BlobStored {
    /// blake3 of the bytes, 64 hex characters: what a job spec names.
    pub hash: String,
    /// Its size in bytes.
    pub size: u64,
}

/// `POST /v1/jobs` body: a job whose module (and input) were uploaded before, by hash. Every
/// other field is optional; an omitted one takes its value from [`crate::defaults`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The module's hash (a WebAssembly WASI command, uploaded with `POST /v1/blobs`).
    pub module: String,
    /// The input's hash (given on stdin); empty input if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Arguments after argv\[0\].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// How many workers must agree (default [`crate::defaults::REDUNDANCY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<u8>,
    /// The most paid per execution (default [`crate::defaults::MAX_PRICE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<u64>,
    /// Fuel limit (default [`crate::defaults::FUEL`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Memory limit in bytes (default [`crate::defaults::MEMORY_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-time limit in ms (default [`crate::defaults::WALL_TIME_MS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    /// Required capabilities (default `["wasm"]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Vec<String>>,
    /// Seconds from now until the job is abandoned (default [`crate::defaults::DEADLINE_SECS`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
    /// What runs it: `wasm` (default: `module` is a WASI command, `input` its stdin) or `onnx`
    /// (`module` is an ONNX model, `input` one `.npy` tensor, the output the model's first
    /// output as `.npy`; the `onnx` capability is added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<String>,
    /// ONNX only: how the replicas' outputs are compared: `argmax` (default), `topk:K`,
    /// `round:N` (N significant digits) or `exact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<String>,
}

impl SubmitRequest {
    /// A request for `module` (a blob hash) with every other field left to the defaults.
    pub fn new(module: impl Into<String>) -> Self {
        SubmitRequest {
            module: module.into(),
            ..SubmitRequest::default()
        }
    }
}

/// `POST /v1/jobs` answer (201).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct JobCreated {
    /// The new job's id (64 hex characters).
    pub id: String,
}

/// `POST /v1/jobs/{id}/cancel` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct JobCancelled {
    /// The cancelled job's id.
    pub cancelled: String,
}

/// Where a job is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its escrow to be locked on the ledger; not announced yet.
    AwaitingEscrow,
    /// Announced; no worker leased yet.
    Bidding,
    /// Leased to at least one worker; waiting for results.
    Running,
    /// A quorum agreed on a completed run. Final. The program may still have exited non-zero:
    /// see [`JobView::program_exit_code`].
    Verified,
    /// Abandoned, cancelled, or a quorum agreed the program broke a limit or trapped. Final.
    Failed,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Verified | JobState::Failed)
    }

    /// The wire name (`bidding`, `verified`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::AwaitingEscrow => "awaiting_escrow",
            JobState::Bidding => "bidding",
            JobState::Running => "running",
            JobState::Verified => "verified",
            JobState::Failed => "failed",
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of `GET /v1/jobs` (newest first), also the `summary` of a [`JobView`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct JobSummary {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// Why it waits or failed, in one sentence.
    pub reason: Option<String>,
    /// How many workers must agree.
    pub redundancy: u64,
    /// Bids received.
    pub bids: u64,
    /// Results received.
    pub results: u64,
    /// The workers whose results formed the quorum.
    pub workers: Vec<String>,
    /// The verified output's hash.
    pub output_hash: Option<String>,
    /// The agreed exit code of the program, once a quorum agreed on a completed run.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// When it was submitted (Unix ms).
    pub created_ms: u64,
    /// When it was decided or abandoned (Unix ms).
    pub finished_ms: Option<u64>,
    /// `finished_ms - created_ms`.
    pub latency_ms: Option<u64>,
}

/// Limits the sandbox enforces on one execution.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
pub struct JobLimits {
    /// WebAssembly fuel.
    pub fuel: u64,
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock time, in milliseconds.
    pub wall_time_ms: u64,
}

/// The spec the submitter signed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct JobSpec {
    /// The module's hash.
    pub module: String,
    /// Its size in bytes.
    pub module_size: u64,
    /// The input's hash.
    pub input: String,
    /// Its size in bytes.
    pub input_size: u64,
    /// Arguments after argv\[0\].
    pub args: Vec<String>,
    /// Sandbox limits.
    pub limits: JobLimits,
    /// Capabilities a worker must offer.
    pub capabilities: Vec<String>,
    /// How many workers must agree.
    pub redundancy: u8,
    /// The most paid to one worker per execution.
    pub max_price: u64,
    /// When the job is abandoned (Unix ms).
    pub deadline_ms: u64,
    /// Makes identical submissions distinct.
    pub nonce: u64,
    /// Paid from the submitter's credit lines rather than an escrow of its own (with a ledger).
    #[serde(default)]
    pub credit: bool,
    /// What runs it: `wasm` (a WASI command) or `onnx` (a model; the input is a `.npy` tensor).
    #[serde(default = "wasm")]
    pub runtime: String,
    /// How the replicas' outputs are compared: `exact` for WebAssembly; for ONNX the job's rule
    /// (`exact`, `round:N`, `argmax`, `topk:K`).
    #[serde(default = "exact")]
    pub verify: String,
}

fn wasm() -> String {
    "wasm".into()
}

fn exact() -> String {
    "exact".into()
}

/// Why a job waits for workers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub enum WaitReason {
    /// No known worker (beyond those already used) has the capabilities and memory.
    NoCapableWorker {
        /// The capabilities required.
        capabilities: Vec<String>,
        /// The memory required, in bytes.
        memory_bytes: u64,
        /// Workers already used for this job, which do not count.
        already_used: u64,
    },
    /// Capable workers exist but all ask more than the job pays.
    OverMaxPrice {
        /// The cheapest capable worker's price.
        cheapest: u64,
        /// The job's maximum price.
        max_price: u64,
    },
    /// Capable, affordable workers exist but none has a free slot.
    AllWorkersBusy {
        /// How many capable workers are known.
        capable: u64,
    },
    /// Capable, affordable, free workers are known but too few have bid yet.
    AwaitingBids,
    /// Workers offer the capabilities, but none gives the job's memory limit.
    NotEnoughMemory {
        /// The memory required, in bytes.
        memory_bytes: u64,
        /// Workers that offer the capabilities (with too little memory).
        with_capabilities: u64,
    },
    /// The results disagree and every capable worker known has already run this job.
    Disagreement {
        /// How many different verdicts came in.
        verdicts: u64,
        /// How many results came in.
        results: u64,
    },
}

/// Why a job failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub enum FailReason {
    /// Its deadline passed before a quorum agreed.
    Deadline,
    /// Its submitter cancelled it.
    Cancelled,
    /// The replica cap was hit without a strict majority.
    NoQuorum {
        /// How many results came in.
        results: u64,
    },
    /// A quorum agreed that the program broke a limit or trapped (not a worker's fault).
    Failed {
        /// The stable tag (`fuel`, `memory`, `wall_time`, `output`, `trap`, ...).
        kind: String,
        /// For people.
        detail: String,
    },
    /// The node already tracks its maximum of pending jobs.
    TooManyJobs {
        /// The limit.
        max: u64,
    },
    /// Too many leases were refused, expired or lost.
    Exhausted {
        /// How many.
        lease_failures: u64,
    },
}

/// How one execution ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub enum Outcome {
    /// The program ran to completion (or called `proc_exit`).
    Completed {
        /// Its exit code: 0 for success.
        exit_code: i32,
        /// blake3 of its output (stdout, or the model's output `.npy`).
        output_hash: String,
        /// Fuel consumed (0 for ONNX).
        fuel_used: u64,
        /// For a job compared by a rule (ONNX): blake3 of the output's canonical form under the
        /// rule, what the replicas agreed on. Absent for WebAssembly (the output is compared).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        compared: Option<String>,
    },
    /// The program broke a limit or trapped.
    Failed {
        /// The stable tag (`fuel`, `memory`, `wall_time`, `output`, `trap`, `invalid_module`).
        kind: String,
        /// For people.
        detail: String,
    },
}

/// A dated line of a job's history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct TimelineEvent {
    /// When (Unix ms).
    pub at_ms: u64,
    /// What happened, for people.
    pub event: String,
}

/// A bid received for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct BidView {
    /// The bidder's peer id.
    pub worker: String,
    /// Its asking price.
    pub price: u64,
    /// Its free executor slots when it bid.
    pub free_slots: u32,
    /// Its executor slots in all.
    pub total_slots: u32,
    /// The round trip to it, if measured.
    pub rtt_ms: Option<u32>,
    /// Its IP address, if known.
    pub ip: Option<String>,
    /// When the bid arrived (Unix ms).
    pub received_ms: u64,
}

/// Where a lease stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    /// Sent; not confirmed yet.
    Offered,
    /// The worker is running the job.
    Accepted,
    /// The worker returned its result.
    Completed,
    /// It expired without a result.
    Expired,
    /// The worker refused it, or it could not be delivered.
    Refused,
    /// The worker disconnected while holding it.
    Disconnected,
    /// The submitter withdrew it.
    Cancelled,
    /// The worker was busy or unreachable (not a fault).
    Busy,
}

impl LeaseStatus {
    /// The wire name (`offered`, `accepted`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Offered => "offered",
            LeaseStatus::Accepted => "accepted",
            LeaseStatus::Completed => "completed",
            LeaseStatus::Expired => "expired",
            LeaseStatus::Refused => "refused",
            LeaseStatus::Disconnected => "disconnected",
            LeaseStatus::Cancelled => "cancelled",
            LeaseStatus::Busy => "busy",
        }
    }
}

/// A lease granted for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct LeaseView {
    /// The worker's peer id.
    pub worker: String,
    /// The price agreed.
    pub price: u64,
    /// When it was sent (Unix ms).
    pub offered_ms: u64,
    /// When the submitter stops waiting for it (Unix ms).
    pub expires_ms: u64,
    /// Where it stands.
    pub status: LeaseStatus,
    /// When it stopped being active (Unix ms).
    pub ended_ms: Option<u64>,
    /// When the worker last reported progress (Unix ms); heartbeats extend `expires_ms`.
    #[serde(default)]
    pub heartbeat_ms: Option<u64>,
}

/// A result received for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ResultView {
    /// The worker's peer id.
    pub worker: String,
    /// What it reported.
    pub outcome: Outcome,
    /// The verdict replicas are compared on (hex).
    pub verdict: String,
    /// When it arrived (Unix ms).
    pub received_ms: u64,
    /// Whether it agreed with the quorum; null until the job is decided.
    pub agreed: Option<bool>,
    /// The first bytes of the program's stderr as this worker reported them (not compared).
    #[serde(default)]
    pub stderr: String,
}

/// `GET /v1/jobs/{id}`: everything the submitting node knows about one job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct JobView {
    /// The job's id.
    pub id: String,
    /// Where it is.
    pub state: JobState,
    /// Why it waits or failed, in one sentence.
    pub reason: Option<String>,
    /// The signed spec.
    pub spec: JobSpec,
    /// The submitter's peer id.
    pub submitter: String,
    /// Why it waits for workers, when it does.
    pub waiting: Option<WaitReason>,
    /// Its history, oldest first (bounded).
    pub timeline: Vec<TimelineEvent>,
    /// Bids received.
    pub bids: Vec<BidView>,
    /// Leases granted, in order.
    pub leases: Vec<LeaseView>,
    /// Results received, in order.
    pub results: Vec<ResultView>,
    /// The agreed outcome, once decided.
    pub outcome: Option<Outcome>,
    /// The workers whose results formed the quorum.
    pub quorum: Vec<String>,
    /// Why it failed, when it did.
    pub fail_reason: Option<FailReason>,
    /// How many times it was announced.
    pub announce_attempts: u32,
    /// When it was submitted (Unix ms).
    pub created_ms: u64,
    /// When it was decided or abandoned (Unix ms).
    pub finished_ms: Option<u64>,
    /// When a worker first accepted a lease (Unix ms): the deadline's clock starts there.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// The program's agreed exit code, once a quorum agreed on a completed run. Non-zero
    /// means the program reported failure although the job is `verified`.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The first bytes of the program's stderr, from the first agreeing worker.
    #[serde(default)]
    pub stderr: Option<String>,
    /// How many results are wanted.
    pub target_replicas: u64,
    /// Leases refused, expired or lost.
    pub lease_failures: u32,
    /// When the open bid window closes (Unix ms).
    pub bid_window_closes_ms: Option<u64>,
    /// When it will be announced again (Unix ms).
    pub next_announce_ms: Option<u64>,
    /// The one-line summary, as in `GET /v1/jobs`.
    pub summary: JobSummary,
}

impl JobView {
    /// The program's agreed exit code when a quorum agreed that it ran to completion.
    pub fn exit_code(&self) -> Option<i32> {
        match &self.outcome {
            Some(Outcome::Completed { exit_code, .. }) => Some(*exit_code),
            _ => self.exit_code,
        }
    }

    /// The exit code when the program ran to completion but exited non-zero: the job is
    /// `verified` (the workers agree) yet the program reports a failure.
    pub fn program_exit_code(&self) -> Option<i32> {
        self.exit_code().filter(|c| *c != 0)
    }

    /// Whether the job ended well: verified, and its program exited 0.
    pub fn succeeded(&self) -> bool {
        self.state == JobState::Verified && self.program_exit_code().is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_what_serde_writes() {
        for s in [
            JobState::AwaitingEscrow,
            JobState::Bidding,
            JobState::Running,
            JobState::Verified,
            JobState::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        for s in [
            LeaseStatus::Offered,
            LeaseStatus::Accepted,
            LeaseStatus::Completed,
            LeaseStatus::Expired,
            LeaseStatus::Refused,
            LeaseStatus::Disconnected,
            LeaseStatus::Cancelled,
            LeaseStatus::Busy,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }

    #[test]
    fn omitted_fields_stay_omitted_and_unknown_ones_are_refused() {
        let req = SubmitRequest::new("m");
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"module":"m"}"#);
        let e = serde_json::from_str::<SubmitRequest>(r#"{"module":"m","redundnacy":3}"#);
        assert!(e.unwrap_err().to_string().contains("redundnacy"));
    }

    #[test]
    fn a_verified_job_whose_program_exited_non_zero_did_not_succeed() {
        let mut v: JobView = serde_json::from_value(serde_json::json!({
            "id": "j", "state": "verified", "reason": null,
            "spec": {"module": "m", "module_size": 1, "input": "i", "input_size": 0, "args": [],
                     "limits": {"fuel": 1, "memory_bytes": 65536, "wall_time_ms": 1},
                     "capabilities": ["wasm"], "redundancy": 1, "max_price": 1,
                     "deadline_ms": 0, "nonce": 0},
            "submitter": "p", "waiting": null, "timeline": [], "bids": [], "leases": [],
            "results": [],
            "outcome": {"Completed": {"exit_code": 7, "output_hash": "h", "fuel_used": 1}},
            "quorum": [], "fail_reason": null, "announce_attempts": 1, "created_ms": 0,
            "finished_ms": 1, "target_replicas": 1, "lease_failures": 0,
            "bid_window_closes_ms": null, "next_announce_ms": null,
            "summary": {"id": "j", "state": "verified", "reason": null, "redundancy": 1,
                        "bids": 0, "results": 0, "workers": [], "output_hash": "h",
                        "created_ms": 0, "finished_ms": 1, "latency_ms": 1}
        }))
        .unwrap();
        assert_eq!(v.program_exit_code(), Some(7));
        assert!(!v.succeeded());
        v.outcome = Some(Outcome::Completed {
            exit_code: 0,
            output_hash: "h".into(),
            fuel_used: 1,
            compared: None,
        });
        assert!(v.succeeded());
    }
}
