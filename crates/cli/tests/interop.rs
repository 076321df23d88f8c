//! A stock rust-libp2p peer, written without any Agora code, talks to a real `agora node`
//! process over TCP with Noise and Yamux: Identify, Ping, a Kademlia query on
//! `/agora/kad/1.0.0`, and a GossipSub subscription to `agora/jobs/1`.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, gossipsub, identify, identity, kad, noise, ping, tcp, yamux,
};

#[derive(NetworkBehaviour)]
struct Stock {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    gossipsub: gossipsub::Behaviour,
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free port below the ephemeral range, never handed out twice in this process.
fn free_port() -> u16 {
    agora_net::free_loopback_port(agora_net::PortKind::Tcp).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_libp2p_peer_identifies_pings_queries_and_subscribes() {
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_agora");
    let out = Command::new(exe)
        .args(["id", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let node_id: PeerId = String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let port = free_port();
    let api = free_port();
    let _node = Killed(
        Command::new(exe)
            .args(["node", "--no-mdns", "--data-dir"])
            .arg(dir.path())
            .arg(format!("--listen=/ip4/127.0.0.1/tcp/{port}"))
            .arg(format!("--api=127.0.0.1:{api}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    let key = identity::Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|key| {
            let mut kad = kad::Behaviour::with_config(
                local,
                kad::store::MemoryStore::new(local),
                kad::Config::new(StreamProtocol::new("/agora/kad/1.0.0")),
            );
            kad.set_mode(Some(kad::Mode::Client));
            Stock {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/stock/1.0.0".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(Duration::from_millis(500)),
                ),
                kad,
                gossipsub: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossipsub::Config::default(),
                )
                .unwrap(),
            }
        })
        .unwrap()
        .build();

    let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
    swarm
        .behaviour_mut()
        .kad
        .add_address(&node_id, addr.clone());
    swarm
        .behaviour_mut()
        .gossipsub
        .subscribe(&gossipsub::IdentTopic::new("agora/jobs/1"))
        .unwrap();

    let (mut identified, mut pinged, mut kad_answered, mut subscribed) =
        (false, false, false, false);
    let mut queried = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut redial = tokio::time::interval(Duration::from_millis(500));
    while !(identified && pinged && kad_answered && subscribed) {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => panic!(
                "timed out: identified={identified} pinged={pinged} kad={kad_answered} subscribed={subscribed}"
            ),
            _ = redial.tick() => {
                // The node may still be starting: keep dialing until connected.
                if !swarm.is_connected(&node_id) {
                    let _ = swarm.dial(addr.clone());
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == node_id && !queried => {
                    queried = true;
                    swarm.behaviour_mut().kad.get_closest_peers(PeerId::random());
                }
                SwarmEvent::Behaviour(StockEvent::Identify(identify::Event::Received { peer_id, info, .. })) if peer_id == node_id => {
                    assert!(info.agent_version.starts_with("agora/"), "agent {}", info.agent_version);
                    assert!(info.protocols.iter().any(|p| p.as_ref() == "/agora/kad/1.0.0"));
                    identified = true;
                }
                SwarmEvent::Behaviour(StockEvent::Ping(ping::Event { peer, result: Ok(_), .. })) if peer == node_id => {
                    pinged = true;
                }
                SwarmEvent::Behaviour(StockEvent::Kad(kad::Event::OutboundQueryProgressed {
                    result: kad::QueryResult::GetClosestPeers(r), ..
                })) => {
                    // The node answered our FIND_NODE (with itself or other peers it knows).
                    match r {
                        Ok(ok) => { assert!(ok.peers.iter().any(|p| p.peer_id == node_id) || ok.peers.is_empty()); kad_answered = true; }
                        Err(e) => panic!("kademlia query failed: {e}"),
                    }
                }
                SwarmEvent::Behaviour(StockEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }))
                    if peer_id == node_id && topic.as_str() == "agora/jobs/1" =>
                {
                    subscribed = true;
                }
                _ => {}
            }
        }
    }
    // Our subscription reached the node too: it lists us as a subscriber of agora/jobs/1 in
    // its mesh bookkeeping; from our side, the node is a subscriber of the topic.
    let topic = gossipsub::IdentTopic::new("agora/jobs/1").hash();
    assert!(
        swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .any(|(p, topics)| *p == node_id && topics.contains(&&topic))
    );
}
