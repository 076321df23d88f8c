//! The network-level defences, attacked in process over loopback TCP.
//!
//! Attackers are bare libp2p swarms ([`Raw`]): they speak our protocols but write whatever
//! bytes they like (raw request-response frames on any of the direct-message protocols,
//! arbitrary gossip payloads), or `agora_net` nodes that send more than their share. Victims and
//! honest peers are `agora_net` nodes. Assertions read the victim's metrics and what its node
//! saw.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agora_net::{Authorization, Config, Keypair, Multiaddr, NetEvent, NetHandle, PeerId, Rate};
use agora_types::Hash;
use agora_types::codec;
use agora_types::job::{Bid, Health, Outcome, WorkResult};
use agora_types::sign::Signed;
use agora_types::wire::{GossipMessage, Request, Response, Topic, limits};
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{NetworkBehaviour, Swarm, SwarmEvent};
use libp2p::{StreamProtocol, SwarmBuilder, gossipsub, noise, request_response, tcp, yamux};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------------
// Agora nodes

struct Node {
    handle: NetHandle,
    addr: Multiaddr,
    registry: Registry,
    seen: Arc<Mutex<Seen>>,
}

/// What the node (the application) received.
#[derive(Default)]
struct Seen {
    connected: HashSet<PeerId>,
    requests: Vec<PeerId>,
    /// Each request's sender and kind (`echo`, `bid`, `result`, `get_blob`...).
    kinds: Vec<(PeerId, &'static str)>,
    gossip: Vec<GossipMessage>,
    blocked: Vec<PeerId>,
}

impl Seen {
    fn count(&self, from: PeerId, kind: &str) -> usize {
        self.kinds
            .iter()
            .filter(|(p, k)| *p == from && *k == kind)
            .count()
    }
}

/// The blob every test node serves to `GetBlob`: three chunks, the last one partial.
fn test_blob() -> Vec<u8> {
    let chunk = limits::BLOB_CHUNK_BYTES as usize;
    (0..2 * chunk + chunk / 2)
        .map(|i| (i % 251) as u8)
        .collect()
}

fn kind(request: &Request) -> &'static str {
    match request {
        Request::Echo(_) => "echo",
        Request::Bid(_) => "bid",
        Request::Lease(_) => "lease",
        Request::Result { .. } => "result",
        Request::Cancel(_) => "cancel",
        Request::GetBlob { .. } => "get_blob",
        Request::Heartbeat(_) => "heartbeat",
    }
}

/// The test node's answer: echoes, acks, and chunks of [`test_blob`].
fn answer(blob: &[u8], request: Request) -> Response {
    match request {
        Request::Echo(b) => Response::Echo(b),
        Request::GetBlob { offset, len, .. } => {
            let start = (offset as usize).min(blob.len());
            let len = len.min(limits::BLOB_CHUNK_BYTES) as usize;
            let end = start.saturating_add(len).min(blob.len());
            Response::Blob {
                total: blob.len() as u64,
                data: blob[start..end].to_vec(),
            }
        }
        _ => Response::Ack,
    }
}

async fn start(key: Keypair, tweak: impl FnOnce(&mut Config)) -> Node {
    // `RUST_LOG=agora_net=debug` shows each defence acting.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config::local();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    tweak(&mut config);
    let mut registry = Registry::default();
    let net = agora_net::spawn(key, config, &mut registry).unwrap();
    let handle = net.handle;
    let addr = loop {
        let s = handle.status().await.unwrap();
        if let Some(a) = s.listen_addresses.first() {
            break a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let addr = addr.with(agora_net::multiaddr::Protocol::P2p(handle.local_peer_id()));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let s = seen.clone();
    let mut events = net.events;
    let blob = test_blob();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let mut s = s.lock().unwrap();
            match e {
                NetEvent::Request {
                    peer,
                    request,
                    reply,
                } => {
                    s.requests.push(peer);
                    s.kinds.push((peer, kind(&request)));
                    let _ = reply.send(answer(&blob, request));
                }
                NetEvent::Gossip { message, .. } => s.gossip.push(message),
                NetEvent::PeerConnected(p) => {
                    s.connected.insert(p);
                }
                NetEvent::PeerBlocked { peer, .. } => s.blocked.push(peer),
                _ => {}
            }
        }
    });
    Node {
        handle,
        addr,
        registry,
        seen,
    }
}

