//! The node's side of the ledger: the application Malachite replicates, the mempool, and the
//! queries the market and the API make.
//!
//! [`LedgerApp`] is what `agora-chain` drives: it proposes blocks from the mempool, checks
//! proposals, and applies decided blocks to the in-memory [`Ledger`]. The chain stores decided
//! blocks in its own redb file and replays them into the app at start, so the ledger state is
//! rebuilt from disk after a restart or a crash; nothing else needs saving.
//!
//! The state sits behind one mutex shared by the chain's task (propose, validate, commit), the
//! core task (stake and escrow checks, its own transactions) and the API (queries). Every
//! critical section is pure computation over memory, never I/O, so the lock is held briefly.
//! After each commit the core is told (a bounded queue; a dropped notice is harmless because
//! the core reconciles with the whole state each time).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use agora_chain::{Application, Validator};
use agora_ledger::{
    AccountId, Block, BlockReceipt, Event, Ledger, Mempool, MempoolError, PROPOSAL_BUDGET_BYTES,
    SignedTx, Tx, TxKind,
};
use agora_types::sign::Signed;
use agora_types::{Hash, Keypair, codec, now_ms};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

/// How many block receipts are kept in memory for the API and the core: at most this many
/// blocks, and at most [`TX_RECEIPTS_KEPT`] transaction receipts in all (full blocks are big).
const RECEIPTS_KEPT: usize = 2_048;
const TX_RECEIPTS_KEPT: usize = 100_000;
/// How many events concerning this node's account are kept for `wallet history`.
const HISTORY_KEPT: usize = 10_000;
/// The most transactions waiting, in all and from one sender.
const MEMPOOL_CAPACITY: usize = 50_000;
const MEMPOOL_PER_SENDER: usize = 1_024;

/// The state shared by the chain, the core and the API.
pub(crate) struct LedgerState {
    pub ledger: Ledger,
    pub mempool: Mempool,
    pub receipts: VecDeque<BlockReceipt>,
    /// Transaction receipts held in `receipts`.
    pub tx_receipts: usize,
    pub history: VecDeque<(u64, Event)>,
    pub state_root: Hash,
}

/// A cloneable reference to the ledger state, with this node's account.
#[derive(Clone)]
pub(crate) struct LedgerRef {
    state: Arc<Mutex<LedgerState>>,
    pub local: AccountId,
    keypair: Keypair,
}

