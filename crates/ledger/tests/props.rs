//! The ledger's invariants under random transaction sequences, and its refusals.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use agora_ledger::{
    Block, Event, Evidence, Genesis, GenesisAccount, Ledger, Mempool, Offence, OffenceReport,
    Params, SignedTx, Tx, TxError, TxKind,
};
use agora_types::job::{Outcome, WorkResult};
use agora_types::ledger::AccountId;
use agora_types::sign::Signed;
use agora_types::{Hash, Keypair};
use proptest::prelude::*;

const N: usize = 6;

fn key(i: usize) -> Keypair {
    Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap()
}

fn acct(i: usize) -> AccountId {
    AccountId::from_peer_id(&key(i).public().to_peer_id()).unwrap()
}

/// Accounts 0..4 are validators; 4 and 5 are workers with a small stake. Account 0 may mint.
fn genesis() -> Genesis {
    Genesis {
        chain_id: "test".into(),
        genesis_time_ms: 0,
        params: Params {
            min_bid_stake: 10,
            min_validator_stake: 1_000,
            max_validators: 4,
            unbonding_blocks: 3,
            refund_after_blocks: 5,
            max_block_txs: 100,
            credit_settle_ms: 1_000,
            max_credit_lines: 4,
        },
        mint_authority: Some(key(0).public().to_peer_id().to_string()),
        max_supply: 10_000_000,
        accounts: (0..N)
            .map(|i| GenesisAccount {
                peer_id: key(i).public().to_peer_id().to_string(),
                balance: 100_000,
                stake: if i < 4 { 1_000 } else { 100 },
                consensus_addr: None,
            })
            .collect(),
    }
}

struct Signer {
    nonces: [u64; N],
}

impl Signer {
    fn tx(&mut self, i: usize, kind: TxKind) -> SignedTx {
        let nonce = self.nonces[i];
        self.nonces[i] += 1;
        sign_tx(i, nonce, kind)
    }
}

fn sign_tx(i: usize, nonce: u64, kind: TxKind) -> SignedTx {
    let tx = Tx {
        chain_id: "test".into(),
        nonce,
        kind,
    };
    Signed::sign(&key(i), tx, 1).unwrap()
}

fn result(worker: usize, job: Hash, out: &str, price: u64) -> Signed<WorkResult> {
    let r = WorkResult {
        job_id: job,
        outcome: Outcome::Completed {
            exit_code: 0,
            output_hash: Hash::of(out.as_bytes()),
            fuel_used: 1,
            compared: None,
        },
        price,
    };
    Signed::sign(&key(worker), r, 1).unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Transfer(usize, usize, u64),
    Stake(usize, u64),
    Unstake(usize, u64),
    Lock(usize, u8, u64, u64),
    Settle(u8, bool),
    Refund(u8),
    Mint(usize, usize, u64),
    Burn(usize, u64),
    CreditOpen(usize, usize, u64),
    CreditClose(usize, usize),
    SettleCredit(usize, u8, bool),
    BadSignature(usize),
    Replay,
    EndBlock,
}

fn op() -> impl Strategy<Value = Op> {
    let who = 0..N;
    prop_oneof![
        (who.clone(), 0..N, 0u64..200_000).prop_map(|(a, b, x)| Op::Transfer(a, b, x)),
        (who.clone(), 0u64..150_000).prop_map(|(a, x)| Op::Stake(a, x)),
        (who.clone(), 0u64..3_000).prop_map(|(a, x)| Op::Unstake(a, x)),
        (who.clone(), 0u8..8, 1u64..500, 0u64..5_000).prop_map(|(a, j, p, x)| Op::Lock(a, j, p, x)),
        (0u8..8, any::<bool>()).prop_map(|(j, m)| Op::Settle(j, m)),
        (0u8..8).prop_map(Op::Refund),
        (0..2usize, 0..N, 0u64..3_000_000).prop_map(|(a, b, x)| Op::Mint(a, b, x)),
        (who.clone(), 0u64..1_000).prop_map(|(a, x)| Op::Burn(a, x)),
        (who.clone(), 0..N, 0u64..2_000).prop_map(|(a, w, x)| Op::CreditOpen(a, w, x)),
        (who.clone(), 0..N).prop_map(|(a, w)| Op::CreditClose(a, w)),
        (who.clone(), 0u8..8, any::<bool>()).prop_map(|(a, j, m)| Op::SettleCredit(a, j, m)),
        who.prop_map(Op::BadSignature),
        Just(Op::Replay),
        Just(Op::EndBlock),
    ]
}

