//! Robust aggregation rules, in integer arithmetic with a fixed order.
//!
//! Every rule takes the accepted updates' weights (Q16.16 `i32`, all the same
//! length) and returns the next model's weights. Sums are exact (`i128`), and
//! every division floors (`div_euclid`), so the result does not depend on
//! the CPU nor on the order of the inputs (tested: a permutation of the
//! inputs gives the same bytes). The rules:
//!
//! - [`Rule::FedAvg`]: `floor(sum_i n_i w_i / sum_i n_i)`, weighted by each
//!   update's shard size `n_i`. Not robust: one update can move it anywhere.
//! - [`Rule::Median`]: per coordinate, the middle value; with an even count,
//!   the floor of the mean of the two middle values.
//! - [`Rule::TrimmedMean`]: per coordinate, drop the `trim` smallest and
//!   `trim` largest values (`beta = trim / n`), floor of the mean of the rest.
//! - [`Rule::MultiKrum`]: Krum's score of update `i` is the sum of its
//!   squared Euclidean distances to its `n - f - 2` nearest other updates;
//!   the `m` lowest-scoring are selected (ties broken by comparing the
//!   weights, so the choice does not depend on input order) and averaged
//!   (plain floor mean). The others are reported as outliers.
//!
//! For `Median` and `TrimmedMean`, an update whose squared distance to the
//! aggregate exceeds `OUTLIER_FACTOR_SQ` times the median of all updates'
//! squared distances is reported as an outlier (it is still inside the
//! robust statistic, which bounds its influence; it earns no reward).

use thiserror::Error;

/// An update counts as an outlier of a median-type aggregate beyond this
/// ratio of squared distances (a factor 3 in distance).
pub const OUTLIER_FACTOR_SQ: u128 = 9;

/// An aggregation rule, chosen per training job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rule {
    /// Sample-weighted mean.
    FedAvg,
    /// Coordinate-wise median.
    Median,
    /// Coordinate-wise trimmed mean, `trim` values cut at each end.
    TrimmedMean {
        /// Values dropped at each end of every coordinate.
        trim: usize,
    },
    /// Multi-Krum: `f` assumed Byzantine, `m` updates selected.
    MultiKrum {
        /// Number of Byzantine updates tolerated.
        f: usize,
        /// Number of updates averaged.
        m: usize,
    },
}

/// Why aggregation is impossible.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AggregateError {
    /// No update to aggregate.
    #[error("no update to aggregate")]
    Empty,
    /// Updates of different lengths.
    #[error("update {index} has {got} weights, the first has {want}")]
    Length {
        /// Index of the offending update.
        index: usize,
        /// Its length.
        got: usize,
        /// The first update's length.
        want: usize,
    },
    /// The rule needs more updates than there are.
    #[error(
        "{rule} needs at least {need} updates, got {got}; lower its parameter or wait for more"
    )]
    TooFew {
        /// The rule.
        rule: &'static str,
        /// Updates needed.
        need: usize,
        /// Updates given.
        got: usize,
    },
    /// FedAvg with a total weight of zero.
    #[error("the updates' sample counts sum to zero")]
    ZeroWeight,
}

/// One accepted update.
#[derive(Clone, Copy, Debug)]
pub struct Contribution<'a> {
    /// Its weights.
    pub weights: &'a [i32],
    /// Samples it was trained on (FedAvg's weight).
    pub samples: u64,
}

/// The aggregate and the indices of the inputs judged outliers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Aggregate {
    /// The next model's weights.
    pub weights: Vec<i32>,
    /// Indices (into the input) of outliers, ascending.
    pub outliers: Vec<usize>,
}

