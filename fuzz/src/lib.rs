//! Shared helpers for the fuzz targets: fixed keys, a small fixed genesis, round-trip checks and
//! the checks every node runs on a decoded signed envelope.
//!
//! Every target decodes with the limit the node uses, then does what the node does next with the
//! value, asserting invariants (a panic or a failed assertion is a crash).

use std::sync::OnceLock;

use agora_ledger::{Genesis, GenesisAccount, Ledger, Mempool, Params};
use agora_types::codec;
use agora_types::job::{Outcome, WorkResult};
use agora_types::ledger::{AccountId, Evidence, OffenceReport, SignedTx, TxKind};
use agora_types::sign::{Domain, Signed};
use agora_types::{Keypair, PeerId};
use serde::{Serialize, de::DeserializeOwned};

/// The receiver's clock in every target: fixed, so that runs are reproducible.
pub const NOW_MS: u64 = 1_700_000_000_000;
/// The synchrony bound the node uses by default (its exact value does not matter here).
pub const BOUND_MS: u64 = 30_000;
/// How many fixed keys there are: the first four are genesis accounts, the last is unknown.
pub const KEYS: usize = 5;
/// The fixed genesis's chain id.
pub const CHAIN_ID: &str = "fuzz-chain";

/// The fixed keys (deterministic).
pub fn keys() -> &'static [Keypair] {
    static KEYS_CELL: OnceLock<Vec<Keypair>> = OnceLock::new();
    KEYS_CELL.get_or_init(|| {
        (0..KEYS)
            .map(|i| {
                let mut seed = [i as u8 + 1; 32];
                Keypair::ed25519_from_bytes(&mut seed).expect("a 32-byte seed is a valid key")
            })
            .collect()
    })
}

/// The fixed key picked by the first byte of a (fuzzed) signer field.
pub fn key_for(signer: &[u8; 32]) -> &'static Keypair {
    &keys()[usize::from(signer[0]) % KEYS]
}

/// The peer id string of fixed key `i`.
pub fn peer_string(i: usize) -> String {
    keys()[i].public().to_peer_id().to_string()
}

/// A small genesis: four accounts with balance and validator stake, key 0 may mint.
pub fn genesis() -> Genesis {
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
        mint_authority: Some(peer_string(0)),
        max_supply: 100_000_000,
        accounts: (0..4)
            .map(|i| GenesisAccount {
                peer_id: peer_string(i),
                balance: 1_000_000,
                stake: 20_000 + 1_000 * i as u64,
                consensus_addr: None,
            })
            .collect(),
    }
}

/// The ledger at height 0 of [`genesis`] (built once, cloned per input).
pub fn ledger() -> Ledger {
    static LEDGER: OnceLock<Ledger> = OnceLock::new();
    LEDGER
        .get_or_init(|| Ledger::from_genesis(&genesis()).expect("the fixed genesis is valid"))
        .clone()
}

/// `value` was decoded from `input` with `limit`: its canonical encoding must decode (with the
/// same limit) to an equal value, must be stable, and cannot be longer than the input (postcard
/// accepts overlong varints, never shorter-than-canonical encodings).
pub fn round_trip<T>(value: &T, input: &[u8], limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = codec::encode(value).expect("a decoded value re-encodes");
    assert!(
        bytes.len() <= input.len(),
        "canonical encoding ({} bytes) longer than the input ({} bytes)",
        bytes.len(),
        input.len()
    );
    let again: T = codec::decode(&bytes, limit).expect("a canonical encoding decodes");
    assert_eq!(&again, value, "decode(encode(v)) != v");
    let bytes2 = codec::encode(&again).expect("re-encodes");
    assert_eq!(bytes, bytes2, "encoding is not stable");
}

/// A peer id from the wire: string and account conversions must agree.
pub fn check_peer(peer: &PeerId) {
    let s = peer.to_string();
    let parsed: PeerId = s.parse().expect("a peer id's string parses back");
    assert_eq!(&parsed, peer);
    if let Some(account) = AccountId::from_peer_id(peer) {
        assert_eq!(
            account.peer_id().as_ref(),
            Ok(peer),
            "AccountId::from_peer_id then peer_id is not the identity"
        );
        let _ = account.to_string();
    }
}

/// What every node does with a signed envelope from the wire: verify (plain and fresh), the
/// signer's peer id, the digest. A verified signature implies a valid signer key. Re-signing the
/// payload with a fixed key must verify, and moving its timestamp must break it.
pub fn check_signed<T>(s: &Signed<T>)
where
    T: Serialize + DeserializeOwned + Domain + Clone + PartialEq + std::fmt::Debug,
{
    let verified = s.verify();
    let _ = s.verify_fresh(NOW_MS, BOUND_MS);
    let peer = s.signer_peer();
    if verified.is_ok() {
        let peer = peer.expect("a verified signer has a peer id");
        check_peer(&peer);
        assert_eq!(AccountId::from_peer_id(&peer), Some(AccountId(s.signer)));
    }
    let _ = s.digest();
    let resigned = Signed::sign(key_for(&s.signer), s.payload.clone(), s.timestamp_ms)
        .expect("signing with an Ed25519 key works");
    resigned.verify().expect("a fresh signature verifies");
    let mut moved = resigned;
    moved.timestamp_ms = moved.timestamp_ms.wrapping_add(1);
    assert!(moved.verify().is_err(), "a moved timestamp still verifies");
}

