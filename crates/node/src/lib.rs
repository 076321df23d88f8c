//! An Agora node: configuration, storage, and the wiring of network, market and sandbox.
//!
//! # Bird's-eye view
//!
//! [`Node::start`] loads the identity, opens the store, spawns the network task
//! ([`agora_net`]) and the node's core task, and hands back a [`NodeHandle`] that the HTTP API and
//! the CLI use. The core task is the only owner of the market state machine
//! ([`agora_market::Market`]) and of the worker's lease book: it turns network events and API
//! commands into market inputs, and market outputs into network messages and storage writes.
//! Anything that waits (requests to peers, blob fetches, sandbox runs, disk writes) is spawned off
//! the loop and reports back through a bounded queue. Sandbox runs go to a bounded executor pool
//! ([`agora_exec::Pool`]) on blocking threads, never on the network loop.
//!
//! Job records are written to redb by one persistence task, in order and in groups: a submitted
//! job's first record before the market hears of it, later changes once per flush (before an
//! acknowledgement that needs them, or 20 ms after the change). A restarted node resumes the jobs
//! it submitted ([`agora_market::Market::restore`]).
//!
//! Data flows one way: `types` <- `market`, `exec`, `net` <- `node` <- `api`, `cli`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod blobs;
pub mod config;
mod core;
pub mod identity;
pub mod ledger;
mod node;
pub mod store;
mod work;

pub use agora_market::{FailReason, JobRecord, JobState, WaitReason};
pub use config::{ConfigError, FileConfig, LedgerConfig, LogFormat, NodeConfig, Preset};
pub use ledger::{AccountView, LedgerStatus};
pub use node::{
    LedgerError, Node, NodeError, NodeHandle, NodeStatus, OutputError, SubmitError, SubmitRequest,
    TxOutcome,
};
pub use store::Store;
