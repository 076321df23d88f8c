use super::*;
use crate::index::tests::{ad, spec};
use agora_types::Hash;
use agora_types::job::JobSpec;
use agora_types::{Keypair, sign::Signed};

fn keypair(i: u8) -> Keypair {
    Keypair::ed25519_from_bytes([i; 32]).expect("key")
}

fn peer(i: u8) -> PeerId {
    keypair(i).public().to_peer_id()
}

fn signed(spec: JobSpec) -> SignedJob {
    Signed::sign(&keypair(200), spec, 1).expect("sign")
}

/// A market that always auctions (the fast path has tests of its own below).
fn market() -> Market {
    let mut config = Config::local();
    config.direct_lease = false;
    Market::new(config, peer(200))
}

/// A market with the fast path on, whose index knows workers 1..=n at `price`, free, at time 0.
fn direct_market(prices: &[u64]) -> Market {
    let mut m = Market::new(Config::local(), peer(200));
    for (i, price) in prices.iter().enumerate() {
        m.handle(
            Input::CapabilityAd {
                from: peer(i as u8 + 1),
                ad: ad(&["wasm"], 1 << 30, *price, 2, 1),
                ip: None,
            },
            0,
        );
    }
    m
}

/// A market whose index knows workers 1..=n, capable, free, at price 10.
fn market_with(n: u8) -> Market {
    let mut m = market();
    for i in 1..=n {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, 10, 2, 1),
                ip: None,
            },
            0,
        );
    }
    m
}

fn bid(m: &mut Market, i: u8, id: JobId, price: u64, now: UnixMillis) -> Vec<Output> {
    m.handle(
        Input::Bid {
            from: peer(i),
            bid: Bid {
                job_id: id,
                price,
                free_slots: 1,
                total_slots: 2,
            },
            rtt_ms: Some(10),
            ip: None,
        },
        now,
    )
}

/// Bids from every worker in `workers` at `now`, then lets the window close; returns who was
/// leased (in order).
fn bid_all(
    m: &mut Market,
    workers: std::ops::RangeInclusive<u8>,
    id: JobId,
    now: UnixMillis,
) -> Vec<PeerId> {
    let mut got = Vec::new();
    for i in workers {
        got.extend(leased(&bid(m, i, id, 10, now)));
    }
    got.extend(leased(&m.handle(Input::Tick, now + 150)));
    got
}

fn ok(tag: &str) -> Outcome {
    Outcome::Completed {
        exit_code: 0,
        output_hash: Hash::of(tag.as_bytes()),
        fuel_used: 7,
        compared: None,
    }
}

fn result(m: &mut Market, i: u8, id: JobId, outcome: Outcome, now: UnixMillis) -> Vec<Output> {
    m.handle(
        Input::Result {
            from: peer(i),
            result: WorkResult {
                job_id: id,
                outcome,
                price: 0,
            },
            signed: None,
            stderr: vec![],
        },
        now,
    )
}

fn leased(out: &[Output]) -> Vec<PeerId> {
    out.iter()
        .filter_map(|o| match o {
            Output::SendLease { worker, .. } => Some(*worker),
            _ => None,
        })
        .collect()
}

fn announces(out: &[Output]) -> usize {
    out.iter()
        .filter(|o| matches!(o, Output::Announce(_)))
        .count()
}

fn reps(out: &[Output]) -> Vec<(PeerId, ReputationAction)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Reputation { peer, action, .. } => Some((*peer, *action)),
            _ => None,
        })
        .collect()
}

fn idx(p: PeerId) -> u8 {
    (1..=50).find(|i| peer(*i) == p).expect("known peer")
}

fn submit(m: &mut Market, s: JobSpec, now: UnixMillis) -> (JobId, Vec<Output>) {
    let job = signed(s);
    let id = job_id(&job);
    let out = m.handle(Input::Submit(job), now);
    (id, out)
}

#[test]
fn happy_path_early_close_and_verify() {
    let mut m = market_with(3);
    let (id, out) = submit(&mut m, spec(), 0);
    assert_eq!(announces(&out), 1);
    assert!(out.contains(&Output::Persist(id)));
    assert_eq!(m.job(&id).expect("rec").state, JobState::Bidding);
    assert_eq!(m.next_deadline(), Some(150));
    assert!(
        bid(&mut m, 1, id, 10, 5).is_empty(),
        "a bid alone is neither logged nor persisted"
    );
    assert!(leased(&bid(&mut m, 2, id, 10, 6)).is_empty());
    // The third bid covers every free worker in the index: the window closes early.
    let out = bid(&mut m, 3, id, 10, 7);
    let mut ws: Vec<u8> = leased(&out).into_iter().map(idx).collect();
    ws.sort();
    assert_eq!(ws, vec![1, 2, 3]);
    let lease_expiry = out
        .iter()
        .find_map(|o| match o {
            Output::SendLease { lease, .. } => Some(lease.expires_ms),
            _ => None,
        })
        .expect("lease");
    assert_eq!(lease_expiry, 7 + 1_000 + 2_000 + 1_000);
    assert_eq!(m.job(&id).expect("rec").state, JobState::Running);
    m.handle(
        Input::LeaseAccepted {
            job_id: id,
            worker: peer(1),
        },
        8,
    );
    assert_eq!(
        m.job(&id)
            .expect("rec")
            .lease_of(&peer(1))
            .expect("lease")
            .status,
        LeaseStatus::Accepted
    );
    assert!(
        result(&mut m, 1, id, ok("out"), 100)
            .iter()
            .all(|o| matches!(o, Output::Persist(_)))
    );
    result(&mut m, 2, id, ok("out"), 110);
    let out = result(&mut m, 3, id, ok("out"), 120);
    let verified = out
        .iter()
        .find_map(|o| match o {
            Output::Verified {
                job_id,
                outcome,
                workers,
            } => Some((*job_id, outcome.clone(), workers.len())),
            _ => None,
        })
        .expect("verified");
    assert_eq!(verified, (id, ok("out"), 3));
    assert_eq!(reps(&out).len(), 3);
    assert!(
        reps(&out)
            .iter()
            .all(|(_, a)| *a == ReputationAction::ResultAgreed)
    );
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::Persist(_)))
            .count(),
        1,
        "one Persist per changed record per call"
    );
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.state, JobState::Verified);
    assert_eq!(rec.finished_ms, Some(120));
    assert!(rec.results.iter().all(|r| r.agreed == Some(true)));
    assert_eq!(m.reputation().score(&peer(1)), 5);
    assert_eq!(m.next_deadline(), None);
    assert!(rec.summary().contains("verified"), "{}", rec.summary());
}

#[test]
fn window_closes_on_tick_and_picks_cheapest() {
    let mut m = market_with(6);
    let (id, _) = submit(&mut m, spec(), 0);
    for (i, price) in [(1, 50), (2, 5), (3, 40), (4, 6), (5, 7)] {
        assert!(leased(&bid(&mut m, i, id, price, 10)).is_empty());
    }
    assert!(m.handle(Input::Tick, 149).is_empty());
    let out = m.handle(Input::Tick, 150);
    let mut ws: Vec<u8> = leased(&out).into_iter().map(idx).collect();
    ws.sort();
    assert_eq!(ws, vec![2, 4, 5]);
    assert_eq!(m.job(&id).expect("rec").waiting, None);
}

