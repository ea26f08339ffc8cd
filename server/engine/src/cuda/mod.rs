//! The CUDA backend (feature `cuda`): the same forward pass as [`crate::model`], on an NVIDIA GPU.
//!
//! Built on cudarc with every CUDA library loaded at run time, so the crate builds on machines
//! with no CUDA toolkit and a machine without the driver gets an [`EngineError`], not a crash.
//! - [`Gpu`]: one device: context, the one stream everything runs on, cuBLAS, the kernels.
//! - `kernels`: the CUDA C sources of `kernels/`, compiled with NVRTC for the model's shape.
//! - [`CudaModel`]: weights resident in bf16 (f16 for f16 checkpoints), the batched forward:
//!   cuBLAS `GemmEx` (f32 accumulation) for every projection over all rows of a step, the
//!   project's kernels for the rest, and token choice on the device.
//! - [`DeviceKv`]: the KV pool's blocks in one device allocation, same block layout as the CPU.
//!
//! Invariant: one stream, so no cross-stream synchronisation exists (cudarc's event tracking is
//! off); the host waits for the device only where results come back (token ids, logits).

mod kernels;
mod model;

use std::sync::Arc;

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv_result, CudaContext, CudaSlice, CudaStream, DevicePtr, DeviceRepr};

use crate::error::{EngineError, Result};
use crate::kv::{BlockId, DeviceBlocks};

pub use model::CudaModel;
pub(crate) use model::{DevicePick, StepOutput};

/// A device error, in words that say what was being done.
pub(crate) fn dev_err(what: &str) -> impl FnOnce(drv_result::DriverError) -> EngineError + '_ {
    move |e| {
        if e.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            EngineError::Device(format!(
                "{what}: out of GPU memory (use a smaller KV memory budget, a smaller model, or a larger GPU)"
            ))
        } else {
            EngineError::Device(format!("{what}: {e}"))
        }
    }
}

pub(crate) fn blas_err(what: &str) -> impl FnOnce(blas_result::CublasError) -> EngineError + '_ {
    move |e| EngineError::Device(format!("{what}: cuBLAS {e}"))
}

/// Checks that the NVIDIA driver and the CUDA libraries the backend loads are present, with a
/// message that says what to install. cudarc panics when it cannot load a library, so this runs
/// before anything else touches CUDA.
pub fn check_libraries() -> Result<()> {
    // SAFETY: these only try to dlopen the libraries by name.
    let (driver, nvrtc, cublas) = unsafe {
        (cudarc::driver::sys::is_culib_present(), cudarc::nvrtc::sys::is_culib_present(), blas_sys::is_culib_present())
    };
    if !driver {
        return Err(EngineError::Device(
            "the NVIDIA driver (libcuda) is not installed or not on the library path: install the NVIDIA \
             driver, or use --device cpu"
                .into(),
        ));
    }
    for (present, lib) in [(nvrtc, "NVRTC (libnvrtc)"), (cublas, "cuBLAS (libcublas)")] {
        if !present {
            return Err(EngineError::Device(format!(
                "{lib} is not installed or not on the library path: install the CUDA 13 runtime libraries \
                 (or add their folder to LD_LIBRARY_PATH), or use --device cpu"
            )));
        }
    }
    Ok(())
}

/// One CUDA device with the stream, cuBLAS handle and kernels of one model.
pub struct Gpu {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    pub(crate) blas: CudaBlas,
    pub(crate) name: String,
}

