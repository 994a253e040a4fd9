//! Contexts, tensors and their ops, graphs.

use super::*;
use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::CString;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// An owned ggml context: an arena for tensor headers (and, without `no_alloc`, their data).
pub struct Context {
    pub(super) ptr: NonNull<sys::ggml_context>,
}

// SAFETY: a ggml_context is plain memory owned by this value; ggml has no thread affinity for
// it. We hand out `&Context` only, and ggml ops mutate the arena, so it is not Sync.
unsafe impl Send for Context {}

impl Context {
    /// A context for `n_tensors` tensor headers and one graph of up to `graph_size` nodes,
    /// without tensor data (data lives in backend buffers).
    pub fn new_no_alloc(n_tensors: usize, graph_size: usize) -> Result<Context> {
        // SAFETY: pure size computations.
        let mem = unsafe {
            sys::ggml_tensor_overhead() * n_tensors
                + sys::ggml_graph_overhead_custom(graph_size, false)
        };
        Self::with_params(mem, true)
    }

    /// A context that also holds tensor data (host memory), `data_bytes` in all.
    pub fn new_with_data(
        n_tensors: usize,
        data_bytes: usize,
        graph_size: usize,
    ) -> Result<Context> {
        // SAFETY: pure size computations.
        let mem = unsafe {
            sys::ggml_tensor_overhead() * n_tensors
                + sys::ggml_graph_overhead_custom(graph_size, false)
        } + data_bytes
            + 64 * n_tensors; // alignment padding per tensor
        Self::with_params(mem, false)
    }

    pub(super) fn with_params(mem_size: usize, no_alloc: bool) -> Result<Context> {
        init_logging();
        let params = sys::ggml_init_params {
            mem_size,
            mem_buffer: std::ptr::null_mut(),
            no_alloc,
        };
        // SAFETY: ggml_init allocates its own arena (mem_buffer null) and returns null on failure.
        let ptr = unsafe { sys::ggml_init(params) };
        NonNull::new(ptr)
            .map(|ptr| Context { ptr })
            .ok_or_else(|| Error::Ggml(format!("ggml_init failed for {mem_size} bytes")))
    }

    pub(super) fn raw(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    pub(super) fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
        // ggml returns null only when the arena is full, which is a sizing bug of ours.
        let ptr = NonNull::new(t).expect("ggml context arena exhausted (tensor count too small)");
        Tensor {
            ptr,
            _ctx: PhantomData,
        }
    }

    /// A new tensor of type `ty` and shape `ne` (ggml order, 1 to 4 dims).
    pub fn new_tensor(&self, ty: GgmlType, ne: &[i64]) -> Tensor<'_> {
        // SAFETY: valid context; ggml copies `ne`. Dims beyond 4 are a programming error.
        let t = unsafe {
            match *ne {
                [a] => sys::ggml_new_tensor_1d(self.raw(), ty.0, a),
                [a, b] => sys::ggml_new_tensor_2d(self.raw(), ty.0, a, b),
                [a, b, c] => sys::ggml_new_tensor_3d(self.raw(), ty.0, a, b, c),
                [a, b, c, d] => sys::ggml_new_tensor_4d(self.raw(), ty.0, a, b, c, d),
                _ => panic!("ggml tensors have 1 to 4 dimensions, got {}", ne.len()),
            }
        };
        self.wrap(t)
    }

    /// A new graph with room for `size` nodes.
    pub fn new_graph(&self, size: usize) -> Graph<'_> {
        // SAFETY: valid context; the context was sized for this graph.
        let g = unsafe { sys::ggml_new_graph_custom(self.raw(), size, false) };
        Graph {
            ptr: NonNull::new(g).expect("ggml context arena exhausted (graph)"),
            _ctx: PhantomData,
        }
    }

    /// All tensors of this context, allocated in one new buffer of `backend`.
    pub fn alloc_tensors(&self, backend: &Backend) -> Result<Buffer> {
        // SAFETY: valid context and backend; returns null on failure (or when there is nothing
        // to allocate).
        let b = unsafe { sys::ggml_backend_alloc_ctx_tensors(self.raw(), backend.raw()) };
        NonNull::new(b)
            .map(|ptr| Buffer { ptr })
            .ok_or_else(|| Error::Ggml("cannot allocate a backend buffer for a context".into()))
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: we own the context; tensors borrowed from it cannot outlive `self`.
        unsafe { sys::ggml_free(self.ptr.as_ptr()) }
    }
}

