//! The chain task: starts Malachite and answers its requests on behalf of the application.
//!
//! One task owns the [`Application`], the [`Store`] and the proposal [`Streams`]. Its loop
//! selects over the engine's `AppMsg` queue and the [`ChainHandle`]'s commands; every answer to
//! the engine is sent on the oneshot the request carries. Storage failures are fatal: the task
//! logs them, stops the engine and ends (the handle then reports [`ChainError::Stopped`]).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use bytesize::ByteSize;
use malachitebft_app_channel::app::config::{
    ConsensusConfig, NodeConfig, ValuePayload, ValueSyncConfig,
};
use malachitebft_app_channel::app::types::codec::Codec;
use malachitebft_app_channel::app::types::{Keypair, LocallyProposedValue};
use malachitebft_app_channel::{
    AppMsg, Channels, ConsensusContext, ConsensusRequestError, EngineHandle, NetworkContext,
    NetworkIdentity, NetworkMsg, NetworkRequest, RequestContext, Signer, SyncContext, WalContext,
};
use malachitebft_core_consensus::ProposedValue;
use malachitebft_core_types::{
    CommitCertificate, ExtendedCommitCertificate, HeightParams, LinearTimeouts, Round, Validity,
    VoteExtensions,
};
use malachitebft_engine::host::{Next, SyncedValueOutcome};
use malachitebft_sync::RawDecidedValue;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use crate::codec::{MAX_MESSAGE, WireCodec, decode_certificate, encode_certificate};
use crate::context::{
    Address, Block, BlockHash, ChainContext, ChainSigner, ChainVerifier, Height, MAX_PAYLOAD,
    PartInit, ValidatorSet,
};
use crate::store::{BlockRecord, Store, UndecidedRecord};
use crate::stream::{self, Assembled, Streams};
use crate::{
    Application, ChainConfig, ChainError, ChainHandle, ChainStatus, Command, Committed,
    MAX_CLOCK_DRIFT, StoredBlock,
};

/// Proposals for future heights kept until their height starts.
const MAX_FUTURE: usize = 16;
/// Most blocks answered to one sync request.
const MAX_SYNC_BATCH: u64 = 16;
/// How long shutdown waits for each engine stage.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Round timeouts derived from the block time `bt`: propose `2*bt + 500 ms`, prevote and
/// precommit `bt/2 + 250 ms`, each growing by `bt/2` per round, capped at 30 s.
pub(crate) fn timeouts(bt: Duration) -> LinearTimeouts {
    let propose = bt * 2 + Duration::from_millis(500);
    let vote = bt / 2 + Duration::from_millis(250);
    LinearTimeouts {
        propose,
        propose_delta: bt / 2,
        prevote: vote,
        prevote_delta: bt / 2,
        precommit: vote,
        precommit_delta: bt / 2,
        rebroadcast: propose + vote * 2,
        max_timeout: Duration::from_secs(30),
    }
}

/// Malachite's node configuration.
struct EngineConfig {
    moniker: String,
    consensus: ConsensusConfig,
    value_sync: ValueSyncConfig,
}

impl NodeConfig for EngineConfig {
    fn moniker(&self) -> &str {
        &self.moniker
    }
    fn consensus(&self) -> &ConsensusConfig {
        &self.consensus
    }
    fn consensus_mut(&mut self) -> &mut ConsensusConfig {
        &mut self.consensus
    }
    fn value_sync(&self) -> &ValueSyncConfig {
        &self.value_sync
    }
    fn value_sync_mut(&mut self) -> &mut ValueSyncConfig {
        &mut self.value_sync
    }
}

fn tcp_multiaddr(addr: std::net::SocketAddr) -> String {
    match addr {
        std::net::SocketAddr::V4(a) => format!("/ip4/{}/tcp/{}", a.ip(), a.port()),
        std::net::SocketAddr::V6(a) => format!("/ip6/{}/tcp/{}", a.ip(), a.port()),
    }
}

