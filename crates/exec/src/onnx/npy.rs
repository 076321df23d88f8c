//! `.npy` tensors in and out of tract, with every size checked before anything is allocated.
//!
//! Reading uses `npyz` for the header (a Python dict literal); this module adds what a hostile
//! input needs on top: a bounded header, a checked element count, and data whose length must
//! match the header exactly, then reads the elements in either byte order. Writing is always
//! little-endian, C order, and byte-for-byte deterministic for a given dtype, shape and values.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};

use npyz::{DType, NpyFile, Order, TypeChar, TypeStr, WriteOptions, WriterBuilder};
use tract_onnx::prelude::{DatumType, Tensor};

use crate::ExecError;

/// Largest `.npy` header accepted (numpy itself refuses headers over 10,000 bytes by default).
pub const MAX_NPY_HEADER_BYTES: usize = 16 * 1024;

/// Largest tensor rank accepted.
pub const MAX_RANK: usize = 32;

/// The element types an ONNX job's tensors may have, with their numpy names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Dtype {
    /// `bool` (`|b1`).
    Bool,
    /// `uint8` (`|u1`).
    U8,
    /// `int8` (`|i1`).
    I8,
    /// `uint16` (`<u2`).
    U16,
    /// `int16` (`<i2`).
    I16,
    /// `uint32` (`<u4`).
    U32,
    /// `int32` (`<i4`).
    I32,
    /// `uint64` (`<u8`).
    U64,
    /// `int64` (`<i8`).
    I64,
    /// `float32` (`<f4`).
    F32,
    /// `float64` (`<f8`).
    F64,
}

impl Dtype {
    /// The numpy name (`float32`, `int64`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::I8 => "int8",
            Dtype::U16 => "uint16",
            Dtype::I16 => "int16",
            Dtype::U32 => "uint32",
            Dtype::I32 => "int32",
            Dtype::U64 => "uint64",
            Dtype::I64 => "int64",
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 => 8,
        }
    }

    /// True for `float32` and `float64`.
    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F32 | Dtype::F64)
    }

    pub(crate) fn from_tract(dt: DatumType) -> Option<Self> {
        Some(match dt {
            DatumType::Bool => Dtype::Bool,
            DatumType::U8 => Dtype::U8,
            DatumType::I8 => Dtype::I8,
            DatumType::U16 => Dtype::U16,
            DatumType::I16 => Dtype::I16,
            DatumType::U32 => Dtype::U32,
            DatumType::I32 => Dtype::I32,
            DatumType::U64 => Dtype::U64,
            DatumType::I64 => Dtype::I64,
            DatumType::F32 => Dtype::F32,
            DatumType::F64 => Dtype::F64,
            _ => return None,
        })
    }

    fn from_npy(type_char: TypeChar, size: u64) -> Option<Self> {
        Some(match (type_char, size) {
            (TypeChar::Bool, 1) => Dtype::Bool,
            (TypeChar::Uint, 1) => Dtype::U8,
            (TypeChar::Int, 1) => Dtype::I8,
            (TypeChar::Uint, 2) => Dtype::U16,
            (TypeChar::Int, 2) => Dtype::I16,
            (TypeChar::Uint, 4) => Dtype::U32,
            (TypeChar::Int, 4) => Dtype::I32,
            (TypeChar::Uint, 8) => Dtype::U64,
            (TypeChar::Int, 8) => Dtype::I64,
            (TypeChar::Float, 4) => Dtype::F32,
            (TypeChar::Float, 8) => Dtype::F64,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a `.npy` header says, checked: dtype, shape, element count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    fortran: bool,
    big_endian: bool,
}

fn bad(msg: impl fmt::Display) -> ExecError {
    ExecError::InvalidTensor(msg.to_string())
}

/// Checks the fixed preamble (magic, version, header length) before npyz reads the header, so
/// that a claimed header length can never make it allocate more than the input holds.
fn check_preamble(bytes: &[u8]) -> Result<(usize, usize), ExecError> {
    const HINT: &str = "write it with numpy.save (a .npy file, not .npz or text)";
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(format_args!(
            "not a .npy tensor (no \\x93NUMPY magic); {HINT}"
        )));
    }
    let (len, preamble) = match bytes[6] {
        1 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => {
            let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (usize::try_from(n).unwrap_or(usize::MAX), 12)
        }
        2 | 3 => return Err(bad("truncated .npy header")),
        v => {
            return Err(bad(format_args!(
                "unsupported .npy format version {v}; {HINT}"
            )));
        }
    };
    if len > MAX_NPY_HEADER_BYTES {
        return Err(bad(format_args!(
            ".npy header of {len} bytes is over the limit of {MAX_NPY_HEADER_BYTES}"
        )));
    }
    if bytes.len() - preamble < len {
        return Err(bad(format_args!(
            "truncated .npy tensor: the header claims {len} bytes, only {} follow",
            bytes.len() - preamble
        )));
    }
    Ok((preamble, len))
}