/// Aggregates `inputs` with `rule`.
pub fn aggregate(rule: Rule, inputs: &[Contribution<'_>]) -> Result<Aggregate, AggregateError> {
    let first = inputs.first().ok_or(AggregateError::Empty)?;
    let want = first.weights.len();
    for (index, c) in inputs.iter().enumerate() {
        if c.weights.len() != want {
            return Err(AggregateError::Length {
                index,
                got: c.weights.len(),
                want,
            });
        }
    }
    let n = inputs.len();
    match rule {
        Rule::FedAvg => {
            let total: i128 = inputs.iter().map(|c| i128::from(c.samples)).sum();
            if total == 0 {
                return Err(AggregateError::ZeroWeight);
            }
            let weights = (0..want)
                .map(|k| {
                    let s: i128 = inputs
                        .iter()
                        .map(|c| i128::from(c.weights[k]) * i128::from(c.samples))
                        .sum();
                    s.div_euclid(total) as i32
                })
                .collect();
            Ok(Aggregate {
                weights,
                outliers: vec![],
            })
        }
        Rule::Median => {
            let weights = per_coordinate(inputs, |v| {
                let mid = v.len() / 2;
                if v.len() % 2 == 1 {
                    v[mid]
                } else {
                    (i64::from(v[mid - 1]) + i64::from(v[mid])).div_euclid(2) as i32
                }
            });
            let outliers = far_from(&weights, inputs);
            Ok(Aggregate { weights, outliers })
        }
        Rule::TrimmedMean { trim } => {
            if n <= 2 * trim {
                return Err(AggregateError::TooFew {
                    rule: "trimmed mean",
                    need: 2 * trim + 1,
                    got: n,
                });
            }
            let weights = per_coordinate(inputs, |v| {
                let kept = &v[trim..v.len() - trim];
                let s: i64 = kept.iter().map(|&x| i64::from(x)).sum();
                s.div_euclid(kept.len() as i64) as i32
            });
            let outliers = far_from(&weights, inputs);
            Ok(Aggregate { weights, outliers })
        }
        Rule::MultiKrum { f, m } => {
            if n < f + 3 || m == 0 || m > n {
                return Err(AggregateError::TooFew {
                    rule: "Multi-Krum",
                    need: (f + 3).max(m),
                    got: n,
                });
            }
            let selected = krum_select(inputs, f, m);
            let weights = (0..want)
                .map(|k| {
                    let s: i64 = selected
                        .iter()
                        .map(|&i| i64::from(inputs[i].weights[k]))
                        .sum();
                    s.div_euclid(selected.len() as i64) as i32
                })
                .collect();
            let outliers = (0..n).filter(|i| !selected.contains(i)).collect();
            Ok(Aggregate { weights, outliers })
        }
    }
}

/// Squared Euclidean distance, exact.
pub fn distance_sq(a: &[i32], b: &[i32]) -> u128 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = (i64::from(x) - i64::from(y)).unsigned_abs();
            u128::from(d) * u128::from(d)
        })
        .sum()
}

