//! Starting, running and stopping a node, and the handle the API and CLI use.

use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_chain::{ChainConfig, ChainHandle};
use agora_exec::{OnnxEngine, OnnxLimits, Pool, Sandbox};
use agora_ledger::{AccountId, BlockReceipt, Event, Ledger, TxKind};
use agora_market::settlement::{Settings as SettlementSettings, Settlement};
use agora_market::worker::{Settings as WorkerSettings, Worker};
use agora_market::{JobRecord, Market, Offer};
use agora_net::{Keypair, Multiaddr, NetHandle, PeerId, PeerInfo};
use agora_types::job::{JobId, JobLimits, JobSpec, Runtime, SignedJob, SpecError};
use agora_types::sign::Signed;
use agora_types::wire::GossipMessage;
use agora_types::{Hash, now_ms};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::blobs;
use crate::config::{NodeConfig, Preset};
use crate::core::{Command, Core, MAX_TASKS, Persist, Tasks};
use crate::identity::{self, IdentityError};
use crate::ledger::{AccountView, LedgerApp, LedgerRef, LedgerStatus};
use crate::store::{Store, StoreConfig, StoreError};

/// Leases a worker holds per executor slot: one runs, the others wait in the pool's queue.
/// Only leases after a bid of ours may queue; a fast-path lease (no bid) is taken only while an
/// executor slot is free (`direct_slots`). A deeper book with fast-path leases queued raised
/// sustained dispatch (302 jobs/s against 143, BENCHMARKS.md) but concentrated the work on the
/// cheapest workers: in the market simulation some workers then never ran a job, and a saboteur
/// among them was never caught. Kept at 4 until selection spreads queued load.
pub const LEASES_PER_SLOT: usize = 4;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store could not be opened (the message names the file and what to do).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
    /// The sandbox could not start.
    #[error("cannot start the sandbox: {0}")]
    Exec(#[from] agora_exec::ExecError),
    /// The ledger could not start.
    #[error("cannot start the ledger: {0}")]
    Ledger(String),
}

/// Why a ledger request failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// The node runs without a ledger.
    #[error("this node runs without a ledger; start it with --genesis FILE")]
    Disabled,
    /// The account is unknown.
    #[error("no account {0} on the ledger")]
    UnknownAccount(String),
    /// The transaction was not accepted.
    #[error("transaction refused: {0}")]
    Refused(String),
    /// It was not in a block in time.
    #[error(
        "transaction {0} is not in a block after {1} s; it may still land (see `agora wallet history`)"
    )]
    Timeout(String, u64),
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopped,
}

/// A transaction's fate.
#[derive(Clone, Debug, Serialize)]
pub struct TxOutcome {
    /// Its id.
    pub tx_id: String,
    /// Its kind.
    pub kind: String,
    /// Its nonce.
    pub nonce: u64,
    /// The height it landed at.
    pub height: u64,
    /// Whether it was applied.
    pub applied: bool,
    /// Why not, when it was refused.
    pub error: Option<String>,
}

/// Why a job was refused at submission. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SubmitError {
    /// The module blob is not on this node.
    #[error("module {0} is not on this node; upload it first (POST /v1/blobs)")]
    ModuleMissing(Hash),
    /// The input blob is not on this node.
    #[error("input {0} is not on this node; upload it first (POST /v1/blobs)")]
    InputMissing(Hash),
    /// The module is not a WebAssembly WASI command the sandbox accepts.
    #[error("the module is not a runnable WebAssembly WASI command: {0}")]
    InvalidModule(String),
    /// An ONNX job's model cannot run here, or its input tensor does not fit the model.
    #[error(
        "the ONNX job cannot run: {0}; fix the model, or the input (one .npy tensor of the \
         model's input dtype and shape)"
    )]
    InvalidOnnx(String),
    /// A field of the spec is out of bounds.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// Storage failed.
    #[error("storage: {0}")]
    Store(StoreError),
    /// The disk (or the blob quota) is full: the job was not submitted, nothing was announced.
    /// The API answers 507 Insufficient Storage.
    #[error("{0}; the job was not submitted")]
    DiskFull(StoreError),
    /// The submitter cannot pay the escrow.
    #[error(
        "the job's escrow needs {need} tokens but this node's balance is {have}; lower \
         --max-price or --redundancy, or receive tokens (`agora wallet balance`)"
    )]
    InsufficientFunds {
        /// The escrow.
        need: u64,
        /// The balance.
        have: u64,
    },
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopped,
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        if e.is_disk_full() {
            SubmitError::DiskFull(e)
        } else {
            SubmitError::Store(e)
        }
    }
}

