//! The ledger state and the rules that change it.

use std::collections::{BTreeMap, BTreeSet};

use agora_types::Hash;
use agora_types::job::{JobId, WorkResult};
use agora_types::ledger::{
    AccountId, Block, Evidence, MAX_EVIDENCE, Offence, OffenceReport, SignedTx, Tx, TxKind, tx_id,
};
use agora_types::sign::Signed;
use serde::{Deserialize, Serialize};

use crate::genesis::{Genesis, GenesisError, Params, account_of};
use crate::validators::{self, Validator};

/// Tokens on their way back from stake to balance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Unbonding {
    /// How many.
    pub amount: u64,
    /// The height at which they return to the balance.
    pub release_height: u64,
}

/// One account.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Spendable tokens.
    pub balance: u64,
    /// The nonce its next transaction must carry.
    pub nonce: u64,
    /// Staked tokens (bonded).
    pub stake: u64,
    /// Stake on its way out, still slashable.
    pub unbonding: Vec<Unbonding>,
    /// Banned for good (a coordinated attack): may not stake, bid or validate.
    pub banned: bool,
}

impl Account {
    fn unbonding_total(&self) -> u128 {
        self.unbonding.iter().map(|u| u128::from(u.amount)).sum()
    }

    fn holdings(&self) -> u128 {
        u128::from(self.balance) + u128::from(self.stake) + self.unbonding_total()
    }
}

/// Tokens locked for a job until it is settled or refunded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Escrow {
    /// Who locked it (the job's submitter).
    pub owner: AccountId,
    /// How much is locked.
    pub amount: u64,
    /// The most one worker is paid.
    pub max_price: u64,
    /// The job's redundancy.
    pub redundancy: u8,
    /// When it was locked.
    pub locked_height: u64,
    /// From this height on, the owner may take it back.
    pub refund_height: u64,
}

/// Tokens a submitter locked for one worker, that the submitter's credit jobs draw on when they
/// are settled (`TxKind::CreditOpen`; ARCHITECTURE.md, "Credit lines").
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Credit {
    /// What is left on the line.
    pub amount: u64,
    /// Set once the owner closes it: from this block time (ms) on, what is left returns.
    pub closing_after_ms: Option<u64>,
}

/// Something a transaction did, for the node (reputation, the market) and for people.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Tokens moved.
    Transferred {
        /// From.
        from: AccountId,
        /// To.
        to: AccountId,
        /// How much.
        amount: u64,
    },
    /// Balance moved into stake.
    Staked {
        /// Whose.
        account: AccountId,
        /// How much.
        amount: u64,
    },
    /// Stake started unbonding.
    Unstaked {
        /// Whose.
        account: AccountId,
        /// How much.
        amount: u64,
        /// When it returns.
        release_height: u64,
    },
    /// Unbonded stake returned to the balance.
    Released {
        /// Whose.
        account: AccountId,
        /// How much.
        amount: u64,
    },
    /// An escrow was locked.
    EscrowLocked {
        /// The job.
        job_id: JobId,
        /// Its owner.
        owner: AccountId,
        /// How much.
        amount: u64,
    },
    /// A worker was paid for a verified job.
    Paid {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: AccountId,
        /// How much (its signed price).
        amount: u64,
    },
    /// What was left of an escrow went back to its owner.
    Refunded {
        /// The job.
        job_id: JobId,
        /// The owner.
        owner: AccountId,
        /// How much.
        amount: u64,
    },
    /// An account lost stake (burned).
    Slashed {
        /// Who.
        offender: AccountId,
        /// Why.
        offence: Offence,
        /// How much stake was burned.
        amount: u64,
        /// The job, when the offence concerns one.
        job_id: Option<JobId>,
    },
    /// Tokens created.
    Minted {
        /// For whom.
        to: AccountId,
        /// How much.
        amount: u64,
    },
    /// A credit line was opened or topped up.
    CreditOpened {
        /// The submitter.
        owner: AccountId,
        /// The worker.
        worker: AccountId,
        /// How much was added.
        amount: u64,
    },
    /// A credit line started closing.
    CreditClosing {
        /// The submitter.
        owner: AccountId,
        /// The worker.
        worker: AccountId,
        /// From this block time on, what is left returns to the owner.
        after_ms: u64,
    },
    /// A closed credit line's rest returned to its owner.
    CreditClosed {
        /// The submitter.
        owner: AccountId,
        /// The worker.
        worker: AccountId,
        /// How much returned.
        amount: u64,
    },
    /// A credit job's worker was not paid: its result is older than `credit_settle_ms`, or its
    /// line held less than its price (it was paid what was left).
    CreditShort {
        /// The job.
        job_id: JobId,
        /// The worker.
        worker: AccountId,
        /// What it signed for.
        price: u64,
        /// What it was paid.
        paid: u64,
    },
    /// Tokens destroyed.
    Burned {
        /// Whose.
        account: AccountId,
        /// How much.
        amount: u64,
    },
}

