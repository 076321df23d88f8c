//! The binary formats of a training job: model, shard, task and update.
//!
//! All little-endian. Every decoder checks sizes against the header and
//! against bounds ([`MAX_FEATURES`], [`MAX_CLASSES`], [`MAX_SAMPLES`]), and
//! says what was wrong; nothing panics on hostile input.
//!
//! - shard: `"AGTD"`, u32 version 1, u32 features, u32 classes, u32 n, then
//!   n records of `features` bytes (pixels) and one label byte.
//! - task (the training step's stdin): `"AGTT"`, u32 version 1, u32
//!   features, u32 classes, i32 learning rate (Q16.16), u32 local steps, u32
//!   batch size, u64 batch-order seed, i32 weights (`classes * (features +
//!   1)`, row-major, each class's bias last), then a shard.
//! - update (its stdout): `"AGTU"`, u32 version 1, u32 features, u32
//!   classes, i32 weights, then the claimed metrics: i32 loss (Q16.16 mean
//!   cross-entropy on the shard, after training), u32 correct, u32 n.

use thiserror::Error;

/// Largest number of features a model may have.
pub const MAX_FEATURES: u32 = 1024;
/// Largest number of classes a model may have.
pub const MAX_CLASSES: u32 = 64;
/// Largest number of samples in a shard.
pub const MAX_SAMPLES: u32 = 100_000;
/// Largest number of local steps in a task.
pub const MAX_STEPS: u32 = 100_000;
/// Largest batch size in a task.
pub const MAX_BATCH: u32 = 4096;

const VERSION: u32 = 1;

/// Why a blob does not decode.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The blob ends before its header or body is complete.
    #[error("{what} truncated: need {need} bytes at offset {at}, have {have}")]
    Truncated {
        /// Which part.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Offset reached.
        at: usize,
        /// Bytes available after the offset.
        have: usize,
    },
    /// The blob does not start with the expected magic.
    #[error("not a {what}: expected magic {expected:?}")]
    Magic {
        /// Which format.
        what: &'static str,
        /// The expected four bytes.
        expected: &'static str,
    },
    /// Unknown format version.
    #[error("{what} version {got} is not supported (this build reads version 1)")]
    Version {
        /// Which format.
        what: &'static str,
        /// The version found.
        got: u32,
    },
    /// A header field is out of its bounds.
    #[error("{field} = {got} is out of bounds ({min}..={max})")]
    Bounds {
        /// Field name.
        field: &'static str,
        /// Value found.
        got: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The blob's length disagrees with what its header announces.
    #[error("{what} has {got} bytes but its header announces {want}")]
    Length {
        /// Which format.
        what: &'static str,
        /// Actual length.
        got: usize,
        /// Announced length.
        want: usize,
    },
    /// A label is not a class of the model.
    #[error("sample {index} has label {label}, but the model has {classes} classes")]
    Label {
        /// Sample index.
        index: usize,
        /// Its label.
        label: u8,
        /// Number of classes.
        classes: u32,
    },
    /// Two parts have different shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// A softmax-regression model: `classes` rows of `features` weights plus a bias, Q16.16.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Model {
    /// Number of input features.
    pub features: u32,
    /// Number of classes.
    pub classes: u32,
    /// `classes * (features + 1)` weights, row-major, bias last in each row.
    pub weights: Vec<i32>,
}

impl Model {
    /// The all-zero model of this shape.
    pub fn zeros(features: u32, classes: u32) -> Result<Self, CodecError> {
        check_shape(features, classes)?;
        Ok(Self {
            features,
            classes,
            weights: vec![0; classes as usize * (features as usize + 1)],
        })
    }

    /// BLAKE3 of [`Model::encode`]: the model version's identity.
    pub fn hash(&self) -> [u8; 32] {
        *blake3::hash(&self.encode()).as_bytes()
    }

    /// The model as an update blob with zero metrics (the format models are stored in).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.weights.len() * 4);
        out.extend_from_slice(b"AGTU");
        for v in [VERSION, self.features, self.classes] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for w in &self.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out
    }

    /// Checks that `weights` has the announced length.
    pub fn validate(&self) -> Result<(), CodecError> {
        check_shape(self.features, self.classes)?;
        let want = self.classes as usize * (self.features as usize + 1);
        if self.weights.len() != want {
            return Err(CodecError::Length {
                what: "model weights",
                got: self.weights.len(),
                want,
            });
        }
        Ok(())
    }
}

/// The metrics a trainer claims for its update (computed on its shard, after training).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Metrics {
    /// Mean cross-entropy, Q16.16.
    pub loss: i32,
    /// Correctly classified samples.
    pub correct: u32,
    /// Samples evaluated.
    pub samples: u32,
}

