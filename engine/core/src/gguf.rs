//! GGUF (v2, v3) reader: metadata, tensor directory and tensor bytes, from any `Read + Seek`.
//!
//! A GGUF file is a little-endian header (`"GGUF"`, version, tensor count, key/value count),
//! the metadata key/value pairs, the tensor directory (name, dims, type, offset relative to
//! the data section), then the tensor data, starting at the first multiple of
//! `general.alignment` (default 32) after the directory.
//!
//! The file is untrusted input. Every count and length is checked against a named cap (the
//! `MAX_*` constants) and against the bytes actually left in the file *before* anything is
//! allocated for it, all size arithmetic is checked, and each tensor's byte range must lie
//! inside the file at an aligned offset. A crafted or truncated file yields a [`GgufError`],
//! never a panic or an oversized allocation.
//!
//! ```no_run
//! # fn main() -> kwaainet_core::Result<()> {
//! use kwaainet_core::gguf::Gguf;
//!
//! let mut file = std::fs::File::open("model.gguf")?;
//! let gguf = Gguf::read(&mut file)?;
//! let layers = gguf.get_u32("llama.block_count")?;
//! let tokens = gguf.get_str_array("tokenizer.ggml.tokens")?;
//! if let Some(t) = gguf.tensor("blk.0.attn_q.weight") {
//!     let weights: Vec<f32> = gguf.read_tensor_f32(&mut file, t)?;
//! }
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::io::{self, BufReader, Read, Seek, SeekFrom};

use crate::quant::{self, GgmlType};

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Longest string (key, value, tensor name) accepted, in bytes. Chat templates are the
/// longest strings in practice, at tens of KiB.
pub const MAX_STRING_LEN: u64 = 1 << 20;
/// Most elements in one metadata array. Vocabularies and merge lists are the largest, at a
/// few hundred thousand entries.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most array elements across all metadata. Each decoded [`Value`] costs 32 bytes of memory
/// whatever its encoded size, so this bounds what a file full of one-byte elements can make
/// the reader allocate (512 MiB).
pub const MAX_METADATA_VALUES: u64 = 1 << 24;
/// Deepest nesting of arrays (an array of arrays is depth 2). Bounds reader recursion.
pub const MAX_ARRAY_DEPTH: usize = 4;
/// Most metadata key/value pairs.
pub const MAX_KV_COUNT: u64 = 65_536;
/// Most tensors in the directory.
pub const MAX_TENSOR_COUNT: u64 = 65_536;
/// Most dimensions per tensor (GGML_MAX_DIMS).
pub const MAX_DIMS: usize = 4;

/// Metadata reads go through a buffer of this size: a vocabulary is ~100k small strings, and
/// one syscall each would dominate load time on an unbuffered `File`.
const READ_BUFFER_LEN: usize = 64 * 1024;

