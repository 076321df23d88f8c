//! The connection manager: whom the node stays connected to.
//!
//! A pure state machine (no I/O, no clock: every call that needs the time takes `now`), owned by
//! the [`gate`](crate::gate), which sees every connection first and enforces its decisions; the
//! actor feeds it what the other behaviours learn (candidates, mesh, round trips) and carries out
//! what it asks for (dials, walks, prunes, re-bootstraps). The shape is Lighthouse's
//! `peer_manager`.
//!
//! With `T` = [`Config::target_peers`], `S` = [`Config::slack`], `E` = [`Config::excess`] and
//! `O = ceil(T / 3)`:
//!
//! - **Dialing.** The node dials on its own initiative only while `connected + dialing < T`, at
//!   most [`Config::max_concurrent_dials`] at once. Candidates (peers seen in the routing table,
//!   by Identify or mDNS) are tried protected peers first, then the most recently seen. Every
//!   attempt backs the candidate off (`redial_backoff`, doubling up to `max_redial_backoff`);
//!   a connection resets it. Dials other behaviours start (Kademlia queries) are allowed below
//!   `T` only; purposeful ones (a request to a peer, an approved dial) always. The node's own
//!   dials (the manager's and Kademlia's) are paced: after a failed one the next waits
//!   `redial_backoff`, doubling with each further failure up to `kad_bootstrap_interval`, and
//!   a connection resets the pace. A node that cannot find room (every candidate full, or
//!   pruned it) so slows down to one attempt per slowest walk instead of cycling through its
//!   candidates.
//! - **Inbound.** Accepted while `connected < T + S + E`, refused before Noise beyond. The band
//!   `T + S .. T + S + E` lets a newcomer in when everyone is "full"; pruning brings the node
//!   back to `T + S`.
//! - **Pruning** (every `prune_interval`). Above `T + S` the excess is disconnected: transient
//!   peers first (connections opened for one request while at target), then inbound peers in
//!   no GossipSub mesh, inbound mesh peers, and outbound peers while more than `O` remain.
//!   Within a class the highest round trip goes first, ties broken by `blake3(local || peer)`
//!   (stable, different on every node). Protected peers (static, allow list), peers with a
//!   request in flight and peers connected less than one `prune_interval` ago are not pruned:
//!   a newcomer dialed us because it needs a peer, so an older peer goes instead (it has had
//!   time to find others). A pruned peer is neither dialed nor kept for `prune_backoff` (it may
//!   still connect to us, for a request, as a transient peer), so two nodes cannot ping-pong; a candidate's redial backoff grows up to `prune_backoff` too,
//!   since a refused dial most likely met a peer that pruned us or is full.
//! - **Shunning.** A peer that closes a kept connection we dialed (it pruned us, or stopped) is
//!   neither dialed by the manager nor let through for Kademlia for `prune_backoff`; a request
//!   may still reach it. Without this the peer's backoff, reset by the connection's success,
//!   sent us straight back to a peer that had just pruned us.
//! - **Walks.** A Kademlia walk is due only below `T`, every `walk_interval`, doubling up to
//!   `kad_bootstrap_interval` while walks add no candidate.
//! - **Isolation.** No peer for `isolation_grace`, or fewer than `O` for ten prune rounds: the
//!   node re-bootstraps (the actor re-dials its bootstrap peers), every candidate's backoff and
//!   every prune backoff is forgiven, and a walk starts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};

use crate::config::Config;

/// Candidates remembered at most; beyond, the one seen longest ago is forgotten.
const MAX_CANDIDATES: usize = 2048;
/// Addresses kept per candidate.
const MAX_ADDRS: usize = 8;
/// Prune rounds below `O` peers after which the node counts as isolated.
const LOW_ROUNDS: u32 = 10;
/// A dialed connection counts as a success once it has stayed up this long. A peer without
/// room refuses us only after the handshake when it learns who we are (pruned, or filled
/// meanwhile), and that looks like a connection that closes at once: a failure.
/// 12 s: longer than the 10 s idle timeout of both presets, so that a connection a peer that
/// pruned us admits as transient (and closes once idle) counts as a refusal too.
pub(crate) const STABLE: Duration = Duration::from_secs(12);
/// Dialed connections awaiting [`STABLE`], at most (beyond, they are not tracked: no pace reset).
const MAX_UNCONFIRMED: usize = 256;

/// Which side opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The remote dialed us.
    Inbound,
    /// We dialed.
    Outbound,
}

/// Why the manager refuses a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deny {
    /// Inbound while `connected >= T + S + E`.
    OverCapacity,
    /// A peer pruned less than `prune_backoff` ago.
    Pruned,
    /// A dial nobody asked for while `connected + dialing >= T`.
    AtTarget,
    /// A dial nobody asked for below `T`, before the pace allows the next one.
    Paced,
}

/// Why a dial is let through (for `agora_net_dials_total{source}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DialKind {
    /// Approved by the actor (manager, bootstrap, static, `NetHandle::dial`): a kept peer.
    Approved,
    /// Started by another behaviour below target (Kademlia): a kept peer.
    Discovery,
    /// A request to this peer, or a user DHT query, while at target: not kept.
    Purposeful,
}

impl DialKind {
    pub fn label(self) -> &'static str {
        match self {
            DialKind::Approved => "approved",
            DialKind::Discovery => "discovery",
            DialKind::Purposeful => "purposeful",
        }
    }
}

/// The class a pruned peer was in (for `agora_net_pruned_total{class}`), in pruning order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum PruneClass {
    /// Connected for a request while at target.
    Transient,
    /// Inbound, in no GossipSub mesh.
    InboundIdle,
    /// Inbound, in a mesh.
    InboundMesh,
    /// Outbound, beyond the `O` kept.
    Outbound,
}

impl PruneClass {
    pub fn label(self) -> &'static str {
        match self {
            PruneClass::Transient => "transient",
            PruneClass::InboundIdle => "inbound",
            PruneClass::InboundMesh => "inbound_mesh",
            PruneClass::Outbound => "outbound",
        }
    }
}

