//! The Grafana dashboard in `docs/grafana/agora.json` is valid JSON and every metric it queries
//! is served by a real node's `/metrics` (a `# TYPE` line of the scrape), so a renamed metric
//! breaks this test, not an operator's dashboard.

// A test reports failure by panicking.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use agora_node::{FileConfig, Node, NodeConfig};

const DASHBOARD: &str = include_str!("../../../docs/grafana/agora.json");
/// Where the `agora_net_*` metrics are registered (a labelled family appears in a scrape only
/// once it has a sample, so families are also read from their registration).
const NET_METRICS: &str = include_str!("../../net/src/metrics.rs");
const NODE_METRICS: &str = include_str!("../src/node_metrics.rs");

/// The names registered in `crates/net/src/metrics.rs`: `r.register("name", ...)` under the
/// `agora_net` prefix.
fn registered_net_metrics() -> BTreeSet<String> {
    NET_METRICS
        .split("r.register(")
        .skip(1)
        .filter_map(|c| c.trim_start().strip_prefix('"')?.split('"').next())
        .map(|n| format!("agora_net_{n}"))
        .collect()
}

/// Metric names in a PromQL expression: identifiers that start with `agora_` or `libp2p_`.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = vec![];
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = expr[i..].starts_with("agora_") || expr[i..].starts_with("libp2p_");
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Every `expr` of every panel's targets.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "expr"
                    && let Some(s) = x.as_str()
                {
                    out.push(s.to_string());
                }
                exprs(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| exprs(x, out)),
        _ => {}
    }
}

/// The family names a scrape declares (`# TYPE name kind`).
fn served(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The family a sample name belongs to (`x_total` -> `x`, histogram parts -> the histogram).
fn family_of<'a>(name: &'a str, served: &BTreeSet<String>) -> Option<&'a str> {
    if served.contains(name) {
        return Some(name);
    }
    ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .filter_map(|s| name.strip_suffix(s))
        .find(|base| served.contains(*base))
}

#[tokio::test]
async fn every_dashboard_metric_is_served_by_a_node() {
    let dash: serde_json::Value = serde_json::from_str(DASHBOARD).expect("valid JSON");
    assert!(
        dash["title"].is_string() && dash["panels"].is_array(),
        "not a dashboard"
    );
    let mut all = vec![];
    exprs(&dash, &mut all);
    assert!(all.len() >= 8, "too few queries: {all:?}");

    let dir = tempfile::tempdir().unwrap();
    let config = NodeConfig::validate(FileConfig {
        data_dir: Some(dir.path().to_path_buf()),
        listen: Some(vec!["/ip4/127.0.0.1/tcp/0".into()]),
        mdns: Some(false),
        ..Default::default()
    })
    .unwrap();
    let node = Node::start(config).await.unwrap();
    let scrape =
        agora_api::node_metrics::scrape(&node.handle(), &agora_api::auth::Refusals::new()).await;
    node.shutdown().await;
    assert_eq!(scrape.matches("# EOF").count(), 1, "{scrape}");
    assert!(scrape.trim_end().ends_with("# EOF"));
    let mut served = served(&scrape);
    let net = registered_net_metrics();
    assert!(net.contains("agora_net_refused_connections"), "{net:?}");
    served.extend(net);
    // The ledger's gauges: a node without a ledger does not serve them; read them from their
    // registration in node_metrics (whose other gauges the scrape above shows).
    let ledger: BTreeSet<String> = NODE_METRICS
        .split("gauge(")
        .skip(1)
        .filter_map(|c| c.split_once('"')?.1.split('"').next())
        .filter(|n| n.starts_with("ledger_"))
        .map(|n| format!("agora_{n}"))
        .collect();
    assert!(ledger.contains("agora_ledger_height"), "{ledger:?}");
    served.extend(ledger);
    let mut missing = vec![];
    for e in &all {
        let names = metric_names(e);
        assert!(!names.is_empty(), "a query with no Agora metric: {e}");
        for n in names {
            if family_of(&n, &served).is_none() {
                missing.push(n);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no node serves: {missing:?}\nserved: {served:#?}"
    );
}

#[test]
fn names_are_read_from_queries() {
    assert_eq!(
        metric_names("sum by (reason) (rate(agora_net_refused_connections_total[5m]))"),
        vec!["agora_net_refused_connections_total"]
    );
    assert_eq!(metric_names("my_agora_x + libp2p_y"), vec!["libp2p_y"]);
}
