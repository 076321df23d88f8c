//! The ledger's wire vocabulary: accounts, signed transactions, slashing evidence and blocks.
//!
//! The state machine that applies them lives in `agora-ledger`; these are only the data that
//! crosses the network (gossiped transactions, proposed blocks) and the genesis file, so that the
//! network layer can check a transaction's signature without knowing the ledger's rules.
//!
//! An account is an Ed25519 public key, the same key as the node's libp2p identity, so an
//! account is also a peer ([`AccountId::peer_id`]). Amounts are whole tokens in `u64`; sums are
//! computed in `u128` by the ledger so that nothing overflows.

use std::fmt;

use libp2p_identity::PeerId;
use serde::{Deserialize, Serialize};

use crate::job::{JobId, WorkResult};
use crate::sign::{self, Domain, Signed};
use crate::{Hash, codec};

/// The largest encoded transaction accepted.
pub const MAX_TX_BYTES: usize = 16 * 1024;
/// The most results carried as evidence in one transaction.
pub const MAX_EVIDENCE: usize = 64;
/// The largest encoded block payload accepted.
pub const MAX_BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// An account: a 32-byte Ed25519 public key. Binary formats carry the 32 bytes; human-readable
/// ones (JSON) the peer id, as people know it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AccountId(pub [u8; 32]);

impl Serialize for AccountId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for AccountId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let text = String::deserialize(d)?;
            let peer: PeerId = text
                .parse()
                .map_err(|_| serde::de::Error::custom(format!("{text:?} is not a peer id")))?;
            AccountId::from_peer_id(&peer).ok_or_else(|| {
                serde::de::Error::custom(format!("{text} is not an Ed25519 peer id"))
            })
        } else {
            <[u8; 32]>::deserialize(d).map(AccountId)
        }
    }
}

impl AccountId {
    /// The peer id of the node that owns this account.
    pub fn peer_id(&self) -> Result<PeerId, sign::SignError> {
        sign::peer_id_of(&self.0)
    }

    /// The account of a peer, if its peer id embeds an Ed25519 key (every Agora peer's does).
    pub fn from_peer_id(peer: &PeerId) -> Option<Self> {
        let mh = peer.as_ref();
        // Ed25519 peer ids are the identity multihash (code 0) of the protobuf-encoded key.
        if mh.code() != 0 {
            return None;
        }
        let key = libp2p_identity::PublicKey::try_decode_protobuf(mh.digest()).ok()?;
        let key = key.try_into_ed25519().ok()?;
        Some(AccountId(key.to_bytes()))
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.peer_id() {
            Ok(p) => write!(f, "{p}"),
            Err(_) => write!(f, "invalid-key:{}", hex::encode(self.0)),
        }
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An offence in the slashing table.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    /// Two conflicting signed results for one job.
    DoubleSigning,
    /// Absent when it had to be present (attested by validators).
    Downtime,
    /// A result outvoted by a quorum.
    InvalidCompute,
    /// Part of a coordinated attack (attested by validators).
    CoordinatedAttack,
}

impl Offence {
    /// The share of stake lost, in percent.
    pub fn stake_percent(self) -> u64 {
        match self {
            Offence::DoubleSigning => 30,
            Offence::Downtime => 5,
            Offence::InvalidCompute => 50,
            Offence::CoordinatedAttack => 100,
        }
    }

    /// The reputation change (a coordinated attack also bans the account for good).
    pub fn reputation_delta(self) -> i64 {
        match self {
            Offence::DoubleSigning => -50,
            Offence::Downtime => -10,
            Offence::InvalidCompute => -75,
            Offence::CoordinatedAttack => -100,
        }
    }

    /// Whether the offender is banned for good.
    pub fn bans(self) -> bool {
        self == Offence::CoordinatedAttack
    }
}

impl fmt::Display for Offence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Offence::DoubleSigning => "double_signing",
            Offence::Downtime => "downtime",
            Offence::InvalidCompute => "invalid_compute",
            Offence::CoordinatedAttack => "coordinated_attack",
        })
    }
}

