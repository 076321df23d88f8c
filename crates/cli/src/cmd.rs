//! The command line: every subcommand and its flags.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::{bench, client, dashboard, devnet, job, run_node, wallet};

/// Agora: a peer-to-peer compute network. Every node is worker and coordinator at once.
///
/// Start a local network of 5 nodes with `agora devnet`, or join a network with
/// `agora node --bootstrap /ip4/1.2.3.4/tcp/7470/p2p/12D3Koo...`.
#[derive(Parser, Debug)]
#[command(name = "agora", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create this node's identity key in the data directory (if absent) and print its peer id.
    Init(DataDirArgs),
    /// Print this node's peer id (creating the identity if absent).
    Id(DataDirArgs),
    /// Run a node until Ctrl-C or SIGTERM.
    Node(Box<NodeArgs>),
    /// Run a local network of N nodes as child processes on loopback, and show what they see.
    Devnet(devnet::DevnetArgs),
    /// Show a running node's status.
    Status(ClientArgs),
    /// List a running node's connected peers.
    Peers(ClientArgs),
    /// Submit jobs to a node and follow them.
    #[command(subcommand)]
    Job(job::JobCommand),
    /// This node's account on the ledger: balance, transfer, stake, unstake, history.
    #[command(subcommand)]
    Wallet(wallet::WalletCommand),
    /// Write a genesis file for a new network from peer ids, balances, stakes and validators.
    Genesis(wallet::GenesisArgs),
    /// Run a benchmark in this process and print its JSON report, each figure beside a baseline
    /// measured in the same run.
    Bench(bench::BenchArgs),
    /// The HTTP API's contract: `agora api openapi` prints its OpenAPI 3.1 document.
    #[command(subcommand)]
    Api(ApiCommand),
    /// Print the link to a node's web dashboard, with its API token (--open: open it too).
    Dashboard(dashboard::DashboardArgs),
}

#[derive(Subcommand, Debug)]
pub enum ApiCommand {
    /// Print the OpenAPI 3.1 document of the HTTP API (what `GET /v1/openapi.json` serves).
    Openapi,
}

#[derive(Args, Debug)]
pub struct DataDirArgs {
    /// Where the node keeps its identity, database and blobs [default: ~/.local/share/agora].
    #[arg(long, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Which node a client command talks to, and its API token: one flag pair for every command.
#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The node's HTTP API: HOST:PORT or an http(s) URL.
    #[arg(long, env = "AGORA_API", default_value = "127.0.0.1:7460")]
    pub api: String,
    /// The node's API token [default: read from the token file the node wrote on this machine].
    #[arg(long, env = "AGORA_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl ApiArgs {
    /// A typed client for this node, with its token (see [`crate::client::connect_with`]).
    pub fn connect(&self) -> anyhow::Result<agora_api_types::Client> {
        crate::client::connect_with(&self.api, self.token.as_deref())
    }
}

#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    #[command(flatten)]
    pub node: ApiArgs,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `agora node`. Each may also come from an `AGORA_*` variable or the TOML file given