#[test]
fn bids_filtered_replaced_and_bounded() {
    let mut cfg = Config::local();
    cfg.max_bids_per_job = 2;
    let mut m = Market::new(cfg, peer(200));
    let (id, _) = submit(&mut m, spec(), 0);
    let mut s = spec();
    s.nonce = 99;
    bid(&mut m, 1, id, 500, 1); // over max price
    assert!(m.job(&id).expect("rec").bids.is_empty());
    bid(&mut m, 1, id, 50, 2);
    bid(&mut m, 1, id, 40, 3); // replaces
    assert_eq!(m.job(&id).expect("rec").bids.len(), 1);
    assert_eq!(m.job(&id).expect("rec").bids[0].price, 40);
    bid(&mut m, 2, id, 60, 4);
    bid(&mut m, 3, id, 90, 5); // worse than all: dropped
    bid(&mut m, 4, id, 1, 6); // better: displaces the worst (60)
    let rec = m.job(&id).expect("rec");
    let mut prices: Vec<u64> = rec.bids.iter().map(|b| b.price).collect();
    prices.sort();
    assert_eq!(prices, vec![1, 40]);
    // Bids on unknown jobs are ignored.
    assert!(bid(&mut m, 1, Hash::of(b"nope"), 1, 7).is_empty());
}

#[test]
fn disagreement_adds_a_replica_then_three_of_four() {
    let mut m = market_with(4);
    let (id, _) = submit(&mut m, spec(), 0);
    let first = bid_all(&mut m, 1..=4, id, 1);
    assert_eq!(first.len(), 3);
    let spare = (1..=4).find(|i| !first.contains(&peer(*i))).expect("spare");
    let (a, b, c) = (idx(first[0]), idx(first[1]), idx(first[2]));
    assert!(leased(&result(&mut m, a, id, ok("good"), 200)).is_empty());
    assert!(leased(&result(&mut m, c, id, ok("good"), 210)).is_empty());
    let out = result(&mut m, b, id, ok("evil"), 220);
    assert!(!out.iter().any(|o| matches!(o, Output::Verified { .. })));
    assert_eq!(leased(&out), vec![peer(spare)], "one replica added");
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.target_replicas, 4);
    assert_eq!(rec.state, JobState::Running);
    let out = result(&mut m, spare, id, ok("good"), 300);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Verified { workers, .. } if workers.len() == 3))
    );
    let r = reps(&out);
    assert!(r.contains(&(peer(b), ReputationAction::InvalidCompute)));
    assert_eq!(
        r.iter()
            .filter(|(_, a)| *a == ReputationAction::ResultAgreed)
            .count(),
        3
    );
    assert_eq!(m.reputation().score(&peer(b)), -75);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.outcome, Some(ok("good")));
    assert_eq!(
        rec.results
            .iter()
            .find(|r| r.worker == peer(b))
            .expect("b")
            .agreed,
        Some(false)
    );
}

#[test]
fn early_disagreement_adds_a_replica_before_the_last_result() {
    let mut m = market_with(4);
    let (id, _) = submit(&mut m, spec(), 0);
    let first = bid_all(&mut m, 1..=4, id, 1);
    result(&mut m, idx(first[0]), id, ok("good"), 200);
    // good vs evil with one result outstanding: no verdict can reach 3 votes without a 4th.
    let out = result(&mut m, idx(first[1]), id, ok("evil"), 210);
    assert_eq!(leased(&out).len(), 1);
    assert_eq!(m.job(&id).expect("rec").target_replicas, 4);
}

#[test]
fn no_quorum_when_cap_is_hit() {
    let mut cfg = Config::local();
    cfg.max_extra_replicas = 1;
    cfg.direct_lease = false;
    let mut m = Market::new(cfg, peer(200));
    for i in 1..=5 {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, 10, 2, 1),
                ip: None,
            },
            0,
        );
    }
    let mut s = spec();
    s.redundancy = 2;
    let (id, _) = submit(&mut m, s, 0);
    let first = bid_all(&mut m, 1..=5, id, 1);
    assert_eq!(first.len(), 2);
    result(&mut m, idx(first[0]), id, ok("a"), 200);
    let out = result(&mut m, idx(first[1]), id, ok("b"), 201);
    let third = leased(&out);
    assert_eq!(third.len(), 1);
    let out = result(&mut m, idx(third[0]), id, ok("c"), 202);
    assert!(out.contains(&Output::Failed {
        job_id: id,
        reason: FailReason::NoQuorum { results: 3 }
    }));
    assert!(reps(&out).is_empty(), "nobody is blamed without a verdict");
}

#[test]
fn lease_expiry_releases_to_next_bidder() {
    let mut m = market_with(4);
    let (id, _) = submit(&mut m, spec(), 0);
    for i in 1..=3 {
        assert!(leased(&bid(&mut m, i, id, 10, 1)).is_empty());
    }
    let out = bid(&mut m, 4, id, 10, 2); // early close: 4 unused bids >= 4 free
    let first = leased(&out);
    assert_eq!(first.len(), 3);
    let spare = (1..=4).find(|i| !first.contains(&peer(*i))).expect("spare");
    let expires = m.job(&id).expect("rec").leases[0].expires_ms;
    assert_eq!(m.next_deadline(), Some(expires));
    result(&mut m, idx(first[0]), id, ok("x"), 100);
    result(&mut m, idx(first[1]), id, ok("x"), 100);
    let out = m.handle(Input::Tick, expires);
    let silent = first[2];
    assert!(reps(&out).contains(&(silent, ReputationAction::LeaseExpired)));
    assert!(out.contains(&Output::CancelLease {
        worker: silent,
        job_id: id
    }));
    assert_eq!(leased(&out), vec![peer(spare)]);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.lease_failures, 1);
    assert_eq!(
        rec.lease_of(&silent).expect("lease").status,
        LeaseStatus::Expired
    );
    // A late result from the expired worker is ignored, without blame.
    let out = result(&mut m, idx(silent), id, ok("x"), expires + 1);
    assert!(out.is_empty());
    let out = result(&mut m, spare, id, ok("x"), expires + 2);
    assert!(out.iter().any(|o| matches!(o, Output::Verified { .. })));
    assert_eq!(m.reputation().score(&silent), -10);
}

#[test]
fn disconnect_and_refusal_release() {
    let mut m = market_with(5);
    let (id, _) = submit(&mut m, spec(), 0);
    let first = bid_all(&mut m, 1..=5, id, 1);
    assert_eq!(first.len(), 3);
    let out = m.handle(Input::PeerDisconnected(first[0]), 200);
    assert!(reps(&out).contains(&(first[0], ReputationAction::Disconnected)));
    let second = leased(&out);
    assert_eq!(second.len(), 1);
    assert!(!first.contains(&second[0]));
    let out = m.handle(
        Input::LeaseRefused {
            job_id: id,
            worker: first[1],
            reason: "x".repeat(10_000),
        },
        210,
    );
    assert!(reps(&out).contains(&(first[1], ReputationAction::LeaseRefused)));
    let third = leased(&out);
    assert_eq!(third.len(), 1);
    assert!(!first.contains(&third[0]) && third[0] != second[0]);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.lease_failures, 2);
    assert!(
        rec.timeline.iter().all(|e| e.event.len() < 400),
        "reasons truncated"
    );
    // A disconnect of someone without a lease changes nothing.
    assert!(m.handle(Input::PeerDisconnected(peer(42)), 220).is_empty());
    assert_eq!(m.reputation().score(&first[1]), -1);
}

