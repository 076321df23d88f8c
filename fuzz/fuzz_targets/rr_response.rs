//! Direct responses: `codec::decode::<Response>` with the frame limit (`MAX_FRAME_BYTES`), then
//! the checks the blob fetcher makes on a chunk (crates/node/src/blobs.rs `fetch_from`).
#![no_main]

use agora_fuzz::round_trip;
use agora_types::Hash;
use agora_types::codec;
use agora_types::wire::{Response, limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(res) = codec::decode::<Response>(data, limits::MAX_FRAME_BYTES) else {
        return;
    };
    round_trip(&res, data, limits::MAX_FRAME_BYTES);
    match &res {
        Response::Echo(b) => assert!(b.len() <= data.len()),
        Response::Refused(why) => assert!(why.len() <= data.len()),
        Response::Blob { total, data: chunk } => {
            // The fetcher's acceptance rule for one chunk, for a few requested sizes.
            for size in [0u64, 1, *total, chunk.len() as u64, 64 << 20] {
                let have = 0u64;
                let want = (size - have).min(u64::from(limits::BLOB_CHUNK_BYTES)) as u32;
                let accepted = *total == size
                    && !(chunk.is_empty() && size > 0)
                    && chunk.len() as u64 <= u64::from(want);
                if accepted {
                    assert!(chunk.len() as u64 <= size);
                    let _ = Hash::of(chunk);
                }
            }
        }
        Response::Ack | Response::Busy | Response::NotFound => {}
    }
});
