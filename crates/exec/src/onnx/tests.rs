//! Tests of the ONNX engine on the example models (`examples/onnx`, made by `make_models.py`
//! with scikit-learn, skl2onnx and onnxruntime): results against onnxruntime's, every refusal,
//! the cache, the limits, and the comparison rules across two of tract's kernel paths.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::compare::{round_f32, round_f64};
use super::npy;
use super::{PlanKind, TestPlan, run_uncached};
use crate::{
    Compare, Dtype, ExecError, OnnxEngine, OnnxJob, OnnxLimits, Pool, Sandbox, canonicalize,
};

fn example(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/onnx")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn floats(npy_bytes: &[u8]) -> (Vec<usize>, Vec<f32>) {
    let t = npy::decode(npy_bytes, u64::MAX).unwrap();
    let v = t
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec();
    (t.shape().to_vec(), v)
}

fn npy_f32(shape: &[usize], data: &[f32]) -> Vec<u8> {
    npy::encode_slice(shape, data).unwrap()
}

fn job(model: &[u8], input: Vec<u8>) -> OnnxJob {
    OnnxJob::new(model.to_vec(), input, OnnxLimits::default())
}

fn argmax_rows(v: &[f32], row: usize) -> Vec<usize> {
    v.chunks_exact(row)
        .map(|r| (0..row).fold(0, |best, i| if r[i] > r[best] { i } else { best }))
        .collect()
}

/// Rows of the held-out digits (float32 [297, 64]).
fn test_rows() -> Vec<Vec<f32>> {
    let (shape, v) = floats(&example("x_test.npy"));
    assert_eq!(shape, [297, 64]);
    v.chunks_exact(64).map(<[f32]>::to_vec).collect()
}

/// Deterministic pseudo-random digit-like rows: pixels in sixteenths of [0, 1].
fn random_rows(n: usize, seed: u64) -> Vec<Vec<f32>> {
    let mut s = seed;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| (0..64).map(|_| (next() % 17) as f32 / 16.0).collect())
        .collect()
}

#[test]
fn mlp_matches_onnxruntime() {
    let engine = OnnxEngine::new();
    let out = engine
        .run_blocking(&job(&example("mlp.onnx"), example("x_test.npy")))
        .unwrap();
    assert_eq!(out.dtype, Dtype::F32);
    assert_eq!(out.shape, [297, 10]);
    let (_, ours) = floats(&out.output);
    let (_, ort) = floats(&example("mlp_test_probs.npy"));
    let max_diff = ours
        .iter()
        .zip(&ort)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("mlp: largest |tract - onnxruntime| over 297x10 probabilities: {max_diff:e}");
    assert!(max_diff < 1e-5, "{max_diff}");
    assert_eq!(argmax_rows(&ours, 10), argmax_rows(&ort, 10));
    // The argmax rule gives onnxruntime's labels, byte for byte.
    assert_eq!(
        canonicalize(&out.output, &Compare::Argmax).unwrap(),
        canonicalize(&example("mlp_test_probs.npy"), &Compare::Argmax).unwrap()
    );
}

#[test]
fn logreg_runs_through_onnx_ml_operators() {
    // LinearClassifier and Normalizer are ONNX-ML operators that tract implements.
    let engine = OnnxEngine::new();
    let out = engine
        .run_blocking(&job(&example("logreg.onnx"), example("x_test.npy")))
        .unwrap();
    assert_eq!(out.shape, [297, 10]);
    let (_, ours) = floats(&out.output);
    let (_, ort) = floats(&example("logreg_test_probs.npy"));
    let max_diff = ours
        .iter()
        .zip(&ort)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    eprintln!("logreg: largest |tract - onnxruntime|: {max_diff:e}");
    assert!(max_diff < 1e-5, "{max_diff}");
    assert_eq!(argmax_rows(&ours, 10), argmax_rows(&ort, 10));
}

