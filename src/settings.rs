//! FAM runtime settings (`fam.*` GGUF keys) and the memory policies they select.
//!
//! The keys are ours (community keys must be namespaced): `fam.policy`, `fam.block_size` (B),
//! `fam.mem_blocks` (M), `fam.fam_len` (F), `fam.sinks` (S), `fam.init`, `fam.query_pos`,
//! `fam.zero_first_residual`, `fam.renorm`, `fam.feedback`, `fam.decay`, `fam.keep_len`. A file
//! without them gets [`FamSettings::default`]; command-line flags override either.
//!
//! [`FIELDS`] is the one table of them (key, command-line flag, type, doc, how to read and set
//! it): GGUF read and write, snapshots' JSON, `inspect`, the reports and the command-line
//! overrides all go through it, so a setting added there is carried everywhere.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, GgufWriter, Value};
use std::fmt;
use std::str::FromStr;

pub const KEY_POLICY: &str = "fam.policy";
pub const KEY_BLOCK_SIZE: &str = "fam.block_size";
pub const KEY_MEM_BLOCKS: &str = "fam.mem_blocks";
pub const KEY_FAM_LEN: &str = "fam.fam_len";
pub const KEY_SINKS: &str = "fam.sinks";
pub const KEY_INIT: &str = "fam.init";
pub const KEY_QUERY_POS: &str = "fam.query_pos";
pub const KEY_ZERO_FIRST_RESIDUAL: &str = "fam.zero_first_residual";
pub const KEY_RENORM: &str = "fam.renorm";
pub const KEY_FEEDBACK: &str = "fam.feedback";
pub const KEY_DECAY: &str = "fam.decay";
pub const KEY_KEEP_LEN: &str = "fam.keep_len";
/// Most tokens the `keep` policy keeps (F): its graphs gather and rotate them all per batch.
pub const MAX_KEEP: u32 = 4096;
/// Every settings key (other `fam.*` keys, such as an adapter's base fingerprint, are not
/// settings).
pub const SETTINGS_KEYS: [&str; 12] = [
    KEY_POLICY,
    KEY_BLOCK_SIZE,
    KEY_MEM_BLOCKS,
    KEY_FAM_LEN,
    KEY_SINKS,
    KEY_INIT,
    KEY_QUERY_POS,
    KEY_ZERO_FIRST_RESIDUAL,
    KEY_RENORM,
    KEY_FEEDBACK,
    KEY_DECAY,
    KEY_KEEP_LEN,
];

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $var:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Debug)]
        pub enum $name { $($(#[$vm])* $var),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$var),+];
            pub fn as_str(self) -> &'static str { match self { $($name::$var => $s),+ } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self> {
                match s {
                    $($s => Ok($name::$var),)+
                    _ => Err(Error::Invalid(format!(
                        "unknown {} `{s}` (one of: {})",
                        stringify!($name),
                        [$($s),+].join(", ")
                    ))),
                }
            }
        }
    };
}

string_enum!(
    /// How a stream remembers what it has read.
    MemoryPolicy {
        /// Plain causal attention over everything (bounded by the model's context length).
        Full = "full",
        /// Block sliding window: the current block plus the M previous blocks.
        Bswa = "bswa",
        /// `bswa` plus the first S tokens of the stream, always visible (attention sinks).
        Sink = "sink",
        /// `bswa` plus Feedback Attention Memory: F rows per layer fed back block after block.
        Fam = "fam",
        /// `sink` plus F kept tokens: when a block leaves the window, the F most salient
        /// tokens read so far (scored by the surprisal -log p, taken when each was read,
        /// summed over a few tokens around it; `keep`) keep their K/V, shown just before the
        /// current block.
        /// Training-free, constant size.
        Keep = "keep",
    }
);

string_enum!(
    /// Where the initial FAM comes from when the GGUF has no learned one.
    FamInit {
        /// A learned per-layer initial FAM stored in the GGUF (`fam.init_memory` tensors).
        Learned = "learned",
        /// BOS + a short fixed seed text run through the model; each layer's inputs.
        SeedText = "seed",
        /// The BOS hidden state of each layer, repeated F times.
        Bos = "bos",
        /// No initial FAM; after block 1 the last F tokens' layer inputs.
        TailOfBlock = "tail",
    }
);