/// Why a job's output cannot be returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutputError {
    /// No such job on this node.
    #[error("no job {0} on this node")]
    UnknownJob(Hash),
    /// The job has no verified output (yet).
    #[error("job {id} has no verified output: it is {state}")]
    NotReady {
        /// The job.
        id: Hash,
        /// Its state and reason.
        state: String,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The node is stopping.
    #[error("the node is shutting down")]
    Stopped,
}

/// A job as submitted through the API: blobs by hash, everything else optional.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The module's hash (uploaded before).
    pub module: Hash,
    /// The input's hash (uploaded before); empty input if absent.
    #[serde(default)]
    pub input: Option<Hash>,
    /// Arguments after argv\[0\].
    #[serde(default)]
    pub args: Vec<String>,
    /// How many workers must agree (default [`agora_api_types::defaults::REDUNDANCY`]).
    #[serde(default)]
    pub redundancy: Option<u8>,
    /// The most paid per execution (default [`agora_api_types::defaults::MAX_PRICE`]).
    #[serde(default)]
    pub max_price: Option<u64>,
    /// Fuel limit (default [`agora_api_types::defaults::FUEL`]).
    #[serde(default)]
    pub fuel: Option<u64>,
    /// Memory limit in bytes (default [`agora_api_types::defaults::MEMORY_BYTES`]).
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Wall-time limit in ms (default [`agora_api_types::defaults::WALL_TIME_MS`]).
    #[serde(default)]
    pub wall_time_ms: Option<u64>,
    /// Required capabilities (default `["wasm"]`).
    #[serde(default)]
    pub capabilities: Option<Vec<String>>,
    /// Seconds from now until the job is abandoned (default
    /// [`agora_api_types::defaults::DEADLINE_SECS`]).
    #[serde(default)]
    pub deadline_secs: Option<u64>,
    /// What runs it: WebAssembly (default) or an ONNX model with its comparison rule.
    #[serde(default)]
    pub runtime: Runtime,
}

/// The capabilities a job asks for: the given ones or the default, with the runtime's tag added
/// for an ONNX job (only workers with the ONNX runtime may bid on it).
fn capabilities(given: Option<Vec<String>>, runtime: Runtime) -> Vec<String> {
    let mut caps = match (given, runtime) {
        (Some(c), _) => c,
        (None, Runtime::Wasm) => agora_api_types::defaults::capabilities(),
        (None, Runtime::Onnx { .. }) => Vec::new(),
    };
    let tag = runtime.capability();
    if runtime != Runtime::Wasm && !caps.iter().any(|c| c == tag) {
        caps.push(tag.to_string());
    }
    caps
}

/// What `GET /v1/status` shows.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on.
    pub listen_addresses: Vec<Multiaddr>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers in the Kademlia routing table.
    pub routing_table_size: usize,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Software version.
    pub version: String,
    /// The price this node asks per execution.
    pub price: u64,
}

pub(crate) struct Shared {
    pub config: NodeConfig,
    pub keypair: Keypair,
    pub started: Instant,
    pub registry: Mutex<Registry>,
    pub store: Store,
    pub sandbox: Sandbox,
    /// The worker pool's ONNX engine (shared plan cache): the submitter checks models with it.
    pub onnx: OnnxEngine,
    pub ledger: Option<LedgerRef>,
    pub chain: Option<ChainHandle>,
}

/// A cloneable handle to a running node, for the API and tests.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) net: NetHandle,
    pub(crate) shared: Arc<Shared>,
    pub(crate) core: mpsc::Sender<Command>,
    /// The persistence task's queue (submissions' first records are group-committed there).
    pub(crate) persist: mpsc::Sender<Persist>,
}

impl NodeHandle {
    /// Our peer id.
    pub fn peer_id(&self) -> PeerId {
        self.net.local_peer_id()
    }

    /// The network handle.
    pub fn net(&self) -> &NetHandle {
        &self.net
    }