#[test]
fn label_output_first_is_returned_as_int64() {
    // skl2onnx's own export: `label` (int64) first, then `probabilities`.
    let engine = OnnxEngine::new();
    let info = engine
        .validate(&example("mlp_label.onnx"), &OnnxLimits::default())
        .unwrap();
    assert_eq!((info.output.name.as_str(), info.outputs), ("label", 2));
    assert_eq!(info.output.dtype, Dtype::I64);
    let out = engine
        .run_blocking(&job(&example("mlp_label.onnx"), example("x_test.npy")))
        .unwrap();
    assert_eq!((out.dtype, out.shape.as_slice()), (Dtype::I64, &[297][..]));
    let labels = npy::decode(&out.output, u64::MAX).unwrap();
    let labels: Vec<i64> = labels
        .try_as_plain_ram()
        .unwrap()
        .as_slice::<i64>()
        .unwrap()
        .to_vec();
    let (_, ort) = floats(&example("mlp_test_probs.npy"));
    let expected: Vec<i64> = argmax_rows(&ort, 10)
        .into_iter()
        .map(|i| i as i64)
        .collect();
    assert_eq!(labels, expected);
}

#[test]
fn single_row_and_validate() {
    let engine = OnnxEngine::new();
    let model = example("mlp.onnx");
    let info = engine.validate(&model, &OnnxLimits::default()).unwrap();
    assert_eq!(info.input.dtype, Dtype::F32);
    assert_eq!(info.input.shape.len(), 2);
    assert_eq!(info.input.shape[1], "64");
    assert_eq!(info.output.name, "probabilities");
    assert_eq!(info.outputs, 1);
    // validate compiled and cached it: the run does not compile again.
    let out = engine
        .run_blocking(&job(&model, example("x1.npy")))
        .unwrap();
    assert!(out.cached);
    assert_eq!(engine.compilations(), 1);
    assert_eq!(out.shape, [1, 10]);
    assert!(out.peak_tensor_bytes > 0);
}

