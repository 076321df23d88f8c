//! Per-peer quotas and offences: the one place where the network layer penalises peers.
//!
//! A plain state machine, no I/O; the actor asks it and acts on the answer.
//!
//! **Quotas.** Each connected peer gets a token bucket per protocol: inbound requests on each
//! direct-message protocol (the market's control messages, [`Config::rr_quota`]; results,
//! [`Config::result_quota`]; blob chunks, [`Config::blob_quota`]: see the `codec` module), so
//! that a blob stream cannot drain the bucket of bids, and gossip messages it forwards to us as
//! propagation source ([`Config::gossip_quota`]). A message over quota is dropped before it
//! reaches the node (a request is closed unanswered, a gossip message reported `Ignore`) and is
//! an offence. Buckets are forgotten when the peer's last connection closes.
//!
//! **Offences** ([`Offence`], each with its points) accrue in a leaky bucket that drains at
//! [`Config::offence_threshold`] points per [`Config::offence_decay`]. When the points reach the
//! threshold the peer is blocked (the gate refuses it, the actor disconnects it) for
//! [`Config::block_duration`], doubled on each further block, capped at
//! [`Config::max_block_duration`]; the points start again from zero. A peer's record
//! (points, number of blocks) is kept for a max block duration after its last offence, and the
//! book holds at most [`MAX_RECORDS`] records, evicting the stalest.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

use crate::codec::Purpose;
use crate::config::{Config, Rate};
use crate::rate::TokenBucket;

/// The most peers with an offence record at once.
pub(crate) const MAX_RECORDS: usize = 16_384;

/// A protocol with a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Proto {
    /// Requests on `/agora/market/…`.
    Market,
    /// Requests on `/agora/result/…`.
    Result,
    /// Requests on `/agora/blob/…`.
    Blob,
    Gossip,
}

/// Buckets per peer: one per [`Proto`].
const PROTOS: usize = 4;

impl Proto {
    /// The label in metrics (`protocol`) and logs.
    pub fn label(self) -> &'static str {
        match self {
            Proto::Market => "market",
            Proto::Result => "result",
            Proto::Blob => "blob",
            Proto::Gossip => "gossip",
        }
    }
}

impl From<Purpose> for Proto {
    fn from(p: Purpose) -> Self {
        match p {
            Purpose::Market => Proto::Market,
            Purpose::Result => Proto::Result,
            Purpose::Blob => Proto::Blob,
        }
    }
}

/// Something a peer did wrong. Honest peers can exceed a quota in a burst, so that costs
/// little; they never send what fails to decode or verify, so that costs much more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offence {
    /// A message over the protocol's quota.
    QuotaExceeded(Proto),
    /// A gossip message that does not decode, is on the wrong topic, or whose signature fails.
    InvalidMessage,
    /// A frame (direct request or gossip payload) over its size limit.
    OversizedFrame,
    /// A direct request frame that does not decode, or a request on another purpose's protocol.
    MalformedFrame,
}

impl Offence {
    /// Points, out of a threshold of 100 by default.
    pub fn points(self) -> f64 {
        match self {
            Offence::QuotaExceeded(_) => 1.0,
            Offence::InvalidMessage | Offence::OversizedFrame | Offence::MalformedFrame => 20.0,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Offence::QuotaExceeded(Proto::Market) => "market_quota",
            Offence::QuotaExceeded(Proto::Result) => "result_quota",
            Offence::QuotaExceeded(Proto::Blob) => "blob_quota",
            Offence::QuotaExceeded(Proto::Gossip) => "gossip_quota",
            Offence::InvalidMessage => "invalid_message",
            Offence::OversizedFrame => "oversized_frame",
            Offence::MalformedFrame => "malformed_frame",
        }
    }
}

struct Record {
    points: f64,
    at: Instant,
    blocks: u32,
}

pub(crate) struct Guard {
    /// The quota of each [`Proto`], in its order.
    rates: [Rate; PROTOS],
    buckets: HashMap<PeerId, [TokenBucket; PROTOS]>,
    records: HashMap<PeerId, Record>,
    threshold: f64,
    drain_per_sec: f64,
    block: Duration,
    max_block: Duration,
}

impl Guard {
    pub fn new(config: &Config) -> Self {
        let threshold = f64::from(config.offence_threshold.max(1));
        Guard {
            rates: [
                config.rr_quota,
                config.result_quota,
                config.blob_quota,
                config.gossip_quota,
            ],
            buckets: HashMap::new(),
            records: HashMap::new(),
            threshold,
            drain_per_sec: threshold / config.offence_decay.as_secs_f64().max(0.001),
            block: config.block_duration,
            max_block: config.max_block_duration.max(config.block_duration),
        }
    }