/// A result claim from the wire: verdict and output check must not panic, and a completed
/// outcome's verdict must not depend on fuel.
pub fn check_result(r: &WorkResult, output: &[u8]) {
    let v = r.outcome.verdict();
    if let Outcome::Completed {
        exit_code,
        output_hash,
        fuel_used,
        compared,
    } = &r.outcome
    {
        let other = Outcome::Completed {
            exit_code: *exit_code,
            output_hash: *output_hash,
            fuel_used: fuel_used.wrapping_add(1),
            compared: *compared,
        };
        assert_eq!(other.verdict(), v, "the verdict depends on fuel");
    }
    let _ = r.output_matches(output);
}

fn resign<T>(s: &Signed<T>) -> Signed<T>
where
    T: Serialize + DeserializeOwned + Domain + Clone,
{
    Signed::sign(key_for(&s.signer), s.payload.clone(), s.timestamp_ms)
        .expect("signing with an Ed25519 key works")
}

/// `tx` re-signed (with nested results and reports) by the fixed keys its signer fields pick, on
/// the fixed chain, so that the ledger's rules past the signature checks are reached.
pub fn resign_tx(tx: &SignedTx) -> SignedTx {
    let mut payload = tx.payload.clone();
    payload.chain_id = CHAIN_ID.into();
    payload.kind = match payload.kind {
        TxKind::Settle {
            job_id,
            quorum,
            minority,
        } => TxKind::Settle {
            job_id,
            quorum: quorum.iter().map(resign::<WorkResult>).collect(),
            minority: minority.iter().map(resign::<WorkResult>).collect(),
        },
        TxKind::Slash { evidence } => TxKind::Slash {
            evidence: Box::new(match *evidence {
                Evidence::DoubleSigning { a, b } => Evidence::DoubleSigning {
                    a: Box::new(resign(&a)),
                    b: Box::new(resign(&b)),
                },
                Evidence::Attested { reports } => Evidence::Attested {
                    reports: reports.iter().map(resign::<OffenceReport>).collect(),
                },
            }),
        },
        other => other,
    };
    Signed::sign(key_for(&tx.signer), payload, tx.timestamp_ms)
        .expect("signing with an Ed25519 key works")
}

/// The books must balance and every account must be sane after any transaction.
pub fn check_ledger(ledger: &Ledger) {
    assert!(
        ledger.supply_conserved(),
        "supply not conserved: circulating {} expected {}",
        ledger.circulating(),
        ledger.expected_supply()
    );
    assert!(ledger.expected_supply() <= 100_000_000, "supply above max_supply");
    assert!(!ledger.validators().is_empty(), "no validators left");
    let _ = ledger.state_root();
}

/// What a node does with a transaction from gossip: precheck it, insert it into a mempool, take
/// a proposal from the mempool, apply it, prune. Returns the ledger afterwards.
pub fn mempool_and_apply(tx: &SignedTx, mut ledger: Ledger, height: u64) -> Ledger {
    let pre = ledger.precheck(tx);
    let mut pool = Mempool::new(16, 4);
    let inserted = pool.insert(tx.clone(), &ledger);
    assert_eq!(
        pre.is_ok(),
        inserted.is_ok(),
        "precheck and an empty mempool disagree: {pre:?} vs {inserted:?}"
    );
    if inserted.is_ok() {
        assert_eq!(pool.len(), 1);
        assert!(
            pool.insert(tx.clone(), &ledger).is_err(),
            "a duplicate was inserted twice"
        );
    }
    if tx.verify().is_ok() {
        // The node's path: the signature verified outside the lock, then `insert_verified`.
        let mut other = Mempool::new(16, 4);
        assert_eq!(
            inserted.is_ok(),
            other.insert_verified(tx.clone(), &ledger).is_ok(),
            "insert and insert_verified disagree on a verified transaction"
        );
    }
    let taken = pool.take(&ledger, 8);
    assert!(taken.len() <= pool.len());
    let before = ledger.state_root();
    let applied = ledger.apply_tx(tx, height);
    if pre.is_err() {
        assert!(applied.is_err(), "precheck refused but apply_tx accepted");
        assert_eq!(before, ledger.state_root(), "a prechecked-out tx changed the state");
    }
    check_ledger(&ledger);
    pool.prune(&ledger);
    ledger
}
