//! The submitter side of the market: one state machine for every job this node submitted.
//!
//! [`Market::handle`] takes one [`Input`] and the current time and returns the [`Output`]s the
//! node must carry out (gossip, direct messages, persistence). Nothing in here reads a clock or
//! touches the network; timers are absolute deadlines that fire on [`Input::Tick`], and
//! [`Market::next_deadline`] says when the next one is due.
//!
//! # Rules
//!
//! - **Submit**: the job is recorded and announced, and a bid window opens for
//!   [`Config::bid_window_ms`]. It closes early once the unused bids cover both the workers still
//!   needed and every free capable worker the index knew of at announce time.
//! - **Bids** are kept one per worker (a later bid replaces an earlier one), only while the job is
//!   pending, only at or under its `max_price`, at most [`Config::max_bids_per_job`].
//! - **Window close**: the best unused bidders are leased ([`mod@crate::select`]). When there are too
//!   few, the job records a [`WaitReason`] from the capability index and is announced again after
//!   an exponential backoff. A bid arriving while no window is open and the job is short of
//!   workers is leased at once.
//! - **Lost leases** (refused, expired, worker disconnected) cost the worker reputation and are
//!   replaced by the next-best unused bidder, or by a new announcement.
//! - **Results** are accepted only from a worker holding an active lease, once. A verdict wins
//!   when it has at least `r` votes and a strict majority; when no verdict can win with the
//!   results still expected, replicas are added up to [`Config::extra_replica_cap`], then the
//!   job fails with [`FailReason::NoQuorum`].
//! - **Decision**: agreeing workers get [`ReputationAction::ResultAgreed`], dissenting ones
//!   [`ReputationAction::InvalidCompute`], outstanding leases are cancelled. An agreed
//!   `Outcome::Failed` ends the job [`FailReason::Failed`] (the module's fault, not the workers').
//! - **Deadline** and **Cancel** end the job and cancel its leases.
//! - Every change of a record emits [`Output::Persist`] once per `handle` call, except the
//!   arrival of a bid on its own: bids are soft state, so a bid flood cannot become a flood of
//!   disk writes (a restored job that needs workers is announced again and collects new bids).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;

use agora_types::job::{Bid, CapabilityAd, JobId, Lease, Outcome, SignedJob, WorkResult, job_id};
use agora_types::sign::Signed;
use agora_types::{PeerId, UnixMillis};

use crate::config::Config;
use crate::index::CapabilityIndex;
use crate::job::{
    BidRecord, FailReason, JobRecord, JobState, LeaseRecord, LeaseStatus, ResultRecord, WaitReason,
};
use crate::reputation::{Reputation, ReputationAction};
use crate::select::{self, BidInfo};

/// The longest refusal reason kept from a worker, in bytes.
const MAX_REASON_LEN: usize = 200;

/// Something that happened, fed to [`Market::handle`].
#[derive(Clone, Debug)]
pub enum Input {
    /// The local user submits a job (already signature-checked and validated by the node).
    Submit(SignedJob),
    /// A peer's capability ad arrived on `agora/capabilities/1`.
    CapabilityAd {
        /// The advertising peer.
        from: PeerId,
        /// Its ad.
        ad: CapabilityAd,
        /// Its IP address, if the transport knows it.
        ip: Option<IpAddr>,
    },
    /// A worker's bid (signature checked by the node; `from` is the signer).
    Bid {
        /// The bidder.
        from: PeerId,
        /// The bid.
        bid: Bid,
        /// The measured round trip time to the bidder, if known.
        rtt_ms: Option<u32>,
        /// The bidder's IP address, if known.
        ip: Option<IpAddr>,
    },
    /// A worker confirmed a lease.
    LeaseAccepted {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: PeerId,
    },
    /// A worker answered a lease with "busy": no free slot right now. Normal backpressure under
    /// load: the lease is replaced, but it costs the worker no reputation and does not count
    /// toward [`Config::max_attempts`].
    LeaseBusy {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: PeerId,
    },
    /// A worker refused a lease, or the lease could not be delivered to it.
    LeaseRefused {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: PeerId,
        /// Why, as told by the worker or the transport.
        reason: String,
    },
    /// A worker's result (signature checked by the node; `from` is the signer).
    Result {
        /// The worker.
        from: PeerId,
        /// Its result.
        result: WorkResult,
        /// The signed claim it came in, kept as settlement evidence.
        signed: Option<Signed<WorkResult>>,
        /// The first bytes of the program's stderr, as the worker sent them beside the claim.
        stderr: Vec<u8>,
    },
    /// A worker holding a lease reports that it is still working on it (signature checked by
    /// the node). The lease is extended ([`Output::LeaseExtended`]) when it is still active.
    Heartbeat {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: PeerId,
    },
    /// The job's escrow is locked on the ledger: announce it.
    EscrowLocked(JobId),
    /// The connection to a peer was lost.
    PeerDisconnected(PeerId),
    /// A reputation change gossiped on `agora/reputation/1` by `reporter`.
    RemoteReputation {
        /// Who reported it (the signer).
        reporter: PeerId,
        /// Whom it concerns.
        subject: PeerId,
        /// The reported change.
        delta: i64,
    },
    /// The local user cancels a job.
    Cancel(JobId),
    /// With a ledger: the peers holding the minimum stake a bidder needs, after each block. Only
    /// they are leased directly from their ads (bids from the others are refused by the node).
    Stakers(HashSet<PeerId>),
    /// With a ledger: the workers this node holds an open credit line to, after each block. A
    /// credit job is leased directly only to them (the worker checks the line's balance).
    CreditLines(HashSet<PeerId>),
    /// Time passed: fire due timers. Send one at [`Market::next_deadline`].
    Tick,
}

