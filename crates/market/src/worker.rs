//! The worker side of the market, as a pure state machine: whether to bid on an announced job,
//! which leases to take, when to heartbeat, when a lease has lapsed, when a result may go out,
//! and what this node's capability ad says.
//!
//! [`Worker::handle`] takes one [`Input`] and the current time and returns the [`Output`]s the
//! node must carry out, like [`Market::handle`](crate::Market::handle). It reads no clock and
//! does no I/O: timers are outputs ([`Output::SetTimer`]) that the runtime fires back as
//! [`Input::Timer`] at their instant, and a timer that is no longer wanted (its lease ended, or
//! a newer lease on the same job replaced it) is ignored when it fires.
//!
//! # Rules
//!
//! - **Bid** on an announcement ([`Input::Announce`]) that is not our own job, not already bid on
//!   for that attempt, within this node's [`SpecBounds`], covered by its [`Offer`] and, with a
//!   ledger, only while this node holds the minimum stake and the job has an escrow; and only with
//!   a free lease slot ([`bid_for`]). Each decision not to bid is an [`Output::Declined`].
//! - **Lease**: accepted only from the job's own signer, for a spec within bounds and the offer.
//!   A full lease book answers [`Answer::Busy`]: normal backpressure, which the submitter treats
//!   as "try another worker" with no reputation cost. Anything else wrong is
//!   [`Answer::Refused`] (it costs the worker nothing, but the submitter learns why).
//! - **Heartbeats**: while a lease is held, one [`Output::SendHeartbeat`] every
//!   [`Settings::heartbeat_ms`]. An answered heartbeat extends the local lease to
//!   `now + extension_ms`; a refused one (the submitter no longer holds the lease for us) stops
//!   the work ([`Output::Stop`]); an unanswered one changes nothing: the expiry decides.
//! - **Expiry**: a lease whose expiry passes with no result is dropped and its work stopped.
//! - **Result**: when the work is done ([`Input::Executed`]) the result goes out
//!   ([`Output::SendResult`]) only if the lease is still held; the slot is freed either way.
//!   Work that could not run ([`Input::GaveUp`]) gives the lease back ([`Output::GiveBack`]).

use std::collections::{BTreeMap, HashSet, VecDeque};

use agora_types::job::{Bid, CapabilityAd, JobId, JobSpec, Lease, SignedJob, SpecBounds, job_id};
use agora_types::{PeerId, UnixMillis};

use crate::config::Config;

/// What this node offers as a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Capability tags this node satisfies.
    pub capabilities: Vec<String>,
    /// Its price for one execution.
    pub price: u64,
    /// The most memory it gives one job, in bytes.
    pub memory_bytes: u64,
    /// The longest wall time it accepts for one job, in ms.
    pub max_wall_time_ms: u64,
}

/// Why this node does not bid on a job.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NoBid {
    /// The job needs a capability this node lacks.
    #[error("missing capability `{0}`")]
    MissingCapability(String),
    /// This node's price is over the job's maximum.
    #[error("our price {price} is over the job's max price {max_price}")]
    PriceOverMax {
        /// Our price.
        price: u64,
        /// The job's max price.
        max_price: u64,
    },
    /// The job wants more memory than this node gives.
    #[error("the job wants {wanted} bytes of memory; we offer {offered}")]
    MemoryOverOffer {
        /// The job's memory limit.
        wanted: u64,
        /// Ours.
        offered: u64,
    },
    /// The job may run longer than this node accepts.
    #[error("the job may run {wanted} ms; we accept {offered} ms")]
    WallTimeOverOffer {
        /// The job's wall-time limit.
        wanted: u64,
        /// Ours.
        offered: u64,
    },
    /// Every executor slot is taken.
    #[error("no free executor slot")]
    NoFreeSlot,
    /// The job is this node's own: a node never works on its own jobs.
    #[error("the job is our own")]
    OwnJob,
    /// The job's signer is not a valid peer id.
    #[error("the job's signer is not a valid peer id")]
    BadSigner,
    /// The spec is outside this node's bounds (e.g. an input over `max_input_bytes`).
    #[error("the spec is outside this node's bounds: {0}")]
    OutOfBounds(String),
    /// This node's stake on the ledger is below the minimum a bidder needs.
    #[error("our stake is below the ledger's minimum for bidders (`agora wallet stake`)")]
    NotStaked,
    /// The job has no escrow on the ledger.
    #[error("the job has no escrow on the ledger")]
    NoEscrow,
    /// A credit job whose submitter's line to us does not cover it.
    #[error("the submitter's credit line to us has {left} left, under our price")]
    NoCredit {
        /// What is left on the line after the credit jobs we may still be paid for.
        left: u64,
    },
}

/// The bid this node makes for `spec`, or why it makes none.
pub fn bid_for(
    spec: &JobSpec,
    job_id: JobId,
    offer: &Offer,
    free_slots: u32,
    total_slots: u32,
) -> Result<Bid, NoBid> {
    if let Some(missing) = spec
        .capabilities
        .iter()
        .find(|c| !offer.capabilities.contains(c))
    {
        return Err(NoBid::MissingCapability(missing.clone()));
    }
    if offer.price > spec.max_price {
        return Err(NoBid::PriceOverMax {
            price: offer.price,
            max_price: spec.max_price,
        });
    }
    if spec.limits.memory_bytes > offer.memory_bytes {
        return Err(NoBid::MemoryOverOffer {
            wanted: spec.limits.memory_bytes,
            offered: offer.memory_bytes,
        });
    }
    if spec.limits.wall_time_ms > offer.max_wall_time_ms {
        return Err(NoBid::WallTimeOverOffer {
            wanted: spec.limits.wall_time_ms,
            offered: offer.max_wall_time_ms,
        });
    }
    if free_slots == 0 {
        return Err(NoBid::NoFreeSlot);
    }
    Ok(Bid {
        job_id,
        price: offer.price,
        free_slots,
        total_slots,
    })
}

