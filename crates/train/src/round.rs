//! One training round as a pure state machine: `handle(input, now) -> outputs`.
//!
//! A round starts from the current model version and a fixed assignment of
//! trainers to shards. [`Round::start`] emits an [`Output::AssignTask`] per
//! trainer and the two timers (end of proposals, end of verification). Each
//! in-time [`Input::Proposal`] is checked (assigned, first one, weights that
//! hash to the announced hash) and answered with an
//! [`Output::RequestVerification`] naming `verifiers_per_proposal` verifiers
//! sampled deterministically: the staked verifiers other than the trainer,
//! ordered by `BLAKE3(seed, job, round, trainer, verifier)`. Each sampled
//! verifier re-executes the task and reports its output hash and the metrics
//! the module wrote ([`Input::Verification`]); that report is its vote,
//! weighted by its stake.
//!
//! When every assigned trainer has proposed and every sampled verifier has
//! reported, or when the verification timer fires, the round closes. For each
//! proposal, by stake of its sampled verifiers:
//!
//! - more than half report a different output hash: rejected
//!   ([`Reason::HashMismatch`]) and [`Output::Slash`] with the evidence;
//! - more than half report the same hash but other metrics: rejected
//!   ([`Reason::FalseMetricClaim`]) and slashed (the module's own output
//!   proves the claim false);
//! - more than half report both the same hash and the same metrics: verified;
//! - otherwise: rejected ([`Reason::Unverified`]), not slashed.
//!
//! The verified updates go through the job's aggregation [`Rule`]; the ones
//! it flags as outliers are rejected ([`Reason::Outlier`], not slashed), the
//! others accepted and rewarded ([`Output::Reward`]); the aggregate is the
//! next model version ([`Output::Aggregated`], with its hash). When fewer
//! updates were verified than the rule needs (Multi-Krum: `f + 3`, trimmed
//! mean: `2 trim + 1`), the round falls back to the median. With no
//! verified update the model stays as it was. Proposals are processed in the
//! order of the trainers' ids, so every node derives the same outputs.

use std::collections::BTreeMap;

use crate::aggregate::{AggregateError, Contribution, Rule, aggregate};
use crate::codec::{Metrics, Model};

/// A participant: 32 bytes (e.g. the hash of a peer's public key).
pub type Id = [u8; 32];
/// A BLAKE3 digest.
pub type Digest = [u8; 32];

/// What a round needs to know, fixed when it starts.
#[derive(Clone, Debug)]
pub struct Config {
    /// The training job's id.
    pub job: Digest,
    /// Round number (0 for the first).
    pub round: u64,
    /// The model version this round trains from.
    pub model: Model,
    /// Trainers and the shard index each trains on.
    pub trainers: Vec<(Id, u32)>,
    /// Staked verifiers and their stake.
    pub verifiers: Vec<(Id, u64)>,
    /// Verifiers sampled per proposal.
    pub verifiers_per_proposal: usize,
    /// Aggregation rule.
    pub rule: Rule,
    /// Reward per accepted update.
    pub reward: u64,
    /// Milliseconds after the start during which proposals are accepted.
    pub proposal_window_ms: u64,
    /// Milliseconds after the proposal window for verification.
    pub verification_window_ms: u64,
    /// Seed of the verifier sampling (mixed with job, round and trainer).
    pub seed: [u8; 32],
}

/// The round's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timer {
    /// No proposal accepted after this.
    Proposals,
    /// The round closes with what it has.
    Verification,
}

/// Why a proposal was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A stake majority of its verifiers re-executed the task and got other weights.
    HashMismatch,
    /// Its verifiers got the same weights but other metrics than claimed.
    FalseMetricClaim,
    /// The aggregation rule flagged it as an outlier.
    Outlier,
    /// It arrived after the proposal window.
    Late,
    /// No stake majority of its verifiers confirmed it in time.
    Unverified,
    /// Its weights do not hash to the announced hash, or have the wrong shape.
    Malformed,
    /// The sender is not an assigned trainer of this round, or already proposed.
    NotAssigned,
}

impl Reason {
    /// A short name for reports.
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::HashMismatch => "hash_mismatch",
            Reason::FalseMetricClaim => "false_metric_claim",
            Reason::Outlier => "outlier",
            Reason::Late => "late",
            Reason::Unverified => "unverified",
            Reason::Malformed => "malformed",
            Reason::NotAssigned => "not_assigned",
        }
    }
}

