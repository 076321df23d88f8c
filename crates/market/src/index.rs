//! The capability index: what each known peer last advertised on `agora/capabilities/1`.
//!
//! The index answers one question for the submitter: could anyone run this job at all, and if
//! not, why not ([`Availability`] feeds [`crate::WaitReason`]). It is bounded by
//! [`crate::Config::max_index_entries`] and every entry lapses after
//! [`crate::Config::ad_ttl_ms`] unless refreshed.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use agora_types::job::{CapabilityAd, JobSpec};
use agora_types::{PeerId, UnixMillis};

/// One peer's latest ad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// The ad as received.
    pub ad: CapabilityAd,
    /// The peer's IP address, when the transport knows it.
    pub ip: Option<IpAddr>,
    /// When the ad was received.
    pub updated_ms: UnixMillis,
}

/// How many known peers could take a job, by stage of the filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Availability {
    /// Peers that offer every required capability tag, whatever their memory.
    pub with_capabilities: usize,
    /// Peers that offer every required capability tag and at least the job's memory limit.
    pub capable: usize,
    /// Capable peers whose advertised price is at most the job's `max_price`.
    pub affordable: usize,
    /// Affordable peers with at least one free executor slot.
    pub free: usize,
    /// The free peers, in peer id order.
    pub peers: Vec<PeerId>,
    /// The lowest price among capable peers, if any.
    pub cheapest: Option<u64>,
}

/// Whether `value` is within an ad's `limit` (0: the ad says nothing).
fn within(value: u64, limit: u64) -> bool {
    limit == 0 || value <= limit
}

/// Peer capability ads, bounded and expiring.
#[derive(Clone, Debug)]
pub struct CapabilityIndex {
    ttl_ms: u64,
    max_entries: usize,
    entries: BTreeMap<PeerId, IndexEntry>,
}

impl CapabilityIndex {
    /// An empty index whose entries live `ttl_ms` and which holds at most `max_entries` peers.
    pub fn new(ttl_ms: u64, max_entries: usize) -> Self {
        CapabilityIndex {
            ttl_ms,
            max_entries: max_entries.max(1),
            entries: BTreeMap::new(),
        }
    }

    fn fresh(&self, e: &IndexEntry, now: UnixMillis) -> bool {
        now.saturating_sub(e.updated_ms) <= self.ttl_ms
    }

    /// Records `peer`'s ad. An ad whose `seq` is not newer than the stored one is ignored (unless
    /// the stored one has already lapsed, e.g. the peer restarted). When the index is full, lapsed
    /// entries are dropped first, then the least recently refreshed one. Returns whether the ad
    /// was stored.
    pub fn insert(
        &mut self,
        peer: PeerId,
        ad: CapabilityAd,
        ip: Option<IpAddr>,
        now: UnixMillis,
    ) -> bool {
        if let Some(old) = self.entries.get(&peer)
            && ad.seq <= old.ad.seq
            && self.fresh(old, now)
        {
            return false;
        }
        if !self.entries.contains_key(&peer) && self.entries.len() >= self.max_entries {
            self.expire(now);
            if self.entries.len() >= self.max_entries {
                let oldest = self
                    .entries
                    .iter()
                    .min_by_key(|(p, e)| (e.updated_ms, **p))
                    .map(|(p, _)| *p);
                if let Some(p) = oldest {
                    self.entries.remove(&p);
                }
            }
        }
        self.entries.insert(
            peer,
            IndexEntry {
                ad,
                ip,
                updated_ms: now,
            },
        );
        true
    }

    /// Forgets `peer`.
    pub fn remove(&mut self, peer: &PeerId) -> Option<IndexEntry> {
        self.entries.remove(peer)
    }

    /// Drops every entry older than the ad TTL; returns how many were dropped.
    pub fn expire(&mut self, now: UnixMillis) -> usize {
        let before = self.entries.len();
        let ttl = self.ttl_ms;
        self.entries
            .retain(|_, e| now.saturating_sub(e.updated_ms) <= ttl);
        before - self.entries.len()
    }

    /// Who could run `spec` now (see [`Availability`]). Lapsed entries are not counted.
    pub fn query(&self, spec: &JobSpec, now: UnixMillis) -> Availability {
        self.query_excluding(spec, now, &HashSet::new())
    }

    /// Like [`CapabilityIndex::query`], leaving out the peers in `exclude` (e.g. workers that
    /// already hold or held a lease on the job).
    pub fn query_excluding(
        &self,
        spec: &JobSpec,
        now: UnixMillis,
        exclude: &HashSet<PeerId>,
    ) -> Availability {
        let mut a = Availability::default();
        for (peer, e) in &self.entries {
            if !self.fresh(e, now) || exclude.contains(peer) {
                continue;
            }
            let ad = &e.ad;
            let has_caps = spec
                .capabilities
                .iter()
                .all(|c| ad.capabilities.iter().any(|o| o == c));
            if !has_caps {
                continue;
            }
            a.with_capabilities += 1;
            if ad.memory_bytes < spec.limits.memory_bytes {
                continue;
            }
            a.capable += 1;
            a.cheapest = Some(a.cheapest.map_or(ad.price, |c| c.min(ad.price)));
            if ad.price > spec.max_price {
                continue;
            }
            a.affordable += 1;
            if ad.free_slots == 0 {
                continue;
            }
            a.free += 1;
            a.peers.push(*peer);
        }
        a
    }

