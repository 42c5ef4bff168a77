//! `--device auto|cpu|cuda|cuda:N`.

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::{Error, Result};

/// Where to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// Every visible GPU if there is one, else the CPU.
    Auto,
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