/// The value of a metric line such as `agora_net_blocked_peers_total` or
/// `agora_net_dropped_messages_total{protocol="rr",reason="quota"}` (0 when absent).
fn metric(registry: &Registry, name: &str) -> f64 {
    let mut s = String::new();
    prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
    s.lines()
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

fn dropped(node: &Node, protocol: &str, reason: &str) -> f64 {
    metric(
        &node.registry,
        &format!("agora_net_dropped_messages_total{{protocol=\"{protocol}\",reason=\"{reason}\"}}"),
    )
}

fn offences(node: &Node, kind: &str) -> f64 {
    metric(
        &node.registry,
        &format!("agora_net_offences_total{{kind=\"{kind}\"}}"),
    )
}

fn refused(node: &Node, reason: &str) -> f64 {
    metric(
        &node.registry,
        &format!("agora_net_refused_connections_total{{reason=\"{reason}\"}}"),
    )
}

async fn eventually<F, Fut>(what: &str, secs: u64, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

// ---------------------------------------------------------------------------------------------
// Raw attackers: bare swarms writing arbitrary bytes

/// Request-response with raw bytes: the request is written as is (length prefix included), the
/// response read to the end.
#[derive(Clone, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
    ) -> io::Result<Vec<u8>> {
        Err(io::Error::other("raw peers serve nothing"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut buf = vec![];
        io.take(1 << 20).read_to_end(&mut buf).await?;
        if buf.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(buf)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()> {
        io.write_all(&req).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("raw peers serve nothing"))
    }
}

/// A raw request-response behaviour on `protocol`.
fn raw_rr(protocol: StreamProtocol) -> request_response::Behaviour<RawCodec> {
    request_response::Behaviour::with_codec(
        RawCodec,
        [(protocol, request_response::ProtocolSupport::Outbound)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(5))
            .with_max_concurrent_streams(10_000),
    )
}

#[derive(NetworkBehaviour)]
struct Raw {
    /// The market protocol.
    rr: request_response::Behaviour<RawCodec>,
    result: request_response::Behaviour<RawCodec>,
    blob: request_response::Behaviour<RawCodec>,
    gossip: Toggle<gossipsub::Behaviour>,
}

#[derive(Default)]
struct Stats {
    established: AtomicUsize,
    closed: AtomicUsize,
    responses: AtomicUsize,
    subscribed: AtomicBool,
}

type Cmd = Box<dyn FnOnce(&mut Swarm<Raw>) + Send>;

/// A bare swarm driven by its own task; [`RawPeer::run`] runs code against it.
struct RawPeer {
    id: PeerId,
    tx: mpsc::Sender<Cmd>,
    stats: Arc<Stats>,
}

impl RawPeer {
    fn spawn(with_gossip: bool) -> RawPeer {
        let key = Keypair::generate_ed25519();
        let id = key.public().to_peer_id();
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|_key| {
                let gossip = with_gossip.then(|| {
                    // Anonymous, as Agora nodes publish: the author is the signer of the
                    // message's own envelope. Message ids are content hashes (anonymous
                    // messages have no author and sequence number to make one of).
                    let config = gossipsub::ConfigBuilder::default()
                        .validation_mode(gossipsub::ValidationMode::Anonymous)
                        .message_id_fn(|m: &gossipsub::Message| {
                            gossipsub::MessageId::from(blake3::hash(&m.data).as_bytes().to_vec())
                        })
                        .max_transmit_size(1 << 18)
                        .build()
                        .unwrap();
                    let mut g = gossipsub::Behaviour::new(
                        gossipsub::MessageAuthenticity::Anonymous,
                        config,
                    )
                    .unwrap();
                    for t in Topic::ALL {
                        g.subscribe(&gossipsub::IdentTopic::new(t.name())).unwrap();
                    }
                    g
                });
                Raw {
                    rr: raw_rr(agora_net::MARKET_PROTOCOL),
                    result: raw_rr(agora_net::RESULT_PROTOCOL),
                    blob: raw_rr(agora_net::BLOB_PROTOCOL),
                    gossip: gossip.into(),
                }
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let stats = Arc::new(Stats::default());
        let st = stats.clone();
        let (tx, mut rx) = mpsc::channel::<Cmd>(1024);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    e = swarm.select_next_some() => match e {
                        SwarmEvent::ConnectionEstablished { .. } => {
                            st.established.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::ConnectionClosed { .. } => {
                            st.closed.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::Behaviour(
                            RawEvent::Rr(request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            })
                            | RawEvent::Result(request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            })
                            | RawEvent::Blob(request_response::Event::Message {
                                message: request_response::Message::Response { .. },
                                ..
                            }),
                        ) => {
                            st.responses.fetch_add(1, Ordering::Relaxed);
                        }
                        SwarmEvent::Behaviour(RawEvent::Gossip(
                            gossipsub::Event::Subscribed { .. },
                        )) => st.subscribed.store(true, Ordering::Relaxed),
                        _ => {}
                    },
                    c = rx.recv() => match c {
                        Some(c) => c(&mut swarm),
                        None => return,
                    },
                }
            }
        });
        RawPeer { id, tx, stats }
    }

    async fn run(&self, f: impl FnOnce(&mut Swarm<Raw>) + Send + 'static) {
        let _ = self.tx.send(Box::new(f)).await;
    }

    async fn dial(&self, addr: &Multiaddr) {
        let addr = addr.clone();
        self.run(move |s| {
            let _ = s.dial(addr);
        })
        .await;
    }

    /// Sends `frame` on the market protocol.
    async fn request(&self, to: PeerId, frame: Vec<u8>) {
        self.run(move |s| {
            s.behaviour_mut().rr.send_request(&to, frame);
        })
        .await;
    }

    /// Sends `frame` on the blob protocol.
    async fn request_blob(&self, to: PeerId, frame: Vec<u8>) {
        self.run(move |s| {
            s.behaviour_mut().blob.send_request(&to, frame);
        })
        .await;
    }

    /// Sends `frame` on the result protocol.
    async fn request_result(&self, to: PeerId, frame: Vec<u8>) {
        self.run(move |s| {
            s.behaviour_mut().result.send_request(&to, frame);
        })
        .await;
    }

    async fn publish(&self, topic: Topic, data: Vec<u8>) {
        self.run(move |s| {
            if let Some(g) = s.behaviour_mut().gossip.as_mut() {
                let _ = g.publish(gossipsub::IdentTopic::new(topic.name()), data);
            }
        })
        .await;
    }

    fn established(&self) -> usize {
        self.stats.established.load(Ordering::Relaxed)
    }
}