/// Every refusal, each with its own error, and a good job served after each.
#[test]
#[allow(clippy::vec_init_then_push)] // one case per push reads best here
fn refusals_are_values_and_the_engine_keeps_serving() {
    let engine = OnnxEngine::new();
    let mlp = example("mlp.onnx");
    let x1 = example("x1.npy");
    let good = || engine.run_blocking(&job(&mlp, x1.clone())).unwrap();
    good();

    type Check = Box<dyn Fn(&ExecError) -> bool>;
    let mut cases: Vec<(&str, OnnxJob, Check)> = Vec::new();
    cases.push((
        "garbage model",
        job(b"definitely not protobuf \xff\xff\xff", x1.clone()),
        Box::new(|e| matches!(e, ExecError::InvalidModel(m) if m.contains("ONNX"))),
    ));
    cases.push((
        "empty model",
        job(b"", x1.clone()),
        Box::new(|e| matches!(e, ExecError::InvalidModel(_))),
    ));
    cases.push((
        "truncated model",
        job(&mlp[..mlp.len() / 2], x1.clone()),
        Box::new(|e| matches!(e, ExecError::InvalidModel(_))),
    ));
    cases.push((
        "unsupported operator",
        job(&example("scaler_logreg.onnx"), x1.clone()),
        Box::new(|e| matches!(e, ExecError::UnsupportedOperator(m) if m.contains("Scaler"))),
    ));
    cases.push((
        "truncated npy",
        job(&mlp, x1[..x1.len() - 4].to_vec()),
        Box::new(|e| matches!(e, ExecError::InvalidTensor(m) if m.contains("truncated"))),
    ));
    cases.push((
        "truncated npy header",
        job(&mlp, x1[..40].to_vec()),
        Box::new(|e| matches!(e, ExecError::InvalidTensor(m) if m.contains("truncated"))),
    ));
    cases.push((
        "not npy",
        job(&mlp, b"1,2,3\n".to_vec()),
        Box::new(|e| matches!(e, ExecError::InvalidTensor(m) if m.contains("numpy.save"))),
    ));
    let (_, row) = floats(&x1);
    let as_f64: Vec<f64> = row.iter().map(|&x| f64::from(x)).collect();
    cases.push((
        "wrong dtype",
        job(&mlp, npy::encode_slice(&[1, 64], &as_f64).unwrap()),
        Box::new(|e| {
            matches!(e, ExecError::InvalidTensor(m)
                if m.contains("float32") && m.contains("float64") && m.contains("astype"))
        }),
    ));
    cases.push((
        "wrong shape",
        job(&mlp, npy_f32(&[1, 63], &row[..63])),
        Box::new(|e| {
            matches!(e, ExecError::InvalidTensor(m) if m.contains("[1, 63]") && m.contains("64"))
        }),
    ));
    cases.push((
        "wrong rank",
        job(&mlp, npy_f32(&[64], &row)),
        Box::new(|e| matches!(e, ExecError::InvalidTensor(m) if m.contains("rank"))),
    ));
    let unsupported_dtype = {
        let mut b = x1.clone();
        let at = b.windows(3).position(|w| w == b"<f4").unwrap();
        b[at..at + 3].copy_from_slice(b"<c8");
        b
    };
    cases.push((
        "complex dtype",
        job(&mlp, unsupported_dtype),
        Box::new(|e| matches!(e, ExecError::InvalidTensor(m) if m.contains("unsupported dtype"))),
    ));
    let mut limits = OnnxLimits {
        max_model_bytes: 1000,
        ..OnnxLimits::default()
    };
    // Over the size limit, garbage is refused for its size: nothing was parsed.
    cases.push((
        "oversized model",
        OnnxJob::new(vec![0xffu8; 5000], x1.clone(), limits.clone()),
        Box::new(|e| {
            matches!(e, ExecError::TooLarge { what, size: 5000, limit: 1000, .. } if what == "the model")
        }),
    ));
    limits = OnnxLimits {
        max_input_bytes: 100,
        ..OnnxLimits::default()
    };
    cases.push((
        "oversized input",
        OnnxJob::new(mlp.clone(), vec![0xffu8; 5000], limits),
        Box::new(|e| {
            matches!(e, ExecError::TooLarge { what, size: 5000, .. } if what == "the input tensor")
        }),
    ));
    // A header claiming a huge shape over a few bytes: refused for its element count.
    let huge = {
        let mut b = x1.clone();
        let at = b.windows(7).position(|w| w == b"(1, 64)").unwrap();
        b.splice(at..at + 7, b"(1000000000, 64)".iter().copied());
        b
    };
    cases.push((
        "too many elements",
        job(&mlp, huge),
        Box::new(|e| matches!(e, ExecError::TooLarge { unit, .. } if unit == "elements")),
    ));
    cases.push((
        "memory limit",
        OnnxJob::new(
            mlp.clone(),
            example("x16.npy"),
            OnnxLimits {
                memory_bytes: 1000,
                ..OnnxLimits::default()
            },
        ),
        Box::new(|e| matches!(e, ExecError::MemoryLimit { limit: 1000, .. })),
    ));
    cases.push((
        "output limit",
        OnnxJob::new(
            mlp.clone(),
            example("x16.npy"),
            OnnxLimits {
                max_output_bytes: 100,
                ..OnnxLimits::default()
            },
        ),
        Box::new(|e| {
            matches!(e, ExecError::TooLarge { what, limit: 100, .. } if what == "the output tensor")
        }),
    ));
    cases.push((
        "wall time",
        OnnxJob::new(
            mlp.clone(),
            example("x16.npy"),
            OnnxLimits {
                wall_time: Duration::ZERO,
                ..OnnxLimits::default()
            },
        ),
        Box::new(|e| matches!(e, ExecError::WallTime(d) if d.is_zero())),
    ));
    let mut wrong_hash = job(&mlp, x1.clone());
    wrong_hash.model_hash = [7; 32];
    cases.push((
        "hash mismatch",
        wrong_hash,
        Box::new(|e| matches!(e, ExecError::InvalidModel(m) if m.contains("model_hash"))),
    ));

    for (name, j, expected) in &cases {
        let e = engine.run_blocking(j).expect_err(name);
        eprintln!("{name}: {e}");
        assert!(expected(&e), "{name}: unexpected error {e:?}");
        let ok = good();
        assert_eq!(ok.shape, [1, 10], "after {name}");
    }
    // Only the good model was ever cached; the refused ones did not pollute the cache.
    assert_eq!(engine.cached_models(), 1);
}