fn job(j: u8) -> Hash {
    Hash::of(&[j])
}

/// Job `j` of submitter `a`, paid from its credit lines, redundancy 3, max price 300.
fn credit_job(a: usize, j: u8) -> agora_types::job::SignedJob {
    let spec = agora_types::job::JobSpec {
        module: Hash::of(b"m"),
        module_size: 1,
        input: Hash::of(&[j]),
        input_size: 1,
        args: vec![],
        limits: Default::default(),
        capabilities: vec!["wasm".into()],
        redundancy: 3,
        max_price: 300,
        deadline_ms: 0,
        nonce: u64::from(j),
        credit: true,
        runtime: Default::default(),
    };
    Signed::sign(&key(a), spec, 1).unwrap()
}

/// Runs `ops` as blocks; returns the ledger and every block applied.
fn run(ops: &[Op]) -> (Ledger, Vec<Block>) {
    let mut ledger = Ledger::from_genesis(&genesis()).unwrap();
    let mut signer = Signer { nonces: [0; N] };
    let mut blocks = Vec::new();
    let mut txs: Vec<SignedTx> = Vec::new();
    let mut last: Option<SignedTx> = None;
    let seal = |ledger: &mut Ledger, txs: &mut Vec<SignedTx>, blocks: &mut Vec<Block>| {
        // Block time moves 300 ms a block, so credit lines close and late results lapse.
        let block = Block {
            height: ledger.height() + 1,
            time_ms: (ledger.height() + 1) * 300,
            txs: std::mem::take(txs),
        };
        ledger.apply_block(&block).unwrap();
        blocks.push(block);
        assert!(
            ledger.supply_conserved(),
            "supply after block {}",
            ledger.height()
        );
    };
    for op in ops {
        let tx = match op {
            Op::Transfer(a, b, x) => Some(signer.tx(
                *a,
                TxKind::Transfer {
                    to: acct(*b),
                    amount: *x,
                },
            )),
            Op::Stake(a, x) => Some(signer.tx(*a, TxKind::Stake { amount: *x })),
            Op::Unstake(a, x) => Some(signer.tx(*a, TxKind::Unstake { amount: *x })),
            Op::Lock(a, j, p, x) => Some(signer.tx(
                *a,
                TxKind::EscrowLock {
                    job_id: job(*j),
                    amount: *x,
                    max_price: *p,
                    redundancy: 3,
                },
            )),
            Op::Settle(j, with_minority) => {
                let id = job(*j);
                let price = ledger.escrow(&id).map_or(1, |e| e.max_price);
                let quorum = vec![result(4, id, "a", price), result(5, id, "a", price)];
                let minority = if *with_minority {
                    vec![result(3, id, "b", price)]
                } else {
                    vec![]
                };
                Some(signer.tx(
                    0,
                    TxKind::Settle {
                        job_id: id,
                        quorum,
                        minority,
                    },
                ))
            }
            Op::Refund(j) => {
                let owner = ledger
                    .escrow(&job(*j))
                    .and_then(|e| (0..N).find(|i| acct(*i) == e.owner))
                    .unwrap_or(0);
                Some(signer.tx(owner, TxKind::Refund { job_id: job(*j) }))
            }
            Op::Mint(a, b, x) => Some(signer.tx(
                *a,
                TxKind::Mint {
                    to: acct(*b),
                    amount: *x,
                },
            )),
            Op::Burn(a, x) => Some(signer.tx(*a, TxKind::Burn { amount: *x })),
            Op::CreditOpen(a, w, x) => Some(signer.tx(
                *a,
                TxKind::CreditOpen {
                    worker: acct(*w),
                    amount: *x,
                },
            )),
            Op::CreditClose(a, w) => Some(signer.tx(*a, TxKind::CreditClose { worker: acct(*w) })),
            Op::SettleCredit(a, j, with_minority) => {
                let job = credit_job(*a, *j);
                let id = agora_types::job::job_id(&job);
                let quorum = vec![result(4, id, "a", 200), result(5, id, "a", 250)];
                let minority = if *with_minority {
                    vec![result(3, id, "b", 10)]
                } else {
                    vec![]
                };
                Some(signer.tx(
                    1,
                    TxKind::SettleCredit {
                        job: Box::new(job),
                        quorum,
                        minority,
                    },
                ))
            }
            Op::BadSignature(a) => {
                let mut tx = sign_tx(*a, signer.nonces[*a], TxKind::Burn { amount: 1 });
                tx.payload.kind = TxKind::Burn { amount: 2 };
                Some(tx)
            }
            Op::Replay => last.clone(),
            Op::EndBlock => {
                seal(&mut ledger, &mut txs, &mut blocks);
                // Refused transactions did not use their nonce: take the ledger's.
                for (i, n) in signer.nonces.iter_mut().enumerate() {
                    *n = ledger.account(&acct(i)).unwrap().nonce;
                }
                None
            }
        };
        if let Some(tx) = tx {
            last = Some(tx.clone());
            txs.push(tx);
        }
        if txs.len() == 100 {
            seal(&mut ledger, &mut txs, &mut blocks);
            for (i, n) in signer.nonces.iter_mut().enumerate() {
                *n = ledger.account(&acct(i)).unwrap().nonce;
            }
        }
    }
    seal(&mut ledger, &mut txs, &mut blocks);
    (ledger, blocks)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Supply is conserved after every block (checked inside `run`), balances never go below what
    /// the rules allow (u64 plus refusals: an overdraft is refused, never wrapped), and replaying
    /// the same blocks from genesis gives the same state root.
    #[test]
    fn random_sequences_conserve_supply(ops in proptest::collection::vec(op(), 1..300)) {
        let (ledger, blocks) = run(&ops);
        prop_assert!(ledger.supply_conserved());
        let mut replay = Ledger::from_genesis(&genesis()).unwrap();
        for b in &blocks {
            replay.apply_block(b).unwrap();
        }
        prop_assert_eq!(replay.state_root(), ledger.state_root());
        // Skipping the signature of transactions verified before changes nothing.
        let mut hinted = Ledger::from_genesis(&genesis()).unwrap();
        for b in &blocks {
            hinted.apply_block_with(b, |tx| tx.verify().is_ok()).unwrap();
        }
        prop_assert_eq!(hinted.state_root(), ledger.state_root());
        let holdings: u128 = ledger.accounts().map(|(_, a)| u128::from(a.balance)).sum();
        prop_assert!(holdings <= ledger.expected_supply());
    }
}

