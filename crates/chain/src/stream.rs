//! Proposal streaming: splitting a block into parts, and reassembling parts from peers.
//!
//! A proposal travels as `Init` (height, round, proposer, time, payload length), `Data` chunks of
//! at most [`CHUNK`] bytes, `Fin` (the block hash), then the stream's end marker. Parts can
//! arrive out of order; they are buffered per (publishing peer, stream id).
//!
//! Everything is bounded: at most [`MAX_STREAMS`] streams in flight (the oldest is evicted), at
//! most [`MAX_PARTS`] parts per stream, at most [`MAX_PAYLOAD`] data bytes per stream. A stream
//! that breaks a bound, or whose reassembled block does not hash to its `Fin`, is dropped.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;
use malachitebft_app_channel::app::types::PeerId;
use malachitebft_app_channel::app::types::streaming::{StreamId, StreamMessage};
use malachitebft_engine::util::streaming::StreamContent;

use crate::context::{Block, MAX_PAYLOAD, PartInit, ProposalPart};

/// Largest `Data` chunk a proposer sends.
pub const CHUNK: usize = 128 * 1024;
/// Most parts in one stream (init + data + fin + end marker, with slack).
pub const MAX_PARTS: u64 = (MAX_PAYLOAD / CHUNK) as u64 + 8;
/// Most streams buffered at once.
pub const MAX_STREAMS: usize = 32;

/// Split a block into the stream messages a proposer publishes.
pub fn split(init: PartInit, block: &Block) -> Vec<StreamMessage<ProposalPart>> {
    let mut id = Vec::with_capacity(12);
    id.extend_from_slice(&init.height.0.to_be_bytes());
    id.extend_from_slice(&init.round.as_u32().unwrap_or(0).to_be_bytes());
    let stream_id = StreamId::new(Bytes::from(id));

    let mut parts = vec![ProposalPart::Init(init)];
    parts.extend(
        block
            .payload
            .chunks(CHUNK)
            .map(|c| ProposalPart::Data(c.to_vec())),
    );
    parts.push(ProposalPart::Fin(block.hash()));

    let mut msgs: Vec<_> = parts
        .into_iter()
        .enumerate()
        .map(|(seq, part)| {
            StreamMessage::new(stream_id.clone(), seq as u64, StreamContent::Data(part))
        })
        .collect();
    let end = msgs.len() as u64;
    msgs.push(StreamMessage::new(stream_id, end, StreamContent::Fin));
    msgs
}

/// A fully received proposal whose payload hashes to the hash in its `Fin`.
#[derive(Debug)]
pub struct Assembled {
    pub init: PartInit,
    pub block: Block,
}

#[derive(Default)]
struct Partial {
    parts: BTreeMap<u64, StreamContent<ProposalPart>>,
    end: Option<u64>,
    data_bytes: usize,
    arrival: u64,
}

/// Buffers of partially received streams.
#[derive(Default)]
pub struct Streams {
    partial: HashMap<(PeerId, StreamId), Partial>,
    counter: u64,
}

impl Streams {
    /// Add one message; returns the proposal once its stream is complete and consistent.
    pub fn insert(&mut self, peer: PeerId, msg: StreamMessage<ProposalPart>) -> Option<Assembled> {
        let key = (peer, msg.stream_id.clone());
        if msg.sequence >= MAX_PARTS {
            tracing::debug!(seq = msg.sequence, "dropping stream: too many parts");
            self.partial.remove(&key);
            return None;
        }
        if !self.partial.contains_key(&key) && self.partial.len() >= MAX_STREAMS {
            self.evict_oldest();
        }
        self.counter += 1;
        let arrival = self.counter;
        let entry = self.partial.entry(key.clone()).or_insert_with(|| Partial {
            arrival,
            ..Partial::default()
        });
        if let StreamContent::Data(ProposalPart::Data(d)) = &msg.content {
            entry.data_bytes = entry.data_bytes.saturating_add(d.len());
        }
        if msg.content.is_fin() {
            entry.end = Some(msg.sequence);
        }
        entry.parts.insert(msg.sequence, msg.content);
        let too_big = entry.data_bytes > MAX_PAYLOAD;
        let complete = entry
            .end
            .is_some_and(|end| entry.parts.len() as u64 == end + 1);
        if too_big {
            tracing::debug!("dropping stream: payload too large");
            self.partial.remove(&key);
            return None;
        }
        if !complete {
            return None;
        }
        let partial = self.partial.remove(&key)?;
        assemble(partial)
    }

    fn evict_oldest(&mut self) {
        let oldest = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.arrival)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.partial.remove(&key);
        }
    }
}

fn assemble(partial: Partial) -> Option<Assembled> {
    let mut contents = partial.parts.into_values();
    let Some(StreamContent::Data(ProposalPart::Init(init))) = contents.next() else {
        return None;
    };
    let mut payload = Vec::with_capacity((init.payload_len as usize).min(MAX_PAYLOAD));
    let mut fin = None;
    for content in contents {
        match content {
            StreamContent::Data(ProposalPart::Data(d)) if fin.is_none() => {
                payload.extend_from_slice(&d)
            }
            StreamContent::Data(ProposalPart::Fin(hash)) if fin.is_none() => fin = Some(hash),
            StreamContent::Fin => break,
            _ => return None,
        }
    }
    if payload.len() != init.payload_len as usize {
        return None;
    }
    let block = Block {
        height: init.height.0,
        time_ms: init.time_ms,
        payload,
    };
    (fin? == block.hash()).then_some(Assembled { init, block })
}

#[cfg(test)]
mod tests {
    use malachitebft_core_types::Round;

    use super::*;
    use crate::context::{Address, Height};

    fn init(len: usize) -> PartInit {
        PartInit {
            height: Height(3),
            round: Round::new(0),
            pol_round: Round::Nil,
            proposer: Address([7; 32]),
            time_ms: 42,
            payload_len: len as u32,
        }
    }

    fn peer() -> PeerId {
        let mut bytes = vec![0u8, 32];
        bytes.extend_from_slice(&[1; 32]);
        PeerId::from_bytes(&bytes).expect("identity peer id")
    }

    #[test]
    fn reassembles_out_of_order() {
        let block = Block {
            height: 3,
            time_ms: 42,
            payload: (0..300_000u32).map(|i| i as u8).collect(),
        };
        let mut msgs = split(init(block.payload.len()), &block);
        msgs.reverse();
        let mut streams = Streams::default();
        let mut done = None;
        for m in msgs {
            done = streams.insert(peer(), m).or(done);
        }
        assert_eq!(done.expect("complete").block, block);
    }

    #[test]
    fn rejects_wrong_hash() {
        let block = Block {
            height: 3,
            time_ms: 42,
            payload: vec![1, 2, 3],
        };
        let mut msgs = split(init(3), &block);
        if let StreamContent::Data(ProposalPart::Data(d)) = &mut msgs[1].content {
            d[0] = 9;
        }
        let mut streams = Streams::default();
        assert!(
            msgs.into_iter()
                .all(|m| streams.insert(peer(), m).is_none())
        );
    }
}
