//! How replicas of an inference job are compared: a rule that maps an output tensor to
//! canonical bytes, whose hash the replicas compare.

use std::fmt::{self, Write as _};
use std::str::FromStr;

use tract_onnx::prelude::{Datum, Tensor};

use super::npy::{self, Dtype};
use crate::ExecError;

/// Largest output [`canonicalize`] reads, in elements (256 Mi; the bytes were bounded by the
/// job's output limit already, this only bounds the work).
const MAX_CANONICAL_ELEMENTS: u64 = 1 << 28;

/// How the outputs of replicas are compared: each replica's output `.npy` goes through
/// [`canonicalize`] and the verdict compares the hashes of the results.
///
/// CPU inference is not bit-identical across machines: kernels differ by instruction set
/// (summation order, FMA or not), so honest replicas' floats may differ in their last bits.
/// `Exact` compares bytes; the other rules forgive such differences but not a different model
/// or a tampered output.
///
/// Written (CLI, job spec, serde) as `exact`, `round:N`, `argmax` or `topk:K`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compare {
    /// Bit for bit: the output bytes themselves.
    Exact,
    /// Every float rounded to this many significant decimal digits (1..=9); integer and bool
    /// outputs are compared exactly.
    Round(u8),
    /// The index of the largest value along the last axis (ties: the lower index), per row:
    /// the predicted class of a classifier.
    Argmax,
    /// The indices of the K largest values along the last axis, largest first (ties: the lower
    /// index), per row.
    TopK(u8),
}

impl Default for Compare {
    /// `argmax`, from measurements (the `two_kernel_paths` test): the example models' softmax
    /// outputs through tract's two kernel paths differ by a relative ~2e-6 on every element,
    /// and two honest outputs disagree under `round:N` whenever one element straddles a
    /// rounding boundary, about `elements x 2e-6 x 10^N / 3` of the time. Over 3,000
    /// single-row inputs, round:4 split about 3% of the rows, round:3 0.3%, round:2 0.07%:
    /// no number of digits is safe, while argmax (and topk) split none. It still rejects a
    /// swapped top class and a different model; a model whose output has a single value per
    /// row is refused under argmax (there is nothing to rank), so the default never passes a
    /// regression unchecked: such jobs name `round:N`.
    fn default() -> Self {
        Compare::Argmax
    }
}

/// The largest `N` of [`Compare::Round`]: float32 holds about 7.2 significant digits, float64
/// about 16, and beyond 9 no two honest kernels would agree anyway.
pub const MAX_ROUND_DIGITS: u8 = 9;

impl fmt::Display for Compare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compare::Exact => f.write_str("exact"),
            Compare::Round(n) => write!(f, "round:{n}"),
            Compare::Argmax => f.write_str("argmax"),
            Compare::TopK(k) => write!(f, "topk:{k}"),
        }
    }
}

impl FromStr for Compare {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const FORMS: &str =
            "exact, round:N (N = 1..=9 significant digits), argmax, topk:K (K = 1..=255)";
        let s = s.trim();
        let number = |arg: &str, lo: u8, hi: u8, what: &str| -> Result<u8, String> {
            match arg.parse::<u8>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(format!(
                    "`{s}`: {what} must be a whole number from {lo} to {hi}; the rules are: {FORMS}"
                )),
            }
        };
        match s.split_once(':') {
            None if s.eq_ignore_ascii_case("exact") => Ok(Compare::Exact),
            None if s.eq_ignore_ascii_case("argmax") => Ok(Compare::Argmax),
            Some((rule, arg)) if rule.eq_ignore_ascii_case("round") => Ok(Compare::Round(number(
                arg,
                1,
                MAX_ROUND_DIGITS,
                "the significant digits",
            )?)),
            Some((rule, arg)) if rule.eq_ignore_ascii_case("topk") => {
                Ok(Compare::TopK(number(arg, 1, u8::MAX, "K")?))
            }
            _ => Err(format!(
                "unknown comparison rule `{s}`; the rules are: {FORMS}"
            )),
        }
    }
}

impl serde::Serialize for Compare {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Compare {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

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
