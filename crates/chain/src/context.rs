//! The Malachite [`Context`]: the concrete types consensus runs on, and their signing.
//!
//! * Heights are `u64`, starting at 1. Addresses are the validator's raw Ed25519 public key.
//! * The consensus *value* is a [`BlockHash`]: `blake3` over the block's height, time and payload.
//!   The payload itself never rides in a vote or proposal; it travels in proposal parts
//!   (see [`crate::stream`]) and in sync responses, and the hash binds it to the signed proposal.
//! * Every signed message is prefixed with a domain tag and the hash of the chain id, so a
//!   signature made for one chain or one message kind never verifies as another.

use std::fmt;

use async_trait::async_trait;
use borsh::{BorshDeserialize, BorshSerialize};
use malachitebft_core_types::{
    self as core, Context, LinearTimeouts, NilOrVal, Round, SignedExtension, SignedMessage,
    SignedProposal, SignedVote, ValidatorProof, VoteExtensionScope, VoteType,
};
use malachitebft_signing::{Error as SignError, Signer, VerificationResult, Verifier};
use malachitebft_signing_ed25519 as ed;

/// Largest payload a block may carry; bigger proposals and synced values are refused.
pub const MAX_PAYLOAD: usize = 4 * 1024 * 1024;

/// A block height.
#[derive(
    Copy, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize,
)]
pub struct Height(pub u64);

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Height({})", self.0)
    }
}

impl core::Height for Height {
    const ZERO: Self = Height(0);
    const INITIAL: Self = Height(1);

    fn increment_by(&self, n: u64) -> Self {
        Height(self.0.saturating_add(n))
    }

    fn decrement_by(&self, n: u64) -> Option<Self> {
        self.0.checked_sub(n).map(Height)
    }

    fn as_u64(&self) -> u64 {
        self.0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

/// A validator's address: its Ed25519 public key.
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct Address(pub [u8; 32]);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Address(")?;
        write_hex(f, &self.0[..6])?;
        f.write_str(")")
    }
}

impl core::Address for Address {}

/// The consensus value and its id: the blake3 hash of a [`Block`].
#[derive(Copy, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, BorshSerialize, BorshDeserialize)]
pub struct BlockHash(pub [u8; 32]);

impl fmt::Display for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0[..8])
    }
}

impl fmt::Debug for BlockHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlockHash({self})")
    }
}

impl core::Value for BlockHash {
    type Id = BlockHash;

    fn id(&self) -> BlockHash {
        *self
    }
}

/// What a proposer proposes: the application payload, stamped with height and proposer time.
///
/// `time_ms` is chosen by the proposer and agreed on with the block, so every node hands the
/// application the same `decided_at_ms`.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Block {
    pub height: u64,
    pub time_ms: u64,
    pub payload: Vec<u8>,
}

impl Block {
    /// The block's hash, which is the consensus value.
    pub fn hash(&self) -> BlockHash {
        block_hash(self.height, self.time_ms, &self.payload)
    }

    /// Decode a block from untrusted bytes (sync), refusing payloads over [`MAX_PAYLOAD`].
    pub fn decode(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > MAX_PAYLOAD + 64 {
            return None;
        }
        let block = borsh::from_slice::<Block>(bytes).ok()?;
        (block.payload.len() <= MAX_PAYLOAD).then_some(block)
    }

    pub fn encode(&self) -> Vec<u8> {
        borsh::to_vec(self).unwrap_or_default()
    }
}

/// `blake3("agora-chain/block" || height || time_ms || payload)`.
pub fn block_hash(height: u64, time_ms: u64, payload: &[u8]) -> BlockHash {
    let mut hasher = blake3::Hasher::new();
    hasher.update(b"agora-chain/block");
    hasher.update(&height.to_le_bytes());
    hasher.update(&time_ms.to_le_bytes());
    hasher.update(payload);
    BlockHash(*hasher.finalize().as_bytes())
}

/// A signed proposal's body (the value is the block hash; the payload streams separately).
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Proposal {
    pub height: Height,
    pub round: Round,
    pub value: BlockHash,
    pub pol_round: Round,
    pub proposer: Address,
}

impl core::Proposal<ChainContext> for Proposal {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &BlockHash {
        &self.value
    }
    fn take_value(self) -> BlockHash {
        self.value
    }
    fn pol_round(&self) -> Round {
        self.pol_round
    }
    fn validator_address(&self) -> &Address {
        &self.proposer
    }
}

/// A prevote or precommit.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct Vote {
    pub typ: VoteType,
    pub height: Height,
    pub round: Round,
    pub value: NilOrVal<BlockHash>,
    pub validator: Address,
    pub extension: Option<SignedExtension<ChainContext>>,
}

