//! The task that owns the Swarm.
//!
//! It multiplexes five sources: swarm events, control and data commands from
//! [`NetHandle`](crate::NetHandle)s (control drained first on every turn), answers to inbound
//! requests (oneshots the node fulfils), and timers (the connection manager's tick, expiring
//! blocks).
//!
//! Only the connection manager ([`crate::connmgr`], owned by the gate) dials on the node's own
//! initiative: every tick the actor dials the bootstrap and static peers that are due and the
//! candidates the manager picks (each approved in the gate first), starts a Kademlia walk when
//! the manager asks for one (below target only), re-bootstraps when it says the node is
//! isolated, and disconnects the peers it prunes. Discoveries (Kademlia, Identify, mDNS) only
//! make candidates; Kademlia's own query dials are refused by the gate at target.
//!
//! Nothing here blocks: validation is a decode and one signature check, and every
//! hand-off to the node is a `try_send` into a bounded queue that drops (and counts) on overflow.
//!
//! It applies the message-level defences: before an inbound request or gossip message reaches
//! the node it checks that the peer is authorized and not blocked, takes it from the peer's
//! quota for that protocol ([`Guard`]: market, result and blob requests and gossip each have
//! their own bucket), and for gossip runs [`validate::decode`] and the replay cache, leaving
//! the signature to the validation pool ([`vpool`]).
//!
//! Direct requests are routed by their variant to their purpose's request-response behaviour
//! ([`Purpose::of`]); outbound request ids are per behaviour, so pending requests are keyed by
//! purpose and id, and each answer goes back through the behaviour its request came in on. Offences go
//! to [`Guard::offend`]; a peer over the threshold is blocked in the gate, blacklisted in
//! GossipSub and disconnected.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, mdns, ping, request_response};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use agora_types::codec;
use agora_types::wire::{GossipMessage, Response};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL, subnet_of};
use crate::codec::{Codec, FrameFault, Purpose};
use crate::dialer::{Dialer, split_peer};
use crate::guard::{Guard, Offence, Proto};
use crate::handle::{Command, Control, NetEvent, NetStatus};
use crate::metrics::NetMetrics;
use crate::peers::PeerBook;
use crate::validate::{self, ReplayCache};
use crate::vpool;
use crate::{Config, NetError};

type ProvidersReply = oneshot::Sender<Result<Vec<PeerId>, NetError>>;

type Reply = (
    Purpose,
    Option<Response>,
    request_response::ResponseChannel<Response>,
);

pub(crate) struct Actor {
    pub swarm: Swarm<Behaviour>,
    pub commands: mpsc::Receiver<Command>,
    pub control: mpsc::Receiver<Control>,
    pub faults: mpsc::Receiver<(PeerId, Purpose, FrameFault)>,
    pub guard: Guard,
    pub replay: ReplayCache,
    pub vpool: vpool::Pool,
    pub verdicts: mpsc::Receiver<vpool::Verdict>,
    pub events: mpsc::Sender<NetEvent>,
    pub config: Config,
    pub metrics: NetMetrics,
    pub libp2p_metrics: Metrics,
    pub dialer: Dialer,
    pub peers: PeerBook,
    pub pending_requests: HashMap<
        (Purpose, request_response::OutboundRequestId),
        oneshot::Sender<Result<Response, NetError>>,
    >,
    pub pending_providers: HashMap<kad::QueryId, (Vec<PeerId>, ProvidersReply)>,
    /// `start_providing` queries running (user DHT queries, like `pending_providers`).
    pub providing: HashSet<kad::QueryId>,
    pub replies: FuturesUnordered<BoxFuture<'static, Reply>>,
    /// When the connection manager prunes next.
    pub next_prune: Instant,
}

/// The connection manager's tick: dials, walks, isolation checks.
const MANAGER_TICK: Duration = Duration::from_millis(250);
/// User DHT queries tracked at most (beyond, the oldest are forgotten: their dials then need
/// the node to be below target).
const MAX_USER_QUERIES: usize = 256;