/// A well-formed request frame: length prefix and postcard body.
fn frame(request: &Request) -> Vec<u8> {
    let body = codec::encode(request).unwrap();
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(&body);
    out
}

fn health(key: &Keypair, at: u64) -> GossipMessage {
    let h = Health {
        uptime_s: at,
        connected_peers: 1,
        running_jobs: 0,
    };
    GossipMessage::Health(Signed::sign(key, h, at).unwrap())
}

// ---------------------------------------------------------------------------------------------
// (a) authorization

/// 200 identities outside the authorized set dial a permissioned node: none reaches its node;
/// an authorized peer connects and is answered; dropping it from the set disconnects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthorized_identities_never_reach_the_node() {
    let honest_key = Keypair::generate_ed25519();
    let honest_id = honest_key.public().to_peer_id();
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.authorization = Authorization::Permissioned;
        c.inbound_handshake_rate = Rate::new(10_000, 10_000);
    })
    .await;
    let v = victim.handle.local_peer_id();
    victim
        .handle
        .set_authorized(HashSet::from([honest_id]))
        .await
        .unwrap();
    assert!(victim.handle.is_authorized(honest_id).await.unwrap());

    let t0 = std::time::Instant::now();
    let mut attackers = HashSet::new();
    for _batch in 0..10 {
        let peers: Vec<RawPeer> = (0..20).map(|_| RawPeer::spawn(false)).collect();
        let before = refused(&victim, "unauthorized");
        for p in &peers {
            attackers.insert(p.id);
            p.dial(&victim.addr).await;
            p.request(v, frame(&Request::Echo(b"let me in".to_vec())))
                .await;
        }
        // Each is refused once its handshake completes.
        eventually("the batch is refused", 20, || {
            let n = refused(&victim, "unauthorized");
            async move { n >= before + 20.0 }
        })
        .await;
        for p in &peers {
            assert_eq!(p.stats.responses.load(Ordering::Relaxed), 0);
        }
    }
    let took = t0.elapsed();
    assert!(refused(&victim, "unauthorized") >= 200.0);
    {
        let seen = victim.seen.lock().unwrap();
        assert!(
            seen.connected.is_disjoint(&attackers),
            "an attacker connected"
        );
        assert!(seen.requests.iter().all(|p| !attackers.contains(p)));
    }
    assert_eq!(victim.handle.status().await.unwrap().connected_peers, 0);

    // The honest, authorized peer gets in and is answered.
    let honest = start(honest_key, |c| c.bootstrap = vec![victim.addr.clone()]).await;
    let hh = honest.handle.clone();
    eventually("the honest peer connects", 20, || {
        let hh = hh.clone();
        async move { hh.status().await.unwrap().connected_peers >= 1 }
    })
    .await;
    let r = honest
        .handle
        .request(v, Request::Echo(b"hi".to_vec()))
        .await
        .unwrap();
    assert_eq!(r, Response::Echo(b"hi".to_vec()));

    // Out of the set: disconnected within 5 s, and its requests go nowhere.
    let removed = std::time::Instant::now();
    victim.handle.set_authorized(HashSet::new()).await.unwrap();
    assert!(!victim.handle.is_authorized(honest_id).await.unwrap());
    let vh = victim.handle.clone();
    eventually("the de-authorized peer is disconnected", 5, || {
        let vh = vh.clone();
        async move { vh.status().await.unwrap().connected_peers == 0 }
    })
    .await;
    assert!(removed.elapsed() < Duration::from_secs(5));
    let requests = victim.seen.lock().unwrap().requests.len();
    let _ = honest
        .handle
        .request(v, Request::Echo(b"still there?".to_vec()))
        .await;
    assert_eq!(victim.seen.lock().unwrap().requests.len(), requests);
    eprintln!(
        "200 unauthorized dials refused in {:.1}s; de-authorized peer gone in {} ms",
        took.as_secs_f64(),
        removed.elapsed().as_millis()
    );
}

