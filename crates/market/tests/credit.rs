//! Credit lines under random interleavings: the shipped [`Worker`] machine decides which credit
//! leases to take, the real [`Ledger`] opens, closes and settles lines, and a submitter that
//! leases as it likes (over-leasing, closing lines under the workers' feet, settling late or
//! never). After every step: no worker can be owed more, by results it signed that a
//! settlement may still pay, than its line holds; every result settled in time is paid in full;
//! supply is conserved.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;

use agora_ledger::{
    AccountId, Block, Event, Genesis, GenesisAccount, Ledger, Params, SignedTx, Tx, TxKind,
};
use agora_market::Config;
use agora_market::worker::{self, Answer, Offer, Settings, Standing, Worker};
use agora_types::job::{JobId, JobLimits, JobSpec, Lease, Outcome, SignedJob, WorkResult, job_id};
use agora_types::sign::Signed;
use agora_types::{Hash, Keypair, PeerId, UnixMillis};
use proptest::prelude::*;

/// Account 0 submits; 1..=WORKERS work.
const WORKERS: usize = 3;
const SETTLE_MS: u64 = 10_000;
const BLOCK_MS: u64 = 300;
const PRICE: u64 = 10;

fn key(i: usize) -> Keypair {
    Keypair::ed25519_from_bytes([i as u8 + 1; 32]).unwrap()
}

fn peer(i: usize) -> PeerId {
    key(i).public().to_peer_id()
}

fn acct(i: usize) -> AccountId {
    AccountId::from_peer_id(&peer(i)).unwrap()
}

