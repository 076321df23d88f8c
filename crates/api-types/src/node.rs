//! `GET /v1/status` and `GET /v1/peers`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What `GET /v1/status` shows: who the node is and how connected.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct NodeStatus {
    /// The node's peer id.
    pub peer_id: String,
    /// Multiaddrs it listens on.
    pub listen_addresses: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: u64,
    /// Peers in the Kademlia routing table.
    pub routing_table_size: u64,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Software version.
    pub version: String,
    /// The price this node asks per execution, in tokens.
    pub price: u64,
}

/// A connected peer, one element of `GET /v1/peers`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct PeerInfo {
    /// Its peer id.
    pub peer_id: String,
    /// Multiaddrs: those of the open connections first, then those it listens on.
    pub addresses: Vec<String>,
    /// The last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When the first open connection was established (Unix milliseconds).
    pub connected_since: u64,
    /// Its Identify agent string, once known.
    pub agent: Option<String>,
}
