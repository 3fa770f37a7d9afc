//! A GGUF file arriving in chunks (a download, a `Response` body in a browser), loaded
//! without ever holding the whole file in one buffer, nor twice in memory.
//!
//! [`GgufStream`] is created with the file's total size and fed its bytes in order, in chunks
//! of any size. It buffers the header until the GGUF reader can parse it (tried again each
//! time the buffered length doubles, so a multi-megabyte vocabulary costs O(n), not O(n²)),
//! then stores each tensor's bytes in a buffer of its own (padding between tensors is
//! dropped). [`GgufStream::finish`] hands the model loaders a reader over those buffers that
//! frees each tensor's bytes as soon as they have been read: the peak is the file plus its
//! largest tensor, where loading from one buffer holds the file and every loaded weight at
//! once. It also computes the file's SHA-256 on the way, so a host can verify a cached model
//! without a second pass over it.
//!
//! Every error is a [`StreamError`] of a [`StreamErrorKind`]: `Malformed` (more or fewer
//! bytes than announced, a header that does not parse, a tensor past the end), `OutOfMemory`
//! (an allocation failed: in a browser, wasm memory is exhausted), `InvalidArgument`, `Used`
//! (a call after an error or after `finish`). After an error the stream is dead and repeats
//! it.

use std::io::{self, Read, Seek, SeekFrom};

use sha2::{Digest, Sha256};

use crate::gguf::{Gguf, GgufError};

/// The buffered header is first parsed at this length, then each time it doubles.
const FIRST_HEADER_TRY: usize = 1 << 20;
/// A header (metadata and tensor directory) larger than this is refused: real ones are a few
/// MiB (a 150k-token vocabulary with its merges), and the reader has its own limits inside.
const MAX_HEADER_BYTES: usize = 256 << 20;

/// What went wrong with a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamErrorKind {
    /// The bytes are not a loadable GGUF of the announced size.
    Malformed,
    /// An allocation failed.
    OutOfMemory,
    /// A bad argument (a size of 0).
    InvalidArgument,
    /// A call after an error or after `finish`, or bytes out of order.
    Used,
}

/// A stream's error: its kind and what happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    /// What kind of failure.
    pub kind: StreamErrorKind,
    /// What happened, for people.
    pub message: String,
}

fn err(kind: StreamErrorKind, message: impl Into<String>) -> StreamError {
    StreamError {
        kind,
        message: message.into(),
    }
}

impl From<StreamError> for crate::Error {
    fn from(e: StreamError) -> Self {
        match e.kind {
            StreamErrorKind::Malformed => Self::Gguf(GgufError::Other(e.message)),
            StreamErrorKind::OutOfMemory => {
                Self::Io(io::Error::new(io::ErrorKind::OutOfMemory, e.message))
            }
            StreamErrorKind::InvalidArgument | StreamErrorKind::Used => {
                Self::InvalidArgument(e.message)
            }
        }
    }
}

/// One tensor's bytes, filled as the stream passes over them.
#[derive(Debug)]
struct Segment {
    /// Absolute offset in the file.
    offset: u64,
    len: usize,
    /// Allocated when the stream reaches the tensor; emptied once the model loader read it.
    data: Vec<u8>,
    /// How far the model loader has read.
    read: usize,
    freed: bool,
}

impl Segment {
    fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

#[derive(Debug)]
enum State {
    /// Before the header parses: every byte so far.
    Header { buf: Vec<u8>, next_try: usize },
    /// The header parsed: tensors sorted by offset; `filling` indexes the first one that is
    /// not complete yet.
    Data {
        gguf: Box<Gguf>,
        segments: Vec<Segment>,
        filling: usize,
    },
    /// After an error or `take`: every call fails.
    Done,
}

/// A GGUF file arriving in chunks. See the module documentation.
pub struct GgufStream {
    total: u64,
    received: u64,
    state: State,
    hasher: Sha256,
    /// The error that ended the stream, repeated by later calls.
    failed: Option<StreamError>,
}

impl std::fmt::Debug for GgufStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufStream")
            .field("total", &self.total)
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

/// The parsed header and a reader over the tensors' bytes: what [`GgufStream::finish`]
/// hands to the model loaders.
#[derive(Debug)]
pub struct Streamed {
    pub gguf: Gguf,
    pub reader: SegmentReader,
    /// The file's size in bytes.
    pub size: u64,
}

impl GgufStream {
    /// A stream for a file of `total` bytes (at least 1).
    pub fn new(total: u64) -> Result<Self, StreamError> {
        if total == 0 {
            return Err(err(
                StreamErrorKind::InvalidArgument,
                "the GGUF size must be at least 1 byte",
            ));
        }
        Ok(Self {
            total,
            received: 0,
            state: State::Header {
                buf: Vec::new(),
                next_try: FIRST_HEADER_TRY,
            },
            hasher: Sha256::new(),
            failed: None,
        })
    }