// ---------------------------------------------------------------------------------------------
// (b) quotas under a flood

/// A peer sends 10x its request and gossip quotas for 30 s: it is blocked, the honest peer's
/// requests and gossip still get through, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_scenario_flood_over_quota_is_blocked_honest_traffic_flows() {
    const QUOTA: u32 = 20;
    const FLOOD_SECS: u64 = 30;
    const MAX_RSS_GROWTH: u64 = 64 << 20;
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.rr_quota = Rate::new(QUOTA, QUOTA);
        c.gossip_quota = Rate::new(QUOTA, QUOTA);
    })
    .await;
    let v = victim.handle.local_peer_id();
    let honest = start(Keypair::generate_ed25519(), |c| {
        c.bootstrap = vec![victim.addr.clone()];
    })
    .await;
    let flooder = RawPeer::spawn(true);
    flooder.dial(&victim.addr).await;
    let hh = honest.handle.clone();
    eventually("both peers connect", 20, || {
        let hh = hh.clone();
        let f = flooder.established();
        async move { f >= 1 && hh.status().await.unwrap().connected_peers >= 1 }
    })
    .await;
    let rss0 = rss();

    // The flood: 10x the quota on each protocol, in 50 ms ticks, for 30 s.
    let per_tick = (QUOTA as usize * 10) / 20;
    let echo = frame(&Request::Echo(vec![7; 64]));
    let flood = {
        let tx = flooder.tx.clone();
        tokio::spawn(async move {
            let peer = RawPeer {
                id: v,
                tx,
                stats: Arc::default(),
            };
            let mut n = 0u64;
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            let end = tokio::time::Instant::now() + Duration::from_secs(FLOOD_SECS);
            while tokio::time::Instant::now() < end {
                tick.tick().await;
                for _ in 0..per_tick {
                    n += 1;
                    peer.request(v, echo.clone()).await;
                    let text = GossipMessage::Text(format!("flood {n}"));
                    peer.publish(Topic::Health, codec::encode(&text).unwrap())
                        .await;
                }
            }
            n
        })
    };

    // Meanwhile the honest peer: a request every 200 ms, a gossip message every 500 ms.
    let (mut ok, mut asked, mut published) = (0, 0, 0);
    let end = tokio::time::Instant::now() + Duration::from_secs(FLOOD_SECS);
    let mut i = 0u32;
    while tokio::time::Instant::now() < end {
        i += 1;
        asked += 1;
        if let Ok(Response::Echo(_)) = honest
            .handle
            .request(v, Request::Echo(i.to_be_bytes().to_vec()))
            .await
        {
            ok += 1;
        }
        if i.is_multiple_of(3) {
            published += 1;
            honest
                .handle
                .publish(GossipMessage::Text(format!("honest {i}")))
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = flood.await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let growth = rss().saturating_sub(rss0);

    let honest_gossip = victim
        .seen
        .lock()
        .unwrap()
        .gossip
        .iter()
        .filter(|m| matches!(m, GossipMessage::Text(t) if t.starts_with("honest")))
        .count();
    let flood_gossip = victim
        .seen
        .lock()
        .unwrap()
        .gossip
        .iter()
        .filter(|m| matches!(m, GossipMessage::Text(t) if t.starts_with("flood")))
        .count();
    let flood_requests = victim
        .seen
        .lock()
        .unwrap()
        .requests
        .iter()
        .filter(|p| **p == flooder.id)
        .count();
    eprintln!(
        "flood: {sent} requests + {sent} gossip sent; reached the node: {flood_requests} requests, \
         {flood_gossip} gossip; honest: {ok}/{asked} answered, {honest_gossip}/{published} \
         gossip delivered; RSS growth {} KiB",
        growth / 1024
    );
    assert!(victim.seen.lock().unwrap().blocked.contains(&flooder.id));
    assert!(metric(&victim.registry, "agora_net_blocked_peers_total") >= 1.0);
    assert!(dropped(&victim, "market", "quota") + dropped(&victim, "gossip", "quota") >= 1.0);
    // At most one burst per protocol per block period reaches the node.
    assert!((flood_requests as u64) < sent / 10, "{flood_requests}");
    assert!(
        ok * 10 >= asked * 9,
        "honest requests answered: {ok}/{asked}"
    );
    assert!(
        honest_gossip * 10 >= published * 9,
        "honest gossip delivered: {honest_gossip}/{published}"
    );
    assert!(growth < MAX_RSS_GROWTH, "RSS grew by {growth} bytes");
}

// ---------------------------------------------------------------------------------------------
// (c) malformed frames

/// 10,000 malformed or oversized frames on each protocol: no panic, bounded memory, the sender
/// blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_on_each_protocol_block_the_sender() {
    const FRAMES: usize = 10_000;
    const MAX_RSS_GROWTH: u64 = 64 << 20;
    let victim = start(Keypair::generate_ed25519(), |c| {
        // Gossip payloads over 512 bytes are refused by our validator: an offence.
        c.max_gossip_bytes = 512;
    })
    .await;
    let v = victim.handle.local_peer_id();
    let rss0 = rss();

    // Request-response: garbage bodies and hostile length prefixes.
    let rr = RawPeer::spawn(false);
    rr.dial(&victim.addr).await;
    eventually("the rr attacker connects", 10, || {
        let n = rr.established();
        async move { n >= 1 }
    })
    .await;
    for i in 0..FRAMES {
        let bytes = match i % 3 {
            0 => vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            1 => {
                let mut f = 16u32.to_be_bytes().to_vec();
                f.extend_from_slice(&[0xee; 16]);
                f
            }
            _ => vec![0, 0, 0, 3, 0x80, 0x80, 0x80],
        };
        rr.request(v, bytes).await;
    }

    // Gossip: undecodable and oversized payloads on every topic.
    let gossip = RawPeer::spawn(true);
    gossip.dial(&victim.addr).await;
    eventually("the gossip attacker sees our subscriptions", 10, || {
        let s = gossip.stats.subscribed.load(Ordering::Relaxed);
        async move { s }
    })
    .await;
    for i in 0..FRAMES {
        let topic = Topic::ALL[i % Topic::ALL.len()];
        let mut data = if i % 2 == 0 {
            vec![0xff; 32]
        } else {
            vec![0x05; 600] // over `max_gossip_bytes`
        };
        data.extend_from_slice(&(i as u64).to_be_bytes());
        gossip.publish(topic, data).await;
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let blocked = victim.handle.blocked().await.unwrap();
        if blocked.contains(&rr.id) && blocked.contains(&gossip.id) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &victim.registry).unwrap();
            let agora: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("agora_net"))
                .collect();
            panic!(
                "not blocked: rr {} gossip {} (blocked: {blocked:?}, rr {}, gossip {})\n{}",
                blocked.contains(&rr.id),
                blocked.contains(&gossip.id),
                rr.id,
                gossip.id,
                agora.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let growth = rss().saturating_sub(rss0);
    let malformed =
        dropped(&victim, "market", "malformed") + dropped(&victim, "market", "oversized");
    let invalid = dropped(&victim, "gossip", "invalid") + dropped(&victim, "gossip", "oversized");
    eprintln!(
        "{FRAMES} bad frames per protocol: rr dropped {malformed}, gossip dropped {invalid}; \
         RSS growth {} KiB",
        growth / 1024
    );
    assert!(malformed >= 1.0 && invalid >= 1.0);
    {
        let seen = victim.seen.lock().unwrap();
        assert!(seen.requests.is_empty() && seen.gossip.is_empty());
    }
    assert_eq!(victim.handle.status().await.unwrap().connected_peers, 0);
    assert!(growth < MAX_RSS_GROWTH, "RSS grew by {growth} bytes");
}

