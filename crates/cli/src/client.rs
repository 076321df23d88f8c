//! `agora status` and `agora peers`: read a running node's HTTP API.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cmd::ClientArgs;

/// A small blocking-free HTTP client bound to one node's API.
pub struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    pub fn new(api: &str) -> Result<Api> {
        let base = if api.starts_with("http://") || api.starts_with("https://") {
            api.trim_end_matches('/').to_string()
        } else {
            format!("http://{api}")
        };
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Api { base, http })
    }

    async fn check(&self, r: reqwest::Response) -> Result<reqwest::Response> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let msg = body["error"].as_str().unwrap_or("no details").to_string();
        bail!("{} answered {status}: {msg}", self.base)
    }

    fn unreachable(&self) -> String {
        format!(
            "cannot reach the node at {}; is `agora node` running? (set --api)",
            self.base
        )
    }

    /// Sends a request and checks its status, saying how to fix an unreachable node.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let r = req.send().await.with_context(|| self.unreachable())?;
        self.check(r).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let r = self.send(self.http.get(self.url(path))).await?;
        Ok(r.bytes().await?.to_vec())
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> Result<Value> {
        let r = self.send(self.http.post(self.url(path)).body(body)).await?;
        Ok(r.json().await?)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self.send(self.http.post(self.url(path)).json(body)).await?;
        Ok(r.json().await?)
    }

    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let r = self.send(self.http.get(self.url(path))).await?;
        Ok(r.json().await?)
    }
}

pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}

pub fn status(a: &ClientArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api)?;
    let s = block_on(api.get_json("/v1/status"))?;
    if a.json {
        outln!("{s}");
    } else {
        outln!("peer id      {}", s["peer_id"].as_str().unwrap_or("?"));
        outln!("version      {}", s["version"].as_str().unwrap_or("?"));
        outln!("uptime       {} s", s["uptime_secs"]);
        outln!("peers        {}", s["connected_peers"]);
        outln!("routing      {} entries", s["routing_table_size"]);
        for a in s["listen_addresses"].as_array().into_iter().flatten() {
            outln!("listening    {}", a.as_str().unwrap_or("?"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn peers(a: &ClientArgs) -> Result<ExitCode> {
    let api = Api::new(&a.api)?;
    let p = block_on(api.get_json("/v1/peers"))?;
    if a.json {
        outln!("{p}");
        return Ok(ExitCode::SUCCESS);
    }
    let list = p.as_array().cloned().unwrap_or_default();
    outln!("{:<54} {:>8} {:<16} ADDRESS", "PEER", "RTT", "AGENT");
    for peer in &list {
        let rtt = peer["rtt_ms"]
            .as_f64()
            .map(|r| format!("{r:.1}ms"))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<54} {:>8} {:<16} {}",
            peer["peer_id"].as_str().unwrap_or("?"),
            rtt,
            peer["agent"].as_str().unwrap_or("-"),
            peer["addresses"][0].as_str().unwrap_or("-"),
        );
    }
    outln!("{} peers", list.len());
    Ok(ExitCode::SUCCESS)
}
