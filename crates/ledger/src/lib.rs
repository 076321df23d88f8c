//! Agora's ledger: a deterministic state machine for payment, staking and slashing.
//!
//! Consensus (`agora-chain`, Malachite) orders blocks; this crate decides what they mean. It does
//! no I/O and reads no clock: the same genesis and the same blocks give the same state root on
//! every node, which is what lets validators replicate it and late nodes replay it.
//!
//! # Rules
//!
//! - **Accounts** are Ed25519 public keys (the node identities), with a balance, a nonce, a
//!   stake and stake that is unbonding. A transaction must carry the sender's next nonce, so a
//!   replayed transaction fails. A transaction refused for a rule (not for its signature, chain or
//!   nonce) still uses its nonce, so it cannot block the ones behind it.
//! - **Staking**: `Stake` bonds balance; `Unstake` starts an unbonding period
//!   ([`Params::unbonding_blocks`]) during which the tokens can still be slashed.
//! - **Escrow**: a submitter locks `EscrowLock` before its job is announced (the market holds the
//!   job until the lock is final). `Settle` pays each worker of the quorum the price it signed in
//!   its result and slashes each worker of the minority for invalid compute; the rest of the
//!   escrow goes back to its owner. The proof is the workers' own signed results, so anyone
//!   holding them may settle. An escrow nobody settles may be taken back by its owner after
//!   [`Params::refund_after_blocks`].
//! - **Slashing** follows the table in [`Offence`]: double signing (two conflicting signed results
//!   for one job) 30 %, downtime 5 %, invalid compute 50 %, coordinated attack 100 % and a ban.
//!   Downtime and coordinated attacks cannot be proven from signatures on results, so they need
//!   the same report signed by validators holding more than two thirds of the power. Slashed
//!   tokens are burned. Each offence is slashed once.
//! - **Supply** changes only by `Mint` (the genesis mint authority, up to the maximum supply) and
//!   by burning (`Burn`, slashing). [`Ledger::supply_conserved`] checks the books.
//! - **Validators** are the top accounts by stake ([`validators`]), recomputed after every block.
//!
//! The state root is blake3 over the canonical (postcard) encoding of the whole state: simple and
//! exact, linear in the state's size; a Merkle tree (for light clients) can replace it later.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod genesis;
pub mod mempool;
pub mod state;
pub mod validators;

pub use agora_types::ledger::{
    AccountId, Block, Evidence, Offence, OffenceReport, SignedTx, Tx, TxKind,
};
pub use genesis::{Genesis, GenesisAccount, GenesisError, Params};
pub use mempool::{Mempool, MempoolError, PROPOSAL_BUDGET_BYTES};
pub use state::{
    Account, BlockError, BlockReceipt, Credit, Escrow, Event, Ledger, Receipt, Totals, TxError,
    Unbonding,
};
pub use validators::Validator;
