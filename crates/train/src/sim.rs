//! A deterministic local simulation of federated training, with the real
//! training step running in Agora's sandbox.
//!
//! [`simulate`] drives [`Round`]s the way a network would, in one thread:
//! `trainers` parties, the last `byzantine` of them Byzantine; every party is
//! also a staked verifier (equal stakes). Honest trainers run the step on
//! their shard; Byzantine ones cycle through a sign-flipped update
//! (`base - delta`), a scaled one (`base + 10 delta`), seeded random noise
//! added to the honest weights, and honest weights with a false metric claim
//! (every sample correct, zero loss). Honest verifiers re-execute the task in
//! the sandbox; Byzantine verifiers report a made-up hash. After each round
//! the new model is evaluated on the held-out set with [`evaluate`].
//! [`centralized`] is the baseline: the same module trained on all shards at
//! once for `rounds * local_steps` steps with a batch `trainers` times larger.

use std::path::Path;
use std::sync::Arc;

use agora_exec::{ExecError, Job, Limits, Sandbox};
use thiserror::Error;

use crate::aggregate::Rule;
use crate::codec::{CodecError, Hyper, Metrics, Model, Shard, Task, Update};
use crate::eval::evaluate;
use crate::round::{Config, Digest, Id, Input, Output, Reason, Round};

/// Why the simulation stopped.
#[derive(Debug, Error)]
pub enum SimError {
    /// A data file is missing or unreadable.
    #[error("cannot read {path}: {source} (run examples/build.sh and examples/train/make_data.py)")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A blob did not decode.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The sandbox failed to run the step.
    #[error("the training step failed in the sandbox: {0}")]
    Exec(#[from] ExecError),
    /// The step exited with an error.
    #[error("the training step exited with {code}: {stderr}")]
    Step {
        /// Exit code.
        code: i32,
        /// Its stderr.
        stderr: String,
    },
    /// The configuration cannot run.
    #[error("invalid simulation: {0}")]
    Config(String),
}

/// The training example's data: shards and the held-out test set.
#[derive(Clone, Debug)]
pub struct Data {
    /// One shard per trainer.
    pub shards: Vec<Shard>,
    /// The held-out test set.
    pub test: Shard,
}

impl Data {
    /// Reads `shard-0.bin`.. (as many as exist, up to 64) and `test.bin` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, SimError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|source| SimError::Io {
                path: path.display().to_string(),
                source,
            })
        };
        let mut shards = vec![];
        for k in 0..64 {
            if !dir.join(format!("shard-{k}.bin")).exists() {
                break;
            }
            shards.push(Shard::decode(&read(&format!("shard-{k}.bin"))?)?);
        }
        let test = Shard::decode(&read("test.bin")?)?;
        if shards.is_empty() {
            return Err(SimError::Config(format!(
                "no shard-0.bin in {}",
                dir.display()
            )));
        }
        Ok(Self { shards, test })
    }
}

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Rounds to run.
    pub rounds: u64,
    /// Byzantine trainers (the last ones).
    pub byzantine: usize,
    /// Aggregation rule.
    pub rule: Rule,
    /// Learning rate, Q16.16.
    pub learning_rate: i32,
    /// Local SGD steps per task.
    pub local_steps: u32,
    /// Batch size per step.
    pub batch: u32,
    /// Verifiers per proposal.
    pub verifiers_per_proposal: usize,
    /// Seed of everything random.
    pub seed: u64,
}

impl SimConfig {
    /// The settings of the acceptance test: 20 rounds, FedAvg, 5 verifiers.
    pub fn recommended(byzantine: usize) -> Self {
        Self {
            rounds: 20,
            byzantine,
            rule: Rule::FedAvg,
            learning_rate: 32768,
            local_steps: 25,
            batch: 16,
            verifiers_per_proposal: 5,
            seed: 7,
        }
    }
}

/// One round's outcome.
#[derive(Clone, Debug)]
pub struct RoundReport {
    /// Round number.
    pub round: u64,
    /// Held-out accuracy (percent) of the round's aggregate.
    pub accuracy: f64,
    /// Held-out metrics, exact.
    pub metrics: Metrics,
    /// Trainers (indices) whose updates were accepted.
    pub accepted: Vec<usize>,
    /// Rejected trainers and why.
    pub rejected: Vec<(usize, Reason)>,
    /// Trainers slashed this round.
    pub slashed: Vec<usize>,
    /// The new model's hash.
    pub model_hash: Digest,
}

/// The whole simulation's outcome.
#[derive(Clone, Debug)]
pub struct SimReport {
    /// Per round.
    pub rounds: Vec<RoundReport>,
    /// The final model.
    pub model: Model,
    /// Final held-out accuracy (percent).
    pub accuracy: f64,
    /// Byzantine proposals made / rejected.
    pub byzantine_proposals: usize,
    /// Byzantine proposals rejected.
    pub rejected_byzantine: usize,
    /// Honest updates accepted.
    pub accepted_honest: usize,
    /// Honest trainers slashed (counted per slash).
    pub honest_slashed: usize,
    /// Byzantine proposals slashed.
    pub byzantine_slashed: usize,
    /// Rewards paid in total.
    pub rewards: u64,
}

