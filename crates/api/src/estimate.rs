//! `GET /v1/jobs/estimate`: what a job would cost if submitted now, before anything is locked.
//!
//! The answer comes from the capability ads this node holds (each worker's price, memory,
//! capabilities and free slots, refreshed every few seconds by gossip): the workers that could
//! take the job, the price range of one execution among those that ask at most `max_price`,
//! the range for `redundancy` executions, and the escrow a submit would lock. The market picks
//! bids by a score that weighs price, load and reputation, so the total lies in the range, not
//! necessarily at its low end. With no suitable worker known the answer says why; it is not an
//! error.

use agora_api_types::{ErrorBody, Estimate, EstimateQuery, PriceRange, defaults};
use agora_market::IndexEntry;
use agora_node::NodeHandle;
use agora_types::PeerId;
use agora_types::job::SpecBounds;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};

use crate::ApiError;

pub(crate) fn routes() -> Router<NodeHandle> {
    Router::new().route("/v1/jobs/estimate", get(estimate))
}

/// What an estimate is asked for, with defaults applied and bounds checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ask {
    pub redundancy: u8,
    pub max_price: u64,
    pub memory_bytes: u64,
    pub capabilities: Vec<String>,
}

impl Ask {
    pub(crate) fn from_query(q: EstimateQuery) -> Result<Ask, ApiError> {
        let b = SpecBounds::default();
        let redundancy = q.redundancy.unwrap_or(defaults::REDUNDANCY);
        if redundancy == 0 || redundancy > b.max_redundancy {
            return Err(ApiError::bad_request(format!(
                "`redundancy` = {redundancy} is out of bounds: use 1..={}",
                b.max_redundancy
            )));
        }
        let memory_bytes = q.memory_bytes.unwrap_or(defaults::MEMORY_BYTES);
        if memory_bytes > b.max_memory_bytes {
            return Err(ApiError::bad_request(format!(
                "`memory_bytes` = {memory_bytes} is above the most a job may ask ({})",
                b.max_memory_bytes
            )));
        }
        let wall = q.wall_time_ms.unwrap_or(defaults::WALL_TIME_MS);
        if wall == 0 || wall > b.max_wall_time_ms {
            return Err(ApiError::bad_request(format!(
                "`wall_time_ms` = {wall} is out of bounds: use 1..={}",
                b.max_wall_time_ms
            )));
        }
        let capabilities: Vec<String> = match q.capabilities.as_deref() {
            Some(c) => c
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            None => defaults::capabilities(),
        };
        if capabilities.len() > b.max_capabilities {
            return Err(ApiError::bad_request(format!(
                "{} capabilities asked; at most {}",
                capabilities.len(),
                b.max_capabilities
            )));
        }
        Ok(Ask {
            redundancy,
            max_price: q.max_price.unwrap_or(defaults::MAX_PRICE),
            memory_bytes,
            capabilities,
        })
    }
}

fn range(sorted: &[u64]) -> Option<PriceRange> {
    Some(PriceRange {
        min: *sorted.first()?,
        median: sorted[(sorted.len() - 1) / 2],
        max: *sorted.last()?,
    })
}

/// The estimate for `ask` from the fresh ads `offers` (pure: no I/O). `escrow` is what a
/// submit would lock and `balance` this node's balance (`None`: no ledger).
pub(crate) fn compute(
    ask: &Ask,
    offers: &[(PeerId, IndexEntry)],
    escrow: u64,
    balance: Option<u64>,
) -> Estimate {
    let capable: Vec<&IndexEntry> = offers
        .iter()
        .map(|(_, e)| e)
        .filter(|e| {
            ask.capabilities
                .iter()
                .all(|c| e.ad.capabilities.iter().any(|o| o == c))
                && e.ad.memory_bytes >= ask.memory_bytes
        })
        .collect();
    let mut prices: Vec<u64> = capable
        .iter()
        .map(|e| e.ad.price)
        .filter(|p| *p <= ask.max_price)
        .collect();
    prices.sort_unstable();
    let free = capable
        .iter()
        .filter(|e| e.ad.price <= ask.max_price && e.ad.free_slots > 0)
        .count();
    let r = usize::from(ask.redundancy);
    let total = (prices.len() >= r).then(|| {
        let sum = |s: &[u64]| s.iter().fold(0u64, |a, p| a.saturating_add(*p));
        let mid = (prices.len() - r) / 2;
        PriceRange {
            min: sum(&prices[..r]),
            median: sum(&prices[mid..mid + r]),
            max: sum(&prices[prices.len() - r..]),
        }
    });
    let cheapest_capable = capable.iter().map(|e| e.ad.price).min();
    let funded = balance.is_none_or(|b| b >= escrow);
    let reason = if offers.is_empty() {
        Some(
            "this node knows no worker's offer yet: it is not connected, or ads have not \
             arrived (they spread every few seconds); check `agora peers`"
                .to_string(),
        )
    } else if capable.is_empty() {
        Some(format!(
            "none of the {} known workers offers capabilities {:?} with {} bytes of memory",
            offers.len(),
            ask.capabilities,
            ask.memory_bytes
        ))
    } else if prices.len() < r {
        Some(format!(
            "{} of {} capable workers ask at most {} (the cheapest asks {}); {r} are needed: \
             raise --max-price or lower --redundancy",
            prices.len(),
            capable.len(),
            ask.max_price,
            cheapest_capable.unwrap_or(0)
        ))
    } else if !funded {
        Some(format!(
            "the escrow needs {escrow} tokens but this node's balance is {}; lower --max-price \
             or --redundancy, or receive tokens",
            balance.unwrap_or(0)
        ))
    } else if free < r {
        Some(format!(
            "only {free} of the affordable workers have a free slot now; the job would wait for \
             busy workers"
        ))
    } else {
        None
    };
    Estimate {
        redundancy: ask.redundancy,
        max_price: ask.max_price,
        known_workers: offers.len() as u64,
        capable: capable.len() as u64,
        affordable: prices.len() as u64,
        free: free as u64,
        cheapest_capable,
        price_per_replica: range(&prices),
        total,
        escrow,
        balance,
        can_run: prices.len() >= r && funded,
        reason,
    }
}

