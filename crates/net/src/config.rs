//! Network configuration, with presets for a local devnet and for production.
//!
//! The defences of the `guard` module and the `gate` module are all configured here; see the field
//! docs for what each one bounds and the presets for their defaults.

use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

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
    /// The slowest cadence of Kademlia walks (random walks that refresh the routing table).
    /// Walks run only while the node has fewer than [`Config::target_peers`] peers, every
    /// [`Config::walk_interval`] at first, doubling up to this while they find nothing new.
    pub kad_bootstrap_interval: Duration,
    /// The degree the connection manager holds the node at (`T`): it dials while it has fewer
    /// peers, walks the DHT only then, and refuses dials nobody asked for at or above it.
    pub target_peers: usize,
    /// Peers kept above the target before pruning starts (`S`); `None`: `max(2, T / 4)`.
    pub peer_slack: Option<usize>,
    /// Further inbound peers accepted above `T + S` (`E`), so that a newcomer finds room when
    /// every node is full; pruning brings the node back to `T + S`. `None`: 1. Set it high on
    /// bootstrap nodes (they let every newcomer in, then prune back). On ordinary nodes each
    /// newcomer in the band displaces an older peer (a prune), which may then dial again, so
    /// the band is kept narrow: on 30 in-process nodes at `T` = 4 (`crates/net/tests/degree.rs`),
    /// `E` = 2 left a third of them below target and dialing after 4 minutes, while `E` = 1
    /// settled in about 80 s and then dialed nothing; `E` = 0 settles there too but deadlocks a
    /// few nodes below target when every other node is full (the 300-node simulation in
    /// `connmgr`).
    pub inbound_excess: Option<usize>,
    /// Dials of the connection manager in flight at most.
    pub max_concurrent_dials: usize,
    /// How often the connection manager prunes peers above `T + S`.
    pub prune_interval: Duration,
    /// A pruned peer is neither dialed nor accepted for this long.
    pub prune_backoff: Duration,
    /// The first (fastest) cadence of Kademlia walks below target.
    pub walk_interval: Duration,
    /// With no peer at all for this long, the node re-bootstraps: bootstrap peers are dialed
    /// again and every backoff is forgiven.
    pub isolation_grace: Duration,
    /// The most established connections in all: a hard ceiling, which must leave room for
    /// `T + S + E` (checked by [`Config::validate`]).
    pub max_connections: u32,
    /// The most established connections to one peer.
    pub max_connections_per_peer: u32,
    /// The most pending incoming connections (handshakes in flight).
    pub max_pending_incoming: u32,
    /// A connection with no open stream is closed after this long.
    pub idle_timeout: Duration,
    /// How long a direct request may wait for its response.
    pub request_timeout: Duration,
    /// A ceiling on every direct request or response frame accepted or sent. Each protocol has
    /// its own, lower cap (the market's 128 KiB, results' 4 MiB + 128 KiB, blob chunks' 1 MiB +
    /// 4 KiB: see the `codec` module); this only lowers them further.
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

    /// Who may connect: everyone ([`Authorization::Open`], both presets), or only the peers of
    /// the authorized set ([`crate::NetHandle::set_authorized`]) and of
    /// [`Config::allow_list`]. In permissioned mode bootstrap and static peers must be in one
    /// of the two as well.
    pub authorization: Authorization,
    /// Peers always admitted in permissioned mode (operators, bootstrap nodes).
    pub allow_list: Vec<PeerId>,
    /// The most established connections from one remote IP address; a further inbound
    /// connection is refused. `Some(3)` in production. `None` in [`Config::local`]: devnet
    /// nodes all reach each other from 127.0.0.1 (libp2p-tcp binds outgoing sockets to
    /// `0.0.0.0`, so even nodes listening on distinct 127.0.0.x addresses dial from 127.0.0.1).
    pub max_connections_per_ip: Option<u32>,
    /// Rate of new inbound handshakes (pending inbound connections) accepted, all peers
    /// together; the excess is refused before the Noise handshake starts.
    pub inbound_handshake_rate: Rate,
    /// Inbound requests on the market protocol (echo, bids, leases, cancels, heartbeats)
    /// accepted per peer; the excess is dropped unanswered. (The name predates the split into
    /// one protocol per purpose.)
    pub rr_quota: Rate,
    /// Inbound results (`Request::Result`, up to 4 MiB each) accepted per peer.
    pub result_quota: Rate,
    /// Inbound blob chunk requests (`Request::GetBlob`, 1 MiB answers) accepted per peer.
    pub blob_quota: Rate,
    /// Gossip messages accepted per propagation source; the excess is ignored.
    pub gossip_quota: Rate,
    /// Offence points at which a peer is blocked (see the `guard` module for the points of each
    /// offence). Points drain at `offence_threshold` per [`Config::offence_decay`].
    pub offence_threshold: u32,
    /// How long the points of a full threshold take to drain away.
    pub offence_decay: Duration,
    /// How long a first block lasts; each further block of the same peer doubles it...
    pub block_duration: Duration,
    /// ...up to this.
    pub max_block_duration: Duration,
    /// The largest gossip payload (an encoded [`GossipMessage`](agora_types::wire::GossipMessage))
    /// published or accepted; a larger one is rejected and is an offence. At most
    /// `limits::MAX_GOSSIP_BYTES`, which (plus 4 KiB of envelope) is GossipSub's own transmit
    /// limit whatever this is set to (see `behaviour.rs` for why).
    pub max_gossip_bytes: usize,
    /// Signed gossip whose signature timestamp is further than this from our clock is rejected.
    pub synchrony_bound: Duration,
    /// Entries of the gossip replay cache (signed digests seen in the last two synchrony
    /// bounds); when full, the oldest entry is evicted.
    pub replay_cache_capacity: usize,
    /// At most this many peers of one IPv4 /24 (IPv6 /48) per Kademlia bucket. `Some(2)` in
    /// production (against eclipse attacks from one subnet); `None` in [`Config::local`], where
    /// every node is on 127.0.0.0/8 and the rule would cap each bucket at 2.
    pub max_peers_per_subnet_per_bucket: Option<usize>,
    /// Capacity of the handle's data command queue (publish, request, dial, DHT). Control
    /// commands (status, shutdown, authorization) have their own small queue, served first.
    pub command_queue: usize,
}

