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

//!
//! Files: `tensor.rs` (contexts, tensors, the ops, graphs), `backend.rs` (buffers, backends and
//! devices, the graph allocator), `tensor_set.rs` (weight and state tensor sets, CPU repacking),
//! `quant.rs` (ggml's quantizers and type traits).

mod backend;
mod quant;
mod tensor;
mod tensor_set;

pub use backend::*;
pub use quant::*;
pub use tensor::*;
pub use tensor_set::*;

use llama_cpp_sys_2 as sys;
use std::ffi::{c_void, CStr};
use std::sync::Once;

/// Install our log callback once: ggml's info chatter is dropped, warnings and errors go to
/// stderr.
pub(crate) fn init_logging() {
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
