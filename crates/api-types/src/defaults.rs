//! The defaults of a job's spec, used when a submit request omits a field. The CLI's flags show
//! them and the node applies them: this is the only place they are written.

/// How many independent workers must agree on the output.
pub const REDUNDANCY: u8 = 3;
/// The most paid to one worker for one execution, in tokens.
pub const MAX_PRICE: u64 = 100;
/// WebAssembly fuel (about one unit per instruction).
pub const FUEL: u64 = 10_000_000_000;
/// Linear memory, in bytes (256 MiB).
pub const MEMORY_BYTES: u64 = 256 << 20;
/// Wall-clock limit of one execution, in milliseconds.
pub const WALL_TIME_MS: u64 = 30_000;
/// Seconds from submission until the job is abandoned.
pub const DEADLINE_SECS: u64 = 600;
/// The longest deadline the node accepts, in seconds (a week); longer ones are cut to it.
pub const MAX_DEADLINE_SECS: u64 = 7 * 24 * 3600;
/// The capability every worker offers.
pub const CAPABILITY: &str = "wasm";

/// The capabilities required when a request names none.
pub fn capabilities() -> Vec<String> {
    vec![CAPABILITY.to_string()]
}
