//! Unit tests: small hand-written WAT commands exercising the ABI, every
//! limit, determinism and the pool.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::{ExecError, FIXED_WALL_CLOCK_SECS, Job, Limits, Outcome, Pool, STDERR_LIMIT, Sandbox};

/// WASI imports and helpers shared by the test modules. Memory layout used by
/// the helpers: bytes 0..16 are scratch for the write helper.
const PRELUDE: &str = r#"
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_get" (func $args_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll_oneoff (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func $write_fd (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func $write (param $ptr i32) (param $len i32)
    (call $write_fd (i32.const 1) (local.get $ptr) (local.get $len)))
"#;

fn command(body: &str) -> Vec<u8> {
    wat::parse_str(format!("(module {PRELUDE} {body})")).unwrap()
}

fn raw(wat_src: &str) -> Vec<u8> {
    wat::parse_str(wat_src).unwrap()
}

fn sandbox() -> Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| Sandbox::new().unwrap()).clone()
}

fn job(module: Vec<u8>, input: &[u8], args: &[&str], limits: Limits) -> Job {
    Job::new(
        module,
        input.to_vec(),
        args.iter().map(|s| s.to_string()).collect(),
        limits,
    )
}

fn run(module: Vec<u8>, input: &[u8]) -> Result<Outcome, ExecError> {
    sandbox().run_blocking(&job(module, input, &[], Limits::default()))
}

fn run_with(module: Vec<u8>, limits: Limits) -> Result<Outcome, ExecError> {
    sandbox().run_blocking(&job(module, b"", &[], limits))
}

fn echo() -> Vec<u8> {
    command(
        r#"(func (export "_start") (local $n i32)
             (loop $l
               (i32.store (i32.const 16) (i32.const 1024))
               (i32.store (i32.const 20) (i32.const 4096))
               (i32.store (i32.const 24) (i32.const 0))
               (drop (call $fd_read (i32.const 0) (i32.const 16) (i32.const 1) (i32.const 24)))
               (local.set $n (i32.load (i32.const 24)))
               (if (local.get $n)
                 (then (call $write (i32.const 1024) (local.get $n)) (br $l)))))"#,
    )
}

fn spin() -> Vec<u8> {
    command(r#"(func (export "_start") (loop $l (br $l)))"#)
}

#[test]
fn echo_stdin_to_stdout() {
    let input: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let out = run(echo(), &input).unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stdout, input);
    assert!(out.stderr.is_empty());
    assert!(out.fuel_used > 0);
}

#[test]
fn empty_input_gives_empty_output() {
    let out = run(echo(), b"").unwrap();
    assert_eq!(out.exit_code, 0);
    assert!(out.stdout.is_empty());
}

#[test]
fn args_are_visible() {
    let module = command(
        r#"(func (export "_start")
             (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
             (drop (call $args_get (i32.const 256) (i32.const 1024)))
             (call $write (i32.const 1024) (i32.load (i32.const 20))))"#,
    );
    let out = sandbox()
        .run_blocking(&job(module, b"", &["hello", "wo rld"], Limits::default()))
        .unwrap();
    assert_eq!(out.stdout, b"job\0hello\0wo rld\0");
}

