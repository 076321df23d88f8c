//! How the replicas of a job whose outputs are not bit-identical across machines (ONNX
//! inference) are compared. The rule is part of the signed job spec; `agora-exec` maps an
//! output through it (`agora_exec::canonicalize`) and replicas compare the hashes.

use std::fmt;
use std::str::FromStr;

/// How the outputs of replicas are compared: each replica's output `.npy` goes through
/// `agora_exec::canonicalize` and the verdict compares the hashes of the results.
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
    /// `argmax`, from measurements (the `two_kernel_paths` test in `agora-exec`): the example models' softmax
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
