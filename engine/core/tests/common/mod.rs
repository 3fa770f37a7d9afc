//! Test helpers: a minimal GGUF metadata reader (tensors are not read) and fixture paths.
//!
//! The crate's own `Gguf::read` lands separately; this keeps the tokenizer tests
//! independent of it.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufReader, Read};
use std::path::PathBuf;

use kwaainet_core::gguf::{Gguf, Value};

/// The default model, if it has been downloaded.
pub fn model_path() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let p = PathBuf::from(home).join(".cache/kwaainet/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    p.exists().then_some(p)
}

/// The reference generations of llama.cpp (a copy of `shared/reference/`).
pub fn reference() -> serde_json::Value {
    serde_json::from_str(include_str!("smollm2-135m-q4_1.llamacpp.json")).unwrap()
}

/// Reads the header and metadata of a GGUF file.
pub fn read_metadata(path: &std::path::Path) -> std::io::Result<Gguf> {
    let mut r = BufReader::new(std::fs::File::open(path)?);
    let mut magic = [0; 4];
    r.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(std::io::Error::other("not a GGUF file"));
    }
    let version = u32_(&mut r)?;
    let _n_tensors = u64_(&mut r)?;
    let n_kv = u64_(&mut r)?;
    let mut metadata = Vec::new();
    for _ in 0..n_kv {
        let key = string(&mut r)?;
        let ty = u32_(&mut r)?;
        metadata.push((key, value(&mut r, ty)?));
    }
    Ok(Gguf {
        version,
        metadata,
        tensors: vec![],
    })
}

fn bytes<const N: usize>(r: &mut impl Read) -> std::io::Result<[u8; N]> {
    let mut b = [0; N];
    r.read_exact(&mut b)?;
    Ok(b)
}
fn u32_(r: &mut impl Read) -> std::io::Result<u32> {
    Ok(u32::from_le_bytes(bytes(r)?))
}
fn u64_(r: &mut impl Read) -> std::io::Result<u64> {
    Ok(u64::from_le_bytes(bytes(r)?))
}
fn string(r: &mut impl Read) -> std::io::Result<String> {
    let n = u64_(r)?;
    if n > 1 << 24 {
        return Err(std::io::Error::other("string too long"));
    }
    let mut b = vec![0; n as usize];
    r.read_exact(&mut b)?;
    String::from_utf8(b).map_err(std::io::Error::other)
}
fn value(r: &mut impl Read, ty: u32) -> std::io::Result<Value> {
    Ok(match ty {
        0 => Value::U8(u8::from_le_bytes(bytes(r)?)),
        1 => Value::I8(i8::from_le_bytes(bytes(r)?)),
        2 => Value::U16(u16::from_le_bytes(bytes(r)?)),
        3 => Value::I16(i16::from_le_bytes(bytes(r)?)),
        4 => Value::U32(u32::from_le_bytes(bytes(r)?)),
        5 => Value::I32(i32::from_le_bytes(bytes(r)?)),
        6 => Value::F32(f32::from_le_bytes(bytes(r)?)),
        7 => Value::Bool(bytes::<1>(r)?[0] != 0),
        8 => Value::String(string(r)?),
        9 => {
            let ety = u32_(r)?;
            let n = u64_(r)?;
            if n > 1 << 24 || ety == 9 {
                return Err(std::io::Error::other("array too long or nested"));
            }
            (0..n)
                .map(|_| value(r, ety))
                .collect::<std::io::Result<_>>()
                .map(Value::Array)?
        }
        10 => Value::U64(u64::from_le_bytes(bytes(r)?)),
        11 => Value::I64(i64::from_le_bytes(bytes(r)?)),
        12 => Value::F64(f64::from_le_bytes(bytes(r)?)),
        t => return Err(std::io::Error::other(format!("unknown value type {t}"))),
    })
}

/// A `Gguf` holding only the given metadata.
pub fn gguf(metadata: Vec<(&str, Value)>) -> Gguf {
    Gguf {
        version: 3,
        metadata: metadata
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        tensors: vec![],
    }
}

/// `Value::Array` of strings.
pub fn strs(items: &[&str]) -> Value {
    Value::Array(
        items
            .iter()
            .map(|s| Value::String((*s).to_owned()))
            .collect(),
    )
}
