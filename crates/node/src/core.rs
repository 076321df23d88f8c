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

use agora_exec::Pool;
use agora_ledger::Event;
use agora_market::settlement::{self, Settlement};
use agora_market::worker::{self, Beat, Standing, Timer, Worker};
use agora_market::{Input, JobRecord, Market, Output};
use agora_net::{NetEvent, NetHandle, PeerId, PeerInfo};
use agora_types::job::{
    Health, Heartbeat, JobId, Lease, MAX_NOTICES, MAX_REPUTATION_UPDATES, MAX_STDERR_BYTES,
    ReputationReport, ReputationUpdate, ResultNotice, ResultNotices, SignedJob, WorkResult, job_id,
};
use agora_types::ledger::{AccountId, TxKind};
use agora_types::sign::{Domain, Signed};
use agora_types::wire::{GossipMessage, Request, Response, limits};
use agora_types::{UnixMillis, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::ledger::LedgerRef;
use crate::node::Shared;
use crate::work::{Report, Work, WorkGuard, check_compared, claimed_form};

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
    /// The settlement machine: escrow locks, settlements, refunds, credit lines.
    pub settlement: Settlement,
    /// The stake set last given to the network (permissioned mode).
    pub authorized: Option<std::collections::HashSet<PeerId>>,
    /// Rewards not gossiped yet, per worker: (action, summed delta, job if only one).
    pub rewards: std::collections::BTreeMap<PeerId, (&'static str, i64, Option<JobId>)>,
    /// Verified results not gossiped yet (at most [`MAX_NOTICES`]).
    pub notices: Vec<ResultNotice>,
    /// Callers waiting for a job to be final ([`Command::WaitFinal`]; at most [`MAX_WAITERS`]).
    pub waiters: HashMap<JobId, Vec<oneshot::Sender<Option<JobRecord>>>>,
}

/// The most callers waiting for jobs to be final at once.
const MAX_WAITERS: usize = 4096;

/// The most workers with rewards waiting for the next beacon; past it they go out at once.
const MAX_PENDING_REWARDS: usize = 1024;

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
        self.publish_report(vec![ReputationUpdate {
            subject,
            action: action.to_string(),
            delta,
            job_id,
        }]);
    }

    /// Gossips `updates` (at most [`MAX_REPUTATION_UPDATES`]) in one signed report.
    fn publish_report(&mut self, updates: Vec<ReputationUpdate>) {
        if let Some(r) = self.sign(ReputationReport { updates }) {
            self.publish(GossipMessage::Reputation(r));
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
        let mut updates: Vec<ReputationUpdate> = std::mem::take(&mut self.rewards)
            .into_iter()
            .map(|(subject, (action, delta, job_id))| ReputationUpdate {
                subject,
                action: action.to_string(),
                delta,
                job_id,
            })
            .collect();
        while !updates.is_empty() {
            let rest = updates.split_off(updates.len().min(MAX_REPUTATION_UPDATES));
            self.publish_report(std::mem::replace(&mut updates, rest));
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

    fn on_gossip(&mut self, message: GossipMessage) {
        let local = self.net.local_peer_id();
        match message {
            GossipMessage::Job { job, attempt } => self.consider_bid(job, attempt),
            GossipMessage::Capability(ad) => {
                let Ok(from) = ad.signer_peer() else { return };
                if from == local {
                    return;
                }
                let ip = self.peer_cache.get(&from).and_then(|(ip, _)| *ip);
                self.feed(Input::CapabilityAd {
                    from,
                    ad: ad.payload,
                    ip,
                });
            }
            GossipMessage::Reputation(r) => {
                let Ok(reporter) = r.signer_peer() else {
                    return;
                };
                if reporter != local {
                    for u in r.payload.updates {
                        self.feed(Input::RemoteReputation {
                            reporter,
                            subject: u.subject,
                            delta: u.delta,
                        });
                    }
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
        let Some(rec) = self.market.job(&signed.payload.job_id) else {
            return refuse(reply, "no such job here".into());
        };
        let compare = match claimed_form(rec.job.payload.runtime, &signed.payload.outcome) {
            Ok(c) => c,
            Err(why) => return refuse(reply, why.into()),
        };
        // Keep the output (content-addressed) before the market sees the result, so that a
        // verified job's output is on disk by the time anyone asks for it.
        let result = signed;
        let store = self.shared.store.clone();
        let tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            if !output.is_empty() || compare.is_some() {
                let stored = tokio::task::spawn_blocking(move || {
                    if let Some((rule, claimed)) = compare {
                        check_compared(&output, &rule, &claimed)?;
                    }
                    store
                        .put_blob(&output)
                        .map_err(|e| format!("cannot store the output: {e}"))
                })
                .await
                .unwrap_or_else(|_| Err("cannot store the output".into()));
                if let Err(why) = stored {
                    let _ = reply.send(Response::Refused(why));
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

    /// Asks the settlement machine for an escrow lock (without a ledger there is nothing to lock).
    fn lock_escrow(&mut self, job_id: JobId, amount: u64, max_price: u64, redundancy: u8) {
        if self.ledger.is_none() {
            self.feed(Input::EscrowLocked(job_id));
            return;
        }
        self.feed_settlement(move |ledger| settlement::Input::NeedEscrow {
            job_id,
            amount,
            max_price,
            redundancy,
            ledger,
        });
    }

    /// A job is final: its settlement (or refund) is owed.
    fn settle(&mut self, job_id: JobId) {
        let job = finished(job_id, self.market.job(&job_id));
        self.feed_settlement(move |ledger| settlement::Input::Final { job, ledger });
    }

    /// At start: tells the settlement machine of the restored jobs that hold an escrow or may
    /// still owe a settlement (and so which escrows of ours are orphans).
    fn restore_settlement(&mut self) {
        let mut live = Vec::new();
        let mut done = Vec::new();
        for rec in self.market.jobs() {
            if rec.state.is_final() {
                done.push(finished(rec.id, Some(rec)));
            } else if rec.state != agora_market::JobState::AwaitingEscrow && !rec.job.payload.credit
            {
                live.push(rec.id);
            }
        }
        self.feed_settlement(move |ledger| settlement::Input::Restored {
            live,
            finished: done,
            ledger,
        });
    }

    /// Feeds the settlement machine an input made with the ledger (under its lock, released
    /// before the outputs are carried out). Nothing without a ledger.
    fn feed_settlement(
        &mut self,
        input: impl for<'a> FnOnce(&'a agora_ledger::Ledger) -> settlement::Input<'a>,
    ) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        let out = {
            let st = ledger.lock();
            self.settlement.handle(input(&st.ledger), now_ms())
        };
        self.apply_settlement(out);
    }

    /// Carries out the settlement machine's decisions.
    fn apply_settlement(&mut self, out: Vec<settlement::Output>) {
        let mut queue = std::collections::VecDeque::from(out);
        while let Some(o) = queue.pop_front() {
            match o {
                settlement::Output::Send(kind) => {
                    let what = settlement::Sent::of(&kind);
                    if !self.send_tx(kind)
                        && let Some(what) = what
                    {
                        let input = settlement::Input::SendFailed(what);
                        queue.extend(self.settlement.handle(input, now_ms()));
                    }
                }
                settlement::Output::EscrowLocked(id) => self.feed(Input::EscrowLocked(id)),
                settlement::Output::Cancel(id) => {
                    warn!(job = %id.short(), "cannot lock the escrow; cancelling the job");
                    self.feed(Input::Cancel(id));
                }
                settlement::Output::Stakers(set) => self.feed(Input::Stakers(set)),
                settlement::Output::CreditLines(set) => self.feed(Input::CreditLines(set)),
                settlement::Output::Penalize { peer, delta } => {
                    info!(%peer, delta, "slashed on the ledger");
                    self.market.reputation_mut().penalize(peer, delta);
                }
                // A settled credit job no longer counts against its line for us as a worker.
                settlement::Output::Settled(id) => {
                    if self.worker.is_owed(&id) {
                        self.feed_worker(worker::Input::Settled(id));
                    }
                }
            }
        }
    }

    /// A block was applied: hands its events and the ledger to the settlement machine (one
    /// lock), then gossips our waiting transactions again now and then.
    fn on_block(&mut self, _height: u64) {
        let Some(ledger) = self.ledger.clone() else {
            return;
        };
        let (out, height) = {
            let st = ledger.lock();
            let events: Vec<Event> = st
                .receipts
                .iter()
                .filter(|r| r.height > self.ledger_seen)
                .flat_map(|r| r.events.iter().map(|(_, e)| e.clone()))
                .collect();
            let input = settlement::Input::Block {
                events: &events,
                ledger: &st.ledger,
                index: self.market.index(),
            };
            (self.settlement.handle(input, now_ms()), st.ledger.height())
        };
        self.ledger_seen = height;
        self.apply_settlement(out);
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

/// What the settlement machine needs of a final job: its evidence when it has an outcome, and
/// the signed job when it is a credit job (a job the market no longer holds is refunded).
fn finished(job_id: JobId, rec: Option<&JobRecord>) -> settlement::Finished {
    settlement::Finished {
        job_id,
        evidence: rec.and_then(|r| r.outcome.as_ref().map(|_| r.evidence())),
        credit: rec
            .filter(|r| r.job.payload.credit)
            .map(|r| Box::new(r.job.clone())),
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