/// Why a transaction was refused. A refused transaction changes nothing, except that the sender's
/// nonce is used up when the signature, chain and nonce were right (so one bad transaction cannot
/// block the ones behind it).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TxError {
    /// Signed for another network.
    #[error("the transaction is for chain {got:?}, this is {expected:?}")]
    WrongChain {
        /// This chain.
        expected: String,
        /// The transaction's.
        got: String,
    },
    /// The signature does not verify.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// The sender has no account.
    #[error("account {0} does not exist; it must receive tokens first")]
    UnknownAccount(AccountId),
    /// Not the sender's next nonce (a replay, or out of order).
    #[error("nonce {got} is not the account's next nonce {expected}")]
    BadNonce {
        /// The account's nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// Not enough tokens.
    #[error("insufficient {what}: has {have}, needs {need}")]
    Insufficient {
        /// Balance or stake.
        what: &'static str,
        /// What the account has.
        have: u64,
        /// What the transaction needs.
        need: u64,
    },
    /// A zero amount, or an amount that does not fit.
    #[error("invalid amount: {0}")]
    Amount(String),
    /// An escrow problem.
    #[error("escrow: {0}")]
    Escrow(String),
    /// The evidence does not prove what it claims.
    #[error("invalid evidence: {0}")]
    Evidence(String),
    /// The sender may not do this.
    #[error("not allowed: {0}")]
    NotAllowed(String),
}

impl TxError {
    /// Whether the nonce was consumed.
    fn consumes_nonce(&self) -> bool {
        !matches!(
            self,
            TxError::WrongChain { .. }
                | TxError::BadSignature(_)
                | TxError::UnknownAccount(_)
                | TxError::BadNonce { .. }
        )
    }
}

/// What happened to one transaction of a block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The transaction's id.
    pub tx_id: Hash,
    /// Its sender.
    pub sender: AccountId,
    /// Its kind (`transfer`, `settle`, ...).
    pub kind: String,
    /// `None` when applied; otherwise why it was refused.
    pub error: Option<String>,
}

/// What a block did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BlockReceipt {
    /// The block's height.
    pub height: u64,
    /// One receipt per transaction, in order.
    pub receipts: Vec<Receipt>,
    /// Everything that happened, in order (releases of unbonded stake first).
    pub events: Vec<(u64, Event)>,
    /// The state root after the block.
    pub state_root: Hash,
}

/// Why a block could not be applied at all.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BlockError {
    /// Not the next height.
    #[error("block height {got} is not the next height {expected}")]
    Height {
        /// The next height.
        expected: u64,
        /// The block's.
        got: u64,
    },
    /// Too many transactions.
    #[error("{got} transactions in one block; the most is {max}")]
    TooManyTxs {
        /// How many.
        got: usize,
        /// The limit.
        max: usize,
    },
}

/// Token totals since genesis.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// The supply at genesis.
    pub genesis: u128,
    /// Minted since.
    pub minted: u128,
    /// Burned since (slashing burns).
    pub burned: u128,
    /// Paid to workers.
    pub paid: u128,
    /// Slashed.
    pub slashed: u128,
    /// Refunded from escrows.
    pub refunded: u128,
    /// Jobs settled (a quorum paid).
    pub settled_jobs: u64,
}

/// The ledger: a deterministic state machine. Same genesis, same blocks, same state root.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Ledger {
    chain_id: String,
    params: Params,
    mint_authority: Option<AccountId>,
    max_supply: u128,
    height: u64,
    last_block_ms: u64,
    accounts: BTreeMap<AccountId, Account>,
    escrows: BTreeMap<JobId, Escrow>,
    /// Credit lines, by (owner, worker).
    #[serde(default)]
    credits: BTreeMap<(AccountId, AccountId), Credit>,
    /// The time of the block being applied (its proposer's, never before the last block's).
    #[serde(default)]
    block_ms: u64,
    /// Jobs whose escrow was settled or refunded: their id can never be locked again.
    closed: BTreeSet<JobId>,
    /// Evidence already used, so that one offence is slashed once.
    used_evidence: BTreeSet<Hash>,
    validators: Vec<Validator>,
    totals: Totals,
}

/// The part of the state the root commits to.
#[derive(Serialize)]
struct Committed<'a> {
    chain_id: &'a str,
    height: u64,
    accounts: &'a BTreeMap<AccountId, Account>,
    escrows: &'a BTreeMap<JobId, Escrow>,
    credits: &'a BTreeMap<(AccountId, AccountId), Credit>,
    closed: &'a BTreeSet<JobId>,
    used_evidence: &'a BTreeSet<Hash>,
    validators: &'a [Validator],
    totals: &'a Totals,
}

fn majority(redundancy: u8) -> usize {
    usize::from(redundancy.max(1)) / 2 + 1
}

fn percent(amount: u128, pct: u64) -> u128 {
    amount * u128::from(pct) / 100
}

