//! The per-job record the submitter keeps: state, bids, leases, results and a timeline.
//!
//! A [`JobRecord`] is plain data (serde), so the node can persist it on every
//! [`crate::Output::Persist`] and hand it back to [`crate::Market::restore`] after a restart. Its
//! timers (`bid_window_closes_ms`, `next_announce_ms`, lease expiries) are absolute
//! [`UnixMillis`], so they survive a restart unchanged.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::IpAddr;

use agora_types::job::{JobId, Outcome, SignedJob, WorkResult};
use agora_types::sign::Signed;
use agora_types::{Hash, PeerId, UnixMillis};
use serde::{Deserialize, Serialize};

use crate::index::Availability;
use crate::quorum::Tally;
use crate::select::BidInfo;

/// How many leases of one job a worker may lose (refuse, let expire, disconnect) before it is
/// never leased that job again. Together with the rule that a worker that lost a lease may only
/// bid again after the job's next announcement, this bounds how often one worker can stall a job,
/// while a worker that refused because it was momentarily busy still gets another chance.
pub const MAX_LOST_LEASES_PER_WORKER: usize = 3;

/// However it waits, a job ends (failed, deadline) this many budgets after its submission,
/// where the budget is its signed deadline minus its submission time.
pub const HARD_DEADLINE_FACTOR: u64 = 10;

/// Where a job is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its escrow to be locked on the ledger; not announced yet (only when
    /// [`crate::Config::require_escrow`] is on).
    AwaitingEscrow,
    /// Announced; no worker has been leased yet.
    Bidding,
    /// At least one worker has been leased; waiting for results (and maybe more workers).
    Running,
    /// A quorum agreed on a completed outcome. Final.
    Verified,
    /// Abandoned, or a quorum agreed that the module failed. Final; see [`FailReason`].
    Failed,
}

impl JobState {
    /// Whether the job is over.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Verified | JobState::Failed)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobState::AwaitingEscrow => "awaiting_escrow",
            JobState::Bidding => "bidding",
            JobState::Running => "running",
            JobState::Verified => "verified",
            JobState::Failed => "failed",
        })
    }
}

/// Why a job is waiting for workers, computed from the capability index when a bid window closes
/// with too few bids. Shown to users as is.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// No known worker (beyond those already used for this job) has every required capability
    /// and enough memory.
    NoCapableWorker {
        /// The capability tags required.
        capabilities: Vec<String>,
        /// The memory required, in bytes.
        memory_bytes: u64,
        /// Workers already running (or done with) this job, which do not count.
        already_used: usize,
    },
    /// Capable workers exist but all ask more than the job pays.
    OverMaxPrice {
        /// The cheapest capable worker's price.
        cheapest: u64,
        /// The job's maximum price.
        max_price: u64,
    },
    /// Capable, affordable workers exist but none has a free slot (as advertised, or as this
    /// submitter knows from its own leases to them and their `Busy` answers). The job is queued:
    /// its deadline does not run meanwhile.
    AllWorkersBusy {
        /// How many capable workers are known.
        capable: usize,
    },
    /// Capable, affordable, free workers are known but too few have bid yet.
    AwaitingBids,
    /// Workers offer the capabilities, but none gives the job's memory limit.
    NotEnoughMemory {
        /// The memory required, in bytes.
        memory_bytes: u64,
        /// Workers that offer the capabilities (with too little memory).
        with_capabilities: usize,
    },
    /// The results disagree and every capable worker known has already run this job, so the
    /// replicas needed to settle it have nowhere to go yet.
    Disagreement {
        /// How many different verdicts came in.
        verdicts: usize,
        /// How many results came in.
        results: usize,
    },
}

