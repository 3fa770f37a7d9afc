//! GGUF reader and dequantization: round trips through an in-memory writer, malformed files,
//! known-answer blocks, and the real default model when it is on disk.
// Reference floats are pasted verbatim from gguf-py, hence excessive_precision.
#![allow(clippy::unwrap_used, clippy::print_stderr, clippy::excessive_precision)]

use std::io::Cursor;

use kwaainet_core::gguf::{
    DEFAULT_ALIGNMENT, Gguf, GgufError, MAX_ARRAY_DEPTH, MAX_ARRAY_LEN, MAX_DIMS, MAX_KV_COUNT,
    MAX_STRING_LEN, MAX_TENSOR_COUNT, Value,
};
use kwaainet_core::quant::{GgmlType, dequantize};

// ---------------------------------------------------------------------------------------
// A minimal GGUF writer, kept deliberately separate from the reader's code.
// ---------------------------------------------------------------------------------------

const T_U8: u32 = 0;
const T_U32: u32 = 4;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;

fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    put_u64(b, s.len() as u64);
    b.extend_from_slice(s.as_bytes());
}

/// Writes a value's payload (no type tag). Empty arrays are written as arrays of u8.
fn put_payload(b: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => b.push(*x),
        Value::I8(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => b.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => b.push(u8::from(*x)),
        Value::String(s) => put_str(b, s),
        Value::Array(items) => {
            put_u32(b, items.first().map_or(T_U8, type_id));
            put_u64(b, items.len() as u64);
            for item in items {
                put_payload(b, item);
            }
        }
    }
}

#[derive(Clone)]
struct TensorSpec {
    name: String,
    dims: Vec<u64>,
    type_id: u32,
    data: Vec<u8>,
    /// Relative offset to write instead of the laid-out one.
    offset_override: Option<u64>,
}

fn tensor(name: &str, dims: &[u64], dtype: GgmlType, data: Vec<u8>) -> TensorSpec {
    TensorSpec {
        name: name.into(),
        dims: dims.to_vec(),
        type_id: dtype.to_u32(),
        data,
        offset_override: None,
    }
}

#[derive(Clone)]
struct FileSpec {
    version: u32,
    kvs: Vec<(String, Value)>,
    tensors: Vec<TensorSpec>,
}

impl FileSpec {
    fn new(version: u32) -> Self {
        Self {
            version,
            kvs: vec![],
            tensors: vec![],
        }
    }

    fn kv(mut self, k: &str, v: Value) -> Self {
        self.kvs.push((k.into(), v));
        self
    }

    fn tensor(mut self, t: TensorSpec) -> Self {
        self.tensors.push(t);
        self
    }

    /// Serializes the file; also returns each tensor's absolute data offset.
    fn build_with_offsets(&self) -> (Vec<u8>, Vec<u64>) {
        let align = self
            .kvs
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .filter(|a| a.is_power_of_two())
            .unwrap_or(DEFAULT_ALIGNMENT);
        let pad = |n: u64| n.next_multiple_of(align);
        let mut rel = Vec::new();
        let mut next = 0u64;
        for t in &self.tensors {
            rel.push(next);
            next = pad(next + t.data.len() as u64);
        }

        let mut b = Vec::new();
        b.extend_from_slice(b"GGUF");
        put_u32(&mut b, self.version);
        put_u64(&mut b, self.tensors.len() as u64);
        put_u64(&mut b, self.kvs.len() as u64);
        for (k, v) in &self.kvs {
            put_str(&mut b, k);
            put_u32(&mut b, type_id(v));
            put_payload(&mut b, v);
        }
        for (t, &off) in self.tensors.iter().zip(&rel) {
            put_str(&mut b, &t.name);
            put_u32(&mut b, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut b, d);
            }
            put_u32(&mut b, t.type_id);
            put_u64(&mut b, t.offset_override.unwrap_or(off));
        }
        let data_start = pad(b.len() as u64);
        let mut abs = Vec::new();
        // No padding after the last tensor, so every strict prefix of the file is invalid.
        for (t, &off) in self.tensors.iter().zip(&rel) {
            b.resize((data_start + off) as usize, 0);
            abs.push(data_start + off);
            b.extend_from_slice(&t.data);
        }
        (b, abs)
    }

    fn build(&self) -> Vec<u8> {
        self.build_with_offsets().0
    }
}

