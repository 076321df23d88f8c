//! Signed job specs (`Signed<JobSpec>`, as carried by job announcements and leases), decoded
//! with the gossip limit, then validated against the node's default bounds and verified. A spec
//! that validates must actually be within every bound.
#![no_main]

use agora_fuzz::{check_signed, round_trip};
use agora_types::codec;
use agora_types::job::{SignedJob, SpecBounds, job_id};
use agora_types::wire::limits;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(job) = codec::decode::<SignedJob>(data, limits::MAX_GOSSIP_BYTES) else {
        return;
    };
    round_trip(&job, data, limits::MAX_GOSSIP_BYTES);
    check_signed(&job);
    assert_eq!(job_id(&job), job.digest());
    let b = SpecBounds::default();
    let spec = &job.payload;
    let verdict = spec.validate(&b);
    assert_eq!(verdict, spec.validate(&b), "validate is not deterministic");
    match verdict {
        Ok(()) => {
            assert!(spec.module_size >= 1 && spec.module_size <= b.max_module_bytes);
            assert!(spec.input_size <= b.max_input_bytes);
            assert!(spec.args.len() <= b.max_args);
            assert!(spec.args.iter().all(|a| a.len() <= b.max_arg_len));
            assert!(spec.capabilities.len() <= b.max_capabilities);
            assert!(spec.capabilities.iter().all(|c| !c.is_empty() && c.len() <= 64));
            assert!(spec.redundancy >= 1 && spec.redundancy <= b.max_redundancy);
            assert!(spec.limits.fuel > 0);
            assert!(spec.limits.memory_bytes >= 65_536);
            assert!(spec.limits.memory_bytes <= b.max_memory_bytes);
            assert!(spec.limits.wall_time_ms >= 1 && spec.limits.wall_time_ms <= b.max_wall_time_ms);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
