//! The network's own counters, beside libp2p's (which `libp2p::metrics` records).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
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
    /// Connections refused, by `reason`: `unauthorized`, `blocked`, `per_ip`, `handshake_rate`,
    /// and the connection manager's `over_capacity`, `pruned`, `at_target`, `paced` (the last
    /// two are our own unasked dials, Kademlia's, refused without opening a socket).
    pub refused_connections: Family<[(&'static str, &'static str); 1], Counter>,
    /// Inbound messages dropped before reaching the node, by `protocol` (the direct-message
    /// protocols `market`, `result`, `blob`, and `gossip`) and `reason` (`quota`,
    /// `unauthorized`, `blocked`, `invalid`, `oversized`, `malformed`, `misrouted` (a request on
    /// another purpose's protocol), `out_of_sync`, `replay`).
    pub dropped_messages: Family<[(&'static str, &'static str); 2], Counter>,
    /// Offences recorded against peers, by `kind` (`market_quota`, `result_quota`,
    /// `blob_quota`, `gossip_quota`, `invalid_message`, `oversized_frame`, `malformed_frame`).
    pub offences: Family<[(&'static str, &'static str); 1], Counter>,
    /// Peers blocked (each block counts, repeat blocks included):
    /// `agora_net_blocked_peers_total`.
    pub blocked_peers_total: Counter,
    /// Peers blocked now: `agora_net_blocked_peers_current`.
    pub blocked_peers: Gauge,
    /// Connections closed because their peer left the authorized set.
    pub deauthorized: Counter,
    /// Kademlia routing-table inserts refused by the per-subnet rule.
    pub kad_refused: Counter,
    /// Dials let through by the gate, by `source`: `approved` (the connection manager,
    /// bootstrap, static, `NetHandle::dial`), `discovery` (Kademlia below target),
    /// `purposeful` (a request or a user DHT query at target).
    pub dials: Family<[(&'static str, &'static str); 1], Counter>,
    /// Peers pruned above `T + S`, by `class`: `transient`, `inbound`, `inbound_mesh`,
    /// `outbound`.
    pub pruned: Family<[(&'static str, &'static str); 1], Counter>,
    /// Connected peers now, by `direction` (`outbound`: at least one connection we dialed).
    pub connections: Family<[(&'static str, &'static str); 1], Gauge>,
    /// Times the node found itself isolated and re-bootstrapped.
    pub rebootstraps: Counter,
    /// Kademlia walks started by the connection manager (below target only).
    pub walks: Counter,
}

impl NetMetrics {
    /// Counts a dial the gate let through.
    pub fn dialed(&self, source: &'static str) {
        self.dials.get_or_create(&[("source", source)]).inc();
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: &'static str) {
        self.refused_connections
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Counts a dropped inbound message.
    pub fn dropped(&self, protocol: &'static str, reason: &'static str) {
        self.dropped_messages
            .get_or_create(&[("protocol", protocol), ("reason", reason)])
            .inc();
    }
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
        r.register(
            "refused_connections",
            "Connections refused by the gate, by reason",
            m.refused_connections.clone(),
        );
        r.register(
            "dropped_messages",
            "Inbound messages dropped before reaching the node, by protocol and reason",
            m.dropped_messages.clone(),
        );
        r.register(
            "offences",
            "Offences recorded against peers, by kind",
            m.offences.clone(),
        );
        r.register(
            "blocked_peers",
            "Peers blocked (repeat blocks included)",
            m.blocked_peers_total.clone(),
        );
        r.register(
            "blocked_peers_current",
            "Peers blocked now",
            m.blocked_peers.clone(),
        );
        r.register(
            "deauthorized",
            "Connections closed because their peer left the authorized set",
            m.deauthorized.clone(),
        );
        r.register(
            "kad_inserts_refused",
            "Kademlia routing-table inserts refused: the bucket holds enough peers of that subnet",
            m.kad_refused.clone(),
        );
        r.register(
            "dials",
            "Dials let through by the gate, by source",
            m.dials.clone(),
        );
        r.register(
            "pruned",
            "Peers disconnected by the connection manager above target + slack, by class",
            m.pruned.clone(),
        );
        r.register(
            "connections",
            "Connected peers, by direction",
            m.connections.clone(),
        );
        r.register(
            "rebootstraps",
            "Times the node was isolated and re-bootstrapped",
            m.rebootstraps.clone(),
        );
        r.register(
            "walks",
            "Kademlia walks started below target",
            m.walks.clone(),
        );
        m
    }
}
