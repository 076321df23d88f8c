//! The task that owns the Swarm.
//!
//! It multiplexes four sources: swarm events, commands from [`NetHandle`](crate::NetHandle)s,
//! answers to inbound requests (oneshots the node fulfils), and timers (dialing bootstrap and
//! static peers). Nothing here blocks: validation is a decode and one signature check, and every
//! hand-off to the node is a `try_send` into a bounded queue that drops (and counts) on overflow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use libp2p::core::ConnectedPoint;
use libp2p::metrics::{Metrics, Recorder};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{PeerId, Swarm, gossipsub, identify, kad, mdns, ping, request_response};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use agora_types::codec;
use agora_types::wire::{GossipMessage, Response, Topic, limits};

use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::dialer::{Dialer, split_peer};
use crate::handle::{Command, NetEvent, NetStatus};
use crate::metrics::NetMetrics;
use crate::peers::PeerBook;
use crate::{Config, NetError};

type ProvidersReply = oneshot::Sender<Result<Vec<PeerId>, NetError>>;

type Reply = (
    Option<Response>,
    request_response::ResponseChannel<Response>,
);

pub(crate) struct Actor {
    pub swarm: Swarm<Behaviour>,
    pub commands: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<NetEvent>,
    pub config: Config,
    pub metrics: NetMetrics,
    pub libp2p_metrics: Metrics,
    pub dialer: Dialer,
    pub peers: PeerBook,
    pub pending_requests:
        HashMap<request_response::OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
    pub pending_providers: HashMap<kad::QueryId, (Vec<PeerId>, ProvidersReply)>,
    pub replies: FuturesUnordered<BoxFuture<'static, Reply>>,
}

