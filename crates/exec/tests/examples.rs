//! Runs the committed example workloads (`examples/wasm/*.wasm`, built by
//! `examples/build.sh`) through the sandbox and checks their answers, their
//! determinism (same stdout and fuel on a second run) and, when the native
//! builds from `examples/build.sh` are present in `target/examples-native`,
//! that native and sandboxed outputs agree byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use agora_exec::{Job, Limits, Outcome, Sandbox};

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new().unwrap()).clone()
}

fn module(name: &str) -> Vec<u8> {
    let path = repo_root()
        .join("examples/wasm")
        .join(format!("{name}.wasm"));
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run examples/build.sh)", path.display()))
}

/// Runs the example twice and checks that both runs agree exactly.
fn run(name: &str, input: &[u8]) -> Outcome {
    let job = Job::new(module(name), input.to_vec(), Vec::new(), Limits::default());
    let first = sandbox().run_blocking(&job).unwrap();
    let second = sandbox().run_blocking(&job).unwrap();
    assert_eq!(
        first.stdout, second.stdout,
        "{name}: stdout differs between runs"
    );
    assert_eq!(
        first.fuel_used, second.fuel_used,
        "{name}: fuel differs between runs"
    );
    assert_eq!(first.exit_code, second.exit_code);
    assert!(first.fuel_used > 0);
    if let Some(native) = native(name, input) {
        assert_eq!(
            first.stdout, native,
            "{name}: native and sandboxed outputs differ"
        );
    }
    first
}

/// Output of the native build of the example, if `examples/build.sh` made one.
fn native(name: &str, input: &[u8]) -> Option<Vec<u8>> {
    let path = repo_root().join("target/examples-native").join(name);
    if !path.exists() {
        return None;
    }
    let mut child = Command::new(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(input).ok()?;
    let out = child.wait_with_output().ok()?;
    Some(out.stdout)
}

#[test]
fn primes_counts_primes() {
    let out = run("primes", b"100\n");
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, b"primes(100) = 25\n");
    assert_eq!(run("primes", b"").stdout, b"primes(1000000) = 78498\n");
    assert_eq!(run("primes", b"1").stdout, b"primes(1) = 0\n");
    assert_eq!(run("primes", b"2").stdout, b"primes(2) = 1\n");
}

#[test]
fn primes_rejects_garbage() {
    let job = Job::new(
        module("primes"),
        b"many".to_vec(),
        Vec::new(),
        Limits::default(),
    );
    let out = sandbox().run_blocking(&job).unwrap();
    assert_eq!(out.exit_code, 2);
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected a decimal N"));
}

#[test]
fn sha256chain_known_answers() {
    // One round of "abc" is the FIPS 180-2 test vector.
    let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\n";
    assert_eq!(run("sha256chain", b"1\nabc").stdout, abc.as_bytes());
    assert_eq!(run("sha256chain", b"1\nabc\n").stdout, abc.as_bytes());
    // Two rounds: SHA-256 of the 32 raw bytes of the first digest.
    assert_eq!(
        run("sha256chain", b"2\nabc\n").stdout,
        b"4f8b42c22dd3729b519ba6f68d2da7cc5b2d606d05daed5ad5128cc03e6c6358\n"
    );
    // Defaults: 100000 rounds of "agora".
    assert_eq!(
        run("sha256chain", b"").stdout,
        b"1d624a0e829cecb08075ce63413282a46775ad7e55e8807df52c0b0285e453d4\n"
    );
}

#[test]
fn mandelbrot_writes_a_pgm() {
    let out = run("mandelbrot", b"64 48 100");
    let header = b"P5\n64 48\n255\n";
    assert!(out.stdout.starts_with(b"P5\n"));
    assert!(out.stdout.starts_with(header));
    assert_eq!(out.stdout.len(), header.len() + 64 * 48);
    let pixels = &out.stdout[header.len()..];
    // The point -0.5+0i (inside the set) is black; the top-left corner
    // escapes at once.
    let (x, y) = (((-0.5 + 2.25) / 3.0 * 64.0) as usize, 24);
    assert_eq!(pixels[y * 64 + x], 0);
    assert!(pixels[0] >= 1);

    let out = run("mandelbrot", b"");
    let header = b"P5\n256 256\n255\n";
    assert!(out.stdout.starts_with(header));
    assert_eq!(out.stdout.len(), header.len() + 256 * 256);
    // BLAKE3 of the default image, as produced by the native gcc build.
    assert_eq!(
        blake3::hash(&out.stdout).to_hex().as_str(),
        "8c22128d1b6d13565d42321fb241eb0ad6343a5fb5f5835befedf67aac7a198b"
    );
}
