//! A deterministic simulation of a small Agora network: ten nodes, each running a [`Market`] as
//! submitter and a [`Worker`] as worker (the same state machines the node runs), exchanging
//! messages through an in-memory event queue with simulated latency and execution times. No
//! threads, sockets or clocks: the same seed gives the same run.
//!
//! Only the sandbox is simulated: each node has a few executor slots, and accepted leases wait
//! for one in order (as in `exec::Pool`). Everything else a worker decides (bids, a lease book of
//! four leases per executor slot, `Busy` when it is full, heartbeats, expiry, whether a result
//! goes out) is the shipped [`Worker`]'s, fired by its own timers.
//! The load scenarios slow every execution down (a CPU hog, in simulated time), submit all jobs
//! at once and crash a worker, and check that load only makes jobs slower, never failed.
//!
//! With [`Load::ledger`] the real [`Ledger`] runs beside them on simulated time (a block every
//! 300 ms holding every transaction sent since; consensus itself is not simulated): every node
//! opens a credit line to every other, jobs are credit jobs, workers check their lines
//! ([`Standing`]) and sign their results, verified jobs are settled from the lines with their
//! signed results as evidence, and outvoted workers are slashed: submit, verified, paid,
//! slashed, on the shipped machines and the shipped ledger.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};

use agora_ledger::{
    AccountId, Block, Event as LedgerEvent, Genesis, GenesisAccount, Ledger, Params, SignedTx, Tx,
    TxKind,
};
use agora_market::settlement::{self, Settlement};
use agora_market::worker::{self, Answer, Beat, Offer, Settings, Standing, Timer, Worker};
use agora_market::{Config, Input, JobState, Market, Output};
use agora_types::job::{
    Bid, CapabilityAd, JobId, JobLimits, JobSpec, Lease, Outcome, SignedJob, WorkResult, job_id,
};
use agora_types::sign::Signed;
use agora_types::{Hash, Keypair, PeerId, UnixMillis};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const NODES: usize = 10;
const JOBS: usize = 100;
const AD_PERIOD_MS: u64 = 5_000;
const BLOCK_MS: u64 = 300;
/// Tokens each node locks per credit line, and its stake.
const LINE: u64 = 10_000;
const STAKE: u64 = 1_000;

/// What travels between nodes (or from a node to itself, for finished executions).
#[derive(Clone, Debug)]
enum Msg {
    Announce(SignedJob, u32),
    Ad(CapabilityAd),
    Reputation {
        subject: PeerId,
        delta: i64,
    },
    Bid(Bid),
    Lease(Lease),
    LeaseAccepted(JobId),
    LeaseRefused(JobId, String),
    LeaseBusy(JobId),
    Heartbeat(JobId),
    /// The submitter's answer to a heartbeat: whether it extended the lease.
    HeartbeatAnswer(JobId, bool),
    Result(WorkResult, Option<Signed<WorkResult>>),
    /// The submitter withdraws a lease.
    Cancel(JobId),
    /// The worker gives a lease back.
    GiveBack(JobId),
    /// A simulated execution ended (from a node to itself).
    ExecDone(JobId),
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Msg,
    },
    Tick(usize),
    WorkerTimer(usize, Timer),
    Submit(usize, SignedJob),
    Advertise(usize),
    /// A block is decided (with a ledger).
    Block,
}

struct Node {
    key: Keypair,
    peer: PeerId,
    market: Market,
    worker: Worker,
    /// The shipped settlement machine (fed only with a ledger).
    settlement: Settlement,
    /// Executor slots: leases beyond them wait in `queue`.
    slots: usize,
    running: BTreeSet<JobId>,
    queue: VecDeque<JobId>,
    byzantine: bool,
    tick_at: Option<UnixMillis>,
}

/// How a run is loaded.
#[derive(Clone, Copy, Debug)]
struct Load {
    /// Every execution takes this many times longer.
    slowdown: u64,
    /// All jobs arrive within this many ms (instead of one per 50 ms).
    burst_ms: u64,
    /// Each job's signed deadline, relative to its submission (0: none).
    deadline_ms: u64,
    /// A worker that stops answering at this instant.
    crash: Option<(usize, UnixMillis)>,
    /// Each job's wall-time limit (the sandbox stops a run there, so no run is longer).
    wall_ms: u64,
    /// How many nodes, and how many jobs they submit in all.
    nodes: usize,
    jobs: usize,
    /// Run the ledger: credit lines, signed results, settlement, slashing.
    ledger: bool,
    /// Simulated time after which the run stops.
    time_limit_ms: u64,
}

const QUIET: Load = Load {
    slowdown: 1,
    burst_ms: 50 * JOBS as u64,
    deadline_ms: 0,
    crash: None,
    wall_ms: 1_000,
    nodes: NODES,
    jobs: JOBS,
    ledger: false,
    time_limit_ms: 600_000,
};