#[test]
fn too_many_lease_failures_exhaust_the_job() {
    let mut cfg = Config::local();
    cfg.max_attempts = 1;
    let mut m = Market::new(cfg, peer(200));
    let mut s = spec();
    s.redundancy = 1;
    let (id, _) = submit(&mut m, s, 0);
    let w = bid_all(&mut m, 1..=4, id, 1);
    assert_eq!(w.len(), 1);
    let refuse = |m: &mut Market, w: PeerId, now| {
        m.handle(
            Input::LeaseRefused {
                job_id: id,
                worker: w,
                reason: "busy".into(),
            },
            now,
        )
    };
    let w2 = leased(&refuse(&mut m, w[0], 200));
    let out = refuse(&mut m, w2[0], 201);
    assert!(out.contains(&Output::Failed {
        job_id: id,
        reason: FailReason::Exhausted { lease_failures: 2 }
    }));
}

#[test]
fn no_bids_reannounce_with_growing_backoff_and_wait_reasons() {
    // Nobody known at all: NoCapableWorker.
    let mut m = market();
    let (id, _) = submit(&mut m, spec(), 0);
    let mut announced_at = vec![0];
    let mut now = 0;
    while announced_at.len() < 7 {
        now = m.next_deadline().expect("timer");
        let out = m.handle(Input::Tick, now);
        if announces(&out) > 0 {
            announced_at.push(now);
        }
    }
    let gaps: Vec<u64> = announced_at.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, vec![200, 400, 800, 1600, 3000, 3000]);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.announce_attempts, 7);
    assert_eq!(rec.state, JobState::Bidding);
    let w = rec.waiting.clone().expect("waiting");
    assert!(matches!(w, WaitReason::NoCapableWorker { .. }), "{w}");
    assert!(w.to_string().contains("wasm"));

    // Capable but too dear: OverMaxPrice.
    let mut m = market();
    m.handle(
        Input::CapabilityAd {
            from: peer(1),
            ad: ad(&["wasm"], 1 << 30, 500, 2, 1),
            ip: None,
        },
        now,
    );
    let (id, _) = submit(&mut m, spec(), now);
    m.handle(Input::Tick, now + 150);
    assert_eq!(
        m.job(&id).expect("rec").waiting,
        Some(WaitReason::OverMaxPrice {
            cheapest: 500,
            max_price: 100
        })
    );

    // Capable, affordable, all busy: AllWorkersBusy.
    let mut m = market();
    for i in 1..=2 {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, 10, 0, 1),
                ip: None,
            },
            now,
        );
    }
    let (id, _) = submit(&mut m, spec(), now);
    m.handle(Input::Tick, now + 150);
    assert_eq!(
        m.job(&id).expect("rec").waiting,
        Some(WaitReason::AllWorkersBusy { capable: 2 })
    );

    // Free workers known, only one bid: AwaitingBids, and the one bidder is leased.
    let mut m = market_with(3);
    let (id, _) = submit(&mut m, spec(), 0);
    bid(&mut m, 1, id, 10, 1);
    let out = m.handle(Input::Tick, 150);
    assert_eq!(leased(&out), vec![peer(1)]);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.waiting, Some(WaitReason::AwaitingBids));
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.next_announce_ms, Some(200));
    // A late bid is leased at once.
    let out = bid(&mut m, 2, id, 10, 160);
    assert_eq!(leased(&out), vec![peer(2)]);
    // Re-announce; the last bid fills the job and clears the wait.
    let out = m.handle(Input::Tick, 200);
    assert_eq!(announces(&out), 1);
    let out = bid(&mut m, 3, id, 10, 210);
    assert_eq!(leased(&out), vec![peer(3)]);
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.waiting, None);
    assert_eq!(rec.next_announce_ms, None);
    assert_eq!(rec.backoff_ms, 200, "backoff reset once served");
}

#[test]
fn agreed_failure_fails_the_job_without_blame() {
    let mut m = market_with(3);
    let (id, _) = submit(&mut m, spec(), 0);
    for i in 1..=3 {
        bid(&mut m, i, id, 10, 1);
    }
    let fuel = |d: &str| Outcome::Failed {
        kind: "fuel".into(),
        detail: d.into(),
    };
    result(&mut m, 1, id, fuel("out of fuel after 1000"), 10);
    result(&mut m, 2, id, fuel("fuel exhausted"), 11);
    let out = result(&mut m, 3, id, fuel("no fuel"), 12);
    assert!(out.contains(&Output::Failed {
        job_id: id,
        reason: FailReason::Failed {
            kind: "fuel".into(),
            detail: "out of fuel after 1000".into()
        }
    }));
    assert!(!out.iter().any(|o| matches!(o, Output::Verified { .. })));
    assert!(
        reps(&out)
            .iter()
            .all(|(_, a)| *a == ReputationAction::ResultAgreed)
    );
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.quorum.len(), 3);
}

#[test]
fn deadline_and_cancel() {
    let mut m = market_with(3);
    let mut s = spec();
    s.deadline_ms = 3_000;
    let (id, _) = submit(&mut m, s, 0);
    let workers = bid_all(&mut m, 1..=3, id, 1);
    assert_eq!(workers.len(), 3);
    for w in &workers {
        m.handle(
            Input::LeaseAccepted {
                job_id: id,
                worker: *w,
            },
            200,
        );
    }
    assert_eq!(m.job(&id).unwrap().started_ms, Some(200));
    // The budget (3 s from the first acceptance) is spent at 3_200, but the replicas hold live
    // leases: the deadline waits for them (their expiry), it does not cut them off.
    let expires = m.job(&id).unwrap().leases[0].expires_ms;
    assert!(expires > 3_200);
    assert_eq!(m.next_deadline(), Some(expires));
    assert!(
        !m.handle(Input::Tick, 3_300)
            .iter()
            .any(|o| matches!(o, Output::Failed { .. }))
    );
    // They fall silent: their leases expire (and are cancelled), the job looks for others.
    let out = m.handle(Input::Tick, expires);
    assert!(!out.iter().any(|o| matches!(o, Output::Failed { .. })));
    assert_eq!(
        out.iter()
            .filter(|o| matches!(o, Output::CancelLease { .. }))
            .count(),
        3
    );
    // Once no capable worker is left (their ads lapse), the spent budget ends the job.
    let ttl = Config::local().ad_ttl_ms;
    let mut now = expires;
    let failed_at = loop {
        now = m.next_deadline().expect("timer").max(now + 1);
        let out = m.handle(Input::Tick, now);
        if out.contains(&Output::Failed {
            job_id: id,
            reason: FailReason::Deadline,
        }) {
            break now;
        }
        assert!(now < expires + 2 * ttl, "{}", m.job(&id).unwrap().summary());
    };
    assert!(
        failed_at > ttl,
        "not while the workers were still advertised"
    );
    // Results after the end are ignored without blame.
    assert!(result(&mut m, 1, id, ok("x"), 3_001).is_empty());

    // Already past its deadline at submission (and no worker could take it anyway).
    let mut s = spec();
    s.deadline_ms = 10;
    let (id2, out) = submit(&mut m, s, 20);
    assert_eq!(announces(&out), 0);
    assert!(out.contains(&Output::Failed {
        job_id: id2,
        reason: FailReason::Deadline
    }));

    let mut s = spec();
    s.nonce = 3;
    let (id3, _) = submit(&mut m, s, 30);
    let out = m.handle(Input::Cancel(id3), 31);
    assert!(out.contains(&Output::Failed {
        job_id: id3,
        reason: FailReason::Cancelled
    }));
    assert!(m.handle(Input::Cancel(id3), 32).is_empty(), "idempotent");
}

