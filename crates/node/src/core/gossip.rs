//! Adapts gossip: turns received gossip into market, worker and mempool inputs, and only carries
//! out what the machines decided to tell the network: job announcements, the capability ad,
//! reputation reports (rewards summed until the next digest), result notices and health. The
//! peer list and the saving of the reputation book live here too.

use agora_market::Input;
use agora_net::{PeerId, PeerInfo};
use agora_types::job::{
    Health, JobId, MAX_NOTICES, MAX_REPUTATION_UPDATES, ReputationReport, ReputationUpdate,
    ResultNotice, ResultNotices, SignedJob, job_id,
};
use agora_types::wire::GossipMessage;
use agora_types::{Hash, now_ms};
use tracing::{debug, warn};

use super::{Core, Internal};

/// Beacons per digest (see [`Core::beacon`]): with the local preset's 2 s ads, every 10 s.
const DIGEST_EVERY: u64 = 5;

/// The most workers with rewards waiting for the next digest; past it they go out at once.
const MAX_PENDING_REWARDS: usize = 1024;

impl Core {
    /// Gossips a reputation change. A penalty goes out at once; rewards are summed per worker
    /// and go out with the next digest, all workers in one signed report (every report costs
    /// each node a signature check, and a busy worker earns one reward per job).
    pub(super) fn report_reputation(
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

    pub(super) fn publish_reputation(
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
    pub(super) fn publish_report(&mut self, updates: Vec<ReputationUpdate>) {
        if let Some(r) = self.sign(ReputationReport { updates }) {
            self.publish(GossipMessage::Reputation(r));
        }
    }

    /// Gossips the results verified since the last digest, in one signed batch.
    pub(super) fn flush_notices(&mut self) {
        if self.notices.is_empty() {
            return;
        }
        let notices = std::mem::take(&mut self.notices);
        if let Some(n) = self.sign(ResultNotices { notices }) {
            self.publish(GossipMessage::Result(n));
        }
    }

    /// Gossips the summed rewards (see [`Core::report_reputation`]).
    pub(super) fn flush_rewards(&mut self) {
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
    pub(super) fn save_reputation(&self) {
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

    pub(super) fn refresh_peers(&mut self) {
        let net = self.net.clone();
        let tx = self.internal_tx.clone();
        self.tasks.spawn(async move {
            if let Ok(list) = net.peers().await {
                let _ = tx.send(Internal::Peers(list)).await;
            }
        });
    }

    pub(super) fn on_gossip(&mut self, message: GossipMessage) {
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

    /// Every beacon gossips the capability ad (its free slots steer the fast path); every
    /// [`DIGEST_EVERY`]th also the digests: summed rewards, result notices and health. Each
    /// gossip message costs every node a signature check and the mesh's copies, and none of
    /// the digests needs the ad's freshness (penalties go out at once, not here).
    pub(super) fn beacon(&mut self) {
        self.beacons += 1;
        if self.beacons % DIGEST_EVERY == 1 {
            self.digests();
        }
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

    /// Gossips the summed rewards, the result notices and the node's health, and saves the
    /// reputation book (a redb commit: once per digest, not per beacon; at shutdown too).
    pub(super) fn digests(&mut self) {
        self.flush_rewards();
        self.flush_notices();
        self.save_reputation();
        let running = (self.pool.slots() - self.pool.free_slots()) as u32;
        let health = Health {
            uptime_s: self.shared.started.elapsed().as_secs(),
            connected_peers: self.peer_cache.len() as u32,
            running_jobs: running,
        };
        if let Some(s) = self.sign(health) {
            self.publish(GossipMessage::Health(s));
        }
    }

    /// Keeps a verified result's notice for the next digest; a full batch goes out at once.
    pub(super) fn queue_notice(&mut self, job_id: JobId, verdict: Hash, workers: Vec<PeerId>) {
        self.notices.push(ResultNotice {
            job_id,
            verdict,
            workers,
        });
        if self.notices.len() >= MAX_NOTICES {
            self.flush_notices();
        }
    }

    /// Keeps the network's peer list (addresses and round trips, for bids and ads).
    pub(super) fn set_peers(&mut self, list: Vec<PeerInfo>) {
        self.peer_cache = list
            .into_iter()
            .map(|p| (p.peer_id, (p.ip(), p.rtt_ms.map(|r| r.ceil() as u32))))
            .collect();
    }

    /// Announces one of our jobs (again, on a later attempt) so that workers bid.
    pub(super) fn announce(&mut self, job: SignedJob) {
        let id = job_id(&job);
        let attempt = self
            .market
            .job(&id)
            .map_or(1, |r| r.announce_attempts.max(1));
        debug!(job = %id.short(), attempt, "announcing job");
        self.publish(GossipMessage::Job { job, attempt });
    }
}