/// Why a GGUF file was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// Free-form error for checks layered on top of the reader.
    #[error("{0}")]
    Other(String),
    /// The underlying reader failed (other than by ending early).
    #[error("I/O error while reading GGUF: {0}")]
    Io(#[from] io::Error),
    /// The file does not start with `"GGUF"`.
    #[error("not a GGUF file: expected magic \"GGUF\", found {0:02x?}")]
    BadMagic([u8; 4]),
    /// A big-endian GGUF file (the version field reads byte-swapped).
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    /// A format version other than 2 or 3.
    #[error(
        "GGUF version {0} is not supported (this reader handles versions 2 and 3; re-convert the model with a recent llama.cpp)"
    )]
    UnsupportedVersion(u32),
    /// The file ends before a field that the header says is there.
    #[error("file is truncated: {what} at byte {offset} runs past the end of the file")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where the field starts.
        offset: u64,
    },
    /// A count or length is larger than the reader's safety cap.
    #[error("{what} is {value}, above the safety limit of {limit}")]
    LimitExceeded {
        /// What was being counted.
        what: &'static str,
        /// The value found in the file.
        value: u64,
        /// The cap it exceeds.
        limit: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The string being read.
        what: &'static str,
        /// Where the string (its length prefix) starts.
        offset: u64,
    },
    /// A metadata value type id outside the GGUF specification.
    #[error("metadata key '{key}' has unknown value type {value_type}")]
    UnknownValueType {
        /// The key whose value (or array element) has this type.
        key: String,
        /// The type id found.
        value_type: u32,
    },
    /// The same metadata key appears twice.
    #[error("metadata key '{0}' appears more than once")]
    DuplicateKey(String),
    /// `general.alignment` is zero or not a power of two.
    #[error("general.alignment must be a non-zero power of two, found {0}")]
    BadAlignment(u64),
    /// A tensor type id that GGML does not define.
    #[error("unknown GGML tensor type id {0}")]
    UnknownTensorType(u32),
    /// A tensor type GGML defines but this engine cannot decode.
    #[error(
        "tensor '{tensor}' uses type {type_name}, which this engine does not support (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)"
    )]
    UnsupportedTensorType {
        /// The tensor's name.
        tensor: String,
        /// GGML's name for the type.
        type_name: &'static str,
    },
    /// The element count or byte size of a tensor overflows.
    #[error("tensor '{tensor}' has shape {shape:?}, whose size overflows")]
    ShapeOverflow {
        /// The tensor's name.
        tensor: String,
        /// Its dimensions as stored.
        shape: Vec<u64>,
    },
    /// A tensor's rows are not a whole number of its type's blocks.
    #[error(
        "tensor '{tensor}' of type {dtype} has shape {shape:?}: the row length must be a multiple of {}",
        dtype.block_size()
    )]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// Its dimensions.
        shape: Vec<usize>,
        /// Its storage type.
        dtype: GgmlType,
    },
    /// A tensor's data does not lie inside the file.
    #[error(
        "tensor '{tensor}' ({n_bytes} bytes at offset {offset}) extends past the end of the file ({file_len} bytes)"
    )]
    TensorOutOfBounds {
        /// The tensor's name.
        tensor: String,
        /// Absolute offset of its data (saturated if it overflowed).
        offset: u64,
        /// Its size in bytes.
        n_bytes: u64,
        /// The file length.
        file_len: u64,
    },
    /// A tensor's data offset is not a multiple of the file's alignment.
    #[error(
        "tensor '{tensor}' data offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        /// The tensor's name.
        tensor: String,
        /// Its offset relative to the data section.
        offset: u64,
        /// `general.alignment`.
        alignment: u64,
    },
    /// Two tensors share a name.
    #[error("tensor '{0}' appears more than once")]
    DuplicateTensor(String),
    /// A required metadata key is absent.
    #[error("metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata value has a type the caller cannot use.
    #[error("metadata key '{key}' should be {expected}, found {found}")]
    WrongType {
        /// The key.
        key: String,
        /// What the caller asked for.
        expected: &'static str,
        /// What the file holds.
        found: &'static str,
    },
}

/// A metadata value.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF name of this value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F32(_) => "f32",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }

    /// Any integer that is non-negative, widened to `u64`. Converters disagree on integer
    /// widths (a context length may be stored as u32, i32 or u64), so accept all losslessly.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in `u32`.
    pub fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    /// Any integer that fits in `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// A float (`f64` is narrowed, as GGUF hyper-parameters are used at `f32`).
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => None,
        }
    }

    /// A boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// A string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// An array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// One entry of the tensor directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGML order: `shape[0]` is the contiguous (row) length.
    pub shape: Vec<usize>,
    /// Storage type.
    pub dtype: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    /// Size of the tensor data in bytes.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// Number of elements (product of `shape`). The reader has checked that this does not
    /// overflow; for a hand-built `TensorInfo` it saturates rather than wrapping.
    pub fn n_elements(&self) -> usize {
        self.shape
            .iter()
            .fold(1usize, |acc, &d| acc.saturating_mul(d))
    }
}

/// A parsed GGUF header: metadata and tensor directory (tensor bytes stay in the file).
#[derive(Debug, Clone)]
pub struct Gguf {
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs, in file order.
    pub metadata: Vec<(String, Value)>,
    /// Tensor directory, in file order.
    pub tensors: Vec<TensorInfo>,
}

impl Gguf {
    /// Parses the header and tensor directory.
    ///
    /// Reads from the start of the stream whatever its current position, through an internal
    /// buffer (so a bare `File` is fine). Leaves the stream position unspecified.
    pub fn read<R: Read + Seek>(r: &mut R) -> Result<Self, GgufError> {
        let file_len = r.seek(SeekFrom::End(0))?;
        r.seek(SeekFrom::Start(0))?;
        let mut input = Input {
            inner: BufReader::with_capacity(READ_BUFFER_LEN, r),
            pos: 0,
            len: file_len,
            values_left: MAX_METADATA_VALUES,
        };
        let gguf = parse(&mut input)?;
        tracing::debug!(
            version = gguf.version,
            kv_count = gguf.metadata.len(),
            tensor_count = gguf.tensors.len(),
            file_len,
            "parsed GGUF header"
        );
        Ok(gguf)
    }