impl core::Vote<ChainContext> for Vote {
    fn height(&self) -> Height {
        self.height
    }
    fn round(&self) -> Round {
        self.round
    }
    fn value(&self) -> &NilOrVal<BlockHash> {
        &self.value
    }
    fn take_value(self) -> NilOrVal<BlockHash> {
        self.value
    }
    fn vote_type(&self) -> VoteType {
        self.typ
    }
    fn validator_address(&self) -> &Address {
        &self.validator
    }
    fn extension(&self) -> Option<&SignedExtension<ChainContext>> {
        self.extension.as_ref()
    }
    fn take_extension(&mut self) -> Option<SignedExtension<ChainContext>> {
        self.extension.take()
    }
    fn extend(self, extension: SignedExtension<ChainContext>) -> Self {
        Self {
            extension: Some(extension),
            ..self
        }
    }
}

/// The first part of a streamed proposal: who proposes what, and how big it is.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub struct PartInit {
    pub height: Height,
    pub round: Round,
    pub pol_round: Round,
    pub proposer: Address,
    pub time_ms: u64,
    pub payload_len: u32,
}

/// One part of a streamed proposal: `Init`, then `Data` chunks, then `Fin` with the block hash.
#[derive(Clone, Debug, PartialEq, Eq, BorshSerialize, BorshDeserialize)]
pub enum ProposalPart {
    Init(PartInit),
    Data(Vec<u8>),
    Fin(BlockHash),
}

impl core::ProposalPart<ChainContext> for ProposalPart {
    fn is_first(&self) -> bool {
        matches!(self, Self::Init(_))
    }
    fn is_last(&self) -> bool {
        matches!(self, Self::Fin(_))
    }
}

/// A member of the validator set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainValidator {
    pub address: Address,
    pub public_key: ed::PublicKey,
    pub power: u64,
}

impl core::Validator<ChainContext> for ChainValidator {
    fn address(&self) -> &Address {
        &self.address
    }
    fn public_key(&self) -> &ed::PublicKey {
        &self.public_key
    }
    fn voting_power(&self) -> u64 {
        self.power
    }
}

/// The validator set of one height: deduplicated, without zero-power or malformed keys, sorted
/// by power (descending) then address, so every node derives the same order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    validators: Vec<ChainValidator>,
}

impl ValidatorSet {
    /// Build a set from the application's list; `None` if nothing valid is left.
    pub fn new(list: &[crate::Validator]) -> Option<Self> {
        let mut validators: Vec<ChainValidator> = Vec::with_capacity(list.len());
        for v in list {
            if v.power == 0 || validators.iter().any(|x| x.address.0 == v.public_key) {
                continue;
            }
            match ed::PublicKey::from_bytes(v.public_key) {
                Ok(public_key) => validators.push(ChainValidator {
                    address: Address(v.public_key),
                    public_key,
                    power: v.power,
                }),
                Err(_) => tracing::warn!("skipping validator with a malformed public key"),
            }
        }
        validators.sort_by(|a, b| b.power.cmp(&a.power).then(a.address.cmp(&b.address)));
        (!validators.is_empty()).then_some(Self { validators })
    }

    pub fn to_public(&self) -> Vec<crate::Validator> {
        self.validators
            .iter()
            .map(|v| crate::Validator {
                public_key: v.address.0,
                power: v.power,
            })
            .collect()
    }
}

impl core::ValidatorSet<ChainContext> for ValidatorSet {
    fn count(&self) -> usize {
        self.validators.len()
    }
    fn total_voting_power(&self) -> u64 {
        self.validators
            .iter()
            .fold(0u64, |acc, v| acc.saturating_add(v.power))
    }
    fn get_by_address(&self, address: &Address) -> Option<&ChainValidator> {
        self.validators.iter().find(|v| &v.address == address)
    }
    fn get_by_index(&self, index: usize) -> Option<&ChainValidator> {
        self.validators.get(index)
    }
}

/// An Ed25519 signature that can be written on the wire (borsh).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Signature(pub ed::Signature);

impl BorshSerialize for Signature {
    fn serialize<W: borsh::io::Write>(&self, writer: &mut W) -> borsh::io::Result<()> {
        writer.write_all(&self.0.to_bytes())
    }
}

impl BorshDeserialize for Signature {
    fn deserialize_reader<R: borsh::io::Read>(reader: &mut R) -> borsh::io::Result<Self> {
        let bytes = <[u8; 64]>::deserialize_reader(reader)?;
        Ok(Signature(ed::Signature::from_bytes(bytes)))
    }
}