impl Actor {
    pub async fn run(mut self) {
        // One timer for the connection manager, the dialer and the block list: it fires when
        // the earliest of them needs the actor ([`Actor::next_wake`]), so an idle node at its
        // target degree wakes for the prune round, not four times a second.
        let wake = tokio::time::sleep(MANAGER_TICK);
        tokio::pin!(wake);
        loop {
            // Control ahead of data: whatever control commands are queued go first.
            while let Ok(c) = self.control.try_recv() {
                if self.on_control(c).await {
                    return;
                }
            }
            tokio::select! {
                control = self.control.recv() => match control {
                    Some(c) => if self.on_control(c).await {
                        return;
                    },
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                event = self.swarm.select_next_some() => {
                    // A closed connection or a failed dial may need the short tick again.
                    let rearm = matches!(
                        event,
                        SwarmEvent::ConnectionClosed { .. }
                            | SwarmEvent::OutgoingConnectionError { .. }
                            | SwarmEvent::ConnectionEstablished { .. }
                    );
                    self.on_swarm_event(event);
                    if rearm {
                        let next = self.next_wake(Instant::now());
                        if next < wake.deadline().into_std() {
                            wake.as_mut().reset(next.into());
                        }
                    }
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.on_command(c),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some((purpose, response, channel)) = self.replies.next(), if !self.replies.is_empty() => {
                    let response = response.unwrap_or_else(|| Response::Refused("the node dropped the request".into()));
                    let _ = self.swarm.behaviour_mut().rr(purpose).send_response(channel, response);
                }
                () = &mut wake => {
                    self.manager_tick();
                    self.expire_blocks();
                    wake.as_mut().reset(self.next_wake(Instant::now()).into());
                }
                Some(v) = self.verdicts.recv() => self.on_verdict(v),
                Some((peer, purpose, fault)) = self.faults.recv() => self.on_frame_fault(peer, purpose, fault),
            }
        }
    }

    /// Serves a control command; true when the task must stop.
    async fn on_control(&mut self, control: Control) -> bool {
        match control {
            Control::Shutdown(done) => {
                self.shutdown().await;
                let _ = done.send(());
                return true;
            }
            Control::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Control::Peers(reply) => {
                let _ = reply.send(self.peers.list());
            }
            Control::RoutingTable(reply) => {
                let mut out = vec![];
                for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
                    for e in bucket.iter() {
                        out.push(*e.node.key.preimage());
                    }
                }
                let _ = reply.send(out);
            }
            Control::SetAuthorized(set, reply) => {
                self.set_authorized(set);
                let _ = reply.send(());
            }
            Control::IsAuthorized(peer, reply) => {
                let _ = reply.send(self.swarm.behaviour().gate.is_authorized(&peer));
            }
            Control::Blocked(reply) => {
                let _ = reply.send(self.swarm.behaviour().gate.blocked(Instant::now()));
            }
        }
        false
    }

    /// Replaces the authorized set and disconnects the connected peers outside it.
    fn set_authorized(&mut self, set: HashSet<PeerId>) {
        let size = set.len();
        self.swarm.behaviour_mut().gate.set_authorized(set);
        let gone: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| !self.swarm.behaviour().gate.is_authorized(p))
            .copied()
            .collect();
        info!(
            authorized = size,
            disconnecting = gone.len(),
            "authorized set updated"
        );
        for peer in gone {
            info!(%peer, "peer no longer authorized: disconnecting");
            self.metrics.deauthorized.inc();
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Records an offence; blocks the peer when it crosses the threshold.
    fn offend(&mut self, peer: PeerId, offence: Offence) {
        self.metrics
            .offences
            .get_or_create(&[("kind", offence.label())])
            .inc();
        debug!(%peer, offence = offence.label(), "offence");
        if let Some(duration) = self.guard.offend(peer, offence, Instant::now()) {
            self.block(peer, duration, offence.label());
        }
    }

    /// Blocks `peer`: refused by the gate, blacklisted by GossipSub, disconnected.
    fn block(&mut self, peer: PeerId, duration: Duration, reason: &'static str) {
        let b = self.swarm.behaviour_mut();
        b.gate.block(peer, duration, Instant::now());
        b.gossipsub.blacklist_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
        self.metrics.blocked_peers_total.inc();
        warn!(%peer, reason, secs = duration.as_secs(), "peer blocked for repeated offences");
        self.forward(NetEvent::PeerBlocked { peer, duration });
    }

    /// A request-response frame from `peer` on `purpose`'s protocol was refused by the codec.
    fn on_frame_fault(&mut self, peer: PeerId, purpose: Purpose, fault: FrameFault) {
        let (reason, offence) = match fault {
            FrameFault::Oversized => ("oversized", Offence::OversizedFrame),
            FrameFault::Malformed => ("malformed", Offence::MalformedFrame),
            FrameFault::Misrouted => ("misrouted", Offence::MalformedFrame),
        };
        self.metrics.dropped(purpose.label(), reason);
        debug!(%peer, protocol = purpose.label(), reason, "direct frame refused");
        self.offend(peer, offence);
    }

    fn expire_blocks(&mut self) {
        let b = self.swarm.behaviour_mut();
        for peer in b.gate.expire(Instant::now()) {
            b.gossipsub.remove_blacklisted_peer(&peer);
            info!(%peer, "block expired");
        }
    }

    /// Whether messages from `peer` may reach the node; counts and logs the drop if not.
    fn admitted(&self, peer: &PeerId, proto: Proto) -> bool {
        match self.swarm.behaviour().gate.admits(peer, Instant::now()) {
            Ok(()) => true,
            Err(refusal) => {
                let reason = match refusal {
                    crate::gate::Refusal::Blocked => "blocked",
                    _ => "unauthorized",
                };
                self.metrics.dropped(proto.label(), reason);
                debug!(%peer, protocol = proto.label(), reason, "message dropped");
                false
            }
        }
    }

    /// Inserts a peer's address in the routing table, unless its bucket already holds
    /// `max_peers_per_subnet_per_bucket` other peers of the same subnet.
    fn kad_insert(&mut self, peer: PeerId, addr: Multiaddr) {
        if let (Some(max), Some(net)) = (
            self.config.max_peers_per_subnet_per_bucket,
            subnet_of(&addr),
        ) && let Some(bucket) = self.swarm.behaviour_mut().kad.kbucket(peer)
        {
            let mut present = false;
            let mut same = 0;
            for e in bucket.iter() {
                if *e.node.key.preimage() == peer {
                    present = true;
                } else if e.node.value.iter().any(|a| subnet_of(a) == Some(net)) {
                    same += 1;
                }
            }
            if !present && same >= max {
                self.metrics.kad_refused.inc();
                debug!(%peer, %addr, "routing table insert refused: bucket full for this subnet");
                return;
            }
        }
        self.swarm.behaviour_mut().kad.add_address(&peer, addr);
    }

    async fn shutdown(&mut self) {
        // Closed first: a worker blocked on a full verdict queue then stops instead of waiting
        // for a reader that is waiting for it.
        self.verdicts.close();
        self.vpool.shutdown().await;
        info!(
            "network shutting down: closing {} connections",
            self.peers.len()
        );
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for p in peers {
            let _ = self.swarm.disconnect_peer_id(p);
        }
        // Let the swarm flush the closes, for at most one second.
        let deadline = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(deadline);
        while self.swarm.connected_peers().next().is_some() {
            tokio::select! {
                _ = self.swarm.select_next_some() => {}
                _ = &mut deadline => break,
            }
        }
    }

    /// When the actor's timer must fire next: on the short tick while the connection manager
    /// has work ([`crate::connmgr::ConnManager::wants_ticks`]), else at the earliest of the next prune
    /// round, the next bootstrap or static dial due and the first block to expire.
    fn next_wake(&self, now: Instant) -> Instant {
        let gate = &self.swarm.behaviour().gate;
        if gate.manager.wants_ticks() {
            return now + MANAGER_TICK;
        }
        [self.dialer.next_due(), gate.next_expiry()]
            .into_iter()
            .flatten()
            .fold(self.next_prune, Instant::min)
            .max(now + MANAGER_TICK)
    }

    /// What the connection manager asks for now: re-bootstrap, dials, a walk, a prune round.
    fn manager_tick(&mut self) {
        let now = Instant::now();
        if self.swarm.behaviour_mut().gate.manager.isolated(now) {
            self.metrics.rebootstraps.inc();
            let known = self.swarm.behaviour().gate.manager.has_candidates();
            if self.dialer.bootstrap_pending() {
                warn!("isolated: no bootstrap peer has answered yet; still retrying with backoff");
            } else if self.dialer.has_bootstrap() || known {
                info!("isolated: re-bootstrapping");
            } else {
                // The first node of a network: nobody to dial, it waits for others.
                debug!("isolated: no bootstrap peer and no candidate; waiting for inbound peers");
            }
            self.dialer.rebootstrap(now);
        }
        self.dial_due(now);
        let dials = self.swarm.behaviour_mut().gate.manager.dials(now);
        for d in dials {
            let opts = DialOpts::peer_id(d.peer)
                .addresses(d.addrs)
                .extend_addresses_through_behaviour()
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            self.swarm
                .behaviour_mut()
                .gate
                .approve_dial(opts.connection_id());
            if let Err(e) = self.swarm.dial(opts) {
                debug!(peer = %d.peer, error = %short_dial_error(&e), "candidate not dialed");
            }
        }
        if self.swarm.behaviour_mut().gate.manager.walk_due(now) {
            // One lookup of a random key, not a full bootstrap (a lookup per bucket): the peers
            // it reaches are dialed (and kept) while the node is below target, the rest of its
            // dials are refused at the gate without a socket.
            let kad = &mut self.swarm.behaviour_mut().kad;
            if kad.kbuckets().any(|b| b.num_entries() > 0) {
                kad.get_closest_peers(PeerId::random());
                self.metrics.walks.inc();
                debug!("kademlia walk started (below target)");
            } else {
                debug!("kademlia walk skipped: no known peers yet");
            }
        }
        if now >= self.next_prune {
            self.next_prune = now + self.config.prune_interval;
            let b = self.swarm.behaviour_mut();
            let mesh: HashSet<PeerId> = b.gossipsub.all_mesh_peers().copied().collect();
            b.gate.manager.mesh_peers(mesh);
            for (peer, class) in b.gate.manager.prune(now) {
                self.metrics
                    .pruned
                    .get_or_create(&[("class", class.label())])
                    .inc();
                debug!(%peer, class = class.label(), "pruned above target + slack");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// Tells the gate how many user DHT queries run (their dials pass at target).
    fn sync_user_queries(&mut self) {
        let n = self.pending_providers.len() + self.providing.len();
        self.swarm.behaviour_mut().gate.manager.set_user_queries(n);
    }

    fn update_connection_gauges(&mut self) {
        let (out, inb) = self.swarm.behaviour().gate.manager.by_direction();
        let c = &self.metrics.connections;
        c.get_or_create(&[("direction", "outbound")])
            .set(out as i64);
        c.get_or_create(&[("direction", "inbound")]).set(inb as i64);
    }

    /// Dials the bootstrap and static peers that are due (approved: they pass at target).
    fn dial_due(&mut self, now: Instant) {
        for due in self.dialer.due(now) {
            let mut addr = due.addr.clone();
            let opts = match due.peer {
                Some(peer) => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, due.addr.clone());
                    addr.push(libp2p::multiaddr::Protocol::P2p(peer));
                    DialOpts::peer_id(peer)
                        .addresses(vec![due.addr.clone()])
                        .condition(PeerCondition::Always)
                        .build()
                }
                None => DialOpts::unknown_peer_id()
                    .address(due.addr.clone())
                    .build(),
            };
            let conn = opts.connection_id();
            self.swarm.behaviour_mut().gate.approve_dial(conn);
            match self.swarm.dial(opts) {
                Ok(()) => self.dialer.dialing(due.index, conn),
                Err(e) => {
                    if let Some(f) = self.dialer.dial_error(due.index, now) {
                        warn!(addr = %f.addr, error = %e, retry_in_ms = f.retry_in.as_millis() as u64, "cannot dial peer; will retry");
                    }
                }
            }
        }
    }

    fn forward(&mut self, event: NetEvent) {
        if let Err(e) = self.events.try_send(event) {
            self.metrics.events_dropped.inc();
            if let mpsc::error::TrySendError::Full(NetEvent::Request { reply, .. }) = e {
                let _ = reply.send(Response::Refused("node busy, try again".into()));
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish(message, reply) => {
                let _ = reply.send(self.publish(&message));
            }
            Command::Request(peer, request, reply) => {
                let purpose = Purpose::of(&request);
                let limit = purpose.max_request(self.config.max_frame_bytes);
                let size = codec::encode(&request)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX);
                if size > limit {
                    let _ = reply.send(Err(NetError::TooLarge { len: size, limit }));
                    return;
                }
                // A request is purposeful: its dial passes at target, and the peer is not pruned
                // while it runs.
                let until = Instant::now() + self.config.request_timeout;
                self.swarm.behaviour_mut().gate.manager.busy(peer, until);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .rr(purpose)
                    .send_request(&peer, request);
                self.pending_requests.insert((purpose, id), reply);
            }
            Command::Dial(addr, reply) => {
                let (plain, peer) = split_peer(&addr);
                if let Some(peer) = peer {
                    self.swarm.behaviour_mut().kad.add_address(&peer, plain);
                }
                let opts = DialOpts::from(addr.clone());
                self.swarm
                    .behaviour_mut()
                    .gate
                    .approve_dial(opts.connection_id());
                let r = self
                    .swarm
                    .dial(opts)
                    .map_err(|e| NetError::Dial(addr.to_string(), e.to_string()));
                let _ = reply.send(r);
            }
            Command::Provide(key, reply) => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                    .map_err(|e| NetError::Dht(e.to_string()));
                if let Ok(id) = &r {
                    if self.providing.len() >= MAX_USER_QUERIES {
                        self.providing.clear();
                    }
                    self.providing.insert(*id);
                    self.sync_user_queries();
                }
                let _ = reply.send(r.map(|_| ()));
            }
            Command::FindProviders(key, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                if self.pending_providers.len() >= MAX_USER_QUERIES {
                    // Bounded: answer the oldest-looking one with what it has (none, usually).
                    if let Some(k) = self.pending_providers.keys().next().copied()
                        && let Some((found, r)) = self.pending_providers.remove(&k)
                    {
                        let _ = r.send(Ok(found));
                    }
                }
                self.pending_providers.insert(id, (vec![], reply));
                self.sync_user_queries();
            }
        }
    }

    fn publish(&mut self, message: &GossipMessage) -> Result<(), NetError> {
        let bytes = codec::encode(message).map_err(|e| NetError::Setup(e.to_string()))?;
        if bytes.len() > self.config.max_gossip_bytes {
            return Err(NetError::TooLarge {
                len: bytes.len(),
                limit: self.config.max_gossip_bytes,
            });
        }
        let topic = gossipsub::IdentTopic::new(message.topic().name());
        match self.swarm.behaviour_mut().gossipsub.publish(topic, bytes) {
            Ok(_) => Ok(()),
            // Nobody to send to is not an error for the caller: gossip is best effort.
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => Ok(()),
            Err(gossipsub::PublishError::Duplicate) => Ok(()),
            Err(e) => Err(NetError::Publish(e.to_string())),
        }
    }

    fn status(&mut self) -> NetStatus {
        let routing_table_size = self
            .swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        NetStatus {
            peer_id: *self.swarm.local_peer_id(),
            listen_addresses: self.swarm.listeners().cloned().collect(),
            connected_peers: self.peers.len(),
            routing_table_size,
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.libp2p_metrics.record(&event);
        match event {
            SwarmEvent::Behaviour(e) => self.on_behaviour_event(e),
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                if self.dialer.established(connection_id, peer_id) {
                    self.swarm.behaviour_mut().gate.manager.protect(peer_id);
                }
                self.update_connection_gauges();
                let remote = match &endpoint {
                    ConnectedPoint::Dialer { address, .. } => address.clone(),
                    ConnectedPoint::Listener { send_back_addr, .. } => send_back_addr.clone(),
                };
                let first = self.peers.len();
                self.peers.connected(peer_id, remote, agora_types::now_ms());
                if self.peers.len() > first {
                    debug!(%peer_id, "peer connected");
                    self.metrics.connected_peers.set(self.peers.len() as i64);
                    self.forward(NetEvent::PeerConnected(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, .. } if self.peers.disconnected(&peer_id) => {
                debug!(%peer_id, "peer disconnected");
                self.update_connection_gauges();
                self.guard.disconnected(&peer_id);
                self.metrics.connected_peers.set(self.peers.len() as i64);
                self.dialer.disconnected(&peer_id, Instant::now());
                self.forward(NetEvent::PeerDisconnected(peer_id));
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                peer_id,
            } => {
                if let Some(f) = self.dialer.failed(connection_id, Instant::now()) {
                    let what = if f.bootstrap {
                        "bootstrap peer"
                    } else {
                        "static peer"
                    };
                    warn!(
                        addr = %f.addr,
                        attempts = f.failures,
                        retry_in_ms = f.retry_in.as_millis() as u64,
                        error = %short_dial_error(&error),
                        "{what} unreachable; retrying with backoff"
                    );
                } else {
                    debug!(?peer_id, error = %short_dial_error(&error), "dial failed");
                }
            }
            SwarmEvent::IncomingConnectionError {
                error,
                send_back_addr,
                ..
            } => {
                debug!(%send_back_addr, %error, "incoming connection failed");
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(e) => {
                self.libp2p_metrics.record(&e);
                if let identify::Event::Received { peer_id, info, .. } = e {
                    let kad_peer = info.protocols.contains(&KAD_PROTOCOL);
                    if kad_peer {
                        for addr in info.listen_addrs.iter().take(8) {
                            self.kad_insert(peer_id, addr.clone());
                        }
                        // Where to find it again, should the connection drop.
                        let addrs: Vec<Multiaddr> =
                            info.listen_addrs.iter().take(8).cloned().collect();
                        self.swarm.behaviour_mut().gate.manager.candidate(
                            peer_id,
                            &addrs,
                            Instant::now(),
                        );
                    }
                    self.peers
                        .identified(&peer_id, info.agent_version, info.listen_addrs);
                }
            }
            BehaviourEvent::Ping(e) => {
                self.libp2p_metrics.record(&e);
                if let ping::Event {
                    peer,
                    result: Ok(rtt),
                    ..
                } = e
                {
                    self.peers.rtt(&peer, rtt.as_secs_f64() * 1000.0);
                    self.swarm.behaviour_mut().gate.manager.rtt(&peer, rtt);
                }
            }
            BehaviourEvent::Kad(e) => {
                self.libp2p_metrics.record(&e);
                self.on_kad_event(e);
            }
            BehaviourEvent::Gossipsub(e) => {
                self.libp2p_metrics.record(&e);
                if let gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                } = e
                {
                    self.on_gossip(propagation_source, message_id, message);
                }
            }
            // A LAN peer is a candidate like any other: dialed only if the node needs a peer.
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                let now = Instant::now();
                for (peer, addr) in found {
                    self.kad_insert(peer, addr.clone());
                    self.swarm
                        .behaviour_mut()
                        .gate
                        .manager
                        .candidate(peer, &[addr], now);
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Market(e) => self.on_rr_event(Purpose::Market, e),
            BehaviourEvent::Result(e) => self.on_rr_event(Purpose::Result, e),
            BehaviourEvent::Blob(e) => self.on_rr_event(Purpose::Blob, e),
            BehaviourEvent::Limits(never) | BehaviourEvent::Gate(never) => match never {},
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            // Manual inserts: a connected peer with a listen address, not yet in the table.
            kad::Event::RoutablePeer { peer, address } => self.kad_insert(peer, address),
            // A peer in the table is a candidate; the connection manager decides whether to dial.
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                let addrs: Vec<Multiaddr> = addresses.iter().take(8).cloned().collect();
                self.swarm
                    .behaviour_mut()
                    .gate
                    .manager
                    .candidate(peer, &addrs, Instant::now());
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
                if step.last && self.providing.remove(&id) {
                    self.sync_user_queries();
                }
                if let kad::QueryResult::GetProviders(r) = result {
                    if let Some((found, _)) = self.pending_providers.get_mut(&id)
                        && let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = r
                    {
                        found.extend(providers);
                        found.sort();
                        found.dedup();
                    }
                    if step.last
                        && let Some((found, reply)) = self.pending_providers.remove(&id)
                    {
                        let _ = reply.send(Ok(found));
                        self.sync_user_queries();
                    }
                } else if let kad::QueryResult::Bootstrap(Err(e)) = result {
                    debug!(error = %e, "kademlia bootstrap step failed");
                }
            }
            _ => {}
        }
    }

    /// A gossip message from `via`: the cheap checks here (admission, quota, size, decode,
    /// topic, replay), the signature in the validation pool ([`Actor::on_verdict`] finishes).
    fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let verdict = match self.precheck_gossip(via, &message) {
            Ok(valid) => {
                let job = vpool::Job {
                    via,
                    id: id.clone(),
                    message: valid.message,
                    replay_key: valid.replay_key,
                };
                if let Err(vpool::Full(job)) = self.vpool.submit(job) {
                    // GossipSub counts the message as seen already: dropped here, no copy of it
                    // would ever be accepted. Check it on this task instead (backpressure).
                    self.metrics
                        .dropped("gossip", "validation_queue_full_checked_inline");
                    let verdict = job.check(self.vpool.bound_ms());
                    self.on_verdict(verdict);
                }
                return;
            }
            Err(verdict) => verdict,
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &via, verdict);
    }

    /// What the actor checks before the pool: the decoded message, or `Ignore`/`Reject`.
    fn precheck_gossip(
        &mut self,
        via: PeerId,
        message: &gossipsub::Message,
    ) -> Result<validate::Valid, gossipsub::MessageAcceptance> {
        use gossipsub::MessageAcceptance::Ignore;
        if !self.admitted(&via, Proto::Gossip) {
            return Err(Ignore);
        }
        if !self.guard.allow(via, Proto::Gossip, Instant::now()) {
            self.metrics.dropped("gossip", "quota");
            self.offend(via, Offence::QuotaExceeded(Proto::Gossip));
            return Err(Ignore);
        }
        let max = self.config.max_gossip_bytes;
        match validate::decode(&message.data, message.topic.as_str(), max) {
            Ok(valid) => {
                // Anonymous GossipSub: the author is the envelope's signer. A blocked or
                // unauthorized author is ignored whoever forwards its messages.
                if let Some(author) = validate::author(&valid.message)
                    && author != via
                    && !self.admitted(&author, Proto::Gossip)
                {
                    return Err(Ignore);
                }
                if let Some(key) = &valid.replay_key
                    && self.replay.contains(key, agora_types::now_ms())
                {
                    self.metrics.dropped("gossip", "replay");
                    debug!(%via, topic = %message.topic, "gossip replay ignored");
                    return Err(Ignore);
                }
                Ok(valid)
            }
            Err(refusal) => Err(self.refused_gossip(via, message.topic.as_str(), &refusal)),
        }
    }

    /// The pool's verdict on a message: reported to GossipSub, and the message handed to the
    /// node if it is accepted (a copy accepted meanwhile makes this one a replay).
    fn on_verdict(&mut self, v: vpool::Verdict) {
        let (verdict, accepted) = match v.outcome {
            // Blocked while its message waited in the pool.
            Ok(_) if !self.admitted(&v.via, Proto::Gossip) => {
                (gossipsub::MessageAcceptance::Ignore, None)
            }
            Ok(message) => match v.replay_key {
                Some(key) if !self.replay.insert(key, agora_types::now_ms()) => {
                    self.metrics.dropped("gossip", "replay");
                    (gossipsub::MessageAcceptance::Ignore, None)
                }
                _ => (gossipsub::MessageAcceptance::Accept, Some(message)),
            },
            Err(refusal) => (self.refused_gossip(v.via, v.topic.name(), &refusal), None),
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&v.id, &v.via, verdict);
        if let Some(message) = accepted {
            self.metrics.gossip_accepted.inc();
            self.forward(NetEvent::Gossip {
                via: v.via,
                message,
            });
        }
    }

    /// Counts, logs and penalises a refused gossip message; the verdict for GossipSub.
    fn refused_gossip(
        &mut self,
        via: PeerId,
        topic: &str,
        refusal: &validate::Refusal,
    ) -> gossipsub::MessageAcceptance {
        debug!(%via, topic, reason = %refusal, "gossip message rejected");
        self.metrics.gossip_rejected.inc();
        self.metrics.dropped("gossip", refusal.label());
        match refusal {
            validate::Refusal::Oversized(_) => self.offend(via, Offence::OversizedFrame),
            validate::Refusal::Invalid(_) => self.offend(via, Offence::InvalidMessage),
            // Clock skew is not malice; GossipSub's score still counts the Reject.
            validate::Refusal::OutOfSync(_) => {}
        }
        gossipsub::MessageAcceptance::Reject
    }

    fn on_rr_event(
        &mut self,
        purpose: Purpose,
        event: request_response::Event<
            <Codec as request_response::Codec>::Request,
            <Codec as request_response::Codec>::Response,
        >,
    ) {
        let proto = Proto::from(purpose);
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.metrics.requests_inbound.inc();
                    if !self.admitted(&peer, proto) {
                        return; // dropping `channel` closes the stream unanswered
                    }
                    if !self.guard.allow(peer, proto, Instant::now()) {
                        self.metrics.dropped(proto.label(), "quota");
                        debug!(%peer, protocol = proto.label(), "request over quota");
                        self.offend(peer, Offence::QuotaExceeded(proto));
                        return;
                    }
                    // Not pruned while we answer.
                    let until = Instant::now() + self.config.request_timeout;
                    self.swarm.behaviour_mut().gate.manager.busy(peer, until);
                    let (tx, rx) = oneshot::channel();
                    self.replies
                        .push(Box::pin(async move { (purpose, rx.await.ok(), channel) }));
                    self.forward(NetEvent::Request {
                        peer,
                        request,
                        reply: tx,
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.pending_requests.remove(&(purpose, request_id)) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                self.metrics.requests_failed.inc();
                if let Some(reply) = self.pending_requests.remove(&(purpose, request_id)) {
                    let _ = reply.send(Err(NetError::Request(peer.to_string(), error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, protocol = purpose.label(), %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

fn short_dial_error(e: &DialError) -> String {
    let s = e.to_string();
    s.chars().take(200).collect()
}
