//! Writes seed corpora for the fuzz targets: one valid (signed, with the fixed keys and on the
//! fixed chain of `agora-fuzz`) message of every kind, so that libFuzzer starts past the
//! signature checks instead of having to guess an Ed25519 signature.
//!
//! Usage: `cargo run --manifest-path fuzz/seeds/Cargo.toml [OUT_DIR]` (default `fuzz/seeds/corpus`).

use std::path::{Path, PathBuf};

use agora_ledger::{Genesis, GenesisAccount, Params};
use agora_types::codec;
use agora_types::job::{
    Bid, CapabilityAd, Health, JobLimits, JobSpec, Lease, Outcome, ReputationReport,
    ReputationUpdate, ResultNotice, SignedJob, WorkResult, job_id,
};
use agora_types::ledger::{
    AccountId, Block, Evidence, Offence, OffenceReport, SignedTx, Tx, TxKind,
};
use agora_types::sign::{Domain, Signed};
use agora_types::wire::{GossipMessage, Request, Response};
use agora_types::{Hash, Keypair};
use serde::{Serialize, de::DeserializeOwned};

const CHAIN_ID: &str = "fuzz-chain";
const T: u64 = 1_700_000_000_000;

fn key(i: usize) -> Keypair {
    let mut seed = [i as u8 + 1; 32];
    Keypair::ed25519_from_bytes(&mut seed).expect("valid seed")
}

fn acct(i: usize) -> AccountId {
    AccountId::from_peer_id(&key(i).public().to_peer_id()).expect("ed25519")
}

fn sign<P: Serialize + DeserializeOwned + Domain>(i: usize, p: P) -> Signed<P> {
    Signed::sign(&key(i), p, T).expect("sign")
}

fn tx(i: usize, nonce: u64, kind: TxKind) -> SignedTx {
    sign(
        i,
        Tx {
            chain_id: CHAIN_ID.into(),
            nonce,
            kind,
        },
    )
}

fn spec(nonce: u64) -> JobSpec {
    JobSpec {
        module: Hash::of(b"module"),
        module_size: 1024,
        input: Hash::of(b""),
        input_size: 0,
        args: vec!["--n".into(), "10".into()],
        limits: JobLimits::default(),
        capabilities: vec!["wasm".into()],
        redundancy: 3,
        max_price: 10,
        deadline_ms: T + 60_000,
        nonce,
        credit: false,
        runtime: Default::default(),
    }
}

fn result(i: usize, job: Hash, output: &[u8], price: u64) -> Signed<WorkResult> {
    sign(
        i,
        WorkResult {
            job_id: job,
            outcome: Outcome::Completed {
                exit_code: 0,
                output_hash: Hash::of(output),
                fuel_used: 1234,
                compared: None,
            },
            price,
        },
    )
}

fn genesis() -> Genesis {
    Genesis {
        chain_id: CHAIN_ID.into(),
        genesis_time_ms: 0,
        params: Params {
            min_bid_stake: 100,
            min_validator_stake: 10_000,
            max_validators: 3,
            unbonding_blocks: 1,
            refund_after_blocks: 1,
            max_block_txs: 64,
        },
        mint_authority: Some(key(0).public().to_peer_id().to_string()),
        max_supply: 100_000_000,
        accounts: (0..4)
            .map(|i| GenesisAccount {
                peer_id: key(i).public().to_peer_id().to_string(),
                balance: 1_000_000,
                stake: 20_000 + 1_000 * i as u64,
                consensus_addr: (i == 0).then(|| "127.0.0.1:26656".to_string()),
            })
            .collect(),
    }
}

fn write<V: Serialize>(dir: &Path, target: &str, name: &str, v: &V) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join(name), codec::encode(v).expect("encode")).expect("write");
}

