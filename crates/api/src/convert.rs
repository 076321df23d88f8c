//! From the node's own types to the API's ([`agora_api_types`]): the only place that knows both.
//!
//! The node's types may change freely; what the API shows changes only here and in the types
//! crate. A new variant of a node enum (a job state, a wait or failure reason, a ledger event)
//! fails to compile here until the API says how to show it.

use agora_api_types as api;
use agora_ledger::{BlockReceipt, Event};
use agora_market::{
    BidRecord, FailReason, JobRecord, JobState, LeaseRecord, LeaseStatus, ResultRecord,
    TimelineEvent, WaitReason,
};
use agora_types::job::{JobLimits, JobSpec, Outcome};

fn n(x: usize) -> u64 {
    u64::try_from(x).unwrap_or(u64::MAX)
}

/// `GET /v1/status`.
pub fn status(s: agora_node::NodeStatus) -> api::NodeStatus {
    api::NodeStatus {
        peer_id: s.peer_id.to_string(),
        listen_addresses: s.listen_addresses.iter().map(|a| a.to_string()).collect(),
        connected_peers: n(s.connected_peers),
        routing_table_size: n(s.routing_table_size),
        uptime_secs: s.uptime_secs,
        version: s.version,
        price: s.price,
    }
}

/// One element of `GET /v1/peers`.
pub fn peer(p: agora_net::PeerInfo) -> api::PeerInfo {
    api::PeerInfo {
        peer_id: p.peer_id.to_string(),
        addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
        rtt_ms: p.rtt_ms,
        connected_since: p.connected_since,
        agent: p.agent,
    }
}

/// Why a job is where it is, in one sentence (or null).
pub fn reason(r: &JobRecord) -> Option<String> {
    match (&r.fail_reason, &r.waiting) {
        (Some(f), _) => Some(f.to_string()),
        (None, Some(w)) if !r.state.is_final() => Some(w.to_string()),
        _ => None,
    }
}

fn state(s: JobState) -> api::JobState {
    match s {
        JobState::AwaitingEscrow => api::JobState::AwaitingEscrow,
        JobState::Bidding => api::JobState::Bidding,
        JobState::Running => api::JobState::Running,
        JobState::Verified => api::JobState::Verified,
        JobState::Failed => api::JobState::Failed,
    }
}

fn outcome(o: &Outcome) -> api::Outcome {
    match o {
        Outcome::Completed {
            exit_code,
            output_hash,
            fuel_used,
            compared,
        } => api::Outcome::Completed {
            exit_code: *exit_code,
            output_hash: output_hash.to_hex(),
            fuel_used: *fuel_used,
            compared: compared.map(|h| h.to_hex()),
        },
        Outcome::Failed { kind, detail, .. } => api::Outcome::Failed {
            kind: kind.clone(),
            detail: detail.clone(),
        },
    }
}

/// The exit code a quorum agreed on, when it agreed on a completed run.
fn exit_code(r: &JobRecord) -> Option<i32> {
    match &r.outcome {
        Some(Outcome::Completed { exit_code, .. }) => Some(*exit_code),
        _ => r.exit_code,
    }
}

/// One line of `GET /v1/jobs`.
pub fn summary(r: &JobRecord) -> api::JobSummary {
    let output_hash = match &r.outcome {
        Some(Outcome::Completed { output_hash, .. }) => Some(output_hash.to_hex()),
        _ => None,
    };
    api::JobSummary {
        id: r.id.to_hex(),
        state: state(r.state),
        reason: reason(r),
        redundancy: n(r.redundancy()),
        bids: n(r.bids.len()),
        results: n(r.results.len()),
        workers: r.quorum.iter().map(|p| p.to_string()).collect(),
        output_hash,
        exit_code: exit_code(r),
        created_ms: r.created_ms,
        finished_ms: r.finished_ms,
        latency_ms: r.finished_ms.map(|f| f.saturating_sub(r.created_ms)),
    }
}

/// The quorum's verdict in words, once it decided.
fn verdict(r: &JobRecord) -> Option<String> {
    r.outcome.as_ref().map(|o| match o {
        Outcome::Completed { exit_code, .. } => format!("completed, exit code {exit_code}"),
        Outcome::Failed { kind, .. } => format!("failed: {kind}"),
    })
}

