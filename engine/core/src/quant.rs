//! GGML tensor storage types: block layouts and reference dequantization.
//!
//! INTERFACE STUB — being implemented. Signatures are the contract.

/// Tensor storage types this engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl GgmlType {
    /// Elements per block (1 for float types).
    pub fn block_size(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q4_0 | Self::Q4_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q6_K => 256,
        }
    }
    /// Bytes per block.
    pub fn type_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q6_K => 210,
        }
    }
}

/// Dequantizes `src` (whole blocks of `dtype`) into `dst` (`dst.len()` elements).
pub fn dequantize(_dtype: GgmlType, _src: &[u8], _dst: &mut [f32]) -> crate::Result<()> {
    Err(crate::Error::Unsupported(
        "dequantize not yet implemented".into(),
    ))
}