/// What a job would cost if submitted now; nothing is locked or sent.
#[utoipa::path(
    get,
    path = "/v1/jobs/estimate",
    tag = "jobs",
    params(EstimateQuery),
    responses(
        (status = 200, description = "The estimate; `reason` says why it could not run now", body = Estimate),
        (status = 400, description = "A field is out of bounds", body = ErrorBody),
    )
)]
pub(crate) async fn estimate(
    State(node): State<NodeHandle>,
    Query(q): Query<EstimateQuery>,
) -> Result<Json<Estimate>, ApiError> {
    let ask = Ask::from_query(q)?;
    let offers = node.offers().await;
    let ledger = node.config().ledger.is_some();
    let escrow = if ledger {
        node.market_config()
            .escrow_for(ask.max_price, ask.redundancy)
    } else {
        0
    };
    let balance = if ledger {
        node.own_account().ok().map(|a| a.balance).or(Some(0))
    } else {
        None
    };
    Ok(Json(compute(&ask, &offers, escrow, balance)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_types::job::CapabilityAd;

    fn offer(price: u64, mem: u64, free: u32, caps: &[&str]) -> (PeerId, IndexEntry) {
        let ad = CapabilityAd {
            engine: "wasmtime-48".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            cores: 4,
            memory_bytes: mem,
            free_slots: free,
            total_slots: 4,
            price,
            version: "0".into(),
            seq: 1,
            max_input_bytes: 0,
            max_module_bytes: 0,
            max_wall_time_ms: 0,
        };
        let peer = agora_types::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        (
            peer,
            IndexEntry {
                ad,
                ip: None,
                updated_ms: 0,
            },
        )
    }

    fn ask(r: u8, max_price: u64) -> Ask {
        Ask::from_query(EstimateQuery {
            redundancy: Some(r),
            max_price: Some(max_price),
            ..EstimateQuery::default()
        })
        .unwrap()
    }

    #[test]
    fn ranges_come_from_affordable_capable_offers() {
        let g = 1 << 30;
        let offers = vec![
            offer(10, g, 1, &["wasm"]),
            offer(30, g, 0, &["wasm"]),
            offer(20, g, 2, &["wasm"]),
            offer(500, g, 2, &["wasm"]),     // too dear
            offer(1, 1 << 20, 2, &["wasm"]), // too little memory
            offer(2, g, 2, &["gpu"]),        // lacks wasm
        ];
        let e = compute(&ask(2, 100), &offers, 800, Some(10_000));
        assert_eq!(
            (e.known_workers, e.capable, e.affordable, e.free),
            (6, 4, 3, 2)
        );
        assert_eq!(e.cheapest_capable, Some(10));
        assert_eq!(
            e.price_per_replica,
            Some(PriceRange {
                min: 10,
                median: 20,
                max: 30
            })
        );
        assert_eq!(
            e.total,
            Some(PriceRange {
                min: 30,
                median: 30,
                max: 50
            })
        );
        assert_eq!(e.escrow, 800);
        assert!(e.can_run);
        assert_eq!(e.reason, None);
    }

    #[test]
    fn too_few_or_none_known_is_said_not_failed() {
        let e = compute(&ask(3, 100), &[], 0, None);
        assert!(!e.can_run);
        assert!(e.price_per_replica.is_none() && e.total.is_none());
        assert!(e.reason.unwrap().contains("knows no worker"));
        let offers = vec![
            offer(10, 1 << 30, 1, &["wasm"]),
            offer(200, 1 << 30, 1, &["wasm"]),
        ];
        let e = compute(&ask(2, 100), &offers, 0, None);
        assert!(!e.can_run);
        assert!(e.total.is_none());
        assert!(e.reason.unwrap().contains("raise --max-price"));
        let e = compute(&ask(1, 100), &offers, 500, Some(100));
        assert!(!e.can_run, "the balance does not cover the escrow");
        assert!(e.reason.unwrap().contains("balance is 100"));
    }

    #[test]
    fn bounds_are_checked() {
        let bad = |q: EstimateQuery| Ask::from_query(q).is_err();
        assert!(bad(EstimateQuery {
            redundancy: Some(0),
            ..Default::default()
        }));
        assert!(bad(EstimateQuery {
            redundancy: Some(10),
            ..Default::default()
        }));
        assert!(bad(EstimateQuery {
            memory_bytes: Some(u64::MAX),
            ..Default::default()
        }));
        let a = Ask::from_query(EstimateQuery {
            capabilities: Some("wasm, gpu,".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(a.capabilities, vec!["wasm", "gpu"]);
        assert_eq!(a.redundancy, defaults::REDUNDANCY);
    }
}
