//! The example workloads `agora devnet --jobs` submits, embedded in the binary, and the local
//! execution their verified outputs are checked against.

use std::sync::Arc;

use agora_exec::{Job, Limits, Sandbox};

/// An example module and one input for it.
pub struct Work {
    /// The example's name, for messages.
    pub name: &'static str,
    pub module: &'static [u8],
    pub input: Vec<u8>,
}

pub const PRIMES: &[u8] = include_bytes!("../../../examples/wasm/primes.wasm");
pub const MANDELBROT: &[u8] = include_bytes!("../../../examples/wasm/mandelbrot.wasm");
pub const SHA256CHAIN: &[u8] = include_bytes!("../../../examples/wasm/sha256chain.wasm");

/// The `i`-th job of a devnet run: the three examples in turn, each with its own input.
pub fn nth(i: usize) -> Work {
    match i % 3 {
        0 => Work {
            name: "primes",
            module: PRIMES,
            input: format!("{}", 20_000 + 997 * i).into_bytes(),
        },
        1 => Work {
            name: "mandelbrot",
            module: MANDELBROT,
            input: format!("{} 48 200", 48 + i % 17).into_bytes(),
        },
        _ => Work {
            name: "sha256chain",
            module: SHA256CHAIN,
            input: format!("{}\nagora-{i}", 500 + i).into_bytes(),
        },
    }
}

/// Runs `work` here, in the same sandbox the workers use: the reference output.
pub fn local_output(sandbox: &Sandbox, work: &Work) -> Result<Vec<u8>, agora_exec::ExecError> {
    let job = Job::new(
        Arc::<[u8]>::from(work.module),
        work.input.clone(),
        vec![],
        Limits::default(),
    );
    sandbox.run_blocking(&job).map(|o| o.stdout)
}