    /// Metadata lookup.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Tensor lookup.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Metadata lookup that fails with [`GgufError::MissingKey`].
    pub fn get_value(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key)
            .ok_or_else(|| GgufError::MissingKey(key.to_owned()))
    }

    /// A required unsigned integer (any integer type whose value fits).
    pub fn get_u32(&self, key: &str) -> Result<u32, GgufError> {
        typed(key, self.get_value(key)?, "u32", Value::as_u32)
    }

    /// An optional unsigned integer; a present value of the wrong type is still an error.
    pub fn get_u32_or(&self, key: &str, default: u32) -> Result<u32, GgufError> {
        self.get(key)
            .map_or(Ok(default), |v| typed(key, v, "u32", Value::as_u32))
    }

    /// A required unsigned 64-bit integer (any integer type whose value is non-negative).
    pub fn get_u64(&self, key: &str) -> Result<u64, GgufError> {
        typed(key, self.get_value(key)?, "u64", Value::as_u64)
    }

    /// A required float (`f32` or `f64`).
    pub fn get_f32(&self, key: &str) -> Result<f32, GgufError> {
        typed(key, self.get_value(key)?, "f32", Value::as_f32)
    }

    /// An optional float; a present value of the wrong type is still an error.
    pub fn get_f32_or(&self, key: &str, default: f32) -> Result<f32, GgufError> {
        self.get(key)
            .map_or(Ok(default), |v| typed(key, v, "f32", Value::as_f32))
    }

    /// A required boolean.
    pub fn get_bool(&self, key: &str) -> Result<bool, GgufError> {
        typed(key, self.get_value(key)?, "bool", Value::as_bool)
    }

    /// An optional boolean; a present value of the wrong type is still an error.
    pub fn get_bool_or(&self, key: &str, default: bool) -> Result<bool, GgufError> {
        self.get(key)
            .map_or(Ok(default), |v| typed(key, v, "bool", Value::as_bool))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str, GgufError> {
        typed(key, self.get_value(key)?, "string", Value::as_str)
    }

    /// A required array of any element type.
    pub fn get_array(&self, key: &str) -> Result<&[Value], GgufError> {
        typed(key, self.get_value(key)?, "array", Value::as_array)
    }

    /// A required array of strings (a vocabulary, a merge list).
    pub fn get_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let items = self.get_array(key)?;
        items
            .iter()
            .map(|v| typed(key, v, "array of strings", Value::as_str))
            .collect()
    }

    /// The data-section alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.get("general.alignment")
            .and_then(Value::as_u64)
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Reads one tensor's bytes: one seek and one read of exactly `t.n_bytes`.
    pub fn read_tensor<R: Read + Seek>(
        &self,
        r: &mut R,
        t: &TensorInfo,
    ) -> Result<Vec<u8>, GgufError> {
        // Re-check against the current file length before allocating: `t` may be hand-built,
        // or the file may have been replaced since the header was read.
        let file_len = r.seek(SeekFrom::End(0))?;
        let n_bytes = t.n_bytes as u64;
        if t.offset
            .checked_add(n_bytes)
            .is_none_or(|end| end > file_len)
        {
            return Err(GgufError::TensorOutOfBounds {
                tensor: t.name.clone(),
                offset: t.offset,
                n_bytes,
                file_len,
            });
        }
        r.seek(SeekFrom::Start(t.offset))?;
        let mut buf = Vec::new();
        buf.try_reserve_exact(t.n_bytes)
            .map_err(|e| GgufError::Io(io::Error::new(io::ErrorKind::OutOfMemory, e)))?;
        r.take(n_bytes).read_to_end(&mut buf)?;
        if buf.len() != t.n_bytes {
            return Err(GgufError::Truncated {
                what: "tensor data",
                offset: t.offset + buf.len() as u64,
            });
        }
        Ok(buf)
    }

    /// Reads one tensor and dequantizes it to `f32` (`t.n_elements()` values).
    pub fn read_tensor_f32<R: Read + Seek>(
        &self,
        r: &mut R,
        t: &TensorInfo,
    ) -> crate::Result<Vec<f32>> {
        let n = t.n_elements();
        // Check the shape against the byte size before allocating `n` floats.
        if t.dtype.row_bytes(n) != Some(t.n_bytes) {
            return Err(crate::Error::InvalidArgument(format!(
                "tensor '{}': shape {:?} of {} does not match its {} bytes",
                t.name, t.shape, t.dtype, t.n_bytes
            )));
        }
        let bytes = self.read_tensor(r, t)?;
        let mut out = vec![0f32; n];
        quant::dequantize(t.dtype, &bytes, &mut out)?;
        Ok(out)
    }
}