/// Announcements remembered as bid on, so that a duplicate delivery is not bid on twice. A
/// re-announcement (a higher attempt) is bid on again: the submitter is still short of workers.
pub const BID_MEMORY: usize = 4096;

/// How a [`Worker`] behaves.
#[derive(Clone, Debug)]
pub struct Settings {
    /// What it offers.
    pub offer: Offer,
    /// The most leases it holds at once (its lease book); more than its executor slots when
    /// accepted leases may queue for a slot.
    pub lease_slots: usize,
    /// The interval between heartbeats for a held lease, in ms.
    pub heartbeat_ms: u64,
    /// How far an answered heartbeat extends the local lease past its answer, in ms.
    pub extension_ms: u64,
    /// The bounds a spec must be within to be bid on or leased.
    pub bounds: SpecBounds,
    /// How many announcements are remembered as bid on ([`BID_MEMORY`]).
    pub bid_memory: usize,
    /// How long a signed credit-job result counts against its line ([`CREDIT_HOLD_MS`]; the
    /// node sets it from the ledger's `credit_settle_ms`).
    pub credit_hold_ms: u64,
    /// A lease that follows no bid of ours (the submitter took our ad as a standing offer) is
    /// taken only while fewer leases than this are held, the executor slots: then it starts at
    /// once, and a stale ad sends the submitter on to another worker (`Busy`) rather than into
    /// our queue. Leases after a bid may fill the whole lease book.
    pub direct_slots: usize,
}

impl Settings {
    /// A worker offering `offer` with `lease_slots` leases, heartbeating as `market` says.
    pub fn new(offer: Offer, lease_slots: usize, market: &Config) -> Self {
        Settings {
            offer,
            lease_slots,
            heartbeat_ms: market.heartbeat_ms.max(100),
            extension_ms: market.heartbeat_extension_ms(),
            bounds: SpecBounds::default(),
            bid_memory: BID_MEMORY,
            credit_hold_ms: CREDIT_HOLD_MS,
            direct_slots: lease_slots,
        }
    }
}

/// What the ledger says about a bid, when the node runs one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Standing {
    /// This node holds the minimum stake a bidder needs.
    pub staked: bool,
    /// The job has an escrow.
    pub escrowed: bool,
    /// What is left on the credit line from the job's submitter to this node (0 when there is
    /// none or it is closing). A credit job ([`JobSpec::credit`]) is taken only while the line
    /// covers it and every other credit job of that submitter this node may still be paid for.
    pub credit: u64,
}

/// How long after its result is signed (or its lease may end) a credit job still counts against
/// the line, in ms: the ledger's default `credit_settle_ms` (a settlement may pay a result that
/// long after it was signed, in block time) plus two minutes for the skew between this node's
/// clock and the block proposers'.
pub const CREDIT_HOLD_MS: u64 = 600_000 + 120_000;

/// A credit job this node may still be paid for.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Owed {
    submitter: PeerId,
    price: u64,
    /// After this instant no settlement can pay it any more.
    until_ms: UnixMillis,
}

/// A worker timer; fired back as [`Input::Timer`]. `serial` names the lease it was set for,
/// so a timer left over from an earlier lease on the same job is ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Timer {
    /// Time for the next heartbeat.
    Heartbeat {
        /// The job.
        job_id: JobId,
        /// The lease.
        serial: u64,
    },
    /// The lease's expiry, as known when the timer was set.
    Expiry {
        /// The job.
        job_id: JobId,
        /// The lease.
        serial: u64,
    },
}

/// How the submitter answered a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Beat {
    /// It still holds the lease for us: keep working.
    Extended,
    /// It no longer does: stop.
    Refused(String),
    /// No answer (unreachable, timed out): nothing changes; the expiry decides.
    Unanswered,
}

/// The answer to a lease offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Taken: the work starts ([`Output::Start`]).
    Accepted,
    /// The lease book is full; try again later or elsewhere (no fault).
    Busy,
    /// Not taken, and why.
    Refused(String),
}

/// Why held work stops before it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The lease expired without a result.
    Expired,
    /// The submitter withdrew the lease.
    Withdrawn,
    /// The submitter refused a heartbeat: it holds no lease for us any more.
    HeartbeatRefused(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Expired => f.write_str("the lease expired before the work was reported"),
            StopReason::Withdrawn => f.write_str("the submitter withdrew the lease"),
            StopReason::HeartbeatRefused(why) => {
                write!(f, "the submitter refused a heartbeat: {why}")
            }
        }
    }
}