impl Metrics {
    /// Accuracy in percent (reports only).
    pub fn accuracy_percent(&self) -> f64 {
        if self.samples == 0 {
            return 0.0;
        }
        100.0 * f64::from(self.correct) / f64::from(self.samples)
    }
}

/// A decoded update: the new weights and the claimed metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The updated model.
    pub model: Model,
    /// The metrics claimed with it.
    pub metrics: Metrics,
}

impl Update {
    /// Encodes as the training step writes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.model.encode();
        out.extend_from_slice(&self.metrics.loss.to_le_bytes());
        out.extend_from_slice(&self.metrics.correct.to_le_bytes());
        out.extend_from_slice(&self.metrics.samples.to_le_bytes());
        out
    }

    /// Decodes a training step's stdout.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "update");
        r.magic(b"AGTU", "AGTU")?;
        let (features, classes) = r.shape()?;
        let n = classes as usize * (features as usize + 1);
        let want = 16 + n * 4 + 12;
        if bytes.len() != want {
            return Err(CodecError::Length {
                what: "update",
                got: bytes.len(),
                want,
            });
        }
        let mut weights = Vec::with_capacity(n);
        for _ in 0..n {
            weights.push(r.u32()? as i32);
        }
        let metrics = Metrics {
            loss: r.u32()? as i32,
            correct: r.u32()?,
            samples: r.u32()?,
        };
        Ok(Self {
            model: Model {
                features,
                classes,
                weights,
            },
            metrics,
        })
    }

    /// BLAKE3 of the weights part only ([`Model::hash`]): what verifiers compare.
    pub fn hash(&self) -> [u8; 32] {
        self.model.hash()
    }
}

/// A data shard: samples of `features` pixel bytes and a label.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// Features per sample.
    pub features: u32,
    /// Number of classes labels range over.
    pub classes: u32,
    /// `n * (features + 1)` bytes: each sample's pixels then its label.
    pub records: Vec<u8>,
}

impl Shard {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.records.len() / (self.features as usize + 1)
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Sample `i`: its pixels and label (`None` past the end).
    pub fn sample(&self, i: usize) -> Option<(&[u8], u8)> {
        let w = self.features as usize + 1;
        let rec = self.records.get(i * w..(i + 1) * w)?;
        let (x, y) = rec.split_at(w - 1);
        Some((x, y.first().copied().unwrap_or(0)))
    }

    /// Decodes a shard blob.
    pub fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes, "shard");
        r.magic(b"AGTD", "AGTD")?;
        let (features, classes) = r.shape()?;
        let n = r.u32()?;
        bound("samples", n, 1, MAX_SAMPLES)?;
        let w = features as usize + 1;
        let want = 20 + n as usize * w;
        if bytes.len() != want {
            return Err(CodecError::Length {
                what: "shard",
                got: bytes.len(),
                want,
            });
        }
        let records = bytes[20..].to_vec();
        for (index, rec) in records.chunks_exact(w).enumerate() {
            let label = rec[w - 1];
            if u32::from(label) >= classes {
                return Err(CodecError::Label {
                    index,
                    label,
                    classes,
                });
            }
        }
        Ok(Self {
            features,
            classes,
            records,
        })
    }

    /// Encodes the shard.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.records.len());
        out.extend_from_slice(b"AGTD");
        for v in [VERSION, self.features, self.classes, self.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.records);
        out
    }

    /// All samples of `shards`, in order, as one shard (the centralized baseline's data).
    pub fn concat(shards: &[Shard]) -> Result<Shard, CodecError> {
        let first = shards
            .first()
            .ok_or_else(|| CodecError::Shape("no shard to concatenate".into()))?;
        let mut records = vec![];
        for s in shards {
            if (s.features, s.classes) != (first.features, first.classes) {
                return Err(CodecError::Shape("shards of different shapes".into()));
            }
            records.extend_from_slice(&s.records);
        }
        Ok(Shard {
            features: first.features,
            classes: first.classes,
            records,
        })
    }
}

/// The hyper-parameters of a training step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Hyper {
    /// Learning rate, Q16.16.
    pub learning_rate: i32,
    /// Minibatch SGD steps.
    pub local_steps: u32,
    /// Samples per step (drawn with replacement).
    pub batch: u32,
    /// Seed of the batch order (splitmix64).
    pub seed: u64,
}

/// A training task: the step's stdin.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Hyper-parameters.
    pub hyper: Hyper,
    /// The current model.
    pub model: Model,
    /// The shard to train on.
    pub shard: Shard,
}