fn typed<'a, T>(
    key: &str,
    v: &'a Value,
    expected: &'static str,
    get: impl FnOnce(&'a Value) -> Option<T>,
) -> Result<T, GgufError> {
    get(v).ok_or_else(|| GgufError::WrongType {
        key: key.to_owned(),
        expected,
        found: v.type_name(),
    })
}

// GGUF metadata value type ids (gguf_type in gguf.h).
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Fewest bytes a value of type `ty` occupies, used to reject counts the rest of the file
/// cannot possibly hold before allocating for them. `None` for unknown types.
fn min_encoded_len(ty: u32) -> Option<u64> {
    Some(match ty {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 | T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

/// Smallest encoded key/value pair: empty key (8), type (4), one-byte value.
const MIN_KV_LEN: u64 = 8 + 4 + 1;
/// Smallest encoded tensor entry: empty name (8), n_dims (4), type (4), offset (8).
const MIN_TENSOR_ENTRY_LEN: u64 = 8 + 4 + 4 + 8;

/// A little-endian cursor over the header that knows how many bytes the file has left.
struct Input<R> {
    inner: R,
    pos: u64,
    len: u64,
    /// Remaining budget of metadata array elements ([`MAX_METADATA_VALUES`]).
    values_left: u64,
}

impl<R: Read> Input<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn ensure(&self, n: u64, what: &'static str) -> Result<(), GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what,
                offset: self.pos,
            });
        }
        Ok(())
    }

    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), GgufError> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => GgufError::Truncated {
                what,
                offset: self.pos,
            },
            _ => GgufError::Io(e),
        })?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], GgufError> {
        self.ensure(N as u64, what)?;
        let mut b = [0u8; N];
        self.fill(&mut b, what)?;
        Ok(b)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, GgufError> {
        self.bytes(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, GgufError> {
        self.bytes(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &'static str) -> Result<String, GgufError> {
        let start = self.pos;
        let n = self.u64(what)?;
        if n > MAX_STRING_LEN {
            return Err(GgufError::LimitExceeded {
                what: "string length",
                value: n,
                limit: MAX_STRING_LEN,
            });
        }
        self.ensure(n, what)?;
        // n <= MAX_STRING_LEN, so this fits in usize even on 32-bit targets.
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf, what)?;
        String::from_utf8(buf).map_err(|_| GgufError::InvalidUtf8 {
            what,
            offset: start,
        })
    }

    fn value(&mut self, ty: u32, depth: usize, key: &str) -> Result<Value, GgufError> {
        const W: &str = "metadata value";
        Ok(match ty {
            T_U8 => Value::U8(u8::from_le_bytes(self.bytes(W)?)),
            T_I8 => Value::I8(i8::from_le_bytes(self.bytes(W)?)),
            T_U16 => Value::U16(u16::from_le_bytes(self.bytes(W)?)),
            T_I16 => Value::I16(i16::from_le_bytes(self.bytes(W)?)),
            T_U32 => Value::U32(u32::from_le_bytes(self.bytes(W)?)),
            T_I32 => Value::I32(i32::from_le_bytes(self.bytes(W)?)),
            T_U64 => Value::U64(u64::from_le_bytes(self.bytes(W)?)),
            T_I64 => Value::I64(i64::from_le_bytes(self.bytes(W)?)),
            T_F32 => Value::F32(f32::from_le_bytes(self.bytes(W)?)),
            T_F64 => Value::F64(f64::from_le_bytes(self.bytes(W)?)),
            // The spec says 0 or 1; llama.cpp reads the byte as a C bool, so any non-zero
            // byte is true there and we accept files it accepts.
            T_BOOL => Value::Bool(self.bytes::<1>(W)?[0] != 0),
            T_STRING => Value::String(self.string("metadata string")?),
            T_ARRAY => self.array(depth + 1, key)?,
            _ => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_owned(),
                    value_type: ty,
                });
            }
        })
    }

    /// An array at nesting level `depth` (1 for an array that is a key's value).
    fn array(&mut self, depth: usize, key: &str) -> Result<Value, GgufError> {
        if depth > MAX_ARRAY_DEPTH {
            return Err(GgufError::LimitExceeded {
                what: "metadata array nesting depth",
                value: depth as u64,
                limit: MAX_ARRAY_DEPTH as u64,
            });
        }
        let elem_ty = self.u32("array element type")?;
        let n = self.u64("array length")?;
        let min_len = min_encoded_len(elem_ty).ok_or_else(|| GgufError::UnknownValueType {
            key: key.to_owned(),
            value_type: elem_ty,
        })?;
        if n > MAX_ARRAY_LEN {
            return Err(GgufError::LimitExceeded {
                what: "metadata array length",
                value: n,
                limit: MAX_ARRAY_LEN,
            });
        }
        if n > self.values_left {
            return Err(GgufError::LimitExceeded {
                what: "total number of metadata array elements",
                value: MAX_METADATA_VALUES - self.values_left + n,
                limit: MAX_METADATA_VALUES,
            });
        }
        self.ensure(n.saturating_mul(min_len), "array elements")?;
        self.values_left -= n;
        // n <= MAX_ARRAY_LEN and the file holds at least n elements, so this is bounded.
        let mut items = Vec::with_capacity(n as usize);
        for _ in 0..n {
            items.push(self.value(elem_ty, depth, key)?);
        }
        Ok(Value::Array(items))
    }
}