impl Gpu {
    /// Opens device `ordinal`.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        check_libraries()?;
        let count = CudaContext::device_count().map_err(dev_err("counting CUDA devices"))?;
        if ordinal >= count.max(0) as usize {
            return Err(EngineError::Device(format!(
                "--device cuda:{ordinal}: this machine has {count} CUDA device(s) (cuda:0 .. cuda:{})",
                count - 1
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(dev_err("creating the CUDA context"))?;
        // SAFETY: everything runs on `stream`, in order, so cudarc's per-buffer events are not
        // needed to order work between streams.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("creating the cuBLAS handle"))?;
        let name = ctx.name().unwrap_or_else(|_| format!("cuda:{ordinal}"));
        Ok(Gpu { ctx, stream, blas, name })
    }

    /// Makes this device current on the calling thread (the engine thread is not the loader's).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(dev_err("binding the CUDA context"))
    }

    /// Free and total device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(dev_err("reading device memory"))
    }

    /// Device-to-device copy bandwidth in bytes per second, counting bytes read and written
    /// (the memory-bandwidth ceiling a weight-streaming decode step is held to): the median of
    /// `reps` copies of `bytes`.
    pub fn copy_bandwidth(&self, bytes: usize, reps: usize) -> Result<f64> {
        self.bind()?;
        let src = self.alloc::<u8>(bytes, "allocating the bandwidth probe")?;
        let dst = self.alloc::<u8>(bytes, "allocating the bandwidth probe")?;
        let (s, d) = (addr(&src, &self.stream), addr(&dst, &self.stream));
        let mut times = Vec::with_capacity(reps);
        for i in 0..reps + 2 {
            self.sync()?;
            let t = std::time::Instant::now();
            // SAFETY: both buffers hold `bytes` bytes.
            unsafe { drv_result::memcpy_dtod_async(d, s, bytes, self.stream.cu_stream()) }
                .map_err(dev_err("copying for the bandwidth probe"))?;
            self.sync()?;
            if i >= 2 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(2.0 * bytes as f64 / times[times.len() / 2].max(1e-9))
    }

    pub(crate) fn alloc<T: DeviceRepr>(&self, len: usize, what: &str) -> Result<CudaSlice<T>> {
        // SAFETY: every buffer is written before it is read (inputs by copies, the rest by kernels).
        unsafe { self.stream.alloc::<T>(len.max(1)) }.map_err(dev_err(what))
    }

    pub(crate) fn upload<T: DeviceRepr>(&self, data: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.stream.clone_htod(data).map_err(dev_err(what))
    }

    pub(crate) fn sync(&self) -> Result<()> {
        self.stream.synchronize().map_err(dev_err("running the step on the GPU"))
    }
}

/// The raw device address of a buffer (event tracking is off: nothing to record).
pub(crate) fn addr<T>(s: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    s.device_ptr(stream).0
}

/// The KV pool's storage on the device: `max_blocks` blocks of `block_elems` 16-bit values.
pub struct DeviceKv {
    gpu: Arc<Gpu>,
    data: CudaSlice<u16>,
    block_elems: usize,
    max_blocks: usize,
}

impl DeviceKv {
    pub(crate) fn new(gpu: Arc<Gpu>, block_elems: usize, max_blocks: usize) -> Result<DeviceKv> {
        let data = gpu.alloc::<u16>(block_elems * max_blocks, "allocating the KV cache")?;
        Ok(DeviceKv { gpu, data, block_elems, max_blocks })
    }

    /// Device address of the first block.
    fn first(&self) -> u64 {
        addr(&self.data, &self.gpu.stream)
    }
}

impl DeviceBlocks for DeviceKv {
    fn max_blocks(&self) -> usize {
        self.max_blocks
    }

    fn base(&self) -> u64 {
        self.first()
    }

    /// Copies one block (copy-on-write of a shared partial block), in stream order.
    fn copy_block(&mut self, src: BlockId, dst: BlockId) -> Result<()> {
        let bytes = self.block_elems * 2;
        let base = self.first();
        self.gpu.bind()?;
        // SAFETY: both blocks are inside the allocation (ids below max_blocks), and distinct.
        unsafe {
            drv_result::memcpy_dtod_async(
                base + dst as u64 * bytes as u64,
                base + src as u64 * bytes as u64,
                bytes,
                self.gpu.stream.cu_stream(),
            )
        }
        .map_err(dev_err("copying a KV block"))
    }
}
