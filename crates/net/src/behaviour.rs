//! The composed libp2p behaviour and how each part is configured.
//!
//! - The [`gate`](crate::gate) comes first, so that a refused connection reaches no other
//!   behaviour.
//! - GossipSub waits for our verdict on every message (decoded in the actor, its signature
//!   checked in the validation pool: [`crate::validate`], [`crate::vpool`]) and scores peers
//!   ([`peer_score`]): invalid messages (application `Reject`) weigh heavily on the propagation
//!   source, so that its messages stop being gossiped to, published to, then processed at all.
//! - Kademlia uses disjoint query paths (S/Kademlia: a lookup succeeds if any of its paths avoids
//!   the adversary) and manual routing-table inserts: the actor inserts a peer only when its
//!   bucket holds fewer than [`Config::max_peers_per_subnet_per_bucket`] peers of its subnet.
//! - Direct messages use one request-response behaviour per purpose ([`Purpose`]: the market's
//!   control messages, results, blob chunks), each on its own protocol with its own codec caps,
//!   stream limit and (in the actor) per-peer quota; the actor routes each request by its
//!   variant ([`Purpose::of`]), so callers see one `request` and one kind of inbound event.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, connection_limits, gossipsub, identify, identity::Keypair, kad, mdns, ping,
    request_response,
};

use agora_types::wire::{Topic, limits};

use crate::codec::{Codec, PeerTag, Purpose};
use crate::metrics::NetMetrics;
use crate::{Config, NetError, gate};

/// Room for GossipSub's envelope (protobuf framing, signature, key) around a payload.
const GOSSIP_ENVELOPE_BYTES: usize = 4096;

/// The Kademlia protocol id: Agora's DHT is separate from the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/kad/1.0.0");
/// The Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/agora/1.0.0";

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub gate: gate::Behaviour,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    /// `/agora/market/…`: echo, bids, leases, cancels, heartbeats.
    pub market: request_response::Behaviour<Codec>,
    /// `/agora/result/…`: results with their output.
    pub result: request_response::Behaviour<Codec>,
    /// `/agora/blob/…`: blob chunks.
    pub blob: request_response::Behaviour<Codec>,
}

/// Gossip message ids are the content hash of topic and data, so the same message published
/// twice (or re-signed by a relay) is one message.
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut h = blake3::Hasher::new();
    h.update(m.topic.as_str().as_bytes());
    h.update(&[0]);
    h.update(&m.data);
    gossipsub::MessageId::from(h.finalize().as_bytes().to_vec())
}