fn parse<R: Read>(input: &mut Input<R>) -> Result<Gguf, GgufError> {
    let magic: [u8; 4] = input.bytes("magic")?;
    if magic != MAGIC {
        return Err(GgufError::BadMagic(magic));
    }
    let version = input.u32("version")?;
    match version {
        2 | 3 => {}
        // A big-endian writer stores the version byte-swapped.
        v if matches!(v.swap_bytes(), 2 | 3) => return Err(GgufError::BigEndian),
        v => return Err(GgufError::UnsupportedVersion(v)),
    }
    let tensor_count = input.u64("tensor count")?;
    let kv_count = input.u64("metadata key/value count")?;
    if tensor_count > MAX_TENSOR_COUNT {
        return Err(GgufError::LimitExceeded {
            what: "tensor count",
            value: tensor_count,
            limit: MAX_TENSOR_COUNT,
        });
    }
    if kv_count > MAX_KV_COUNT {
        return Err(GgufError::LimitExceeded {
            what: "metadata key/value count",
            value: kv_count,
            limit: MAX_KV_COUNT,
        });
    }
    // Both counts are capped at 2^16, so these products cannot overflow.
    input.ensure(
        kv_count * MIN_KV_LEN + tensor_count * MIN_TENSOR_ENTRY_LEN,
        "metadata and tensor directory",
    )?;

    let metadata = read_metadata(input, kv_count)?;
    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((key, v)) => {
            let a = typed(key, v, "u32", Value::as_u64)?;
            if !a.is_power_of_two() {
                return Err(GgufError::BadAlignment(a));
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(tensor_count as usize);
    let mut names = HashSet::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let t = read_tensor_entry(input, alignment)?;
        if !names.insert(t.name.clone()) {
            return Err(GgufError::DuplicateTensor(t.name));
        }
        tensors.push(t);
    }

    // The directory is fully read; offsets so far are relative to the data section.
    let data_start = input.pos.checked_next_multiple_of(alignment);
    for t in &mut tensors {
        let n_bytes = t.n_bytes as u64;
        let start = data_start.and_then(|d| d.checked_add(t.offset));
        match start.and_then(|s| s.checked_add(n_bytes)) {
            Some(end) if end <= input.len => t.offset = end - n_bytes,
            _ => {
                return Err(GgufError::TensorOutOfBounds {
                    tensor: t.name.clone(),
                    offset: start.unwrap_or(u64::MAX),
                    n_bytes,
                    file_len: input.len,
                });
            }
        }
    }
    Ok(Gguf {
        version,
        metadata,
        tensors,
    })
}

fn read_metadata<R: Read>(
    input: &mut Input<R>,
    kv_count: u64,
) -> Result<Vec<(String, Value)>, GgufError> {
    let mut metadata = Vec::with_capacity(kv_count as usize);
    let mut keys = HashSet::with_capacity(kv_count as usize);
    for _ in 0..kv_count {
        let key = input.string("metadata key")?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey(key));
        }
        let ty = input.u32("metadata value type")?;
        let value = input.value(ty, 0, &key)?;
        metadata.push((key, value));
    }
    Ok(metadata)
}

