//! The frames of `/kwaainet/averaging/1.0.0`: one binary header and one payload per frame,
//! checked before anything is allocated for the payload.
//!
//! ```text
//! magic "KWAV" | version u8 (1) | kind u8 | group key [u8; 16] | from u16 | part u16
//! | codec u8 | weight f32 | values u32 | payload length u32 | payload
//! ```
//!
//! All integers little-endian. `kind` is [`Kind::Part`] (a member's values of one part, sent
//! to that part's reducer), [`Kind::Reduced`] (a reducer's average of its part, sent back
//! to the members it averaged), [`Kind::StateAsk`] (a joining peer asks for the current
//! state under a key) or [`Kind::State`] (the answer: the whole vector). The payload holds
//! `values` numbers in `codec`'s format.

use futures::{AsyncRead, AsyncReadExt};
use kwaainet_core::codec::Codec;

/// The frame's first bytes.
pub const MAGIC: [u8; 4] = *b"KWAV";
/// The format version.
pub const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 4 + 1 + 1 + 16 + 2 + 2 + 1 + 4 + 4 + 4;

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A member's values of one part, for the part's reducer.
    Part,
    /// A reducer's average of its part, for the members it averaged.
    Reduced,
    /// A joining peer asks for the current state under the frame's key (no payload).
    StateAsk,
    /// The current state: the whole vector; `weight` carries its progress (samples trained),
    /// no values when there is none.
    State,
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    /// What it carries.
    pub kind: Kind,
    /// The round's group key.
    pub group: [u8; 16],
    /// The sender's index in the group, as the sender claims it (the receiver checks it
    /// against the peer the transport authenticated).
    pub from: u16,
    /// Which part.
    pub part: u16,
    /// The payload's codec.
    pub codec: Codec,
    /// For a part: the sender's weight (its samples); for a reduced part: the total weight.
    pub weight: f32,
    /// Values in the payload.
    pub values: u32,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not this protocol.
    #[error("not an averaging frame (bad magic)")]
    Magic,
    /// Another version.
    #[error("averaging frame version {0} (this peer speaks {VERSION})")]
    Version(u8),
    /// An unknown kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// An unknown codec.
    #[error("unknown codec {0}")]
    Codec(u8),
    /// The payload is larger than the receiver allows.
    #[error("payload of {got} bytes is over the limit of {limit}")]
    TooLarge {
        /// Bytes announced.
        got: usize,
        /// The limit.
        limit: usize,
    },
    /// Shorter than its header says.
    #[error("truncated frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// The stream failed.
    #[error("reading the frame: {0}")]
    Io(String),
    /// The receiver would not take a frame with this header.
    #[error("frame refused: {0}")]
    Refused(String),
}

fn codec_byte(c: Codec) -> u8 {
    match c {
        Codec::F32 => 0,
        Codec::F16 => 1,
        Codec::Q8_0 => 2,
        Codec::Blockwise8 => 3,
    }
}

fn codec_of(b: u8) -> Result<Codec, FrameError> {
    Ok(match b {
        0 => Codec::F32,
        1 => Codec::F16,
        2 => Codec::Q8_0,
        3 => Codec::Blockwise8,
        _ => return Err(FrameError::Codec(b)),
    })
}