fn main() {
    let out: PathBuf = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/seeds/corpus".into())
        .into();
    let job: SignedJob = sign(0, spec(1));
    let id = job_id(&job);
    let out_bytes = b"55\n".to_vec();

    // Ledger transactions: every kind, valid on the fixed genesis.
    let report = OffenceReport {
        offender: acct(0),
        offence: Offence::Downtime,
        height: 1,
    };
    let txs: Vec<(&str, SignedTx)> = vec![
        ("transfer", tx(0, 0, TxKind::Transfer { to: acct(1), amount: 500 })),
        ("stake", tx(0, 0, TxKind::Stake { amount: 1_000 })),
        ("unstake", tx(0, 0, TxKind::Unstake { amount: 1_000 })),
        (
            "escrow_lock",
            tx(0, 0, TxKind::EscrowLock { job_id: id, amount: 30, max_price: 10, redundancy: 3 }),
        ),
        (
            "settle",
            tx(
                0,
                1,
                TxKind::Settle {
                    job_id: id,
                    quorum: vec![result(1, id, &out_bytes, 10), result(2, id, &out_bytes, 9)],
                    minority: vec![result(3, id, b"bad", 10)],
                },
            ),
        ),
        ("refund", tx(0, 1, TxKind::Refund { job_id: id })),
        (
            "slash_double",
            tx(
                0,
                0,
                TxKind::Slash {
                    evidence: Box::new(Evidence::DoubleSigning {
                        a: Box::new(result(1, id, b"a", 10)),
                        b: Box::new(result(1, id, b"b", 10)),
                    }),
                },
            ),
        ),
        (
            "slash_attested",
            tx(
                1,
                0,
                TxKind::Slash {
                    evidence: Box::new(Evidence::Attested {
                        reports: (1..4).map(|i| sign(i, report.clone())).collect(),
                    }),
                },
            ),
        ),
        ("mint", tx(0, 0, TxKind::Mint { to: acct(4), amount: 1_000 })),
        ("burn", tx(2, 0, TxKind::Burn { amount: 7 })),
    ];
    for (name, t) in &txs {
        write(&out, "ledger_tx", name, t);
    }

    // Blocks: sequences that reach settlement, refunds and unbonding.
    let blocks = [
        (
            "lock_settle",
            vec![txs[3].1.clone(), txs[4].1.clone(), txs[9].1.clone()],
        ),
        ("lock_refund", vec![txs[3].1.clone(), txs[5].1.clone()]),
        (
            "stake_unstake",
            vec![
                tx(1, 0, TxKind::Stake { amount: 100 }),
                tx(1, 1, TxKind::Unstake { amount: 50 }),
                tx(1, 2, TxKind::Transfer { to: acct(2), amount: 1 }),
            ],
        ),
        ("slashes", vec![txs[6].1.clone(), txs[7].1.clone(), txs[8].1.clone()]),
    ];
    for (name, t) in blocks {
        write(&out, "ledger_block", name, &Block { height: 1, time_ms: T, txs: t });
    }

    // Gossip.
    let ad = CapabilityAd {
        engine: "wasmtime-48".into(),
        capabilities: vec!["wasm".into()],
        cores: 4,
        memory_bytes: 1 << 30,
        free_slots: 2,
        total_slots: 4,
        price: 5,
        version: "0.1.0".into(),
        seq: 7,
    };
    let gossip = [
        ("job", GossipMessage::Job { job: job.clone(), attempt: 1 }),
        ("capability", GossipMessage::Capability(sign(1, ad))),
        (
            "result",
            GossipMessage::Result(sign(
                0,
                ResultNotice {
                    job_id: id,
                    verdict: Hash::of(b"v"),
                    workers: (1..4).map(|i| key(i).public().to_peer_id()).collect(),
                },
            )),
        ),
        (
            "reputation",
            GossipMessage::Reputation(sign(
                0,
                ReputationReport {
                    updates: vec![ReputationUpdate {
                        subject: key(3).public().to_peer_id(),
                        action: "outvoted".into(),
                        delta: -5,
                        job_id: Some(id),
                    }],
                },
            )),
        ),
        (
            "health",
            GossipMessage::Health(sign(2, Health { uptime_s: 60, connected_peers: 3, running_jobs: 1 })),
        ),
        ("text", GossipMessage::Text("hello".into())),
        ("tx", GossipMessage::Tx(txs[0].1.clone())),
    ];
    for (name, m) in &gossip {
        write(&out, "gossip_message", name, m);
    }

    // Job specs.
    write(&out, "job_spec", "valid", &job);
    let mut bad = spec(2);
    bad.redundancy = 0;
    write(&out, "job_spec", "invalid", &sign(1, bad));

    // Requests and responses.
    let bid = Bid { job_id: id, price: 9, free_slots: 1, total_slots: 2 };
    let requests = [
        ("echo", Request::Echo(b"ping".to_vec())),
        ("bid", Request::Bid(sign(1, bid))),
        ("lease", Request::Lease(Lease { job: job.clone(), price: 9, expires_ms: T + 30_000 })),
        (
            "result_ok",
            Request::Result { result: result(1, id, &out_bytes, 9), output: out_bytes.clone() },
        ),
        (
            "result_failed",
            Request::Result {
                result: sign(
                    2,
                    WorkResult {
                        job_id: id,
                        outcome: Outcome::Failed { kind: "fuel".into(), detail: "out of fuel".into() },
                        price: 9,
                    },
                ),
                output: vec![],
            },
        ),
        ("cancel", Request::Cancel(id)),
        ("get_blob", Request::GetBlob { hash: Hash::of(b"module"), offset: 0, len: 1 << 20 }),
    ];
    for (name, r) in &requests {
        write(&out, "rr_request", name, r);
    }
    let responses = [
        ("echo", Response::Echo(b"ping".to_vec())),
        ("ack", Response::Ack),
        ("refused", Response::Refused("no".into())),
        ("busy", Response::Busy),
        ("blob", Response::Blob { total: 6, data: b"module".to_vec() }),
        ("not_found", Response::NotFound),
    ];
    for (name, r) in &responses {
        write(&out, "rr_response", name, r);
    }

    // Genesis files.
    let d = out.join("genesis_json");
    std::fs::create_dir_all(&d).expect("mkdir");
    std::fs::write(d.join("fixed.json"), genesis().to_json()).expect("write");
    let mut g = genesis();
    g.mint_authority = None;
    g.max_supply = 0;
    g.accounts.truncate(1);
    std::fs::write(d.join("minimal.json"), g.to_json()).expect("write");
    println!("seeds written to {}", out.display());
}