#[test]
fn unsolicited_results_are_blamed() {
    let mut m = market_with(3);
    let (id, _) = submit(&mut m, spec(), 0);
    let out = result(&mut m, 9, id, ok("x"), 5);
    assert_eq!(reps(&out), vec![(peer(9), ReputationAction::BadMessage)]);
    assert!(m.job(&id).expect("rec").results.is_empty());
    // Unknown job: ignored.
    assert!(result(&mut m, 9, Hash::of(b"?"), ok("x"), 6).is_empty());
    // Duplicate result: ignored.
    for i in 1..=3 {
        bid(&mut m, i, id, 10, 7);
    }
    result(&mut m, 1, id, ok("x"), 8);
    assert!(result(&mut m, 1, id, ok("y"), 9).is_empty());
    assert_eq!(m.job(&id).expect("rec").results.len(), 1);
}

#[test]
fn duplicates_and_job_table_bound() {
    let mut cfg = Config::local();
    cfg.max_jobs = 2;
    let mut m = Market::new(cfg, peer(200));
    for i in 1..=3 {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, 10, 2, 1),
                ip: None,
            },
            0,
        );
    }
    let job = signed(spec());
    let a = job_id(&job);
    m.handle(Input::Submit(job.clone()), 0);
    assert!(
        m.handle(Input::Submit(job), 1).is_empty(),
        "duplicate ignored"
    );
    let mut s = spec();
    s.nonce = 2;
    let (b, _) = submit(&mut m, s, 2);
    let mut s = spec();
    s.nonce = 3;
    let (c, out) = submit(&mut m, s, 3);
    assert!(out.contains(&Output::Failed {
        job_id: c,
        reason: FailReason::TooManyJobs { max: 2 }
    }));
    assert!(m.job(&c).is_none());
    m.handle(Input::Cancel(a), 4);
    let (d, out) = submit(
        &mut m,
        {
            let mut s = spec();
            s.nonce = 4;
            s
        },
        5,
    );
    assert!(out.contains(&Output::Persist(a)), "eviction is persisted");
    assert!(m.job(&a).is_none());
    assert!(m.job(&b).is_some() && m.job(&d).is_some());
    assert_eq!(m.jobs().count(), 2);
}

#[test]
fn restore_after_restart_continues_to_verified() {
    let mut m = market_with(4);
    let (id, _) = submit(&mut m, spec(), 0);
    // A second job still bidding at the "crash".
    let mut s = spec();
    s.nonce = 2;
    let (bidding, _) = submit(&mut m, s, 0);
    let first = bid_all(&mut m, 1..=4, id, 1);
    assert_eq!(first.len(), 3);
    result(&mut m, idx(first[0]), id, ok("x"), 200);
    m.handle(
        Input::LeaseAccepted {
            job_id: id,
            worker: first[1],
        },
        201,
    );
    // Persist everything as the node would, and "restart".
    let saved: Vec<String> = m
        .jobs()
        .map(|r| serde_json::to_string(r).expect("json"))
        .collect();
    let rep = serde_json::to_string(m.reputation()).expect("json");
    drop(m);

    let records: Vec<JobRecord> = saved
        .iter()
        .map(|s| serde_json::from_str(s).expect("parse"))
        .collect();
    let mut m = market_with(4);
    *m.reputation_mut() = serde_json::from_str(&rep).expect("parse");
    let out = m.restore(records.clone(), 1_000);
    // The bidding job is announced again; the running one is not (its leases are out).
    assert_eq!(announces(&out), 1);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Announce(j) if job_id(j) == bidding))
    );
    assert!(out.contains(&Output::Persist(id)));
    let rec = m.job(&id).expect("restored");
    assert_eq!(rec.results.len(), 1);
    assert_eq!(rec.active_leases().count(), 2);
    assert_eq!(
        rec.lease_of(&first[1]).expect("lease").status,
        LeaseStatus::Accepted
    );
    // Restoring twice is a no-op.
    assert!(m.restore(records, 1_001).is_empty());
    result(&mut m, idx(first[1]), id, ok("x"), 1_100);
    let out = result(&mut m, idx(first[2]), id, ok("x"), 1_200);
    assert!(
        out.iter()
            .any(|o| matches!(o, Output::Verified { job_id, .. } if *job_id == id))
    );
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.state, JobState::Verified);
    assert!(rec.timeline.iter().any(|e| e.event.contains("restored")));
}

#[test]
fn restore_skips_mismatched_records() {
    let mut m = market();
    let (id, _) = submit(&mut m, spec(), 0);
    let mut rec = m.job(&id).expect("rec").clone();
    rec.id = Hash::of(b"forged");
    let mut fresh = market();
    assert!(fresh.restore(vec![rec], 10).is_empty());
    assert_eq!(fresh.jobs().count(), 0);
}

#[test]
fn timeline_is_bounded() {
    let mut cfg = Config::local();
    cfg.max_timeline = 5;
    let mut m = Market::new(cfg, peer(200));
    let (id, _) = submit(&mut m, spec(), 0);
    // Nobody bids: the job cycles through announcements, logging each.
    for _ in 0..20 {
        let t = m.next_deadline().expect("timer");
        m.handle(Input::Tick, t);
    }
    let rec = m.job(&id).expect("rec");
    assert_eq!(rec.timeline.len(), 5);
    assert!(rec.timeline[0].event.starts_with("submitted"), "head kept");
    assert!(rec.announce_attempts > 5);
}

#[test]
fn remote_reputation_from_self_is_ignored() {
    let mut m = market();
    m.handle(
        Input::RemoteReputation {
            reporter: peer(200),
            subject: peer(1),
            delta: -100,
        },
        0,
    );
    assert_eq!(m.reputation().score(&peer(1)), 0);
    m.handle(
        Input::RemoteReputation {
            reporter: peer(2),
            subject: peer(1),
            delta: -100,
        },
        0,
    );
    assert_eq!(m.reputation().score(&peer(1)), -25);
}

