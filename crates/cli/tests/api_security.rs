//! Process-level tests of the API's defences (issue 12, issue 18): real `agora node` processes
//! with a ledger, raw HTTP requests as an attacker would send them, and the CLI as a user runs it.
//!
//! - Without the token, a transfer, a stake, a job submit and a blob upload are refused (401).
//! - A foreign `Host` (DNS rebinding) is refused (403), reads included.
//! - A `text/plain` job submit is refused (415).
//! - With the token all of them succeed (submit answers 201); no CORS header is ever sent.
//! - The CLI (`agora job submit`, `agora wallet transfer`, `agora job estimate`) needs no flag.
//! - The token files are 0600 (their directory 0700); the per-address one goes at SIGTERM.
//! - Uploads are bounded (503 beyond) and streamed: an abandoned one leaves no file behind.
//! - Client-caused ledger errors are 4xx with a JSON body.

// A test reports failure by panicking.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::Network;
use reqwest::StatusCode;
use serde_json::{Value, json};

const PRIMES: &[u8] = include_bytes!("../../../examples/wasm/primes.wasm");

fn token_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("api.token"))
        .unwrap()
        .trim()
        .to_string()
}

/// The per-address token file the node serving `api` wrote for this user.
fn address_file(api: &str) -> PathBuf {
    agora_node::config::default_data_dir()
        .join("api")
        .join(format!("{}.token", api.replace(':', "_")))
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

/// Sends a request to node `i`: `method path`, with `token`, `host` and `content_type` headers
/// when given, and `body`.
#[allow(clippy::too_many_arguments)]
fn send(
    net: &Network,
    i: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
    host: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> Reply {
    let url = format!("http://{}{path}", net.nodes[i].api);
    net.rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut req = client.request(method.parse().unwrap(), &url).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(h) = host {
            req = req.header(reqwest::header::HOST, h);
        }
        if let Some(c) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, c);
        }
        req = req.header(reqwest::header::ORIGIN, "http://evil.example");
        let r = req.send().await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            headers,
            body,
        }
    })
}

fn json_body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

fn assert_error(r: &Reply, status: StatusCode, needle: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    let msg = r.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: the body is not JSON {{\"error\"}}: {}", r.body));
    assert!(msg.contains(needle), "{what}: {msg:?} lacks {needle:?}");
    assert!(
        !r.headers
            .keys()
            .any(|k| k.as_str().starts_with("access-control-")),
        "{what}: a CORS header was sent: {:?}",
        r.headers
    );
}

