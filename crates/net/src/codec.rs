//! The request-response codec: a 4-byte big-endian length, then a `postcard` frame.
//!
//! Both directions refuse frames larger than the configured limit: the reader checks the length
//! prefix before reading (or allocating) anything, and the writer refuses to send what the other
//! side would refuse. Refusals are counted in the `agora_net_frames_refused_total` metric.
//!
//! A frame the reader refuses is also reported, with the peer that sent it, to the actor, which
//! counts it as an offence (request-response 0.30 drops read errors silently: it reports no
//! `InboundFailure` for them). A codec does not know its peer, so each connection's copy learns it
//! when it is cloned for the connection: the gate, called just before request-response for every
//! new connection, writes the peer into a shared [`PeerTag`], and `Codec::clone` on a codec
//! without a peer reads it from there.

use std::io;
use std::sync::{Arc, Mutex};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use agora_types::codec;
use agora_types::wire::{Request, Response};

/// The direct-message protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/rr/1.0.0");

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
}

/// A frame refused on reading, as reported to the actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameFault {
    Oversized,
    Malformed,
}

/// Reports of refused frames, with their sender.
pub(crate) type Faults = mpsc::Sender<(PeerId, FrameFault)>;

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

/// The codec; cheap to clone.
pub struct Codec {
    max_frame: usize,
    refused: Counter,
    peer: Option<PeerId>,
    tag: PeerTag,
    faults: Option<Faults>,
}

impl Clone for Codec {
    fn clone(&self) -> Self {
        Codec {
            max_frame: self.max_frame,
            refused: self.refused.clone(),
            peer: self.peer.or_else(|| self.tag.get()),
            tag: self.tag.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl Codec {
    /// A codec refusing frames over `max_frame` bytes, counting refusals in `refused`.
    pub fn new(max_frame: usize, refused: Counter) -> Self {
        Codec {
            max_frame,
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
            let _ = faults.try_send((peer, fault));
        }
    }

    fn too_large(&self, len: usize) -> io::Error {
        self.refused.inc();
        io::Error::new(
            io::ErrorKind::InvalidData,
            FrameError::TooLarge {
                len,
                limit: self.max_frame,
            },
        )
    }

    async fn read_frame<T, M>(&self, io: &mut T) -> io::Result<M>
    where
        T: AsyncRead + Unpin + Send,
        M: serde::de::DeserializeOwned,
    {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_frame {
            self.report(FrameFault::Oversized);
            return Err(self.too_large(len));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        codec::decode(&buf, self.max_frame).map_err(|e| {
            self.refused.inc();
            self.report(FrameFault::Malformed);
            io::Error::new(
                io::ErrorKind::InvalidData,
                FrameError::Malformed(e.to_string()),
            )
        })
    }

    async fn write_frame<T, M>(&self, io: &mut T, msg: &M) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
        M: serde::Serialize,
    {
        let bytes =
            codec::encode(msg).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if bytes.len() > self.max_frame {
            return Err(self.too_large(bytes.len()));
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
        self.read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        self.read_frame(io).await
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
        self.write_frame(io, &req).await
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
        self.write_frame(io, &res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use libp2p::request_response::Codec as _;

    #[tokio::test]
    async fn round_trip_and_refusal() {
        let mut c = Codec::new(64, Counter::default());
        let mut buf = Cursor::new(Vec::new());
        c.write_request(&PROTOCOL, &mut buf, Request::Echo(vec![1, 2, 3]))
            .await
            .unwrap();
        buf.set_position(0);
        let r = c.read_request(&PROTOCOL, &mut buf).await.unwrap();
        assert_eq!(r, Request::Echo(vec![1, 2, 3]));

        // A length prefix over the limit is refused before reading the body.
        let mut hostile = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let e = c.read_request(&PROTOCOL, &mut hostile).await.unwrap_err();
        assert!(e.to_string().contains("exceeds the limit"), "{e}");
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::TooLarge { .. })));

        // Writing an oversized frame is refused too.
        let mut out = Cursor::new(Vec::new());
        assert!(
            c.write_request(&PROTOCOL, &mut out, Request::Echo(vec![0; 100]))
                .await
                .is_err()
        );
        assert_eq!(c.refused.get(), 2);

        // Garbage of a valid length is refused as malformed.
        let mut garbage = Cursor::new(vec![0, 0, 0, 3, 0xee, 0xee, 0xee]);
        let e = c.read_request(&PROTOCOL, &mut garbage).await.unwrap_err();
        let inner = e.get_ref().and_then(|e| e.downcast_ref::<FrameError>());
        assert!(matches!(inner, Some(FrameError::Malformed(_))));
    }

    #[tokio::test]
    async fn refusals_are_reported_with_the_tagged_peer() {
        let (tx, mut rx) = mpsc::channel(4);
        let tag = PeerTag::default();
        let base = Codec::new(64, Counter::default()).with_faults(tag.clone(), tx);
        let peer = PeerId::random();
        tag.set(peer);
        let mut per_connection = base.clone();
        tag.set(PeerId::random());
        let mut per_stream = per_connection.clone();
        let mut hostile = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        assert!(
            per_stream
                .read_request(&PROTOCOL, &mut hostile)
                .await
                .is_err()
        );
        let mut garbage = Cursor::new(vec![0, 0, 0, 2, 0xee, 0xee]);
        assert!(
            per_connection
                .read_request(&PROTOCOL, &mut garbage)
                .await
                .is_err()
        );
        assert_eq!(rx.try_recv().unwrap(), (peer, FrameFault::Oversized));
        assert_eq!(rx.try_recv().unwrap(), (peer, FrameFault::Malformed));
    }
}
