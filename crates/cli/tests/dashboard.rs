//! The dashboard against a real node process: `agora dashboard` prints a link the node accepts,
//! the page is refused without the right token, and the live feed sends snapshots, at most 16
//! streams at once, each freed when its client goes.

// A test reports failure by panicking.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;

use common::Network;

/// The most live streams a node serves (`agora_api` dashboard module).
const MAX_STREAMS: usize = 16;

/// Reads a live stream until its first `snapshot` event and returns its JSON.
async fn first_snapshot(r: &mut reqwest::Response) -> Value {
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .expect("a snapshot within 30 s")
            .unwrap()
            .expect("the stream stays open");
        text.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(at) = text.find("event: snapshot\n") {
            let rest = &text[at..];
            if let Some(end) = rest.find("\n\n") {
                let data: String = rest[..end]
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
                    .collect();
                return serde_json::from_str(&data).unwrap();
            }
        }
    }
}

#[test]
fn dashboard_link_page_and_live_feed() {
    let net = Network::start(1);
    let node = &net.nodes[0];
    let api = node.api.clone();

    // The link carries the token the node wrote.
    let out = net.cli(0, &["dashboard"]);
    assert!(out.status.success(), "agora dashboard failed: {out:?}");
    let url = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let token = url
        .strip_prefix(&format!("http://{api}/?token="))
        .unwrap_or_else(|| panic!("not a dashboard link for {api}: {url}"))
        .to_string();
    let written = std::fs::read_to_string(node.dir.join("api.token")).unwrap();
    assert_eq!(token, written.trim());

    let wrong = net.cli(0, &["dashboard", "--token", &"0".repeat(64)]);
    assert!(!wrong.status.success());
    assert!(
        String::from_utf8_lossy(&wrong.stderr).contains("refused the token"),
        "{wrong:?}"
    );

    net.rt.block_on(async {
        // No overall timeout: the live streams stay open for as long as the test holds them.
        let http = &reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let page = http.get(&url).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let csp = page.headers()["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(page.text().await.unwrap().contains("/dashboard/app.js"));
        for bad in [
            format!("http://{api}/"),
            format!("http://{api}/?token="),
            format!("http://{api}/?token={}", "0".repeat(64)),
            format!("http://{api}/?token={}x", token),
        ] {
            let r = http.get(&bad).send().await.unwrap();
            assert_eq!(r.status(), 401, "{bad}");
            assert!(r.text().await.unwrap().contains("agora dashboard"));
        }
        let js = http
            .get(format!("http://{api}/dashboard/app.js"))
            .send()
            .await
            .unwrap();
        assert_eq!(js.status(), 200);
        assert!(
            js.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/javascript")
        );

        // The live feed: a snapshot of this node.
        let events = format!("http://{api}/v1/events");
        let mut first = http.get(&events).send().await.unwrap();
        assert_eq!(first.status(), 200);
        assert!(
            first.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let snap = first_snapshot(&mut first).await;
        assert_eq!(snap["status"]["peer_id"], node.peer_id.as_str());
        assert!(snap["ledger"].is_null(), "no ledger on this node: {snap}");
        assert!(snap["jobs"].as_array().unwrap().is_empty());
        assert!(snap["host"]["cpus"].as_u64().unwrap() >= 1);

        // Bounded: the stream after the last permitted one is refused...
        let mut held = vec![first];
        while held.len() < MAX_STREAMS {
            let r = http.get(&events).send().await.unwrap();
            assert_eq!(r.status(), 200, "stream {} refused", held.len() + 1);
            held.push(r);
        }
        let refused = http.get(&events).send().await.unwrap();
        assert_eq!(refused.status(), 503);
        let body: Value = refused.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("close a dashboard tab")
        );

        // ...and a client that goes frees its stream.
        drop(held.pop());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = http.get(&events).send().await.unwrap();
            if r.status() == 200 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "a closed stream was not freed within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}
