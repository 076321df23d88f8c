//! How replicas of an inference job are compared: a rule that maps an output tensor to
//! canonical bytes, whose hash the replicas compare.

use std::fmt::Write as _;

use tract_onnx::prelude::{Datum, Tensor};

pub use agora_types::job::{Compare, MAX_ROUND_DIGITS};

use super::npy::{self, Dtype};
use crate::ExecError;

/// Largest output [`canonicalize`] reads, in elements (256 Mi; the bytes were bounded by the
/// job's output limit already, this only bounds the work).
const MAX_CANONICAL_ELEMENTS: u64 = 1 << 28;

/// The canonical bytes of an output `.npy` under `rule`: replicas agree when these are equal.
///
/// - `exact`: the bytes unchanged.
/// - `round:N`: every float rounded to N significant digits (correctly rounded decimal, so the
///   same on every machine), `-0` made `0`, every NaN the same NaN, re-encoded as `.npy` of the
///   same dtype and shape (little-endian, C order); integers and bools re-encoded unchanged.
/// - `argmax`: int64 `.npy` of shape `shape[..-1]`, the index of the largest value of each row
///   (last axis); ties go to the lower index and NaN counts as smaller than any number.
/// - `topk:K`: int64 `.npy` of shape `shape[..-1] + [min(K, last)]`, the K largest per row,
///   largest first, ties to the lower index.
///
/// Fails with [`ExecError::InvalidTensor`] when the bytes are not a `.npy` tensor, or when
/// `argmax`/`topk` meets a scalar or an empty last axis.
pub fn canonicalize(output_npy: &[u8], rule: &Compare) -> Result<Vec<u8>, ExecError> {
    if let Compare::Exact = rule {
        return Ok(output_npy.to_vec());
    }
    let tensor = npy::decode(output_npy, MAX_CANONICAL_ELEMENTS)?;
    let Some(dtype) = Dtype::from_tract(tensor.datum_type()) else {
        return Err(ExecError::Internal("decoded an unknown dtype".into()));
    };
    match *rule {
        Compare::Exact => Ok(output_npy.to_vec()),
        // Re-encoded, so that equivalent encodings (byte order, header padding) agree.
        Compare::Round(_) if !dtype.is_float() => Ok(npy::encode(&tensor)?.1),
        Compare::Round(n) => round(&tensor, dtype, n),
        Compare::Argmax => ranked(&tensor, dtype, 1, false),
        Compare::TopK(k) => ranked(&tensor, dtype, usize::from(k), true),
    }
}

fn slice<T: Datum>(t: &Tensor) -> Result<&[T], ExecError> {
    t.try_as_plain_ram()
        .and_then(|v| v.as_slice::<T>())
        .map_err(|e| ExecError::Internal(format!("reading a decoded tensor: {e}")))
}

fn round(t: &Tensor, dtype: Dtype, digits: u8) -> Result<Vec<u8>, ExecError> {
    if !(1..=MAX_ROUND_DIGITS).contains(&digits) {
        return Err(ExecError::InvalidTensor(format!(
            "round:{digits}: the significant digits must be 1 to {MAX_ROUND_DIGITS}"
        )));
    }
    let mut buf = String::with_capacity(32);
    match dtype {
        Dtype::F32 => {
            let v: Vec<f32> = slice::<f32>(t)?
                .iter()
                .map(|&x| round_f32(x, digits, &mut buf))
                .collect();
            npy::encode_slice(t.shape(), &v)
        }
        Dtype::F64 => {
            let v: Vec<f64> = slice::<f64>(t)?
                .iter()
                .map(|&x| round_f64(x, digits, &mut buf))
                .collect();
            npy::encode_slice(t.shape(), &v)
        }
        _ => Err(ExecError::Internal("round on a non-float tensor".into())),
    }
}

/// `x` rounded to `digits` significant decimal digits. Formatting with a fixed precision is
/// exact in Rust (the decimal nearest to the binary value, ties to even), and parsing is
/// correctly rounded, so this is the same on every machine.
pub(crate) fn round_f32(x: f32, digits: u8, buf: &mut String) -> f32 {
    if x.is_nan() {
        return f32::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return if x == 0.0 { 0.0 } else { x };
    }
    buf.clear();
    let _ = write!(buf, "{:.*e}", usize::from(digits - 1), x);
    let r: f32 = buf.parse().unwrap_or(x);
    if r == 0.0 { 0.0 } else { r }
}

/// [`round_f32`] for `f64`.
pub(crate) fn round_f64(x: f64, digits: u8, buf: &mut String) -> f64 {
    if x.is_nan() {
        return f64::NAN;
    }
    if x == 0.0 || x.is_infinite() {
        return if x == 0.0 { 0.0 } else { x };
    }
    buf.clear();
    let _ = write!(buf, "{:.*e}", usize::from(digits - 1), x);
    let r: f64 = buf.parse().unwrap_or(x);
    if r == 0.0 { 0.0 } else { r }
}

/// A total "is larger" for ranking: NaN below every number, `-0 == 0`.
trait Rank: Copy {
    fn beats(self, other: Self) -> bool;
}

macro_rules! rank_int {
    ($($t:ty),*) => {$(
        impl Rank for $t {
            fn beats(self, other: Self) -> bool {
                self > other
            }
        }
    )*};
}
rank_int!(u8, i8, u16, i16, u32, i32, u64, i64);