/// Inputs of a round.
#[derive(Clone, Debug)]
pub enum Input {
    /// A trainer took its task.
    TaskTaken {
        /// The trainer.
        trainer: Id,
    },
    /// A trainer proposes an update.
    Proposal {
        /// The trainer.
        trainer: Id,
        /// BLAKE3 of the update's weights ([`Model::hash`]).
        update_hash: Digest,
        /// The metrics it claims.
        claimed: Metrics,
        /// The update's weights (same shape as the round's model).
        weights: Vec<i32>,
    },
    /// A verifier re-executed a trainer's task: its vote.
    Verification {
        /// The verifier.
        verifier: Id,
        /// Whose task.
        trainer: Id,
        /// Hash of the weights its re-execution produced.
        output_hash: Digest,
        /// Metrics its re-execution produced.
        metrics: Metrics,
    },
    /// A timer scheduled by [`Output::ScheduleTimer`] fired.
    Deadline(Timer),
}

/// Proof that a proposal was wrong: what was claimed and what the verifiers found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Job id.
    pub job: Digest,
    /// Round.
    pub round: u64,
    /// The trainer at fault.
    pub trainer: Id,
    /// The hash it proposed.
    pub claimed_hash: Digest,
    /// The metrics it claimed.
    pub claimed: Metrics,
    /// What was wrong.
    pub reason: Reason,
    /// Every sampled verifier's report: id, stake, output hash, metrics.
    pub reports: Vec<(Id, u64, Digest, Metrics)>,
}

/// Outputs of a round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Tell `trainer` to train the round's model on `shard`.
    AssignTask {
        /// The trainer.
        trainer: Id,
        /// Shard index.
        shard: u32,
    },
    /// Call back with [`Input::Deadline`] at `at` (ms).
    ScheduleTimer {
        /// When.
        at: u64,
        /// Which.
        timer: Timer,
    },
    /// Ask `verifiers` to re-execute `trainer`'s task.
    RequestVerification {
        /// The trainer.
        trainer: Id,
        /// Its update's hash.
        update_hash: Digest,
        /// Sampled verifiers.
        verifiers: Vec<Id>,
    },
    /// The proposal is accepted into the aggregate.
    Accept {
        /// The trainer.
        trainer: Id,
        /// Its update's hash.
        update_hash: Digest,
    },
    /// The proposal is rejected.
    Reject {
        /// The trainer.
        trainer: Id,
        /// Its update's hash.
        update_hash: Digest,
        /// Why.
        reason: Reason,
    },
    /// The round's aggregate: the next model version.
    Aggregated {
        /// Round.
        round: u64,
        /// [`Model::hash`] of `model`.
        model_hash: Digest,
        /// The next model.
        model: Model,
        /// Number of updates aggregated.
        accepted: usize,
    },
    /// `amount` owed to `trainer` from the job's escrow.
    Reward {
        /// The trainer.
        trainer: Id,
        /// Amount.
        amount: u64,
    },
    /// A provably wrong proposal.
    Slash(Evidence),
}

struct Proposal {
    update_hash: Digest,
    claimed: Metrics,
    weights: Vec<i32>,
    verifiers: Vec<(Id, u64)>,
    reports: BTreeMap<Id, (Digest, Metrics)>,
}

/// One round; see the module docs.
pub struct Round {
    config: Config,
    started: u64,
    proposals: BTreeMap<Id, Proposal>,
    taken: Vec<Id>,
    closed: bool,
}

impl Round {
    /// Starts the round at `now` (ms): the tasks to assign and the timers.
    pub fn start(config: Config, now: u64) -> (Self, Vec<Output>) {
        let mut out: Vec<Output> = config
            .trainers
            .iter()
            .map(|&(trainer, shard)| Output::AssignTask { trainer, shard })
            .collect();
        let p = now.saturating_add(config.proposal_window_ms);
        out.push(Output::ScheduleTimer {
            at: p,
            timer: Timer::Proposals,
        });
        out.push(Output::ScheduleTimer {
            at: p.saturating_add(config.verification_window_ms),
            timer: Timer::Verification,
        });
        let round = Self {
            config,
            started: now,
            proposals: BTreeMap::new(),
            taken: vec![],
            closed: false,
        };
        (round, out)
    }

    /// Whether the round has closed (aggregated).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Trainers that reported taking their task.
    pub fn taken(&self) -> &[Id] {
        &self.taken
    }