    /// Bytes pushed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The file's size, as given to [`GgufStream::new`].
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Whether the header has been parsed.
    pub fn header_parsed(&self) -> bool {
        matches!(self.state, State::Data { .. })
    }

    /// Feeds the next bytes of the file. After an error the loader is dead: every later call
    /// returns the same error.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = self.push_inner(chunk);
        if let Err(e) = &r {
            self.fail(e.clone());
        }
        r
    }

    fn fail(&mut self, e: StreamError) {
        self.failed = Some(e);
        // Release what was buffered now: the caller may not free the loader at once.
        self.state = State::Done;
    }

    fn push_inner(&mut self, chunk: &[u8]) -> Result<(), StreamError> {
        let at = self.received;
        let end = at
            .checked_add(chunk.len() as u64)
            .filter(|&e| e <= self.total)
            .ok_or_else(|| {
                err(
                    StreamErrorKind::Malformed,
                    format!(
                        "the stream holds more than the {} bytes announced ({} + {})",
                        self.total,
                        at,
                        chunk.len()
                    ),
                )
            })?;
        self.hasher.update(chunk);
        self.received = end;
        match &mut self.state {
            State::Header { buf, next_try } => {
                try_reserve(buf, chunk.len(), "the GGUF header")?;
                buf.extend_from_slice(chunk);
                let complete = self.received == self.total;
                if buf.len() >= *next_try || complete {
                    *next_try = buf.len().saturating_mul(2);
                    self.try_header()?;
                }
                Ok(())
            }
            State::Data {
                segments, filling, ..
            } => fill(segments, filling, at, chunk),
            State::Done => Err(err(StreamErrorKind::Used, "the loader was already used")),
        }
    }

    /// Parses the buffered header; on success moves to [`State::Data`] and files the bytes
    /// already buffered past it.
    fn try_header(&mut self) -> Result<(), StreamError> {
        let State::Header { buf, .. } = &mut self.state else {
            return Ok(());
        };
        let mut prefix = Prefix {
            data: buf,
            total: self.total,
            pos: 0,
            short: false,
        };
        let gguf = match Gguf::read(&mut prefix) {
            Ok(g) => g,
            Err(_) if prefix.short && buf.len() < MAX_HEADER_BYTES => return Ok(()), // wait
            Err(_) if prefix.short => {
                return Err(err(
                    StreamErrorKind::Malformed,
                    format!("the GGUF header is larger than {MAX_HEADER_BYTES} bytes"),
                ));
            }
            Err(e) => {
                return Err(err(
                    StreamErrorKind::Malformed,
                    format!("malformed GGUF: {e}"),
                ));
            }
        };
        let mut segments = Vec::with_capacity(gguf.tensors.len());
        for t in &gguf.tensors {
            let end = t.offset.checked_add(t.n_bytes as u64);
            if end.is_none_or(|e| e > self.total) {
                return Err(err(
                    StreamErrorKind::Malformed,
                    format!(
                        "tensor '{}' ({} bytes at offset {}) runs past the end of the {}-byte file",
                        t.name, t.n_bytes, t.offset, self.total
                    ),
                ));
            }
            segments.push(Segment {
                offset: t.offset,
                len: t.n_bytes,
                data: Vec::new(),
                read: 0,
                freed: false,
            });
        }
        segments.sort_by_key(|s| s.offset);
        if let Some(w) = segments.windows(2).find(|w| w[0].end() > w[1].offset) {
            return Err(err(
                StreamErrorKind::Malformed,
                format!(
                    "tensor data overlaps (bytes {}..{} and {}..{})",
                    w[0].offset,
                    w[0].end(),
                    w[1].offset,
                    w[1].end()
                ),
            ));
        }
        let buffered = std::mem::take(buf);
        let mut filling = 0;
        fill(&mut segments, &mut filling, 0, &buffered)?;
        drop(buffered);
        self.state = State::Data {
            gguf: Box::new(gguf),
            segments,
            filling,
        };
        Ok(())
    }

