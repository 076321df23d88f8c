//! The submitter's settlement, as a pure state machine: escrow locks, settlement and refund
//! transactions, their retries, credit lines, and reconciliation with each applied block.
//!
//! The [`Market`](crate::Market) asks for an escrow ([`Output::LockEscrow`](crate::Output));
//! the node feeds that here as [`Input::NeedEscrow`], and the machine answers with a
//! transaction to send ([`Output::Send`]) and, once the lock is on the ledger,
//! [`Output::EscrowLocked`] for the market. When a job is final ([`Input::Final`]) the machine
//! owes its settlement: it pays the quorum and slashes the minority ([`TxKind::Settle`], or
//! [`TxKind::SettleCredit`] for a credit job), or takes the escrow back ([`TxKind::Refund`]).
//! Every applied block ([`Input::Block`]) brings the block's events and a reference to the
//! ledger, from which the machine reads only what concerns the jobs it tracks.
//!
//! # Rules
//!
//! - An escrow lock is sent again every [`RETRY_BLOCKS`] blocks until the ledger holds it
//!   (seen by its event, or by reading the escrow, which covers a restart). A lock that cannot
//!   be sent ([`Input::SendFailed`]) cancels the job ([`Output::Cancel`]).
//! - A finished job with a quorum is settled, at most [`SETTLE_ATTEMPTS`] times,
//!   [`RETRY_BLOCKS`] apart; after that the machine waits for the escrow's refund height and
//!   refunds. A job without a quorum (cancelled, past its deadline, no agreement) is refunded at
//!   once. Both are sent again every [`RETRY_BLOCKS`] blocks until the escrow is closed.
//! - A credit job's settlement is sent at most [`SETTLE_ATTEMPTS`] times, [`RETRY_BLOCKS`]
//!   apart, until the ledger has closed the job.
//! - Escrows owned by this node that no tracked job knows of (a job forgotten in a crash, a lock
//!   that landed after its job was cancelled) are refunded: seen at once from an
//!   `EscrowLocked` event, and by one scan over the ledger's escrows on [`Input::Restored`] and
//!   every [`ORPHAN_SCAN_BLOCKS`] blocks.
//! - With [`Settings::credit_per_worker`] set, a credit line is opened (or topped up once half
//!   spent) to each staked worker with a fresh ad in the capability index, at most
//!   [`CREDIT_TXS_PER_BLOCK`] per block, while the balance allows.
//!
//! The machine does no I/O and reads no clock: heights come from the ledger, `now` only judges
//! whether an ad is fresh. Its work per block is proportional to the jobs it tracks (those
//! waiting for a lock or owed a settlement), never to all jobs.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use agora_ledger::{Event, Ledger};
use agora_types::job::{JobId, SignedJob, WorkResult};
use agora_types::ledger::{AccountId, TxKind};
use agora_types::sign::Signed;
use agora_types::{PeerId, UnixMillis};

use crate::index::CapabilityIndex;

/// Blocks to wait for a transaction to land before sending it again.
pub const RETRY_BLOCKS: u64 = 20;
/// Settlements tried before falling back to a refund (escrow) or giving up (credit).
pub const SETTLE_ATTEMPTS: u32 = 3;
/// The most credit lines opened or topped up per block.
pub const CREDIT_TXS_PER_BLOCK: usize = 8;
/// Blocks between two scans of the ledger's escrows for orphans of ours.
pub const ORPHAN_SCAN_BLOCKS: u64 = 20;

/// Settlement evidence: the signed results that agreed (paid) and those outvoted (slashed).
pub type Evidence = (Vec<Signed<WorkResult>>, Vec<Signed<WorkResult>>);

/// A job that reached a final state, with what its settlement needs.
#[derive(Clone, Debug)]
pub struct Finished {
    /// The job.
    pub job_id: JobId,
    /// Its evidence ([`JobRecord::evidence`](crate::JobRecord::evidence)), when it has an
    /// outcome; `None` when it ended without one (cancelled, failed before any verdict).
    pub evidence: Option<Evidence>,
    /// For a credit job: the signed job ([`TxKind::SettleCredit`] carries it). `None`: the job
    /// has an escrow.
    pub credit: Option<Box<SignedJob>>,
}