fn engine_config(config: &ChainConfig, moniker: String) -> Result<EngineConfig, ChainError> {
    let bad = |e: &dyn std::fmt::Display| ChainError::Config(format!("address: {e}"));
    let mut consensus = ConsensusConfig {
        value_payload: ValuePayload::ProposalAndParts,
        ..ConsensusConfig::default()
    };
    consensus.p2p.listen_addr = tcp_multiaddr(config.listen).parse().map_err(|e| bad(&e))?;
    consensus.p2p.persistent_peers = config
        .peers
        .iter()
        .map(|p| tcp_multiaddr(*p).parse())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    consensus.p2p.discovery.enabled = false;
    consensus.p2p.pubsub_max_size = ByteSize::mib(1);
    consensus.p2p.rpc_max_size = ByteSize::b(MAX_MESSAGE as u64);
    let value_sync = ValueSyncConfig {
        enabled: true,
        status_update_interval: (config.block_time * 2)
            .clamp(Duration::from_millis(500), Duration::from_secs(5)),
        request_timeout: Duration::from_secs(5),
        max_response_size: ByteSize::mib(16),
        batch_size: 4,
        ..ValueSyncConfig::default()
    };
    Ok(EngineConfig {
        moniker,
        consensus,
        value_sync,
    })
}

fn check(config: &ChainConfig) -> Result<(), ChainError> {
    if config.chain_id.is_empty() {
        return Err(ChainError::Config("chain_id is empty".into()));
    }
    if config.listen.port() == 0 {
        return Err(ChainError::Config(
            "listen port is 0: peers must be able to dial it, pick a concrete port".into(),
        ));
    }
    if config.block_time < Duration::from_millis(10) {
        return Err(ChainError::Config(
            "block_time must be at least 10 ms".into(),
        ));
    }
    Ok(())
}

/// Replay every stored block into the application; returns (last height, last block time).
fn replay<A: Application>(store: &Store, app: &mut A) -> Result<(u64, u64), ChainError> {
    let Some((low, high)) = store.height_range()? else {
        return Ok((0, 0));
    };
    if low != 1 {
        return Err(ChainError::Corrupt(format!(
            "first stored block is {low}, not 1"
        )));
    }
    let mut last_ms = 0;
    for height in 1..=high {
        let record = store
            .block(height)?
            .ok_or_else(|| ChainError::Corrupt(format!("block {height} is missing")))?;
        let root = app.commit(height, &record.payload, record.time_ms);
        if root != record.state_root {
            warn!(
                height,
                "replayed state root differs from the stored one: is the application deterministic?"
            );
        }
        last_ms = record.time_ms;
    }
    info!(height = high, "replayed stored blocks");
    Ok((high, last_ms))
}

