//! TorchScript export by tracing, verified by reloading.

use mlops_core::{FileEntry, OutputDir};
use tch::nn::ModuleT;
use tch::{CModule, Tensor};

use crate::{EmbeddingNet, Error, Result, MODEL_FILE};

/// Largest difference allowed between the live network and the reloaded `model.pt`.
pub const TOLERANCE: f64 = 1e-5;

/// Folds batch-norm into the preceding layers, traces `net` in eval mode on `example` (CPU),
/// saves `model.pt` into the staging area of `out`, reloads it with `CModule::load` and fails
/// unless it reproduces the unfused network's embeddings on `example` within [`TOLERANCE`].
///
/// `vs` (the store holding `net`'s variables) is frozen first: TorchScript bakes weights in as
/// constants, and the tracer refuses constants that require gradients.
pub fn trace_and_verify(
    vs: &mut tch::nn::VarStore,
    net: &mut EmbeddingNet,
    example: &Tensor,
    out: &mut OutputDir,
) -> Result<FileEntry> {
    vs.freeze();
    let path = out.staged_path(MODEL_FILE);
    let expected = tch::no_grad(|| net.forward_t(example, false));
    net.fuse_batch_norm();
    let net = &*net;
    let mut forward = |inputs: &[Tensor]| vec![net.forward_t(&inputs[0], false)];
    let module = tch::no_grad(|| {
        CModule::create_by_tracing(
            "EmbeddingNet",
            "forward",
            std::slice::from_ref(example),
            &mut forward,
        )
    })?;
    module.save(&path)?;
    let reloaded = CModule::load(&path)?;
    let got = tch::no_grad(|| reloaded.forward_ts(&[example]))?;
    let diff = if got.size() == expected.size() {
        (&got - &expected).abs().max().double_value(&[])
    } else {
        f64::INFINITY
    };
    // NaN fails too.
    if diff.is_nan() || diff > TOLERANCE {
        return Err(Error::Export {
            path,
            diff,
            tolerance: TOLERANCE,
        });
    }
    tracing::info!(
        max_abs_diff = diff,
        "exported model.pt reproduces the network"
    );
    Ok(out.adopt(MODEL_FILE)?)
}
