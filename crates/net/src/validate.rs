//! Gossip validation: size, decode, topic, signature, synchrony bound, replay.
//!
//! GossipSub runs with `validate_messages()`: every message waits in its cache until the actor
//! reports a verdict, and only accepted messages are forwarded to other peers and handed to the
//! node. The actor decodes ([`decode`]: steps 1, 2 without the signature, and 4), then the
//! validation pool ([`crate::vpool`]) checks the signature and the bound ([`verify`]: 2 and 3)
//! off the actor (when a topic's queue is full the actor checks that message itself rather than
//! drop it: GossipSub would count a dropped message as seen and ignore every later copy); a
//! digest already in the cache is ignored before its signature is checked, and a digest is
//! recorded only once its message verified. The steps:
//!
//! 1. the payload is at most [`Config::max_gossip_bytes`](crate::Config::max_gossip_bytes)
//!    (`oversized`, `Reject`);
//! 2. it decodes as a `GossipMessage` meant for the topic it came on, and its signature verifies
//!    (`invalid`, `Reject`);
//! 3. its signature timestamp is within the synchrony bound of our clock (`out_of_sync`,
//!    `Reject`): a message cannot be replayed long after it was signed;
//! 4. its signed digest is not in the [`ReplayCache`] (`replay`, `Ignore`): within the bound, the
//!    same signed message is accepted once, even re-encoded so that its GossipSub id differs
//!    (postcard accepts overlong varints, so one message has many encodings).
//!
//! Job announcements are signed when the job is submitted and re-announced later with a higher
//! `attempt`, so they skip the synchrony bound; their replay key is the job's digest and the
//! attempt. Ledger transactions skip it too (a mempool may re-gossip them; their nonce stops
//! replays at the ledger) but go through the replay cache. `Text` messages (tests, operators) are unsigned and skip steps 3 and 4.

use std::collections::{HashMap, VecDeque};

use agora_types::wire::{GossipMessage, Topic};
use agora_types::{Hash, UnixMillis};

/// Why a gossip message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Oversized(usize),
    Invalid(String),
    OutOfSync(String),
}

impl Refusal {
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Oversized(_) => "oversized",
            Refusal::Invalid(_) => "invalid",
            Refusal::OutOfSync(_) => "out_of_sync",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Oversized(n) => write!(f, "payload of {n} bytes over the limit"),
            Refusal::Invalid(e) | Refusal::OutOfSync(e) => f.write_str(e),
        }
    }
}

/// A message that decoded for its topic, with its replay key (none for `Text`); its signature
/// is not checked yet ([`verify`]).
pub(crate) struct Valid {
    pub message: GossipMessage,
    pub replay_key: Option<Hash>,
}

/// Steps 1 and 2 without the signature, and the replay key: what the actor checks before a
/// message goes to the validation pool. The key is the digest of the whole signed envelope,
/// signature included, so recording it before the signature is checked can only ever make us
/// ignore copies of these very bytes.
pub(crate) fn decode(data: &[u8], topic: &str, max_bytes: usize) -> Result<Valid, Refusal> {
    if data.len() > max_bytes {
        return Err(Refusal::Oversized(data.len()));
    }
    let message = GossipMessage::decode(data).map_err(|e| Refusal::Invalid(e.to_string()))?;
    let topic = Topic::from_name(topic)
        .ok_or_else(|| Refusal::Invalid(format!("unknown topic {topic}")))?;
    if message.topic() != topic {
        return Err(Refusal::Invalid(format!(
            "a {:?} message on topic {}",
            message.topic(),
            topic.name()
        )));
    }
    let replay_key = match &message {
        GossipMessage::Job { job, attempt } => {
            let mut key = job.digest().0.to_vec();
            key.extend_from_slice(&attempt.to_be_bytes());
            Some(Hash::of(&key))
        }
        GossipMessage::Capability(s) => Some(s.digest()),
        GossipMessage::Result(s) => {
            let n = s.payload.notices.len();
            if n > agora_types::job::MAX_NOTICES {
                return Err(Refusal::Invalid(format!(
                    "{n} result notices in one batch, over {}",
                    agora_types::job::MAX_NOTICES
                )));
            }
            Some(s.digest())
        }
        GossipMessage::Reputation(s) => {
            let n = s.payload.updates.len();
            if n == 0 || n > agora_types::job::MAX_REPUTATION_UPDATES {
                return Err(Refusal::Invalid(format!(
                    "{n} reputation updates in one report, not between 1 and {}",
                    agora_types::job::MAX_REPUTATION_UPDATES
                )));
            }
            // Each update is capped where it is applied; one subject per update keeps a
            // report from multiplying that cap.
            let mut subjects: Vec<_> = s.payload.updates.iter().map(|u| u.subject).collect();
            subjects.sort_unstable();
            if subjects.windows(2).any(|w| w[0] == w[1]) {
                return Err(Refusal::Invalid(
                    "a reputation report names the same peer twice; sum its changes into one \
                     update"
                        .into(),
                ));
            }
            Some(s.digest())
        }
        GossipMessage::Health(s) => Some(s.digest()),
        GossipMessage::Tx(tx) => Some(tx.digest()),
        GossipMessage::Text(_) => None,
    };
    Ok(Valid {
        message,
        replay_key,
    })
}