/// The header as numpy writes it (`{'descr': '<f4', 'fortran_order': False, 'shape': (1, 64), }`
/// padded with spaces and a newline), read without a general Python-literal parser: npyz's
/// takes about 20 us, ten times the inference of a small model. Anything else (other spacing,
/// key order, quotes) returns `None` and goes to npyz.
fn fast_header(text: &[u8]) -> Option<(TypeStr, bool, Vec<u64>)> {
    let text = std::str::from_utf8(text)
        .ok()?
        .trim_end_matches([' ', '\n']);
    let rest = text.strip_prefix("{'descr': '")?;
    let (descr, rest) = rest.split_once('\'')?;
    let rest = rest.strip_prefix(", 'fortran_order': ")?;
    let (fortran, rest) = if let Some(r) = rest.strip_prefix("False") {
        (false, r)
    } else {
        (true, rest.strip_prefix("True")?)
    };
    let rest = rest.strip_prefix(", 'shape': (")?;
    let (dims, rest) = rest.split_once(')')?;
    if !matches!(rest, "}" | ", }" | ",}") {
        return None;
    }
    let mut shape = Vec::new();
    for d in dims.split(',') {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        if !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        shape.push(d.parse::<u64>().ok()?);
    }
    // `(64)` is not a tuple; numpy writes `(64,)`.
    if shape.len() == 1 && !dims.contains(',') {
        return None;
    }
    Some((descr.parse::<TypeStr>().ok()?, fortran, shape))
}

/// Parses and checks the header; returns it with the raw data bytes that follow it.
pub(crate) fn header(bytes: &[u8], max_elements: u64) -> Result<(Header, &[u8]), ExecError> {
    let (preamble, len) = check_preamble(bytes)?;
    let data = &bytes[preamble + len..];
    let (ts, fortran, raw) = match fast_header(&bytes[preamble..preamble + len]) {
        Some(parsed) => parsed,
        None => {
            // npyz parses a Python literal; nothing it does on a bounded header should panic,
            // but a panic here must still be an error value.
            let file = catch_unwind(AssertUnwindSafe(|| NpyFile::new(bytes)))
                .map_err(|_| bad("malformed .npy header"))?
                .map_err(|e| bad(format_args!("malformed .npy header: {e}")))?;
            let h = file.header();
            let DType::Plain(ts) = h.dtype() else {
                return Err(bad(
                    "structured (record) arrays are not supported: save a plain numeric array",
                ));
            };
            (ts, h.order() == Order::Fortran, h.shape().to_vec())
        }
    };
    let dtype = Dtype::from_npy(ts.type_char(), ts.size_field()).ok_or_else(|| {
        bad(format_args!(
            "unsupported dtype `{ts}`: use float32, float64, int64, int32, int16, int8, the \
             unsigned ints or bool (e.g. x.astype(numpy.float32))"
        ))
    })?;
    if raw.len() > MAX_RANK {
        return Err(bad(format_args!(
            "rank {} is over the limit of {MAX_RANK}",
            raw.len()
        )));
    }
    let mut shape = Vec::with_capacity(raw.len());
    let mut elements: u64 = 1;
    for &d in &raw {
        elements = elements.saturating_mul(d);
        shape.push(usize::try_from(d).map_err(|_| bad("dimension does not fit in memory"))?);
    }
    if elements > max_elements {
        return Err(ExecError::TooLarge {
            what: format!("the tensor (shape {shape:?})"),
            size: elements,
            limit: max_elements,
            unit: "elements".into(),
        });
    }
    let elements = usize::try_from(elements).map_err(|_| bad("too many elements"))?;
    let big_endian = ts.endianness() == npyz::Endianness::Big;
    let expected = elements.saturating_mul(dtype.size());
    if data.len() != expected {
        return Err(bad(format_args!(
            "{} .npy tensor: shape {shape:?} of {dtype} needs {expected} data bytes, it has {}",
            if data.len() < expected {
                "truncated"
            } else {
                "malformed (trailing bytes after the data)"
            },
            data.len()
        )));
    }
    Ok((
        Header {
            dtype,
            shape,
            fortran,
            big_endian,
        },
        data,
    ))
}

/// Reads a `.npy` tensor into a tract tensor (C order), refusing more than `max_elements`.
pub(crate) fn decode(bytes: &[u8], max_elements: u64) -> Result<Tensor, ExecError> {
    let (h, data) = header(bytes, max_elements)?;
    // A Fortran-order array is stored with its axes reversed.
    let stored: Vec<usize> = if h.fortran {
        h.shape.iter().rev().copied().collect()
    } else {
        h.shape.clone()
    };
    let tensor = from_bytes(h.dtype, h.big_endian, &stored, data)?;
    if h.fortran && h.shape.len() > 1 {
        let axes: Vec<usize> = (0..h.shape.len()).rev().collect();
        return tensor
            .permute_axes(&axes)
            .map_err(|e| ExecError::Internal(format!("reordering a Fortran-order tensor: {e}")));
    }
    Ok(tensor)
}

