//! The FAM working memory of one stream (fam.md §2-5): per layer F rows of residual-stream
//! activations (f32), the stream indices they stand at, and the rules that make them: the four
//! initialisations (seed text, BOS, the tail of block 0, learned) and the two feedback rules
//! (`within`: the paper's update graph, [`crate::forward::build_fam_graph`]; `reread`: the seed
//! tokens read the finished block). Their K/V live in the FAM slots of the stream's
//! [`KvStore`], where [`SlotLayout`] puts them; [`crate::state::FamState`] owns this memory and
//! calls it at the stream's start and at the end of every block.

use crate::dtype::GgmlType;
use crate::engine::{Engine, FamBatch, FamUpdate, Mask, TokenBatch};
use crate::error::{Error, Result};
use crate::ggml::{Backend, Tensor, TensorSet};
use crate::init_memory::LearnedFam;
use crate::kv::KvStore;
use crate::model::Model;
use crate::settings::{FamFeedback, FamInit, FamQueryPos, FamSettings};
use crate::slots::{SlotLayout, KV_PAD};
use half::f16;

/// Name of an optional learned initial FAM in a GGUF: f32 [n_embd, F, n_layer], a metadata
/// array or a tensor ([`crate::init_memory`]).
pub const LEARNED_FAM_TENSOR: &str = crate::init_memory::KEY;

/// A stream index's RoPE position as handed to ggml (relative to the stream's origin).
pub(crate) type RopePos<'a> = &'a dyn Fn(i64) -> Result<i32>;

/// The learned initial FAM for a stream of `f` FAM rows per layer, if the model (or its
/// adapter, which takes precedence) has one: refused unless it holds F = `f` rows.
fn learned_fam_data(model: &Model, f: usize) -> Result<Option<LearnedFam<'_>>> {
    let Some(l) = model.learned_fam()? else {
        return Ok(None);
    };
    if l.fam_len != f {
        return Err(Error::tensor(
            LEARNED_FAM_TENSOR,
            format!(
                "in {}: holds F = {} rows per layer, the stream has a FAM length of {f} (use \
                 --fam-len {})",
                l.path.display(),
                l.fam_len,
                l.fam_len
            ),
        ));
    }
    Ok(Some(l))
}

/// One stream's FAM (only the `fam` policy with F > 0 has one).
pub(crate) struct FamMemory {
    /// Per layer f32 [n_embd, F] FAM activations.
    pub(crate) rows: TensorSet,
    /// The learned initial FAM, kept for `fam.decay` (constant: not part of a snapshot).
    init_rows: Option<TensorSet>,
    /// Stream indices of the current FAM rows.
    pub(crate) pos: Vec<i64>,
    /// Whether a FAM exists yet (the tail init makes it only at the end of block 0).
    pub(crate) valid: bool,
    /// FAM updates so far (the paper's first one may zero its residual).
    pub(crate) updates: u64,
    /// BOS + seed text tokens, F of them (`seed` init and `reread` feedback).
    pub(crate) seed_tokens: Vec<u32>,
    pub(crate) bos: u32,
    n_layer: usize,
    n_embd: usize,
}

impl FamMemory {
    /// The memory for `settings`, or `None` when the layout has no FAM rows. Refuses now, not
    /// at the first token, seed tokens of the wrong count and a learned FAM of another length
    /// (or none, for the `learned` init).
    pub(crate) fn new(
        model: &Model,
        backend: &Backend,
        settings: &FamSettings,
        slots: &SlotLayout,
        seed_tokens: Vec<u32>,
        bos: u32,
    ) -> Result<Option<FamMemory>> {
        let f = slots.n_fam();
        if f > 0 && settings.init == FamInit::SeedText && seed_tokens.len() != f {
            return Err(Error::Invalid(format!(
                "seed init needs {f} seed tokens, got {}",
                seed_tokens.len()
            )));
        }
        if slots.n_scratch() > 0 && seed_tokens.len() != f {
            return Err(Error::Invalid(format!(
                "reread feedback needs {f} seed tokens, got {}",
                seed_tokens.len()
            )));
        }
        if f == 0 {
            return Ok(None);
        }
        let learned = learned_fam_data(model, f)?;
        if learned.is_none() && settings.init == FamInit::Learned {
            return Err(Error::tensor(
                LEARNED_FAM_TENSOR,
                "the `learned` FAM init needs it (a metadata array or tensor) in the model or adapter file",
            ));
        }
        let hp = &model.hp;
        // Per layer f32 [n_embd, F], named `<name>_l<layer>`.
        let per_layer = |name: &str| -> Result<TensorSet> {
            let mut set = TensorSet::new(hp.n_layer)?;
            for il in 0..hp.n_layer {
                set.add(
                    &format!("{name}_l{il}"),
                    GgmlType::F32,
                    &[hp.n_embd as i64, f as i64],
                );
            }
            set.alloc_all(backend)?;
            Ok(set)
        };
        let rows = per_layer("fam")?;
        let init_rows = if settings.decay > 0.0 {
            let data = learned.as_ref().ok_or_else(|| {
                Error::Invalid(format!(
                    "FAM decay {} pulls the memory toward a learned initial FAM ({LEARNED_FAM_TENSOR}), \
                     and neither the model nor an adapter has one (drop --fam-decay)",
                    settings.decay
                ))
            })?;
            let init = per_layer("fam_init")?;
            for il in 0..hp.n_layer {
                init.get(il).write_bytes(0, data.layer(il))?;
            }
            Some(init)
        } else {
            None
        };
        Ok(Some(FamMemory {
            rows,
            init_rows,
            pos: vec![0; f],
            valid: false,
            updates: 0,
            seed_tokens,
            bos,
            n_layer: hp.n_layer,
            n_embd: hp.n_embd,
        }))
    }