/// The frame of `header` and `payload`.
pub fn encode(header: &Header, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(match header.kind {
        Kind::Part => 1,
        Kind::Reduced => 2,
        Kind::StateAsk => 3,
        Kind::State => 4,
    });
    out.extend_from_slice(&header.group);
    out.extend_from_slice(&header.from.to_le_bytes());
    out.extend_from_slice(&header.part.to_le_bytes());
    out.push(codec_byte(header.codec));
    out.extend_from_slice(&header.weight.to_le_bytes());
    out.extend_from_slice(&header.values.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The header at the start of `bytes` and the payload's announced length.
pub fn header(bytes: &[u8]) -> Result<(Header, usize), FrameError> {
    if bytes.len() < HEADER_LEN {
        return Err(FrameError::Truncated {
            got: bytes.len(),
            expected: HEADER_LEN,
        });
    }
    if bytes[..4] != MAGIC {
        return Err(FrameError::Magic);
    }
    if bytes[4] != VERSION {
        return Err(FrameError::Version(bytes[4]));
    }
    let kind = match bytes[5] {
        1 => Kind::Part,
        2 => Kind::Reduced,
        3 => Kind::StateAsk,
        4 => Kind::State,
        k => return Err(FrameError::Kind(k)),
    };
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut group = [0u8; 16];
    group.copy_from_slice(&bytes[6..22]);
    let header = Header {
        kind,
        group,
        from: u16_at(22),
        part: u16_at(24),
        codec: codec_of(bytes[26])?,
        weight: f32::from_bits(u32_at(27)),
        values: u32_at(31),
    };
    Ok((header, u32_at(35) as usize))
}

/// Splits a whole frame into its header and payload; the payload must be at most
/// `max_payload` bytes and exactly as long as announced.
pub fn decode(bytes: &[u8], max_payload: usize) -> Result<(Header, &[u8]), FrameError> {
    let (h, len) = header(bytes)?;
    if len > max_payload {
        return Err(FrameError::TooLarge {
            got: len,
            limit: max_payload,
        });
    }
    if bytes.len() != HEADER_LEN + len {
        return Err(FrameError::Truncated {
            got: bytes.len(),
            expected: HEADER_LEN + len,
        });
    }
    Ok((h, &bytes[HEADER_LEN..]))
}

/// Reads one frame from a stream: the header first, then a payload of at most
/// `max_payload` bytes (refused before it is read or allocated).
pub async fn read<R: AsyncRead + Unpin>(
    r: &mut R,
    max_payload: usize,
) -> Result<Vec<u8>, FrameError> {
    read_admitted(r, max_payload, |_, _| Ok(())).await
}

/// [`read`], asking `admit` about the header and the payload's length before the payload is
/// read: a refusal ends the read with [`FrameError::Refused`], nothing more read.
pub async fn read_admitted<R, F>(
    r: &mut R,
    max_payload: usize,
    admit: F,
) -> Result<Vec<u8>, FrameError>
where
    R: AsyncRead + Unpin,
    F: FnOnce(&Header, usize) -> Result<(), String>,
{
    let io = |e: std::io::Error| FrameError::Io(e.to_string());
    let mut frame = vec![0u8; HEADER_LEN];
    r.read_exact(&mut frame).await.map_err(io)?;
    let (h, len) = header(&frame)?;
    if len > max_payload {
        return Err(FrameError::TooLarge {
            got: len,
            limit: max_payload,
        });
    }
    admit(&h, len).map_err(FrameError::Refused)?;
    frame.resize(HEADER_LEN + len, 0);
    r.read_exact(&mut frame[HEADER_LEN..]).await.map_err(io)?;
    Ok(frame)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            kind: Kind::Reduced,
            group: [7; 16],
            from: 3,
            part: 3,
            codec: Codec::Blockwise8,
            weight: 12.5,
            values: 5,
        }
    }

    #[test]
    fn frames_round_trip_and_refuse_what_is_not_one() {
        let payload = [1u8, 2, 3];
        let f = encode(&sample(), &payload);
        assert_eq!(f.len(), HEADER_LEN + 3);
        let (h, p) = decode(&f, 3).unwrap();
        assert_eq!(h, sample());
        assert_eq!(p, payload);

        assert!(matches!(
            decode(&f, 2),
            Err(FrameError::TooLarge { got: 3, limit: 2 })
        ));
        assert!(matches!(
            decode(&f[..f.len() - 1], 9),
            Err(FrameError::Truncated { .. })
        ));
        assert!(matches!(
            decode(&f[..10], 9),
            Err(FrameError::Truncated { .. })
        ));
        let mut bad = f.clone();
        bad[0] = b'X';
        assert_eq!(decode(&bad, 9).unwrap_err(), FrameError::Magic);
        let mut bad = f.clone();
        bad[4] = 9;
        assert_eq!(decode(&bad, 9).unwrap_err(), FrameError::Version(9));
        let mut bad = f.clone();
        bad[5] = 0;
        assert_eq!(decode(&bad, 9).unwrap_err(), FrameError::Kind(0));
        let mut bad = f;
        bad[26] = 200;
        assert_eq!(decode(&bad, 9).unwrap_err(), FrameError::Codec(200));
    }

    #[tokio::test]
    async fn reading_refuses_an_oversized_payload_before_reading_it() {
        let f = encode(&sample(), &[0u8; 100]);
        let got = read(&mut &f[..], 100).await.unwrap();
        assert_eq!(got, f);
        // Only the header is there: a reader that tried to read the payload would fail with
        // Io, not TooLarge.
        let err = read(&mut &f[..HEADER_LEN], 99).await.unwrap_err();
        assert_eq!(
            err,
            FrameError::TooLarge {
                got: 100,
                limit: 99
            }
        );
        // A header the receiver refuses: nothing after it is read.
        let err = read_admitted(&mut &f[..HEADER_LEN], 100, |h, len| {
            assert_eq!((h.from, len), (3, 100));
            Err("not a member".into())
        })
        .await
        .unwrap_err();
        assert_eq!(err, FrameError::Refused("not a member".into()));
        let err = read(&mut &f[..HEADER_LEN + 5], 100).await.unwrap_err();
        assert!(matches!(err, FrameError::Io(_)));
    }
}