/// The manager's numbers, derived from [`Config`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub target: usize,
    pub slack: usize,
    pub excess: usize,
    pub max_dials: usize,
    pub prune_backoff: Duration,
    pub prune_grace: Duration,
    pub redial_base: Duration,
    pub redial_max: Duration,
    pub isolation_grace: Duration,
    pub walk_min: Duration,
    pub walk_max: Duration,
}

impl Settings {
    pub fn from_config(c: &Config) -> Self {
        Settings {
            target: c.target_peers,
            slack: c.slack(),
            excess: c.excess(),
            max_dials: c.max_concurrent_dials.max(1),
            prune_backoff: c.prune_backoff,
            prune_grace: c.prune_interval,
            redial_base: c.redial_backoff,
            redial_max: c
                .max_redial_backoff
                .max(c.prune_backoff)
                .max(c.redial_backoff),
            isolation_grace: c.isolation_grace,
            walk_min: c.walk_interval,
            walk_max: c.kad_bootstrap_interval.max(c.walk_interval),
        }
    }

    /// `O`: outbound peers never pruned.
    fn min_outbound(&self) -> usize {
        self.target.div_ceil(3)
    }
}

#[derive(Debug)]
struct Peer {
    conns: HashMap<ConnectionId, Direction>,
    transient: bool,
    rtt: Option<Duration>,
    since: Instant,
}

impl Peer {
    fn outbound(&self) -> bool {
        self.conns.values().any(|d| *d == Direction::Outbound)
    }
}

#[derive(Debug)]
struct Candidate {
    addrs: Vec<Multiaddr>,
    seen: Instant,
    retry_at: Option<Instant>,
    backoff: Duration,
}

/// What the manager asks the actor to dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Dial {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

pub(crate) struct ConnManager {
    s: Settings,
    local: PeerId,
    peers: HashMap<PeerId, Peer>,
    dialing: HashMap<ConnectionId, (Option<PeerId>, DialKind)>,
    candidates: HashMap<PeerId, Candidate>,
    protected: HashSet<PeerId>,
    busy: HashMap<PeerId, Instant>,
    pruned: HashMap<PeerId, Instant>,
    /// Peers that closed a kept connection on us (most likely they pruned us), until when we
    /// leave them alone: neither the manager nor Kademlia dials them (requests still may).
    shunned: HashMap<PeerId, Instant>,
    mesh: HashSet<PeerId>,
    user_queries: usize,
    alone_since: Option<Instant>,
    last_rebootstrap: Option<Instant>,
    low_rounds: u32,
    next_walk: Instant,
    walk_every: Duration,
    candidates_at_walk: usize,
    /// The node's own next dial (manager or discovery) waits until then...
    next_dial: Instant,
    /// ...and the one after a failure `pace` later (doubling while they fail).
    pace: Duration,
    /// Our own dials that connected, until they have lived [`STABLE`].
    unconfirmed: HashMap<ConnectionId, (PeerId, Instant)>,
}

impl ConnManager {
    pub fn new(s: Settings, local: PeerId, now: Instant) -> Self {
        ConnManager {
            walk_every: s.walk_min,
            pace: s.redial_base,
            s,
            local,
            peers: HashMap::new(),
            dialing: HashMap::new(),
            candidates: HashMap::new(),
            protected: HashSet::new(),
            busy: HashMap::new(),
            pruned: HashMap::new(),
            shunned: HashMap::new(),
            mesh: HashSet::new(),
            user_queries: 0,
            alone_since: Some(now),
            last_rebootstrap: None,
            low_rounds: 0,
            next_walk: now,
            candidates_at_walk: 0,
            next_dial: now,
            unconfirmed: HashMap::new(),
        }
    }

    /// Connected peers (transient ones included).
    #[cfg(test)]
    pub fn connected(&self) -> usize {
        self.peers.len()
    }

    /// Connected peers with an outbound connection, and the rest.
    pub fn by_direction(&self) -> (usize, usize) {
        let out = self.peers.values().filter(|p| p.outbound()).count();
        (out, self.peers.len() - out)
    }

    /// Whether any peer is known to dial.
    pub fn has_candidates(&self) -> bool {
        !self.candidates.is_empty()
    }

    /// Static and allow-list peers: dialed first, never pruned, never refused at target.
    pub fn protect(&mut self, peer: PeerId) {
        self.protected.insert(peer);
    }

    /// A request to `peer` is in flight until `until`: it may be dialed at target, and is not
    /// pruned meanwhile.
    pub fn busy(&mut self, peer: PeerId, until: Instant) {
        self.busy.insert(peer, until);
    }

    /// User DHT queries (provide, find providers) running now: their dials are let through.
    pub fn set_user_queries(&mut self, n: usize) {
        self.user_queries = n;
    }

    /// The peers in any GossipSub mesh now.
    pub fn mesh_peers(&mut self, set: HashSet<PeerId>) {
        self.mesh = set;
    }

