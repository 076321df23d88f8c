//! `agora wallet` (this node's account on the ledger) and `agora genesis` (a network's start).

use std::path::PathBuf;
use std::process::ExitCode;

use agora_api_types::{HistoryQuery, LedgerEvent, TransferRequest, TxOutcome};
use agora_ledger::{Genesis, GenesisAccount, Params};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::client::block_on;
use crate::cmd::ClientArgs;

/// This node's account: balance, transfers, staking and history.
#[derive(Subcommand, Debug)]
pub enum WalletCommand {
    /// Show the balance, stake and nonce of this node's account (or of --account).
    Balance {
        #[command(flatten)]
        client: ClientArgs,
        /// Another account's peer id.
        #[arg(long)]
        account: Option<String>,
    },
    /// Send tokens to another account and wait for the block that holds the transfer.
    Transfer {
        #[command(flatten)]
        client: ClientArgs,
        /// The receiver's peer id (`agora id` on its machine).
        to: String,
        /// How many tokens.
        amount: u64,
    },
    /// Bond tokens as stake: workers need the genesis minimum to bid, validators more.
    Stake {
        #[command(flatten)]
        client: ClientArgs,
        /// How many tokens.
        amount: u64,
    },
    /// Start unbonding stake; it returns to the balance after the unbonding period.
    Unstake {
        #[command(flatten)]
        client: ClientArgs,
        /// How many tokens.
        amount: u64,
    },
    /// Payments, escrows, slashes and transfers that concern this node, newest first.
    History {
        #[command(flatten)]
        client: ClientArgs,
        /// How many events at most.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

pub fn run(c: WalletCommand) -> Result<ExitCode> {
    match c {
        WalletCommand::Balance { client, account } => {
            let api = client.node.connect()?;
            let v = block_on(async {
                Ok(match &account {
                    Some(a) => api.account(a).await?,
                    None => api.wallet().await?,
                })
            })?;
            if client.json {
                outln!("{}", serde_json::to_string(&v)?);
            } else {
                outln!("account    {}", v.id);
                outln!("balance    {}", v.balance);
                outln!("stake      {}", v.stake);
                outln!("unbonding  {}", v.unbonding);
                outln!("escrowed   {} in {} jobs", v.escrowed, v.escrows);
                outln!("nonce      {}", v.nonce);
                outln!(
                    "may bid    {}{}",
                    v.can_bid,
                    if v.validator { "  (validator)" } else { "" }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        WalletCommand::Transfer { client, to, amount } => send(&client, |api| async move {
            Ok(api.transfer(&TransferRequest { to, amount }, true).await?)
        }),
        WalletCommand::Stake { client, amount } => {
            send(
                &client,
                |api| async move { Ok(api.stake(amount, true).await?) },
            )
        }
        WalletCommand::Unstake { client, amount } => send(&client, |api| async move {
            Ok(api.unstake(amount, true).await?)
        }),
        WalletCommand::History { client, limit } => {
            let api = client.node.connect()?;
            let q = HistoryQuery {
                limit: Some(u64::try_from(limit).unwrap_or(u64::MAX)),
            };
            let h = block_on(async { Ok(api.history(&q).await?) })?;
            if client.json {
                outln!("{}", serde_json::to_string(&h)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("{:>8}  EVENT", "HEIGHT");
            for e in &h.events {
                outln!("{:>8}  {}", e.height, describe(&e.event));
            }
            outln!("{} events", h.events.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One ledger event in a line.
fn describe(e: &LedgerEvent) -> String {
    match e {
        LedgerEvent::Transferred { from, to, amount } => {
            format!("transferred {amount} from {from} to {to}")
        }
        LedgerEvent::Staked { account, amount } => format!("staked {amount} by {account}"),
        LedgerEvent::Unstaked {
            account,
            amount,
            release_height,
        } => format!("unstaked {amount} by {account}, released at height {release_height}"),
        LedgerEvent::Released { account, amount } => {
            format!("released {amount} of unbonded stake to {account}")
        }
        LedgerEvent::EscrowLocked {
            job_id,
            owner,
            amount,
        } => format!("escrow_locked {amount} by {owner} for job {job_id}"),
        LedgerEvent::Paid {
            job_id,
            worker,
            amount,
        } => format!("paid {amount} to {worker} for job {job_id}"),
        LedgerEvent::Refunded {
            job_id,
            owner,
            amount,
        } => format!("refunded {amount} to {owner} for job {job_id}"),
        LedgerEvent::Slashed {
            offender,
            offence,
            amount,
            job_id,
        } => format!(
            "slashed {amount} of {offender}'s stake for {offence:?}{}",
            job_id
                .as_deref()
                .map(|j| format!(" (job {j})"))
                .unwrap_or_default()
        ),
        LedgerEvent::Minted { to, amount } => format!("minted {amount} for {to}"),
        LedgerEvent::Burned { account, amount } => format!("burned {amount} of {account}"),
        LedgerEvent::CreditOpened {
            owner,
            worker,
            amount,
        } => format!("credit line of {owner} to {worker} +{amount}"),
        LedgerEvent::CreditClosing {
            owner,
            worker,
            after_ms,
        } => format!("credit line of {owner} to {worker} closing (returns after {after_ms})"),
        LedgerEvent::CreditClosed {
            owner,
            worker,
            amount,
        } => format!("credit line of {owner} to {worker} closed, {amount} returned"),
        LedgerEvent::CreditShort {
            job_id,
            worker,
            price,
            paid,
        } => format!("job {job_id}: {worker} paid {paid} of {price} (late or short line)"),
    }
}

fn send<F, Fut>(client: &ClientArgs, call: F) -> Result<ExitCode>
where
    F: FnOnce(agora_api_types::Client) -> Fut,
    Fut: std::future::Future<Output = Result<TxOutcome>>,
{
    let api = client.node.connect()?;
    let v = block_on(call(api))?;
    if client.json {
        outln!("{}", serde_json::to_string(&v)?);
    } else if v.applied {
        outln!("{} applied at height {} (tx {})", v.kind, v.height, v.tx_id);
    } else {
        bail!(
            "{} refused by the ledger at height {}: {}",
            v.kind,
            v.height,
            v.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(if v.applied {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Flags of `agora genesis`.
#[derive(Args, Debug)]
pub struct GenesisArgs {
    /// Where to write the genesis file (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// The network's name; transactions signed for another network are void on this one.
    #[arg(long, default_value = "agora")]
    pub chain_id: String,
    /// A validator: PEER_ID@IP:PORT, its consensus endpoint (repeatable; 4 or more tolerate a
    /// fault). Print a node's peer id with `agora id --data-dir DIR`.
    #[arg(long = "validator")]
    pub validators: Vec<String>,
    /// Another account: a peer id (repeatable). It gets --balance and --stake.
    #[arg(long = "account")]
    pub accounts: Vec<String>,
    /// Tokens every account starts with.
    #[arg(long, default_value_t = 1_000_000)]
    pub balance: u64,
    /// Stake of the non-validator accounts (the bidding minimum is --min-bid-stake).
    #[arg(long, default_value_t = 1_000)]
    pub stake: u64,
    /// Stake of each validator.
    #[arg(long, default_value_t = 10_000)]
    pub validator_stake: u64,
    /// The stake a worker needs to bid.
    #[arg(long, default_value_t = 100)]
    pub min_bid_stake: u64,
    /// Blocks before unbonded stake returns.
    #[arg(long, default_value_t = 100)]
    pub unbonding_blocks: u64,
    /// Blocks before an unsettled escrow can be taken back.
    #[arg(long, default_value_t = 600)]
    pub refund_after_blocks: u64,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

/// Builds a genesis from the flags (also used by `agora devnet`).
pub fn build_genesis(a: &GenesisArgs) -> Result<Genesis> {
    if a.validators.is_empty() {
        bail!("name at least one --validator PEER_ID@IP:PORT (four or more tolerate a fault)");
    }
    let mut accounts = Vec::new();
    for (i, v) in a.validators.iter().enumerate() {
        let (peer, addr) = v
            .split_once('@')
            .with_context(|| format!("--validator #{} {v:?} must be PEER_ID@IP:PORT", i + 1))?;
        addr.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--validator #{}: {addr:?} is not IP:PORT", i + 1))?;
        accounts.push(GenesisAccount {
            peer_id: peer.to_string(),
            balance: a.balance,
            stake: a.validator_stake,
            consensus_addr: Some(addr.to_string()),
        });
    }
    for peer in &a.accounts {
        accounts.push(GenesisAccount {
            peer_id: peer.clone(),
            balance: a.balance,
            stake: a.stake,
            consensus_addr: None,
        });
    }
    let g = Genesis {
        chain_id: a.chain_id.clone(),
        genesis_time_ms: agora_types::now_ms(),
        params: Params {
            min_bid_stake: a.min_bid_stake,
            min_validator_stake: a.validator_stake.max(1),
            unbonding_blocks: a.unbonding_blocks,
            refund_after_blocks: a.refund_after_blocks,
            ..Params::default()
        },
        mint_authority: None,
        max_supply: 0,
        accounts,
    };
    g.check()?;
    if a.stake >= a.validator_stake && !a.accounts.is_empty() {
        bail!(
            "--stake {} would make every account a validator candidate; keep it below \
             --validator-stake {}",
            a.stake,
            a.validator_stake
        );
    }
    Ok(g)
}

pub fn genesis(a: GenesisArgs) -> Result<ExitCode> {
    if a.out.exists() && !a.force {
        bail!("{} exists; pass --force to overwrite it", a.out.display());
    }
    let g = build_genesis(&a)?;
    std::fs::write(&a.out, g.to_json())
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    outln!(
        "wrote {} ({} accounts, {} validators, chain {})",
        a.out.display(),
        g.accounts.len(),
        a.validators.len(),
        g.chain_id
    );
    Ok(ExitCode::SUCCESS)
}
