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
//!   [`Config::allow_list`];
//! - `over_capacity`: an inbound connection while the node holds `T + S + E` peers (see
//!   [`crate::connmgr`]), refused before Noise where the count already says so, and again once
//!   the peer is known (handshakes in flight may have filled the band meanwhile);
//! - `pruned`: a dial nobody asked for to a peer the connection manager pruned less than
//!   [`Config::prune_backoff`] ago (such a peer dialing us is admitted, as a transient
//!   connection that is not kept alive: it may have a request for us);
//! - `at_target`: a dial nobody asked for (a Kademlia query's, say) while the node is at its
//!   target degree. Dials the actor approved (the manager's, bootstrap, static,
//!   [`crate::NetHandle::dial`]) and purposeful ones (a request to the peer, a user DHT query)
//!   pass;
//! - `paced`: such a dial below target, sooner than the manager's pace allows (it slows down
//!   while the node's dials find no room).
//!
//! The gate owns the [`ConnManager`]: it sees every connection first, so it feeds the manager
//! every dial, establishment, closure and failure, and its connection handler keeps the
//! connections the manager keeps alive (and lets transient ones close when idle).
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
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{ConnectedPoint, Endpoint, Multiaddr};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use tracing::debug;

use crate::codec::PeerTag;
use crate::config::{Authorization, Config};
use crate::connmgr::{ConnManager, Deny, Direction, Settings};
use crate::metrics::NetMetrics;
use crate::peers::ip_of;
use crate::rate::TokenBucket;

/// The most peers blocked at once; beyond it the block expiring first is dropped.
const MAX_BLOCKED: usize = 65_536;
/// Dials approved by the actor and not yet seen by the gate, at most (each is seen at once, in
/// the same `Swarm::dial` call, or fails there).
const MAX_APPROVED: usize = 1024;

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
    #[error("at capacity: target + slack + excess peers connected")]
    OverCapacity,
    #[error("peer was pruned recently")]
    Pruned,
    #[error("at target degree: dial not needed")]
    AtTarget,
    #[error("below target, but the last dials found no room: paced")]
    Paced,
}

impl From<Deny> for Refusal {
    fn from(d: Deny) -> Self {
        match d {
            Deny::OverCapacity => Refusal::OverCapacity,
            Deny::Pruned => Refusal::Pruned,
            Deny::AtTarget => Refusal::AtTarget,
            Deny::Paced => Refusal::Paced,
        }
    }
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Refusal::HandshakeRate => "handshake_rate",
            Refusal::PerIp => "per_ip",
            Refusal::Blocked => "blocked",
            Refusal::Unauthorized => "unauthorized",
            Refusal::OverCapacity => "over_capacity",
            Refusal::Pruned => "pruned",
            Refusal::AtTarget => "at_target",
            Refusal::Paced => "paced",
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
    /// Whom the node stays connected to.
    pub manager: ConnManager,
    /// Dials the actor asked for, by connection id, until the gate sees them.
    approved: HashSet<ConnectionId>,
}

impl Behaviour {
    pub fn new(config: &Config, local: PeerId, metrics: NetMetrics, codec_peer: PeerTag) -> Self {
        let now = Instant::now();
        let mut manager = ConnManager::new(Settings::from_config(config), local, now);
        for peer in &config.allow_list {
            manager.protect(*peer);
        }
        Behaviour {
            mode: config.authorization,
            allow: config.allow_list.iter().copied().collect(),
            authorized: HashSet::new(),
            blocked: HashMap::new(),
            max_per_ip: config.max_connections_per_ip,
            per_ip: HashMap::new(),
            conn_ip: HashMap::new(),
            handshakes: TokenBucket::new(config.inbound_handshake_rate, now),
            metrics,
            codec_peer,
            manager,
            approved: HashSet::new(),
        }
    }

    /// The actor is about to dial `conn` on purpose (the manager's choice, a bootstrap or static
    /// peer, `NetHandle::dial`): let it through whatever the degree.
    pub fn approve_dial(&mut self, conn: ConnectionId) {
        if self.approved.len() >= MAX_APPROVED {
            // Cannot happen (each approval is consumed in the same `Swarm::dial`); stay bounded.
            self.approved.clear();
        }
        self.approved.insert(conn);
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

    /// When the first block ends, if any peer is blocked.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.blocked.values().min().copied()
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
    type ConnectionHandler = KeepAlive;
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
        // The earliest point libp2p offers: the TCP accept has happened, Noise has not started.
        self.manager
            .admit_inbound()
            .map_err(|d| self.refuse(d.into(), None, remote_addr))
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
        let keep = self
            .manager
            .admit_inbound_peer(&peer, Instant::now())
            .map_err(|d| self.refuse(d.into(), Some(peer), remote_addr))?;
        self.codec_peer.set(peer);
        Ok(KeepAlive { keep })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        _effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        let approved = self.approved.remove(&connection_id);
        let addr = addresses.first().cloned().unwrap_or_else(Multiaddr::empty);
        if let Some(peer) = maybe_peer {
            self.check_peer(peer, &addr)?;
        }
        match self
            .manager
            .allow_outbound(connection_id, maybe_peer, approved, Instant::now())
        {
            Ok(kind) => {
                self.metrics.dialed(kind.label());
                Ok(vec![])
            }
            Err(d) => Err(self.refuse(d.into(), maybe_peer, &addr)),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check_peer(peer, addr)?;
        self.codec_peer.set(peer);
        Ok(KeepAlive {
            keep: self.manager.keeps_dial(&connection_id),
        })
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
                let dir = if e.endpoint.is_dialer() {
                    Direction::Outbound
                } else {
                    Direction::Inbound
                };
                self.manager
                    .established(e.peer_id, e.connection_id, dir, Instant::now());
            }
            FromSwarm::DialFailure(e) => {
                self.approved.remove(&e.connection_id);
                self.manager.dial_failed(e.connection_id);
            }
            FromSwarm::ConnectionClosed(e) => {
                self.manager
                    .closed(&e.peer_id, e.connection_id, Instant::now());
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

/// The gate's connection handler: no protocol, only a say in whether the connection stays open.
/// `keep` is true for the connections the manager keeps (a 10 s idle timeout would close them
/// otherwise), false for transient ones (a request or a DHT query at target), which then close
/// once idle.
pub(crate) struct KeepAlive {
    keep: bool,
}

impl ConnectionHandler for KeepAlive {
    /// A new verdict: keep the connection alive or not.
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn on_behaviour_event(&mut self, keep: bool) {
        self.keep = keep;
    }

    fn connection_keep_alive(&self) -> bool {
        self.keep
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        _: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        // `DeniedUpgrade` negotiates nothing: no stream ever reaches this handler.
    }
}
