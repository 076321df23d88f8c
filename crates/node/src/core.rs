//! The node's core task: the one owner of the market and of the worker's lease book.
//!
//! It turns network events and API commands into [`Input`]s for the market, and carries out the
//! market's [`Output`]s: gossip, direct requests, storage writes. Anything that waits (a request
//! to a peer, a blob fetch, a sandbox run, a disk write) is spawned off the loop and reports back
//! through the bounded internal queue, so the loop itself never blocks.
//!
//! As a worker, the node feeds the [`Worker`] machine (bids, lease book, heartbeats, expiry) and
//! carries out its [`worker::Output`]s: it fetches the blobs, runs the module in the executor
//! pool and returns a signed result. A node never works on its own jobs.
//!
//! No polling: the machines' deadlines (the market's [`Market::next_deadline`], the worker's
//! [`worker::Output::SetTimer`]s, kept in a timer heap) decide when the loop wakes. Every task
//! the loop starts goes into a capped [`Tasks`] set that is aborted on shutdown.
//!
//! This file is the loop, its timers and the dispatch; the adapters live beside it: `worker_side`,
//! `requests` (peers' requests), `chain` (ledger, settlement), `gossip`, `outbound` (lease
//! offers, record writes), `api` (the handle's commands) and `tasks` (the capped set).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_exec::Pool;
use agora_market::settlement::Settlement;
use agora_market::worker::{self, Beat, Timer, Worker};
use agora_market::{Input, JobRecord, Market, Output};
use agora_net::{NetEvent, NetHandle, PeerId, PeerInfo};
use agora_types::job::{JobId, ResultNotice, SignedJob, WorkResult};
use agora_types::sign::{Domain, Signed};
use agora_types::wire::{GossipMessage, Response};
use agora_types::{UnixMillis, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tracing::{debug, info, warn};

use crate::ledger::LedgerRef;
use crate::node::Shared;
use crate::work::Report;

mod api;
mod chain;
mod gossip;
mod outbound;
mod requests;
mod tasks;
mod worker_side;

pub(crate) use tasks::{MAX_TASKS, Tasks};

/// Commands from [`NodeHandle`](crate::NodeHandle)s.
pub(crate) enum Command {
    Submit(Box<SignedJob>, oneshot::Sender<JobId>),
    Jobs(oneshot::Sender<Vec<JobRecord>>),
    Job(JobId, oneshot::Sender<Option<JobRecord>>),
    /// Answered once the job is final (at once if it is, or unknown).
    WaitFinal(JobId, oneshot::Sender<Option<JobRecord>>),
    Cancel(JobId, oneshot::Sender<bool>),
    Reputation(oneshot::Sender<Vec<(PeerId, i64)>>),
    /// The capability ads not lapsed yet (for the API's cost estimate).
    Offers(oneshot::Sender<Vec<(PeerId, agora_market::IndexEntry)>>),
}

/// What spawned tasks report back.
/// Work for the persistence task, done in order.
pub(crate) enum Persist {
    /// Write (or, with `None`, delete) a job record.
    Write(JobId, Option<Vec<u8>>),
    /// Answer once everything queued before has been committed.
    Barrier(oneshot::Sender<()>),
    /// Write a submitted job's first record and answer whether it is durable. Unlike a
    /// [`Persist::Write`], a failed write is not retried: the submission fails, and nothing may
    /// resume it after a restart.
    Submitted(
        JobId,
        Vec<u8>,
        oneshot::Sender<Result<(), crate::store::StoreError>>,
    ),
    /// Commit what is queued before, then end (the node is stopping; handles still hold
    /// senders, so the queue does not close by itself).
    Close,
}

/// How a lease offer ended.
pub(crate) enum Delivery {
    Accepted,
    Busy,
    Refused(String),
}

pub(crate) enum Internal {
    LeaseDelivered {
        job_id: JobId,
        worker: PeerId,
        result: Delivery,
    },
    ResultIn {
        from: PeerId,
        result: Signed<WorkResult>,
        stderr: Vec<u8>,
        ack: oneshot::Sender<Response>,
    },
    /// As a worker: a work task ended (`token` names the run, so a stopped run's late report
    /// is ignored), with its report or why it could not be done.
    WorkEnded {
        job_id: JobId,
        token: u64,
        result: Result<Report, String>,
    },
    /// As a worker: how the submitter answered a heartbeat.
    HeartbeatAnswered(JobId, Beat),
    Peers(Vec<PeerInfo>),
}

/// Everything the core task owns.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    pub net: NetHandle,
    pub pool: Pool,
    pub market: Market,
    /// The worker machine: bids, lease book, heartbeats, expiry.
    pub worker: Worker,
    /// The running work tasks, each with its run's token.
    pub running: HashMap<JobId, (u64, AbortHandle)>,
    /// The last run token given out.
    pub work_token: u64,
    /// Reports of finished work, between [`Internal::WorkEnded`] and the worker's
    /// [`worker::Output::SendResult`].
    pub reports: HashMap<JobId, Report>,
    /// The worker machine's timers, earliest first.
    pub timers: BinaryHeap<Reverse<(UnixMillis, Timer)>>,
    /// Requests, gossip, blob reads and acknowledgements in flight.
    pub tasks: Tasks,
    /// Work tasks (one per held lease that is running).
    pub work: Tasks,
    pub events: mpsc::Receiver<NetEvent>,
    pub commands: mpsc::Receiver<Command>,
    pub internal_tx: mpsc::Sender<Internal>,
    pub internal: mpsc::Receiver<Internal>,
    pub persist: mpsc::Sender<Persist>,
    pub stop: mpsc::Receiver<()>,
    pub peer_cache: HashMap<PeerId, (Option<IpAddr>, Option<u32>)>,
    /// The ledger, when the node runs one.
    pub ledger: Option<LedgerRef>,
    /// Heights of applied blocks, from the chain.
    pub blocks: mpsc::Receiver<u64>,
    /// The last height whose events were handled.
    pub ledger_seen: u64,
    /// The settlement machine: escrow locks, settlements, refunds, credit lines.
    pub settlement: Settlement,
    /// The stake set last given to the network (permissioned mode).
    pub authorized: Option<std::collections::HashSet<PeerId>>,
    /// Rewards not gossiped yet, per worker: (action, summed delta, job if only one).
    pub rewards: std::collections::BTreeMap<PeerId, (&'static str, i64, Option<JobId>)>,
    /// Verified results not gossiped yet (at most [`MAX_NOTICES`](agora_types::job::MAX_NOTICES)).
    pub notices: Vec<ResultNotice>,
    /// Beacons so far.
    pub beacons: u64,
    /// Jobs whose records changed since the last flush ([`Core::flush_records`]).
    pub dirty: std::collections::HashSet<JobId>,
    /// When the changed records are written at the latest.
    pub flush_at: Option<UnixMillis>,
    /// Callers waiting for a job to be final ([`Command::WaitFinal`]; at most [`MAX_WAITERS`]).
    pub waiters: HashMap<JobId, Vec<oneshot::Sender<Option<JobRecord>>>>,
}

/// How long a changed job record may wait to be written when no acknowledgement waits for it
/// (see [`Core::persist_record`]).
pub(crate) const RECORD_LINGER_MS: u64 = 20;

/// The most callers waiting for jobs to be final at once.
const MAX_WAITERS: usize = 4096;

/// When the loop must next wake for `at` (now, if it has passed).
async fn sleep_until(at: Option<UnixMillis>) {
    match at {
        Some(at) => {
            let wait = at.saturating_sub(now_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

impl Core {
    pub async fn run(mut self, restored: Vec<JobRecord>) {
        if let Some(ledger) = &self.ledger {
            // Before any job is leased directly: only staked peers may be.
            let stakers = ledger.bidders();
            self.feed(Input::Stakers(stakers));
        }
        let outputs = self.market.restore(restored, now_ms());
        self.apply(outputs);
        self.restore_settlement();
        let mut beacon = tokio::time::interval(self.shared.config.ad_interval);
        beacon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peers_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let wake = sleep_until(self.next_wake());
            tokio::select! {
                _ = self.stop.recv() => {
                    self.shutdown().await;
                    return;
                }
                Some(c) = self.commands.recv() => self.on_command(c),
                Some(i) = self.internal.recv() => self.on_internal(i),
                Some(h) = self.blocks.recv() => self.on_block(h),
                event = self.events.recv() => match event {
                    Some(e) => self.on_net_event(e),
                    None => return,
                },
                () = wake => self.fire_due(),
                () = self.tasks.reap() => {}
                () = self.work.reap() => {}
                _ = beacon.tick() => self.beacon(),
                _ = peers_tick.tick() => self.refresh_peers(),
            }
        }
    }

    /// The earliest deadline of either machine.
    fn next_wake(&self) -> Option<UnixMillis> {
        let worker = self.timers.peek().map(|Reverse((at, _))| *at);
        [self.market.next_deadline(), worker, self.flush_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Fires every due timer: the worker's in time order, then the market's tick.
    fn fire_due(&mut self) {
        let now = now_ms();
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.feed_worker(worker::Input::Timer(timer));
        }
        if self.market.next_deadline().is_some_and(|d| d <= now) {
            let out = self.market.handle(Input::Tick, now);
            self.apply(out);
        }
        if self.flush_at.is_some_and(|d| d <= now) {
            let _ = self.flush_records();
        }
    }

    /// Stops: saves the reputation book, then aborts every task in flight.
    async fn shutdown(&mut self) {
        let _ = self.flush_records();
        if let Ok(bytes) = serde_json::to_vec(self.market.reputation()) {
            let store = self.shared.store.clone();
            let saved =
                tokio::task::spawn_blocking(move || store.put_meta("reputation", &bytes)).await;
            if !matches!(saved, Ok(Ok(()))) {
                warn!("cannot save the reputation book");
            }
        }
        self.work.set.shutdown().await;
        self.tasks.set.shutdown().await;
    }

    fn feed(&mut self, input: Input) {
        let out = self.market.handle(input, now_ms());
        self.apply(out);
    }

    fn sign<T: Serialize + DeserializeOwned + Domain>(&self, payload: T) -> Option<Signed<T>> {
        match Signed::sign(&self.shared.keypair, payload, now_ms()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot sign");
                None
            }
        }
    }

    fn publish(&mut self, message: GossipMessage) {
        let net = self.net.clone();
        self.tasks.spawn(async move {
            if let Err(e) = net.publish(message).await {
                debug!(error = %e, "publish failed");
            }
        });
    }

    /// Carries out the market's decisions.
    fn apply(&mut self, outputs: Vec<Output>) {
        for o in outputs {
            match o {
                Output::Announce(job) => self.announce(job),
                Output::SendLease { worker, lease } => self.send_lease(worker, lease),
                Output::CancelLease { worker, job_id } => self.cancel_lease(worker, job_id),
                Output::LockEscrow {
                    job_id,
                    amount,
                    max_price,
                    redundancy,
                } => self.lock_escrow(job_id, amount, max_price, redundancy),
                Output::Verified {
                    job_id,
                    outcome,
                    workers,
                } => {
                    info!(job = %job_id.short(), workers = workers.len(), "job verified");
                    self.settle(job_id);
                    self.wake_waiters(job_id);
                    self.queue_notice(job_id, outcome.verdict(), workers);
                }
                Output::Failed { job_id, reason } => {
                    info!(job = %job_id.short(), %reason, "job failed");
                    self.settle(job_id);
                    self.wake_waiters(job_id);
                }
                Output::Reputation {
                    peer,
                    action,
                    delta,
                    job_id,
                } => {
                    debug!(%peer, action = action.name(), delta, "reputation");
                    self.report_reputation(peer, action.name(), delta, job_id);
                }
                // Answered in `on_request` (heartbeats); nothing to carry out.
                Output::LeaseExtended { .. } => {}
                Output::Persist(id) => self.persist_record(id),
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Submit(job, reply) => self.submit(job, reply),
            Command::Jobs(reply) => self.jobs(reply),
            Command::Job(id, reply) => {
                let _ = reply.send(self.market.job(&id).cloned());
            }
            Command::WaitFinal(id, reply) => self.wait_final(id, reply),
            Command::Cancel(id, reply) => {
                let known = self.market.job(&id).is_some();
                self.feed(Input::Cancel(id));
                let _ = reply.send(known);
            }
            Command::Reputation(reply) => {
                let _ = reply.send(self.market.reputation().snapshot());
            }
            Command::Offers(reply) => self.offers(reply),
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::LeaseDelivered {
                job_id,
                worker,
                result,
            } => self.lease_delivered(job_id, worker, result),
            Internal::ResultIn {
                from,
                result,
                stderr,
                ack,
            } => self.result_in(from, result, stderr, ack),
            Internal::WorkEnded {
                job_id,
                token,
                result,
            } => self.work_ended(job_id, token, result),
            Internal::HeartbeatAnswered(job_id, answer) => {
                self.feed_worker(worker::Input::HeartbeatAnswered { job_id, answer });
            }
            Internal::Peers(list) => self.set_peers(list),
        }
    }

    fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Gossip { message, .. } => self.on_gossip(message),
            NetEvent::Request {
                peer,
                request,
                reply,
            } => self.on_request(peer, request, reply),
            NetEvent::PeerDisconnected(peer) => self.feed(Input::PeerDisconnected(peer)),
            NetEvent::PeerConnected(_) => {}
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleeping_until_a_past_deadline_is_immediate() {
        let past = now_ms().saturating_sub(1_000);
        tokio::time::timeout(Duration::from_secs(5), sleep_until(Some(past)))
            .await
            .expect("a past deadline wakes at once");
        let never = tokio::time::timeout(Duration::from_millis(50), sleep_until(None)).await;
        assert!(never.is_err(), "no deadline: no wake");
    }
}