string_enum!(
    /// The RoPE position of the FAM *queries* during the update (the paper does not say).
    FamQueryPos {
        /// The last F positions of the block being compressed (no query looks forward).
        BlockEnd = "block-end",
        /// The previous FAM's positions.
        PrevFam = "prev-fam",
    }
);

string_enum!(
    /// How the FAM of the next block is made.
    FamFeedback {
        /// The paper's rule: each layer's FAM rows attend to the old FAM and the block and go
        /// through that same layer again (feedback within a layer).
        Within = "within",
        /// A training-free variant for un-tuned models (not the paper's): the seed text is read
        /// again at the end of every block, attending to the old FAM and the block at every
        /// layer like ordinary tokens; its per-layer K/V become the new FAM. The rows stay in
        /// each layer's natural input distribution.
        Reread = "reread",
    }
);

/// The memory settings of a stream.
#[derive(Clone, Copy, PartialEq, Debug)]
pub struct FamSettings {
    pub policy: MemoryPolicy,
    /// B: tokens per block.
    pub block_size: u32,
    /// M: finished blocks kept in the ring.
    pub mem_blocks: u32,
    /// F: FAM rows per layer (`fam`), or tokens kept (`keep`).
    pub fam_len: u32,
    /// S: attention-sink tokens kept forever (`sink` policy).
    pub sinks: u32,
    pub init: FamInit,
    pub query_pos: FamQueryPos,
    /// The stream's first FAM update uses a zero residual instead of the previous FAM (the
    /// paper's rule; off by default, see `Default`).
    pub zero_first_residual: bool,
    /// Rescale each updated FAM row to its previous RMS (a training-free runtime rule; see
    /// `Default`).
    pub renorm: bool,
    pub feedback: FamFeedback,
    /// A leaky memory: each updated FAM row becomes (1 - decay) x itself + decay x its
    /// learned initial row, so the rows stay within a bounded distance of the init however long
    /// the stream (0: the paper's FAM; needs a learned init, see `FamMemory::new`).
    pub decay: f32,
    /// `fam` only: besides the F FAM rows, keep the K/V of this many salient tokens that left
    /// the window, as the `keep` policy does (0: none). The FAM compresses; kept tokens carry
    /// words verbatim (a name the FAM rows do not hold; results/README.md). Other policies
    /// ignore it, as they ignore the FAM's settings: an adapter that sets it still runs under
    /// `--memory keep` or `sink` (the `keep` policy's own count is `fam_len`).
    pub keep_len: u32,
}

impl Default for FamSettings {
    /// The paper's B/F/M (guide §1). The default *policy* is `sink`, chosen by measurement on
    /// the un-tuned SmolLM2 (results/README.md): over 200k tokens of Moby-Dick it scores 39.47,
    /// against full attention's 37.43 within its 8k context (KL 0.009 from full over 0-8k),
    /// while `bswa` scores 57% worse and the paper's FAM, which an un-tuned model has never
    /// learned to read or write, diverges block after block. A model file can set `fam.policy`
    /// (e.g. a FAM-tuned checkpoint).
    fn default() -> Self {
        FamSettings {
            policy: MemoryPolicy::Sink,
            block_size: 1024,
            mem_blocks: 3,
            fam_len: 64,
            sinks: 4,
            init: FamInit::SeedText,
            query_pos: FamQueryPos::BlockEnd,
            // The paper zeroes the residual of the first update because its initial FAM is a
            // learned prompt. With a training-free init on an un-tuned model that removes the
            // residual stream's large components from the FAM rows and wrecks every later block
            // (SmolLM2, B=32: KL from full attention 2.7-8 with it, 0.002-0.7 without), so the
            // default keeps the residual. `--fam-zero-first-residual true` restores the rule.
            zero_first_residual: false,
            renorm: false,
            feedback: FamFeedback::Within,
            decay: 0.0,
            keep_len: 0,
        }
    }
}

