//! Agora's networking: the only crate that imports libp2p.
//!
//! # Design
//!
//! One task, the [`actor`](crate::spawn), owns the libp2p `Swarm`. The rest of the node holds a
//! cloneable [`NetHandle`] whose methods send commands through a bounded queue and wait for a
//! oneshot answer, and it receives [`NetEvent`]s through a bounded queue of its own. Replies to
//! inbound requests are oneshots too, so the node can answer from any task while the Swarm stays
//! in one place (the pattern of rust-libp2p's `file-sharing` example).
//!
//! The behaviour stacks, per connection: TCP or QUIC, Noise, Yamux (QUIC brings its own
//! encryption and multiplexing), then Identify (agent `agora/<version>`), Ping, Kademlia in server
//! mode on `/agora/kad/1.0.0`, GossipSub with one topic per message kind, optional mDNS, and
//! request-response on `/agora/rr/1.0.0` for direct messages.
//!
//! # Discovery
//!
//! Bootstrap peers are dialed at start and re-dialed with exponential backoff until one answers;
//! Kademlia bootstraps at start and periodically, and every peer it learns of is dialed while the
//! node has fewer than `target_peers` connections. Static peers are kept connected: re-dialed
//! whenever their connection drops. mDNS adds peers on the LAN.
//!
//! # What it defends against
//!
//! - Oversized frames: the request-response codec reads a length prefix and refuses anything over
//!   `max_frame_bytes` before reading the body; gossip is capped by GossipSub's transmit size and
//!   again by the decoder.
//! - Forged or malformed gossip: messages are signed by their author (strict mode), ids are
//!   content hashes, and every message is decoded, checked against its topic and its inner
//!   signature verified before it is accepted and forwarded; rejected messages count against the
//!   sender in GossipSub.
//! - Connection floods: connection limits in total, per peer and for pending handshakes.
//! - A slow node: events to it go through a bounded queue; when it is full, gossip is dropped
//!   (and counted) and requests are answered "busy".
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod actor;
mod behaviour;
mod codec;
mod config;
mod dialer;
mod handle;
mod metrics;
mod peers;

use std::collections::HashMap;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use libp2p::{SwarmBuilder, noise, tcp, yamux};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use behaviour::{IDENTIFY_PROTOCOL, KAD_PROTOCOL};
pub use codec::PROTOCOL as RR_PROTOCOL;
pub use config::Config;
pub use handle::{NetEvent, NetHandle, NetStatus};
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, multiaddr};
pub use metrics::NetMetrics;
pub use peers::{PeerInfo, ip_of};

/// What can go wrong in the network layer.
#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum NetError {
    /// The swarm could not be built or could not listen.
    #[error("network setup failed: {0}")]
    Setup(String),
    /// Listening on an address failed.
    #[error("cannot listen on {0}: {1}; is the port free? choose another with --listen")]
    Listen(String, String),
    /// Dialing failed at once.
    #[error("cannot dial {0}: {1}")]
    Dial(String, String),
    /// A message is larger than its limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Publishing failed.
    #[error("gossip publish failed: {0}")]
    Publish(String),
    /// A direct request failed (timeout, refused frame, unreachable peer...).
    #[error("request to {0} failed: {1}")]
    Request(String, String),
    /// A DHT operation failed.
    #[error("DHT: {0}")]
    Dht(String),
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
}

/// The running network: a handle, the node's event queue, and the task.
pub struct Network {
    /// The handle to give out.
    pub handle: NetHandle,
    /// Events for the node.
    pub events: mpsc::Receiver<NetEvent>,
    /// The task owning the Swarm; it ends after [`NetHandle::shutdown`].
    pub task: JoinHandle<()>,
}

/// Builds the Swarm, starts listening, and spawns the task that owns it. Must be called within a
/// tokio runtime. Metrics (libp2p's and ours) are registered in `registry`.
pub fn spawn(
    keypair: Keypair,
    config: Config,
    registry: &mut Registry,
) -> Result<Network, NetError> {
    let metrics = NetMetrics::register(registry);
    let codec = codec::Codec::new(config.max_frame_bytes, metrics.frames_refused.clone());
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let mut swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_bandwidth_metrics(registry)
        .with_behaviour(|key| {
            behaviour::Behaviour::new(key, &config, codec)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
        .build();
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen(addr.to_string(), e.to_string()))?;
    }
    let local = *swarm.local_peer_id();
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(config.event_queue.max(1));
    let dialer = dialer::Dialer::new(
        &config.bootstrap,
        &config.static_peers,
        config.redial_backoff,
        config.max_redial_backoff,
        Instant::now(),
    );
    let actor = actor::Actor {
        swarm,
        commands: cmd_rx,
        events: ev_tx,
        config,
        metrics,
        libp2p_metrics,
        dialer,
        peers: peers::PeerBook::default(),
        pending_requests: HashMap::new(),
        pending_providers: HashMap::new(),
        replies: FuturesUnordered::new(),
    };
    let task = tokio::spawn(actor.run());
    Ok(Network {
        handle: NetHandle { tx: cmd_tx, local },
        events: ev_rx,
        task,
    })
}