impl Ledger {
    /// The state at height 0.
    pub fn from_genesis(genesis: &Genesis) -> Result<Self, GenesisError> {
        genesis.check()?;
        let mut accounts = BTreeMap::new();
        let mut supply: u128 = 0;
        for (index, a) in genesis.accounts.iter().enumerate() {
            let id = account_of(&a.peer_id).ok_or_else(|| GenesisError::PeerId {
                index,
                value: a.peer_id.clone(),
            })?;
            supply += u128::from(a.balance) + u128::from(a.stake);
            accounts.insert(
                id,
                Account {
                    balance: a.balance,
                    stake: a.stake,
                    ..Account::default()
                },
            );
        }
        let mint_authority = genesis.mint_authority.as_deref().and_then(account_of);
        let max_supply = if genesis.max_supply == 0 {
            supply
        } else {
            u128::from(genesis.max_supply)
        };
        let mut ledger = Ledger {
            chain_id: genesis.chain_id.clone(),
            params: genesis.params.clone(),
            mint_authority,
            max_supply,
            height: 0,
            last_block_ms: genesis.genesis_time_ms,
            accounts,
            escrows: BTreeMap::new(),
            credits: BTreeMap::new(),
            block_ms: genesis.genesis_time_ms,
            closed: BTreeSet::new(),
            used_evidence: BTreeSet::new(),
            validators: Vec::new(),
            totals: Totals {
                genesis: supply,
                ..Totals::default()
            },
        };
        ledger.validators = validators::select(&ledger.accounts, &ledger.params);
        Ok(ledger)
    }

    /// The chain id.
    pub fn chain_id(&self) -> &str {
        &self.chain_id
    }

    /// The rules.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The height of the last applied block.
    pub fn height(&self) -> u64 {
        self.height
    }

    /// The proposer's time of the last applied block.
    pub fn last_block_ms(&self) -> u64 {
        self.last_block_ms
    }

    /// An account, if it exists.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Every account.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// An open escrow.
    pub fn escrow(&self, job_id: &JobId) -> Option<&Escrow> {
        self.escrows.get(job_id)
    }

    /// Every open escrow.
    pub fn escrows(&self) -> impl Iterator<Item = (&JobId, &Escrow)> {
        self.escrows.iter()
    }

    /// The credit line from `owner` to `worker`, if open.
    pub fn credit_line(&self, owner: &AccountId, worker: &AccountId) -> Option<&Credit> {
        self.credits.get(&(*owner, *worker))
    }

    /// Every credit line `owner` holds, by worker.
    pub fn credits_of(&self, owner: &AccountId) -> impl Iterator<Item = (&AccountId, &Credit)> {
        let from = (*owner, AccountId([0; 32]));
        let to = (*owner, AccountId([0xff; 32]));
        self.credits.range(from..=to).map(|((_, w), c)| (w, c))
    }

    /// Every credit line, as ((owner, worker), line).
    pub fn credits(&self) -> impl Iterator<Item = (&(AccountId, AccountId), &Credit)> {
        self.credits.iter()
    }

    /// Whether a job's escrow was settled or refunded.
    pub fn is_closed(&self, job_id: &JobId) -> bool {
        self.closed.contains(job_id)
    }

    /// How many escrows were settled or refunded.
    pub fn closed_count(&self) -> usize {
        self.closed.len()
    }

    /// The validators for the next height.
    pub fn validators(&self) -> &[Validator] {
        &self.validators
    }

    /// Token totals.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Whether `account` may bid: enough stake and not banned.
    pub fn can_bid(&self, account: &AccountId) -> bool {
        self.accounts
            .get(account)
            .is_some_and(|a| !a.banned && a.stake >= self.params.min_bid_stake)
    }

    /// The peers of every account that may bid ([`Ledger::can_bid`]): who may be leased work
    /// directly from its ad.
    pub fn bidders(&self) -> std::collections::HashSet<agora_types::PeerId> {
        self.accounts
            .keys()
            .filter(|id| self.can_bid(id))
            .filter_map(|id| id.peer_id().ok())
            .collect()
    }

    /// Every token held anywhere: balances, stakes, unbonding stake, escrows and credit lines.
    pub fn circulating(&self) -> u128 {
        self.accounts.values().map(Account::holdings).sum::<u128>()
            + self
                .escrows
                .values()
                .map(|e| u128::from(e.amount))
                .sum::<u128>()
            + self
                .credits
                .values()
                .map(|c| u128::from(c.amount))
                .sum::<u128>()
    }

    /// What the supply must be: genesis plus minted minus burned.
    pub fn expected_supply(&self) -> u128 {
        self.totals.genesis + self.totals.minted - self.totals.burned
    }

    /// Whether no token was created or destroyed outside mint and burn.
    pub fn supply_conserved(&self) -> bool {
        self.circulating() == self.expected_supply()
    }

    /// The state root: blake3 over the canonical encoding of everything the rules depend on.
    pub fn state_root(&self) -> Hash {
        let c = Committed {
            chain_id: &self.chain_id,
            height: self.height,
            accounts: &self.accounts,
            escrows: &self.escrows,
            credits: &self.credits,
            closed: &self.closed,
            used_evidence: &self.used_evidence,
            validators: &self.validators,
            totals: &self.totals,
        };
        Hash::of(&postcard::to_allocvec(&c).unwrap_or_default())
    }

