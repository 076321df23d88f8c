//! Carries out the market's outputs that leave the loop and wait: lease offers and withdrawals to
//! workers (an offer's end comes back as [`Internal::LeaseDelivered`]) and job-record writes to
//! the persistence task. It decides nothing itself.

use agora_market::Input;
use agora_net::PeerId;
use agora_types::job::{JobId, Lease, job_id};
use agora_types::now_ms;
use agora_types::wire::{Request, Response};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::{Core, Delivery, Internal, Persist, RECORD_LINGER_MS};

impl Core {
    /// Offers a lease to its worker; how the offer ended comes back as
    /// [`Internal::LeaseDelivered`].
    pub(super) fn send_lease(&mut self, worker: PeerId, lease: Lease) {
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

    /// Tells the market how a lease offer ended.
    pub(super) fn lease_delivered(&mut self, job_id: JobId, worker: PeerId, result: Delivery) {
        match result {
            Delivery::Accepted => self.feed(Input::LeaseAccepted { job_id, worker }),
            Delivery::Busy => self.feed(Input::LeaseBusy { job_id, worker }),
            Delivery::Refused(reason) => self.feed(Input::LeaseRefused {
                job_id,
                worker,
                reason,
            }),
        }
    }

    /// Withdraws a lease from its worker.
    pub(super) fn cancel_lease(&mut self, worker: PeerId, job_id: JobId) {
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let _ = net.request(worker, Request::Cancel(job_id)).await;
        });
    }

    /// Marks a job record to be written (or, when the market no longer holds it, deleted) with
    /// the next flush: before the next acknowledgement that waits for the disk, or
    /// [`RECORD_LINGER_MS`] from now. A job changes several times on its way (submitted, leased,
    /// result in, verified); written at the flush, it is encoded and written once.
    pub(super) fn persist_record(&mut self, id: JobId) {
        self.dirty.insert(id);
        if self.flush_at.is_none() {
            self.flush_at = Some(now_ms().saturating_add(RECORD_LINGER_MS));
        }
    }

    /// Queues the writes of every changed record; whether all of them found room. A record that
    /// finds the queue full stays marked, and is tried again at the next flush.
    pub(super) fn flush_records(&mut self) -> bool {
        self.flush_at = None;
        let ids: Vec<JobId> = self.dirty.drain().collect();
        for (i, id) in ids.iter().enumerate() {
            // A record that cannot be encoded is kept as it was on disk, never deleted.
            let bytes = match self.market.job(id).map(serde_json::to_vec) {
                Some(Ok(b)) => Some(b),
                Some(Err(e)) => {
                    warn!(job = %id.short(), error = %e, "cannot encode a job record");
                    continue;
                }
                None => None,
            };
            if self.persist.try_send(Persist::Write(*id, bytes)).is_err() {
                warn!(
                    records = ids.len() - i,
                    "persistence queue full; retrying the records soon"
                );
                self.dirty.extend(ids[i..].iter().copied());
                self.flush_at = Some(now_ms().saturating_add(RECORD_LINGER_MS));
                return false;
            }
        }
        true
    }

    /// Runs `then` once every record write queued so far is committed. If the queue is full,
    /// `then` is dropped, and so the caller's oneshot: the submitter or worker sees a failure and
    /// retries, rather than an acknowledgement of something not yet durable.
    pub(super) fn after_commit(&mut self, then: impl FnOnce() + Send + 'static) {
        // A record left unqueued may be the one the acknowledgement vouches for.
        let (tx, rx) = oneshot::channel();
        if !self.flush_records() || self.persist.try_send(Persist::Barrier(tx)).is_err() {
            warn!("persistence queue full; not acknowledging");
            return;
        }
        self.tasks.spawn(async move {
            if rx.await.is_ok() {
                then();
            }
        });
    }
}
