//! The request-response codec: a 4-byte big-endian length, then a `postcard` frame.
//!
//! Both directions refuse frames larger than the configured limit: the reader checks the length
//! prefix before reading (or allocating) anything, and the writer refuses to send what the other
//! side would refuse. Refusals are counted in the `agora_net_frames_refused_total` metric.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use prometheus_client::metrics::counter::Counter;

use agora_types::codec;
use agora_types::wire::{Request, Response};

/// The direct-message protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/agora/rr/1.0.0");

/// The codec; cheap to clone.
#[derive(Clone)]
pub struct Codec {
    max_frame: usize,
    refused: Counter,
}

impl Codec {
    /// A codec refusing frames over `max_frame` bytes, counting refusals in `refused`.
    pub fn new(max_frame: usize, refused: Counter) -> Self {
        Codec { max_frame, refused }
    }

    fn too_large(&self, len: usize) -> io::Error {
        self.refused.inc();
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "frame of {len} bytes exceeds the limit of {} bytes",
                self.max_frame
            ),
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
            return Err(self.too_large(len));
        }
        let mut buf = vec![0u8; len];
        io.read_exact(&mut buf).await?;
        codec::decode(&buf, self.max_frame).map_err(|e| {
            self.refused.inc();
            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
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
        assert!(c.read_request(&PROTOCOL, &mut garbage).await.is_err());
    }
}