// ---------------------------------------------------------------------------------------------
// (d) replay and synchrony bound

/// A signed message replayed under another encoding (so another GossipSub id), and one signed
/// outside the synchrony bound, are both refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_and_stale_gossip_is_refused() {
    let victim = start(Keypair::generate_ed25519(), |_| {}).await;
    let raw = RawPeer::spawn(true);
    raw.dial(&victim.addr).await;
    eventually("the publisher sees our subscriptions", 10, || {
        let s = raw.stats.subscribed.load(Ordering::Relaxed);
        async move { s }
    })
    .await;
    let author = Keypair::generate_ed25519();
    let now = agora_types::now_ms();
    let original = codec::encode(&health(&author, now)).unwrap();
    raw.publish(Topic::Health, original.clone()).await;
    let seen = victim.seen.clone();
    eventually("the original is delivered", 10, || {
        let n = seen.lock().unwrap().gossip.len();
        async move { n == 1 }
    })
    .await;

    // Replay: the variant tag as an overlong varint decodes to the same signed message.
    assert_eq!(original[0], 4);
    let mut replay = vec![0x84, 0x00];
    replay.extend_from_slice(&original[1..]);
    raw.publish(Topic::Health, replay).await;
    // Stale: signed a minute ago.
    let stale = codec::encode(&health(&author, now - 60_000)).unwrap();
    raw.publish(Topic::Health, stale).await;
    // And from the future.
    let future = codec::encode(&health(&author, now + 60_000)).unwrap();
    raw.publish(Topic::Health, future).await;

    eventually("replay and stale messages are counted", 10, || {
        let r = dropped(&victim, "gossip", "replay");
        let s = dropped(&victim, "gossip", "out_of_sync");
        async move { r == 1.0 && s == 2.0 }
    })
    .await;
    // A fresh message after them is delivered, and nothing else was.
    let marker = codec::encode(&health(&author, agora_types::now_ms() + 1)).unwrap();
    raw.publish(Topic::Health, marker).await;
    eventually("the marker is delivered", 10, || {
        let n = seen.lock().unwrap().gossip.len();
        async move { n >= 2 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(seen.lock().unwrap().gossip.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// (e) connections per IP, handshake rate

/// With at most 3 connections per IP, a 4th peer from 127.0.0.1 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fourth_connection_from_one_ip_is_refused() {
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.max_connections_per_ip = Some(3);
    })
    .await;
    let peers: Vec<RawPeer> = (0..4).map(|_| RawPeer::spawn(false)).collect();
    for p in &peers[..3] {
        p.dial(&victim.addr).await;
    }
    let vh = victim.handle.clone();
    eventually("three peers connect", 10, || {
        let vh = vh.clone();
        async move { vh.status().await.unwrap().connected_peers == 3 }
    })
    .await;
    peers[3].dial(&victim.addr).await;
    eventually("the 4th is refused", 10, || {
        let n = refused(&victim, "per_ip");
        async move { n >= 1.0 }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(victim.handle.status().await.unwrap().connected_peers, 3);
    assert!(!victim.seen.lock().unwrap().connected.contains(&peers[3].id));
}

/// Inbound handshakes beyond the global rate are refused before they start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_over_the_rate_are_refused() {
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.inbound_handshake_rate = Rate::new(1, 2);
    })
    .await;
    let peers: Vec<RawPeer> = (0..6).map(|_| RawPeer::spawn(false)).collect();
    for p in &peers {
        p.dial(&victim.addr).await;
    }
    eventually("handshakes are refused", 10, || {
        let n = refused(&victim, "handshake_rate");
        async move { n >= 2.0 }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// (f) one protocol per purpose: quotas and frame caps of their own

/// Starts a node that dials `victim`, and waits until it is connected.
async fn start_peer(key: Keypair, victim: &Node) -> Node {
    let addr = victim.addr.clone();
    let node = start(key, |c| c.bootstrap = vec![addr]).await;
    let h = node.handle.clone();
    eventually("the peer connects to the victim", 20, || {
        let h = h.clone();
        async move { h.status().await.unwrap().connected_peers >= 1 }
    })
    .await;
    node
}

fn get_blob(offset: usize, len: u32) -> Request {
    Request::GetBlob {
        hash: Hash::of(b"the test blob"),
        offset: offset as u64,
        len,
    }
}

/// A peer floods the market protocol with 10x its burst, in waves, while it fetches a
/// three-chunk blob from the same node: the flood is refused and counted as offences, the blob
/// bucket is untouched, and every chunk is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_market_flood_does_not_starve_a_blob_fetch_of_the_same_peer() {
    const MARKET_BURST: u32 = 10;
    const FLOOD: usize = 10 * MARKET_BURST as usize;
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.rr_quota = Rate::new(1, MARKET_BURST);
        c.blob_quota = Rate::new(1, 8);
        // Penalised, not blocked: its quota offences (1 point each, fewer than FLOOD) stay below
        // this, so the flooder stays connected and its fetch must succeed on its own bucket.
        c.offence_threshold = 10_000;
    })
    .await;
    let v = victim.handle.local_peer_id();
    let flooder = start_peer(Keypair::generate_ed25519(), &victim).await;
    let (fh, f) = (flooder.handle.clone(), flooder.handle.local_peer_id());

    let blob = test_blob();
    let chunk = limits::BLOB_CHUNK_BYTES;
    let chunks = blob.len().div_ceil(chunk as usize);
    assert_eq!(chunks, 3);
    let per_chunk = FLOOD.div_ceil(chunks);
    let (mut answered, mut refused) = (0usize, 0usize);
    let mut fetched = Vec::new();
    for c in 0..chunks {
        // A wave of market requests in flight while the chunk is asked for.
        let wave = futures::future::join_all(
            (0..per_chunk).map(|i| fh.request(v, Request::Echo(vec![(c * per_chunk + i) as u8]))),
        );
        let (wave, got) = tokio::join!(wave, fh.request(v, get_blob(fetched.len(), chunk)));
        for r in wave {
            match r {
                Ok(Response::Echo(_)) => answered += 1,
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(_) => refused += 1,
            }
        }
        match got {
            Ok(Response::Blob { total, data }) => {
                assert_eq!(total, blob.len() as u64);
                fetched.extend_from_slice(&data);
            }
            other => panic!("chunk {c} not served: {other:?}"),
        }
    }
    let sent = per_chunk * chunks;
    eprintln!(
        "market flood of {sent}: {answered} answered, {refused} refused; blob of {chunks} chunks \
         fetched"
    );
    // Every chunk served, from the same peer, none refused by the blob quota.
    assert_eq!(fetched, blob);
    assert_eq!(victim.seen.lock().unwrap().count(f, "get_blob"), chunks);
    assert_eq!(dropped(&victim, "blob", "quota"), 0.0);
    assert_eq!(offences(&victim, "blob_quota"), 0.0);
    // The flood: about a burst answered, the rest refused and each refusal an offence.
    assert_eq!(answered + refused, sent);
    assert!(answered >= 1, "nothing answered");
    assert!(refused >= sent / 2, "only {refused} of {sent} refused");
    assert_eq!(victim.seen.lock().unwrap().count(f, "echo"), answered);
    assert!(dropped(&victim, "market", "quota") >= (sent / 2) as f64);
    assert!(offences(&victim, "market_quota") >= (sent / 2) as f64);
    assert!(!victim.handle.blocked().await.unwrap().contains(&f));
}

