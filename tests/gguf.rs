//! GGUF reader/writer: checked against ggml's own `gguf_*` reader (an implementation we did not
//! write) on the real model and on files we write, plus a corpus of hand-made corrupt files.

mod common;

use common::{ggml_gguf_read, model_path, scratch_dir, squeeze, Rng};
use famstream::dtype::GgmlType;
use famstream::gguf::{Array, GgufFile, GgufWriter, Value};
use famstream::Error;

#[test]
fn real_model_tensors_agree_with_ggml_reader_and_are_views_into_the_map() {
    let path = model_path();
    let ours = GgufFile::open(&path).expect("our reader opens the real model");
    let theirs = ggml_gguf_read(&path).expect("ggml's reader opens the real model");
    assert!(ours.is_mapped());
    assert_eq!(ours.version, theirs.version);
    assert_eq!(ours.alignment, theirs.alignment);
    assert_eq!(ours.data_offset, theirs.data_offset);
    assert_eq!(ours.tensors().len(), 272, "SmolLM2-135M has 272 tensors");
    assert_eq!(ours.tensors().len(), theirs.tensors.len());
    for (a, b) in ours.tensors().iter().zip(&theirs.tensors) {
        assert_eq!(a.name, b.name);
        assert_eq!(a.ty.0, b.ty, "type of {}", a.name);
        assert_eq!(squeeze(&a.ne), b.ne, "shape of {}", a.name);
        assert_eq!(a.offset, b.offset, "offset of {}", a.name);
        assert_eq!(a.size, b.size, "size of {}", a.name);
    }
    // Keys and their value types agree too.
    let our_keys: Vec<(String, u32)> = ours
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.value_type() as u32))
        .collect();
    assert_eq!(our_keys, theirs.keys);
    // Zero-copy: every tensor's bytes lie inside the mapping at data_offset + offset.
    let map = ours.bytes().as_ptr_range();
    for t in ours.tensors() {
        let d = ours.tensor_data(t).unwrap();
        assert_eq!(d.as_ptr(), unsafe {
            map.start.add((ours.data_offset + t.offset) as usize)
        });
        assert!(d.as_ptr_range().end <= map.end);
        assert_eq!(d.len() as u64, t.size);
    }
}

#[test]
fn our_type_table_matches_ggml() {
    for ty in GgmlType::all() {
        let (blck, size) =
            famstream::ggml::ggml_type_traits(ty).expect("ggml knows every type we list");
        assert_eq!((ty.block_size(), ty.type_size()), (blck, size), "type {ty}");
    }
    // and we know every type ggml has
    for id in 0..llama_cpp_sys_2::GGML_TYPE_COUNT {
        if famstream::ggml::ggml_type_traits(GgmlType(id)).is_some() {
            assert!(
                GgmlType(id).is_known(),
                "ggml type id {id} missing from our table"
            );
        }
    }
}

/// A value of every type, including nested arrays.
fn all_value_kinds() -> Vec<(String, Value)> {
    vec![
        ("t.u8".into(), Value::U8(200)),
        ("t.i8".into(), Value::I8(-100)),
        ("t.u16".into(), Value::U16(60000)),
        ("t.i16".into(), Value::I16(-30000)),
        ("t.u32".into(), Value::U32(4_000_000_000)),
        ("t.i32".into(), Value::I32(-2_000_000_000)),
        ("t.f32".into(), Value::F32(-1.5e-7)),
        ("t.bool".into(), Value::Bool(true)),
        ("t.string".into(), Value::String("héllo ✓ 中文".into())),
        ("t.u64".into(), Value::U64(u64::MAX - 7)),
        ("t.i64".into(), Value::I64(i64::MIN + 3)),
        ("t.f64".into(), Value::F64(std::f64::consts::PI)),
        ("t.arr.u8".into(), Value::Array(Array::U8(vec![0, 1, 255]))),
        ("t.arr.i8".into(), Value::Array(Array::I8(vec![-128, 127]))),
        ("t.arr.u16".into(), Value::Array(Array::U16(vec![1, 65535]))),
        ("t.arr.i16".into(), Value::Array(Array::I16(vec![-1, 2]))),
        ("t.arr.u32".into(), Value::Array(Array::U32(vec![7, 8, 9]))),
        ("t.arr.i32".into(), Value::Array(Array::I32(vec![-7, 8]))),
        (
            "t.arr.f32".into(),
            Value::Array(Array::F32(vec![0.5, -0.25, f32::MAX])),
        ),
        (
            "t.arr.bool".into(),
            Value::Array(Array::Bool(vec![true, false, true])),
        ),
        (
            "t.arr.string".into(),
            Value::Array(Array::String(vec!["a".into(), String::new(), "ü".into()])),
        ),
        ("t.arr.u64".into(), Value::Array(Array::U64(vec![u64::MAX]))),
        ("t.arr.i64".into(), Value::Array(Array::I64(vec![i64::MIN]))),
        (
            "t.arr.f64".into(),
            Value::Array(Array::F64(vec![1e300, -0.0])),
        ),
        ("t.arr.empty".into(), Value::Array(Array::F32(vec![]))),
    ]
}

