//! The node's core task: the one owner of the market and of the worker's lease book.
//!
//! It turns network events and API commands into [`Input`]s for the market, and carries out the
//! market's [`Output`]s: gossip, direct requests, storage writes. Anything that waits (a request
//! to a peer, a blob fetch, a sandbox run, a disk write) is spawned off the loop and reports back
//! through the bounded internal queue, so the loop itself never blocks.
//!
//! As a worker, the node bids on announced jobs its offer covers ([`agora_market::bid_for`]),
//! accepts leases only from the job's own signer, fetches the blobs, runs the module in the
//! executor pool and returns a signed result. A node never works on its own jobs.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use agora_exec::{ExecError, Limits as ExecLimits, Pool};
use agora_ledger::Event;
use agora_market::{Input, JobRecord, Market, Offer, Output, bid_for};
use agora_net::{NetEvent, NetHandle, PeerId, PeerInfo};
use agora_types::job::{
    CapabilityAd, Health, Heartbeat, JobId, Lease, MAX_STDERR_BYTES, Outcome, ReputationUpdate,
    ResultNotice, SignedJob, WorkResult, job_id,
};
use agora_types::ledger::{AccountId, TxKind};
use agora_types::sign::{Domain, Signed};
use agora_types::wire::{GossipMessage, Request, Response, limits};
use agora_types::{Hash, Keypair, UnixMillis, now_ms};
use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
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
    WorkDone(JobId),
    /// As a worker: the submitter answered a heartbeat, keep the lease until then.
    LeaseExtended(JobId, UnixMillis),
    Peers(Vec<PeerInfo>),
}

/// Everything the core task owns.
pub(crate) struct Core {
    pub shared: Arc<Shared>,
    pub net: NetHandle,
    pub pool: Pool,
    pub market: Market,
    pub leases: agora_market::Leases,
    pub running: HashMap<JobId, (PeerId, AbortHandle)>,
    pub offer: Offer,
    pub events: mpsc::Receiver<NetEvent>,
    pub commands: mpsc::Receiver<Command>,
    pub internal_tx: mpsc::Sender<Internal>,
    pub internal: mpsc::Receiver<Internal>,
    pub persist: mpsc::Sender<Persist>,
    pub stop: mpsc::Receiver<()>,
    pub peer_cache: HashMap<PeerId, (Option<IpAddr>, Option<u32>)>,
    pub ad_seq: u64,
    pub bid_seen: VecDeque<(JobId, u32)>,
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
}

/// Blocks to wait for an escrow transaction before sending it again.
const ESCROW_RETRY_BLOCKS: u64 = 20;
/// Settlements tried before falling back to a refund.
const SETTLE_ATTEMPTS: u32 = 3;

/// Announcements recently bid on, remembered so that a duplicate delivery is not bid on twice.
/// A re-announcement (a higher attempt) is bid on again: the submitter is still short of workers.
const BID_MEMORY: usize = 4096;