#[test]
fn plans_are_cached_by_hash_and_evicted_oldest_first() {
    let engine = OnnxEngine::new();
    let mlp = example("mlp.onnx");
    let first = engine.run_blocking(&job(&mlp, example("x1.npy"))).unwrap();
    let second = engine.run_blocking(&job(&mlp, example("x16.npy"))).unwrap();
    assert!(!first.cached);
    assert!(second.cached);
    assert_eq!(engine.compilations(), 1, "the second run did not compile");
    // Distinct models (a different doc_string, protobuf field 6, appended: the last one wins).
    let variant = |i: u8| {
        let mut m = mlp.clone();
        m.extend_from_slice(&[0x32, 1, b'a' + i]);
        m
    };
    for i in 0..crate::ONNX_CACHE_CAPACITY as u8 {
        let out = engine
            .run_blocking(&job(&variant(i), example("x1.npy")))
            .unwrap();
        assert!(!out.cached);
    }
    assert_eq!(engine.cached_models(), crate::ONNX_CACHE_CAPACITY);
    assert_eq!(engine.compilations(), 1 + crate::ONNX_CACHE_CAPACITY as u64);
    // The original was the least recently used: evicted, so it compiles again.
    let again = engine.run_blocking(&job(&mlp, example("x1.npy"))).unwrap();
    assert!(!again.cached);
    // The most recent variant is still there.
    let last = variant(crate::ONNX_CACHE_CAPACITY as u8 - 1);
    assert!(
        engine
            .run_blocking(&job(&last, example("x1.npy")))
            .unwrap()
            .cached
    );
}

#[test]
fn compile_time_limit() {
    let engine = OnnxEngine::new();
    let j = OnnxJob::new(
        example("mlp.onnx"),
        example("x1.npy"),
        OnnxLimits {
            compile_time: Duration::ZERO,
            ..OnnxLimits::default()
        },
    );
    assert!(matches!(
        engine.run_blocking(&j),
        Err(ExecError::CompileTime(_))
    ));
}

#[test]
fn fortran_order_input_is_read_in_its_order() {
    let engine = OnnxEngine::new();
    let mlp = example("mlp.onnx");
    let (_, rows) = floats(&example("x16.npy"));
    let two = &rows[..128];
    // Column-major: element (r, c) at c * 2 + r.
    let mut transposed = vec![0f32; 128];
    for r in 0..2 {
        for c in 0..64 {
            transposed[c * 2 + r] = two[r * 64 + c];
        }
    }
    let mut header = b"{'descr': '<f4', 'fortran_order': True, 'shape': (2, 64), }".to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(header.len() as u16).to_le_bytes());
    f.extend_from_slice(&header);
    for x in &transposed {
        f.extend_from_slice(&x.to_le_bytes());
    }
    let fortran = engine.run_blocking(&job(&mlp, f)).unwrap();
    let c_order = engine
        .run_blocking(&job(&mlp, npy_f32(&[2, 64], two)))
        .unwrap();
    assert_eq!(fortran.output, c_order.output);
}