impl LedgerRef {
    pub fn new(ledger: Ledger, local: AccountId, keypair: Keypair) -> Self {
        let state_root = ledger.state_root();
        LedgerRef {
            state: Arc::new(Mutex::new(LedgerState {
                ledger,
                mempool: Mempool::new(MEMPOOL_CAPACITY, MEMPOOL_PER_SENDER),
                receipts: VecDeque::new(),
                tx_receipts: 0,
                history: VecDeque::new(),
                state_root,
            })),
            local,
            keypair,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, LedgerState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Signs `kind` with this node's key at its next free nonce and puts it in the mempool.
    /// The caller gossips the returned transaction.
    pub fn sign_own(&self, kind: TxKind) -> Result<SignedTx, MempoolError> {
        let mut guard = self.lock();
        let st = &mut *guard;
        let next = st.ledger.account(&self.local).map_or(0, |a| a.nonce);
        let nonce = st
            .mempool
            .last_nonce(&self.local)
            .map_or(next, |n| (n + 1).max(next));
        let tx = Tx {
            chain_id: st.ledger.chain_id().to_string(),
            nonce,
            kind,
        };
        let signed = Signed::sign(&self.keypair, tx, now_ms()).map_err(|e| {
            MempoolError::Invalid(agora_ledger::TxError::BadSignature(e.to_string()))
        })?;
        let st = &mut *st;
        st.mempool.insert(signed.clone(), &st.ledger)?;
        Ok(signed)
    }

    /// The peers of every account with stake that is not banned: who may connect in
    /// permissioned mode.
    pub fn stake_set(&self) -> std::collections::HashSet<agora_types::PeerId> {
        let st = self.lock();
        st.ledger
            .accounts()
            .filter(|(_, a)| a.stake > 0 && !a.banned)
            .filter_map(|(id, _)| id.peer_id().ok())
            .collect()
    }

    /// The peers of every account that may bid (the minimum bidder stake, not banned): who may
    /// be leased work directly from its ad.
    pub fn bidders(&self) -> std::collections::HashSet<agora_types::PeerId> {
        self.lock().ledger.bidders()
    }

    /// This node's waiting transactions, signed again with a fresh timestamp so that they pass
    /// the synchrony bound when gossiped again.
    pub fn resign_pending(&self) -> Vec<SignedTx> {
        let pending = self.lock().mempool.pending_of(&self.local);
        pending
            .into_iter()
            .filter_map(|t| Signed::sign(&self.keypair, t.payload, now_ms()).ok())
            .collect()
    }
}

/// What the chain drives.
pub(crate) struct LedgerApp {
    pub ledger: LedgerRef,
    /// Tells the core a block was applied (its height).
    pub notify: mpsc::Sender<u64>,
}

impl Application for LedgerApp {
    fn validators(&self, _height: u64) -> Vec<Validator> {
        self.ledger
            .lock()
            .ledger
            .validators()
            .iter()
            .map(|v| Validator {
                public_key: v.account.0,
                power: v.power,
            })
            .collect()
    }

    fn propose(&mut self, height: u64) -> Vec<u8> {
        let st = self.ledger.lock();
        let max = st.ledger.params().max_block_txs;
        let txs = st
            .mempool
            .take_within(&st.ledger, max, PROPOSAL_BUDGET_BYTES);
        drop(st);
        let block = Block {
            height,
            time_ms: now_ms(),
            txs,
        };
        debug!(height, txs = block.txs.len(), "proposing a block");
        codec::encode(&block).unwrap_or_default()
    }

    fn validate(&mut self, height: u64, payload: &[u8]) -> bool {
        let Ok(block) = Block::decode(payload) else {
            warn!(height, "refusing a proposal that does not decode");
            return false;
        };
        let max = self.ledger.lock().ledger.params().max_block_txs;
        if block.height != height || block.txs.len() > max {
            warn!(
                height,
                block_height = block.height,
                txs = block.txs.len(),
                "refusing a malformed proposal"
            );
            return false;
        }
        true
    }

    fn commit(&mut self, height: u64, payload: &[u8], decided_at_ms: u64) -> [u8; 32] {
        // A decided payload was validated by a quorum; one that still does not decode (it
        // cannot happen with honest validators) is applied as an empty block, the same way on
        // every node.
        let block = Block::decode(payload).unwrap_or(Block {
            height,
            time_ms: decided_at_ms,
            txs: vec![],
        });
        let block = if block.height == height {
            block
        } else {
            Block {
                height,
                time_ms: decided_at_ms,
                txs: vec![],
            }
        };
        let mut guard = self.ledger.lock();
        let st = &mut *guard;
        // Transactions that came through our mempool were verified on the way in.
        let mempool = &st.mempool;
        let receipt = match st
            .ledger
            .apply_block_with(&block, |tx| mempool.contains(tx))
        {
            Ok(r) => r,
            Err(e) => {
                // Only possible if the chain skipped a height: a bug, and loud.
                warn!(height, error = %e, "cannot apply a decided block");
                return st.state_root.0;
            }
        };
        let LedgerState {
            ledger, mempool, ..
        } = &mut *st;
        mempool.prune(ledger);
        let local = self.ledger.local;
        let mine: Vec<(u64, Event)> = receipt
            .events
            .iter()
            .filter(|(_, e)| concerns(e, &local))
            .cloned()
            .collect();
        for e in mine {
            if st.history.len() >= HISTORY_KEPT {
                st.history.pop_front();
            }
            st.history.push_back(e);
        }
        for r in receipt.receipts.iter().filter(|r| r.error.is_some()) {
            debug!(height, tx = %r.tx_id.short(), kind = %r.kind, error = ?r.error, "transaction refused");
        }
        if !receipt.receipts.is_empty() {
            info!(height, txs = receipt.receipts.len(), "block applied");
        }
        st.state_root = receipt.state_root;
        st.tx_receipts += receipt.receipts.len();
        st.receipts.push_back(receipt);
        while st.receipts.len() > 1
            && (st.receipts.len() > RECEIPTS_KEPT || st.tx_receipts > TX_RECEIPTS_KEPT)
        {
            if let Some(old) = st.receipts.pop_front() {
                st.tx_receipts -= old.receipts.len();
            }
        }
        let root = st.state_root.0;
        drop(guard);
        let _ = self.notify.try_send(height);
        root
    }
}

/// Whether an event concerns `account`.
pub(crate) fn concerns(e: &Event, account: &AccountId) -> bool {
    match e {
        Event::Transferred { from, to, .. } => from == account || to == account,
        Event::Staked { account: a, .. }
        | Event::Unstaked { account: a, .. }
        | Event::Released { account: a, .. }
        | Event::Burned { account: a, .. } => a == account,
        Event::EscrowLocked { owner, .. } | Event::Refunded { owner, .. } => owner == account,
        Event::Paid { worker, .. } => worker == account,
        Event::Slashed { offender, .. } => offender == account,
        Event::Minted { to, .. } => to == account,
        Event::CreditOpened { owner, worker, .. }
        | Event::CreditClosing { owner, worker, .. }
        | Event::CreditClosed { owner, worker, .. } => owner == account || worker == account,
        Event::CreditShort { worker, .. } => worker == account,
    }
}

/// An account as the API shows it.
#[derive(Serialize, Clone, Debug)]
pub struct AccountView {
    /// The account (a peer id).
    pub id: String,
    /// Spendable tokens.
    pub balance: u64,
    /// Staked tokens.
    pub stake: u64,
    /// Unbonding tokens.
    pub unbonding: u64,
    /// The next nonce.
    pub nonce: u64,
    /// Banned for good.
    pub banned: bool,
    /// Open escrows it owns: count and tokens.
    pub escrows: usize,
    /// Tokens in its open escrows.
    pub escrowed: u64,
    /// May bid on jobs.
    pub can_bid: bool,
    /// Is a validator now.
    pub validator: bool,
    /// Open credit lines it holds to workers (not closing).
    pub credit_lines: usize,
    /// Tokens on all its credit lines (closing ones too).
    pub credit_locked: u64,
}

/// `GET /v1/ledger/status`.
#[derive(Serialize, Clone, Debug)]
pub struct LedgerStatus {
    /// The chain id.
    pub chain_id: String,
    /// The last applied height.
    pub height: u64,
    /// The state root after it.
    pub state_root: String,
    /// When the last block was proposed (ms since the epoch).
    pub last_block_ms: u64,
    /// The validators for the next height.
    pub validators: Vec<ValidatorView>,
    /// Waiting transactions.
    pub mempool: usize,
    /// Token totals.
    pub supply: SupplyView,
    /// Peers on the consensus network.
    pub consensus_peers: usize,
    /// Escrows still open.
    pub open_escrows: usize,
    /// Jobs whose quorum was paid.
    pub settled_jobs: u64,
}

/// A validator as the API shows it.
#[derive(Serialize, Clone, Debug)]
pub struct ValidatorView {
    /// Its account.
    pub id: String,
    /// Its voting power.
    pub power: u64,
}

/// Token totals as the API shows them (strings would lose nothing, but these fit in u64 for any
/// genesis this node accepts).
#[derive(Serialize, Clone, Debug)]
pub struct SupplyView {
    /// Everything held.
    pub circulating: u128,
    /// Genesis + minted - burned.
    pub expected: u128,
    /// Whether the two agree.
    pub conserved: bool,
    /// Paid to workers.
    pub paid: u128,
    /// Slashed (burned).
    pub slashed: u128,
    /// Minted.
    pub minted: u128,
    /// Burned (slashing included).
    pub burned: u128,
}

impl LedgerState {
    pub fn account_view(&self, id: &AccountId) -> Option<AccountView> {
        let a = self.ledger.account(id)?;
        let (escrows, escrowed) = self
            .ledger
            .escrows()
            .filter(|(_, e)| e.owner == *id)
            .fold((0, 0u64), |(n, t), (_, e)| {
                (n + 1, t.saturating_add(e.amount))
            });
        Some(AccountView {
            id: id.to_string(),
            balance: a.balance,
            stake: a.stake,
            unbonding: a.unbonding.iter().map(|u| u.amount).sum(),
            nonce: a.nonce,
            banned: a.banned,
            escrows,
            escrowed,
            can_bid: self.ledger.can_bid(id),
            validator: self.ledger.validators().iter().any(|v| v.account == *id),
            credit_lines: self
                .ledger
                .credits_of(id)
                .filter(|(_, c)| c.closing_after_ms.is_none())
                .count(),
            credit_locked: self
                .ledger
                .credits_of(id)
                .fold(0u64, |t, (_, c)| t.saturating_add(c.amount)),
        })
    }

    pub fn status(&self, consensus_peers: usize) -> LedgerStatus {
        let t = self.ledger.totals();
        LedgerStatus {
            chain_id: self.ledger.chain_id().to_string(),
            height: self.ledger.height(),
            state_root: self.state_root.to_hex(),
            last_block_ms: self.ledger.last_block_ms(),
            validators: self
                .ledger
                .validators()
                .iter()
                .map(|v| ValidatorView {
                    id: v.account.to_string(),
                    power: v.power,
                })
                .collect(),
            mempool: self.mempool.len(),
            supply: SupplyView {
                circulating: self.ledger.circulating(),
                expected: self.ledger.expected_supply(),
                conserved: self.ledger.supply_conserved(),
                paid: t.paid,
                slashed: t.slashed,
                minted: t.minted,
                burned: t.burned,
            },
            consensus_peers,
            open_escrows: self.ledger.escrows().count(),
            settled_jobs: t.settled_jobs,
        }
    }
}