/// The elements of `data` (exactly `shape`'s worth, checked by [`header`]) as a tensor.
fn from_bytes(
    dtype: Dtype,
    big_endian: bool,
    shape: &[usize],
    data: &[u8],
) -> Result<Tensor, ExecError> {
    macro_rules! read {
        ($t:ty) => {{
            const N: usize = std::mem::size_of::<$t>();
            let v: Vec<$t> = data
                .chunks_exact(N)
                .map(|c| {
                    let b = <[u8; N]>::try_from(c).unwrap_or([0; N]);
                    if big_endian {
                        <$t>::from_be_bytes(b)
                    } else {
                        <$t>::from_le_bytes(b)
                    }
                })
                .collect();
            Tensor::from_shape(shape, &v)
        }};
    }
    let t = match dtype {
        Dtype::Bool => {
            let v: Vec<bool> = data.iter().map(|&b| b != 0).collect();
            Tensor::from_shape(shape, &v)
        }
        Dtype::U8 => read!(u8),
        Dtype::I8 => read!(i8),
        Dtype::U16 => read!(u16),
        Dtype::I16 => read!(i16),
        Dtype::U32 => read!(u32),
        Dtype::I32 => read!(i32),
        Dtype::U64 => read!(u64),
        Dtype::I64 => read!(i64),
        Dtype::F32 => read!(f32),
        Dtype::F64 => read!(f64),
    };
    t.map_err(|e| bad(format_args!("malformed .npy data: {e}")))
}

/// Writes `data` of `shape` as a little-endian, C-order `.npy` (format 1.0).
pub(crate) fn encode_slice<T>(shape: &[usize], data: &[T]) -> Result<Vec<u8>, ExecError>
where
    T: npyz::Serialize + npyz::AutoSerialize + Copy,
{
    let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let mut out = Vec::with_capacity(128 + std::mem::size_of_val(data));
    let mut w = WriteOptions::new()
        .default_dtype()
        .shape(&shape)
        .writer(&mut out)
        .begin_nd()
        .map_err(|e| ExecError::Internal(format!("writing .npy: {e}")))?;
    w.extend(data.iter().copied())
        .and_then(|()| w.finish())
        .map_err(|e| ExecError::Internal(format!("writing .npy: {e}")))?;
    Ok(out)
}

/// Writes a tract tensor as `.npy`; its dtype must be one of [`Dtype`], or tract's symbolic
/// integers (`TDim`, which it uses for integer outputs it derived from shapes, such as
/// skl2onnx's labels), written as int64.
pub(crate) fn encode(tensor: &Tensor) -> Result<(Dtype, Vec<u8>), ExecError> {
    let cast;
    let tensor = if tensor.datum_type() == DatumType::TDim {
        cast = tensor.cast_to::<i64>().map_err(|e| {
            ExecError::InvalidModel(format!("the model's integer output is symbolic: {e}"))
        })?;
        &*cast
    } else {
        tensor
    };
    let dtype = Dtype::from_tract(tensor.datum_type()).ok_or_else(|| {
        ExecError::InvalidModel(format!(
            "the model's output has type {:?}, which cannot be written as .npy: only numeric \
             and bool outputs are supported",
            tensor.datum_type()
        ))
    })?;
    let view = tensor
        .try_as_plain_ram()
        .map_err(|e| ExecError::Internal(format!("output tensor: {e}")))?;
    let shape = tensor.shape();
    fn slice<'a, T: tract_onnx::prelude::Datum>(
        view: &tract_onnx::prelude::PlainView<'a>,
    ) -> Result<&'a [T], ExecError> {
        view.as_slice::<T>()
            .map_err(|e| ExecError::Internal(format!("output tensor: {e}")))
    }
    let bytes = match dtype {
        Dtype::Bool => encode_slice(shape, slice::<bool>(&view)?),
        Dtype::U8 => encode_slice(shape, slice::<u8>(&view)?),
        Dtype::I8 => encode_slice(shape, slice::<i8>(&view)?),
        Dtype::U16 => encode_slice(shape, slice::<u16>(&view)?),
        Dtype::I16 => encode_slice(shape, slice::<i16>(&view)?),
        Dtype::U32 => encode_slice(shape, slice::<u32>(&view)?),
        Dtype::I32 => encode_slice(shape, slice::<i32>(&view)?),
        Dtype::U64 => encode_slice(shape, slice::<u64>(&view)?),
        Dtype::I64 => encode_slice(shape, slice::<i64>(&view)?),
        Dtype::F32 => encode_slice(shape, slice::<f32>(&view)?),
        Dtype::F64 => encode_slice(shape, slice::<f64>(&view)?),
    }?;
    Ok((dtype, bytes))
}
