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
//! request-response for direct messages on one protocol per purpose, each with its own frame
//! cap and per-peer quota: `/agora/market/1.0.0` (echo, bids, leases, cancels, heartbeats),
//! `/agora/result/1.0.0` (results) and `/agora/blob/1.0.0` (blob chunks). [`NetHandle::request`]
//! picks the protocol from the request's variant.
//!
//! # Discovery
//!
//! Bootstrap peers are dialed at start and re-dialed with exponential backoff until one answers,
//! and again whenever the node finds itself isolated. A connection manager (module `connmgr`,
//! enforced by the gate) holds the node near [`Config::target_peers`] (`T`) with a little slack
//! (`S`): peers learned from Kademlia, Identify and mDNS are candidates, dialed only while the
//! node has fewer than `T` peers; Kademlia walks run only then; inbound connections beyond
//! `T + S + E` ([`Config::inbound_excess`]) are refused before Noise; above `T + S` the excess is
//! pruned, inbound peers outside the GossipSub mesh first; a connection opened for one request
//! at target closes once idle. GossipSub's mesh degree is sized to `T`. Static peers are kept
//! connected (re-dialed whenever their connection drops) and, like the allow list, never pruned.
//!
//! # What it defends against
//!
//! Every peer is hostile input. The defences, outermost first, each configurable in [`Config`],
//! counted in metrics and logged (with the reason) when they act:
//!
//! - **Who connects** (module `gate`): in permissioned mode only authorized peers
//!   ([`NetHandle::set_authorized`], fed by the ledger's stake set, plus [`Config::allow_list`])
//!   complete a connection; peers that leave the set are disconnected at once. Everywhere: a
//!   global rate of inbound handshakes, at most [`Config::max_connections_per_ip`] connections
//!   per IP, connection limits in total, per peer and for pending handshakes, inbound
//!   connections beyond the connection manager's band (`T + S + E`) refused before Noise, and no
//!   connection at all with a blocked peer.
//! - **How much they send** (module `guard`): per-peer token buckets on each direct-message
//!   protocol (market, results, blobs: a blob stream cannot drain the bids' bucket) and on
//!   gossip; the excess is dropped before the node sees it.
//! - **Repeat offenders** (module `guard`): quota excess, invalid gossip, oversized and
//!   malformed frames accrue points; at a threshold the peer is disconnected and blocked, 30 s
//!   at first, doubling with each block up to an hour.
//! - **Oversized frames**: the request-response codec reads a length prefix and refuses anything
//!   over its protocol's cap before reading the body ([`MAX_MARKET_FRAME_BYTES`] for bids and
//!   leases, [`MAX_RESULT_FRAME_BYTES`] for results, [`MAX_BLOB_FRAME_BYTES`] for blob chunks,
//!   all under [`Config::max_frame_bytes`]), and a request on another purpose's protocol; gossip
//!   is capped by GossipSub's transmit size ([`Config::max_gossip_bytes`] plus envelope) and
//!   again by the validator.
//! - **Forged, stale or replayed gossip** (modules `validate`, `vpool`): GossipSub runs
//!   anonymous (every Agora message carries its author's Ed25519 envelope; a blocked or
//!   unauthorized author is ignored whoever forwards it), ids are content hashes, and every message is decoded,
//!   checked against its topic, its inner signature verified, its timestamp held to
//!   [`Config::synchrony_bound`], and its signed digest to a replay cache, before it is accepted
//!   and forwarded. GossipSub peer scoring turns rejected messages into a falling score for the
//!   peer that forwarded them (no gossip, then no publishing, then graylisting).
//! - **Eclipse via the DHT**: Kademlia runs disjoint query paths, and in production admits at
//!   most [`Config::max_peers_per_subnet_per_bucket`] peers of one /24 into each bucket.
//! - **A slow node**: events to it go through a bounded queue; when it is full, gossip is
//!   dropped (and counted) and requests are answered "busy". Commands from the node go through
//!   two bounded queues, control (status, shutdown, authorization) served ahead of data.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod actor;
mod behaviour;
mod codec;
mod config;
mod connmgr;
mod dialer;
mod gate;
mod guard;
mod handle;
mod metrics;
mod peers;
mod ports;
mod rate;
mod validate;
mod vpool;

use std::collections::HashMap;
use std::time::Instant;