fn fresh() -> Ledger {
    Ledger::from_genesis(&genesis()).unwrap()
}

fn block(ledger: &mut Ledger, txs: Vec<SignedTx>) -> agora_ledger::BlockReceipt {
    let b = Block {
        height: ledger.height() + 1,
        time_ms: 0,
        txs,
    };
    ledger.apply_block(&b).unwrap()
}

#[test]
fn replayed_and_forged_transactions_are_refused() {
    let mut l = fresh();
    let t = sign_tx(
        1,
        0,
        TxKind::Transfer {
            to: acct(2),
            amount: 10,
        },
    );
    l.apply_tx(&t, 1).unwrap();
    assert_eq!(
        l.apply_tx(&t, 1),
        Err(TxError::BadNonce {
            expected: 1,
            got: 0
        })
    );
    let mut forged = sign_tx(
        1,
        1,
        TxKind::Transfer {
            to: acct(2),
            amount: 10,
        },
    );
    forged.payload.kind = TxKind::Transfer {
        to: acct(3),
        amount: 10_000,
    };
    assert!(matches!(
        l.apply_tx(&forged, 1),
        Err(TxError::BadSignature(_))
    ));
    let mut other = sign_tx(1, 1, TxKind::Burn { amount: 1 });
    other.payload.chain_id = "elsewhere".into();
    assert!(matches!(
        l.apply_tx(&other, 1),
        Err(TxError::WrongChain { .. })
    ));
    // None of the refusals used the nonce.
    assert_eq!(l.account(&acct(1)).unwrap().nonce, 1);
    assert!(l.supply_conserved());
}