/// One job of the dashboard's snapshot (`GET /v1/events`).
pub fn snapshot_job(r: &JobRecord) -> api::SnapshotJob {
    api::SnapshotJob {
        summary: summary(r),
        leases_active: n(r.leases.iter().filter(|l| l.ended_ms.is_none()).count()),
        leases: n(r.leases.len()),
        verdict: verdict(r),
        max_price: r.job.payload.max_price,
    }
}

/// One peer of the dashboard's snapshot, with the market's reputation score for it.
pub fn snapshot_peer(p: agora_net::PeerInfo, reputation: Option<i64>) -> api::SnapshotPeer {
    let info = peer(p);
    let relayed =
        !info.addresses.is_empty() && info.addresses.iter().all(|a| a.contains("/p2p-circuit"));
    api::SnapshotPeer {
        info,
        reputation,
        relayed,
    }
}

/// One block of the dashboard's snapshot, counted.
pub fn snapshot_block(b: &BlockReceipt) -> api::SnapshotBlock {
    api::SnapshotBlock {
        height: b.height,
        txs: n(b.receipts.len()),
        failed_txs: n(b.receipts.iter().filter(|r| r.error.is_some()).count()),
        events: n(b.events.len()),
        state_root: b.state_root.to_hex(),
    }
}

fn limits(l: &JobLimits) -> api::JobLimits {
    api::JobLimits {
        fuel: l.fuel,
        memory_bytes: l.memory_bytes,
        wall_time_ms: l.wall_time_ms,
    }
}

fn spec(s: &JobSpec) -> api::JobSpec {
    api::JobSpec {
        module: s.module.to_hex(),
        module_size: s.module_size,
        input: s.input.to_hex(),
        input_size: s.input_size,
        args: s.args.clone(),
        limits: limits(&s.limits),
        capabilities: s.capabilities.clone(),
        redundancy: s.redundancy,
        max_price: s.max_price,
        deadline_ms: s.deadline_ms,
        nonce: s.nonce,
        credit: s.credit,
        runtime: s.runtime.to_string(),
        verify: s.runtime.compare().to_string(),
    }
}

fn waiting(w: &WaitReason) -> api::WaitReason {
    match w {
        WaitReason::NoCapableWorker {
            capabilities,
            memory_bytes,
            already_used,
        } => api::WaitReason::NoCapableWorker {
            capabilities: capabilities.clone(),
            memory_bytes: *memory_bytes,
            already_used: n(*already_used),
        },
        WaitReason::OverMaxPrice {
            cheapest,
            max_price,
        } => api::WaitReason::OverMaxPrice {
            cheapest: *cheapest,
            max_price: *max_price,
        },
        WaitReason::AllWorkersBusy { capable } => api::WaitReason::AllWorkersBusy {
            capable: n(*capable),
        },
        WaitReason::AwaitingBids => api::WaitReason::AwaitingBids,
        WaitReason::NotEnoughMemory {
            memory_bytes,
            with_capabilities,
        } => api::WaitReason::NotEnoughMemory {
            memory_bytes: *memory_bytes,
            with_capabilities: n(*with_capabilities),
        },
        WaitReason::Disagreement { verdicts, results } => api::WaitReason::Disagreement {
            verdicts: n(*verdicts),
            results: n(*results),
        },
    }
}

fn fail_reason(f: &FailReason) -> api::FailReason {
    match f {
        FailReason::Deadline => api::FailReason::Deadline,
        FailReason::Cancelled => api::FailReason::Cancelled,
        FailReason::NoQuorum { results } => api::FailReason::NoQuorum {
            results: n(*results),
        },
        FailReason::Failed { kind, detail } => api::FailReason::Failed {
            kind: kind.clone(),
            detail: detail.clone(),
        },
        FailReason::TooManyJobs { max } => api::FailReason::TooManyJobs { max: n(*max) },
        FailReason::Exhausted { lease_failures } => api::FailReason::Exhausted {
            lease_failures: u64::from(*lease_failures),
        },
    }
}

fn timeline(t: &TimelineEvent) -> api::TimelineEvent {
    api::TimelineEvent {
        at_ms: t.at_ms,
        event: t.event.clone(),
    }
}

fn bid(b: &BidRecord) -> api::BidView {
    api::BidView {
        worker: b.worker.to_string(),
        price: b.price,
        free_slots: b.free_slots,
        total_slots: b.total_slots,
        rtt_ms: b.rtt_ms,
        ip: b.ip.map(|ip| ip.to_string()),
        received_ms: b.received_ms,
    }
}