/// Runs the training step on `task` in `sandbox`.
pub fn run_step(sandbox: &Sandbox, module: &Arc<[u8]>, task: &Task) -> Result<Update, SimError> {
    let job = Job::new(module.clone(), task.encode()?, vec![], Limits::default());
    let out = sandbox.run_blocking(&job)?;
    if out.exit_code != 0 {
        return Err(SimError::Step {
            code: out.exit_code,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(Update::decode(&out.stdout)?)
}

fn id(i: usize) -> Id {
    *blake3::hash(format!("agora-train/sim/party/{i}").as_bytes()).as_bytes()
}

fn noise(seed: u64, round: u64, i: usize, len: usize) -> Vec<i32> {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&round.to_le_bytes());
    h.update(&i.to_le_bytes());
    let mut xof = h.finalize_xof();
    (0..len)
        .map(|_| {
            let mut b = [0u8; 4];
            xof.fill(&mut b);
            (i32::from_le_bytes(b) >> 12).wrapping_mul(4) // about +-2 in Q16.16
        })
        .collect()
}

/// The batch-order seed of the task for `shard` in `round` of a job seeded with `seed`
/// (`usize::MAX` for the centralized baseline): trainer and verifiers derive the same one.
pub fn task_seed(seed: u64, round: u64, shard: usize) -> u64 {
    let h = blake3::hash(format!("agora-train/task/{seed}/{round}/{shard}").as_bytes());
    let b = h.as_bytes();
    u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Runs the simulation; see the module docs.
pub fn simulate(
    sandbox: &Sandbox,
    module: &[u8],
    data: &Data,
    cfg: &SimConfig,
) -> Result<SimReport, SimError> {
    let n = data.shards.len();
    if cfg.byzantine >= n {
        return Err(SimError::Config(format!(
            "{} Byzantine trainers of {n}: at least one must be honest",
            cfg.byzantine
        )));
    }
    let module: Arc<[u8]> = module.into();
    let first = &data.shards[0];
    let mut model = Model::zeros(first.features, first.classes)?;
    let ids: Vec<Id> = (0..n).map(id).collect();
    let index = |x: &Id| ids.iter().position(|i| i == x).unwrap_or(usize::MAX);
    let honest = |i: usize| i < n - cfg.byzantine;
    let mut report = SimReport {
        rounds: vec![],
        model: model.clone(),
        accuracy: 0.0,
        byzantine_proposals: 0,
        rejected_byzantine: 0,
        accepted_honest: 0,
        honest_slashed: 0,
        byzantine_slashed: 0,
        rewards: 0,
    };
    for r in 0..cfg.rounds {
        let mut now = r * 10_000;
        let config = Config {
            job: *blake3::hash(b"agora-train/sim/job").as_bytes(),
            round: r,
            model: model.clone(),
            trainers: (0..n).map(|i| (ids[i], i as u32)).collect(),
            verifiers: ids.iter().map(|&v| (v, 100)).collect(),
            verifiers_per_proposal: cfg.verifiers_per_proposal,
            rule: cfg.rule,
            reward: 10,
            proposal_window_ms: 5_000,
            verification_window_ms: 4_000,
            seed: *blake3::hash(&cfg.seed.to_le_bytes()).as_bytes(),
        };
        let (mut round, mut pending) = Round::start(config, now);
        let task = |shard: usize| Task {
            hyper: Hyper {
                learning_rate: cfg.learning_rate,
                local_steps: cfg.local_steps,
                batch: cfg.batch,
                seed: task_seed(cfg.seed, r, shard),
            },
            model: model.clone(),
            shard: data.shards[shard].clone(),
        };
        let mut outputs = vec![];
        while let Some(o) = pending.pop() {
            now += 1;
            let more = match &o {
                Output::AssignTask { trainer, shard } => {
                    let i = index(trainer);
                    let s = *shard as usize;
                    let mut out = round.handle(Input::TaskTaken { trainer: *trainer }, now);
                    let up = run_step(sandbox, &module, &task(s))?;
                    let (weights, claimed) = if honest(i) {
                        (up.model.weights, up.metrics)
                    } else {
                        report.byzantine_proposals += 1;
                        byzantine(&model.weights, up, cfg.seed, r, i)
                    };
                    let update_hash = Model {
                        weights: weights.clone(),
                        ..model.clone()
                    }
                    .hash();
                    out.extend(round.handle(
                        Input::Proposal {
                            trainer: *trainer,
                            update_hash,
                            claimed,
                            weights,
                        },
                        now,
                    ));
                    out
                }
                Output::RequestVerification {
                    trainer, verifiers, ..
                } => {
                    let t = index(trainer);
                    let mut out = vec![];
                    for v in verifiers {
                        let (output_hash, metrics) = if honest(index(v)) {
                            let up = run_step(sandbox, &module, &task(t))?;
                            (up.hash(), up.metrics)
                        } else {
                            let fake = blake3::hash(&[v.as_slice(), trainer.as_slice()].concat());
                            (
                                *fake.as_bytes(),
                                Metrics {
                                    loss: 0,
                                    correct: 0,
                                    samples: 0,
                                },
                            )
                        };
                        out.extend(round.handle(
                            Input::Verification {
                                verifier: *v,
                                trainer: *trainer,
                                output_hash,
                                metrics,
                            },
                            now,
                        ));
                    }
                    out
                }
                _ => vec![],
            };
            outputs.push(o);
            pending.extend(more.into_iter().rev());
        }
        if !round.is_closed() {
            outputs.extend(round.handle(Input::Deadline(crate::round::Timer::Verification), now));
        }
        let mut rr = RoundReport {
            round: r,
            accuracy: 0.0,
            metrics: Metrics {
                loss: 0,
                correct: 0,
                samples: 0,
            },
            accepted: vec![],
            rejected: vec![],
            slashed: vec![],
            model_hash: model.hash(),
        };
        for o in outputs {
            match o {
                Output::Accept { trainer, .. } => {
                    let i = index(&trainer);
                    report.accepted_honest += usize::from(honest(i));
                    rr.accepted.push(i);
                }
                Output::Reject {
                    trainer, reason, ..
                } => {
                    let i = index(&trainer);
                    report.rejected_byzantine += usize::from(!honest(i));
                    rr.rejected.push((i, reason));
                }
                Output::Slash(e) => {
                    let i = index(&e.trainer);
                    report.honest_slashed += usize::from(honest(i));
                    report.byzantine_slashed += usize::from(!honest(i));
                    rr.slashed.push(i);
                }
                Output::Reward { amount, .. } => report.rewards += amount,
                Output::Aggregated {
                    model: m,
                    model_hash,
                    ..
                } => {
                    model = m;
                    rr.model_hash = model_hash;
                }
                _ => {}
            }
        }
        rr.metrics = evaluate(&model, &data.test)?;
        rr.accuracy = rr.metrics.accuracy_percent();
        rr.accepted.sort_unstable();
        rr.rejected.sort_unstable_by_key(|x| x.0);
        report.rounds.push(rr);
    }
    report.accuracy = evaluate(&model, &data.test)?.accuracy_percent();
    report.model = model;
    Ok(report)
}

/// What Byzantine trainer `i` proposes in round `r` instead of its honest update.
fn byzantine(base: &[i32], honest: Update, seed: u64, r: u64, i: usize) -> (Vec<i32>, Metrics) {
    let w = &honest.model.weights;
    let delta = |k: usize| i64::from(w[k]) - i64::from(base[k]);
    let sat = |v: i64| v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32;
    match (r as usize + i) % 4 {
        0 => (
            (0..w.len())
                .map(|k| sat(i64::from(base[k]) - delta(k)))
                .collect(),
            honest.metrics,
        ),
        1 => (
            (0..w.len())
                .map(|k| sat(i64::from(base[k]) + 10 * delta(k)))
                .collect(),
            honest.metrics,
        ),
        2 => {
            let z = noise(seed, r, i, w.len());
            (
                (0..w.len()).map(|k| w[k].saturating_add(z[k])).collect(),
                honest.metrics,
            )
        }
        _ => (
            w.clone(),
            Metrics {
                loss: 0,
                correct: honest.metrics.samples,
                samples: honest.metrics.samples,
            },
        ),
    }
}

/// The centralized baseline: the module trained on all shards at once for
/// `rounds * local_steps` steps, batch `trainers * batch`; its held-out metrics.
pub fn centralized(
    sandbox: &Sandbox,
    module: &[u8],
    data: &Data,
    cfg: &SimConfig,
) -> Result<(Model, Metrics), SimError> {
    let all = Shard::concat(&data.shards)?;
    let module: Arc<[u8]> = module.into();
    let mut model = Model::zeros(all.features, all.classes)?;
    let batch =
        (cfg.batch as usize * data.shards.len()).min(crate::codec::MAX_BATCH as usize) as u32;
    for r in 0..cfg.rounds {
        let task = Task {
            hyper: Hyper {
                learning_rate: cfg.learning_rate,
                local_steps: cfg.local_steps,
                batch,
                seed: task_seed(cfg.seed, r, usize::MAX),
            },
            model,
            shard: all.clone(),
        };
        model = run_step(sandbox, &module, &task)?.model;
    }
    let m = evaluate(&model, &data.test)?;
    Ok((model, m))
}