/// Which transaction of ours could not be signed or sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    /// An escrow lock.
    Lock(JobId),
    /// A settlement, credit settlement or refund.
    Settle(JobId),
    /// A credit line opened or topped up.
    Credit(AccountId),
}

impl Sent {
    /// What `kind` is, for [`Input::SendFailed`]; `None` for a kind this machine never sends.
    pub fn of(kind: &TxKind) -> Option<Sent> {
        match kind {
            TxKind::EscrowLock { job_id, .. } => Some(Sent::Lock(*job_id)),
            TxKind::Settle { job_id, .. } | TxKind::Refund { job_id } => {
                Some(Sent::Settle(*job_id))
            }
            TxKind::SettleCredit { job, .. } => Some(Sent::Settle(agora_types::job::job_id(job))),
            TxKind::CreditOpen { worker, .. } => Some(Sent::Credit(*worker)),
            _ => None,
        }
    }
}

/// Something happened, fed to [`Settlement::handle`].
#[derive(Debug)]
pub enum Input<'a> {
    /// The market asks for an escrow ([`Output::LockEscrow`](crate::Output::LockEscrow)).
    NeedEscrow {
        /// The job.
        job_id: JobId,
        /// The tokens to lock.
        amount: u64,
        /// Its maximum price per execution.
        max_price: u64,
        /// Its redundancy.
        redundancy: u8,
        /// The ledger as of the last applied block.
        ledger: &'a Ledger,
    },
    /// A job reached a final state (verified or failed).
    Final {
        /// The job and its evidence.
        job: Finished,
        /// The ledger as of the last applied block.
        ledger: &'a Ledger,
    },
    /// At start, the jobs loaded from the store: those still running with an escrow locked
    /// (`live`), and those final whose settlement may still be owed (`finished`). Jobs waiting
    /// for their lock come through [`Input::NeedEscrow`] (the market asks again on restore).
    /// Also scans the ledger's escrows for orphans of ours.
    Restored {
        /// Jobs past their escrow lock and not final.
        live: Vec<JobId>,
        /// Final jobs.
        finished: Vec<Finished>,
        /// The ledger as of the last applied block.
        ledger: &'a Ledger,
    },
    /// A block was applied: its events (in order) and the ledger after it.
    Block {
        /// The events of the blocks applied since the last [`Input::Block`].
        events: &'a [Event],
        /// The ledger after them.
        ledger: &'a Ledger,
        /// The capability index (for credit lines to workers with fresh ads).
        index: &'a CapabilityIndex,
    },
    /// A transaction of [`Output::Send`] could not be signed or sent.
    SendFailed(Sent),
}

/// Something the node must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Sign this transaction and gossip it (feed back [`Input::SendFailed`] if that fails).
    Send(TxKind),
    /// The job's escrow is on the ledger: feed [`Input::EscrowLocked`](crate::Input) to the
    /// market.
    EscrowLocked(JobId),
    /// The job's escrow cannot be locked: cancel it in the market.
    Cancel(JobId),
    /// The peers that may bid, after this block ([`Input::Stakers`](crate::Input)).
    Stakers(HashSet<PeerId>),
    /// The workers we hold an open credit line to ([`Input::CreditLines`](crate::Input)).
    CreditLines(HashSet<PeerId>),
    /// `peer` was slashed on the ledger: change its local reputation by `delta`.
    Penalize {
        /// The offender.
        peer: PeerId,
        /// Its offence's reputation delta.
        delta: i64,
    },
    /// The ledger settled this job (a payment, a short payment or a slash): the worker machine
    /// stops holding it against its credit line
    /// ([`worker::Input::Settled`](crate::worker::Input::Settled)) if it is owed it.
    Settled(JobId),
}

/// The machine's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// With a value: the credit line to keep open to each staked worker with a fresh ad.
    pub credit_per_worker: u64,
    /// How long an ad counts as fresh ([`Config::ad_ttl_ms`](crate::Config::ad_ttl_ms)).
    pub ad_ttl_ms: u64,
}

/// A job waiting for its escrow lock.
#[derive(Clone, Debug)]
struct Locking {
    amount: u64,
    max_price: u64,
    redundancy: u8,
    /// The height the lock was last sent at, and how often it was sent.
    sent: u64,
    attempts: u32,
}

