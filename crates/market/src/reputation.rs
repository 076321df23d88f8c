//! The local reputation book: the one place where reputation changes.
//!
//! Every change is either a [`ReputationAction`] this node observed itself
//! ([`Reputation::apply`]) or a report gossiped by another peer ([`Reputation::apply_remote`]),
//! which counts for a quarter, is capped, and is ignored from reporters this node distrusts.
//! Scores are clamped to [`MIN_SCORE`]`..=`[`MAX_SCORE`]; unknown peers score 0.

use std::collections::BTreeMap;

use agora_types::PeerId;
use serde::{Deserialize, Serialize};

/// The lowest score a peer can have.
pub const MIN_SCORE: i64 = -1000;
/// The highest score a peer can have.
pub const MAX_SCORE: i64 = 1000;
/// The largest change one remote report can make, either way.
pub const MAX_REMOTE_DELTA: i64 = 25;
/// Remote reports count for `1 / REMOTE_DIVISOR` of their delta.
pub const REMOTE_DIVISOR: i64 = 4;

/// Something a peer did that changes its reputation.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReputationAction {
    /// Its result agreed with the quorum: +5.
    ResultAgreed,
    /// Its result disagreed with the quorum: -75.
    InvalidCompute,
    /// It held a lease until it expired without a result (downtime): -10.
    LeaseExpired,
    /// It refused a lease it had bid for, or could not be reached to receive it: -1.
    LeaseRefused,
    /// It disconnected while holding a lease: -5.
    Disconnected,
    /// It sent a message it had no business sending (e.g. an unsolicited result): -20.
    BadMessage,
}

impl ReputationAction {
    /// Every action, in a fixed order.
    pub const ALL: [ReputationAction; 6] = [
        ReputationAction::ResultAgreed,
        ReputationAction::InvalidCompute,
        ReputationAction::LeaseExpired,
        ReputationAction::LeaseRefused,
        ReputationAction::Disconnected,
        ReputationAction::BadMessage,
    ];

    /// The change in score this action causes.
    pub fn delta(self) -> i64 {
        match self {
            ReputationAction::ResultAgreed => 5,
            ReputationAction::InvalidCompute => -75,
            ReputationAction::LeaseExpired => -10,
            ReputationAction::LeaseRefused => -1,
            ReputationAction::Disconnected => -5,
            ReputationAction::BadMessage => -20,
        }
    }

