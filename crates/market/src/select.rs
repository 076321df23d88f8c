//! Scoring bids and picking workers, deterministically.
//!
//! Each bid gets a score from four components (price, reputation, latency, load), each in
//! `0.0..=1.0`, weighted by [`Weights`]. Equal scores are broken by
//! `Hash::of(job_id || peer_id)`, so that every run picks the same workers for the same bids, yet
//! different jobs spread over different workers. Replicas go to distinct IP addresses while
//! enough distinct addresses bid, so that one machine (or one operator's box of sybils) cannot
//! fill a quorum on its own, and workers whose reputation is below the floor are picked only when
//! nobody else is left.

use std::cmp::Ordering;
use std::collections::HashSet;
use std::net::IpAddr;

use agora_types::job::JobId;
use agora_types::{Hash, PeerId};

use crate::config::Weights;
use crate::reputation::{MAX_SCORE, MIN_SCORE, Reputation};

/// What the selector knows of one bid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BidInfo {
    /// The bidder.
    pub worker: PeerId,
    /// Its asking price.
    pub price: u64,
    /// Its free executor slots when it bid.
    pub free_slots: u32,
    /// Its executor slots in all.
    pub total_slots: u32,
    /// The measured round trip time to it, if known.
    pub rtt_ms: Option<u32>,
    /// Its IP address, if known.
    pub ip: Option<IpAddr>,
}

/// The score of `bid` for a job paying at most `max_price`, given the bidder's local
/// `reputation` score. Higher is better.
pub fn score(bid: &BidInfo, max_price: u64, reputation: i64, w: &Weights) -> f64 {
    let price = if max_price == 0 {
        if bid.price == 0 { 1.0 } else { 0.0 }
    } else {
        1.0 - (bid.price.min(max_price) as f64 / max_price as f64)
    };
    let rep = (reputation.clamp(MIN_SCORE, MAX_SCORE) - MIN_SCORE) as f64
        / (MAX_SCORE - MIN_SCORE) as f64;
    let latency = match bid.rtt_ms {
        Some(rtt) => 100.0 / (100.0 + rtt as f64),
        None => 0.5,
    };
    let load = if bid.total_slots == 0 {
        0.0
    } else {
        bid.free_slots.min(bid.total_slots) as f64 / bid.total_slots as f64
    };
    w.price * price + w.reputation * rep + w.latency * latency + w.load * load
}

/// The deterministic tie-breaker of `worker` for `job_id`.
pub fn tie_break(job_id: &JobId, worker: &PeerId) -> Hash {
    let mut b = Vec::with_capacity(32 + 40);
    b.extend_from_slice(job_id.as_bytes());
    b.extend_from_slice(&worker.to_bytes());
    Hash::of(&b)
}

/// All bids not in `exclude` (one per worker), best first: bidders at or above the reputation
/// floor before those below it, then by score, then by [`tie_break`].
pub fn rank<'a>(
    job_id: &JobId,
    max_price: u64,
    bids: &'a [BidInfo],
    exclude: &HashSet<PeerId>,
    reputation: &Reputation,
    weights: &Weights,
) -> Vec<&'a BidInfo> {
    let mut seen = HashSet::new();
    let mut ranked: Vec<(bool, f64, Hash, &BidInfo)> = bids
        .iter()
        .filter(|b| !exclude.contains(&b.worker) && seen.insert(b.worker))
        .map(|b| {
            let rep = reputation.score(&b.worker);
            (
                rep >= weights.reputation_floor,
                score(b, max_price, rep, weights),
                tie_break(job_id, &b.worker),
                b,
            )
        })
        .collect();
    ranked.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal))
            .then_with(|| a.2.cmp(&b.2))
    });
    ranked.into_iter().map(|(_, _, _, b)| b).collect()
}