/// Reads one directory entry; `offset` in the result is still relative to the data section.
fn read_tensor_entry<R: Read>(
    input: &mut Input<R>,
    alignment: u64,
) -> Result<TensorInfo, GgufError> {
    let name = input.string("tensor name")?;
    let n_dims = input.u32("tensor dimension count")?;
    if n_dims as usize > MAX_DIMS {
        return Err(GgufError::LimitExceeded {
            what: "tensor dimension count",
            value: n_dims.into(),
            limit: MAX_DIMS as u64,
        });
    }
    let mut dims = [0u64; MAX_DIMS];
    for d in dims.iter_mut().take(n_dims as usize) {
        *d = input.u64("tensor dimension")?;
    }
    let dims = &dims[..n_dims as usize];
    let type_id = input.u32("tensor type")?;
    let offset = input.u64("tensor offset")?;

    let overflow = || GgufError::ShapeOverflow {
        tensor: name.clone(),
        shape: dims.to_vec(),
    };
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(overflow)?;
    let n_elements = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(overflow)?;

    let dtype =
        GgmlType::from_u32(type_id).ok_or_else(|| match quant::ggml_type_name(type_id) {
            Some(type_name) => GgufError::UnsupportedTensorType {
                tensor: name.clone(),
                type_name,
            },
            None => GgufError::UnknownTensorType(type_id),
        })?;
    // GGML quantizes row by row, so each row (not just the total) must be whole blocks.
    let row_len = shape.first().copied().unwrap_or(1);
    if !row_len.is_multiple_of(dtype.block_size()) {
        return Err(GgufError::BadShape {
            tensor: name,
            shape,
            dtype,
        });
    }
    let n_bytes = dtype.row_bytes(n_elements).ok_or_else(overflow)?;
    if !offset.is_multiple_of(alignment) {
        return Err(GgufError::Misaligned {
            tensor: name,
            offset,
            alignment,
        });
    }
    Ok(TensorInfo {
        name,
        shape,
        dtype,
        offset,
        n_bytes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn value_conversions_are_lossless() {
        assert_eq!(Value::I32(7).as_u32(), Some(7));
        assert_eq!(Value::I32(-1).as_u32(), None);
        assert_eq!(Value::U64(1 << 40).as_u32(), None);
        assert_eq!(Value::U64(u64::MAX).as_i64(), None);
        assert_eq!(Value::F64(0.5).as_f32(), Some(0.5));
        assert_eq!(Value::U8(1).as_bool(), None);
        assert_eq!(Value::String("x".into()).as_str(), Some("x"));
    }

    #[test]
    fn typed_accessors_report_missing_and_wrong_types() {
        let g = Gguf {
            version: 3,
            metadata: vec![
                ("a".into(), Value::U32(5)),
                ("s".into(), Value::String("hi".into())),
                (
                    "arr".into(),
                    Value::Array(vec![Value::String("x".into()), Value::U8(1)]),
                ),
            ],
            tensors: vec![],
        };
        assert_eq!(g.get_u32("a").unwrap(), 5);
        assert_eq!(g.get_u32_or("missing", 9).unwrap(), 9);
        assert!(matches!(
            g.get_u32("missing"),
            Err(GgufError::MissingKey(_))
        ));
        assert!(matches!(g.get_u32("s"), Err(GgufError::WrongType { .. })));
        assert!(matches!(
            g.get_u32_or("s", 1),
            Err(GgufError::WrongType { .. })
        ));
        assert!(matches!(
            g.get_str_array("arr"),
            Err(GgufError::WrongType { .. })
        ));
        assert_eq!(g.alignment(), DEFAULT_ALIGNMENT);
    }

    #[test]
    fn errors_read_well() {
        let e = GgufError::LimitExceeded {
            what: "string length",
            value: 1 << 60,
            limit: MAX_STRING_LEN,
        };
        assert_eq!(
            e.to_string(),
            "string length is 1152921504606846976, above the safety limit of 1048576"
        );
        assert_eq!(
            GgufError::BadMagic(*b"GGML").to_string(),
            "not a GGUF file: expected magic \"GGUF\", found [47, 47, 4d, 4c]"
        );
    }
}