    /// The node's configuration.
    pub fn config(&self) -> &NodeConfig {
        &self.shared.config
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// The node's status.
    pub async fn status(&self) -> Result<NodeStatus, agora_net::NetError> {
        let s = self.net.status().await?;
        Ok(NodeStatus {
            peer_id: s.peer_id,
            listen_addresses: s.listen_addresses,
            connected_peers: s.connected_peers,
            routing_table_size: s.routing_table_size,
            uptime_secs: self.shared.started.elapsed().as_secs(),
            version: agora_types::VERSION.to_string(),
            price: self.shared.config.price,
        })
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, agora_net::NetError> {
        self.net.peers().await
    }

    /// Every metric in Prometheus text format.
    pub fn metrics_text(&self) -> String {
        let mut out = String::new();
        let registry = match self.shared.registry.lock() {
            Ok(r) => r,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.core.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Stores a blob and announces it in the DHT; returns its hash.
    pub async fn put_blob(&self, data: Vec<u8>) -> Result<Hash, StoreError> {
        let store = self.shared.store.clone();
        let hash = tokio::task::spawn_blocking(move || store.put_blob(&data))
            .await
            .map_err(|e| StoreError::Db(e.to_string()))??;
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.provide(blobs::provider_key(&hash)).await;
        });
        Ok(hash)
    }

    /// Stores the file `tmp` (from [`Store::blob_temp_path`], written and synced) as a blob and
    /// announces it in the DHT; returns its hash and size. `tmp` is gone afterwards.
    pub async fn put_blob_file(&self, tmp: std::path::PathBuf) -> Result<(Hash, u64), StoreError> {
        let store = self.shared.store.clone();
        let (hash, size) = tokio::task::spawn_blocking(move || store.put_blob_file(&tmp))
            .await
            .map_err(|e| StoreError::Db(e.to_string()))??;
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.provide(blobs::provider_key(&hash)).await;
        });
        Ok((hash, size))
    }

