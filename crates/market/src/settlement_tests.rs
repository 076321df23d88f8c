//! The settlement machine against the real ledger: every transaction it asks for is signed and
//! applied in the next block (unless a test drops it), and every block is fed back.

use super::*;
use agora_ledger::{Block, Genesis, GenesisAccount, Params, SignedTx, Tx};
use agora_types::job::{CapabilityAd, JobSpec, Outcome, job_id};
use agora_types::{Hash, Keypair};

const BALANCE: u64 = 1_000_000;
const STAKE: u64 = 1_000;
const REFUND_AFTER: u64 = 100;

struct Net {
    ledger: Ledger,
    keys: Vec<Keypair>,
    nonce: u64,
    pending: Vec<SignedTx>,
    /// Whether the transactions asked for reach the next block (`false`: lost in gossip).
    deliver: bool,
    m: Settlement,
    index: CapabilityIndex,
    now: UnixMillis,
}

fn peer(k: &Keypair) -> PeerId {
    k.public().to_peer_id()
}

fn account(k: &Keypair) -> AccountId {
    AccountId::from_peer_id(&peer(k)).expect("ed25519 peer")
}

impl Net {
    /// Node 0 is the submitter; nodes 1 to 3 are staked workers.
    fn new() -> Self {
        Self::with(0)
    }

    fn with(credit_per_worker: u64) -> Self {
        let keys: Vec<Keypair> = (0..4)
            .map(|i| Keypair::ed25519_from_bytes([i as u8 + 1; 32]).expect("key"))
            .collect();
        let genesis = Genesis {
            chain_id: "test".into(),
            genesis_time_ms: 0,
            params: Params {
                min_bid_stake: 100,
                min_validator_stake: STAKE,
                refund_after_blocks: REFUND_AFTER,
                ..Params::default()
            },
            mint_authority: None,
            max_supply: 0,
            accounts: keys
                .iter()
                .map(|k| GenesisAccount {
                    peer_id: peer(k).to_string(),
                    balance: BALANCE,
                    stake: STAKE,
                    consensus_addr: None,
                })
                .collect(),
        };
        let ledger = Ledger::from_genesis(&genesis).expect("genesis");
        let m = Self::machine(&keys[0], credit_per_worker);
        Net {
            ledger,
            keys,
            nonce: 0,
            pending: Vec::new(),
            deliver: true,
            m,
            index: CapabilityIndex::new(60_000, 100),
            now: 1_000,
        }
    }

    fn machine(key: &Keypair, credit_per_worker: u64) -> Settlement {
        Settlement::new(
            peer(key),
            account(key),
            Settings {
                credit_per_worker,
                ad_ttl_ms: 60_000,
            },
        )
    }

    /// The runtime's part: queue every transaction asked for.
    fn run(&mut self, out: Vec<Output>) -> Vec<Output> {
        for o in &out {
            if let Output::Send(kind) = o
                && self.deliver
            {
                let tx = Tx {
                    chain_id: "test".into(),
                    nonce: self.nonce,
                    kind: kind.clone(),
                };
                self.nonce += 1;
                self.pending
                    .push(Signed::sign(&self.keys[0], tx, self.now).expect("sign"));
            }
        }
        out
    }

    /// Applies the pending transactions as the next block and feeds it to the machine.
    fn block(&mut self) -> Vec<Output> {
        self.now += 1_000;
        let block = Block {
            height: self.ledger.height() + 1,
            time_ms: self.now,
            txs: std::mem::take(&mut self.pending),
        };
        let receipt = self.ledger.apply_block(&block).expect("block");
        let events: Vec<Event> = receipt.events.into_iter().map(|(_, e)| e).collect();
        let out = self.m.handle(
            Input::Block {
                events: &events,
                ledger: &self.ledger,
                index: &self.index,
            },
            self.now,
        );
        self.run(out)
    }

    /// `n` blocks; every output, with the height it came at.
    fn blocks(&mut self, n: usize) -> Vec<(u64, Output)> {
        let mut all = Vec::new();
        for _ in 0..n {
            let out = self.block();
            let h = self.ledger.height();
            all.extend(out.into_iter().map(|o| (h, o)));
        }
        all
    }

    fn need(&mut self, id: JobId) -> Vec<Output> {
        let out = self.m.handle(
            Input::NeedEscrow {
                job_id: id,
                amount: 1_000,
                max_price: 100,
                redundancy: 3,
                ledger: &self.ledger,
            },
            self.now,
        );
        self.run(out)
    }

    fn finish(&mut self, job: Finished) -> Vec<Output> {
        let out = self.m.handle(
            Input::Final {
                job,
                ledger: &self.ledger,
            },
            self.now,
        );
        self.run(out)
    }

