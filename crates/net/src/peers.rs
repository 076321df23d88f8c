//! What the node knows of each connected peer: addresses, round-trip time, agent, since when.

use std::collections::HashMap;
use std::net::IpAddr;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;

use agora_types::UnixMillis;

/// One connected peer, as shown by `GET /v1/peers`.
#[derive(Clone, Debug, Serialize)]
pub struct PeerInfo {
    /// The peer's id.
    pub peer_id: PeerId,
    /// Addresses: those of the open connections first, then the ones it listens on.
    pub addresses: Vec<Multiaddr>,
    /// Last ping round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
    /// When the first open connection was established (Unix milliseconds).
    pub connected_since: UnixMillis,
    /// Its Identify agent string, once known.
    pub agent: Option<String>,
}

impl PeerInfo {
    /// The IP address of the first connection, if it has one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.addresses.first().and_then(ip_of)
    }
}

/// The IP address in a multiaddr, if any.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[derive(Default)]
struct Entry {
    info: Option<PeerInfo>,
    connections: u32,
    listen: Vec<Multiaddr>,
}

/// The book of connected peers, owned by the network task.
#[derive(Default)]
pub(crate) struct PeerBook {
    peers: HashMap<PeerId, Entry>,
}

const MAX_LISTEN_ADDRS: usize = 8;

impl PeerBook {
    pub fn connected(&mut self, peer: PeerId, remote: Multiaddr, now: UnixMillis) {
        let e = self.peers.entry(peer).or_default();
        e.connections += 1;
        let info = e.info.get_or_insert_with(|| PeerInfo {
            peer_id: peer,
            addresses: vec![],
            rtt_ms: None,
            connected_since: now,
            agent: None,
        });
        if !info.addresses.contains(&remote) {
            info.addresses.insert(0, remote);
            info.addresses.truncate(MAX_LISTEN_ADDRS);
        }
    }

    /// Returns true when the last connection closed.
    pub fn disconnected(&mut self, peer: &PeerId) -> bool {
        if let Some(e) = self.peers.get_mut(peer) {
            e.connections = e.connections.saturating_sub(1);
            if e.connections == 0 {
                self.peers.remove(peer);
                return true;
            }
        }
        false
    }

    pub fn identified(&mut self, peer: &PeerId, agent: String, listen: Vec<Multiaddr>) {
        if let Some(e) = self.peers.get_mut(peer) {
            e.listen = listen.into_iter().take(MAX_LISTEN_ADDRS).collect();
            if let Some(info) = e.info.as_mut() {
                info.agent = Some(agent.chars().take(128).collect());
            }
        }
    }

    pub fn rtt(&mut self, peer: &PeerId, rtt_ms: f64) {
        if let Some(info) = self.peers.get_mut(peer).and_then(|e| e.info.as_mut()) {
            info.rtt_ms = Some(rtt_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn list(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .values()
            .filter_map(|e| {
                let mut info = e.info.clone()?;
                for a in &e.listen {
                    if !info.addresses.contains(a) {
                        info.addresses.push(a.clone());
                    }
                }
                Some(info)
            })
            .collect();
        out.sort_by_key(|p| p.peer_id.to_bytes());
        out
    }
}
