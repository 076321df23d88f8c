//! The gossip validation pool: signature checks off the task that owns the Swarm.
//!
//! The shape is Lighthouse's beacon processor, cut down: one bounded FIFO per message kind
//! (topic), at most one worker per kind at a time (so a kind's messages reach the node in the
//! order they arrived: ledger transactions by nonce, job re-announcements by attempt), and at most
//! `workers` kinds checked at once (one per core by default). A worker takes up to [`BATCH`]
//! messages of its kind, then hands the kind back and moves on to the next waiting one, so a
//! flooded kind cannot starve the others. A message offered to a full queue is refused at once
//! ([`Full`], the job handed back): the actor then checks it itself, since GossipSub counts a
//! message as seen before validation, so one dropped here would never be accepted from
//! another peer either. A full queue therefore means backpressure on the Swarm task, never loss.
//!
//! Workers are blocking-pool tasks (`spawn_blocking`), started when a kind has work and no worker,
//! never more than `workers` alive; each returns its verdicts on a bounded channel that the actor
//! drains, so a verdict waits for room rather than being lost. The pool does no I/O and keeps no
//! clock of its own beyond `now_ms()` for the synchrony bound.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use libp2p::{PeerId, gossipsub};
use tokio::sync::mpsc;

use agora_types::Hash;
use agora_types::wire::{GossipMessage, Topic};

use crate::validate::{self, Refusal};

/// Messages queued at most per kind.
/// 256: at most 6 x 256 x 64 KiB = 96 MiB queued in the worst case (gossip payloads are
/// capped at 64 KiB; real ones are a few hundred bytes).
pub(crate) const QUEUE_PER_KIND: usize = 256;
/// Verdicts waiting for the actor, at most (a worker waits for room beyond).
pub(crate) const VERDICT_QUEUE: usize = 1024;
/// Messages a worker checks for one kind before it lets another kind have its turn.
const BATCH: usize = 64;

/// A message waiting for its signature check: decoded, its topic and replay key already checked
/// by the actor.
pub(crate) struct Job {
    pub via: PeerId,
    pub id: gossipsub::MessageId,
    pub message: GossipMessage,
    pub replay_key: Option<Hash>,
}

impl Job {
    /// Checks the signature (and the synchrony bound): the verdict, the same whether a worker
    /// or the actor (queue full) runs it.
    pub fn check(self, bound_ms: u64) -> Verdict {
        Verdict {
            via: self.via,
            id: self.id,
            topic: self.message.topic(),
            replay_key: self.replay_key,
            outcome: check(self.message, bound_ms),
        }
    }
}

/// A checked message.
pub(crate) struct Verdict {
    pub via: PeerId,
    pub id: gossipsub::MessageId,
    pub topic: Topic,
    pub replay_key: Option<Hash>,
    pub outcome: Result<GossipMessage, Refusal>,
}

/// The queue for this message's kind is full; the job comes back.
pub(crate) struct Full(pub Box<Job>);

struct Queues {
    /// One FIFO per topic, in [`Topic::ALL`] order.
    kinds: Vec<VecDeque<Job>>,
    /// Whether a worker holds the kind.
    held: Vec<bool>,
    /// Workers alive.
    active: usize,
}

struct Shared {
    queues: Mutex<Queues>,
    capacity: usize,
    workers: usize,
    bound_ms: u64,
    verdicts: mpsc::Sender<Verdict>,
}

/// The pool's handle, owned by the actor.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn kind(topic: Topic) -> usize {
    Topic::ALL.iter().position(|t| *t == topic).unwrap_or(0)
}

impl Pool {
    /// A pool with `capacity` messages queued at most per kind and `workers` checking at once;
    /// verdicts go to `verdicts`.
    pub fn new(
        capacity: usize,
        workers: usize,
        bound_ms: u64,
        verdicts: mpsc::Sender<Verdict>,
    ) -> Self {
        let n = Topic::ALL.len();
        Pool {
            shared: Arc::new(Shared {
                queues: Mutex::new(Queues {
                    kinds: (0..n).map(|_| VecDeque::new()).collect(),
                    held: vec![false; n],
                    active: 0,
                }),
                capacity: capacity.max(1),
                workers: workers.max(1),
                bound_ms,
                verdicts,
            }),
            tasks: Vec::new(),
        }
    }

    /// Queues `job` for its signature check, starting a worker if one may start.
    pub fn submit(&mut self, job: Job) -> Result<(), Full> {
        let k = kind(job.message.topic());
        let start = {
            let mut q = self
                .shared
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if q.kinds[k].len() >= self.shared.capacity {
                return Err(Full(Box::new(job)));
            }
            q.kinds[k].push_back(job);
            let start = q.active < self.shared.workers && !q.held[k];
            if start {
                q.active += 1;
            }
            start
        };
        if start {
            self.tasks.retain(|t| !t.is_finished());
            let shared = Arc::clone(&self.shared);
            self.tasks
                .push(tokio::task::spawn_blocking(move || work(&shared)));
        }
        Ok(())
    }

    /// The synchrony bound the workers check against, in milliseconds.
    pub fn bound_ms(&self) -> u64 {
        self.shared.bound_ms
    }

