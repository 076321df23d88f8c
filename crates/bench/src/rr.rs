//! `rr`: Agora's request-response round trip against bare libp2p request-response.
//!
//! Agora: two `agora_net` nodes (the client bootstraps to the server); the client calls
//! `NetHandle::request(server, Request::Echo(1 KiB))` and the server's node task answers from
//! its event queue. That path crosses the handle's command queue, the swarm task, the
//! request-response behaviour among Agora's others (Kademlia, GossipSub, Identify, Ping), the
//! postcard codec, the node's event queue and the reply oneshot, on both sides.
//!
//! Baseline: two bare libp2p swarms with only a request-response behaviour over the same
//! transport (TCP with nodelay, Noise, Yamux) and a length-prefixed codec carrying the same
//! 1 KiB. The client drives its swarm inline; the server answers in its event loop.
//!
//! Requests are sequential (one in flight), timed from the call to the answer, in alternating
//! blocks of Agora and bare requests after a warm-up of each.
//!
//! Diagnostic, not a baseline: the same bare pair behind `agora_net`'s pattern (each swarm owned
//! by a task, a command queue and oneshot answers on the client, an event queue to an app task
//! and oneshot replies on the server). It splits the gap between Agora and bare libp2p into what
//! the queues and task hops cost and what the rest (Agora's other behaviours, codec, metrics)
//! costs.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{Swarm, SwarmEvent};
use libp2p::{Multiaddr, StreamProtocol, SwarmBuilder, noise, tcp, yamux};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};

use agora_types::wire::{Request, Response};

use crate::Opts;
use crate::util::{self, Node};

const PAYLOAD: usize = 1024;
const GOAL: f64 = 1.2;

