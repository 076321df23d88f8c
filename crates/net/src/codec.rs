//! The direct-message protocols and their codec: a 4-byte big-endian length, then a `postcard`
//! frame.
//!
//! Direct messages travel on three request-response protocols, one per purpose, each with its
//! own frame caps (requests and responses), its own per-peer quota (see the `guard` module) and
//! its own stream limit, so that a stream of blob chunks cannot starve the market and a bid
//! cannot be 8 MiB. [`Purpose::of`] routes each [`Request`] variant:
//!
//! | protocol | requests | request cap | response cap |
//! |---|---|---|---|
//! | [`MARKET_PROTOCOL`] | `Echo`, `Bid`, `Lease`, `Cancel`, `Heartbeat` | [`MAX_MARKET_FRAME_BYTES`] | the same |
//! | [`RESULT_PROTOCOL`] | `Result` | [`MAX_RESULT_FRAME_BYTES`] | [`MAX_MARKET_FRAME_BYTES`] |
//! | [`BLOB_PROTOCOL`] | `GetBlob` | [`MAX_BLOB_REQUEST_BYTES`] | [`MAX_BLOB_FRAME_BYTES`] |
//!
//! [`Config::max_frame_bytes`](crate::Config::max_frame_bytes) is a ceiling over all of them.
//! Both directions refuse frames larger than the cap: the reader checks the length prefix before
//! reading (or allocating) anything, and the writer refuses to send what the other side would
//! refuse. A request of a variant that belongs on another protocol is refused too. Refusals are
//! counted in the `agora_net_frames_refused_total` metric.
//!
//! A frame the reader refuses is also reported, with the peer that sent it and the protocol, to
//! the actor, which counts it as an offence (request-response 0.30 drops read errors silently:
//! it reports no `InboundFailure` for them). A codec does not know its peer, so each
//! connection's copy learns it when it is cloned for the connection: the gate, called just
//! before the request-response behaviours for every new connection, writes the peer into a
//! shared [`PeerTag`], and `Codec::clone` on a codec without a peer reads it from there.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use agora_types::codec;
use agora_types::job::MAX_STDERR_BYTES;
use agora_types::wire::{Request, Response, limits};

/// The market's control messages: echo, bids, leases, cancels, heartbeats.
pub const MARKET_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/market/1.0.0");
/// Workers' results, with their output.
pub const RESULT_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/result/1.0.0");
/// Blob chunks.
pub const BLOB_PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/blob/1.0.0");

/// The largest frame on the market protocol, requests and responses. The largest legal market
/// message is a [`Lease`](agora_types::job::Lease) of a spec at the limits of
/// [`SpecBounds::default`](agora_types::job::SpecBounds): 64 arguments of 1 KiB, 16 capability
/// tags of 64 bytes, the fixed fields and the signature, about 67 KiB (a test encodes it); bids, cancels and heartbeats are a few hundred bytes. 128 KiB leaves room.
pub const MAX_MARKET_FRAME_BYTES: usize = 128 * 1024;
/// Room for the signed claim (the failure detail, the signature, varints) around a result's
/// output and stderr.
const RESULT_ENVELOPE_BYTES: usize = 64 * 1024;
/// The largest result request: the output at [`limits::MAX_OUTPUT_BYTES`], stderr at
/// [`MAX_STDERR_BYTES`], and the envelope (4 MiB + 128 KiB).
pub const MAX_RESULT_FRAME_BYTES: usize =
    limits::MAX_OUTPUT_BYTES + MAX_STDERR_BYTES + RESULT_ENVELOPE_BYTES;
/// The largest blob request: a `GetBlob` is a hash and two integers, under 64 bytes.
pub const MAX_BLOB_REQUEST_BYTES: usize = 1024;
/// The largest blob response: a chunk of [`limits::BLOB_CHUNK_BYTES`] and its envelope (the
/// variant, the blob's size, the chunk's length: under 20 bytes), with room to spare.
pub const MAX_BLOB_FRAME_BYTES: usize = limits::BLOB_CHUNK_BYTES as usize + 4096;

/// Which protocol a direct message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Purpose {
    Market,
    Result,
    Blob,
}

impl Purpose {
    /// Every purpose, in a fixed order.
    #[cfg(test)]
    pub const ALL: [Purpose; 3] = [Purpose::Market, Purpose::Result, Purpose::Blob];

    /// The protocol `request` travels on.
    pub fn of(request: &Request) -> Purpose {
        match request {
            Request::Echo(_)
            | Request::Bid(_)
            | Request::Lease(_)
            | Request::Cancel(_)
            | Request::Heartbeat(_) => Purpose::Market,
            Request::Result { .. } => Purpose::Result,
            Request::GetBlob { .. } => Purpose::Blob,
        }
    }