/// A setting's value in a form every carrier has: GGUF metadata, JSON, a command-line flag.
#[derive(Clone, PartialEq, Debug)]
pub enum Raw {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
}

/// The type of a setting's value.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    U32,
    F32,
    Bool,
    Str,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::U32 => "a u32",
            Kind::F32 => "a number",
            Kind::Bool => "a bool",
            Kind::Str => "a string",
        }
    }
}

/// One `fam.*` setting.
pub struct Field {
    /// Its name in JSON (reports, snapshots); the GGUF key is `fam.<name>`.
    pub name: &'static str,
    /// The GGUF metadata key.
    pub key: &'static str,
    /// The command-line flag that overrides it.
    pub flag: &'static str,
    pub kind: Kind,
    pub doc: &'static str,
    get: fn(&FamSettings) -> Raw,
    /// Sets it from a value of its kind (a string is parsed and may be refused).
    set: fn(&mut FamSettings, &Raw) -> Result<()>,
}

impl Field {
    pub fn get(&self, s: &FamSettings) -> Raw {
        (self.get)(s)
    }
    /// Set it in `s`; a value of another kind, or a string that names nothing, is refused
    /// (callers say where the value came from).
    pub fn set(&self, s: &mut FamSettings, v: &Raw) -> Result<()> {
        let kind_ok = matches!(
            (self.kind, v),
            (Kind::U32, Raw::U32(_))
                | (Kind::F32, Raw::F32(_))
                | (Kind::Bool, Raw::Bool(_))
                | (Kind::Str, Raw::Str(_))
        );
        if !kind_ok {
            return Err(Error::Invalid(format!(
                "`{}` must be {}, is {v:?}",
                self.name,
                self.kind.name()
            )));
        }
        (self.set)(s, v)
    }
    /// Its value in a GGUF file, if there.
    fn from_gguf(&self, g: &GgufFile) -> Result<Option<Raw>> {
        Ok(match self.kind {
            Kind::U32 => g.opt_u32(self.key)?.map(Raw::U32),
            Kind::F32 => g.opt_f32(self.key)?.map(Raw::F32),
            Kind::Bool => g.opt_bool(self.key)?.map(Raw::Bool),
            Kind::Str => g.opt_str(self.key)?.map(|v| Raw::Str(v.to_string())),
        })
    }
}

impl Raw {
    pub fn to_gguf(&self) -> Value {
        match self {
            Raw::U32(v) => Value::U32(*v),
            Raw::F32(v) => Value::F32(*v),
            Raw::Bool(v) => Value::Bool(*v),
            Raw::Str(v) => Value::String(v.clone()),
        }
    }
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Raw::U32(v) => (*v).into(),
            // by its shortest decimal (0.1, not the f64 nearest to the f32: 0.10000000149...)
            Raw::F32(v) => v.to_string().parse::<f64>().map_or((*v).into(), Into::into),
            Raw::Bool(v) => (*v).into(),
            Raw::Str(v) => v.as_str().into(),
        }
    }
    fn from_json(j: &serde_json::Value, kind: Kind) -> Option<Raw> {
        match kind {
            Kind::U32 => j.as_u64().and_then(|v| u32::try_from(v).ok()).map(Raw::U32),
            Kind::F32 => j.as_f64().map(|v| Raw::F32(v as f32)),
            Kind::Bool => j.as_bool().map(Raw::Bool),
            Kind::Str => j.as_str().map(|v| Raw::Str(v.to_string())),
        }
    }
    fn u32(&self) -> u32 {
        match self {
            Raw::U32(v) => *v,
            _ => unreachable!("Field::set checks the kind"),
        }
    }
    fn f32(&self) -> f32 {
        match self {
            Raw::F32(v) => *v,
            _ => unreachable!("Field::set checks the kind"),
        }
    }
    fn bool(&self) -> bool {
        match self {
            Raw::Bool(v) => *v,
            _ => unreachable!("Field::set checks the kind"),
        }
    }
    fn str(&self) -> &str {
        match self {
            Raw::Str(v) => v,
            _ => unreachable!("Field::set checks the kind"),
        }
    }
}

