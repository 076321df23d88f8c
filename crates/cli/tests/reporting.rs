//! How the `agora job` CLI reports a job to its user (issue 18, "honest reporting"): the id
//! first under `--wait`, a program that exits non-zero shown as a failure (its exit code and
//! stderr, a non-zero exit of the CLI) in `--wait`, `job status` and `job output`, and
//! timelines as dates and offsets rather than epoch milliseconds.

// A test reports failure by panicking.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Output;

use serde_json::Value;

use common::Network;

/// The CLI's exit code for a job whose program failed (`agora job --help` documents it).
const EXIT_PROGRAM_FAILED: i32 = 3;

const STDERR_LINE: &str = "bad input: expected a number";

/// A WASI command that writes `partial\n` to stdout and [`STDERR_LINE`] to stderr, then exits
/// with `code`.
fn exiting_module(code: i32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 100) "partial\n")
  (data (i32.const 200) "{STDERR_LINE}\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 100))
    (i32.store (i32.const 4) (i32.const 8))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 16)))
    (i32.store (i32.const 0) (i32.const 200))
    (i32.store (i32.const 4) (i32.const {len}))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 16)))
    (call $proc_exit (i32.const {code}))))"#,
        len = STDERR_LINE.len() + 1
    ))
    .expect("test WAT must compile")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\n-- stdout:\n{}\n-- stderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