fn per_coordinate(inputs: &[Contribution<'_>], pick: impl Fn(&[i32]) -> i32) -> Vec<i32> {
    let mut column = Vec::with_capacity(inputs.len());
    (0..inputs[0].weights.len())
        .map(|k| {
            column.clear();
            column.extend(inputs.iter().map(|c| c.weights[k]));
            column.sort_unstable();
            pick(&column)
        })
        .collect()
}

fn far_from(center: &[i32], inputs: &[Contribution<'_>]) -> Vec<usize> {
    let d: Vec<u128> = inputs
        .iter()
        .map(|c| distance_sq(center, c.weights))
        .collect();
    let mut sorted = d.clone();
    sorted.sort_unstable();
    let median = sorted[sorted.len() / 2].max(1);
    (0..d.len())
        .filter(|&i| d[i] > median.saturating_mul(OUTLIER_FACTOR_SQ))
        .collect()
}

/// Indices of the `m` updates with the lowest Krum scores, ascending.
fn krum_select(inputs: &[Contribution<'_>], f: usize, m: usize) -> Vec<usize> {
    let n = inputs.len();
    let near = n - f - 2;
    let mut dist = vec![vec![0u128; n]; n];
    for i in 0..n {
        for j in i + 1..n {
            let d = distance_sq(inputs[i].weights, inputs[j].weights);
            dist[i][j] = d;
            dist[j][i] = d;
        }
    }
    let mut scored: Vec<(u128, usize)> = (0..n)
        .map(|i| {
            let mut row: Vec<u128> = (0..n).filter(|&j| j != i).map(|j| dist[i][j]).collect();
            row.sort_unstable();
            (row[..near].iter().sum(), i)
        })
        .collect();
    scored.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then_with(|| inputs[a.1].weights.cmp(inputs[b.1].weights))
    });
    let mut selected: Vec<usize> = scored[..m].iter().map(|&(_, i)| i).collect();
    selected.sort_unstable();
    selected
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(w: &[i32], samples: u64) -> Contribution<'_> {
        Contribution {
            weights: w,
            samples,
        }
    }

    #[test]
    fn fedavg_is_the_weighted_mean_floored() {
        let (a, b) = ([10, -10, 1], [40, 20, 2]);
        let got = aggregate(Rule::FedAvg, &[c(&a, 2), c(&b, 1)]).expect("agg");
        // (20 + 40) / 3 = 20; (-20 + 20) / 3 = 0; (2 + 2) / 3 = 1.33 -> 1
        assert_eq!(got.weights, vec![20, 0, 1]);
        let got = aggregate(Rule::FedAvg, &[c(&[-1], 1), c(&[0], 1)]).expect("agg");
        assert_eq!(got.weights, vec![-1], "floor, not truncation");
    }

    #[test]
    fn median_and_trimmed_mean_by_hand() {
        let rows = [[1, 9], [5, -3], [3, 100], [1000, 4]];
        let ins: Vec<_> = rows.iter().map(|r| c(r, 1)).collect();
        // column 0 sorted: 1 3 5 1000 -> (3+5)/2 = 4; column 1: -3 4 9 100 -> 6 (6.5 floored)
        assert_eq!(
            aggregate(Rule::Median, &ins).expect("m").weights,
            vec![4, 6]
        );
        // trim 1: column 0 keeps 3 5 -> 4; column 1 keeps 4 9 -> 6
        assert_eq!(
            aggregate(Rule::TrimmedMean { trim: 1 }, &ins)
                .expect("t")
                .weights,
            vec![4, 6]
        );
        assert!(matches!(
            aggregate(Rule::TrimmedMean { trim: 2 }, &ins),
            Err(AggregateError::TooFew { .. })
        ));
    }

    #[test]
    fn krum_picks_the_cluster() {
        let rows = [[0, 0], [1, 0], [0, 1], [1, 1], [100, 100]];
        let ins: Vec<_> = rows.iter().map(|r| c(r, 1)).collect();
        // f = 1: each score sums the 2 nearest distances; [100,100] scores highest.
        let got = aggregate(Rule::MultiKrum { f: 1, m: 4 }, &ins).expect("k");
        assert_eq!(got.outliers, vec![4]);
        assert_eq!(got.weights, vec![0, 0], "floor(2/4) = 0");
        let got = aggregate(Rule::MultiKrum { f: 1, m: 1 }, &ins).expect("k");
        assert_eq!(got.outliers.len(), 4);
    }

    #[test]
    fn one_huge_outlier_does_not_move_robust_rules_far() {
        let honest: Vec<[i32; 3]> = (0..7).map(|i| [100 + i, -50 - i, 7]).collect();
        let evil = [i32::MAX, i32::MIN, i32::MAX];
        let mut ins: Vec<_> = honest.iter().map(|r| c(r, 1)).collect();
        ins.push(c(&evil, 1));
        for rule in [
            Rule::Median,
            Rule::TrimmedMean { trim: 1 },
            Rule::MultiKrum { f: 1, m: 5 },
        ] {
            let got = aggregate(rule, &ins).expect("agg");
            assert!(
                got.weights[0] >= 100 && got.weights[0] <= 106,
                "{rule:?}: {:?}",
                got.weights
            );
            assert!(got.weights[1] <= -50 && got.weights[1] >= -56, "{rule:?}");
            assert!(got.outliers.contains(&7), "{rule:?} flags the outlier");
        }
        let avg = aggregate(Rule::FedAvg, &ins).expect("agg");
        assert!(avg.weights[0] > 1_000_000, "FedAvg is not robust");
    }

    #[test]
    fn mismatched_lengths_are_refused() {
        let e = aggregate(Rule::FedAvg, &[c(&[1, 2], 1), c(&[1], 1)]).expect_err("len");
        assert_eq!(
            e,
            AggregateError::Length {
                index: 1,
                got: 1,
                want: 2
            }
        );
    }

    proptest! {
        #[test]
        fn permutation_gives_the_same_result(
            rows in proptest::collection::vec(proptest::collection::vec(any::<i32>(), 4), 5..9),
            samples in proptest::collection::vec(1u64..1000, 9),
            rot in 0usize..9,
        ) {
            let ins: Vec<_> = rows.iter().zip(&samples).map(|(r, &s)| c(r, s)).collect();
            let mut perm = ins.clone();
            perm.rotate_left(rot % ins.len());
            perm.reverse();
            for rule in [Rule::FedAvg, Rule::Median, Rule::TrimmedMean { trim: 1 }, Rule::MultiKrum { f: 1, m: 3 }] {
                let a = aggregate(rule, &ins).expect("agg");
                let b = aggregate(rule, &perm).expect("agg");
                prop_assert_eq!(a.weights, b.weights, "{:?}", rule);
                prop_assert_eq!(a.outliers.len(), b.outliers.len());
            }
        }

        #[test]
        fn median_lies_between_min_and_max(rows in proptest::collection::vec(proptest::collection::vec(any::<i32>(), 3), 1..8)) {
            let ins: Vec<_> = rows.iter().map(|r| c(r, 1)).collect();
            let m = aggregate(Rule::Median, &ins).expect("agg");
            for k in 0..3 {
                let lo = rows.iter().map(|r| r[k]).min().expect("rows");
                let hi = rows.iter().map(|r| r[k]).max().expect("rows");
                prop_assert!(m.weights[k] >= lo && m.weights[k] <= hi);
            }
        }
    }
}
