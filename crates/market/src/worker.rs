//! The worker side: whether to bid on an announced job, and the leases this node holds.

use std::collections::BTreeMap;

use agora_types::UnixMillis;
use agora_types::job::{Bid, JobId, JobSpec};

/// What this node offers as a worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// Capability tags this node satisfies.
    pub capabilities: Vec<String>,
    /// Its price for one execution.
    pub price: u64,
    /// The most memory it gives one job, in bytes.
    pub memory_bytes: u64,
    /// The longest wall time it accepts for one job, in ms.
    pub max_wall_time_ms: u64,
}

/// Why this node does not bid on a job.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum NoBid {
    /// The job needs a capability this node lacks.
    #[error("missing capability `{0}`")]
    MissingCapability(String),
    /// This node's price is over the job's maximum.
    #[error("our price {price} is over the job's max price {max_price}")]
    PriceOverMax {
        /// Our price.
        price: u64,
        /// The job's max price.
        max_price: u64,
    },
    /// The job wants more memory than this node gives.
    #[error("the job wants {wanted} bytes of memory; we offer {offered}")]
    MemoryOverOffer {
        /// The job's memory limit.
        wanted: u64,
        /// Ours.
        offered: u64,
    },
    /// The job may run longer than this node accepts.
    #[error("the job may run {wanted} ms; we accept {offered} ms")]
    WallTimeOverOffer {
        /// The job's wall-time limit.
        wanted: u64,
        /// Ours.
        offered: u64,
    },
    /// Every executor slot is taken.
    #[error("no free executor slot")]
    NoFreeSlot,
}

/// The bid this node makes for `spec`, or why it makes none.
pub fn bid_for(
    spec: &JobSpec,
    job_id: JobId,
    offer: &Offer,
    free_slots: u32,
    total_slots: u32,
) -> Result<Bid, NoBid> {
    if let Some(missing) = spec
        .capabilities
        .iter()
        .find(|c| !offer.capabilities.contains(c))
    {
        return Err(NoBid::MissingCapability(missing.clone()));
    }
    if offer.price > spec.max_price {
        return Err(NoBid::PriceOverMax {
            price: offer.price,
            max_price: spec.max_price,
        });
    }
    if spec.limits.memory_bytes > offer.memory_bytes {
        return Err(NoBid::MemoryOverOffer {
            wanted: spec.limits.memory_bytes,
            offered: offer.memory_bytes,
        });
    }
    if spec.limits.wall_time_ms > offer.max_wall_time_ms {
        return Err(NoBid::WallTimeOverOffer {
            wanted: spec.limits.wall_time_ms,
            offered: offer.max_wall_time_ms,
        });
    }
    if free_slots == 0 {
        return Err(NoBid::NoFreeSlot);
    }
    Ok(Bid {
        job_id,
        price: offer.price,
        free_slots,
        total_slots,
    })
}

/// Why a lease is refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This node already holds a lease on the job.
    #[error("already holding a lease on this job")]
    Duplicate,
    /// Every slot is taken.
    #[error("all {capacity} slots are busy")]
    Full {
        /// How many leases this node holds at most.
        capacity: usize,
    },
}

/// The leases this node holds as a worker, at most `capacity` (its executor slots).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    capacity: usize,
    held: BTreeMap<JobId, UnixMillis>,
}

impl Leases {
    /// No leases, room for `capacity`.
    pub fn new(capacity: usize) -> Self {
        Leases {
            capacity,
            held: BTreeMap::new(),
        }
    }

    /// Takes a lease on `job_id` until `expires_ms`.
    pub fn accept(&mut self, job_id: JobId, expires_ms: UnixMillis) -> Result<(), Refusal> {
        if self.held.contains_key(&job_id) {
            return Err(Refusal::Duplicate);
        }
        if self.held.len() >= self.capacity {
            return Err(Refusal::Full {
                capacity: self.capacity,
            });
        }
        self.held.insert(job_id, expires_ms);
        Ok(())
    }

