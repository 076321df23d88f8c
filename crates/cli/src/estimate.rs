//! `agora job estimate`: what a job would cost if submitted now, from the offers (worker ads)
//! the node knows. Nothing is uploaded, locked or sent.

use std::process::ExitCode;

use agora_api_types::{Estimate, EstimateQuery, PriceRange, defaults};
use anyhow::Result;
use clap::Args;

use crate::cmd::ApiArgs;

#[derive(Args, Debug)]
pub struct EstimateArgs {
    /// How many independent workers must agree on the output (1..=9).
    #[arg(long, default_value_t = defaults::REDUNDANCY)]
    pub redundancy: u8,
    /// The most paid to one worker per execution.
    #[arg(long, default_value_t = defaults::MAX_PRICE)]
    pub max_price: u64,
    /// Memory limit in bytes.
    #[arg(long, default_value_t = defaults::MEMORY_BYTES)]
    pub memory: u64,
    /// Wall-time limit in milliseconds.
    #[arg(long, default_value_t = defaults::WALL_TIME_MS)]
    pub wall_time_ms: u64,
    /// A required capability (repeatable) [default: wasm].
    #[arg(long = "capability")]
    pub capabilities: Vec<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub node: ApiArgs,
}

fn range(r: Option<PriceRange>) -> String {
    match r {
        Some(r) => format!("{} / {} / {}", r.min, r.median, r.max),
        None => "-".into(),
    }
}

fn kv(key: &str, value: impl std::fmt::Display) -> String {
    format!("{key:<32} {value}")
}

/// The table `agora job estimate` prints.
pub fn table(e: &Estimate) -> Vec<String> {
    let mut out = vec![
        kv(
            "workers known / capable",
            format!("{} / {}", e.known_workers, e.capable),
        ),
        kv(
            &format!("asking at most {} / free now", e.max_price),
            format!("{} / {}", e.affordable, e.free),
        ),
        kv(
            "price per replica (min/med/max)",
            range(e.price_per_replica),
        ),
        kv(
            &format!("total for {} (min/med/max)", e.redundancy),
            range(e.total),
        ),
        kv("escrow locked at submit", e.escrow),
    ];
    if let Some(b) = e.balance {
        out.push(kv("balance", b));
    }
    out.push(kv("could run now", if e.can_run { "yes" } else { "no" }));
    if let Some(r) = &e.reason {
        out.push(kv("note", r));
    }
    out
}

pub async fn run(a: EstimateArgs) -> Result<ExitCode> {
    let api = a.node.connect()?;
    let q = EstimateQuery {
        redundancy: Some(a.redundancy),
        max_price: Some(a.max_price),
        memory_bytes: Some(a.memory),
        wall_time_ms: Some(a.wall_time_ms),
        capabilities: (!a.capabilities.is_empty()).then(|| a.capabilities.join(",")),
    };
    let e = api.estimate(&q).await?;
    if a.json {
        outln!("{}", serde_json::to_string(&e)?);
    } else {
        for line in table(&e) {
            outln!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_ranges_and_the_reason() {
        let e = Estimate {
            redundancy: 2,
            max_price: 100,
            known_workers: 3,
            capable: 3,
            affordable: 1,
            free: 1,
            cheapest_capable: Some(10),
            price_per_replica: Some(PriceRange {
                min: 10,
                median: 10,
                max: 10,
            }),
            total: None,
            escrow: 1200,
            balance: Some(50),
            can_run: false,
            reason: Some("1 of 3 capable workers ask at most 100".into()),
        };
        let t = table(&e);
        let row = |key: &str| {
            t.iter()
                .find(|l| l.starts_with(key))
                .map(|l| l[key.len()..].trim().to_string())
                .unwrap_or_else(|| panic!("no row {key:?} in {t:#?}"))
        };
        assert_eq!(row("price per replica (min/med/max)"), "10 / 10 / 10");
        assert_eq!(row("total for 2 (min/med/max)"), "-");
        assert_eq!(row("asking at most 100 / free now"), "1 / 1");
        assert_eq!(row("escrow locked at submit"), "1200");
        assert_eq!(row("balance"), "50");
        assert_eq!(row("could run now"), "no");
        assert!(row("note").contains("ask at most 100"));
    }
}