    /// The SHA-256 of the bytes pushed, lower-case hex; only once the whole file is in.
    pub fn sha256(&self) -> Result<String, StreamError> {
        if self.received != self.total {
            return Err(err(
                StreamErrorKind::Malformed,
                format!(
                    "the SHA-256 needs the whole file: {} of {} bytes pushed",
                    self.received, self.total
                ),
            ));
        }
        let digest = self.hasher.clone().finalize();
        Ok(digest.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Ends the stream: the parsed header and a reader over the tensors. Fails when bytes
    /// are missing or the header never parsed. The loader is used up either way.
    pub fn finish(&mut self) -> Result<Streamed, StreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        if self.received != self.total {
            let e = err(
                StreamErrorKind::Malformed,
                format!(
                    "the stream ended after {} of the {} bytes announced",
                    self.received, self.total
                ),
            );
            self.fail(e.clone());
            return Err(e);
        }
        match std::mem::replace(&mut self.state, State::Done) {
            State::Data { gguf, segments, .. } => Ok(Streamed {
                gguf: *gguf,
                reader: SegmentReader {
                    segments,
                    total: self.total,
                    pos: 0,
                },
                size: self.total,
            }),
            // Not reached: the push that completes the file parses the header or fails (with
            // every byte buffered, the parser cannot run short of them).
            State::Header { .. } => Err(err(
                StreamErrorKind::Malformed,
                "the GGUF header did not parse",
            )),
            State::Done => Err(err(StreamErrorKind::Used, "the loader was already used")),
        }
    }
}

fn try_reserve(v: &mut Vec<u8>, extra: usize, what: &str) -> Result<(), StreamError> {
    v.try_reserve_exact(extra).map_err(|_| {
        err(
            StreamErrorKind::OutOfMemory,
            format!("out of memory: {extra} more bytes for {what} could not be allocated"),
        )
    })
}

/// Copies `chunk` (the bytes at `at..`) into the segments it covers, from `filling` on.
fn fill(
    segments: &mut [Segment],
    filling: &mut usize,
    at: u64,
    chunk: &[u8],
) -> Result<(), StreamError> {
    let end = at + chunk.len() as u64;
    // Bounded: each pass either completes a segment (advancing `filling`) or uses the rest
    // of the chunk.
    while let Some(s) = segments.get_mut(*filling) {
        if s.end() <= at {
            *filling += 1; // a zero-length tensor, or one before this chunk
            continue;
        }
        if s.offset >= end {
            break; // padding, or the chunk ends before this tensor
        }
        let from = s.offset.max(at);
        let to = s.end().min(end);
        if s.data.capacity() == 0 && s.len > 0 {
            try_reserve(&mut s.data, s.len, "a tensor")?;
        }
        let filled = (from - s.offset) as usize;
        if filled != s.data.len() {
            return Err(err(StreamErrorKind::Used, "stream bytes out of order"));
        }
        s.data
            .extend_from_slice(&chunk[(from - at) as usize..(to - at) as usize]);
        if s.data.len() == s.len {
            *filling += 1;
        } else {
            break; // the chunk ended inside this tensor
        }
    }
    Ok(())
}

/// The buffered start of the file as a `Read + Seek` of the whole file's length; reading
/// past the buffered bytes fails and sets `short` (more bytes may fix it).
struct Prefix<'a> {
    data: &'a [u8],
    total: u64,
    pos: u64,
    short: bool,
}

impl Read for Prefix<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.total {
            return Ok(0);
        }
        let have = self.data.len() as u64;
        if self.pos >= have {
            self.short = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "more bytes are needed",
            ));
        }
        let n = ((have - self.pos) as usize).min(out.len());
        let start = self.pos as usize;
        out[..n].copy_from_slice(&self.data[start..start + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Prefix<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(to, self.pos, self.total)?;
        Ok(self.pos)
    }
}

fn seek_to(to: SeekFrom, pos: u64, len: u64) -> io::Result<u64> {
    let p = match to {
        SeekFrom::Start(p) => Some(p),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek out of range"))
}

/// The tensors' bytes as a `Read + Seek` of the whole file. Reads must fall inside one
/// tensor; a tensor's bytes are freed once read to the end (each is read once).
#[derive(Debug)]
pub struct SegmentReader {
    segments: Vec<Segment>,
    total: u64,
    pos: u64,
}

impl Read for SegmentReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.total {
            return Ok(0);
        }
        let i = self
            .segments
            .partition_point(|s| s.end() <= self.pos)
            .min(self.segments.len());
        let Some(s) = self.segments.get_mut(i).filter(|s| s.offset <= self.pos) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("byte {} is not in any tensor", self.pos),
            ));
        };
        if s.freed {
            return Err(io::Error::other(format!(
                "tensor at byte {} was already read (the streaming loader keeps each tensor until read once)",
                s.offset
            )));
        }
        let off = (self.pos - s.offset) as usize;
        let n = (s.len - off).min(out.len());
        out[..n].copy_from_slice(&s.data[off..off + n]);
        self.pos += n as u64;
        s.read = s.read.max(off + n);
        if s.read == s.len {
            s.data = Vec::new();
            s.freed = true;
        }
        Ok(n)
    }
}

