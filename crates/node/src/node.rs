//! Starting, running and stopping a node.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agora_net::{Keypair, Multiaddr, NetEvent, NetHandle, PeerId, PeerInfo};
use agora_types::job::Health;
use agora_types::sign::Signed;
use agora_types::wire::{GossipMessage, Request, Response};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::config::NodeConfig;
use crate::identity::{self, IdentityError};
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The identity key could not be loaded or created.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The store could not be opened.
    #[error("cannot open storage: {0}; is another node using the same --data-dir?")]
    Store(#[from] StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] agora_net::NetError),
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
}

pub(crate) struct Shared {
    pub config: NodeConfig,
    pub keypair: Keypair,
    pub started: Instant,
    pub registry: Mutex<Registry>,
    pub store: Store,
}

/// A cloneable handle to a running node, for the API and tests.
#[derive(Clone)]
pub struct NodeHandle {
    pub(crate) net: NetHandle,
    pub(crate) shared: Arc<Shared>,
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
}

/// A running node.
pub struct Node {
    handle: NodeHandle,
    net_task: JoinHandle<()>,
    core_task: JoinHandle<()>,
    stop: mpsc::Sender<()>,
}

impl Node {
    /// Starts a node: identity, storage, network, core task.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let (keypair, created) = identity::load_or_create(&config.data_dir)?;
        let peer_id = keypair.public().to_peer_id();
        if created {
            info!(%peer_id, dir = %config.data_dir.display(), "created a new identity");
        }
        let store = Store::open(&config.data_dir)?;
        let mut registry = Registry::default();
        let network = agora_net::spawn(keypair.clone(), config.net.clone(), &mut registry)?;
        info!(%peer_id, preset = ?config.preset, "node started");
        let shared = Arc::new(Shared {
            config,
            keypair,
            started: Instant::now(),
            registry: Mutex::new(registry),
            store,
        });
        let handle = NodeHandle {
            net: network.handle.clone(),
            shared,
        };
        let (stop_tx, stop_rx) = mpsc::channel(1);
        let core = Core {
            handle: handle.clone(),
            events: network.events,
            stop: stop_rx,
        };
        let core_task = tokio::spawn(core.run());
        Ok(Node {
            handle,
            net_task: network.task,
            core_task,
            stop: stop_tx,
        })
    }

    /// A handle to the node.
    pub fn handle(&self) -> NodeHandle {
        self.handle.clone()
    }

    /// Stops the node: the core task first, then the network (closing every connection). Storage
    /// is flushed by every commit already; dropping the last handle closes the database.
    pub async fn shutdown(self) {
        let _ = self.stop.send(()).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.core_task).await;
        let _ = self.handle.net.shutdown().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), self.net_task).await;
        info!("node stopped");
    }
}

/// The node's core task: the one owner of the node's protocol state.
struct Core {
    handle: NodeHandle,
    events: mpsc::Receiver<NetEvent>,
    stop: mpsc::Receiver<()>,
}

impl Core {
    async fn run(mut self) {
        let mut beacon = tokio::time::interval(self.handle.shared.config.ad_interval);
        beacon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.stop.recv() => return,
                event = self.events.recv() => match event {
                    Some(e) => self.on_net_event(e),
                    None => return,
                },
                _ = beacon.tick() => self.beacon(),
            }
        }
    }

    fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Request {
                peer,
                request,
                reply,
            } => {
                let response = match request {
                    Request::Echo(b) => Response::Echo(b),
                    other => {
                        debug!(%peer, ?other, "request not handled yet");
                        Response::Refused("not supported by this node".into())
                    }
                };
                let _ = reply.send(response);
            }
            NetEvent::Gossip { .. }
            | NetEvent::PeerConnected(_)
            | NetEvent::PeerDisconnected(_) => {}
            _ => {}
        }
    }

    fn beacon(&mut self) {
        let handle = self.handle.clone();
        tokio::spawn(async move {
            let Ok(status) = handle.net.status().await else {
                return;
            };
            let health = Health {
                uptime_s: handle.shared.started.elapsed().as_secs(),
                connected_peers: status.connected_peers as u32,
                running_jobs: 0,
            };
            match Signed::sign(&handle.shared.keypair, health, agora_types::now_ms()) {
                Ok(s) => {
                    if let Err(e) = handle.net.publish(GossipMessage::Health(s)).await {
                        debug!(error = %e, "health beacon not published");
                    }
                }
                Err(e) => warn!(error = %e, "cannot sign health beacon"),
            }
        });
    }
}