/// A [`Config`] that cannot work, with how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The connection ceiling leaves no room for the target degree and its margins.
    #[error(
        "max_connections = {max} is below target_peers + peer_slack + inbound_excess = \
         {target} + {slack} + {excess} = {need}; raise max_connections to at least {need} or \
         lower target_peers"
    )]
    NoRoom {
        /// `max_connections`.
        max: u32,
        /// `target_peers`.
        target: usize,
        /// The slack in force.
        slack: usize,
        /// The inbound excess in force.
        excess: usize,
        /// Their sum.
        need: usize,
    },
    /// A node that wants no peer at all.
    #[error("target_peers = 0: a node needs at least one peer; set target_peers to 1 or more")]
    NoTarget,
    /// A quota that admits nothing: every message of its protocol would be refused.
    #[error("{name} admits nothing ({per_sec}/s, burst {burst}); give it at least 1/s, burst 1")]
    ZeroQuota {
        /// The quota's field.
        name: &'static str,
        /// Its rate.
        per_sec: u32,
        /// Its burst.
        burst: u32,
    },
}

/// Who may connect to the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Authorization {
    /// Every peer may connect.
    #[default]
    Open,
    /// Only peers in the authorized set or the allow list may connect.
    Permissioned,
}

/// A token-bucket rate: `per_sec` tokens a second, at most `burst` saved up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Sustained rate.
    pub per_sec: u32,
    /// Largest burst.
    pub burst: u32,
}

impl Rate {
    /// `per_sec` a second with bursts of `burst`.
    pub const fn new(per_sec: u32, burst: u32) -> Self {
        Rate { per_sec, burst }
    }
}

impl Config {
    /// `S`: [`Config::peer_slack`], or `max(2, T / 4)`.
    pub fn slack(&self) -> usize {
        self.peer_slack.unwrap_or((self.target_peers / 4).max(2))
    }

    /// `E`: [`Config::inbound_excess`], or 1.
    pub fn excess(&self) -> usize {
        self.inbound_excess.unwrap_or(1)
    }

