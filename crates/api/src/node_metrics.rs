//! `GET /metrics`: the network's registry (libp2p's and `agora_net_*` counters), plus gauges of
//! the node's own state computed at scrape time, so nothing on the hot path updates them:
//!
//! - `agora_jobs{state}`: the jobs this node submitted and still tracks, by state (every state
//!   listed, 0 included, so dashboards do not lose a series);
//! - `agora_node_uptime_seconds`;
//! - `agora_api_refused_requests_total{reason}`: what [`crate::auth::guard`] refused;
//! - with a ledger: `agora_ledger_height`, `agora_ledger_mempool`, `agora_ledger_validators`,
//!   `agora_ledger_open_escrows`, `agora_ledger_settled_jobs`, `agora_ledger_consensus_peers`.
//!
//! `docs/grafana/agora.json` charts them; a test checks that every metric it queries is served.

use agora_node::{JobState, NodeHandle};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::auth::Refusals;

/// Every job state, in lifecycle order.
const STATES: [JobState; 5] = [
    JobState::AwaitingEscrow,
    JobState::Bidding,
    JobState::Running,
    JobState::Verified,
    JobState::Failed,
];

fn gauge(r: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    r.register(name, help, g);
}

/// The node's own gauges and the API's refusals, in the OpenMetrics text format (without the
/// final `# EOF`).
async fn node_gauges(node: &NodeHandle, refusals: &Refusals) -> String {
    let mut registry = Registry::default();
    let r = registry.sub_registry_with_prefix("agora");
    r.register(
        "api_refused_requests",
        "API requests refused by the guard, by reason (host, token_missing, token_wrong, content_type)",
        refusals.family(),
    );
    let jobs: Family<Vec<(String, String)>, Gauge> = Family::default();
    let records = node.jobs().await;
    for s in STATES {
        let n = records.iter().filter(|j| j.state == s).count();
        jobs.get_or_create(&vec![("state".to_string(), s.to_string())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    r.register(
        "jobs",
        "Jobs this node submitted and still tracks, by state",
        jobs,
    );
    if let Ok(s) = node.status().await {
        gauge(
            r,
            "node_uptime_seconds",
            "Seconds since the node started",
            s.uptime_secs,
        );
    }
    if let Ok(l) = node.ledger_status().await {
        gauge(
            r,
            "ledger_height",
            "The last applied ledger height",
            l.height,
        );
        gauge(
            r,
            "ledger_mempool",
            "Transactions waiting in the mempool",
            l.mempool as u64,
        );
        gauge(
            r,
            "ledger_validators",
            "Validators for the next height",
            l.validators.len() as u64,
        );
        gauge(
            r,
            "ledger_open_escrows",
            "Escrows still open",
            l.open_escrows as u64,
        );
        gauge(
            r,
            "ledger_settled_jobs",
            "Jobs whose quorum was paid",
            l.settled_jobs,
        );
        gauge(
            r,
            "ledger_consensus_peers",
            "Peers on the consensus network",
            l.consensus_peers as u64,
        );
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::warn!(error = %e, "cannot encode the node's gauges");
        return String::new();
    }
    strip_eof(&out).to_string()
}

/// `text` without its final `# EOF` line.
fn strip_eof(text: &str) -> &str {
    text.trim_end().strip_suffix("# EOF").unwrap_or(text)
}

/// The whole scrape: the network's registry and the node's gauges, one `# EOF` at the end.
pub async fn scrape(node: &NodeHandle, refusals: &Refusals) -> String {
    let net = node.metrics_text();
    let mut out = strip_eof(&net).to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&node_gauges(node, refusals).await);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str("# EOF\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_eof_at_the_end() {
        assert_eq!(strip_eof("a 1\n# EOF\n"), "a 1\n");
        assert_eq!(strip_eof("a 1\n"), "a 1\n");
    }
}