    /// The checks a mempool makes before accepting a transaction: the chain, that the nonce is
    /// not already used, then the signature (the cheap checks first). Says nothing about whether
    /// it will succeed.
    pub fn precheck(&self, tx: &SignedTx) -> Result<(), TxError> {
        self.precheck_stateful(tx)?;
        tx.verify()
            .map_err(|e| TxError::BadSignature(e.to_string()))
    }

    /// [`Ledger::precheck`] without the signature, for a caller that verified it already (off a
    /// lock, say).
    pub fn precheck_stateful(&self, tx: &SignedTx) -> Result<(), TxError> {
        if tx.payload.chain_id != self.chain_id {
            return Err(TxError::WrongChain {
                expected: self.chain_id.clone(),
                got: tx.payload.chain_id.clone(),
            });
        }
        let sender = AccountId(tx.signer);
        let account = self
            .accounts
            .get(&sender)
            .ok_or(TxError::UnknownAccount(sender))?;
        if tx.payload.nonce < account.nonce {
            return Err(TxError::BadNonce {
                expected: account.nonce,
                got: tx.payload.nonce,
            });
        }
        Ok(())
    }

    /// Applies a decided block: releases matured unbonding stake, applies each transaction (a
    /// refused one is recorded in its receipt and changes nothing but, maybe, the nonce), then
    /// recomputes the validator set.
    pub fn apply_block(&mut self, block: &Block) -> Result<BlockReceipt, BlockError> {
        self.apply_block_with(block, |_| false)
    }

    /// [`Ledger::apply_block`], skipping the signature check of every transaction for which
    /// `verified` says its exact signed bytes were verified before (the node's mempool holds only
    /// verified transactions). The outcome is the same as without the hint, only cheaper.
    pub fn apply_block_with(
        &mut self,
        block: &Block,
        verified: impl Fn(&SignedTx) -> bool,
    ) -> Result<BlockReceipt, BlockError> {
        let expected = self.height + 1;
        if block.height != expected {
            return Err(BlockError::Height {
                expected,
                got: block.height,
            });
        }
        if block.txs.len() > self.params.max_block_txs {
            return Err(BlockError::TooManyTxs {
                got: block.txs.len(),
                max: self.params.max_block_txs,
            });
        }
        let height = block.height;
        self.block_ms = block.time_ms.max(self.last_block_ms);
        let mut events = Vec::new();
        self.release_unbonded(height, &mut events);
        self.release_closed_credits(height, &mut events);
        let mut receipts = Vec::with_capacity(block.txs.len());
        for tx in &block.txs {
            let error = match self.apply_tx_checked(tx, height, verified(tx)) {
                Ok(evs) => {
                    events.extend(evs.into_iter().map(|e| (height, e)));
                    None
                }
                Err(e) => Some(e.to_string()),
            };
            receipts.push(Receipt {
                tx_id: tx_id(tx),
                sender: AccountId(tx.signer),
                kind: tx.payload.kind.name().to_string(),
                error,
            });
        }
        let next = validators::select(&self.accounts, &self.params);
        if !next.is_empty() {
            self.validators = next;
        }
        self.height = height;
        self.last_block_ms = self.last_block_ms.max(block.time_ms);
        Ok(BlockReceipt {
            height,
            receipts,
            events,
            state_root: self.state_root(),
        })
    }

    fn release_unbonded(&mut self, height: u64, events: &mut Vec<(u64, Event)>) {
        for (id, account) in self.accounts.iter_mut() {
            if account.unbonding.is_empty() {
                continue;
            }
            let mut released: u64 = 0;
            account.unbonding.retain(|u| {
                if u.release_height <= height {
                    released = released.saturating_add(u.amount);
                    false
                } else {
                    true
                }
            });
            if released > 0 {
                account.balance = account.balance.saturating_add(released);
                events.push((
                    height,
                    Event::Released {
                        account: *id,
                        amount: released,
                    },
                ));
            }
        }
    }

    fn release_closed_credits(&mut self, height: u64, events: &mut Vec<(u64, Event)>) {
        let now = self.block_ms;
        let due: Vec<(AccountId, AccountId)> = self
            .credits
            .iter()
            .filter(|(_, c)| c.closing_after_ms.is_some_and(|t| t <= now))
            .map(|(k, _)| *k)
            .collect();
        for (owner, worker) in due {
            let Some(c) = self.credits.remove(&(owner, worker)) else {
                continue;
            };
            let account = self.accounts.entry(owner).or_default();
            account.balance = account.balance.saturating_add(c.amount);
            events.push((
                height,
                Event::CreditClosed {
                    owner,
                    worker,
                    amount: c.amount,
                },
            ));
        }
    }

    /// Applies one transaction at `height`: all of it, or nothing (but the nonce).
    pub fn apply_tx(&mut self, tx: &SignedTx, height: u64) -> Result<Vec<Event>, TxError> {
        self.apply_tx_checked(tx, height, false)
    }