#[test]
fn overdrafts_are_refused_and_use_the_nonce() {
    let mut l = fresh();
    let t = sign_tx(
        1,
        0,
        TxKind::Transfer {
            to: acct(2),
            amount: 100_001,
        },
    );
    assert!(matches!(
        l.apply_tx(&t, 1),
        Err(TxError::Insufficient { .. })
    ));
    assert_eq!(l.account(&acct(1)).unwrap().balance, 100_000);
    assert_eq!(l.account(&acct(1)).unwrap().nonce, 1);
}

#[test]
fn settlement_pays_the_quorum_its_bids_and_slashes_the_minority() {
    let mut l = fresh();
    let id = job(1);
    // Owner 0 locks 1000 for a job of redundancy 3, max price 100.
    block(
        &mut l,
        vec![sign_tx(
            0,
            0,
            TxKind::EscrowLock {
                job_id: id,
                amount: 1_000,
                max_price: 100,
                redundancy: 3,
            },
        )],
    );
    assert_eq!(l.account(&acct(0)).unwrap().balance, 99_000);
    let before_3 = l.account(&acct(3)).unwrap().stake;
    let quorum = vec![result(4, id, "ok", 70), result(5, id, "ok", 90)];
    let minority = vec![result(3, id, "bad", 50)];
    // Anyone may settle: account 2 sends it.
    let r = block(
        &mut l,
        vec![sign_tx(
            2,
            0,
            TxKind::Settle {
                job_id: id,
                quorum,
                minority,
            },
        )],
    );
    assert_eq!(r.receipts[0].error, None);
    assert_eq!(l.account(&acct(4)).unwrap().balance, 100_070);
    assert_eq!(l.account(&acct(5)).unwrap().balance, 100_090);
    assert_eq!(l.account(&acct(0)).unwrap().balance, 99_000 + 1_000 - 160);
    assert_eq!(l.account(&acct(3)).unwrap().stake, before_3 / 2);
    assert!(r.events.iter().any(|(_, e)| matches!(
        e,
        Event::Slashed {
            offence: Offence::InvalidCompute,
            amount: 500,
            ..
        }
    )));
    assert!(l.escrow(&id).is_none() && l.is_closed(&id));
    assert!(l.supply_conserved());
    assert_eq!(l.totals().slashed, 500);
    // The job cannot be settled or locked again.
    let again = sign_tx(
        0,
        1,
        TxKind::EscrowLock {
            job_id: id,
            amount: 1_000,
            max_price: 100,
            redundancy: 3,
        },
    );
    let r = block(&mut l, vec![again]);
    assert!(r.receipts[0].error.as_ref().unwrap().contains("already"));
}