    /// Messages waiting, all kinds together.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        let q = self
            .shared
            .queues
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        q.kinds.iter().map(VecDeque::len).sum()
    }

    /// Drops what is queued and waits for the workers. They finish their batch (up to
    /// [`BATCH`] messages) unless the verdict channel is closed, so close its receiver first.
    pub async fn shutdown(&mut self) {
        {
            let mut q = self
                .shared
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for k in &mut q.kinds {
                k.clear();
            }
        }
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

/// The signature check, a panic in it (none is known) turned into a refusal so that a worker
/// never dies holding its kind.
fn check(message: GossipMessage, bound_ms: u64) -> Result<GossipMessage, Refusal> {
    let now = agora_types::now_ms();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        validate::verify(message, now, bound_ms)
    }))
    .unwrap_or_else(|_| Err(Refusal::Invalid("the signature check panicked".into())))
}

/// A worker: takes the first waiting kind nobody holds, checks up to [`BATCH`] of its messages,
/// releases it, and repeats until no kind is waiting.
fn work(shared: &Shared) {
    let mut next = 0usize;
    loop {
        let (k, batch) = {
            let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
            let n = q.kinds.len();
            let Some(k) = (0..n)
                .map(|i| (next + i) % n)
                .find(|&k| !q.held[k] && !q.kinds[k].is_empty())
            else {
                q.active -= 1;
                return;
            };
            q.held[k] = true;
            let take = q.kinds[k].len().min(BATCH);
            let batch: Vec<Job> = q.kinds[k].drain(..take).collect();
            (k, batch)
        };
        next = k + 1;
        let mut open = true;
        for job in batch {
            // The actor is gone (shutting down): stop checking.
            if shared
                .verdicts
                .blocking_send(job.check(shared.bound_ms))
                .is_err()
            {
                open = false;
                break;
            }
        }
        let mut q = shared.queues.lock().unwrap_or_else(PoisonError::into_inner);
        q.held[k] = false;
        if !open {
            q.kinds[k].clear();
            q.active -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_types::Keypair;
    use agora_types::job::Health;
    use agora_types::sign::Signed;

    fn health(key: &Keypair, at: u64) -> GossipMessage {
        let h = Health {
            uptime_s: at,
            connected_peers: 2,
            running_jobs: 0,
        };
        GossipMessage::Health(Signed::sign(key, h, agora_types::now_ms()).unwrap())
    }

    fn job(message: GossipMessage, n: u8) -> Job {
        Job {
            via: PeerId::random(),
            id: gossipsub::MessageId::from(vec![n]),
            message,
            replay_key: None,
        }
    }

    #[tokio::test]
    async fn verdicts_keep_each_kinds_order_and_refuse_bad_signatures() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut pool = Pool::new(256, 2, 5_000, tx);
        let key = Keypair::generate_ed25519();
        for i in 0..100u8 {
            let mut m = health(&key, u64::from(i));
            if i == 50
                && let GossipMessage::Health(s) = &mut m
            {
                // Tamper with the signed payload: the signature no longer matches.
                s.payload.connected_peers = 99;
            }
            assert!(pool.submit(job(m, i)).is_ok());
            assert!(
                pool.submit(job(GossipMessage::Text(format!("t{i}")), i))
                    .is_ok()
            );
        }
        let (mut health_seen, mut text_seen) = (Vec::new(), Vec::new());
        for _ in 0..200 {
            let v = rx.recv().await.expect("a verdict per message");
            match v.outcome {
                Ok(GossipMessage::Health(_)) => health_seen.push(v.id),
                Ok(GossipMessage::Text(_)) => text_seen.push(v.id),
                Ok(other) => panic!("unexpected {other:?}"),
                Err(r) => {
                    assert_eq!(r.label(), "invalid");
                    assert_eq!(v.id, gossipsub::MessageId::from(vec![50]));
                }
            }
        }
        let expect = |skip: Option<u8>| -> Vec<gossipsub::MessageId> {
            (0..100u8)
                .filter(|i| Some(*i) != skip)
                .map(|i| gossipsub::MessageId::from(vec![i]))
                .collect()
        };
        assert_eq!(health_seen, expect(Some(50)), "one kind's order is kept");
        assert_eq!(text_seen, expect(None));
        pool.shutdown().await;
    }

    #[tokio::test]
    async fn a_full_kind_is_refused_while_others_still_queue() {
        // No room for verdicts and no one reading them: workers block after the first ones,
        // so the queues fill up.
        let (tx, _rx) = mpsc::channel(1);
        let mut pool = Pool::new(8, 1, 5_000, tx);
        let key = Keypair::generate_ed25519();
        let mut refused = 0;
        for i in 0..40u8 {
            if pool.submit(job(health(&key, u64::from(i)), i)).is_err() {
                refused += 1;
            }
        }
        // Accepted at most: one verdict in the channel, one batch held by the blocked worker
        // (<= 8, the queue's capacity) and a full queue.
        assert!(refused >= 40 - 17, "refused {refused}");
        assert!(pool.queued() <= 8);
        // Another kind has its own queue.
        let report = agora_types::job::ReputationReport {
            updates: vec![agora_types::job::ReputationUpdate {
                subject: PeerId::random(),
                action: "verified".into(),
                delta: 1,
                job_id: None,
            }],
        };
        let m = GossipMessage::Reputation(Signed::sign(&key, report, 1).unwrap());
        assert!(
            pool.submit(job(m, 0)).is_ok(),
            "the reputation kind is not full"
        );
        drop(_rx);
        pool.shutdown().await;
    }
}