fn lease_status(s: LeaseStatus) -> api::LeaseStatus {
    match s {
        LeaseStatus::Offered => api::LeaseStatus::Offered,
        LeaseStatus::Accepted => api::LeaseStatus::Accepted,
        LeaseStatus::Completed => api::LeaseStatus::Completed,
        LeaseStatus::Expired => api::LeaseStatus::Expired,
        LeaseStatus::Refused => api::LeaseStatus::Refused,
        LeaseStatus::Disconnected => api::LeaseStatus::Disconnected,
        LeaseStatus::Cancelled => api::LeaseStatus::Cancelled,
        LeaseStatus::Busy => api::LeaseStatus::Busy,
    }
}

fn lease(l: &LeaseRecord) -> api::LeaseView {
    api::LeaseView {
        worker: l.worker.to_string(),
        price: l.price,
        offered_ms: l.offered_ms,
        expires_ms: l.expires_ms,
        status: lease_status(l.status),
        ended_ms: l.ended_ms,
        heartbeat_ms: l.heartbeat_ms,
    }
}

fn result(x: &ResultRecord) -> api::ResultView {
    api::ResultView {
        worker: x.worker.to_string(),
        outcome: outcome(&x.outcome),
        verdict: x.verdict.to_hex(),
        received_ms: x.received_ms,
        agreed: x.agreed,
        stderr: x.stderr.clone(),
    }
}

/// `GET /v1/jobs/{id}`.
pub fn job(r: &JobRecord) -> api::JobView {
    let submitter = agora_ledger::AccountId(r.job.signer).to_string();
    api::JobView {
        id: r.id.to_hex(),
        state: state(r.state),
        reason: reason(r),
        spec: spec(&r.job.payload),
        submitter,
        waiting: r.waiting.as_ref().map(waiting),
        timeline: r.timeline.iter().map(timeline).collect(),
        bids: r.bids.iter().map(bid).collect(),
        leases: r.leases.iter().map(lease).collect(),
        results: r.results.iter().map(result).collect(),
        outcome: r.outcome.as_ref().map(outcome),
        quorum: r.quorum.iter().map(|p| p.to_string()).collect(),
        fail_reason: r.fail_reason.as_ref().map(fail_reason),
        announce_attempts: r.announce_attempts,
        created_ms: r.created_ms,
        finished_ms: r.finished_ms,
        started_ms: r.started_ms,
        exit_code: exit_code(r),
        stderr: r.stderr.clone(),
        target_replicas: n(r.target_replicas),
        lease_failures: r.lease_failures,
        bid_window_closes_ms: r.bid_window_closes_ms,
        next_announce_ms: r.next_announce_ms,
        summary: summary(r),
    }
}

/// An account.
pub fn account(a: agora_node::AccountView) -> api::AccountView {
    api::AccountView {
        id: a.id,
        balance: a.balance,
        stake: a.stake,
        unbonding: a.unbonding,
        nonce: a.nonce,
        banned: a.banned,
        escrows: n(a.escrows),
        escrowed: a.escrowed,
        can_bid: a.can_bid,
        validator: a.validator,
        credit_lines: n(a.credit_lines),
        credit_locked: a.credit_locked,
    }
}

/// `GET /v1/ledger/status`.
pub fn ledger_status(s: agora_node::LedgerStatus) -> api::LedgerStatus {
    api::LedgerStatus {
        chain_id: s.chain_id,
        height: s.height,
        state_root: s.state_root,
        last_block_ms: s.last_block_ms,
        validators: s
            .validators
            .into_iter()
            .map(|v| api::ValidatorView {
                id: v.id,
                power: v.power,
            })
            .collect(),
        mempool: n(s.mempool),
        supply: api::SupplyView {
            circulating: s.supply.circulating,
            expected: s.supply.expected,
            conserved: s.supply.conserved,
            paid: s.supply.paid,
            slashed: s.supply.slashed,
            minted: s.supply.minted,
            burned: s.supply.burned,
        },
        consensus_peers: n(s.consensus_peers),
        open_escrows: n(s.open_escrows),
        settled_jobs: s.settled_jobs,
    }
}

fn offence(o: agora_ledger::Offence) -> api::Offence {
    use agora_ledger::Offence as O;
    match o {
        O::DoubleSigning => api::Offence::DoubleSigning,
        O::Downtime => api::Offence::Downtime,
        O::InvalidCompute => api::Offence::InvalidCompute,
        O::CoordinatedAttack => api::Offence::CoordinatedAttack,
    }
}