pub(crate) async fn start<A: Application>(
    config: ChainConfig,
    mut app: A,
) -> Result<ChainHandle, ChainError> {
    check(&config)?;
    std::fs::create_dir_all(&config.wal_dir)?;
    let store = Store::open(&config.db_path)?;
    let (last_height, last_block_ms) = replay(&store, &mut app)?;

    let signer = ChainSigner::new(config.secret_key, &config.chain_id);
    let address = Address(*signer.public_key().as_bytes());
    let moniker = format!("chain-{}", &address.to_string()[..8]);
    let keypair = Keypair::ed25519_from_bytes(config.secret_key)
        .map_err(|e| ChainError::Config(format!("secret key: {e}")))?;
    let peer_id = keypair.public().to_peer_id().to_bytes();
    let engine_err = |e: &dyn std::fmt::Display| ChainError::Engine(e.to_string());
    let proof = signer
        .sign_validator_proof(address.0.to_vec(), peer_id)
        .await
        .map_err(|e| engine_err(&e))?;
    let proof = WireCodec.encode(&proof).map_err(|e| engine_err(&e))?;
    let identity =
        NetworkIdentity::new_validator(moniker.clone(), keypair, address.to_string(), proof);

    let (channels, engine) = malachitebft_app_channel::start_engine(
        ChainContext,
        engine_config(&config, moniker)?,
        WalContext::new(config.wal_dir.join("consensus.wal"), WireCodec),
        NetworkContext::new(identity, WireCodec),
        ConsensusContext::new_validator(
            address,
            Box::new(ChainVerifier::new(&config.chain_id)),
            Box::new(signer),
        ),
        SyncContext::new(WireCodec),
        RequestContext::new(64),
    )
    .await
    .map_err(|e| ChainError::Engine(format!("{e:#}")))?;
    info!(%address, listen = %config.listen, height = last_height, "chain engine started");

    let (committed, _) = broadcast::channel(1024);
    let (status_tx, status) = watch::channel(ChainStatus::default());
    let (commands_tx, commands) = mpsc::channel(64);
    let chain = Chain {
        app,
        store,
        address,
        block_time: config.block_time,
        timeouts: timeouts(config.block_time),
        streams: Streams::default(),
        future: Vec::new(),
        height: 0,
        last_height,
        last_block_ms,
        committed: committed.clone(),
        status: Arc::new(status_tx),
    };
    chain.publish_status()?;
    let peers = spawn_peer_counter(channels.net_requests.clone(), chain.status.clone());
    tokio::spawn(chain.run(channels, engine, commands, peers));
    Ok(ChainHandle {
        commands: commands_tx,
        committed,
        status,
    })
}

/// Refresh the connected-peer count in the status once a second.
fn spawn_peer_counter(
    requests: mpsc::Sender<NetworkRequest>,
    status: Arc<watch::Sender<ChainStatus>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match NetworkRequest::dump_state(&requests).await {
                Ok(Some(dump)) => status.send_modify(|s| s.peers = dump.peers.len()),
                Ok(None) | Err(ConsensusRequestError::Full) => {}
                Err(_) => return,
            }
        }
    })
}

fn proposed_value(height: u64, r: &UndecidedRecord) -> ProposedValue<ChainContext> {
    ProposedValue {
        height: Height(height),
        round: r.round,
        valid_round: r.valid_round,
        proposer: r.proposer,
        value: r.block.hash(),
        validity: Validity::from_bool(r.valid),
    }
}

fn part_init(height: u64, r: &UndecidedRecord) -> PartInit {
    PartInit {
        height: Height(height),
        round: r.round,
        pol_round: r.valid_round,
        proposer: r.proposer,
        time_ms: r.block.time_ms,
        payload_len: r.block.payload.len() as u32,
    }
}

struct Chain<A> {
    app: A,
    store: Store,
    address: Address,
    block_time: Duration,
    timeouts: LinearTimeouts,
    streams: Streams,
    /// Complete proposals for heights consensus has not started yet.
    future: Vec<Assembled>,
    /// The height consensus is working on (0 until the first `StartedRound`).
    height: u64,
    last_height: u64,
    last_block_ms: u64,
    committed: broadcast::Sender<Committed>,
    status: Arc<watch::Sender<ChainStatus>>,
}

type Network = mpsc::Sender<NetworkMsg<ChainContext>>;

