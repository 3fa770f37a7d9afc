//! Length-prefixed frames, the wire format of our request-response protocols
//! (`/kwaainet/info/1.0.0`, `/kwaainet/msg/1.0.0`, `/kwaainet/host/1.0.0`): a 4-byte
//! big-endian length, then that many bytes, with a hard limit checked before anything is
//! allocated. One [`Codec`] carries them all; each protocol says only how its messages
//! become frame bytes and back ([`Framed`]).

use std::io;
use std::marker::PhantomData;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// How one request-response protocol's messages become frames and back.
pub trait Framed: Send + Sync + 'static {
    /// What a requester sends (with a variant for a peer's protocol violation).
    type Request: Send + 'static;
    /// What the responder answers.
    type Response: Send + 'static;
    /// Largest request frame read.
    const MAX_REQUEST: usize;
    /// Largest response frame read.
    const MAX_RESPONSE: usize;

    /// The request in a frame; `Err` is a frame over [`Self::MAX_REQUEST`] (left unread).
    /// A violation is returned as the request type's own "malformed" value rather than as
    /// a read error, because libp2p's request-response drops read errors silently and the
    /// node wants to act on them (it disconnects the sender).
    fn decode_request(frame: Result<Vec<u8>, String>) -> Self::Request;
    /// A request's frame bytes.
    fn encode_request(req: Self::Request) -> io::Result<Vec<u8>>;
    /// The response in a frame.
    fn decode_response(frame: Vec<u8>) -> io::Result<Self::Response>;
    /// A response's frame bytes.
    fn encode_response(res: Self::Response) -> io::Result<Vec<u8>>;
}

/// The request-response codec of protocol `P`: length-prefixed frames with a hard size
/// limit per direction.
pub struct Codec<P>(PhantomData<P>);

impl<P> Default for Codec<P> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<P> Clone for Codec<P> {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl<P> std::fmt::Debug for Codec<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::any::type_name::<P>())
    }
}

/// An `InvalidData` error saying `why`.
pub(crate) fn invalid(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

#[async_trait::async_trait]
impl<P: Framed> libp2p::request_response::Codec for Codec<P> {
    type Protocol = StreamProtocol;
    type Request = P::Request;
    type Response = P::Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        Ok(P::decode_request(read_frame(io, P::MAX_REQUEST).await?))
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<P::Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        P::decode_response(read_frame(io, P::MAX_RESPONSE).await?.map_err(invalid)?)
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: P::Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &P::encode_request(req)?).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: P::Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &P::encode_response(res)?).await
    }
}

/// Reads one frame of at most `max` bytes; `Ok(Err(_))` is an oversized frame (its body is
/// not read).
pub(crate) async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Result<Vec<u8>, String>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Ok(Err(format!("frame of {len} bytes exceeds {max}")));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(Ok(buf))
}

/// Writes one frame and flushes.
pub(crate) async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}