/// A key or signature of the wrong length.
#[derive(Debug, thiserror::Error)]
#[error("malformed Ed25519 key or signature")]
pub struct DecodingError;

/// Ed25519, with a wire-encodable signature type.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Ed25519Scheme;

impl core::SigningScheme for Ed25519Scheme {
    type DecodingError = DecodingError;
    type Signature = Signature;
    type PublicKey = ed::PublicKey;
    type PrivateKey = ed::PrivateKey;

    fn decode_signature(bytes: &[u8]) -> Result<Signature, DecodingError> {
        ed::Signature::try_from(bytes)
            .map(Signature)
            .map_err(|_| DecodingError)
    }
    fn encode_signature(signature: &Signature) -> Vec<u8> {
        signature.0.to_bytes().to_vec()
    }
    fn decode_public_key(bytes: &[u8]) -> Result<ed::PublicKey, DecodingError> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| DecodingError)?;
        ed::PublicKey::from_bytes(bytes).map_err(|_| DecodingError)
    }
    fn encode_public_key(public_key: &ed::PublicKey) -> Vec<u8> {
        public_key.as_bytes().to_vec()
    }
}

/// The chain's Malachite context. Stateless: proposer selection is round-robin over the
/// deterministically ordered validator set.
#[derive(Clone, Debug, Default)]
pub struct ChainContext;

impl Context for ChainContext {
    type Address = Address;
    type Height = Height;
    type ProposalPart = ProposalPart;
    type Proposal = Proposal;
    type Validator = ChainValidator;
    type ValidatorSet = ValidatorSet;
    type Timeouts = LinearTimeouts;
    type Value = BlockHash;
    type Vote = Vote;
    type Extension = Vec<u8>;
    type SigningScheme = Ed25519Scheme;

    fn select_proposer<'a>(
        &self,
        validator_set: &'a ValidatorSet,
        height: Height,
        round: Round,
    ) -> &'a ChainValidator {
        // A set is never empty (`ValidatorSet::new`), so the index is always in range.
        let count = validator_set.validators.len().max(1) as u64;
        let round = u64::from(round.as_u32().unwrap_or(0));
        let index = height.0.saturating_sub(1).wrapping_add(round) % count;
        &validator_set.validators[index as usize]
    }

    fn new_proposal(
        &self,
        height: Height,
        round: Round,
        value: BlockHash,
        pol_round: Round,
        address: Address,
    ) -> Proposal {
        Proposal {
            height,
            round,
            value,
            pol_round,
            proposer: address,
        }
    }

    fn new_prevote(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockHash>,
        address: Address,
    ) -> Vote {
        Vote {
            typ: VoteType::Prevote,
            height,
            round,
            value: value_id,
            validator: address,
            extension: None,
        }
    }

    fn new_precommit(
        &self,
        height: Height,
        round: Round,
        value_id: NilOrVal<BlockHash>,
        address: Address,
    ) -> Vote {
        Vote {
            typ: VoteType::Precommit,
            height,
            round,
            value: value_id,
            validator: address,
            extension: None,
        }
    }
}

/// Domain-separated signing bytes: `tag || blake3(chain_id) || borsh(body)`.
fn sign_bytes<T: BorshSerialize>(tag: &[u8], chain: &[u8; 32], body: &T) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(128);
    bytes.extend_from_slice(tag);
    bytes.extend_from_slice(chain);
    // Writing into a Vec cannot fail.
    let _ = body.serialize(&mut bytes);
    bytes
}

fn vote_body(vote: &Vote) -> Vote {
    Vote {
        extension: None,
        ..vote.clone()
    }
}

fn extension_body(scope: &VoteExtensionScope<ChainContext>, ext: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(96 + ext.len());
    let _ = (
        scope.height,
        scope.round,
        scope.value_id,
        scope.validator_address,
        ext,
    )
        .serialize(&mut body);
    body
}

const TAG_VOTE: &[u8] = b"agora-chain/vote/v1";
const TAG_PROPOSAL: &[u8] = b"agora-chain/proposal/v1";
const TAG_EXTENSION: &[u8] = b"agora-chain/extension/v1";

fn verified(public_key: &ed::PublicKey, bytes: &[u8], signature: &Signature) -> VerificationResult {
    VerificationResult::from_bool(public_key.verify(bytes, &signature.0).is_ok())
}

/// Verifies signatures for one chain id. Held by every node.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    chain: [u8; 32],
}

impl ChainVerifier {
    pub fn new(chain_id: &str) -> Self {
        Self {
            chain: *blake3::hash(chain_id.as_bytes()).as_bytes(),
        }
    }
}