impl<A: Application> Chain<A> {
    async fn run(
        mut self,
        mut channels: Channels<ChainContext>,
        engine: EngineHandle,
        mut commands: mpsc::Receiver<Command>,
        peers: JoinHandle<()>,
    ) {
        let reply = loop {
            tokio::select! {
                msg = channels.consensus.recv() => match msg {
                    Some(msg) => {
                        if let Err(e) = self.handle(msg, &channels.network).await {
                            error!(error = %e, "chain stopped on error");
                            break None;
                        }
                    }
                    None => {
                        error!("consensus engine stopped");
                        break None;
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(Command::Block(height, reply)) => {
                        let _ = reply.send(self.stored_block(height));
                    }
                    Some(Command::Shutdown(reply)) => break Some(reply),
                    None => break None,
                },
            }
        };
        peers.abort();
        stop_engine(engine).await;
        drop(channels);
        drop(self);
        info!("chain stopped");
        if let Some(reply) = reply {
            let _ = reply.send(());
        }
        // Answer whatever is still queued, then refuse further commands by dropping the queue.
        commands.close();
        while let Some(cmd) = commands.recv().await {
            match cmd {
                Command::Block(_, reply) => {
                    let _ = reply.send(Err(ChainError::Stopped));
                }
                Command::Shutdown(reply) => {
                    let _ = reply.send(());
                }
            }
        }
    }

    async fn handle(
        &mut self,
        msg: AppMsg<ChainContext>,
        network: &Network,
    ) -> Result<(), ChainError> {
        match msg {
            AppMsg::ConsensusReady { reply } => {
                let next = self.last_height + 1;
                info!(height = next, "consensus ready");
                let _ = reply.send((Height(next), self.params(next)?));
            }
            AppMsg::StartedRound {
                height,
                round,
                proposer,
                role,
                reply_value,
            } => {
                debug!(%height, %round, %proposer, ?role, "started round");
                self.height = height.0;
                self.admit_future()?;
                let values = self
                    .store
                    .undecided_at(height.0, round.as_u32().unwrap_or(0))?
                    .iter()
                    .map(|r| proposed_value(height.0, r))
                    .collect();
                let _ = reply_value.send(values);
            }
            AppMsg::GetValue {
                height,
                round,
                reply,
                ..
            } => {
                let record = self.build_proposal(height.0, round)?;
                let value = record.block.hash();
                debug!(%height, %round, %value, "proposing");
                let _ = reply.send(LocallyProposedValue::new(height, round, value));
                publish(network, part_init(height.0, &record), &record.block).await?;
            }
            AppMsg::ExtendVote { reply, .. } => {
                let _ = reply.send(None);
            }
            AppMsg::VerifyVoteExtensions {
                extensions, reply, ..
            } => {
                let _ = reply.send(extensions.into_iter().map(|(a, _)| (a, Ok(()))).collect());
            }
            AppMsg::RestreamProposal {
                height, value_id, ..
            } => {
                if let Some(record) = self.store.undecided_by_hash(height.0, &value_id)? {
                    publish(network, part_init(height.0, &record), &record.block).await?;
                }
            }
            AppMsg::GetHistoryMinHeight { reply } => {
                let low = self.store.height_range()?.map_or(0, |(low, _)| low);
                let _ = reply.send(Height(low));
            }
            AppMsg::ReceivedProposalPart {
                from,
                published_by,
                part,
                reply,
            } => {
                let value = match self.streams.insert(published_by.unwrap_or(from), part) {
                    Some(assembled) => self.received_proposal(assembled)?,
                    None => None,
                };
                let _ = reply.send(value);
            }
            AppMsg::Decided {
                certificate,
                extensions,
                reply,
            } => {
                self.decided(certificate, extensions)?;
                let _ = reply.send(());
            }
            AppMsg::Finalized {
                certificate, reply, ..
            } => {
                let height = certificate.height.0;
                let next = if self.last_height >= height {
                    let next = self.last_height + 1;
                    Next::Start(Height(next), self.params(next)?)
                } else {
                    warn!(height, "height finalized but not committed: restarting it");
                    Next::Restart(Height(height), self.params(height)?)
                };
                let _ = reply.send(next);
            }
            AppMsg::GetDecidedValues { range, reply } => {
                let _ = reply.send(self.decided_values(range.start().0, range.end().0)?);
            }
            AppMsg::ProcessSyncedValue {
                height,
                round,
                proposer,
                value_bytes,
                reply,
            } => {
                let outcome = match Block::decode(&value_bytes) {
                    Some(block) if block.height == height.0 => {
                        let record = UndecidedRecord {
                            round,
                            valid_round: Round::Nil,
                            proposer,
                            valid: true,
                            block,
                        };
                        match self.store.put_undecided(height.0, &record) {
                            Ok(()) => {
                                SyncedValueOutcome::Verdict(proposed_value(height.0, &record))
                            }
                            Err(e) => {
                                warn!(error = %e, "cannot store synced value");
                                SyncedValueOutcome::LocalTransientError
                            }
                        }
                    }
                    _ => {
                        warn!(%height, "undecodable synced value");
                        SyncedValueOutcome::PeerFault
                    }
                };
                let _ = reply.send(outcome);
            }
        }
        Ok(())
    }

    fn validator_set(&self, height: u64) -> Result<ValidatorSet, ChainError> {
        ValidatorSet::new(&self.app.validators(height)).ok_or(ChainError::NoValidators(height))
    }

    fn params(&self, height: u64) -> Result<HeightParams<ChainContext>, ChainError> {
        Ok(HeightParams::new(
            self.validator_set(height)?,
            self.timeouts,
            Some(self.block_time),
        ))
    }

    fn publish_status(&self) -> Result<(), ChainError> {
        let validators = self.validator_set(self.last_height + 1)?.to_public();
        self.status.send_modify(|s| {
            s.height = self.last_height;
            s.last_block_ms = self.last_block_ms;
            s.validators = validators;
        });
        Ok(())
    }

    /// Our proposal for (height, round): the one built before (e.g. before a crash), or a new one.
    fn build_proposal(&mut self, height: u64, round: Round) -> Result<UndecidedRecord, ChainError> {
        let round_no = round.as_u32().unwrap_or(0);
        if let Some(r) = self
            .store
            .undecided_at(height, round_no)?
            .into_iter()
            .find(|r| r.proposer == self.address)
        {
            return Ok(r);
        }
        let mut payload = self.app.propose(height);
        if payload.len() > MAX_PAYLOAD {
            error!(
                height,
                len = payload.len(),
                "application proposed an oversized payload; proposing an empty block"
            );
            payload = Vec::new();
        }
        let record = UndecidedRecord {
            round,
            valid_round: Round::Nil,
            proposer: self.address,
            valid: true,
            block: Block {
                height,
                time_ms: now_ms().max(self.last_block_ms + 1),
                payload,
            },
        };
        self.store.put_undecided(height, &record)?;
        Ok(record)
    }

    /// A complete proposal arrived: validate it now if it is for the current height.
    fn received_proposal(
        &mut self,
        assembled: Assembled,
    ) -> Result<Option<ProposedValue<ChainContext>>, ChainError> {
        let height = assembled.init.height.0;
        if height <= self.last_height || height < self.height {
            return Ok(None);
        }
        if height > self.height {
            if height <= self.height + 2 {
                if self.future.len() >= MAX_FUTURE {
                    self.future.remove(0);
                }
                self.future.push(assembled);
            }
            return Ok(None);
        }
        self.admit(assembled).map(Some)
    }

    fn admit_future(&mut self) -> Result<(), ChainError> {
        let height = self.height;
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future)
            .into_iter()
            .filter(|a| a.init.height.0 >= height)
            .partition(|a| a.init.height.0 == height);
        self.future = later;
        for assembled in now {
            self.admit(assembled)?;
        }
        Ok(())
    }

