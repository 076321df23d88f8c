//! Adapts the [`Worker`](agora_market::worker::Worker) machine: feeds it announcements, leases,
//! heartbeat answers, work ends and timers, and only carries out its outputs: bids, work runs in
//! the executor pool, heartbeats, signed results, lease give-backs.

use std::cmp::Reverse;
use std::time::Duration;

use agora_market::worker::{self, Beat, Standing};
use agora_net::PeerId;
use agora_types::job::{Heartbeat, JobId, Lease, SignedJob, WorkResult, job_id};
use agora_types::ledger::AccountId;
use agora_types::now_ms;
use agora_types::wire::{Request, Response};
use tracing::{debug, warn};

use super::{Core, Internal};
use crate::work::{Report, Work, WorkGuard};

impl Core {
    /// What the ledger says of a job we may work on, when the node runs one.
    pub(super) fn standing(&self, job: &SignedJob) -> Option<Standing> {
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

    pub(super) fn consider_bid(&mut self, job: SignedJob, attempt: u32) {
        let standing = self.standing(&job);
        self.feed_worker(worker::Input::Announce {
            job,
            attempt,
            standing,
        });
    }

    /// Feeds the worker machine and carries out its outputs; returns its answer to a lease.
    pub(super) fn feed_worker(&mut self, input: worker::Input) -> Option<worker::Answer> {
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
    pub(super) fn start_work(&mut self, job_id: JobId, submitter: PeerId, lease: Box<Lease>) {
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
    pub(super) fn send_heartbeat(&mut self, submitter: PeerId, job_id: JobId) {
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
    pub(super) fn send_result(
        &mut self,
        submitter: PeerId,
        job_id: JobId,
        report: Report,
        price: u64,
    ) {
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

    pub(super) fn on_lease(&mut self, peer: PeerId, lease: Lease) -> Response {
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

    /// A work task ended: hands its report (or why it could not be done) to the worker machine,
    /// unless the run was stopped meanwhile.
    pub(super) fn work_ended(&mut self, job_id: JobId, token: u64, result: Result<Report, String>) {
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
}
