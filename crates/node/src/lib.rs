//! An Agora node: configuration, storage, and the wiring of network, market and sandbox.
//!
//! # Bird's-eye view
//!
//! [`Node::start`] loads the identity, opens the store, spawns the network task
//! ([`agora_net`]) and the node's core task, and hands back a [`NodeHandle`] that the HTTP API and
//! the CLI use. The core task is the only owner of the market state machine
//! ([`agora_market::Market`]): it turns network events and API commands into market inputs, and
//! market outputs into network messages, storage writes and sandbox runs. Sandbox runs go to a
//! bounded executor pool ([`agora_exec::Pool`]) off the network loop; their results come back to
//! the core task as events.
//!
//! Data flows one way: `types` <- `market`, `exec`, `net` <- `node` <- `api`, `cli`.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod config;
pub mod identity;
mod node;
pub mod store;

pub use config::{ConfigError, FileConfig, LogFormat, NodeConfig, Preset};
pub use node::{Node, NodeError, NodeHandle, NodeStatus};
pub use store::Store;