/// The result of one run, compared between runs for determinism.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Summary {
    /// Per job: id, final state, agreed output hash, quorum size, results received.
    jobs: Vec<(JobId, JobState, Option<Hash>, usize, usize)>,
    /// Per node: its local reputation book.
    books: Vec<Vec<(PeerId, i64)>>,
    /// Jobs verified with the correct output.
    correct: usize,
    /// Jobs verified with a wrong output.
    wrong: usize,
    /// Sum over all nodes' books of each node's score.
    totals: Vec<i64>,
    /// Simulated time at the end.
    end_ms: UnixMillis,
    /// Jobs failed, with their reasons.
    failed: Vec<String>,
    /// The most leases any submitter had out on one worker at once, and that worker's slots.
    max_out: (usize, usize),
    /// Leases that expired.
    expired: usize,
    /// The submitters of the jobs that never finished.
    unfinished: Vec<usize>,
    /// Events processed.
    events: u64,
    /// With a ledger: jobs settled, honest and Byzantine accounts slashed, payments short of
    /// the signed price (must stay 0), whether supply was conserved after every block, and the
    /// final state root.
    settled: u64,
    slashed_honest: usize,
    slashed_byzantine: usize,
    short: usize,
    supply_conserved: bool,
    state_root: Option<Hash>,
}

struct Sim {
    load: Load,
    max_out: (usize, usize),
    nodes: Vec<Node>,
    by_peer: HashMap<PeerId, usize>,
    queue: BTreeMap<(UnixMillis, u64), Event>,
    seq: u64,
    now: UnixMillis,
    rng: StdRng,
    finished: usize,
    events: u64,
    chain: Option<Chain>,
}

/// The ledger on simulated time, and what the nodes sent it.
struct Chain {
    ledger: Ledger,
    pending: Vec<SignedTx>,
    nonces: Vec<u64>,
    /// Settled jobs the workers hear of with the next block (a node's core hears of a block
    /// after the chain applied it), per node.
    late: Vec<(usize, JobId)>,
    short: usize,
    conserved: bool,
}

fn genesis(keys: &[Keypair]) -> Genesis {
    Genesis {
        chain_id: "sim".into(),
        genesis_time_ms: 0,
        params: Params {
            min_bid_stake: 100,
            min_validator_stake: STAKE,
            ..Params::default()
        },
        mint_authority: None,
        max_supply: 0,
        accounts: keys
            .iter()
            .map(|k| GenesisAccount {
                peer_id: k.public().to_peer_id().to_string(),
                balance: LINE * keys.len() as u64 + 1_000,
                stake: STAKE,
                consensus_addr: None,
            })
            .collect(),
    }
}

fn account(p: &PeerId) -> AccountId {
    AccountId::from_peer_id(p).expect("ed25519 peer")
}

fn ip(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8 + 1))
}

/// One-way latency between two nodes: fixed per pair, 5..45 ms.
fn latency(a: usize, b: usize) -> u64 {
    5 + ((a * 7 + b * 13) % 40) as u64
}

/// What an honest worker outputs for a job.
fn correct_output(job: &JobId) -> Hash {
    Hash::of(&[job.as_bytes().as_slice(), b"output"].concat())
}

impl Sim {
    fn new(seed: u64, byzantine: &[usize]) -> Self {
        Self::loaded(seed, byzantine, QUIET)
    }

    fn loaded(seed: u64, byzantine: &[usize], load: Load) -> Self {
        let mut nodes = Vec::new();
        let mut by_peer = HashMap::new();
        for i in 0..load.nodes {
            let key = Keypair::ed25519_from_bytes([i as u8 + 1; 32]).expect("key");
            let peer = key.public().to_peer_id();
            by_peer.insert(peer, i);
            let offer = Offer {
                capabilities: vec!["wasm".into()],
                price: 10 + (i as u64 % 5),
                memory_bytes: 1 << 30,
                max_wall_time_ms: 60_000,
            };
            let slots = 2 + i % 3;
            let mut settings = Settings::new(offer, 4 * slots, &Config::local());
            settings.direct_slots = slots;
            nodes.push(Node {
                market: Market::new(Config::local(), peer),
                worker: Worker::new(peer, settings),
                settlement: Settlement::new(
                    peer,
                    account(&peer),
                    settlement::Settings {
                        // The lines are opened once, in the first block (see `Sim::run`).
                        credit_per_worker: 0,
                        ad_ttl_ms: Config::local().ad_ttl_ms,
                    },
                ),
                key,
                peer,
                slots,
                running: BTreeSet::new(),
                queue: VecDeque::new(),
                byzantine: byzantine.contains(&i),
                tick_at: None,
            });
        }
        let chain = load.ledger.then(|| {
            let keys: Vec<Keypair> = nodes.iter().map(|n: &Node| n.key.clone()).collect();
            Chain {
                ledger: Ledger::from_genesis(&genesis(&keys)).expect("genesis"),
                pending: vec![],
                nonces: vec![0; keys.len()],
                late: vec![],
                short: 0,
                conserved: true,
            }
        });
        Sim {
            chain,
            load,
            max_out: (0, 0),
            nodes,
            by_peer,
            queue: BTreeMap::new(),
            seq: 0,
            now: 0,
            rng: StdRng::seed_from_u64(seed),
            finished: 0,
            events: 0,
        }
    }

