//! FAM runtime settings (`fam.*` GGUF keys) and the memory policies they select.
//!
//! The keys are ours (community keys must be namespaced): `fam.policy`, `fam.block_size` (B),
//! `fam.mem_blocks` (M), `fam.fam_len` (F), `fam.sinks` (S), `fam.init`, `fam.query_pos`.
//! A file without them gets [`FamSettings::default`]; command-line flags override either.

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
/// Every settings key (other `fam.*` keys, such as an adapter's base fingerprint, are not
/// settings).
pub const SETTINGS_KEYS: [&str; 10] = [
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
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct FamSettings {
    pub policy: MemoryPolicy,
    /// B: tokens per block.
    pub block_size: u32,
    /// M: finished blocks kept in the ring.
    pub mem_blocks: u32,
    /// F: FAM rows per layer.
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
}

impl Default for FamSettings {
    /// The paper's B/F/M (guide §1). The default *policy* is `sink`, chosen by measurement on
    /// the un-tuned SmolLM2 (README, Results): over 200k tokens of Moby-Dick it scores 39.47,
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
        }
    }
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
        let s = self;
        if let Some(v) = g.opt_str(KEY_POLICY)? {
            s.policy = v
                .parse()
                .map_err(|e: Error| Error::metadata(KEY_POLICY, e.to_string()))?;
        }
        if let Some(v) = g.opt_u32(KEY_BLOCK_SIZE)? {
            s.block_size = v;
        }
        if let Some(v) = g.opt_u32(KEY_MEM_BLOCKS)? {
            s.mem_blocks = v;
        }
        if let Some(v) = g.opt_u32(KEY_FAM_LEN)? {
            s.fam_len = v;
        }
        if let Some(v) = g.opt_u32(KEY_SINKS)? {
            s.sinks = v;
        }
        if let Some(v) = g.opt_str(KEY_INIT)? {
            s.init = v
                .parse()
                .map_err(|e: Error| Error::metadata(KEY_INIT, e.to_string()))?;
        }
        if let Some(v) = g.opt_str(KEY_QUERY_POS)? {
            s.query_pos = v
                .parse()
                .map_err(|e: Error| Error::metadata(KEY_QUERY_POS, e.to_string()))?;
        }
        if let Some(v) = g.opt_bool(KEY_ZERO_FIRST_RESIDUAL)? {
            s.zero_first_residual = v;
        }
        if let Some(v) = g.opt_bool(KEY_RENORM)? {
            s.renorm = v;
        }
        if let Some(v) = g.opt_str(KEY_FEEDBACK)? {
            s.feedback = v
                .parse()
                .map_err(|e: Error| Error::metadata(KEY_FEEDBACK, e.to_string()))?;
        }
        Ok(())
    }

    /// Whether the file sets any `fam.*` settings key.
    pub fn present_in(g: &GgufFile) -> bool {
        SETTINGS_KEYS.iter().any(|k| g.get(k).is_some())
    }

    pub fn write_to(&self, w: &mut GgufWriter) {
        w.set(KEY_POLICY, Value::String(self.policy.as_str().into()));
        w.set(KEY_BLOCK_SIZE, Value::U32(self.block_size));
        w.set(KEY_MEM_BLOCKS, Value::U32(self.mem_blocks));
        w.set(KEY_FAM_LEN, Value::U32(self.fam_len));
        w.set(KEY_SINKS, Value::U32(self.sinks));
        w.set(KEY_INIT, Value::String(self.init.as_str().into()));
        w.set(KEY_QUERY_POS, Value::String(self.query_pos.as_str().into()));
        w.set(
            KEY_ZERO_FIRST_RESIDUAL,
            Value::Bool(self.zero_first_residual),
        );
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
        if matches!(self.policy, MemoryPolicy::Sink | MemoryPolicy::Fam)
            && self.sinks > self.block_size
        {
            return Err(Error::Invalid(format!(
                "{} sink tokens exceed the block size {}",
                self.sinks, self.block_size
            )));
        }
        Ok(())
    }
}
