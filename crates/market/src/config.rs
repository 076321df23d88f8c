//! The market's tunables: timers, bounds and selection weights.

use serde::{Deserialize, Serialize};

/// How bids are scored (see [`mod@crate::select`]). Each component is normalised to `0.0..=1.0`
/// before it is weighted, so the weights say how much each criterion matters relative to the
/// others.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Weights {
    /// Weight of the price component: `1 - price / max_price` (cheaper is better).
    pub price: f64,
    /// Weight of the reputation component: the local score mapped from `-1000..=1000` to `0..=1`.
    pub reputation: f64,
    /// Weight of the latency component: `100 / (100 + rtt_ms)`, `0.5` when the round trip time
    /// is unknown.
    pub latency: f64,
    /// Weight of the load component: the fraction of the bidder's slots that are free.
    pub load: f64,
    /// Workers whose local reputation is below this floor are only picked when no other bidder
    /// remains.
    pub reputation_floor: i64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            price: 1.0,
            reputation: 2.0,
            latency: 0.5,
            load: 0.5,
            reputation_floor: -100,
        }
    }
}

/// Every tunable of the market. All collections the market keeps are bounded by a field here.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Config {
    /// How long bids are collected after a job is announced before workers are picked, in ms.
    /// The window closes early once enough bids are in (see [`crate::market`]).
    pub bid_window_ms: u64,
    /// Slack added to a job's wall-time limit before its lease expires, in ms: covers queueing,
    /// start-up and the trip back of the result.
    pub lease_grace_ms: u64,
    /// Time allowed for a worker to fetch the module and input before it can start, in ms.
    /// Lease expiry is `now + limits.wall_time_ms + lease_grace_ms + fetch_allowance_ms`.
    pub fetch_allowance_ms: u64,
    /// The first pause before a job that found too few workers is announced again, in ms.
    pub reannounce_initial_ms: u64,
    /// The longest pause between two announcements of one job, in ms; the pause doubles from
    /// [`Config::reannounce_initial_ms`] up to this.
    pub reannounce_max_ms: u64,
    /// The most jobs the market tracks at once. When a new job would exceed it the oldest finished
    /// job is forgotten; when every tracked job is still pending the new job is refused.
    pub max_jobs: usize,
    /// The most bids kept per job. A bid beyond it only replaces the worst unused bid, and only
    /// when it scores better, so a flood of bids cannot crowd out good ones.
    pub max_bids_per_job: usize,
    /// Absolute cap on the replicas added to a job when its results disagree. The effective cap
    /// for a job of redundancy `r` is `min(max_extra_replicas, 2 * r + 2)`; when a strict majority
    /// is still impossible within it the job fails with `NoQuorum`.
    pub max_extra_replicas: usize,
    /// How many leases of one job may fail (refused, expired, disconnected) before the job is
    /// abandoned with `Exhausted`.
    pub max_attempts: u32,
    /// How long a capability ad stays valid without being refreshed, in ms.
    pub ad_ttl_ms: u64,
    /// The most peers kept in the capability index.
    pub max_index_entries: usize,
    /// The most peers kept in the local reputation book (entries closest to 0 are dropped first).
    pub max_reputation_entries: usize,
    /// The most timeline events kept per job (the first quarter is kept; beyond it the oldest
    /// events are dropped first).
    pub max_timeline: usize,
    /// Bid scoring weights.
    pub weights: Weights,
    /// How often a worker reports progress on a lease it holds ([`crate::Input::Heartbeat`]),
    /// in ms. The submitter ignores heartbeats that come faster than half of this.
    pub heartbeat_ms: u64,
    /// How far past a heartbeat a lease is extended: `now + 3 * heartbeat_ms + lease_grace_ms`,
    /// never beyond this many times the lease's first length (so a worker that heartbeats but
    /// never delivers still loses the lease).
    pub max_lease_factor: u64,
    /// After a worker answers `Busy`, how long this submitter sends it no new lease unless one
    /// of its own leases there ends first, in ms.
    pub busy_backoff_ms: u64,
    /// Hold every submitted job in [`crate::JobState::AwaitingEscrow`] and ask for an escrow
    /// ([`crate::Output::LockEscrow`]) before announcing it. On when the node runs a ledger.
    pub require_escrow: bool,
    /// The fast path: when the capability index holds enough fresh standing offers (ads at or
    /// under the job's price, with a free slot) the job is leased to them directly, with no
    /// announcement and no bid window; the auction is the fallback when there are too few or
    /// they answer busy.
    #[serde(default = "yes")]
    pub direct_lease: bool,
    /// How recent an ad must be, in ms, for its offer to be leased directly (older ads still
    /// count for the auction and for [`crate::WaitReason`]s).
    #[serde(default = "default_offer_age")]
    pub direct_offer_age_ms: u64,
}