    /// The submitter extended the lease on `job_id` (it answered a heartbeat): hold it until
    /// at least `until`. Returns whether it was held.
    pub fn extend(&mut self, job_id: &JobId, until: UnixMillis) -> bool {
        match self.held.get_mut(job_id) {
            Some(e) => {
                *e = (*e).max(until);
                true
            }
            None => false,
        }
    }

    /// The job is done (result sent); frees its slot. Returns whether it was held.
    pub fn finish(&mut self, job_id: &JobId) -> bool {
        self.held.remove(job_id).is_some()
    }

    /// The submitter withdrew the lease; frees its slot. Returns whether it was held.
    pub fn cancel(&mut self, job_id: &JobId) -> bool {
        self.held.remove(job_id).is_some()
    }

    /// Drops every lease expired at `now`; returns their jobs (stop running them).
    pub fn expire(&mut self, now: UnixMillis) -> Vec<JobId> {
        let gone: Vec<JobId> = self
            .held
            .iter()
            .filter(|(_, e)| **e <= now)
            .map(|(j, _)| *j)
            .collect();
        for j in &gone {
            self.held.remove(j);
        }
        gone
    }

    /// Whether a lease on `job_id` is held.
    pub fn contains(&self, job_id: &JobId) -> bool {
        self.held.contains_key(job_id)
    }

    /// How many leases are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether no lease is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The most leases held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Free slots (capacity minus leases held).
    pub fn free_slots(&self) -> u32 {
        u32::try_from(self.capacity.saturating_sub(self.held.len())).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::tests::spec;
    use agora_types::Hash;

    fn offer() -> Offer {
        Offer {
            capabilities: vec!["wasm".into()],
            price: 10,
            memory_bytes: 1 << 30,
            max_wall_time_ms: 60_000,
        }
    }

    #[test]
    fn bids_or_explains() {
        let s = spec();
        let id = Hash::of(b"j");
        let b = bid_for(&s, id, &offer(), 2, 4).expect("bid");
        assert_eq!(
            (b.job_id, b.price, b.free_slots, b.total_slots),
            (id, 10, 2, 4)
        );
        let mut s2 = s.clone();
        s2.capabilities.push("gpu".into());
        assert_eq!(
            bid_for(&s2, id, &offer(), 2, 4),
            Err(NoBid::MissingCapability("gpu".into()))
        );
        let mut o = offer();
        o.price = 1000;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::PriceOverMax { .. })
        ));
        let mut o = offer();
        o.memory_bytes = 1;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::MemoryOverOffer { .. })
        ));
        let mut o = offer();
        o.max_wall_time_ms = 1;
        assert!(matches!(
            bid_for(&s, id, &o, 2, 4),
            Err(NoBid::WallTimeOverOffer { .. })
        ));
        assert_eq!(bid_for(&s, id, &offer(), 0, 4), Err(NoBid::NoFreeSlot));
        assert!(NoBid::NoFreeSlot.to_string().contains("slot"));
    }

    #[test]
    fn leases_bounded() {
        let mut l = Leases::new(2);
        let (a, b, c) = (Hash::of(b"a"), Hash::of(b"b"), Hash::of(b"c"));
        l.accept(a, 100).expect("a");
        assert_eq!(l.accept(a, 100), Err(Refusal::Duplicate));
        l.accept(b, 200).expect("b");
        assert_eq!(l.free_slots(), 0);
        assert_eq!(l.accept(c, 100), Err(Refusal::Full { capacity: 2 }));
        assert!(l.extend(&b, 400), "extended");
        assert!(!l.extend(&c, 400), "not held");
        assert!(l.expire(300).contains(&a));
        assert!(l.contains(&b), "b lives until 400");
        l.accept(a, 100).expect("a again");
        assert_eq!(l.expire(150), vec![a]);
        assert!(l.cancel(&b));
        assert!(!l.finish(&b));
        l.accept(c, 300).expect("c");
        assert!(l.finish(&c));
        assert!(l.is_empty());
    }
}