fn nested_arrays() -> (String, Value) {
    (
        "t.arr.nested".into(),
        Value::Array(Array::Array(vec![
            Array::U32(vec![1, 2]),
            Array::String(vec!["x".into()]),
            Array::Array(vec![Array::F64(vec![2.5])]),
        ])),
    )
}

/// Tensors of several ggml types with recognisable bytes.
fn sample_tensors() -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
    let mut rng = Rng(42);
    let mut v = Vec::new();
    for (name, ty, ne) in [
        ("a.f32", GgmlType::F32, vec![7u64, 3]),
        ("b.f16", GgmlType::F16, vec![5, 2, 2]),
        ("c.q8_0", GgmlType::Q8_0, vec![64, 3]),
        ("d.q4_0", GgmlType::Q4_0, vec![32, 5]),
        ("e.q4_k", GgmlType::Q4_K, vec![256, 2]),
        ("f.bf16", GgmlType::BF16, vec![3]),
        ("g.i32", GgmlType::I32, vec![2, 2, 2, 2]),
    ] {
        let size = ty.tensor_size(&ne).unwrap() as usize;
        let data: Vec<u8> = (0..size).map(|_| rng.next_u64() as u8).collect();
        v.push((name.to_string(), ty, ne, data));
    }
    v
}

fn write_sample(
    path: &std::path::Path,
    with_nested: bool,
) -> Vec<(String, GgmlType, Vec<u64>, Vec<u8>)> {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("test".into()));
    for (k, v) in all_value_kinds() {
        w.set(&k, v);
    }
    if with_nested {
        let (k, v) = nested_arrays();
        w.set(&k, v);
    }
    let tensors = sample_tensors();
    for (name, ty, ne, _) in &tensors {
        w.add_tensor(name, *ty, ne).unwrap();
    }
    let data: Vec<&[u8]> = tensors.iter().map(|t| t.3.as_slice()).collect();
    w.write_with_data(path, &data).unwrap();
    tensors
}

#[test]
fn write_read_round_trip_is_exact_for_every_value_type_and_tensor_type() {
    let dir = scratch_dir("roundtrip");
    let path = dir.join("all.gguf");
    let tensors = write_sample(&path, true);
    let g = GgufFile::open(&path).unwrap();
    let mut expected = vec![(
        "general.architecture".to_string(),
        Value::String("test".into()),
    )];
    expected.extend(all_value_kinds());
    expected.push(nested_arrays());
    assert_eq!(g.metadata(), expected.as_slice());
    assert_eq!(g.tensors().len(), tensors.len());
    for (t, (name, ty, ne, data)) in g.tensors().iter().zip(&tensors) {
        assert_eq!((&t.name, t.ty, &t.ne), (name, *ty, ne));
        assert_eq!(t.offset % g.alignment, 0);
        assert_eq!(g.tensor_data(t).unwrap(), data.as_slice(), "data of {name}");
    }
    // A second write of what we read gives the same bytes.
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, t.ty, &t.ne).unwrap();
    }
    let data: Vec<&[u8]> = g
        .tensors()
        .iter()
        .map(|t| g.tensor_data(t).unwrap())
        .collect();
    let path2 = dir.join("again.gguf");
    w.write_with_data(&path2, &data).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&path2).unwrap()
    );
}

