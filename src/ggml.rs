//! The ggml boundary: every call into ggml goes through this module.
//!
//! Brief overview. ggml builds a compute graph out of tensors that live in a *context* (an arena
//! of tensor headers), allocates the graph's intermediate results in a *backend buffer*, and
//! computes it on a *backend* (the CPU with its SIMD kernels, or Metal, Vulkan, CUDA through
//! ggml's device registry). The safe types here map one to one onto those concepts:
//!
//! | here          | ggml                                   |
//! |---------------|----------------------------------------|
//! | [`Context`]   | `ggml_context` (owned, freed on drop)  |
//! | [`Tensor`]    | `ggml_tensor *`, tied to its context's lifetime |
//! | [`Graph`]     | `ggml_cgraph *` inside a context       |
//! | [`Backend`]   | `ggml_backend_t` (+ a persistent CPU threadpool) |
//! | [`Buffer`]    | `ggml_backend_buffer_t` (owned)        |
//! | [`Allocator`] | `ggml_gallocr_t` (graph allocator, reused across graphs) |
//!
//! Invariants: the rest of the crate never sees a raw pointer; a [`Tensor<'a>`] cannot outlive
//! the context that holds it (its lifetime is the context borrow); ggml asserts (aborts) on
//! shape errors, so callers validate shapes of anything read from files before building graphs.

use crate::dtype::GgmlType;
use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_void, CStr, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Once;

/// Install our log callback once: ggml's info chatter is dropped, warnings and errors go to
/// stderr.
fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        unsafe extern "C" fn log(
            level: sys::ggml_log_level,
            text: *const std::ffi::c_char,
            _: *mut c_void,
        ) {
            if (level == sys::GGML_LOG_LEVEL_WARN || level == sys::GGML_LOG_LEVEL_ERROR)
                && !text.is_null()
            {
                // SAFETY: ggml passes a NUL-terminated string valid for this call.
                let s = unsafe { CStr::from_ptr(text) };
                eprint!("ggml: {}", s.to_string_lossy());
            }
        }
        // SAFETY: `log` is a valid callback for the whole program; user data is unused.
        unsafe { sys::ggml_log_set(Some(log), std::ptr::null_mut()) };
    });
}

/// An owned ggml context: an arena for tensor headers (and, without `no_alloc`, their data).
pub struct Context {
    ptr: NonNull<sys::ggml_context>,
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