use futures::stream::FuturesUnordered;
use libp2p::{SwarmBuilder, noise, tcp, yamux};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use behaviour::{IDENTIFY_PROTOCOL, KAD_PROTOCOL};
pub use codec::{
    BLOB_PROTOCOL, MARKET_PROTOCOL, MAX_BLOB_FRAME_BYTES, MAX_BLOB_REQUEST_BYTES,
    MAX_MARKET_FRAME_BYTES, MAX_RESULT_FRAME_BYTES, RESULT_PROTOCOL,
};
pub use config::{Authorization, Config, ConfigError, Rate};
pub use handle::{NetEvent, NetHandle, NetStatus};
pub use libp2p::identity::Keypair;
pub use libp2p::{Multiaddr, PeerId, multiaddr};
pub use metrics::NetMetrics;
pub use peers::{PeerInfo, ip_of};
pub use ports::{
    PortKind, check_port_free, fd_headroom, fd_limit, fit_to_fd_limit, free_loopback_port,
    raise_fd_limit,
};

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
    /// Another process (another node?) already listens on the port.
    #[error(
        "cannot listen on {0}: the port is already in use by another process (another agora \
         node?); stop it, or choose another port with --listen"
    )]
    PortInUse(String),
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
    /// The configuration cannot work (see [`Config::validate`]).
    #[error("network configuration: {0}")]
    Config(#[from] ConfigError),
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
    let mut config = config;
    config.validate()?;
    // Peer connections must leave file descriptors for the API, the database and blobs.
    if let Some(fds) = ports::fd_limit() {
        let asked = (config.max_connections, config.max_pending_incoming);
        if ports::fit_to_fd_limit(&mut config, fds) {
            tracing::warn!(
                fd_limit = fds,
                max_connections = config.max_connections,
                max_pending_incoming = config.max_pending_incoming,
                asked = ?asked,
                "connection limits lowered to fit the open-file limit (raise it with `ulimit -n`)"
            );
            if config.fit_band() {
                tracing::warn!(
                    target_peers = config.target_peers,
                    peer_slack = config.slack(),
                    inbound_excess = config.excess(),
                    "target degree lowered to fit the lowered connection limit"
                );
            }
        }
    }
    // libp2p listens with SO_REUSEPORT: a port taken by another process would be shared with
    // it, silently. Refuse instead (see `ports`).
    for addr in &config.listen {
        if let Some(sock) = ports::fixed_tcp(addr)
            && let Err(e) = ports::check_port_free(sock)
        {
            return Err(if e.kind() == std::io::ErrorKind::AddrInUse {
                NetError::PortInUse(addr.to_string())
            } else {
                NetError::Listen(addr.to_string(), e.to_string())
            });
        }
    }
    let metrics = NetMetrics::register(registry);
    let codec_peer = codec::PeerTag::default();
    let (faults_tx, faults_rx) = mpsc::channel(1024);
    let codec = |purpose| {
        codec::Codec::new(
            purpose,
            config.max_frame_bytes,
            metrics.frames_refused.clone(),
        )
        .with_faults(codec_peer.clone(), faults_tx.clone())
    };
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let make_behaviour = |key: &Keypair| {
        behaviour::Behaviour::new(key, &config, codec, codec_peer.clone(), metrics.clone())
            .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })
    };
    let idle_timeout = config.idle_timeout;
    let builder = SwarmBuilder::with_existing_identity(keypair).with_tokio();
    let mut swarm = match config.link_latency {
        None => builder
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
            .with_behaviour(make_behaviour)
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
            .build(),
        // Benchmark/testing knob: the same TCP + Noise + Yamux stack over a delayed socket.
        Some(latency) => builder
            .with_quic()
            .with_other_transport(|key| latency::tcp(key, latency))
            .map_err(|e| setup(&e))?
            .with_dns()
            .map_err(|e| setup(&e))?
            .with_bandwidth_metrics(registry)
            .with_behaviour(make_behaviour)
            .map_err(|e| setup(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle_timeout))
            .build(),
    };
    for addr in &config.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen(addr.to_string(), e.to_string()))?;
    }
    let local = *swarm.local_peer_id();
    let libp2p_metrics = libp2p::metrics::Metrics::new(registry);
    let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue.max(1));
    let (control_tx, control_rx) = mpsc::channel(handle::CONTROL_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(config.event_queue.max(1));
    let dialer = dialer::Dialer::new(
        &config.bootstrap,
        &config.static_peers,
        config.redial_backoff,
        config.max_redial_backoff,
        Instant::now(),
    );
    let bound_ms = config.synchrony_bound.as_millis() as u64;
    // Static peers whose id is known are protected from the start (the others once connected).
    for addr in &config.static_peers {
        if let (_, Some(peer)) = dialer::split_peer(addr) {
            swarm.behaviour_mut().gate.manager.protect(peer);
        }
    }
    let config_prune = config.prune_interval;
    let (verdict_tx, verdict_rx) = mpsc::channel(vpool::VERDICT_QUEUE);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let vpool = vpool::Pool::new(vpool::QUEUE_PER_KIND, workers, bound_ms, verdict_tx);
    let actor = actor::Actor {
        swarm,
        commands: cmd_rx,
        control: control_rx,
        faults: faults_rx,
        guard: guard::Guard::new(&config),
        replay: validate::ReplayCache::new(2 * bound_ms, config.replay_cache_capacity),
        vpool,
        verdicts: verdict_rx,
        events: ev_tx,
        config,
        metrics,
        libp2p_metrics,
        dialer,
        peers: peers::PeerBook::default(),
        pending_requests: HashMap::new(),
        pending_providers: HashMap::new(),
        providing: std::collections::HashSet::new(),
        replies: FuturesUnordered::new(),
        next_prune: Instant::now() + config_prune,
    };
    let task = tokio::spawn(actor.run());
    Ok(Network {
        handle: NetHandle {
            tx: cmd_tx,
            control: control_tx,
            local,
        },
        events: ev_rx,
        task,
    })
}

