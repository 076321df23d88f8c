//! The cloneable front end to the network task.
//!
//! Two bounded queues lead to the task: a small one for control commands (status, peers,
//! authorization, shutdown) and a larger one for data (publish, request, dial, DHT). The task
//! drains the control queue before each turn of its loop, so an operator's `status` or
//! `shutdown` and the node's `set_authorized` are not stuck behind a burst of publishes.

use std::collections::HashSet;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use agora_types::wire::{GossipMessage, Request, Response};

use crate::NetError;
use crate::peers::PeerInfo;

/// What the node hears from the network.
#[derive(Debug)]
#[non_exhaustive]
// Gossip dominates the queue anyway; boxing it would change the node's API for nothing.
#[allow(clippy::large_enum_variant)]
pub enum NetEvent {
    /// A gossip message that passed validation (decodes, right topic, valid signature).
    Gossip {
        /// The peer that forwarded it to us. (GossipSub messages carry no author: the author
        /// is the signer of the message's own envelope.)
        via: PeerId,
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
    /// A peer was blocked for repeated offences (see the `guard` module) and disconnected; its
    /// connections are refused for `duration`.
    PeerBlocked {
        /// The peer.
        peer: PeerId,
        /// How long.
        duration: Duration,
    },
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

/// Capacity of the control queue.
pub(crate) const CONTROL_QUEUE: usize = 64;

/// Data commands: the bulk of the traffic.
pub(crate) enum Command {
    Publish(GossipMessage, oneshot::Sender<Result<(), NetError>>),
    Request(PeerId, Request, oneshot::Sender<Result<Response, NetError>>),
    Dial(Multiaddr, oneshot::Sender<Result<(), NetError>>),
    Provide(Vec<u8>, oneshot::Sender<Result<(), NetError>>),
    FindProviders(Vec<u8>, oneshot::Sender<Result<Vec<PeerId>, NetError>>),
}

/// Control commands: served ahead of data.
pub(crate) enum Control {
    Status(oneshot::Sender<NetStatus>),
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    RoutingTable(oneshot::Sender<Vec<PeerId>>),
    SetAuthorized(HashSet<PeerId>, oneshot::Sender<()>),
    IsAuthorized(PeerId, oneshot::Sender<bool>),
    Blocked(oneshot::Sender<Vec<PeerId>>),
    Shutdown(oneshot::Sender<()>),
}

/// A cloneable handle to the task that owns the Swarm. Every method is a message to that task
/// through a bounded queue, answered on a oneshot.
#[derive(Clone)]
pub struct NetHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) control: mpsc::Sender<Control>,
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

    async fn control<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
    ) -> Result<T, NetError> {
        let (tx, rx) = oneshot::channel();
        self.control
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

    /// Sends a direct request and waits for the response (or the request timeout). It travels on
    /// its purpose's protocol, chosen by its variant (market, result or blob: see the `codec`
    /// module); one over that protocol's frame cap is refused with [`NetError::TooLarge`] before
    /// it is sent.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetError> {
        self.call(|tx| Command::Request(peer, request, tx)).await?
    }

    /// Dials an address.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.call(|tx| Command::Dial(addr, tx)).await?
    }

    /// Our status.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        self.control(Control::Status).await
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, NetError> {
        self.control(Control::Peers).await
    }

    /// Peers in the Kademlia routing table.
    pub async fn routing_table(&self) -> Result<Vec<PeerId>, NetError> {
        self.control(Control::RoutingTable).await
    }

    /// Announces in the DHT that we provide `key` (a capability or a blob).
    pub async fn provide(&self, key: Vec<u8>) -> Result<(), NetError> {
        self.call(|tx| Command::Provide(key, tx)).await?
    }

    /// Finds providers of `key` in the DHT.
    pub async fn find_providers(&self, key: Vec<u8>) -> Result<Vec<PeerId>, NetError> {
        self.call(|tx| Command::FindProviders(key, tx)).await?
    }

    /// Replaces the authorized set (in [`Authorization::Permissioned`](crate::Authorization)
    /// mode, who besides the allow list may connect). Connected peers outside the new set are
    /// disconnected at once and whatever they still send is dropped. Returns once applied.
    pub async fn set_authorized(&self, set: HashSet<PeerId>) -> Result<(), NetError> {
        self.control(|tx| Control::SetAuthorized(set, tx)).await
    }

    /// Whether `peer` may connect: always in open mode; in permissioned mode, when it is in the
    /// authorized set or the allow list. Says nothing about blocks: see [`NetHandle::blocked`].
    pub async fn is_authorized(&self, peer: PeerId) -> Result<bool, NetError> {
        self.control(|tx| Control::IsAuthorized(peer, tx)).await
    }

    /// Peers blocked now for their offences.
    pub async fn blocked(&self) -> Result<Vec<PeerId>, NetError> {
        self.control(Control::Blocked).await
    }

    /// Closes every connection and stops the network task.
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.control(Control::Shutdown).await
    }
}
