//! The real training step (`examples/wasm/train.wasm`) in the sandbox: its
//! metrics against the Rust port, bit-exact re-execution, and the federated
//! simulation against the centralized baseline.

use std::path::PathBuf;
use std::sync::Arc;

use agora_exec::Sandbox;
use agora_train::sim::run_step;
use agora_train::{
    Data, Hyper, Model, Reason, SimConfig, Task, Update, centralized, evaluate, simulate,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn module() -> Arc<[u8]> {
    std::fs::read(root().join("examples/wasm/train.wasm"))
        .expect("examples/wasm/train.wasm (run examples/build.sh)")
        .into()
}

fn data() -> Data {
    Data::load(&root().join("examples/train/data")).expect("examples/train/data")
}

fn task(data: &Data, shard: usize, model: Model, seed: u64) -> Task {
    Task {
        hyper: Hyper {
            learning_rate: 32768,
            local_steps: 20,
            batch: 16,
            seed,
        },
        model,
        shard: data.shards[shard].clone(),
    }
}

#[test]
fn module_metrics_match_the_rust_port_bit_for_bit() {
    let (sandbox, module, data) = (Sandbox::new().expect("sandbox"), module(), data());
    let mut model = Model::zeros(64, 10).expect("shape");
    for (round, shard) in [0usize, 3, 7, 1].into_iter().enumerate() {
        let t = task(&data, shard, model.clone(), round as u64);
        let up = run_step(&sandbox, &module, &t).expect("step");
        let ours = evaluate(&up.model, &data.shards[shard]).expect("eval");
        assert_eq!(up.metrics, ours, "round {round}, shard {shard}");
        assert_ne!(up.model, model, "the step changed the weights");
        model = up.model;
    }
    // zero steps: the module only evaluates; so does the port, on the test set too
    let mut t = task(&data, 0, model.clone(), 0);
    t.hyper.local_steps = 0;
    t.shard = data.test.clone();
    let up = run_step(&sandbox, &module, &t).expect("step");
    assert_eq!(up.model, model);
    assert_eq!(up.metrics, evaluate(&model, &data.test).expect("eval"));
}

#[test]
fn reexecution_is_bit_exact_and_one_flipped_bit_is_detected() {
    let (data, module) = (data(), module());
    let t = task(&data, 2, Model::zeros(64, 10).expect("shape"), 42);
    // two independent sandboxes stand for two workers
    let a = run_step(&Sandbox::new().expect("sandbox"), &module, &t).expect("a");
    let b = run_step(&Sandbox::new().expect("sandbox"), &module, &t).expect("b");
    assert_eq!(a.encode(), b.encode());
    assert_eq!(a.hash(), b.hash());
    let bytes = a.encode();
    for bit in [0usize, 7, 8 * 16 + 3, 8 * (bytes.len() - 20)] {
        let mut flipped = bytes.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        // header damage is refused outright; any other flip changes the hash or the claim
        if let Ok(u) = Update::decode(&flipped) {
            assert!(u.hash() != a.hash() || u.metrics != a.metrics, "bit {bit}");
        }
    }
}

fn print(label: &str, r: &agora_train::SimReport) {
    let acc: Vec<String> = r
        .rounds
        .iter()
        .map(|x| format!("{:.1}", x.accuracy))
        .collect();
    eprintln!(
        "{label}: final {:.2}% per round [{}]",
        r.accuracy,
        acc.join(" ")
    );
}

#[test]
fn federated_training_matches_centralized_and_resists_byzantine_trainers() {
    let (sandbox, module, data) = (Sandbox::new().expect("sandbox"), module(), data());
    let cfg = SimConfig::recommended(0);
    let (_, central) = centralized(&sandbox, &module, &data, &cfg).expect("centralized");
    let central = central.accuracy_percent();
    eprintln!("centralized: {central:.2}%");

    let honest = simulate(&sandbox, &module, &data, &cfg).expect("honest run");
    print("0 byzantine", &honest);
    assert!(
        honest.accuracy >= central - 1.0,
        "{} vs {central}",
        honest.accuracy
    );
    assert_eq!(honest.honest_slashed, 0);
    assert_eq!(honest.accepted_honest, 8 * cfg.rounds as usize);

    let cfg2 = SimConfig::recommended(2);
    let byz = simulate(&sandbox, &module, &data, &cfg2).expect("byzantine run");
    print("2 byzantine", &byz);
    assert!(
        byz.accuracy >= central - 2.0,
        "{} vs {central}",
        byz.accuracy
    );
    assert_eq!(byz.byzantine_proposals, 2 * cfg2.rounds as usize);
    assert_eq!(
        byz.rejected_byzantine, byz.byzantine_proposals,
        "every Byzantine proposal rejected"
    );
    assert_eq!(byz.honest_slashed, 0);
    assert_eq!(
        byz.byzantine_slashed, byz.byzantine_proposals,
        "each one provably wrong"
    );
    assert_eq!(
        byz.rewards,
        10 * byz.accepted_honest as u64,
        "only accepted updates are paid"
    );
    assert_eq!(byz.accepted_honest, 6 * cfg2.rounds as usize);
    let reasons: Vec<Reason> = byz
        .rounds
        .iter()
        .flat_map(|r| r.rejected.iter().map(|x| x.1))
        .collect();
    assert!(reasons.contains(&Reason::HashMismatch) && reasons.contains(&Reason::FalseMetricClaim));
    // deterministic: the same run gives the same model
    let again = simulate(&sandbox, &module, &data, &cfg2).expect("again");
    assert_eq!(again.model.hash(), byz.model.hash());
}

/// When `examples/build.sh` has left a native (gcc) build of the step, its output must be the
/// sandbox's byte for byte: the arithmetic does not depend on the compiler or the CPU.
#[test]
fn native_build_agrees_with_the_sandbox_when_present() {
    let native = root().join("target/examples-native/train");
    if !native.exists() {
        eprintln!("no {} (run examples/build.sh): skipped", native.display());
        return;
    }
    let (data, module) = (data(), module());
    let t = task(&data, 5, Model::zeros(64, 10).expect("shape"), 9);
    let input = t.encode().expect("task");
    let mut child = std::process::Command::new(&native)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("native step");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&input)
        .expect("write");
    let out = child.wait_with_output().expect("native output");
    assert!(out.status.success());
    let wasm = run_step(&Sandbox::new().expect("sandbox"), &module, &t).expect("step");
    assert_eq!(out.stdout, wasm.encode());
}