/// Emulated link latency for benchmarks and tests ([`Config::link_latency`]).
///
/// [`Delayed`](latency::Delayed) wraps the raw TCP socket, below Noise: every chunk read from
/// the socket is stamped with its arrival time and handed to the reader only `delay` later.
/// Writes go straight through. Both ends of a connection delay what they receive, so each
/// direction of the link sees a one-way latency of `delay` (a round trip gains `2 * delay`).
mod latency {
    use std::collections::VecDeque;
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};
    use std::time::Duration;

    use futures::{AsyncRead, AsyncWrite};
    use libp2p::core::muxing::StreamMuxerBox;
    use libp2p::core::transport::Boxed;
    use libp2p::core::upgrade::Version;
    use libp2p::{PeerId, Transport, identity::Keypair, noise, tcp, yamux};
    use tokio::time::{Instant, Sleep};

    /// Bytes read ahead of the reader at most; beyond this the socket is left alone (TCP flow
    /// control pushes back on the sender) until the reader catches up.
    const MAX_QUEUED: usize = 1 << 20;
    const CHUNK: usize = 16 * 1024;

    /// The TCP + Noise + Yamux stack of [`crate::spawn`], over sockets delayed by `delay`.
    pub(crate) fn tcp(
        key: &Keypair,
        delay: Duration,
    ) -> Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(
            tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .map(move |stream, _| Delayed::new(stream, delay))
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                .boxed(),
        )
    }

    /// A stream whose reads return each byte `delay` after it arrived.
    pub(crate) struct Delayed<S> {
        inner: S,
        delay: Duration,
        /// Chunks received, with the instant they become readable.
        queue: VecDeque<(Instant, Vec<u8>)>,
        /// Bytes of the front chunk already read.
        offset: usize,
        queued: usize,
        /// The socket's end: `Some(None)` at EOF, `Some(Some(e))` after an error.
        end: Option<Option<io::Error>>,
        timer: Option<Pin<Box<Sleep>>>,
    }

    impl<S> Delayed<S> {
        fn new(inner: S, delay: Duration) -> Self {
            Delayed {
                inner,
                delay,
                queue: VecDeque::new(),
                offset: 0,
                queued: 0,
                end: None,
                timer: None,
            }
        }
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Delayed<S> {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            // Take in everything the socket has (this also registers for its next bytes).
            let mut chunk = [0u8; CHUNK];
            while this.end.is_none() && this.queued < MAX_QUEUED {
                match Pin::new(&mut this.inner).poll_read(cx, &mut chunk) {
                    Poll::Ready(Ok(0)) => this.end = Some(None),
                    Poll::Ready(Ok(n)) => {
                        this.queue
                            .push_back((Instant::now() + this.delay, chunk[..n].to_vec()));
                        this.queued += n;
                    }
                    Poll::Ready(Err(e)) => this.end = Some(Some(e)),
                    Poll::Pending => break,
                }
            }
            // Hand out what is due, or sleep until it is.
            loop {
                let Some((due, data)) = this.queue.front() else {
                    return match this.end.take() {
                        None => Poll::Pending,
                        Some(None) => {
                            this.end = Some(None);
                            Poll::Ready(Ok(0))
                        }
                        Some(Some(e)) => {
                            this.end = Some(None);
                            Poll::Ready(Err(e))
                        }
                    };
                };
                if *due <= Instant::now() {
                    let n = buf.len().min(data.len() - this.offset);
                    buf[..n].copy_from_slice(&data[this.offset..this.offset + n]);
                    this.offset += n;
                    this.queued -= n;
                    if this.offset == data.len() {
                        this.queue.pop_front();
                        this.offset = 0;
                    }
                    return Poll::Ready(Ok(n));
                }
                let due = *due;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                timer.as_mut().reset(due);
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Delayed<S> {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_flush(cx)
        }

        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.get_mut().inner).poll_close(cx)
        }
    }
}