impl WaitReason {
    /// The reason the index gives for a shortage of workers for a job needing `capabilities` and
    /// `memory_bytes` at `max_price`, `a` being the availability among workers other than the
    /// `already_used` ones.
    pub fn from_availability(
        a: &Availability,
        capabilities: &[String],
        memory_bytes: u64,
        max_price: u64,
        already_used: usize,
    ) -> Self {
        if a.capable == 0 && a.with_capabilities > 0 {
            WaitReason::NotEnoughMemory {
                memory_bytes,
                with_capabilities: a.with_capabilities,
            }
        } else if a.capable == 0 {
            WaitReason::NoCapableWorker {
                capabilities: capabilities.to_vec(),
                memory_bytes,
                already_used,
            }
        } else if a.affordable == 0 {
            WaitReason::OverMaxPrice {
                cheapest: a.cheapest.unwrap_or(0),
                max_price,
            }
        } else if a.free == 0 {
            WaitReason::AllWorkersBusy { capable: a.capable }
        } else {
            WaitReason::AwaitingBids
        }
    }
}

impl fmt::Display for WaitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaitReason::NoCapableWorker {
                capabilities,
                memory_bytes,
                already_used,
            } => {
                write!(f, "no worker")?;
                if *already_used > 0 {
                    write!(f, " besides the {already_used} already used for this job")?;
                }
                write!(
                    f,
                    " offers the required capabilities [{}] (the job needs {} MiB of memory)",
                    capabilities.join(", "),
                    memory_bytes.div_ceil(1 << 20)
                )
            }
            WaitReason::NotEnoughMemory {
                memory_bytes,
                with_capabilities,
            } => write!(
                f,
                "{with_capabilities} workers offer the capabilities, but none gives the {} MiB of \
                 memory the job asks for (lower --memory)",
                memory_bytes.div_ceil(1 << 20)
            ),
            WaitReason::Disagreement { verdicts, results } => write!(
                f,
                "workers disagree ({verdicts} different outcomes in {results} results) and every \
                 capable worker known has already run this job; waiting for another worker"
            ),
            WaitReason::OverMaxPrice {
                cheapest,
                max_price,
            } => write!(
                f,
                "capable workers exist but the cheapest asks {cheapest}, over the job's max price \
                 of {max_price}"
            ),
            WaitReason::AllWorkersBusy { capable } => write!(
                f,
                "all {capable} capable workers are busy; waiting for a free slot"
            ),
            WaitReason::AwaitingBids => write!(
                f,
                "capable workers with free slots exist but not enough have bid yet"
            ),
        }
    }
}

/// Why a job failed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Its deadline passed before a quorum agreed.
    Deadline,
    /// Its submitter cancelled it.
    Cancelled,
    /// The replica cap was hit without any verdict reaching a strict majority.
    NoQuorum {
        /// How many results had come in.
        results: usize,
    },
    /// A quorum agreed that the module itself failed (a limit or a trap). Not a worker's fault.
    Failed {
        /// The stable failure tag (`fuel`, `memory`, `wall_time`, `trap`, ...).
        kind: String,
        /// Human-readable detail from the first agreeing worker.
        detail: String,
    },
    /// The market already tracks its maximum of pending jobs.
    TooManyJobs {
        /// The limit ([`crate::Config::max_jobs`]).
        max: usize,
    },
    /// Too many leases failed (refused, expired, disconnected).
    Exhausted {
        /// How many failed.
        lease_failures: u32,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::Deadline => write!(f, "the deadline passed before a quorum agreed"),
            FailReason::Cancelled => write!(f, "cancelled by the submitter"),
            FailReason::NoQuorum { results } => write!(
                f,
                "no quorum: {results} results came in without any output reaching a strict \
                 majority"
            ),
            FailReason::Failed { kind, detail } => {
                write!(
                    f,
                    "the job failed on every agreeing worker ({kind}): {detail}"
                )
            }
            FailReason::TooManyJobs { max } => write!(
                f,
                "this node already tracks {max} pending jobs; try again later"
            ),
            FailReason::Exhausted { lease_failures } => write!(
                f,
                "gave up after {lease_failures} leases were refused, expired or lost"
            ),
        }
    }
}

