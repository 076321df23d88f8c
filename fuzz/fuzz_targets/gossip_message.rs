//! Gossip payloads: `GossipMessage::decode` (bounded by `MAX_GOSSIP_BYTES`), then what the
//! node's gossip validation does next (topic, signature, synchrony bound, digest), and for each
//! kind what the node does with it (spec validation, peer ids, the ledger's precheck and mempool).
#![no_main]

use agora_fuzz::{check_peer, check_signed, ledger, mempool_and_apply, round_trip};
use agora_types::job::{SpecBounds, job_id};
use agora_types::wire::{GossipMessage, Topic, limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = GossipMessage::decode(data) else {
        return;
    };
    assert!(data.len() <= limits::MAX_GOSSIP_BYTES);
    round_trip(&msg, data, limits::MAX_GOSSIP_BYTES);
    let topic = msg.topic();
    assert_eq!(Topic::from_name(topic.name()), Some(topic));
    match &msg {
        GossipMessage::Job { job, attempt: _ } => {
            check_signed(job);
            let _ = job.payload.validate(&SpecBounds::default());
            assert_eq!(job_id(job), job.digest());
        }
        GossipMessage::Capability(s) => {
            check_signed(s);
            let ad = &s.payload;
            let _ = ad.free_slots.min(ad.total_slots);
        }
        GossipMessage::Result(s) => {
            check_signed(s);
            for w in &s.payload.workers {
                check_peer(w);
            }
        }
        GossipMessage::Reputation(s) => {
            check_signed(s);
            for u in &s.payload.updates {
                check_peer(&u.subject);
            }
        }
        GossipMessage::Health(s) => check_signed(s),
        GossipMessage::Text(t) => assert!(t.len() <= data.len()),
        GossipMessage::Tx(tx) => {
            check_signed(tx);
            let _ = tx.payload.kind.name();
            mempool_and_apply(tx, ledger(), 1);
        }
    }
});
