//! Q16.16 fixed-point helpers, the exact Rust port of `examples/train/train.c`.
//!
//! Every function here must give the same result as its C twin for every
//! input: integer arithmetic only, `/` truncating toward zero (as in C99),
//! `>>` on signed values flooring (arithmetic shift, as clang does).

/// 1.0 in Q16.16.
pub const ONE: i64 = 65536;

/// exp(x) for `x <= 0` (Q16.16, absolute error < 1.5e-3): `2^(x * log2 e)`, with `2^frac` by a
/// quartic polynomial; 0 below -24.
pub fn exp_neg(x: i64) -> i64 {
    let x = x.min(0);
    if x < -24 * ONE {
        return 0;
    }
    let y = (x * 94548) >> 16;
    let k = y >> 16;
    let f = y - k * ONE;
    let mut p: i64 = 630;
    p = 3638 + ((p * f) >> 16);
    p = 15743 + ((p * f) >> 16);
    p = 45426 + ((p * f) >> 16);
    p = ONE + ((p * f) >> 16);
    p >> (-k)
}

/// `-ln(p / 65536)` (Q16.16) for a probability `p` in Q16.16, clamped to `[1, ONE]`.
pub fn neg_ln(p: i64) -> i64 {
    let p = p.clamp(1, ONE);
    let mut e: i64 = 0;
    let mut m = p;
    while m < ONE {
        m <<= 1;
        e -= 1;
    }
    let mut frac: i64 = 0;
    for _ in 0..16 {
        m = (m * m) >> 16;
        frac <<= 1;
        if m >= 2 * ONE {
            m >>= 1;
            frac |= 1;
        }
    }
    let log2 = e * ONE + frac;
    -((log2 * 45426) >> 16)
}

/// Saturates to the `i32` range.
pub fn sat32(v: i64) -> i32 {
    v.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
}

/// Converts Q16.16 to `f64` (for reports only, never for consensus).
pub fn to_f64(v: i64) -> f64 {
    v as f64 / ONE as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_the_real_function_closely() {
        for i in 0..=(16 * 64) {
            let x = -(i as i64) * ONE / 64;
            let got = to_f64(exp_neg(x));
            let want = (to_f64(x)).exp();
            assert!(
                (got - want).abs() < 1.5e-3,
                "exp({}) = {got}, want {want}",
                to_f64(x)
            );
        }
        assert_eq!(exp_neg(0), ONE);
        assert_eq!(exp_neg(-25 * ONE), 0);
    }

    #[test]
    fn neg_ln_matches_the_real_function_closely() {
        for p in [1i64, 7, 100, 1000, 32768, 50000, 65535, 65536] {
            let got = to_f64(neg_ln(p));
            let want = -(to_f64(p)).ln();
            assert!((got - want).abs() < 1e-3, "-ln({p}) = {got}, want {want}");
        }
    }
}