    /// Checks the numbers that must agree: `T >= 1`, `T + S + E <= max_connections`, and every
    /// quota admits something.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.target_peers == 0 {
            return Err(ConfigError::NoTarget);
        }
        for (name, q) in [
            ("rr_quota", self.rr_quota),
            ("result_quota", self.result_quota),
            ("blob_quota", self.blob_quota),
            ("gossip_quota", self.gossip_quota),
            ("inbound_handshake_rate", self.inbound_handshake_rate),
        ] {
            if q.per_sec == 0 || q.burst == 0 {
                return Err(ConfigError::ZeroQuota {
                    name,
                    per_sec: q.per_sec,
                    burst: q.burst,
                });
            }
        }
        let (target, slack, excess) = (self.target_peers, self.slack(), self.excess());
        let need = target.saturating_add(slack).saturating_add(excess);
        if need > self.max_connections as usize {
            return Err(ConfigError::NoRoom {
                max: self.max_connections,
                target,
                slack,
                excess,
                need,
            });
        }
        Ok(())
    }

    /// After `max_connections` was lowered (to fit the open-file limit): shrinks the inbound
    /// excess, then the slack, then the target, until `T + S + E` fits again. Returns whether
    /// anything changed.
    pub fn fit_band(&mut self) -> bool {
        let max = self.max_connections as usize;
        let (t, s, e) = (self.target_peers, self.slack(), self.excess());
        if t + s + e <= max {
            return false;
        }
        let target = t.min(max).max(1);
        let slack = s.min(max.saturating_sub(target));
        let excess = e.min(max.saturating_sub(target + slack));
        self.target_peers = target;
        self.peer_slack = Some(slack);
        self.inbound_excess = Some(excess);
        true
    }

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
            peer_slack: None,
            inbound_excess: None,
            max_concurrent_dials: 4,
            prune_interval: Duration::from_secs(10),
            prune_backoff: Duration::from_secs(60),
            walk_interval: Duration::from_secs(1),
            isolation_grace: Duration::from_secs(3),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            // Kept peers are held open by the gate's keep-alive; this only closes connections
            // opened for one request or one DHT query.
            idle_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_frame_bytes: limits::MAX_FRAME_BYTES,
            gossip_heartbeat: Duration::from_millis(200),
            redial_backoff: Duration::from_millis(250),
            max_redial_backoff: Duration::from_secs(5),
            event_queue: 4096,
            link_latency: None,
            authorization: Authorization::Open,
            allow_list: vec![],
            max_connections_per_ip: None,
            // Generous on a devnet: hundreds of in-process nodes (benchmarks) dial at once.
            inbound_handshake_rate: Rate::new(500, 1000),
            // Benchmarks send thousands of sequential echo requests a second over loopback.
            rr_quota: Rate::new(10_000, 10_000),
            result_quota: Rate::new(10_000, 10_000),
            blob_quota: Rate::new(10_000, 10_000),
            gossip_quota: Rate::new(10_000, 10_000),
            offence_threshold: 100,
            offence_decay: Duration::from_secs(60),
            block_duration: Duration::from_secs(30),
            max_block_duration: Duration::from_secs(3600),
            max_gossip_bytes: limits::MAX_GOSSIP_BYTES,
            synchrony_bound: Duration::from_secs(5),
            replay_cache_capacity: 65_536,
            max_peers_per_subnet_per_bucket: None,
            command_queue: 1024,
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
            prune_interval: Duration::from_secs(30),
            walk_interval: Duration::from_secs(10),
            isolation_grace: Duration::from_secs(10),
            gossip_heartbeat: Duration::from_secs(1),
            redial_backoff: Duration::from_secs(1),
            max_redial_backoff: Duration::from_secs(60),
            max_connections_per_ip: Some(3),
            inbound_handshake_rate: Rate::new(50, 100),
            rr_quota: Rate::new(100, 200),
            // A worker sends one result per lease; up to 20 x 4 MiB a second from one peer.
            result_quota: Rate::new(20, 100),
            // 1 MiB chunks, fetched one after another: 100 MiB/s (about a 1 Gbit/s link), and a
            // burst of 256 chunks (a job's largest module and input, 64 MiB each, twice over).
            blob_quota: Rate::new(100, 256),
            gossip_quota: Rate::new(200, 400),
            max_peers_per_subnet_per_bucket: Some(2),
            ..Config::local()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_derive_slack_from_the_target() {
        for c in [Config::local(), Config::production()] {
            c.validate().unwrap();
        }
        let mut c = Config::local();
        c.target_peers = 4;
        assert_eq!((c.slack(), c.excess()), (2, 1));
        c.target_peers = 50;
        assert_eq!((c.slack(), c.excess()), (12, 1));
        c.peer_slack = Some(1);
        c.inbound_excess = Some(0);
        assert_eq!((c.slack(), c.excess()), (1, 0));
    }

    #[test]
    fn a_ceiling_below_the_band_is_refused_with_the_numbers() {
        let mut c = Config::local();
        c.target_peers = 32;
        c.inbound_excess = Some(8);
        c.max_connections = 40;
        let e = c.validate().unwrap_err();
        assert_eq!(
            e,
            ConfigError::NoRoom {
                max: 40,
                target: 32,
                slack: 8,
                excess: 8,
                need: 48
            }
        );
        let text = e.to_string();
        assert!(text.contains("32 + 8 + 8 = 48"), "{text}");
        assert!(
            text.contains("raise max_connections to at least 48"),
            "{text}"
        );
        c.target_peers = 0;
        assert_eq!(c.validate(), Err(ConfigError::NoTarget));
    }

    #[test]
    fn every_protocol_has_a_quota_that_admits_something() {
        for c in [Config::local(), Config::production()] {
            for q in [c.rr_quota, c.result_quota, c.blob_quota, c.gossip_quota] {
                assert!(q.per_sec >= 1 && q.burst >= 1, "{q:?}");
            }
        }
        let mut c = Config::production();
        c.blob_quota = Rate::new(0, 10);
        let e = c.validate().unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::ZeroQuota {
                    name: "blob_quota",
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("blob_quota admits nothing"), "{e}");
        c.blob_quota = Rate::new(1, 1);
        c.result_quota = Rate::new(5, 0);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ZeroQuota {
                name: "result_quota",
                ..
            })
        ));
    }

    #[test]
    fn fit_band_shrinks_excess_then_slack_then_target() {
        let mut c = Config::local();
        c.inbound_excess = Some(8);
        assert!(!c.fit_band());
        c.max_connections = 44;
        assert!(c.fit_band());
        assert_eq!((c.target_peers, c.slack(), c.excess()), (32, 8, 4));
        c.max_connections = 20;
        c.fit_band();
        assert_eq!((c.target_peers, c.slack(), c.excess()), (20, 0, 0));
        c.validate().unwrap();
    }
}