fn genesis() -> Genesis {
    Genesis {
        chain_id: "credit".into(),
        genesis_time_ms: 0,
        params: Params {
            min_bid_stake: 1,
            min_validator_stake: 1,
            credit_settle_ms: SETTLE_MS,
            ..Params::default()
        },
        mint_authority: None,
        max_supply: 0,
        accounts: (0..=WORKERS)
            .map(|i| GenesisAccount {
                peer_id: peer(i).to_string(),
                balance: 1_000,
                stake: 10,
                consensus_addr: None,
            })
            .collect(),
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// The submitter opens or tops up the line to a worker.
    Open(usize, u64),
    /// It closes a line.
    Close(usize),
    /// It leases a new credit job to a worker (whatever the line holds).
    Lease(usize),
    /// A worker finishes one of its leases (signs its result).
    Execute(usize),
    /// A worker gives one up.
    GiveUp(usize),
    /// The submitter settles the oldest unsettled result of a worker (or drops it, never to be
    /// settled).
    Settle(usize, bool),
    /// Time passes and a block is decided with the transactions sent so far.
    Block,
}

fn op() -> impl Strategy<Value = Op> {
    let w = 1..=WORKERS;
    prop_oneof![
        1 => (w.clone(), 1u64..60).prop_map(|(w, x)| Op::Open(w, x)),
        1 => w.clone().prop_map(Op::Close),
        3 => w.clone().prop_map(Op::Lease),
        3 => w.clone().prop_map(Op::Execute),
        1 => w.clone().prop_map(Op::GiveUp),
        2 => (w, any::<bool>()).prop_map(|(w, keep)| Op::Settle(w, keep)),
        3 => Just(Op::Block),
    ]
}

struct World {
    ledger: Ledger,
    /// Settled jobs the workers have not been told of yet: a node's core hears of a block after
    /// the chain applied it, so a worker reads the new lines before it forgets what they paid.
    late_settled: Vec<JobId>,
    /// When each settled result was signed.
    signed_at: BTreeMap<JobId, UnixMillis>,
    workers: Vec<Worker>,
    nonce: u64,
    pending: Vec<SignedTx>,
    now: UnixMillis,
    jobs: u64,
    /// Per worker: leases held (job, signed job).
    held: Vec<Vec<SignedJob>>,
    /// Per worker: signed results not settled yet (job, result).
    signed: Vec<Vec<(SignedJob, Signed<WorkResult>)>>,
}

impl World {
    fn new() -> Self {
        let ledger = Ledger::from_genesis(&genesis()).unwrap();
        let workers = (0..=WORKERS)
            .map(|i| {
                let offer = Offer {
                    capabilities: vec!["wasm".into()],
                    price: PRICE,
                    memory_bytes: 1 << 30,
                    max_wall_time_ms: 60_000,
                };
                let mut s = Settings::new(offer, 64, &Config::local());
                s.credit_hold_ms = SETTLE_MS;
                Worker::new(peer(i), s)
            })
            .collect();
        World {
            late_settled: vec![],
            signed_at: BTreeMap::new(),
            ledger,
            workers,
            nonce: 0,
            pending: vec![],
            now: 0,
            jobs: 0,
            held: vec![vec![]; WORKERS + 1],
            signed: vec![vec![]; WORKERS + 1],
        }
    }

    fn send(&mut self, kind: TxKind) {
        let tx = Tx {
            chain_id: "credit".into(),
            nonce: self.nonce,
            kind,
        };
        self.nonce += 1;
        self.pending
            .push(Signed::sign(&key(0), tx, self.now).unwrap());
    }

    fn job(&mut self) -> SignedJob {
        self.jobs += 1;
        let spec = JobSpec {
            module: Hash::of(b"m"),
            module_size: 1,
            input: Hash::of(&self.jobs.to_be_bytes()),
            input_size: 8,
            args: vec![],
            limits: JobLimits {
                fuel: 1_000,
                memory_bytes: 1 << 20,
                wall_time_ms: 1_000,
            },
            capabilities: vec!["wasm".into()],
            redundancy: 1,
            max_price: 100,
            deadline_ms: 0,
            nonce: self.jobs,
            credit: true,
            runtime: Default::default(),
        };
        Signed::sign(&key(0), spec, self.now).unwrap()
    }

    /// The worker's view of its line: the ledger as it is now.
    fn standing(&self, w: usize) -> Standing {
        let credit = self
            .ledger
            .credit_line(&acct(0), &acct(w))
            .filter(|c| c.closing_after_ms.is_none())
            .map_or(0, |c| c.amount);
        Standing {
            staked: true,
            escrowed: false,
            credit,
        }
    }

    fn step(&mut self, op: &Op) {
        match op {
            Op::Open(w, x) => self.send(TxKind::CreditOpen {
                worker: acct(*w),
                amount: *x,
            }),
            Op::Close(w) => self.send(TxKind::CreditClose { worker: acct(*w) }),
            Op::Lease(w) => {
                let job = self.job();
                let standing = self.standing(*w);
                let lease = Lease {
                    job: job.clone(),
                    price: PRICE,
                    expires_ms: self.now + 2_000,
                };
                let out = self.workers[*w].handle(
                    worker::Input::Lease {
                        from: peer(0),
                        lease,
                        standing: Some(standing),
                    },
                    self.now,
                );
                let accepted = out.iter().any(|o| {
                    matches!(
                        o,
                        worker::Output::Answer {
                            answer: Answer::Accepted,
                            ..
                        }
                    )
                });
                if accepted {
                    self.held[*w].push(job);
                }
            }
            Op::Execute(w) => {
                if self.held[*w].is_empty() {
                    return;
                }
                let job = self.held[*w].remove(0);
                let id = job_id(&job);
                let out = self.workers[*w].handle(worker::Input::Executed(id), self.now);
                for o in out {
                    if let worker::Output::SendResult { price, .. } = o {
                        let r = WorkResult {
                            job_id: id,
                            outcome: Outcome::Completed {
                                exit_code: 0,
                                output_hash: Hash::of(b"ok"),
                                fuel_used: 1,
                                compared: None,
                            },
                            price,
                        };
                        let signed = Signed::sign(&key(*w), r, self.now).unwrap();
                        self.signed[*w].push((job.clone(), signed));
                    }
                }
            }
            Op::GiveUp(w) => {
                if self.held[*w].is_empty() {
                    return;
                }
                let job = self.held[*w].remove(0);
                self.workers[*w].handle(
                    worker::Input::GaveUp {
                        job_id: job_id(&job),
                        reason: "gave up".into(),
                    },
                    self.now,
                );
            }
            Op::Settle(w, keep) => {
                if self.signed[*w].is_empty() {
                    return;
                }
                let (job, result) = self.signed[*w].remove(0);
                if *keep {
                    self.signed_at
                        .insert(result.payload.job_id, result.timestamp_ms);
                    self.send(TxKind::SettleCredit {
                        job: Box::new(job),
                        quorum: vec![result],
                        minority: vec![],
                    });
                }
                // Dropped: never settled; the worker's hold lapses on its own.
            }
            Op::Block => {
                self.now += BLOCK_MS;
                let block = Block {
                    height: self.ledger.height() + 1,
                    time_ms: self.now,
                    txs: std::mem::take(&mut self.pending),
                };
                let receipt = self.ledger.apply_block(&block).unwrap();
                // The previous block's settlements reach the workers now, this block's next time.
                let settled: BTreeMap<JobId, ()> =
                    self.late_settled.drain(..).map(|id| (id, ())).collect();
                for (_, e) in &receipt.events {
                    // A settlement sent too late pays nothing (the submitter's fault; the worker
                    // stopped counting it). One in time is paid in full: a short line is a bug.
                    if let Event::CreditShort { job_id, .. } = e {
                        let signed_ms = self.signed_at[job_id];
                        assert!(
                            self.now > signed_ms + SETTLE_MS,
                            "a worker was paid less than it signed for, in time: {e:?}"
                        );
                    }
                    if let Event::Paid { job_id, .. } = e {
                        self.late_settled.push(*job_id);
                    }
                }
                for w in 1..=WORKERS {
                    for id in settled.keys() {
                        if self.workers[w].is_owed(id) {
                            self.workers[w].handle(worker::Input::Settled(*id), self.now);
                        }
                    }
                    let ledger = &self.ledger;
                    self.signed[w].retain(|(j, _)| !ledger.is_closed(&job_id(j)));
                }
                assert!(self.ledger.supply_conserved());
            }
        }
    }

    /// What worker `w` could still be paid by a settlement: its signed, unsettled results
    /// within the window, plus every lease it holds (it may sign it at any moment).
    fn claimable(&self, w: usize) -> u64 {
        let now = self.now;
        let signed: u64 = self.signed[w]
            .iter()
            .filter(|(_, r)| now <= r.timestamp_ms + SETTLE_MS)
            .map(|(_, r)| r.payload.price)
            .sum();
        signed + PRICE * self.held[w].len() as u64
    }

    fn check(&self) {
        for w in 1..=WORKERS {
            // What a line holds, counting settlements still in the mempool as already drawn:
            // they are the only way a line shrinks before it closes.
            let line = self
                .ledger
                .credit_line(&acct(0), &acct(w))
                .map_or(0, |c| c.amount);
            let claimable = self.claimable(w);
            assert!(
                claimable <= line,
                "worker {w} could be owed {claimable} but its line holds {line} at {} ms",
                self.now
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn a_worker_is_never_owed_more_than_its_line_holds(ops in proptest::collection::vec(op(), 1..400)) {
        let mut world = World::new();
        for op in &ops {
            world.step(op);
            world.check();
        }
        // Drain: every kept settlement lands and pays in full (checked in each block).
        for _ in 0..3 {
            world.step(&Op::Block);
            world.check();
        }
    }
}
