//! Network configuration, with presets for a local devnet and for production.

use std::time::Duration;

use libp2p::Multiaddr;

use agora_types::wire::limits;

/// Everything the network task needs to start. Build it with [`Config::local`] or
/// [`Config::production`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// Addresses to listen on. TCP and QUIC (`/udp/N/quic-v1`) both work.
    pub listen: Vec<Multiaddr>,
    /// Bootstrap peers: dialed at start, retried with backoff until one answers, and used to
    /// seed the Kademlia routing table. A `/p2p/<peer id>` suffix is optional.
    pub bootstrap: Vec<Multiaddr>,
    /// Static peers: dialed at start and re-dialed whenever the connection drops (the "lookup"
    /// mode for networks whose addresses are known).
    pub static_peers: Vec<Multiaddr>,
    /// Discover peers on the LAN with mDNS.
    pub mdns: bool,
    /// How often to run a Kademlia bootstrap (a random walk that refreshes the routing table).
    pub kad_bootstrap_interval: Duration,
    /// Dial newly discovered peers while fewer than this many are connected.
    pub target_peers: usize,
    /// The most established connections in all.
    pub max_connections: u32,
    /// The most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// The most pending incoming connections (handshakes in flight).
    pub max_pending_incoming: u32,
    /// A connection with no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// How long a direct request may wait for its response.
    pub request_timeout: Duration,
    /// The largest direct request or response frame accepted or sent.
    pub max_frame_bytes: usize,
    /// GossipSub heartbeat.
    pub gossip_heartbeat: Duration,
    /// The first delay before re-dialing an unreachable bootstrap or static peer; doubles on each
    /// failure up to [`Config::max_redial_backoff`].
    pub redial_backoff: Duration,
    /// The longest delay between re-dials.
    pub max_redial_backoff: Duration,
    /// Capacity of the queue of events to the node; when full, events are dropped and counted.
    pub event_queue: usize,
    /// Benchmark and testing knob, `None` in both presets: when set, every TCP connection
    /// delivers the bytes it receives this much later than they arrived, below Noise, so each
    /// direction of a link gets this one-way latency (`agora bench gossip` uses it to emulate a
    /// WAN on loopback). QUIC is left undelayed. Not meant for production nodes.
    pub link_latency: Option<Duration>,
}

impl Config {
    /// A node for a devnet on this machine: loopback, ephemeral ports, fast timers.
    pub fn local() -> Self {
        Config {
            listen: vec![
                "/ip4/127.0.0.1/tcp/0".parse().expect("static multiaddr"),
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            bootstrap: vec![],
            static_peers: vec![],
            mdns: false,
            kad_bootstrap_interval: Duration::from_secs(5),
            target_peers: 32,
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            idle_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            gossip_heartbeat: Duration::from_millis(200),
            redial_backoff: Duration::from_millis(250),
            max_redial_backoff: Duration::from_secs(5),
            event_queue: 4096,
            link_latency: None,
        }
    }

    /// A node on the open internet: all interfaces, fixed port 7470, slower timers.
    pub fn production() -> Self {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/7470".parse().expect("static multiaddr"),
                "/ip4/0.0.0.0/udp/7470/quic-v1"
                    .parse()
                    .expect("static multiaddr"),
            ],
            mdns: true,
            kad_bootstrap_interval: Duration::from_secs(300),
            target_peers: 50,
            max_connections: 512,
            max_pending_incoming: 128,
            idle_timeout: Duration::from_secs(300),
            gossip_heartbeat: Duration::from_secs(1),
            redial_backoff: Duration::from_secs(1),
            max_redial_backoff: Duration::from_secs(60),
            ..Config::local()
        }
    }
}
