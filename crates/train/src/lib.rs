//! Federated training with proof of training: the pure logic.
//!
//! A training job trains a shared model over many rounds. In each round,
//! trainers run a deterministic WebAssembly training step (the example is
//! `examples/train/train.c`, softmax regression in Q16.16 fixed point) on
//! the current model and their shard, and propose the updated weights with
//! the metrics they claim. Sampled verifiers re-execute the same task in the
//! sandbox: because the step uses integer arithmetic only and the sandbox
//! fixes clocks, randomness and NaN bits, an honest re-execution matches the
//! honest trainer's output byte for byte on any CPU. Stake-weighted verifier
//! reports decide each proposal; the verified ones go through a robust
//! aggregation rule computed in exact integer arithmetic in a fixed order,
//! so every node derives the same next model and the same hash.
//!
//! Modules: [`codec`] (the bounded binary formats of shards, tasks and
//! updates), [`aggregate`](mod@aggregate) (FedAvg, coordinate-wise median, trimmed mean,
//! Multi-Krum), [`eval`] (held-out accuracy and loss in the step's own
//! arithmetic), [`round`] (the round state machine, `handle(input, now) ->
//! outputs`, no I/O and no clock), [`sim`] (a deterministic local simulation
//! running the real step in `agora_exec`'s sandbox, with Byzantine trainers).
//!
//! What it defends against: wrong or manipulated updates (re-execution
//! mismatch, slashed), false metric claims (the module's own output disagrees,
//! slashed), lying verifiers (a stake majority decides), late proposals, and,
//! as a second line, outliers that survive verification (robust rules). It
//! does not defend against a stake majority of colluding verifiers, nor
//! against poisoned training *data* (a step run honestly on bad data is
//! verified as honest; the robust rules bound its influence).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]
#![warn(missing_docs)]

pub mod aggregate;
pub mod codec;
pub mod eval;
pub mod fixed;
pub mod round;
pub mod sim;

pub use aggregate::{Aggregate, AggregateError, Contribution, Rule, aggregate};
pub use codec::{CodecError, Hyper, Metrics, Model, Shard, Task, Update};
pub use eval::evaluate;
pub use round::{Config, Evidence, Input, Output, Reason, Round, Timer};
pub use sim::{Data, SimConfig, SimError, SimReport, centralized, simulate};
