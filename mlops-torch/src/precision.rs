//! Mixed precision: bfloat16 compute with fp32 master weights, through libtorch's own autocast
//! (per device, per thread), on CPUs with native bf16 and on GPUs.

use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::Device;

extern "C" {
    fn mlops_set_autocast(device: i32, enabled: i32) -> i32;
}

/// The numeric precision of training and inference.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// bf16 where the hardware computes it natively (a CPU with AVX512-BF16 or AMX, any CUDA
    /// device), fp32 elsewhere, so machines without it behave exactly as before.
    #[default]
    Auto,
    /// Everything in float32.
    Fp32,
    /// bf16 convolutions and matmuls under autocast with fp32 master weights, also on
    /// hardware without native bf16.
    Bf16,
}

// Parsed and shown by the names serde writes: one spelling in flags, files and logs.
serde_plain::derive_fromstr_from_deserialize!(Precision);
serde_plain::derive_display_from_serialize!(Precision);

impl Precision {
    /// `Fp32` or `Bf16` for `device`: what `Auto` means here.
    pub fn resolve(self, device: Device) -> Precision {
        self.resolve_with(device, cpu_has_bf16())
    }

    /// [`Precision::resolve`] with the CPU's bf16 support given (for tests forcing it off).
    pub fn resolve_with(self, device: Device, cpu_bf16: bool) -> Precision {
        match self {
            Precision::Auto => match device {
                Device::Cuda(_) => Precision::Bf16,
                _ if cpu_bf16 => Precision::Bf16,
                _ => Precision::Fp32,
            },
            other => other,
        }
    }
}

/// `/proc/cpuinfo` of this machine, read once.
fn cpuinfo() -> &'static str {
    static INFO: OnceLock<String> = OnceLock::new();
    INFO.get_or_init(|| std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default())
}

/// Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16). `MLOPS_NO_BF16=1` says
/// no, to compare or to reproduce an fp32 machine.
pub fn cpu_has_bf16() -> bool {
    if std::env::var("MLOPS_NO_BF16").is_ok_and(|v| v == "1") {
        return false;
    }
    cpuinfo()
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| {
            l.split_whitespace()
                .any(|f| f == "avx512_bf16" || f == "amx_bf16")
        })
}

/// The CPU's model name and its bf16 flags, for manifests (figures from different machines
/// must not be confused).
pub fn cpu_model() -> String {
    let model = cpuinfo()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let flags: Vec<&str> = cpuinfo()
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            l.split_whitespace()
                .filter(|f| matches!(*f, "avx512_bf16" | "amx_bf16" | "amx_tile" | "avx512f"))
                .collect()
        })
        .unwrap_or_default();
    format!("{model} [{}]", flags.join(" "))
}

/// Runs `f` with autocast to bf16 on `device` when `precision` (resolved) is `Bf16`; as is
/// otherwise. Autocast is per thread: call it on the thread that runs the model.
pub fn autocast<T>(precision: Precision, device: Device, f: impl FnOnce() -> T) -> T {
    if precision != Precision::Bf16 {
        return f();
    }
    let code = i32::from(matches!(device, Device::Cuda(_)));
    struct Off(i32);
    impl Drop for Off {
        fn drop(&mut self) {
            // SAFETY: plain calls into libtorch's thread-local autocast state.
            unsafe { mlops_set_autocast(self.0, 0) };
        }
    }
    // SAFETY: as above; the guard turns it off again even if `f` panics.
    unsafe { mlops_set_autocast(code, 1) };
    let _off = Off(code);
    f()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    #[test]
    fn auto_is_fp32_without_native_bf16() {
        assert_eq!(
            Precision::Auto.resolve_with(Device::Cpu, false),
            Precision::Fp32
        );
        assert_eq!(
            Precision::Auto.resolve_with(Device::Cpu, true),
            Precision::Bf16
        );
        assert_eq!(
            Precision::Auto.resolve_with(Device::Cuda(0), false),
            Precision::Bf16
        );
        assert_eq!(
            Precision::Fp32.resolve_with(Device::Cpu, true),
            Precision::Fp32
        );
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    }

    #[test]
    fn autocast_computes_matmuls_in_bf16_and_turns_itself_off() {
        let a = Tensor::randn([8, 8], (Kind::Float, Device::Cpu));
        let inside = autocast(Precision::Bf16, Device::Cpu, || a.matmul(&a));
        assert_eq!(inside.kind(), Kind::BFloat16);
        assert_eq!(
            a.matmul(&a).kind(),
            Kind::Float,
            "off again after the closure"
        );
        let fp32 = autocast(Precision::Fp32, Device::Cpu, || a.matmul(&a));
        assert_eq!(fp32.kind(), Kind::Float);
        let diff = (inside.to_kind(Kind::Float) - &fp32)
            .abs()
            .max()
            .double_value(&[]);
        assert!(diff < 0.5, "bf16 result close to fp32: {diff}");
    }
}
