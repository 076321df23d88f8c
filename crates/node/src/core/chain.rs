//! Adapts the ledger and the [`Settlement`](agora_market::settlement::Settlement) machine:
//! feeds it blocks, final jobs and escrow needs (under the ledger's lock), and only carries out
//! its outputs: our own transactions, escrow and cancel decisions for the market, stakers and
//! credit lines, slashes, the permissioned stake set.

use agora_ledger::Event;
use agora_market::{Input, JobRecord, settlement, worker};
use agora_net::PeerId;
use agora_types::job::JobId;
use agora_types::ledger::{AccountId, TxKind};
use agora_types::now_ms;
use agora_types::wire::GossipMessage;
use tracing::{debug, info, warn};

use super::Core;
use crate::ledger::LedgerRef;

impl Core {
    /// Whether `peer` may bid: always without a ledger; with one, if it holds the minimum stake.
    pub(super) fn may_bid(&self, peer: &PeerId) -> bool {
        let Some(ledger) = &self.ledger else {
            return true;
        };
        AccountId::from_peer_id(peer).is_some_and(|a| ledger.lock().ledger.can_bid(&a))
    }

    /// Signs and gossips one of our own ledger transactions.
    pub(super) fn send_tx(&mut self, kind: TxKind) -> bool {
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
    pub(super) fn lock_escrow(
        &mut self,
        job_id: JobId,
        amount: u64,
        max_price: u64,
        redundancy: u8,
    ) {
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
    pub(super) fn settle(&mut self, job_id: JobId) {
        let job = finished(job_id, self.market.job(&job_id));
        self.feed_settlement(move |ledger| settlement::Input::Final { job, ledger });
    }

    /// At start: tells the settlement machine of the restored jobs that hold an escrow or may
    /// still owe a settlement (and so which escrows of ours are orphans).
    pub(super) fn restore_settlement(&mut self) {
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
    pub(super) fn feed_settlement(
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
    pub(super) fn apply_settlement(&mut self, out: Vec<settlement::Output>) {
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
    pub(super) fn on_block(&mut self, _height: u64) {
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
    pub(super) fn authorize_stake_set(&mut self, ledger: &LedgerRef) {
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