    /// The last ping round trip to `peer`.
    pub fn rtt(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.rtt = Some(rtt);
        }
    }

    /// A peer we could dial, with addresses to try.
    pub fn candidate(&mut self, peer: PeerId, addrs: &[Multiaddr], now: Instant) {
        if peer == self.local {
            return;
        }
        if !self.candidates.contains_key(&peer) && self.candidates.len() >= MAX_CANDIDATES {
            let oldest = self
                .candidates
                .iter()
                .filter(|(p, _)| !self.protected.contains(*p))
                .min_by_key(|(_, c)| c.seen)
                .map(|(p, _)| *p);
            match oldest {
                Some(p) => {
                    self.candidates.remove(&p);
                }
                None => return,
            }
        }
        let base = self.s.redial_base;
        let c = self.candidates.entry(peer).or_insert_with(|| Candidate {
            addrs: vec![],
            seen: now,
            retry_at: None,
            backoff: base,
        });
        c.seen = now;
        for a in addrs {
            if !c.addrs.contains(a) {
                c.addrs.insert(0, a.clone());
            }
        }
        c.addrs.truncate(MAX_ADDRS);
    }

    fn pruned_now(&self, peer: &PeerId, now: Instant) -> bool {
        self.pruned.get(peer).is_some_and(|until| *until > now)
    }

    fn shunned_now(&self, peer: &PeerId, now: Instant) -> bool {
        self.shunned.get(peer).is_some_and(|until| *until > now)
    }

    /// `peer` closed a kept connection on us: leave it alone for a prune backoff.
    fn shun(&mut self, peer: PeerId, now: Instant) {
        if self.shunned.len() >= MAX_CANDIDATES {
            self.shunned.retain(|_, until| *until > now);
        }
        if self.shunned.len() < MAX_CANDIDATES {
            self.shunned.insert(peer, now + self.s.prune_backoff);
        }
    }

    fn busy_now(&self, peer: &PeerId, now: Instant) -> bool {
        self.busy.get(peer).is_some_and(|until| *until > now)
    }

    /// A pending inbound connection, peer not yet known: refused at `T + S + E`.
    pub fn admit_inbound(&self) -> Result<(), Deny> {
        if self.peers.len() >= self.s.target + self.s.slack + self.s.excess {
            Err(Deny::OverCapacity)
        } else {
            Ok(())
        }
    }

    /// An inbound connection whose peer is now known: refused (a new peer) when handshakes in
    /// flight have filled `T + S + E` meanwhile. `Ok(true)`: kept. `Ok(false)`: a peer pruned
    /// less than `prune_backoff` ago, admitted as transient (it may have a request for us) but
    /// not kept alive, and the first to go at the next prune.
    pub fn admit_inbound_peer(&self, peer: &PeerId, now: Instant) -> Result<bool, Deny> {
        if self.protected.contains(peer) || self.peers.contains_key(peer) {
            Ok(true)
        } else {
            self.admit_inbound().map(|()| !self.pruned_now(peer, now))
        }
    }

    /// Whether the dial in flight on `conn` will be a kept connection (not a transient one).
    pub fn keeps_dial(&self, conn: &ConnectionId) -> bool {
        self.dialing
            .get(conn)
            .is_none_or(|(_, k)| *k != DialKind::Purposeful)
    }

    /// A pending outbound connection `conn` (to `peer` where known). `approved` when the actor
    /// asked for it. Allowed dials are recorded as in flight until [`Self::established`] or
    /// [`Self::dial_failed`].
    pub fn allow_outbound(
        &mut self,
        conn: ConnectionId,
        peer: Option<PeerId>,
        approved: bool,
        now: Instant,
    ) -> Result<DialKind, Deny> {
        let purposeful = self.user_queries > 0
            || peer.is_some_and(|p| self.busy_now(&p, now) || self.protected.contains(&p));
        let kind = if approved {
            DialKind::Approved
        } else if peer.is_some_and(|p| self.pruned_now(&p, now) || self.shunned_now(&p, now))
            && !purposeful
        {
            return Err(Deny::Pruned);
        } else if self.peers.len() + self.dialing.len() < self.s.target && now >= self.next_dial {
            self.next_dial = now + self.pace;
            DialKind::Discovery
        } else if purposeful {
            DialKind::Purposeful
        } else if self.peers.len() + self.dialing.len() < self.s.target {
            return Err(Deny::Paced);
        } else {
            return Err(Deny::AtTarget);
        };
        self.dialing.insert(conn, (peer, kind));
        Ok(kind)
    }

    /// A dial failed (or was denied further on).
    pub fn dial_failed(&mut self, conn: ConnectionId) {
        if let Some((_, kind)) = self.dialing.remove(&conn)
            && kind != DialKind::Purposeful
        {
            self.slow_down();
        }
    }

    /// Our own dial met no room: the next one waits twice as long.
    fn slow_down(&mut self) {
        self.pace = (self.pace * 2).min(self.s.walk_max.max(self.s.redial_base));
    }

    /// Dialed connections that have lived [`STABLE`] are successes: the pace and their
    /// candidate's backoff start over.
    fn confirm(&mut self, now: Instant) {
        if self.unconfirmed.is_empty() {
            return;
        }
        let done: Vec<(ConnectionId, PeerId)> = self
            .unconfirmed
            .iter()
            .filter(|(_, (_, at))| now.saturating_duration_since(*at) >= STABLE)
            .map(|(c, (p, _))| (*c, *p))
            .collect();
        for (conn, peer) in done {
            self.unconfirmed.remove(&conn);
            self.pace = self.s.redial_base;
            if let Some(c) = self.candidates.get_mut(&peer) {
                c.backoff = self.s.redial_base;
                c.retry_at = None;
            }
        }
    }

    /// A connection is up. Returns whether the node keeps it (keep-alive), false for a
    /// transient one.
    pub fn established(
        &mut self,
        peer: PeerId,
        conn: ConnectionId,
        dir: Direction,
        now: Instant,
    ) -> bool {
        let kind = self.dialing.remove(&conn).map(|(_, k)| k);
        let transient = (dir == Direction::Outbound && kind == Some(DialKind::Purposeful))
            || (dir == Direction::Inbound
                && !self.peers.contains_key(&peer)
                && !self.protected.contains(&peer)
                && self.pruned_now(&peer, now));
        if kind.is_some() && !transient && self.unconfirmed.len() < MAX_UNCONFIRMED {
            self.unconfirmed.insert(conn, (peer, now));
        }
        let p = self.peers.entry(peer).or_insert(Peer {
            conns: HashMap::new(),
            transient,
            rtt: None,
            since: now,
        });
        p.transient &= transient;
        p.conns.insert(conn, dir);
        let keep = !p.transient;
        self.alone_since = None;
        keep
    }

    /// A connection closed.
    pub fn closed(&mut self, peer: &PeerId, conn: ConnectionId, now: Instant) {
        let refused = self
            .unconfirmed
            .remove(&conn)
            .is_some_and(|(_, at)| now.saturating_duration_since(at) < STABLE);
        if refused {
            // It pruned us or filled up: it would refuse us again until its prune backoff ends.
            self.slow_down();
            if let Some(c) = self.candidates.get_mut(peer) {
                c.backoff = self.s.redial_max;
            }
        }
        if let Some(p) = self.peers.get_mut(peer) {
            // Only a connection we dialed: a peer that dialed us for one request closes it
            // when idle, which is no sign that it pruned us.
            let kept = !p.transient && p.conns.get(&conn) == Some(&Direction::Outbound);
            p.conns.remove(&conn);
            if p.conns.is_empty() {
                self.peers.remove(peer);
                // A kept peer we did not prune went away: it pruned us (or it stopped). Dialing
                // it again at once would only meet its prune backoff, or a transient admission
                // that it closes when idle: the churn that keeps a bootstrap node above its
                // degree. The dialer still re-dials bootstrap and static peers on isolation.
                if kept && !refused && !self.pruned_now(peer, now) && !self.protected.contains(peer)
                {
                    self.shun(*peer, now);
                }
                if let Some(c) = self.candidates.get_mut(peer) {
                    c.retry_at = Some(now + c.backoff);
                }
            }
        }
        if self.peers.is_empty() && self.alone_since.is_none() {
            self.alone_since = Some(now);
        }
    }

    /// Whether the node keeps `peer` (not transient).
    #[cfg(test)]
    pub fn keep(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| !p.transient)
    }

    /// Peers to dial now: at most `T - connected - dialing`, and at most `max_concurrent_dials`
    /// in flight. Each is backed off until it connects.
    pub fn dials(&mut self, now: Instant) -> Vec<Dial> {
        self.confirm(now);
        let busy = self.peers.len() + self.dialing.len();
        let room = self
            .s
            .target
            .saturating_sub(busy)
            .min(self.s.max_dials.saturating_sub(self.dialing.len()));
        let mut out: Vec<Dial> = Vec::new();
        if room == 0 || now < self.next_dial {
            // At target (the common case, every tick), or paced: nothing to sort.
            return out;
        }
        let in_flight: HashSet<PeerId> = self.dialing.values().filter_map(|(p, _)| *p).collect();
        let mut pick: Vec<(bool, Instant, PeerId)> = self
            .candidates
            .iter()
            .filter(|(p, c)| {
                !self.peers.contains_key(*p)
                    && !in_flight.contains(*p)
                    && !c.addrs.is_empty()
                    && c.retry_at.is_none_or(|t| t <= now)
                    && !self.pruned_now(p, now)
                    && !self.shunned_now(p, now)
            })
            .map(|(p, c)| (self.protected.contains(p), c.seen, *p))
            .collect();
        if pick.is_empty() {
            return out;
        }
        // Protected first, then the most recently seen; ties by peer id for determinism.
        pick.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        self.next_dial = now + self.pace;
        for (_, _, peer) in pick.into_iter().take(room) {
            let Some(c) = self.candidates.get_mut(&peer) else {
                continue;
            };
            c.retry_at = Some(now + c.backoff);
            c.backoff = (c.backoff * 2).min(self.s.redial_max);
            out.push(Dial {
                peer,
                addrs: c.addrs.clone(),
            });
        }
        out
    }

    fn class(&self, peer: &PeerId, p: &Peer) -> PruneClass {
        if p.transient {
            PruneClass::Transient
        } else if p.outbound() {
            PruneClass::Outbound
        } else if self.mesh.contains(peer) {
            PruneClass::InboundMesh
        } else {
            PruneClass::InboundIdle
        }
    }

    fn tie(&self, peer: &PeerId) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.local.to_bytes());
        h.update(&peer.to_bytes());
        *h.finalize().as_bytes()
    }

    /// The prune round: the peers to disconnect now (each then backed off), with their class.
    /// Also advances the "too few peers" counter of [`Self::isolated`].
    pub fn prune(&mut self, now: Instant) -> Vec<(PeerId, PruneClass)> {
        self.busy.retain(|_, until| *until > now);
        self.pruned.retain(|_, until| *until > now);
        if self.peers.len() < self.s.min_outbound() {
            self.low_rounds += 1;
        } else {
            self.low_rounds = 0;
        }
        let keep = self.s.target + self.s.slack;
        if self.peers.len() <= keep {
            return vec![];
        }
        let mut excess = self.peers.len() - keep;
        let mut order: Vec<(PruneClass, Duration, [u8; 32], PeerId)> = self
            .peers
            .iter()
            .filter(|(peer, p)| {
                !self.protected.contains(*peer)
                    && !self.busy_now(peer, now)
                    && (p.transient || now.saturating_duration_since(p.since) >= self.s.prune_grace)
            })
            .map(|(peer, p)| {
                let rtt = p.rtt.unwrap_or(Duration::ZERO);
                (self.class(peer, p), rtt, self.tie(peer), *peer)
            })
            .collect();
        // Class ascending, then the highest round trip, then the tie-break hash.
        order.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
        let (mut outbound, _) = self.by_direction();
        let min_out = self.s.min_outbound();
        let mut out = vec![];
        for (class, _, _, peer) in order {
            if excess == 0 {
                break;
            }
            let is_out = self.peers.get(&peer).is_some_and(|p| p.outbound());
            if is_out && class != PruneClass::Transient {
                if outbound <= min_out {
                    continue;
                }
                outbound -= 1;
            }
            out.push((peer, class));
            self.pruned.insert(peer, now + self.s.prune_backoff);
            excess -= 1;
        }
        out
    }

    /// Whether the node must re-bootstrap now. When it says so, every backoff is forgiven.
    pub fn isolated(&mut self, now: Instant) -> bool {
        let alone = self
            .alone_since
            .is_some_and(|t| now.saturating_duration_since(t) >= self.s.isolation_grace);
        let recent = self
            .last_rebootstrap
            .is_some_and(|t| now.saturating_duration_since(t) < self.s.isolation_grace);
        let low = self.low_rounds >= LOW_ROUNDS;
        if !(alone || low) || recent || self.s.target == 0 {
            return false;
        }
        self.last_rebootstrap = Some(now);
        self.low_rounds = 0;
        self.pruned.clear();
        self.shunned.clear();
        for c in self.candidates.values_mut() {
            c.retry_at = None;
            c.backoff = self.s.redial_base;
        }
        self.next_walk = now;
        self.walk_every = self.s.walk_min;
        self.next_dial = now;
        self.pace = self.s.redial_base;
        true
    }

    /// Whether the manager has work on its short tick: the node is below target (dials, walks,
    /// isolation), or dials are in flight. At target with nothing in flight it needs only the
    /// prune round, so the runtime sleeps until then instead of ticking.
    pub fn wants_ticks(&self) -> bool {
        self.peers.len() < self.s.target || !self.dialing.is_empty() || self.alone_since.is_some()
    }

    /// Whether a Kademlia walk is due now: only below target, at a cadence that slows down
    /// while walks find nothing new.
    pub fn walk_due(&mut self, now: Instant) -> bool {
        if self.peers.len() >= self.s.target || now < self.next_walk {
            return false;
        }
        if self.candidates.len() > self.candidates_at_walk {
            self.walk_every = self.s.walk_min;
        } else {
            self.walk_every = (self.walk_every * 2).min(self.s.walk_max);
        }
        self.candidates_at_walk = self.candidates.len();
        self.next_walk = now + self.walk_every;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// The local preset's numbers at degree `target`, without the prune grace (tests of the
    /// grace set it themselves).
    fn settings(target: usize) -> Settings {
        let mut c = Config::local();
        c.target_peers = target;
        Settings {
            prune_grace: Duration::ZERO,
            ..Settings::from_config(&c)
        }
    }

    fn id(i: u32) -> PeerId {
        let mut seed = [7u8; 32];
        seed[..4].copy_from_slice(&i.to_le_bytes());
        libp2p::identity::Keypair::ed25519_from_bytes(seed)
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn addr() -> Multiaddr {
        "/ip4/127.0.0.1/tcp/1".parse().unwrap()
    }

    fn conn(n: usize) -> ConnectionId {
        ConnectionId::new_unchecked(n)
    }

    /// Connects `peer` to `m` on connection `n`, dialed by us (approved) or by them.
    fn link(m: &mut ConnManager, peer: PeerId, n: usize, dir: Direction, now: Instant) -> bool {
        if dir == Direction::Outbound {
            m.allow_outbound(conn(n), Some(peer), true, now).unwrap();
        }
        m.established(peer, conn(n), dir, now)
    }

    #[test]
    fn dials_never_exceed_the_room_below_target() {
        let now = Instant::now();
        let mut m = ConnManager::new(settings(4), id(0), now);
        for i in 1..=20 {
            m.candidate(id(i), &[addr()], now);
        }
        link(&mut m, id(1), 1, Direction::Inbound, now);
        m.allow_outbound(conn(2), None, true, now).unwrap();
        // T = 4, one connected, one dialing: two more at most.
        let d = m.dials(now);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d.iter().all(|d| d.peer != id(1)), "dials a connected peer");
        for (k, d) in d.iter().enumerate() {
            m.allow_outbound(conn(10 + k), Some(d.peer), true, now)
                .unwrap();
        }
        assert!(
            m.dials(now).is_empty(),
            "dials beyond T - connected - dialing"
        );
        // Dials in flight are capped by max_concurrent_dials even far below target.
        let mut m = ConnManager::new(settings(32), id(0), now);
        for i in 1..=20 {
            m.candidate(id(i), &[addr()], now);
        }
        assert_eq!(m.dials(now).len(), 4);
        // At target: no dial, and a dial nobody asked for is refused.
        let mut m = ConnManager::new(settings(2), id(0), now);
        m.candidate(id(9), &[addr()], now);
        link(&mut m, id(1), 1, Direction::Inbound, now);
        link(&mut m, id(2), 2, Direction::Outbound, now);
        assert!(m.dials(now).is_empty());
        assert_eq!(
            m.allow_outbound(conn(3), Some(id(9)), false, now),
            Err(Deny::AtTarget)
        );
        // ...unless purposeful: then the connection is not kept.
        m.busy(id(9), now + Duration::from_secs(30));
        assert_eq!(
            m.allow_outbound(conn(3), Some(id(9)), false, now),
            Ok(DialKind::Purposeful)
        );
        assert!(!m.established(id(9), conn(3), Direction::Outbound, now));
        assert!(!m.keep(&id(9)) && m.keep(&id(1)));
    }

    #[test]
    fn inbound_is_refused_beyond_target_slack_and_excess() {
        let now = Instant::now();
        let s = settings(4);
        let cap = s.target + s.slack + s.excess;
        let mut m = ConnManager::new(s, id(0), now);
        for i in 0..cap {
            assert_eq!(m.admit_inbound(), Ok(()));
            link(&mut m, id(i as u32 + 1), i, Direction::Inbound, now);
        }
        assert_eq!(m.admit_inbound(), Err(Deny::OverCapacity));
    }

    #[test]
    fn prune_order_spares_protected_busy_and_the_outbound_floor() {
        let now = Instant::now();
        // T = 3, S = 2 (keep 5), O = 1.
        let mut s = settings(3);
        s.slack = 2;
        let mut m = ConnManager::new(s, id(0), now);
        let transient = id(1);
        m.busy(transient, now + Duration::from_millis(1));
        let [idle_slow, idle_fast, mesh, protected, busy, out_a, out_b] =
            [2, 3, 4, 5, 6, 7, 8].map(id);
        for (n, p) in [idle_slow, idle_fast, mesh, protected, busy]
            .into_iter()
            .enumerate()
        {
            link(&mut m, p, n, Direction::Inbound, now);
        }
        link(&mut m, out_a, 10, Direction::Outbound, now);
        link(&mut m, out_b, 11, Direction::Outbound, now);
        // Now at 7 >= T: the next unasked dial is purposeful (transient).
        m.allow_outbound(conn(12), Some(transient), false, now)
            .unwrap();
        assert!(!m.established(transient, conn(12), Direction::Outbound, now));
        m.protect(protected);
        m.busy(busy, now + Duration::from_secs(60));
        m.mesh_peers([mesh].into());
        m.rtt(&idle_slow, Duration::from_millis(90));
        m.rtt(&idle_fast, Duration::from_millis(5));
        m.rtt(&out_a, Duration::from_millis(50));
        m.rtt(&out_b, Duration::from_millis(1));
        // 8 connected, keep 5: three go.
        let later = now + Duration::from_secs(1);
        let p = m.prune(later);
        assert_eq!(
            p,
            vec![
                (transient, PruneClass::Transient),
                (idle_slow, PruneClass::InboundIdle),
                (idle_fast, PruneClass::InboundIdle),
            ]
        );
        for (peer, _) in &p {
            let n = [transient, idle_slow, idle_fast]
                .iter()
                .position(|x| x == peer)
                .unwrap();
            m.closed(peer, conn([12, 0, 1][n]), later);
        }
        assert!(m.prune(later).is_empty(), "prunes below T + S");
        // Three more inbound: the mesh peer goes, then outbound beyond O (the slowest first),
        // never the protected or the busy peer, never the last outbound peer.
        for (n, i) in [20, 21, 22].into_iter().enumerate() {
            link(&mut m, id(i), 30 + n, Direction::Inbound, later);
            m.mesh_peers([mesh, id(20), id(21), id(22)].into());
        }
        let p = m.prune(later);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().all(|(c, _)| *c != protected && *c != busy));
        assert!(p.iter().all(|(_, class)| *class == PruneClass::InboundMesh));

        // Outbound peers only, T + S exceeded: the slowest go first, O = 1 always stays.
        let mut s = settings(3);
        s.slack = 0;
        let mut m = ConnManager::new(s, id(0), now);
        for (n, i) in [40, 41, 42, 43, 44].into_iter().enumerate() {
            link(&mut m, id(i), n, Direction::Outbound, now);
            m.rtt(&id(i), Duration::from_millis(10 * u64::from(i - 39)));
        }
        let p = m.prune(now);
        assert_eq!(
            p,
            vec![
                (id(44), PruneClass::Outbound),
                (id(43), PruneClass::Outbound)
            ]
        );
        // With O = 1 and two outbound peers of five, only one inbound can go beyond O.
        let mut s = settings(3);
        s.slack = 0;
        s.target = 1;
        let mut m = ConnManager::new(s, id(0), now);
        link(&mut m, id(50), 1, Direction::Outbound, now);
        link(&mut m, id(51), 2, Direction::Outbound, now);
        m.protect(id(52));
        link(&mut m, id(52), 3, Direction::Inbound, now);
        let p = m.prune(now);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(m.by_direction().0 - 1, 1, "the outbound floor is kept");
    }

    #[test]
    fn failed_dials_slow_the_node_down_and_a_connection_resets_the_pace() {
        let now = Instant::now();
        let s = settings(4);
        let (base, max) = (s.redial_base, s.walk_max);
        let mut m = ConnManager::new(s, id(0), now);
        for i in 1..=50 {
            m.candidate(id(i), &[addr()], now);
        }
        // Every dial is refused: count the attempts over a minute, manager and discovery.
        let mut t = now;
        let (mut attempts, mut n) = (0, 0);
        let step = Duration::from_millis(250);
        while t < now + Duration::from_secs(60) {
            for d in m.dials(t) {
                n += 1;
                m.allow_outbound(conn(n), Some(d.peer), true, t).unwrap();
                m.dial_failed(conn(n));
                attempts += 1;
            }
            n += 1;
            if m.allow_outbound(conn(n), Some(id(999)), false, t).is_ok() {
                m.dial_failed(conn(n));
                attempts += 1;
            }
            t += step;
        }
        // Unpaced, four dials every tick would be ~960; paced, the gaps double up to `max`.
        let bound = 60 / max.as_secs().max(1) as usize * 5 + 20;
        assert!(
            attempts <= bound,
            "{attempts} attempts in a minute (bound {bound})"
        );
        assert_eq!(
            m.allow_outbound(conn(n + 1), Some(id(998)), false, t),
            Err(Deny::Paced)
        );
        // A connection resets the pace: the next dial may go at once after it.
        let t = t + max;
        m.allow_outbound(conn(n + 2), Some(id(1)), true, t).unwrap();
        m.established(id(1), conn(n + 2), Direction::Outbound, t);
        assert!(!m.dials(t + STABLE).is_empty());
        assert_eq!(m.pace, base);

        // A connection the remote closes at once (it refused us after the handshake) is a
        // failure, not a success.
        let mut m = ConnManager::new(settings(4), id(0), now);
        m.candidate(id(1), &[addr()], now);
        assert_eq!(m.dials(now).len(), 1);
        m.allow_outbound(conn(1), Some(id(1)), true, now).unwrap();
        m.established(id(1), conn(1), Direction::Outbound, now);
        let t = now + Duration::from_millis(20);
        m.closed(&id(1), conn(1), t);
        assert_eq!(m.pace, base * 2);
        assert!(
            m.dials(t + base).is_empty(),
            "redialed before the doubled backoff"
        );
    }

    #[test]
    fn newcomers_are_spared_for_one_round_and_older_peers_go_instead() {
        let now = Instant::now();
        // T = 2, S = 0: keep 2.
        let mut s = settings(2);
        s.slack = 0;
        s.prune_grace = Duration::from_secs(10);
        let grace = s.prune_grace;
        let mut m = ConnManager::new(s, id(0), now);
        link(&mut m, id(1), 1, Direction::Outbound, now);
        link(&mut m, id(2), 2, Direction::Inbound, now);
        link(&mut m, id(3), 3, Direction::Inbound, now);
        assert!(
            m.prune(now + grace / 2).is_empty(),
            "pruned within the grace"
        );
        let later = now + grace;
        // A newcomer arrives: the older inbound peers go first, the newcomer stays.
        link(&mut m, id(4), 4, Direction::Inbound, later);
        let p = m.prune(later);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p.iter().all(|(peer, _)| *peer != id(4)), "{p:?}");
    }

    #[test]
    fn no_redial_within_backoff_and_pruned_peers_stay_away() {
        let now = Instant::now();
        let s = settings(4);
        let (base, backoff) = (s.redial_base, s.prune_backoff);
        let mut m = ConnManager::new(s, id(0), now);
        let p = id(1);
        m.candidate(p, &[addr()], now);
        let d = m.dials(now);
        assert_eq!(d.len(), 1);
        m.allow_outbound(conn(1), Some(p), true, now).unwrap();
        m.dial_failed(conn(1));
        assert!(m.dials(now).is_empty());
        assert!(
            m.dials(now + base / 2).is_empty(),
            "re-dialed within the backoff"
        );
        assert_eq!(m.dials(now + base).len(), 1);
        m.allow_outbound(conn(2), Some(p), true, now).unwrap();
        m.dial_failed(conn(2));
        // The backoff doubled.
        assert!(m.dials(now + base + base).is_empty());
        assert_eq!(m.dials(now + base + base * 2).len(), 1);

        // A pruned peer: not dialed, not accepted, not let through by a discovery dial.
        let mut s = settings(1);
        s.slack = 0;
        let mut m = ConnManager::new(s, id(0), now);
        link(&mut m, id(2), 1, Direction::Outbound, now);
        link(&mut m, id(3), 2, Direction::Inbound, now);
        let pruned = m.prune(now);
        assert_eq!(pruned, vec![(id(3), PruneClass::InboundIdle)]);
        m.closed(&id(3), conn(2), now);
        m.closed(&id(2), conn(1), now);
        m.candidate(id(3), &[addr()], now);
        let t = now + backoff / 2;
        assert!(m.dials(t).is_empty());
        assert_eq!(
            m.admit_inbound_peer(&id(3), t),
            Ok(false),
            "admitted, not kept"
        );
        assert_eq!(
            m.allow_outbound(conn(3), Some(id(3)), false, t),
            Err(Deny::Pruned)
        );
        let t = now + backoff;
        assert_eq!(m.admit_inbound_peer(&id(3), t), Ok(true));
        assert_eq!(m.dials(t).len(), 1);
    }

    #[test]
    fn a_peer_that_closed_a_kept_connection_is_left_alone_for_a_prune_backoff() {
        let now = Instant::now();
        let s = settings(4);
        let backoff = s.prune_backoff;
        let mut m = ConnManager::new(s, id(0), now);
        m.candidate(id(1), &[addr()], now);
        m.candidate(id(2), &[addr()], now);
        // A stable connection to 1 (it lived past STABLE), then 1 closes it: it pruned us.
        link(&mut m, id(1), 1, Direction::Outbound, now);
        let later = now + STABLE + Duration::from_secs(1);
        assert!(m.dials(later).iter().all(|d| d.peer != id(1)));
        m.closed(&id(1), conn(1), later);
        let t = later + backoff / 2;
        let d = m.dials(t);
        assert!(
            d.iter().all(|d| d.peer != id(1)),
            "re-dialed a peer that just closed on us: {d:?}"
        );
        assert!(d.iter().any(|d| d.peer == id(2)), "others are still dialed");
        // Kademlia may not dial it either; a request may.
        assert_eq!(
            m.allow_outbound(conn(5), Some(id(1)), false, t),
            Err(Deny::Pruned)
        );
        m.busy(id(1), t + Duration::from_secs(30));
        assert_eq!(
            m.allow_outbound(conn(6), Some(id(1)), false, t),
            Ok(DialKind::Purposeful)
        );
        m.dial_failed(conn(6));
        // After the backoff it is a candidate again.
        let t = later + backoff;
        assert!(m.dials(t).iter().any(|d| d.peer == id(1)));

        // A peer we pruned ourselves is not shunned (it is in our prune backoff instead), and a
        // transient peer closing is no sign either.
        let mut m = ConnManager::new(settings(1), id(0), now);
        link(&mut m, id(4), 4, Direction::Inbound, now);
        m.busy(id(3), now + Duration::from_secs(30));
        m.allow_outbound(conn(7), Some(id(3)), false, now).unwrap();
        assert!(!m.established(id(3), conn(7), Direction::Outbound, now));
        m.closed(&id(3), conn(7), now);
        assert!(!m.shunned_now(&id(3), now));
    }

    #[test]
    fn isolation_re_bootstraps_once_per_grace() {
        let now = Instant::now();
        let s = settings(4);
        let grace = s.isolation_grace;
        let mut m = ConnManager::new(s, id(0), now);
        m.candidate(id(1), &[addr()], now);
        assert_eq!(m.dials(now).len(), 1);
        m.allow_outbound(conn(1), Some(id(1)), true, now).unwrap();
        m.dial_failed(conn(1));
        assert!(!m.isolated(now + grace / 2));
        assert!(m.isolated(now + grace));
        // Backoffs are forgiven: the candidate is dialed at once.
        assert_eq!(m.dials(now + grace).len(), 1);
        assert!(m.walk_due(now + grace));
        assert!(
            !m.isolated(now + grace + grace / 2),
            "re-bootstraps in a loop"
        );
        assert!(m.isolated(now + grace * 2));
        // A connected node is not isolated.
        let mut m = ConnManager::new(settings(4), id(0), now);
        link(&mut m, id(1), 1, Direction::Inbound, now);
        link(&mut m, id(2), 2, Direction::Inbound, now);
        assert!(!m.isolated(now + grace * 10));
        // Fewer than O peers for ten rounds is isolation too.
        let mut m = ConnManager::new(settings(12), id(0), now);
        link(&mut m, id(1), 1, Direction::Inbound, now);
        for r in 0..LOW_ROUNDS {
            assert!(!m.isolated(now + grace * 10) || r > 0);
            m.prune(now);
        }
        assert!(m.isolated(now + grace * 20));
    }

    #[test]
    fn walks_only_below_target_and_slow_down_when_fruitless() {
        let now = Instant::now();
        let s = settings(2);
        let (min, max) = (s.walk_min, s.walk_max);
        let mut m = ConnManager::new(s, id(0), now);
        assert!(m.walk_due(now));
        assert!(!m.walk_due(now + min / 2));
        // Nothing found: the next one waits twice as long, up to the slowest cadence.
        let mut t = now;
        let mut gaps = vec![];
        for _ in 0..8 {
            let mut next = t + Duration::from_millis(100);
            while !m.walk_due(next) {
                next += Duration::from_millis(100);
            }
            gaps.push(next - t);
            t = next;
        }
        assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "{gaps:?}");
        assert!(*gaps.last().unwrap() <= max + Duration::from_millis(100));
        link(&mut m, id(1), 1, Direction::Inbound, t);
        link(&mut m, id(2), 2, Direction::Inbound, t);
        assert!(!m.walk_due(t + max * 10), "walks at target");
    }

    /// N nodes bootstrapping to four hubs, in memory: every node must end inside
    /// `[min(T, N - 1), T + S]` and then dial and prune nothing more (oscillation would show as
    /// dials until the end).
    struct Sim {
        nodes: Vec<ConnManager>,
        ids: Vec<PeerId>,
        index: HashMap<PeerId, usize>,
        links: HashMap<(usize, usize), Vec<ConnectionId>>,
        pending: Vec<(usize, usize, ConnectionId)>,
        next: usize,
        rng: StdRng,
        dials: u64,
        prunes: u64,
    }

    const HUBS: usize = 4;

    impl Sim {
        fn new(n: usize, target: usize, now: Instant) -> Sim {
            let ids: Vec<PeerId> = (0..n as u32).map(|i| id(i + 1000)).collect();
            let nodes = ids
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    // With the preset's grace: a newcomer survives its first prune round.
                    let mut s = Settings {
                        prune_grace: Config::local().prune_interval,
                        ..settings(target)
                    };
                    if i < HUBS {
                        // Bootstrap nodes let every newcomer in, then prune back to T + S.
                        s.excess = n;
                    }
                    ConnManager::new(s, *p, now)
                })
                .collect();
            let index = ids.iter().enumerate().map(|(i, p)| (*p, i)).collect();
            let mut sim = Sim {
                nodes,
                ids,
                index,
                links: HashMap::new(),
                pending: vec![],
                next: 0,
                rng: StdRng::seed_from_u64(11),
                dials: 0,
                prunes: 0,
            };
            for i in 0..n {
                sim.bootstrap(i, now);
            }
            sim
        }

        fn bootstrap(&mut self, i: usize, now: Instant) {
            let hub = if i < HUBS { 0 } else { i % HUBS };
            if hub != i {
                let p = self.ids[hub];
                self.nodes[i].candidate(p, &[addr()], now);
            }
        }

        fn key(a: usize, b: usize) -> (usize, usize) {
            (a.min(b), a.max(b))
        }

        fn step(&mut self, now: Instant, prune: bool) {
            let n = self.nodes.len();
            // Dials started last step arrive now.
            for (a, b, c) in std::mem::take(&mut self.pending) {
                let ok = self.nodes[b].admit_inbound().is_ok()
                    // A pruned peer's dial would be held transient and closed when idle: refused.
                    && self.nodes[b].admit_inbound_peer(&self.ids[a], now) == Ok(true);
                if ok {
                    let (pa, pb) = (self.ids[a], self.ids[b]);
                    self.nodes[a].established(pb, c, Direction::Outbound, now);
                    self.nodes[b].established(pa, c, Direction::Inbound, now);
                    self.links.entry(Self::key(a, b)).or_default().push(c);
                } else {
                    self.nodes[a].dial_failed(c);
                }
            }
            for i in 0..n {
                if self.nodes[i].isolated(now) {
                    self.bootstrap(i, now);
                }
                if self.nodes[i].walk_due(now) {
                    // A walk finds a few peers of the network.
                    for _ in 0..8 {
                        let j = self.rng.gen_range(0..n);
                        let p = self.ids[j];
                        self.nodes[i].candidate(p, &[addr()], now);
                    }
                }
                for d in self.nodes[i].dials(now) {
                    let c = conn(self.next);
                    self.next += 1;
                    self.nodes[i]
                        .allow_outbound(c, Some(d.peer), true, now)
                        .unwrap();
                    self.pending.push((i, self.index[&d.peer], c));
                    self.dials += 1;
                }
            }
            if prune {
                for i in 0..n {
                    for (p, _) in self.nodes[i].prune(now) {
                        let j = self.index[&p];
                        for c in self.links.remove(&Self::key(i, j)).unwrap_or_default() {
                            self.nodes[i].closed(&p, c, now);
                            let pi = self.ids[i];
                            self.nodes[j].closed(&pi, c, now);
                        }
                        self.prunes += 1;
                    }
                }
            }
        }
    }

    fn settles(n: usize, target: usize) {
        let start = Instant::now();
        let step = Duration::from_millis(250);
        let prune_every = (settings(target).prune_backoff.as_millis() / 6 / 250) as usize;
        let mut sim = Sim::new(n, target, start);
        let steps = 10_000;
        let quiet = 2_000;
        let mut last_change = 0;
        for k in 0..steps {
            let before = (sim.dials, sim.prunes);
            sim.step(start + step * k as u32, k % prune_every.max(1) == 0);
            if (sim.dials, sim.prunes) != before {
                last_change = k;
            }
        }
        let s = settings(target);
        let low = target.min(n - 1);
        eprintln!(
            "{n} nodes, T = {target}: {} dials, {} prunes, last at step {last_change}",
            sim.dials, sim.prunes
        );
        let degrees: Vec<usize> = sim.nodes.iter().map(|m| m.connected()).collect();
        let bad: Vec<(usize, usize)> = degrees
            .iter()
            .copied()
            .enumerate()
            .filter(|(_, d)| *d < low || *d > target + s.slack)
            .collect();
        assert!(
            bad.is_empty(),
            "{n} nodes, T = {target}: degrees outside [{low}, {}]: {bad:?}",
            target + s.slack
        );
        assert!(
            last_change < steps - quiet,
            "{n} nodes, T = {target}: still dialing or pruning at step {last_change} of \
             {steps} ({} dials, {} prunes)",
            sim.dials,
            sim.prunes
        );
        // Both ends agree on every link.
        for (i, m) in sim.nodes.iter().enumerate() {
            for (j, other) in sim.nodes.iter().enumerate() {
                let linked = sim.links.contains_key(&Sim::key(i, j));
                assert_eq!(m.peers.contains_key(&sim.ids[j]), linked);
                assert_eq!(other.peers.contains_key(&sim.ids[i]), linked);
            }
        }
    }

    #[test]
    fn three_hundred_simulated_nodes_settle_at_target_and_stop_dialing() {
        settles(300, 4);
    }

    #[test]
    fn small_simulated_networks_connect_fully() {
        // The devnet preset (T = 32) on a 6-node network: everyone connects to everyone.
        settles(6, 32);
        settles(30, 8);
    }
}