impl Rank for bool {
    fn beats(self, other: Self) -> bool {
        self & !other
    }
}

macro_rules! rank_float {
    ($($t:ty),*) => {$(
        impl Rank for $t {
            fn beats(self, other: Self) -> bool {
                if self.is_nan() {
                    false
                } else if other.is_nan() {
                    true
                } else {
                    self > other
                }
            }
        }
    )*};
}
rank_float!(f32, f64);

fn ranked(t: &Tensor, dtype: Dtype, k: usize, keep_axis: bool) -> Result<Vec<u8>, ExecError> {
    let rule = if keep_axis { "topk" } else { "argmax" };
    let shape = t.shape();
    let Some((&last, outer)) = shape.split_last() else {
        return Err(ExecError::InvalidTensor(format!(
            "{rule} needs an output with at least one axis; this one is a scalar (use exact or \
             round:N)"
        )));
    };
    if last < 2 {
        return Err(ExecError::InvalidTensor(format!(
            "{rule} ranks the values of the output's last axis, and it has {last} (shape \
             {shape:?}): nothing to compare; verify this model with round:N or exact"
        )));
    }
    let k = k.min(last);
    let idx = match dtype {
        Dtype::Bool => top::<bool>(slice(t)?, last, k),
        Dtype::U8 => top::<u8>(slice(t)?, last, k),
        Dtype::I8 => top::<i8>(slice(t)?, last, k),
        Dtype::U16 => top::<u16>(slice(t)?, last, k),
        Dtype::I16 => top::<i16>(slice(t)?, last, k),
        Dtype::U32 => top::<u32>(slice(t)?, last, k),
        Dtype::I32 => top::<i32>(slice(t)?, last, k),
        Dtype::U64 => top::<u64>(slice(t)?, last, k),
        Dtype::I64 => top::<i64>(slice(t)?, last, k),
        Dtype::F32 => top::<f32>(slice(t)?, last, k),
        Dtype::F64 => top::<f64>(slice(t)?, last, k),
    };
    let mut out_shape = outer.to_vec();
    if keep_axis {
        out_shape.push(k);
    }
    npy::encode_slice(&out_shape, &idx)
}

/// The `k` best indices of every row of `row_len` values, best first, ties to the lower index.
fn top<T: Rank>(data: &[T], row_len: usize, k: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(data.len() / row_len * k);
    let mut order: Vec<usize> = Vec::with_capacity(row_len);
    for row in data.chunks_exact(row_len) {
        if k == 1 {
            let mut best = 0;
            for (i, &x) in row.iter().enumerate().skip(1) {
                if x.beats(row[best]) {
                    best = i;
                }
            }
            out.push(best as i64);
            continue;
        }
        order.clear();
        order.extend(0..row_len);
        // Stable: equal values keep their index order.
        order.sort_by(|&a, &b| {
            if row[a].beats(row[b]) {
                std::cmp::Ordering::Less
            } else if row[b].beats(row[a]) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
        out.extend(order[..k].iter().map(|&i| i as i64));
    }
    out
}

/// A wrong answer of the same dtype as `output_npy`, for the tests' Byzantine workers: every
/// float negated (the top class becomes the bottom one) or every integer plus one, and then
/// `1 + salt % 4096` extra rows along the first axis, so that two Byzantine workers with
/// different salts return different wrong answers under every rule (independent faults, not a
/// cartel: see ARCHITECTURE.md on collusion). Dtypes other than float32/64 and int32/64, and
/// scalars, come back re-encoded with only the values changed where they can be. It passes every
/// check a submitter makes of a result's form, so only the vote can reject it.
pub fn perturb(output_npy: &[u8], salt: u64) -> Result<Vec<u8>, ExecError> {
    let tensor = npy::decode(output_npy, MAX_CANONICAL_ELEMENTS)?;
    let extra = 1 + (salt % 4096) as usize;
    match Dtype::from_tract(tensor.datum_type()) {
        Some(Dtype::F32) => wrong::<f32>(&tensor, extra, |x| -x),
        Some(Dtype::F64) => wrong::<f64>(&tensor, extra, |x| -x),
        Some(Dtype::I64) => wrong::<i64>(&tensor, extra, |x| x.wrapping_add(1)),
        Some(Dtype::I32) => wrong::<i32>(&tensor, extra, |x| x.wrapping_add(1)),
        _ => Ok(npy::encode(&tensor)?.1),
    }
}

/// `t` with `f` applied to every value and its first row repeated `extra` more times.
fn wrong<T>(t: &Tensor, extra: usize, f: impl Fn(T) -> T) -> Result<Vec<u8>, ExecError>
where
    T: Datum + Copy + npyz::Serialize + npyz::AutoSerialize,
{
    let mut v: Vec<T> = slice::<T>(t)?.iter().map(|&x| f(x)).collect();
    let mut shape = t.shape().to_vec();
    if let Some(first) = shape.first_mut()
        && *first > 0
    {
        let row = v.len() / *first;
        let copy = v[..row].to_vec();
        for _ in 0..extra {
            v.extend_from_slice(&copy);
        }
        *first += extra;
    }
    npy::encode_slice(&shape, &v)
}