    fn push(&mut self, at: UnixMillis, e: Event) {
        self.seq += 1;
        self.queue.insert((at, self.seq), e);
    }

    fn crashed(&self, n: usize) -> bool {
        self.load
            .crash
            .is_some_and(|(c, at)| c == n && self.now >= at)
    }

    fn send(&mut self, from: usize, to: usize, msg: Msg) {
        if self.crashed(from) {
            return;
        }
        let at = self.now + latency(from, to);
        self.push(at, Event::Deliver { from, to, msg });
    }

    fn broadcast(&mut self, from: usize, msg: Msg) {
        for to in 0..self.load.nodes {
            if to != from {
                self.send(from, to, msg.clone());
            }
        }
    }

    fn spec(k: usize, deadline_ms: UnixMillis, wall_time_ms: u64, credit: bool) -> JobSpec {
        JobSpec {
            module: Hash::of(b"module"),
            module_size: 1_000,
            input: Hash::of(&k.to_be_bytes()),
            input_size: 8,
            args: vec![],
            limits: JobLimits {
                fuel: 1_000_000,
                memory_bytes: 1 << 20,
                wall_time_ms,
            },
            capabilities: vec!["wasm".into()],
            redundancy: 3,
            max_price: 100,
            deadline_ms,
            nonce: k as u64,
            credit,
            runtime: Default::default(),
        }
    }

    /// Node `n` signs a ledger transaction and sends it to the next block.
    fn send_tx(&mut self, n: usize, kind: TxKind) {
        let now = self.now;
        let key = self.nodes[n].key.clone();
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        let tx = Tx {
            chain_id: "sim".into(),
            nonce: chain.nonces[n],
            kind,
        };
        chain.nonces[n] += 1;
        chain
            .pending
            .push(Signed::sign(&key, tx, now).expect("sign"));
    }

    /// A block: applies what was sent, and feeds its events and the ledger to every node's
    /// settlement machine, which tells the market which peers are staked and which lines it
    /// holds, settles again what is owed, and names the settled jobs (the workers hear of them
    /// with the next block).
    fn block(&mut self) {
        let now = self.now;
        let Some(chain) = self.chain.as_mut() else {
            return;
        };
        let block = Block {
            height: chain.ledger.height() + 1,
            time_ms: now,
            txs: std::mem::take(&mut chain.pending),
        };
        let receipt = chain.ledger.apply_block(&block).expect("block");
        chain.conserved &= chain.ledger.supply_conserved();
        chain.short += receipt
            .events
            .iter()
            .filter(|(_, e)| matches!(e, LedgerEvent::CreditShort { .. }))
            .count();
        let settled = std::mem::take(&mut chain.late);
        for (n, id) in settled {
            if self.nodes[n].worker.is_owed(&id) {
                self.worker(n, worker::Input::Settled(id));
            }
        }
        let events: Vec<LedgerEvent> = receipt.events.into_iter().map(|(_, e)| e).collect();
        for n in 0..self.nodes.len() {
            let Some(chain) = self.chain.as_ref() else {
                return;
            };
            let node = &mut self.nodes[n];
            let input = settlement::Input::Block {
                events: &events,
                ledger: &chain.ledger,
                index: node.market.index(),
            };
            let out = node.settlement.handle(input, now);
            self.settlement_outs(n, out);
        }
        if self.finished < self.load.jobs {
            self.push(now + BLOCK_MS, Event::Block);
        }
    }

