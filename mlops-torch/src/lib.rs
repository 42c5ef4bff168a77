//! The libtorch runtime shared by the stages that run models (train, embed, serve): device
//! selection, intra-op threads, the version of the libtorch actually linked, and one boundary
//! that turns libtorch failures into errors.
//!
//! ```
//! use mlops_torch::DeviceSpec;
//! let devices = "auto".parse::<DeviceSpec>().unwrap().resolve()?;
//! let threads = mlops_torch::set_threads(0);
//! println!("libtorch {} on {devices:?}, {threads} threads", mlops_torch::LIBTORCH_VERSION);
//! let sum = mlops_torch::catch("adding", || (tch::Tensor::ones([2], tch::kind::FLOAT_CPU) * 2).sum(tch::Kind::Float))?;
//! # Ok::<(), mlops_torch::Error>(())
//! ```

#![warn(missing_docs)]

pub mod foreach;

use std::cell::Cell;
use std::panic::AssertUnwindSafe;

use serde::{Deserialize, Serialize};
use tch::Device;

/// Version of the libtorch this build links, read from its headers at build time.
pub const LIBTORCH_VERSION: &str = env!("MLOPS_LIBTORCH_VERSION");

/// Errors of the torch runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A fallible (`f_`) tch call returned libtorch's error.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// libtorch raised an error inside a method of tch that panics instead of returning it.
    #[error("libtorch failed while {what}: {message}")]
    Failed {
        /// What was being done, as the caller of [`catch`] named it.
        what: String,
        /// The first line of the panic message.
        message: String,
    },
    /// A requested CUDA device is not visible (see [`DeviceSpec::resolve`]).
    #[error("{0}")]
    Device(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f`, turning a panic inside it (tch's non-`f_` methods panic when libtorch throws: out
/// of memory, a label out of range, a corrupt tensor) into [`Error::Failed`] naming `what`.
///
/// This is the one boundary where such panics are caught; the panic message is not printed, the
/// error carries it instead.
pub fn catch<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(Cell::get) {
                previous(info);
            }
        }));
    });
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.map_err(|payload| {
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("unknown failure");
        Error::Failed {
            what: what.to_string(),
            message: message.lines().next().unwrap_or_default().to_string(),
        }
    })
}

/// Where to run: `auto`, `cpu`, `cuda` (every GPU) or `cuda:N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// Every visible GPU if there is one, else the CPU.
    Auto,
    /// The CPU only.
    Cpu,
    /// One GPU.
    Cuda(usize),
    /// Every visible GPU, data parallel.
    AllCuda,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => Ok(DeviceSpec::AllCuda),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(DeviceSpec::Cuda)
                .ok_or_else(|| {
                    format!("unknown device {s:?} (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::AllCuda => f.write_str("cuda"),
        }
    }
}

impl DeviceSpec {
    /// The devices to put replicas on; an unavailable GPU is an error.
    pub fn resolve(self) -> Result<Vec<Device>> {
        let visible = if tch::Cuda::is_available() {
            tch::Cuda::device_count().max(0) as usize
        } else {
            0
        };
        let unavailable = |what: String| {
            Error::Device(format!(
                "{what} is not available: {visible} CUDA device(s) visible{}",
                if visible == 0 {
                    " (CPU-only libtorch or no GPU); use --device cpu"
                } else {
                    ""
                }
            ))
        };
        match self {
            DeviceSpec::Cpu => Ok(vec![Device::Cpu]),
            DeviceSpec::Auto if visible == 0 => Ok(vec![Device::Cpu]),
            DeviceSpec::Auto | DeviceSpec::AllCuda if visible > 0 => {
                Ok((0..visible).map(Device::Cuda).collect())
            }
            DeviceSpec::AllCuda | DeviceSpec::Auto => Err(unavailable("cuda".into())),
            DeviceSpec::Cuda(n) if n < visible => Ok(vec![Device::Cuda(n)]),
            DeviceSpec::Cuda(n) => Err(unavailable(format!("cuda:{n}"))),
        }
    }
}

/// Tunes glibc's allocator for libtorch's activation buffers, once per process: blocks up to
/// 32 MiB come from the heap instead of fresh `mmap`s, and freed memory is kept rather than
/// trimmed back to the kernel. Without it every forward pass over a large batch maps, faults in
/// (zero-fills) and unmaps its activations again: embedding batches of 512 ran at 2,900-3,100
/// img/s on 2 cores, with it 4,100-4,200 (`wide` with flip, fp32). The price is that the
/// process keeps its peak heap. A `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the
/// environment means someone chose otherwise, and is left alone.
pub fn tune_allocator() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        if ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
            .iter()
            .all(|v| std::env::var_os(v).is_none())
        {
            // SAFETY: mallopt only changes allocator parameters; 32 MiB is glibc's largest
            // accepted mmap threshold on 64-bit systems.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    });
}

extern "C" {
    fn mlops_set_texpr_fuser(enabled: i32);
}

/// Prepares TorchScript for running a loaded model on `device`, once per process: on a GPU the
/// TensorExpr fuser is turned off. With it, TorchScript compiles fused CUDA kernels for every
/// new input shape it meets (each role's last, partial batch; every batch size a server
/// forms), which cost the embed stage on an H200 more time than the forward passes did (3,505
/// against 9,664 img/s for torch.jit.load with fewer distinct shapes). The elementwise work it
/// fuses is small beside the convolutions. On the CPU libtorch does not fuse by default, so
/// nothing changes there. `PYTORCH_TENSOREXPR=1` in the environment turns it back on.
pub fn prepare_jit(device: Device) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if matches!(device, Device::Cuda(_)) {
        ONCE.call_once(|| {
            // SAFETY: sets a process-wide flag libtorch reads when it optimizes a graph.
            unsafe { mlops_set_texpr_fuser(0) }
        });
    }
}