    /// A job locked on the ledger (sent, landed, seen).
    fn locked(&mut self, id: JobId) {
        self.need(id);
        let out = self.block();
        assert!(out.contains(&Output::EscrowLocked(id)), "{out:?}");
    }

    fn result(&self, worker: usize, id: JobId, output: &[u8]) -> Signed<WorkResult> {
        let result = WorkResult {
            job_id: id,
            outcome: Outcome::Completed {
                exit_code: 0,
                output_hash: Hash::of(output),
                fuel_used: 10,
                compared: None,
            },
            price: 50,
        };
        Signed::sign(&self.keys[worker], result, self.now).expect("sign")
    }

    /// Workers 1 and 2 agree, worker 3 is outvoted.
    fn evidence(&self, id: JobId) -> Evidence {
        (
            vec![self.result(1, id, b"ok"), self.result(2, id, b"ok")],
            vec![self.result(3, id, b"bad")],
        )
    }

    fn credit_job(&self, k: u64) -> SignedJob {
        let spec = JobSpec {
            input: Hash::of(&k.to_be_bytes()),
            nonce: k,
            credit: true,
            ..crate::index::tests::spec()
        };
        Signed::sign(&self.keys[0], spec, self.now).expect("sign")
    }
}

fn id(k: u8) -> JobId {
    Hash::of(&[k])
}

fn sends(out: &[Output]) -> Vec<&TxKind> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send(k) => Some(k),
            _ => None,
        })
        .collect()
}

fn heights_of(all: &[(u64, Output)], name: &str) -> Vec<u64> {
    all.iter()
        .filter(|(_, o)| matches!(o, Output::Send(k) if k.name() == name))
        .map(|(h, _)| *h)
        .collect()
}

#[test]
fn a_lost_lock_is_sent_again_every_twenty_blocks_until_it_lands() {
    let mut net = Net::new();
    let job = id(1);
    net.deliver = false;
    let out = net.need(job);
    assert!(
        matches!(sends(&out)[..], [TxKind::EscrowLock { job_id, amount: 1_000, .. }] if *job_id == job),
        "{out:?}"
    );
    let all = net.blocks(45);
    assert_eq!(heights_of(&all, "escrow_lock"), vec![20, 40]);
    assert!(!all.iter().any(|(_, o)| *o == Output::EscrowLocked(job)));
    assert!(net.m.is_locking(&job));
    // The next resend reaches the chain: the lock lands, the market hears of it, once.
    net.deliver = true;
    let all = net.blocks(20);
    let locked: Vec<u64> = all
        .iter()
        .filter(|(_, o)| *o == Output::EscrowLocked(job))
        .map(|(h, _)| *h)
        .collect();
    assert_eq!(locked, vec![61], "sent at 60, landed in 61");
    assert!(!net.m.is_locking(&job));
    assert_eq!(
        net.ledger.escrow(&job).map(|e| e.owner),
        Some(account(&net.keys[0]))
    );
    assert_eq!(heights_of(&all, "escrow_lock"), vec![60]);
}

#[test]
fn a_lock_that_cannot_be_sent_cancels_the_job() {
    let mut net = Net::new();
    let job = id(2);
    net.deliver = false;
    net.need(job);
    let out = net.m.handle(Input::SendFailed(Sent::Lock(job)), net.now);
    assert_eq!(out, vec![Output::Cancel(job)]);
    assert!(!net.m.is_locking(&job));
    let all = net.blocks(25);
    assert!(heights_of(&all, "escrow_lock").is_empty(), "{all:?}");
    // A failure for a job not waiting cancels nothing.
    assert!(
        net.m
            .handle(Input::SendFailed(Sent::Lock(job)), net.now)
            .is_empty()
    );
}

#[test]
fn a_verified_job_is_settled_paid_and_its_minority_slashed() {
    let mut net = Net::new();
    let job = id(3);
    net.locked(job);
    let out = net.finish(Finished {
        job_id: job,
        evidence: Some(net.evidence(job)),
        credit: None,
    });
    assert!(
        matches!(sends(&out)[..], [TxKind::Settle { job_id, quorum, minority }] if *job_id == job && quorum.len() == 2 && minority.len() == 1),
        "{out:?}"
    );
    assert!(net.m.is_owed(&job));
    let out = net.block();
    assert!(net.ledger.escrow(&job).is_none(), "settled");
    assert!(net.ledger.is_closed(&job));
    assert!(!net.m.is_owed(&job));
    let settled = out.iter().filter(|o| **o == Output::Settled(job)).count();
    assert_eq!(settled, 3, "two payments and a slash: {out:?}");
    let outvoted = peer(&net.keys[3]);
    assert!(
        out.iter().any(
            |o| matches!(o, Output::Penalize { peer, delta } if *peer == outvoted && *delta < 0)
        ),
        "{out:?}"
    );
    // The slashed worker fell below the bidder stake? Either way the staker set is reported.
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Stakers(s) if s.contains(&peer(&net.keys[1]))))
    );
    assert!(sends(&out).is_empty(), "nothing more to send: {out:?}");
    assert!(heights_of(&net.blocks(30), "settle").is_empty());
}