/// A dated line of a job's history.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TimelineEvent {
    /// When it happened.
    pub at_ms: UnixMillis,
    /// What happened, for people.
    pub event: String,
}

/// A bid kept for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BidRecord {
    /// The bidder.
    pub worker: PeerId,
    /// Its asking price.
    pub price: u64,
    /// Its free slots when it bid.
    pub free_slots: u32,
    /// Its slots in all.
    pub total_slots: u32,
    /// The round trip time to it, if measured.
    pub rtt_ms: Option<u32>,
    /// Its IP address, if known.
    pub ip: Option<IpAddr>,
    /// When the bid arrived.
    pub received_ms: UnixMillis,
}

impl BidRecord {
    /// The selector's view of this bid.
    pub fn info(&self) -> BidInfo {
        BidInfo {
            worker: self.worker,
            price: self.price,
            free_slots: self.free_slots,
            total_slots: self.total_slots,
            rtt_ms: self.rtt_ms,
            ip: self.ip,
        }
    }
}

/// Where a lease stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum LeaseStatus {
    /// Sent; the worker has not confirmed yet.
    Offered,
    /// The worker confirmed it is running the job.
    Accepted,
    /// The worker returned its result.
    Completed,
    /// It expired without a result.
    Expired,
    /// The worker refused it, or it could not be delivered.
    Refused,
    /// The worker disconnected while holding it.
    Disconnected,
    /// The submitter withdrew it (job decided or abandoned).
    Cancelled,
    /// The worker answered busy (no free slot), or could not be reached. Not a fault: it may
    /// be leased again on this job.
    Busy,
}

impl LeaseStatus {
    /// Whether the worker may still deliver a result (offered or accepted).
    pub fn is_active(self) -> bool {
        matches!(self, LeaseStatus::Offered | LeaseStatus::Accepted)
    }
}

/// A lease granted for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The worker.
    pub worker: PeerId,
    /// The price agreed (its bid).
    pub price: u64,
    /// When it was sent.
    pub offered_ms: UnixMillis,
    /// When the submitter stops waiting for it.
    pub expires_ms: UnixMillis,
    /// Where it stands.
    pub status: LeaseStatus,
    /// When it stopped being active (result, loss or cancellation).
    #[serde(default)]
    pub ended_ms: Option<UnixMillis>,
    /// When the worker last reported progress ([`crate::Input::Heartbeat`]); heartbeats extend
    /// `expires_ms`, up to [`crate::Config::max_lease_factor`] times the lease's first length.
    #[serde(default)]
    pub heartbeat_ms: Option<UnixMillis>,
    /// The lease's first expiry, before any heartbeat extended it.
    #[serde(default)]
    pub first_expires_ms: UnixMillis,
}

impl LeaseRecord {
    /// Whether the lease was lost: refused, expired or disconnected.
    pub fn is_lost(&self) -> bool {
        matches!(
            self.status,
            LeaseStatus::Refused | LeaseStatus::Expired | LeaseStatus::Disconnected
        )
    }
}

/// A result received for a job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ResultRecord {
    /// The worker that reported it.
    pub worker: PeerId,
    /// The outcome it reported.
    pub outcome: Outcome,
    /// The outcome's verdict (what replicas are compared on).
    pub verdict: Hash,
    /// When it arrived.
    pub received_ms: UnixMillis,
    /// Whether it agreed with the quorum; `None` until the job is decided.
    pub agreed: Option<bool>,
    /// The worker's signed claim, kept as evidence for settlement (payment or slashing).
    #[serde(default)]
    pub signed: Option<Signed<WorkResult>>,
    /// The first bytes of the program's stderr as this worker reported them (lossy UTF-8,
    /// at most [`agora_types::job::MAX_STDERR_BYTES`]); not compared between replicas.
    #[serde(default)]
    pub stderr: String,
}

impl ResultRecord {
    /// Whether this result takes part in the quorum: machine-dependent failures (wall time,
    /// compile time) do not (see [`Outcome::is_vote`]).
    pub fn is_vote(&self) -> bool {
        self.outcome.is_vote()
    }
}

