//! The composed libp2p behaviour and how each part is configured.
//!
//! - The [`gate`](crate::gate) comes first, so that a refused connection reaches no other
//!   behaviour.
//! - GossipSub validates every message in the actor (see [`crate::validate`]) and scores peers
//!   ([`peer_score`]): invalid messages (application `Reject`) weigh heavily on the propagation
//!   source, so that its messages stop being gossiped to, published to, then processed at all.
//! - Kademlia uses disjoint query paths (S/Kademlia: a lookup succeeds if any of its paths avoids
//!   the adversary) and manual routing-table inserts: the actor inserts a peer only when its
//!   bucket holds fewer than [`Config::max_peers_per_subnet_per_bucket`] peers of its subnet.

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

use crate::codec::{self, Codec, PeerTag};
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
    pub rr: request_response::Behaviour<Codec>,
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
        codec: Codec,
        codec_peer: PeerTag,
        metrics: NetMetrics,
    ) -> Result<Self, NetError> {
        // The gate must stay the first field: it tags the codec with each connection's peer
        // just before request-response (the last field) clones the codec for the connection.
        let gate = gate::Behaviour::new(config, metrics, codec_peer);
        let peer_id = key.public().to_peer_id();
        let limits = connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(config.max_connections))
                .with_max_established_per_peer(Some(config.max_connections_per_peer))
                .with_max_pending_incoming(Some(config.max_pending_incoming))
                .with_max_established_incoming(Some(crate::ports::max_established_incoming(
                    config,
                ))),
        );
        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_string(), key.public())
                .with_agent_version(format!("agora/{}", agora_types::VERSION))
                .with_push_listen_addr_updates(true),
        );
        let ping = ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(5)));

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        kad_config.set_periodic_bootstrap_interval(Some(config.kad_bootstrap_interval));
        kad_config.set_query_timeout(Duration::from_secs(30));
        kad_config.disjoint_query_paths(true);
        kad_config.set_kbucket_inserts(kad::BucketInserts::Manual);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        kad.set_mode(Some(kad::Mode::Server));

        let gossip_config = gossipsub::ConfigBuilder::default()
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .message_id_fn(message_id)
            // Always the wire limit, whatever `max_gossip_bytes` (which the validator enforces):
            // libp2p-gossipsub 0.50.1 checks this limit against its whole read buffer, several
            // frames at once (`validate_rpc_limits`), and drops the stream when it is exceeded;
            // a small limit would cut honest peers off during bursts.
            .max_transmit_size(limits::MAX_GOSSIP_BYTES + GOSSIP_ENVELOPE_BYTES)
            .heartbeat_interval(config.gossip_heartbeat)
            .build()
            .map_err(|e| NetError::Setup(format!("gossipsub config: {e}")))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossip_config,
        )
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

        let rr = request_response::Behaviour::with_codec(
            codec,
            [(codec::PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(config.request_timeout)
                .with_max_concurrent_streams(256),
        );

        Ok(Behaviour {
            gate,
            limits,
            identify,
            ping,
            kad,
            gossipsub,
            mdns: mdns.into(),
            rr,
        })
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
    fn subnets() {
        let a = |s: &str| subnet_of(&s.parse().unwrap());
        assert_eq!(a("/ip4/10.1.2.3/tcp/1"), a("/ip4/10.1.2.200/tcp/9"));
        assert_ne!(a("/ip4/10.1.2.3/tcp/1"), a("/ip4/10.1.3.3/tcp/1"));
        assert_eq!(a("/ip4/127.0.0.1/tcp/1"), a("/ip4/127.0.0.9/tcp/1"));
        assert_eq!(a("/dns4/example.com/tcp/1"), None);
    }
}
