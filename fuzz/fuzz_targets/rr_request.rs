//! Direct requests: `codec::decode::<Request>` with the frame limit the node's request-response
//! codec uses (`MAX_FRAME_BYTES`), then what the node does with each: bids and results verified,
//! leases' jobs verified and validated, result output checked against its claim, blob ranges
//! capped.
#![no_main]

use agora_fuzz::{check_result, check_signed, round_trip};
use agora_types::codec;
use agora_types::job::{SpecBounds, job_id};
use agora_types::wire::{Request, limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = codec::decode::<Request>(data, limits::MAX_FRAME_BYTES) else {
        return;
    };
    round_trip(&req, data, limits::MAX_FRAME_BYTES);
    match &req {
        Request::Echo(b) => assert!(b.len() <= data.len()),
        Request::Bid(s) => {
            check_signed(s);
            assert!(s.payload.free_slots.min(s.payload.total_slots) <= s.payload.total_slots);
        }
        Request::Lease(lease) => {
            check_signed(&lease.job);
            let _ = lease.job.payload.validate(&SpecBounds::default());
            let _ = job_id(&lease.job);
        }
        Request::Result {
            result,
            output,
            stderr,
        } => {
            check_signed(result);
            check_result(&result.payload, output);
            assert!(stderr.len() <= data.len());
        }
        Request::Heartbeat(h) => check_signed(h),
        Request::Cancel(id) => {
            let _ = id.to_hex();
        }
        Request::GetBlob { hash, offset, len } => {
            // The node caps the chunk, then reads `[min(offset, total), +len)` of the blob
            // (crates/node/src/store.rs `read_blob_range`); check that arithmetic for every
            // total a blob may have up to the module size bound.
            let _ = hash.short();
            let len = (*len).min(limits::BLOB_CHUNK_BYTES);
            for total in [0u64, 1, u64::from(len), *offset, offset.saturating_add(1), 64 << 20] {
                let start = offset.min(&total);
                let want = u64::from(len).min(total - start);
                assert!(want <= u64::from(limits::BLOB_CHUNK_BYTES));
                assert!(start + want <= total);
            }
        }
    }
});