    pub fn protocol(self) -> StreamProtocol {
        match self {
            Purpose::Market => MARKET_PROTOCOL,
            Purpose::Result => RESULT_PROTOCOL,
            Purpose::Blob => BLOB_PROTOCOL,
        }
    }

    /// The label in metrics and logs: its quota's.
    pub fn label(self) -> &'static str {
        crate::guard::Proto::from(self).label()
    }

    /// The request cap, under the ceiling `max_frame`.
    pub fn max_request(self, max_frame: usize) -> usize {
        let cap = match self {
            Purpose::Market => MAX_MARKET_FRAME_BYTES,
            Purpose::Result => MAX_RESULT_FRAME_BYTES,
            Purpose::Blob => MAX_BLOB_REQUEST_BYTES,
        };
        cap.min(max_frame)
    }

    /// The response cap, under the ceiling `max_frame`.
    pub fn max_response(self, max_frame: usize) -> usize {
        let cap = match self {
            Purpose::Market | Purpose::Result => MAX_MARKET_FRAME_BYTES,
            Purpose::Blob => MAX_BLOB_FRAME_BYTES,
        };
        cap.min(max_frame)
    }

    /// Inbound streams at once per connection: bounds the memory of frames being read
    /// (256 x 128 KiB market, 16 x 4.2 MiB results, 32 x 1 MiB blob responses written).
    pub fn max_streams(self) -> usize {
        match self {
            Purpose::Market => 256,
            Purpose::Result => 16,
            Purpose::Blob => 32,
        }
    }
}

/// Why the codec refused a frame; carried inside the `io::Error` it returns, so that the actor
/// can tell a hostile frame (an offence) from a broken stream (not one).
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    /// The length prefix (or our own frame) is over the limit.
    #[error("frame of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    /// The frame does not decode.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The request belongs on another protocol.
    #[error("a {0} request on the {1} protocol")]
    Misrouted(&'static str, &'static str),
}

/// A frame refused on reading, as reported to the actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameFault {
    Oversized,
    Malformed,
    Misrouted,
}

/// Reports of refused frames, with their sender and protocol.
pub(crate) type Faults = mpsc::Sender<(PeerId, Purpose, FrameFault)>;

/// The peer of the connection being set up; see the module docs.
#[derive(Clone, Default)]
pub(crate) struct PeerTag(Arc<Mutex<Option<PeerId>>>);

impl PeerTag {
    pub fn set(&self, peer: PeerId) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(peer);
    }

    fn get(&self) -> Option<PeerId> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The codec of one protocol; cheap to clone.
pub struct Codec {
    purpose: Purpose,
    max_request: usize,
    max_response: usize,
    refused: Counter,
    peer: Option<PeerId>,
    tag: PeerTag,
    faults: Option<Faults>,
}