    fn apply_tx_checked(
        &mut self,
        tx: &SignedTx,
        height: u64,
        signature_verified: bool,
    ) -> Result<Vec<Event>, TxError> {
        if signature_verified {
            self.precheck_stateful(tx)?;
        } else {
            self.precheck(tx)?;
        }
        let sender = AccountId(tx.signer);
        let nonce = self.accounts.get(&sender).map_or(0, |a| a.nonce);
        if tx.payload.nonce != nonce {
            return Err(TxError::BadNonce {
                expected: nonce,
                got: tx.payload.nonce,
            });
        }
        let result = self.execute(sender, &tx.payload, height);
        if result
            .as_ref()
            .map_or_else(TxError::consumes_nonce, |_| true)
            && let Some(a) = self.accounts.get_mut(&sender)
        {
            a.nonce += 1;
        }
        result
    }

    fn balance_of(&self, id: &AccountId) -> u64 {
        self.accounts.get(id).map_or(0, |a| a.balance)
    }

    fn need_balance(&self, id: &AccountId, need: u64) -> Result<(), TxError> {
        let have = self.balance_of(id);
        if have < need {
            return Err(TxError::Insufficient {
                what: "balance",
                have,
                need,
            });
        }
        Ok(())
    }

    fn credit(&mut self, id: AccountId, amount: u64) -> Result<(), TxError> {
        let account = self.accounts.entry(id).or_default();
        account.balance = account
            .balance
            .checked_add(amount)
            .ok_or_else(|| TxError::Amount("the receiver's balance would overflow".into()))?;
        Ok(())
    }

    fn debit(&mut self, id: &AccountId, amount: u64) {
        if let Some(a) = self.accounts.get_mut(id) {
            a.balance -= amount.min(a.balance);
        }
    }

