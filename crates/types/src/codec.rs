//! The bounded binary codec used on every wire.
//!
//! `postcard` encoding, with the size checked before any parsing. A decode never allocates more
//! than the frame it was given, so a hostile length prefix cannot exhaust memory.

use serde::{Serialize, de::DeserializeOwned};

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The frame is larger than the limit for its kind.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes `value`. Encoding our own types cannot fail except on a bug; the error is kept rather
/// than panicking.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(|e| CodecError::Malformed(e.to_string()))
}

/// Decodes a `T` from `bytes`, refusing frames longer than `limit` and trailing garbage.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, CodecError> {
    if bytes.len() > limit {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| CodecError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CodecError::Malformed(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_oversized_and_trailing() {
        let v: Vec<u8> = vec![7; 100];
        let bytes = encode(&v).unwrap();
        assert!(matches!(
            decode::<Vec<u8>>(&bytes, 10),
            Err(CodecError::TooLarge { .. })
        ));
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            decode::<Vec<u8>>(&extra, 1000),
            Err(CodecError::Malformed(_))
        ));
        assert_eq!(decode::<Vec<u8>>(&bytes, 1000).unwrap(), v);
    }

    #[test]
    fn hostile_length_prefix_does_not_allocate() {
        // A varint claiming u32::MAX elements followed by nothing.
        let bytes = [0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(decode::<Vec<u64>>(&bytes, 1000).is_err());
    }
}
