//! Tallying replica verdicts.
//!
//! Replicas are compared by [`agora_types::job::Outcome::verdict`]. A job of redundancy `r` is
//! decided when one verdict has at least `r` votes **and** a strict majority of all results
//! received. Requiring both means a lone dishonest worker can never win by being first, and a
//! disagreement is settled by adding replicas until some verdict holds a clear majority (or the
//! replica cap is hit).

use std::collections::BTreeMap;

use agora_types::Hash;

/// Vote counts per verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// verdict → (votes, order of first appearance)
    counts: BTreeMap<Hash, (usize, usize)>,
    total: usize,
}

impl Tally {
    /// Tallies `verdicts`.
    pub fn new(verdicts: impl IntoIterator<Item = Hash>) -> Self {
        let mut t = Tally::default();
        for v in verdicts {
            t.add(v);
        }
        t
    }

    /// Adds one vote.
    pub fn add(&mut self, verdict: Hash) {
        let order = self.counts.len();
        self.counts.entry(verdict).or_insert((0, order)).0 += 1;
        self.total += 1;
    }

    /// How many votes in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Votes for `verdict`.
    pub fn count(&self, verdict: &Hash) -> usize {
        self.counts.get(verdict).map_or(0, |c| c.0)
    }

    /// The verdict with the most votes (ties: the one seen first) and its count.
    pub fn leader(&self) -> Option<(Hash, usize)> {
        self.counts
            .iter()
            .max_by(|a, b| a.1.0.cmp(&b.1.0).then(b.1.1.cmp(&a.1.1)))
            .map(|(h, (c, _))| (*h, *c))
    }

    /// The verdict that has at least `r` votes and a strict majority of all votes, if any.
    pub fn agreed(&self, r: usize) -> Option<Hash> {
        self.counts
            .iter()
            .find(|(_, (c, _))| *c >= r && 2 * *c > self.total)
            .map(|(h, _)| *h)
    }

    /// The fewest further results that could settle the job: how many more votes the leader needs
    /// to have `r` votes and a strict majority, assuming they all agree with it. 0 when decided.
    pub fn replicas_needed(&self, r: usize) -> usize {
        if self.agreed(r).is_some() {
            return 0;
        }
        let c = self.leader().map_or(0, |l| l.1);
        let for_r = r.saturating_sub(c);
        // c + k > (n + k) / 2  ⇔  k > n − 2c
        let for_majority = (self.total + 1).saturating_sub(2 * c);
        for_r.max(for_majority).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        Hash::of(s.as_bytes())
    }

    #[test]
    fn unanimous() {
        let t = Tally::new([h("a"), h("a"), h("a")]);
        assert_eq!(t.agreed(3), Some(h("a")));
        assert_eq!(t.replicas_needed(3), 0);
        let t = Tally::new([h("a"), h("a")]);
        assert_eq!(t.agreed(3), None, "needs r votes");
        assert_eq!(t.replicas_needed(3), 1);
    }

    #[test]
    fn two_against_one_then_three_of_four() {
        let mut t = Tally::new([h("a"), h("b"), h("a")]);
        assert_eq!(t.agreed(3), None);
        assert_eq!(t.leader(), Some((h("a"), 2)));
        assert_eq!(t.replicas_needed(3), 1);
        t.add(h("a"));
        assert_eq!(t.agreed(3), Some(h("a")), "3 of 4 is a strict majority");
    }

    #[test]
    fn majority_is_strict() {
        // 3 vs 3: no majority even though both have r votes.
        let t = Tally::new([h("a"), h("a"), h("a"), h("b"), h("b"), h("b")]);
        assert_eq!(t.agreed(3), None);
        assert_eq!(t.replicas_needed(3), 1);
        let t = Tally::new([h("a"), h("b"), h("c")]);
        assert_eq!(t.replicas_needed(3), 2);
        assert_eq!(t.leader(), Some((h("a"), 1)), "ties go to the first seen");
        assert_eq!(Tally::default().replicas_needed(2), 2);
    }

    #[test]
    fn r_one() {
        let t = Tally::new([h("a")]);
        assert_eq!(t.agreed(1), Some(h("a")));
        let t = Tally::new([h("a"), h("b")]);
        assert_eq!(t.agreed(1), None);
        assert_eq!(t.replicas_needed(1), 1);
    }
}
