//! The genesis file: the chain id, the rules ([`Params`]) and the first accounts.
//!
//! It is JSON so that people can read and edit it. Accounts are named by peer id (what `agora id`
//! prints), and each may name the address of its consensus endpoint, which other nodes then use as
//! a persistent peer (like CometBFT's `persistent_peers`).

use std::collections::BTreeSet;

use agora_types::PeerId;
use agora_types::ledger::AccountId;
use serde::{Deserialize, Serialize};

/// The ledger's rules, fixed at genesis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// The stake an account needs before its bids are considered.
    pub min_bid_stake: u64,
    /// The stake an account needs to be a validator candidate.
    pub min_validator_stake: u64,
    /// The most validators: the top candidates by stake.
    pub max_validators: usize,
    /// Blocks between an unstake and the tokens' return to the balance. Stake that is unbonding
    /// can still be slashed.
    pub unbonding_blocks: u64,
    /// Blocks after an escrow lock before its owner may take it back unsettled.
    pub refund_after_blocks: u64,
    /// The most transactions in one block.
    pub max_block_txs: usize,
    /// How long after a worker signed its result a settlement from a credit line may still pay
    /// it, in ms of block time. A worker counts a credit job against the line until it is paid or
    /// this has passed, so the line can never owe more than it holds (ARCHITECTURE.md, "Credit
    /// lines"). A closing line stays open twice this long.
    pub credit_settle_ms: u64,
    /// The most credit lines one account may hold open.
    pub max_credit_lines: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            min_bid_stake: 100,
            min_validator_stake: 10_000,
            max_validators: 32,
            unbonding_blocks: 100,
            refund_after_blocks: 600,
            max_block_txs: 10_000,
            credit_settle_ms: 600_000,
            max_credit_lines: 256,
        }
    }
}

/// One account at genesis.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GenesisAccount {
    /// The account's peer id (`agora id`).
    pub peer_id: String,
    /// Spendable tokens.
    #[serde(default)]
    pub balance: u64,
    /// Staked tokens.
    #[serde(default)]
    pub stake: u64,
    /// Where its consensus endpoint listens (`IP:PORT`), if it runs one others should dial.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus_addr: Option<String>,
}

/// A network's starting point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// The network's name; transactions signed for another chain are void here.
    pub chain_id: String,
    /// When the network was created (informative).
    #[serde(default)]
    pub genesis_time_ms: u64,
    /// The rules.
    #[serde(default)]
    pub params: Params,
    /// The one account allowed to mint, if any (a peer id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mint_authority: Option<String>,
    /// The most tokens that may ever exist; 0 means the genesis supply (no minting).
    #[serde(default)]
    pub max_supply: u64,
    /// The first accounts.
    pub accounts: Vec<GenesisAccount>,
}

/// Why a genesis file is unusable. Each message names the field to fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum GenesisError {
    /// Not valid JSON for a genesis file.
    #[error("the genesis file is not valid: {0}")]
    Parse(String),
    /// The chain id is empty or too long.
    #[error("chain_id must be 1 to 64 characters")]
    ChainId,
    /// An account's peer id does not parse or is not an Ed25519 peer id.
    #[error(
        "accounts[{index}].peer_id {value:?} is not an Ed25519 peer id (what `agora id` prints)"
    )]
    PeerId {
        /// Which account.
        index: usize,
        /// Its value.
        value: String,
    },
    /// The same account twice.
    #[error("accounts[{index}] repeats peer id {value}")]
    Duplicate {
        /// Which account.
        index: usize,
        /// Its value.
        value: String,
    },
    /// The mint authority is not a peer id.
    #[error("mint_authority {0:?} is not an Ed25519 peer id")]
    MintAuthority(String),
    /// The genesis supply does not fit, or exceeds `max_supply`.
    #[error("the genesis supply {supply} exceeds max_supply {max}")]
    Supply {
        /// The sum of genesis balances and stakes.
        supply: u128,
        /// The configured maximum.
        max: u64,
    },
    /// No account has enough stake to validate.
    #[error(
        "no account has the validator stake ({min}); give at least one account (four, to \
         tolerate a fault) a stake of {min} or more"
    )]
    NoValidators {
        /// `params.min_validator_stake`.
        min: u64,
    },
    /// A parameter is out of range.
    #[error("params.{0}")]
    Param(&'static str),
}

/// A parsed account id from a peer id string.
pub fn account_of(peer_id: &str) -> Option<AccountId> {
    let peer: PeerId = peer_id.parse().ok()?;
    AccountId::from_peer_id(&peer)
}

impl Genesis {
    /// Parses and checks a genesis file's text.
    pub fn from_json(text: &str) -> Result<Self, GenesisError> {
        let g: Genesis =
            serde_json::from_str(text).map_err(|e| GenesisError::Parse(e.to_string()))?;
        g.check()?;
        Ok(g)
    }

    /// The file's text.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every rule a usable genesis must follow.
    pub fn check(&self) -> Result<(), GenesisError> {
        if self.chain_id.is_empty() || self.chain_id.len() > 64 {
            return Err(GenesisError::ChainId);
        }
        let p = &self.params;
        if p.max_validators == 0 {
            return Err(GenesisError::Param("max_validators must be at least 1"));
        }
        if p.max_block_txs == 0 {
            return Err(GenesisError::Param("max_block_txs must be at least 1"));
        }
        if p.min_validator_stake == 0 {
            return Err(GenesisError::Param(
                "min_validator_stake must be at least 1",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut supply: u128 = 0;
        let mut validators = 0;
        for (index, a) in self.accounts.iter().enumerate() {
            let Some(id) = account_of(&a.peer_id) else {
                return Err(GenesisError::PeerId {
                    index,
                    value: a.peer_id.clone(),
                });
            };
            if !seen.insert(id) {
                return Err(GenesisError::Duplicate {
                    index,
                    value: a.peer_id.clone(),
                });
            }
            supply += u128::from(a.balance) + u128::from(a.stake);
            if a.stake >= p.min_validator_stake {
                validators += 1;
            }
        }
        if let Some(m) = &self.mint_authority
            && account_of(m).is_none()
        {
            return Err(GenesisError::MintAuthority(m.clone()));
        }
        if supply > u128::from(u64::MAX) {
            return Err(GenesisError::Supply {
                supply,
                max: u64::MAX,
            });
        }
        if self.max_supply != 0 && supply > u128::from(self.max_supply) {
            return Err(GenesisError::Supply {
                supply,
                max: self.max_supply,
            });
        }
        if validators == 0 {
            return Err(GenesisError::NoValidators {
                min: p.min_validator_stake,
            });
        }
        Ok(())
    }

    /// The consensus addresses named in the file, for dialing.
    pub fn consensus_addrs(&self) -> Vec<String> {
        self.accounts
            .iter()
            .filter_map(|a| a.consensus_addr.clone())
            .collect()
    }
}