/// The peer whose key signed the message's envelope (none for `Text` and for ledger
/// transactions, whose signer is an account the ledger checks).
pub(crate) fn author(message: &GossipMessage) -> Option<libp2p::PeerId> {
    match message {
        GossipMessage::Job { job, .. } => job.signer_peer().ok(),
        GossipMessage::Capability(s) => s.signer_peer().ok(),
        GossipMessage::Result(s) => s.signer_peer().ok(),
        GossipMessage::Reputation(s) => s.signer_peer().ok(),
        GossipMessage::Health(s) => s.signer_peer().ok(),
        GossipMessage::Tx(_) | GossipMessage::Text(_) => None,
    }
}

/// Step 3 and the signature (the expensive part, run in the validation pool).
pub(crate) fn verify(
    message: GossipMessage,
    now: UnixMillis,
    bound_ms: u64,
) -> Result<GossipMessage, Refusal> {
    let fresh = |r: Result<(), agora_types::sign::SignError>| {
        r.map_err(|e| match e {
            agora_types::sign::SignError::OutOfSync { .. } => Refusal::OutOfSync(e.to_string()),
            e => Refusal::Invalid(e.to_string()),
        })
    };
    match &message {
        GossipMessage::Job { job, .. } => fresh(job.verify())?,
        GossipMessage::Capability(s) => fresh(s.verify_fresh(now, bound_ms))?,
        GossipMessage::Result(s) => fresh(s.verify_fresh(now, bound_ms))?,
        GossipMessage::Reputation(s) => fresh(s.verify_fresh(now, bound_ms))?,
        GossipMessage::Health(s) => fresh(s.verify_fresh(now, bound_ms))?,
        // Ledger transactions may sit in a mempool and be re-gossiped long after signing;
        // their nonce stops replays at the ledger, so they skip the synchrony bound too.
        GossipMessage::Tx(tx) => fresh(tx.verify())?,
        GossipMessage::Text(_) => {}
    }
    Ok(message)
}

/// Every step but the replay cache, in one call.
#[cfg(test)]
pub(crate) fn check(
    data: &[u8],
    topic: &str,
    max_bytes: usize,
    now: UnixMillis,
    bound_ms: u64,
) -> Result<Valid, Refusal> {
    let Valid {
        message,
        replay_key,
    } = decode(data, topic, max_bytes)?;
    Ok(Valid {
        message: verify(message, now, bound_ms)?,
        replay_key,
    })
}

/// Signed digests seen recently, each kept for `ttl_ms` (two synchrony bounds: a message older
/// than that fails the bound anyway), at most `capacity` of them (the oldest goes first).
pub(crate) struct ReplayCache {
    seen: HashMap<Hash, UnixMillis>,
    order: VecDeque<(UnixMillis, Hash)>,
    ttl_ms: u64,
    capacity: usize,
}

impl ReplayCache {
    pub fn new(ttl_ms: u64, capacity: usize) -> Self {
        ReplayCache {
            seen: HashMap::new(),
            order: VecDeque::new(),
            ttl_ms,
            capacity: capacity.max(1),
        }
    }

    /// Whether `key` was recorded and has not expired (without recording it).
    pub fn contains(&self, key: &Hash, now: UnixMillis) -> bool {
        self.seen.get(key).is_some_and(|expiry| *expiry > now)
    }

    /// Records `key`; false if it was already there (a replay).
    pub fn insert(&mut self, key: Hash, now: UnixMillis) -> bool {
        self.expire(now);
        if let Some(expiry) = self.seen.get(&key)
            && *expiry > now
        {
            return false;
        }
        while self.seen.len() >= self.capacity {
            let Some((_, old)) = self.order.pop_front() else {
                break;
            };
            self.seen.remove(&old);
        }
        let expiry = now.saturating_add(self.ttl_ms);
        self.seen.insert(key, expiry);
        self.order.push_back((expiry, key));
        true
    }

