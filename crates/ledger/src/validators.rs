//! The validator set: the top staked accounts, with voting power proportional to stake and
//! capped so that no single validator holds a third of the power or more.
//!
//! The cap is the largest `c` with `3c < Σ min(stake_i, c)`; every power above it is cut to it.
//! `f(c) = Σ min(stake_i, c) − 3c` is concave with `f(0) = 0` and a slope of `n − 3` near 0, so
//! with four or more validators the `c` where it is positive form one interval from 1, and a
//! binary search finds its end. With fewer than four no cap can work (each of three equal
//! validators holds exactly a third), so powers are left as they are: such a network cannot
//! tolerate a fault anyway (N >= 3f + 1).

use std::collections::BTreeMap;

use agora_types::ledger::AccountId;
use serde::{Deserialize, Serialize};

use crate::genesis::Params;
use crate::state::Account;

/// A validator and its voting power.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// The account (its Ed25519 key signs votes).
    pub account: AccountId,
    /// Its voting power.
    pub power: u64,
}

/// The validators for the next height.
pub fn select(accounts: &BTreeMap<AccountId, Account>, params: &Params) -> Vec<Validator> {
    let mut candidates: Vec<(AccountId, u64)> = accounts
        .iter()
        .filter(|(_, a)| !a.banned && a.stake >= params.min_validator_stake)
        .map(|(id, a)| (*id, a.stake))
        .collect();
    candidates.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    candidates.truncate(params.max_validators);
    let powers: Vec<u64> = candidates.iter().map(|c| c.1).collect();
    let capped = cap(&powers);
    candidates
        .into_iter()
        .zip(capped)
        .map(|((account, _), power)| Validator { account, power })
        .collect()
}

/// Caps `powers` so that each is below a third of their sum (see the module docs).
pub fn cap(powers: &[u64]) -> Vec<u64> {
    if powers.len() < 4 {
        return powers.to_vec();
    }
    let f = |c: u64| -> i128 {
        let sum: i128 = powers.iter().map(|&p| i128::from(p.min(c))).sum();
        sum - 3 * i128::from(c)
    };
    let max = powers.iter().copied().max().unwrap_or(0);
    if f(max) > 0 {
        return powers.to_vec();
    }
    // f(lo) > 0 and f(hi) <= 0.
    let (mut lo, mut hi) = (1u64, max);
    if f(lo) <= 0 {
        return powers.to_vec();
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if f(mid) > 0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    powers.iter().map(|&p| p.min(lo)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(powers: &[u64]) {
        let c = cap(powers);
        let total: u128 = c.iter().map(|&p| u128::from(p)).sum();
        for &p in &c {
            assert!(u128::from(p) * 3 < total, "{c:?} from {powers:?}");
        }
        for (a, b) in powers.iter().zip(&c) {
            assert!(b <= a);
        }
    }

    #[test]
    fn caps_a_whale() {
        let c = cap(&[1_000_000, 10, 10, 10]);
        assert_eq!(c, vec![14, 10, 10, 10]);
        ok(&[1_000_000, 10, 10, 10]);
        ok(&[100, 100, 100, 100]);
        ok(&[5, 4, 3, 2, 1]);
        ok(&[u64::MAX, u64::MAX, 1, 1, 1]);
    }

    #[test]
    fn equal_stakes_are_untouched() {
        assert_eq!(cap(&[7, 7, 7, 7]), vec![7, 7, 7, 7]);
        assert_eq!(cap(&[7, 7, 7]), vec![7, 7, 7]);
    }

    proptest::proptest! {
        #[test]
        fn no_validator_reaches_a_third(powers in proptest::collection::vec(1u64..1_000_000_000, 4..40)) {
            ok(&powers);
        }
    }
}