    fn execute(&mut self, sender: AccountId, tx: &Tx, height: u64) -> Result<Vec<Event>, TxError> {
        let nonzero = |amount: u64| {
            if amount == 0 {
                Err(TxError::Amount("the amount must be above 0".into()))
            } else {
                Ok(())
            }
        };
        match &tx.kind {
            TxKind::Transfer { to, amount } => {
                nonzero(*amount)?;
                self.need_balance(&sender, *amount)?;
                if *to != sender && self.balance_of(to).checked_add(*amount).is_none() {
                    return Err(TxError::Amount(
                        "the receiver's balance would overflow".into(),
                    ));
                }
                self.debit(&sender, *amount);
                self.credit(*to, *amount)?;
                Ok(vec![Event::Transferred {
                    from: sender,
                    to: *to,
                    amount: *amount,
                }])
            }
            TxKind::Stake { amount } => {
                nonzero(*amount)?;
                self.need_balance(&sender, *amount)?;
                let account = self.accounts.entry(sender).or_default();
                if account.banned {
                    return Err(TxError::NotAllowed("a banned account may not stake".into()));
                }
                let stake = account
                    .stake
                    .checked_add(*amount)
                    .ok_or_else(|| TxError::Amount("the stake would overflow".into()))?;
                account.balance -= amount;
                account.stake = stake;
                Ok(vec![Event::Staked {
                    account: sender,
                    amount: *amount,
                }])
            }
            TxKind::Unstake { amount } => {
                nonzero(*amount)?;
                let release_height = height.saturating_add(self.params.unbonding_blocks);
                let account = self.accounts.entry(sender).or_default();
                if account.stake < *amount {
                    return Err(TxError::Insufficient {
                        what: "stake",
                        have: account.stake,
                        need: *amount,
                    });
                }
                if account.unbonding.len() >= 64 {
                    return Err(TxError::NotAllowed(
                        "64 unbondings are already pending; wait for one to complete".into(),
                    ));
                }
                account.stake -= amount;
                account.unbonding.push(Unbonding {
                    amount: *amount,
                    release_height,
                });
                Ok(vec![Event::Unstaked {
                    account: sender,
                    amount: *amount,
                    release_height,
                }])
            }
            TxKind::EscrowLock {
                job_id,
                amount,
                max_price,
                redundancy,
            } => {
                nonzero(*amount)?;
                if *redundancy == 0 {
                    return Err(TxError::Escrow("redundancy must be at least 1".into()));
                }
                let quorum_cost = u128::from(*max_price) * majority(*redundancy) as u128;
                if u128::from(*amount) < quorum_cost {
                    return Err(TxError::Escrow(format!(
                        "{amount} cannot pay a quorum of {} at {max_price}",
                        majority(*redundancy)
                    )));
                }
                if self.escrows.contains_key(job_id) || self.closed.contains(job_id) {
                    return Err(TxError::Escrow(format!(
                        "job {} already has an escrow",
                        job_id.short()
                    )));
                }
                self.need_balance(&sender, *amount)?;
                self.debit(&sender, *amount);
                self.escrows.insert(
                    *job_id,
                    Escrow {
                        owner: sender,
                        amount: *amount,
                        max_price: *max_price,
                        redundancy: *redundancy,
                        locked_height: height,
                        refund_height: height.saturating_add(self.params.refund_after_blocks),
                    },
                );
                Ok(vec![Event::EscrowLocked {
                    job_id: *job_id,
                    owner: sender,
                    amount: *amount,
                }])
            }
            TxKind::Settle {
                job_id,
                quorum,
                minority,
            } => self.settle(*job_id, quorum, minority),
            TxKind::Refund { job_id } => {
                let escrow = self.escrows.get(job_id).ok_or_else(|| {
                    TxError::Escrow(format!("job {} has no open escrow", job_id.short()))
                })?;
                if escrow.owner != sender {
                    return Err(TxError::NotAllowed(
                        "only the escrow's owner may take it back".into(),
                    ));
                }
                // The owner may take an open escrow back at any height (a cancelled job's
                // tokens return at once). Workers cannot settle on their own, so a delay would
                // protect nobody; their protection is the submitter's settlement and reputation
                // (ARCHITECTURE.md, "Decisions").
                let amount = escrow.amount;
                self.credit(sender, amount)?;
                self.escrows.remove(job_id);
                self.closed.insert(*job_id);
                self.totals.refunded += u128::from(amount);
                Ok(vec![Event::Refunded {
                    job_id: *job_id,
                    owner: sender,
                    amount,
                }])
            }
            TxKind::CreditOpen { worker, amount } => {
                nonzero(*amount)?;
                if *worker == sender {
                    return Err(TxError::NotAllowed(
                        "a credit line is for another account".into(),
                    ));
                }
                let key = (sender, *worker);
                match self.credits.get(&key) {
                    Some(c) if c.closing_after_ms.is_some() => {
                        return Err(TxError::NotAllowed(
                            "this credit line is closing; open it again once it has closed".into(),
                        ));
                    }
                    Some(c) if c.amount.checked_add(*amount).is_none() => {
                        return Err(TxError::Amount("the line would overflow".into()));
                    }
                    Some(_) => {}
                    None => {
                        let open = self.credits_of(&sender).count();
                        if open >= self.params.max_credit_lines {
                            return Err(TxError::NotAllowed(format!(
                                "{open} credit lines are open, the most one account may hold;                                  close one first"
                            )));
                        }
                    }
                }
                self.need_balance(&sender, *amount)?;
                self.debit(&sender, *amount);
                let line = self.credits.entry(key).or_insert(Credit {
                    amount: 0,
                    closing_after_ms: None,
                });
                line.amount += amount;
                Ok(vec![Event::CreditOpened {
                    owner: sender,
                    worker: *worker,
                    amount: *amount,
                }])
            }
            TxKind::CreditClose { worker } => {
                let after_ms = self
                    .block_ms
                    .saturating_add(self.params.credit_settle_ms.saturating_mul(2));
                let line = self.credits.get_mut(&(sender, *worker)).ok_or_else(|| {
                    TxError::NotAllowed(format!("no credit line to {worker} is open"))
                })?;
                if line.closing_after_ms.is_some() {
                    return Err(TxError::NotAllowed("the line is already closing".into()));
                }
                line.closing_after_ms = Some(after_ms);
                Ok(vec![Event::CreditClosing {
                    owner: sender,
                    worker: *worker,
                    after_ms,
                }])
            }
            TxKind::SettleCredit {
                job,
                quorum,
                minority,
            } => self.settle_credit(job, quorum, minority),
            TxKind::Slash { evidence } => self.slash_with_evidence(evidence),
            TxKind::Mint { to, amount } => {
                nonzero(*amount)?;
                if self.mint_authority != Some(sender) {
                    return Err(TxError::NotAllowed(
                        "only the genesis mint authority may mint".into(),
                    ));
                }
                let supply = self.expected_supply() + u128::from(*amount);
                if supply > self.max_supply {
                    return Err(TxError::Amount(format!(
                        "minting {amount} would exceed the maximum supply {}",
                        self.max_supply
                    )));
                }
                self.credit(*to, *amount)?;
                self.totals.minted += u128::from(*amount);
                Ok(vec![Event::Minted {
                    to: *to,
                    amount: *amount,
                }])
            }
            TxKind::Burn { amount } => {
                nonzero(*amount)?;
                self.need_balance(&sender, *amount)?;
                self.debit(&sender, *amount);
                self.totals.burned += u128::from(*amount);
                Ok(vec![Event::Burned {
                    account: sender,
                    amount: *amount,
                }])
            }
        }
    }