    fn expire(&mut self, now: UnixMillis) {
        while let Some((expiry, key)) = self.order.front().copied() {
            if expiry > now {
                break;
            }
            self.order.pop_front();
            if self.seen.get(&key) == Some(&expiry) {
                self.seen.remove(&key);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_types::Keypair;
    use agora_types::codec;
    use agora_types::job::Health;
    use agora_types::sign::Signed;

    fn health(at: UnixMillis) -> GossipMessage {
        let h = Health {
            uptime_s: 1,
            connected_peers: 2,
            running_jobs: 0,
        };
        GossipMessage::Health(Signed::sign(&Keypair::generate_ed25519(), h, at).unwrap())
    }

    fn report(n: usize, at: UnixMillis) -> GossipMessage {
        let update = |_| agora_types::job::ReputationUpdate {
            subject: libp2p::PeerId::random(),
            action: "verified".into(),
            delta: 5,
            job_id: None,
        };
        let r = agora_types::job::ReputationReport {
            updates: (0..n).map(update).collect(),
        };
        GossipMessage::Reputation(Signed::sign(&Keypair::generate_ed25519(), r, at).unwrap())
    }

    #[test]
    fn a_reputation_report_holds_between_one_and_the_cap_of_updates() {
        let now = 1_000_000;
        let topic = Topic::Reputation.name();
        let max = agora_types::job::MAX_REPUTATION_UPDATES;
        for n in [1, max] {
            let bytes = codec::encode(&report(n, now)).unwrap();
            assert!(
                check(&bytes, topic, 1 << 16, now, 5000).is_ok(),
                "{n} updates"
            );
        }
        for n in [0, max + 1] {
            let bytes = codec::encode(&report(n, now)).unwrap();
            let r = check(&bytes, topic, 1 << 16, now, 5000).err().unwrap();
            assert_eq!(r.label(), "invalid", "{n} updates");
        }
        let GossipMessage::Reputation(mut twice) = report(2, now) else {
            unreachable!()
        };
        twice.payload.updates[1].subject = twice.payload.updates[0].subject;
        let bytes = codec::encode(&GossipMessage::Reputation(twice)).unwrap();
        let r = check(&bytes, topic, 1 << 16, now, 5000).err().unwrap();
        assert_eq!(r.label(), "invalid", "one subject twice");
    }

    #[test]
    fn checks_bound_and_topic() {
        let now = 1_000_000;
        let bytes = codec::encode(&health(now - 1000)).unwrap();
        let topic = Topic::Health.name();
        assert!(check(&bytes, topic, 1 << 16, now, 5000).is_ok());
        let r = check(&bytes, topic, 1 << 16, now + 10_000, 5000)
            .err()
            .unwrap();
        assert_eq!(r.label(), "out_of_sync");
        let r = check(&bytes, Topic::Jobs.name(), 1 << 16, now, 5000)
            .err()
            .unwrap();
        assert_eq!(r.label(), "invalid");
        let r = check(&bytes, topic, 10, now, 5000).err().unwrap();
        assert_eq!(r.label(), "oversized");
        let r = check(&[0xff, 0x01], topic, 1 << 16, now, 5000)
            .err()
            .unwrap();
        assert_eq!(r.label(), "invalid");
    }

    #[test]
    fn overlong_encoding_has_the_same_replay_key() {
        let now = 1_000_000;
        let bytes = codec::encode(&health(now)).unwrap();
        // Variant 4 (Health) as an overlong varint: 0x84 0x00.
        assert_eq!(bytes[0], 4);
        let mut other = vec![0x84, 0x00];
        other.extend_from_slice(&bytes[1..]);
        let topic = Topic::Health.name();
        let a = check(&bytes, topic, 1 << 16, now, 5000).unwrap();
        let b = check(&other, topic, 1 << 16, now, 5000).unwrap();
        assert_eq!(a.replay_key, b.replay_key);
        let mut cache = ReplayCache::new(10_000, 16);
        assert!(cache.insert(a.replay_key.unwrap(), now));
        assert!(!cache.insert(b.replay_key.unwrap(), now + 1));
    }

    #[test]
    fn cache_expires_and_is_bounded() {
        let mut c = ReplayCache::new(100, 3);
        for i in 0..10u8 {
            assert!(c.insert(Hash::of(&[i]), 0));
            assert!(c.len() <= 3);
        }
        assert!(!c.insert(Hash::of(&[9]), 50));
        assert!(c.insert(Hash::of(&[9]), 100));
        c.insert(Hash::of(&[42]), 1000);
        assert_eq!(c.len(), 1);
    }
}
