//! A block chain replicated by the Malachite BFT engine (Tendermint), generic over the
//! application whose blocks it orders.
//!
//! # What it is
//!
//! [`start`] runs one chain node: Malachite's consensus, its own libp2p network (TCP, on
//! [`ChainConfig::listen`], a port separate from Agora's main network), its value sync and its
//! write-ahead log, plus a task that answers the engine on behalf of an [`Application`]. The
//! application proposes payloads, validates other proposers' payloads, and applies decided ones.
//! We do not implement consensus: voting, rounds, locking, timeouts, certificates, gossip and
//! catch-up are Malachite's (`arc-malachitebft-*` 0.8.2).
//!
//! # How Malachite is embedded
//!
//! `arc-malachitebft-app-channel` spawns the engine's actors (network, WAL, consensus, sync) and
//! hands back [`Channels`](malachitebft_app_channel::Channels): a bounded queue of `AppMsg`
//! requests from consensus, each carrying a oneshot for the answer. The chain task
//! (`node::Chain`) is the single owner of the application and of the redb file; its loop
//! `select!`s over that queue and over commands from [`ChainHandle`] (block lookups, shutdown).
//!
//! The Malachite [`Context`](malachitebft_core_types::Context) is in `context`: heights are u64
//! from 1, addresses are Ed25519 public keys, votes and proposals are signed with domain tags
//! and the chain id's hash, the proposer rotates round-robin over the validator set ordered by
//! power then key, and votes are weighed by the power the application gives.
//!
//! # Values and proposal parts
//!
//! A block is `(height, proposer time, payload)`; the consensus value is only its blake3 hash.
//! We use Malachite's `ProposalAndParts` mode: the signed proposal carries the hash, and the
//! proposer streams the payload as parts (`Init`, 128 KiB `Data` chunks, `Fin` with the hash).
//! Receivers reassemble, check the hash, run [`Application::validate`] and answer with the
//! value's validity; consensus pairs it with the signed proposal by hash. We did not pick
//! `ProposalOnly` because in 0.8.2 it marks every received value valid without asking the
//! application, and it would gossip the whole payload inside every proposal message.
//! The proposer's time becomes `decided_at_ms`, so all nodes apply the same timestamp; a
//! proposal whose time goes backwards or is more than [`MAX_CLOCK_DRIFT`] ahead is invalid.
//!
//! # Pacing
//!
//! Each height gets `target_time = block_time`: Malachite finalizes a decided height no sooner
//! than `block_time` after it started. Round timeouts derive from `block_time` (see
//! `node::timeouts`): propose `2*bt + 500 ms`, prevote and precommit `bt/2 + 250 ms`, each
//! growing by `bt/2` per round.
//!
//! # Storage, commit and replay
//!
//! The redb file (`store`) holds decided blocks (payload, time, certificate, state root) and
//! undecided proposals. On `Decided`, the chain applies the block ([`Application::commit`]),
//! commits the block to redb, then acknowledges the engine and announces [`Committed`]. On
//! [`start`], every stored block is replayed into the application in height order (the stored
//! state root is compared with the recomputed one and a mismatch logged), and consensus starts
//! at the next height; Malachite's WAL restores the in-flight height's votes and proposals, and
//! the undecided table lets the chain answer for the proposals the WAL mentions.
//!
//! # Sync and non-validators
//!
//! Every node runs the same engine. A node whose key is not in the validator set only follows:
//! it receives proposals and votes through gossip, and decided blocks with their certificates
//! through Malachite's ValueSync, which also catches up a node that starts late or restarts.
//! The chain serves sync requests from its redb file.
//!
//! # What is bounded
//!
//! * Payloads: at most [`MAX_PAYLOAD`] (4 MiB), whether built locally, streamed or synced.
//! * Decoding: every network or WAL message is refused over `codec::MAX_MESSAGE` before parsing;
//!   borsh length prefixes cannot allocate beyond the input.
//! * Streams: 32 partial streams, `stream::MAX_PARTS` parts each; future-height proposals
//!   buffered: 16. Sync answers: 16 blocks per request.
//! * Queues: the engine's channels are bounded; commands 64; `Committed` broadcast 1024 (slow
//!   subscribers lag and skip, they never block the chain).

mod codec;
mod context;
mod node;
mod store;
mod stream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};

pub use context::{MAX_PAYLOAD, block_hash};

/// Largest amount a proposer's clock may be ahead of ours for its block to be valid.
pub const MAX_CLOCK_DRIFT: Duration = Duration::from_secs(15);

/// A validator: Ed25519 public key (32 bytes) and voting power.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Validator {
    pub public_key: [u8; 32],
    pub power: u64,
}