    /// Feeds one input at `now` (ms).
    pub fn handle(&mut self, input: Input, now: u64) -> Vec<Output> {
        if self.closed {
            return vec![];
        }
        let mut out = vec![];
        match input {
            Input::TaskTaken { trainer } => {
                if self.is_trainer(&trainer) && !self.taken.contains(&trainer) {
                    self.taken.push(trainer);
                }
            }
            Input::Proposal {
                trainer,
                update_hash,
                claimed,
                weights,
            } => self.on_proposal(trainer, update_hash, claimed, weights, now, &mut out),
            Input::Verification {
                verifier,
                trainer,
                output_hash,
                metrics,
            } => {
                if let Some(p) = self.proposals.get_mut(&trainer)
                    && p.verifiers.iter().any(|(v, _)| *v == verifier)
                {
                    p.reports.entry(verifier).or_insert((output_hash, metrics));
                }
            }
            Input::Deadline(Timer::Proposals) => {}
            Input::Deadline(Timer::Verification) => {
                self.close(&mut out);
                return out;
            }
        }
        if self.complete() {
            self.close(&mut out);
        }
        out
    }

    fn is_trainer(&self, id: &Id) -> bool {
        self.config.trainers.iter().any(|(t, _)| t == id)
    }

    fn on_proposal(
        &mut self,
        trainer: Id,
        update_hash: Digest,
        claimed: Metrics,
        weights: Vec<i32>,
        now: u64,
        out: &mut Vec<Output>,
    ) {
        let reject = |reason| Output::Reject {
            trainer,
            update_hash,
            reason,
        };
        if !self.is_trainer(&trainer) || self.proposals.contains_key(&trainer) {
            out.push(reject(Reason::NotAssigned));
            return;
        }
        if now > self.started.saturating_add(self.config.proposal_window_ms) {
            out.push(reject(Reason::Late));
            return;
        }
        let model = Model {
            features: self.config.model.features,
            classes: self.config.model.classes,
            weights,
        };
        if model.validate().is_err() || model.hash() != update_hash {
            out.push(reject(Reason::Malformed));
            return;
        }
        let verifiers = self.sample(&trainer);
        out.push(Output::RequestVerification {
            trainer,
            update_hash,
            verifiers: verifiers.iter().map(|(v, _)| *v).collect(),
        });
        self.proposals.insert(
            trainer,
            Proposal {
                update_hash,
                claimed,
                weights: model.weights,
                verifiers,
                reports: BTreeMap::new(),
            },
        );
    }

    /// The verifiers sampled for `trainer`'s proposal.
    pub fn sample(&self, trainer: &Id) -> Vec<(Id, u64)> {
        let c = &self.config;
        let mut scored: Vec<([u8; 32], Id, u64)> = c
            .verifiers
            .iter()
            .filter(|(v, stake)| v != trainer && *stake > 0)
            .map(|&(v, stake)| {
                let mut h = blake3::Hasher::new();
                h.update(b"agora-train/sample/v1");
                h.update(&c.seed);
                h.update(&c.job);
                h.update(&c.round.to_le_bytes());
                h.update(trainer);
                h.update(&v);
                (*h.finalize().as_bytes(), v, stake)
            })
            .collect();
        scored.sort();
        scored.dedup_by(|a, b| a.1 == b.1);
        scored
            .into_iter()
            .take(c.verifiers_per_proposal)
            .map(|(_, v, s)| (v, s))
            .collect()
    }

    fn complete(&self) -> bool {
        self.proposals.len() == self.config.trainers.len()
            && self
                .proposals
                .values()
                .all(|p| p.reports.len() == p.verifiers.len())
    }

