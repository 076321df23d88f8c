//! Every benchmark at smoke size: it runs, and its report has the expected fields. No timing is
//! checked (CI machines are too noisy for that).

use agora_bench::{BENCHES, Opts, run};
use serde_json::Value;

fn has(report: &Value, path: &[&str]) {
    let mut v = report;
    for key in path {
        v = v
            .get(key)
            .unwrap_or_else(|| panic!("no `{}` in {report:#}", path.join(".")));
    }
}

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for key in path {
        v = &v[key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("`{}` is not a number in {report:#}", path.join(".")))
}

async fn smoke(name: &str) -> Value {
    let opts = Opts {
        smoke: true,
        ..Opts::default()
    };
    let report = run(name, &opts)
        .await
        .unwrap_or_else(|e| panic!("bench {name}: {e:#}"));
    assert_eq!(report["bench"], name, "{report:#}");
    report
}

fn goal(report: &Value) {
    assert!(report["goal"].is_string(), "{report:#}");
    assert!(report["goal_met"].is_boolean(), "{report:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bench_reports_its_fields() {
    let started = std::time::Instant::now();

    let r = smoke("rr").await;
    goal(&r);
    for p in [
        &["agora", "p50_us"][..],
        &["agora", "p99_us"],
        &["baseline", "p50_us"],
        &["baseline", "p99_us"],
        &["ratio_p50"],
        &["ratio_p99"],
    ] {
        assert!(number(&r, p) > 0.0, "{r:#}");
    }
    assert_eq!(r["requests"], 50);

    let r = smoke("gossip").await;
    goal(&r);
    assert_eq!(r["nodes"], 20);
    assert_eq!(r["baseline"]["hops"], 2);
    assert!(number(&r, &["baseline", "bound_ms"]) > 0.0);
    has(&r, &["time_to_99pct_ms", "p50"]);
    has(&r, &["time_to_99pct_ms", "p95"]);
    has(&r, &["ratio"]);
    let d = number(&r, &["delivery_ratio"]);
    assert!((0.0..=1.0).contains(&d), "{r:#}");
    // The injected latency is really there: any round trip crosses the link at least twice.
    let floor = 2.0 * number(&r, &["link_latency_ms"]);
    assert!(
        number(&r, &["link_check", "echo_rtt_p50_ms"]) >= floor,
        "{r:#}"
    );
    if let Some(ping) = r["link_check"]["ping_rtt_p50_ms"].as_f64() {
        assert!(ping >= floor, "{r:#}");
    }

    let r = smoke("exec").await;
    goal(&r);
    for p in [
        &["trivial", "agora", "p50_us"][..],
        &["trivial", "baseline", "p50_us"],
        &["trivial", "ratio_p50"],
        &["cpu", "agora_ms"],
        &["cpu", "baseline_ms"],
        &["cpu", "ratio"],
        &["cpu", "fuel_used"],
    ] {
        assert!(number(&r, p) > 0.0, "{r:#}");
    }

    let r = smoke("scale").await;
    goal(&r);
    let sizes = r["sizes"].as_array().expect("sizes");
    assert_eq!(sizes.len(), 1);
    assert_eq!(sizes[0]["nodes"], 10);
    assert_eq!(sizes[0]["status"], "measured", "{r:#}");
    for g in [
        "every_node_connected",
        "degree_within_target_plus_slack",
        "memory",
        "idle_cpu",
        "dials",
    ] {
        assert!(sizes[0]["goals"][g].is_boolean(), "{g}: {r:#}");
    }
    assert!(number(&sizes[0], &["open_fds"]) > 10.0, "{r:#}");
    has(&r, &["per_node_mb_worst"]);

    let r = smoke("ledger").await;
    goal(&r);
    assert_eq!(r["validators"], 4, "{r:#}");
    assert_eq!(r["roots_agree"], true, "{r:#}");
    for p in [
        &["txs_finalized"][..],
        &["tx_per_s"],
        &["blocks"],
        &["txs_per_block"],
        &["block_time_ms"],
        &["duration_s"],
        &["ratio_to_state_machine"],
    ] {
        assert!(number(&r, p) >= 0.0, "{r:#}");
    }
    assert!(number(&r, &["baseline", "apply_tx_per_s"]) > 0.0, "{r:#}");
    has(&r, &["commit_latency_ms", "p50"]);
    has(&r, &["commit_latency_ms", "p99"]);

    let r = smoke("dispatch").await;
    goal(&r);
    for p in [
        &["latency_r1", "p50_us"][..],
        &["latency_r3", "p50_us"],
        &["sustained", "jobs_per_s"],
        &["baseline", "crypto_ceiling_jobs_per_s"],
        &["fraction_of_crypto_ceiling"],
    ] {
        assert!(number(&r, p) > 0.0, "{r:#}");
    }
    assert_eq!(r["sustained"]["failed"], 0, "{r:#}");
    // Ray ran beside it, or the report says why not (no Python with ray on this machine).
    let ray = &r["baseline"]["ray"];
    assert!(
        ray["sync"]["p50_us"].as_f64().is_some_and(|x| x > 0.0)
            || ray["skipped"]
                .as_str()
                .is_some_and(|s| s.contains("bench/venv.sh") || s.contains("baseline")),
        "{r:#}"
    );
    assert_eq!(
        r["ratios"]["r1_p50_over_ray_sync_p50"].is_number(),
        ray["sync"]["p50_us"].is_number(),
        "a ratio exactly when Ray ran: {r:#}"
    );

    let r = smoke("train").await;
    goal(&r);
    assert_eq!(r["rounds"], 2, "{r:#}");
    assert!(number(&r, &["accuracy"]) > 50.0, "{r:#}");
    assert_eq!(r["byzantine"]["honest_slashed"], 0, "{r:#}");
    assert_eq!(
        r["byzantine"]["rejected_byzantine_updates"], r["byzantine"]["byzantine_proposals"],
        "{r:#}"
    );
    assert!(
        r["flower"]["accuracy"].is_array() || r["flower"]["skipped"].is_string(),
        "Flower ran or the report says why not: {r:#}"
    );

    // Every listed bench was covered, and unknown names are refused.
    assert_eq!(
        BENCHES,
        &[
            "rr", "gossip", "exec", "scale", "ledger", "dispatch", "train", "infer"
        ]
    );
    assert!(run("nope", &Opts::default()).await.is_err());
    eprintln!("smoke run took {:?}", started.elapsed());
}

/// `infer` alone (also listed in [`BENCHES`] above): `cargo test -p agora-bench --test smoke infer`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_reports_its_fields() {
    let r = smoke("infer").await;
    goal(&r);
    for p in [
        &["agora", "run_blocking", "p50_us"][..],
        &["agora", "run_blocking", "p99_us"],
        &["agora", "pool", "p50_us"],
        &["agora", "throughput", "jobs_per_s"],
        &["baseline", "tract_bare", "p50_us"],
    ] {
        assert!(number(&r, p) > 0.0, "{r:#}");
    }
    assert_eq!(r["agora"]["throughput"]["failed"], 0, "{r:#}");
    assert_eq!(r["agora"]["compilations"], 1, "compiled once: {r:#}");
    // onnxruntime ran beside it, or the report says why not, and the ratio exists exactly then.
    let ort = &r["baseline"]["onnxruntime"];
    assert!(
        ort["full"]["p50_us"].as_f64().is_some_and(|x| x > 0.0) || ort["skipped"].is_string(),
        "{r:#}"
    );
    assert_eq!(
        r["ratio_p50"].is_number(),
        ort["full"]["p50_us"].is_number(),
        "{r:#}"
    );
}
