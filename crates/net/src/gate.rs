//! The gate: who may hold a connection to us at all.
//!
//! A `NetworkBehaviour` with no protocol of its own, first in [`crate::behaviour::Behaviour`] so
//! it decides before any other behaviour sees a connection. It refuses, and counts in
//! `agora_net_refused_connections_total{reason}`:
//!
//! - `handshake_rate`: a pending inbound connection beyond the global token bucket
//!   ([`Config::inbound_handshake_rate`]), before Noise spends any CPU on it;
//! - `per_ip`: an inbound connection from an IP that already has
//!   [`Config::max_connections_per_ip`] established connections;
//! - `blocked`: any connection, either way, with a peer blocked for its offences
//!   ([`crate::guard`]) until the block expires;
//! - `unauthorized`: in [`Authorization::Permissioned`] mode, any connection with a peer in
//!   neither the authorized set ([`crate::NetHandle::set_authorized`]) nor
//!   [`Config::allow_list`].
//!
//! A refused connection never reaches the other behaviours or the node: no `PeerConnected`,
//! no request, no gossip. Peers already connected when they lose authorization or get blocked
//! are disconnected by the actor, which also drops whatever they manage to send meanwhile.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use tracing::debug;

use crate::codec::PeerTag;
use crate::config::{Authorization, Config};
use crate::metrics::NetMetrics;
use crate::peers::ip_of;
use crate::rate::TokenBucket;

/// The most peers blocked at once; beyond it the block expiring first is dropped.
const MAX_BLOCKED: usize = 65_536;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("too many inbound handshakes")]
    HandshakeRate,
    #[error("too many connections from this IP")]
    PerIp,
    #[error("peer is blocked")]
    Blocked,
    #[error("peer is not authorized")]
    Unauthorized,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::HandshakeRate => "handshake_rate",
            Refusal::PerIp => "per_ip",
            Refusal::Blocked => "blocked",
            Refusal::Unauthorized => "unauthorized",
        }
    }
}

pub(crate) struct Behaviour {
    mode: Authorization,
    allow: HashSet<PeerId>,
    authorized: HashSet<PeerId>,
    blocked: HashMap<PeerId, Instant>,
    max_per_ip: Option<u32>,
    per_ip: HashMap<IpAddr, u32>,
    conn_ip: HashMap<ConnectionId, IpAddr>,
    handshakes: TokenBucket,
    metrics: NetMetrics,
    /// Set to each admitted connection's peer, for the request-response codec (see `codec`).
    codec_peer: PeerTag,
}

impl Behaviour {
    pub fn new(config: &Config, metrics: NetMetrics, codec_peer: PeerTag) -> Self {
        Behaviour {
            mode: config.authorization,
            allow: config.allow_list.iter().copied().collect(),
            authorized: HashSet::new(),
            blocked: HashMap::new(),
            max_per_ip: config.max_connections_per_ip,
            per_ip: HashMap::new(),
            conn_ip: HashMap::new(),
            handshakes: TokenBucket::new(config.inbound_handshake_rate, Instant::now()),
            metrics,
            codec_peer,
        }
    }

    /// Whether `peer` may be connected, as far as authorization goes.
    pub fn is_authorized(&self, peer: &PeerId) -> bool {
        self.mode == Authorization::Open
            || self.authorized.contains(peer)
            || self.allow.contains(peer)
    }

    /// Replaces the authorized set.
    pub fn set_authorized(&mut self, set: HashSet<PeerId>) {
        self.authorized = set;
    }

    /// Whether `peer` is blocked now.
    pub fn is_blocked(&self, peer: &PeerId, now: Instant) -> bool {
        self.blocked.get(peer).is_some_and(|until| *until > now)
    }

    /// Whether a connection with `peer` is allowed now: authorized and not blocked.
    pub fn admits(&self, peer: &PeerId, now: Instant) -> Result<(), Refusal> {
        if self.is_blocked(peer, now) {
            Err(Refusal::Blocked)
        } else if !self.is_authorized(peer) {
            Err(Refusal::Unauthorized)
        } else {
            Ok(())
        }
    }

    /// Blocks `peer` for `duration`.
    pub fn block(&mut self, peer: PeerId, duration: Duration, now: Instant) {
        if self.blocked.len() >= MAX_BLOCKED
            && !self.blocked.contains_key(&peer)
            && let Some(first) = self
                .blocked
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(p, _)| *p)
        {
            self.blocked.remove(&first);
        }
        self.blocked.insert(peer, now + duration);
        self.metrics.blocked_peers.set(self.blocked.len() as i64);
    }

    /// Removes and returns the blocks that have expired.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let done: Vec<PeerId> = self
            .blocked
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(p, _)| *p)
            .collect();
        for p in &done {
            self.blocked.remove(p);
        }
        self.metrics.blocked_peers.set(self.blocked.len() as i64);
        done
    }

    /// Peers blocked now.
    pub fn blocked(&self, now: Instant) -> Vec<PeerId> {
        let mut out: Vec<PeerId> = self
            .blocked
            .iter()
            .filter(|(_, u)| **u > now)
            .map(|(p, _)| *p)
            .collect();
        out.sort_by_key(|p| p.to_bytes());
        out
    }

    fn refuse(&self, refusal: Refusal, peer: Option<PeerId>, addr: &Multiaddr) -> ConnectionDenied {
        self.metrics.refused(refusal.label());
        debug!(?peer, %addr, reason = %refusal, "connection refused");
        ConnectionDenied::new(refusal)
    }

    fn check_peer(&self, peer: PeerId, addr: &Multiaddr) -> Result<(), ConnectionDenied> {
        self.admits(&peer, Instant::now())
            .map_err(|r| self.refuse(r, Some(peer), addr))
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        if !self.handshakes.take(Instant::now()) {
            return Err(self.refuse(Refusal::HandshakeRate, None, remote_addr));
        }
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(peer, remote_addr)?;
        if let (Some(max), Some(ip)) = (self.max_per_ip, ip_of(remote_addr))
            && self.per_ip.get(&ip).copied().unwrap_or(0) >= max
        {
            return Err(self.refuse(Refusal::PerIp, Some(peer), remote_addr));
        }
        self.codec_peer.set(peer);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = maybe_peer {
            let addr = addresses.first().cloned().unwrap_or_else(Multiaddr::empty);
            self.check_peer(peer, &addr)?;
        }
        Ok(vec![])
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(peer, addr)?;
        self.codec_peer.set(peer);
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionEstablished(e) => {
                let addr = match e.endpoint {
                    ConnectedPoint::Dialer { address, .. } => address,
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr,
                };
                if let Some(ip) = ip_of(addr) {
                    *self.per_ip.entry(ip).or_default() += 1;
                    self.conn_ip.insert(e.connection_id, ip);
                }
            }
            FromSwarm::ConnectionClosed(e) => {
                if let Some(ip) = self.conn_ip.remove(&e.connection_id)
                    && let Some(n) = self.per_ip.get_mut(&ip)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_ip.remove(&ip);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer_id: PeerId,
        _connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}