    /// The standing offers that could take `spec` now, for the fast path: ads at most
    /// `max_age_ms` old from peers not in `exclude` that offer every capability, enough memory, a
    /// price at most the job's and a free slot, in peer id order.
    pub fn offers<'a>(
        &'a self,
        spec: &'a JobSpec,
        now: UnixMillis,
        max_age_ms: u64,
        exclude: &'a HashSet<PeerId>,
    ) -> impl Iterator<Item = (&'a PeerId, &'a IndexEntry)> + 'a {
        self.entries.iter().filter(move |(peer, e)| {
            let ad = &e.ad;
            self.fresh(e, now)
                && now.saturating_sub(e.updated_ms) <= max_age_ms
                && !exclude.contains(*peer)
                && spec
                    .capabilities
                    .iter()
                    .all(|c| ad.capabilities.iter().any(|o| o == c))
                && ad.memory_bytes >= spec.limits.memory_bytes
                && ad.price <= spec.max_price
                && ad.free_slots > 0
                && within(spec.input_size, ad.max_input_bytes)
                && within(spec.module_size, ad.max_module_bytes)
                && within(spec.limits.wall_time_ms, ad.max_wall_time_ms)
        })
    }

    /// `peer`'s entry, if known (lapsed or not).
    pub fn get(&self, peer: &PeerId) -> Option<&IndexEntry> {
        self.entries.get(peer)
    }

    /// How many peers are indexed (including lapsed entries not yet expired).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in peer id order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerId, &IndexEntry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use agora_types::Hash;
    use agora_types::job::JobLimits;

    pub(crate) fn ad(caps: &[&str], mem: u64, price: u64, free: u32, seq: u64) -> CapabilityAd {
        CapabilityAd {
            engine: "wasmtime-48".into(),
            capabilities: caps.iter().map(|c| c.to_string()).collect(),
            cores: 4,
            memory_bytes: mem,
            free_slots: free,
            total_slots: 4,
            price,
            version: "0.1.0".into(),
            seq,
            max_input_bytes: 0,
            max_module_bytes: 0,
            max_wall_time_ms: 0,
        }
    }

    pub(crate) fn spec() -> JobSpec {
        JobSpec {
            module: Hash::of(b"m"),
            module_size: 10,
            input: Hash::of(b""),
            input_size: 0,
            args: vec![],
            limits: JobLimits {
                fuel: 1_000,
                memory_bytes: 1 << 20,
                wall_time_ms: 1_000,
            },
            capabilities: vec!["wasm".into()],
            redundancy: 3,
            max_price: 100,
            deadline_ms: 0,
            nonce: 1,
            credit: false,
            runtime: Default::default(),
        }
    }

    #[test]
    fn seq_and_expiry() {
        let mut idx = CapabilityIndex::new(1_000, 10);
        let p = PeerId::random();
        assert!(idx.insert(p, ad(&["wasm"], 1 << 30, 10, 1, 5), None, 0));
        assert!(!idx.insert(p, ad(&["wasm"], 1 << 30, 99, 1, 5), None, 10));
        assert!(!idx.insert(p, ad(&["wasm"], 1 << 30, 99, 1, 4), None, 10));
        assert_eq!(idx.get(&p).expect("entry").ad.price, 10);
        assert!(idx.insert(p, ad(&["wasm"], 1 << 30, 20, 1, 6), None, 100));
        assert_eq!(idx.get(&p).expect("entry").ad.price, 20);
        // A lapsed entry accepts a restarted peer's lower seq.
        assert!(idx.insert(p, ad(&["wasm"], 1 << 30, 30, 1, 1), None, 2_000));
        assert_eq!(idx.expire(2_500), 0);
        assert_eq!(idx.query(&spec(), 2_500).capable, 1);
        assert_eq!(
            idx.query(&spec(), 3_001).capable,
            0,
            "lapsed entries not counted"
        );
        assert_eq!(idx.expire(3_001), 1);
        assert!(idx.is_empty());
    }

    #[test]
    fn bounded() {
        let mut idx = CapabilityIndex::new(1_000_000, 3);
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for (i, p) in peers.iter().enumerate() {
            idx.insert(*p, ad(&["wasm"], 1 << 30, 1, 1, 1), None, i as u64);
        }
        assert_eq!(idx.len(), 3);
        assert!(idx.get(&peers[0]).is_none() && idx.get(&peers[1]).is_none());
        assert!(idx.get(&peers[4]).is_some());
        idx.remove(&peers[4]);
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn query_stages() {
        let mut idx = CapabilityIndex::new(10_000, 100);
        let s = spec();
        let cap_free = PeerId::random();
        idx.insert(cap_free, ad(&["wasm", "gpu"], 1 << 30, 50, 2, 1), None, 0);
        idx.insert(PeerId::random(), ad(&["gpu"], 1 << 30, 1, 2, 1), None, 0);
        idx.insert(PeerId::random(), ad(&["wasm"], 1 << 10, 1, 2, 1), None, 0);
        idx.insert(PeerId::random(), ad(&["wasm"], 1 << 30, 500, 2, 1), None, 0);
        idx.insert(PeerId::random(), ad(&["wasm"], 1 << 30, 60, 0, 1), None, 0);
        let a = idx.query(&s, 1);
        assert_eq!(a.capable, 3);
        assert_eq!(a.affordable, 2);
        assert_eq!(a.free, 1);
        assert_eq!(a.peers, vec![cap_free]);
        assert_eq!(a.cheapest, Some(50));
        let ex: HashSet<PeerId> = [cap_free].into_iter().collect();
        let b = idx.query_excluding(&s, 1, &ex);
        assert_eq!((b.capable, b.affordable, b.free), (2, 1, 0));
    }
}
