//! In-process scenarios: whole networks of real nodes (real sockets, redb, wasmtime) in one
//! process, running the example workloads through the market.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agora_exec::{Job, Limits, Sandbox};
use agora_node::{FileConfig, JobState, Node, NodeConfig, NodeHandle, SubmitRequest};
use agora_types::Hash;
use agora_types::job::Outcome;

const PRIMES: &[u8] = include_bytes!("../../../examples/wasm/primes.wasm");
const MANDELBROT: &[u8] = include_bytes!("../../../examples/wasm/mandelbrot.wasm");
const SHA256CHAIN: &[u8] = include_bytes!("../../../examples/wasm/sha256chain.wasm");

fn work(i: usize) -> (&'static [u8], Vec<u8>) {
    match i % 3 {
        0 => (PRIMES, format!("{}", 1000 + 37 * i).into_bytes()),
        1 => (MANDELBROT, format!("{} 12 50", 8 + i % 9).into_bytes()),
        _ => (
            SHA256CHAIN,
            format!("{}\nseed-{i}", 1 + i % 50).into_bytes(),
        ),
    }
}

struct Net {
    nodes: Vec<Node>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Net {
    async fn start(n: usize, byzantine: usize) -> Net {
        let mut nodes: Vec<Node> = vec![];
        let mut dirs = vec![];
        let mut bootstrap: Vec<String> = vec![];
        for i in 0..n {
            let dir = tempfile::tempdir().unwrap();
            let file = FileConfig {
                data_dir: Some(dir.path().to_path_buf()),
                listen: Some(vec!["/ip4/127.0.0.1/tcp/0".into()]),
                bootstrap: Some(bootstrap.clone()),
                mdns: Some(false),
                executor_slots: Some(2),
                ad_interval_secs: Some(1),
                ..Default::default()
            };
            let mut config = NodeConfig::validate(file).unwrap();
            config.byzantine = i >= n - byzantine;
            let node = Node::start(config).await.unwrap();
            if i == 0 {
                let h = node.handle();
                let addr = loop {
                    if let Some(a) = h.status().await.unwrap().listen_addresses.first() {
                        break a.clone();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                bootstrap.push(format!("{addr}/p2p/{}", h.peer_id()));
            }
            nodes.push(node);
            dirs.push(dir);
        }
        let net = Net { nodes, _dirs: dirs };
        // Everyone connected, then one more ad interval so capability indexes are filled.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut ok = true;
            for h in net.handles() {
                ok &= h.status().await.unwrap().connected_peers >= n - 1;
            }
            if ok {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "network did not form"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        net
    }

    fn handles(&self) -> Vec<NodeHandle> {
        self.nodes.iter().map(|n| n.handle()).collect()
    }

    async fn stop(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// Submits `count` jobs round-robin to `submitters`, waits for all, and returns for each job its
/// submitter, the verified output (or None) and the expected output.
async fn run_jobs(
    submitters: &[NodeHandle],
    count: usize,
) -> Vec<(usize, Option<Vec<u8>>, Vec<u8>)> {
    let sandbox = Sandbox::new().unwrap();
    let mut ids = vec![];
    for i in 0..count {
        let (module, input) = work(i);
        let expected = {
            let sandbox = sandbox.clone();
            let job = Job::new(
                Arc::<[u8]>::from(module),
                input.clone(),
                vec![],
                Limits::default(),
            );
            tokio::task::spawn_blocking(move || sandbox.run_blocking(&job))
                .await
                .unwrap()
                .unwrap()
                .stdout
        };
        let h = &submitters[i % submitters.len()];
        let module = h.put_blob(module.to_vec()).await.unwrap();
        let input = h.put_blob(input).await.unwrap();
        let id = h
            .submit(SubmitRequest {
                module,
                input: Some(input),
                redundancy: Some(3),
                deadline_secs: Some(240),
                ..Default::default()
            })
            .await
            .unwrap();
        ids.push((i % submitters.len(), id, expected));
    }
    // A generous bound, not a speed goal: on a loaded machine the jobs take longer, and must
    // still all verify (their own deadlines count from their first accepted lease).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut out = vec![];
    for (s, id, expected) in ids {
        let h = &submitters[s];
        let record = loop {
            let r = h.job(id).await.expect("job known to its submitter");
            if r.state.is_final() {
                break r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job {id} never finished: {}",
                r.summary()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let output = if record.state == JobState::Verified {
            Some(h.output(id).await.unwrap())
        } else {
            let tail: Vec<String> = record
                .timeline
                .iter()
                .rev()
                .take(30)
                .rev()
                .map(|t| format!("  {} {}", t.at_ms, t.event))
                .collect();
            eprintln!("job {id} failed: {}\n{}", record.summary(), tail.join("\n"));
            None
        };
        out.push((s, output, expected));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_scenario_ten_nodes_hundred_jobs_all_verified_and_equal_to_local_execution() {
    let net = Net::start(10, 0).await;
    let handles = net.handles();
    let results = run_jobs(&handles, 100).await;
    let verified = results.iter().filter(|(_, o, _)| o.is_some()).count();
    assert_eq!(verified, 100, "every job verified");
    for (i, (_, output, expected)) in results.iter().enumerate() {
        assert_eq!(
            output.as_ref(),
            Some(expected),
            "job {i}: output differs from a local run"
        );
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_scenario_three_byzantine_of_ten_no_wrong_output_and_lowest_reputation() {
    let net = Net::start(10, 3).await;
    let handles = net.handles();
    let honest = &handles[..7];
    let byzantine: Vec<_> = handles[7..].iter().map(|h| h.peer_id()).collect();
    let results = run_jobs(honest, 100).await;
    let wrong = results
        .iter()
        .filter(|(_, o, e)| o.as_ref().is_some_and(|o| o != e))
        .count();
    assert_eq!(wrong, 0, "no wrong output accepted");
    let verified = results.iter().filter(|(_, o, _)| o.is_some()).count();
    assert_eq!(verified, 100, "every job verified");

    // Reputation as the network sees it: the sum of every honest node's local book.
    let mut total: HashMap<_, i64> = HashMap::new();
    for h in honest {
        for (peer, score) in h.reputation().await {
            *total.entry(peer).or_default() += score;
        }
    }
    let worst_honest = honest
        .iter()
        .map(|h| total.get(&h.peer_id()).copied().unwrap_or(0))
        .min()
        .unwrap();
    for b in &byzantine {
        let s = total.get(b).copied().unwrap_or(0);
        assert!(
            s < worst_honest,
            "byzantine {b} has {s}, not below the worst honest {worst_honest}: {total:?}"
        );
    }
    net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_module_ends_failed_with_its_reason_and_outputs_hash_checked() {
    let net = Net::start(4, 0).await;
    let h = net.handles()[0].clone();
    // A module that asks for 4 GiB of memory: every worker's limiter refuses it.
    let wasm = wat::parse_str(r#"(module (memory 65536) (func (export "_start")))"#).unwrap();
    let module = h.put_blob(wasm).await.unwrap();
    let id = h
        .submit(SubmitRequest {
            module,
            redundancy: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    let record = loop {
        let r = h.job(id).await.unwrap();
        if r.state.is_final() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(record.state, JobState::Failed, "{}", record.summary());
    let reason = record.fail_reason.unwrap().to_string();
    assert!(reason.contains("memory"), "{reason}");
    assert!(
        record
            .results
            .iter()
            .all(|r| matches!(&r.outcome, Outcome::Failed { kind, .. } if kind == "memory"))
    );
    // A program that reports failure: verified (the workers agree), with its exit code and
    // stderr on the record, not plain success.
    let wasm = wat::parse_str(
        r#"(module
             (import "wasi_snapshot_preview1" "fd_write"
               (func $fd_write (param i32 i32 i32 i32) (result i32)))
             (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
             (memory (export "memory") 1)
             (data (i32.const 16) "bad input\n")
             (func (export "_start")
               (i32.store (i32.const 0) (i32.const 16))
               (i32.store (i32.const 4) (i32.const 10))
               (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
               (call $proc_exit (i32.const 7))))"#,
    )
    .unwrap();
    let module = h.put_blob(wasm).await.unwrap();
    let id = h
        .submit(SubmitRequest {
            module,
            redundancy: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    // Waiting for the verdict without polling gives the same final record.
    let record = tokio::time::timeout(Duration::from_secs(60), h.wait_final(id))
        .await
        .expect("verdict within 60 s")
        .expect("job known to its submitter");
    assert_eq!(record, h.job(id).await.unwrap());
    assert_eq!(record.state, JobState::Verified, "{}", record.summary());
    assert_eq!(record.exit_code, Some(7));
    assert_eq!(record.stderr.as_deref(), Some("bad input\n"));
    assert!(
        record
            .results
            .iter()
            .all(|r| r.stderr == "bad input\n" && r.outcome.exit_code() == Some(7))
    );
    // An unknown job and an unknown blob are reported as such.
    assert!(h.output(Hash::of(b"nope")).await.is_err());
    net.stop().await;
}

const ONNX_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/onnx");

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!("{ONNX_DIR}/{name}")).unwrap()
}

/// Uploads `model` and `input` to `h` and submits them as an ONNX job compared by `compare`,
/// with `tweak` applied to the request.
async fn submit_onnx(
    h: &NodeHandle,
    model: Vec<u8>,
    input: Vec<u8>,
    compare: agora_exec::Compare,
    tweak: impl FnOnce(&mut SubmitRequest),
) -> Result<Hash, agora_node::SubmitError> {
    let mut req = SubmitRequest {
        module: h.put_blob(model).await.unwrap(),
        input: Some(h.put_blob(input).await.unwrap()),
        runtime: agora_types::job::Runtime::Onnx { compare },
        ..Default::default()
    };
    tweak(&mut req);
    h.submit(req).await
}

/// ONNX jobs through the market: each verified answer is what our engine gives locally (which
/// `agora-exec`'s tests hold against onnxruntime's), a Byzantine worker's well-formed wrong
/// answer is outvoted and never in a quorum, and bad models and tensors are refused at submission
/// with what to fix, after which the node still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_jobs_verified_byzantine_outvoted_and_bad_inputs_refused() {
    use agora_exec::{Compare, OnnxEngine, OnnxJob, OnnxLimits, canonicalize};
    use agora_node::SubmitError;

    let net = Net::start(5, 1).await;
    let handles = net.handles();
    let byzantine = handles[4].peer_id();
    let h = handles[0].clone();
    let engine = OnnxEngine::new();
    let cases = [
        ("mlp.onnx", "x16.npy", Compare::Argmax),
        ("logreg.onnx", "x16.npy", Compare::TopK(3)),
        ("mlp_label.onnx", "x16.npy", Compare::Exact),
        ("mlp.onnx", "x1.npy", Compare::Round(2)),
    ];
    let mut ids = vec![];
    for (model, input, compare) in cases {
        let (m, x) = (example(model), example(input));
        let local = engine
            .run_blocking(&OnnxJob::new(m.clone(), x.clone(), OnnxLimits::default()))
            .unwrap()
            .output;
        let id = submit_onnx(&h, m, x, compare, |r| r.redundancy = Some(3))
            .await
            .unwrap();
        ids.push((id, compare, local));
    }
    for (id, compare, local) in ids {
        let record = tokio::time::timeout(Duration::from_secs(300), h.wait_final(id))
            .await
            .expect("verdict within 300 s")
            .expect("job known to its submitter");
        assert_eq!(record.state, JobState::Verified, "{}", record.summary());
        assert!(
            !record.quorum.contains(&byzantine),
            "a Byzantine worker is in the quorum"
        );
        let out = h.output(id).await.unwrap();
        assert_eq!(
            canonicalize(&out, &compare).unwrap(),
            canonicalize(&local, &compare).unwrap(),
            "the verified answer differs from a local run under {compare}"
        );
        let Some(Outcome::Completed {
            compared: Some(c), ..
        }) = &record.outcome
        else {
            panic!(
                "an ONNX outcome carries its compared hash: {:?}",
                record.outcome
            );
        };
        assert_eq!(*c, Hash::of(&canonicalize(&out, &compare).unwrap()));
    }

    // Refused at submission, each with what was wrong.
    let x1 = example("x1.npy");
    let mlp = example("mlp.onnx");
    let mut as_f64 = x1.clone();
    // x1.npy is float32 [1, 64]: the same header with `<f8`, and twice the data.
    let header_end = as_f64.iter().position(|&b| b == b'\n').unwrap() + 1;
    let mut header = as_f64[..header_end].to_vec();
    let at = header
        .windows(3)
        .position(|w| w == b"<f4")
        .expect("a float32 header");
    header[at..at + 3].copy_from_slice(b"<f8");
    let floats: Vec<u8> = as_f64[header_end..]
        .chunks(4)
        .flat_map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())).to_le_bytes())
        .collect();
    as_f64 = header;
    as_f64.extend_from_slice(&floats);
    /// What is wrong, the model, the input, the arguments, and a word the refusal must say.
    type Bad<'a> = (&'a str, Vec<u8>, Vec<u8>, Vec<String>, &'a str);
    let bad: [Bad<'_>; 5] = [
        ("a float64 input", mlp.clone(), as_f64, vec![], "float32"),
        (
            "not a model",
            b"not a model".to_vec(),
            x1.clone(),
            vec![],
            "ONNX",
        ),
        (
            "an unsupported operator",
            example("scaler_logreg.onnx"),
            x1.clone(),
            vec![],
            "Scaler",
        ),
        (
            "not a tensor",
            mlp.clone(),
            b"1 2 3".to_vec(),
            vec![],
            ".npy",
        ),
        (
            "arguments",
            mlp.clone(),
            x1.clone(),
            vec!["-v".into()],
            "args",
        ),
    ];
    for (what, model, input, args, needle) in bad {
        let e = submit_onnx(&h, model, input, Compare::Argmax, |r| r.args = args)
            .await
            .expect_err(what);
        assert!(
            matches!(e, SubmitError::InvalidOnnx(_) | SubmitError::Spec(_)),
            "{what}: {e:?}"
        );
        assert!(e.to_string().contains(needle), "{what}: {e}");
    }
    // Too big for its own limits: 297 rows within 64 KiB of live tensors.
    let x_test = example("x_test.npy");
    let e = submit_onnx(&h, mlp.clone(), x_test, Compare::Argmax, |r| {
        r.memory_bytes = Some(65_536)
    })
    .await
    .expect_err("over its memory limit");
    assert!(e.to_string().contains("memory"), "{e}");
    // Still serving.
    let id = submit_onnx(&h, mlp, x1, Compare::Argmax, |r| r.redundancy = Some(2))
        .await
        .unwrap();
    let record = tokio::time::timeout(Duration::from_secs(300), h.wait_final(id))
        .await
        .expect("verdict within 300 s")
        .expect("job known");
    assert_eq!(record.state, JobState::Verified, "{}", record.summary());
    net.stop().await;
}