fn wait_height(net: &Network, i: usize, height: u64) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let h = net
            .get(i, "/v1/ledger/status")
            .ok()
            .and_then(|s| s["height"].as_u64())
            .unwrap_or(0);
        if h >= height {
            return;
        }
        assert!(Instant::now() < deadline, "node {i} stuck at height {h}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn the_api_refuses_what_lacks_the_token_host_or_type_and_the_cli_needs_no_flag() {
    let mut net = Network::start_with(2, Some(1));
    wait_height(&net, 0, 2);
    let token = token_of(&net.nodes[0].dir);
    let to = net.nodes[1].peer_id.clone();
    assert_eq!(token.len(), 64);

    // The token files: 0600, the per-address one in a 0700 directory, both with the token.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let data_file = net.nodes[0].dir.join("api.token");
        assert_eq!(mode(&data_file), 0o600, "{}", data_file.display());
        let addr = address_file(&net.nodes[0].api);
        assert_eq!(mode(&addr), 0o600, "{}", addr.display());
        assert_eq!(mode(addr.parent().unwrap()), 0o700);
        assert_eq!(std::fs::read_to_string(&addr).unwrap().trim(), token);
    }

    let transfer = json_body(json!({"to": to, "amount": 5}));
    let stake = json_body(json!({"amount": 5}));
    let blob = PRIMES.to_vec();
    let json_ct = Some("application/json");
    let raw_ct = Some("application/octet-stream");

    // 1. Without the token (or with a wrong one): 401, saying how to fix it.
    for (path, body, ct) in [
        ("/v1/wallet/transfer", transfer.clone(), json_ct),
        ("/v1/wallet/stake", stake.clone(), json_ct),
        (
            "/v1/jobs",
            json_body(json!({"module": "ab".repeat(32)})),
            json_ct,
        ),
        ("/v1/blobs", blob.clone(), raw_ct),
    ] {
        let r = send(&net, 0, "POST", path, None, None, ct, body.clone());
        assert_error(&r, StatusCode::UNAUTHORIZED, "--token", path);
        let r = send(&net, 0, "POST", path, Some(&"0".repeat(64)), None, ct, body);
        assert_error(&r, StatusCode::UNAUTHORIZED, "does not match", path);
    }

    // 2. A foreign Host (a DNS-rebinding page): 403, even for reads, even with the token.
    let r = send(
        &net,
        0,
        "GET",
        "/v1/wallet",
        None,
        Some("evil.example:80"),
        None,
        vec![],
    );
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "not this node's API",
        "GET with a foreign Host",
    );
    let r = send(
        &net,
        0,
        "POST",
        "/v1/wallet/transfer",
        Some(&token),
        Some("attacker.example"),
        json_ct,
        transfer.clone(),
    );
    assert_error(
        &r,
        StatusCode::FORBIDDEN,
        "not this node's API",
        "POST with a foreign Host",
    );
    // Loopback names pass.
    let r = send(
        &net,
        0,
        "GET",
        "/v1/status",
        None,
        Some("localhost"),
        None,
        vec![],
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // 3. A text/plain job submit (a cross-site "simple" request): 415, token or not.
    let spec = json_body(json!({"module": "ab".repeat(32)}));
    let r = send(
        &net,
        0,
        "POST",
        "/v1/jobs",
        Some(&token),
        None,
        Some("text/plain"),
        spec,
    );
    assert_error(
        &r,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
        "text/plain submit",
    );

    // 4. With the token every one of them succeeds.
    let r = send(
        &net,
        0,
        "POST",
        "/v1/blobs",
        Some(&token),
        None,
        raw_ct,
        blob,
    );
    assert_eq!(r.status, StatusCode::CREATED, "upload: {}", r.body);
    let module = r.body["hash"].as_str().unwrap().to_string();
    assert_eq!(r.body["size"], PRIMES.len());
    let spec = json_body(json!({"module": module, "redundancy": 1, "max_price": 10}));
    let r = send(
        &net,
        0,
        "POST",
        "/v1/jobs",
        Some(&token),
        None,
        json_ct,
        spec,
    );
    assert_eq!(r.status, StatusCode::CREATED, "submit: {}", r.body);
    assert_eq!(r.body["id"].as_str().unwrap().len(), 64);
    let r = send(
        &net,
        0,
        "POST",
        "/v1/wallet/transfer",
        Some(&token),
        None,
        json_ct,
        transfer,
    );
    assert_eq!(r.status, StatusCode::OK, "transfer: {}", r.body);
    assert_eq!(r.body["applied"], true, "{}", r.body);
    let r = send(
        &net,
        0,
        "POST",
        "/v1/wallet/stake",
        Some(&token),
        None,
        json_ct,
        stake,
    );
    assert_eq!(r.status, StatusCode::OK, "stake: {}", r.body);
    assert_eq!(r.body["applied"], true, "{}", r.body);
    // Reads need no token (curl on the machine keeps working).
    let r = send(&net, 0, "GET", "/v1/jobs", None, None, None, vec![]);
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // 5. Client-caused ledger and submit errors: 4xx with a JSON body, never 500.
    let big = json_body(json!({"to": to, "amount": 999_999_999_999u64}));
    let r = send(
        &net,
        0,
        "POST",
        "/v1/wallet/transfer",
        Some(&token),
        None,
        json_ct,
        big,
    );
    assert_error(
        &r,
        StatusCode::PAYMENT_REQUIRED,
        "insufficient",
        "transfer beyond the balance",
    );
    let spec =
        json_body(json!({"module": module, "redundancy": 9, "max_price": 999_999_999_999u64}));
    let r = send(
        &net,
        0,
        "POST",
        "/v1/jobs",
        Some(&token),
        None,
        json_ct,
        spec,
    );
    assert_error(
        &r,
        StatusCode::PAYMENT_REQUIRED,
        "escrow",
        "submit beyond the balance",
    );
    let r = send(
        &net,
        0,
        "POST",
        "/v1/wallet/stake",
        Some(&token),
        None,
        json_ct,
        b"{".to_vec(),
    );
    assert!(r.status.is_client_error(), "{}", r.status);
    assert!(
        r.body["error"].is_string(),
        "a malformed body answers JSON: {}",
        r.body
    );
    let r = send(
        &net,
        0,
        "GET",
        "/v1/no/such/endpoint",
        None,
        None,
        None,
        vec![],
    );
    assert_error(&r, StatusCode::NOT_FOUND, "no endpoint", "unknown route");

    // The refusals are counted on /metrics, by reason.
    let metrics = net.get_text(0, "/metrics");
    let refused = |reason: &str| -> f64 {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("agora_api_refused_requests_total")
                    && l.contains(&format!("reason=\"{reason}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no refusal counter for {reason}:\n{metrics}"))
    };
    assert_eq!(refused("token_missing"), 4.0);
    assert_eq!(refused("token_wrong"), 4.0);
    assert_eq!(refused("host"), 2.0);
    assert_eq!(refused("content_type"), 1.0);

    // 6. The CLI finds the token itself: no flag, no variable.
    let input = net.file("n.txt", b"1000");
    let primes = net.file("primes.wasm", PRIMES);
    let out = net.cli(
        0,
        &[
            "job",
            "submit",
            primes.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--redundancy",
            "1",
            "--max-price",
            "10",
        ],
    );
    assert!(
        out.status.success(),
        "agora job submit: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = net.cli(0, &["wallet", "transfer", &to, "7"]);
    assert!(
        out.status.success(),
        "agora wallet transfer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong token given explicitly is refused, with the node's advice.
    let out = net.cli(
        0,
        &["wallet", "transfer", &to, "7", "--token", &"1".repeat(64)],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The estimate: node 1 is a worker node 0 knows; nothing is locked.
    let before = net.get(0, "/v1/wallet").unwrap()["escrowed"].clone();
    let out = net.cli(0, &["job", "estimate", "--redundancy", "1", "--json"]);
    assert!(
        out.status.success(),
        "agora job estimate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(e["known_workers"].as_u64().unwrap() >= 1, "{e}");
    assert!(
        e["escrow"].as_u64().unwrap() > 0,
        "a ledger node locks escrow: {e}"
    );
    assert!(e["price_per_replica"]["min"].is_u64(), "{e}");
    assert_eq!(net.get(0, "/v1/wallet").unwrap()["escrowed"], before);
    let out = net.cli(0, &["job", "estimate", "--max-price", "0"]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("could run now"), "{table}");
    assert!(table.contains("raise --max-price"), "{table}");

    // 7. At SIGTERM the node removes its per-address token file.
    let addr = address_file(&net.nodes[1].api);
    assert!(addr.exists(), "{}", addr.display());
    let pid = net.nodes[1].child.as_ref().unwrap().id();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let _ = net.nodes[1].child.take().unwrap().wait();
    assert!(
        !addr.exists(),
        "{} is still there after SIGTERM",
        addr.display()
    );
    net.assert_all_alive();
}

/// Opens an upload that sends its headers and a little of its body, then stalls.
fn stalled_upload(api: &str, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(api).unwrap();
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 4096]).unwrap();
    s.flush().unwrap();
    s
}

fn upload_files(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("blobs"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(".upload."))
        .count()
}

#[test]
fn uploads_are_bounded_streamed_to_disk_and_cleaned_up() {
    let mut net = Network::start(1);
    let token = token_of(&net.nodes[0].dir);
    let api = net.nodes[0].api.clone();
    let dir = net.nodes[0].dir.clone();
    let stalled: Vec<TcpStream> = (0..4).map(|_| stalled_upload(&api, &token)).collect();
    // The four are received into files on disk as they arrive.
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_files(&dir) < 4 {
        assert!(
            Instant::now() < deadline,
            "the stalled uploads have no temp files"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A fifth is refused at once: busy, retry.
    let r = send(
        &net,
        0,
        "POST",
        "/v1/blobs",
        Some(&token),
        None,
        Some("application/octet-stream"),
        b"hello".to_vec(),
    );
    assert_error(
        &r,
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "a fifth upload",
    );
    // Over the cap by its declared length: 413 before anything is read.
    let mut s = TcpStream::connect(&api).unwrap();
    write!(
        s,
        "POST /v1/blobs HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        (64u64 << 20) + 1
    )
    .unwrap();
    let mut head = String::new();
    std::io::Read::read_to_string(&mut s, &mut head).unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    // The stalled clients go away: their files are removed and uploads are accepted again.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(30);
    while upload_files(&dir) > 0 {
        assert!(
            Instant::now() < deadline,
            "abandoned uploads left temp files"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = send(
        &net,
        0,
        "POST",
        "/v1/blobs",
        Some(&token),
        None,
        Some("application/octet-stream"),
        b"hello".to_vec(),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(
        r.body["hash"].as_str().unwrap(),
        blake3_hex(b"hello"),
        "the stored blob is the bytes sent"
    );
    net.assert_all_alive();
}

fn blake3_hex(b: &[u8]) -> String {
    agora_types::Hash::of(b).to_hex()
}

#[test]
fn a_non_loopback_api_warns_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_tcp_port();
    let mut node = common::Node {
        peer_id: String::new(),
        api: format!("127.0.0.1:{port}"),
        dir: dir.path().to_path_buf(),
        args: vec![
            "node".into(),
            "--preset=local".into(),
            format!("--data-dir={}", dir.path().display()),
            format!("--listen=/ip4/127.0.0.1/tcp/{}", common::free_tcp_port()),
            format!("--api=0.0.0.0:{port}"),
            "--no-mdns".into(),
            "--exit-with-parent".into(),
        ],
        child: None,
    };
    node.spawn();
    let deadline = Instant::now() + Duration::from_secs(60);
    let log = loop {
        let log = std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
        if log.contains("HTTP API listening") || Instant::now() > deadline {
            break log;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SIGTERM, so that it removes its per-address token file.
    if let Some(mut c) = node.child.take() {
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = c.wait();
    }
    assert!(
        log.contains("reachable from the network") && log.contains("TLS"),
        "no warning for an API on 0.0.0.0:\n{log}"
    );
    assert!(!address_file(&format!("0.0.0.0:{port}")).exists());
}