    /// Validates, signs and submits a job.
    pub async fn submit(&self, req: SubmitRequest) -> Result<JobId, SubmitError> {
        let bounds = self.shared.config.spec_bounds();
        let store = self.shared.store.clone();
        let empty = store.put_blob(&[])?;
        let input = req.input.unwrap_or(empty);
        let module_size = store
            .blob_size(&req.module)
            .ok_or(SubmitError::ModuleMissing(req.module))?;
        let input_size = store
            .blob_size(&input)
            .ok_or(SubmitError::InputMissing(input))?;
        // The defaults of omitted fields live in one place, shared with the CLI's flags.
        use agora_api_types::defaults as d;
        let mut spec = JobSpec {
            module: req.module,
            module_size,
            input,
            input_size,
            args: req.args,
            limits: JobLimits {
                fuel: req.fuel.unwrap_or(d::FUEL),
                memory_bytes: req.memory_bytes.unwrap_or(d::MEMORY_BYTES),
                wall_time_ms: req.wall_time_ms.unwrap_or(d::WALL_TIME_MS),
            },
            capabilities: capabilities(req.capabilities, req.runtime),
            redundancy: req.redundancy.unwrap_or(d::REDUNDANCY),
            max_price: req.max_price.unwrap_or(d::MAX_PRICE),
            deadline_ms: now_ms()
                + req
                    .deadline_secs
                    .unwrap_or(d::DEADLINE_SECS)
                    .min(d::MAX_DEADLINE_SECS)
                    * 1000,
            nonce: rand::random(),
            credit: false,
            runtime: req.runtime,
        };
        spec.validate(&bounds)?;
        if let Some(ledger) = &self.shared.ledger {
            let st = ledger.lock();
            // Paid from credit lines when enough are open to cover a quorum's worth of workers
            // (each worker checks its own line): the job needs no escrow and waits for no block.
            let lines = st
                .ledger
                .credits_of(&ledger.local)
                .filter(|(_, c)| c.closing_after_ms.is_none() && c.amount >= spec.max_price)
                .count();
            spec.credit = lines >= usize::from(spec.redundancy.max(1));
            if !spec.credit {
                let market = match self.shared.config.preset {
                    Preset::Local => agora_market::Config::local(),
                    Preset::Production => agora_market::Config::production(),
                };
                let need = market.escrow_for(spec.max_price, spec.redundancy);
                let have = st.ledger.account(&ledger.local).map_or(0, |a| a.balance);
                if have < need {
                    return Err(SubmitError::InsufficientFunds { need, have });
                }
            }
        }
        // Refuse what cannot run (not a WASI command; a model tract cannot run, or an input that
        // does not fit it) before anyone is asked to run it.
        let sandbox = self.shared.sandbox.clone();
        let onnx = self.shared.onnx.clone();
        let module = req.module;
        let onnx_limits = OnnxLimits::for_spec(&spec, agora_types::wire::limits::MAX_OUTPUT_BYTES);
        let runtime = spec.runtime;
        tokio::task::spawn_blocking(move || {
            let bytes = store
                .get_blob(&module, bounds.max_module_bytes)?
                .ok_or(SubmitError::ModuleMissing(module))?;
            match runtime {
                Runtime::Wasm => sandbox
                    .validate(&bytes)
                    .map_err(|e| SubmitError::InvalidModule(e.to_string())),
                Runtime::Onnx { .. } => {
                    let tensor = store
                        .get_blob(&input, bounds.max_input_bytes)?
                        .ok_or(SubmitError::InputMissing(input))?;
                    onnx.check_input(&bytes, &tensor, &onnx_limits)
                        .map(|_| ())
                        .map_err(|e| SubmitError::InvalidOnnx(e.to_string()))
                }
            }
        })
        .await
        .map_err(|_| SubmitError::Stopped)??;
        let signed = Signed::sign(&self.shared.keypair, spec, now_ms())
            .map_err(|e| SubmitError::InvalidModule(e.to_string()))?;
        let id = agora_types::job::job_id(&signed);
        // Durable before anyone hears of it: the record is committed here, and only then does
        // the market announce the job. A full disk fails the submission here, with nothing sent.
        self.write_submitted(id, &signed).await?;
        match self.ask(|tx| Command::Submit(Box::new(signed), tx)).await {
            Some(id) => {
                if self.job(id).await.is_none() {
                    // The market refused it (too many jobs): do not resume it after a restart.
                    let store = self.shared.store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.delete_job(&id)).await;
                }
                Ok(id)
            }
            // No answer from a core still running: the job is durable all the same (it
            // resumes after a restart).
            None if !self.core.is_closed() => Ok(id),
            None => Err(SubmitError::Stopped),
        }
    }

    /// Commits the first record of a job about to be submitted.
    async fn write_submitted(&self, id: JobId, signed: &SignedJob) -> Result<(), SubmitError> {
        let market = match self.shared.config.preset {
            Preset::Local => agora_market::Config::local(),
            Preset::Production => agora_market::Config::production(),
        };
        let mut record = JobRecord::new(id, signed.clone(), now_ms(), market.reannounce_initial_ms);
        if self.shared.ledger.is_some() {
            // Restored in this state, it asks for its escrow lock again.
            record.state = agora_market::JobState::AwaitingEscrow;
        }
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| SubmitError::Store(StoreError::Db(e.to_string())))?;
        // Committed with whatever else is queued (one sync for a burst of submissions).
        let (tx, rx) = oneshot::channel();
        self.persist
            .send(Persist::Submitted(id, bytes, tx))
            .await
            .map_err(|_| SubmitError::Stopped)?;
        rx.await
            .map_err(|_| SubmitError::Stopped)?
            .map_err(SubmitError::from)
    }

    /// Every job this node submitted and still tracks, newest first.
    pub async fn jobs(&self) -> Vec<JobRecord> {
        self.ask(Command::Jobs).await.unwrap_or_default()
    }

    /// One job's record.
    pub async fn job(&self, id: JobId) -> Option<JobRecord> {
        self.ask(|tx| Command::Job(id, tx)).await.flatten()
    }

    /// Waits until job `id` is verified or failed and returns its record (`None`: unknown job,
    /// or the node is stopping). No polling: the core answers when the job's verdict is in.
    pub async fn wait_final(&self, id: JobId) -> Option<JobRecord> {
        self.ask(|tx| Command::WaitFinal(id, tx)).await.flatten()
    }

    /// Cancels a job; false if unknown.
    pub async fn cancel(&self, id: JobId) -> bool {
        self.ask(|tx| Command::Cancel(id, tx))
            .await
            .unwrap_or(false)
    }

    /// This node's reputation book.
    pub async fn reputation(&self) -> Vec<(PeerId, i64)> {
        self.ask(Command::Reputation).await.unwrap_or_default()
    }

    /// The capability ads (price, memory, free slots) of the peers this node knows, not
    /// lapsed, in peer id order: what a job submitted now could be offered.
    pub async fn offers(&self) -> Vec<(PeerId, agora_market::IndexEntry)> {
        self.ask(Command::Offers).await.unwrap_or_default()
    }

    /// The market's configuration for this node's preset (escrow arithmetic, timers).
    pub fn market_config(&self) -> agora_market::Config {
        match self.shared.config.preset {
            Preset::Local => agora_market::Config::local(),
            Preset::Production => agora_market::Config::production(),
        }
    }

    fn ledger(&self) -> Result<&LedgerRef, LedgerError> {
        self.shared.ledger.as_ref().ok_or(LedgerError::Disabled)
    }

    /// The ledger's status.
    pub async fn ledger_status(&self) -> Result<LedgerStatus, LedgerError> {
        let ledger = self.ledger()?;
        let peers = match &self.shared.chain {
            Some(c) => c.status().await.peers,
            None => 0,
        };
        Ok(ledger.lock().status(peers))
    }

    /// This node's account on the ledger.
    pub fn local_account(&self) -> Result<AccountId, LedgerError> {
        Ok(self.ledger()?.local)
    }

    /// This node's own account (its wallet).
    pub fn own_account(&self) -> Result<AccountView, LedgerError> {
        self.account(&self.local_account()?.to_string())
    }

    /// An account, by peer id.
    pub fn account(&self, peer_id: &str) -> Result<AccountView, LedgerError> {
        let ledger = self.ledger()?;
        let id = agora_ledger::genesis::account_of(peer_id)
            .ok_or_else(|| LedgerError::UnknownAccount(peer_id.to_string()))?;
        ledger
            .lock()
            .account_view(&id)
            .ok_or_else(|| LedgerError::UnknownAccount(peer_id.to_string()))
    }

    /// Receipts of the blocks from height `from`, at most `limit`, oldest first (the most
    /// recent blocks only: the node keeps a bounded window in memory).
    pub fn blocks(&self, from: u64, limit: usize) -> Result<Vec<BlockReceipt>, LedgerError> {
        let ledger = self.ledger()?;
        let st = ledger.lock();
        Ok(st
            .receipts
            .iter()
            .filter(|r| r.height >= from)
            .take(limit)
            .cloned()
            .collect())
    }

    /// Events that concern this node's account, newest first, at most `limit`.
    pub fn history(&self, limit: usize) -> Result<Vec<(u64, Event)>, LedgerError> {
        let ledger = self.ledger()?;
        let st = ledger.lock();
        Ok(st.history.iter().rev().take(limit).cloned().collect())
    }

    /// Signs a transaction from this node's account, gossips it and, when `wait` is set, waits
    /// (up to 30 s) for the block that holds it.
    pub async fn send_tx(&self, kind: TxKind, wait: bool) -> Result<TxOutcome, LedgerError> {
        let ledger = self.ledger()?.clone();
        let name = kind.name().to_string();
        let tx = ledger
            .sign_own(kind)
            .map_err(|e| LedgerError::Refused(e.to_string()))?;
        let id = agora_types::ledger::tx_id(&tx);
        let nonce = tx.payload.nonce;
        let _ = self.net.publish(GossipMessage::Tx(tx)).await;
        let mut outcome = TxOutcome {
            tx_id: id.to_hex(),
            kind: name,
            nonce,
            height: 0,
            applied: false,
            error: None,
        };
        if !wait {
            return Ok(outcome);
        }
        const WAIT_SECS: u64 = 30;
        let deadline = Instant::now() + Duration::from_secs(WAIT_SECS);
        while Instant::now() < deadline {
            {
                let st = ledger.lock();
                for r in st.receipts.iter().rev() {
                    if let Some(rc) = r.receipts.iter().find(|x| x.tx_id == id) {
                        outcome.height = r.height;
                        outcome.applied = rc.error.is_none();
                        outcome.error = rc.error.clone();
                        return Ok(outcome);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LedgerError::Timeout(id.to_hex(), WAIT_SECS))
    }

    /// A verified job's output.
    pub async fn output(&self, id: JobId) -> Result<Vec<u8>, OutputError> {
        let record = self.job(id).await.ok_or(OutputError::UnknownJob(id))?;
        let Some(agora_types::job::Outcome::Completed { output_hash, .. }) = record.outcome else {
            let state = match (&record.fail_reason, &record.waiting) {
                (Some(f), _) => format!("failed: {f}"),
                (None, Some(w)) => format!("{}: {w}", record.state),
                (None, None) => record.state.to_string(),
            };
            return Err(OutputError::NotReady { id, state });
        };
        if record.fail_reason.is_some() || !record.state.is_final() {
            return Err(OutputError::NotReady {
                id,
                state: record.state.to_string(),
            });
        }
        let store = self.shared.store.clone();
        tokio::task::spawn_blocking(move || store.get_blob(&output_hash, u64::MAX))
            .await
            .map_err(|_| OutputError::Stopped)??
            .ok_or_else(|| OutputError::NotReady {
                id,
                state: "verified, but the output is missing from the store".into(),
            })
    }
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    net_task: JoinHandle<()>,
    core_task: JoinHandle<()>,
    persist_task: JoinHandle<()>,
    stop: mpsc::Sender<()>,
}

/// Writes job records in order and answers barriers. Whatever is queued when it wakes is
/// written in one transaction (group commit), so a burst of changes costs one sync. A failed
/// batch (a full disk) is kept and retried every second with what comes in meanwhile (a later
/// write of a job replaces the earlier one); barriers queued with it are dropped, so nobody is
/// told a write is durable before it is. A submission's first record is the exception: it is
/// not kept, and its submitter is told the write failed (the job then does not exist).
async fn persister(store: Store, mut rx: mpsc::Receiver<Persist>) {
    const RETRY: Duration = Duration::from_secs(1);
    let mut pending: HashMap<JobId, Option<Vec<u8>>> = HashMap::new();
    let mut barriers: Vec<oneshot::Sender<()>> = vec![];
    let mut submitted: Vec<(JobId, oneshot::Sender<Result<(), StoreError>>)> = vec![];
    let mut closed = false;
    loop {
        let first = if pending.is_empty() {
            match rx.recv().await {
                Some(op) => Some(op),
                None => break,
            }
        } else {
            match tokio::time::timeout(RETRY, rx.recv()).await {
                Ok(Some(op)) => Some(op),
                Ok(None) => {
                    closed = true;
                    None
                }
                Err(_) => None,
            }
        };
        let mut op = first;
        while let Some(o) = op.take() {
            match o {
                Persist::Write(id, bytes) => {
                    pending.insert(id, bytes);
                }
                Persist::Barrier(done) => barriers.push(done),
                Persist::Submitted(id, bytes, done) => {
                    pending.insert(id, Some(bytes));
                    submitted.push((id, done));
                }
                Persist::Close => {
                    closed = true;
                    break;
                }
            }
            if pending.len() < 1024 {
                op = rx.try_recv().ok();
            }
        }
        if !pending.is_empty() {
            let writes: Vec<(JobId, Option<Vec<u8>>)> = pending.drain().collect();
            let n = writes.len();
            let store = store.clone();
            let r = tokio::task::spawn_blocking(move || {
                let r = store.write_jobs(&writes);
                (r, writes)
            })
            .await;
            let failed = match r {
                Ok((Ok(()), _)) => None,
                Ok((Err(e), writes)) => {
                    for (id, bytes) in writes {
                        pending.entry(id).or_insert(bytes);
                    }
                    Some(e)
                }
                Err(e) => Some(StoreError::Db(e.to_string())),
            };
            if let Some(error) = failed {
                warn!(records = n, %error, "cannot persist job records; retrying");
                barriers.clear();
                for (id, done) in submitted.drain(..) {
                    pending.remove(&id);
                    let _ = done.send(Err(error.for_another()));
                }
                if closed {
                    break;
                }
                continue;
            }
        }
        for (_, done) in submitted.drain(..) {
            let _ = done.send(Ok(()));
        }
        for done in barriers.drain(..) {
            let _ = done.send(());
        }
        if closed {
            break;
        }
    }
}

impl Node {
    /// Starts a node: identity, storage, sandbox, network, core task. Jobs this node submitted
    /// before a restart resume.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (keypair, created) = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        if created {
            info!(%peer_id, dir = %config.data_dir.display(), "created a new identity");
        }
        let store = Store::open_with(
            &config.data_dir,
            StoreConfig {
                blob_quota_bytes: config.blob_quota_bytes,
            },
        )?;
        let restored: Vec<JobRecord> = store
            .jobs()?
            .into_iter()
            .filter_map(|(id, bytes)| match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    warn!(job = %id.short(), error = %e, "skipping an unreadable job record");
                    None
                }
            })
            .collect();
        // Refuse a consensus port another process listens on (the consensus network, like
        // libp2p's, listens with SO_REUSEPORT and would share it silently).
        if let Some(lc) = &config.ledger
            && lc.listen.port() != 0
            && let Err(e) = agora_net::check_port_free(lc.listen)
        {
            return Err(NodeError::Ledger(
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    format!(
                        "cannot listen for consensus on {}: the port is already in use by another \
                     process (another agora node?); stop it, or choose another port with \
                     --consensus-listen",
                        lc.listen
                    )
                } else {
                    format!("cannot listen for consensus on {}: {e}", lc.listen)
                },
            ));
        }
        // Each peer connection is a file; the network fits its limits to what is allowed.
        let fd_limit = agora_net::raise_fd_limit();
        info!(?fd_limit, "open-file limit");
        let sandbox = Sandbox::new()?;
        // Every lease the worker accepts fits in the pool's queue (see `LEASES_PER_SLOT`).
        let pool = Pool::new(
            sandbox.clone(),
            config.executor_slots,
            (config.executor_slots * LEASES_PER_SLOT).max(64),
        );
        let mut registry = Registry::default();
        let network = agora_net::spawn(keypair.clone(), config.net.clone(), &mut registry)?;
        let market_config = match config.preset {
            Preset::Local => agora_market::Config::local(),
            Preset::Production => agora_market::Config::production(),
        };
        let mut market_config = market_config;
        market_config.require_escrow = config.ledger.is_some();
        let mut market = Market::new(market_config.clone(), peer_id);
        if let Ok(Some(bytes)) = store.meta("reputation")
            && let Ok(book) = serde_json::from_slice(&bytes)
        {
            *market.reputation_mut() = book;
        }
        let offer = Offer {
            capabilities: vec!["wasm".into(), "onnx".into()],
            price: config.price,
            memory_bytes: 1 << 30,
            max_wall_time_ms: 10 * 60 * 1000,
        };
        let (block_tx, block_rx) = mpsc::channel(64);
        let (ledger, chain) = match &config.ledger {
            Some(lc) => {
                let (l, c) = start_ledger(lc, &config.data_dir, &keypair, block_tx).await?;
                (Some(l), Some(c))
            }
            None => {
                drop(block_tx);
                (None, None)
            }
        };
        let ledger_seen = ledger.as_ref().map_or(0, |l| l.lock().ledger.height());
        let mut authorized = None;
        if config.net.authorization == agora_net::Authorization::Permissioned {
            // From the first moment: the stake set as of the last stored block.
            let set = ledger
                .as_ref()
                .map(LedgerRef::stake_set)
                .unwrap_or_default();
            network.handle.set_authorized(set.clone()).await?;
            authorized = Some(set);
        }
        info!(%peer_id, preset = ?config.preset, resumed = restored.len(), ledger_height = ledger_seen, "node started");
        let shared = Arc::new(Shared {
            keypair,
            started: Instant::now(),
            registry: Mutex::new(registry),
            store: store.clone(),
            sandbox,
            onnx: pool.onnx().clone(),
            config,
            ledger: ledger.clone(),
            chain: chain.clone(),
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(256);
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let (internal_tx, internal_rx) = mpsc::channel(1024);
        let (persist_tx, persist_rx) = mpsc::channel(4096);
        let persist_task = tokio::spawn(persister(store, persist_rx));
        let handle = NodeHandle {
            net: network.handle.clone(),
            shared: shared.clone(),
            core: cmd_tx,
            persist: persist_tx.clone(),
        };
        let lease_capacity = shared.config.executor_slots * LEASES_PER_SLOT;
        let mut worker_settings = WorkerSettings::new(offer, lease_capacity, &market_config);
        worker_settings.bounds = shared.config.spec_bounds();
        // A lease with no bid of ours starts at once or is answered `Busy` (see `direct_slots`).
        worker_settings.direct_slots = shared.config.executor_slots;
        if let Some(l) = &shared.config.ledger {
            // A signed credit-job result counts against its line while a settlement may still pay
            // it, with two minutes for clock skew (see `market::worker::CREDIT_HOLD_MS`).
            worker_settings.credit_hold_ms =
                l.genesis.params.credit_settle_ms.saturating_add(120_000);
        }
        // Without a ledger the settlement machine is never fed; an identity that is no Ed25519
        // key has no account (the ledger refuses to start with one).
        let account = ledger.as_ref().map_or_else(
            || AccountId::from_peer_id(&peer_id).unwrap_or(AccountId([0; 32])),
            |l| l.local,
        );
        let settlement = Settlement::new(
            peer_id,
            account,
            SettlementSettings {
                credit_per_worker: shared
                    .config
                    .ledger
                    .as_ref()
                    .map_or(0, |l| l.credit_per_worker),
                ad_ttl_ms: market_config.ad_ttl_ms,
            },
        );
        let core = Core {
            shared,
            net: network.handle,
            pool,
            market,
            worker: Worker::new(peer_id, worker_settings),
            running: HashMap::new(),
            work_token: 0,
            reports: HashMap::new(),
            timers: BinaryHeap::new(),
            tasks: Tasks::new(MAX_TASKS, "core"),
            work: Tasks::new(lease_capacity * 2, "work"),
            events: network.events,
            commands: cmd_rx,
            internal_tx,
            internal: internal_rx,
            persist: persist_tx,
            stop: stop_rx,
            peer_cache: HashMap::new(),
            ledger,
            blocks: block_rx,
            ledger_seen,
            settlement,
            authorized,
            rewards: Default::default(),
            notices: Vec::new(),
            beacons: 0,
            dirty: Default::default(),
            flush_at: None,
            waiters: HashMap::new(),
        };
        let core_task = tokio::spawn(core.run(restored));
        Ok(Node {
            handle,
            net_task: network.task,
            core_task,
            persist_task,
            stop: stop_tx,
        })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node: the core task first (it saves the reputation book), then pending record
    /// writes are flushed, then the network closes every connection.
    pub async fn shutdown(self) {
        let _ = self.stop.send(()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.core_task).await;
        // Then the persister commits what the core queued and ends.
        let close = self.handle.persist.send(Persist::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), close).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.persist_task).await;
        if let Some(chain) = &self.handle.shared.chain {
            let _ = tokio::time::timeout(Duration::from_secs(2), chain.shutdown()).await;
        }
        let _ = self.handle.net.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.net_task).await;
        info!("node stopped");
    }
}