/// The application whose blocks the chain orders. Deterministic; called from the chain's task.
pub trait Application: Send + 'static {
    /// Validators for `height` (every node must compute the same set). Non-empty.
    fn validators(&self, height: u64) -> Vec<Validator>;
    /// Build a block payload to propose at `height` (only called on the proposer). Bounded by
    /// the app; a payload over [`MAX_PAYLOAD`] is replaced by an empty one.
    fn propose(&mut self, height: u64) -> Vec<u8>;
    /// Is this proposed payload acceptable at `height`? false => do not vote for it.
    fn validate(&mut self, height: u64, payload: &[u8]) -> bool;
    /// A payload was decided (finalized) at `height`; apply it. Called exactly once per height,
    /// in order, including on restart replay. Returns the app state root after applying.
    fn commit(&mut self, height: u64, payload: &[u8], decided_at_ms: u64) -> [u8; 32];
}

/// How to run one chain node.
#[derive(Clone, Debug)]
pub struct ChainConfig {
    /// redb file owned by the chain (decided blocks + certificates, undecided proposals).
    pub db_path: PathBuf,
    /// Malachite WAL directory.
    pub wal_dir: PathBuf,
    /// Malachite's own network (TCP). Must be a concrete port peers can dial.
    pub listen: SocketAddr,
    /// Other nodes' consensus addresses (persistent peers).
    pub peers: Vec<SocketAddr>,
    /// Ed25519 secret (same seed as the node's libp2p identity).
    pub secret_key: [u8; 32],
    /// Target time between blocks; round timeouts derive from it.
    pub block_time: Duration,
    /// Chain id: signatures are bound to it.
    pub chain_id: String,
}

/// A decided block, as announced to subscribers.
#[derive(Clone, Debug)]
pub struct Committed {
    pub height: u64,
    pub payload: Arc<Vec<u8>>,
    pub state_root: [u8; 32],
    pub decided_at_ms: u64,
}

/// Where the chain stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainStatus {
    /// Last decided height (0 before the first block).
    pub height: u64,
    /// `decided_at_ms` of the last block (0 before the first block).
    pub last_block_ms: u64,
    /// Validators for the next height.
    pub validators: Vec<Validator>,
    /// Peers connected on the consensus network.
    pub peers: usize,
}

/// A decided block as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredBlock {
    pub height: u64,
    pub payload: Vec<u8>,
    /// The commit certificate (borsh-encoded Malachite `ExtendedCommitCertificate`).
    pub certificate: Vec<u8>,
    pub state_root: [u8; 32],
    pub decided_at_ms: u64,
}

/// What can go wrong running the chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("invalid chain config: {0}")]
    Config(String),
    #[error("chain database: {0}")]
    Storage(#[from] redb::Error),
    #[error("chain database is corrupt: {0}")]
    Corrupt(String),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the application returned no usable validator for height {0}")]
    NoValidators(u64),
    #[error("consensus engine: {0}")]
    Engine(String),
    #[error("the chain has stopped")]
    Stopped,
}

pub(crate) enum Command {
    Block(
        u64,
        oneshot::Sender<Result<Option<StoredBlock>, ChainError>>,
    ),
    Shutdown(oneshot::Sender<()>),
}

/// Cloneable front end of a running chain node.
#[derive(Clone)]
pub struct ChainHandle {
    commands: mpsc::Sender<Command>,
    committed: broadcast::Sender<Committed>,
    status: watch::Receiver<ChainStatus>,
}

impl ChainHandle {
    /// Blocks decided from now on (a lagging receiver skips ahead; see `RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// The latest status (kept current by the chain task; the last one after shutdown).
    pub async fn status(&self) -> ChainStatus {
        self.status.borrow().clone()
    }

    /// A decided block, `None` if this node has not decided `height`.
    pub async fn block(&self, height: u64) -> Result<Option<StoredBlock>, ChainError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Block(height, tx))
            .await
            .map_err(|_| ChainError::Stopped)?;
        rx.await.map_err(|_| ChainError::Stopped)?
    }

    /// Stop the engine (network, WAL, sync) and the chain task, and close the database.
    /// Returns once they are stopped; idempotent.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Shutdown(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The Ed25519 public key (validator key) of a secret key.
pub fn public_key(secret: &[u8; 32]) -> [u8; 32] {
    *malachitebft_signing_ed25519::PrivateKey::from(*secret)
        .public_key()
        .as_bytes()
}

/// Open the chain's database, replay its blocks into `app`, start Malachite and the chain task.
pub async fn start<A: Application>(config: ChainConfig, app: A) -> Result<ChainHandle, ChainError> {
    node::start(config, app).await
}
