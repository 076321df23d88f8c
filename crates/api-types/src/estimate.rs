//! The cost estimate: `GET /v1/jobs/estimate`, what a job would cost if submitted now, from the
//! capability ads (prices) of the workers this node knows. Nothing is locked or sent.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The query of `GET /v1/jobs/estimate`: the fields of a submit that decide who may bid.
/// Every field is optional; an omitted one takes its value from [`crate::defaults`].
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EstimateQuery {
    /// How many workers must agree (default [`crate::defaults::REDUNDANCY`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redundancy: Option<u8>,
    /// The most paid per execution (default [`crate::defaults::MAX_PRICE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_price: Option<u64>,
    /// Memory limit in bytes (default [`crate::defaults::MEMORY_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Wall-time limit in ms (default [`crate::defaults::WALL_TIME_MS`]); checked against the
    /// node's bounds only (workers do not advertise one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_time_ms: Option<u64>,
    /// Required capabilities, comma-separated (default `wasm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<String>,
}

/// The lowest, median and highest of a set of prices, in tokens.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
pub struct PriceRange {
    /// The lowest.
    pub min: u64,
    /// The median (the lower middle one for an even count).
    pub median: u64,
    /// The highest.
    pub max: u64,
}

/// `GET /v1/jobs/estimate` answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct Estimate {
    /// The redundancy the estimate is for.
    pub redundancy: u8,
    /// The price cap the estimate is for.
    pub max_price: u64,
    /// Workers whose capability ad is fresh.
    pub known_workers: u64,
    /// Of those, the ones with every required capability and enough memory.
    pub capable: u64,
    /// Of those, the ones asking at most `max_price`.
    pub affordable: u64,
    /// Of those, the ones with a free executor slot now.
    pub free: u64,
    /// The lowest price among capable workers, affordable or not.
    pub cheapest_capable: Option<u64>,
    /// The price of one execution among affordable workers; null when none is known.
    pub price_per_replica: Option<PriceRange>,
    /// What `redundancy` executions would cost: the cheapest, the median and the dearest
    /// `redundancy` affordable workers; null when fewer than `redundancy` are known.
    pub total: Option<PriceRange>,
    /// The escrow that submitting would lock: `max_price` for every replica the job may use,
    /// disagreement replicas included (0 when the node runs without a ledger); the unused part
    /// is refunded at settlement.
    pub escrow: u64,
    /// This node's balance, when it runs a ledger.
    pub balance: Option<u64>,
    /// Whether enough affordable workers are known for `redundancy` replicas (and, with a
    /// ledger, the balance covers the escrow).
    pub can_run: bool,
    /// Why the job could not run now or what would hold it up; null when nothing would.
    pub reason: Option<String>,
}
