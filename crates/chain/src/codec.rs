//! The wire and WAL codec: borsh, with a size cap on everything decoded.
//!
//! Malachite's types carry borsh implementations (feature `borsh`) for everything except the
//! validator proof and the sync response's extended certificate; those two go through small
//! mirror structs here. Decoding refuses input over [`MAX_MESSAGE`] before parsing, and borsh
//! refuses trailing bytes; length prefixes inside cannot allocate beyond the input itself.

use bytes::Bytes;
use malachitebft_app_channel::app::types::codec::{Codec, HasEncodedLen};
use malachitebft_core_consensus::{LivenessMsg, ProposedValue, SignedConsensusMsg};
use malachitebft_core_types::{
    ExtendedCommitCertificate, ExtendedCommitSignature, PolkaCertificate, Round, SignedExtension,
    ValidatorProof,
};
use malachitebft_engine::util::streaming::StreamMessage;
use malachitebft_sync::{RawDecidedValue, Request, Response, Status, ValueResponse};

use crate::context::{
    Address, BlockHash, ChainContext, Height, MAX_PAYLOAD, ProposalPart, Signature,
};

/// Largest encoded message accepted from the network or the WAL: a sync response may carry a
/// few maximal blocks.
pub const MAX_MESSAGE: usize = 4 * MAX_PAYLOAD + 1024 * 1024;

/// A message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE}")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(#[from] std::io::Error),
}

/// The codec handed to Malachite for network, sync and WAL.
#[derive(Copy, Clone, Debug, Default)]
pub struct WireCodec;

fn decode<T: borsh::BorshDeserialize>(bytes: &[u8]) -> Result<T, CodecError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    Ok(borsh::from_slice(bytes)?)
}

fn encode<T: borsh::BorshSerialize>(msg: &T) -> Result<Bytes, CodecError> {
    Ok(Bytes::from(borsh::to_vec(msg)?))
}

macro_rules! borsh_codec {
    ($($t:ty),* $(,)?) => {$(
        impl Codec<$t> for WireCodec {
            type Error = CodecError;

            fn decode(&self, bytes: Bytes) -> Result<$t, CodecError> {
                decode(&bytes)
            }

            fn encode(&self, msg: &$t) -> Result<Bytes, CodecError> {
                encode(msg)
            }
        }
    )*};
}

borsh_codec!(
    ProposalPart,
    SignedConsensusMsg<ChainContext>,
    LivenessMsg<ChainContext>,
    StreamMessage<ProposalPart>,
    Status<ChainContext>,
    Request<ChainContext>,
    ProposedValue<ChainContext>,
    PolkaCertificate<ChainContext>,
);

/// Mirror of [`ValidatorProof`] (which has no borsh implementation).
#[derive(borsh::BorshSerialize, borsh::BorshDeserialize)]
struct ProofWire {
    public_key: Vec<u8>,
    peer_id: Vec<u8>,
    signature: Signature,
}

impl Codec<ValidatorProof<ChainContext>> for WireCodec {
    type Error = CodecError;

    fn decode(&self, bytes: Bytes) -> Result<ValidatorProof<ChainContext>, CodecError> {
        let w: ProofWire = decode(&bytes)?;
        Ok(ValidatorProof::new(w.public_key, w.peer_id, w.signature))
    }

    fn encode(&self, msg: &ValidatorProof<ChainContext>) -> Result<Bytes, CodecError> {
        encode(&ProofWire {
            public_key: msg.public_key.clone(),
            peer_id: msg.peer_id.clone(),
            signature: msg.signature,
        })
    }
}

/// Mirror of [`ExtendedCommitCertificate`] (which has no borsh implementation).
#[derive(borsh::BorshSerialize, borsh::BorshDeserialize)]
struct CertWire {
    height: Height,
    round: Round,
    value_id: BlockHash,
    signatures: Vec<(Address, Signature, Option<SignedExtension<ChainContext>>)>,
}

#[derive(borsh::BorshSerialize, borsh::BorshDeserialize)]
struct DecidedWire {
    value_bytes: Vec<u8>,
    certificate: CertWire,
}

#[derive(borsh::BorshSerialize, borsh::BorshDeserialize)]
struct ResponseWire {
    start_height: Height,
    values: Vec<DecidedWire>,
}

fn cert_to_wire(c: &ExtendedCommitCertificate<ChainContext>) -> CertWire {
    CertWire {
        height: c.height,
        round: c.round,
        value_id: c.value_id,
        signatures: c
            .commit_signatures
            .iter()
            .map(|s| (s.address, s.signature, s.extension.clone()))
            .collect(),
    }
}

fn cert_from_wire(w: CertWire) -> ExtendedCommitCertificate<ChainContext> {
    ExtendedCommitCertificate {
        height: w.height,
        round: w.round,
        value_id: w.value_id,
        commit_signatures: w
            .signatures
            .into_iter()
            .map(|(address, signature, ext)| ExtendedCommitSignature::new(address, signature, ext))
            .collect(),
    }
}

/// Encode an extended certificate (used for the certificate bytes kept with each block).
pub fn encode_certificate(c: &ExtendedCommitCertificate<ChainContext>) -> Vec<u8> {
    borsh::to_vec(&cert_to_wire(c)).unwrap_or_default()
}

/// Decode certificate bytes written by [`encode_certificate`].
pub fn decode_certificate(
    bytes: &[u8],
) -> Result<ExtendedCommitCertificate<ChainContext>, CodecError> {
    decode::<CertWire>(bytes).map(cert_from_wire)
}

fn response_to_wire(r: &Response<ChainContext>) -> ResponseWire {
    let Response::ValueResponse(v) = r;
    ResponseWire {
        start_height: v.start_height,
        values: v
            .values
            .iter()
            .map(|d| DecidedWire {
                value_bytes: d.value_bytes.to_vec(),
                certificate: cert_to_wire(&d.certificate),
            })
            .collect(),
    }
}

impl Codec<Response<ChainContext>> for WireCodec {
    type Error = CodecError;

    fn decode(&self, bytes: Bytes) -> Result<Response<ChainContext>, CodecError> {
        let w: ResponseWire = decode(&bytes)?;
        let values = w
            .values
            .into_iter()
            .map(|d| {
                RawDecidedValue::new(Bytes::from(d.value_bytes), cert_from_wire(d.certificate))
            })
            .collect();
        Ok(Response::ValueResponse(ValueResponse::new(
            w.start_height,
            values,
        )))
    }

    fn encode(&self, msg: &Response<ChainContext>) -> Result<Bytes, CodecError> {
        encode(&response_to_wire(msg))
    }
}

impl HasEncodedLen<Response<ChainContext>> for WireCodec {
    fn encoded_len(&self, msg: &Response<ChainContext>) -> Result<usize, CodecError> {
        let mut counter = LenCounter(0);
        borsh::BorshSerialize::serialize(&response_to_wire(msg), &mut counter)?;
        Ok(counter.0)
    }
}

/// Counts bytes instead of storing them.
struct LenCounter(usize);

impl std::io::Write for LenCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