pub(crate) async fn run(opts: &Opts) -> anyhow::Result<Value> {
    let n = opts
        .iterations
        .unwrap_or(if opts.smoke { 50 } else { 2000 });
    let block = if opts.smoke { 25 } else { 100 };
    let warmup = (n / 10).max(10);
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();

    // Agora: two nodes, the client bootstraps to the server.
    let mut server = util::start_node(util::local_config()?).await?;
    let mut config = util::local_config()?;
    config.bootstrap = vec![server.addr.clone()];
    let mut client = util::start_node(config).await?;
    util::serve(&mut server, |_| {});
    util::serve(&mut client, |_| {});
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.handle.status().await?.connected_peers == 0 {
        if Instant::now() > deadline {
            bail!("the Agora client did not connect to the server within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let server_id = server.handle.local_peer_id();

    // Baseline: a bare request-response pair.
    let mut bare = BareClient::start().await?;
    // Diagnostic: the same bare pair behind Agora's task-and-queues pattern.
    let queued = QueuedClient::start().await?;

    for _ in 0..warmup {
        agora_once(&client, server_id, &payload).await?;
        bare.once(&payload).await?;
        queued.once(&payload).await?;
    }
    let mut agora_t = Vec::with_capacity(n);
    let mut bare_t = Vec::with_capacity(n);
    let mut queued_t = Vec::with_capacity(n);
    // Process CPU time spent during each kind's blocks.
    let mut cpu = [Duration::ZERO; 3];
    let mut charge = |i: usize, since: Option<Duration>| {
        if let (Some(a), Some(b)) = (since, util::process_cpu()) {
            cpu[i] += b.saturating_sub(a);
        }
    };
    while agora_t.len() < n {
        let k = block.min(n - agora_t.len());
        let c = util::process_cpu();
        for _ in 0..k {
            agora_t.push(agora_once(&client, server_id, &payload).await?);
        }
        charge(0, c);
        let c = util::process_cpu();
        for _ in 0..k {
            bare_t.push(bare.once(&payload).await?);
        }
        charge(1, c);
        let c = util::process_cpu();
        for _ in 0..k {
            queued_t.push(queued.once(&payload).await?);
        }
        charge(2, c);
    }
    let cpu_per_request = cpu.map(|c| util::us(c / n as u32));

    util::shutdown_all(vec![client, server]).await;
    bare.stop();
    queued.stop();

    let (a50, a99, agora) = util::summary_us(&agora_t)?;
    let (b50, b99, baseline) = util::summary_us(&bare_t)?;
    let (q50, _, queued) = util::summary_us(&queued_t)?;
    let r50 = util::ratio(a50, b50);
    Ok(json!({
        "bench": "rr",
        "smoke": opts.smoke,
        "machine": util::machine(),
        "requests": n,
        "warmup_requests": warmup,
        "payload_bytes": PAYLOAD,
        "transport": "loopback TCP (nodelay) + Noise + Yamux, one process",
        "agora": agora,
        "baseline": baseline,
        "baseline_is": "bare libp2p request-response (own swarms, TCP+Noise+Yamux, length-prefixed codec), same payload, alternating blocks",
        "diagnostic": {
            "bare_behind_queues": queued,
            "bare_behind_queues_is": "the bare pair, each swarm in its own task as in agora_net: requests sent through an mpsc command queue and answered on a oneshot; inbound requests handed to an app task through an mpsc queue and answered on a oneshot",
            "cpu_us_per_request": {
                "agora": cpu_per_request[0],
                "bare": cpu_per_request[1],
                "bare_behind_queues": cpu_per_request[2],
                "note": "CPU time of the whole process (both ends, all threads) during each kind's blocks, per request",
            },
            "p50_us": {
                "bare": util::us(b50),
                "queues_added": util::us(q50.saturating_sub(b50)),
                "rest_added": util::us(a50.saturating_sub(q50)),
                "agora": util::us(a50),
            },
        },
        "ratio_p50": r50,
        "ratio_p99": util::ratio(a99, b99),
        "goal": format!("p50_agora / p50_bare <= {GOAL}"),
        "goal_met": r50 <= GOAL,
    }))
}

async fn agora_once(
    client: &Node,
    server: agora_net::PeerId,
    payload: &[u8],
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let r = client
        .handle
        .request(server, Request::Echo(payload.to_vec()))
        .await?;
    let dt = t.elapsed();
    match r {
        Response::Echo(b) if b == payload => Ok(dt),
        other => bail!("unexpected answer to an echo: {other:?}"),
    }
}

const BARE_PROTOCOL: StreamProtocol = StreamProtocol::new("/bench/echo/1.0.0");

/// A 4-byte big-endian length, then the bytes (the framing Agora's codec uses, minus postcard).
#[derive(Clone, Default)]
struct RawCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 1 << 20 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, data: &[u8]) -> io::Result<()> {
    io.write_all(&(data.len() as u32).to_be_bytes()).await?;
    io.write_all(data).await?;
    io.flush().await
}

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
}

type BareBehaviour = request_response::Behaviour<RawCodec>;

fn bare_swarm() -> anyhow::Result<Swarm<BareBehaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                RawCodec,
                [(BARE_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(30)),
            )
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build())
}

/// The bare client swarm, connected to a bare echo server running in its own task.
struct BareClient {
    swarm: Swarm<BareBehaviour>,
    server: libp2p::PeerId,
    server_task: tokio::task::JoinHandle<()>,
}

impl BareClient {
    async fn start() -> anyhow::Result<Self> {
        let mut server = bare_swarm()?;
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr: Multiaddr = loop {
            match tokio::time::timeout(Duration::from_secs(10), server.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => break address,
                Ok(_) => {}
                Err(_) => bail!("the bare server did not listen within 10 s"),
            }
        };
        let server_id = *server.local_peer_id();
        let server_task = tokio::spawn(async move {
            loop {
                if let SwarmEvent::Behaviour(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) = server.select_next_some().await
                {
                    let _ = server.behaviour_mut().send_response(channel, request);
                }
            }
        });
        let mut swarm = bare_swarm()?;
        swarm.dial(addr)?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) if peer_id == server_id => {
                    break;
                }
                Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                    bail!("the bare client could not connect: {error}")
                }
                Ok(_) => {}
                Err(_) => bail!("the bare client did not connect within 10 s"),
            }
        }
        Ok(BareClient {
            swarm,
            server: server_id,
            server_task,
        })
    }

    async fn once(&mut self, payload: &[u8]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let id = self
            .swarm
            .behaviour_mut()
            .send_request(&self.server, payload.to_vec());
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Response {
                                request_id,
                                response,
                            },
                        ..
                    }) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    }) if request_id == id => return Err(error),
                    _ => {}
                }
            }
        })
        .await
        .context("bare request timed out")?;
        let dt = t.elapsed();
        match answer {
            Ok(b) if b == payload => Ok(dt),
            Ok(_) => bail!("the bare echo answered different bytes"),
            Err(e) => bail!("bare request failed: {e}"),
        }
    }

    fn stop(self) {
        self.server_task.abort();
    }
}

