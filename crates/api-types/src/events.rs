//! `GET /v1/events`: the dashboard's live feed, server-sent events whose `snapshot` events each
//! carry one JSON [`Snapshot`].
//!
//! A snapshot is made of the API's own types ([`NodeStatus`], [`PeerInfo`], [`JobSummary`],
//! [`LedgerStatus`], [`AccountView`], [`HistoryEntry`]), plus the few figures the page shows
//! beside them (a peer's reputation and route, a job's leases, a block's counts, the host's
//! load), so the feed follows the same contract as every other endpoint.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AccountView, HistoryEntry, JobSummary, LedgerStatus, NodeStatus, PeerInfo};

/// What one `snapshot` event holds. Sections the node lacks (no ledger) are `null`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct Snapshot {
    /// When it was taken (Unix ms).
    pub at_ms: u64,
    /// The node, as `GET /v1/status` shows it; null while the node is stopping.
    pub status: Option<NodeStatus>,
    /// Connected peers.
    pub peers: Vec<SnapshotPeer>,
    /// The newest jobs submitted through this node (at most 200), newest first.
    pub jobs: Vec<SnapshotJob>,
    /// How many jobs the node holds in all (`jobs` may show fewer).
    pub jobs_total: u64,
    /// The ledger, as `GET /v1/ledger/status` shows it; null without a ledger.
    pub ledger: Option<LedgerStatus>,
    /// This node's account, as `GET /v1/wallet` shows it; null without a ledger.
    pub wallet: Option<AccountView>,
    /// Recent events that concern this node's account, newest first.
    pub history: Vec<HistoryEntry>,
    /// The last blocks, newest first.
    pub blocks: Vec<SnapshotBlock>,
    /// The host's capacity and load.
    pub host: HostHealth,
    /// Training rounds, once the node runs training (null until then).
    pub training: Option<Vec<TrainingRound>>,
}

/// A connected peer, with what the market thinks of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct SnapshotPeer {
    /// The peer, as `GET /v1/peers` shows it (its fields sit at this object's top level).
    #[serde(flatten)]
    pub info: PeerInfo,
    /// The market's reputation score for it, if it has one.
    pub reputation: Option<i64>,
    /// Whether every connection to it runs through a relay (`/p2p-circuit`).
    pub relayed: bool,
}

/// A job, with the lease and verdict figures the dashboard's table shows.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SnapshotJob {
    /// The job, as `GET /v1/jobs` shows it (its fields sit at this object's top level).
    #[serde(flatten)]
    pub summary: JobSummary,
    /// Leases not ended yet.
    pub leases_active: u64,
    /// Leases offered in all.
    pub leases: u64,
    /// The quorum's verdict in words (`completed, exit code 0`, `failed: trap`), once decided.
    pub verdict: Option<String>,
    /// The most it pays per execution, in tokens.
    pub max_price: u64,
}

/// One block, counted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, ToSchema)]
pub struct SnapshotBlock {
    /// Its height.
    pub height: u64,
    /// Transactions in it.
    pub txs: u64,
    /// Those the ledger refused.
    pub failed_txs: u64,
    /// Events it caused.
    pub events: u64,
    /// The state root after it (hex).
    pub state_root: String,
}

/// The host's capacity and load. Figures read from `/proc` are null where the host has none.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, ToSchema)]
pub struct HostHealth {
    /// CPUs this process may use.
    pub cpus: u64,
    /// Jobs the node runs at once.
    pub executor_slots: u64,
    /// The 1, 5 and 15 minute load averages.
    pub load_avg: Option<[f64; 3]>,
    /// Memory in all, in bytes.
    pub mem_total_bytes: Option<u64>,
    /// Memory available, in bytes.
    pub mem_available_bytes: Option<u64>,
}