macro_rules! field {
    ($name:literal, $key:ident, $flag:literal, $kind:ident, $doc:literal,
     |$s:ident| $get:expr, |$t:ident, $v:ident| $set:expr) => {
        Field {
            name: $name,
            key: $key,
            flag: $flag,
            kind: Kind::$kind,
            doc: $doc,
            get: |$s| $get,
            set: |$t, $v| {
                $set;
                Ok(())
            },
        }
    };
}

/// Every setting, in the order reports list them: JSON name, GGUF key, flag, kind, doc, then
/// how to read it from and write it into [`FamSettings`].
#[rustfmt::skip]
pub const FIELDS: [Field; 12] = [
    field!("policy", KEY_POLICY, "--memory", Str, "memory policy: full, bswa, sink, fam or keep",
        |s| Raw::Str(s.policy.as_str().into()), |s, v| s.policy = v.str().parse()?),
    field!("block_size", KEY_BLOCK_SIZE, "--block", U32, "B: tokens per block",
        |s| Raw::U32(s.block_size), |s, v| s.block_size = v.u32()),
    field!("mem_blocks", KEY_MEM_BLOCKS, "--mem-blocks", U32, "M: finished blocks in the window",
        |s| Raw::U32(s.mem_blocks), |s, v| s.mem_blocks = v.u32()),
    field!("fam_len", KEY_FAM_LEN, "--fam-len", U32, "F: FAM rows per layer (fam), tokens kept (keep)",
        |s| Raw::U32(s.fam_len), |s, v| s.fam_len = v.u32()),
    field!("sinks", KEY_SINKS, "--sinks", U32, "S: attention-sink tokens",
        |s| Raw::U32(s.sinks), |s, v| s.sinks = v.u32()),
    field!("init", KEY_INIT, "--fam-init", Str, "initial FAM: seed, bos, tail (or learned)",
        |s| Raw::Str(s.init.as_str().into()), |s, v| s.init = v.str().parse()?),
    field!("query_pos", KEY_QUERY_POS, "--fam-query-pos", Str, "FAM query RoPE position",
        |s| Raw::Str(s.query_pos.as_str().into()), |s, v| s.query_pos = v.str().parse()?),
    field!("zero_first_residual", KEY_ZERO_FIRST_RESIDUAL, "--fam-zero-first-residual", Bool,
        "zero residual on the first FAM update (the paper's rule)",
        |s| Raw::Bool(s.zero_first_residual), |s, v| s.zero_first_residual = v.bool()),
    field!("renorm", KEY_RENORM, "--fam-renorm", Bool, "rescale updated FAM rows to their RMS",
        |s| Raw::Bool(s.renorm), |s, v| s.renorm = v.bool()),
    field!("feedback", KEY_FEEDBACK, "--fam-feedback", Str, "next FAM: within or reread",
        |s| Raw::Str(s.feedback.as_str().into()), |s, v| s.feedback = v.str().parse()?),
    field!("decay", KEY_DECAY, "--fam-decay", F32,
        "leaky FAM: each update pulls the rows toward the learned init by this fraction",
        |s| Raw::F32(s.decay), |s, v| s.decay = v.f32()),
    field!("keep_len", KEY_KEEP_LEN, "--keep-len", U32,
        "fam: salient evicted tokens kept next to the FAM rows, as keep does (0: none)",
        |s| Raw::U32(s.keep_len), |s, v| s.keep_len = v.u32()),
];

/// Settings added after snapshot version 1 was written: a snapshot without them was made with
/// their default (the behaviour before they existed).
const ADDED_LATER: [&str; 2] = ["decay", "keep_len"];

/// The field with this JSON name.
pub fn field(name: &str) -> Option<&'static Field> {
    FIELDS.iter().find(|f| f.name == name)
}

impl FamSettings {
    /// Defaults overridden by whatever `fam.*` keys the file has.
    pub fn from_gguf(g: &GgufFile) -> Result<FamSettings> {
        let mut s = FamSettings::default();
        s.override_from(g)?;
        s.validate()?;
        Ok(s)
    }

