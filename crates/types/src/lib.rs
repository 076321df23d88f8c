//! Agora's shared vocabulary.
//!
//! Every crate of the node speaks in these types: content [`Hash`]es, peer ids, the
//! [`JobSpec`](job::JobSpec) a submitter signs, the bids, leases and results that cross the
//! network, and the messages of each gossip topic. Nothing here does I/O.
//!
//! # Hostile input
//!
//! Everything that arrives from the network is decoded through [`codec::decode`], which refuses a
//! frame larger than the caller's limit *before* parsing it, and parses with `postcard`, whose
//! length prefixes can never allocate more than the frame holds. Everything signed is wrapped in a
//! [`Signed`](sign::Signed) envelope: the signature covers a domain tag, the signer's key, a
//! timestamp and the payload bytes, so a signature made for one kind of message can never be
//! replayed as another, and a receiver can refuse messages outside a synchrony bound.
//!
//! # Layout
//!
//! - [`hash`]: blake3 content hashes, shown as hex.
//! - [`codec`]: the bounded binary codec used on every wire.
//! - [`sign`]: signed envelopes over Ed25519 identities.
//! - [`compare`]: how replicas of a job are compared when outputs are not bit-identical (ONNX).
//! - [`job`]: job specs and the market's messages (bid, lease, result, capability ad, reputation).
//! - [`ledger`]: accounts, signed ledger transactions, slashing evidence and blocks.
//! - [`wire`]: gossip topics and the direct request/response protocol.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod codec;
pub mod compare;
pub mod hash;
pub mod job;
pub mod ledger;
pub mod sign;
pub mod wire;

pub use hash::Hash;
pub use libp2p_identity::{Keypair, PeerId, PublicKey};

/// Milliseconds since the Unix epoch: the one clock that crosses the network.
pub type UnixMillis = u64;

/// The current wall-clock time in [`UnixMillis`]; 0 if the clock is before 1970.
pub fn now_ms() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The version string every node reports (`agora/<version>` in Identify).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