/// One training round.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct TrainingRound {
    /// The round's number.
    pub round: u64,
    /// Accuracy after it, when measured.
    pub accuracy: Option<f64>,
    /// Loss after it, when measured.
    pub loss: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JobState, LedgerEvent, SupplyView};

    fn sample() -> Snapshot {
        Snapshot {
            at_ms: 1_000,
            status: Some(NodeStatus {
                peer_id: "12D3me".into(),
                listen_addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
                connected_peers: 1,
                routing_table_size: 2,
                uptime_secs: 3,
                version: "0.1.0".into(),
                price: 4,
            }),
            peers: vec![SnapshotPeer {
                info: PeerInfo {
                    peer_id: "12D3peer".into(),
                    addresses: vec!["/ip4/10.0.0.1/tcp/2".into()],
                    rtt_ms: Some(1.5),
                    connected_since: 5,
                    agent: Some("agora/0.1.0".into()),
                },
                reputation: Some(7),
                relayed: false,
            }],
            jobs: vec![SnapshotJob {
                summary: JobSummary {
                    id: "ab".repeat(32),
                    state: JobState::AwaitingEscrow,
                    reason: None,
                    redundancy: 3,
                    bids: 2,
                    results: 1,
                    workers: vec![],
                    output_hash: None,
                    exit_code: None,
                    created_ms: 6,
                    finished_ms: None,
                    latency_ms: None,
                },
                leases_active: 1,
                leases: 2,
                verdict: None,
                max_price: 100,
            }],
            jobs_total: 1,
            ledger: Some(LedgerStatus {
                chain_id: "agora-local".into(),
                height: 9,
                state_root: "cd".repeat(32),
                last_block_ms: 8,
                validators: vec![],
                mempool: 0,
                supply: SupplyView {
                    circulating: 10,
                    expected: 10,
                    conserved: true,
                    paid: 0,
                    slashed: 0,
                    minted: 0,
                    burned: 0,
                },
                consensus_peers: 4,
                open_escrows: 0,
                settled_jobs: 0,
            }),
            wallet: None,
            history: vec![HistoryEntry {
                height: 9,
                event: LedgerEvent::Minted {
                    to: "12D3me".into(),
                    amount: 10,
                },
            }],
            blocks: vec![SnapshotBlock {
                height: 9,
                txs: 2,
                failed_txs: 1,
                events: 3,
                state_root: "cd".repeat(32),
            }],
            host: HostHealth {
                cpus: 2,
                executor_slots: 1,
                load_avg: Some([0.5, 1.0, 1.5]),
                mem_total_bytes: Some(2048),
                mem_available_bytes: None,
            },
            training: None,
        }
    }

    /// The names the dashboard's script (`crates/api/dashboard/app.js`) reads: a peer's and a
    /// job's own fields sit beside the extra figures, not under a nested object.
    #[test]
    fn the_json_has_the_fields_the_page_reads() {
        let v = serde_json::to_value(sample()).unwrap();
        for key in [
            "at_ms",
            "status",
            "peers",
            "jobs",
            "jobs_total",
            "ledger",
            "wallet",
            "history",
            "blocks",
            "host",
            "training",
        ] {
            assert!(v.get(key).is_some(), "snapshot lacks {key}: {v}");
        }
        let peer = &v["peers"][0];
        assert_eq!(peer["peer_id"], "12D3peer");
        assert_eq!(peer["addresses"][0], "/ip4/10.0.0.1/tcp/2");
        assert_eq!(peer["rtt_ms"], 1.5);
        assert_eq!(peer["agent"], "agora/0.1.0");
        assert_eq!(peer["reputation"], 7);
        assert_eq!(peer["relayed"], false);
        assert!(peer.get("info").is_none(), "{peer}");
        let job = &v["jobs"][0];
        assert_eq!(job["id"], "ab".repeat(32));
        assert_eq!(job["state"], "awaiting_escrow");
        for (key, want) in [
            ("bids", 2),
            ("leases_active", 1),
            ("leases", 2),
            ("results", 1),
            ("redundancy", 3),
            ("created_ms", 6),
            ("max_price", 100),
        ] {
            assert_eq!(job[key], want, "job.{key} in {job}");
        }
        assert!(job["reason"].is_null() && job["verdict"].is_null(), "{job}");
        assert!(job.get("summary").is_none(), "{job}");
        let block = &v["blocks"][0];
        assert_eq!(
            (&block["txs"], &block["failed_txs"], &block["events"]),
            (&2.into(), &1.into(), &3.into())
        );
        assert_eq!(v["history"][0]["event"]["event"], "minted");
        assert_eq!(v["history"][0]["event"]["amount"], 10);
        assert_eq!(v["host"]["load_avg"][2], 1.5);
        assert_eq!(v["host"]["executor_slots"], 1);
        assert_eq!(v["ledger"]["supply"]["conserved"], true);
    }

    #[test]
    fn a_snapshot_reads_back_as_it_was_sent() {
        let s = sample();
        let json = serde_json::to_string(&s).unwrap();
        let back: Snapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