    fn with_params(mem_size: usize, no_alloc: bool) -> Result<Context> {
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

    fn raw(&self) -> *mut sys::ggml_context {
        self.ptr.as_ptr()
    }

    fn wrap(&self, t: *mut sys::ggml_tensor) -> Tensor<'_> {
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
    ptr: NonNull<sys::ggml_tensor>,
    _ctx: PhantomData<&'a Context>,
}

impl<'a> Tensor<'a> {
    fn raw(self) -> *mut sys::ggml_tensor {
        self.ptr.as_ptr()
    }
    fn hdr(&self) -> &sys::ggml_tensor {
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
    fn has_data(&self) -> bool {
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
    fn check_type(&self, ty: GgmlType) -> Result<()> {
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

fn bytemuck_f32(data: &[f32]) -> &[u8] {
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
    ptr: NonNull<sys::ggml_cgraph>,
    _ctx: PhantomData<&'a Context>,
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
    fn raw(&self) -> *mut sys::ggml_cgraph {
        self.ptr.as_ptr()
    }
}

/// An owned backend buffer.
pub struct Buffer {
    ptr: NonNull<sys::ggml_backend_buffer>,
}

// SAFETY: backend buffers are plain device/host memory owned by this value.
unsafe impl Send for Buffer {}
unsafe impl Sync for Buffer {}

impl Buffer {
    /// Wrap host memory as a CPU backend buffer, without copying. Used to compute directly on
    /// memory-mapped weights.
    ///
    /// # Safety
    /// `data` must stay valid (and unmodified while graphs read it) for the buffer's lifetime,
    /// and must be aligned to 32 bytes. ggml only reads weight tensors; it never writes them.
    pub unsafe fn from_host_slice(data: &[u8]) -> Result<Buffer> {
        if !(data.as_ptr() as usize).is_multiple_of(32) {
            return Err(Error::Ggml("host buffer is not 32-byte aligned".into()));
        }
        // SAFETY: caller guarantees lifetime; ggml does not write weight memory.
        let b = unsafe {
            sys::ggml_backend_cpu_buffer_from_ptr(data.as_ptr() as *mut c_void, data.len())
        };
        NonNull::new(b)
            .map(|ptr| Buffer { ptr })
            .ok_or_else(|| Error::Ggml("cannot wrap host memory as a CPU buffer".into()))
    }
    /// Place `t` (a no-alloc tensor) at byte `offset` of this buffer.
    pub fn place(&self, t: Tensor<'_>, offset: usize) -> Result<()> {
        let size = self.size();
        if offset.checked_add(t.nbytes()).is_none_or(|e| e > size) {
            return Err(Error::Ggml(format!(
                "tensor `{}` ({} bytes at {offset}) does not fit a buffer of {size} bytes",
                t.name(),
                t.nbytes()
            )));
        }
        // SAFETY: buffer valid; the address lies inside it (checked); `t` is unallocated.
        let st = unsafe {
            let base = sys::ggml_backend_buffer_get_base(self.ptr.as_ptr()) as *mut u8;
            sys::ggml_backend_tensor_alloc(self.ptr.as_ptr(), t.raw(), base.add(offset).cast())
        };
        if st != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Ggml(format!(
                "cannot place tensor `{}` (status {st})",
                t.name()
            )));
        }
        Ok(())
    }
    pub fn size(&self) -> usize {
        // SAFETY: valid buffer.
        unsafe { sys::ggml_backend_buffer_get_size(self.ptr.as_ptr()) }
    }
    /// Fill with a byte value.
    pub fn clear(&self, value: u8) {
        // SAFETY: valid, writable buffer (never called on wrapped read-only maps).
        unsafe { sys::ggml_backend_buffer_clear(self.ptr.as_ptr(), value) }
    }
    /// Tell the scheduler these are weights (affects op placement on multi-device setups).
    pub fn mark_weights(&self) {
        // SAFETY: valid buffer.
        unsafe {
            sys::ggml_backend_buffer_set_usage(
                self.ptr.as_ptr(),
                sys::GGML_BACKEND_BUFFER_USAGE_WEIGHTS,
            )
        }
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        // SAFETY: we own the buffer.
        unsafe { sys::ggml_backend_buffer_free(self.ptr.as_ptr()) }
    }
}

/// A compute backend. For the CPU it owns a persistent threadpool, so threads are not created
/// on every compute.
pub struct Backend {
    ptr: NonNull<sys::ggml_backend>,
    threadpool: Option<NonNull<sys::ggml_threadpool>>,
    name: String,
    is_cpu: bool,
}

// SAFETY: a backend is used from one thread at a time (`compute` takes &mut self).
unsafe impl Send for Backend {}

/// What kind of device a ggml device is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Gpu,
    IntegratedGpu,
    Accelerator,
    Other,
}

/// A device known to ggml's registry.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device name (`CPU`, `Vulkan0`, `MTL0`, `CUDA0`, ...).
    pub name: String,
    pub description: String,
    /// Name of the backend that registered it (`CPU`, `Vulkan`, `Metal`, `CUDA`, ...).
    pub backend: String,
    pub kind: DeviceKind,
    pub is_cpu: bool,
    /// The device can compute on host memory it did not allocate (Metal on unified memory):
    /// weights can then stay in the file's memory map.
    pub buffer_from_host_ptr: bool,
}

/// The devices ggml was built with (CPU always; Metal/Vulkan/CUDA with their cargo features).
pub fn devices() -> Vec<DeviceInfo> {
    init_logging();
    // SAFETY: registry queries; strings are static in ggml; props is plain data filled by ggml.
    unsafe {
        (0..sys::ggml_backend_dev_count())
            .map(|i| {
                let d = sys::ggml_backend_dev_get(i);
                let mut props: sys::ggml_backend_dev_props = std::mem::zeroed();
                sys::ggml_backend_dev_get_props(d, &mut props);
                let ty = sys::ggml_backend_dev_type(d);
                let kind = match ty {
                    sys::GGML_BACKEND_DEVICE_TYPE_CPU => DeviceKind::Cpu,
                    sys::GGML_BACKEND_DEVICE_TYPE_GPU => DeviceKind::Gpu,
                    sys::GGML_BACKEND_DEVICE_TYPE_IGPU => DeviceKind::IntegratedGpu,
                    sys::GGML_BACKEND_DEVICE_TYPE_ACCEL => DeviceKind::Accelerator,
                    _ => DeviceKind::Other,
                };
                let reg = sys::ggml_backend_dev_backend_reg(d);
                DeviceInfo {
                    name: CStr::from_ptr(sys::ggml_backend_dev_name(d))
                        .to_string_lossy()
                        .into_owned(),
                    description: CStr::from_ptr(sys::ggml_backend_dev_description(d))
                        .to_string_lossy()
                        .into_owned(),
                    backend: if reg.is_null() {
                        String::new()
                    } else {
                        CStr::from_ptr(sys::ggml_backend_reg_name(reg))
                            .to_string_lossy()
                            .into_owned()
                    },
                    kind,
                    is_cpu: kind == DeviceKind::Cpu,
                    buffer_from_host_ptr: props.caps.buffer_from_host_ptr,
                }
            })
            .collect()
    }
}

/// The CPU device and its `CPU_REPACK` extra buffer type, if ggml offers one here.
fn cpu_repack_buffer_type() -> Option<(sys::ggml_backend_dev_t, sys::ggml_backend_buffer_type_t)> {
    init_logging();
    // SAFETY: registry queries; the proc address, when present, has the documented signature
    // `ggml_backend_dev_get_extra_bufts_t` and returns a NULL-terminated static array.
    unsafe {
        for i in 0..sys::ggml_backend_dev_count() {
            let dev = sys::ggml_backend_dev_get(i);
            if sys::ggml_backend_dev_type(dev) != sys::GGML_BACKEND_DEVICE_TYPE_CPU {
                continue;
            }
            let reg = sys::ggml_backend_dev_backend_reg(dev);
            let f = sys::ggml_backend_reg_get_proc_address(
                reg,
                c"ggml_backend_dev_get_extra_bufts".as_ptr(),
            );
            if f.is_null() {
                return None;
            }
            let f: unsafe extern "C" fn(
                sys::ggml_backend_dev_t,
            ) -> *mut sys::ggml_backend_buffer_type_t = std::mem::transmute(f);
            let mut p = f(dev);
            while !p.is_null() && !(*p).is_null() {
                if CStr::from_ptr(sys::ggml_backend_buft_name(*p)).to_bytes() == b"CPU_REPACK" {
                    return Some((dev, *p));
                }
                p = p.add(1);
            }
        }
        None
    }
}

/// Choose a device for `spec`: `auto` (the first GPU ggml offers, else the CPU), `cpu`, a
/// backend name (`vulkan`, `metal`, `cuda`: its first device) or an exact device name
/// (`Vulkan1`).
pub fn select_device(spec: &str) -> Result<DeviceInfo> {
    let all = devices();
    let list = || {
        all.iter()
            .map(|d| format!("{} ({})", d.name, d.description))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let spec_l = spec.to_ascii_lowercase();
    let found = match spec_l.as_str() {
        "auto" | "" => all
            .iter()
            .find(|d| matches!(d.kind, DeviceKind::Gpu | DeviceKind::IntegratedGpu))
            .or_else(|| all.iter().find(|d| d.is_cpu)),
        "cpu" => all.iter().find(|d| d.is_cpu),
        _ => all
            .iter()
            .find(|d| d.name.eq_ignore_ascii_case(spec))
            .or_else(|| {
                all.iter()
                    .find(|d| !d.is_cpu && d.backend.eq_ignore_ascii_case(spec))
            }),
    };
    if let Some(d) = found {
        return Ok(d.clone());
    }
    let hint = match spec_l.as_str() {
        "vulkan" | "metal" | "cuda"
            if !all.iter().any(|d| d.backend.eq_ignore_ascii_case(spec)) =>
        {
            format!(
                "; this build has no {spec_l} devices: build with `--features {spec_l}`{}",
                if spec_l == "vulkan" {
                    " (software devices such as lavapipe are only used when \
                     GGML_VK_VISIBLE_DEVICES names them, e.g. GGML_VK_VISIBLE_DEVICES=0)"
                } else {
                    ""
                }
            )
        }
        _ => String::new(),
    };
    Err(Error::Invalid(format!(
        "no ggml device `{spec}` (available: {}){hint}",
        list()
    )))
}

impl Backend {
    /// The CPU backend with a persistent pool of `n_threads` threads.
    pub fn cpu(n_threads: usize) -> Result<Backend> {
        init_logging();
        let n = n_threads.clamp(1, 512) as i32;
        // SAFETY: CPU backend init; returns null on failure.
        let ptr = NonNull::new(unsafe { sys::ggml_backend_cpu_init() })
            .ok_or_else(|| Error::Ggml("cannot initialise the CPU backend".into()))?;
        // SAFETY: default params for n threads; the pool is freed in Drop after the backend.
        let pool = unsafe {
            let mut params = sys::ggml_threadpool_params_default(n);
            sys::ggml_threadpool_new(&mut params)
        };
        let threadpool = NonNull::new(pool);
        // SAFETY: valid backend and (possibly null) threadpool.
        unsafe {
            sys::ggml_backend_cpu_set_n_threads(ptr.as_ptr(), n);
            if let Some(tp) = threadpool {
                sys::ggml_backend_cpu_set_threadpool(ptr.as_ptr(), tp.as_ptr());
            }
        }
        Ok(Backend {
            ptr,
            threadpool,
            name: "CPU".into(),
            is_cpu: true,
        })
    }

    /// A backend for a device spec (see [`select_device`]): `auto`, `cpu`, `vulkan`, `metal`,
    /// `cuda` or a device name such as `Vulkan0`.
    pub fn by_device_name(spec: &str, n_threads: usize) -> Result<Backend> {
        let d = select_device(spec)?;
        if d.is_cpu {
            return Backend::cpu(n_threads);
        }
        let c = CString::new(d.name.clone()).expect("device names have no NUL");
        // SAFETY: registry lookups; returns null on failure.
        let ptr = unsafe {
            let dev = sys::ggml_backend_dev_by_name(c.as_ptr());
            sys::ggml_backend_dev_init(dev, std::ptr::null())
        };
        let ptr = NonNull::new(ptr)
            .ok_or_else(|| Error::Ggml(format!("cannot initialise device `{}`", d.name)))?;
        Ok(Backend {
            ptr,
            threadpool: None,
            name: d.name,
            is_cpu: false,
        })
    }

    /// Wrap host memory (the weights' memory map) as a buffer of this backend's device without
    /// copying, if the device can compute on such memory (Metal on unified memory); `None` if it
    /// cannot (then the caller copies).
    ///
    /// # Safety
    /// As for [`Buffer::from_host_slice`]: `data` must outlive the buffer and stay unmodified.
    pub unsafe fn buffer_from_host(&self, data: &[u8], max_tensor: usize) -> Option<Buffer> {
        if self.is_cpu {
            // SAFETY: forwarded.
            return unsafe { Buffer::from_host_slice(data).ok() };
        }
        let info = devices().into_iter().find(|d| d.name == self.name)?;
        if !info.buffer_from_host_ptr {
            return None;
        }
        let c = CString::new(self.name.clone()).ok()?;
        // SAFETY: valid device; ggml only reads the wrapped memory for weight tensors.
        let b = unsafe {
            let dev = sys::ggml_backend_dev_by_name(c.as_ptr());
            sys::ggml_backend_dev_buffer_from_host_ptr(
                dev,
                data.as_ptr() as *mut c_void,
                data.len(),
                max_tensor,
            )
        };
        NonNull::new(b).map(|ptr| Buffer { ptr })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn is_cpu(&self) -> bool {
        self.is_cpu
    }
    fn raw(&self) -> *mut sys::ggml_backend {
        self.ptr.as_ptr()
    }

    /// Compute a graph whose tensors are all allocated.
    pub fn compute(&mut self, graph: &Graph<'_>) -> Result<()> {
        // SAFETY: valid backend and graph; every tensor was allocated by the caller (gallocr or
        // buffers), which ggml checks.
        let st = unsafe { sys::ggml_backend_graph_compute(self.raw(), graph.raw()) };
        if st != sys::GGML_STATUS_SUCCESS {
            return Err(Error::Ggml(format!(
                "graph compute failed on {} (status {st})",
                self.name
            )));
        }
        Ok(())
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        // SAFETY: we own both; the backend goes first because it references the pool.
        unsafe {
            sys::ggml_backend_free(self.ptr.as_ptr());
            if let Some(tp) = self.threadpool {
                sys::ggml_threadpool_free(tp.as_ptr());
            }
        }
    }
}

/// ggml's graph allocator: places a graph's intermediate tensors in one backend buffer that it
/// keeps and grows as needed, so repeated graphs of the same shape allocate nothing.
pub struct Allocator {
    ptr: NonNull<sys::ggml_gallocr>,
    /// Bumped by every allocation or reservation. A graph placed at generation g keeps valid
    /// placements while the generation is g; after that it must be rebuilt, not placed again
    /// (ggml's allocator skips tensors that already have data, and a growing buffer moves).
    generation: u64,
}

// SAFETY: owned allocator, used through &mut.
unsafe impl Send for Allocator {}

impl Allocator {
    pub fn new(backend: &Backend) -> Result<Allocator> {
        // SAFETY: valid backend; returns null on failure.
        let ptr = unsafe {
            let buft = sys::ggml_backend_get_default_buffer_type(backend.raw());
            sys::ggml_gallocr_new(buft)
        };
        NonNull::new(ptr)
            .map(|ptr| Allocator { ptr, generation: 0 })
            .ok_or_else(|| Error::Ggml("cannot create a graph allocator".into()))
    }
    /// Allocate every unallocated tensor of `graph`.
    pub fn alloc_graph(&mut self, graph: &Graph<'_>) -> Result<()> {
        self.generation += 1;
        // SAFETY: valid allocator and graph.
        if unsafe { sys::ggml_gallocr_alloc_graph(self.ptr.as_ptr(), graph.raw()) } {
            Ok(())
        } else {
            Err(Error::Ggml("cannot allocate the compute graph".into()))
        }
    }
    /// Size the compute buffer for `graph` (and anything smaller) without allocating its tensors.
    pub fn reserve(&mut self, graph: &Graph<'_>) -> Result<()> {
        self.generation += 1;
        // SAFETY: valid allocator and graph.
        if unsafe { sys::ggml_gallocr_reserve(self.ptr.as_ptr(), graph.raw()) } {
            Ok(())
        } else {
            Err(Error::Ggml("cannot reserve the compute buffer".into()))
        }
    }
    /// See the field: changes whenever placements made before may have become invalid.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Bytes of the compute buffer.
    pub fn buffer_size(&self) -> usize {
        // SAFETY: valid allocator, buffer 0.
        unsafe { sys::ggml_gallocr_get_buffer_size(self.ptr.as_ptr(), 0) }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // SAFETY: we own it.
        unsafe { sys::ggml_gallocr_free(self.ptr.as_ptr()) }
    }
}

/// ggml's own block size and bytes per block for a type id (for checking our type table).
pub fn ggml_type_traits(ty: GgmlType) -> Option<(u64, u64)> {
    if ty.0 >= sys::GGML_TYPE_COUNT {
        return None;
    }
    // SAFETY: id < GGML_TYPE_COUNT, so ggml's table lookup is in bounds.
    let (blck, size) = unsafe { (sys::ggml_blck_size(ty.0), sys::ggml_type_size(ty.0)) };
    (blck > 0).then_some((blck as u64, size as u64))
}

/// Whether ggml can quantize to `ty` without an importance matrix.
pub fn can_quantize(ty: GgmlType) -> bool {
    ggml_type_traits(ty).is_some()
        && ty != GgmlType::I32
        // SAFETY: id validated above.
        && !unsafe { sys::ggml_quantize_requires_imatrix(ty.0) }
        && matches!(ty.0, 0 | 1 | 2 | 3 | 6 | 7 | 8 | 10..=14 | 20 | 30)
}

/// Quantize `src` (rows of `n_per_row` f32) to `ty` with ggml's own quantizer.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize) -> Result<Vec<u8>> {
    if !can_quantize(ty) {
        return Err(Error::Unsupported(format!("quantizing to {ty}")));
    }
    if n_per_row == 0 || !src.len().is_multiple_of(n_per_row) {
        return Err(Error::Invalid(format!(
            "{} values are not rows of {n_per_row}",
            src.len()
        )));
    }
    let row = ty.row_size(n_per_row as u64).ok_or_else(|| {
        Error::Invalid(format!(
            "row length {n_per_row} is not a multiple of {ty}'s block {}",
            ty.block_size()
        ))
    })?;
    let nrows = src.len() / n_per_row;
    let mut out = vec![0u8; row as usize * nrows];
    // SAFETY: id validated; `src` holds nrows*n_per_row f32; `out` holds nrows rows of `row`
    // bytes, exactly what ggml writes; no importance matrix (null) for these types.
    let written = unsafe {
        sys::ggml_quantize_init(ty.0);
        sys::ggml_quantize_chunk(
            ty.0,
            src.as_ptr(),
            out.as_mut_ptr().cast(),
            0,
            nrows as i64,
            n_per_row as i64,
            std::ptr::null(),
        )
    };
    if written != out.len() {
        return Err(Error::Ggml(format!(
            "quantize wrote {written} bytes, expected {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Dequantize `n` values of type `ty` from `data` with ggml's `to_float`.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Result<Vec<f32>> {
    if ty == GgmlType::F32 {
        if data.len() != n * 4 {
            return Err(Error::Invalid("f32 data of the wrong length".into()));
        }
        return Ok(data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect());
    }
    let need = ty.row_size(n as u64);
    if need != Some(data.len() as u64) || ggml_type_traits(ty).is_none() {
        return Err(Error::Invalid(format!(
            "{} bytes are not {n} values of {ty}",
            data.len()
        )));
    }
    let mut out = vec![0f32; n];
    // SAFETY: id validated; the traits table is static; to_float reads exactly row_size(n) bytes
    // (checked) and writes n floats.
    unsafe {
        let traits = sys::ggml_get_type_traits(ty.0);
        let Some(f) = traits.as_ref().and_then(|t| t.to_float) else {
            return Err(Error::Unsupported(format!("dequantizing {ty}")));
        };
        f(data.as_ptr().cast(), out.as_mut_ptr(), n as i64);
    }
    Ok(out)
}

/// A context together with the tensors made in it and the buffers that hold their data, owned
/// as one value (model weights, per-stream caches). Tensors are addressed by index and borrowed
/// from the set, so they cannot outlive it.
pub struct TensorSet {
    // Field order is drop order: buffers reference tensors of `ctx`, both go before the context.
    buffers: Vec<Buffer>,
    ptrs: Vec<NonNull<sys::ggml_tensor>>,
    ctx: Context,
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