/// A final job whose settlement is owed.
#[derive(Clone, Debug)]
struct Owed {
    evidence: Option<Evidence>,
    credit: Option<Box<SignedJob>>,
    sent: u64,
    attempts: u32,
}

/// The settlement machine of one node.
#[derive(Clone, Debug)]
pub struct Settlement {
    local: PeerId,
    account: AccountId,
    settings: Settings,
    /// Jobs waiting for their escrow lock.
    locking: BTreeMap<JobId, Locking>,
    /// Jobs with a lock and not final.
    live: BTreeSet<JobId>,
    /// Final jobs whose settlement is owed.
    owed: BTreeMap<JobId, Owed>,
    /// Credit-line transactions in flight: worker -> height sent.
    credit_txs: BTreeMap<AccountId, u64>,
    /// The height of the last orphan scan.
    scanned: u64,
}

impl Settlement {
    /// The machine of the node `local`, whose ledger account is `account`, tracking nothing.
    pub fn new(local: PeerId, account: AccountId, settings: Settings) -> Self {
        Settlement {
            local,
            account,
            settings,
            locking: BTreeMap::new(),
            live: BTreeSet::new(),
            owed: BTreeMap::new(),
            credit_txs: BTreeMap::new(),
            scanned: 0,
        }
    }

    /// Whether `job_id` waits for its escrow lock.
    pub fn is_locking(&self, job_id: &JobId) -> bool {
        self.locking.contains_key(job_id)
    }

    /// Whether the settlement of `job_id` is still owed.
    pub fn is_owed(&self, job_id: &JobId) -> bool {
        self.owed.contains_key(job_id)
    }

    /// How many jobs the machine tracks (waiting for a lock, running with one, owed).
    pub fn tracked(&self) -> usize {
        self.locking.len() + self.live.len() + self.owed.len()
    }

