//! Transactions waiting for a block: bounded in all and per sender, ordered by nonce.
//!
//! A proposer takes, sender by sender in turn, the run of transactions that starts at each
//! sender's next nonce; a gap stops that sender's run (the missing nonce may still arrive).
//! After each block, transactions whose nonce is used up are dropped.

use std::collections::BTreeMap;

use agora_types::codec;
use agora_types::ledger::{AccountId, MAX_BLOCK_BYTES, SignedTx};

use crate::state::{Ledger, TxError};

/// The most transaction bytes a proposed block carries: the block size cap, less room for the
/// block's own fields.
pub const PROPOSAL_BUDGET_BYTES: usize = MAX_BLOCK_BYTES - 64 * 1024;

/// Why a transaction was not taken into the mempool.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MempoolError {
    /// The ledger refuses it outright.
    #[error(transparent)]
    Invalid(#[from] TxError),
    /// A transaction with this sender and nonce is already waiting.
    #[error("a transaction with nonce {0} from this sender is already waiting")]
    Duplicate(u64),
    /// The mempool is full.
    #[error("the mempool is full ({0} transactions); try again after the next block")]
    Full(usize),
    /// The sender has too many transactions waiting.
    #[error("{0} transactions from this sender are already waiting")]
    SenderFull(usize),
}

/// The mempool.
#[derive(Debug)]
pub struct Mempool {
    by_sender: BTreeMap<AccountId, BTreeMap<u64, SignedTx>>,
    len: usize,
    capacity: usize,
    per_sender: usize,
}

impl Mempool {
    /// A mempool holding at most `capacity` transactions, `per_sender` from one account.
    pub fn new(capacity: usize, per_sender: usize) -> Self {
        Mempool {
            by_sender: BTreeMap::new(),
            len: 0,
            capacity,
            per_sender,
        }
    }

    /// How many transactions wait.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a transaction after the ledger's pre-checks (chain, nonce not used, signature).
    pub fn insert(&mut self, tx: SignedTx, ledger: &Ledger) -> Result<(), MempoolError> {
        ledger.precheck(&tx)?;
        self.insert_verified(tx, ledger)
    }

    /// Adds a transaction whose signature the caller has verified (outside any lock), after the
    /// ledger's other pre-checks.
    pub fn insert_verified(&mut self, tx: SignedTx, ledger: &Ledger) -> Result<(), MempoolError> {
        ledger.precheck_stateful(&tx)?;
        let sender = AccountId(tx.signer);
        let nonce = tx.payload.nonce;
        let queue = self.by_sender.get(&sender);
        if queue.is_some_and(|q| q.contains_key(&nonce)) {
            return Err(MempoolError::Duplicate(nonce));
        }
        if self.len >= self.capacity {
            return Err(MempoolError::Full(self.capacity));
        }
        if queue.is_some_and(|q| q.len() >= self.per_sender) {
            return Err(MempoolError::SenderFull(self.per_sender));
        }
        self.by_sender.entry(sender).or_default().insert(nonce, tx);
        self.len += 1;
        Ok(())
    }

    /// Up to `max` transactions that can follow the ledger's state, for a block proposal.
    pub fn take(&self, ledger: &Ledger, max: usize) -> Vec<SignedTx> {
        let mut runs: Vec<Vec<&SignedTx>> = Vec::new();
        for (sender, queue) in &self.by_sender {
            let Some(account) = ledger.account(sender) else {
                continue;
            };
            let run: Vec<&SignedTx> = (account.nonce..)
                .zip(queue.range(account.nonce..))
                .take_while(|(next, (nonce, _))| *nonce == next)
                .map(|(_, (_, tx))| tx)
                .collect();
            if !run.is_empty() {
                runs.push(run);
            }
        }
        // Round robin over senders, so that one busy sender cannot fill a block alone.
        let mut out = Vec::new();
        let mut depth = 0;
        while out.len() < max {
            let mut any = false;
            for run in &runs {
                if let Some(tx) = run.get(depth) {
                    any = true;
                    out.push((*tx).clone());
                    if out.len() == max {
                        break;
                    }
                }
            }
            if !any {
                break;
            }
            depth += 1;
        }
        // Within a block, each sender's transactions must keep nonce order: a stable sort by
        // depth kept that; nothing else to do.
        out
    }

    /// [`Mempool::take`], cut where the encoded transactions would pass `max_bytes`: the block a
    /// proposer builds. Cutting the round-robin order from its end keeps each sender's run a
    /// prefix, so nonces stay contiguous.
    pub fn take_within(&self, ledger: &Ledger, max: usize, max_bytes: usize) -> Vec<SignedTx> {
        let mut txs = self.take(ledger, max);
        let mut size: usize = 0;
        let keep = txs
            .iter()
            .take_while(|tx| {
                size = size.saturating_add(codec::encode(tx).map_or(usize::MAX, |b| b.len()));
                size <= max_bytes
            })
            .count();
        txs.truncate(keep);
        txs
    }

    /// Drops transactions whose nonce the ledger has used up.
    pub fn prune(&mut self, ledger: &Ledger) {
        let mut len = 0;
        self.by_sender.retain(|sender, queue| {
            let next = ledger.account(sender).map_or(0, |a| a.nonce);
            queue.retain(|nonce, _| *nonce >= next);
            len += queue.len();
            !queue.is_empty()
        });
        self.len = len;
    }

    /// Whether this exact signed transaction waits here (and so was verified on the way in).
    pub fn contains(&self, tx: &SignedTx) -> bool {
        self.by_sender
            .get(&AccountId(tx.signer))
            .and_then(|q| q.get(&tx.payload.nonce))
            .is_some_and(|t| t == tx)
    }

    /// The highest waiting nonce of `sender`, if any.
    pub fn last_nonce(&self, sender: &AccountId) -> Option<u64> {
        self.by_sender
            .get(sender)
            .and_then(|q| q.keys().next_back().copied())
    }

    /// The waiting transactions of `sender`, in nonce order.
    pub fn pending_of(&self, sender: &AccountId) -> Vec<SignedTx> {
        self.by_sender
            .get(sender)
            .map(|q| q.values().cloned().collect())
            .unwrap_or_default()
    }
}