    /// Feeds node `n`'s settlement machine an input made with the ledger.
    fn settlement(
        &mut self,
        n: usize,
        input: impl for<'a> FnOnce(&'a Ledger) -> settlement::Input<'a>,
    ) {
        let Some(chain) = self.chain.as_ref() else {
            return;
        };
        let out = self.nodes[n]
            .settlement
            .handle(input(&chain.ledger), self.now);
        self.settlement_outs(n, out);
    }

    /// Carries out node `n`'s settlement decisions, as the node's core does.
    fn settlement_outs(&mut self, n: usize, out: Vec<settlement::Output>) {
        for o in out {
            match o {
                settlement::Output::Send(kind) => self.send_tx(n, kind),
                settlement::Output::EscrowLocked(id) => self.market(n, Input::EscrowLocked(id)),
                settlement::Output::Cancel(id) => self.market(n, Input::Cancel(id)),
                settlement::Output::Stakers(set) => self.market(n, Input::Stakers(set)),
                settlement::Output::CreditLines(set) => self.market(n, Input::CreditLines(set)),
                settlement::Output::Penalize { peer, delta } => {
                    self.nodes[n].market.reputation_mut().penalize(peer, delta);
                }
                settlement::Output::Settled(id) => {
                    if let Some(chain) = self.chain.as_mut() {
                        chain.late.push((n, id));
                    }
                }
            }
        }
    }

    /// What the ledger says of a job node `n` may work on.
    fn standing(&self, n: usize, job: &SignedJob) -> Option<Standing> {
        let chain = self.chain.as_ref()?;
        let me = account(&self.nodes[n].peer);
        let credit = chain
            .ledger
            .credit_line(&AccountId(job.signer), &me)
            .filter(|c| c.closing_after_ms.is_none())
            .map_or(0, |c| c.amount);
        Some(Standing {
            staked: chain.ledger.can_bid(&me),
            escrowed: false,
            credit,
        })
    }

    fn run(mut self) -> Summary {
        for i in 0..self.load.nodes {
            self.push(0, Event::Advertise(i));
        }
        // With a ledger, every node opens a line to every other in the first block, and jobs
        // start after it.
        let start = if self.chain.is_some() {
            for a in 0..self.load.nodes {
                for b in (0..self.load.nodes).filter(|b| *b != a) {
                    let worker = account(&self.nodes[b].peer);
                    self.send_tx(
                        a,
                        TxKind::CreditOpen {
                            worker,
                            amount: LINE,
                        },
                    );
                }
            }
            self.push(BLOCK_MS, Event::Block);
            1_000
        } else {
            100
        };
        let (nodes, jobs) = (self.load.nodes, self.load.jobs);
        let mut ids = Vec::new();
        for k in 0..jobs {
            let s = k % nodes;
            let at = start + k as u64 * self.load.burst_ms / jobs as u64;
            let deadline = if self.load.deadline_ms == 0 {
                0
            } else {
                at + self.load.deadline_ms
            };
            let job = Signed::sign(
                &self.nodes[s].key,
                Self::spec(k, deadline, self.load.wall_ms, self.chain.is_some()),
                at,
            )
            .expect("sign");
            ids.push((s, job_id(&job)));
            self.push(at, Event::Submit(s, job));
        }
        while let Some(((at, _), event)) = self.queue.pop_first() {
            assert!(at >= self.now, "time goes forward");
            if at > self.load.time_limit_ms {
                break;
            }
            self.now = at;
            self.events += 1;
            self.step(event);
            if self.events.is_multiple_of(64) {
                self.check_admission();
            }
        }
        self.summarize(&ids)
    }

    /// Admission control: no submitter has more leases out on a worker than the slots that
    /// worker advertises (its lease book).
    fn check_admission(&mut self) {
        for s in &self.nodes {
            let mut out: BTreeMap<PeerId, usize> = BTreeMap::new();
            for l in s.market.jobs().flat_map(|r| r.active_leases()) {
                *out.entry(l.worker).or_default() += 1;
            }
            for (w, n) in out {
                let cap = self.nodes[self.by_peer[&w]].worker.total_slots() as usize;
                assert!(n <= cap, "{n} leases out on a worker of {cap} slots");
                if n > self.max_out.0 {
                    self.max_out = (n, cap);
                }
            }
        }
    }

    fn step(&mut self, event: Event) {
        if let Event::Deliver { to, .. }
        | Event::Tick(to)
        | Event::WorkerTimer(to, _)
        | Event::Advertise(to) = &event
            && self.crashed(*to)
        {
            return;
        }
        match event {
            Event::Submit(n, job) => self.market(n, Input::Submit(job)),
            Event::Tick(n) => {
                if self.nodes[n].tick_at.is_some_and(|t| t <= self.now) {
                    self.nodes[n].tick_at = None;
                }
                self.market(n, Input::Tick);
            }
            Event::WorkerTimer(n, timer) => self.worker(n, worker::Input::Timer(timer)),
            Event::Advertise(n) => {
                let ad = self.nodes[n].worker.capability_ad("sim", 4, "sim");
                self.broadcast(n, Msg::Ad(ad));
                if self.finished < self.load.jobs {
                    self.push(self.now + AD_PERIOD_MS, Event::Advertise(n));
                }
            }
            Event::Deliver { from, to, msg } => self.deliver(from, to, msg),
            Event::Block => self.block(),
        }
    }

    fn deliver(&mut self, from: usize, to: usize, msg: Msg) {
        let from_peer = self.nodes[from].peer;
        match msg {
            Msg::Ad(ad) => self.market(
                to,
                Input::CapabilityAd {
                    from: from_peer,
                    ad,
                    ip: Some(ip(from)),
                },
            ),
            Msg::Reputation { subject, delta } => self.market(
                to,
                Input::RemoteReputation {
                    reporter: from_peer,
                    subject,
                    delta,
                },
            ),
            Msg::Bid(bid) => self.market(
                to,
                Input::Bid {
                    from: from_peer,
                    bid,
                    rtt_ms: Some(2 * latency(from, to) as u32),
                    ip: Some(ip(from)),
                },
            ),
            Msg::LeaseAccepted(job_id) => self.market(
                to,
                Input::LeaseAccepted {
                    job_id,
                    worker: from_peer,
                },
            ),
            Msg::LeaseRefused(job_id, reason) => self.market(
                to,
                Input::LeaseRefused {
                    job_id,
                    worker: from_peer,
                    reason,
                },
            ),
            Msg::LeaseBusy(job_id) => self.market(
                to,
                Input::LeaseBusy {
                    job_id,
                    worker: from_peer,
                },
            ),
            Msg::Heartbeat(job_id) => {
                let outs = self.market_outs(
                    to,
                    Input::Heartbeat {
                        job_id,
                        worker: from_peer,
                    },
                );
                let extended = outs.iter().any(
                    |o| matches!(o, Output::LeaseExtended { worker, .. } if *worker == from_peer),
                );
                self.send(to, from, Msg::HeartbeatAnswer(job_id, extended));
            }
            Msg::HeartbeatAnswer(job_id, extended) => {
                let answer = if extended {
                    Beat::Extended
                } else {
                    Beat::Refused("no active lease".into())
                };
                self.worker(to, worker::Input::HeartbeatAnswered { job_id, answer });
            }
            Msg::GiveBack(job_id) => self.market(
                to,
                Input::LeaseBusy {
                    job_id,
                    worker: from_peer,
                },
            ),
            Msg::Result(result, signed) => self.market(
                to,
                Input::Result {
                    from: from_peer,
                    result,
                    signed,
                    stderr: vec![],
                },
            ),
            // Worker side.
            Msg::Announce(job, attempt) => {
                let standing = self.standing(to, &job);
                self.worker(
                    to,
                    worker::Input::Announce {
                        job,
                        attempt,
                        standing,
                    },
                )
            }
            Msg::Lease(lease) => {
                let standing = self.standing(to, &lease.job);
                self.worker(
                    to,
                    worker::Input::Lease {
                        from: from_peer,
                        lease,
                        standing,
                    },
                )
            }
            Msg::Cancel(job_id) => self.worker(
                to,
                worker::Input::Withdrawn {
                    from: from_peer,
                    job_id,
                },
            ),
            Msg::ExecDone(job) => {
                if self.nodes[to].running.remove(&job) {
                    self.start_queued(to);
                    self.worker(to, worker::Input::Executed(job));
                }
            }
        }
    }

    /// Feeds `input` to node `n`'s worker and carries out what it asks.
    fn worker(&mut self, n: usize, input: worker::Input) {
        let outs = self.nodes[n].worker.handle(input, self.now);
        for out in outs {
            match out {
                worker::Output::SendBid { submitter, bid } => {
                    let to = self.by_peer[&submitter];
                    self.send(n, to, Msg::Bid(bid));
                }
                worker::Output::Declined { .. } => {}
                worker::Output::Answer {
                    job_id,
                    submitter,
                    answer,
                } => {
                    let to = self.by_peer[&submitter];
                    let msg = match answer {
                        Answer::Accepted => Msg::LeaseAccepted(job_id),
                        Answer::Busy => Msg::LeaseBusy(job_id),
                        Answer::Refused(why) => Msg::LeaseRefused(job_id, why),
                    };
                    self.send(n, to, msg);
                }
                worker::Output::Start { job_id, .. } => {
                    self.nodes[n].queue.push_back(job_id);
                    self.start_queued(n);
                }
                worker::Output::SendHeartbeat { submitter, job_id } => {
                    let to = self.by_peer[&submitter];
                    self.send(n, to, Msg::Heartbeat(job_id));
                }
                worker::Output::Stop { job_id, .. } => {
                    // The run is aborted: its executor slot is free at once.
                    if self.nodes[n].running.remove(&job_id) {
                        self.start_queued(n);
                    }
                }
                worker::Output::SendResult {
                    submitter,
                    job_id,
                    price,
                } => {
                    let node = &self.nodes[n];
                    let output_hash = if node.byzantine {
                        Hash::of(&[job_id.as_bytes().as_slice(), &node.peer.to_bytes()].concat())
                    } else {
                        correct_output(&job_id)
                    };
                    let result = WorkResult {
                        job_id,
                        outcome: Outcome::Completed {
                            exit_code: 0,
                            output_hash,
                            fuel_used: 1_000,
                            compared: None,
                        },
                        price,
                    };
                    let signed = self
                        .chain
                        .is_some()
                        .then(|| Signed::sign(&node.key, result.clone(), self.now).expect("sign"));
                    let to = self.by_peer[&submitter];
                    self.send(n, to, Msg::Result(result, signed));
                }
                worker::Output::GiveBack { submitter, job_id } => {
                    let to = self.by_peer[&submitter];
                    self.send(n, to, Msg::GiveBack(job_id));
                }
                worker::Output::SetTimer { at, timer } => {
                    self.push(at.max(self.now), Event::WorkerTimer(n, timer));
                }
            }
        }
    }

    /// Starts queued leases on node `n`'s free executor slots.
    fn start_queued(&mut self, n: usize) {
        while self.nodes[n].running.len() < self.nodes[n].slots {
            let Some(job) = self.nodes[n].queue.pop_front() else {
                return;
            };
            if !self.nodes[n].worker.holds(&job) {
                continue; // withdrawn or expired while queued
            }
            self.nodes[n].running.insert(job);
            let run_ms = self.rng.gen_range(20..300) * self.load.slowdown;
            let at = self.now + run_ms;
            self.push(
                at,
                Event::Deliver {
                    from: n,
                    to: n,
                    msg: Msg::ExecDone(job),
                },
            );
        }
    }

    /// Feeds `input` to node `n`'s market and carries out what it asks.
    fn market(&mut self, n: usize, input: Input) {
        self.market_outs(n, input);
    }

    /// [`Sim::market`], returning the market's outputs too.
    fn market_outs(&mut self, n: usize, input: Input) -> Vec<Output> {
        let outs = self.nodes[n].market.handle(input, self.now);
        for out in outs.clone() {
            match out {
                Output::Announce(job) => {
                    let attempt = self.nodes[n]
                        .market
                        .job(&job_id(&job))
                        .map_or(1, |r| r.announce_attempts.max(1));
                    self.broadcast(n, Msg::Announce(job, attempt));
                }
                Output::SendLease { worker, lease } => {
                    let to = self.by_peer[&worker];
                    self.send(n, to, Msg::Lease(lease));
                }
                Output::CancelLease { worker, job_id } => {
                    let to = self.by_peer[&worker];
                    self.send(n, to, Msg::Cancel(job_id));
                }
                Output::Verified { job_id, .. } | Output::Failed { job_id, .. } => {
                    self.finished += 1;
                    self.settle(n, job_id);
                }
                Output::LockEscrow {
                    job_id,
                    amount,
                    max_price,
                    redundancy,
                } => {
                    if self.chain.is_none() {
                        self.market(n, Input::EscrowLocked(job_id));
                    } else {
                        self.settlement(n, move |ledger| settlement::Input::NeedEscrow {
                            job_id,
                            amount,
                            max_price,
                            redundancy,
                            ledger,
                        });
                    }
                }
                Output::Reputation { peer, delta, .. } => self.broadcast(
                    n,
                    Msg::Reputation {
                        subject: peer,
                        delta,
                    },
                ),
                // Answered by the heartbeat's sender (`Msg::HeartbeatAnswer`).
                Output::LeaseExtended { .. } | Output::Persist(_) => {}
            }
        }
        if let Some(d) = self.nodes[n].market.next_deadline()
            && self.nodes[n].tick_at.is_none_or(|t| d < t)
        {
            self.nodes[n].tick_at = Some(d);
            let at = d.max(self.now);
            self.push(at, Event::Tick(n));
        }
        outs
    }

    /// Node `n`'s job is final: its settlement machine owes its settlement (the node's core
    /// does the same).
    fn settle(&mut self, n: usize, job_id: JobId) {
        let rec = self.nodes[n].market.job(&job_id);
        let job = settlement::Finished {
            job_id,
            evidence: rec.and_then(|r| r.outcome.as_ref().map(|_| r.evidence())),
            credit: rec
                .filter(|r| r.job.payload.credit)
                .map(|r| Box::new(r.job.clone())),
        };
        self.settlement(n, move |ledger| settlement::Input::Final { job, ledger });
    }

    fn summarize(&self, ids: &[(usize, JobId)]) -> Summary {
        let mut jobs = Vec::new();
        let (mut correct, mut wrong) = (0, 0);
        let mut failed = Vec::new();
        let mut expired = 0;
        let mut unfinished = Vec::new();
        for (s, id) in ids {
            let rec = self.nodes[*s].market.job(id).expect("job tracked");
            if !rec.is_finished() {
                unfinished.push(*s);
            }
            if let Some(f) = &rec.fail_reason {
                failed.push(f.to_string());
            }
            expired += rec
                .leases
                .iter()
                .filter(|l| l.status == agora_market::LeaseStatus::Expired)
                .count();
            let out_hash = match &rec.outcome {
                Some(Outcome::Completed { output_hash, .. }) => Some(*output_hash),
                _ => None,
            };
            if rec.state == JobState::Verified {
                if out_hash == Some(correct_output(id)) {
                    correct += 1;
                } else {
                    wrong += 1;
                }
            }
            if std::env::var("SIM_DEBUG").is_ok() && !rec.is_finished() {
                eprintln!("{}", rec.summary());
                for e in &rec.timeline {
                    eprintln!("  {} {}", e.at_ms, e.event);
                }
                eprintln!("{:?}", rec.leases);
            }
            jobs.push((
                *id,
                rec.state,
                out_hash,
                rec.quorum.len(),
                rec.results.len(),
            ));
        }
        let books: Vec<Vec<(PeerId, i64)>> = self
            .nodes
            .iter()
            .map(|n| n.market.reputation().snapshot())
            .collect();
        let totals = self
            .nodes
            .iter()
            .map(|subject| {
                self.nodes
                    .iter()
                    .map(|n| n.market.reputation().score(&subject.peer))
                    .sum()
            })
            .collect();
        let (mut slashed_honest, mut slashed_byzantine) = (0, 0);
        if let Some(c) = &self.chain {
            for n in &self.nodes {
                let stake = c.ledger.account(&account(&n.peer)).map_or(0, |a| a.stake);
                if stake < STAKE {
                    if n.byzantine {
                        slashed_byzantine += 1;
                    } else {
                        slashed_honest += 1;
                    }
                }
            }
        }
        Summary {
            settled: self
                .chain
                .as_ref()
                .map_or(0, |c| c.ledger.totals().settled_jobs),
            slashed_honest,
            slashed_byzantine,
            short: self.chain.as_ref().map_or(0, |c| c.short),
            supply_conserved: self.chain.as_ref().is_none_or(|c| c.conserved),
            state_root: self.chain.as_ref().map(|c| c.ledger.state_root()),
            jobs,
            books,
            correct,
            wrong,
            totals,
            end_ms: self.now,
            failed,
            max_out: self.max_out,
            expired,
            unfinished,
            events: self.events,
        }
    }
}