/// Something the node must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Gossip this job on `agora/jobs/1`.
    Announce(SignedJob),
    /// Lock an escrow for this job on the ledger, then feed back [`Input::EscrowLocked`].
    LockEscrow {
        /// The job.
        job_id: JobId,
        /// The tokens to lock ([`Config::escrow_for`]).
        amount: u64,
        /// Its maximum price per execution.
        max_price: u64,
        /// Its redundancy.
        redundancy: u8,
    },
    /// Send this lease to `worker`. If it cannot be delivered, feed back
    /// [`Input::LeaseRefused`].
    SendLease {
        /// The worker picked.
        worker: PeerId,
        /// The lease.
        lease: Lease,
    },
    /// Tell `worker` its lease on `job_id` is withdrawn (best effort).
    CancelLease {
        /// The worker.
        worker: PeerId,
        /// The job.
        job_id: JobId,
    },
    /// The job is verified: `outcome` is the agreed outcome (from the first agreeing worker) and
    /// `workers` the quorum.
    Verified {
        /// The job.
        job_id: JobId,
        /// The agreed outcome.
        outcome: Outcome,
        /// The workers that agreed.
        workers: Vec<PeerId>,
    },
    /// The job failed.
    Failed {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: FailReason,
    },
    /// The local reputation of `peer` changed by this node's own observation; publish it on
    /// `agora/reputation/1`. `delta` is the action's nominal delta (what other peers weigh),
    /// which may differ from the change the local book applied at its clamps.
    Reputation {
        /// Whom it concerns.
        peer: PeerId,
        /// What it did.
        action: ReputationAction,
        /// The action's delta.
        delta: i64,
        /// The job it concerns.
        job_id: Option<JobId>,
    },
    /// The answer to a [`Input::Heartbeat`]: the worker's lease runs until `expires_ms` now.
    /// (No answer means the worker holds no active lease on the job: it should stop.)
    LeaseExtended {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: PeerId,
        /// The lease's new expiry.
        expires_ms: UnixMillis,
    },
    /// The job's record changed: write [`Market::job`] to disk. When [`Market::job`] returns
    /// `None` the record was evicted (see [`Config::max_jobs`]): delete it.
    Persist(JobId),
}

/// The outputs of one `handle` call, with the records it changed.
#[derive(Default)]
struct Effects {
    out: Vec<Output>,
    changed: BTreeSet<JobId>,
}

impl Effects {
    fn finish(self) -> Vec<Output> {
        let mut out = self.out;
        out.extend(self.changed.into_iter().map(Output::Persist));
        out
    }
}

/// What job-level rules need besides the record itself.
struct Ctx<'a> {
    config: &'a Config,
    local: PeerId,
    reputation: &'a mut Reputation,
    index: &'a CapabilityIndex,
    load: &'a BTreeMap<PeerId, Load>,
    /// The peers that may be leased work directly ([`Input::Stakers`]); `None`: every peer.
    stakers: Option<&'a HashSet<PeerId>>,
    /// The workers we hold a credit line to ([`Input::CreditLines`]).
    credit_lines: &'a HashSet<PeerId>,
    fx: &'a mut Effects,
    now: UnixMillis,
}

/// What this submitter knows about one worker's load: its own leases out there, and when it
/// last answered `Busy`. Admission control: a worker is sent no more of this submitter's leases
/// than the slots it advertises, and none for a while after a `Busy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Load {
    /// This submitter's active leases on the worker.
    ours: u32,
    /// No new lease before this instant (it answered `Busy`).
    busy_until: UnixMillis,
}

/// Order of the jobs waiting for workers: started jobs first (they hold results already),
/// then by submission.
type QueueKey = (bool, UnixMillis, JobId);

fn queue_key(rec: &JobRecord) -> Option<QueueKey> {
    let waiting = !rec.is_finished()
        && rec.state != JobState::AwaitingEscrow
        && rec.bid_window_closes_ms.is_none()
        && rec.needed() > 0;
    waiting.then_some((rec.started_ms.is_none(), rec.created_ms, rec.id))
}

