//! The ledger and this node's wallet: `GET /v1/ledger/status`, `GET /v1/ledger/accounts/{id}`,
//! `GET /v1/ledger/blocks`, `GET /v1/wallet`, `GET /v1/wallet/history`, and the wallet's
//! `POST /v1/wallet/{transfer,stake,unstake}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// An account (`GET /v1/wallet`, `GET /v1/ledger/accounts/{id}`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct AccountView {
    /// The account: the owner's peer id.
    pub id: String,
    /// Spendable tokens.
    pub balance: u64,
    /// Staked tokens.
    pub stake: u64,
    /// Tokens unbonding.
    pub unbonding: u64,
    /// The next nonce.
    pub nonce: u64,
    /// Banned for good.
    pub banned: bool,
    /// How many open escrows it owns.
    pub escrows: u64,
    /// Tokens in its open escrows.
    pub escrowed: u64,
    /// May bid on jobs.
    pub can_bid: bool,
    /// Is a validator now.
    pub validator: bool,
    /// Open credit lines it holds to workers (`credit_per_worker` in the node's config).
    #[serde(default)]
    pub credit_lines: u64,
    /// Tokens on all its credit lines.
    #[serde(default)]
    pub credit_locked: u64,
}

/// A validator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct ValidatorView {
    /// Its account (peer id).
    pub id: String,
    /// Its voting power.
    pub power: u64,
}

/// Token totals.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SupplyView {
    /// Everything held (balances, stakes, unbonding, escrows).
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
    /// Burned, slashing included.
    pub burned: u128,
}

/// `GET /v1/ledger/status`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct LedgerStatus {
    /// The chain id.
    pub chain_id: String,
    /// The last applied height.
    pub height: u64,
    /// The state root after it (hex).
    pub state_root: String,
    /// When the last block was proposed (Unix ms).
    pub last_block_ms: u64,
    /// The validators for the next height.
    pub validators: Vec<ValidatorView>,
    /// Transactions waiting in the mempool.
    pub mempool: u64,
    /// Token totals.
    pub supply: SupplyView,
    /// Peers on the consensus network.
    pub consensus_peers: u64,
    /// Escrows still open.
    pub open_escrows: u64,
    /// Jobs whose quorum was paid.
    pub settled_jobs: u64,
}

/// An offence in the slashing table.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    /// Two conflicting signed results for one job.
    DoubleSigning,
    /// Absent when it had to be present.
    Downtime,
    /// A result outvoted by a quorum.
    InvalidCompute,
    /// Part of a coordinated attack.
    CoordinatedAttack,
}

/// Something a transaction did. Accounts are peer ids, jobs hex ids.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LedgerEvent {
    /// Tokens moved.
    Transferred {
        /// From.
        from: String,
        /// To.
        to: String,
        /// How much.
        amount: u64,
    },
    /// Balance moved into stake.
    Staked {
        /// Whose.
        account: String,
        /// How much.
        amount: u64,
    },
    /// Stake started unbonding.
    Unstaked {
        /// Whose.
        account: String,
        /// How much.
        amount: u64,
        /// The height it returns at.
        release_height: u64,
    },
    /// Unbonded stake returned to the balance.
    Released {
        /// Whose.
        account: String,
        /// How much.
        amount: u64,
    },
    /// An escrow was locked for a job.
    EscrowLocked {
        /// The job.
        job_id: String,
        /// Its owner.
        owner: String,
        /// How much.
        amount: u64,
    },
    /// A worker was paid for a verified job.
    Paid {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
        /// How much (its signed price).
        amount: u64,
    },
    /// What was left of an escrow went back to its owner.
    Refunded {
        /// The job.
        job_id: String,
        /// The owner.
        owner: String,
        /// How much.
        amount: u64,
    },
    /// An account lost stake (burned).
    Slashed {
        /// Who.
        offender: String,
        /// Why.
        offence: Offence,
        /// How much stake was burned.
        amount: u64,
        /// The job, when the offence concerns one.
        job_id: Option<String>,
    },
    /// Tokens created.
    Minted {
        /// For whom.
        to: String,
        /// How much.
        amount: u64,
    },
    /// Tokens destroyed.
    Burned {
        /// Whose.
        account: String,
        /// How much.
        amount: u64,
    },
    /// A credit line was opened or topped up.
    CreditOpened {
        /// The submitter.
        owner: String,
        /// The worker.
        worker: String,
        /// How much was added.
        amount: u64,
    },
    /// A credit line started closing.
    CreditClosing {
        /// The submitter.
        owner: String,
        /// The worker.
        worker: String,
        /// From this block time (Unix ms) on, what is left returns to the owner.
        after_ms: u64,
    },
    /// A closed credit line's rest returned to its owner.
    CreditClosed {
        /// The submitter.
        owner: String,
        /// The worker.
        worker: String,
        /// How much returned.
        amount: u64,
    },
    /// A credit job's worker was paid less than it signed for (a late result, or a short line).
    CreditShort {
        /// The job.
        job_id: String,
        /// The worker.
        worker: String,
        /// What it signed for.
        price: u64,
        /// What it was paid.
        paid: u64,
    },
}

/// An event with the height of the block that did it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct HistoryEntry {
    /// The block's height.
    pub height: u64,
    /// What happened.
    pub event: LedgerEvent,
}

/// `GET /v1/wallet/history`: events that concern this node's account, newest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct History {
    /// The events.
    pub events: Vec<HistoryEntry>,
}

/// What happened to one transaction of a block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct TxReceipt {
    /// The transaction's id (hex).
    pub tx_id: String,
    /// Its sender (peer id).
    pub sender: String,
    /// Its kind (`transfer`, `settle`, ...).
    pub kind: String,
    /// Null when applied; otherwise why it was refused.
    pub error: Option<String>,
}

/// What one block did.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct BlockView {
    /// Its height.
    pub height: u64,
    /// One receipt per transaction, in order.
    pub receipts: Vec<TxReceipt>,
    /// Everything that happened, in order.
    pub events: Vec<HistoryEntry>,
    /// The state root after it (hex).
    pub state_root: String,
}

/// `GET /v1/ledger/blocks`: receipts of recent blocks, oldest first.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct Blocks {
    /// The blocks.
    pub blocks: Vec<BlockView>,
}

/// The query of `GET /v1/ledger/blocks`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BlocksQuery {
    /// The first height wanted (default 0).
    #[serde(default)]
    pub from: u64,
    /// The most blocks returned (default 100, at most 500).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The query of `GET /v1/wallet/history`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The most events returned (default 50, at most 10 000).
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The query of the wallet's writes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Wait (up to 30 s) for the block that holds the transaction (default true).
    #[serde(default)]
    pub wait: Option<bool>,
}

/// `POST /v1/wallet/transfer` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The receiver's peer id (what `agora id` prints).
    pub to: String,
    /// How many tokens (above 0).
    pub amount: u64,
}

/// `POST /v1/wallet/stake` and `POST /v1/wallet/unstake` body.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountRequest {
    /// How many tokens (above 0).
    pub amount: u64,
}

/// A wallet transaction's fate.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct TxOutcome {
    /// Its id (hex).
    pub tx_id: String,
    /// Its kind (`transfer`, `stake`, `unstake`).
    pub kind: String,
    /// Its nonce.
    pub nonce: u64,
    /// The height it landed at (0 when not waited for).
    pub height: u64,
    /// Whether the ledger applied it.
    pub applied: bool,
    /// Why not, when it was refused.
    pub error: Option<String>,
}