#[test]
fn hundred_jobs_all_verified() {
    let s = Sim::new(7, &[]).run();
    assert_eq!(s.wrong, 0);
    assert_eq!(s.correct, JOBS, "{:?}", s.jobs);
    assert!(
        s.jobs.iter().all(|j| j.3 == 3 && j.4 == 3),
        "no extra replicas needed"
    );
    // Nobody honest is penalized. Work goes by price (10 + i % 5): with cheap capacity free,
    // the dearest workers may get none, but most nodes earn, the cheapest most.
    assert!(s.totals.iter().all(|t| *t >= 0), "{:?}", s.totals);
    let earning = s.totals.iter().filter(|t| **t > 0).count();
    assert!(earning >= NODES / 2, "{earning} earned: {:?}", s.totals);
    assert!(
        s.totals[0] + s.totals[5] > s.totals[4] + s.totals[9],
        "{:?}",
        s.totals
    );
}

#[test]
fn byzantine_workers_never_win_and_sink() {
    let byz = [7, 8, 9];
    let s = Sim::new(42, &byz).run();
    assert_eq!(s.wrong, 0, "no wrong verdict accepted");
    assert_eq!(s.correct, JOBS, "{:?}", s.jobs);
    let worst_honest = (0..NODES)
        .filter(|i| !byz.contains(i))
        .map(|i| s.totals[i])
        .min()
        .expect("honest");
    let best_byzantine = byz.iter().map(|i| s.totals[*i]).max().expect("byzantine");
    assert!(
        best_byzantine < worst_honest,
        "byzantine {best_byzantine} vs honest {worst_honest}: {:?}",
        s.totals
    );
    assert!(
        s.jobs.iter().any(|j| j.4 > 3),
        "disagreements were settled by extra replicas"
    );
}