#[test]
fn a_program_that_exits_non_zero_is_a_failure_with_its_code_and_stderr() {
    // Node 0 submits; node 1 is the worker (a node never works on its own jobs).
    let net = Network::start(2);
    let failing = net.file("exit7.wasm", &exiting_module(7));
    let out = net.cli(
        0,
        &[
            "job",
            "submit",
            failing.to_str().unwrap(),
            "--redundancy",
            "1",
            "--wait",
        ],
    );
    let all = show("job submit --wait", &out);
    assert_eq!(out.status.code(), Some(EXIT_PROGRAM_FAILED), "{all}");
    let stderr = text(&out.stderr);
    let first = stderr.lines().next().unwrap_or_default();
    let id = first
        .strip_prefix("job ")
        .unwrap_or_else(|| panic!("the first stderr line is not `job <id>`: {all}"))
        .trim()
        .to_string();
    assert_eq!(id.len(), 64, "{all}");
    assert!(
        stderr.contains("the job's program exited with code 7"),
        "{all}"
    );
    assert!(
        stderr.contains(STDERR_LINE),
        "the program's stderr is not shown: {all}"
    );
    assert_eq!(
        text(&out.stdout),
        "partial\n",
        "the output is still printed: {all}"
    );

    // `job status`: exit code and stderr shown, the CLI fails, times are readable.
    let out = net.cli(0, &["job", "status", &id]);
    let all = show("job status", &out);
    assert_eq!(out.status.code(), Some(EXIT_PROGRAM_FAILED), "{all}");
    let stdout = text(&out.stdout);
    assert!(stdout.contains("state     verified"), "{all}");
    assert!(stdout.contains("exit code 7"), "{all}");
    assert!(stdout.contains(STDERR_LINE), "{all}");
    let submitted = stdout
        .lines()
        .find_map(|l| l.strip_prefix("submitted "))
        .unwrap_or_else(|| panic!("no `submitted` line: {all}"))
        .trim();
    // RFC 3339 in UTC, e.g. 2026-12-02T18:20:01.123Z.
    assert!(
        submitted.len() == 24 && submitted.ends_with('Z') && submitted.as_bytes()[10] == b'T',
        "{submitted:?} is not RFC 3339: {all}"
    );
    let timeline: Vec<&str> = stdout
        .lines()
        .skip_while(|l| *l != "timeline")
        .skip(1)
        .collect();
    assert!(!timeline.is_empty(), "no timeline: {all}");
    for l in &timeline {
        let offset = l.split_whitespace().next().unwrap_or_default();
        assert!(
            offset.starts_with('+') && offset.contains('.') && l.contains(" s  "),
            "timeline line {l:?} is not `+S.mmm s  event`: {all}"
        );
    }

    // JSON keeps milliseconds, and carries the exit code.
    let out = net.cli(0, &["job", "status", &id, "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 7, "{v}");
    assert!(v["created_ms"].as_u64().unwrap() > 1_600_000_000_000, "{v}");
    assert!(v["timeline"][0]["at_ms"].is_u64(), "{v}");

    // `job output`: the bytes, then the failure.
    let out = net.cli(0, &["job", "output", &id]);
    let all = show("job output", &out);
    assert_eq!(out.status.code(), Some(EXIT_PROGRAM_FAILED), "{all}");
    assert_eq!(text(&out.stdout), "partial\n", "{all}");
    assert!(
        text(&out.stderr).contains("the job's program exited with code 7"),
        "{all}"
    );

    // A program that exits 0 is a success everywhere.
    let ok = net.file("exit0.wasm", &exiting_module(0));
    let out = net.cli(
        0,
        &[
            "job",
            "submit",
            ok.to_str().unwrap(),
            "--redundancy",
            "1",
            "--wait",
            "--json",
        ],
    );
    let all = show("job submit --wait --json", &out);
    assert!(out.status.success(), "{all}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "verified", "{all}");
    assert_eq!(v["exit_code"], 0, "{all}");
    assert_eq!(v["output"], "partial\n", "{all}");
    let id = v["id"].as_str().unwrap();
    assert!(text(&out.stderr).starts_with(&format!("job {id}")), "{all}");
    let out = net.cli(0, &["job", "status", id]);
    assert!(out.status.success(), "{}", show("job status", &out));
    let out = net.cli(0, &["job", "output", id]);
    assert!(out.status.success(), "{}", show("job output", &out));
}

/// The CLI's exit code for a job the network gave up on (deadline, cancelled, no quorum).
const EXIT_JOB_FAILED: i32 = 4;

#[test]
fn a_cancelled_job_is_a_failed_job_and_a_pending_one_has_no_output_yet() {
    // One node alone: it never works on its own jobs, so its job waits for bids.
    let net = Network::start(1);
    let module = net.file("exit0.wasm", &exiting_module(0));
    let out = net.cli(0, &["job", "submit", module.to_str().unwrap(), "--json"]);
    let all = show("job submit --json", &out);
    assert!(out.status.success(), "{all}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap().to_string();

    let out = net.cli(0, &["job", "output", &id]);
    let all = show("job output (pending)", &out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(text(&out.stderr).contains("has no output yet"), "{all}");
    let out = net.cli(0, &["job", "status", &id]);
    assert!(
        out.status.success(),
        "{}",
        show("job status (pending)", &out)
    );

    let out = net.cli(0, &["job", "cancel", &id]);
    let all = show("job cancel", &out);
    assert!(out.status.success(), "{all}");
    assert_eq!(text(&out.stdout).trim(), format!("cancelled {id}"), "{all}");

    let out = net.cli(0, &["job", "status", &id]);
    let all = show("job status (cancelled)", &out);
    assert_eq!(out.status.code(), Some(EXIT_JOB_FAILED), "{all}");
    assert!(text(&out.stdout).contains("state     failed"), "{all}");
    assert!(text(&out.stdout).contains("cancelled"), "{all}");
    let out = net.cli(0, &["job", "output", &id]);
    let all = show("job output (cancelled)", &out);
    assert_eq!(out.status.code(), Some(EXIT_JOB_FAILED), "{all}");
    assert!(
        text(&out.stderr).contains(&format!("job {id} failed")),
        "{all}"
    );
}

/// `agora job submit --onnx`: a model and a .npy input, verified by a rule, the output written
/// with `-o` by `--wait` and by `job output`, the runtime and rule shown by `job status`; and the
/// mistakes a user makes refused before anything is uploaded, each saying what to do.
#[test]
fn an_onnx_job_from_the_cli_with_its_rule_shown_and_the_tensor_saved() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/onnx");
    let model = format!("{dir}/mlp.onnx");
    let x1 = format!("{dir}/x1.npy");
    let net = Network::start(2);
    let y = net.file("y.npy", b"");
    let out = net.cli(
        0,
        &[
            "job",
            "submit",
            "--onnx",
            &model,
            "--input",
            &x1,
            "--verify",
            "topk:2",
            "--redundancy",
            "1",
            "--wait",
            "-o",
            y.to_str().unwrap(),
        ],
    );
    let all = show("job submit --onnx --wait -o", &out);
    assert!(out.status.success(), "{all}");
    let id = text(&out.stderr)
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("job "))
        .unwrap_or_else(|| panic!("no job id first: {all}"))
        .trim()
        .to_string();
    let saved = std::fs::read(&y).unwrap();
    assert!(saved.starts_with(b"\x93NUMPY"), "not a .npy: {all}");
    assert!(
        text(&out.stdout).is_empty(),
        "a tensor went to stdout: {all}"
    );

    let out = net.cli(0, &["job", "status", &id]);
    let all = show("job status", &out);
    assert!(out.status.success(), "{all}");
    assert!(
        text(&out.stdout).contains("runtime   onnx (replicas compared by topk:2)"),
        "{all}"
    );
    let again = net.file("again.npy", b"");
    let out = net.cli(0, &["job", "output", &id, "-o", again.to_str().unwrap()]);
    assert!(out.status.success(), "{}", show("job output -o", &out));
    assert_eq!(std::fs::read(&again).unwrap(), saved);

    // Refused locally, before any upload.
    let wasm = format!(
        "{}/../../examples/wasm/primes.wasm",
        env!("CARGO_MANIFEST_DIR")
    );
    let cases: [(&[&str], &str); 4] = [
        (&["--onnx", &model], "--input x.npy"),
        (&["--onnx", &model, "--input", &model], "not a .npy file"),
        (&[&wasm, "--verify", "argmax"], "--onnx"),
        (
            &["--onnx", &model, "--input", &x1, "--verify", "median"],
            "argmax",
        ),
    ];
    for (args, needle) in cases {
        let mut full = vec!["job", "submit"];
        full.extend_from_slice(args);
        let out = net.cli(0, &full);
        let all = show(&full.join(" "), &out);
        assert!(!out.status.success(), "{all}");
        assert!(
            text(&out.stderr).contains(needle),
            "{needle:?} not said: {all}"
        );
    }
}