#[async_trait]
impl Verifier<ChainContext> for ChainVerifier {
    async fn verify_signed_vote(
        &self,
        vote: &Vote,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        let bytes = sign_bytes(TAG_VOTE, &self.chain, &vote_body(vote));
        Ok(verified(public_key, &bytes, signature))
    }

    async fn verify_signed_proposal(
        &self,
        proposal: &Proposal,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        let bytes = sign_bytes(TAG_PROPOSAL, &self.chain, proposal);
        Ok(verified(public_key, &bytes, signature))
    }

    async fn verify_signed_vote_extension(
        &self,
        scope: &VoteExtensionScope<ChainContext>,
        extension: &Vec<u8>,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        let bytes = sign_bytes(
            TAG_EXTENSION,
            &self.chain,
            &extension_body(scope, extension),
        );
        Ok(verified(public_key, &bytes, signature))
    }

    async fn verify_validator_proof(
        &self,
        proof: &ValidatorProof<ChainContext>,
    ) -> Result<VerificationResult, SignError> {
        let Ok(key) = <Ed25519Scheme as core::SigningScheme>::decode_public_key(&proof.public_key)
        else {
            return Ok(VerificationResult::Invalid);
        };
        let preimage =
            ValidatorProof::<ChainContext>::signing_bytes(&proof.public_key, &proof.peer_id);
        Ok(verified(&key, &preimage, &proof.signature))
    }
}

/// Signs with the node's consensus key (validators only use it, but every node holds one).
#[derive(Clone, Debug)]
pub struct ChainSigner {
    key: ed::PrivateKey,
    verifier: ChainVerifier,
}

impl ChainSigner {
    pub fn new(secret: [u8; 32], chain_id: &str) -> Self {
        Self {
            key: ed::PrivateKey::from(secret),
            verifier: ChainVerifier::new(chain_id),
        }
    }

    pub fn public_key(&self) -> ed::PublicKey {
        self.key.public_key()
    }

    fn sign(&self, bytes: &[u8]) -> Signature {
        Signature(self.key.sign(bytes))
    }
}

#[async_trait]
impl Signer<ChainContext> for ChainSigner {
    async fn sign_vote(&self, vote: Vote) -> Result<SignedVote<ChainContext>, SignError> {
        let signature = self.sign(&sign_bytes(
            TAG_VOTE,
            &self.verifier.chain,
            &vote_body(&vote),
        ));
        Ok(SignedMessage::new(vote, signature))
    }

    async fn sign_proposal(
        &self,
        proposal: Proposal,
    ) -> Result<SignedProposal<ChainContext>, SignError> {
        let signature = self.sign(&sign_bytes(TAG_PROPOSAL, &self.verifier.chain, &proposal));
        Ok(SignedMessage::new(proposal, signature))
    }

    async fn sign_vote_extension(
        &self,
        scope: VoteExtensionScope<ChainContext>,
        extension: Vec<u8>,
    ) -> Result<SignedExtension<ChainContext>, SignError> {
        let body = extension_body(&scope, &extension);
        let signature = self.sign(&sign_bytes(TAG_EXTENSION, &self.verifier.chain, &body));
        Ok(SignedMessage::new(extension, signature))
    }

    async fn sign_validator_proof(
        &self,
        public_key: Vec<u8>,
        peer_id: Vec<u8>,
    ) -> Result<ValidatorProof<ChainContext>, SignError> {
        let preimage = ValidatorProof::<ChainContext>::signing_bytes(&public_key, &peer_id);
        let signature = self.sign(&preimage);
        Ok(ValidatorProof::new(public_key, peer_id, signature))
    }
}

#[async_trait]
impl Verifier<ChainContext> for ChainSigner {
    async fn verify_signed_vote(
        &self,
        vote: &Vote,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        self.verifier
            .verify_signed_vote(vote, signature, public_key)
            .await
    }

    async fn verify_signed_proposal(
        &self,
        proposal: &Proposal,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        self.verifier
            .verify_signed_proposal(proposal, signature, public_key)
            .await
    }

    async fn verify_signed_vote_extension(
        &self,
        scope: &VoteExtensionScope<ChainContext>,
        extension: &Vec<u8>,
        signature: &Signature,
        public_key: &ed::PublicKey,
    ) -> Result<VerificationResult, SignError> {
        self.verifier
            .verify_signed_vote_extension(scope, extension, signature, public_key)
            .await
    }

    async fn verify_validator_proof(
        &self,
        proof: &ValidatorProof<ChainContext>,
    ) -> Result<VerificationResult, SignError> {
        self.verifier.verify_validator_proof(proof).await
    }
}