#[test]
fn settlement_refuses_no_quorum_and_overpriced_results() {
    let mut l = fresh();
    let id = job(2);
    block(
        &mut l,
        vec![sign_tx(
            0,
            0,
            TxKind::EscrowLock {
                job_id: id,
                amount: 1_000,
                max_price: 100,
                redundancy: 3,
            },
        )],
    );
    let one = TxKind::Settle {
        job_id: id,
        quorum: vec![result(4, id, "ok", 70)],
        minority: vec![],
    };
    let r = block(&mut l, vec![sign_tx(0, 1, one)]);
    assert!(r.receipts[0].error.as_ref().unwrap().contains("no quorum"));
    let pricey = TxKind::Settle {
        job_id: id,
        quorum: vec![result(4, id, "ok", 70), result(5, id, "ok", 101)],
        minority: vec![],
    };
    let r = block(&mut l, vec![sign_tx(0, 2, pricey)]);
    assert!(r.receipts[0].error.as_ref().unwrap().contains("above"));
    let same_worker = TxKind::Settle {
        job_id: id,
        quorum: vec![result(4, id, "ok", 70), result(4, id, "ok", 70)],
        minority: vec![],
    };
    let r = block(&mut l, vec![sign_tx(0, 3, same_worker)]);
    assert!(
        r.receipts[0]
            .error
            .as_ref()
            .unwrap()
            .contains("same worker")
    );
    assert!(l.escrow(&id).is_some());
    // Only the owner may take it back, and it may do so at once (a cancelled job).
    let r = block(&mut l, vec![sign_tx(1, 0, TxKind::Refund { job_id: id })]);
    assert!(r.receipts[0].error.as_ref().unwrap().contains("owner"));
    let r = block(&mut l, vec![sign_tx(0, 4, TxKind::Refund { job_id: id })]);
    assert_eq!(r.receipts[0].error, None);
    assert_eq!(l.account(&acct(0)).unwrap().balance, 100_000);
    let r = block(&mut l, vec![sign_tx(0, 5, TxKind::Refund { job_id: id })]);
    assert!(r.receipts[0].error.is_some(), "refunded once");
}

#[test]
fn settlement_never_slashes_or_pays_a_wall_time_result() {
    let mut l = fresh();
    let id = job(6);
    block(
        &mut l,
        vec![sign_tx(
            0,
            0,
            TxKind::EscrowLock {
                job_id: id,
                amount: 1_000,
                max_price: 100,
                redundancy: 3,
            },
        )],
    );
    let timed_out = |i: usize| {
        let kp = key(i);
        Signed::sign(
            &kp,
            WorkResult {
                job_id: id,
                outcome: Outcome::Failed {
                    kind: "wall_time".into(),
                    detail: "wall-clock limit exceeded".into(),
                },
                price: 50,
            },
            1,
        )
        .unwrap()
    };
    let stake_before = l.account(&acct(5)).map_or(0, |a| a.stake);
    assert!(stake_before > 0);
    let slash_the_slow = TxKind::Settle {
        job_id: id,
        quorum: vec![result(4, id, "ok", 50), result(3, id, "ok", 50)],
        minority: vec![timed_out(5)],
    };
    let r = block(&mut l, vec![sign_tx(0, 1, slash_the_slow)]);
    assert!(
        r.receipts[0]
            .error
            .as_ref()
            .unwrap()
            .contains("machine-dependent"),
        "{:?}",
        r.receipts[0].error
    );
    assert_eq!(l.account(&acct(5)).map_or(0, |a| a.stake), stake_before);
    let pay_the_slow = TxKind::Settle {
        job_id: id,
        quorum: vec![timed_out(5), timed_out(4)],
        minority: vec![],
    };
    let r = block(&mut l, vec![sign_tx(0, 2, pay_the_slow)]);
    assert!(r.receipts[0].error.is_some());
    // Without it the settlement goes through.
    let fair = TxKind::Settle {
        job_id: id,
        quorum: vec![result(4, id, "ok", 50), result(3, id, "ok", 50)],
        minority: vec![],
    };
    let r = block(&mut l, vec![sign_tx(0, 3, fair)]);
    assert_eq!(r.receipts[0].error, None);
}