/// Everything the submitter knows about one job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct JobRecord {
    /// The job's id ([`agora_types::job::job_id`] of `job`).
    pub id: JobId,
    /// The signed spec.
    pub job: SignedJob,
    /// Where it is in its life.
    pub state: JobState,
    /// Why it is waiting for workers, when it is.
    pub waiting: Option<WaitReason>,
    /// Its history, oldest first, bounded by [`crate::Config::max_timeline`] (the first quarter
    /// is kept; beyond it the oldest events are dropped).
    pub timeline: Vec<TimelineEvent>,
    /// Bids received, one per worker, bounded by [`crate::Config::max_bids_per_job`].
    pub bids: Vec<BidRecord>,
    /// Leases granted, in order. At most one active or completed per worker; a worker that lost
    /// a lease may be leased again after a new bid made after the next announcement, up to
    /// [`MAX_LOST_LEASES_PER_WORKER`] losses.
    /// Bounded: at most `r + extra_replica_cap` are active or completed, and at most
    /// `max_attempts + 1` are lost before the job is abandoned.
    pub leases: Vec<LeaseRecord>,
    /// Results received, in order. At most one per worker.
    pub results: Vec<ResultRecord>,
    /// The agreed outcome, once decided (also when the agreed outcome is a failure).
    pub outcome: Option<Outcome>,
    /// The workers whose results formed the quorum.
    pub quorum: Vec<PeerId>,
    /// Why it failed, when it did.
    pub fail_reason: Option<FailReason>,
    /// How many times it has been announced.
    pub announce_attempts: u32,
    /// When it was submitted.
    pub created_ms: UnixMillis,
    /// When it was decided or abandoned.
    pub finished_ms: Option<UnixMillis>,
    /// How many results are wanted: the redundancy, plus replicas added on disagreement.
    pub target_replicas: usize,
    /// How many leases were refused, expired or lost.
    pub lease_failures: u32,
    /// When the open bid window closes; `None` when no window is open.
    pub bid_window_closes_ms: Option<UnixMillis>,
    /// Free workers the index knew of when the window opened: the window closes early once this
    /// many unused bids (and enough for the workers needed) are in.
    pub expected_bidders: usize,
    /// When the job will be announced again, if it is short of workers.
    pub next_announce_ms: Option<UnixMillis>,
    /// When it was last announced.
    pub last_announce_ms: UnixMillis,
    /// The pause before the next re-announcement, doubling up to
    /// [`crate::Config::reannounce_max_ms`].
    pub backoff_ms: u64,
    /// When a worker first accepted a lease: the deadline's clock starts here, not at
    /// submission (see [`JobRecord::deadline_at`]).
    #[serde(default)]
    pub started_ms: Option<UnixMillis>,
    /// The program's exit code, once a quorum agreed on a completed run. Non-zero means the
    /// program itself reported failure, even though the job is `verified`.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// The first bytes of the program's stderr (lossy UTF-8, at most
    /// [`agora_types::job::MAX_STDERR_BYTES`]) from the first agreeing worker.
    #[serde(default)]
    pub stderr: Option<String>,
}

impl JobRecord {
    /// A fresh record for `job`, submitted at `now`.
    pub fn new(id: JobId, job: SignedJob, now: UnixMillis, backoff_ms: u64) -> Self {
        let r = usize::from(job.payload.redundancy.max(1));
        JobRecord {
            id,
            job,
            state: JobState::Bidding,
            waiting: None,
            timeline: Vec::new(),
            bids: Vec::new(),
            leases: Vec::new(),
            results: Vec::new(),
            outcome: None,
            quorum: Vec::new(),
            fail_reason: None,
            announce_attempts: 0,
            created_ms: now,
            finished_ms: None,
            target_replicas: r,
            lease_failures: 0,
            bid_window_closes_ms: None,
            expected_bidders: 0,
            next_announce_ms: None,
            last_announce_ms: now,
            backoff_ms,
            started_ms: None,
            exit_code: None,
            stderr: None,
        }
    }