impl Task {
    /// Encodes the task, checking that model and shard agree.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        self.model.validate()?;
        if (self.model.features, self.model.classes) != (self.shard.features, self.shard.classes) {
            return Err(CodecError::Shape(format!(
                "model is {}x{} but the shard is {}x{}",
                self.model.features, self.model.classes, self.shard.features, self.shard.classes
            )));
        }
        bound("local_steps", self.hyper.local_steps, 0, MAX_STEPS)?;
        bound("batch", self.hyper.batch, 1, MAX_BATCH)?;
        let mut out =
            Vec::with_capacity(40 + self.model.weights.len() * 4 + self.shard.records.len());
        out.extend_from_slice(b"AGTT");
        for v in [VERSION, self.model.features, self.model.classes] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&self.hyper.learning_rate.to_le_bytes());
        out.extend_from_slice(&self.hyper.local_steps.to_le_bytes());
        out.extend_from_slice(&self.hyper.batch.to_le_bytes());
        out.extend_from_slice(&self.hyper.seed.to_le_bytes());
        for w in &self.model.weights {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.shard.encode());
        Ok(out)
    }
}

fn check_shape(features: u32, classes: u32) -> Result<(), CodecError> {
    bound("features", features, 1, MAX_FEATURES)?;
    bound("classes", classes, 2, MAX_CLASSES)
}

fn bound(field: &'static str, got: u32, min: u32, max: u32) -> Result<(), CodecError> {
    if got < min || got > max {
        return Err(CodecError::Bounds {
            field,
            got: got.into(),
            min: min.into(),
            max: max.into(),
        });
    }
    Ok(())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Self { bytes, at: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let have = self.bytes.len().saturating_sub(self.at);
        if have < n {
            return Err(CodecError::Truncated {
                what: self.what,
                need: n,
                at: self.at,
                have,
            });
        }
        let s = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, CodecError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn magic(&mut self, m: &[u8; 4], name: &'static str) -> Result<(), CodecError> {
        if self.take(4)? != m {
            return Err(CodecError::Magic {
                what: self.what,
                expected: name,
            });
        }
        let got = self.u32()?;
        if got != VERSION {
            return Err(CodecError::Version {
                what: self.what,
                got,
            });
        }
        Ok(())
    }

    fn shape(&mut self) -> Result<(u32, u32), CodecError> {
        let features = self.u32()?;
        let classes = self.u32()?;
        check_shape(features, classes)?;
        Ok((features, classes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            model: Model {
                features: 2,
                classes: 2,
                weights: vec![1, -2, 3, i32::MIN, i32::MAX, 0],
            },
            metrics: Metrics {
                loss: 12345,
                correct: 3,
                samples: 4,
            },
        }
    }

    #[test]
    fn update_round_trips_and_rejects_every_truncation() {
        let u = update();
        let bytes = u.encode();
        assert_eq!(Update::decode(&bytes), Ok(u));
        for cut in 0..bytes.len() {
            assert!(Update::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Update::decode(&long),
            Err(CodecError::Length { got, want, .. }) if got == want + 1
        ));
    }

    #[test]
    fn bad_headers_say_what_is_wrong() {
        let mut b = update().encode();
        b[0] = b'X';
        assert!(matches!(Update::decode(&b), Err(CodecError::Magic { .. })));
        let mut b = update().encode();
        b[4] = 2;
        assert!(matches!(
            Update::decode(&b),
            Err(CodecError::Version { got: 2, .. })
        ));
        let mut b = update().encode();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let e = Update::decode(&b).expect_err("huge feature count");
        assert!(e.to_string().contains("features"), "{e}");
    }

    #[test]
    fn shard_checks_labels_and_length() {
        let s = Shard {
            features: 2,
            classes: 3,
            records: vec![1, 2, 0, 3, 4, 2],
        };
        let b = s.encode();
        assert_eq!(Shard::decode(&b), Ok(s.clone()));
        assert_eq!(s.len(), 2);
        assert_eq!(s.sample(1), Some((&[3u8, 4][..], 2)));
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] = 3;
        assert!(matches!(
            Shard::decode(&bad),
            Err(CodecError::Label { index: 1, .. })
        ));
        assert!(matches!(
            Shard::decode(&b[..b.len() - 1]),
            Err(CodecError::Length { .. })
        ));
    }

    #[test]
    fn task_refuses_mismatched_shapes() {
        let t = Task {
            hyper: Hyper {
                learning_rate: 65536,
                local_steps: 1,
                batch: 1,
                seed: 0,
            },
            model: Model::zeros(3, 3).expect("shape"),
            shard: Shard {
                features: 2,
                classes: 3,
                records: vec![0, 0, 0],
            },
        };
        assert!(matches!(t.encode(), Err(CodecError::Shape(_))));
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Update::decode(&bytes);
            let _ = Shard::decode(&bytes);
        }
    }
}