    fn admit(&mut self, a: Assembled) -> Result<ProposedValue<ChainContext>, ChainError> {
        let valid = self.validate(&a.block);
        if !valid {
            warn!(height = a.block.height, proposer = %a.init.proposer, "invalid proposal");
        }
        let record = UndecidedRecord {
            round: a.init.round,
            valid_round: a.init.pol_round,
            proposer: a.init.proposer,
            valid,
            block: a.block,
        };
        self.store.put_undecided(record.block.height, &record)?;
        Ok(proposed_value(record.block.height, &record))
    }

    fn validate(&mut self, block: &Block) -> bool {
        let max_time = now_ms().saturating_add(MAX_CLOCK_DRIFT.as_millis() as u64);
        block.height == self.last_height + 1
            && (self.last_height == 0 || block.time_ms > self.last_block_ms)
            && block.time_ms <= max_time
            && self.app.validate(block.height, &block.payload)
    }

    /// Apply and durably store a decided block, then announce it.
    fn decided(
        &mut self,
        certificate: CommitCertificate<ChainContext>,
        extensions: VoteExtensions<ChainContext>,
    ) -> Result<(), ChainError> {
        let height = certificate.height.0;
        if height <= self.last_height {
            debug!(height, "already committed");
            return Ok(());
        }
        if height != self.last_height + 1 {
            error!(
                height,
                last = self.last_height,
                "decision skips heights; not applied"
            );
            return Ok(());
        }
        let Some(record) = self
            .store
            .undecided_by_hash(height, &certificate.value_id)?
        else {
            error!(height, value = %certificate.value_id, "decided value is unknown here; not applied");
            return Ok(());
        };
        let block = record.block;
        let state_root = self.app.commit(height, &block.payload, block.time_ms);
        let certificate = ExtendedCommitCertificate::from_commit_certificate_and_extensions(
            certificate,
            extensions,
        );
        let record = BlockRecord {
            time_ms: block.time_ms,
            payload: block.payload,
            certificate: encode_certificate(&certificate),
            state_root,
        };
        self.store.put_decided(height, &record)?;
        self.last_height = height;
        self.last_block_ms = block.time_ms;
        info!(height, root = %BlockHash(state_root), "committed");
        let _ = self.committed.send(Committed {
            height,
            payload: Arc::new(record.payload),
            state_root,
            decided_at_ms: block.time_ms,
        });
        self.publish_status()
    }

