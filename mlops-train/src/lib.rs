//! `mlops-train`: embedding training with ArcFace (work in progress).
//!
//! Today this crate only links libtorch and reports what the runtime offers, so that the
//! native stack is built and exercised by CI from the first day. Training lands with the
//! embedding-training issue.
//!
//! ```
//! let rt = mlops_train::torch_runtime();
//! assert!(rt.threads >= 1);
//! ```

/// What the linked libtorch can run on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchRuntime {
    pub cuda_available: bool,
    pub cuda_devices: usize,
    pub threads: usize,
}

/// Queries libtorch for its devices and intra-op thread count.
pub fn torch_runtime() -> TorchRuntime {
    TorchRuntime {
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: tch::Cuda::device_count().max(0) as usize,
        threads: tch::get_num_threads().max(1) as usize,
    }
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    #[test]
    fn libtorch_computes() {
        let a = Tensor::from_slice(&[1f32, 2., 3., 4.]).reshape([2, 2]);
        let b = a.matmul(&a.transpose(0, 1));
        let v: Vec<f32> = b.flatten(0, -1).try_into().unwrap();
        assert_eq!(v, vec![5., 11., 11., 25.]);
        assert_eq!(b.kind(), Kind::Float);
    }
}