/// The robust rules on the same run: verification already removed the Byzantine updates, and
/// the rules must not cost the honest ones more than 3 points (outliers among honest updates are
/// refused a reward, never slashed).
#[test]
fn robust_rules_keep_accuracy_with_two_byzantine_trainers() {
    let (sandbox, module, data) = (Sandbox::new().expect("sandbox"), module(), data());
    let base = SimConfig::recommended(2);
    let (_, central) = centralized(&sandbox, &module, &data, &base).expect("centralized");
    for rule in [
        agora_train::Rule::Median,
        agora_train::Rule::TrimmedMean { trim: 1 },
        agora_train::Rule::MultiKrum { f: 1, m: 4 },
    ] {
        let cfg = SimConfig {
            rule,
            ..base.clone()
        };
        let r = simulate(&sandbox, &module, &data, &cfg).expect("run");
        print(&format!("{rule:?}"), &r);
        eprintln!(
            "  accepted honest {} of {}",
            r.accepted_honest,
            6 * cfg.rounds
        );
        assert!(
            r.accuracy >= central.accuracy_percent() - 3.0,
            "{rule:?}: {}",
            r.accuracy
        );
        assert_eq!(r.honest_slashed, 0);
        assert_eq!(r.rejected_byzantine, r.byzantine_proposals);
    }
}