/// Sets libtorch's intra-op threads: `requested`, or one per core when it is 0. Returns the count.
pub fn set_threads(requested: usize) -> usize {
    let threads = if requested == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        requested
    };
    tch::set_num_threads(threads as i32);
    threads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves() {
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::AllCuda);
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!(DeviceSpec::Cpu.resolve().unwrap(), vec![Device::Cpu]);
        assert!(!DeviceSpec::Auto.resolve().unwrap().is_empty());
        if !tch::Cuda::is_available() {
            let err = DeviceSpec::Cuda(3).resolve().unwrap_err().to_string();
            assert!(err.contains("cuda:3 is not available"), "{err}");
        }
    }
}

#[cfg(test)]
mod catch_tests {
    use super::*;

    #[test]
    fn libtorch_failures_become_errors() {
        let err = catch("indexing", || {
            tch::Tensor::zeros([2], tch::kind::FLOAT_CPU).get(5)
        })
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("libtorch failed while indexing"), "{err}");
        assert_eq!(catch("adding", || 1 + 1).unwrap(), 2);
    }

    #[test]
    fn version_comes_from_the_headers() {
        let parts: Vec<u32> = LIBTORCH_VERSION
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(parts.len(), 3, "{LIBTORCH_VERSION}");
    }
}

mod precision;
pub use precision::{autocast, cpu_has_bf16, cpu_model, Precision};

/// Runs a TorchScript `module` over `images` (`[n,c,h,w]`) in batches of `batch_size` on
/// `device` with no gradients; returns its `[n,dim]` output on the CPU. What the embed stage,
/// the server and the train stage's teacher run a `model.pt` with.
pub fn embed_batches(
    module: &tch::CModule,
    images: &tch::Tensor,
    batch_size: usize,
    device: Device,
) -> Result<tch::Tensor> {
    tch::no_grad(|| {
        let n = images.size().first().copied().unwrap_or(0);
        let mut parts = Vec::new();
        for start in (0..n).step_by(batch_size.max(1)) {
            let batch = images
                .f_narrow(0, start, (n - start).min(batch_size as i64))?
                .f_to_device(device)?;
            parts.push(module.forward_ts(&[batch])?.f_to_device(Device::Cpu)?);
        }
        Ok(tch::Tensor::f_cat(&parts, 0)?)
    })
}