    fn settle(
        &mut self,
        job_id: JobId,
        quorum: &[Signed<WorkResult>],
        minority: &[Signed<WorkResult>],
    ) -> Result<Vec<Event>, TxError> {
        let escrow = self
            .escrows
            .get(&job_id)
            .ok_or_else(|| TxError::Escrow(format!("job {} has no open escrow", job_id.short())))?
            .clone();
        check_quorum(
            job_id,
            escrow.max_price,
            escrow.redundancy,
            quorum,
            minority,
        )?;
        let total: u128 = quorum.iter().map(|r| u128::from(r.payload.price)).sum();
        if total > u128::from(escrow.amount) {
            return Err(TxError::Escrow(format!(
                "the quorum's prices ({total}) exceed the escrow ({})",
                escrow.amount
            )));
        }
        // Every check passed: pay, slash, refund.
        let mut events = Vec::new();
        for r in quorum {
            let worker = AccountId(r.signer);
            self.credit(worker, r.payload.price)?;
            self.totals.paid += u128::from(r.payload.price);
            events.push(Event::Paid {
                job_id,
                worker,
                amount: r.payload.price,
            });
        }
        for r in minority {
            events.push(self.slash(AccountId(r.signer), Offence::InvalidCompute, Some(job_id)));
        }
        let rest = escrow.amount - total as u64;
        if rest > 0 {
            self.credit(escrow.owner, rest)?;
            self.totals.refunded += u128::from(rest);
            events.push(Event::Refunded {
                job_id,
                owner: escrow.owner,
                amount: rest,
            });
        }
        self.escrows.remove(&job_id);
        self.closed.insert(job_id);
        self.totals.settled_jobs += 1;
        Ok(events)
    }

    /// Pays a credit job's quorum from its submitter's lines, one per worker, and slashes its
    /// minority. A worker is paid only for a result signed at most `credit_settle_ms` before the
    /// block and only what its line holds (each shortfall is a `CreditShort` event; a worker that
    /// follows the admission rule never sees one).
    fn settle_credit(
        &mut self,
        job: &agora_types::job::SignedJob,
        quorum: &[Signed<WorkResult>],
        minority: &[Signed<WorkResult>],
    ) -> Result<Vec<Event>, TxError> {
        job.verify()
            .map_err(|e| TxError::Evidence(format!("the job's signature: {e}")))?;
        let job_id = agora_types::job::job_id(job);
        let spec = &job.payload;
        if !spec.credit {
            return Err(TxError::Escrow(
                "the job is not a credit job; settle it from its escrow (`Settle`)".into(),
            ));
        }
        if self.closed.contains(&job_id) || self.escrows.contains_key(&job_id) {
            return Err(TxError::Escrow(format!(
                "job {} is settled already or has an escrow",
                job_id.short()
            )));
        }
        check_quorum(job_id, spec.max_price, spec.redundancy, quorum, minority)?;
        let owner = AccountId(job.signer);
        let mut events = Vec::new();
        for r in quorum {
            let worker = AccountId(r.signer);
            let price = r.payload.price;
            let in_time =
                self.block_ms <= r.timestamp_ms.saturating_add(self.params.credit_settle_ms);
            let paid = match self.credits.get_mut(&(owner, worker)) {
                Some(line) if in_time => {
                    let paid = price.min(line.amount);
                    line.amount -= paid;
                    paid
                }
                _ => 0,
            };
            if paid > 0 {
                self.credit(worker, paid)?;
                self.totals.paid += u128::from(paid);
                events.push(Event::Paid {
                    job_id,
                    worker,
                    amount: paid,
                });
            }
            if paid < price {
                events.push(Event::CreditShort {
                    job_id,
                    worker,
                    price,
                    paid,
                });
            }
        }
        for r in minority {
            events.push(self.slash(AccountId(r.signer), Offence::InvalidCompute, Some(job_id)));
        }
        self.closed.insert(job_id);
        self.totals.settled_jobs += 1;
        Ok(events)
    }
}

/// The checks every settlement makes of its evidence: 1 to [`MAX_EVIDENCE`] results, all for
/// `job_id`, verified, one per worker, none machine-dependent, the quorum agreeing, the minority
/// not, a strict majority of at least `majority(redundancy)`, no price above `max_price`.
fn check_quorum(
    job_id: JobId,
    max_price: u64,
    redundancy: u8,
    quorum: &[Signed<WorkResult>],
    minority: &[Signed<WorkResult>],
) -> Result<(), TxError> {
    {
        if quorum.is_empty() || quorum.len() + minority.len() > MAX_EVIDENCE {
            return Err(TxError::Evidence(format!(
                "a settlement carries 1 to {MAX_EVIDENCE} results"
            )));
        }
        let mut signers = BTreeSet::new();
        for r in quorum.iter().chain(minority) {
            r.verify()
                .map_err(|e| TxError::Evidence(format!("a result's signature: {e}")))?;
            if r.payload.job_id != job_id {
                return Err(TxError::Evidence("a result is for another job".into()));
            }
            if !signers.insert(r.signer) {
                return Err(TxError::Evidence("two results from the same worker".into()));
            }
        }
        // A machine-dependent outcome (wall time, compile time) is not evidence of anything:
        // it is neither paid as agreement nor slashed as invalid compute.
        if quorum
            .iter()
            .chain(minority)
            .any(|r| r.payload.outcome.is_machine_dependent())
        {
            return Err(TxError::Evidence(
                "a result that hit a machine-dependent limit (wall time, compile time) is \
                 neither agreement nor invalid compute; leave it out of the settlement"
                    .into(),
            ));
        }
        let verdict = quorum[0].payload.outcome.verdict();
        if quorum
            .iter()
            .any(|r| r.payload.outcome.verdict() != verdict)
        {
            return Err(TxError::Evidence("the quorum's results disagree".into()));
        }
        if minority
            .iter()
            .any(|r| r.payload.outcome.verdict() == verdict)
        {
            return Err(TxError::Evidence(
                "a minority result agrees with the quorum".into(),
            ));
        }
        let need = majority(redundancy);
        if quorum.len() < need || quorum.len() <= minority.len() {
            return Err(TxError::Evidence(format!(
                "{} agreeing results against {} is no quorum (needs {need} and a strict majority)",
                quorum.len(),
                minority.len()
            )));
        }
        if let Some(r) = quorum.iter().find(|r| r.payload.price > max_price) {
            return Err(TxError::Evidence(format!(
                "a worker signed price {} above the job's maximum {max_price}",
                r.payload.price
            )));
        }
        Ok(())
    }
}

