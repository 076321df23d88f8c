//! In-process multi-node tests over real loopback TCP.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use agora_net::{Config, Keypair, Multiaddr, NetEvent, NetHandle, Network, PeerId};
use agora_types::wire::{GossipMessage, Request, Response};
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;

struct Node {
    handle: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    addr: Multiaddr,
}

async fn start(bootstrap: Vec<Multiaddr>, tweak: impl FnOnce(&mut Config)) -> Node {
    let mut config = Config::local();
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.bootstrap = bootstrap;
    config.kad_bootstrap_interval = Duration::from_secs(2);
    tweak(&mut config);
    let Network { handle, events, .. } = agora_net::spawn(
        Keypair::generate_ed25519(),
        config,
        &mut Registry::default(),
    )
    .unwrap();
    let addr = loop {
        let s = handle.status().await.unwrap();
        if let Some(a) = s.listen_addresses.first() {
            break a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let addr = addr.with(agora_net::multiaddr::Protocol::P2p(handle.local_peer_id()));
    Node {
        handle,
        events,
        addr,
    }
}

/// Answers echo requests on a node until the test ends.
fn serve_echo(mut events: mpsc::Receiver<NetEvent>) -> mpsc::Receiver<GossipMessage> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                NetEvent::Request {
                    request: Request::Echo(b),
                    reply,
                    ..
                } => {
                    let _ = reply.send(Response::Echo(b));
                }
                NetEvent::Gossip { message, .. } => {
                    let _ = tx.try_send(message);
                }
                _ => {}
            }
        }
    });
    rx
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
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_discover_each_other_and_gossip_reaches_all() {
    let first = start(vec![], |_| {}).await;
    let boot = vec![first.addr.clone()];
    let mut nodes = vec![first];
    for _ in 1..10 {
        nodes.push(start(boot.clone(), |_| {}).await);
    }
    let ids: Vec<PeerId> = nodes.iter().map(|n| n.handle.local_peer_id()).collect();
    let handles: Vec<NetHandle> = nodes.iter().map(|n| n.handle.clone()).collect();
    let mut inboxes = vec![];
    for n in nodes {
        inboxes.push(serve_echo(n.events));
    }

    // Every node ends up with every other in its routing table, though it only knew node 0.
    eventually("full routing tables", 60, || {
        let handles = handles.clone();
        let ids = ids.clone();
        async move {
            for (i, h) in handles.iter().enumerate() {
                let table = h.routing_table().await.unwrap();
                for (j, id) in ids.iter().enumerate() {
                    if i != j && !table.contains(id) {
                        return false;
                    }
                }
            }
            true
        }
    })
    .await;

    // A gossip message published by node 9 reaches all the others. Publish repeatedly (each one
    // distinct) until the mesh has formed, then check every node saw at least one of them.
    let mut got = [false; 10];
    got[9] = true;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0u32;
    while got.iter().any(|g| !g) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gossip from node 9 did not reach: {:?}",
            got.iter()
                .enumerate()
                .filter(|(_, g)| !**g)
                .map(|(i, _)| i)
                .collect::<Vec<_>>()
        );
        n += 1;
        handles[9]
            .publish(GossipMessage::Text(format!("hello from node 9, #{n}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, inbox) in inboxes.iter_mut().enumerate() {
            while let Ok(m) = inbox.try_recv() {
                if matches!(&m, GossipMessage::Text(t) if t.starts_with("hello from node 9")) {
                    got[i] = true;
                }
            }
        }
    }

    for h in &handles {
        h.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_response_round_trip_and_oversized_frame_refused() {
    let a = start(vec![], |c| c.max_frame_bytes = 4096).await;
    let b = start(vec![a.addr.clone()], |c| c.max_frame_bytes = 1 << 20).await;
    let a_id = a.handle.local_peer_id();
    let (ah, bh) = (a.handle.clone(), b.handle.clone());
    let _a_in = serve_echo(a.events);
    let _b_in = serve_echo(b.events);

    eventually("b connects to a", 20, || {
        let bh = bh.clone();
        async move { bh.status().await.unwrap().connected_peers >= 1 }
    })
    .await;

    let r = bh
        .request(a_id, Request::Echo(b"ping".to_vec()))
        .await
        .unwrap();
    assert_eq!(r, Response::Echo(b"ping".to_vec()));

    // b may send 10 KiB, but a refuses any frame over 4 KiB: the request fails.
    let err = bh
        .request(a_id, Request::Echo(vec![0u8; 10 * 1024]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("request to"), "{err}");

    // a refuses to send what it would not accept.
    let err = ah
        .request(bh.local_peer_id(), Request::Echo(vec![0u8; 10 * 1024]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("exceeds the limit"), "{err}");

    // The connection survives, and a normal request still works.
    let r = bh
        .request(a_id, Request::Echo(b"again".to_vec()))
        .await
        .unwrap();
    assert_eq!(r, Response::Echo(b"again".to_vec()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_bootstrap_does_not_stop_the_node() {
    // Port 1 on loopback: nothing listens there.
    let dead: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
    let a = start(vec![dead], |_| {}).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = a.handle.status().await.unwrap();
    assert_eq!(s.connected_peers, 0);
    // It still serves peers that come to it.
    let b = start(vec![a.addr.clone()], |_| {}).await;
    let _a_in = serve_echo(a.events);
    let _b_in = serve_echo(b.events);
    let bh = b.handle.clone();
    eventually("b connects to a", 20, || {
        let bh = bh.clone();
        async move { bh.status().await.unwrap().connected_peers >= 1 }
    })
    .await;
}
