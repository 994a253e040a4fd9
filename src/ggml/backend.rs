//! Buffers, backends and devices, the graph allocator.

use super::*;
use crate::error::{Error, Result};
use llama_cpp_sys_2 as sys;
use std::ffi::{c_void, CStr, CString};
use std::ptr::NonNull;

/// An owned backend buffer.
pub struct Buffer {
    pub(super) ptr: NonNull<sys::ggml_backend_buffer>,
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
    pub(super) ptr: NonNull<sys::ggml_backend>,
    pub(super) threadpool: Option<NonNull<sys::ggml_threadpool>>,
    pub(super) name: String,
    pub(super) is_cpu: bool,
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
pub(super) fn cpu_repack_buffer_type(
) -> Option<(sys::ggml_backend_dev_t, sys::ggml_backend_buffer_type_t)> {
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
    pub(super) fn raw(&self) -> *mut sys::ggml_backend {
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
    pub(super) ptr: NonNull<sys::ggml_gallocr>,
    /// Bumped by every allocation or reservation. A graph placed at generation g keeps valid
    /// placements while the generation is g; after that it must be rebuilt, not placed again
    /// (ggml's allocator skips tensors that already have data, and a growing buffer moves).
    pub(super) generation: u64,
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
