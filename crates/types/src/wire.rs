//! Gossip topics and the direct request/response protocol, with their size limits.

use serde::{Deserialize, Serialize};

use crate::job::{
    Bid, CapabilityAd, Health, Heartbeat, JobId, Lease, ReputationReport, ResultNotices, SignedJob,
    WorkResult,
};
use crate::ledger::SignedTx;
use crate::sign::Signed;
use crate::{Hash, codec};

/// Size limits of everything that crosses the wire.
pub mod limits {
    /// The largest gossip message, encoded.
    pub const MAX_GOSSIP_BYTES: usize = 64 * 1024;
    /// The largest direct request or response frame.
    pub const MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;
    /// The largest blob chunk served at once.
    pub const BLOB_CHUNK_BYTES: u32 = 1024 * 1024;
    /// The largest job output carried inline in a result.
    pub const MAX_OUTPUT_BYTES: usize = 4 * 1024 * 1024;
}

/// One gossip topic per message kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Job announcements: `agora/jobs/1`.
    Jobs,
    /// Capability ads: `agora/capabilities/1`.
    Capabilities,
    /// Verified results: `agora/results/1`.
    Results,
    /// Reputation changes: `agora/reputation/1`.
    Reputation,
    /// Health beacons: `agora/health/1`.
    Health,
    /// Ledger transactions on their way to a block proposer: `agora/ledger/1`.
    Ledger,
}

impl Topic {
    /// Every topic, in a fixed order.
    pub const ALL: [Topic; 6] = [
        Topic::Jobs,
        Topic::Capabilities,
        Topic::Results,
        Topic::Reputation,
        Topic::Health,
        Topic::Ledger,
    ];

    /// The topic's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Topic::Jobs => "agora/jobs/1",
            Topic::Capabilities => "agora/capabilities/1",
            Topic::Results => "agora/results/1",
            Topic::Reputation => "agora/reputation/1",
            Topic::Health => "agora/health/1",
            Topic::Ledger => "agora/ledger/1",
        }
    }

    /// The topic with this wire name.
    pub fn from_name(name: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.name() == name)
    }
}

/// A gossip message. Each variant travels on its own topic ([`GossipMessage::topic`]); a message
/// that arrives on the wrong topic is invalid.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum GossipMessage {
    /// A job looking for workers. `attempt` counts re-announcements, so that each one is a
    /// distinct gossip message (ids are content hashes); it is not signed, and replaying an
    /// announcement is harmless: bids go to the signer, who ignores jobs it is not running.
    Job {
        /// The signed job.
        job: SignedJob,
        /// Which announcement this is, from 1.
        attempt: u32,
    },
    /// A node's offer.
    Capability(Signed<CapabilityAd>),
    /// Verified results, batched per beacon.
    Result(Signed<ResultNotices>),
    /// Reputation changes: a penalty at once, rewards batched per beacon.
    Reputation(Signed<ReputationReport>),
    /// A health beacon.
    Health(Signed<Health>),
    /// Free text, for tests and operators (`agora/health/1`).
    Text(String),
    /// A ledger transaction for the mempools of block proposers.
    Tx(SignedTx),
}

impl GossipMessage {
    /// The topic this message belongs on.
    pub fn topic(&self) -> Topic {
        match self {
            GossipMessage::Job { .. } => Topic::Jobs,
            GossipMessage::Capability(_) => Topic::Capabilities,
            GossipMessage::Result(_) => Topic::Results,
            GossipMessage::Reputation(_) => Topic::Reputation,
            GossipMessage::Health(_) | GossipMessage::Text(_) => Topic::Health,
            GossipMessage::Tx(_) => Topic::Ledger,
        }
    }

    /// Decodes a gossip payload, bounded by [`limits::MAX_GOSSIP_BYTES`].
    pub fn decode(bytes: &[u8]) -> Result<Self, codec::CodecError> {
        codec::decode(bytes, limits::MAX_GOSSIP_BYTES)
    }
}

/// A direct request from one peer to another.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Echo the bytes back (diagnostics and benchmarks).
    Echo(Vec<u8>),
    /// A worker's bid, sent to the job's submitter.
    Bid(Signed<Bid>),
    /// A lease, sent by the submitter to a worker it picked.
    Lease(Lease),
    /// A worker's result, sent to the submitter, with the output bytes it claims.
    Result {
        /// The signed claim.
        result: Signed<WorkResult>,
        /// Stdout; its hash must match the claim's `output_hash` (empty on failure).
        output: Vec<u8>,
        /// The first bytes of stderr (at most [`crate::job::MAX_STDERR_BYTES`]), for people:
        /// not signed, not compared.
        stderr: Vec<u8>,
    },
    /// From the submitter: the lease is withdrawn (job verified or abandoned). From the worker:
    /// it gives the lease back (it cannot fetch the job's blobs, or its pool is full).
    Cancel(JobId),
    /// A chunk of a blob: up to `len` bytes from `offset`.
    GetBlob {
        /// The blob.
        hash: Hash,
        /// Where to start.
        offset: u64,
        /// How many bytes at most (capped at [`limits::BLOB_CHUNK_BYTES`]).
        len: u32,
    },
    /// From a worker: it is still working on the lease (see [`Heartbeat`]). Answered `Ack`
    /// when the lease was extended, `Refused` when the submitter no longer holds it for this
    /// worker (the worker should stop).
    Heartbeat(Signed<Heartbeat>),
}

/// The answer to a [`Request`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The echoed bytes.
    Echo(Vec<u8>),
    /// Accepted.
    Ack,
    /// Refused, with the reason.
    Refused(String),
    /// No capacity right now (no free executor slot): ask someone else or later. Not a fault.
    Busy,
    /// A blob chunk: `data` starts at the requested offset; `total` is the blob's size.
    Blob {
        /// The blob's full size.
        total: u64,
        /// The chunk.
        data: Vec<u8>,
    },
    /// The blob is unknown here.
    NotFound,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_name(t.name()), Some(t));
        }
        assert_eq!(Topic::from_name("agora/nope/1"), None);
    }

    #[test]
    fn gossip_decode_is_bounded() {
        let big = GossipMessage::Text("x".repeat(limits::MAX_GOSSIP_BYTES));
        let bytes = codec::encode(&big).unwrap();
        assert!(GossipMessage::decode(&bytes).is_err());
        let small = GossipMessage::Text("hello".into());
        let bytes = codec::encode(&small).unwrap();
        assert_eq!(GossipMessage::decode(&bytes).unwrap(), small);
    }
}