/// Something happened, fed to [`Worker::handle`].
#[derive(Clone, Debug)]
pub enum Input {
    /// A job was announced on `agora/jobs/1` (gossip validation checked its signature).
    Announce {
        /// The signed job.
        job: SignedJob,
        /// Its announcement attempt.
        attempt: u32,
        /// What the ledger says, when the node runs one.
        standing: Option<Standing>,
    },
    /// A submitter offers a lease (the node checked the job's signature). It may come without a
    /// bid: a submitter takes this node's ad as a standing offer (the fast path).
    Lease {
        /// The peer that sent it.
        from: PeerId,
        /// The lease.
        lease: Lease,
        /// What the ledger says, when the node runs one.
        standing: Option<Standing>,
    },
    /// The submitter answered one of our heartbeats.
    HeartbeatAnswered {
        /// The job.
        job_id: JobId,
        /// Its answer.
        answer: Beat,
    },
    /// A peer withdrew a lease; only the lease's submitter may.
    Withdrawn {
        /// The peer that sent the withdrawal.
        from: PeerId,
        /// The job.
        job_id: JobId,
    },
    /// The work on a job ended with a result to report.
    Executed(JobId),
    /// The work on a job could not be done here (blobs unreachable, executor full, the task
    /// ended without a report): give the lease back.
    GaveUp {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: String,
    },
    /// A timer set by [`Output::SetTimer`] is due.
    Timer(Timer),
    /// The ledger settled a credit job (we were paid, or it was settled without us): it no
    /// longer counts against its submitter's line.
    Settled(JobId),
}

/// Something the node must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Sign `bid` and send it to `submitter`.
    SendBid {
        /// The job's submitter.
        submitter: PeerId,
        /// The bid.
        bid: Bid,
    },
    /// No bid on this announcement, and why (for logs).
    Declined {
        /// The job.
        job_id: JobId,
        /// Why.
        why: NoBid,
    },
    /// Answer the lease offer of [`Input::Lease`] with this.
    Answer {
        /// The job.
        job_id: JobId,
        /// The peer that offered it.
        submitter: PeerId,
        /// The answer.
        answer: Answer,
    },
    /// Start the work: fetch the blobs, run the module, then feed back [`Input::Executed`] or
    /// [`Input::GaveUp`].
    Start {
        /// The job.
        job_id: JobId,
        /// Its submitter.
        submitter: PeerId,
        /// The lease.
        lease: Box<Lease>,
    },
    /// Sign a heartbeat for the job and send it to `submitter`; feed its answer back as
    /// [`Input::HeartbeatAnswered`].
    SendHeartbeat {
        /// The job's submitter.
        submitter: PeerId,
        /// The job.
        job_id: JobId,
    },
    /// Stop the work on the job and forget its result; the lease is gone.
    Stop {
        /// The job.
        job_id: JobId,
        /// Why.
        reason: StopReason,
    },
    /// Sign the job's result at `price` and send it to `submitter`.
    SendResult {
        /// The job's submitter.
        submitter: PeerId,
        /// The job.
        job_id: JobId,
        /// The price of the lease.
        price: u64,
    },
    /// Tell `submitter` we give the lease on the job back (a `Cancel` request).
    GiveBack {
        /// The job's submitter.
        submitter: PeerId,
        /// The job.
        job_id: JobId,
    },
    /// Feed [`Input::Timer`] with `timer` at `at`.
    SetTimer {
        /// When.
        at: UnixMillis,
        /// Which.
        timer: Timer,
    },
}

/// One lease this node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    submitter: PeerId,
    price: u64,
    expires_ms: UnixMillis,
    serial: u64,
}

/// The worker's state machine: its lease book and what it remembers of announcements.
#[derive(Clone, Debug)]
pub struct Worker {
    local: PeerId,
    settings: Settings,
    held: BTreeMap<JobId, Held>,
    bid_seen: VecDeque<(JobId, u32)>,
    bid_seen_set: HashSet<(JobId, u32)>,
    serial: u64,
    ad_seq: u64,
    /// Credit jobs we may still be paid for, by job.
    owed: BTreeMap<JobId, Owed>,
}