#[test]
fn a_refusing_worker_gets_more_chances_but_not_endless_ones() {
    let mut m = market_with(1);
    let mut s = spec();
    s.redundancy = 1;
    let (id, _) = submit(&mut m, s, 0);
    assert_eq!(leased(&bid(&mut m, 1, id, 10, 1)), vec![peer(1)]);
    let refuse = |m: &mut Market, now| {
        m.handle(
            Input::LeaseRefused {
                job_id: id,
                worker: peer(1),
                reason: "busy".into(),
            },
            now,
        )
    };
    let mut now = 2;
    for _ in 0..crate::job::MAX_LOST_LEASES_PER_WORKER {
        let out = refuse(&mut m, now);
        assert!(leased(&out).is_empty(), "its bid is spent");
        assert!(m.job(&id).expect("rec").bids.is_empty());
        // Bidding again at once is ignored: it must wait for the next announcement.
        assert!(leased(&bid(&mut m, 1, id, 10, now + 1)).is_empty());
        assert!(m.job(&id).expect("rec").bids.is_empty());
        let t = m
            .job(&id)
            .expect("rec")
            .next_announce_ms
            .expect("re-announce");
        assert_eq!(announces(&m.handle(Input::Tick, t)), 1);
        now = t + 1;
        let again = leased(&bid(&mut m, 1, id, 10, now));
        now += 1;
        if m.job(&id).expect("rec").lease_failures < crate::job::MAX_LOST_LEASES_PER_WORKER as u32 {
            assert_eq!(again, vec![peer(1)], "another chance");
        } else {
            assert!(again.is_empty(), "excluded after too many losses");
        }
    }
    assert!(leased(&m.handle(Input::Tick, now + 150)).is_empty());
    let rec = m.job(&id).expect("rec");
    assert!(matches!(
        rec.waiting,
        Some(WaitReason::NoCapableWorker { .. })
    ));
}

#[test]
fn local_node_is_not_awaited() {
    let mut m = market_with(2);
    m.handle(
        Input::CapabilityAd {
            from: peer(200),
            ad: ad(&["wasm"], 1 << 30, 10, 2, 1),
            ip: None,
        },
        0,
    );
    let mut s = spec();
    s.redundancy = 2;
    let (id, _) = submit(&mut m, s, 0);
    assert_eq!(m.job(&id).expect("rec").expected_bidders, 2);
    bid(&mut m, 1, id, 10, 1);
    assert_eq!(leased(&bid(&mut m, 2, id, 10, 2)).len(), 2, "closed early");
}