impl Core {
    pub async fn run(mut self, restored: Vec<JobRecord>) {
        let outputs = self.market.restore(restored, now_ms());
        self.apply(outputs);
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beacon = tokio::time::interval(self.shared.config.ad_interval);
        beacon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut peers_tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = self.stop.recv() => {
                    self.save_reputation();
                    return;
                }
                Some(c) = self.commands.recv() => self.on_command(c),
                Some(i) = self.internal.recv() => self.on_internal(i),
                Some(h) = self.blocks.recv() => self.on_block(h),
                event = self.events.recv() => match event {
                    Some(e) => self.on_net_event(e),
                    None => return,
                },
                _ = tick.tick() => {
                    let now = now_ms();
                    if self.market.next_deadline().is_some_and(|d| d <= now) {
                        let out = self.market.handle(Input::Tick, now);
                        self.apply(out);
                    }
                    for expired in self.leases.expire(now) {
                        if let Some((_, task)) = self.running.remove(&expired) {
                            warn!(job = %expired.short(), "lease expired before the work was reported; abandoning it");
                            task.abort();
                        }
                    }
                }
                _ = beacon.tick() => {
                    self.beacon();
                    self.save_reputation();
                }
                _ = peers_tick.tick() => self.refresh_peers(),
            }
        }
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

    fn publish(&self, message: GossipMessage) {
        let net = self.net.clone();
        tokio::spawn(async move {
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
                    tokio::spawn(async move {
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
                    tokio::spawn(async move {
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
                    if let Some(n) = self.sign(ResultNotice {
                        job_id,
                        verdict: outcome.verdict(),
                        workers,
                    }) {
                        self.publish(GossipMessage::Result(n));
                    }
                }
                Output::Failed { job_id, reason } => {
                    info!(job = %job_id.short(), %reason, "job failed");
                    self.settle(job_id);
                }
                Output::Reputation {
                    peer,
                    action,
                    delta,
                    job_id,
                } => {
                    debug!(%peer, action = action.name(), delta, "reputation");
                    if let Some(u) = self.sign(ReputationUpdate {
                        subject: peer,
                        action: action.name().to_string(),
                        delta,
                        job_id,
                    }) {
                        self.publish(GossipMessage::Reputation(u));
                    }
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
            Internal::WorkDone(id) => {
                self.leases.finish(&id);
                self.running.remove(&id);
            }
            Internal::LeaseExtended(id, until) => {
                self.leases.extend(&id, until);
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
    fn after_commit(&self, then: impl FnOnce() + Send + 'static) {
        let (tx, rx) = oneshot::channel();
        if self.persist.try_send(Persist::Barrier(tx)).is_err() {
            warn!("persistence queue full; not acknowledging");
            return;
        }
        tokio::spawn(async move {
            if rx.await.is_ok() {
                then();
            }
        });
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

    fn refresh_peers(&self) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
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

    fn consider_bid(&mut self, job: SignedJob, attempt: u32) {
        let Ok(submitter) = job.signer_peer() else {
            return;
        };
        if submitter == self.net.local_peer_id() {
            return;
        }
        let id = job_id(&job);
        let spec = &job.payload;
        if self.bid_seen.contains(&(id, attempt)) || self.leases.contains(&id) {
            return;
        }
        // The signed deadline is not checked here: the submitter's clock for it starts when the
        // job first gets a worker (ARCHITECTURE.md, "Deadlines"), so a queued job may be
        // announced past it; an announcement the submitter no longer wants gets no lease.
        // This node's bounds: an input over its `max_input_bytes` is not bid on.
        if spec.validate(&self.shared.config.spec_bounds()).is_err() {
            return;
        }
        if let Some(ledger) = &self.ledger {
            let st = ledger.lock();
            if !st.ledger.can_bid(&ledger.local) {
                debug!(job = %id.short(), "not bidding: this node's stake is below the minimum");
                return;
            }
            if st.ledger.escrow(&id).is_none() {
                debug!(job = %id.short(), "not bidding: the job has no escrow on the ledger");
                return;
            }
        }
        let free = self.leases.free_slots();
        let total = self.leases.capacity() as u32;
        let bid = match bid_for(spec, id, &self.offer, free, total) {
            Ok(b) => b,
            Err(why) => {
                debug!(job = %id.short(), %why, "not bidding");
                return;
            }
        };
        if self.bid_seen.len() >= BID_MEMORY {
            self.bid_seen.pop_front();
        }
        self.bid_seen.push_back((id, attempt));
        let Some(signed) = self.sign(bid) else { return };
        let net = self.net.clone();
        tokio::spawn(async move {
            if let Err(e) = net.request(submitter, Request::Bid(signed)).await {
                debug!(error = %e, "bid not delivered");
            }
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
                } else if let Some((submitter, _)) = self.running.get(&id)
                    && *submitter == peer
                {
                    if let Some((_, task)) = self.running.remove(&id) {
                        task.abort();
                    }
                    self.leases.cancel(&id);
                }
                Response::Ack
            }
            Request::GetBlob { hash, offset, len } => {
                let store = self.shared.store.clone();
                tokio::spawn(async move {
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
        match lease.job.signer_peer() {
            Ok(s) if s == peer => {}
            _ => return Response::Refused("only a job's submitter may lease it".into()),
        }
        let spec = lease.job.payload.clone();
        // Checked before anything is fetched: the sizes are in the signed spec.
        if let Err(e) = spec.validate(&self.shared.config.spec_bounds()) {
            return Response::Refused(e.to_string());
        }
        if let Err(e) = bid_for(&spec, job_id(&lease.job), &self.offer, 1, 1) {
            return Response::Refused(e.to_string());
        }
        let id = job_id(&lease.job);
        match self.leases.accept(id, lease.expires_ms) {
            Ok(()) => {}
            Err(agora_market::Refusal::Full { .. }) => return Response::Busy,
            Err(e) => return Response::Refused(e.to_string()),
        }
        let config = self.market.config();
        let work = Work {
            net: self.net.clone(),
            store: self.shared.store.clone(),
            pool: self.pool.clone(),
            keypair: self.shared.keypair.clone(),
            byzantine: self.shared.config.byzantine,
            done: self.internal_tx.clone(),
            heartbeat: Duration::from_millis(config.heartbeat_ms.max(100)),
            extension_ms: config.heartbeat_extension_ms(),
        };
        let task = tokio::spawn(work.run(peer, id, lease));
        self.running.insert(id, (peer, task.abort_handle()));
        Response::Ack
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
        tokio::spawn(async move {
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
        let running = (self.pool.slots() - self.pool.free_slots()) as u32;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
        self.ad_seq += 1;
        let ad = CapabilityAd {
            engine: "wasmtime-48".into(),
            capabilities: self.offer.capabilities.clone(),
            cores,
            memory_bytes: self.offer.memory_bytes,
            free_slots: self.leases.free_slots(),
            total_slots: self.leases.capacity() as u32,
            price: self.offer.price,
            version: agora_types::VERSION.into(),
            seq: self.ad_seq,
        };
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
        if self.ad_seq == 1 {
            let net = self.net.clone();
            let caps = self.offer.capabilities.clone();
            tokio::spawn(async move {
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
    fn send_tx(&self, kind: TxKind) -> bool {
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
            let pick = |agreed: bool| -> Vec<Signed<WorkResult>> {
                rec.results
                    .iter()
                    .filter(|r| r.agreed == Some(agreed))
                    .filter_map(|r| r.signed.clone())
                    .collect()
            };
            Some((pick(true), pick(false)))
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
        for e in events {
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
                } else if rec.state.is_final() && st.ledger.escrow(&rec.id).is_some() {
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
        tokio::spawn(async move {
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
    done: mpsc::Sender<Internal>,
    /// How often to tell the submitter the lease is still being worked on.
    heartbeat: Duration,
    /// How far an answered heartbeat extends the lease locally.
    extension_ms: u64,
}

/// What a worker reports: the outcome, stdout, and the first bytes of stderr.
type Report = (Outcome, Vec<u8>, Vec<u8>);

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
    async fn run(self, submitter: PeerId, id: JobId, lease: Lease) {
        // Heartbeats run beside the work: fetching, waiting for a slot, compiling and running
        // all count as progress, so a slow but alive worker keeps its lease.
        let outcome = tokio::select! {
            o = self.execute(submitter, &lease) => Some(o),
            why = self.heartbeats(submitter, id) => {
                warn!(job = %id.short(), %why, "the submitter withdrew the lease; stopping");
                None
            }
        };
        match outcome {
            Some(Ok((outcome, output, stderr))) => {
                self.report(submitter, id, outcome, output, stderr, lease.price)
                    .await
            }
            Some(Err(why)) => {
                warn!(job = %id.short(), %why, "giving the lease back");
                let _ = self.net.request(submitter, Request::Cancel(id)).await;
            }
            None => {}
        }
        let _ = self.done.send(Internal::WorkDone(id)).await;
    }

    /// Sends a signed heartbeat every interval until the submitter refuses one (it no longer
    /// holds the lease for us); returns its reason. An unreachable submitter is not a refusal:
    /// the lease's own expiry decides then.
    async fn heartbeats(&self, submitter: PeerId, id: JobId) -> String {
        loop {
            tokio::time::sleep(self.heartbeat).await;
            let beat = Heartbeat {
                job_id: id,
                stage: "working".into(),
            };
            let signed = match Signed::sign(&self.keypair, beat, now_ms()) {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot sign a heartbeat");
                    continue;
                }
            };
            let answer = tokio::time::timeout(
                self.heartbeat.saturating_mul(2),
                self.net.request(submitter, Request::Heartbeat(signed)),
            )
            .await;
            match answer {
                Ok(Ok(Response::Ack)) => {
                    let until = now_ms().saturating_add(self.extension_ms);
                    let _ = self.done.send(Internal::LeaseExtended(id, until)).await;
                }
                Ok(Ok(Response::Refused(why))) => return why,
                _ => debug!(job = %id.short(), "heartbeat not answered"),
            }
        }
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

    async fn report(
        &self,
        submitter: PeerId,
        id: JobId,
        outcome: Outcome,
        output: Vec<u8>,
        stderr: Vec<u8>,
        price: u64,
    ) {
        let result = WorkResult {
            job_id: id,
            outcome,
            price,
        };
        let signed = match Signed::sign(&self.keypair, result, now_ms()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot sign a result");
                return;
            }
        };
        // Retry a few times, each bounded: the submitter may be briefly unreachable.
        for attempt in 0..4u32 {
            let sent = tokio::time::timeout(
                Duration::from_secs(3),
                self.net.request(
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
                    debug!(job = %id.short(), %why, "result refused");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(200 << attempt)).await,
            }
        }
        warn!(job = %id.short(), "could not deliver a result to the submitter");
    }
}