    fn close(&mut self, out: &mut Vec<Output>) {
        self.closed = true;
        let c = &self.config;
        let mut verified: Vec<(Id, &Proposal)> = vec![];
        for (trainer, p) in &self.proposals {
            let total: u128 = p.verifiers.iter().map(|(_, s)| u128::from(*s)).sum();
            let (mut same, mut wrong_hash, mut wrong_metrics) = (0u128, 0u128, 0u128);
            for (v, stake) in &p.verifiers {
                match p.reports.get(v) {
                    Some((h, _)) if *h != p.update_hash => wrong_hash += u128::from(*stake),
                    Some((_, m)) if *m != p.claimed => wrong_metrics += u128::from(*stake),
                    Some(_) => same += u128::from(*stake),
                    None => {}
                }
            }
            let verdict = if 2 * wrong_hash > total {
                Some(Reason::HashMismatch)
            } else if 2 * wrong_metrics > total {
                Some(Reason::FalseMetricClaim)
            } else if 2 * same > total {
                None
            } else {
                Some(Reason::Unverified)
            };
            match verdict {
                None => verified.push((*trainer, p)),
                Some(reason) => {
                    out.push(Output::Reject {
                        trainer: *trainer,
                        update_hash: p.update_hash,
                        reason,
                    });
                    if reason != Reason::Unverified {
                        out.push(Output::Slash(Evidence {
                            job: c.job,
                            round: c.round,
                            trainer: *trainer,
                            claimed_hash: p.update_hash,
                            claimed: p.claimed,
                            reason,
                            reports: p
                                .verifiers
                                .iter()
                                .filter_map(|(v, s)| {
                                    p.reports.get(v).map(|(h, m)| (*v, *s, *h, *m))
                                })
                                .collect(),
                        }));
                    }
                }
            }
        }
        let inputs: Vec<Contribution<'_>> = verified
            .iter()
            .map(|(_, p)| Contribution {
                weights: &p.weights,
                samples: u64::from(p.claimed.samples),
            })
            .collect();
        let result = match aggregate(c.rule, &inputs) {
            Err(AggregateError::TooFew { .. }) => aggregate(Rule::Median, &inputs),
            r => r,
        };
        let (weights, outliers) = match result {
            Ok(a) => (a.weights, a.outliers),
            Err(_) => (c.model.weights.clone(), (0..verified.len()).collect()),
        };
        let mut accepted = 0;
        for (i, (trainer, p)) in verified.iter().enumerate() {
            if outliers.contains(&i) {
                out.push(Output::Reject {
                    trainer: *trainer,
                    update_hash: p.update_hash,
                    reason: Reason::Outlier,
                });
            } else {
                accepted += 1;
                out.push(Output::Accept {
                    trainer: *trainer,
                    update_hash: p.update_hash,
                });
                out.push(Output::Reward {
                    trainer: *trainer,
                    amount: c.reward,
                });
            }
        }
        let model = Model {
            features: c.model.features,
            classes: c.model.classes,
            weights,
        };
        out.push(Output::Aggregated {
            round: c.round,
            model_hash: model.hash(),
            model,
            accepted,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pid(i: u8) -> Id {
        [i; 32]
    }

    fn metrics(correct: u32) -> Metrics {
        Metrics {
            loss: 1000,
            correct,
            samples: 10,
        }
    }

    /// 3 trainers (1..=3), 5 verifiers (10..=14) of stake 100, 3 per proposal.
    fn config(rule: Rule) -> Config {
        Config {
            job: [9; 32],
            round: 4,
            model: Model::zeros(1, 2).expect("shape"),
            trainers: vec![(pid(1), 0), (pid(2), 1), (pid(3), 2)],
            verifiers: (10..15).map(|i| (pid(i), 100)).collect(),
            verifiers_per_proposal: 3,
            rule,
            reward: 7,
            proposal_window_ms: 1000,
            verification_window_ms: 1000,
            seed: [1; 32],
        }
    }

    fn weights(v: i32) -> Vec<i32> {
        vec![v, v, v, v]
    }

    fn hash_of(w: &[i32]) -> Digest {
        Model {
            features: 1,
            classes: 2,
            weights: w.to_vec(),
        }
        .hash()
    }

    fn propose(r: &mut Round, t: u8, w: Vec<i32>, m: Metrics, now: u64) -> Vec<Output> {
        r.handle(
            Input::Proposal {
                trainer: pid(t),
                update_hash: hash_of(&w),
                claimed: m,
                weights: w,
            },
            now,
        )
    }

    /// Every sampled verifier of `t` reports `(hash, metrics)`; the first
    /// `liars` report `lie` instead.
    fn verify(
        r: &mut Round,
        t: u8,
        honest: (Digest, Metrics),
        liars: usize,
        lie: (Digest, Metrics),
    ) -> Vec<Output> {
        let mut out = vec![];
        for (k, (v, _)) in r.sample(&pid(t)).into_iter().enumerate() {
            let (h, m) = if k < liars { lie } else { honest };
            out.extend(r.handle(
                Input::Verification {
                    verifier: v,
                    trainer: pid(t),
                    output_hash: h,
                    metrics: m,
                },
                10,
            ));
        }
        out
    }

    fn reasons(out: &[Output]) -> Vec<(u8, Reason)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Reject {
                    trainer, reason, ..
                } => Some((trainer[0], *reason)),
                _ => None,
            })
            .collect()
    }

