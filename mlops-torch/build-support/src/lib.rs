//! Build-script helper for the crates whose binaries, tests and benchmarks link libtorch.
//!
//! `cargo:rustc-link-arg` only reaches the targets of the package whose build script prints it,
//! so each such crate has a one-line `build.rs`:
//!
//! ```text
//! fn main() {
//!     mlops_torch_build::link_libtorch();
//! }
//! ```
//!
//! with `mlops-torch` as a dependency (which publishes libtorch's lib directory) and this crate
//! as a build-dependency.

use std::path::Path;

/// Links the calling crate's targets to the libtorch that `mlops-torch` found: an rpath so they
/// run without `LD_LIBRARY_PATH`, and `torch_cuda` kept when libtorch has it (rustc's
/// `--as-needed` drops it otherwise, as nothing references it by symbol, and `Device::Cuda`
/// then fails at run time).
///
/// The directory comes from `mlops-torch` (`DEP_MLOPS_TORCH_LIBTORCH_LIB`) for crates that
/// depend on it, or from the `mlops` facade (`DEP_MLOPS_LIBTORCH_LIB`) for crates that depend on
/// that instead.
pub fn link_libtorch() {
    let mut lib = String::new();
    for var in ["DEP_MLOPS_TORCH_LIBTORCH_LIB", "DEP_MLOPS_LIBTORCH_LIB"] {
        println!("cargo:rerun-if-env-changed={var}");
        if lib.is_empty() {
            lib = std::env::var(var).unwrap_or_default();
        }
    }
    link_libtorch_dir(&lib);
}

/// [`link_libtorch`] for a known lib directory (empty: nothing to do).
pub fn link_libtorch_dir(lib: &str) {
    if lib.is_empty() {
        return;
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}

/// `MAJOR.MINOR.PATCH` from libtorch's `version.h` under `include`, or "" when not found.
pub fn header_version(include: &Path) -> String {
    let candidates = [
        "torch/headeronly/version.h",
        "torch/csrc/api/include/torch/version.h",
    ];
    for rel in candidates {
        let Ok(text) = std::fs::read_to_string(include.join(rel)) else {
            continue;
        };
        let field = |name: &str| {
            text.lines().find_map(|line| {
                let rest = line.trim().strip_prefix("#define ")?.strip_prefix(name)?;
                rest.trim().parse::<u32>().ok()
            })
        };
        if let (Some(major), Some(minor), Some(patch)) = (
            field("TORCH_VERSION_MAJOR"),
            field("TORCH_VERSION_MINOR"),
            field("TORCH_VERSION_PATCH"),
        ) {
            return format!("{major}.{minor}.{patch}");
        }
    }
    String::new()
}
