//! Evaluation of a model on a shard, in the training step's own arithmetic.
//!
//! [`evaluate`] is the exact port of the metric pass of
//! `examples/train/train.c` (`forward` and the loss loop): run on an update's
//! weights and the trainer's shard, it reproduces the metrics the module
//! writes bit for bit (tested against the module in the sandbox), and run on
//! the held-out set it gives the accuracy every node agrees on.

use crate::codec::{CodecError, Metrics, Model, Shard};
use crate::fixed::{exp_neg, neg_ln, sat32};

/// Softmax probabilities (Q16.16) of one sample; returns the argmax class
/// (the first one on ties).
fn forward(model: &Model, x: &[u8], prob: &mut [i64]) -> usize {
    let f = model.features as usize;
    let mut zmax = 0i64;
    let mut arg = 0usize;
    for (j, row) in model.weights.chunks_exact(f + 1).enumerate() {
        let acc: i64 = row[..f]
            .iter()
            .zip(x)
            .map(|(w, &p)| i64::from(*w) * (i64::from(p) * 4096))
            .sum();
        let z = (acc >> 16) + i64::from(row[f]);
        prob[j] = z;
        if j == 0 || z > zmax {
            zmax = z;
            arg = j;
        }
    }
    let mut sum = 0i64;
    for p in prob.iter_mut() {
        *p = exp_neg(*p - zmax);
        sum += *p;
    }
    for p in prob.iter_mut() {
        *p = (*p << 16) / sum.max(1);
    }
    arg
}

/// Loss (mean cross-entropy, Q16.16) and accuracy of `model` on `shard`.
pub fn evaluate(model: &Model, shard: &Shard) -> Result<Metrics, CodecError> {
    model.validate()?;
    if (model.features, model.classes) != (shard.features, shard.classes) {
        return Err(CodecError::Shape(format!(
            "model is {}x{} but the shard is {}x{}",
            model.features, model.classes, shard.features, shard.classes
        )));
    }
    let n = shard.len();
    if n == 0 {
        return Err(CodecError::Shape("the shard is empty".into()));
    }
    let mut prob = vec![0i64; model.classes as usize];
    let mut loss = 0i64;
    let mut correct = 0u32;
    for i in 0..n {
        let Some((x, y)) = shard.sample(i) else { break };
        let arg = forward(model, x, &mut prob);
        loss += neg_ln(prob.get(usize::from(y)).copied().unwrap_or(0));
        correct += u32::from(arg == usize::from(y));
    }
    Ok(Metrics {
        loss: sat32(loss / n as i64),
        correct,
        samples: n as u32,
    })
}