/// The reverse: a peer floods the blob protocol with 10x its burst while it sends bids within
/// its market quota: every bid is answered, the blob flood is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_flood_does_not_refuse_bids_of_the_same_peer() {
    const BLOB_BURST: u32 = 10;
    const FLOOD: usize = 10 * BLOB_BURST as usize;
    const BIDS: usize = 5;
    let victim = start(Keypair::generate_ed25519(), |c| {
        c.blob_quota = Rate::new(1, BLOB_BURST);
        c.rr_quota = Rate::new(1, 2 * BIDS as u32);
        c.offence_threshold = 10_000; // penalised, not blocked (see above)
    })
    .await;
    let v = victim.handle.local_peer_id();
    let key = Keypair::generate_ed25519();
    let flooder = start_peer(key.clone(), &victim).await;
    let (fh, f) = (flooder.handle.clone(), flooder.handle.local_peer_id());

    // Waves of 20 (under the blob protocol's 32 streams per connection, so that every request
    // reaches the victim), each with a bid in flight beside it.
    let per_wave = FLOOD / BIDS;
    let (mut served, mut refused, mut acked) = (0usize, 0usize, 0usize);
    for w in 0..BIDS {
        let wave =
            futures::future::join_all((0..per_wave).map(|i| fh.request(v, get_blob(i, 1024))));
        let bid = Bid {
            job_id: Hash::of(&w.to_be_bytes()),
            price: 1,
            free_slots: 1,
            total_slots: 1,
        };
        let bid = Request::Bid(Signed::sign(&key, bid, agora_types::now_ms()).unwrap());
        let (wave, answer) = tokio::join!(wave, fh.request(v, bid));
        for r in wave {
            match r {
                Ok(Response::Blob { data, .. }) if data.len() == 1024 => served += 1,
                Ok(other) => panic!("unexpected answer {other:?}"),
                Err(_) => refused += 1,
            }
        }
        match answer {
            Ok(Response::Ack) => acked += 1,
            other => panic!("bid {w} not answered: {other:?}"),
        }
    }
    let sent = per_wave * BIDS;
    eprintln!(
        "blob flood of {sent}: {served} served, {refused} refused; {acked}/{BIDS} bids acked"
    );
    assert_eq!(acked, BIDS);
    assert_eq!(victim.seen.lock().unwrap().count(f, "bid"), BIDS);
    assert_eq!(dropped(&victim, "market", "quota"), 0.0);
    assert_eq!(offences(&victim, "market_quota"), 0.0);
    assert_eq!(served + refused, sent);
    assert!(served >= 1, "nothing served");
    assert!(refused >= sent / 2, "only {refused} of {sent} refused");
    assert_eq!(victim.seen.lock().unwrap().count(f, "get_blob"), served);
    assert!(dropped(&victim, "blob", "quota") >= (sent / 2) as f64);
    assert!(offences(&victim, "blob_quota") >= (sent / 2) as f64);
}