impl Ctx<'_> {
    fn log(&mut self, rec: &mut JobRecord, event: impl Into<String>) {
        rec.log(self.now, self.config.max_timeline, event);
        self.fx.changed.insert(rec.id);
    }

    fn reputation(&mut self, peer: PeerId, action: ReputationAction, job_id: Option<JobId>) {
        self.reputation.apply(peer, action);
        self.fx.out.push(Output::Reputation {
            peer,
            action,
            delta: action.delta(),
            job_id,
        });
    }

    fn announce(&mut self, rec: &mut JobRecord) {
        // The fast path is tried once, before any lease: after it, the auction.
        if rec.announce_attempts == 0
            && rec.leases.is_empty()
            && self.config.direct_lease
            && self.lease_direct(rec)
        {
            return;
        }
        rec.announce_attempts = rec.announce_attempts.saturating_add(1);
        rec.last_announce_ms = self.now;
        rec.next_announce_ms = None;
        rec.bid_window_closes_ms = Some(self.now.saturating_add(self.config.bid_window_ms));
        // The local node may or may not bid on its own jobs: don't wait for it.
        let mut exclude = rec.used_workers();
        exclude.insert(self.local);
        let avail = self
            .index
            .query_excluding(&rec.job.payload, self.now, &exclude);
        rec.expected_bidders = avail.free;
        self.fx.out.push(Output::Announce(rec.job.clone()));
        let msg = format!(
            "announced (attempt {}); {} free capable workers known",
            rec.announce_attempts, avail.free
        );
        self.log(rec, msg);
    }

    /// The fast path: leases `rec` straight to fresh standing offers (capability ads at or under
    /// its price, with a free slot, from workers not saturated by us and, with a ledger, staked),
    /// with no announcement and no bid window. Each offer stands in for the bid its worker would
    /// make (the same price and slots; a worker bids its ad). Returns whether every replica
    /// needed was leased; if not, the caller announces the job and the auction finds the rest.
    fn lease_direct(&mut self, rec: &mut JobRecord) -> bool {
        let needed = rec.needed();
        if needed == 0 {
            return false;
        }
        let mut exclude = rec.used_workers();
        exclude.insert(self.local);
        exclude.extend(self.saturated_peers(rec));
        let floor = self.config.weights.reputation_floor;
        let offers: Vec<BidRecord> = self
            .index
            .offers(
                &rec.job.payload,
                self.now,
                self.config.direct_offer_age_ms,
                &exclude,
            )
            .filter(|(p, _)| self.stakers.is_none_or(|s| s.contains(*p)))
            .filter(|(p, _)| !rec.job.payload.credit || self.credit_lines.contains(*p))
            .filter(|(p, _)| self.reputation.score(p) >= floor)
            .map(|(p, e)| BidRecord {
                worker: *p,
                price: e.ad.price,
                // The ad's free slots, less the leases we sent it since: our view of its load.
                free_slots: e
                    .ad
                    .free_slots
                    .saturating_sub(self.load.get(p).map_or(0, |l| l.ours)),
                total_slots: e.ad.total_slots,
                rtt_ms: None,
                ip: e.ip,
                received_ms: self.now,
            })
            .collect();
        if offers.len() < needed {
            return false;
        }
        let known = offers.len();
        for o in offers {
            if rec.bids.len() >= self.config.max_bids_per_job {
                break;
            }
            if !rec.bids.iter().any(|b| b.worker == o.worker) {
                rec.bids.push(o);
            }
        }
        let msg = format!("{known} fresh standing offers known: leasing directly, no auction");
        self.log(rec, msg);
        self.lease_to_bidders(rec, needed);
        rec.needed() == 0
    }

    /// Whether the best bids for `rec` are in: the `needed` best unused bids score at least as
    /// well as any capable worker that has not bid yet could (its ad's price, its reputation,
    /// the best latency and load), so waiting longer cannot improve the choice.
    fn best_bids_in(&self, rec: &JobRecord) -> bool {
        let needed = rec.needed();
        if needed == 0 {
            return true;
        }
        let max_price = rec.job.payload.max_price;
        let w = &self.config.weights;
        let mut exclude = rec.used_workers();
        exclude.extend(self.saturated_peers(rec));
        let infos: Vec<BidInfo> = rec.bids.iter().map(BidRecord::info).collect();
        let ranked = select::rank(&rec.id, max_price, &infos, &exclude, &*self.reputation, w);
        let Some(threshold) = ranked
            .get(needed - 1)
            .map(|b| select::score(b, max_price, self.reputation.score(&b.worker), w))
        else {
            return false;
        };
        exclude.insert(self.local);
        exclude.extend(rec.bids.iter().map(|b| b.worker));
        let mut outstanding = self
            .index
            .offers(&rec.job.payload, self.now, u64::MAX, &exclude);
        !outstanding.any(|(p, e)| {
            let best = BidInfo {
                worker: *p,
                price: e.ad.price,
                free_slots: e.ad.total_slots,
                total_slots: e.ad.total_slots,
                rtt_ms: Some(0),
                ip: e.ip,
            };
            select::score(&best, max_price, self.reputation.score(p), w) > threshold
        })
    }

    fn lock_escrow(&mut self, rec: &mut JobRecord) {
        rec.state = JobState::AwaitingEscrow;
        let spec = &rec.job.payload;
        let amount = self.config.escrow_for(spec.max_price, spec.redundancy);
        self.fx.out.push(Output::LockEscrow {
            job_id: rec.id,
            amount,
            max_price: spec.max_price,
            redundancy: spec.redundancy,
        });
        self.log(
            rec,
            format!("waiting for an escrow of {amount} on the ledger"),
        );
    }

    /// Whether this submitter should send `worker` no new lease now: it holds `capacity` (at
    /// least one) of our leases already, or it answered `Busy` recently.
    fn saturated(&self, worker: &PeerId, capacity: u32) -> bool {
        self.load
            .get(worker)
            .is_some_and(|l| l.ours >= capacity.max(1) || l.busy_until > self.now)
    }

    /// The workers this submitter knows to be saturated for `rec`: bidders holding as many of
    /// our leases as the slots they bid with, and any worker at its advertised slots or paused
    /// after a `Busy`.
    fn saturated_peers(&self, rec: &JobRecord) -> HashSet<PeerId> {
        let mut out: HashSet<PeerId> = rec
            .bids
            .iter()
            .filter(|b| self.saturated(&b.worker, b.total_slots))
            .map(|b| b.worker)
            .collect();
        out.extend(self.load.keys().filter(|p| {
            let cap = self.index.get(p).map_or(1, |e| e.ad.total_slots);
            self.saturated(p, cap)
        }));
        out
    }

    fn unused_bids(&self, rec: &JobRecord) -> usize {
        let used = rec.used_workers();
        rec.bids
            .iter()
            .filter(|b| !used.contains(&b.worker))
            .count()
    }

    fn on_bid(
        &mut self,
        rec: &mut JobRecord,
        from: PeerId,
        bid: Bid,
        rtt_ms: Option<u32>,
        ip: Option<IpAddr>,
    ) {
        // No bid counts before the escrow is locked: the job is not announced yet.
        if rec.is_finished()
            || rec.state == JobState::AwaitingEscrow
            || bid.price > rec.job.payload.max_price
        {
            return;
        }
        // A worker that lost a lease may bid again only after the next announcement: this
        // rate-limits bid-and-refuse loops.
        if let Some(l) = rec.lease_of(&from)
            && l.is_lost()
            && l.ended_ms.is_some_and(|t| t > rec.last_announce_ms)
        {
            return;
        }
        let record = BidRecord {
            worker: from,
            price: bid.price,
            free_slots: bid.free_slots,
            total_slots: bid.total_slots,
            rtt_ms,
            ip,
            received_ms: self.now,
        };
        if let Some(existing) = rec.bids.iter_mut().find(|b| b.worker == from) {
            *existing = record;
        } else if rec.bids.len() < self.config.max_bids_per_job {
            rec.bids.push(record);
        } else {
            // Full: replace the worst unused bid, if the new one is better.
            let used = rec.used_workers();
            let max_price = rec.job.payload.max_price;
            let w = &self.config.weights;
            let rep = &*self.reputation;
            let score = |b: &BidInfo| select::score(b, max_price, rep.score(&b.worker), w);
            let new_score = score(&record.info());
            let worst = rec
                .bids
                .iter()
                .enumerate()
                .filter(|(_, b)| !used.contains(&b.worker))
                .map(|(i, b)| (i, score(&b.info())))
                .min_by(|a, b| a.1.total_cmp(&b.1));
            match worst {
                Some((i, s)) if new_score > s => rec.bids[i] = record,
                _ => return,
            }
        }
        // Bids are soft state: they are neither logged nor persisted on their own (a bid flood
        // must not become a disk-write flood); a restored job that still needs workers is
        // announced again and collects fresh ones.
        match rec.bid_window_closes_ms {
            Some(_) => {
                let unused = self.unused_bids(rec);
                if unused >= rec.needed()
                    && (unused >= rec.expected_bidders || self.best_bids_in(rec))
                {
                    self.close_window(rec);
                }
            }
            None => {
                if rec.needed() > 0 {
                    self.refill(rec);
                }
            }
        }
    }

    fn close_window(&mut self, rec: &mut JobRecord) {
        rec.bid_window_closes_ms = None;
        let msg = format!(
            "bid window closed: {} bids, {} unused",
            rec.bids.len(),
            self.unused_bids(rec)
        );
        self.log(rec, msg);
        self.refill(rec);
    }

    /// Leases workers until the target is covered, or records why it cannot be and schedules a
    /// new announcement. Does nothing while a bid window is open (its close will call this).
    fn refill(&mut self, rec: &mut JobRecord) {
        if rec.is_finished() {
            return;
        }
        if rec.lease_failures > self.config.max_attempts {
            let lease_failures = rec.lease_failures;
            self.fail(rec, FailReason::Exhausted { lease_failures });
            return;
        }
        if rec.bid_window_closes_ms.is_some() {
            return;
        }
        let needed = rec.needed();
        if needed > 0 {
            self.lease_to_bidders(rec, needed);
        }
        let needed = rec.needed();
        if needed == 0 {
            if rec.waiting.is_some() || rec.next_announce_ms.is_some() {
                rec.waiting = None;
                rec.next_announce_ms = None;
                self.fx.changed.insert(rec.id);
            }
            rec.backoff_ms = self.config.reannounce_initial_ms;
            return;
        }
        let wait = self.wait_reason(rec);
        if rec.waiting.as_ref() != Some(&wait) {
            let msg = format!("waiting: {wait}");
            rec.waiting = Some(wait);
            self.log(rec, msg);
        }
        if rec.next_announce_ms.is_none() {
            // A job leased directly and never announced gets its auction at once.
            let at = if rec.announce_attempts == 0 {
                self.now
            } else {
                self.now
                    .max(rec.last_announce_ms.saturating_add(rec.backoff_ms))
            };
            rec.next_announce_ms = Some(at);
            rec.backoff_ms = rec
                .backoff_ms
                .saturating_mul(2)
                .clamp(1, self.config.reannounce_max_ms.max(1));
            let msg = format!(
                "short of {needed} workers; announcing again in {} ms",
                at - self.now
            );
            self.log(rec, msg);
        }
    }

    /// Why `rec` is short of workers, from the capability index and this submitter's own view
    /// of the workers' load.
    fn wait_reason(&self, rec: &JobRecord) -> WaitReason {
        let spec = &rec.job.payload;
        let used = rec.used_workers();
        let mut avail = self.index.query_excluding(spec, self.now, &used);
        let saturated = self.saturated_peers(rec);
        if !saturated.is_empty() {
            let mut exclude = used.clone();
            exclude.extend(saturated);
            avail.free = avail
                .free
                .min(self.index.query_excluding(spec, self.now, &exclude).free);
        }
        let tally = rec.tally();
        let verdicts = rec
            .results
            .iter()
            .filter(|r| r.is_vote())
            .map(|r| r.verdict)
            .collect::<BTreeSet<_>>()
            .len();
        if avail.capable == 0 && verdicts > 1 && tally.total() > 0 {
            return WaitReason::Disagreement {
                verdicts,
                results: tally.total(),
            };
        }
        WaitReason::from_availability(
            &avail,
            &spec.capabilities,
            spec.limits.memory_bytes,
            spec.max_price,
            used.len(),
        )
    }

    fn lease_to_bidders(&mut self, rec: &mut JobRecord, needed: usize) {
        let mut used = rec.used_workers();
        // Admission control: no more of our leases on a worker than the slots it advertised,
        // and none on a worker that just answered busy.
        used.extend(
            rec.bids
                .iter()
                .filter(|b| self.saturated(&b.worker, b.total_slots))
                .map(|b| b.worker),
        );
        let infos: Vec<BidInfo> = rec.bids.iter().map(BidRecord::info).collect();
        let picked = select::select(
            &rec.id,
            rec.job.payload.max_price,
            &infos,
            needed,
            &used,
            self.reputation,
            &self.config.weights,
        );
        let expires_ms = self
            .now
            .saturating_add(self.config.lease_ms(rec.job.payload.limits.wall_time_ms));
        for worker in picked {
            let price = rec
                .bids
                .iter()
                .find(|b| b.worker == worker)
                .map_or(rec.job.payload.max_price, |b| b.price);
            rec.leases.push(LeaseRecord {
                worker,
                price,
                offered_ms: self.now,
                expires_ms,
                status: LeaseStatus::Offered,
                ended_ms: None,
                heartbeat_ms: None,
                first_expires_ms: expires_ms,
            });
            self.fx.out.push(Output::SendLease {
                worker,
                lease: Lease {
                    job: rec.job.clone(),
                    price,
                    expires_ms,
                },
            });
            if rec.state == JobState::Bidding {
                rec.state = JobState::Running;
            }
            self.log(rec, format!("leased to {worker} at price {price}"));
        }
    }

    fn cancel_leases(&mut self, rec: &mut JobRecord) {
        for l in rec.leases.iter_mut().filter(|l| l.status.is_active()) {
            l.status = LeaseStatus::Cancelled;
            l.ended_ms = Some(self.now);
            self.fx.out.push(Output::CancelLease {
                worker: l.worker,
                job_id: rec.id,
            });
        }
    }

    fn finish(&mut self, rec: &mut JobRecord) {
        rec.finished_ms = Some(self.now);
        rec.waiting = None;
        rec.bid_window_closes_ms = None;
        rec.next_announce_ms = None;
        self.fx.changed.insert(rec.id);
    }

    fn fail(&mut self, rec: &mut JobRecord, reason: FailReason) {
        if rec.is_finished() {
            return;
        }
        self.cancel_leases(rec);
        rec.state = JobState::Failed;
        rec.fail_reason = Some(reason.clone());
        self.finish(rec);
        self.log(rec, format!("failed: {reason}"));
        self.fx.out.push(Output::Failed {
            job_id: rec.id,
            reason,
        });
    }

    /// A lease was lost (refused, expired, disconnected): count it, charge the worker, replace it.
    fn lost_lease(
        &mut self,
        rec: &mut JobRecord,
        worker: PeerId,
        status: LeaseStatus,
        action: Option<ReputationAction>,
        why: &str,
    ) {
        let Some(lease) = rec.lease_mut(&worker) else {
            return;
        };
        if !lease.status.is_active() {
            return;
        }
        lease.status = status;
        lease.ended_ms = Some(self.now);
        // Its bid is spent: it must bid again (on a later announcement) to be leased again.
        // A busy worker keeps its bid: it is not at fault, and admission control holds it back
        // until it has room.
        if status != LeaseStatus::Busy {
            rec.bids.retain(|b| b.worker != worker);
        }
        if let Some(action) = action {
            rec.lease_failures = rec.lease_failures.saturating_add(1);
            self.reputation(worker, action, Some(rec.id));
        }
        if matches!(status, LeaseStatus::Expired | LeaseStatus::Disconnected) {
            self.fx.out.push(Output::CancelLease {
                worker,
                job_id: rec.id,
            });
        }
        self.log(rec, format!("lease of {worker} lost: {why}"));
    }

    fn on_result(
        &mut self,
        rec: &mut JobRecord,
        from: PeerId,
        outcome: Outcome,
        signed: Option<Signed<WorkResult>>,
        stderr: &[u8],
    ) {
        let Some(lease) = rec.lease_mut(&from) else {
            self.reputation(from, ReputationAction::BadMessage, Some(rec.id));
            self.log(rec, format!("ignored an unsolicited result from {from}"));
            return;
        };
        if !lease.status.is_active() {
            // Late (expired, cancelled) or a duplicate: not malicious, just useless.
            return;
        }
        lease.status = LeaseStatus::Completed;
        lease.ended_ms = Some(self.now);
        rec.started_ms.get_or_insert(self.now);
        let verdict = outcome.verdict();
        let vote = outcome.is_vote();
        let stderr = &stderr[..stderr.len().min(agora_types::job::MAX_STDERR_BYTES)];
        let msg = match &outcome {
            Outcome::Failed { kind, .. } if !vote => format!(
                "result from {from}: {kind} limit on its machine; not counted for or against \
                 it, another replica is needed"
            ),
            _ => format!("result from {from}: verdict {}", verdict.short()),
        };
        rec.results.push(ResultRecord {
            worker: from,
            outcome,
            verdict,
            received_ms: self.now,
            agreed: None,
            signed,
            stderr: String::from_utf8_lossy(stderr).into_owned(),
        });
        self.log(rec, msg);
        if !vote && rec.abstentions() >= rec.redundancy() {
            self.fail_machine_limit(rec);
            return;
        }
        self.evaluate(rec);
    }

    /// As many workers as the redundancy hit a machine-dependent limit (wall time, compile
    /// time): the job does not fit the workers' machines. It fails without blame: nobody is
    /// charged, nobody is paid.
    fn fail_machine_limit(&mut self, rec: &mut JobRecord) {
        let (kind, detail) = rec
            .results
            .iter()
            .rev()
            .find_map(|r| match &r.outcome {
                Outcome::Failed { kind, detail } if !r.is_vote() => {
                    Some((kind.clone(), detail.clone()))
                }
                _ => None,
            })
            .unwrap_or_else(|| ("wall_time".into(), String::new()));
        let n = rec.abstentions();
        self.fail(
            rec,
            FailReason::Failed {
                kind,
                detail: format!(
                    "{detail} (on {n} workers; a machine-dependent limit, no worker is blamed)"
                ),
            },
        );
    }

    fn on_heartbeat(&mut self, rec: &mut JobRecord, worker: PeerId) {
        if rec.is_finished() {
            return;
        }
        let now = self.now;
        let (half, ext, factor) = (
            self.config.heartbeat_ms / 2,
            self.config.heartbeat_extension_ms(),
            self.config.max_lease_factor.max(1),
        );
        let Some(lease) = rec.lease_mut(&worker) else {
            return;
        };
        if !lease.status.is_active() {
            return;
        }
        let mut accepted = false;
        if lease.status == LeaseStatus::Offered {
            // The heartbeat overtook the lease's acknowledgement.
            lease.status = LeaseStatus::Accepted;
            accepted = true;
        }
        // Bounded rate: a heartbeat sooner than half an interval after the last one changes
        // nothing (it is still answered, so an honest worker never stops).
        if lease
            .heartbeat_ms
            .is_none_or(|t| now >= t.saturating_add(half))
        {
            lease.heartbeat_ms = Some(now);
            let first = if lease.first_expires_ms == 0 {
                lease.expires_ms
            } else {
                lease.first_expires_ms
            };
            let cap = lease.offered_ms.saturating_add(
                first
                    .saturating_sub(lease.offered_ms)
                    .saturating_mul(factor),
            );
            lease.expires_ms = lease.expires_ms.max(now.saturating_add(ext).min(cap));
        }
        let expires_ms = lease.expires_ms;
        if accepted {
            rec.started_ms.get_or_insert(now);
            self.log(rec, format!("{worker} accepted its lease"));
        }
        // Not persisted: a heartbeat is soft state, like a bid (a restored lease keeps its last
        // written expiry and the next heartbeat extends it again).
        self.fx.out.push(Output::LeaseExtended {
            job_id: rec.id,
            worker,
            expires_ms,
        });
    }

    fn evaluate(&mut self, rec: &mut JobRecord) {
        let r = rec.redundancy();
        let tally = rec.tally();
        if let Some(v) = tally.agreed(r) {
            self.decide(rec, v);
            return;
        }
        // The fewest results that could still settle it, if all further ones agree with the
        // leader.
        let want = rec.votes() + tally.replicas_needed(r);
        if want > rec.target_replicas {
            if want > r + self.config.extra_replica_cap(r) {
                let results = rec.votes();
                self.fail(rec, FailReason::NoQuorum { results });
                return;
            }
            let added = want - rec.target_replicas;
            rec.target_replicas = want;
            let msg = format!(
                "results disagree ({} verdicts over {} results); adding {added} replica(s)",
                rec.results
                    .iter()
                    .filter(|x| x.is_vote())
                    .map(|x| x.verdict)
                    .collect::<BTreeSet<_>>()
                    .len(),
                rec.votes()
            );
            self.log(rec, msg);
        }
        self.refill(rec);
    }

    fn decide(&mut self, rec: &mut JobRecord, verdict: agora_types::Hash) {
        let mut quorum = Vec::new();
        let mut outcome = None;
        let mut verdicts = Vec::new();
        let mut stderr = None;
        for res in rec.results.iter_mut().filter(|r| r.outcome.is_vote()) {
            let agreed = res.verdict == verdict;
            res.agreed = Some(agreed);
            verdicts.push((res.worker, agreed));
            if agreed {
                quorum.push(res.worker);
                if outcome.is_none() {
                    outcome = Some(res.outcome.clone());
                    stderr = Some(res.stderr.clone());
                }
            }
        }
        let Some(outcome) = outcome else {
            return;
        };
        rec.outcome = Some(outcome.clone());
        rec.quorum = quorum.clone();
        rec.exit_code = outcome.exit_code();
        rec.stderr = stderr.filter(|s| !s.is_empty());
        match &outcome {
            Outcome::Completed {
                output_hash,
                exit_code,
                ..
            } => {
                rec.state = JobState::Verified;
                self.finish(rec);
                let mut msg = format!(
                    "verified by {} of {} workers: output {}",
                    quorum.len(),
                    rec.results.len(),
                    output_hash.short()
                );
                if *exit_code != 0 {
                    msg.push_str(&format!(
                        "; the program exited with code {exit_code} (it reported a failure)"
                    ));
                }
                self.log(rec, msg);
                self.fx.out.push(Output::Verified {
                    job_id: rec.id,
                    outcome: outcome.clone(),
                    workers: quorum,
                });
            }
            Outcome::Failed { kind, detail } => {
                let reason = FailReason::Failed {
                    kind: kind.clone(),
                    detail: detail.clone(),
                };
                rec.state = JobState::Failed;
                rec.fail_reason = Some(reason.clone());
                self.finish(rec);
                self.log(
                    rec,
                    format!("failed on {} agreeing workers: {reason}", quorum.len()),
                );
                self.fx.out.push(Output::Failed {
                    job_id: rec.id,
                    reason,
                });
            }
        }
        for (worker, agreed) in verdicts {
            let action = if agreed {
                ReputationAction::ResultAgreed
            } else {
                ReputationAction::InvalidCompute
            };
            self.reputation(worker, action, Some(rec.id));
        }
        self.cancel_leases(rec);
    }

    fn tick(&mut self, rec: &mut JobRecord) {
        if rec.is_finished() {
            return;
        }
        if rec.deadline_at().is_some_and(|d| self.now >= d) {
            self.fail(rec, FailReason::Deadline);
            return;
        }
        let now = self.now;
        let expired: Vec<PeerId> = rec
            .active_leases()
            .filter(|l| l.expires_ms <= now)
            .map(|l| l.worker)
            .collect();
        for w in &expired {
            self.lost_lease(
                rec,
                *w,
                LeaseStatus::Expired,
                Some(ReputationAction::LeaseExpired),
                "expired without a result",
            );
        }
        if rec.bid_window_closes_ms.is_some_and(|t| t <= now) {
            self.close_window(rec);
        } else if !expired.is_empty() {
            self.refill(rec);
        }
        if !rec.is_finished() && rec.next_announce_ms.is_some_and(|t| t <= now) {
            self.announce(rec);
        }
    }
}