/// A free TCP port on `ip`, for a consensus endpoint configured with port 0.
fn free_port(ip: std::net::IpAddr) -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))?;
    Ok(l.local_addr()?.port())
}

/// Replays the chain into a fresh ledger and starts consensus.
async fn start_ledger(
    lc: &crate::config::LedgerConfig,
    data_dir: &std::path::Path,
    keypair: &Keypair,
    blocks: mpsc::Sender<u64>,
) -> Result<(LedgerRef, ChainHandle), NodeError> {
    let ledger = Ledger::from_genesis(&lc.genesis).map_err(|e| NodeError::Ledger(e.to_string()))?;
    let peer_id = keypair.public().to_peer_id();
    let local = AccountId::from_peer_id(&peer_id)
        .ok_or_else(|| NodeError::Ledger("the identity is not an Ed25519 key".into()))?;
    let secret: [u8; 32] = keypair
        .clone()
        .try_into_ed25519()
        .map_err(|_| NodeError::Ledger("the identity is not an Ed25519 key".into()))?
        .secret()
        .as_ref()
        .try_into()
        .map_err(|_| NodeError::Ledger("unexpected secret key length".into()))?;
    let mut listen = lc.listen;
    if listen.port() == 0 {
        let port = free_port(listen.ip()).map_err(|e| NodeError::Ledger(e.to_string()))?;
        listen.set_port(port);
    }
    let ledger_ref = LedgerRef::new(ledger, local, keypair.clone());
    let app = LedgerApp {
        ledger: ledger_ref.clone(),
        notify: blocks,
    };
    let dir = data_dir.join("chain");
    std::fs::create_dir_all(&dir).map_err(|e| NodeError::Ledger(e.to_string()))?;
    let chain = agora_chain::start(
        ChainConfig {
            db_path: dir.join("chain.redb"),
            wal_dir: dir.join("wal"),
            listen,
            peers: lc.peers.clone(),
            secret_key: secret,
            block_time: lc.block_time,
            chain_id: lc.genesis.chain_id.clone(),
        },
        app,
    )
    .await
    .map_err(|e| NodeError::Ledger(e.to_string()))?;
    info!(%listen, peers = lc.peers.len(), height = ledger_ref.lock().ledger.height(), "ledger started");
    Ok((ledger_ref, chain))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> JobId {
        agora_types::Hash::of(&[n])
    }

    #[tokio::test]
    async fn the_persister_commits_a_submission_before_answering_and_ends_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (tx, rx) = mpsc::channel(16);
        let task = tokio::spawn(persister(store.clone(), rx));

        // A submission's first record: durable when the answer comes.
        let (done, answer) = oneshot::channel();
        tx.send(Persist::Submitted(id(1), b"first".to_vec(), done))
            .await
            .unwrap();
        assert!(answer.await.unwrap().is_ok(), "the submission is durable");
        assert_eq!(store.jobs().unwrap(), vec![(id(1), b"first".to_vec())]);

        // Writes queued before `Close` are committed, then the task ends although a sender
        // (like a node handle's) is still alive.
        tx.send(Persist::Write(id(1), Some(b"later".to_vec())))
            .await
            .unwrap();
        tx.send(Persist::Write(id(2), Some(b"second".to_vec())))
            .await
            .unwrap();
        tx.send(Persist::Close).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the persister ends on Close")
            .unwrap();
        let mut jobs = store.jobs().unwrap();
        jobs.sort();
        let mut want = vec![(id(1), b"later".to_vec()), (id(2), b"second".to_vec())];
        want.sort();
        assert_eq!(jobs, want);
        assert!(
            tx.send(Persist::Close).await.is_err(),
            "nobody reads after Close"
        );
    }
}