impl Actor {
    pub async fn run(mut self) {
        let mut dial_tick = tokio::time::interval(Duration::from_millis(100));
        dial_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut bootstrap_tick = tokio::time::interval(self.config.kad_bootstrap_interval);
        bootstrap_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.on_command(c),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                Some((response, channel)) = self.replies.next(), if !self.replies.is_empty() => {
                    let response = response.unwrap_or_else(|| Response::Refused("the node dropped the request".into()));
                    let _ = self.swarm.behaviour_mut().rr.send_response(channel, response);
                }
                _ = dial_tick.tick() => self.dial_due(),
                _ = bootstrap_tick.tick() => self.bootstrap(),
            }
        }
    }

    async fn shutdown(&mut self) {
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

    fn bootstrap(&mut self) {
        if self.dialer.bootstrap_pending() {
            warn!("no bootstrap peer has answered yet; still retrying with backoff");
        }
        match self.swarm.behaviour_mut().kad.bootstrap() {
            Ok(_) => debug!("kademlia bootstrap started"),
            Err(_) => debug!("kademlia bootstrap skipped: no known peers yet"),
        }
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
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
                let size = codec::encode(&request)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX);
                if size > self.config.max_frame_bytes {
                    let _ = reply.send(Err(NetError::TooLarge {
                        len: size,
                        limit: self.config.max_frame_bytes,
                    }));
                    return;
                }
                let id = self.swarm.behaviour_mut().rr.send_request(&peer, request);
                self.pending_requests.insert(id, reply);
            }
            Command::Dial(addr, reply) => {
                let (plain, peer) = split_peer(&addr);
                if let Some(peer) = peer {
                    self.swarm.behaviour_mut().kad.add_address(&peer, plain);
                }
                let r = self
                    .swarm
                    .dial(addr.clone())
                    .map_err(|e| NetError::Dial(addr.to_string(), e.to_string()));
                let _ = reply.send(r);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peers.list());
            }
            Command::RoutingTable(reply) => {
                let mut out = vec![];
                for bucket in self.swarm.behaviour_mut().kad.kbuckets() {
                    for e in bucket.iter() {
                        out.push(*e.node.key.preimage());
                    }
                }
                let _ = reply.send(out);
            }
            Command::Provide(key, reply) => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                    .map(|_| ())
                    .map_err(|e| NetError::Dht(e.to_string()));
                let _ = reply.send(r);
            }
            Command::FindProviders(key, reply) => {
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
                self.pending_providers.insert(id, (vec![], reply));
            }
            Command::Shutdown(_) => {}
        }
    }

    fn publish(&mut self, message: &GossipMessage) -> Result<(), NetError> {
        let bytes = codec::encode(message).map_err(|e| NetError::Setup(e.to_string()))?;
        if bytes.len() > limits::MAX_GOSSIP_BYTES {
            return Err(NetError::TooLarge {
                len: bytes.len(),
                limit: limits::MAX_GOSSIP_BYTES,
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
                self.dialer.established(connection_id, peer_id);
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
                            self.swarm
                                .behaviour_mut()
                                .kad
                                .add_address(&peer_id, addr.clone());
                        }
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
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, addr) in found {
                    self.swarm.behaviour_mut().kad.add_address(&peer, addr);
                    if !self.swarm.is_connected(&peer) {
                        let _ = self.swarm.dial(
                            DialOpts::peer_id(peer)
                                .condition(PeerCondition::DisconnectedAndNotDialing)
                                .build(),
                        );
                    }
                }
            }
            BehaviourEvent::Mdns(mdns::Event::Expired(_)) => {}
            BehaviourEvent::Rr(e) => self.on_rr_event(e),
            BehaviourEvent::Limits(never) => match never {},
        }
    }

    fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated { peer, .. }
                if !self.swarm.is_connected(&peer)
                    && self.peers.len() < self.config.target_peers =>
            {
                let _ = self.swarm.dial(
                    DialOpts::peer_id(peer)
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build(),
                );
            }
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => {
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
                    }
                } else if let kad::QueryResult::Bootstrap(Err(e)) = result {
                    debug!(error = %e, "kademlia bootstrap step failed");
                }
            }
            _ => {}
        }
    }

    fn on_gossip(&mut self, via: PeerId, id: gossipsub::MessageId, message: gossipsub::Message) {
        let verdict = validate_gossip(&message);
        let acceptance = match &verdict {
            Ok(_) => gossipsub::MessageAcceptance::Accept,
            Err(reason) => {
                debug!(%via, topic = %message.topic, %reason, "gossip message rejected");
                self.metrics.gossip_rejected.inc();
                gossipsub::MessageAcceptance::Reject
            }
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(&id, &via, acceptance);
        if let Ok(decoded) = verdict {
            self.metrics.gossip_accepted.inc();
            self.forward(NetEvent::Gossip {
                via,
                source: message.source,
                message: decoded,
            });
        }
    }

    fn on_rr_event(
        &mut self,
        event: request_response::Event<agora_types::wire::Request, Response>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    self.metrics.requests_inbound.inc();
                    let (tx, rx) = oneshot::channel();
                    self.replies
                        .push(Box::pin(async move { (rx.await.ok(), channel) }));
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
                    if let Some(reply) = self.pending_requests.remove(&request_id) {
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
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request(peer.to_string(), error.to_string())));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Checks a gossip message: size, decode, topic, signature.
fn validate_gossip(message: &gossipsub::Message) -> Result<GossipMessage, String> {
    let decoded = GossipMessage::decode(&message.data).map_err(|e| e.to_string())?;
    let topic = Topic::from_name(message.topic.as_str())
        .ok_or_else(|| format!("unknown topic {}", message.topic))?;
    if decoded.topic() != topic {
        return Err(format!(
            "a {:?} message on topic {}",
            decoded.topic(),
            topic.name()
        ));
    }
    let signed = match &decoded {
        GossipMessage::Job { job, .. } => job.verify(),
        GossipMessage::Capability(s) => s.verify(),
        GossipMessage::Result(s) => s.verify(),
        GossipMessage::Reputation(s) => s.verify(),
        GossipMessage::Health(s) => s.verify(),
        GossipMessage::Text(_) => Ok(()),
    };
    signed.map_err(|e| e.to_string())?;
    Ok(decoded)
}

fn short_dial_error(e: &DialError) -> String {
    let s = e.to_string();
    s.chars().take(200).collect()
}