#[test]
fn exit_code_is_propagated() {
    let out = run(
        command(r#"(func (export "_start") (call $proc_exit (i32.const 7)))"#),
        b"",
    )
    .unwrap();
    assert_eq!(out.exit_code, 7);
    // Output written before exiting is kept.
    let module = command(
        r#"(data (i32.const 100) "bye")
           (func (export "_start")
             (call $write (i32.const 100) (i32.const 3))
             (call $proc_exit (i32.const 3)))"#,
    );
    let out = run(module, b"").unwrap();
    assert_eq!((out.exit_code, out.stdout.as_slice()), (3, &b"bye"[..]));
}

#[test]
fn infinite_loop_exhausts_fuel() {
    let limits = Limits {
        fuel: 1_000_000,
        ..Limits::default()
    };
    let err = run_with(spin(), limits).unwrap_err();
    assert_eq!(err, ExecError::FuelExhausted);
    assert!(err.is_limit());
}

#[test]
fn infinite_loop_hits_wall_time() {
    let limits = Limits {
        fuel: u64::MAX,
        wall_time: Duration::from_secs(1),
        ..Limits::default()
    };
    let started = Instant::now();
    let err = run_with(spin(), limits).unwrap_err();
    let elapsed = started.elapsed();
    assert_eq!(err, ExecError::WallTime(Duration::from_secs(1)));
    assert!(err.is_limit());
    assert!(elapsed >= Duration::from_millis(950), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn huge_initial_memory_is_refused() {
    let module = raw(r#"(module (memory (export "memory") 65536) (func (export "_start")))"#);
    let err = run(module, b"").unwrap_err();
    assert_eq!(
        err,
        ExecError::MemoryLimit {
            requested: 4 << 30,
            limit: 256 << 20
        }
    );
    assert!(err.is_limit());
}

#[test]
fn memory_grow_beyond_limit_is_refused() {
    let module = command(r#"(func (export "_start") (drop (memory.grow (i32.const 65535))))"#);
    let err = run(module, b"").unwrap_err();
    assert_eq!(
        err,
        ExecError::MemoryLimit {
            requested: 4 << 30,
            limit: 256 << 20
        }
    );
    // Growth within the limit works: 1 page + 15 = 16 pages = 1 MiB.
    let module = command(
        r#"(func (export "_start")
             (i32.store (i32.const 100) (memory.grow (i32.const 15)))
             (i32.store (i32.const 104) (memory.size))
             (call $write (i32.const 100) (i32.const 8)))"#,
    );
    let limits = Limits {
        memory_bytes: 1 << 20,
        ..Limits::default()
    };
    let out = run_with(module, limits.clone()).unwrap();
    assert_eq!(out.stdout, [1, 0, 0, 0, 16, 0, 0, 0]);
    let module = command(r#"(func (export "_start") (drop (memory.grow (i32.const 16))))"#);
    assert_eq!(
        run_with(module, limits).unwrap_err(),
        ExecError::MemoryLimit {
            requested: 17 << 16,
            limit: 1 << 20
        }
    );
}

#[test]
fn non_wasm_is_invalid() {
    let err = run(b"definitely not wasm".to_vec(), b"").unwrap_err();
    assert!(matches!(err, ExecError::InvalidModule(_)), "{err:?}");
    assert!(!err.is_limit());
    assert!(matches!(
        sandbox().validate(b"\0asm\x01\0\0\0\x01"),
        Err(ExecError::InvalidModule(_))
    ));
}

#[test]
fn foreign_or_unknown_imports_are_invalid() {
    let cases = [
        r#"(module (import "env" "foo" (func)) (memory (export "memory") 1) (func (export "_start")))"#,
        r#"(module (import "wasi_snapshot_preview1" "launch_missiles" (func))
                   (memory (export "memory") 1) (func (export "_start")))"#,
        r#"(module (import "wasi_snapshot_preview1" "fd_write" (func (param i32)))
                   (memory (export "memory") 1) (func (export "_start")))"#,
        r#"(module (import "wasi_snapshot_preview1" "memory" (memory 1)) (func (export "_start")))"#,
        r#"(module (memory (export "memory") 1) (func (export "main")))"#,
        r#"(module (memory (export "memory") 1) (func (export "_start") (param i32)))"#,
    ];
    for wat_src in cases {
        let module = raw(wat_src);
        let err = sandbox().validate(&module).unwrap_err();
        assert!(
            matches!(err, ExecError::InvalidModule(_)),
            "{wat_src}: {err:?}"
        );
        let err = run(module, b"").unwrap_err();
        assert!(
            matches!(err, ExecError::InvalidModule(_)),
            "{wat_src}: {err:?}"
        );
    }
    assert_eq!(sandbox().validate(&echo()), Ok(()));
}

#[test]
fn disabled_proposals_are_invalid() {
    let shared = raw(r#"(module (memory (export "memory") 1 1 shared) (func (export "_start")))"#);
    assert!(matches!(
        sandbox().validate(&shared),
        Err(ExecError::InvalidModule(_))
    ));
    let mem64 = raw(r#"(module (memory (export "memory") i64 1) (func (export "_start")))"#);
    assert!(matches!(
        sandbox().validate(&mem64),
        Err(ExecError::InvalidModule(_))
    ));
}

#[test]
fn module_hash_must_match() {
    let mut j = job(echo(), b"x", &[], Limits::default());
    j.module_hash[0] ^= 1;
    assert!(matches!(
        sandbox().run_blocking(&j),
        Err(ExecError::InvalidModule(_))
    ));
}

#[test]
fn nan_results_are_canonical() {
    // 0/0 and sqrt(-1) from values loaded from memory (so nothing is folded at
    // compile time), and arithmetic on a NaN carrying a payload.
    let module = command(
        r#"(func (export "_start")
             (f32.store (i32.const 1024)
               (f32.div (f32.load (i32.const 2000)) (f32.load (i32.const 2000))))
             (f64.store (i32.const 1028) (f64.sqrt (f64.neg (f64.load (i32.const 2008)))))
             (f32.store (i32.const 1036)
               (f32.add (f32.reinterpret_i32 (i32.load (i32.const 2016))) (f32.load (i32.const 2000))))
             (call $write (i32.const 1024) (i32.const 16)))
           (data (i32.const 2008) "\00\00\00\00\00\00\f0\3f")
           (data (i32.const 2016) "\01\00\a0\ff")"#,
    );
    let out = run(module, b"").unwrap();
    let mut expected = Vec::new();
    expected.extend_from_slice(&0x7fc0_0000u32.to_le_bytes());
    expected.extend_from_slice(&0x7ff8_0000_0000_0000u64.to_le_bytes());
    expected.extend_from_slice(&0x7fc0_0000u32.to_le_bytes());
    assert_eq!(out.stdout, expected);
}

fn clocks_and_random() -> Vec<u8> {
    command(
        r#"(func (export "_start")
             (drop (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 1024)))
             (drop (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 1032)))
             (drop (call $random_get (i32.const 1040) (i32.const 32)))
             (call $write (i32.const 1024) (i32.const 48)))"#,
    )
}

#[test]
fn clocks_and_random_are_deterministic() {
    let a = run(clocks_and_random(), b"seed").unwrap();
    let b = run(clocks_and_random(), b"seed").unwrap();
    assert_eq!(a, b);
    assert_eq!(a.stdout.len(), 48);
    let wall = u64::from_le_bytes(a.stdout[0..8].try_into().unwrap());
    let mono = u64::from_le_bytes(a.stdout[8..16].try_into().unwrap());
    assert_eq!(wall, FIXED_WALL_CLOCK_SECS * 1_000_000_000);
    assert_eq!(mono, 0);
    assert_ne!(a.stdout[16..48], [0u8; 32]);
    // The random stream is seeded by the job: other input, other bytes.
    let c = run(clocks_and_random(), b"other").unwrap();
    assert_eq!(c.stdout[..16], a.stdout[..16]);
    assert_ne!(c.stdout[16..], a.stdout[16..]);
}

#[test]
fn fuel_used_is_deterministic() {
    let input = vec![b'z'; 50_000];
    let a = run(echo(), &input).unwrap();
    let b = run(echo(), &input).unwrap();
    assert_eq!(a.fuel_used, b.fuel_used);
    assert_eq!(a.stdout, b.stdout);
    let c = run(echo(), &input[..1000]).unwrap();
    assert!(c.fuel_used < a.fuel_used);
}

#[test]
fn sleeping_does_not_block() {
    // A one-hour monotonic clock subscription returns immediately.
    let module = command(
        r#"(func (export "_start")
             (i64.store (i32.const 1024) (i64.const 0x1234))
             (i32.store8 (i32.const 1032) (i32.const 0))
             (i32.store (i32.const 1040) (i32.const 1))
             (i64.store (i32.const 1048) (i64.const 3600000000000))
             (i32.store (i32.const 2104)
               (call $poll_oneoff (i32.const 1024) (i32.const 2048) (i32.const 1) (i32.const 2100)))
             (call $write (i32.const 2048) (i32.const 64)))"#,
    );
    let started = Instant::now();
    let out = run(module, b"").unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
    let ev = &out.stdout;
    assert_eq!(u64::from_le_bytes(ev[0..8].try_into().unwrap()), 0x1234);
    assert_eq!(&ev[8..11], &[0, 0, 0]); // no error, clock event
    assert_eq!(u32::from_le_bytes(ev[52..56].try_into().unwrap()), 1); // nevents
    assert_eq!(u32::from_le_bytes(ev[56..60].try_into().unwrap()), 0); // errno
}