impl Worker {
    /// A worker for the node `local`, holding no lease.
    pub fn new(local: PeerId, settings: Settings) -> Self {
        Worker {
            local,
            settings,
            held: BTreeMap::new(),
            bid_seen: VecDeque::new(),
            bid_seen_set: HashSet::new(),
            serial: 0,
            ad_seq: 0,
            owed: BTreeMap::new(),
        }
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Feeds one input at time `now`; returns what the node must do, in order.
    pub fn handle(&mut self, input: Input, now: UnixMillis) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Announce {
                job,
                attempt,
                standing,
            } => self.on_announce(&job, attempt, standing, now, &mut out),
            Input::Lease {
                from,
                lease,
                standing,
            } => self.on_lease(from, lease, standing, now, &mut out),
            Input::HeartbeatAnswered { job_id, answer } => match answer {
                Beat::Extended => {
                    if let Some(h) = self.held.get_mut(&job_id) {
                        let until = now.saturating_add(self.settings.extension_ms);
                        h.expires_ms = h.expires_ms.max(until);
                        if let Some(o) = self.owed.get_mut(&job_id) {
                            o.until_ms = o
                                .until_ms
                                .max(until.saturating_add(self.settings.credit_hold_ms));
                        }
                    }
                }
                Beat::Refused(why) => {
                    self.stop(job_id, StopReason::HeartbeatRefused(why), &mut out);
                }
                Beat::Unanswered => {}
            },
            Input::Withdrawn { from, job_id } => {
                if self.held.get(&job_id).is_some_and(|h| h.submitter == from) {
                    self.stop(job_id, StopReason::Withdrawn, &mut out);
                }
            }
            Input::Executed(job_id) => {
                if let Some(h) = self.held.remove(&job_id) {
                    // The result is signed now: a settlement may pay it until its window ends.
                    if let Some(o) = self.owed.get_mut(&job_id) {
                        o.until_ms = now.saturating_add(self.settings.credit_hold_ms);
                    }
                    out.push(Output::SendResult {
                        submitter: h.submitter,
                        job_id,
                        price: h.price,
                    });
                }
            }
            Input::GaveUp { job_id, .. } => {
                // No result of ours was signed, so no settlement can pay us for it.
                self.owed.remove(&job_id);
                if let Some(h) = self.held.remove(&job_id) {
                    out.push(Output::GiveBack {
                        submitter: h.submitter,
                        job_id,
                    });
                }
            }
            Input::Timer(timer) => self.on_timer(timer, now, &mut out),
            Input::Settled(job_id) => {
                self.owed.remove(&job_id);
            }
        }
        out
    }

    fn on_announce(
        &mut self,
        job: &SignedJob,
        attempt: u32,
        standing: Option<Standing>,
        now: UnixMillis,
        out: &mut Vec<Output>,
    ) {
        let id = job_id(job);
        if self.held.contains_key(&id) || self.bid_seen_set.contains(&(id, attempt)) {
            return;
        }
        match self.bid(job, id, standing, now) {
            Ok((submitter, bid)) => {
                self.remember(id, attempt);
                out.push(Output::SendBid { submitter, bid });
            }
            Err(why) => out.push(Output::Declined { job_id: id, why }),
        }
    }

    fn bid(
        &self,
        job: &SignedJob,
        id: JobId,
        standing: Option<Standing>,
        now: UnixMillis,
    ) -> Result<(PeerId, Bid), NoBid> {
        let submitter = job.signer_peer().map_err(|_| NoBid::BadSigner)?;
        if submitter == self.local {
            return Err(NoBid::OwnJob);
        }
        // The signed deadline is not checked here: the submitter's clock for it starts when the
        // job first gets a worker (ARCHITECTURE.md, "Deadlines"), so a queued job may be
        // announced past it; an announcement the submitter no longer wants gets no lease.
        let spec = &job.payload;
        spec.validate(&self.settings.bounds)
            .map_err(|e| NoBid::OutOfBounds(e.to_string()))?;
        if let Some(s) = standing {
            if !s.staked {
                return Err(NoBid::NotStaked);
            }
            if spec.credit {
                let left = self.credit_left(&submitter, s.credit, now);
                if left < self.settings.offer.price {
                    return Err(NoBid::NoCredit { left });
                }
            } else if !s.escrowed {
                return Err(NoBid::NoEscrow);
            }
        }
        let bid = bid_for(
            spec,
            id,
            &self.settings.offer,
            self.free_slots(),
            self.total_slots(),
        )?;
        Ok((submitter, bid))
    }

    fn remember(&mut self, id: JobId, attempt: u32) {
        while self.bid_seen.len() >= self.settings.bid_memory.max(1) {
            if let Some(old) = self.bid_seen.pop_front() {
                self.bid_seen_set.remove(&old);
            }
        }
        self.bid_seen.push_back((id, attempt));
        self.bid_seen_set.insert((id, attempt));
    }

    fn on_lease(
        &mut self,
        from: PeerId,
        lease: Lease,
        standing: Option<Standing>,
        now: UnixMillis,
        out: &mut Vec<Output>,
    ) {
        let id = job_id(&lease.job);
        let answer = self.admit(from, &lease, standing, id, now);
        let accepted = answer == Answer::Accepted;
        out.push(Output::Answer {
            job_id: id,
            submitter: from,
            answer,
        });
        if !accepted {
            return;
        }
        if standing.is_some() && lease.job.payload.credit {
            self.owed.retain(|_, o| o.until_ms >= now);
            self.owed.insert(
                id,
                Owed {
                    submitter: from,
                    price: lease.price,
                    until_ms: lease
                        .expires_ms
                        .saturating_add(self.settings.credit_hold_ms),
                },
            );
        }
        self.serial += 1;
        let serial = self.serial;
        self.held.insert(
            id,
            Held {
                submitter: from,
                price: lease.price,
                expires_ms: lease.expires_ms,
                serial,
            },
        );
        let expires_ms = lease.expires_ms;
        out.push(Output::Start {
            job_id: id,
            submitter: from,
            lease: Box::new(lease),
        });
        out.push(Output::SetTimer {
            at: now.saturating_add(self.settings.heartbeat_ms),
            timer: Timer::Heartbeat { job_id: id, serial },
        });
        out.push(Output::SetTimer {
            at: expires_ms,
            timer: Timer::Expiry { job_id: id, serial },
        });
    }

    /// Whether to take a lease on `id` from `from`.
    fn admit(
        &self,
        from: PeerId,
        lease: &Lease,
        standing: Option<Standing>,
        id: JobId,
        now: UnixMillis,
    ) -> Answer {
        match lease.job.signer_peer() {
            Ok(s) if s == from => {}
            _ => return Answer::Refused("only a job's submitter may lease it".into()),
        }
        let spec = &lease.job.payload;
        // A lease may come without a bid (the fast path): the ledger's conditions for a bid
        // hold for it too, or the work could never be paid.
        match standing {
            Some(s) if !s.staked => return Answer::Refused(NoBid::NotStaked.to_string()),
            // The line must cover this lease beside every credit job of this submitter we may
            // still be paid for: then the line can never owe us more than it holds. Short of it
            // is backpressure (the submitter tops the line up or goes elsewhere), not a fault.
            Some(s) if spec.credit && self.credit_left(&from, s.credit, now) < lease.price => {
                return Answer::Busy;
            }
            // Our view of the ledger may lag the submitter's by a block: not a refusal.
            Some(s) if !spec.credit && !s.escrowed => return Answer::Busy,
            _ => {}
        }
        if lease.price < self.settings.offer.price {
            return Answer::Refused(format!(
                "the lease pays {} but our price is {}",
                lease.price, self.settings.offer.price
            ));
        }
        // Checked before anything is fetched: the sizes are in the signed spec.
        if let Err(e) = spec.validate(&self.settings.bounds) {
            return Answer::Refused(e.to_string());
        }
        if let Err(e) = bid_for(spec, id, &self.settings.offer, 1, 1) {
            return Answer::Refused(e.to_string());
        }
        if self.held.contains_key(&id) {
            return Answer::Refused("already holding a lease on this job".into());
        }
        if self.held.len() >= self.settings.lease_slots {
            return Answer::Busy;
        }
        let bid_on = self.bid_seen.iter().any(|(j, _)| *j == id);
        if !bid_on && self.held.len() >= self.settings.direct_slots {
            return Answer::Busy;
        }
        Answer::Accepted
    }

    fn on_timer(&mut self, timer: Timer, now: UnixMillis, out: &mut Vec<Output>) {
        match timer {
            Timer::Heartbeat { job_id, serial } => {
                let Some(h) = self.held.get(&job_id).filter(|h| h.serial == serial) else {
                    return;
                };
                out.push(Output::SendHeartbeat {
                    submitter: h.submitter,
                    job_id,
                });
                out.push(Output::SetTimer {
                    at: now.saturating_add(self.settings.heartbeat_ms),
                    timer,
                });
            }
            Timer::Expiry { job_id, serial } => {
                let Some(h) = self.held.get(&job_id).filter(|h| h.serial == serial) else {
                    return;
                };
                if h.expires_ms > now {
                    // Extended since: wait for the new expiry.
                    out.push(Output::SetTimer {
                        at: h.expires_ms,
                        timer,
                    });
                } else {
                    self.stop(job_id, StopReason::Expired, out);
                }
            }
        }
    }

    fn stop(&mut self, job_id: JobId, reason: StopReason, out: &mut Vec<Output>) {
        self.owed.remove(&job_id);
        if self.held.remove(&job_id).is_some() {
            out.push(Output::Stop { job_id, reason });
        }
    }

    /// The capability ad to gossip now: the offer and the free lease slots, with a fresh
    /// sequence number.
    pub fn capability_ad(&mut self, engine: &str, cores: u32, version: &str) -> CapabilityAd {
        self.ad_seq += 1;
        let offer = &self.settings.offer;
        CapabilityAd {
            engine: engine.into(),
            capabilities: offer.capabilities.clone(),
            cores,
            memory_bytes: offer.memory_bytes,
            free_slots: self.free_slots(),
            total_slots: self.total_slots(),
            price: offer.price,
            version: version.into(),
            seq: self.ad_seq,
            max_input_bytes: self.settings.bounds.max_input_bytes,
            max_module_bytes: self.settings.bounds.max_module_bytes,
            max_wall_time_ms: offer
                .max_wall_time_ms
                .min(self.settings.bounds.max_wall_time_ms),
        }
    }

    /// What is left of a credit line of `line` tokens from `submitter` after the credit jobs of
    /// its that this node may still be paid for (those whose settlement window has passed no
    /// longer count: no settlement can pay them).
    pub fn credit_left(&self, submitter: &PeerId, line: u64, now: UnixMillis) -> u64 {
        let owed: u64 = self
            .owed
            .values()
            .filter(|o| o.submitter == *submitter && o.until_ms >= now)
            .map(|o| o.price)
            .fold(0, u64::saturating_add);
        line.saturating_sub(owed)
    }

    /// How many credit jobs this node may still be paid for.
    pub fn owed(&self) -> usize {
        self.owed.len()
    }

    /// Whether this node may still be paid for the credit job `job_id`.
    pub fn is_owed(&self, job_id: &JobId) -> bool {
        self.owed.contains_key(job_id)
    }

    /// How many ads were made.
    pub fn ads_made(&self) -> u64 {
        self.ad_seq
    }

    /// Whether a lease on `job_id` is held.
    pub fn holds(&self, job_id: &JobId) -> bool {
        self.held.contains_key(job_id)
    }

    /// The submitter of a held lease.
    pub fn submitter_of(&self, job_id: &JobId) -> Option<PeerId> {
        self.held.get(job_id).map(|h| h.submitter)
    }

    /// How many leases are held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Free lease slots.
    pub fn free_slots(&self) -> u32 {
        let free = self.settings.lease_slots.saturating_sub(self.held.len());
        u32::try_from(free).unwrap_or(u32::MAX)
    }

    /// Lease slots in all.
    pub fn total_slots(&self) -> u32 {
        u32::try_from(self.settings.lease_slots).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::spec;
    use agora_types::sign::Signed;
    use agora_types::{Hash, Keypair};

    fn offer() -> Offer {
        Offer {
            capabilities: vec!["wasm".into()],
            price: 10,
            memory_bytes: 1 << 30,
            max_wall_time_ms: 60_000,
        }
    }

    fn key(n: u8) -> Keypair {
        Keypair::ed25519_from_bytes([n; 32]).expect("key")
    }

    fn peer(n: u8) -> PeerId {
        key(n).public().to_peer_id()
    }

    fn job(n: u8, nonce: u64) -> SignedJob {
        let mut s = spec();
        s.nonce = nonce;
        Signed::sign(&key(n), s, 0).expect("sign")
    }

    fn worker(slots: usize) -> Worker {
        let mut s = Settings::new(offer(), slots, &Config::local());
        s.heartbeat_ms = 1_000;
        s.extension_ms = 5_000;
        Worker::new(peer(1), s)
    }

    fn lease(job: &SignedJob, expires_ms: UnixMillis) -> Lease {
        Lease {
            job: job.clone(),
            price: 10,
            expires_ms,
        }
    }

    fn answer(out: &[Output]) -> Answer {
        out.iter()
            .find_map(|o| match o {
                Output::Answer { answer, .. } => Some(answer.clone()),
                _ => None,
            })
            .expect("an answer")
    }

    fn timers(out: &[Output]) -> Vec<(UnixMillis, Timer)> {
        out.iter()
            .filter_map(|o| match o {
                Output::SetTimer { at, timer } => Some((*at, *timer)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn bids_or_explains() {
        let s = spec();
        let id = Hash::of(b"j");
        let b = bid_for(&s, id, &offer(), 2, 4).expect("bid");
        assert_eq!(
            (b.job_id, b.price, b.free_slots, b.total_slots),
            (id, 10, 2, 4)
        );
        let mut s2 = s.clone();
        s2.capabilities.push("gpu".into());
        assert_eq!(
            bid_for(&s2, id, &offer(), 2, 4),
            Err(NoBid::MissingCapability("gpu".into()))
        );
        let mut o = offer();
        o.price = 1000;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::PriceOverMax { .. })
        ));
        let mut o = offer();
        o.memory_bytes = 1;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::MemoryOverOffer { .. })
        ));
        let mut o = offer();
        o.max_wall_time_ms = 1;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::WallTimeOverOffer { .. })
        ));
        assert_eq!(bid_for(&s, id, &offer(), 0, 4), Err(NoBid::NoFreeSlot));
        assert!(NoBid::NoFreeSlot.to_string().contains("slot"));
    }

    #[test]
    fn bids_once_per_attempt_never_on_own_jobs() {
        let mut w = worker(2);
        let j = job(2, 1);
        let announce = |attempt, standing| Input::Announce {
            job: j.clone(),
            attempt,
            standing,
        };
        let out = w.handle(announce(1, None), 0);
        match out.as_slice() {
            [Output::SendBid { submitter, bid }] => {
                assert_eq!(*submitter, peer(2));
                assert_eq!(
                    (bid.job_id, bid.free_slots, bid.total_slots),
                    (job_id(&j), 2, 2)
                );
            }
            other => panic!("expected a bid, got {other:?}"),
        }
        assert!(
            w.handle(announce(1, None), 1).is_empty(),
            "duplicate delivery"
        );
        assert_eq!(w.handle(announce(2, None), 2).len(), 1, "a re-announcement");
        let own = job(1, 2);
        let out = w.handle(
            Input::Announce {
                job: own.clone(),
                attempt: 1,
                standing: None,
            },
            3,
        );
        assert_eq!(
            out,
            vec![Output::Declined {
                job_id: job_id(&own),
                why: NoBid::OwnJob
            }]
        );
        let unstaked = Some(Standing {
            staked: false,
            escrowed: true,
            credit: 0,
        });
        assert!(matches!(
            w.handle(announce(3, unstaked), 4).as_slice(),
            [Output::Declined {
                why: NoBid::NotStaked,
                ..
            }]
        ));
        let no_escrow = Some(Standing {
            staked: true,
            escrowed: false,
            credit: 0,
        });
        assert!(matches!(
            w.handle(announce(4, no_escrow), 5).as_slice(),
            [Output::Declined {
                why: NoBid::NoEscrow,
                ..
            }]
        ));
    }

    #[test]
    fn a_full_book_answers_busy_and_stops_bidding() {
        let mut w = worker(1);
        let (a, b) = (job(2, 1), job(3, 2));
        let out = w.handle(
            Input::Lease {
                from: peer(2),
                lease: lease(&a, 10_000),
                standing: None,
            },
            0,
        );
        assert_eq!(answer(&out), Answer::Accepted);
        assert!(out.iter().any(|o| matches!(o, Output::Start { .. })));
        assert_eq!(w.free_slots(), 0);
        let ad = w.capability_ad("e", 2, "v");
        assert_eq!((ad.free_slots, ad.total_slots, ad.seq), (0, 1, 1));
        let out = w.handle(
            Input::Lease {
                from: peer(3),
                lease: lease(&b, 10_000),
                standing: None,
            },
            1,
        );
        assert_eq!(out.len(), 1, "no work starts: {out:?}");
        assert_eq!(answer(&out), Answer::Busy);
        assert!(matches!(
            w.handle(
                Input::Announce {
                    job: b.clone(),
                    attempt: 1,
                    standing: None
                },
                2
            )
            .as_slice(),
            [Output::Declined {
                why: NoBid::NoFreeSlot,
                ..
            }]
        ));
        // The same lease again is refused, not busy.
        let again = w.handle(
            Input::Lease {
                from: peer(2),
                lease: lease(&a, 10_000),
                standing: None,
            },
            3,
        );
        assert!(matches!(answer(&again), Answer::Refused(r) if r.contains("already")));
        // Done: the result goes out and the slot is free again.
        let out = w.handle(Input::Executed(job_id(&a)), 4);
        assert_eq!(
            out,
            vec![Output::SendResult {
                submitter: peer(2),
                job_id: job_id(&a),
                price: 10
            }]
        );
        assert_eq!(w.capability_ad("e", 2, "v").free_slots, 1);
    }

    #[test]
    fn refuses_leases_from_others_than_the_signer_or_outside_the_offer() {
        let mut w = worker(2);
        let j = job(2, 1);
        let out = w.handle(
            Input::Lease {
                from: peer(3),
                lease: lease(&j, 10_000),
                standing: None,
            },
            0,
        );
        assert!(matches!(answer(&out), Answer::Refused(r) if r.contains("submitter")));
        let mut s = spec();
        s.capabilities.push("gpu".into());
        let gpu = Signed::sign(&key(2), s, 0).expect("sign");
        let out = w.handle(
            Input::Lease {
                from: peer(2),
                lease: lease(&gpu, 10_000),
                standing: None,
            },
            0,
        );
        assert!(matches!(answer(&out), Answer::Refused(r) if r.contains("gpu")));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn heartbeats_extend_and_expiry_stops() {
        let mut w = worker(2);
        let j = job(2, 1);
        let id = job_id(&j);
        let out = w.handle(
            Input::Lease {
                from: peer(2),
                lease: lease(&j, 3_000),
                standing: None,
            },
            0,
        );
        let t = timers(&out);
        assert_eq!(t.len(), 2);
        let (hb_at, hb) = t[0];
        let (exp_at, exp) = t[1];
        assert_eq!((hb_at, exp_at), (1_000, 3_000));
        // A heartbeat goes out and the next is scheduled.
        let out = w.handle(Input::Timer(hb), hb_at);
        assert_eq!(
            out,
            vec![
                Output::SendHeartbeat {
                    submitter: peer(2),
                    job_id: id
                },
                Output::SetTimer {
                    at: 2_000,
                    timer: hb
                }
            ]
        );
        // Answered: the lease now runs to 1_100 + 5_000; the old expiry re-arms.
        assert!(
            w.handle(
                Input::HeartbeatAnswered {
                    job_id: id,
                    answer: Beat::Extended
                },
                1_100
            )
            .is_empty()
        );
        let out = w.handle(Input::Timer(exp), exp_at);
        assert_eq!(
            out,
            vec![Output::SetTimer {
                at: 6_100,
                timer: exp
            }]
        );
        // Unanswered heartbeats change nothing; the expiry then stops the work.
        w.handle(
            Input::HeartbeatAnswered {
                job_id: id,
                answer: Beat::Unanswered,
            },
            2_100,
        );
        let out = w.handle(Input::Timer(exp), 6_100);
        assert_eq!(
            out,
            vec![Output::Stop {
                job_id: id,
                reason: StopReason::Expired
            }]
        );
        assert!(!w.holds(&id));
        // A late result goes nowhere; the old heartbeat timer is ignored.
        assert!(w.handle(Input::Executed(id), 6_200).is_empty());
        assert!(w.handle(Input::Timer(hb), 6_300).is_empty());
    }

    #[test]
    fn a_refused_heartbeat_or_a_withdrawal_stops_the_work() {
        let mut w = worker(2);
        let (a, b) = (job(2, 1), job(2, 2));
        for j in [&a, &b] {
            w.handle(
                Input::Lease {
                    from: peer(2),
                    lease: lease(j, 10_000),
                    standing: None,
                },
                0,
            );
        }
        let out = w.handle(
            Input::HeartbeatAnswered {
                job_id: job_id(&a),
                answer: Beat::Refused("no lease".into()),
            },
            1,
        );
        assert!(matches!(
            out.as_slice(),
            [Output::Stop {
                reason: StopReason::HeartbeatRefused(_),
                ..
            }]
        ));
        // Only the submitter may withdraw.
        let by_other = Input::Withdrawn {
            from: peer(3),
            job_id: job_id(&b),
        };
        assert!(w.handle(by_other, 2).is_empty());
        let out = w.handle(
            Input::Withdrawn {
                from: peer(2),
                job_id: job_id(&b),
            },
            3,
        );
        assert!(matches!(
            out.as_slice(),
            [Output::Stop {
                reason: StopReason::Withdrawn,
                ..
            }]
        ));
        assert_eq!(w.held(), 0);
    }

    #[test]
    fn work_that_cannot_run_gives_the_lease_back() {
        let mut w = worker(1);
        let j = job(2, 1);
        w.handle(
            Input::Lease {
                from: peer(2),
                lease: lease(&j, 10_000),
                standing: None,
            },
            0,
        );
        let out = w.handle(
            Input::GaveUp {
                job_id: job_id(&j),
                reason: "blobs unreachable".into(),
            },
            1,
        );
        assert_eq!(
            out,
            vec![Output::GiveBack {
                submitter: peer(2),
                job_id: job_id(&j)
            }]
        );
        assert_eq!(w.free_slots(), 1);
    }

    #[test]
    fn a_new_lease_on_the_same_job_ignores_the_old_timers() {
        let mut w = worker(1);
        let j = job(2, 1);
        let offer_lease = |w: &mut Worker, now| {
            timers(&w.handle(
                Input::Lease {
                    from: peer(2),
                    lease: lease(&j, now + 3_000),
                    standing: None,
                },
                now,
            ))
        };
        let first = offer_lease(&mut w, 0);
        w.handle(
            Input::Withdrawn {
                from: peer(2),
                job_id: job_id(&j),
            },
            10,
        );
        let second = offer_lease(&mut w, 20);
        assert_ne!(first[0].1, second[0].1);
        assert!(w.handle(Input::Timer(first[0].1), 1_000).is_empty());
        assert!(
            w.handle(Input::Timer(first[1].1), 3_000).is_empty(),
            "old expiry"
        );
        assert!(w.holds(&job_id(&j)));
        assert_eq!(w.handle(Input::Timer(second[0].1), 1_020).len(), 2);
    }

    #[test]
    fn bid_memory_is_bounded() {
        let mut s = Settings::new(offer(), 1, &Config::local());
        s.bid_memory = 2;
        let mut w = Worker::new(peer(1), s);
        let jobs: Vec<SignedJob> = (0..3).map(|n| job(2, n)).collect();
        for j in &jobs {
            let input = Input::Announce {
                job: j.clone(),
                attempt: 1,
                standing: None,
            };
            assert_eq!(w.handle(input, 0).len(), 1);
        }
        assert_eq!(w.bid_seen.len(), 2);
        // The oldest was forgotten: bid on again.
        let again = Input::Announce {
            job: jobs[0].clone(),
            attempt: 1,
            standing: None,
        };
        assert!(matches!(
            w.handle(again, 1).as_slice(),
            [Output::SendBid { .. }]
        ));
    }
    fn credit_job(n: u8, nonce: u64) -> SignedJob {
        let mut spec = crate::index::tests::spec();
        spec.nonce = nonce;
        spec.credit = true;
        Signed::sign(&key(n), spec, 1).expect("sign")
    }

    fn line(credit: u64) -> Option<Standing> {
        Some(Standing {
            staked: true,
            escrowed: false,
            credit,
        })
    }

    #[test]
    fn a_credit_line_is_never_owed_more_than_it_holds() {
        // Our price is 10 (see `offer`); the submitter's line to us holds 25.
        let mut w = worker(8);
        let price = w.settings().offer.price;
        let lease_of = |j: &SignedJob| Lease {
            job: j.clone(),
            price,
            expires_ms: 10_000,
        };
        let (a, b, c) = (credit_job(2, 1), credit_job(2, 2), credit_job(2, 3));
        let take = |w: &mut Worker, j: &SignedJob, credit: u64, now: u64| {
            answer(&w.handle(
                Input::Lease {
                    from: peer(2),
                    lease: lease_of(j),
                    standing: line(credit),
                },
                now,
            ))
        };
        assert_eq!(take(&mut w, &a, 25, 0), Answer::Accepted);
        assert_eq!(take(&mut w, &b, 25, 1), Answer::Accepted);
        assert_eq!(w.credit_left(&peer(2), 25, 2), 25 - 2 * price);
        // A third would make the line owe 30 of its 25: backpressure, not a refusal.
        assert_eq!(take(&mut w, &c, 25, 2), Answer::Busy);
        // No line at all: the same.
        assert_eq!(take(&mut w, &credit_job(2, 9), 0, 2), Answer::Busy);
        // Job a is settled (paid on the ledger, so the line now holds 15): b still counts.
        w.handle(Input::Settled(job_id(&a)), 3);
        assert_eq!(w.credit_left(&peer(2), 15, 3), 15 - price);
        assert_eq!(take(&mut w, &c, 15, 3), Answer::Busy);
        // Work we give up was never signed for, so it stops counting at once: c fits.
        w.handle(
            Input::GaveUp {
                job_id: job_id(&b),
                reason: "x".into(),
            },
            4,
        );
        assert_eq!(w.owed(), 0);
        assert_eq!(take(&mut w, &c, 15, 4), Answer::Accepted);
        assert_eq!(w.owed(), 1);
        // A result signed at t counts until t + the hold: no settlement can pay it later.
        w.handle(Input::Executed(job_id(&c)), 5);
        let hold = w.settings().credit_hold_ms;
        assert_eq!(w.credit_left(&peer(2), 15, 5 + hold), 15 - price);
        assert_eq!(w.credit_left(&peer(2), 15, 6 + hold), 15);
        // Bidding follows the same rule.
        let out = w.handle(
            Input::Announce {
                job: credit_job(3, 10),
                attempt: 1,
                standing: line(5),
            },
            7,
        );
        assert!(
            matches!(
                out.as_slice(),
                [Output::Declined {
                    why: NoBid::NoCredit { left: 5 },
                    ..
                }]
            ),
            "{out:?}"
        );
    }
}