    /// Replace the settings that `g` has `fam.*` keys for, keeping the rest (layers of
    /// defaults: built-in, then the model file, then an adapter; see
    /// [`crate::model::Model::fam_settings`]). Does not validate the result.
    pub fn override_from(&mut self, g: &GgufFile) -> Result<()> {
        for f in &FIELDS {
            if let Some(v) = f.from_gguf(g)? {
                f.set(self, &v)
                    .map_err(|e| Error::metadata(f.key, e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Whether the file sets any `fam.*` settings key.
    pub fn present_in(g: &GgufFile) -> bool {
        SETTINGS_KEYS.iter().any(|k| g.get(k).is_some())
    }

    /// Every setting as `fam.*` metadata.
    pub fn write_to(&self, w: &mut GgufWriter) {
        for f in &FIELDS {
            w.set(f.key, f.get(self).to_gguf());
        }
    }

    /// Every setting by its JSON name (reports, snapshots, `inspect`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            FIELDS
                .iter()
                .map(|f| (f.name.to_string(), f.get(self).to_json()))
                .collect(),
        )
    }

    /// The inverse of [`FamSettings::to_json`]: every field must be there, of its kind (not
    /// validated), except those added after the first snapshots ([`ADDED_LATER`]), which
    /// default when absent.
    pub fn from_json(j: &serde_json::Value) -> Result<FamSettings> {
        let mut s = FamSettings::default();
        for f in &FIELDS {
            if ADDED_LATER.contains(&f.name) && j.get(f.name).is_none() {
                continue;
            }
            let v = Raw::from_json(&j[f.name], f.kind).ok_or_else(|| {
                Error::Invalid(format!(
                    "settings: `{}` missing or not {}",
                    f.name,
                    f.kind.name()
                ))
            })?;
            f.set(&mut s, &v)
                .map_err(|e| Error::Invalid(format!("settings: {e}")))?;
        }
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        if self.block_size == 0 || self.block_size > 1 << 16 {
            return Err(Error::Invalid(format!(
                "block size {} (1 to 65536)",
                self.block_size
            )));
        }
        if self.mem_blocks > 64 {
            return Err(Error::Invalid(format!(
                "{} memory blocks (at most 64)",
                self.mem_blocks
            )));
        }
        if self.policy == MemoryPolicy::Fam && self.fam_len > self.block_size {
            return Err(Error::Invalid(format!(
                "FAM length {} exceeds the block size {}",
                self.fam_len, self.block_size
            )));
        }
        if self.renorm && self.feedback == FamFeedback::Reread {
            return Err(Error::Invalid(
                "FAM renorm rescales the `within` feedback's updated rows; the reread \
                 feedback has none (drop --fam-renorm or use --fam-feedback within)"
                    .into(),
            ));
        }
        if !(0.0..1.0).contains(&self.decay) {
            return Err(Error::Invalid(format!(
                "FAM decay {} (0 <= decay < 1)",
                self.decay
            )));
        }
        if self.decay > 0.0 && self.feedback == FamFeedback::Reread {
            return Err(Error::Invalid(
                "FAM decay pulls the `within` feedback's updated rows toward the initial FAM; \
                 the reread feedback has none (drop --fam-decay or use --fam-feedback within)"
                    .into(),
            ));
        }
        if self.policy == MemoryPolicy::Keep && (self.fam_len == 0 || self.fam_len > MAX_KEEP) {
            return Err(Error::Invalid(format!(
                "the keep policy keeps F = {} tokens (1 to {MAX_KEEP}; set it with --fam-len)",
                self.fam_len
            )));
        }
        if self.keep_len > MAX_KEEP {
            return Err(Error::Invalid(format!(
                "--keep-len {} (at most {MAX_KEEP})",
                self.keep_len
            )));
        }
        if matches!(
            self.policy,
            MemoryPolicy::Sink | MemoryPolicy::Fam | MemoryPolicy::Keep
        ) && self.sinks > self.block_size
        {
            return Err(Error::Invalid(format!(
                "{} sink tokens exceed the block size {}",
                self.sinks, self.block_size
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Settings where every field differs from its default.
    fn all_changed() -> FamSettings {
        let d = FamSettings::default();
        let s = FamSettings {
            policy: MemoryPolicy::Fam,
            block_size: 256,
            mem_blocks: 1,
            fam_len: 16,
            sinks: 2,
            init: FamInit::Bos,
            query_pos: FamQueryPos::PrevFam,
            zero_first_residual: true,
            renorm: true,
            feedback: FamFeedback::Reread,
            decay: 0.25,
            keep_len: 8,
        };
        for f in &FIELDS {
            assert_ne!(f.get(&s), f.get(&d), "{} equals its default", f.name);
        }
        s
    }

    #[test]
    fn the_table_holds_every_key_once() {
        let keys: Vec<&str> = FIELDS.iter().map(|f| f.key).collect();
        assert_eq!(keys, SETTINGS_KEYS);
        for f in &FIELDS {
            assert_eq!(f.key, format!("fam.{}", f.name));
            assert!(f.flag.starts_with("--") && !f.doc.is_empty());
        }
    }

    #[test]
    fn every_setting_survives_gguf_write_and_read() {
        let s = all_changed();
        let mut w = GgufWriter::new();
        w.set("general.architecture", Value::String("llama".into()));
        s.write_to(&mut w);
        let path =
            std::env::temp_dir().join(format!("famstream-settings-{}.gguf", std::process::id()));
        w.write_with_data(&path, &[]).unwrap();
        let g = GgufFile::open(&path).unwrap();
        let mut back = FamSettings::default();
        back.override_from(&g).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn every_setting_survives_json_as_snapshots_store_it() {
        let s = all_changed();
        assert_eq!(FamSettings::from_json(&s.to_json()).unwrap(), s);
        let mut j = s.to_json();
        j.as_object_mut().unwrap().remove("renorm");
        let e = FamSettings::from_json(&j).unwrap_err().to_string();
        assert!(e.contains("renorm"), "{e}");
        // A decay is written by its shortest decimal, as a user would type it.
        let tenth = FamSettings {
            decay: 0.1,
            ..FamSettings::default()
        };
        assert_eq!(tenth.to_json()["decay"], serde_json::json!(0.1));
        // A snapshot from before `decay` existed reads as the default (no decay).
        let mut j = s.to_json();
        j.as_object_mut().unwrap().remove("decay");
        assert_eq!(FamSettings::from_json(&j).unwrap().decay, 0.0);
        // ... and one from before `keep_len`, as keeping no tokens next to the FAM.
        let mut j = s.to_json();
        j.as_object_mut().unwrap().remove("keep_len");
        assert_eq!(FamSettings::from_json(&j).unwrap().keep_len, 0);
    }

    #[test]
    fn kept_tokens_are_bounded() {
        let fam = FamSettings {
            policy: MemoryPolicy::Fam,
            block_size: 64,
            fam_len: 16,
            keep_len: 64,
            ..FamSettings::default()
        };
        fam.validate().unwrap();
        // an adapter's keep_len does not stop it running under another policy (which ignores it)
        for policy in [MemoryPolicy::Sink, MemoryPolicy::Keep, MemoryPolicy::Bswa] {
            FamSettings { policy, ..fam }.validate().unwrap();
        }
        let e = FamSettings {
            keep_len: MAX_KEEP + 1,
            ..fam
        };
        assert!(e.validate().unwrap_err().to_string().contains("at most"));
    }

    #[test]
    fn values_of_the_wrong_kind_or_unknown_names_are_refused() {
        let mut s = FamSettings::default();
        let e = field("block_size")
            .unwrap()
            .set(&mut s, &Raw::Str("8".into()));
        assert!(e.unwrap_err().to_string().contains("a u32"));
        let e = field("policy")
            .unwrap()
            .set(&mut s, &Raw::Str("keep-all".into()));
        assert!(e.unwrap_err().to_string().contains("keep-all"));
        assert_eq!(s, FamSettings::default());
    }
}
