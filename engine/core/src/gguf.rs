//! GGUF (v2, v3) reader: metadata, tensor directory and tensor bytes, from any `Read + Seek`.
//!
//! INTERFACE STUB — being implemented. Signatures are the contract.

use std::io::{Read, Seek};

use crate::quant::GgmlType;

/// Why a GGUF file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Placeholder until the reader lands.
    #[error("{0}")]
    Other(String),
}

/// A metadata value.
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
    pub fn read<R: Read + Seek>(_r: &mut R) -> Result<Self, GgufError> {
        Err(GgufError::Other("not yet implemented".into()))
    }
    /// Metadata lookup.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    /// Tensor lookup.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
    /// Reads one tensor's bytes.
    pub fn read_tensor<R: Read + Seek>(
        &self,
        _r: &mut R,
        _t: &TensorInfo,
    ) -> Result<Vec<u8>, GgufError> {
        Err(GgufError::Other("not yet implemented".into()))
    }
}