    /// Takes one message of `proto` from `peer`'s quota; false when over it.
    pub fn allow(&mut self, peer: PeerId, proto: Proto, now: Instant) -> bool {
        let rates = self.rates;
        let b = self
            .buckets
            .entry(peer)
            .or_insert_with(|| rates.map(|r| TokenBucket::new(r, now)));
        b[proto as usize].take(now)
    }

    /// The peer's last connection closed: its quotas go (its offence record stays).
    pub fn disconnected(&mut self, peer: &PeerId) {
        self.buckets.remove(peer);
    }

    /// Records an offence; returns how long to block the peer when it crossed the threshold.
    pub fn offend(&mut self, peer: PeerId, offence: Offence, now: Instant) -> Option<Duration> {
        if !self.records.contains_key(&peer) {
            self.make_room(now);
        }
        let r = self.records.entry(peer).or_insert(Record {
            points: 0.0,
            at: now,
            blocks: 0,
        });
        let elapsed = now.saturating_duration_since(r.at).as_secs_f64();
        r.points = (r.points - elapsed * self.drain_per_sec).max(0.0) + offence.points();
        r.at = now;
        if r.points < self.threshold {
            return None;
        }
        r.points = 0.0;
        let factor = 1u32.checked_shl(r.blocks.min(31)).unwrap_or(u32::MAX);
        r.blocks = r.blocks.saturating_add(1);
        Some(self.block.saturating_mul(factor).min(self.max_block))
    }

    /// Drops records idle for longer than a max block, then, if still full, the stalest.
    fn make_room(&mut self, now: Instant) {
        if self.records.len() < MAX_RECORDS {
            return;
        }
        let keep = self.max_block;
        self.records
            .retain(|_, r| now.saturating_duration_since(r.at) < keep);
        if self.records.len() >= MAX_RECORDS
            && let Some(stalest) = self
                .records
                .iter()
                .min_by_key(|(_, r)| r.at)
                .map(|(p, _)| *p)
        {
            self.records.remove(&stalest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        let mut c = Config::local();
        c.rr_quota = Rate::new(10, 10);
        c.result_quota = Rate::new(3, 3);
        c.blob_quota = Rate::new(5, 5);
        c.offence_threshold = 100;
        c.offence_decay = Duration::from_secs(10);
        c.block_duration = Duration::from_secs(30);
        c.max_block_duration = Duration::from_secs(100);
        c
    }

    #[test]
    fn quota_is_per_peer_and_protocol() {
        let mut g = Guard::new(&config());
        let (a, b) = (PeerId::random(), PeerId::random());
        let t = Instant::now();
        assert_eq!((0..20).filter(|_| g.allow(a, Proto::Market, t)).count(), 10);
        assert!(g.allow(b, Proto::Market, t));
        assert!(g.allow(a, Proto::Gossip, t));
        // A drained market bucket leaves the others full, and the reverse.
        assert_eq!((0..20).filter(|_| g.allow(a, Proto::Blob, t)).count(), 5);
        assert_eq!((0..20).filter(|_| g.allow(a, Proto::Result, t)).count(), 3);
        assert_eq!((0..20).filter(|_| g.allow(b, Proto::Blob, t)).count(), 5);
        assert_eq!((0..20).filter(|_| g.allow(b, Proto::Market, t)).count(), 9);
        for p in Purpose::ALL {
            assert_eq!(Proto::from(p).label(), p.label());
        }
    }

    #[test]
    fn blocks_double_and_cap() {
        let mut g = Guard::new(&config());
        let p = PeerId::random();
        let t = Instant::now();
        let mut blocks = vec![];
        for _ in 0..4 {
            let got: Vec<_> = (0..5)
                .filter_map(|_| g.offend(p, Offence::InvalidMessage, t))
                .collect();
            blocks.extend(got);
        }
        let secs: Vec<u64> = blocks.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, vec![30, 60, 100, 100]);
    }

    #[test]
    fn points_drain() {
        let mut g = Guard::new(&config());
        let p = PeerId::random();
        let t = Instant::now();
        for i in 0..4 {
            assert_eq!(g.offend(p, Offence::MalformedFrame, t), None, "{i}");
        }
        // 10 s drain the whole threshold: the fifth offence a while later does not block.
        let later = t + Duration::from_secs(5);
        assert_eq!(g.offend(p, Offence::MalformedFrame, later), None);
        // Quota offences are cheap: 99 at once stay below the threshold, the 100th reaches it.
        let q = PeerId::random();
        for _ in 0..99 {
            assert_eq!(g.offend(q, Offence::QuotaExceeded(Proto::Market), t), None);
        }
        assert!(
            g.offend(q, Offence::QuotaExceeded(Proto::Blob), t)
                .is_some()
        );
    }
}