    fn aggregated(out: &[Output]) -> Option<(Model, usize)> {
        out.iter().find_map(|o| match o {
            Output::Aggregated {
                model, accepted, ..
            } => Some((model.clone(), *accepted)),
            _ => None,
        })
    }

    #[test]
    fn start_assigns_tasks_and_schedules_both_timers() {
        let (_, out) = Round::start(config(Rule::FedAvg), 100);
        assert_eq!(
            out.iter()
                .filter(|o| matches!(o, Output::AssignTask { .. }))
                .count(),
            3
        );
        assert!(out.contains(&Output::ScheduleTimer {
            at: 1100,
            timer: Timer::Proposals
        }));
        assert!(out.contains(&Output::ScheduleTimer {
            at: 2100,
            timer: Timer::Verification
        }));
    }

    #[test]
    fn sampling_is_deterministic_excludes_the_trainer_and_depends_on_the_round() {
        let mut c = config(Rule::FedAvg);
        c.verifiers.push((pid(1), 100));
        let (r, _) = Round::start(c.clone(), 0);
        let s = r.sample(&pid(1));
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|(v, _)| *v != pid(1)));
        assert_eq!(s, Round::start(c.clone(), 5).0.sample(&pid(1)));
        let differs = (0..20u64).any(|k| {
            let mut c2 = c.clone();
            c2.round = k;
            Round::start(c2, 0).0.sample(&pid(1)) != s
        });
        assert!(differs, "the round id changes the sample");
    }

    #[test]
    fn happy_path_aggregates_rewards_and_closes_early() {
        let (mut r, _) = Round::start(config(Rule::FedAvg), 0);
        let mut out = vec![];
        for (t, v) in [(1u8, 10), (2, 20), (3, 30)] {
            let o = propose(&mut r, t, weights(v), metrics(5), 5);
            assert!(
                matches!(o[0], Output::RequestVerification { ref verifiers, .. } if verifiers.len() == 3)
            );
            out.extend(verify(
                &mut r,
                t,
                (hash_of(&weights(v)), metrics(5)),
                0,
                ([0; 32], metrics(0)),
            ));
        }
        assert!(r.is_closed(), "closes as soon as every report is in");
        assert!(reasons(&out).is_empty());
        let (model, accepted) = aggregated(&out).expect("aggregated");
        assert_eq!((model.weights, accepted), (weights(20), 3));
        let paid: u64 = out
            .iter()
            .map(|o| {
                if let Output::Reward { amount, .. } = o {
                    *amount
                } else {
                    0
                }
            })
            .sum();
        assert_eq!(paid, 21);
        assert!(!out.iter().any(|o| matches!(o, Output::Slash(_))));
        assert!(
            r.handle(Input::Deadline(Timer::Verification), 3000)
                .is_empty(),
            "closed is final"
        );
    }

    #[test]
    fn hash_mismatch_by_majority_is_rejected_and_slashed_minority_is_not() {
        let (mut r, _) = Round::start(config(Rule::FedAvg), 0);
        let real = (hash_of(&weights(1)), metrics(5));
        propose(&mut r, 1, weights(99), metrics(5), 5);
        verify(&mut r, 1, real, 0, real);
        propose(&mut r, 2, weights(1), metrics(5), 5);
        // one lying verifier of three: still verified
        verify(&mut r, 2, real, 1, ([7; 32], metrics(0)));
        let out = r.handle(Input::Deadline(Timer::Verification), 2000);
        assert_eq!(reasons(&out), vec![(1, Reason::HashMismatch)]);
        let slashed: Vec<_> = out
            .iter()
            .filter_map(|o| {
                if let Output::Slash(e) = o {
                    Some(e)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(slashed.len(), 1);
        assert_eq!(slashed[0].trainer, pid(1));
        assert_eq!(slashed[0].reports.len(), 3);
        assert_eq!(aggregated(&out).map(|a| a.1), Some(1));
    }

    #[test]
    fn false_metric_claim_is_rejected_and_slashed() {
        let (mut r, _) = Round::start(config(Rule::FedAvg), 0);
        propose(&mut r, 1, weights(3), metrics(10), 5);
        verify(
            &mut r,
            1,
            (hash_of(&weights(3)), metrics(4)),
            0,
            ([0; 32], metrics(0)),
        );
        let out = r.handle(Input::Deadline(Timer::Verification), 2000);
        assert_eq!(reasons(&out), vec![(1, Reason::FalseMetricClaim)]);
        assert!(
            out.iter()
                .any(|o| matches!(o, Output::Slash(e) if e.reason == Reason::FalseMetricClaim))
        );
        let (model, accepted) = aggregated(&out).expect("aggregated");
        assert_eq!(accepted, 0);
        assert_eq!(
            model,
            Model::zeros(1, 2).expect("shape"),
            "no update: model unchanged"
        );
    }

    #[test]
    fn late_unassigned_duplicate_and_malformed_proposals() {
        let (mut r, _) = Round::start(config(Rule::FedAvg), 0);
        assert_eq!(
            reasons(&propose(&mut r, 1, weights(1), metrics(1), 1001)),
            vec![(1, Reason::Late)]
        );
        assert_eq!(
            reasons(&propose(&mut r, 8, weights(1), metrics(1), 5)),
            vec![(8, Reason::NotAssigned)]
        );
        propose(&mut r, 2, weights(1), metrics(1), 5);
        assert_eq!(
            reasons(&propose(&mut r, 2, weights(2), metrics(1), 5)),
            vec![(2, Reason::NotAssigned)]
        );
        let bad = r.handle(
            Input::Proposal {
                trainer: pid(3),
                update_hash: hash_of(&weights(5)),
                claimed: metrics(1),
                weights: weights(6),
            },
            5,
        );
        assert_eq!(reasons(&bad), vec![(3, Reason::Malformed)]);
        let short = r.handle(
            Input::Proposal {
                trainer: pid(3),
                update_hash: hash_of(&[1]),
                claimed: metrics(1),
                weights: vec![1],
            },
            5,
        );
        assert_eq!(reasons(&short), vec![(3, Reason::Malformed)]);
    }

    #[test]
    fn unverified_at_the_deadline_is_rejected_without_slashing() {
        let (mut r, _) = Round::start(config(Rule::FedAvg), 0);
        propose(&mut r, 1, weights(1), metrics(1), 5);
        let s = r.sample(&pid(1));
        r.handle(
            Input::Verification {
                verifier: s[0].0,
                trainer: pid(1),
                output_hash: hash_of(&weights(1)),
                metrics: metrics(1),
            },
            6,
        );
        // a report from a verifier that was not sampled does not count
        r.handle(
            Input::Verification {
                verifier: pid(200),
                trainer: pid(1),
                output_hash: hash_of(&weights(1)),
                metrics: metrics(1),
            },
            6,
        );
        let out = r.handle(Input::Deadline(Timer::Verification), 2000);
        assert_eq!(reasons(&out), vec![(1, Reason::Unverified)]);
        assert!(!out.iter().any(|o| matches!(o, Output::Slash(_))));
    }

    /// Five trainers under `rule`: four propose weights near 10, the fifth 100,000; every
    /// proposal is confirmed by its verifier. The outputs of the whole round.
    fn four_close_and_one_far(rule: Rule) -> Vec<Output> {
        let mut c = config(rule);
        c.trainers = (1..=5).map(|i| (pid(i), u32::from(i))).collect();
        let (mut r, _) = Round::start(c, 0);
        let mut out = vec![];
        for (t, v) in [(1u8, 10), (2, 11), (3, 12), (4, 13), (5, 100_000)] {
            propose(&mut r, t, weights(v), metrics(5), 5);
            out.extend(verify(
                &mut r,
                t,
                (hash_of(&weights(v)), metrics(5)),
                0,
                ([0; 32], metrics(0)),
            ));
        }
        out
    }

    #[test]
    fn krum_outlier_is_rejected_without_slashing() {
        let out = four_close_and_one_far(Rule::MultiKrum { f: 1, m: 3 });
        let rejected = reasons(&out);
        assert!(rejected.contains(&(5, Reason::Outlier)), "{rejected:?}");
        assert!(!out.iter().any(|o| matches!(o, Output::Slash(_))));
        let (model, accepted) = aggregated(&out).expect("aggregated");
        assert_eq!(accepted, 3);
        assert!(model.weights[0] <= 13);
    }

    #[test]
    fn median_flags_a_far_update() {
        let out = four_close_and_one_far(Rule::Median);
        assert_eq!(reasons(&out), vec![(5, Reason::Outlier)]);
        assert_eq!(aggregated(&out).map(|a| a.0.weights), Some(weights(12)));
    }
}