/// The fast header reader and npyz's general parser agree; unusual headers still parse.
#[test]
fn npy_headers_fast_and_general() {
    let (_, row) = floats(&example("x1.npy"));
    let fast = npy::header(&example("x1.npy"), u64::MAX).unwrap().0;
    assert_eq!(fast.shape, [1, 64]);
    // Same tensor, header in another key order and spacing: npyz's parser reads it.
    let mut header = b"{ 'shape':(1,64), 'fortran_order':False, 'descr':'<f4' }".to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(header.len() as u16).to_le_bytes());
    f.extend_from_slice(&header);
    for x in &row {
        f.extend_from_slice(&x.to_le_bytes());
    }
    assert_eq!(npy::header(&f, u64::MAX).unwrap().0, fast);
    assert_eq!(floats(&f).1, row);
    // 1-d and 0-d shapes, and big-endian data.
    let v = npy::encode_slice(&[3], &[1.5f64, -2.0, 3.25]).unwrap();
    assert_eq!(npy::header(&v, u64::MAX).unwrap().0.shape, [3]);
    let s = npy::encode_slice::<i32>(&[], &[7]).unwrap();
    assert_eq!(
        npy::header(&s, u64::MAX).unwrap().0.shape,
        Vec::<usize>::new()
    );
    let mut be = npy::encode_slice(&[2], &[1.0f32, 2.0]).unwrap();
    let at = be.windows(3).position(|w| w == b"<f4").unwrap();
    be[at] = b'>';
    let n = be.len();
    be[n - 8..n - 4].copy_from_slice(&1.0f32.to_be_bytes());
    be[n - 4..].copy_from_slice(&2.0f32.to_be_bytes());
    assert_eq!(floats(&be).1, [1.0, 2.0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_runs_onnx_jobs_on_its_slots() {
    let pool = Pool::new(Sandbox::new().unwrap(), 2, 8);
    let mlp: Arc<[u8]> = example("mlp.onnx").into();
    let runs = (0..6).map(|_| {
        let pool = pool.clone();
        let j = OnnxJob::new(mlp.clone(), example("x16.npy"), OnnxLimits::default());
        tokio::spawn(async move { pool.run_onnx(j).await })
    });
    let outs: Vec<_> = futures_join(runs).await;
    let first = outs[0].as_ref().unwrap().output.clone();
    for o in &outs {
        assert_eq!(o.as_ref().unwrap().output, first);
    }
    assert_eq!(pool.free_slots(), 2);
    // Errors come back as values through the pool too.
    let bad = OnnxJob::new(mlp.clone(), b"nope".to_vec(), OnnxLimits::default());
    assert!(matches!(
        pool.run_onnx(bad).await,
        Err(ExecError::InvalidTensor(_))
    ));
    assert_eq!(pool.onnx().compilations(), 1);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn compare_rules_parse_print_and_serialize_as_strings() {
    for (s, rule) in [
        ("exact", Compare::Exact),
        ("round:4", Compare::Round(4)),
        ("argmax", Compare::Argmax),
        ("topk:3", Compare::TopK(3)),
    ] {
        assert_eq!(s.parse::<Compare>().unwrap(), rule);
        assert_eq!(rule.to_string(), s);
        let json = serde_json::to_string(&rule).unwrap();
        assert_eq!(json, format!("\"{s}\""));
        assert_eq!(serde_json::from_str::<Compare>(&json).unwrap(), rule);
    }
    assert_eq!(Compare::default(), Compare::Argmax);
    for bad in [
        "round:0", "round:10", "round:x", "topk:0", "topk:256", "argmin", "", "round",
    ] {
        let e = bad.parse::<Compare>().unwrap_err();
        assert!(e.contains("exact"), "{bad}: {e}");
    }
    assert!(serde_json::from_str::<Compare>("\"round:12\"").is_err());
}

#[test]
fn rounding_is_to_significant_digits() {
    let mut b = String::new();
    assert_eq!(round_f32(0.123_456, 4, &mut b), 0.1235);
    assert_eq!(round_f32(123_456.0, 2, &mut b), 120_000.0);
    assert_eq!(round_f32(-0.0, 4, &mut b).to_bits(), 0f32.to_bits());
    assert_eq!(round_f32(-1e-30, 3, &mut b), -1e-30);
    assert!(round_f32(f32::NAN, 4, &mut b).is_nan());
    assert_eq!(round_f32(f32::INFINITY, 4, &mut b), f32::INFINITY);
    assert_eq!(round_f64(1.234_567_89, 3, &mut b), 1.23);
    // A one-ulp difference far from a rounding boundary disappears.
    let x = 0.987_654_3f32;
    let y = f32::from_bits(x.to_bits() + 1);
    assert_eq!(round_f32(x, 4, &mut b), round_f32(y, 4, &mut b));
}

#[test]
fn canonical_forms() {
    let probs = npy_f32(&[2, 4], &[0.1, 0.6, 0.2, 0.1, 0.25, 0.25, 0.4, 0.1]);
    let argmax = canonicalize(&probs, &Compare::Argmax).unwrap();
    assert_eq!(argmax, npy::encode_slice(&[2], &[1i64, 2]).unwrap());
    let top = canonicalize(&probs, &Compare::TopK(3)).unwrap();
    // Ties go to the lower index: row 2 has 0.25 at 0 and 1.
    assert_eq!(
        top,
        npy::encode_slice(&[2, 3], &[1i64, 2, 0, 2, 0, 1]).unwrap()
    );
    // K beyond the row is the whole row.
    let all = canonicalize(&probs, &Compare::TopK(9)).unwrap();
    assert_eq!(
        all,
        npy::encode_slice(&[2, 4], &[1i64, 2, 0, 3, 2, 0, 1, 3]).unwrap()
    );
    // NaN ranks below every number.
    let nan = npy_f32(&[3], &[f32::NAN, 0.5, 0.7]);
    assert_eq!(
        canonicalize(&nan, &Compare::Argmax).unwrap(),
        npy::encode_slice::<i64>(&[], &[2]).unwrap()
    );
    assert_eq!(canonicalize(&probs, &Compare::Exact).unwrap(), probs);
    // Integer outputs are compared exactly under round:N.
    let ints = npy::encode_slice(&[3], &[1i64, 2, 3]).unwrap();
    assert_eq!(canonicalize(&ints, &Compare::Round(2)).unwrap(), ints);
    // Not a tensor, or a scalar for argmax: an error, not a panic.
    assert!(matches!(
        canonicalize(b"junk", &Compare::Argmax),
        Err(ExecError::InvalidTensor(_))
    ));
    let scalar = npy::encode_slice::<f32>(&[], &[1.0]).unwrap();
    assert!(matches!(
        canonicalize(&scalar, &Compare::Argmax),
        Err(ExecError::InvalidTensor(_))
    ));
    let empty = npy::encode_slice::<f32>(&[2, 0], &[]).unwrap();
    assert!(canonicalize(&empty, &Compare::TopK(2)).is_err());
    // One value per row (a regression): argmax would compare nothing, so it is refused.
    let column = npy_f32(&[3, 1], &[0.5, 1.5, 2.5]);
    let e = canonicalize(&column, &Compare::default()).unwrap_err();
    assert!(e.to_string().contains("round:N"), "{e}");
    assert!(canonicalize(&column, &Compare::Round(3)).is_ok());
}

fn rows_npy(rows: &[Vec<f32>]) -> Vec<u8> {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    npy_f32(&[rows.len(), 64], &flat)
}

/// How many rows' canonical bytes differ between two [rows, classes] outputs under `rule`.
fn disagreements(a: &[f32], b: &[f32], classes: usize, rule: &Compare) -> usize {
    a.chunks_exact(classes)
        .zip(b.chunks_exact(classes))
        .filter(|(x, y)| {
            canonicalize(&npy_f32(&[1, classes], x), rule).unwrap()
                != canonicalize(&npy_f32(&[1, classes], y), rule).unwrap()
        })
        .count()
}

/// The same models through tract's optimized plan (tract-linalg's SIMD kernels, its fast `exp`)
/// and its reference plan (typed and decluttered only: the operators' plain implementations),
/// on the 297 held-out digits and 2,703 pseudo-random inputs, one row at a time and as one
/// batch. Prints the largest difference and, per rule, the rows whose canonical bytes differ
/// (measured: round:4 about 3% of rows, round:3 about 0.3%, round:2 0.07%, argmax and topk
/// none); the default rule must give identical canonical bytes for both, and perturbed outputs
/// must not.
#[test]
fn two_kernel_paths() {
    let limits = OnnxLimits::default();
    let mut rows = test_rows();
    rows.extend(random_rows(2703, 0x5eed_1234_abcd_ef01));
    let rule = Compare::default();
    for model_name in ["mlp.onnx", "logreg.onnx"] {
        let model = example(model_name);
        let optimized = TestPlan::new(&model, PlanKind::Optimized).unwrap();
        let reference = TestPlan::new(&model, PlanKind::Reference).unwrap();
        let (mut max_abs, mut max_rel) = (0f32, 0f32);
        let mut canon_equal = 0;
        let (mut all_opt, mut all_ref) = (vec![], vec![]);
        for row in &rows {
            let x = rows_npy(std::slice::from_ref(row));
            let a = optimized.run(&x, &limits).unwrap();
            let b = reference.run(&x, &limits).unwrap();
            let (_, va) = floats(&a.output);
            let (_, vb) = floats(&b.output);
            for (p, q) in va.iter().zip(&vb) {
                max_abs = max_abs.max((p - q).abs());
                if p.abs() > 1e-30 {
                    max_rel = max_rel.max(((p - q) / p).abs());
                }
            }
            if canonicalize(&a.output, &rule).unwrap() == canonicalize(&b.output, &rule).unwrap() {
                canon_equal += 1;
            }
            all_opt.extend(va);
            all_ref.extend(vb);
        }
        // The whole set as one batch, too (other kernel shapes).
        let batch = rows_npy(&rows);
        let a = optimized.run(&batch, &limits).unwrap();
        let b = reference.run(&batch, &limits).unwrap();
        let (_, ba) = floats(&a.output);
        let (_, bb) = floats(&b.output);
        let batch_abs = ba
            .iter()
            .zip(&bb)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let bitwise_rows = all_opt
            .chunks_exact(10)
            .zip(all_ref.chunks_exact(10))
            .filter(|(p, q)| {
                p.iter()
                    .zip(q.iter())
                    .all(|(x, y)| x.to_bits() == y.to_bits())
            })
            .count();
        eprintln!(
            "{model_name}: {} inputs, optimized vs reference: largest |diff| {max_abs:e} \
             (relative {max_rel:e}), batch of {} {batch_abs:e}; rows bit-identical {bitwise_rows}",
            rows.len(),
            rows.len()
        );
        for r in [
            Compare::Exact,
            Compare::Round(6),
            Compare::Round(5),
            Compare::Round(4),
            Compare::Round(3),
            Compare::Round(2),
            Compare::Argmax,
            Compare::TopK(3),
        ] {
            eprintln!(
                "  {r}: rows whose canonical bytes differ: {}",
                disagreements(&all_opt, &all_ref, 10, &r)
            );
        }
        assert_eq!(
            canon_equal,
            rows.len(),
            "{model_name}: the default rule {rule} must accept both kernel paths"
        );
        assert_eq!(
            canonicalize(&a.output, &rule).unwrap(),
            canonicalize(&b.output, &rule).unwrap(),
            "{model_name}: batch"
        );
        assert_eq!(
            canonicalize(&a.output, &Compare::Argmax).unwrap(),
            canonicalize(&b.output, &Compare::Argmax).unwrap()
        );

        // Perturbed outputs are rejected: the largest probability of a row lowered by 1e-2 or
        // the smallest raised by 1e-2 (by round:N; argmax forgives what keeps the class), or
        // the top class of a row swapped with the runner-up (by every rule).
        let value_rule = Compare::Round(3);
        let reference_canon = canonicalize(&a.output, &value_rule).unwrap();
        for (row, raise) in [(3usize, false), (3, true), (200, false), (1500, true)] {
            let mut moved = ba.clone();
            let r = &mut moved[row * 10..row * 10 + 10];
            let pick = if raise {
                (0..10).fold(0, |s, i| if r[i] < r[s] { i } else { s })
            } else {
                argmax_rows(r, 10)[0]
            };
            r[pick] += if raise { 1e-2 } else { -1e-2 };
            let moved = npy_f32(&[rows.len(), 10], &moved);
            assert_ne!(
                canonicalize(&moved, &value_rule).unwrap(),
                reference_canon,
                "{value_rule} must reject row {row} moved by 1e-2"
            );
        }
        let mut swapped = ba.clone();
        let row = &mut swapped[50..60];
        let best = argmax_rows(row, 10)[0];
        let second = (0..10)
            .filter(|&i| i != best)
            .fold(if best == 0 { 1 } else { 0 }, |s, i| {
                if row[i] > row[s] { i } else { s }
            });
        row.swap(best, second);
        let swapped = npy_f32(&[rows.len(), 10], &swapped);
        for r in [rule, Compare::TopK(3), Compare::Round(2), Compare::Round(4)] {
            assert_ne!(
                canonicalize(&swapped, &r).unwrap(),
                canonicalize(&a.output, &r).unwrap(),
                "{r} must reject a swapped top class"
            );
        }
        // A different model (the other example) is rejected by every rule.
        let other = if model_name == "mlp.onnx" {
            "logreg.onnx"
        } else {
            "mlp.onnx"
        };
        let c = run_uncached(&example(other), PlanKind::Optimized, &batch, &limits).unwrap();
        for r in [rule, Compare::Round(2)] {
            assert_ne!(
                canonicalize(&c.output, &r).unwrap(),
                canonicalize(&a.output, &r).unwrap(),
                "{r} must tell {other} from {model_name}"
            );
        }
    }
}

/// tract against onnxruntime (another engine, other kernels) on the held-out digits, per row:
/// the rows whose canonical bytes differ, per rule (printed; argmax must agree everywhere).
#[test]
fn tract_against_onnxruntime_per_rule() {
    let engine = OnnxEngine::new();
    for model_name in ["mlp.onnx", "logreg.onnx"] {
        let model = example(model_name);
        let (_, ort) = floats(&example(&model_name.replace(".onnx", "_test_probs.npy")));
        let mut ours = vec![];
        for row in test_rows() {
            let out = engine.run_blocking(&job(&model, rows_npy(&[row]))).unwrap();
            ours.extend(floats(&out.output).1);
        }
        let max_abs = ours
            .iter()
            .zip(&ort)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        let mut line =
            format!("{model_name} tract vs onnxruntime, 297 rows: largest |diff| {max_abs:e};");
        for r in [
            Compare::Exact,
            Compare::Round(6),
            Compare::Round(5),
            Compare::Round(4),
            Compare::Round(3),
            Compare::Argmax,
        ] {
            line.push_str(&format!(" {r}: {}", disagreements(&ours, &ort, 10, &r)));
        }
        eprintln!("{line}");
        assert_eq!(disagreements(&ours, &ort, 10, &Compare::Argmax), 0);
    }
}

/// Where the time of one `run_blocking` goes (run by hand, in release:
/// `cargo test --release -p agora-exec --lib onnx::tests::profile_parts -- --ignored --nocapture`).
#[test]
#[ignore]
fn profile_parts() {
    use std::time::Instant;
    let n = 20_000;
    let limits = OnnxLimits::default();
    let model = example("mlp.onnx");
    let x1 = example("x1.npy");
    let engine = OnnxEngine::new();
    let j = job(&model, x1.clone());
    let out = engine.run_blocking(&j).unwrap();
    let plan = super::compile(&model, PlanKind::Optimized).unwrap();
    let time = |name: &str, f: &mut dyn FnMut()| {
        for _ in 0..n / 10 {
            f();
        }
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        eprintln!(
            "{name}: {:.2} us",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    };
    time("run_blocking", &mut || {
        std::hint::black_box(engine.run_blocking(&j).unwrap());
    });
    time("npy header", &mut || {
        std::hint::black_box(npy::header(&x1, u64::MAX).unwrap());
    });
    time("npy decode", &mut || {
        std::hint::black_box(npy::decode(&x1, u64::MAX).unwrap());
    });
    let t = npy::decode(&out.output, u64::MAX).unwrap();
    time("npy encode", &mut || {
        std::hint::black_box(npy::encode(&t).unwrap());
    });
    let input = npy::decode(&x1, u64::MAX).unwrap();
    let values = super::bind_input(&plan, Dtype::F32, input.shape()).unwrap();
    time("bind + estimate", &mut || {
        let v = super::bind_input(&plan, Dtype::F32, input.shape()).unwrap();
        super::estimate(&plan, &v, &limits).unwrap();
    });
    let _ = values;
    time("run (checked eval)", &mut || {
        let deadline = Instant::now() + limits.wall_time;
        std::hint::black_box(super::run(&plan, input.clone(), &limits, deadline).unwrap());
    });
    time("plan.run (bare)", &mut || {
        use tract_onnx::prelude::{IntoTValue, tvec};
        std::hint::black_box(plan.plan.run(tvec![input.clone().into_tvalue()]).unwrap());
    });
    time("blake3 of the model", &mut || {
        std::hint::black_box(blake3::hash(&model));
    });
    time("canonicalize argmax", &mut || {
        std::hint::black_box(canonicalize(&out.output, &Compare::Argmax).unwrap());
    });
}

/// The Byzantine test worker's answer: well-formed, wrong under every rule, and different for
/// different salts (independent faults), for float probabilities and int64 labels alike.
#[test]
fn perturbed_outputs_are_well_formed_wrong_and_distinct() {
    let engine = OnnxEngine::new();
    for model in ["mlp.onnx", "mlp_label.onnx"] {
        let honest = engine
            .run_blocking(&job(&example(model), example("x16.npy")))
            .unwrap()
            .output;
        let a = crate::perturb(&honest, 1).unwrap();
        let b = crate::perturb(&honest, 2).unwrap();
        assert_eq!(a, crate::perturb(&honest, 1).unwrap(), "deterministic");
        let rules: &[Compare] = if model == "mlp.onnx" {
            &[
                Compare::Exact,
                Compare::Round(3),
                Compare::Argmax,
                Compare::TopK(3),
            ]
        } else {
            &[Compare::Exact, Compare::Round(3)]
        };
        for rule in rules {
            let h = canonicalize(&honest, rule).unwrap();
            let (ca, cb) = (
                canonicalize(&a, rule).unwrap(),
                canonicalize(&b, rule).unwrap(),
            );
            assert_ne!(ca, h, "{model} {rule}: a perturbed output passes as honest");
            assert_ne!(ca, cb, "{model} {rule}: two salts agree");
        }
    }
    assert!(crate::perturb(b"junk", 1).is_err());
}