impl Ledger {
    /// Burns the offence's share of `offender`'s bonded and unbonding stake.
    fn slash(&mut self, offender: AccountId, offence: Offence, job_id: Option<JobId>) -> Event {
        let account = self.accounts.entry(offender).or_default();
        let slashable = u128::from(account.stake) + account.unbonding_total();
        let mut left = percent(slashable, offence.stake_percent());
        let amount = left as u64;
        let from_stake = left.min(u128::from(account.stake)) as u64;
        account.stake -= from_stake;
        left -= u128::from(from_stake);
        for u in account.unbonding.iter_mut() {
            let take = left.min(u128::from(u.amount)) as u64;
            u.amount -= take;
            left -= u128::from(take);
        }
        account.unbonding.retain(|u| u.amount > 0);
        if offence.bans() {
            account.banned = true;
        }
        self.totals.burned += u128::from(amount);
        self.totals.slashed += u128::from(amount);
        Event::Slashed {
            offender,
            offence,
            amount,
            job_id,
        }
    }

    fn slash_with_evidence(&mut self, evidence: &Evidence) -> Result<Vec<Event>, TxError> {
        let (offender, offence, job_id, key) = match evidence {
            Evidence::DoubleSigning { a, b } => {
                for r in [a, b] {
                    r.verify()
                        .map_err(|e| TxError::Evidence(format!("a result's signature: {e}")))?;
                }
                if a.signer != b.signer {
                    return Err(TxError::Evidence(
                        "the results have different signers".into(),
                    ));
                }
                if a.payload.job_id != b.payload.job_id {
                    return Err(TxError::Evidence(
                        "the results are for different jobs".into(),
                    ));
                }
                if a.payload.outcome.verdict() == b.payload.outcome.verdict() {
                    return Err(TxError::Evidence("the results do not conflict".into()));
                }
                // One double-signing per worker and job, whichever pair proves it.
                let mut key = b"double-signing".to_vec();
                key.extend_from_slice(&a.signer);
                key.extend_from_slice(a.payload.job_id.as_bytes());
                (
                    AccountId(a.signer),
                    Offence::DoubleSigning,
                    Some(a.payload.job_id),
                    Hash::of(&key),
                )
            }
            Evidence::Attested { reports } => {
                let report = self.check_attested(reports)?;
                let key = Hash::of(&postcard::to_allocvec(&report).unwrap_or_default());
                (report.offender, report.offence, None, key)
            }
        };
        if self.used_evidence.contains(&key) {
            return Err(TxError::Evidence("this offence was already slashed".into()));
        }
        self.used_evidence.insert(key);
        Ok(vec![self.slash(offender, offence, job_id)])
    }

    /// Checks that validators holding more than two thirds of the power signed the same report.
    fn check_attested(&self, reports: &[Signed<OffenceReport>]) -> Result<OffenceReport, TxError> {
        let first = reports
            .first()
            .ok_or_else(|| TxError::Evidence("no report".into()))?;
        if reports.len() > MAX_EVIDENCE {
            return Err(TxError::Evidence(format!(
                "more than {MAX_EVIDENCE} reports"
            )));
        }
        let report = first.payload.clone();
        if !matches!(
            report.offence,
            Offence::Downtime | Offence::CoordinatedAttack
        ) {
            return Err(TxError::Evidence(format!(
                "{} is proven by signed results, not by attestation",
                report.offence
            )));
        }
        let total: u128 = self.validators.iter().map(|v| u128::from(v.power)).sum();
        let mut signed: u128 = 0;
        let mut seen = BTreeSet::new();
        for r in reports {
            if r.payload != report {
                return Err(TxError::Evidence("the reports differ".into()));
            }
            r.verify()
                .map_err(|e| TxError::Evidence(format!("a report's signature: {e}")))?;
            let signer = AccountId(r.signer);
            let Some(v) = self.validators.iter().find(|v| v.account == signer) else {
                return Err(TxError::Evidence(format!("{signer} is not a validator")));
            };
            if seen.insert(signer) {
                signed += u128::from(v.power);
            }
        }
        if signed * 3 <= total * 2 {
            return Err(TxError::Evidence(format!(
                "the reports carry {signed} of {total} voting power; more than two thirds is needed"
            )));
        }
        Ok(report)
    }
}