/// A frame of twice the market cap: refused as oversized on the market protocol (a bid), read
/// and answered on the result protocol (a result of exactly the same size). Requests on the
/// wrong protocol and oversized blob requests are refused and counted per protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_the_market_cap_is_refused_there_and_accepted_as_a_result() {
    let victim = start(Keypair::generate_ed25519(), |_| {}).await;
    let v = victim.handle.local_peer_id();
    let key = Keypair::generate_ed25519();
    let size = 2 * agora_net::MAX_MARKET_FRAME_BYTES;

    // A bid padded (in its signature field) to `size` bytes.
    let bid = Bid {
        job_id: Hash::of(b"job"),
        price: 1,
        free_slots: 1,
        total_slots: 1,
    };
    let mut signed = Signed::sign(&key, bid, agora_types::now_ms()).unwrap();
    let base = codec::encode(&Request::Bid(signed.clone())).unwrap().len();
    signed.signature.resize(64 + size - base - 2, 0); // the length varint grows by 2 bytes
    let big_bid = Request::Bid(signed);
    let bid_frame = frame(&big_bid);
    assert_eq!(bid_frame.len(), 4 + size);

    // A legal result (output within the 4 MiB cap, hash matching) of exactly the same size.
    let make_result = |len: usize| {
        let output = vec![0x5a; len];
        let claim = WorkResult {
            job_id: Hash::of(b"job"),
            outcome: Outcome::Completed {
                exit_code: 0,
                output_hash: Hash::of(&output),
                fuel_used: 1,
                compared: None,
            },
            price: 1,
        };
        Request::Result {
            result: Signed::sign(&key, claim, agora_types::now_ms()).unwrap(),
            output,
            stderr: vec![],
        }
    };
    let base = codec::encode(&make_result(0)).unwrap().len();
    let result = make_result(size - base - 2);
    let result_frame = frame(&result);
    assert_eq!(result_frame.len(), bid_frame.len());

    let raw = RawPeer::spawn(false);
    raw.dial(&victim.addr).await;
    eventually("the raw peer connects", 10, || {
        let n = raw.established();
        async move { n >= 1 }
    })
    .await;
    raw.request(v, bid_frame).await;
    eventually("the bid is refused as oversized", 10, || {
        let n = dropped(&victim, "market", "oversized");
        async move { n == 1.0 }
    })
    .await;
    assert_eq!(offences(&victim, "oversized_frame"), 1.0);
    raw.request_result(v, result_frame).await;
    let seen = victim.seen.clone();
    eventually("the result reaches the node and is answered", 10, || {
        let n = seen.lock().unwrap().count(raw.id, "result");
        let answered = raw.stats.responses.load(Ordering::Relaxed);
        async move { n == 1 && answered == 1 }
    })
    .await;
    assert_eq!(victim.seen.lock().unwrap().count(raw.id, "bid"), 0);
    assert_eq!(dropped(&victim, "result", "oversized"), 0.0);

    // A blob request on the result protocol, and a blob request over its 1 KiB cap.
    raw.request_result(v, frame(&get_blob(0, 1))).await;
    let mut hostile = (2048u32).to_be_bytes().to_vec();
    hostile.extend_from_slice(&[0; 2048]);
    raw.request_blob(v, hostile).await;
    eventually("both are refused and counted", 10, || {
        let m = dropped(&victim, "result", "misrouted");
        let o = dropped(&victim, "blob", "oversized");
        async move { m == 1.0 && o == 1.0 }
    })
    .await;
    assert_eq!(offences(&victim, "malformed_frame"), 1.0);
    assert_eq!(offences(&victim, "oversized_frame"), 2.0);
    assert_eq!(victim.seen.lock().unwrap().count(raw.id, "get_blob"), 0);

    // Through the handle: the bid is refused before it leaves, the result goes through.
    let honest = start_peer(key, &victim).await;
    let err = honest.handle.request(v, big_bid).await.unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");
    assert_eq!(
        honest.handle.request(v, result).await.unwrap(),
        Response::Ack
    );
}