#[test]
fn three_failed_settlements_then_a_refund_at_the_refund_height() {
    let mut net = Net::new();
    let job = id(4);
    net.locked(job);
    let refund_height = net.ledger.escrow(&job).expect("locked").refund_height;
    // Evidence the ledger refuses: the results are for another job.
    let (quorum, minority) = net.evidence(id(99));
    net.now += 1;
    let out = net.finish(Finished {
        job_id: job,
        evidence: Some((quorum, minority)),
        credit: None,
    });
    assert_eq!(sends(&out).len(), 1);
    let start = net.ledger.height();
    let all = net.blocks((refund_height - start + 5) as usize);
    assert_eq!(
        heights_of(&all, "settle"),
        vec![start + 20, start + 40],
        "three attempts in all, twenty blocks apart"
    );
    assert_eq!(heights_of(&all, "refund"), vec![refund_height]);
    assert!(net.ledger.escrow(&job).is_none(), "refunded");
    assert!(!net.m.is_owed(&job));
    assert_eq!(
        net.ledger
            .account(&account(&net.keys[0]))
            .map(|a| a.balance),
        Some(BALANCE),
        "the escrow came back whole"
    );
}

#[test]
fn a_job_without_a_quorum_is_refunded_at_once() {
    let mut net = Net::new();
    for (k, evidence) in [(5, Some((vec![], vec![]))), (6, None)] {
        let job = id(k);
        net.locked(job);
        let out = net.finish(Finished {
            job_id: job,
            evidence,
            credit: None,
        });
        assert!(
            matches!(sends(&out)[..], [TxKind::Refund { job_id }] if *job_id == job),
            "{out:?}"
        );
        net.block();
        assert!(net.ledger.escrow(&job).is_none());
        assert!(!net.m.is_owed(&job));
    }
}

#[test]
fn a_failed_settlement_send_is_tried_again_with_the_next_block() {
    let mut net = Net::new();
    let job = id(7);
    net.locked(job);
    net.deliver = false;
    net.finish(Finished {
        job_id: job,
        evidence: Some(net.evidence(job)),
        credit: None,
    });
    assert!(
        net.m
            .handle(Input::SendFailed(Sent::Settle(job)), net.now)
            .is_empty()
    );
    net.deliver = true;
    let out = net.block();
    assert!(
        matches!(sends(&out)[..], [TxKind::Settle { .. }]),
        "at once, not twenty blocks later: {out:?}"
    );
    net.block();
    assert!(net.ledger.is_closed(&job));
}

#[test]
fn credit_settlements_are_capped_at_three_attempts() {
    let mut net = Net::new();
    let job = net.credit_job(1);
    let jid = job_id(&job);
    // Refused by the ledger: the results are for another job.
    let out = net.finish(Finished {
        job_id: jid,
        evidence: Some(net.evidence(id(98))),
        credit: Some(Box::new(job.clone())),
    });
    assert!(
        matches!(sends(&out)[..], [TxKind::SettleCredit { .. }]),
        "{out:?}"
    );
    let all = net.blocks(100);
    assert_eq!(heights_of(&all, "settle_credit"), vec![20, 40]);
    assert!(!net.m.is_owed(&jid), "given up after the third");
    assert!(!net.ledger.is_closed(&jid));

    // With good evidence it is sent once: the ledger closes the job.
    let job = net.credit_job(2);
    let jid = job_id(&job);
    let out = net.finish(Finished {
        job_id: jid,
        evidence: Some(net.evidence(jid)),
        credit: Some(Box::new(job)),
    });
    assert_eq!(sends(&out).len(), 1);
    let all = net.blocks(50);
    assert!(net.ledger.is_closed(&jid));
    assert!(heights_of(&all, "settle_credit").is_empty(), "{all:?}");
    assert!(!net.m.is_owed(&jid));

    // A credit job without a quorum owes nothing.
    let job = net.credit_job(3);
    let out = net.finish(Finished {
        job_id: job_id(&job),
        evidence: None,
        credit: Some(Box::new(job.clone())),
    });
    assert!(out.is_empty());
    assert!(!net.m.is_owed(&job_id(&job)));
}