#[test]
fn same_seed_same_run() {
    let a = Sim::new(1234, &[8, 9]).run();
    let b = Sim::new(1234, &[8, 9]).run();
    assert_eq!(a, b);
    let c = Sim::new(1235, &[8, 9]).run();
    assert_eq!(c.wrong, 0);
}

#[test]
fn several_seeds_hold() {
    let byz = [7, 8, 9];
    for seed in 0..40 {
        let s = Sim::new(seed, &byz).run();
        assert_eq!((s.correct, s.wrong), (JOBS, 0), "seed {seed}");
        let worst_honest = (0..7).map(|i| s.totals[i]).min().expect("honest");
        let best_byzantine = byz.iter().map(|i| s.totals[*i]).max().expect("byzantine");
        assert!(best_byzantine < worst_honest, "seed {seed}: {:?}", s.totals);
    }
}

/// A CPU hog in simulated time: every execution 20 times slower, all 100 jobs submitted within
/// one second with a deadline of 30 s after submission, more work than the network can do in
/// 30 s. Before deadlines counted from the first accepted lease (and before heartbeats and
/// admission control) most of these jobs failed by deadline.
const HOG: Load = Load {
    slowdown: 20,
    burst_ms: 1_000,
    deadline_ms: 30_000,
    crash: None,
    wall_ms: 6_000,
    ..QUIET
};

