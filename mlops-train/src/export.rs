//! TorchScript export by tracing, verified by reloading.

use mlops_core::{FileEntry, OutputDir};
use tch::nn::ModuleT;
use tch::{CModule, Tensor};

use crate::{EmbeddingNet, Error, Result, MODEL_FILE};

/// Largest difference allowed between the live network and the reloaded `model.pt`.
pub const TOLERANCE: f64 = 1e-5;

/// The exported function: `net`'s embeddings, or with `flip` the L2-normalised mean of the
/// embeddings of each image and its mirror image. Two forward passes of the caller's batch
/// rather than one over both concatenated: on 2 cores a batch twice as large ran 20 % slower
/// per image (its activations leave the cache), and nothing here depends on the batch size, so
/// the trace cannot bake one in.
pub fn inference(net: &EmbeddingNet, xs: &Tensor, flip: bool) -> Tensor {
    if !flip {
        return net.forward_t(xs, false);
    }
    let sum = net.forward_t(xs, false) + net.forward_t(&xs.flip([3]), false);
    crate::arcface::normalize(&sum)
}

/// Folds batch-norm into the preceding layers, traces [`inference`] in eval mode on `example`
/// (CPU),
/// saves `model.pt` into the staging area of `out`, reloads it with `CModule::load` and fails
/// unless it reproduces the unfused network's embeddings on `example` within [`TOLERANCE`].
///
/// `vs` (the store holding `net`'s variables) is frozen first: TorchScript bakes weights in as
/// constants, and the tracer refuses constants that require gradients.
pub fn trace_and_verify(
    vs: &mut tch::nn::VarStore,
    net: &mut EmbeddingNet,
    example: &Tensor,
    flip: bool,
    out: &mut OutputDir,
) -> Result<FileEntry> {
    vs.freeze();
    let path = out.staged_path(MODEL_FILE);
    let expected = tch::no_grad(|| inference(net, example, flip));
    net.fuse_batch_norm();
    let net = &*net;
    let mut forward = |inputs: &[Tensor]| vec![inference(net, &inputs[0], flip)];
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
    // The example batch, and a batch of another size: a trace must not bake the size in.
    let n = example.size()[0];
    let mut diffs = Vec::new();
    for rows in [n, n / 2 + 1] {
        let got = tch::no_grad(|| reloaded.forward_ts(&[example.narrow(0, 0, rows)]))?;
        let want = expected.narrow(0, 0, rows);
        diffs.push(if got.size() == want.size() {
            (&got - &want).abs().max().double_value(&[])
        } else {
            f64::INFINITY
        });
    }
    // The largest, NaN winning (f64::max would drop it).
    let diff = diffs
        .into_iter()
        .fold(0.0, |a: f64, d| if d.is_nan() || d > a { d } else { a });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;
    use tch::{nn, Device, Kind};

    #[test]
    fn flip_export_is_mirror_invariant_and_unit_norm() {
        tch::manual_seed(1);
        let dir = tempfile::tempdir().unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut net = EmbeddingNet::new(&vs.root(), Arch::Wide, [1, 12, 12], 8, 0.0);
        let x = Tensor::rand([6, 1, 12, 12], (Kind::Float, Device::Cpu));
        // Batch statistics that are not the initial ones.
        let _ = net.forward_t(&x, true);
        let mut out = OutputDir::create(dir.path()).unwrap();
        trace_and_verify(&mut vs, &mut net, &x, true, &mut out).unwrap();
        let module = CModule::load(out.staged_path(MODEL_FILE)).unwrap();
        let a = module.forward_ts(&[&x]).unwrap();
        let b = module.forward_ts(&[&x.flip([3])]).unwrap();
        // Any batch size, not the traced one's.
        let three = module.forward_ts(&[&x.narrow(0, 1, 3)]).unwrap();
        assert_eq!(three.size(), [3, 8]);
        assert!((&three - a.narrow(0, 1, 3)).abs().max().double_value(&[]) < 1e-5);
        assert!((&a - &b).abs().max().double_value(&[]) < 1e-5);
        let norms = a.norm_scalaropt_dim(2.0, [1i64].as_slice(), false);
        assert!((norms - 1.0).abs().max().double_value(&[]) < 1e-5);
        // Not the plain network: a mirror changes its embedding.
        let plain = tch::no_grad(|| net.forward_t(&x, false));
        let plain_b = tch::no_grad(|| net.forward_t(&x.flip([3]), false));
        assert!((&plain - &plain_b).abs().max().double_value(&[]) > 1e-3);
    }
}