    /// The action's stable snake_case name, as published in
    /// [`agora_types::job::ReputationUpdate::action`].
    pub fn name(self) -> &'static str {
        match self {
            ReputationAction::ResultAgreed => "result_agreed",
            ReputationAction::InvalidCompute => "invalid_compute",
            ReputationAction::LeaseExpired => "lease_expired",
            ReputationAction::LeaseRefused => "lease_refused",
            ReputationAction::Disconnected => "disconnected",
            ReputationAction::BadMessage => "bad_message",
        }
    }

    /// The action with this name.
    pub fn from_name(name: &str) -> Option<Self> {
        ReputationAction::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// The local reputation book, bounded by `max_entries`: when it is over, the entries closest to 0
/// (the least informative) are dropped. A peer whose score returns to exactly 0 is dropped too.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(from = "ReputationRepr", into = "ReputationRepr")]
pub struct Reputation {
    max_entries: usize,
    scores: BTreeMap<PeerId, i64>,
}

/// The persisted form: a list of pairs, so that any serde format can hold it.
#[derive(Serialize, Deserialize)]
struct ReputationRepr {
    max_entries: usize,
    scores: Vec<(PeerId, i64)>,
}

impl From<ReputationRepr> for Reputation {
    fn from(r: ReputationRepr) -> Self {
        let mut rep = Reputation::new(r.max_entries);
        for (p, s) in r.scores {
            if s != 0 {
                rep.scores.insert(p, s.clamp(MIN_SCORE, MAX_SCORE));
            }
        }
        rep.evict();
        rep
    }
}

impl From<Reputation> for ReputationRepr {
    fn from(r: Reputation) -> Self {
        ReputationRepr {
            max_entries: r.max_entries,
            scores: r.scores.into_iter().collect(),
        }
    }
}

impl Default for Reputation {
    fn default() -> Self {
        Reputation::new(10_000)
    }
}

impl Reputation {
    /// An empty book holding at most `max_entries` peers.
    pub fn new(max_entries: usize) -> Self {
        Reputation {
            max_entries: max_entries.max(1),
            scores: BTreeMap::new(),
        }
    }

    /// `peer`'s score: 0 when unknown, always within `MIN_SCORE..=MAX_SCORE`.
    pub fn score(&self, peer: &PeerId) -> i64 {
        self.scores.get(peer).copied().unwrap_or(0)
    }

    /// Records an action observed locally; returns the change actually applied (smaller than
    /// [`ReputationAction::delta`] at the clamps).
    pub fn apply(&mut self, peer: PeerId, action: ReputationAction) -> i64 {
        self.add(peer, action.delta())
    }

    /// Applies a penalty decided by the ledger (a slashing), whose size the slashing table sets.
    /// Returns the change applied.
    pub fn penalize(&mut self, peer: PeerId, delta: i64) -> i64 {
        self.add(peer, -delta.abs())
    }

    /// Records a change gossiped by `reporter` about `subject`. Ignored (returns 0) when the
    /// reporter reports on itself or its own local score is negative; otherwise applied at a
    /// quarter of its weight and capped to ±[`MAX_REMOTE_DELTA`]. Returns the change applied.
    pub fn apply_remote(&mut self, reporter: PeerId, subject: PeerId, delta: i64) -> i64 {
        if reporter == subject || self.score(&reporter) < 0 {
            return 0;
        }
        let d = (delta / REMOTE_DIVISOR).clamp(-MAX_REMOTE_DELTA, MAX_REMOTE_DELTA);
        if d == 0 {
            return 0;
        }
        self.add(subject, d)
    }

    fn add(&mut self, peer: PeerId, delta: i64) -> i64 {
        let old = self.score(&peer);
        let new = old.saturating_add(delta).clamp(MIN_SCORE, MAX_SCORE);
        if new == 0 {
            self.scores.remove(&peer);
        } else {
            self.scores.insert(peer, new);
            self.evict();
        }
        new - old
    }

    fn evict(&mut self) {
        if self.scores.len() <= self.max_entries {
            return;
        }
        let mut by_size: Vec<(u64, PeerId)> = self
            .scores
            .iter()
            .map(|(p, s)| (s.unsigned_abs(), *p))
            .collect();
        by_size.sort_unstable();
        let over = self.scores.len() - self.max_entries;
        for (_, p) in by_size.into_iter().take(over) {
            self.scores.remove(&p);
        }
    }

    /// Every known score, in peer id order.
    pub fn snapshot(&self) -> Vec<(PeerId, i64)> {
        self.scores.iter().map(|(p, s)| (*p, *s)).collect()
    }

    /// How many peers have a non-zero score.
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    /// Whether no peer has a non-zero score.
    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_and_round_trip() {
        let names: Vec<&str> = ReputationAction::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(
            names,
            [
                "result_agreed",
                "invalid_compute",
                "lease_expired",
                "lease_refused",
                "disconnected",
                "bad_message"
            ]
        );
        for a in ReputationAction::ALL {
            assert_eq!(ReputationAction::from_name(a.name()), Some(a));
        }
        assert_eq!(ReputationAction::InvalidCompute.delta(), -75);
        assert_eq!(ReputationAction::ResultAgreed.delta(), 5);
    }

    #[test]
    fn clamps() {
        let mut r = Reputation::new(10);
        let p = PeerId::random();
        for _ in 0..20 {
            r.apply(p, ReputationAction::InvalidCompute);
        }
        assert_eq!(r.score(&p), MIN_SCORE);
        assert_eq!(r.apply(p, ReputationAction::InvalidCompute), 0);
        assert_eq!(r.apply(p, ReputationAction::ResultAgreed), 5);
        let q = PeerId::random();
        for _ in 0..300 {
            r.apply(q, ReputationAction::ResultAgreed);
        }
        assert_eq!(r.score(&q), MAX_SCORE);
        assert_eq!(r.score(&PeerId::random()), 0);
    }

    #[test]
    fn remote_weighting() {
        let mut r = Reputation::new(10);
        let (rep, subj, bad) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert_eq!(r.apply_remote(rep, subj, -75), -18);
        assert_eq!(r.score(&subj), -18);
        assert_eq!(r.apply_remote(rep, subj, -1000), -25, "capped");
        assert_eq!(r.apply_remote(rep, subj, 1000), 25, "capped");
        assert_eq!(r.apply_remote(subj, subj, 100), 0, "self reports ignored");
        r.apply(bad, ReputationAction::LeaseRefused);
        assert_eq!(r.apply_remote(bad, subj, -100), 0, "distrusted reporter");
        assert_eq!(r.score(&subj), -18);
    }

    #[test]
    fn bounded_evicts_closest_to_zero() {
        let mut r = Reputation::new(3);
        let ps: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        r.apply(ps[0], ReputationAction::InvalidCompute); // -75
        r.apply(ps[1], ReputationAction::LeaseRefused); // -1
        r.apply(ps[2], ReputationAction::ResultAgreed); // 5
        r.apply(ps[3], ReputationAction::BadMessage); // -20
        assert_eq!(r.len(), 3);
        assert_eq!(r.score(&ps[1]), 0, "the entry closest to 0 went");
        assert_eq!(r.score(&ps[0]), -75);
        // Back to zero: dropped.
        r.apply(ps[2], ReputationAction::LeaseRefused);
        r.apply(ps[2], ReputationAction::LeaseRefused);
        r.apply(ps[2], ReputationAction::LeaseRefused);
        r.apply(ps[2], ReputationAction::LeaseRefused);
        r.apply(ps[2], ReputationAction::LeaseRefused);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn serde_round_trip() {
        let mut r = Reputation::new(5);
        let p = PeerId::random();
        r.apply(p, ReputationAction::BadMessage);
        let json = serde_json::to_string(&r).expect("serialize");
        let back: Reputation = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, r);
        assert_eq!(back.snapshot(), vec![(p, -20)]);
    }
}
