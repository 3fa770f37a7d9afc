//! WebRTC-direct streams written in small, flushed chunks, on both ends (the page's
//! `libp2p-webrtc-websys` connection and the node's `libp2p-webrtc` one), so that every
//! data-channel message stays within what the other end can read.
//!
//! Without it a relayed message of 8 KiB or more from a page on WebRTC-direct, or of about
//! 16 KiB or more to one, killed the relay circuit and timed out, because:
//!
//! - **the node reads each message into an 8 KiB buffer.** `libp2p-webrtc` (0.9 and 0.10)
//!   sets the read buffer of the data channel's `PollDataChannel` to 16 KiB, but
//!   `libp2p-webrtc-utils` (0.4 and 0.5, `Stream::new`) reads through a clone of it, and
//!   webrtc-data's `PollDataChannel::clone` (still in 0.17) builds a fresh one with the
//!   8 KiB default. A message the page
//!   sends of up to 16 KiB (what the page's side allows) fails the read with
//!   "Short buffer (size: 8192) to be filled" (rust-libp2p issue #4049; webrtc-rs issue
//!   #823 proposes a 16 KiB default).
//! - **the page refuses a message over 16 KiB.** `libp2p-webrtc-websys` drops a message
//!   that does not fit its 16 KiB read buffer ("Remote is overloading us with messages")
//!   and fails the stream. The node sends such messages when it writes twice without a
//!   flush: the stream's framing buffers frames until 16 KiB are pending, then webrtc-rs
//!   sends the whole buffer as one message (the relay's copy does exactly that when the
//!   other side's data arrives in bursts, e.g. from a page on WebSocket).
//!
//! [`ChunkedStream`] passes at most [`MAX_CHUNK`] bytes per write and flushes before the
//! next write, so each write leaves as one framed message under 8 KiB (the page may split
//! it further, never join it). [`ChunkedMuxer`] wraps a connection so that all its streams
//! are chunked. The cost: a flush per 8 KiB (in the page it waits until the data channel's
//! `bufferedAmount` is back to 0).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};

/// Largest write passed to a WebRTC stream: 8 KiB (the node's read buffer) less room for
/// the protobuf envelope each write is framed in (at most 7 bytes).
pub(crate) const MAX_CHUNK: usize = 8 * 1024 - 16;

/// A stream muxer whose streams are [`ChunkedStream`]s.
#[derive(Debug)]
pub(crate) struct ChunkedMuxer<M> {
    inner: M,
}

impl<M> ChunkedMuxer<M> {
    pub(crate) fn new(inner: M) -> Self {
        Self { inner }
    }
}

impl<M> StreamMuxer for ChunkedMuxer<M>
where
    M: StreamMuxer + Unpin,
    M::Substream: Unpin,
{
    type Substream = ChunkedStream<M::Substream>;
    type Error = M::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner)
            .poll_inbound(cx)
            .map_ok(ChunkedStream::new)
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        Pin::new(&mut self.inner)
            .poll_outbound(cx)
            .map_ok(ChunkedStream::new)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

/// A stream written in writes of at most [`MAX_CHUNK`] bytes, each flushed before the next.
#[derive(Debug)]
pub(crate) struct ChunkedStream<S> {
    inner: S,
    /// A write was handed to `inner` and not flushed yet.
    unflushed: bool,
}

impl<S> ChunkedStream<S> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            unflushed: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ChunkedStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ChunkedStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.unflushed {
            ready!(self.as_mut().poll_flush(cx))?;
        }
        let chunk = &buf[..buf.len().min(MAX_CHUNK)];
        let n = ready!(Pin::new(&mut self.inner).poll_write(cx, chunk))?;
        self.unflushed = n > 0;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        self.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Flushed first, so that the end-of-stream flag is not coalesced with data.
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures::AsyncWriteExt;

    /// Behaves like a WebRTC stream's framing: writes are buffered, and a flush sends
    /// everything buffered as one data-channel message.
    #[derive(Default)]
    struct Channel {
        buffered: Vec<u8>,
        messages: Vec<Vec<u8>>,
        closed: bool,
    }

    impl AsyncRead for Channel {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(0))
        }
    }

    impl AsyncWrite for Channel {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.buffered.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            if !self.buffered.is_empty() {
                let message = std::mem::take(&mut self.buffered);
                self.messages.push(message);
            }
            Poll::Ready(Ok(()))
        }

        fn poll_close(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            assert!(self.buffered.is_empty(), "closed with unsent data");
            self.closed = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn large_writes_leave_as_small_messages() {
        let payload: Vec<u8> = (0..64 * 1024 + 5).map(|i| (i % 251) as u8).collect();
        let mut s = ChunkedStream::new(Channel::default());
        // A length prefix then a large body, as `frame::write_frame` writes them.
        s.write_all(&(payload.len() as u32).to_be_bytes())
            .await
            .unwrap();
        s.write_all(&payload).await.unwrap();
        s.close().await.unwrap();
        let ch = s.inner;
        assert!(ch.closed);
        // The prefix alone, then the body in full chunks and a last partial one.
        assert_eq!(ch.messages.len(), 1 + payload.len().div_ceil(MAX_CHUNK));
        assert!(ch.messages.iter().all(|m| m.len() <= MAX_CHUNK));
        let sent: Vec<u8> = ch.messages.concat();
        assert_eq!(&sent[..4], &(payload.len() as u32).to_be_bytes());
        assert_eq!(&sent[4..], &payload[..]);
    }
}