impl Seek for SegmentReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(to, self.pos, self.total)?;
        Ok(self.pos)
    }
}

/// For tests and the bytes path: the whole file from one buffer, pushed in `chunk` pieces.
pub fn load_in_chunks(bytes: &[u8], chunk: usize) -> Result<Streamed, StreamError> {
    let mut l = GgufStream::new(bytes.len() as u64)?;
    for c in bytes.chunks(chunk.max(1)) {
        l.push(c)?;
    }
    l.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A tiny valid GGUF: one f32 tensor of 4 values, plus padding.
    fn tiny() -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(b"GGUF");
        f.extend_from_slice(&3u32.to_le_bytes()); // version
        f.extend_from_slice(&1u64.to_le_bytes()); // tensors
        f.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        f.extend_from_slice(&(key.len() as u64).to_le_bytes());
        f.extend_from_slice(key);
        f.extend_from_slice(&8u32.to_le_bytes()); // string
        f.extend_from_slice(&5u64.to_le_bytes());
        f.extend_from_slice(b"llama");
        let name = b"t";
        f.extend_from_slice(&(name.len() as u64).to_le_bytes());
        f.extend_from_slice(name);
        f.extend_from_slice(&1u32.to_le_bytes()); // n_dims
        f.extend_from_slice(&4u64.to_le_bytes()); // dim
        f.extend_from_slice(&0u32.to_le_bytes()); // f32
        f.extend_from_slice(&0u64.to_le_bytes()); // offset in the data section
        while f.len() % 32 != 0 {
            f.push(0);
        }
        for v in [1.0f32, 2.0, 3.0, 4.0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f
    }

    #[test]
    fn chunks_of_any_size_give_the_same_tensor() {
        let file = tiny();
        for chunk in [1, 3, 7, 32, 1000] {
            let mut s = load_in_chunks(&file, chunk).unwrap();
            let t = s.gguf.tensor("t").unwrap().clone();
            let v = s.gguf.read_tensor_f32(&mut s.reader, &t).unwrap();
            assert_eq!(v, [1.0, 2.0, 3.0, 4.0]);
            // Read once: the bytes are gone.
            assert!(s.gguf.read_tensor(&mut s.reader, &t).is_err());
        }
    }

    #[test]
    fn sha256_of_the_stream() {
        let mut l = GgufStream::new(3).unwrap();
        assert_eq!(l.sha256().unwrap_err().kind, StreamErrorKind::Malformed);
        l.push(b"a").unwrap();
        // Not a GGUF, but the hash does not care; the header fails only at the end.
        let e = l.push(b"bc").unwrap_err();
        assert_eq!(e.kind, StreamErrorKind::Malformed, "{e}");
        assert_eq!(
            l.sha256().unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn overflow_underflow_and_garbage_are_errors() {
        let file = tiny();
        let mut l = GgufStream::new((file.len() - 1) as u64).unwrap();
        let e = l.push(&file).unwrap_err();
        assert!(e.message.contains("more than"), "{e}");
        // Dead after an error.
        assert_eq!(l.push(b"x").unwrap_err(), e);

        let mut l = GgufStream::new((file.len() + 10) as u64).unwrap();
        l.push(&file).unwrap();
        let e = l.finish().unwrap_err();
        assert!(e.message.contains("ended after"), "{e}");
        assert_eq!(l.finish().unwrap_err().kind, StreamErrorKind::Malformed);
        // Used up by a successful finish too.
        let mut l = GgufStream::new(file.len() as u64).unwrap();
        l.push(&file).unwrap();
        l.finish().unwrap();
        assert_eq!(l.finish().unwrap_err().kind, StreamErrorKind::Used);

        let mut l = GgufStream::new(8).unwrap();
        let e = l.push(b"NOTGGUF!").unwrap_err();
        assert_eq!(e.kind, StreamErrorKind::Malformed, "{e}");

        assert_eq!(
            GgufStream::new(0).unwrap_err().kind,
            StreamErrorKind::InvalidArgument
        );
    }

    #[test]
    fn a_tensor_past_the_end_is_an_error() {
        let mut file = tiny();
        file.truncate(file.len() - 4);
        let mut l = GgufStream::new(file.len() as u64).unwrap();
        let e = l.push(&file).unwrap_err();
        assert_eq!(e.kind, StreamErrorKind::Malformed, "{e}");
    }
}