/// A validator's signed statement that `offender` committed an offence that the chain cannot
/// check by itself (downtime, a coordinated attack).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OffenceReport {
    /// Who.
    pub offender: AccountId,
    /// What.
    pub offence: Offence,
    /// The height the report refers to; makes reports of separate incidents distinct.
    pub height: u64,
}

impl Domain for OffenceReport {
    const DOMAIN: &'static str = "agora/offence/1";
}

/// Proof that an account deserves slashing.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Evidence {
    /// Two results for the same job, signed by the same worker, with different verdicts.
    DoubleSigning {
        /// One result.
        a: Box<Signed<WorkResult>>,
        /// The other.
        b: Box<Signed<WorkResult>>,
    },
    /// The same report signed by validators holding more than two thirds of the voting power.
    Attested {
        /// Signed copies of one report.
        reports: Vec<Signed<OffenceReport>>,
    },
}

/// What a transaction does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxKind {
    /// Move tokens to another account.
    Transfer {
        /// The receiver.
        to: AccountId,
        /// How much.
        amount: u64,
    },
    /// Move tokens from the balance into stake.
    Stake {
        /// How much.
        amount: u64,
    },
    /// Start unbonding stake; it returns to the balance after the unbonding period.
    Unstake {
        /// How much.
        amount: u64,
    },
    /// Lock an escrow for a job before announcing it.
    EscrowLock {
        /// The job.
        job_id: JobId,
        /// The tokens locked: enough for every replica the job may need.
        amount: u64,
        /// The most one worker may be paid for one execution.
        max_price: u64,
        /// The job's redundancy: a quorum needs a strict majority of it.
        redundancy: u8,
    },
    /// Pay a job's quorum and slash its minority. Anyone holding the signed results may send it:
    /// its validity comes from the workers' signatures, not the sender's.
    Settle {
        /// The job.
        job_id: JobId,
        /// The agreeing results: each worker is paid the price it signed.
        quorum: Vec<Signed<WorkResult>>,
        /// Results outvoted by the quorum: each worker is slashed for invalid compute.
        minority: Vec<Signed<WorkResult>>,
    },
    /// Return an open escrow to its owner (only the owner may send it; at any height).
    Refund {
        /// The job.
        job_id: JobId,
    },
    /// Lock tokens for one worker: a credit line that the sender's credit jobs
    /// ([`JobSpec::credit`](crate::job::JobSpec::credit)) draw on when they are settled, so that
    /// they need no escrow, and no block, before they start. Adds to an open line.
    CreditOpen {
        /// The worker.
        worker: AccountId,
        /// How much.
        amount: u64,
    },
    /// Start closing a credit line: what is left returns to the sender once the ledger's
    /// `2 x credit_settle_ms` have passed in block time (so every result the worker signed
    /// before can still be paid).
    CreditClose {
        /// The worker.
        worker: AccountId,
    },
    /// Pay a credit job's quorum from the submitter's credit lines and slash its minority. Like
    /// `Settle`, anyone holding the signed job and results may send it.
    SettleCredit {
        /// The job, as its submitter signed it (it must be a credit job).
        job: Box<crate::job::SignedJob>,
        /// The agreeing results: each worker is paid the price it signed, from its line.
        quorum: Vec<Signed<WorkResult>>,
        /// Results outvoted by the quorum: each worker is slashed for invalid compute.
        minority: Vec<Signed<WorkResult>>,
    },
    /// Slash an account with evidence.
    Slash {
        /// The proof.
        evidence: Box<Evidence>,
    },
    /// Create tokens (only the genesis mint authority, within the maximum supply).
    Mint {
        /// The receiver.
        to: AccountId,
        /// How much.
        amount: u64,
    },
    /// Destroy tokens from the sender's balance.
    Burn {
        /// How much.
        amount: u64,
    },
}