    fn decided_values(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<RawDecidedValue<ChainContext>>, ChainError> {
        let end = end.min(start.saturating_add(MAX_SYNC_BATCH - 1));
        let mut values = Vec::new();
        for height in start..=end {
            let Some(record) = self.store.block(height)? else {
                break;
            };
            let Ok(certificate) = decode_certificate(&record.certificate) else {
                error!(height, "stored certificate is unreadable");
                break;
            };
            let block = Block {
                height,
                time_ms: record.time_ms,
                payload: record.payload,
            };
            values.push(RawDecidedValue::new(
                Bytes::from(block.encode()),
                certificate,
            ));
        }
        Ok(values)
    }

    fn stored_block(&self, height: u64) -> Result<Option<StoredBlock>, ChainError> {
        Ok(self.store.block(height)?.map(|r| StoredBlock {
            height,
            payload: r.payload,
            certificate: r.certificate,
            state_root: r.state_root,
            decided_at_ms: r.time_ms,
        }))
    }
}

async fn publish(network: &Network, init: PartInit, block: &Block) -> Result<(), ChainError> {
    for msg in stream::split(init, block) {
        network
            .send(NetworkMsg::PublishProposalPart(msg))
            .await
            .map_err(|_| ChainError::Engine("network channel closed".into()))?;
    }
    Ok(())
}

/// Stop the engine's actors (network, WAL, consensus, sync) and wait for them.
async fn stop_engine(engine: EngineHandle) {
    let reason = Some("chain shutdown".to_string());
    engine
        .actor
        .stop_children_and_wait(reason.clone(), Some(STOP_TIMEOUT))
        .await;
    if let Err(e) = engine.actor.stop_and_wait(reason, Some(STOP_TIMEOUT)).await {
        debug!(error = %e, "engine node actor stop");
    }
    if tokio::time::timeout(STOP_TIMEOUT, engine.handle)
        .await
        .is_err()
    {
        warn!("engine did not stop in time");
    }
}