    /// The job's redundancy `r` (at least 1).
    pub fn redundancy(&self) -> usize {
        usize::from(self.job.payload.redundancy.max(1))
    }

    /// Whether the job is over.
    pub fn is_finished(&self) -> bool {
        self.state.is_final()
    }

    /// Leases that may still deliver a result.
    pub fn active_leases(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.leases.iter().filter(|l| l.status.is_active())
    }

    /// Settlement evidence: the signed results that agreed with the verdict (to be paid) and
    /// those outvoted by it (to be slashed), in arrival order. Results kept without a signed
    /// claim are left out.
    pub fn evidence(&self) -> (Vec<Signed<WorkResult>>, Vec<Signed<WorkResult>>) {
        let pick = |agreed: bool| -> Vec<Signed<WorkResult>> {
            self.results
                .iter()
                .filter(|r| r.agreed == Some(agreed))
                .filter_map(|r| r.signed.clone())
                .collect()
        };
        (pick(true), pick(false))
    }

    /// Workers not to lease this job to: those holding an active lease on it, those that returned
    /// a result for it, and those that already lost [`MAX_LOST_LEASES_PER_WORKER`] leases on it.
    /// (A worker whose lease was lost also loses its bid, but may bid again on a later
    /// announcement and get a second chance, e.g. after a refusal because it was busy.)
    pub fn used_workers(&self) -> HashSet<PeerId> {
        let mut lost: BTreeMap<PeerId, usize> = BTreeMap::new();
        let mut used = HashSet::new();
        for l in &self.leases {
            if l.status.is_active() || l.status == LeaseStatus::Completed {
                used.insert(l.worker);
            } else if l.is_lost() {
                *lost.entry(l.worker).or_default() += 1;
            }
        }
        used.extend(
            lost.into_iter()
                .filter(|(_, n)| *n >= MAX_LOST_LEASES_PER_WORKER)
                .map(|(p, _)| p),
        );
        used
    }

    /// How many more workers must be leased to reach the target number of results. Results
    /// that are not votes (a worker that hit a machine-dependent limit) do not count.
    pub fn needed(&self) -> usize {
        self.target_replicas
            .saturating_sub(self.votes() + self.active_leases().count())
    }

    /// How many results are votes.
    pub fn votes(&self) -> usize {
        self.results.iter().filter(|r| r.is_vote()).count()
    }

    /// How many results abstained (machine-dependent failures).
    pub fn abstentions(&self) -> usize {
        self.results.len() - self.votes()
    }

    /// The vote count of the results so far (abstentions excluded).
    pub fn tally(&self) -> Tally {
        Tally::new(
            self.results
                .iter()
                .filter(|r| r.is_vote())
                .map(|r| r.verdict),
        )
    }

    /// When the job's deadline fires. The rule (ARCHITECTURE.md, "Deadlines"): load makes a
    /// job slower, never failed. The signed deadline gives the job a budget
    /// (`deadline_ms - created_ms`) that starts when a worker first accepts a lease, not at
    /// submission. Even then it fires only while the job is stuck for a reason other than load
    /// (no capable worker, not enough memory, over its price, a disagreement no untried worker
    /// is left to settle) and no lease is out; while it waits for busy workers or for bids, or
    /// while a worker holds a lease (heartbeats keep it alive), it does not. A hard bound of
    /// [`HARD_DEADLINE_FACTOR`] budgets after submission ends every job.
    pub fn deadline_at(&self) -> Option<UnixMillis> {
        let deadline = self.job.payload.deadline_ms;
        if deadline == 0 || self.is_finished() {
            return None;
        }
        let budget = deadline.saturating_sub(self.created_ms).max(1);
        let hard = deadline.saturating_add(budget.saturating_mul(HARD_DEADLINE_FACTOR - 1));
        let stuck = matches!(
            self.waiting,
            Some(
                WaitReason::NoCapableWorker { .. }
                    | WaitReason::NotEnoughMemory { .. }
                    | WaitReason::OverMaxPrice { .. }
                    | WaitReason::Disagreement { .. }
            )
        );
        if !stuck {
            return Some(hard);
        }
        let base = match self.started_ms {
            Some(s) => s.saturating_add(budget),
            None => deadline,
        };
        let live = self
            .active_leases()
            .map(|l| l.expires_ms)
            .max()
            .unwrap_or(0);
        Some(base.max(live).min(hard))
    }