/// with --config; a flag wins over its variable, which wins over the file.
#[derive(Args, Debug, Clone, Default)]
pub struct NodeArgs {
    /// A TOML configuration file (keys as the long flags, with underscores).
    #[arg(long, env = "AGORA_CONFIG")]
    pub config: Option<PathBuf>,
    /// Named defaults: `local` (devnet on this machine) or `production`.
    #[arg(long, env = "AGORA_PRESET")]
    pub preset: Option<String>,
    /// Where the node keeps its identity, database and blobs.
    #[arg(long, env = "AGORA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A multiaddr to listen on (repeatable), e.g. /ip4/0.0.0.0/tcp/7470 or /ip4/0.0.0.0/udp/7470/quic-v1.
    #[arg(long, env = "AGORA_LISTEN", value_delimiter = ',')]
    pub listen: Vec<String>,
    /// A bootstrap peer's multiaddr (repeatable); retried with backoff until it answers.
    #[arg(long, env = "AGORA_BOOTSTRAP", value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// A peer to keep connected at all times (repeatable).
    #[arg(
        long = "static-peer",
        env = "AGORA_STATIC_PEERS",
        value_delimiter = ','
    )]
    pub static_peers: Vec<String>,
    /// The HTTP API address, HOST:PORT [default: 127.0.0.1:7460].
    #[arg(long, env = "AGORA_API")]
    pub api: Option<String>,
    /// Turn off mDNS discovery on the LAN.
    #[arg(long, env = "AGORA_NO_MDNS")]
    pub no_mdns: bool,
    /// Log format: `text` or `json`. The level comes from RUST_LOG (default: info).
    #[arg(long, env = "AGORA_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Price asked per execution.
    #[arg(long, env = "AGORA_PRICE")]
    pub price: Option<u64>,
    /// Concurrent executions (0: one per core).
    #[arg(long, env = "AGORA_EXECUTOR_SLOTS")]
    pub executor_slots: Option<usize>,
    /// Join the network this genesis file describes (`agora genesis`): escrow, staking and a
    /// BFT-replicated ledger. Without it the node trades without payment.
    #[arg(long, env = "AGORA_GENESIS")]
    pub genesis: Option<PathBuf>,
    /// Where the consensus engine listens, IP:PORT [default: 127.0.0.1:<free port> (local),
    /// 0.0.0.0:7471 (production)].
    #[arg(long, env = "AGORA_CONSENSUS_LISTEN")]
    pub consensus_listen: Option<String>,
    /// A consensus endpoint to dial, IP:PORT (repeatable), besides the genesis file's validators.
    #[arg(
        long = "consensus-peer",
        env = "AGORA_CONSENSUS_PEERS",
        value_delimiter = ','
    )]
    pub consensus_peers: Vec<String>,
    /// Target milliseconds between blocks [default: 300 (local), 1000 (production)].
    #[arg(long, env = "AGORA_BLOCK_TIME_MS")]
    pub block_time_ms: Option<u64>,
    /// Who may connect: `open` (anyone; only staked peers bid) or `permissioned` (only the
    /// ledger's stake set and --allow peers complete a connection).
    #[arg(long, env = "AGORA_AUTHORIZATION")]
    pub authorization: Option<String>,
    /// A peer id always allowed to connect in permissioned mode (repeatable).
    #[arg(long = "allow", env = "AGORA_ALLOW_LIST", value_delimiter = ',')]
    pub allow_list: Vec<String>,
    /// With a ledger: tokens to lock in a credit line for each staked worker this node leases
    /// to (0: none). Jobs are then paid from the lines and start without waiting for a block.
    #[arg(long, env = "AGORA_CREDIT_PER_WORKER")]
    pub credit_per_worker: Option<u64>,
    /// Exit when the parent process dies (used by `agora devnet`).
    #[arg(long, hide = true)]
    pub exit_with_parent: bool,
    /// Test only: act as a Byzantine worker that returns corrupted outputs.
    #[arg(long, hide = true)]
    pub byzantine: bool,
}

pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init(a) => identity(a, true),
        Command::Id(a) => identity(a, false),
        Command::Node(a) => run_node::run(*a),
        Command::Devnet(a) => devnet::run(a),
        Command::Status(a) => client::status(&a),
        Command::Peers(a) => client::peers(&a),
        Command::Job(c) => job::run(c),
        Command::Wallet(c) => wallet::run(c),
        Command::Genesis(a) => wallet::genesis(a),
        Command::Bench(a) => bench::run(a),
        Command::Api(ApiCommand::Openapi) => {
            outln!("{}", agora_api::openapi::json());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dashboard(a) => dashboard::run(a),
    }
}

fn identity(a: DataDirArgs, init: bool) -> Result<ExitCode> {
    let dir = a
        .data_dir
        .unwrap_or_else(agora_node::config::default_data_dir);
    let (key, created) = agora_node::identity::load_or_create(&dir)
        .with_context(|| format!("cannot set up the identity in {}", dir.display()))?;
    let peer_id = key.public().to_peer_id();
    if a.json {
        outln!(
            "{}",
            serde_json::json!({"peer_id": peer_id.to_string(), "created": created, "data_dir": dir})
        );
    } else if init {
        if created {
            outln!("created identity {peer_id} in {}", dir.display());
        } else {
            outln!("already initialized: {peer_id} in {}", dir.display());
        }
    } else {
        outln!("{peer_id}");
    }
    Ok(ExitCode::SUCCESS)
}