/// A tensor in a [`Context`]. Copyable handle; valid while the context borrow `'a` lives.
#[derive(Clone, Copy)]
pub struct Tensor<'a> {
    pub(super) ptr: NonNull<sys::ggml_tensor>,
    pub(super) _ctx: PhantomData<&'a Context>,
}

impl<'a> Tensor<'a> {
    pub(super) fn raw(self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }
    pub(super) fn hdr(&self) -> &sys::ggml_tensor {
        // SAFETY: the header lives in the context arena for 'a; we only read plain fields.
        unsafe { self.ptr.as_ref() }
    }
    /// The header's address: an identity for as long as the tensor lives.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }
    /// Shape, ggml order (`ne[0]` is the row length).
    pub fn ne(&self) -> [i64; 4] {
        self.hdr().ne
    }
    /// Strides in bytes.
    pub fn nb(&self) -> [usize; 4] {
        self.hdr().nb
    }
    pub fn ty(&self) -> GgmlType {
        GgmlType(self.hdr().type_)
    }
    pub fn n_elements(&self) -> i64 {
        self.ne().iter().product()
    }
    pub fn nbytes(&self) -> usize {
        // SAFETY: valid tensor header.
        unsafe { sys::ggml_nbytes(self.raw()) }
    }
    pub fn name(&self) -> String {
        let n = &self.hdr().name;
        let bytes: Vec<u8> = n
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
    /// Name the tensor (truncated to ggml's 63 bytes). Named intermediates make graphs
    /// debuggable and let tests pick activations out by name.
    pub fn set_name(self, name: &str) -> Self {
        let c = CString::new(name.replace('\0', "")).expect("no NUL after replace");
        // SAFETY: ggml copies at most 63 bytes of the NUL-terminated name.
        unsafe { sys::ggml_set_name(self.raw(), c.as_ptr()) };
        self
    }
    /// Mark as a graph input: the allocator will not place other results in its memory.
    pub fn set_input(self) -> Self {
        // SAFETY: sets a flag on a valid tensor.
        unsafe { sys::ggml_set_input(self.raw()) };
        self
    }
    /// Mark as a graph output: its memory is not reused by later nodes.
    pub fn set_output(self) -> Self {
        // SAFETY: sets a flag on a valid tensor.
        unsafe { sys::ggml_set_output(self.raw()) };
        self
    }
    /// Whether the tensor has memory (an input no op of its graph reads gets none).
    pub fn is_allocated(&self) -> bool {
        self.has_data()
    }
    pub(super) fn has_data(&self) -> bool {
        !self.hdr().data.is_null() || !self.hdr().buffer.is_null()
    }
    /// Copy `data` into the tensor starting at byte `offset` (any backend).
    pub fn write_bytes(self, offset: usize, data: &[u8]) -> Result<()> {
        if !self.has_data()
            || offset
                .checked_add(data.len())
                .is_none_or(|e| e > self.nbytes())
        {
            return Err(Error::Ggml(format!(
                "write of {} bytes at {offset} into tensor `{}` of {} bytes (allocated: {})",
                data.len(),
                self.name(),
                self.nbytes(),
                self.has_data()
            )));
        }
        // SAFETY: the tensor is allocated and the range lies inside it (checked above).
        unsafe {
            if self.hdr().buffer.is_null() {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    (self.hdr().data as *mut u8).add(offset),
                    data.len(),
                );
            } else {
                sys::ggml_backend_tensor_set(self.raw(), data.as_ptr().cast(), offset, data.len());
            }
        }
        Ok(())
    }
    /// Copy f32 values into an f32 tensor.
    pub fn write_f32(self, data: &[f32]) -> Result<()> {
        self.check_type(GgmlType::F32)?;
        self.write_bytes(0, bytemuck_f32(data))
    }
    /// Copy i32 values into an i32 tensor.
    pub fn write_i32(self, data: &[i32]) -> Result<()> {
        self.check_type(GgmlType::I32)?;
        // SAFETY: i32 has no padding; any byte pattern is a valid u8.
        let bytes =
            unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), data.len() * 4) };
        self.write_bytes(0, bytes)
    }
    pub(super) fn check_type(&self, ty: GgmlType) -> Result<()> {
        if self.ty() != ty {
            return Err(Error::Ggml(format!(
                "tensor `{}` is {}, not {ty}",
                self.name(),
                self.ty()
            )));
        }
        Ok(())
    }
    /// Read the whole tensor as bytes (contiguous tensors only).
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        // SAFETY: header read.
        if !self.has_data() || !unsafe { sys::ggml_is_contiguous(self.raw()) } {
            return Err(Error::Ggml(format!(
                "tensor `{}` is not readable (unallocated or a view)",
                self.name()
            )));
        }
        let mut out = vec![0u8; self.nbytes()];
        // SAFETY: allocated contiguous tensor of nbytes; `out` has that size.
        unsafe {
            if self.hdr().buffer.is_null() {
                std::ptr::copy_nonoverlapping(
                    self.hdr().data as *const u8,
                    out.as_mut_ptr(),
                    out.len(),
                );
            } else {
                sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), 0, out.len());
            }
        }
        Ok(out)
    }
    /// Read an f32 tensor.
    pub fn read_f32(&self) -> Result<Vec<f32>> {
        self.check_type(GgmlType::F32)?;
        let n = self.nbytes() / 4;
        // One copy straight into the result: no zero-fill, no byte buffer in between (this
        // runs on every decoded token for the logits).
        let mut out = Vec::<f32>::with_capacity(n);
        let spare = out.spare_capacity_mut();
        // SAFETY: `spare` holds n uninitialised f32; read_f32_into only writes into its slice
        // (it never reads it), and it fills all n values or fails, before set_len.
        let dst = unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<f32>(), n) };
        self.read_f32_into(0, dst)?;
        // SAFETY: all n values were written above.
        unsafe { out.set_len(n) };
        Ok(out)
    }
    /// Read part of an f32 tensor into `out`: `out.len()` values starting at element `start`.
    pub fn read_f32_into(&self, start: usize, out: &mut [f32]) -> Result<()> {
        self.check_type(GgmlType::F32)?;
        let (off, len) = (start * 4, out.len() * 4);
        // SAFETY: header reads.
        if !self.has_data()
            || !unsafe { sys::ggml_is_contiguous(self.raw()) }
            || off + len > self.nbytes()
        {
            return Err(Error::Ggml(format!("bad read of tensor `{}`", self.name())));
        }
        // SAFETY: allocated contiguous tensor; range checked; `out` holds `len` bytes.
        unsafe {
            if self.hdr().buffer.is_null() {
                std::ptr::copy_nonoverlapping(
                    (self.hdr().data as *const u8).add(off),
                    out.as_mut_ptr().cast(),
                    len,
                );
            } else {
                sys::ggml_backend_tensor_get(self.raw(), out.as_mut_ptr().cast(), off, len);
            }
        }
        Ok(())
    }
}