    /// The latest lease of `worker`, mutably.
    pub(crate) fn lease_mut(&mut self, worker: &PeerId) -> Option<&mut LeaseRecord> {
        self.leases.iter_mut().rev().find(|l| l.worker == *worker)
    }

    /// The latest lease of `worker`.
    pub fn lease_of(&self, worker: &PeerId) -> Option<&LeaseRecord> {
        self.leases.iter().rev().find(|l| l.worker == *worker)
    }

    /// Appends to the timeline. Beyond `max` events, the oldest event after the first quarter is
    /// dropped: the beginning of the story (submission, first leases) and its latest part are
    /// kept.
    pub(crate) fn log(&mut self, now: UnixMillis, max: usize, event: impl Into<String>) {
        let event = event.into();
        tracing::debug!(job = %self.id.short(), "{event}");
        self.timeline.push(TimelineEvent { at_ms: now, event });
        let max = max.max(1);
        while self.timeline.len() > max {
            self.timeline.remove(max / 4);
        }
    }

    /// The earliest instant at which this job needs a `Tick`, if any.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        if self.is_finished() {
            return None;
        }
        [
            self.bid_window_closes_ms,
            self.next_announce_ms,
            self.deadline_at(),
        ]
        .into_iter()
        .flatten()
        .chain(self.active_leases().map(|l| l.expires_ms))
        .min()
    }

    /// A one-line summary for logs and tables, e.g.
    /// `1a2b3c4d running 2/3 results, 1 lease active`.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} {} {}/{} results, {} active leases, {} bids",
            self.id.short(),
            self.state,
            self.results.len(),
            self.redundancy(),
            self.active_leases().count(),
            self.bids.len()
        );
        if let Some(w) = &self.waiting {
            s.push_str(&format!("; waiting: {w}"));
        }
        if let Some(f) = &self.fail_reason {
            s.push_str(&format!("; failed: {f}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_reasons_from_availability() {
        let caps = vec!["wasm".to_string()];
        let mut a = Availability::default();
        let w = WaitReason::from_availability(&a, &caps, 1 << 20, 10, 0);
        assert!(matches!(w, WaitReason::NoCapableWorker { .. }));
        assert_eq!(
            w.to_string(),
            "no worker offers the required capabilities [wasm] (the job needs 1 MiB of memory)"
        );
        let w = WaitReason::from_availability(&a, &caps, 1 << 20, 10, 2);
        assert!(w.to_string().contains("besides the 2 already used"), "{w}");
        a.capable = 2;
        a.cheapest = Some(50);
        assert_eq!(
            WaitReason::from_availability(&a, &caps, 1 << 20, 10, 0),
            WaitReason::OverMaxPrice {
                cheapest: 50,
                max_price: 10
            }
        );
        a.affordable = 1;
        assert_eq!(
            WaitReason::from_availability(&a, &caps, 1 << 20, 10, 0),
            WaitReason::AllWorkersBusy { capable: 2 }
        );
        a.free = 1;
        assert_eq!(
            WaitReason::from_availability(&a, &caps, 1 << 20, 10, 0),
            WaitReason::AwaitingBids
        );
    }

    #[test]
    fn fail_reason_display() {
        let f = FailReason::Failed {
            kind: "fuel".into(),
            detail: "out of fuel".into(),
        };
        assert!(f.to_string().contains("fuel"));
        assert!(
            FailReason::NoQuorum { results: 5 }
                .to_string()
                .contains('5')
        );
    }
}
