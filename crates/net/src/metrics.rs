//! The network's own counters, beside libp2p's (which `libp2p::metrics` records).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Counters the network task updates; registered under the `agora_net` prefix.
#[derive(Clone, Default)]
pub struct NetMetrics {
    /// Direct frames refused for size or malformation.
    pub frames_refused: Counter,
    /// Gossip messages rejected by validation (undecodable, wrong topic, bad signature).
    pub gossip_rejected: Counter,
    /// Gossip messages accepted and handed to the node.
    pub gossip_accepted: Counter,
    /// Events dropped because the node's queue was full.
    pub events_dropped: Counter,
    /// Inbound direct requests.
    pub requests_inbound: Counter,
    /// Outbound direct requests that failed.
    pub requests_failed: Counter,
    /// Connected peers now.
    pub connected_peers: Gauge,
}

impl NetMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = NetMetrics::default();
        let r = registry.sub_registry_with_prefix("agora_net");
        r.register(
            "frames_refused",
            "Direct frames refused for size or malformation",
            m.frames_refused.clone(),
        );
        r.register(
            "gossip_rejected",
            "Gossip messages rejected by validation",
            m.gossip_rejected.clone(),
        );
        r.register(
            "gossip_accepted",
            "Gossip messages accepted",
            m.gossip_accepted.clone(),
        );
        r.register(
            "events_dropped",
            "Events dropped because the node was too slow to take them",
            m.events_dropped.clone(),
        );
        r.register(
            "requests_inbound",
            "Inbound direct requests",
            m.requests_inbound.clone(),
        );
        r.register(
            "requests_failed",
            "Outbound direct requests that failed",
            m.requests_failed.clone(),
        );
        r.register(
            "connected_peers",
            "Connected peers",
            m.connected_peers.clone(),
        );
        m
    }
}