/// The submitter's market: every job this node submitted, the capability index and the local
/// reputation book.
#[derive(Debug)]
pub struct Market {
    config: Config,
    local: PeerId,
    jobs: BTreeMap<JobId, JobRecord>,
    reputation: Reputation,
    index: CapabilityIndex,
    /// Our view of each worker's load (admission control); only workers holding our leases or
    /// recently busy, so bounded by the active leases.
    load: BTreeMap<PeerId, Load>,
    /// Jobs short of workers with no bid window open, in [`QueueKey`] order, and each one's
    /// key: when a worker frees a slot the first of them are offered it.
    queue: BTreeSet<QueueKey>,
    queued: BTreeMap<JobId, QueueKey>,
    /// Every unfinished job's next deadline ([`JobRecord::next_deadline`]), in time order, and
    /// each one's entry: [`Market::next_deadline`] and [`Input::Tick`] never scan all jobs.
    deadlines: BTreeSet<(UnixMillis, JobId)>,
    deadline_of: BTreeMap<JobId, (UnixMillis, JobId)>,
    /// The peers holding the ledger's bidder stake, when the node runs a ledger.
    stakers: Option<HashSet<PeerId>>,
    /// The workers we hold an open credit line to.
    credit_lines: HashSet<PeerId>,
}

