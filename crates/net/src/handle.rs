//! The cloneable front end to the network task.

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use agora_types::wire::{GossipMessage, Request, Response};

use crate::NetError;
use crate::peers::PeerInfo;

/// What the node hears from the network.
#[derive(Debug)]
#[non_exhaustive]
pub enum NetEvent {
    /// A gossip message that passed validation (decodes, right topic, valid signature).
    Gossip {
        /// The peer that forwarded it to us.
        via: PeerId,
        /// The peer that published it, when known.
        source: Option<PeerId>,
        /// The message.
        message: GossipMessage,
    },
    /// A direct request. Answer it through `reply`; dropping `reply` closes the stream unanswered.
    Request {
        /// Who asked.
        peer: PeerId,
        /// What they asked.
        request: Request,
        /// Where the answer goes.
        reply: oneshot::Sender<Response>,
    },
    /// The first connection to a peer opened.
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
}

/// A snapshot of the network's state.
#[derive(Clone, Debug, Serialize)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: PeerId,
    /// Addresses we listen on.
    pub listen_addresses: Vec<Multiaddr>,
    /// Peers with at least one open connection.
    pub connected_peers: usize,
    /// Peers in the Kademlia routing table.
    pub routing_table_size: usize,
}

pub(crate) enum Command {
    Publish(GossipMessage, oneshot::Sender<Result<(), NetError>>),
    Request(PeerId, Request, oneshot::Sender<Result<Response, NetError>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Status(oneshot::Sender<NetStatus>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    RoutingTable(oneshot::Sender<Vec<PeerId>>),
    Provide(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    FindProviders(Vec<u8>, oneshot::Sender<Result<Vec<PeerId>, NetError>>),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to the task that owns the Swarm. Every method is a message to that task
/// through a bounded queue, answered on a oneshot.
#[derive(Clone)]
pub struct NetHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) local: PeerId,
}

impl NetHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NetError::Stopped)?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Our peer id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Publishes a gossip message on its topic.
    pub async fn publish(&self, message: GossipMessage) -> Result<(), NetError> {
        self.call(|tx| Command::Publish(message, tx)).await?
    }

    /// Sends a direct request and waits for the response (or the request timeout).
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetError> {
        self.call(|tx| Command::Request(peer, request, tx)).await?
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|tx| Command::Dial(addr, tx)).await?
    }

    /// Our status.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.call(Command::Status).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.call(Command::Peers).await
    }

    /// Peers in the Kademlia routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, NetError> {
        self.call(Command::RoutingTable).await
    }

    /// Announces in the DHT that we provide `key` (a capability or a blob).
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.call(|tx| Command::Provide(key, tx)).await?
    }

    /// Finds providers of `key` in the DHT.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        self.call(|tx| Command::FindProviders(key, tx)).await?
    }

    /// Closes every connection and stops the network task.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.call(Command::Shutdown).await
    }
}