/// Picks up to `r` distinct workers for `job_id` from `bids`, never one in `exclude`.
///
/// Greedy: among bidders above the reputation floor, first the best bidder of each not yet used
/// IP address (bidders with an unknown address count as distinct), then the best of the rest;
/// bidders below the floor come last, in the same two passes.
pub fn select(
    job_id: &JobId,
    max_price: u64,
    bids: &[BidInfo],
    r: usize,
    exclude: &HashSet<PeerId>,
    reputation: &Reputation,
    weights: &Weights,
) -> Vec<PeerId> {
    let ranked = rank(job_id, max_price, bids, exclude, reputation, weights);
    let (good, poor): (Vec<&BidInfo>, Vec<&BidInfo>) = ranked
        .into_iter()
        .partition(|b| reputation.score(&b.worker) >= weights.reputation_floor);
    let mut picked: Vec<PeerId> = Vec::with_capacity(r);
    let mut ips: HashSet<IpAddr> = HashSet::new();
    for tier in [good, poor] {
        for b in &tier {
            if picked.len() >= r {
                return picked;
            }
            let distinct = match b.ip {
                Some(ip) => !ips.contains(&ip),
                None => true,
            };
            if distinct {
                picked.push(b.worker);
                if let Some(ip) = b.ip {
                    ips.insert(ip);
                }
            }
        }
        for b in &tier {
            if picked.len() >= r {
                return picked;
            }
            if !picked.contains(&b.worker) {
                picked.push(b.worker);
            }
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reputation::ReputationAction;

    fn bid(worker: PeerId, price: u64, ip: Option<[u8; 4]>) -> BidInfo {
        BidInfo {
            worker,
            price,
            free_slots: 2,
            total_slots: 4,
            rtt_ms: Some(20),
            ip: ip.map(IpAddr::from),
        }
    }

    #[test]
    fn deterministic_and_spread_by_job() {
        let peers: Vec<PeerId> = (0..8).map(|_| PeerId::random()).collect();
        let bids: Vec<BidInfo> = peers.iter().map(|p| bid(*p, 10, None)).collect();
        let rep = Reputation::default();
        let w = Weights::default();
        let ex = HashSet::new();
        let a = select(&Hash::of(b"j1"), 100, &bids, 3, &ex, &rep, &w);
        let mut shuffled = bids.clone();
        shuffled.reverse();
        let b = select(&Hash::of(b"j1"), 100, &shuffled, 3, &ex, &rep, &w);
        assert_eq!(a, b, "order of bids does not matter");
        assert_eq!(a.len(), 3);
        let mut sets = HashSet::new();
        for i in 0..20u32 {
            let mut s = select(&Hash::of(&i.to_be_bytes()), 100, &bids, 3, &ex, &rep, &w);
            s.sort();
            sets.insert(s);
        }
        assert!(sets.len() > 1, "ties are spread over jobs");
    }

    #[test]
    fn prefers_cheap_and_reputable() {
        let (cheap, dear) = (PeerId::random(), PeerId::random());
        let bids = vec![bid(dear, 90, None), bid(cheap, 10, None)];
        let mut rep = Reputation::default();
        let w = Weights::default();
        let ex = HashSet::new();
        let j = Hash::of(b"j");
        assert_eq!(select(&j, 100, &bids, 1, &ex, &rep, &w), vec![cheap]);
        for _ in 0..40 {
            rep.apply(dear, ReputationAction::ResultAgreed); // +200 → +0.2 of weight 2
        }
        let bids = vec![bid(dear, 20, None), bid(cheap, 10, None)];
        assert_eq!(select(&j, 100, &bids, 1, &ex, &rep, &w), vec![dear]);
    }

    #[test]
    fn floor_and_exclude() {
        let (bad, ok, gone) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut rep = Reputation::default();
        rep.apply(bad, ReputationAction::InvalidCompute);
        rep.apply(bad, ReputationAction::InvalidCompute);
        let bids = vec![bid(bad, 0, None), bid(ok, 99, None), bid(gone, 0, None)];
        let ex: HashSet<PeerId> = [gone].into_iter().collect();
        let w = Weights::default();
        let j = Hash::of(b"j");
        assert_eq!(select(&j, 100, &bids, 1, &ex, &rep, &w), vec![ok]);
        assert_eq!(select(&j, 100, &bids, 3, &ex, &rep, &w), vec![ok, bad]);
    }

    #[test]
    fn distinct_ips_first() {
        let ps: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        // Three cheap workers on one box, one dearer elsewhere.
        let bids = vec![
            bid(ps[0], 1, Some([10, 0, 0, 1])),
            bid(ps[1], 1, Some([10, 0, 0, 1])),
            bid(ps[2], 1, Some([10, 0, 0, 1])),
            bid(ps[3], 50, Some([10, 0, 0, 2])),
        ];
        let rep = Reputation::default();
        let w = Weights::default();
        let ex = HashSet::new();
        let j = Hash::of(b"j");
        let two = select(&j, 100, &bids, 2, &ex, &rep, &w);
        assert!(two.contains(&ps[3]), "second IP used before doubling up");
        let four = select(&j, 100, &bids, 4, &ex, &rep, &w);
        assert_eq!(four.len(), 4, "filled once distinct IPs run out");
        assert_eq!(four.iter().collect::<HashSet<_>>().len(), 4);
    }

    #[test]
    fn score_components() {
        let w = Weights {
            price: 1.0,
            reputation: 0.0,
            latency: 0.0,
            load: 0.0,
            reputation_floor: -100,
        };
        let p = PeerId::random();
        assert_eq!(score(&bid(p, 0, None), 100, 0, &w), 1.0);
        assert_eq!(score(&bid(p, 100, None), 100, 0, &w), 0.0);
        assert_eq!(score(&bid(p, 0, None), 0, 0, &w), 1.0);
    }
}