    /// Feeds one input at time `now`; returns what the node must do, in order.
    pub fn handle(&mut self, input: Input<'_>, now: UnixMillis) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::NeedEscrow {
                job_id,
                amount,
                max_price,
                redundancy,
                ledger,
            } => {
                self.live.remove(&job_id);
                let e = self.locking.entry(job_id).or_insert(Locking {
                    amount,
                    max_price,
                    redundancy,
                    sent: 0,
                    attempts: 0,
                });
                e.amount = amount;
                e.max_price = max_price;
                e.redundancy = redundancy;
                self.lock(job_id, ledger, &mut out);
            }
            Input::Final { job, ledger } => {
                self.finish(job, ledger, &mut out);
            }
            Input::Restored {
                live,
                finished,
                ledger,
            } => {
                for id in live {
                    if !self.locking.contains_key(&id) && !self.owed.contains_key(&id) {
                        self.live.insert(id);
                    }
                }
                for job in finished {
                    self.finish(job, ledger, &mut out);
                }
                self.scan_orphans(ledger, &mut out);
            }
            Input::Block {
                events,
                ledger,
                index,
            } => self.block(events, ledger, index, now, &mut out),
            Input::SendFailed(sent) => match sent {
                Sent::Lock(id) => {
                    if self.locking.remove(&id).is_some() {
                        out.push(Output::Cancel(id));
                    }
                }
                Sent::Settle(id) => {
                    // Not sent: try again with the next block.
                    if let Some(o) = self.owed.get_mut(&id) {
                        o.attempts = o.attempts.saturating_sub(1);
                        o.sent = 0;
                    }
                }
                Sent::Credit(worker) => {
                    self.credit_txs.remove(&worker);
                }
            },
        }
        out
    }

    /// A job is final: its lock is no longer wanted, its settlement is owed.
    fn finish(&mut self, job: Finished, ledger: &Ledger, out: &mut Vec<Output>) {
        let id = job.job_id;
        self.locking.remove(&id);
        self.live.remove(&id);
        // Nothing was locked for a credit job: only a quorum to pay needs a settlement.
        if job.credit.is_some() && job.evidence.as_ref().is_none_or(|(q, _)| q.is_empty()) {
            return;
        }
        let owed = self.owed.entry(id).or_insert(Owed {
            evidence: None,
            credit: None,
            sent: 0,
            attempts: 0,
        });
        owed.evidence = job.evidence;
        owed.credit = job.credit;
        self.settle(id, ledger, out);
    }

    /// Sends the escrow lock of `job_id` unless the ledger holds it (then: locked) or it was
    /// sent less than [`RETRY_BLOCKS`] ago.
    fn lock(&mut self, job_id: JobId, ledger: &Ledger, out: &mut Vec<Output>) {
        let height = ledger.height();
        if ledger
            .escrow(&job_id)
            .is_some_and(|e| e.owner == self.account)
        {
            self.locked(job_id, out);
            return;
        }
        let Some(l) = self.locking.get_mut(&job_id) else {
            return;
        };
        if l.attempts > 0 && height < l.sent + RETRY_BLOCKS {
            return;
        }
        l.sent = height;
        l.attempts += 1;
        out.push(Output::Send(TxKind::EscrowLock {
            job_id,
            amount: l.amount,
            max_price: l.max_price,
            redundancy: l.redundancy,
        }));
    }

    /// The ledger holds our lock for `job_id`.
    fn locked(&mut self, job_id: JobId, out: &mut Vec<Output>) {
        if self.locking.remove(&job_id).is_some() {
            self.live.insert(job_id);
            out.push(Output::EscrowLocked(job_id));
        }
    }

    /// Sends what the owed `job_id` needs now, or forgets it once nothing more is owed.
    fn settle(&mut self, job_id: JobId, ledger: &Ledger, out: &mut Vec<Output>) {
        let height = ledger.height();
        let Some(o) = self.owed.get_mut(&job_id) else {
            return;
        };
        let waiting = o.attempts > 0 && height < o.sent + RETRY_BLOCKS;
        if let Some(job) = &o.credit {
            if ledger.is_closed(&job_id) || (o.attempts >= SETTLE_ATTEMPTS && !waiting) {
                self.owed.remove(&job_id);
                return;
            }
            // Past that check, every attempt used up is still within its wait.
            if waiting {
                return;
            }
            let Some((quorum, minority)) = o.evidence.clone() else {
                self.owed.remove(&job_id);
                return;
            };
            tracing::info!(job = %job_id.short(), paid = quorum.len(), slashed = minority.len(), "settling from credit lines");
            o.sent = height;
            o.attempts += 1;
            out.push(Output::Send(TxKind::SettleCredit {
                job: job.clone(),
                quorum,
                minority,
            }));
            return;
        }
        let Some(escrow) = ledger.escrow(&job_id) else {
            // Closed (or never locked): nothing is owed.
            self.owed.remove(&job_id);
            return;
        };
        if escrow.owner != self.account {
            self.owed.remove(&job_id);
            return;
        }
        if waiting {
            return;
        }
        let kind = match &o.evidence {
            Some((quorum, minority)) if !quorum.is_empty() && o.attempts < SETTLE_ATTEMPTS => {
                tracing::info!(job = %job_id.short(), paid = quorum.len(), slashed = minority.len(), "settling");
                TxKind::Settle {
                    job_id,
                    quorum: quorum.clone(),
                    minority: minority.clone(),
                }
            }
            // A quorum to pay whose settlement keeps failing: wait for the refund height.
            Some((quorum, _)) if !quorum.is_empty() && height < escrow.refund_height => return,
            // Nothing to pay (cancelled, deadline, no quorum, a machine-dependent limit): the
            // escrow returns at once.
            _ => {
                tracing::info!(job = %job_id.short(), "refunding the escrow");
                TxKind::Refund { job_id }
            }
        };
        o.sent = height;
        o.attempts += 1;
        out.push(Output::Send(kind));
    }

    /// Owes a refund for every escrow of ours that no tracked job knows of.
    fn scan_orphans(&mut self, ledger: &Ledger, out: &mut Vec<Output>) {
        self.scanned = ledger.height();
        let orphans: Vec<JobId> = ledger
            .escrows()
            .filter(|(id, e)| e.owner == self.account && !self.knows(id))
            .map(|(id, _)| *id)
            .collect();
        for id in orphans {
            self.orphan(id, ledger, out);
        }
    }

    fn knows(&self, id: &JobId) -> bool {
        self.locking.contains_key(id) || self.live.contains(id) || self.owed.contains_key(id)
    }

    /// An escrow of ours that no job knows of: refund it.
    fn orphan(&mut self, id: JobId, ledger: &Ledger, out: &mut Vec<Output>) {
        tracing::info!(job = %id.short(), "an escrow of ours without a job");
        self.owed.insert(
            id,
            Owed {
                evidence: None,
                credit: None,
                sent: 0,
                attempts: 0,
            },
        );
        self.settle(id, ledger, out);
    }

    fn block(
        &mut self,
        events: &[Event],
        ledger: &Ledger,
        index: &CapabilityIndex,
        now: UnixMillis,
        out: &mut Vec<Output>,
    ) {
        out.push(Output::Stakers(ledger.bidders()));
        let lines = ledger
            .credits_of(&self.account)
            .filter(|(_, c)| c.closing_after_ms.is_none() && c.amount > 0)
            .filter_map(|(w, _)| w.peer_id().ok())
            .collect();
        out.push(Output::CreditLines(lines));
        for e in events {
            match e {
                Event::Paid { job_id, .. }
                | Event::CreditShort { job_id, .. }
                | Event::Slashed {
                    job_id: Some(job_id),
                    ..
                } => out.push(Output::Settled(*job_id)),
                _ => {}
            }
            match e {
                Event::CreditOpened { owner, worker, .. } if *owner == self.account => {
                    self.credit_txs.remove(worker);
                }
                Event::EscrowLocked { job_id, owner, .. } if *owner == self.account => {
                    if self.locking.contains_key(job_id) {
                        self.locked(*job_id, out);
                    } else if !self.knows(job_id) && ledger.escrow(job_id).is_some() {
                        // Landed after its job ended (or was forgotten).
                        self.orphan(*job_id, ledger, out);
                    }
                }
                Event::Slashed {
                    offender, offence, ..
                } => {
                    if let Ok(peer) = offender.peer_id() {
                        out.push(Output::Penalize {
                            peer,
                            delta: offence.reputation_delta(),
                        });
                    }
                }
                _ => {}
            }
        }
        // Locks that landed unseen (a restart), and locks to send again.
        let waiting: Vec<JobId> = self.locking.keys().copied().collect();
        for id in waiting {
            self.lock(id, ledger, out);
        }
        let owed: Vec<JobId> = self.owed.keys().copied().collect();
        for id in owed {
            self.settle(id, ledger, out);
        }
        if ledger.height() >= self.scanned + ORPHAN_SCAN_BLOCKS {
            self.scan_orphans(ledger, out);
        }
        self.open_credit_lines(ledger, index, now, out);
    }

    /// Opens (or tops up, once half spent) a credit line to each staked worker with a fresh ad,
    /// a few per block, while the balance allows.
    fn open_credit_lines(
        &mut self,
        ledger: &Ledger,
        index: &CapabilityIndex,
        now: UnixMillis,
        out: &mut Vec<Output>,
    ) {
        let per = self.settings.credit_per_worker;
        if per == 0 {
            return;
        }
        let height = ledger.height();
        // Those not seen to land within their retry window may be sent again: forget them.
        self.credit_txs
            .retain(|_, sent| height < *sent + RETRY_BLOCKS);
        let mut balance = ledger.account(&self.account).map_or(0, |a| a.balance);
        let mut sent = 0;
        for (peer, e) in index.iter() {
            if *peer == self.local || now.saturating_sub(e.updated_ms) > self.settings.ad_ttl_ms {
                continue;
            }
            let Some(worker) = AccountId::from_peer_id(peer) else {
                continue;
            };
            if !ledger.can_bid(&worker) {
                continue;
            }
            let have = ledger.credit_line(&self.account, &worker);
            if have.is_some_and(|c| c.closing_after_ms.is_some()) {
                continue;
            }
            let amount = have.map_or(0, |c| c.amount);
            if amount >= per / 2 {
                continue;
            }
            let top_up = per - amount;
            if sent >= CREDIT_TXS_PER_BLOCK || balance < top_up {
                break;
            }
            // Still within its retry window (older ones were forgotten above).
            if self.credit_txs.contains_key(&worker) {
                continue;
            }
            self.credit_txs.insert(worker, height);
            balance -= top_up;
            sent += 1;
            out.push(Output::Send(TxKind::CreditOpen {
                worker,
                amount: top_up,
            }));
        }
    }
}

#[cfg(test)]
#[path = "settlement_tests.rs"]
mod tests;