#[test]
fn double_signing_and_attested_offences() {
    let mut l = fresh();
    let id = job(3);
    let ev = Evidence::DoubleSigning {
        a: Box::new(result(4, id, "x", 1)),
        b: Box::new(result(4, id, "y", 1)),
    };
    let r = block(
        &mut l,
        vec![sign_tx(
            0,
            0,
            TxKind::Slash {
                evidence: Box::new(ev.clone()),
            },
        )],
    );
    assert_eq!(r.receipts[0].error, None);
    assert_eq!(l.account(&acct(4)).unwrap().stake, 70);
    let r = block(
        &mut l,
        vec![sign_tx(
            0,
            1,
            TxKind::Slash {
                evidence: Box::new(ev),
            },
        )],
    );
    assert!(r.receipts[0].error.as_ref().unwrap().contains("already"));

    let report = OffenceReport {
        offender: acct(5),
        offence: Offence::CoordinatedAttack,
        height: 1,
    };
    let signed = |i: usize| Signed::sign(&key(i), report.clone(), 1).unwrap();
    // Two of four equal validators: not enough.
    let weak = Evidence::Attested {
        reports: vec![signed(0), signed(1)],
    };
    let r = block(
        &mut l,
        vec![sign_tx(
            0,
            2,
            TxKind::Slash {
                evidence: Box::new(weak),
            },
        )],
    );
    assert!(r.receipts[0].error.as_ref().unwrap().contains("two thirds"));
    let strong = Evidence::Attested {
        reports: vec![signed(0), signed(1), signed(2)],
    };
    let r = block(
        &mut l,
        vec![sign_tx(
            0,
            3,
            TxKind::Slash {
                evidence: Box::new(strong),
            },
        )],
    );
    assert_eq!(r.receipts[0].error, None);
    let banned = l.account(&acct(5)).unwrap();
    assert!(banned.banned && banned.stake == 0);
    assert!(!l.can_bid(&acct(5)));
    assert!(l.supply_conserved());
}

#[test]
fn unstaking_waits_and_stays_slashable() {
    let mut l = fresh();
    block(&mut l, vec![sign_tx(4, 0, TxKind::Unstake { amount: 100 })]);
    assert_eq!(l.account(&acct(4)).unwrap().stake, 0);
    assert_eq!(l.account(&acct(4)).unwrap().balance, 100_000);
    let ev = Evidence::DoubleSigning {
        a: Box::new(result(4, job(9), "x", 1)),
        b: Box::new(result(4, job(9), "y", 1)),
    };
    block(
        &mut l,
        vec![sign_tx(
            0,
            0,
            TxKind::Slash {
                evidence: Box::new(ev),
            },
        )],
    );
    block(&mut l, vec![]);
    let r = block(&mut l, vec![]);
    assert!(
        r.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Released { amount: 70, .. }))
    );
    assert_eq!(l.account(&acct(4)).unwrap().balance, 100_070);
    assert!(l.supply_conserved());
}

#[test]
fn validators_follow_stake() {
    let mut l = fresh();
    assert_eq!(l.validators().len(), 4);
    block(
        &mut l,
        vec![sign_tx(4, 0, TxKind::Stake { amount: 50_000 })],
    );
    let v = l.validators();
    assert_eq!(v.len(), 4);
    assert_eq!(v[0].account, acct(4));
    let total: u64 = v.iter().map(|v| v.power).sum();
    assert!(v.iter().all(|x| x.power * 3 < total), "{v:?}");
}

#[test]
fn mint_is_bounded_and_authorized() {
    let mut l = fresh();
    let r = block(
        &mut l,
        vec![
            sign_tx(
                1,
                0,
                TxKind::Mint {
                    to: acct(1),
                    amount: 5,
                },
            ),
            sign_tx(
                0,
                0,
                TxKind::Mint {
                    to: acct(1),
                    amount: 10_000_000,
                },
            ),
            sign_tx(
                0,
                1,
                TxKind::Mint {
                    to: acct(1),
                    amount: 5,
                },
            ),
        ],
    );
    assert!(
        r.receipts[0]
            .error
            .as_ref()
            .unwrap()
            .contains("mint authority")
    );
    assert!(
        r.receipts[1]
            .error
            .as_ref()
            .unwrap()
            .contains("maximum supply")
    );
    assert_eq!(r.receipts[2].error, None);
    assert_eq!(l.totals().minted, 5);
    assert!(l.supply_conserved());
}