#[test]
fn after_a_restart_a_landed_lock_is_found_and_an_orphan_refunded() {
    let mut net = Net::new();
    let (waiting, running, orphan) = (id(10), id(11), id(12));
    for j in [waiting, running, orphan] {
        net.need(j);
    }
    // The locks land while the node is down: the machine never sees the block.
    let block = Block {
        height: net.ledger.height() + 1,
        time_ms: net.now,
        txs: std::mem::take(&mut net.pending),
    };
    net.ledger.apply_block(&block).expect("block");
    assert!(net.ledger.escrow(&orphan).is_some());

    // A fresh machine: the market asks again for `waiting`; `running` is live; `orphan` is
    // known to no job (its record was lost).
    net.m = Net::machine(&net.keys[0], 0);
    let out = net.need(waiting);
    assert_eq!(out, vec![Output::EscrowLocked(waiting)], "no second lock");
    let out = net.m.handle(
        Input::Restored {
            live: vec![running],
            finished: vec![],
            ledger: &net.ledger,
        },
        net.now,
    );
    let out = net.run(out);
    assert!(
        matches!(sends(&out)[..], [TxKind::Refund { job_id }] if *job_id == orphan),
        "only the orphan: {out:?}"
    );
    net.block();
    assert!(net.ledger.escrow(&orphan).is_none());
    assert!(net.ledger.escrow(&running).is_some());
    assert!(net.ledger.escrow(&waiting).is_some());
    assert!(
        heights_of(&net.blocks(30), "refund").is_empty(),
        "the live ones are kept"
    );
}

#[test]
fn a_lock_that_lands_after_its_job_ended_is_refunded() {
    let mut net = Net::new();
    let job = id(13);
    net.need(job);
    // Cancelled before the lock landed: there is no escrow yet, nothing owed.
    let out = net.finish(Finished {
        job_id: job,
        evidence: None,
        credit: None,
    });
    assert!(out.is_empty());
    let out = net.block();
    assert!(
        !out.contains(&Output::EscrowLocked(job)),
        "the market is not told: {out:?}"
    );
    assert!(
        matches!(sends(&out)[..], [TxKind::Refund { job_id }] if *job_id == job),
        "{out:?}"
    );
    net.block();
    assert!(net.ledger.escrow(&job).is_none());
}

#[test]
fn a_restored_final_job_is_settled() {
    let mut net = Net::new();
    let job = id(14);
    net.locked(job);
    net.m = Net::machine(&net.keys[0], 0);
    let evidence = net.evidence(job);
    let out = net.m.handle(
        Input::Restored {
            live: vec![],
            finished: vec![Finished {
                job_id: job,
                evidence: Some(evidence),
                credit: None,
            }],
            ledger: &net.ledger,
        },
        net.now,
    );
    let out = net.run(out);
    assert!(
        matches!(sends(&out)[..], [TxKind::Settle { .. }]),
        "settled, not refunded: {out:?}"
    );
    net.block();
    assert!(net.ledger.is_closed(&job));
}

#[test]
fn credit_lines_go_to_fresh_staked_workers_once() {
    let mut net = Net::with(5_000);
    let ad = CapabilityAd {
        engine: "test".into(),
        capabilities: vec!["wasm".into()],
        cores: 1,
        memory_bytes: 1 << 30,
        free_slots: 1,
        total_slots: 1,
        price: 10,
        version: "test".into(),
        seq: 1,
        max_input_bytes: 1 << 20,
        max_module_bytes: 1 << 20,
        max_wall_time_ms: 60_000,
    };
    let (w1, w2) = (peer(&net.keys[1]), peer(&net.keys[2]));
    net.index.insert(w1, ad.clone(), None, net.now);
    // Our own ad gets no line.
    net.index.insert(peer(&net.keys[0]), ad, None, net.now);
    net.deliver = false;
    let all = net.blocks(25);
    let opened: Vec<(u64, AccountId)> = all
        .iter()
        .filter_map(|(h, o)| match o {
            Output::Send(TxKind::CreditOpen {
                worker,
                amount: 5_000,
            }) => Some((*h, *worker)),
            _ => None,
        })
        .collect();
    let a1 = account(&net.keys[1]);
    assert_eq!(
        opened,
        vec![(1, a1), (21, a1)],
        "once per twenty blocks while it does not land"
    );
    net.deliver = true;
    let all = net.blocks(25);
    assert_eq!(
        net.ledger
            .credit_line(&account(&net.keys[0]), &a1)
            .map(|c| c.amount),
        Some(5_000)
    );
    assert_eq!(heights_of(&all, "credit_open"), vec![41]);
    let out = net.block();
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::CreditLines(s) if s.contains(&w1) && !s.contains(&w2))),
        "{out:?}"
    );
}