impl Behaviour {
    pub fn new(
        key: &Keypair,
        config: &Config,
        codec: impl Fn(Purpose) -> Codec,
        codec_peer: PeerTag,
        metrics: NetMetrics,
    ) -> Result<Self, NetError> {
        // The gate must stay the first field: it tags the codecs with each connection's peer
        // just before the request-response behaviours (the last fields) clone their codec for
        // the connection.
        let peer_id = key.public().to_peer_id();
        let gate = gate::Behaviour::new(config, peer_id, metrics, codec_peer);
        // The hard ceilings; the degree itself is the connection manager's (in the gate).
        let mut limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_pending_incoming))
                .with_max_established_incoming(Some(crate::ports::max_established_incoming(
                    config,
                ))),
        );
        for peer in &config.allow_list {
            limits.bypass_peer_id(peer);
        }
        for addr in &config.static_peers {
            if let (_, Some(peer)) = crate::dialer::split_peer(addr) {
                limits.bypass_peer_id(&peer);
            }
        }
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("agora/{}", agora_types::VERSION))
                .with_push_listen_addr_updates(true),
        );
        let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)));

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // No walk of its own: the connection manager starts walks, below target only. (Kademlia
        // still walks by itself after a routing-table insert while the table holds fewer than
        // k = 20 peers; its dials are refused by the gate at target, and the table grows past k
        // while the node is below it, which ends those walks.)
        kad_config.set_periodic_bootstrap_interval(None);
        kad_config.set_query_timeout(Duration::from_secs(30));
        kad_config.disjoint_query_paths(true);
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        kad.set_mode(Some(kad::Mode::Server));

        let mesh = MeshDegree::for_config(config);
        let gossip_config = gossipsub::ConfigBuilder::default()
            // No GossipSub signature: every Agora message carries its own Ed25519 envelope (the
            // author's signature, checked once per message by the validator), and GossipSub
            // would sign each publication and verify every copy a node receives, up to its
            // mesh degree, before duplicates are dropped. Anonymous messages carry no author,
            // sequence number or key, and the message id is the content hash.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .validate_messages()
            .message_id_fn(message_id)
            // Always the wire limit, whatever `max_gossip_bytes` (which the validator enforces):
            // libp2p-gossipsub 0.50.1 checks this limit against its whole read buffer, several
            // frames at once (`validate_rpc_limits`), and drops the stream when it is exceeded;
            // a small limit would cut honest peers off during bursts.
            .max_transmit_size(limits::MAX_GOSSIP_BYTES + GOSSIP_ENVELOPE_BYTES)
            .heartbeat_interval(config.gossip_heartbeat)
            .mesh_n(mesh.n)
            .mesh_n_low(mesh.n_low)
            .mesh_n_high(mesh.n_high)
            .mesh_outbound_min(mesh.outbound_min)
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub config: {e}")))?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossip_config)
                .map_err(|e| NetError::Setup(format!("gossipsub: {e}")))?;
        let (params, thresholds) = peer_score();
        gossipsub
            .with_peer_score(params, thresholds)
            .map_err(|e| NetError::Setup(format!("gossipsub scoring: {e}")))?;
        for t in Topic::ALL {
            gossipsub
                .subscribe(&gossipsub::IdentTopic::new(t.name()))
                .map_err(|e| NetError::Setup(format!("subscribe {}: {e}", t.name())))?;
        }

        let mdns = if config.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| NetError::Setup(format!("mdns: {e}")))?,
            )
        } else {
            None
        };

        let rr = |purpose: Purpose| {
            request_response::Behaviour::with_codec(
                codec(purpose),
                [(purpose.protocol(), request_response::ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(config.request_timeout)
                    .with_max_concurrent_streams(purpose.max_streams()),
            )
        };

        Ok(Behaviour {
            gate,
            limits,
            identify,
            ping,
            kad,
            gossipsub,
            mdns: mdns.into(),
            market: rr(Purpose::Market),
            result: rr(Purpose::Result),
            blob: rr(Purpose::Blob),
        })
    }

    /// The request-response behaviour of `purpose`.
    pub fn rr(&mut self, purpose: Purpose) -> &mut request_response::Behaviour<Codec> {
        match purpose {
            Purpose::Market => &mut self.market,
            Purpose::Result => &mut self.result,
            Purpose::Blob => &mut self.blob,
        }
    }
}

/// GossipSub's mesh degrees, sized to the connection manager's degree so that the mesh forms
/// from kept peers and never needs more connections than the node holds: `mesh_n = min(T, 6)`
/// (6 is GossipSub's default), `mesh_n_low = max(1, mesh_n - 1)`, `mesh_n_high = max(T + S,
/// mesh_n)`, `mesh_outbound_min = mesh_n / 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MeshDegree {
    pub n: usize,
    pub n_low: usize,
    pub n_high: usize,
    pub outbound_min: usize,
}

impl MeshDegree {
    pub fn for_config(config: &Config) -> Self {
        let t = config.target_peers.max(1);
        let n = t.min(6);
        MeshDegree {
            n,
            n_low: n.saturating_sub(1).max(1),
            n_high: (t + config.slack()).max(n),
            outbound_min: n / 3,
        }
    }
}

