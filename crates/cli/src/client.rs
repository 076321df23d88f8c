//! `agora status` and `agora peers`, and the typed API client every command uses
//! ([`connect`]: [`agora_api_types::Client`] with the node's token).

use std::process::ExitCode;

use anyhow::{Context, Result};

use crate::cmd::ClientArgs;

/// How to find the token, when `e` is a node's 401 answer (a request that needs the token was
/// sent without it, or with a stale one).
pub fn token_hint(e: &anyhow::Error) -> Option<String> {
    match e.downcast_ref::<agora_api_types::ClientError>()? {
        agora_api_types::ClientError::Api { base, status, .. }
            if *status == reqwest::StatusCode::UNAUTHORIZED =>
        {
            Some(crate::token::hint(base))
        }
        _ => None,
    }
}

/// A typed client for the node at `api`, with its API token found as [`crate::token::find`]
/// says (`AGORA_API_TOKEN`, then the token files the node wrote on this machine).
pub fn connect(api: &str) -> Result<agora_api_types::Client> {
    connect_with(api, None)
}

/// Like [`connect`], with `token` (a `--token` flag) first when given.
pub fn connect_with(api: &str, token: Option<&str>) -> Result<agora_api_types::Client> {
    agora_api_types::Client::new(api, crate::token::find(api, token))
        .with_context(|| format!("--api {api:?} is not HOST:PORT or an http(s) URL"))
}

pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub fn status(a: &ClientArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let s = block_on(async { Ok(api.status().await?) })?;
    if a.json {
        outln!("{}", serde_json::to_string(&s)?);
    } else {
        outln!("peer id      {}", s.peer_id);
        outln!("version      {}", s.version);
        outln!("uptime       {} s", s.uptime_secs);
        outln!("peers        {}", s.connected_peers);
        outln!("routing      {} entries", s.routing_table_size);
        for a in &s.listen_addresses {
            outln!("listening    {a}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn peers(a: &ClientArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let list = block_on(async { Ok(api.peers().await?) })?;
    if a.json {
        outln!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("{:<54} {:>8} {:<16} ADDRESS", "PEER", "RTT", "AGENT");
    for peer in &list {
        let rtt = peer
            .rtt_ms
            .map(|r| format!("{r:.1}ms"))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<54} {:>8} {:<16} {}",
            peer.peer_id,
            rtt,
            peer.agent.as_deref().unwrap_or("-"),
            peer.addresses.first().map_or("-", String::as_str),
        );
    }
    outln!("{} peers", list.len());
    Ok(ExitCode::SUCCESS)
}