/// A ledger event.
pub fn event(e: &Event) -> api::LedgerEvent {
    use api::LedgerEvent as L;
    match e {
        Event::Transferred { from, to, amount } => L::Transferred {
            from: from.to_string(),
            to: to.to_string(),
            amount: *amount,
        },
        Event::Staked { account, amount } => L::Staked {
            account: account.to_string(),
            amount: *amount,
        },
        Event::Unstaked {
            account,
            amount,
            release_height,
        } => L::Unstaked {
            account: account.to_string(),
            amount: *amount,
            release_height: *release_height,
        },
        Event::Released { account, amount } => L::Released {
            account: account.to_string(),
            amount: *amount,
        },
        Event::EscrowLocked {
            job_id,
            owner,
            amount,
        } => L::EscrowLocked {
            job_id: job_id.to_hex(),
            owner: owner.to_string(),
            amount: *amount,
        },
        Event::Paid {
            job_id,
            worker,
            amount,
        } => L::Paid {
            job_id: job_id.to_hex(),
            worker: worker.to_string(),
            amount: *amount,
        },
        Event::Refunded {
            job_id,
            owner,
            amount,
        } => L::Refunded {
            job_id: job_id.to_hex(),
            owner: owner.to_string(),
            amount: *amount,
        },
        Event::Slashed {
            offender,
            offence: o,
            amount,
            job_id,
        } => L::Slashed {
            offender: offender.to_string(),
            offence: offence(*o),
            amount: *amount,
            job_id: job_id.map(|j| j.to_hex()),
        },
        Event::Minted { to, amount } => L::Minted {
            to: to.to_string(),
            amount: *amount,
        },
        Event::Burned { account, amount } => L::Burned {
            account: account.to_string(),
            amount: *amount,
        },
        Event::CreditOpened {
            owner,
            worker,
            amount,
        } => L::CreditOpened {
            owner: owner.to_string(),
            worker: worker.to_string(),
            amount: *amount,
        },
        Event::CreditClosing {
            owner,
            worker,
            after_ms,
        } => L::CreditClosing {
            owner: owner.to_string(),
            worker: worker.to_string(),
            after_ms: *after_ms,
        },
        Event::CreditClosed {
            owner,
            worker,
            amount,
        } => L::CreditClosed {
            owner: owner.to_string(),
            worker: worker.to_string(),
            amount: *amount,
        },
        Event::CreditShort {
            job_id,
            worker,
            price,
            paid,
        } => L::CreditShort {
            job_id: job_id.to_hex(),
            worker: worker.to_string(),
            price: *price,
            paid: *paid,
        },
    }
}

/// An event with its block's height.
pub fn history_entry((height, e): &(u64, Event)) -> api::HistoryEntry {
    api::HistoryEntry {
        height: *height,
        event: event(e),
    }
}

/// One block's receipt.
pub fn block(b: &BlockReceipt) -> api::BlockView {
    api::BlockView {
        height: b.height,
        receipts: b
            .receipts
            .iter()
            .map(|r| api::TxReceipt {
                tx_id: r.tx_id.to_hex(),
                sender: r.sender.to_string(),
                kind: r.kind.clone(),
                error: r.error.clone(),
            })
            .collect(),
        events: b.events.iter().map(history_entry).collect(),
        state_root: b.state_root.to_hex(),
    }
}

/// A wallet transaction's fate.
pub fn tx_outcome(t: agora_node::TxOutcome) -> api::TxOutcome {
    api::TxOutcome {
        tx_id: t.tx_id,
        kind: t.kind,
        nonce: t.nonce,
        height: t.height,
        applied: t.applied,
        error: t.error,
    }
}

#[cfg(test)]
mod tests {
    use agora_api_types::defaults;
    use agora_types::job::JobLimits;

    /// The sandbox's own defaults and the API's (what the CLI's flags show and the node applies
    /// to an omitted field) are the same numbers.
    #[test]
    fn the_sandbox_limits_default_to_the_api_defaults() {
        let l = JobLimits::default();
        assert_eq!(l.fuel, defaults::FUEL);
        assert_eq!(l.memory_bytes, defaults::MEMORY_BYTES);
        assert_eq!(l.wall_time_ms, defaults::WALL_TIME_MS);
    }
}