fn writer(fd: u32, chunks: u32, chunk: u32) -> Vec<u8> {
    command(&format!(
        r#"(func (export "_start") (local $i i32)
             (loop $l
               (call $write_fd (i32.const {fd}) (i32.const 1024) (i32.const {chunk}))
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const {chunks})))))"#
    ))
}

#[test]
fn stdout_is_bounded() {
    let limits = Limits {
        max_output_bytes: 10_000,
        ..Limits::default()
    };
    let out = run_with(writer(1, 10, 1000), limits.clone()).unwrap();
    assert_eq!(out.stdout.len(), 10_000);
    let err = run_with(writer(1, 11, 1000), limits.clone()).unwrap_err();
    assert_eq!(err, ExecError::OutputTooLarge { limit: 10_000 });
    assert!(err.is_limit());
    let err = run_with(writer(1, 1, 20_000), limits).unwrap_err();
    assert_eq!(err, ExecError::OutputTooLarge { limit: 10_000 });
}

#[test]
fn stderr_is_truncated() {
    let out = run(writer(2, 100, 1000), b"").unwrap();
    assert_eq!(out.exit_code, 0);
    assert_eq!(out.stderr.len(), STDERR_LIMIT);
    assert!(out.stdout.is_empty());
}

#[test]
fn traps_are_reported() {
    let err = run(command(r#"(func (export "_start") unreachable)"#), b"").unwrap_err();
    assert!(
        matches!(&err, ExecError::Trap(m) if m.contains("unreachable")),
        "{err:?}"
    );
    assert!(!err.is_limit());
    let err = run(
        command(r#"(func (export "_start") (drop (i32.load (i32.const 70000))))"#),
        b"",
    )
    .unwrap_err();
    assert!(matches!(err, ExecError::Trap(_)), "{err:?}");
    let err = run(command(r#"(func $f (export "_start") (call $f))"#), b"").unwrap_err();
    assert!(matches!(err, ExecError::Trap(_)), "{err:?}");
}

#[test]
fn huge_tables_are_refused() {
    let module = raw(
        r#"(module (memory (export "memory") 1) (table 100000000 funcref) (func (export "_start")))"#,
    );
    let err = run(module, b"").unwrap_err();
    assert!(
        matches!(&err, ExecError::Trap(m) if m.contains("table")),
        "{err:?}"
    );
}

#[test]
fn sandbox_survives_failures() {
    let sb = sandbox();
    let small = Limits {
        fuel: 100_000,
        ..Limits::default()
    };
    assert!(sb.run_blocking(&job(spin(), b"", &[], small)).is_err());
    assert!(
        sb.run_blocking(&job(
            command(r#"(func (export "_start") unreachable)"#),
            b"",
            &[],
            Limits::default()
        ))
        .is_err()
    );
    assert!(
        sb.run_blocking(&job(
            command(r#"(func (export "_start") (drop (memory.grow (i32.const 60000))))"#),
            b"",
            &[],
            Limits::default()
        ))
        .is_err()
    );
    let out = sb
        .run_blocking(&job(echo(), b"still alive", &[], Limits::default()))
        .unwrap();
    assert_eq!(out.stdout, b"still alive");
}

#[test]
fn sandbox_drop_stops_cleanly() {
    let sb = Sandbox::new().unwrap();
    let clone = sb.clone();
    drop(sb);
    assert_eq!(
        clone
            .run_blocking(&job(echo(), b"x", &[], Limits::default()))
            .unwrap()
            .stdout,
        b"x"
    );
    drop(clone);
}

/// A valid command with many non-trivial functions: slow enough to compile that a limit of a
/// microsecond always trips.
fn many_functions(n: usize) -> Vec<u8> {
    let mut body = String::new();
    for i in 0..n {
        body.push_str(&format!(
            "(func $f{i} (param i32) (result i32) {})",
            "(local.get 0) (i32.const 7) (i32.mul) (i32.const 3) (i32.add) (drop) ".repeat(20)
                + "(local.get 0)"
        ));
    }
    command(&format!(
        r#"{body} (func (export "_start") (drop (call $f0 (i32.const 1))))"#
    ))
}

#[test]
fn compile_time_is_bounded_and_a_limit() {
    // A fresh sandbox, so no other test has compiled (cached) this module.
    let sb = Sandbox::new().unwrap();
    let module = many_functions(300);
    let tight = Limits {
        compile_time: Duration::from_micros(1),
        ..Limits::default()
    };
    let err = sb
        .run_blocking(&job(module.clone(), b"", &[], tight))
        .unwrap_err();
    assert_eq!(err, ExecError::CompileTime(Duration::from_micros(1)));
    assert!(err.is_limit());
    assert!(err.to_string().contains("compile"), "{err}");
    // The compilation went on in the background; with room it runs.
    let out = sb
        .run_blocking(&job(module, b"", &[], Limits::default()))
        .unwrap();
    assert_eq!(out.exit_code, 0);
}

#[test]
fn many_concurrent_first_compilations_wait_for_a_slot_instead_of_failing() {
    // More first runs of one module at once than there are compile slots (a burst of
    // submissions): every one succeeds, most from the cache once the first compile is done.
    let sb = Sandbox::new().unwrap();
    let module = many_functions(50);
    let handles: Vec<_> = (0..4 * crate::MAX_COMPILATIONS)
        .map(|_| {
            let (sb, m) = (sb.clone(), module.clone());
            std::thread::spawn(move || sb.validate(&m))
        })
        .collect();
    for h in handles {
        h.join().unwrap().unwrap();
    }
}

#[test]
fn limits_default() {
    let l = Limits::default();
    assert_eq!(l.fuel, 10_000_000_000);
    assert_eq!(l.memory_bytes, 256 * 1024 * 1024);
    assert_eq!(l.wall_time, Duration::from_secs(30));
    assert_eq!(l.max_output_bytes, 16 * 1024 * 1024);
    assert_eq!(l.compile_time, crate::DEFAULT_COMPILE_TIME);
}

// Default (current-thread) runtime: WASI's internal `block_on` must also work
// from the blocking threads of such a runtime.
#[tokio::test]
async fn pool_runs_jobs() {
    let pool = Pool::new(sandbox(), 2, 4);
    assert_eq!(pool.slots(), 2);
    assert_eq!(pool.free_slots(), 2);
    let out = pool
        .run(job(echo(), b"pooled", &[], Limits::default()))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"pooled");
    assert_eq!(pool.free_slots(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_refuses_when_full() {
    let pool = Pool::new(sandbox(), 1, 1);
    // Long enough that the first job is still running when the others arrive.
    let slow = || {
        job(
            spin(),
            b"",
            &[],
            Limits {
                fuel: 300_000_000,
                ..Limits::default()
            },
        )
    };
    let (a, b, c, d) = tokio::join!(
        pool.run(slow()),
        pool.run(slow()),
        pool.run(slow()),
        pool.run(slow())
    );
    assert_eq!(a, Err(ExecError::FuelExhausted));
    assert_eq!(b, Err(ExecError::FuelExhausted));
    assert_eq!(c, Err(ExecError::Busy));
    assert_eq!(d, Err(ExecError::Busy));
    assert!(!ExecError::Busy.is_limit());
    assert_eq!(pool.free_slots(), 1);
    // Still works afterwards.
    let out = pool
        .run(job(echo(), b"again", &[], Limits::default()))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_releases_slot_when_caller_gives_up() {
    let pool = Pool::new(sandbox(), 1, 0);
    let slow = job(
        spin(),
        b"",
        &[],
        Limits {
            fuel: u64::MAX,
            wall_time: Duration::from_millis(300),
            ..Limits::default()
        },
    );
    // Abandon the run after 50 ms; the execution keeps its slot until it ends.
    let _ = tokio::time::timeout(Duration::from_millis(50), pool.run(slow)).await;
    assert_eq!(pool.free_slots(), 0);
    assert_eq!(
        pool.run(job(echo(), b"", &[], Limits::default())).await,
        Err(ExecError::Busy)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(pool.free_slots(), 1);
    let out = pool
        .run(job(echo(), b"ok", &[], Limits::default()))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"ok");
}

#[test]
fn errors_display_and_classify() {
    let e = ExecError::MemoryLimit {
        requested: 10,
        limit: 5,
    };
    assert!(e.to_string().contains("10"));
    let w = ExecError::WallTime(Duration::from_secs(1));
    assert!(w.is_limit());
}