#[test]
fn files_we_write_are_read_identically_by_ggml() {
    use llama_cpp_sys_2 as sys;
    let dir = scratch_dir("ggml-accepts");
    let path = dir.join("flat.gguf");
    // ggml's reader does not support nested arrays; everything else is in this file.
    let tensors = write_sample(&path, false);
    let theirs = ggml_gguf_read(&path).expect("ggml accepts the file we wrote");
    let ours = GgufFile::open(&path).unwrap();
    assert_eq!(theirs.version, 3);
    assert_eq!(theirs.data_offset, ours.data_offset);
    let our_keys: Vec<(String, u32)> = ours
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), v.value_type() as u32))
        .collect();
    assert_eq!(our_keys, theirs.keys);
    // Compare every value through ggml's typed getters.
    let ctx = theirs.ctx;
    for (i, (key, v)) in ours.metadata().iter().enumerate() {
        let i = i as i64;
        unsafe {
            let same = match v {
                Value::U8(x) => sys::gguf_get_val_u8(ctx, i) == *x,
                Value::I8(x) => sys::gguf_get_val_i8(ctx, i) == *x,
                Value::U16(x) => sys::gguf_get_val_u16(ctx, i) == *x,
                Value::I16(x) => sys::gguf_get_val_i16(ctx, i) == *x,
                Value::U32(x) => sys::gguf_get_val_u32(ctx, i) == *x,
                Value::I32(x) => sys::gguf_get_val_i32(ctx, i) == *x,
                Value::F32(x) => sys::gguf_get_val_f32(ctx, i).to_bits() == x.to_bits(),
                Value::Bool(x) => sys::gguf_get_val_bool(ctx, i) == *x,
                Value::U64(x) => sys::gguf_get_val_u64(ctx, i) == *x,
                Value::I64(x) => sys::gguf_get_val_i64(ctx, i) == *x,
                Value::F64(x) => sys::gguf_get_val_f64(ctx, i).to_bits() == x.to_bits(),
                Value::String(s) => {
                    std::ffi::CStr::from_ptr(sys::gguf_get_val_str(ctx, i))
                        .to_str()
                        .unwrap()
                        == s
                }
                Value::Array(a) => {
                    let n = sys::gguf_get_arr_n(ctx, i);
                    n == a.len()
                        && sys::gguf_get_arr_type(ctx, i) == a.elem_type() as u32
                        && match a {
                            Array::String(v) => v.iter().enumerate().all(|(j, s)| {
                                std::ffi::CStr::from_ptr(sys::gguf_get_arr_str(ctx, i, j))
                                    .to_str()
                                    .unwrap()
                                    == s
                            }),
                            _ => {
                                let p = sys::gguf_get_arr_data(ctx, i) as *const u8;
                                let bytes: Vec<u8> = match a {
                                    Array::U8(v) => v.clone(),
                                    Array::I8(v) => v.iter().map(|x| *x as u8).collect(),
                                    Array::U16(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::I16(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::U32(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::I32(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::F32(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::Bool(v) => v.iter().map(|x| *x as u8).collect(),
                                    Array::U64(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::I64(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::F64(v) => {
                                        v.iter().flat_map(|x| x.to_le_bytes()).collect()
                                    }
                                    Array::String(_) | Array::Array(_) => unreachable!(),
                                };
                                bytes.is_empty()
                                    || std::slice::from_raw_parts(p, bytes.len())
                                        == bytes.as_slice()
                            }
                        }
                }
            };
            assert!(same, "ggml reads key `{key}` differently");
        }
    }
    // Tensor infos, and the data at ggml's offsets, are ours.
    let file = std::fs::read(&path).unwrap();
    assert_eq!(theirs.tensors.len(), tensors.len());
    for (t, (name, ty, ne, data)) in theirs.tensors.iter().zip(&tensors) {
        assert_eq!((&t.name, t.ty, &t.ne), (name, ty.0, &squeeze(ne)));
        let start = (theirs.data_offset + t.offset) as usize;
        assert_eq!(
            &file[start..start + t.size as usize],
            data.as_slice(),
            "bytes of {name}"
        );
    }
}

#[test]
fn writer_failure_leaves_no_output_file() {
    let dir = scratch_dir("atomic");
    let path = dir.join("out.gguf");
    let mut w = GgufWriter::new();
    w.add_tensor("x", GgmlType::F32, &[4]).unwrap();
    // The data callback writes too few bytes: the write fails and nothing is left behind.
    let r = w.write(&path, |_, _, out| {
        out.write_all(&[0u8; 8])
            .map_err(|e| Error::io("x", "write", e))
    });
    assert!(matches!(r, Err(Error::Tensor { .. })), "{r:?}");
    assert!(!path.exists());
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "temporary file left behind"
    );
}

// ---- corrupt files ---------------------------------------------------------------------------

/// Raw GGUF bytes, for hand-made corrupt files.
#[derive(Default)]
struct Raw(Vec<u8>);
impl Raw {
    fn header(n_tensors: u64, n_kv: u64) -> Raw {
        let mut r = Raw(b"GGUF".to_vec());
        r.u32(3).u64(n_tensors).u64(n_kv);
        r
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64);
        self.0.extend(s.as_bytes());
        self
    }
    fn kv_u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.str(k).u32(4).u32(v)
    }
    fn tensor(&mut self, name: &str, ne: &[u64], ty: u32, offset: u64) -> &mut Self {
        self.str(name).u32(ne.len() as u32);
        for d in ne {
            self.u64(*d);
        }
        self.u32(ty).u64(offset)
    }
    fn pad_data(&mut self, data_bytes: usize) -> &mut Self {
        while !self.0.len().is_multiple_of(32) {
            self.0.push(0);
        }
        self.0.extend(std::iter::repeat_n(0u8, data_bytes));
        self
    }
}

fn parse_err(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes, "corrupt.gguf") {
        Ok(_) => panic!("corrupt file was accepted"),
        Err(e @ Error::Gguf { .. }) => e.to_string(),
        Err(e) => panic!("expected a GGUF error, got {e:?}"),
    }
}

#[test]
fn corrupt_files_give_specific_errors() {
    let mut cases: Vec<(&str, Vec<u8>, &str)> = Vec::new();
    let mut bad_magic = Raw::header(0, 0);
    bad_magic.0[3] = b'X';
    cases.push(("bad magic", bad_magic.0, "bad magic"));
    cases.push((
        "truncated header",
        Raw::header(0, 0).0[..10].to_vec(),
        "truncated",
    ));
    let mut v1 = Raw::header(0, 0);
    v1.0[4] = 1;
    cases.push(("version 1", v1.0, "unsupported version 1"));
    cases.push((
        "huge tensor count",
        Raw::header(u64::MAX, 0).0,
        "tensor count 18446744073709551615 exceeds the limit",
    ));
    cases.push((
        "kv count past EOF",
        Raw::header(0, 1000).0,
        "metadata count 1000 cannot fit",
    ));
    let mut long_key = Raw::header(0, 1);
    long_key.u64(1 << 40).u64(0);
    cases.push((
        "key longer than the cap",
        long_key.0,
        "exceeds the limit of 65535",
    ));
    let mut str_past_eof = Raw::header(0, 1);
    str_past_eof
        .str("k")
        .u32(8)
        .u64(1_000_000)
        .0
        .extend(b"short");
    cases.push((
        "string length past EOF",
        str_past_eof.0,
        "needs 1000000 bytes but only 5 remain",
    ));
    let mut bomb = Raw::header(0, 1);
    bomb.str("bomb").u32(9);
    for _ in 0..1000 {
        bomb.u32(9).u64(1);
    }
    cases.push(("nested-array bomb", bomb.0, "nested deeper than 4"));
    let mut huge_array = Raw::header(0, 1);
    huge_array.str("arr").u32(9).u32(6).u64(u64::MAX / 2);
    cases.push((
        "array count past EOF",
        huge_array.0,
        "array count 9223372036854775807 cannot fit",
    ));
    let mut bad_vtype = Raw::header(0, 1);
    bad_vtype.str("k").u32(13).u32(0);
    cases.push(("unknown value type", bad_vtype.0, "unknown value type 13"));
    let mut bad_bool = Raw::header(0, 1);
    bad_bool.str("k").u32(7).0.push(7);
    cases.push(("bool not 0/1", bad_bool.0, "bool byte 7"));
    let mut dup = Raw::header(0, 2);
    dup.kv_u32("k", 1).kv_u32("k", 2);
    cases.push(("duplicate key", dup.0, "duplicate metadata key `k`"));
    let mut bad_align = Raw::header(0, 1);
    bad_align.kv_u32("general.alignment", 3);
    cases.push(("alignment not a power of two", bad_align.0, "power of two"));
    let mut bad_type = Raw::header(1, 0);
    bad_type.tensor("w", &[32], 99, 0).pad_data(64);
    cases.push((
        "unknown tensor type",
        bad_type.0,
        "tensor `w`: unknown ggml type id 99",
    ));
    let mut removed_type = Raw::header(1, 0);
    removed_type.tensor("w", &[32], 4, 0).pad_data(64);
    cases.push((
        "removed tensor type Q4_2",
        removed_type.0,
        "unknown ggml type id 4",
    ));
    let mut misaligned = Raw::header(1, 0);
    misaligned.tensor("w", &[4], 0, 3).pad_data(64);
    cases.push((
        "misaligned tensor data",
        misaligned.0,
        "offset 3 is not aligned to 32",
    ));
    let mut overlap = Raw::header(2, 0);
    overlap
        .tensor("a", &[16], 0, 0)
        .tensor("b", &[16], 0, 32)
        .pad_data(128);
    cases.push((
        "overlapping tensors",
        overlap.0,
        "tensors `a` and `b` overlap",
    ));
    let mut overflow = Raw::header(1, 0);
    overflow.tensor("w", &[8], 0, u64::MAX - 31).pad_data(64);
    cases.push((
        "offset+size overflow",
        overflow.0,
        "runs past the end of the data section",
    ));
    let mut past_eof = Raw::header(1, 0);
    past_eof.tensor("w", &[1024], 0, 0).pad_data(64);
    cases.push((
        "tensor data past EOF",
        past_eof.0,
        "tensor `w`: data [0, +4096) runs past the end",
    ));
    let mut size_overflow = Raw::header(1, 0);
    size_overflow
        .tensor("w", &[1 << 40, 1 << 40], 0, 0)
        .pad_data(64);
    cases.push((
        "element count overflow",
        size_overflow.0,
        "does not fit type f32",
    ));
    let mut bad_block = Raw::header(1, 0);
    bad_block.tensor("w", &[33], 8, 0).pad_data(64);
    cases.push((
        "row not a whole number of blocks",
        bad_block.0,
        "multiple of 32",
    ));
    let mut dims = Raw::header(1, 0);
    dims.str("w").u32(5).pad_data(64);
    cases.push(("too many dims", dims.0, "5 dimensions"));
    let mut bad_utf8 = Raw::header(0, 1);
    bad_utf8.u64(2).0.extend([0xff, 0xfe]);
    bad_utf8.u32(4).u32(0);
    cases.push(("key not UTF-8", bad_utf8.0, "not valid UTF-8"));

    for (what, bytes, expect) in cases {
        let msg = parse_err(bytes);
        assert!(
            msg.contains(expect),
            "{what}: error `{msg}` does not mention `{expect}`"
        );
    }
}

#[test]
fn missing_and_empty_files_are_io_and_gguf_errors() {
    let dir = scratch_dir("missing");
    let e = GgufFile::open(dir.join("nope.gguf")).unwrap_err();
    assert!(
        matches!(e, Error::Io { .. }) && e.to_string().contains("nope.gguf"),
        "{e}"
    );
    std::fs::write(dir.join("empty.gguf"), b"").unwrap();
    let e = GgufFile::open(dir.join("empty.gguf")).unwrap_err();
    assert!(e.to_string().contains("empty file"), "{e}");
}