/// GossipSub peer scoring for each of our topics.
///
/// Per topic: a little credit for time in the mesh and for first deliveries; a heavy, slowly
/// decaying penalty for invalid messages (P4: `-2 * invalid^2`, so a peer is below the gossip
/// threshold after 3 rejected messages and graylisted after 7). Mesh delivery-rate penalties
/// (P3) are off: our topics are quiet and bursty, and P3 would punish honest peers in lulls.
/// Loopback is exempt from the IP-colocation penalty (devnets share 127.0.0.1).
pub(crate) fn peer_score() -> (gossipsub::PeerScoreParams, gossipsub::PeerScoreThresholds) {
    let mut topics = HashMap::new();
    for t in Topic::ALL {
        let weight = match t {
            Topic::Jobs | Topic::Results | Topic::Ledger => 1.0,
            Topic::Capabilities | Topic::Reputation => 0.7,
            Topic::Health => 0.3,
        };
        let params = gossipsub::TopicScoreParams {
            topic_weight: weight,
            time_in_mesh_weight: 0.01,
            time_in_mesh_quantum: Duration::from_secs(1),
            time_in_mesh_cap: 300.0,
            first_message_deliveries_weight: 1.0,
            first_message_deliveries_decay: 0.9,
            first_message_deliveries_cap: 20.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -2.0,
            invalid_message_deliveries_decay: 0.99,
            ..Default::default()
        };
        topics.insert(gossipsub::IdentTopic::new(t.name()).hash(), params);
    }
    let params = gossipsub::PeerScoreParams {
        topics,
        topic_score_cap: 50.0,
        ip_colocation_factor_whitelist: HashSet::from([
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ]),
        ..Default::default()
    };
    let thresholds = gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    };
    (params, thresholds)
}

/// The subnet an address belongs to for the Kademlia diversity rule: its IPv4 /24 (loopback
/// included) or its IPv6 /48. `None` for addresses without an IP (DNS names, memory).
pub(crate) fn subnet_of(addr: &libp2p::Multiaddr) -> Option<IpAddr> {
    match crate::peers::ip_of(addr)? {
        IpAddr::V4(ip) => {
            let [a, b, c, _] = ip.octets();
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, 0)))
        }
        IpAddr::V6(ip) => {
            let mut o = ip.octets();
            o[6..].fill(0);
            Some(IpAddr::V6(Ipv6Addr::from(o)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_params_are_valid() {
        let (p, t) = peer_score();
        p.validate().unwrap();
        t.validate().unwrap();
        assert_eq!(p.topics.len(), Topic::ALL.len());
    }

    #[test]
    fn mesh_degrees_fit_the_target_and_pass_gossipsub_checks() {
        for t in [1, 2, 3, 4, 5, 6, 8, 12, 32, 50] {
            let mut c = Config::local();
            c.target_peers = t;
            let m = MeshDegree::for_config(&c);
            assert!(m.n <= t && m.n_high <= t + c.slack(), "{t}: {m:?}");
            assert!(m.outbound_min <= m.n_low && m.n_low <= m.n && m.n <= m.n_high);
            assert!(m.outbound_min * 2 <= m.n);
            let key = Keypair::generate_ed25519();
            let codec = |p| Codec::new(p, 1024, Default::default());
            Behaviour::new(&key, &c, codec, PeerTag::default(), NetMetrics::default())
                .unwrap_or_else(|e| panic!("T = {t}: {e}"));
        }
        let mut c = Config::local();
        c.target_peers = 8;
        assert_eq!(
            MeshDegree::for_config(&c),
            MeshDegree {
                n: 6,
                n_low: 5,
                n_high: 10,
                outbound_min: 2
            }
        );
    }

    #[test]
    fn subnets() {
        let a = |s: &str| subnet_of(&s.parse().unwrap());
        assert_eq!(a("/ip4/10.1.2.3/tcp/1"), a("/ip4/10.1.2.200/tcp/9"));
        assert_ne!(a("/ip4/10.1.2.3/tcp/1"), a("/ip4/10.1.3.3/tcp/1"));
        assert_eq!(a("/ip4/127.0.0.1/tcp/1"), a("/ip4/127.0.0.9/tcp/1"));
        assert_eq!(a("/dns4/example.com/tcp/1"), None);
    }
}