impl Clone for Codec {
    fn clone(&self) -> Self {
        Codec {
            purpose: self.purpose,
            max_request: self.max_request,
            max_response: self.max_response,
            refused: self.refused.clone(),
            peer: self.peer.or_else(|| self.tag.get()),
            tag: self.tag.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl Codec {
    /// The codec of `purpose`'s protocol, its caps held under `max_frame` bytes, counting
    /// refusals in `refused`.
    pub(crate) fn new(purpose: Purpose, max_frame: usize, refused: Counter) -> Self {
        Codec {
            purpose,
            max_request: purpose.max_request(max_frame),
            max_response: purpose.max_response(max_frame),
            refused,
            peer: None,
            tag: PeerTag::default(),
            faults: None,
        }
    }

    /// Reports refused frames to `faults`, with the peer `tag` names.
    pub(crate) fn with_faults(mut self, tag: PeerTag, faults: Faults) -> Self {
        self.tag = tag;
        self.faults = Some(faults);
        self
    }

    fn report(&self, fault: FrameFault) {
        if let (Some(peer), Some(faults)) = (self.peer, &self.faults) {
            // Full queue: the actor is behind; the frame is refused all the same.
            let _ = faults.try_send((peer, self.purpose, fault));
        }
    }

    fn too_large(&self, len: usize, limit: usize) -> io::Error {
        self.refused.inc();
        io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::TooLarge { len, limit },
        )
    }

    async fn read_frame<T, M>(&self, io: &mut T, limit: usize) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > limit {
            self.report(FrameFault::Oversized);
            return Err(self.too_large(len, limit));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        codec::decode(&buf, limit).map_err(|e| {
            self.refused.inc();
            self.report(FrameFault::Malformed);
            io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::Malformed(e.to_string()),
            )
        })
    }

    async fn write_frame<T, M>(&self, io: &mut T, msg: &M, limit: usize) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: serde::Serialize,
    {
        let bytes =
            codec::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if bytes.len() > limit {
            return Err(self.too_large(bytes.len(), limit));
        }
        io.write_all(&(bytes.len() as u32).to_be_bytes()).await?;
        io.write_all(&bytes).await?;
        io.flush().await
    }
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let request: Request = self.read_frame(io, self.max_request).await?;
        let belongs = Purpose::of(&request);
        if belongs != self.purpose {
            self.refused.inc();
            self.report(FrameFault::Misrouted);
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::Misrouted(belongs.label(), self.purpose.label()),
            ));
        }
        Ok(request)
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &req, self.max_request).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        self.write_frame(io, &res, self.max_response).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agora_types::Hash;
    use agora_types::job::{
        Bid, JobLimits, JobSpec, Lease, Outcome, Runtime, SpecBounds, WorkResult,
    };
    use agora_types::sign::Signed;
    use futures::io::Cursor;
    use libp2p::identity::Keypair;
    use libp2p::request_response::Codec as _;

    fn encoded_len<M: serde::Serialize>(m: &M) -> usize {
        codec::encode(m).unwrap().len()
    }

    /// A lease of the largest spec `SpecBounds::default()` admits, every integer at its widest.
    fn largest_lease(key: &Keypair) -> Request {
        let b = SpecBounds::default();
        let spec = JobSpec {
            module: Hash([0xff; 32]),
            module_size: b.max_module_bytes,
            input: Hash([0xff; 32]),
            input_size: b.max_input_bytes,
            args: vec!["a".repeat(b.max_arg_len); b.max_args],
            limits: JobLimits {
                fuel: u64::MAX,
                memory_bytes: b.max_memory_bytes,
                wall_time_ms: b.max_wall_time_ms,
            },
            capabilities: vec!["c".repeat(64); b.max_capabilities],
            redundancy: b.max_redundancy,
            max_price: u64::MAX,
            deadline_ms: u64::MAX,
            nonce: u64::MAX,
            credit: true,
            runtime: Runtime::Wasm,
        };
        spec.validate(&b).unwrap();
        Request::Lease(Lease {
            job: Signed::sign(key, spec, u64::MAX).unwrap(),
            price: u64::MAX,
            expires_ms: u64::MAX,
        })
    }

    #[test]
    fn the_largest_legal_message_of_each_protocol_fits_its_cap() {
        let key = Keypair::generate_ed25519();
        let lease = largest_lease(&key);
        let n = encoded_len(&lease);
        assert!(n <= MAX_MARKET_FRAME_BYTES, "lease of {n} bytes");
        // The cap is not loose by more than 2x: a larger frame is no lease.
        assert!(n * 2 > MAX_MARKET_FRAME_BYTES, "lease of {n} bytes");
        let bid = Bid {
            job_id: Hash([0xff; 32]),
            price: u64::MAX,
            free_slots: u32::MAX,
            total_slots: u32::MAX,
        };
        let bid = Request::Bid(Signed::sign(&key, bid, u64::MAX).unwrap());
        assert!(encoded_len(&bid) < 1024);
        assert_eq!(Purpose::of(&lease), Purpose::Market);
        assert_eq!(Purpose::of(&bid), Purpose::Market);

        let claim = WorkResult {
            job_id: Hash([0xff; 32]),
            outcome: Outcome::Completed {
                exit_code: i32::MIN,
                output_hash: Hash([0xff; 32]),
                fuel_used: u64::MAX,
                compared: Some(Hash([0xff; 32])),
            },
            price: u64::MAX,
        };
        let result = Request::Result {
            result: Signed::sign(&key, claim, u64::MAX).unwrap(),
            output: vec![0xff; limits::MAX_OUTPUT_BYTES],
            stderr: vec![0xff; MAX_STDERR_BYTES],
        };
        assert_eq!(Purpose::of(&result), Purpose::Result);
        assert!(encoded_len(&result) <= MAX_RESULT_FRAME_BYTES);

        let get = Request::GetBlob {
            hash: Hash([0xff; 32]),
            offset: u64::MAX,
            len: u32::MAX,
        };
        assert_eq!(Purpose::of(&get), Purpose::Blob);
        assert!(encoded_len(&get) <= MAX_BLOB_REQUEST_BYTES);
        let chunk = Response::Blob {
            total: u64::MAX,
            data: vec![0xff; limits::BLOB_CHUNK_BYTES as usize],
        };
        assert!(encoded_len(&chunk) <= MAX_BLOB_FRAME_BYTES);

        // Every cap stays under the ceiling of `Config::max_frame_bytes`.
        for p in Purpose::ALL {
            assert!(p.max_request(usize::MAX) <= limits::MAX_FRAME_BYTES);
            assert!(p.max_response(usize::MAX) <= limits::MAX_FRAME_BYTES);
            assert_eq!(p.max_request(100), 100);
        }
    }

    #[tokio::test]
    async fn a_frame_over_the_market_cap_is_refused_there_and_read_on_the_result_protocol() {
        let key = Keypair::generate_ed25519();
        let claim = WorkResult {
            job_id: Hash([1; 32]),
            outcome: Outcome::Failed {
                kind: "trap".into(),
                detail: "x".into(),
            },
            price: 1,
        };
        let result = Request::Result {
            result: Signed::sign(&key, claim, 1).unwrap(),
            output: vec![],
            stderr: vec![0; MAX_MARKET_FRAME_BYTES + 1],
        };
        let mut market = Codec::new(Purpose::Market, usize::MAX, Counter::default());
        let mut results = Codec::new(Purpose::Result, usize::MAX, Counter::default());
        let mut buf = Cursor::new(Vec::new());
        results
            .write_request(&RESULT_PROTOCOL, &mut buf, result.clone())
            .await
            .unwrap();
        let bytes = buf.into_inner();
        let e = market
            .read_request(&MARKET_PROTOCOL, &mut Cursor::new(bytes.clone()))
            .await
            .unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::TooLarge { .. })), "{e}");
        let r = results
            .read_request(&RESULT_PROTOCOL, &mut Cursor::new(bytes))
            .await
            .unwrap();
        assert_eq!(r, result);
    }

    #[tokio::test]
    async fn round_trip_and_refusal() {
        let mut c = Codec::new(Purpose::Market, 64, Counter::default());
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&MARKET_PROTOCOL, &mut buf, Request::Echo(vec![1, 2, 3]))
            .await
            .unwrap();
        buf.set_position(0);
        let r = c.read_request(&MARKET_PROTOCOL, &mut buf).await.unwrap();
        assert_eq!(r, Request::Echo(vec![1, 2, 3]));

        // A length prefix over the limit is refused before reading the body.
        let mut hostile = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let e = c
            .read_request(&MARKET_PROTOCOL, &mut hostile)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::TooLarge { .. })));

        // Writing an oversized frame is refused too.
        let mut out = Cursor::new(Vec::new());
        assert!(
            c.write_request(&MARKET_PROTOCOL, &mut out, Request::Echo(vec![0; 100]))
                .await
                .is_err()
        );
        assert_eq!(c.refused.get(), 2);

        // Garbage of a valid length is refused as malformed.
        let mut garbage = Cursor::new(vec![0, 0, 0, 3, 0xee, 0xee, 0xee]);
        let e = c
            .read_request(&MARKET_PROTOCOL, &mut garbage)
            .await
            .unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::Malformed(_))));
    }

    #[tokio::test]
    async fn refusals_are_reported_with_the_tagged_peer_and_protocol() {
        let (tx, mut rx) = mpsc::channel(4);
        let tag = PeerTag::default();
        let base = Codec::new(Purpose::Market, 64, Counter::default()).with_faults(tag.clone(), tx);
        let peer = PeerId::random();
        tag.set(peer);
        let mut per_connection = base.clone();
        tag.set(PeerId::random());
        let mut per_stream = per_connection.clone();
        let mut hostile = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        assert!(
            per_stream
                .read_request(&MARKET_PROTOCOL, &mut hostile)
                .await
                .is_err()
        );
        let mut garbage = Cursor::new(vec![0, 0, 0, 2, 0xee, 0xee]);
        assert!(
            per_connection
                .read_request(&MARKET_PROTOCOL, &mut garbage)
                .await
                .is_err()
        );
        // A blob request on the market protocol: well formed, but not the market's.
        let get = codec::encode(&Request::GetBlob {
            hash: Hash([0; 32]),
            offset: 0,
            len: 1,
        })
        .unwrap();
        let mut misrouted = (get.len() as u32).to_be_bytes().to_vec();
        misrouted.extend_from_slice(&get);
        let e = per_connection
            .read_request(&MARKET_PROTOCOL, &mut Cursor::new(misrouted))
            .await
            .unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::Misrouted(..))), "{e}");
        let m = Purpose::Market;
        assert_eq!(rx.try_recv().unwrap(), (peer, m, FrameFault::Oversized));
        assert_eq!(rx.try_recv().unwrap(), (peer, m, FrameFault::Malformed));
        assert_eq!(rx.try_recv().unwrap(), (peer, m, FrameFault::Misrouted));
    }
}