#[test]
fn mempool_orders_bounds_and_prunes() {
    let mut l = fresh();
    let mut m = Mempool::new(4, 3);
    for n in [1u64, 0, 2] {
        m.insert(sign_tx(1, n, TxKind::Burn { amount: 1 }), &l)
            .unwrap();
    }
    assert!(
        m.insert(sign_tx(1, 3, TxKind::Burn { amount: 1 }), &l)
            .is_err()
    );
    assert!(
        m.insert(sign_tx(1, 0, TxKind::Burn { amount: 1 }), &l)
            .is_err()
    );
    m.insert(sign_tx(2, 1, TxKind::Burn { amount: 1 }), &l)
        .unwrap();
    assert!(
        m.insert(sign_tx(3, 0, TxKind::Burn { amount: 1 }), &l)
            .is_err()
    );
    // Sender 2's run starts at nonce 0, which is missing: nothing of it is taken.
    let taken = m.take(&l, 10);
    assert_eq!(
        taken.iter().map(|t| t.payload.nonce).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    block(&mut l, taken);
    m.prune(&l);
    assert_eq!(m.len(), 1);
}

#[test]
fn genesis_errors_name_the_field() {
    let mut g = genesis();
    g.accounts[1].peer_id = "nope".into();
    let e = Ledger::from_genesis(&g).unwrap_err().to_string();
    assert!(e.contains("accounts[1].peer_id"), "{e}");
    let mut g = genesis();
    for a in &mut g.accounts {
        a.stake = 0;
    }
    let e = Ledger::from_genesis(&g).unwrap_err().to_string();
    assert!(e.contains("validator stake"), "{e}");
    let text = genesis().to_json();
    assert_eq!(Genesis::from_json(&text).unwrap(), genesis());
    assert!(Genesis::from_json("{\"chain_id\":\"x\",\"accounts\":[],\"bogus\":1}").is_err());
}

#[test]
fn a_proposal_stays_within_its_byte_budget() {
    let l = fresh();
    let mut m = Mempool::new(100, 100);
    for n in 0..10 {
        m.insert(sign_tx(1, n, TxKind::Burn { amount: 1 }), &l)
            .unwrap();
    }
    let one = agora_types::codec::encode(&m.take(&l, 1)[0]).unwrap().len();
    let cut = m.take_within(&l, 100, one * 3 + 1);
    assert_eq!(
        cut.iter().map(|t| t.payload.nonce).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(m.take_within(&l, 100, usize::MAX).len(), 10);
}

#[test]
fn credit_lines_pay_each_worker_from_its_own_line_once_and_close_late() {
    let mut l = fresh();
    let mut signer = Signer { nonces: [0; N] };
    let open = |s: &mut Signer, w: usize, amount: u64| {
        s.tx(
            0,
            TxKind::CreditOpen {
                worker: acct(w),
                amount,
            },
        )
    };
    let r = block(
        &mut l,
        vec![open(&mut signer, 4, 1_000), open(&mut signer, 5, 100)],
    );
    assert!(r.receipts.iter().all(|x| x.error.is_none()), "{r:?}");
    assert_eq!(l.credit_line(&acct(0), &acct(4)).unwrap().amount, 1_000);
    assert_eq!(l.account(&acct(0)).unwrap().balance, 100_000 - 1_100);
    assert!(l.supply_conserved());
    // A self-line is refused.
    let r = block(&mut l, vec![open(&mut signer, 0, 1)]);
    assert!(
        r.receipts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("another account")
    );
    // The job of account 0 is settled by anyone (here account 2): worker 4 is paid 200 from its
    // line; worker 5's line holds only 100 of its 250: it is paid 100 and the shortfall is an
    // event. Worker 3, outvoted, is slashed.
    let job = credit_job(0, 1);
    let id = agora_types::job::job_id(&job);
    let settle = |s: &mut Signer, minority: Vec<Signed<WorkResult>>| {
        s.tx(
            2,
            TxKind::SettleCredit {
                job: Box::new(job.clone()),
                quorum: vec![result(4, id, "a", 200), result(5, id, "a", 250)],
                minority,
            },
        )
    };
    let before = l.account(&acct(4)).unwrap().balance;
    let r = block(
        &mut l,
        vec![settle(&mut signer, vec![result(3, id, "b", 10)])],
    );
    assert!(r.receipts[0].error.is_none(), "{r:?}");
    assert_eq!(l.account(&acct(4)).unwrap().balance, before + 200);
    assert_eq!(l.credit_line(&acct(0), &acct(4)).unwrap().amount, 800);
    assert_eq!(l.credit_line(&acct(0), &acct(5)).unwrap().amount, 0);
    assert!(r.events.iter().any(|(_, e)| matches!(
        e,
        Event::CreditShort {
            paid: 100,
            price: 250,
            ..
        }
    )));
    assert!(
        r.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Slashed { .. }))
    );
    assert!(l.is_closed(&id));
    assert!(l.supply_conserved());
    // Never twice.
    let r = block(&mut l, vec![settle(&mut signer, vec![])]);
    assert!(
        r.receipts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("settled already")
    );
    // A job that is not a credit job, or a forged one, is refused.
    let mut plain = credit_job(0, 2);
    plain.payload.credit = false;
    let forged = plain.clone();
    let r = block(
        &mut l,
        vec![signer.tx(
            2,
            TxKind::SettleCredit {
                job: Box::new(forged),
                quorum: vec![result(4, id, "a", 1)],
                minority: vec![],
            },
        )],
    );
    assert!(
        r.receipts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("signature"),
        "{r:?}"
    );
    // A result signed more than `credit_settle_ms` (1 s here) before the block pays nothing.
    let late_job = credit_job(0, 3);
    let late_id = agora_types::job::job_id(&late_job);
    let b = Block {
        height: l.height() + 1,
        time_ms: 5_000,
        txs: vec![signer.tx(
            2,
            TxKind::SettleCredit {
                job: Box::new(late_job),
                quorum: vec![result(4, late_id, "a", 200), result(5, late_id, "a", 1)],
                minority: vec![],
            },
        )],
    };
    let r = l.apply_block(&b).unwrap();
    assert!(r.receipts[0].error.is_none(), "{r:?}");
    assert_eq!(l.credit_line(&acct(0), &acct(4)).unwrap().amount, 800);
    // Closing: the rest returns only after 2 x credit_settle_ms of block time.
    let r = block(
        &mut l,
        vec![signer.tx(0, TxKind::CreditClose { worker: acct(4) })],
    );
    assert!(r.receipts[0].error.is_none(), "{r:?}");
    let Some(Event::CreditClosing { after_ms, .. }) = r
        .events
        .iter()
        .map(|(_, e)| e)
        .find(|e| matches!(e, Event::CreditClosing { .. }))
        .cloned()
    else {
        panic!("no closing event: {r:?}");
    };
    assert_eq!(after_ms, 5_000 + 2_000);
    let r = block(&mut l, vec![open(&mut signer, 4, 5)]);
    assert!(r.receipts[0].error.as_deref().unwrap().contains("closing"));
    let balance = l.account(&acct(0)).unwrap().balance;
    let b = Block {
        height: l.height() + 1,
        time_ms: after_ms,
        txs: vec![],
    };
    l.apply_block(&b).unwrap();
    assert!(l.credit_line(&acct(0), &acct(4)).is_none());
    assert_eq!(l.account(&acct(0)).unwrap().balance, balance + 800);
    assert!(l.supply_conserved());
}