/// How many queued jobs are tried when a worker frees a slot.
const KICK_JOBS: usize = 8;

impl Market {
    /// A market for the node `local`, with no jobs.
    pub fn new(config: Config, local: PeerId) -> Self {
        let reputation = Reputation::new(config.max_reputation_entries);
        let index = CapabilityIndex::new(config.ad_ttl_ms, config.max_index_entries);
        Market {
            config,
            local,
            jobs: BTreeMap::new(),
            reputation,
            index,
            load: BTreeMap::new(),
            queue: BTreeSet::new(),
            queued: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: BTreeMap::new(),
            stakers: None,
            credit_lines: HashSet::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The local node's peer id.
    pub fn local(&self) -> PeerId {
        self.local
    }

    /// Feeds one input at time `now`; returns what the node must do, in order.
    pub fn handle(&mut self, input: Input, now: UnixMillis) -> Vec<Output> {
        let mut fx = Effects::default();
        let freed = self.handle_input(input, now, &mut fx);
        if freed {
            self.kick(now, &mut fx);
        }
        #[cfg(test)]
        assert_eq!(
            self.next_deadline(),
            self.jobs
                .values()
                .filter_map(JobRecord::next_deadline)
                .min(),
            "the deadline index matches the records"
        );
        fx.finish()
    }

    /// Offers freed worker slots to the first queued jobs.
    fn kick(&mut self, now: UnixMillis, fx: &mut Effects) {
        let ids: Vec<JobId> = self.queue.iter().take(KICK_JOBS).map(|k| k.2).collect();
        for id in ids {
            self.with_job(&id, now, fx, |ctx, rec| ctx.refill(rec));
        }
    }

    /// Carries out one input; returns whether some worker's slot held by us was freed.
    fn handle_input(&mut self, input: Input, now: UnixMillis, fx: &mut Effects) -> bool {
        let fx = &mut *fx;
        let mut freed = false;
        match input {
            Input::Submit(job) => self.submit(job, now, fx),
            Input::CapabilityAd { from, ad, ip } => {
                self.index.insert(from, ad, ip, now);
            }
            Input::Bid {
                from,
                bid,
                rtt_ms,
                ip,
            } => {
                let id = bid.job_id;
                freed |= self.with_job_freed(&id, now, fx, |ctx, rec| {
                    ctx.on_bid(rec, from, bid, rtt_ms, ip)
                });
            }
            Input::LeaseAccepted { job_id, worker } => {
                self.with_job(&job_id, now, fx, |ctx, rec| {
                    if let Some(l) = rec.lease_mut(&worker)
                        && l.status == LeaseStatus::Offered
                    {
                        l.status = LeaseStatus::Accepted;
                        rec.started_ms.get_or_insert(ctx.now);
                        ctx.log(rec, format!("{worker} accepted its lease"));
                    }
                });
            }
            Input::Heartbeat { job_id, worker } => {
                self.with_job(&job_id, now, fx, |ctx, rec| ctx.on_heartbeat(rec, worker));
            }
            Input::LeaseRefused {
                job_id,
                worker,
                reason,
            } => {
                let reason = truncate(&reason, MAX_REASON_LEN);
                freed |= self.with_job_freed(&job_id, now, fx, |ctx, rec| {
                    if rec.is_finished() {
                        return;
                    }
                    let why = format!("refused: {reason}");
                    ctx.lost_lease(
                        rec,
                        worker,
                        LeaseStatus::Refused,
                        Some(ReputationAction::LeaseRefused),
                        &why,
                    );
                    ctx.refill(rec);
                });
            }
            Input::LeaseBusy { job_id, worker } => {
                if self.jobs.get(&job_id).is_some_and(|r| {
                    r.lease_of(&worker)
                        .is_some_and(|l| l.status.is_active() && !r.is_finished())
                }) {
                    // Hold the worker back before the job looks for a replacement.
                    let busy_until = now.saturating_add(self.config.busy_backoff_ms);
                    self.load.entry(worker).or_default().busy_until = busy_until;
                }
                self.with_job(&job_id, now, fx, |ctx, rec| {
                    if rec.is_finished() {
                        return;
                    }
                    ctx.lost_lease(rec, worker, LeaseStatus::Busy, None, "worker busy");
                    ctx.refill(rec);
                });
            }
            Input::Result {
                from,
                result,
                signed,
                stderr,
            } => {
                let id = result.job_id;
                // A worker that delivers has a free slot again: its busy pause ends.
                if let Some(l) = self.load.get_mut(&from) {
                    l.busy_until = 0;
                }
                freed |= self.with_job_freed(&id, now, fx, |ctx, rec| {
                    ctx.on_result(rec, from, result.outcome, signed, &stderr)
                });
            }
            Input::EscrowLocked(id) => {
                self.with_job(&id, now, fx, |ctx, rec| {
                    if rec.state == JobState::AwaitingEscrow {
                        rec.state = JobState::Bidding;
                        ctx.log(rec, "escrow locked on the ledger");
                        ctx.announce(rec);
                    }
                });
            }
            Input::PeerDisconnected(peer) => {
                let ids: Vec<JobId> = self
                    .jobs
                    .values()
                    .filter(|r| !r.is_finished() && r.active_leases().any(|l| l.worker == peer))
                    .map(|r| r.id)
                    .collect();
                for id in ids {
                    freed |= self.with_job_freed(&id, now, fx, |ctx, rec| {
                        ctx.lost_lease(
                            rec,
                            peer,
                            LeaseStatus::Disconnected,
                            Some(ReputationAction::Disconnected),
                            "worker disconnected",
                        );
                        ctx.refill(rec);
                    });
                }
            }
            Input::RemoteReputation {
                reporter,
                subject,
                delta,
            } => {
                if reporter != self.local {
                    self.reputation.apply_remote(reporter, subject, delta);
                }
            }
            Input::Cancel(id) => {
                freed |= self.with_job_freed(&id, now, fx, |ctx, rec| {
                    ctx.fail(rec, FailReason::Cancelled)
                });
            }
            Input::Stakers(set) => self.stakers = Some(set),
            Input::CreditLines(set) => self.credit_lines = set,
            Input::Tick => {
                self.index.expire(now);
                let due: Vec<JobId> = self
                    .deadlines
                    .iter()
                    .take_while(|(d, _)| *d <= now)
                    .map(|(_, id)| *id)
                    .collect();
                for id in due {
                    freed |= self.with_job_freed(&id, now, fx, |ctx, rec| ctx.tick(rec));
                }
                // Workers whose busy pause ended may take queued jobs.
                let before = self.load.len();
                self.load.retain(|_, l| l.ours > 0 || l.busy_until > now);
                freed |= self.load.len() < before;
            }
        }
        freed
    }

    /// [`Market::with_job`], returning whether one of our slots on a worker was freed.
    fn with_job_freed(
        &mut self,
        id: &JobId,
        now: UnixMillis,
        fx: &mut Effects,
        f: impl FnOnce(&mut Ctx<'_>, &mut JobRecord),
    ) -> bool {
        let before = self.load.values().map(|l| u64::from(l.ours)).sum::<u64>();
        self.with_job(id, now, fx, f);
        self.load.values().map(|l| u64::from(l.ours)).sum::<u64>() < before
    }

    fn with_job<R>(
        &mut self,
        id: &JobId,
        now: UnixMillis,
        fx: &mut Effects,
        f: impl FnOnce(&mut Ctx<'_>, &mut JobRecord) -> R,
    ) -> Option<R> {
        let rec = self.jobs.get_mut(id)?;
        let before: Vec<PeerId> = rec.active_leases().map(|l| l.worker).collect();
        let mut ctx = Ctx {
            config: &self.config,
            local: self.local,
            reputation: &mut self.reputation,
            index: &self.index,
            load: &self.load,
            stakers: self.stakers.as_ref(),
            credit_lines: &self.credit_lines,
            fx,
            now,
        };
        let r = f(&mut ctx, rec);
        let after: Vec<PeerId> = rec.active_leases().map(|l| l.worker).collect();
        let key = queue_key(rec);
        let deadline = deadline_key(rec);
        track_load(&mut self.load, &before, &after, now);
        track_queue(&mut self.queue, &mut self.queued, *id, key);
        track_queue(&mut self.deadlines, &mut self.deadline_of, *id, deadline);
        Some(r)
    }

    /// Makes room for one more job: forgets the oldest finished job if the market is full.
    /// Returns false when every tracked job is pending.
    fn make_room(&mut self, fx: &mut Effects) -> bool {
        if self.jobs.len() < self.config.max_jobs.max(1) {
            return true;
        }
        let oldest = self
            .jobs
            .values()
            .filter(|r| r.is_finished())
            .min_by_key(|r| (r.finished_ms.unwrap_or(0), r.id))
            .map(|r| r.id);
        match oldest {
            Some(id) => {
                self.jobs.remove(&id);
                track_queue(&mut self.queue, &mut self.queued, id, None);
                track_queue(&mut self.deadlines, &mut self.deadline_of, id, None);
                fx.changed.insert(id);
                true
            }
            None => false,
        }
    }

    fn submit(&mut self, job: SignedJob, now: UnixMillis, fx: &mut Effects) {
        let id = job_id(&job);
        if self.jobs.contains_key(&id) {
            tracing::debug!(job = %id.short(), "duplicate submission ignored");
            return;
        }
        if !self.make_room(fx) {
            fx.out.push(Output::Failed {
                job_id: id,
                reason: FailReason::TooManyJobs {
                    max: self.config.max_jobs,
                },
            });
            return;
        }
        let mut rec = JobRecord::new(id, job, now, self.config.reannounce_initial_ms);
        let mut ctx = Ctx {
            config: &self.config,
            local: self.local,
            reputation: &mut self.reputation,
            index: &self.index,
            load: &self.load,
            stakers: self.stakers.as_ref(),
            credit_lines: &self.credit_lines,
            fx,
            now,
        };
        let spec = &rec.job.payload;
        let msg = format!(
            "submitted: redundancy {}, max price {}",
            spec.redundancy, spec.max_price
        );
        ctx.log(&mut rec, msg);
        let deadline = rec.job.payload.deadline_ms;
        if deadline != 0 && now >= deadline {
            ctx.fail(&mut rec, FailReason::Deadline);
        } else if ctx.config.require_escrow && !rec.job.payload.credit {
            ctx.lock_escrow(&mut rec);
        } else {
            ctx.announce(&mut rec);
        }
        // The fast path may have leased already: count those leases in the workers' load, as
        // `with_job` does for every later change.
        let leased: Vec<PeerId> = rec.active_leases().map(|l| l.worker).collect();
        track_load(&mut self.load, &[], &leased, now);
        track_queue(&mut self.queue, &mut self.queued, id, queue_key(&rec));
        track_queue(
            &mut self.deadlines,
            &mut self.deadline_of,
            id,
            deadline_key(&rec),
        );
        self.jobs.insert(id, rec);
    }

    /// Reloads records persisted before a restart. Finished jobs are kept as they were. Pending
    /// jobs resume: leases keep their expiry and results are kept; a job that was bidding, waiting
    /// to be re-announced or short of workers is announced again now. Records whose id does not
    /// match their job, or that are already tracked, are skipped.
    pub fn restore(&mut self, records: Vec<JobRecord>, now: UnixMillis) -> Vec<Output> {
        let mut fx = Effects::default();
        let mut records = records;
        records.sort_by_key(|r| (r.created_ms, r.id));
        for mut rec in records {
            if job_id(&rec.job) != rec.id {
                tracing::warn!(job = %rec.id.short(), "restored record does not match its job; skipped");
                continue;
            }
            if self.jobs.contains_key(&rec.id) {
                continue;
            }
            if !self.make_room(&mut fx) {
                if !rec.is_finished() {
                    fx.out.push(Output::Failed {
                        job_id: rec.id,
                        reason: FailReason::TooManyJobs {
                            max: self.config.max_jobs,
                        },
                    });
                }
                continue;
            }
            if !rec.is_finished() {
                let mut ctx = Ctx {
                    config: &self.config,
                    local: self.local,
                    reputation: &mut self.reputation,
                    index: &self.index,
                    load: &self.load,
                    stakers: self.stakers.as_ref(),
                    credit_lines: &self.credit_lines,
                    fx: &mut fx,
                    now,
                };
                ctx.log(&mut rec, "restored after a restart");
                // Bids are soft state: the bidders may be gone or busy by now.
                rec.bids.clear();
                if rec.state == JobState::AwaitingEscrow {
                    // The lock may or may not have landed: ask again (the node answers at once
                    // when the ledger already holds it).
                    ctx.lock_escrow(&mut rec);
                } else if rec.bid_window_closes_ms.is_some()
                    || rec.next_announce_ms.is_some()
                    || rec.needed() > 0
                {
                    ctx.announce(&mut rec);
                }
            }
            let active: Vec<PeerId> = rec.active_leases().map(|l| l.worker).collect();
            track_load(&mut self.load, &[], &active, now);
            track_queue(&mut self.queue, &mut self.queued, rec.id, queue_key(&rec));
            let deadline = deadline_key(&rec);
            track_queue(&mut self.deadlines, &mut self.deadline_of, rec.id, deadline);
            self.jobs.insert(rec.id, rec);
        }
        fx.finish()
    }

    /// The record of job `id`.
    pub fn job(&self, id: &JobId) -> Option<&JobRecord> {
        self.jobs.get(id)
    }

    /// Every tracked job, in id order.
    pub fn jobs(&self) -> impl Iterator<Item = &JobRecord> {
        self.jobs.values()
    }

    /// The local reputation book.
    pub fn reputation(&self) -> &Reputation {
        &self.reputation
    }

    /// The local reputation book, mutably (e.g. to load a persisted one).
    pub fn reputation_mut(&mut self) -> &mut Reputation {
        &mut self.reputation
    }

    /// The capability index.
    pub fn index(&self) -> &CapabilityIndex {
        &self.index
    }

    /// The earliest pending timer of any job: send [`Input::Tick`] then.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        self.deadlines.first().map(|(d, _)| *d)
    }
}

/// Moves our lease counts from the workers in `before` to those in `after`, and forgets
/// workers that hold none of our leases and are not paused.
fn track_load(
    load: &mut BTreeMap<PeerId, Load>,
    before: &[PeerId],
    after: &[PeerId],
    now: UnixMillis,
) {
    if before == after {
        return;
    }
    for w in before {
        if let Some(l) = load.get_mut(w) {
            l.ours = l.ours.saturating_sub(1);
        }
    }
    for w in after {
        load.entry(*w).or_default().ours += 1;
    }
    for w in before {
        if !after.contains(w)
            && let Some(l) = load.get(w)
            && l.ours == 0
            && l.busy_until <= now
        {
            load.remove(w);
        }
    }
}

/// A job's entry in [`Market::deadlines`].
fn deadline_key(rec: &JobRecord) -> Option<(UnixMillis, JobId)> {
    rec.next_deadline().map(|d| (d, rec.id))
}

/// Moves `id`'s entry in an ordered index (`queue`, with each id's entry in `queued`) to `key`.
fn track_queue<K: Ord + Copy>(
    queue: &mut BTreeSet<K>,
    queued: &mut BTreeMap<JobId, K>,
    id: JobId,
    key: Option<K>,
) {
    if queued.get(&id) == key.as_ref() {
        return;
    }
    if let Some(old) = queued.remove(&id) {
        queue.remove(&old);
    }
    if let Some(k) = key {
        queue.insert(k);
        queued.insert(id, k);
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
#[path = "market_tests.rs"]
mod tests;