pub(super) fn bytemuck_f32(data: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding and u8 has alignment 1.
    unsafe { std::slice::from_raw_parts(data.as_ptr().cast::<u8>(), std::mem::size_of_val(data)) }
}

/// Graph operations. Results live in `self`; inputs may come from any context that outlives
/// the borrow (a `Tensor<'long>` coerces to `Tensor<'a>`).
impl Context {
    /// Rows `ids` (i32 [n]) of `a` ([ne0, n_rows]) -> f32 [ne0, n].
    pub fn get_rows<'a>(&'a self, a: Tensor<'a>, ids: Tensor<'a>) -> Tensor<'a> {
        // SAFETY (all ops below): valid context and tensors; ggml validates shapes by asserting,
        // and callers have validated every shape that comes from a file.
        self.wrap(unsafe { sys::ggml_get_rows(self.raw(), a.raw(), ids.raw()) })
    }
    /// `a` [k, m] times `b` [k, n] -> [m, n] (ggml's `mul_mat`: rows of `a` dotted with rows of
    /// `b`; broadcasts over dims 2 and 3 of `b`).
    pub fn mul_mat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_mul_mat(self.raw(), a.raw(), b.raw()) })
    }
    /// Elementwise product, `b` broadcast to `a`.
    pub fn mul<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_mul(self.raw(), a.raw(), b.raw()) })
    }
    /// Elementwise sum, `b` broadcast to `a`.
    pub fn add<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_add(self.raw(), a.raw(), b.raw()) })
    }
    /// Elementwise difference, `b` broadcast to `a`.
    pub fn sub<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_sub(self.raw(), a.raw(), b.raw()) })
    }
    /// Elementwise square.
    pub fn sqr<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_sqr(self.raw(), a.raw()) })
    }
    /// Elementwise square root.
    pub fn sqrt<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_sqrt(self.raw(), a.raw()) })
    }
    /// Mean of each row: [ne0, ...] -> [1, ...].
    pub fn mean<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_mean(self.raw(), a.raw()) })
    }
    pub fn scale<'a>(&'a self, a: Tensor<'a>, s: f32) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_scale(self.raw(), a.raw(), s) })
    }
    /// RMS normalisation over rows (without the learned weight).
    pub fn rms_norm<'a>(&'a self, a: Tensor<'a>, eps: f32) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_rms_norm(self.raw(), a.raw(), eps) })
    }
    /// `silu(gate) * up`.
    pub fn swiglu<'a>(&'a self, gate: Tensor<'a>, up: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_swiglu_split(self.raw(), gate.raw(), up.raw()) })
    }
    /// `silu(a[..n/2]) * a[n/2..]` over rows: SwiGLU of a fused gate|up projection (phi3).
    pub fn swiglu_fused<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_swiglu(self.raw(), a.raw()) })
    }
    /// `gelu(gate) * up`, GELU in its tanh approximation (Gemma's GeGLU).
    pub fn geglu<'a>(&'a self, gate: Tensor<'a>, up: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_geglu_split(self.raw(), gate.raw(), up.raw()) })
    }
    pub fn tanh<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_tanh(self.raw(), a.raw()) })
    }
    /// Softmax over rows of `a * scale + mask` (mask broadcast over dims 2 and 3).
    pub fn soft_max_ext<'a>(
        &'a self,
        a: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Tensor<'a> {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        self.wrap(unsafe { sys::ggml_soft_max_ext(self.raw(), a.raw(), m, scale, 0.0) })
    }
    /// Fused attention: q [d, n_q, h], k [d, n_kv, h_kv], v [d, n_kv, h_kv], mask f16
    /// [n_kv, n_q_padded] -> [d, h, n_q] (note the permuted result).
    pub fn flash_attn_ext<'a>(
        &'a self,
        q: Tensor<'a>,
        k: Tensor<'a>,
        v: Tensor<'a>,
        mask: Option<Tensor<'a>>,
        scale: f32,
    ) -> Tensor<'a> {
        let m = mask.map_or(std::ptr::null_mut(), |m| m.raw());
        let t = unsafe {
            sys::ggml_flash_attn_ext(self.raw(), q.raw(), k.raw(), v.raw(), m, scale, 0.0, 0.0)
        };
        // SAFETY: valid result tensor.
        unsafe { sys::ggml_flash_attn_ext_set_prec(t, sys::GGML_PREC_F32) };
        self.wrap(t)
    }
    pub fn cont<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_cont(self.raw(), a.raw()) })
    }
    pub fn transpose<'a>(&'a self, a: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_transpose(self.raw(), a.raw()) })
    }
    pub fn permute<'a>(&'a self, a: Tensor<'a>, axes: [i32; 4]) -> Tensor<'a> {
        self.wrap(unsafe {
            sys::ggml_permute(self.raw(), a.raw(), axes[0], axes[1], axes[2], axes[3])
        })
    }
    /// Reshape a contiguous tensor.
    pub fn reshape<'a>(&'a self, a: Tensor<'a>, ne: &[i64]) -> Tensor<'a> {
        let t = unsafe {
            match *ne {
                [x] => sys::ggml_reshape_1d(self.raw(), a.raw(), x),
                [x, y] => sys::ggml_reshape_2d(self.raw(), a.raw(), x, y),
                [x, y, z] => sys::ggml_reshape_3d(self.raw(), a.raw(), x, y, z),
                [x, y, z, w] => sys::ggml_reshape_4d(self.raw(), a.raw(), x, y, z, w),
                _ => panic!("reshape to {} dims", ne.len()),
            }
        };
        self.wrap(t)
    }
    /// A strided view: shape `ne`, byte strides `nb[1..]` (nb[0] is the element size), starting
    /// `offset` bytes into `a`.
    pub fn view<'a>(
        &'a self,
        a: Tensor<'a>,
        ne: &[i64],
        nb: &[usize],
        offset: usize,
    ) -> Tensor<'a> {
        let t = unsafe {
            match (ne, nb) {
                ([x], []) => sys::ggml_view_1d(self.raw(), a.raw(), *x, offset),
                ([x, y], [n1]) => sys::ggml_view_2d(self.raw(), a.raw(), *x, *y, *n1, offset),
                ([x, y, z], [n1, n2]) => {
                    sys::ggml_view_3d(self.raw(), a.raw(), *x, *y, *z, *n1, *n2, offset)
                }
                ([x, y, z, w], [n1, n2, n3]) => {
                    sys::ggml_view_4d(self.raw(), a.raw(), *x, *y, *z, *w, *n1, *n2, *n3, offset)
                }
                _ => panic!("view: {} dims with {} strides", ne.len(), nb.len()),
            }
        };
        self.wrap(t)
    }
    /// Copy `a` into `b` (converting type); the result is `b`'s memory.
    pub fn cpy<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_cpy(self.raw(), a.raw(), b.raw()) })
    }
    /// Rotary position embedding of `a` [head_dim, n_head, n] at positions `pos` (i32 [n]).
    /// `neox`: pairs (i, i + d/2) instead of (2i, 2i+1).
    pub fn rope<'a>(
        &'a self,
        a: Tensor<'a>,
        pos: Tensor<'a>,
        n_dims: usize,
        neox: bool,
        freq_base: f32,
        freq_scale: f32,
        freq_factors: Option<Tensor<'a>>,
        n_ctx_orig: usize,
    ) -> Tensor<'a> {
        let mode = if neox { 2 } else { 0 };
        self.wrap(unsafe {
            sys::ggml_rope_ext(
                self.raw(),
                a.raw(),
                pos.raw(),
                freq_factors.map_or(std::ptr::null_mut(), |t| t.raw()),
                n_dims as i32,
                mode,
                n_ctx_orig as i32,
                freq_base,
                freq_scale,
                0.0,
                1.0,
                32.0,
                1.0,
            )
        })
    }
    /// `a` padded with zeros: `p[d]` more elements at the end of dimension d.
    pub fn pad<'a>(&'a self, a: Tensor<'a>, p: [i32; 4]) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_pad(self.raw(), a.raw(), p[0], p[1], p[2], p[3]) })
    }
    /// Concatenate along `dim`.
    pub fn concat<'a>(&'a self, a: Tensor<'a>, b: Tensor<'a>, dim: i32) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_concat(self.raw(), a.raw(), b.raw(), dim) })
    }
    /// Write rows of `src` into `dst` at row indices `ids` (i64 or i32); result aliases `dst`.
    pub fn set_rows<'a>(&'a self, dst: Tensor<'a>, src: Tensor<'a>, ids: Tensor<'a>) -> Tensor<'a> {
        self.wrap(unsafe { sys::ggml_set_rows(self.raw(), dst.raw(), src.raw(), ids.raw()) })
    }
}

/// A compute graph built in a context.
pub struct Graph<'a> {
    pub(super) ptr: NonNull<sys::ggml_cgraph>,
    pub(super) _ctx: PhantomData<&'a Context>,
}

impl<'a> Graph<'a> {
    /// Add `t` and everything it depends on.
    pub fn expand(&mut self, t: Tensor<'a>) {
        // SAFETY: graph and tensor valid for 'a.
        unsafe { sys::ggml_build_forward_expand(self.ptr.as_ptr(), t.raw()) }
    }
    pub fn n_nodes(&self) -> usize {
        // SAFETY: valid graph.
        unsafe { sys::ggml_graph_n_nodes(self.ptr.as_ptr()) as usize }
    }
    pub(super) fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }
}
