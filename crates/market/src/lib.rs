//! Agora's compute market, as a pure state machine.
//!
//! Every Agora node is both a submitter and a worker, and there is no coordinator: the submitter
//! of a job runs that job's market. This crate is that market.
//!
//! # The life of a job
//!
//! The submitter signs a [`JobSpec`](agora_types::job::JobSpec) and feeds it to
//! [`Market::handle`] as [`Input::Submit`]. The market records it and asks the node to gossip it
//! ([`Output::Announce`]). Workers that can run it answer with signed bids (their side of the
//! policy is in [`worker`]). When the bid window closes (after [`Config::bid_window_ms`], or
//! early once every free capable worker the node knows of has bid) the market scores the bids
//! ([`select`](mod@select): price, reputation, latency, load, spread over distinct IP addresses, with a
//! deterministic tie-break) and leases the job to `r` workers, where `r` is the job's redundancy
//! ([`Output::SendLease`]). Each worker runs it and returns a signed result. Results are compared
//! by verdict (output hash and exit code, or failure kind; [`quorum`]): a verdict with at least
//! `r` votes and a strict majority is accepted ([`Output::Verified`]); the agreeing workers gain
//! reputation and the dissenters lose a lot of it ([`reputation`]). If no worker can be found the
//! job records why ([`WaitReason`]) and is announced again with exponential backoff; if results
//! disagree more replicas are leased, up to a cap, before the job is declared without quorum.
//! Every record is plain serde data ([`JobRecord`]), persisted on every change and restorable
//! after a restart ([`Market::restore`]).
//!
//! # Why it is pure
//!
//! The market does no I/O: no sockets, no tasks, no clock. Time arrives as a `now` argument and
//! timers are absolute deadlines checked on [`Input::Tick`] ([`Market::next_deadline`] says when
//! the next is due). The node owns the network and the disk and just carries out the returned
//! [`Output`]s. This makes every rule testable in microseconds, lets a whole network of markets be
//! simulated deterministically from a seed (see `tests/sim.rs`), and keeps the consensus-relevant
//! logic in one auditable place.
//!
//! # What it defends against
//!
//! - **Byzantine workers** returning wrong results: a result only counts toward a verdict that
//!   holds both `r` votes and a strict majority, so a lone liar can only delay a job, never
//!   decide it; disagreement adds replicas (bounded by [`Config::extra_replica_cap`]); a worker
//!   outvoted is charged [`ReputationAction::InvalidCompute`] and sinks below the selection floor.
//!   Results are accepted only from workers holding a lease, once each; unsolicited ones are
//!   charged [`ReputationAction::BadMessage`].
//! - **Vanishing workers**: every lease has an expiry (wall-time limit plus grace); expired,
//!   refused and disconnected leases cost reputation and are re-leased to the next-best bidder or
//!   re-announced, up to [`Config::max_attempts`] losses.
//! - **Bid and ad floods**: one bid per worker per job, only at or under the job's price, at most
//!   [`Config::max_bids_per_job`] (a newcomer only displaces a worse unused bid); the capability
//!   index, the reputation book, the job table and every per-job list are bounded by [`Config`]
//!   fields. Gossiped reputation counts for a quarter, capped per report, and is ignored from
//!   reporters this node distrusts.
//!
//! # Layout
//!
//! - [`config`]: tunables and presets.
//! - [`index`]: the capability index.
//! - [`reputation`]: the local reputation book.
//! - [`select`](mod@select): bid scoring and deterministic worker choice.
//! - [`quorum`]: verdict tallies.
//! - [`job`]: the per-job record.
//! - [`market`]: the submitter's state machine.
//! - [`worker`]: the worker's state machine: bid policy, lease book, heartbeats, expiry.
//! - [`settlement`]: the submitter's settlement machine: escrow locks, settlements, refunds,
//!   credit lines, reconciled with each block.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod config;
pub mod index;
pub mod job;
pub mod market;
pub mod quorum;
pub mod reputation;
pub mod select;
pub mod settlement;
pub mod worker;

pub use config::{Config, Weights};
pub use index::{Availability, CapabilityIndex, IndexEntry};
pub use job::{
    BidRecord, FailReason, JobRecord, JobState, LeaseRecord, LeaseStatus, ResultRecord,
    TimelineEvent, WaitReason,
};
pub use market::{Input, Market, Output};
pub use quorum::Tally;
pub use reputation::{Reputation, ReputationAction};
pub use select::{BidInfo, select};
pub use worker::{NoBid, Offer, Worker, bid_for};