fn parse(bytes: &[u8]) -> Result<Gguf, GgufError> {
    Gguf::read(&mut Cursor::new(bytes))
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
        .collect()
}

/// Header bytes for hand-crafted malformed files.
fn header(version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    put_u32(&mut b, version);
    put_u64(&mut b, n_tensors);
    put_u64(&mut b, n_kv);
    b
}

fn all_value_types() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60_000)),
        ("t.i16".into(), Value::I16(-30_000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.u64".into(), Value::U64(u64::MAX - 1)),
        ("t.i64".into(), Value::I64(i64::MIN + 1)),
        ("t.f32".into(), Value::F32(1.0e-5)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.true".into(), Value::Bool(true)),
        ("t.false".into(), Value::Bool(false)),
        ("t.str".into(), Value::String("héllo ✓ Ġworld".into())),
        ("t.empty_str".into(), Value::String(String::new())),
        (
            "t.str_arr".into(),
            Value::Array(vec![
                Value::String("<s>".into()),
                Value::String("Ġ t".into()),
            ]),
        ),
        (
            "t.i32_arr".into(),
            Value::Array(vec![Value::I32(1), Value::I32(-2), Value::I32(3)]),
        ),
        (
            "t.f32_arr".into(),
            Value::Array(vec![Value::F32(0.5), Value::F32(-0.25)]),
        ),
        ("t.empty_arr".into(), Value::Array(vec![])),
        (
            "t.nested".into(),
            Value::Array(vec![
                Value::Array(vec![Value::U16(1), Value::U16(2)]),
                Value::Array(vec![Value::U16(3)]),
            ]),
        ),
    ]
}

fn small_file(version: u32) -> FileSpec {
    let mut spec = FileSpec::new(version).kv("general.architecture", Value::String("llama".into()));
    for (k, v) in all_value_types() {
        spec = spec.kv(&k, v);
    }
    spec.tensor(tensor(
        "a.f32",
        &[3, 2],
        GgmlType::F32,
        f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
    ))
    .tensor(tensor(
        "b.f16",
        &[4],
        GgmlType::F16,
        f16_bytes(&[0.5, -1.0, 2.0, 65504.0]),
    ))
    .tensor(tensor("c.q8_0", &[32, 2], GgmlType::Q8_0, vec![7u8; 68]))
}

// ---------------------------------------------------------------------------------------
// (a) Round trips
// ---------------------------------------------------------------------------------------

#[test]
fn round_trips_metadata_of_every_type_v2_and_v3() {
    for version in [2, 3] {
        let spec = small_file(version);
        let g = parse(&spec.build()).unwrap();
        assert_eq!(g.version, version);
        assert_eq!(g.metadata, spec.kvs);
        assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
        assert_eq!(g.get_u32("t.u32").unwrap(), 4_000_000_000);
        assert_eq!(g.get_u64("t.u64").unwrap(), u64::MAX - 1);
        assert_eq!(g.get_f32("t.f32").unwrap(), 1.0e-5);
        assert!(g.get_bool("t.true").unwrap());
        assert_eq!(g.get_str_array("t.str_arr").unwrap(), ["<s>", "Ġ t"]);
        assert_eq!(g.get_array("t.empty_arr").unwrap(), &[]);
        assert_eq!(g.alignment(), 32);
    }
}

#[test]
fn round_trips_tensors_with_custom_alignment() {
    let q4_0 = {
        let mut b = vec![0u8; 2 * 18];
        b[0..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        b
    };
    let spec = FileSpec::new(3)
        .kv("general.alignment", Value::U32(64))
        .tensor(tensor(
            "w.f32",
            &[2],
            GgmlType::F32,
            f32_bytes(&[-1.5, 8.0]),
        ))
        .tensor(tensor("w.q4_0", &[32, 2], GgmlType::Q4_0, q4_0))
        .tensor(tensor(
            "w.bf16",
            &[2, 1, 1, 1],
            GgmlType::BF16,
            vec![0x80, 0x3F, 0x40, 0xC0],
        ))
        .tensor(tensor("w.q4_k", &[256], GgmlType::Q4_K, vec![1u8; 144]))
        .tensor(tensor("w.q6_k", &[256], GgmlType::Q6_K, vec![2u8; 210]))
        .tensor(tensor("w.empty", &[0], GgmlType::F32, vec![]));
    let (bytes, offsets) = spec.build_with_offsets();
    let mut file = Cursor::new(bytes);
    let g = Gguf::read(&mut file).unwrap();
    assert_eq!(g.alignment(), 64);
    assert_eq!(g.tensors.len(), spec.tensors.len());
    for ((t, s), &off) in g.tensors.iter().zip(&spec.tensors).zip(&offsets) {
        assert_eq!(t.name, s.name);
        assert_eq!(
            t.shape,
            s.dims.iter().map(|&d| d as usize).collect::<Vec<_>>()
        );
        assert_eq!(t.dtype.to_u32(), s.type_id);
        assert_eq!(t.offset, off, "{} offset must be absolute", t.name);
        assert_eq!(t.offset % 64, 0);
        assert_eq!(t.n_bytes, s.data.len());
        assert_eq!(g.read_tensor(&mut file, t).unwrap(), s.data);
    }
    let f = g.tensor("w.f32").unwrap();
    assert_eq!(g.read_tensor_f32(&mut file, f).unwrap(), [-1.5, 8.0]);
    let bf = g.tensor("w.bf16").unwrap();
    assert_eq!(bf.n_elements(), 2);
    assert_eq!(g.read_tensor_f32(&mut file, bf).unwrap(), [1.0, -3.0]);
    let q = g.tensor("w.q4_0").unwrap();
    let vals = g.read_tensor_f32(&mut file, q).unwrap();
    assert_eq!(vals.len(), 64);
    assert_eq!(vals[0], -8.0);
    assert_eq!(vals[32], 0.0); // second block has d = 0
    assert!(g.tensor("missing").is_none());
}

#[test]
fn read_tensor_reports_truncation_and_bogus_infos() {
    let spec = small_file(3);
    let bytes = spec.build();
    let g = parse(&bytes).unwrap();
    let last = g.tensors.last().unwrap().clone();
    // The file shrank after the header was read.
    let mut short = Cursor::new(bytes[..bytes.len() - 1].to_vec());
    assert!(matches!(
        g.read_tensor(&mut short, &last),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // A hand-built info claiming an enormous size must not allocate it.
    let mut bogus = last.clone();
    bogus.n_bytes = usize::MAX / 2;
    let mut file = Cursor::new(bytes);
    assert!(matches!(
        g.read_tensor(&mut file, &bogus),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    bogus.shape = vec![usize::MAX, 4];
    assert!(g.read_tensor_f32(&mut file, &bogus).is_err());
}

// ---------------------------------------------------------------------------------------
// (b) Malformed inputs
// ---------------------------------------------------------------------------------------

#[test]
fn rejects_bad_magic_and_versions() {
    let mut b = small_file(3).build();
    b[0..4].copy_from_slice(b"GGML");
    assert!(matches!(parse(&b), Err(GgufError::BadMagic(m)) if &m == b"GGML"));
    for v in [0u32, 1, 4, 99] {
        let b = small_file(v).build();
        assert!(
            matches!(parse(&b), Err(GgufError::UnsupportedVersion(x)) if x == v),
            "version {v}"
        );
    }
    let b = small_file(3u32.swap_bytes()).build();
    assert!(matches!(parse(&b), Err(GgufError::BigEndian)));
    assert!(matches!(parse(b""), Err(GgufError::Truncated { .. })));
}

#[test]
fn every_strict_prefix_of_a_valid_file_is_rejected() {
    for version in [2, 3] {
        let bytes = small_file(version).build();
        assert!(parse(&bytes).is_ok());
        for n in 0..bytes.len() {
            match parse(&bytes[..n]) {
                Err(GgufError::Truncated { .. } | GgufError::TensorOutOfBounds { .. }) => {}
                other => panic!("prefix of {n} bytes: {other:?}"),
            }
        }
    }
}

/// A file whose single metadata value is `value_bytes` (type tag included).
fn one_kv(value_bytes: &[u8]) -> Vec<u8> {
    let mut b = header(3, 0, 1);
    put_str(&mut b, "k");
    b.extend_from_slice(value_bytes);
    b
}

fn limit_what(r: Result<Gguf, GgufError>) -> &'static str {
    match r {
        Err(GgufError::LimitExceeded { what, .. }) => what,
        other => panic!("expected LimitExceeded, got {other:?}"),
    }
}

#[test]
fn rejects_huge_strings() {
    for len in [MAX_STRING_LEN + 1, 1 << 60, u64::MAX] {
        let mut v = Vec::new();
        put_u32(&mut v, T_STRING);
        put_u64(&mut v, len);
        assert_eq!(limit_what(parse(&one_kv(&v))), "string length");
    }
    // Within the cap but longer than the file: truncated, and nothing allocated for it.
    let mut v = Vec::new();
    put_u32(&mut v, T_STRING);
    put_u64(&mut v, MAX_STRING_LEN);
    assert!(matches!(
        parse(&one_kv(&v)),
        Err(GgufError::Truncated { .. })
    ));
    // A huge key length.
    let mut b = header(3, 0, 1);
    put_u64(&mut b, 1 << 62);
    b.extend([0u8; 16]);
    assert_eq!(limit_what(parse(&b)), "string length");
}

#[test]
fn rejects_invalid_utf8() {
    let mut v = Vec::new();
    put_u32(&mut v, T_STRING);
    put_u64(&mut v, 2);
    v.extend_from_slice(&[0xC3, 0x28]);
    assert!(matches!(
        parse(&one_kv(&v)),
        Err(GgufError::InvalidUtf8 { .. })
    ));
}

#[test]
fn rejects_huge_arrays_without_allocating() {
    for n in [MAX_ARRAY_LEN + 1, 1 << 60, u64::MAX] {
        let mut v = Vec::new();
        put_u32(&mut v, T_ARRAY);
        put_u32(&mut v, T_U32);
        put_u64(&mut v, n);
        assert_eq!(limit_what(parse(&one_kv(&v))), "metadata array length");
    }
    // Under the cap, but the file cannot hold that many elements.
    for elem in [T_U8, T_STRING, T_ARRAY] {
        let mut v = Vec::new();
        put_u32(&mut v, T_ARRAY);
        put_u32(&mut v, elem);
        put_u64(&mut v, MAX_ARRAY_LEN);
        assert!(matches!(
            parse(&one_kv(&v)),
            Err(GgufError::Truncated { .. })
        ));
    }
}

/// An array value nested `depth` levels deep around a single u8.
fn nested(depth: usize) -> Value {
    (0..depth).fold(Value::U8(1), |v, _| Value::Array(vec![v]))
}

#[test]
fn limits_array_nesting() {
    let ok = FileSpec::new(3).kv("deep", nested(MAX_ARRAY_DEPTH)).build();
    assert_eq!(
        parse(&ok).unwrap().get("deep"),
        Some(&nested(MAX_ARRAY_DEPTH))
    );
    let bad = FileSpec::new(3)
        .kv("deep", nested(MAX_ARRAY_DEPTH + 1))
        .build();
    assert_eq!(limit_what(parse(&bad)), "metadata array nesting depth");
    // Hand-made: thousands of nested array headers must not recurse without bound.
    let mut v = Vec::new();
    put_u32(&mut v, T_ARRAY);
    for _ in 0..10_000 {
        put_u32(&mut v, T_ARRAY);
        put_u64(&mut v, 1);
    }
    assert_eq!(
        limit_what(parse(&one_kv(&v))),
        "metadata array nesting depth"
    );
}

#[test]
fn rejects_huge_counts() {
    let b = header(3, MAX_TENSOR_COUNT + 1, 0);
    assert_eq!(limit_what(parse(&b)), "tensor count");
    let b = header(3, u64::MAX, 0);
    assert_eq!(limit_what(parse(&b)), "tensor count");
    let b = header(3, 0, MAX_KV_COUNT + 1);
    assert_eq!(limit_what(parse(&b)), "metadata key/value count");
    // Within the caps but more than the file can hold.
    let b = header(3, MAX_TENSOR_COUNT, MAX_KV_COUNT);
    assert!(matches!(parse(&b), Err(GgufError::Truncated { .. })));
}

/// A file with one tensor directory entry written by hand and `data_len` zero bytes of data.
fn one_tensor(dims: &[u64], type_id: u32, offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = header(3, 1, 0);
    put_str(&mut b, "t");
    put_u32(&mut b, dims.len() as u32);
    for &d in dims {
        put_u64(&mut b, d);
    }
    put_u32(&mut b, type_id);
    put_u64(&mut b, offset);
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}

#[test]
fn rejects_bad_tensor_shapes() {
    let b = one_tensor(&[1; MAX_DIMS + 1], 0, 0, 4);
    assert_eq!(limit_what(parse(&b)), "tensor dimension count");
    let b = one_tensor(&[1 << 40, 1 << 40], 0, 0, 0);
    assert!(matches!(parse(&b), Err(GgufError::ShapeOverflow { .. })));
    let b = one_tensor(&[u64::MAX], 0, 0, 0);
    assert!(matches!(parse(&b), Err(GgufError::ShapeOverflow { .. })));
    // Element count fits, byte size (x4 for F32) does not.
    let b = one_tensor(&[usize::MAX as u64 / 2], 0, 0, 0);
    assert!(matches!(parse(&b), Err(GgufError::ShapeOverflow { .. })));
    // Q4_0 rows must be whole 32-element blocks, even when the total is.
    let b = one_tensor(&[16, 2], GgmlType::Q4_0.to_u32(), 0, 18);
    assert!(matches!(parse(&b), Err(GgufError::BadShape { .. })));
    // A scalar (no dims) is one element.
    let g = parse(&one_tensor(&[], 0, 0, 4)).unwrap();
    assert_eq!(g.tensors[0].n_bytes, 4);
}

#[test]
fn rejects_out_of_bounds_and_misaligned_tensors() {
    // 4 bytes of F32 needed, 3 present.
    let b = one_tensor(&[1], 0, 0, 3);
    assert!(matches!(
        parse(&b),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    let b = one_tensor(&[1], 0, 1 << 62, 4);
    assert!(matches!(
        parse(&b),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    // Offset overflow when made absolute.
    let b = one_tensor(&[1], 0, u64::MAX - 31, 4);
    assert!(matches!(
        parse(&b),
        Err(GgufError::TensorOutOfBounds { .. })
    ));
    let b = one_tensor(&[1], 0, 4, 64);
    assert!(matches!(
        parse(&b),
        Err(GgufError::Misaligned {
            offset: 4,
            alignment: 32,
            ..
        })
    ));
    let mut t = tensor("x", &[1], GgmlType::F32, vec![0; 4]);
    t.offset_override = Some(8);
    let spec = FileSpec::new(3)
        .kv("general.alignment", Value::U32(16))
        .tensor(t);
    assert!(matches!(
        parse(&spec.build()),
        Err(GgufError::Misaligned { alignment: 16, .. })
    ));
}

#[test]
fn rejects_bad_alignment_values() {
    for a in [0u32, 3, 48] {
        let b = FileSpec::new(3)
            .kv("general.alignment", Value::U32(a))
            .build();
        assert!(
            matches!(parse(&b), Err(GgufError::BadAlignment(x)) if x == u64::from(a)),
            "alignment {a}"
        );
    }
    let b = FileSpec::new(3)
        .kv("general.alignment", Value::String("32".into()))
        .build();
    assert!(matches!(parse(&b), Err(GgufError::WrongType { .. })));
}

#[test]
fn rejects_duplicates() {
    let t = tensor("same", &[1], GgmlType::F32, vec![0; 4]);
    let b = FileSpec::new(3).tensor(t.clone()).tensor(t).build();
    assert!(matches!(parse(&b), Err(GgufError::DuplicateTensor(n)) if n == "same"));
    let b = FileSpec::new(3)
        .kv("k", Value::U8(1))
        .kv("k", Value::U8(2))
        .build();
    assert!(matches!(parse(&b), Err(GgufError::DuplicateKey(k)) if k == "k"));
}

#[test]
fn rejects_unknown_types() {
    let mut v = Vec::new();
    put_u32(&mut v, 13);
    assert!(matches!(
        parse(&one_kv(&v)),
        Err(GgufError::UnknownValueType { value_type: 13, .. })
    ));
    let mut v = Vec::new();
    put_u32(&mut v, T_ARRAY);
    put_u32(&mut v, 0xFFFF_FFFF);
    put_u64(&mut v, 0);
    assert!(matches!(
        parse(&one_kv(&v)),
        Err(GgufError::UnknownValueType {
            value_type: 0xFFFF_FFFF,
            ..
        })
    ));
    let b = one_tensor(&[32], 99, 0, 64);
    assert!(matches!(parse(&b), Err(GgufError::UnknownTensorType(99))));
    // Q5_K (13) is a real GGML type this engine does not decode: the message names it.
    let err = parse(&one_tensor(&[256], 13, 0, 176)).unwrap_err();
    assert!(matches!(
        err,
        GgufError::UnsupportedTensorType {
            type_name: "Q5_K",
            ..
        }
    ));
    assert!(err.to_string().contains("Q5_K"), "{err}");
}

/// Deterministic xorshift64 so failures reproduce.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_byte_flips_never_panic() {
    let base = small_file(3).build();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut n_ok = 0;
    for _ in 0..2_000 {
        let mut b = base.clone();
        for _ in 0..1 + rng.next() % 4 {
            let i = (rng.next() % b.len() as u64) as usize;
            // Favour the header, where flips change counts and lengths.
            let i = if rng.next().is_multiple_of(2) {
                i % 64
            } else {
                i
            };
            b[i] ^= 1 << (rng.next() % 8);
        }
        if let Ok(g) = parse(&b) {
            n_ok += 1;
            let mut file = Cursor::new(&b);
            for t in &g.tensors {
                let _ = g.read_tensor_f32(&mut file, t);
            }
        }
    }
    // Flips inside tensor data leave the file valid; make sure both paths were exercised.
    assert!(n_ok > 0 && n_ok < 2_000, "{n_ok} of 2000 parsed");
}

// ---------------------------------------------------------------------------------------
// (c) Dequantization known answers
// ---------------------------------------------------------------------------------------

fn deq(dtype: GgmlType, src: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; n];
    dequantize(dtype, src, &mut out).unwrap();
    out
}

fn f16le(x: f32) -> [u8; 2] {
    half::f16::from_f32(x).to_le_bytes()
}

#[test]
fn dequantize_float_types() {
    assert_eq!(
        deq(GgmlType::F32, &f32_bytes(&[1.5, -0.0, 1e30]), 3),
        [1.5, -0.0, 1e30]
    );
    let f16 = [0x00, 0x3C, 0x00, 0xC0, 0x00, 0x38, 0xFF, 0x7B];
    assert_eq!(deq(GgmlType::F16, &f16, 4), [1.0, -2.0, 0.5, 65504.0]);
    let bf16 = [0x80, 0x3F, 0x40, 0xC0, 0x49, 0x40];
    assert_eq!(deq(GgmlType::BF16, &bf16, 3), [1.0, -3.0, 3.140625]);
}

#[test]
fn dequantize_q4_0() {
    let mut b = f16le(0.5).to_vec();
    // Byte j: element j in the low nibble, element j + 16 in the high nibble.
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_0, &b, 32);
    for j in 0..16 {
        assert_eq!(out[j], (j as f32 - 8.0) * 0.5);
        assert_eq!(out[j + 16], (7.0 - j as f32) * 0.5);
    }
}

#[test]
fn dequantize_q4_1() {
    let mut b = f16le(0.25).to_vec();
    b.extend(f16le(-1.0));
    b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    let out = deq(GgmlType::Q4_1, &b, 32);
    for j in 0..16 {
        assert_eq!(out[j], j as f32 * 0.25 - 1.0);
        assert_eq!(out[j + 16], (15 - j) as f32 * 0.25 - 1.0);
    }
}

#[test]
fn dequantize_q8_0_two_blocks() {
    let mut b = f16le(2.0).to_vec();
    b.extend((-16i8..16).map(|q| q as u8));
    b.extend(f16le(-0.5));
    b.extend([127u8, 128, 0, 1].iter().cycle().take(32));
    let out = deq(GgmlType::Q8_0, &b, 64);
    for (j, q) in (-16..16).enumerate() {
        assert_eq!(out[j], q as f32 * 2.0);
    }
    assert_eq!(&out[32..36], &[-63.5, 64.0, -0.0, -0.5]);
}

#[test]
fn dequantize_q4_k() {
    let sc: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 63];
    let mn: [u8; 8] = [0, 1, 2, 3, 4, 5, 6, 33];
    let mut b = f16le(1.0).to_vec();
    b.extend(f16le(0.5));
    // 6-bit packing of ggml-quants.c: low 6 bits of scales/mins 0..4 in bytes 0..8, the
    // rest split into nibbles in bytes 8..12 plus the spare top bits of bytes 0..8.
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    b.extend(packed);
    let qs: Vec<u8> = (0..128)
        .map(|i| (i % 16) as u8 | ((15 - (i % 16) as u8) << 4))
        .collect();
    b.extend(&qs);
    let out = deq(GgmlType::Q4_K, &b, 256);
    for (i, &y) in out.iter().enumerate() {
        let (g, w) = (i / 64, i % 64);
        let sub = 2 * g + usize::from(w >= 32);
        let byte = qs[32 * g + w % 32];
        let q = if w < 32 { byte & 0xF } else { byte >> 4 };
        let expect = f32::from(sc[sub]) * f32::from(q) - 0.5 * f32::from(mn[sub]);
        assert_eq!(y, expect, "element {i}");
    }
    // Reference values from gguf-py's dequantize on the same block.
    for (i, v) in [
        (0, 0.0),
        (1, 1.0),
        (15, 15.0),
        (31, 15.0),
        (32, 29.5),
        (63, -0.5),
        (200, 53.0),
        (255, -16.5),
    ] {
        assert_eq!(out[i], v, "element {i}");
    }
}

#[test]
fn dequantize_q6_k() {
    let scales: [i8; 16] = [
        1, -2, 3, -4, 5, -6, 7, -8, 9, -10, 11, -12, 13, -14, 15, -128,
    ];
    let u: Vec<u8> = (0..256).map(|i| ((i * 7 + 3) % 64) as u8).collect();
    // Element 128n + 32k + l: low 4 bits in ql[64n + l + 32(k % 2)] (low nibble for k < 2,
    // high otherwise), high 2 bits in qh[32n + l] at bit 2k.
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for (i, &q) in u.iter().enumerate() {
        let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
        let idx = 64 * n + l + 32 * (k % 2);
        ql[idx] |= if k < 2 { q & 0xF } else { (q & 0xF) << 4 };
        qh[32 * n + l] |= (q >> 4) << (2 * k);
    }
    let mut b = ql.to_vec();
    b.extend(qh);
    b.extend(scales.iter().map(|&s| s as u8));
    b.extend(f16le(0.25));
    let out = deq(GgmlType::Q6_K, &b, 256);
    for (i, &y) in out.iter().enumerate() {
        let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
        let s = f32::from(scales[8 * n + l / 16 + 2 * k]);
        assert_eq!(y, 0.25 * s * (f32::from(u[i]) - 32.0), "element {i}");
    }
    // Reference values from gguf-py's dequantize on the same block.
    for (i, v) in [
        (0, -7.25),
        (1, -5.5),
        (16, -9.5),
        (32, 2.25),
        (64, -36.25),
        (96, 5.25),
        (128, -65.25),
        (255, -896.0),
    ] {
        assert_eq!(out[i], v, "element {i}");
    }
}

// ---------------------------------------------------------------------------------------
// (d) The real default model
// ---------------------------------------------------------------------------------------

fn assert_close(got: f32, want: f32, what: &str) {
    let tol = 1e-6 * want.abs().max(f32::MIN_POSITIVE);
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

#[test]
fn parses_default_model() {
    let Some(home) = std::env::var_os("HOME") else {
        eprintln!("skipped: HOME is not set");
        return;
    };
    let path =
        std::path::Path::new(&home).join(".cache/kwaainet/models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!("skipped: {} is absent", path.display());
        return;
    }
    let mut file = std::fs::File::open(&path).unwrap();
    // Header parse time through a bare File (the reader buffers internally).
    let mut best = std::time::Duration::MAX;
    let mut g = None;
    for _ in 0..5 {
        let t0 = std::time::Instant::now();
        let parsed = Gguf::read(&mut file).unwrap();
        best = best.min(t0.elapsed());
        // Assign after timing so dropping the previous parse is not counted.
        g = Some(parsed);
    }
    let g = g.unwrap();
    eprintln!("default model header parsed in {best:?} (best of 5)");

    assert_eq!(g.version, 3);
    assert_eq!(g.tensors.len(), 272);
    assert_eq!(g.metadata.len(), 33);
    assert_eq!(g.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(g.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(g.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(
        g.get_f32("llama.attention.layer_norm_rms_epsilon").unwrap(),
        1e-5
    );
    assert_eq!(g.alignment(), 32);
    let tokens = g.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(tokens[1], "<|im_start|>");
    assert_eq!(tokens[49151], "ectable");
    let merges = g.get_str_array("tokenizer.ggml.merges").unwrap();
    assert_eq!(merges.len(), 48900);
    assert_eq!(merges[0], "Ġ t");

    let emb = g.tensor("token_embd.weight").unwrap();
    assert_eq!(emb.dtype, GgmlType::Q8_0);
    assert_eq!(emb.shape, [576, 49152]);
    // Offsets and sizes as reported by gguf-py's GGUFReader.
    assert_eq!(emb.offset, 1_785_664);
    assert_eq!(emb.n_bytes, 30_081_024);

    let q = g.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(q.dtype, GgmlType::Q4_1);
    assert_eq!(q.shape, [576, 576]);
    assert_eq!(q.offset, 33_806_656);
    let vals = g.read_tensor_f32(&mut file, q).unwrap();
    assert_eq!(vals.len(), 576 * 576);
    // From gguf-py: dequantize(t.data, t.tensor_type) of the same tensor.
    for (i, want) in [
        (0, -0.0963134765625),
        (1, 0.1573486328125),
        (15, 0.537841796875),
        (16, -0.22314453125),
        (17, 0.2841796875),
        (32, -0.34619140625),
        (575, 0.12353515625),
        (576, -0.1173095703125),
        (100_000, -0.12225341796875),
        (331_775, -0.255859375),
    ] {
        assert_close(vals[i], want, &format!("attn_q[{i}]"));
    }

    let emb_vals = g.read_tensor_f32(&mut file, emb).unwrap();
    for (i, want) in [
        (0, -0.10654449462890625),
        (31, -0.20040512084960938),
        (32, -0.09348678588867188),
        (1_000_000, 0.03211212158203125),
        (576 * 49152 - 1, -0.0417022705078125),
    ] {
        assert_close(emb_vals[i], want, &format!("token_embd[{i}]"));
    }

    let norm = g.tensor("blk.0.attn_norm.weight").unwrap();
    assert_eq!(norm.dtype, GgmlType::F32);
    let norm_vals = g.read_tensor_f32(&mut file, norm).unwrap();
    assert_close(norm_vals[0], 0.01397705078125, "attn_norm[0]");
    assert_close(norm_vals[575], -0.038330078125, "attn_norm[575]");
}
