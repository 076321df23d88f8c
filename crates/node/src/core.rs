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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_exec::{ExecError, Limits as ExecLimits, Pool};
use agora_ledger::Event;
use agora_market::worker::{self, Beat, Standing, Timer, Worker};
use agora_market::{Input, JobRecord, Market, Output};
use agora_net::{NetEvent, NetHandle, PeerId, PeerInfo};
use agora_types::job::{
    Health, Heartbeat, JobId, Lease, MAX_NOTICES, MAX_STDERR_BYTES, Outcome, ReputationUpdate,
    ResultNotice, ResultNotices, SignedJob, WorkResult, job_id,
};
use agora_types::ledger::{AccountId, TxKind};
use agora_types::sign::{Domain, Signed};
use agora_types::wire::{GossipMessage, Request, Response, limits};
use agora_types::{Hash, Keypair, UnixMillis, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::blobs;
use crate::ledger::LedgerRef;
use crate::node::Shared;
use crate::store::Store;

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
    /// Escrow transactions of our jobs in flight: job -> (height sent, attempts).
    pub escrow_txs: HashMap<JobId, (u64, u32)>,
    /// The stake set last given to the network (permissioned mode).
    pub authorized: Option<std::collections::HashSet<PeerId>>,
    /// Rewards not gossiped yet, per worker: (action, summed delta, job if only one).
    pub rewards: std::collections::BTreeMap<PeerId, (&'static str, i64, Option<JobId>)>,
    /// Verified results not gossiped yet (at most [`MAX_NOTICES`]).
    pub notices: Vec<ResultNotice>,
    /// Credit-line transactions in flight: worker -> height sent.
    pub credit_txs: HashMap<AccountId, u64>,
    /// Callers waiting for a job to be final ([`Command::WaitFinal`]; at most [`MAX_WAITERS`]).
    pub waiters: HashMap<JobId, Vec<oneshot::Sender<Option<JobRecord>>>>,
}

/// The most callers waiting for jobs to be final at once.
const MAX_WAITERS: usize = 4096;

/// The most workers with rewards waiting for the next beacon; past it they go out at once.
const MAX_PENDING_REWARDS: usize = 1024;

/// Blocks to wait for an escrow transaction before sending it again.
const ESCROW_RETRY_BLOCKS: u64 = 20;
/// The most credit lines opened or topped up per block.
const CREDIT_TXS_PER_BLOCK: usize = 8;
/// Settlements tried before falling back to a refund.
const SETTLE_ATTEMPTS: u32 = 3;

/// The most requests, gossip publications and other short tasks in flight at once; past it a new
/// one is dropped (with a warning) rather than queued without bound.
pub(crate) const MAX_TASKS: usize = 4096;

/// A capped set of tasks: each is tracked, reaped by the core loop, and aborted when the set is
/// shut down or dropped, so nothing the core starts outlives it.
pub(crate) struct Tasks {
    set: JoinSet<()>,
    cap: usize,
    what: &'static str,
}

impl Tasks {
    pub fn new(cap: usize, what: &'static str) -> Self {
        Tasks {
            set: JoinSet::new(),
            cap: cap.max(1),
            what,
        }
    }

    /// Starts `f`, unless `cap` tasks are in flight already.
    fn spawn<F: Future<Output = ()> + Send + 'static>(&mut self, f: F) -> Option<AbortHandle> {
        if self.set.len() >= self.cap {
            warn!(
                tasks = self.what,
                cap = self.cap,
                "too many tasks in flight; dropping a new one"
            );
            return None;
        }
        Some(self.set.spawn(f))
    }

    /// Waits for the next task to end (pending while there is none).
    async fn reap(&mut self) {
        match self.set.join_next().await {
            Some(Err(e)) if e.is_panic() => warn!(tasks = self.what, error = %e, "a task panicked"),
            Some(_) => {}
            None => std::future::pending().await,
        }
    }
}

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
                _ = beacon.tick() => {
                    self.beacon();
                    self.save_reputation();
                }
                _ = peers_tick.tick() => self.refresh_peers(),
            }
        }
    }

    /// The earliest deadline of either machine.
    fn next_wake(&self) -> Option<UnixMillis> {
        let worker = self.timers.peek().map(|Reverse((at, _))| *at);
        match (self.market.next_deadline(), worker) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
    }

    /// Stops: saves the reputation book, then aborts every task in flight.
    async fn shutdown(&mut self) {
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
                Output::Announce(job) => {
                    let id = job_id(&job);
                    let attempt = self
                        .market
                        .job(&id)
                        .map_or(1, |r| r.announce_attempts.max(1));
                    debug!(job = %id.short(), attempt, "announcing job");
                    self.publish(GossipMessage::Job { job, attempt });
                }
                Output::SendLease { worker, lease } => {
                    let job_id = job_id(&lease.job);
                    let net = self.net.clone();
                    let tx = self.internal_tx.clone();
                    self.tasks.spawn(async move {
                        let result = match net.request(worker, Request::Lease(lease)).await {
                            Ok(Response::Ack) => Delivery::Accepted,
                            Ok(Response::Busy) => Delivery::Busy,
                            Ok(Response::Refused(r)) => Delivery::Refused(r),
                            Ok(other) => Delivery::Refused(format!("unexpected answer {other:?}")),
                            // We could not reach it: not the worker's fault (it may be us).
                            Err(e) => {
                                debug!(%worker, error = %e, "lease not delivered");
                                Delivery::Busy
                            }
                        };
                        let _ = tx
                            .send(Internal::LeaseDelivered {
                                job_id,
                                worker,
                                result,
                            })
                            .await;
                    });
                }
                Output::CancelLease { worker, job_id } => {
                    let net = self.net.clone();
                    self.tasks.spawn(async move {
                        let _ = net.request(worker, Request::Cancel(job_id)).await;
                    });
                }
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
                    self.notices.push(ResultNotice {
                        job_id,
                        verdict: outcome.verdict(),
                        workers,
                    });
                    if self.notices.len() >= MAX_NOTICES {
                        self.flush_notices();
                    }
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
                Output::Persist(id) => {
                    let bytes = self
                        .market
                        .job(&id)
                        .and_then(|r| serde_json::to_vec(r).ok());
                    if self.persist.try_send(Persist::Write(id, bytes)).is_err() {
                        warn!(job = %id.short(), "persistence queue full; record will be written on its next change");
                    }
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Submit(job, reply) => {
                let id = job_id(&job);
                info!(job = %id.short(), "job submitted");
                self.feed(Input::Submit(*job));
                // Acknowledge only once the record is on disk.
                self.after_commit(move || {
                    let _ = reply.send(id);
                });
            }
            Command::Jobs(reply) => {
                let mut all: Vec<JobRecord> = self.market.jobs().cloned().collect();
                all.sort_by_key(|r| std::cmp::Reverse(r.created_ms));
                let _ = reply.send(all);
            }
            Command::Job(id, reply) => {
                let _ = reply.send(self.market.job(&id).cloned());
            }
            Command::WaitFinal(id, reply) => match self.market.job(&id) {
                Some(r) if !r.state.is_final() => {
                    let waiting = self.waiters.values().map(Vec::len).sum::<usize>();
                    if waiting < MAX_WAITERS {
                        self.waiters.entry(id).or_default().push(reply);
                    } else {
                        // Too many waiting: the caller sees the pending record and asks again.
                        let _ = reply.send(Some(r.clone()));
                    }
                }
                other => {
                    let _ = reply.send(other.cloned());
                }
            },
            Command::Cancel(id, reply) => {
                let known = self.market.job(&id).is_some();
                self.feed(Input::Cancel(id));
                let _ = reply.send(known);
            }
            Command::Reputation(reply) => {
                let _ = reply.send(self.market.reputation().snapshot());
            }
            Command::Offers(reply) => {
                let (now, ttl) = (now_ms(), self.market.config().ad_ttl_ms);
                let fresh = self.market.index().iter();
                let fresh = fresh.filter(|(_, e)| now.saturating_sub(e.updated_ms) <= ttl);
                let _ = reply.send(fresh.map(|(p, e)| (*p, e.clone())).collect());
            }
        }
    }

    fn on_internal(&mut self, i: Internal) {
        match i {
            Internal::LeaseDelivered {
                job_id,
                worker,
                result,
            } => match result {
                Delivery::Accepted => self.feed(Input::LeaseAccepted { job_id, worker }),
                Delivery::Busy => self.feed(Input::LeaseBusy { job_id, worker }),
                Delivery::Refused(reason) => self.feed(Input::LeaseRefused {
                    job_id,
                    worker,
                    reason,
                }),
            },
            Internal::ResultIn {
                from,
                result,
                stderr,
                ack,
            } => {
                self.feed(Input::Result {
                    from,
                    result: result.payload.clone(),
                    signed: Some(result),
                    stderr,
                });
                // The worker may forget its result once acknowledged: commit first.
                self.after_commit(move || {
                    let _ = ack.send(Response::Ack);
                });
            }
            Internal::WorkEnded {
                job_id,
                token,
                result,
            } => {
                if self.running.get(&job_id).map(|(t, _)| *t) != Some(token) {
                    return; // a stopped run's late report
                }
                self.running.remove(&job_id);
                match result {
                    Ok(report) => {
                        self.reports.insert(job_id, report);
                        self.feed_worker(worker::Input::Executed(job_id));
                        self.reports.remove(&job_id);
                    }
                    Err(reason) => {
                        warn!(job = %job_id.short(), %reason, "giving the lease back");
                        self.feed_worker(worker::Input::GaveUp { job_id, reason });
                    }
                }
            }
            Internal::HeartbeatAnswered(job_id, answer) => {
                self.feed_worker(worker::Input::HeartbeatAnswered { job_id, answer });
            }
            Internal::Peers(list) => {
                self.peer_cache = list
                    .into_iter()
                    .map(|p| (p.peer_id, (p.ip(), p.rtt_ms.map(|r| r.ceil() as u32))))
                    .collect();
            }
        }
    }

    /// Runs `then` once every record write queued so far is committed. If the queue is full,
    /// `then` is dropped, and so the caller's oneshot: the submitter or worker sees a failure and
    /// retries, rather than an acknowledgement of something not yet durable.
    fn after_commit(&mut self, then: impl FnOnce() + Send + 'static) {
        let (tx, rx) = oneshot::channel();
        if self.persist.try_send(Persist::Barrier(tx)).is_err() {
            warn!("persistence queue full; not acknowledging");
            return;
        }
        self.tasks.spawn(async move {
            if rx.await.is_ok() {
                then();
            }
        });
    }

    /// Answers everyone waiting for `job_id` to be final.
    fn wake_waiters(&mut self, job_id: JobId) {
        if let Some(waiting) = self.waiters.remove(&job_id) {
            let rec = self.market.job(&job_id).cloned();
            for w in waiting {
                let _ = w.send(rec.clone());
            }
        }
    }

    /// Gossips a reputation change. A penalty goes out at once; rewards are summed per worker
    /// and go out with the next beacon, one signed report per worker (every report costs each
    /// node a signature check, and a busy worker earns one per job).
    fn report_reputation(
        &mut self,
        subject: PeerId,
        action: &'static str,
        delta: i64,
        job_id: Option<JobId>,
    ) {
        if delta < 0 {
            self.publish_reputation(subject, action, delta, job_id);
            return;
        }
        if self.rewards.len() >= MAX_PENDING_REWARDS && !self.rewards.contains_key(&subject) {
            self.flush_rewards();
        }
        let e = self.rewards.entry(subject).or_insert((action, 0, job_id));
        if e.0 != action {
            e.0 = "rewards";
        }
        if e.2 != job_id {
            e.2 = None;
        }
        e.1 = e.1.saturating_add(delta);
    }

    fn publish_reputation(
        &mut self,
        subject: PeerId,
        action: &str,
        delta: i64,
        job_id: Option<JobId>,
    ) {
        if let Some(u) = self.sign(ReputationUpdate {
            subject,
            action: action.to_string(),
            delta,
            job_id,
        }) {
            self.publish(GossipMessage::Reputation(u));
        }
    }

    /// Gossips the results verified since the last beacon, in one signed batch.
    fn flush_notices(&mut self) {
        if self.notices.is_empty() {
            return;
        }
        let notices = std::mem::take(&mut self.notices);
        if let Some(n) = self.sign(ResultNotices { notices }) {
            self.publish(GossipMessage::Result(n));
        }
    }

    /// Gossips the summed rewards (see [`Core::report_reputation`]).
    fn flush_rewards(&mut self) {
        for (subject, (action, delta, job_id)) in std::mem::take(&mut self.rewards) {
            self.publish_reputation(subject, action, delta, job_id);
        }
    }

    /// Saves the reputation book (it is restored at start).
    fn save_reputation(&self) {
        let Ok(bytes) = serde_json::to_vec(self.market.reputation()) else {
            return;
        };
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.put_meta("reputation", &bytes) {
                warn!(error = %e, "cannot save the reputation book");
            }
        });
    }

    fn refresh_peers(&mut self) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            if let Ok(list) = net.peers().await {
                let _ = tx.send(Internal::Peers(list)).await;
            }
        });
    }

    fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Gossip {
                message, source, ..
            } => self.on_gossip(message, source),
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

    fn on_gossip(&mut self, message: GossipMessage, source: Option<PeerId>) {
        let local = self.net.local_peer_id();
        match message {
            GossipMessage::Job { job, attempt } => self.consider_bid(job, attempt),
            GossipMessage::Capability(ad) => {
                let Ok(from) = ad.signer_peer() else { return };
                if from == local || source.is_some_and(|s| s != from) {
                    return;
                }
                let ip = self.peer_cache.get(&from).and_then(|(ip, _)| *ip);
                self.feed(Input::CapabilityAd {
                    from,
                    ad: ad.payload,
                    ip,
                });
            }
            GossipMessage::Reputation(u) => {
                let Ok(reporter) = u.signer_peer() else {
                    return;
                };
                if reporter != local {
                    self.feed(Input::RemoteReputation {
                        reporter,
                        subject: u.payload.subject,
                        delta: u.payload.delta,
                    });
                }
            }
            GossipMessage::Tx(tx) => {
                // The network task verified the signature before delivering it (gossip
                // validation); only the ledger's stateful checks remain, under the lock.
                if let Some(ledger) = &self.ledger {
                    let mut st = ledger.lock();
                    let st = &mut *st;
                    if let Err(e) = st.mempool.insert_verified(tx, &st.ledger) {
                        debug!(error = %e, "transaction not taken into the mempool");
                    }
                }
            }
            GossipMessage::Result(_) | GossipMessage::Health(_) | GossipMessage::Text(_) => {}
        }
    }

    /// What the ledger says of a job we may work on, when the node runs one.
    fn standing(&self, job: &SignedJob) -> Option<Standing> {
        let submitter = AccountId(job.signer);
        self.ledger.as_ref().map(|ledger| {
            let st = ledger.lock();
            let credit = st
                .ledger
                .credit_line(&submitter, &ledger.local)
                .filter(|c| c.closing_after_ms.is_none())
                .map_or(0, |c| c.amount);
            Standing {
                staked: st.ledger.can_bid(&ledger.local),
                escrowed: st.ledger.escrow(&job_id(job)).is_some(),
                credit,
            }
        })
    }

    fn consider_bid(&mut self, job: SignedJob, attempt: u32) {
        let standing = self.standing(&job);
        self.feed_worker(worker::Input::Announce {
            job,
            attempt,
            standing,
        });
    }

    /// Feeds the worker machine and carries out its outputs; returns its answer to a lease.
    fn feed_worker(&mut self, input: worker::Input) -> Option<worker::Answer> {
        let out = self.worker.handle(input, now_ms());
        let mut answer = None;
        for o in out {
            match o {
                worker::Output::SendBid { submitter, bid } => {
                    let Some(signed) = self.sign(bid) else {
                        continue;
                    };
                    let net = self.net.clone();
                    self.tasks.spawn(async move {
                        if let Err(e) = net.request(submitter, Request::Bid(signed)).await {
                            debug!(error = %e, "bid not delivered");
                        }
                    });
                }
                worker::Output::Declined { job_id, why } => {
                    debug!(job = %job_id.short(), %why, "not bidding");
                }
                worker::Output::Answer { answer: a, .. } => answer = Some(a),
                worker::Output::Start {
                    job_id,
                    submitter,
                    lease,
                } => self.start_work(job_id, submitter, lease),
                worker::Output::SendHeartbeat { submitter, job_id } => {
                    self.send_heartbeat(submitter, job_id);
                }
                worker::Output::Stop { job_id, reason } => {
                    warn!(job = %job_id.short(), %reason, "stopping the work");
                    if let Some((_, task)) = self.running.remove(&job_id) {
                        task.abort();
                    }
                }
                worker::Output::SendResult {
                    submitter,
                    job_id,
                    price,
                } => match self.reports.remove(&job_id) {
                    Some(report) => self.send_result(submitter, job_id, report, price),
                    None => warn!(job = %job_id.short(), "no report to send"),
                },
                worker::Output::GiveBack { submitter, job_id } => {
                    let net = self.net.clone();
                    self.tasks.spawn(async move {
                        let _ = net.request(submitter, Request::Cancel(job_id)).await;
                    });
                }
                worker::Output::SetTimer { at, timer } => self.timers.push(Reverse((at, timer))),
            }
        }
        answer
    }

    /// Runs a lease's work in the work set; its end comes back as [`Internal::WorkEnded`].
    fn start_work(&mut self, job_id: JobId, submitter: PeerId, lease: Box<Lease>) {
        self.work_token += 1;
        let token = self.work_token;
        let work = Work {
            net: self.net.clone(),
            store: self.shared.store.clone(),
            pool: self.pool.clone(),
            keypair: self.shared.keypair.clone(),
            byzantine: self.shared.config.byzantine,
        };
        let guard = WorkGuard {
            job_id,
            token,
            tx: self.internal_tx.clone(),
            reported: false,
        };
        match self.work.spawn(work.run(submitter, lease, guard)) {
            Some(task) => {
                self.running.insert(job_id, (token, task));
            }
            None => {
                let reason = "too much work in flight".to_string();
                self.feed_worker(worker::Input::GaveUp { job_id, reason });
            }
        }
    }

    /// Signs a heartbeat and sends it; its answer comes back as [`Internal::HeartbeatAnswered`].
    fn send_heartbeat(&mut self, submitter: PeerId, job_id: JobId) {
        let beat = Heartbeat {
            job_id,
            stage: "working".into(),
        };
        let Some(signed) = self.sign(beat) else {
            return;
        };
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        let wait = Duration::from_millis(self.worker.settings().heartbeat_ms.saturating_mul(2));
        self.tasks.spawn(async move {
            let answer =
                tokio::time::timeout(wait, net.request(submitter, Request::Heartbeat(signed)))
                    .await;
            let beat = match answer {
                Ok(Ok(Response::Ack)) => Beat::Extended,
                Ok(Ok(Response::Refused(why))) => Beat::Refused(why),
                _ => {
                    debug!(job = %job_id.short(), "heartbeat not answered");
                    Beat::Unanswered
                }
            };
            let _ = tx.send(Internal::HeartbeatAnswered(job_id, beat)).await;
        });
    }

    /// Signs a result and delivers it, retrying a few times (each bounded): the submitter may be
    /// briefly unreachable.
    fn send_result(&mut self, submitter: PeerId, job_id: JobId, report: Report, price: u64) {
        let (outcome, output, stderr) = report;
        let result = WorkResult {
            job_id,
            outcome,
            price,
        };
        let Some(signed) = self.sign(result) else {
            return;
        };
        let net = self.net.clone();
        self.tasks.spawn(async move {
            for attempt in 0..4u32 {
                let sent = tokio::time::timeout(
                    Duration::from_secs(3),
                    net.request(
                        submitter,
                        Request::Result {
                            result: signed.clone(),
                            output: output.clone(),
                            stderr: stderr.clone(),
                        },
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(Response::Ack)) => return,
                    Ok(Ok(Response::Refused(why))) => {
                        debug!(job = %job_id.short(), %why, "result refused");
                        return;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
                }
            }
            warn!(job = %job_id.short(), "could not deliver a result to the submitter");
        });
    }

    fn on_request(&mut self, peer: PeerId, request: Request, reply: oneshot::Sender<Response>) {
        let response = match request {
            Request::Echo(b) => Response::Echo(b),
            Request::Bid(signed) => match signed.verify().and_then(|_| signed.signer_peer()) {
                Ok(signer) if signer == peer && !self.may_bid(&peer) => Response::Refused(
                    "a bidder needs the ledger's minimum stake (`agora wallet stake`)".into(),
                ),
                Ok(signer) if signer == peer => {
                    let (ip, rtt_ms) = self.peer_cache.get(&peer).copied().unwrap_or_default();
                    self.feed(Input::Bid {
                        from: peer,
                        bid: signed.payload,
                        rtt_ms,
                        ip,
                    });
                    Response::Ack
                }
                Ok(_) => Response::Refused("a bid must be signed by the peer that sends it".into()),
                Err(e) => Response::Refused(format!("bad bid: {e}")),
            },
            Request::Lease(lease) => self.on_lease(peer, lease),
            Request::Result {
                result,
                output,
                mut stderr,
            } => {
                stderr.truncate(MAX_STDERR_BYTES);
                self.on_result(peer, result, output, stderr, reply);
                return;
            }
            Request::Heartbeat(signed) => self.on_heartbeat(peer, &signed),
            Request::Cancel(id) => {
                // From the worker: it gives the lease back. From the submitter: it withdraws it.
                if self.market.job(&id).is_some() {
                    // Giving a lease back (pool full, blobs unreachable) is not a fault; the
                    // worker must bid again to be leased again.
                    self.feed(Input::LeaseBusy {
                        job_id: id,
                        worker: peer,
                    });
                } else {
                    self.feed_worker(worker::Input::Withdrawn {
                        from: peer,
                        job_id: id,
                    });
                }
                Response::Ack
            }
            Request::GetBlob { hash, offset, len } => {
                let store = self.shared.store.clone();
                // Dropped when too many are in flight: the reply closes and the peer retries.
                self.tasks.spawn(async move {
                    let len = len.min(limits::BLOB_CHUNK_BYTES);
                    let r = tokio::task::spawn_blocking(move || {
                        store.read_blob_range(&hash, offset, len)
                    })
                    .await;
                    let response = match r {
                        Ok(Ok(Some((total, data)))) => Response::Blob { total, data },
                        _ => Response::NotFound,
                    };
                    let _ = reply.send(response);
                });
                return;
            }
        };
        let _ = reply.send(response);
    }

    /// A worker says it is still working on one of our jobs: extend its lease, or tell it to
    /// stop when it holds none.
    fn on_heartbeat(&mut self, peer: PeerId, signed: &Signed<Heartbeat>) -> Response {
        match signed.verify().and_then(|_| signed.signer_peer()) {
            Ok(s) if s == peer => {}
            Ok(_) => {
                return Response::Refused(
                    "a heartbeat must be signed by the worker that sends it".into(),
                );
            }
            Err(e) => return Response::Refused(format!("bad heartbeat: {e}")),
        }
        let job_id = signed.payload.job_id;
        let out = self.market.handle(
            Input::Heartbeat {
                job_id,
                worker: peer,
            },
            now_ms(),
        );
        let extended = out
            .iter()
            .any(|o| matches!(o, Output::LeaseExtended { worker, .. } if *worker == peer));
        self.apply(out);
        if extended {
            Response::Ack
        } else {
            Response::Refused("you hold no active lease on this job: stop working on it".into())
        }
    }

    fn on_lease(&mut self, peer: PeerId, lease: Lease) -> Response {
        if let Err(e) = lease.job.verify() {
            return Response::Refused(format!("bad job signature: {e}"));
        }
        let standing = self.standing(&lease.job);
        match self.feed_worker(worker::Input::Lease {
            from: peer,
            lease,
            standing,
        }) {
            Some(worker::Answer::Accepted) => Response::Ack,
            Some(worker::Answer::Busy) => Response::Busy,
            Some(worker::Answer::Refused(why)) => Response::Refused(why),
            None => Response::Refused("the lease was not considered".into()),
        }
    }

    fn on_result(
        &mut self,
        peer: PeerId,
        signed: Signed<WorkResult>,
        output: Vec<u8>,
        stderr: Vec<u8>,
        reply: oneshot::Sender<Response>,
    ) {
        let refuse = |reply: oneshot::Sender<Response>, why: String| {
            let _ = reply.send(Response::Refused(why));
        };
        match signed.verify().and_then(|_| signed.signer_peer()) {
            Ok(s) if s == peer => {}
            Ok(_) => return refuse(reply, "a result must be signed by its worker".into()),
            Err(e) => return refuse(reply, format!("bad result signature: {e}")),
        }
        if !signed.payload.output_matches(&output) {
            return refuse(reply, "the output does not match its hash".into());
        }
        if self.market.job(&signed.payload.job_id).is_none() {
            return refuse(reply, "no such job here".into());
        }
        // Keep the output (content-addressed) before the market sees the result, so that a
        // verified job's output is on disk by the time anyone asks for it.
        let result = signed;
        let store = self.shared.store.clone();
        let tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            if !output.is_empty() {
                let stored = tokio::task::spawn_blocking(move || store.put_blob(&output)).await;
                if !matches!(stored, Ok(Ok(_))) {
                    let _ = reply.send(Response::Refused("cannot store the output".into()));
                    return;
                }
            }
            let _ = tx
                .send(Internal::ResultIn {
                    from: peer,
                    result,
                    stderr,
                    ack: reply,
                })
                .await;
        });
    }

    fn beacon(&mut self) {
        self.flush_rewards();
        self.flush_notices();
        let running = (self.pool.slots() - self.pool.free_slots()) as u32;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        let mut ad = self
            .worker
            .capability_ad("wasmtime-48", cores, agora_types::VERSION);
        // The sequence number is the ad's time, so that it keeps increasing across a restart:
        // peers ignore an ad no newer than the one they hold, and the new limits must count.
        ad.seq = ad.seq.max(now_ms());
        if let Some(s) = self.sign(ad) {
            self.publish(GossipMessage::Capability(s));
        }
        let health = Health {
            uptime_s: self.shared.started.elapsed().as_secs(),
            connected_peers: self.peer_cache.len() as u32,
            running_jobs: running,
        };
        if let Some(s) = self.sign(health) {
            self.publish(GossipMessage::Health(s));
        }
        if self.worker.ads_made() == 1 {
            let net = self.net.clone();
            let caps = self.worker.settings().offer.capabilities.clone();
            self.tasks.spawn(async move {
                for c in caps {
                    let _ = net
                        .provide(format!("agora/capability/{c}").into_bytes())
                        .await;
                }
            });
        }
    }

    /// Whether `peer` may bid: always without a ledger; with one, if it holds the minimum stake.
    fn may_bid(&self, peer: &PeerId) -> bool {
        let Some(ledger) = &self.ledger else {
            return true;
        };
        AccountId::from_peer_id(peer).is_some_and(|a| ledger.lock().ledger.can_bid(&a))
    }

    /// Signs and gossips one of our own ledger transactions.
    fn send_tx(&mut self, kind: TxKind) -> bool {
        let Some(ledger) = &self.ledger else {
            return false;
        };
        let name = kind.name();
        match ledger.sign_own(kind) {
            Ok(tx) => {
                debug!(
                    kind = name,
                    nonce = tx.payload.nonce,
                    "sending a ledger transaction"
                );
                self.publish(GossipMessage::Tx(tx));
                true
            }
            Err(e) => {
                warn!(kind = name, error = %e, "cannot send a ledger transaction");
                false
            }
        }
    }

    fn lock_escrow(&mut self, job_id: JobId, amount: u64, max_price: u64, redundancy: u8) {
        let Some(ledger) = self.ledger.clone() else {
            // No ledger: nothing to lock.
            self.feed(Input::EscrowLocked(job_id));
            return;
        };
        let (locked, height) = {
            let st = ledger.lock();
            let locked = st
                .ledger
                .escrow(&job_id)
                .is_some_and(|e| e.owner == ledger.local);
            (locked, st.ledger.height())
        };
        if locked {
            self.escrow_txs.remove(&job_id);
            self.feed(Input::EscrowLocked(job_id));
            return;
        }
        if let Some((sent, _)) = self.escrow_txs.get(&job_id)
            && height < sent + ESCROW_RETRY_BLOCKS
        {
            return;
        }
        let attempts = self.escrow_txs.get(&job_id).map_or(0, |(_, a)| *a);
        let sent = self.send_tx(TxKind::EscrowLock {
            job_id,
            amount,
            max_price,
            redundancy,
        });
        if sent {
            self.escrow_txs.insert(job_id, (height, attempts + 1));
        } else {
            warn!(job = %job_id.short(), "cannot lock the escrow; cancelling the job");
            self.feed(Input::Cancel(job_id));
        }
    }

    /// Pays a finished job's quorum and slashes its minority, or takes the escrow back when there
    /// is no quorum to pay and the refund height has passed. Retried from [`Core::on_block`]
    /// until the escrow is closed.
    fn settle(&mut self, job_id: JobId) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        if self
            .market
            .job(&job_id)
            .is_some_and(|r| r.job.payload.credit)
        {
            self.settle_credit(&ledger, job_id);
            return;
        }
        let (escrow, height) = {
            let st = ledger.lock();
            (st.ledger.escrow(&job_id).cloned(), st.ledger.height())
        };
        let Some(escrow) = escrow else {
            self.escrow_txs.remove(&job_id);
            return;
        };
        if escrow.owner != ledger.local {
            return;
        }
        let (sent, attempts) = self.escrow_txs.get(&job_id).copied().unwrap_or((0, 0));
        if attempts > 0 && height < sent + ESCROW_RETRY_BLOCKS {
            return;
        }
        let evidence = self.market.job(&job_id).and_then(|rec| {
            rec.outcome.as_ref()?;
            Some(rec.evidence())
        });
        let kind = match evidence {
            Some((quorum, minority)) if !quorum.is_empty() && attempts < SETTLE_ATTEMPTS => {
                info!(job = %job_id.short(), paid = quorum.len(), slashed = minority.len(), "settling");
                TxKind::Settle {
                    job_id,
                    quorum,
                    minority,
                }
            }
            // A quorum to pay whose settlement keeps failing: wait for the refund height.
            Some((quorum, _)) if !quorum.is_empty() && height < escrow.refund_height => return,
            // Nothing to pay (cancelled, deadline, no quorum, a machine-dependent limit): the
            // escrow returns at once.
            _ => {
                info!(job = %job_id.short(), "refunding the escrow");
                TxKind::Refund { job_id }
            }
        };
        if self.send_tx(kind) {
            self.escrow_txs.insert(job_id, (height, attempts + 1));
        }
    }

    /// Pays a verified credit job's quorum from our credit lines (nothing was locked for it, so
    /// a job without a quorum to pay needs nothing). Retried from [`Core::on_block`] until the
    /// ledger has closed the job.
    fn settle_credit(&mut self, ledger: &LedgerRef, job_id: JobId) {
        let (closed, height) = {
            let st = ledger.lock();
            (st.ledger.is_closed(&job_id), st.ledger.height())
        };
        if closed {
            self.escrow_txs.remove(&job_id);
            return;
        }
        let (sent, attempts) = self.escrow_txs.get(&job_id).copied().unwrap_or((0, 0));
        if attempts >= SETTLE_ATTEMPTS || (attempts > 0 && height < sent + ESCROW_RETRY_BLOCKS) {
            return;
        }
        let Some(rec) = self.market.job(&job_id) else {
            return;
        };
        let (quorum, minority) = rec.evidence();
        if rec.outcome.is_none() || quorum.is_empty() {
            return;
        }
        let job = Box::new(rec.job.clone());
        info!(job = %job_id.short(), paid = quorum.len(), slashed = minority.len(), "settling from credit lines");
        if self.send_tx(TxKind::SettleCredit {
            job,
            quorum,
            minority,
        }) {
            self.escrow_txs.insert(job_id, (height, attempts + 1));
        }
    }

    /// With `credit_per_worker` set: opens (or tops up, once half spent) a credit line to each
    /// staked worker in the capability index, a few per block, while the balance allows.
    fn open_credit_lines(&mut self, ledger: &LedgerRef) {
        let per = self
            .shared
            .config
            .ledger
            .as_ref()
            .map_or(0, |l| l.credit_per_worker);
        if per == 0 {
            return;
        }
        let local = self.net.local_peer_id();
        let now = now_ms();
        let ttl = self.market.config().ad_ttl_ms;
        let (mut balance, height, wanted) = {
            let st = ledger.lock();
            let balance = st.ledger.account(&ledger.local).map_or(0, |a| a.balance);
            let mut wanted = Vec::new();
            for (peer, e) in self.market.index().iter() {
                if *peer == local || now.saturating_sub(e.updated_ms) > ttl {
                    continue;
                }
                let Some(worker) = AccountId::from_peer_id(peer) else {
                    continue;
                };
                if !st.ledger.can_bid(&worker) {
                    continue;
                }
                let have = st.ledger.credit_line(&ledger.local, &worker);
                if have.is_some_and(|c| c.closing_after_ms.is_some()) {
                    continue;
                }
                let amount = have.map_or(0, |c| c.amount);
                if amount < per / 2 {
                    wanted.push((worker, per - amount));
                }
            }
            (balance, st.ledger.height(), wanted)
        };
        let mut sent = 0;
        for (worker, top_up) in wanted {
            if sent >= CREDIT_TXS_PER_BLOCK || balance < top_up {
                break;
            }
            if self
                .credit_txs
                .get(&worker)
                .is_some_and(|h| height < h + ESCROW_RETRY_BLOCKS)
            {
                continue;
            }
            if self.send_tx(TxKind::CreditOpen {
                worker,
                amount: top_up,
            }) {
                self.credit_txs.insert(worker, height);
                balance -= top_up;
                sent += 1;
            }
        }
    }

    /// A block was applied: act on its events, then bring our jobs' escrows in line with the
    /// ledger (locks that landed, settlements still owed, transactions to gossip again).
    fn on_block(&mut self, _height: u64) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        let (events, height) = {
            let st = ledger.lock();
            let events: Vec<Event> = st
                .receipts
                .iter()
                .filter(|r| r.height > self.ledger_seen)
                .flat_map(|r| r.events.iter().map(|(_, e)| e.clone()))
                .collect();
            (events, st.ledger.height())
        };
        self.ledger_seen = height;
        let stakers = ledger.bidders();
        self.feed(Input::Stakers(stakers));
        let lines: std::collections::HashSet<PeerId> = {
            let st = ledger.lock();
            st.ledger
                .credits_of(&ledger.local)
                .filter(|(_, c)| c.closing_after_ms.is_none() && c.amount > 0)
                .filter_map(|(w, _)| w.peer_id().ok())
                .collect()
        };
        self.feed(Input::CreditLines(lines));
        for e in events {
            // A settled credit job no longer counts against its line for us as a worker.
            if let Event::Paid { job_id, .. }
            | Event::CreditShort { job_id, .. }
            | Event::Slashed {
                job_id: Some(job_id),
                ..
            } = &e
                && self.worker.is_owed(job_id)
            {
                self.feed_worker(worker::Input::Settled(*job_id));
            }
            if let Event::CreditOpened { worker, .. } = &e {
                self.credit_txs.remove(worker);
            }
            match e {
                Event::EscrowLocked { job_id, owner, .. } if owner == ledger.local => {
                    self.escrow_txs.remove(&job_id);
                    self.feed(Input::EscrowLocked(job_id));
                }
                Event::Slashed {
                    offender,
                    offence,
                    amount,
                    ..
                } => {
                    if let Ok(peer) = offender.peer_id() {
                        info!(%peer, %offence, amount, "slashed on the ledger");
                        self.market
                            .reputation_mut()
                            .penalize(peer, offence.reputation_delta());
                    }
                }
                _ => {}
            }
        }
        // Jobs whose escrow landed while we were not looking (a restart), and finished jobs
        // whose escrow is still open.
        let mut waiting = Vec::new();
        let mut unsettled = Vec::new();
        {
            let st = ledger.lock();
            for rec in self.market.jobs() {
                if rec.state == agora_market::JobState::AwaitingEscrow {
                    if st.ledger.escrow(&rec.id).is_some() {
                        waiting.push(rec.id);
                    }
                } else if (rec.state.is_final() && st.ledger.escrow(&rec.id).is_some())
                    || (rec.job.payload.credit
                        && rec.state == agora_market::JobState::Verified
                        && !st.ledger.is_closed(&rec.id))
                {
                    unsettled.push(rec.id);
                }
            }
            for (id, e) in st.ledger.escrows() {
                if e.owner == ledger.local && self.market.job(id).is_none() {
                    unsettled.push(*id);
                }
            }
        }
        for id in waiting {
            self.escrow_txs.remove(&id);
            self.feed(Input::EscrowLocked(id));
        }
        for id in unsettled {
            self.settle(id);
        }
        let retry: Vec<(JobId, u64, u8)> = self
            .market
            .jobs()
            .filter(|r| r.state == agora_market::JobState::AwaitingEscrow)
            .map(|r| (r.id, r.job.payload.max_price, r.job.payload.redundancy))
            .collect();
        for (id, max_price, redundancy) in retry {
            let amount = self.market.config().escrow_for(max_price, redundancy);
            self.lock_escrow(id, amount, max_price, redundancy);
        }
        self.open_credit_lines(&ledger);
        if height % 10 == 0 {
            for tx in ledger.resign_pending() {
                self.publish(GossipMessage::Tx(tx));
            }
        }
        if self.shared.config.net.authorization == agora_net::Authorization::Permissioned {
            self.authorize_stake_set(&ledger);
        }
    }

    /// In permissioned mode, the peers allowed to connect are the accounts with stake (workers
    /// and validators), besides the configured allow list; the network drops the others at once.
    fn authorize_stake_set(&mut self, ledger: &LedgerRef) {
        let set = ledger.stake_set();
        if self.authorized.as_ref() == Some(&set) {
            return;
        }
        self.authorized = Some(set.clone());
        let net = self.net.clone();
        self.tasks.spawn(async move {
            if let Err(e) = net.set_authorized(set).await {
                warn!(error = %e, "cannot update the authorized peers");
            }
        });
    }
}