type Reply = oneshot::Sender<Result<Vec<u8>, String>>;

/// The bare pair behind the pattern of `agora_net`: each swarm owned by a task, the client
/// reached through a command queue and oneshot answers, the server handing each request to an
/// app task through an event queue and sending the answer that comes back on a oneshot.
struct QueuedClient {
    commands: mpsc::Sender<(Vec<u8>, Reply)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl QueuedClient {
    async fn start() -> anyhow::Result<Self> {
        let mut server = bare_swarm()?;
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
        let addr: Multiaddr = loop {
            match tokio::time::timeout(Duration::from_secs(10), server.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => break address,
                Ok(_) => {}
                Err(_) => bail!("the queued server did not listen within 10 s"),
            }
        };
        let server_id = *server.local_peer_id();
        let (app_tx, mut app_rx) = mpsc::channel::<(Vec<u8>, oneshot::Sender<Vec<u8>>)>(4096);
        let app = tokio::spawn(async move {
            while let Some((request, reply)) = app_rx.recv().await {
                let _ = reply.send(request);
            }
        });
        let server_task = tokio::spawn(async move {
            let mut replies = FuturesUnordered::new();
            loop {
                tokio::select! {
                    event = server.select_next_some() => {
                        if let SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Request { request, channel, .. },
                            ..
                        }) = event
                        {
                            let (tx, rx) = oneshot::channel();
                            replies.push(async move { (rx.await.ok(), channel) });
                            let _ = app_tx.try_send((request, tx));
                        }
                    }
                    Some((answer, channel)) = replies.next(), if !replies.is_empty() => {
                        let answer: Option<Vec<u8>> = answer;
                        let _ = server
                            .behaviour_mut()
                            .send_response(channel, answer.unwrap_or_default());
                    }
                }
            }
        });
        let mut swarm = bare_swarm()?;
        swarm.dial(addr)?;
        loop {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) if peer_id == server_id => {
                    break;
                }
                Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                    bail!("the queued client could not connect: {error}")
                }
                Ok(_) => {}
                Err(_) => bail!("the queued client did not connect within 10 s"),
            }
        }
        let (commands, mut rx) = mpsc::channel::<(Vec<u8>, Reply)>(1024);
        let client_task = tokio::spawn(async move {
            let mut pending: HashMap<request_response::OutboundRequestId, Reply> = HashMap::new();
            loop {
                tokio::select! {
                    event = swarm.select_next_some() => match event {
                        SwarmEvent::Behaviour(request_response::Event::Message {
                            message: request_response::Message::Response { request_id, response },
                            ..
                        }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Ok(response));
                            }
                        }
                        SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                            request_id, error, ..
                        }) => {
                            if let Some(reply) = pending.remove(&request_id) {
                                let _ = reply.send(Err(error.to_string()));
                            }
                        }
                        _ => {}
                    },
                    command = rx.recv() => match command {
                        Some((request, reply)) => {
                            let id = swarm.behaviour_mut().send_request(&server_id, request);
                            pending.insert(id, reply);
                        }
                        None => return,
                    },
                }
            }
        });
        Ok(QueuedClient {
            commands,
            tasks: vec![app, server_task, client_task],
        })
    }

    async fn once(&self, payload: &[u8]) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let (tx, rx) = oneshot::channel();
        self.commands
            .send((payload.to_vec(), tx))
            .await
            .map_err(|_| anyhow::anyhow!("the queued client task stopped"))?;
        let answer = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .context("queued request timed out")?
            .context("the queued client task stopped")?;
        let dt = t.elapsed();
        match answer {
            Ok(b) if b == payload => Ok(dt),
            Ok(_) => bail!("the queued echo answered different bytes"),
            Err(e) => bail!("queued request failed: {e}"),
        }
    }

    fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}