impl TxKind {
    /// A short name for logs and the API.
    pub fn name(&self) -> &'static str {
        match self {
            TxKind::Transfer { .. } => "transfer",
            TxKind::Stake { .. } => "stake",
            TxKind::Unstake { .. } => "unstake",
            TxKind::EscrowLock { .. } => "escrow_lock",
            TxKind::Settle { .. } => "settle",
            TxKind::Refund { .. } => "refund",
            TxKind::CreditOpen { .. } => "credit_open",
            TxKind::CreditClose { .. } => "credit_close",
            TxKind::SettleCredit { .. } => "settle_credit",
            TxKind::Slash { .. } => "slash",
            TxKind::Mint { .. } => "mint",
            TxKind::Burn { .. } => "burn",
        }
    }
}

/// A transaction body: the chain it belongs to, the sender's next nonce, and what it does.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Tx {
    /// The chain id from the genesis file: a transaction for one network is void on another.
    pub chain_id: String,
    /// The sender's nonce: must equal the account's nonce, which then increments. Replays fail.
    pub nonce: u64,
    /// What it does.
    pub kind: TxKind,
}

impl Domain for Tx {
    const DOMAIN: &'static str = "agora/tx/1";
}

/// A transaction signed by its sender.
pub type SignedTx = Signed<Tx>;

/// The id of a signed transaction.
pub fn tx_id(tx: &SignedTx) -> Hash {
    tx.digest()
}

/// Decodes a transaction, bounded by [`MAX_TX_BYTES`].
pub fn decode_tx(bytes: &[u8]) -> Result<SignedTx, codec::CodecError> {
    codec::decode(bytes, MAX_TX_BYTES)
}

/// The application payload of one consensus block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Block {
    /// Its height (from 1).
    pub height: u64,
    /// The proposer's clock when it built the block (informative; the ledger's rules use
    /// heights, never clocks).
    pub time_ms: u64,
    /// The transactions, in order.
    pub txs: Vec<SignedTx>,
}

impl Block {
    /// Decodes a block payload, bounded by [`MAX_BLOCK_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, MAX_BLOCK_BYTES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p_identity::Keypair;

    #[test]
    fn account_peer_id_round_trip() {
        let kp = Keypair::generate_ed25519();
        let peer = kp.public().to_peer_id();
        let acct = AccountId::from_peer_id(&peer).unwrap();
        assert_eq!(acct.0, sign::ed25519_public(&kp).unwrap());
        assert_eq!(acct.peer_id().unwrap(), peer);
        assert_eq!(acct.to_string(), peer.to_string());
    }

    #[test]
    fn account_is_a_peer_id_in_json_and_bytes_on_the_wire() {
        let kp = Keypair::generate_ed25519();
        let acct = AccountId::from_peer_id(&kp.public().to_peer_id()).unwrap();
        let json = serde_json::to_string(&acct).unwrap();
        assert_eq!(json, format!("\"{}\"", kp.public().to_peer_id()));
        assert_eq!(serde_json::from_str::<AccountId>(&json).unwrap(), acct);
        let bin = codec::encode(&acct).unwrap();
        assert_eq!(bin.len(), 32);
        assert_eq!(codec::decode::<AccountId>(&bin, 64).unwrap(), acct);
    }

    #[test]
    fn slashing_table() {
        assert_eq!(Offence::DoubleSigning.stake_percent(), 30);
        assert_eq!(Offence::Downtime.stake_percent(), 5);
        assert_eq!(Offence::InvalidCompute.stake_percent(), 50);
        assert_eq!(Offence::CoordinatedAttack.stake_percent(), 100);
        assert_eq!(Offence::InvalidCompute.reputation_delta(), -75);
        assert!(Offence::CoordinatedAttack.bans());
    }
}