/// One execution on this node as a worker.
struct Work {
    net: NetHandle,
    store: Store,
    pool: Pool,
    keypair: Keypair,
    byzantine: bool,
}

/// Reports a work task's end to the core, however it ends: if the task is aborted or panics
/// before it reported, its drop tells the core the work was given up, so the lease-book slot is
/// freed (and if even that message cannot be queued, the lease's expiry timer frees it).
struct WorkGuard {
    job_id: JobId,
    token: u64,
    tx: mpsc::Sender<Internal>,
    reported: bool,
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

fn failure(e: &ExecError) -> Outcome {
    let kind = match e {
        ExecError::FuelExhausted => "fuel",
        ExecError::MemoryLimit { .. } => "memory",
        ExecError::WallTime(_) => "wall_time",
        ExecError::CompileTime(_) => "compile_time",
        ExecError::OutputTooLarge { .. } => "output",
        ExecError::InvalidModule(_) => "invalid_module",
        ExecError::Trap(_) => "trap",
        _ => "internal",
    };
    Outcome::Failed {
        kind: kind.into(),
        detail: e.to_string(),
    }
}

impl Work {
    /// Fetches, runs, and reports through `guard`. Heartbeats are the worker machine's timers,
    /// sent by the core meanwhile: fetching, waiting for a slot, compiling and running all count
    /// as progress, so a slow but alive worker keeps its lease.
    async fn run(self, submitter: PeerId, lease: Box<Lease>, guard: WorkGuard) {
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
                    },
                    output,
                    stderr,
                ))
            }
            Err(ExecError::Busy) => Err("the executor pool is full".into()),
            Err(ExecError::Internal(e)) => Err(format!("sandbox failure: {e}")),
            Err(e) => Ok((failure(&e), vec![], vec![])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_task_set_is_capped_and_aborts_on_shutdown() {
        let mut tasks = Tasks::new(2, "test");
        let (tx, mut rx) = mpsc::channel::<()>(1);
        for _ in 0..2 {
            let tx = tx.clone();
            let started = tasks.spawn(async move {
                std::future::pending::<()>().await;
                drop(tx);
            });
            assert!(started.is_some());
        }
        assert!(tasks.spawn(async {}).is_none(), "over the cap");
        drop(tx);
        tasks.set.shutdown().await;
        // Both tasks were aborted: their senders are gone, so the channel is closed.
        assert!(rx.recv().await.is_none());
        assert!(tasks.set.is_empty());
        assert!(tasks.spawn(async {}).is_some(), "room again");
        tokio::time::timeout(Duration::from_secs(5), tasks.reap())
            .await
            .expect("the finished task is reaped");
    }

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