#[test]
fn under_load_every_job_verifies_slower_never_failed() {
    let s = Sim::loaded(7, &[], HOG).run();
    assert_eq!(s.failed, Vec::<String>::new(), "no job failed");
    assert_eq!((s.correct, s.wrong), (JOBS, 0));
    assert!(
        s.end_ms > HOG.burst_ms + HOG.deadline_ms,
        "the load is real: the run outlasts every job's 30 s budget ({} ms)",
        s.end_ms
    );
    assert_eq!(s.expired, 0, "alive workers keep their leases (heartbeats)");
    assert!(s.max_out.0 <= s.max_out.1);
}

#[test]
fn under_load_with_byzantine_workers_and_a_crash_nothing_wrong_is_accepted() {
    let load = Load {
        crash: Some((4, 20_000)),
        ..HOG
    };
    let byz = [7, 8, 9];
    let s = Sim::loaded(42, &byz, load).run();
    assert_eq!(s.wrong, 0, "no wrong verdict accepted");
    assert_eq!(s.failed, Vec::<String>::new());
    // Only the crashed node's own submissions (it is their submitter) stay unfinished.
    assert!(s.unfinished.iter().all(|n| *n == 4), "{:?}", s.unfinished);
    assert_eq!(s.correct + s.unfinished.len(), JOBS);
    assert!(s.correct >= JOBS - JOBS / NODES);
    assert!(
        s.expired > 0,
        "the crashed worker's leases expired and were re-leased"
    );
    let b = Sim::loaded(42, &byz, load).run();
    assert_eq!(s, b, "deterministic under load too");
}

