//! Adapts peers' direct requests to the machines: bids, leases, results, heartbeats,
//! cancellations and blob reads. It checks signatures and hands the rest to the market (or the
//! worker); it only carries out their answers.

use agora_market::{Input, Output, worker};
use agora_net::PeerId;
use agora_types::job::{Heartbeat, MAX_STDERR_BYTES, WorkResult};
use agora_types::now_ms;
use agora_types::sign::Signed;
use agora_types::wire::{Request, Response, limits};
use tokio::sync::oneshot;

use super::{Core, Internal};
use crate::work::{check_compared, claimed_form};

impl Core {
    pub(super) fn on_request(
        &mut self,
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Response>,
    ) {
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
    pub(super) fn on_heartbeat(&mut self, peer: PeerId, signed: &Signed<Heartbeat>) -> Response {
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

    pub(super) fn on_result(
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

    /// A result whose output is stored: the market takes it, and the worker hears back once the
    /// record is committed.
    pub(super) fn result_in(
        &mut self,
        from: PeerId,
        result: Signed<WorkResult>,
        stderr: Vec<u8>,
        ack: oneshot::Sender<Response>,
    ) {
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
}
