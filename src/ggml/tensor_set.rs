//! Sets of weight or state tensors in one buffer (zero-copy over a file map, or repacked).

use super::*;
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// A context together with the tensors made in it and the buffers that hold their data, owned
/// as one value (model weights, per-stream caches). Tensors are addressed by index and borrowed
/// from the set, so they cannot outlive it.
pub struct TensorSet {
    // Field order is drop order: buffers reference tensors of `ctx`, both go before the context.
    pub(super) buffers: Vec<Buffer>,
    pub(super) ptrs: Vec<NonNull<sys::ggml_tensor>>,
    pub(super) ctx: Context,
}

// SAFETY: the tensors are headers in `ctx`, owned with it; the set is moved, not shared, across
// threads, and read-only methods only read headers.
unsafe impl Send for TensorSet {}
unsafe impl Sync for TensorSet {}

impl TensorSet {
    /// Room for `capacity` tensors (headers only; data is placed or allocated later).
    pub fn new(capacity: usize) -> Result<TensorSet> {
        Ok(TensorSet {
            buffers: Vec::new(),
            ptrs: Vec::with_capacity(capacity),
            ctx: Context::new_no_alloc(capacity, 0)?,
        })
    }
    /// Add a tensor; returns its index.
    pub fn add(&mut self, name: &str, ty: GgmlType, ne: &[i64]) -> usize {
        let t = self.ctx.new_tensor(ty, ne).set_name(name);
        self.ptrs.push(t.ptr);
        self.ptrs.len() - 1
    }
    pub fn get(&self, i: usize) -> Tensor<'_> {
        Tensor {
            ptr: self.ptrs[i],
            _ctx: PhantomData,
        }
    }
    pub fn len(&self) -> usize {
        self.ptrs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ptrs.is_empty()
    }
    /// Give tensor `i` (not yet placed or allocated) another type, its byte strides following
    /// (as `ggml_new_tensor` sets them): a weight converted at load, e.g. Q4_1 to Q8_0.
    pub fn retype(&mut self, i: usize, ty: GgmlType) -> Result<()> {
        let t = self.get(i);
        let ne = t.ne();
        if t.has_data() {
            return Err(Error::Invalid(
                "retyping a tensor that already has data".into(),
            ));
        }
        let row = ty.row_size(ne[0] as u64).ok_or_else(|| {
            Error::Invalid(format!(
                "a row of {} values is not whole {ty} blocks of {}",
                ne[0],
                ty.block_size()
            ))
        })? as usize;
        // SAFETY: a header of this set's context with no data and no graph built on it yet;
        // the id is a valid type (row_size knew it).
        unsafe {
            let h = &mut *self.ptrs[i].as_ptr();
            h.type_ = ty.0;
            h.nb[0] = sys::ggml_type_size(ty.0);
            h.nb[1] = row;
            h.nb[2] = row * ne[1] as usize;
            h.nb[3] = h.nb[2] * ne[2] as usize;
        }
        Ok(())
    }
    /// Allocate every tensor in one new buffer of `backend`, zero-filled.
    pub fn alloc_all(&mut self, backend: &Backend) -> Result<()> {
        let b = self.ctx.alloc_tensors(backend)?;
        b.clear(0);
        self.buffers.push(b);
        Ok(())
    }
    /// Bytes of all buffers of this set.
    pub fn buffer_bytes(&self) -> usize {
        self.buffers.iter().map(Buffer::size).sum()
    }
    /// Give the 2-D matmul weights among `candidates` (not yet placed) ggml's CPU repacked
    /// layout where its kernels have one for this CPU and type (the `CPU_REPACK` buffer type:
    /// interleaved quant blocks for the AVX2/AVX-512/NEON GEMMs, as llama.cpp does by default).
    /// Their bytes are copied from `data(index)` and repacked into one new buffer; the rest stay
    /// for the caller to place. Returns the indices taken and the buffer's size.
    pub fn alloc_repacked<'d>(
        &mut self,
        candidates: &[usize],
        data: &dyn Fn(usize) -> Result<&'d [u8]>,
    ) -> Result<(Vec<usize>, usize)> {
        let Some((dev, buft)) = cpu_repack_buffer_type() else {
            return Ok((Vec::new(), 0));
        };
        // Which tensors does the repack buffer take? Ask the device about a one-row matmul
        // whose weight sits in an (empty) buffer of that type, as llama.cpp does.
        let probe_ctx = Context::new_no_alloc(2 * candidates.len() + 2, 0)?;
        // SAFETY: an empty buffer of a valid type, freed below.
        let probe_buf = unsafe { sys::ggml_backend_buft_alloc_buffer(buft, 0) };
        if probe_buf.is_null() {
            return Ok((Vec::new(), 0));
        }
        let mut take = Vec::new();
        for &i in candidates {
            let w = self.get(i);
            if w.has_data() || w.ne()[2] != 1 || w.ne()[3] != 1 {
                continue;
            }
            let x = probe_ctx.new_tensor(GgmlType::F32, &[w.ne()[0], 1]);
            // SAFETY: graph construction in a no-alloc context; `w` lives in this set. The
            // weight's buffer field is set only for the query and reset before anything else
            // sees it (it is unallocated, so nothing reads its data).
            let ok = unsafe {
                let op = sys::ggml_mul_mat(probe_ctx.raw(), w.raw(), x.raw());
                (*w.raw()).buffer = probe_buf;
                let ok = sys::ggml_backend_dev_supports_op(dev, op);
                (*w.raw()).buffer = std::ptr::null_mut();
                ok
            };
            if ok {
                take.push(i);
            }
        }
        // SAFETY: we own the probe buffer.
        unsafe { sys::ggml_backend_buffer_free(probe_buf) };
        if take.is_empty() {
            return Ok((take, 0));
        }
        // SAFETY: size queries on a valid buffer type and unallocated tensors of this set.
        let (align, sizes): (usize, Vec<usize>) = unsafe {
            (
                sys::ggml_backend_buft_get_alignment(buft),
                take.iter()
                    .map(|&i| sys::ggml_backend_buft_get_alloc_size(buft, self.get(i).raw()))
                    .collect(),
            )
        };
        let pad = |n: usize| n.div_ceil(align) * align;
        let total: usize = sizes.iter().map(|&n| pad(n)).sum();
        // SAFETY: allocation of a valid buffer type; null on failure.
        let buf = NonNull::new(unsafe { sys::ggml_backend_buft_alloc_buffer(buft, total) })
            .map(|ptr| Buffer { ptr })
            .ok_or_else(|| Error::Ggml(format!("cannot allocate {total} bytes of CPU_REPACK")))?;
        buf.mark_weights();
        let mut off = 0;
        for (&i, &n) in take.iter().zip(&sizes) {
            buf.place(self.get(i), off)?;
            // The buffer's set_tensor repacks the file's blocks into the interleaved layout.
            self.get(i).write_bytes(0, data(i)?)?;
            off += pad(n);
        }
        self.buffers.push(buf);
        Ok((take, total))
    }
    /// Place tensors in `buffer` (which the set then owns) at the given byte offsets.
    pub fn place_in_buffer(&mut self, buffer: Buffer, placements: &[(usize, usize)]) -> Result<()> {
        buffer.mark_weights();
        for &(i, off) in placements {
            buffer.place(self.get(i), off)?;
        }
        self.buffers.push(buffer);
        Ok(())
    }
}