/// Fifty nodes, 10,000 jobs over 100 simulated seconds (about a third of the network's
/// executor capacity at r = 3), the ledger on, five Byzantine workers.
const FIFTY: Load = Load {
    nodes: 50,
    jobs: 10_000,
    burst_ms: 100_000,
    ledger: true,
    ..QUIET
};

const FIFTY_BYZANTINE: [usize; 5] = [45, 46, 47, 48, 49];

#[test]
fn slow_scenario_ten_thousand_jobs_on_fifty_nodes_verified_paid_and_slashed() {
    let t = std::time::Instant::now();
    let s = Sim::loaded(2026, &FIFTY_BYZANTINE, FIFTY).run();
    let took = t.elapsed();
    eprintln!(
        "10,000 jobs on 50 nodes: {} events, {} ms simulated, {took:?} real",
        s.events, s.end_ms
    );
    assert_eq!(s.wrong, 0, "no wrong verdict accepted");
    assert_eq!(s.correct, FIFTY.jobs, "failed: {:?}", s.failed);
    assert!(s.supply_conserved, "supply conserved after every block");
    assert_eq!(s.short, 0, "every settled worker paid the price it signed");
    // Every verified job is settled once its last block is in (the run stops with the last
    // verdict; the settlements of the last few jobs may still be in the mempool).
    assert!(
        s.settled as usize + 50 >= s.correct,
        "{} of {} settled",
        s.settled,
        s.correct
    );
    assert_eq!(s.slashed_honest, 0, "no honest worker slashed");
    assert_eq!(
        s.slashed_byzantine,
        FIFTY_BYZANTINE.len(),
        "every saboteur slashed"
    );
}

#[test]
fn with_the_ledger_the_same_seed_gives_the_same_run() {
    let load = Load {
        ledger: true,
        ..QUIET
    };
    let a = Sim::loaded(77, &[9], load).run();
    let b = Sim::loaded(77, &[9], load).run();
    assert_eq!(a, b);
    assert!(a.state_root.is_some());
    assert_eq!((a.correct, a.wrong, a.short), (JOBS, 0, 0));
    assert!(a.supply_conserved);
    assert_eq!((a.slashed_honest, a.slashed_byzantine), (0, 1));
    let c = Sim::loaded(78, &[9], load).run();
    assert_ne!(a.state_root, c.state_root, "another seed, another run");
}
