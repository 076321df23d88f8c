//! Signed envelopes over Ed25519 identities.
//!
//! A [`Signed<T>`] carries a payload, the signer's 32-byte Ed25519 public key, a timestamp and a
//! signature over `domain || signer || timestamp || encode(payload)`. The domain tag comes from
//! [`Domain`], so a signature over a bid can never be presented as a signature over a result. The
//! signer's [`PeerId`] is derived from the key, so whoever signed a message is also the libp2p peer
//! that identity belongs to.

use libp2p_identity::{Keypair, PeerId, PublicKey, ed25519};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Hash, UnixMillis, codec};

/// A payload type that can be signed: its domain tag separates its signatures from every other
/// type's.
pub trait Domain {
    /// A unique, versioned tag, e.g. `agora/bid/1`.
    const DOMAIN: &'static str;
}

/// Why a signature could not be made or checked.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignError {
    /// Only Ed25519 identities can sign Agora messages.
    #[error("the key is not an Ed25519 key; Agora identities are Ed25519")]
    NotEd25519,
    /// The signer field is not a valid Ed25519 public key.
    #[error("the signer is not a valid Ed25519 public key")]
    BadKey,
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// The payload could not be encoded.
    #[error("cannot encode payload: {0}")]
    Encode(String),
    /// The timestamp is further from now than the synchrony bound.
    #[error("timestamp {timestamp_ms} is {skew_ms} ms away from now (bound {bound_ms} ms)")]
    OutOfSync {
        /// The message's timestamp.
        timestamp_ms: UnixMillis,
        /// Its distance from the receiver's clock.
        skew_ms: u64,
        /// The allowed distance.
        bound_ms: u64,
    },
}

/// A payload signed by an Ed25519 identity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Signed<T> {
    /// What was signed.
    pub payload: T,
    /// The signer's Ed25519 public key.
    pub signer: [u8; 32],
    /// When it was signed, by the signer's clock.
    pub timestamp_ms: UnixMillis,
    /// The Ed25519 signature (64 bytes).
    pub signature: Vec<u8>,
}

fn signing_bytes<T: Serialize + Domain>(
    payload: &T,
    signer: &[u8; 32],
    timestamp_ms: UnixMillis,
) -> Result<Vec<u8>, SignError> {
    let body = codec::encode(payload).map_err(|e| SignError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(T::DOMAIN.len() + 1 + 32 + 8 + body.len());
    out.extend_from_slice(T::DOMAIN.as_bytes());
    out.push(0);
    out.extend_from_slice(signer);
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The 32-byte Ed25519 public key of `keypair`.
pub fn ed25519_public(keypair: &Keypair) -> Result<[u8; 32], SignError> {
    let public = keypair
        .public()
        .try_into_ed25519()
        .map_err(|_| SignError::NotEd25519)?;
    Ok(public.to_bytes())
}

/// The peer id of a 32-byte Ed25519 public key.
pub fn peer_id_of(signer: &[u8; 32]) -> Result<PeerId, SignError> {
    let key = ed25519::PublicKey::try_from_bytes(signer).map_err(|_| SignError::BadKey)?;
    Ok(PublicKey::from(key).to_peer_id())
}

impl<T: Serialize + DeserializeOwned + Domain> Signed<T> {
    /// Signs `payload` with `keypair` at `timestamp_ms`.
    pub fn sign(
        keypair: &Keypair,
        payload: T,
        timestamp_ms: UnixMillis,
    ) -> Result<Self, SignError> {
        let signer = ed25519_public(keypair)?;
        let bytes = signing_bytes(&payload, &signer, timestamp_ms)?;
        let signature = keypair.sign(&bytes).map_err(|_| SignError::NotEd25519)?;
        Ok(Signed {
            payload,
            signer,
            timestamp_ms,
            signature,
        })
    }

    /// Checks the signature. Say nothing about the timestamp: see [`Signed::verify_fresh`].
    pub fn verify(&self) -> Result<(), SignError> {
        let key =
            ed25519::PublicKey::try_from_bytes(&self.signer).map_err(|_| SignError::BadKey)?;
        let bytes = signing_bytes(&self.payload, &self.signer, self.timestamp_ms)?;
        if key.verify(&bytes, &self.signature) {
            Ok(())
        } else {
            Err(SignError::BadSignature)
        }
    }

    /// Checks the signature and that the timestamp is within `bound_ms` of `now`.
    pub fn verify_fresh(&self, now: UnixMillis, bound_ms: u64) -> Result<(), SignError> {
        let skew_ms = now.abs_diff(self.timestamp_ms);
        if skew_ms > bound_ms {
            return Err(SignError::OutOfSync {
                timestamp_ms: self.timestamp_ms,
                skew_ms,
                bound_ms,
            });
        }
        self.verify()
    }

    /// The signer's peer id.
    pub fn signer_peer(&self) -> Result<PeerId, SignError> {
        peer_id_of(&self.signer)
    }

    /// The hash of the whole envelope: the message's identity for replay caches and job ids.
    pub fn digest(&self) -> Hash {
        Hash::of(&codec::encode(self).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Note(String);
    impl Domain for Note {
        const DOMAIN: &'static str = "agora/test-note/1";
    }
    #[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
    struct Other(String);
    impl Domain for Other {
        const DOMAIN: &'static str = "agora/test-other/1";
    }

    #[test]
    fn sign_verify_and_tamper() {
        let kp = Keypair::generate_ed25519();
        let s = Signed::sign(&kp, Note("hi".into()), 1000).unwrap();
        s.verify().unwrap();
        assert_eq!(s.signer_peer().unwrap(), kp.public().to_peer_id());
        let mut t = s.clone();
        t.payload.0 = "ho".into();
        assert_eq!(t.verify(), Err(SignError::BadSignature));
        let mut t = s.clone();
        t.timestamp_ms += 1;
        assert_eq!(t.verify(), Err(SignError::BadSignature));
    }

    #[test]
    fn domain_separates() {
        let kp = Keypair::generate_ed25519();
        let s = Signed::sign(&kp, Note("x".into()), 5).unwrap();
        let forged = Signed {
            payload: Other("x".into()),
            signer: s.signer,
            timestamp_ms: s.timestamp_ms,
            signature: s.signature.clone(),
        };
        assert_eq!(forged.verify(), Err(SignError::BadSignature));
    }

    #[test]
    fn freshness_bound() {
        let kp = Keypair::generate_ed25519();
        let s = Signed::sign(&kp, Note("x".into()), 10_000).unwrap();
        s.verify_fresh(14_000, 5_000).unwrap();
        assert!(matches!(
            s.verify_fresh(20_001, 5_000),
            Err(SignError::OutOfSync { .. })
        ));
    }
}
