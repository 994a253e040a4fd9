//! ggml's tensor element types: one table with block size and bytes per block.
//!
//! This table is ours (GGUF parsing must validate type ids before anything touches ggml, whose
//! own lookups index arrays unchecked); a test checks every entry against ggml's `ggml_blck_size`
//! and `ggml_type_size`.

use std::fmt;

/// A ggml type id as stored in GGUF tensor infos.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GgmlType(pub u32);

struct TypeInfo {
    id: u32,
    name: &'static str,
    /// Elements per block.
    blck: u64,
    /// Bytes per block.
    size: u64,
}

#[rustfmt::skip]
const TYPES: &[TypeInfo] = &[
    TypeInfo { id: 0,  name: "f32",     blck: 1,   size: 4 },
    TypeInfo { id: 1,  name: "f16",     blck: 1,   size: 2 },
    TypeInfo { id: 2,  name: "q4_0",    blck: 32,  size: 18 },
    TypeInfo { id: 3,  name: "q4_1",    blck: 32,  size: 20 },
    TypeInfo { id: 6,  name: "q5_0",    blck: 32,  size: 22 },
    TypeInfo { id: 7,  name: "q5_1",    blck: 32,  size: 24 },
    TypeInfo { id: 8,  name: "q8_0",    blck: 32,  size: 34 },
    TypeInfo { id: 9,  name: "q8_1",    blck: 32,  size: 36 },
    TypeInfo { id: 10, name: "q2_K",    blck: 256, size: 84 },
    TypeInfo { id: 11, name: "q3_K",    blck: 256, size: 110 },
    TypeInfo { id: 12, name: "q4_K",    blck: 256, size: 144 },
    TypeInfo { id: 13, name: "q5_K",    blck: 256, size: 176 },
    TypeInfo { id: 14, name: "q6_K",    blck: 256, size: 210 },
    TypeInfo { id: 15, name: "q8_K",    blck: 256, size: 292 },
    TypeInfo { id: 16, name: "iq2_xxs", blck: 256, size: 66 },
    TypeInfo { id: 17, name: "iq2_xs",  blck: 256, size: 74 },
    TypeInfo { id: 18, name: "iq3_xxs", blck: 256, size: 98 },
    TypeInfo { id: 19, name: "iq1_s",   blck: 256, size: 50 },
    TypeInfo { id: 20, name: "iq4_nl",  blck: 32,  size: 18 },
    TypeInfo { id: 21, name: "iq3_s",   blck: 256, size: 110 },
    TypeInfo { id: 22, name: "iq2_s",   blck: 256, size: 82 },
    TypeInfo { id: 23, name: "iq4_xs",  blck: 256, size: 136 },
    TypeInfo { id: 24, name: "i8",      blck: 1,   size: 1 },
    TypeInfo { id: 25, name: "i16",     blck: 1,   size: 2 },
    TypeInfo { id: 26, name: "i32",     blck: 1,   size: 4 },
    TypeInfo { id: 27, name: "i64",     blck: 1,   size: 8 },
    TypeInfo { id: 28, name: "f64",     blck: 1,   size: 8 },
    TypeInfo { id: 29, name: "iq1_m",   blck: 256, size: 56 },
    TypeInfo { id: 30, name: "bf16",    blck: 1,   size: 2 },
    TypeInfo { id: 34, name: "tq1_0",   blck: 256, size: 54 },
    TypeInfo { id: 35, name: "tq2_0",   blck: 256, size: 66 },
    TypeInfo { id: 39, name: "mxfp4",   blck: 32,  size: 17 },
    TypeInfo { id: 40, name: "nvfp4",   blck: 64,  size: 36 },
    TypeInfo { id: 41, name: "q1_0",    blck: 128, size: 18 },
    TypeInfo { id: 42, name: "q2_0",    blck: 64,  size: 18 },
];

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const Q5_K: GgmlType = GgmlType(13);
    pub const Q6_K: GgmlType = GgmlType(14);
    pub const I32: GgmlType = GgmlType(26);
    pub const I64: GgmlType = GgmlType(27);
    pub const BF16: GgmlType = GgmlType(30);

    fn info(self) -> Option<&'static TypeInfo> {
        TYPES.iter().find(|t| t.id == self.0)
    }
    /// Whether this id names a type that GGUF files may contain.
    pub fn is_known(self) -> bool {
        self.info().is_some()
    }
    /// Every known type, in id order.
    pub fn all() -> impl Iterator<Item = GgmlType> {
        TYPES.iter().map(|t| GgmlType(t.id))
    }
    /// Look a type up by its ggml name (`q8_0`, `f16`, ...; case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        TYPES
            .iter()
            .find(|t| t.name.eq_ignore_ascii_case(name))
            .map(|t| GgmlType(t.id))
    }
    pub fn name(self) -> &'static str {
        self.info().map_or("unknown", |t| t.name)
    }
    /// Elements per block (0 for an unknown type).
    pub fn block_size(self) -> u64 {
        self.info().map_or(0, |t| t.blck)
    }
    /// Bytes per block (0 for an unknown type).
    pub fn type_size(self) -> u64 {
        self.info().map_or(0, |t| t.size)
    }
    /// Bytes of a row of `ne0` elements, or `None` if `ne0` is not a whole number of blocks or
    /// the type is unknown.
    pub fn row_size(self, ne0: u64) -> Option<u64> {
        let info = self.info()?;
        if !ne0.is_multiple_of(info.blck) {
            return None;
        }
        (ne0 / info.blck).checked_mul(info.size)
    }
    /// Bytes of a tensor of shape `ne` (ggml order: ne[0] is the row length), with overflow checks.
    pub fn tensor_size(self, ne: &[u64]) -> Option<u64> {
        let row = self.row_size(*ne.first().unwrap_or(&1))?;
        ne.iter()
            .skip(1)
            .try_fold(row, |acc, &n| acc.checked_mul(n))
    }
    /// Bits per weight of this type.
    pub fn bits_per_weight(self) -> f64 {
        match self.info() {
            Some(t) => 8.0 * t.size as f64 / t.blck as f64,
            None => 0.0,
        }
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.info() {
            Some(t) => f.write_str(t.name),
            None => write!(f, "type#{}", self.0),
        }
    }
}