mod props {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug)]
    enum Op {
        Bid(u8, u64),
        Accept(u8),
        Refuse(u8),
        Result(u8, u8),
        Slow(u8),
        Busy(u8),
        Beat(u8),
        Disconnect(u8),
        Tick(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (1u8..=6, 0u64..150).prop_map(|(w, p)| Op::Bid(w, p)),
            (1u8..=6).prop_map(Op::Accept),
            (1u8..=6).prop_map(Op::Refuse),
            (1u8..=6, 0u8..3).prop_map(|(w, v)| Op::Result(w, v)),
            (1u8..=6).prop_map(Op::Slow),
            (1u8..=6).prop_map(Op::Busy),
            (1u8..=6).prop_map(Op::Beat),
            (1u8..=6).prop_map(Op::Disconnect),
            (1u64..5_000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever happens, records stay bounded and consistent, and a job is only ever
        /// verified by a strict majority of at least r matching results.
        #[test]
        fn invariants_hold(ops in proptest::collection::vec(op(), 1..120)) {
            let cfg = Config::local();
            let mut m = market_with(6);
            let (id, _) = submit(&mut m, spec(), 0);
            let mut now = 0;
            for op in ops {
                now += 1;
                let input = match op {
                    Op::Bid(w, p) => Input::Bid {
                        from: peer(w),
                        bid: Bid { job_id: id, price: p, free_slots: 1, total_slots: 1 },
                        rtt_ms: None,
                        ip: None,
                    },
                    Op::Accept(w) => Input::LeaseAccepted { job_id: id, worker: peer(w) },
                    Op::Refuse(w) => Input::LeaseRefused {
                        job_id: id,
                        worker: peer(w),
                        reason: String::new(),
                    },
                    Op::Result(w, v) => Input::Result {
                        from: peer(w),
                        result: WorkResult {
                            job_id: id,
                            outcome: ok(&v.to_string()),
                            price: 0,
                        },
                        signed: None,
                        stderr: vec![],
                    },
                    Op::Slow(w) => Input::Result {
                        from: peer(w),
                        result: WorkResult {
                            job_id: id,
                            outcome: Outcome::Failed {
                                kind: "wall_time".into(),
                                detail: String::new(),
                            },
                            price: 0,
                        },
                        signed: None,
                        stderr: vec![],
                    },
                    Op::Busy(w) => Input::LeaseBusy { job_id: id, worker: peer(w) },
                    Op::Beat(w) => Input::Heartbeat { job_id: id, worker: peer(w) },
                    Op::Disconnect(w) => Input::PeerDisconnected(peer(w)),
                    Op::Tick(dt) => {
                        now += dt;
                        Input::Tick
                    }
                };
                let out = m.handle(input, now);
                for o in &out {
                    if let Output::Verified { workers, .. } = o {
                        prop_assert!(workers.len() >= 3);
                    }
                }
                let rec = m.job(&id).expect("rec");
                let r = rec.redundancy();
                prop_assert!(rec.bids.len() <= cfg.max_bids_per_job);
                prop_assert!(rec.timeline.len() <= cfg.max_timeline);
                // Abstentions (machine-dependent limits) are at most r - 1 beyond the votes.
                prop_assert!(rec.votes() <= r + cfg.extra_replica_cap(r));
                prop_assert!(rec.abstentions() <= r);
                // Busy answers are not lost leases: bounded by the attempts at each bid.
                prop_assert!(
                    rec.leases.iter().filter(|l| l.status != LeaseStatus::Busy).count()
                        <= 2 * r + cfg.extra_replica_cap(r) + cfg.max_attempts as usize + 1
                );
                for l in &rec.leases {
                    let first = l.first_expires_ms - l.offered_ms;
                    prop_assert!(l.expires_ms - l.offered_ms <= first * cfg.max_lease_factor);
                }
                prop_assert!(rec.results.iter().all(|x| x.agreed.is_none() || x.is_vote()));
                let mut workers: Vec<PeerId> = rec.results.iter().map(|x| x.worker).collect();
                workers.sort();
                workers.dedup();
                prop_assert_eq!(workers.len(), rec.results.len(), "one result per worker");
                prop_assert!(rec.active_leases().count() <= rec.target_replicas);
                if rec.state == JobState::Verified {
                    let v = rec.outcome.as_ref().expect("outcome").verdict();
                    let agree = rec.results.iter().filter(|x| x.verdict == v).count();
                    prop_assert!(agree >= r && 2 * agree > rec.votes());
                    prop_assert_eq!(rec.quorum.len(), agree);
                    prop_assert_eq!(rec.active_leases().count(), 0);
                }
                if rec.is_finished() {
                    prop_assert_eq!(m.next_deadline(), None);
                } else {
                    prop_assert!(m.next_deadline().is_some(), "a pending job always has a timer");
                }
            }
        }
    }
}

#[test]
fn with_escrow_required_a_job_is_announced_only_once_locked() {
    let mut config = Config::local();
    config.require_escrow = true;
    let mut m = Market::new(config, peer(200));
    let mut s = spec();
    s.max_price = 50;
    let (id, out) = submit(&mut m, s, 0);
    assert_eq!(announces(&out), 0);
    let lock = out.iter().find_map(|o| match o {
        Output::LockEscrow {
            job_id,
            amount,
            max_price,
            redundancy,
        } => Some((*job_id, *amount, *max_price, *redundancy)),
        _ => None,
    });
    // r = 3: 3 replicas plus up to min(16, 2r + 2) = 8 more, at most 50 each.
    assert_eq!(lock, Some((id, 50 * 11, 50, 3)));
    assert_eq!(m.job(&id).unwrap().state, JobState::AwaitingEscrow);
    // Time passes: still no announcement, no bids taken.
    let out = m.handle(Input::Tick, 10_000);
    assert_eq!(announces(&out), 0);
    let out = bid(&mut m, 1, id, 10, 10_000);
    assert!(leased(&out).is_empty());
    // Locked: announced now, and the job takes bids.
    let out = m.handle(Input::EscrowLocked(id), 10_100);
    assert_eq!(announces(&out), 1);
    assert_eq!(m.job(&id).unwrap().state, JobState::Bidding);
    // A second notice changes nothing.
    let out = m.handle(Input::EscrowLocked(id), 10_200);
    assert_eq!(announces(&out), 0);
    // After a restart the lock is asked for again.
    let mut config = Config::local();
    config.require_escrow = true;
    let mut fresh = Market::new(config, peer(200));
    let mut rec = m.job(&id).unwrap().clone();
    rec.state = JobState::AwaitingEscrow;
    let out = fresh.restore(vec![rec], 20_000);
    assert!(out.iter().any(|o| matches!(o, Output::LockEscrow { .. })));
    assert_eq!(announces(&out), 0);
}

/// The worker at `i`'s lease on `id` accepted at `now`.
fn accept(m: &mut Market, i: u8, id: JobId, now: UnixMillis) {
    m.handle(
        Input::LeaseAccepted {
            job_id: id,
            worker: peer(i),
        },
        now,
    );
}

fn beat(m: &mut Market, i: u8, id: JobId, now: UnixMillis) -> Option<UnixMillis> {
    m.handle(
        Input::Heartbeat {
            job_id: id,
            worker: peer(i),
        },
        now,
    )
    .iter()
    .find_map(|o| match o {
        Output::LeaseExtended { expires_ms, .. } => Some(*expires_ms),
        _ => None,
    })
}

#[test]
fn heartbeats_extend_a_live_lease_up_to_a_cap_and_a_silent_one_expires() {
    let cfg = Config::local();
    let mut m = market_with(4);
    let (id, _) = submit(&mut m, spec(), 0);
    let workers: Vec<u8> = bid_all(&mut m, 1..=3, id, 1).into_iter().map(idx).collect();
    assert_eq!(workers.len(), 3);
    for w in &workers {
        accept(&mut m, *w, id, 200);
    }
    let first = m.job(&id).unwrap().lease_of(&peer(1)).unwrap().expires_ms;
    // Workers 1 and 2 stay alive past the first expiry; worker 3 falls silent.
    let mut now = 200;
    let mut last = first;
    while now < first + 2_000 {
        now += cfg.heartbeat_ms;
        for w in [1, 2] {
            let e = beat(&mut m, w, id, now).expect("extended");
            assert!(e >= now + cfg.heartbeat_ms, "{e} at {now}");
            last = e;
        }
        assert!(m.handle(Input::Tick, now).iter().all(|o| !matches!(
            o,
            Output::Reputation { peer: p, action: ReputationAction::LeaseExpired, .. } if *p != peer(3)
        )));
    }
    let rec = m.job(&id).unwrap();
    assert_eq!(rec.lease_of(&peer(3)).unwrap().status, LeaseStatus::Expired);
    assert_eq!(
        rec.lease_of(&peer(1)).unwrap().status,
        LeaseStatus::Accepted
    );
    assert!(last > first);
    // A heartbeat sooner than half an interval changes nothing but is still answered.
    assert_eq!(beat(&mut m, 1, id, now + 1), Some(last));
    // Worker 3 holds no lease any more: its heartbeat gets no extension (the node answers
    // "stop"), and so does a stranger's.
    assert_eq!(beat(&mut m, 3, id, now + 2), None);
    assert_eq!(beat(&mut m, 9, id, now + 2), None);
    // However long it heartbeats, a lease ends at max_lease_factor times its first length.
    let offered = m.job(&id).unwrap().lease_of(&peer(1)).unwrap().offered_ms;
    let cap = offered + (first - offered) * cfg.max_lease_factor;
    let mut t = now;
    while t < cap + 10_000 {
        t += cfg.heartbeat_ms;
        if let Some(e) = beat(&mut m, 1, id, t) {
            assert!(e <= cap);
        }
        m.handle(Input::Tick, t);
    }
    let l = m.job(&id).unwrap().lease_of(&peer(1)).unwrap().clone();
    assert_eq!(l.status, LeaseStatus::Expired, "{l:?}");
}

#[test]
fn deadline_does_not_fire_while_queued_for_busy_workers() {
    let mut m = market_with(3);
    let mut s = spec();
    s.deadline_ms = 2_000;
    let (id, _) = submit(&mut m, s, 0);
    // Every worker answers busy: the job waits with that reason, past its signed deadline.
    for w in bid_all(&mut m, 1..=3, id, 1) {
        m.handle(
            Input::LeaseBusy {
                job_id: id,
                worker: w,
            },
            160,
        );
    }
    let rec = m.job(&id).unwrap();
    assert!(
        matches!(rec.waiting, Some(WaitReason::AllWorkersBusy { capable: 3 })),
        "{:?}",
        rec.waiting
    );
    assert_eq!(
        rec.waiting.as_ref().unwrap().to_string(),
        "all 3 capable workers are busy; waiting for a free slot"
    );
    let mut now = 160;
    while now < 15_000 {
        now = m.next_deadline().expect("a timer").max(now + 1);
        let out = m.handle(Input::Tick, now);
        assert!(
            !out.iter().any(|o| matches!(o, Output::Failed { .. })),
            "failed while queued at {now}: {}",
            m.job(&id).unwrap().summary()
        );
        // Workers stay busy (and keep advertising): every re-announcement collects busy
        // answers again.
        for i in 1..=3 {
            m.handle(
                Input::CapabilityAd {
                    from: peer(i),
                    ad: ad(&["wasm"], 1 << 30, 10, 2, now),
                    ip: None,
                },
                now,
            );
        }
        for w in leased(&out) {
            m.handle(
                Input::LeaseBusy {
                    job_id: id,
                    worker: w,
                },
                now,
            );
        }
        for i in 1..=3 {
            for w in leased(&bid(&mut m, i, id, 10, now)) {
                m.handle(
                    Input::LeaseBusy {
                        job_id: id,
                        worker: w,
                    },
                    now,
                );
            }
        }
    }
    let rec = m.job(&id).unwrap();
    assert!(
        !rec.is_finished() && rec.started_ms.is_none(),
        "{}",
        rec.summary()
    );
    // Slots free up: it runs and verifies, long after the signed deadline (and before the
    // hard bound of ten budgets).
    now += 2_000;
    assert!(now + 300 < 10 * 2_000);
    m.handle(Input::Tick, now);
    let mut got = Vec::new();
    for i in 1..=3 {
        got.extend(leased(&bid(&mut m, i, id, 10, now)));
    }
    got.extend(leased(&m.handle(Input::Tick, now + 200)));
    assert_eq!(got.len(), 3, "{}", m.job(&id).unwrap().summary());
    for w in got {
        result(&mut m, idx(w), id, ok("x"), now + 300);
    }
    assert_eq!(m.job(&id).unwrap().state, JobState::Verified);
}

#[test]
fn admission_control_keeps_leases_within_advertised_slots() {
    // Two workers with 2 slots each (their bids say so) and ten jobs of redundancy 1.
    let mut m = market_with(2);
    let mut ids = Vec::new();
    for k in 0..10 {
        let mut s = spec();
        s.redundancy = 1;
        s.nonce = 100 + k;
        let (id, _) = submit(&mut m, s, k);
        ids.push(id);
    }
    let mut out = Vec::new();
    for id in &ids {
        for i in 1..=2 {
            out.extend(bid(&mut m, i, *id, 10, 20));
        }
    }
    out.extend(m.handle(Input::Tick, 200));
    let per_worker = |m: &Market, i: u8| {
        m.jobs()
            .flat_map(|r| r.active_leases())
            .filter(|l| l.worker == peer(i))
            .count()
    };
    assert_eq!(per_worker(&m, 1), 2);
    assert_eq!(per_worker(&m, 2), 2);
    let waiting: Vec<JobRecord> = m
        .jobs()
        .filter(|r| r.active_leases().count() == 0)
        .cloned()
        .collect();
    assert_eq!(waiting.len(), 6);
    for r in &waiting {
        assert!(
            matches!(r.waiting, Some(WaitReason::AllWorkersBusy { .. })),
            "{}",
            r.summary()
        );
    }
    // A result frees a slot: the oldest queued job takes it at once, without a new auction.
    let done = m
        .jobs()
        .find(|r| r.lease_of(&peer(1)).is_some_and(|l| l.status.is_active()))
        .unwrap()
        .id;
    let out = result(&mut m, 1, done, ok("y"), 300);
    assert_eq!(leased(&out), vec![peer(1)]);
    assert_eq!(per_worker(&m, 1), 2);
    let oldest_waiting = waiting.iter().min_by_key(|r| r.created_ms).unwrap().id;
    assert!(m.job(&oldest_waiting).unwrap().active_leases().count() == 1);
}

#[test]
fn a_wall_time_result_is_neither_agreement_nor_blame() {
    let mut m = market_with(5);
    let (id, _) = submit(&mut m, spec(), 0);
    let got = bid_all(&mut m, 1..=3, id, 1);
    assert_eq!(got.len(), 3);
    let slow = Outcome::Failed {
        kind: "wall_time".into(),
        detail: "wall-clock limit of 1s exceeded".into(),
    };
    let out = result(&mut m, idx(got[0]), id, slow.clone(), 200);
    assert!(reps(&out).is_empty(), "no reputation change for a timeout");
    // Another replica replaces it.
    let mut more = leased(&out);
    more.extend(leased(&bid(&mut m, 4, id, 10, 210)));
    assert_eq!(more.len(), 1, "{}", m.job(&id).unwrap().summary());
    result(&mut m, idx(got[1]), id, ok("x"), 300);
    result(&mut m, idx(got[2]), id, ok("x"), 300);
    let out = result(&mut m, idx(more[0]), id, ok("x"), 400);
    let rec = m.job(&id).unwrap();
    assert_eq!(rec.state, JobState::Verified, "{}", rec.summary());
    let r = reps(&out);
    assert!(!r.iter().any(|(p, _)| *p == got[0]), "{r:?}");
    assert!(r.iter().all(|(_, a)| *a == ReputationAction::ResultAgreed));
    let slow_rec = rec.results.iter().find(|x| x.worker == got[0]).unwrap();
    assert_eq!(slow_rec.agreed, None, "neither agreed nor outvoted");
}

#[test]
fn r_wall_time_results_fail_the_job_without_blame() {
    let mut m = market_with(6);
    let (id, _) = submit(&mut m, spec(), 0);
    let slow = Outcome::Failed {
        kind: "wall_time".into(),
        detail: "too slow".into(),
    };
    let mut workers = bid_all(&mut m, 1..=3, id, 1);
    let mut all = Vec::new();
    let mut now = 200;
    while let Some(w) = workers.pop() {
        all.extend(reps(&result(&mut m, idx(w), id, slow.clone(), now)));
        now += 10;
        for i in 4..=6 {
            workers.extend(leased(&bid(&mut m, i, id, 10, now)));
        }
        if m.job(&id).unwrap().is_finished() {
            break;
        }
    }
    let rec = m.job(&id).unwrap();
    assert_eq!(rec.state, JobState::Failed);
    assert_eq!(rec.abstentions(), 3);
    assert!(
        matches!(&rec.fail_reason, Some(FailReason::Failed { kind, .. }) if kind == "wall_time"),
        "{:?}",
        rec.fail_reason
    );
    assert!(all.is_empty(), "nobody blamed or credited: {all:?}");
    assert!(rec.outcome.is_none(), "nothing to pay");
}

#[test]
fn exit_code_and_stderr_are_recorded() {
    let mut m = market_with(3);
    let (id, _) = submit(&mut m, spec(), 0);
    let got = bid_all(&mut m, 1..=3, id, 1);
    let failed_program = Outcome::Completed {
        exit_code: 7,
        output_hash: Hash::of(b""),
        fuel_used: 1,
        compared: None,
    };
    for w in got {
        m.handle(
            Input::Result {
                from: w,
                result: WorkResult {
                    job_id: id,
                    outcome: failed_program.clone(),
                    price: 0,
                },
                signed: None,
                stderr: b"bad input: expected a number\n".to_vec(),
            },
            200,
        );
    }
    let rec = m.job(&id).unwrap();
    assert_eq!(rec.state, JobState::Verified);
    assert_eq!(rec.exit_code, Some(7));
    assert_eq!(
        rec.stderr.as_deref(),
        Some("bad input: expected a number\n")
    );
    assert!(
        rec.timeline
            .iter()
            .any(|e| e.event.contains("exited with code 7")),
        "{:?}",
        rec.timeline
    );
    // Serialized (what GET /v1/jobs/{id} shows) with those names.
    let v = serde_json::to_value(rec).unwrap();
    assert_eq!(v["exit_code"], 7);
    assert!(v["stderr"].as_str().unwrap().starts_with("bad input"));
}

#[test]
fn wait_reason_names_memory_and_disagreement_not_only_memory() {
    // Workers with the capability but too little memory.
    let mut m = market();
    m.handle(
        Input::CapabilityAd {
            from: peer(1),
            ad: ad(&["wasm"], 1 << 10, 10, 2, 1),
            ip: None,
        },
        0,
    );
    let (id, _) = submit(&mut m, spec(), 0);
    m.handle(Input::Tick, 200);
    let w = m.job(&id).unwrap().waiting.clone().unwrap();
    assert!(matches!(w, WaitReason::NotEnoughMemory { .. }), "{w:?}");
    assert!(w.to_string().contains("memory"), "{w}");
    // Three workers disagree and no other capable worker is known.
    let mut m = market_with(3);
    let (id, _) = submit(&mut m, spec(), 0);
    let got = bid_all(&mut m, 1..=3, id, 1);
    result(&mut m, idx(got[0]), id, ok("a"), 200);
    result(&mut m, idx(got[1]), id, ok("b"), 200);
    result(&mut m, idx(got[2]), id, ok("c"), 200);
    let w = m.job(&id).unwrap().waiting.clone().unwrap();
    assert!(
        matches!(w, WaitReason::Disagreement { verdicts: 3, .. }),
        "{w:?}"
    );
    assert!(w.to_string().contains("disagree"), "{w}");
    assert!(!w.to_string().contains("memory"), "{w}");
}

/// A job of redundancy 1.
fn spec1() -> JobSpec {
    let mut s = spec();
    s.redundancy = 1;
    s
}

#[test]
fn fresh_standing_offers_are_leased_directly_without_an_auction() {
    let mut m = direct_market(&[10, 5, 10, 7]);
    let mut s = spec();
    s.redundancy = 2;
    let (id, out) = submit(&mut m, s, 1_000);
    assert_eq!(
        announces(&out),
        0,
        "no announcement on the fast path: {out:?}"
    );
    let mut got: Vec<u8> = leased(&out).into_iter().map(idx).collect();
    got.sort();
    assert_eq!(got, vec![2, 4], "the two cheapest offers");
    let rec = m.job(&id).expect("job");
    assert_eq!(rec.state, JobState::Running);
    assert_eq!(rec.bid_window_closes_ms, None);
    assert!(
        rec.timeline
            .iter()
            .any(|e| e.event.contains("leasing directly"))
    );
    // Both deliver the same result: verified with no auction round at all.
    result(&mut m, 2, id, ok("a"), 1_010);
    let out = result(&mut m, 4, id, ok("a"), 1_020);
    assert!(out.iter().any(|o| matches!(o, Output::Verified { .. })));
}

#[test]
fn a_busy_direct_lease_goes_to_the_next_offer_then_to_the_auction() {
    let mut m = direct_market(&[5, 10]);
    let (id, out) = submit(&mut m, spec1(), 1_000);
    assert_eq!(
        leased(&out).into_iter().map(idx).collect::<Vec<_>>(),
        vec![1]
    );
    // The cheapest is busy: the other offer is leased at once.
    let out = m.handle(
        Input::LeaseBusy {
            job_id: id,
            worker: peer(1),
        },
        1_001,
    );
    assert_eq!(
        leased(&out).into_iter().map(idx).collect::<Vec<_>>(),
        vec![2]
    );
    assert_eq!(announces(&out), 0);
    // It refuses too: nothing known is left, so the job is auctioned at once (no backoff
    // before its first announcement).
    let out = m.handle(
        Input::LeaseRefused {
            job_id: id,
            worker: peer(2),
            reason: "no".into(),
        },
        1_002,
    );
    assert!(leased(&out).is_empty());
    let out = m.handle(Input::Tick, 1_002);
    assert_eq!(announces(&out), 1, "the auction is the fallback: {out:?}");
    assert_eq!(m.job(&id).expect("job").announce_attempts, 1);
}

#[test]
fn stale_unstaked_or_too_few_offers_fall_back_to_the_auction() {
    // Too few for r = 3.
    let mut m = direct_market(&[5, 5]);
    let mut s = spec();
    s.redundancy = 3;
    let (_, out) = submit(&mut m, s, 1_000);
    assert_eq!((announces(&out), leased(&out).len()), (1, 0));
    // Older than `direct_offer_age_ms` (5 s in the local preset).
    let mut m = direct_market(&[5, 5]);
    let (_, out) = submit(&mut m, spec1(), 6_000);
    assert_eq!((announces(&out), leased(&out).len()), (1, 0));
    // With a ledger, only staked peers are leased directly.
    let mut m = direct_market(&[5, 10]);
    m.handle(Input::Stakers([peer(2)].into_iter().collect()), 0);
    let (_, out) = submit(&mut m, spec1(), 1_000);
    assert_eq!(
        leased(&out).into_iter().map(idx).collect::<Vec<_>>(),
        vec![2]
    );
    let mut m = direct_market(&[5, 10]);
    m.handle(Input::Stakers(HashSet::new()), 0);
    let (_, out) = submit(&mut m, spec1(), 1_000);
    assert_eq!((announces(&out), leased(&out).len()), (1, 0));
    // An input over the offer's limit (the worker's `max_input_bytes`).
    let mut m = Market::new(Config::local(), peer(200));
    let mut small = ad(&["wasm"], 1 << 30, 5, 2, 1);
    small.max_input_bytes = 100;
    m.handle(
        Input::CapabilityAd {
            from: peer(1),
            ad: small,
            ip: None,
        },
        0,
    );
    let mut s = spec1();
    s.input_size = 4_000;
    let (_, out) = submit(&mut m, s, 1_000);
    assert_eq!((announces(&out), leased(&out).len()), (1, 0));
    // Over the job's price.
    let mut m = direct_market(&[500]);
    let mut s = spec1();
    s.max_price = 100;
    let (_, out) = submit(&mut m, s, 1_000);
    assert_eq!((announces(&out), leased(&out).len()), (1, 0));
}

#[test]
fn the_bid_window_closes_once_no_outstanding_offer_could_beat_the_bids_in() {
    // Workers 1 and 2 advertise price 1; 3 and 4 advertise 90 (of a max price 100). With the
    // fast path off, the job is auctioned: once 1 and 2 have bid, nobody left could beat them.
    let mut config = Config::local();
    config.direct_lease = false;
    let mut m = Market::new(config, peer(200));
    for (i, price) in [(1u8, 1u64), (2, 1), (3, 90), (4, 90)] {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, price, 2, 1),
                ip: None,
            },
            0,
        );
    }
    let mut s = spec();
    s.redundancy = 2;
    s.max_price = 100;
    let (id, _) = submit(&mut m, s, 10);
    let out = m.handle(
        Input::Bid {
            from: peer(1),
            bid: Bid {
                job_id: id,
                price: 1,
                free_slots: 2,
                total_slots: 2,
            },
            rtt_ms: Some(1),
            ip: None,
        },
        11,
    );
    assert!(leased(&out).is_empty(), "one bid is not enough for r = 2");
    let out = m.handle(
        Input::Bid {
            from: peer(2),
            bid: Bid {
                job_id: id,
                price: 1,
                free_slots: 2,
                total_slots: 2,
            },
            rtt_ms: Some(1),
            ip: None,
        },
        12,
    );
    let mut got: Vec<u8> = leased(&out).into_iter().map(idx).collect();
    got.sort();
    assert_eq!(got, vec![1, 2], "closed early, before 3 and 4 bid: {out:?}");
    // Whereas when an outstanding worker could still win, the window stays open.
    let mut config = Config::local();
    config.direct_lease = false;
    let mut m = Market::new(config, peer(200));
    for (i, price) in [(1u8, 50u64), (2, 1)] {
        m.handle(
            Input::CapabilityAd {
                from: peer(i),
                ad: ad(&["wasm"], 1 << 30, price, 2, 1),
                ip: None,
            },
            0,
        );
    }
    let (id, _) = submit(&mut m, spec1(), 10);
    let out = m.handle(
        Input::Bid {
            from: peer(1),
            bid: Bid {
                job_id: id,
                price: 50,
                free_slots: 2,
                total_slots: 2,
            },
            rtt_ms: Some(1),
            ip: None,
        },
        11,
    );
    assert!(leased(&out).is_empty(), "worker 2 (price 1) may still bid");
}