    /// F, the rows per layer.
    pub(crate) fn len(&self) -> usize {
        self.pos.len()
    }

    /// Per layer the FAM activations.
    pub(crate) fn tensors(&self) -> Vec<Tensor<'_>> {
        (0..self.n_layer).map(|i| self.rows.get(i)).collect()
    }

    /// Per layer the initial FAM a decay pulls toward (`None` without a decay).
    pub(crate) fn init_tensors(&self) -> Option<Vec<Tensor<'_>>> {
        let init = self.init_rows.as_ref()?;
        Some((0..self.n_layer).map(|il| init.get(il)).collect())
    }

    /// RMS of each layer's FAM activations.
    pub(crate) fn rms(&self) -> Result<Vec<f32>> {
        self.tensors()
            .iter()
            .map(|t| {
                let v = t.read_f32()?;
                Ok((v.iter().map(|x| x * x).sum::<f32>() / v.len().max(1) as f32).sqrt())
            })
            .collect()
    }

    /// Bytes of the device buffers: the FAM rows, and the initial FAM kept for a decay.
    pub(crate) fn buffer_bytes(&self) -> usize {
        self.rows.buffer_bytes() + self.init_rows.as_ref().map_or(0, |i| i.buffer_bytes())
    }

    /// Host bytes beyond the struct itself.
    pub(crate) fn host_bytes(&self) -> usize {
        8 * self.pos.len() + 4 * self.seed_tokens.len()
    }

    /// Forget the FAM (the stream starts again).
    pub(crate) fn reset(&mut self) {
        self.valid = false;
        self.updates = 0;
    }

    /// Write captured layer inputs (per layer, rows of n_embd) into FAM rows `first..`.
    pub(crate) fn write_rows(&self, layer_inputs: &[Vec<f32>], first: usize) -> Result<()> {
        for (il, rows) in layer_inputs.iter().enumerate() {
            let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
            self.rows
                .get(il)
                .write_bytes(first * self.n_embd * 4, &bytes)?;
        }
        Ok(())
    }

    /// Compute the initial FAM (fam.md §5), before the stream's first token. The `tail` init
    /// waits for block 0 (its last F rows' layer inputs are captured during the block).
    pub(crate) fn initialise(
        &mut self,
        eng: &mut Engine,
        kv: &KvStore,
        slots: &SlotLayout,
        init: FamInit,
        rope: RopePos,
    ) -> Result<()> {
        let f = self.len();
        let model = eng.model.clone();
        let learned = learned_fam_data(&model, f)?;
        let init = if learned.is_some() {
            FamInit::Learned
        } else {
            init
        };
        match init {
            FamInit::TailOfBlock => return Ok(()), // made from block 0's last rows, see end_block
            FamInit::Learned => {
                let data = learned.ok_or_else(|| {
                    Error::tensor(
                        LEARNED_FAM_TENSOR,
                        "the `learned` init needs it (a metadata array or tensor) in the model or adapter file",
                    )
                })?;
                for il in 0..self.n_layer {
                    self.rows.get(il).write_bytes(0, data.layer(il))?;
                }
            }
            FamInit::SeedText | FamInit::Bos => {
                // Run the seed (F tokens) or BOS alone at positions just before the stream, in
                // scratch ring slots, and keep each layer's inputs.
                let tokens = if init == FamInit::Bos {
                    vec![self.bos]
                } else {
                    self.seed_tokens.clone()
                };
                let n = tokens.len() as i64;
                let pos: Vec<i32> = (-n..0).map(rope).collect::<Result<_>>()?;
                let base = slots.ring_base();
                let slot_ids: Vec<i64> = (0..n).map(|k| (base as i64) + k).collect();
                // Padded like every other batch's K/V length (see KV_PAD); the padding is hidden.
                let n_kv = (base + n as usize)
                    .next_multiple_of(KV_PAD)
                    .min(kv.n_slots());
                let mut mask = vec![f16::NEG_INFINITY; (n as usize) * n_kv];
                for r in 0..n as usize {
                    mask[r * n_kv + base..r * n_kv + base + r + 1].fill(f16::ZERO);
                }
                let rows: Vec<i32> = (0..n as i32).collect();
                let batch = TokenBatch {
                    tokens: &tokens,
                    pos: &pos,
                    slots: &slot_ids,
                    n_kv,
                    mask: Mask::Dense(&mask),
                    out_rows: Some(&[n as i32 - 1]),
                    capture_rows: &rows,
                    ..Default::default()
                };
                let r = eng.run_tokens(kv, None, &batch)?;
                let li: Vec<Vec<f32>> = if init == FamInit::Bos {
                    r.layer_inputs.iter().map(|row| row.repeat(f)).collect()
                } else {
                    r.layer_inputs
                };
                self.write_rows(&li, 0)?;
            }
        }
        self.pos = (-(f as i64)..0).collect();
        self.refresh_kv(eng, kv, slots, rope)?;
        self.valid = true;
        Ok(())
    }

    /// (Re)compute the FAM slots' K/V from the FAM activations at `pos`.
    fn refresh_kv(
        &self,
        eng: &mut Engine,
        kv: &KvStore,
        slots: &SlotLayout,
        rope: RopePos,
    ) -> Result<()> {
        let pos: Vec<i32> = self.pos.iter().map(|&p| rope(p)).collect::<Result<_>>()?;
        let slot_ids = slots.fam_slots();
        eng.run_fam(
            kv,
            &self.tensors(),
            &FamBatch {
                update: None,
                n_kv: kv.n_slots(),
                pos: &pos,
                slots: &slot_ids,
            },
        )
    }

    /// After the last token of block t: make the FAM (tail init) or update it by the
    /// settings' feedback rule; the new FAM stands at the block's last F positions.
    pub(crate) fn end_block(
        &mut self,
        eng: &mut Engine,
        kv: &KvStore,
        slots: &SlotLayout,
        settings: &FamSettings,
        t: i64,
        rope: RopePos,
    ) -> Result<()> {
        let (b, f) = (settings.block_size as i64, self.len() as i64);
        let new_pos: Vec<i64> = ((t + 1) * b - f..(t + 1) * b).collect();
        if settings.feedback == FamFeedback::Reread {
            return self.reread(eng, kv, slots, t, new_pos, rope);
        }
        if !self.valid {
            // Tail init: block 0's last F layer inputs were captured during the block.
            self.pos = new_pos;
            self.refresh_kv(eng, kv, slots, rope)?;
            self.valid = true;
            return Ok(());
        }
        let q_pos_idx = match settings.query_pos {
            FamQueryPos::BlockEnd => new_pos.clone(),
            FamQueryPos::PrevFam => self.pos.clone(),
        };
        let q_pos: Vec<i32> = q_pos_idx.iter().map(|&p| rope(p)).collect::<Result<_>>()?;
        let pos: Vec<i32> = new_pos.iter().map(|&p| rope(p)).collect::<Result<_>>()?;
        let n_kv = kv.n_slots();
        // FAM rows see the old FAM and the whole finished block; no memory blocks, no sinks.
        let mask = slots.fam_rows_mask(t, n_kv, true);
        let zero = settings.zero_first_residual && self.updates == 0;
        let slot_ids = slots.fam_slots();
        let init = self.init_tensors();
        eng.run_fam(
            kv,
            &self.tensors(),
            &FamBatch {
                update: Some(FamUpdate {
                    q_pos: &q_pos,
                    mask: &mask,
                    zero_residual: zero,
                    renorm: settings.renorm,
                    decay: init.as_deref().map(|i| (settings.decay, i)),
                }),
                n_kv,
                pos: &pos,
                slots: &slot_ids,
            },
        )?;
        self.pos = new_pos;
        self.updates += 1;
        Ok(())
    }

    /// `reread` feedback: the seed tokens, placed at the end of block t, attend (causally among
    /// themselves) to the old FAM and the whole block at every layer; their K/V, computed in
    /// scratch slots, become the new FAM.
    fn reread(
        &mut self,
        eng: &mut Engine,
        kv: &KvStore,
        slots: &SlotLayout,
        t: i64,
        new_pos: Vec<i64>,
        rope: RopePos,
    ) -> Result<()> {
        let f = self.len();
        let scratch = slots.scratch_base();
        let n_kv = kv.n_slots();
        let mask = slots.fam_rows_mask(t, n_kv, self.valid);
        let pos: Vec<i32> = new_pos.iter().map(|&p| rope(p)).collect::<Result<_>>()?;
        let slot_ids: Vec<i64> = (scratch..scratch + f).map(|s| s as i64).collect();
        let tokens = self.seed_tokens.clone();
        let batch = TokenBatch {
            tokens: &tokens,
            pos: &pos,
            slots: &slot_ids,
            n_kv,
            mask: Mask::Dense(&mask),
            out_rows: Some(&[0]),
            ..Default::default()
        };
        eng.run_tokens(kv, None, &batch)?;
        eng.run_kv_copy(kv, scratch, slots.fam_base(), f)?;
        self.pos = new_pos;
        self.valid = true;
        self.updates += 1;
        Ok(())
    }
}