fn yes() -> bool {
    true
}

fn default_offer_age() -> u64 {
    Config::production().direct_offer_age_ms
}

impl Config {
    /// A devnet preset: short windows so that local clusters and tests move fast.
    pub fn local() -> Self {
        Config {
            bid_window_ms: 150,
            lease_grace_ms: 2_000,
            fetch_allowance_ms: 1_000,
            reannounce_initial_ms: 200,
            reannounce_max_ms: 3_000,
            ad_ttl_ms: 15_000,
            heartbeat_ms: 1_000,
            busy_backoff_ms: 1_000,
            direct_offer_age_ms: 5_000,
            ..Config::production()
        }
    }

    /// The preset for real networks: wider windows and more patient timers.
    pub fn production() -> Self {
        Config {
            bid_window_ms: 1_000,
            lease_grace_ms: 10_000,
            fetch_allowance_ms: 5_000,
            reannounce_initial_ms: 1_000,
            reannounce_max_ms: 60_000,
            max_jobs: 10_000,
            max_bids_per_job: 64,
            max_extra_replicas: 16,
            max_attempts: 16,
            ad_ttl_ms: 60_000,
            max_index_entries: 10_000,
            max_reputation_entries: 10_000,
            max_timeline: 256,
            weights: Weights::default(),
            heartbeat_ms: 5_000,
            max_lease_factor: 8,
            busy_backoff_ms: 5_000,
            require_escrow: false,
            direct_lease: true,
            direct_offer_age_ms: 60_000,
        }
    }

    /// How long a lease lasts before any heartbeat, for a job with wall-time limit
    /// `wall_time_ms`.
    pub fn lease_ms(&self, wall_time_ms: u64) -> u64 {
        wall_time_ms
            .saturating_add(self.lease_grace_ms)
            .saturating_add(self.fetch_allowance_ms)
    }

    /// How far a heartbeat at `now` extends a lease.
    pub fn heartbeat_extension_ms(&self) -> u64 {
        self.heartbeat_ms
            .saturating_mul(3)
            .saturating_add(self.lease_grace_ms)
    }

    /// The escrow a job needs: its maximum price for every replica it may ever use.
    pub fn escrow_for(&self, max_price: u64, redundancy: u8) -> u64 {
        let r = usize::from(redundancy.max(1));
        let workers = (r + self.extra_replica_cap(r)) as u64;
        max_price.saturating_mul(workers)
    }

    /// The cap on replicas added on disagreement for a job of redundancy `r`.
    pub fn extra_replica_cap(&self, r: usize) -> usize {
        self.max_extra_replicas.min(2 * r + 2)
    }
}

impl Default for Config {
    /// [`Config::production`].
    fn default() -> Self {
        Config::production()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets() {
        let l = Config::local();
        assert_eq!(l.bid_window_ms, 150);
        assert_eq!(l.reannounce_initial_ms, 200);
        assert_eq!(l.reannounce_max_ms, 3_000);
        assert_eq!(l.lease_grace_ms, 2_000);
        assert_eq!(l.ad_ttl_ms, 15_000);
        let p = Config::production();
        assert_eq!(p.bid_window_ms, 1_000);
        assert_eq!(p.reannounce_max_ms, 60_000);
        assert_eq!(p.lease_grace_ms, 10_000);
        assert_eq!(p.ad_ttl_ms, 60_000);
        assert_eq!(p.extra_replica_cap(3), 8);
        assert_eq!(p.extra_replica_cap(9), 16);
        assert_eq!(Config::default(), p);
    }
}
