//! Embedding networks for small grayscale images.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module, ModuleT};
use tch::Tensor;

use crate::arcface::normalize;

/// Named network architectures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The reference design: conv 1->32 3x3, BN, ReLU, maxpool 2, conv 32->64 3x3, BN, ReLU,
    /// flatten, FC->128, BN1d, ReLU, FC->dim.
    Seed,
    /// A small residual net with batch-norm and dropout, at about the seed's cost per image (the
    /// default before `wide`; `--profile quick` trains it): conv 1->32 3x3, maxpool 2, BN, ReLU,
    /// a residual block 32->48 with stride 2, a residual block 48->48, global average and max
    /// pooling, dropout, FC->dim, BN1d.
    Res,
    /// The default: capacity where it is cheap, thin at 28x28, wide at 7x7 and 4x4. Conv 1->24, maxpool 2,
    /// BN, ReLU, residual blocks 24->48 (14x14), 48->96 (stride 2, 7x7), 96->192 (stride 2,
    /// 4x4), each block's last batch-norm scale starting at zero (the block starts as its
    /// shortcut), global average and max pooling, FC->dim, BN1d.
    Wide,
    /// `wide` at half the width (12, 24, 48, 96 channels): a quarter of its multiply-adds
    /// (5.3 M per 28x28 image against 21.1 M), meant as a distilled student
    /// (`--teacher`) that serves at a fraction of the default's cost.
    Slim,
}

impl Arch {
    /// The stem's channels of the architectures that take a width (`wide` 24, `slim` 12).
    pub fn default_width(self) -> Option<i64> {
        match self {
            Arch::Wide => Some(24),
            Arch::Slim => Some(12),
            Arch::Seed | Arch::Res => None,
        }
    }

    /// The name `model.json` records: `slim`, or `slim-w15` when the width is not the
    /// architecture's own.
    pub fn name_with_width(self, width: Option<usize>) -> String {
        match (width, self.default_width()) {
            (Some(w), Some(d)) if w as i64 != d => format!("{self}-w{w}"),
            _ => self.to_string(),
        }
    }

    /// Smallest input side the architecture accepts.
    pub fn min_side(self) -> i64 {
        match self {
            Arch::Seed => 8,
            Arch::Res => 8,
            Arch::Wide => 8,
            Arch::Slim => 8,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Arch::Seed => "seed",
            Arch::Res => "res",
            Arch::Wide => "wide",
            Arch::Slim => "slim",
        })
    }
}

/// How `wide` and `slim` are built beyond their architecture (all off by default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetOptions {
    /// Channels of the stem (the stages double it three times); `None`: the architecture's own
    /// (24, 12).
    pub width: Option<i64>,
    /// Each residual block rescales its channels by a squeeze-and-excitation gate (Hu et al.,
    /// 2018) before adding its shortcut.
    pub squeeze_excite: bool,
    /// The embedding layer reads the last stage's whole feature map (flattened) instead of its
    /// global average and maximum.
    pub spatial_head: bool,
}

/// An embedding network: image batch `[n,1,h,w]` -> L2-normalised embeddings `[n,dim]`.
#[derive(Debug)]
pub struct EmbeddingNet {
    body: Body,
}

#[derive(Debug)]
enum Body {
    Seed(Box<SeedNet>),
    Res(Box<ResNet>),
}

impl EmbeddingNet {
    /// Builds `arch` under `vs` for inputs of `input = [c, h, w]`.
    pub fn new(vs: &nn::Path, arch: Arch, input: [i64; 3], dim: i64, dropout: f64) -> Self {
        Self::with_width(vs, arch, None, input, dim, dropout)
    }

    /// [`EmbeddingNet::new`] with the stem's channels of `wide` or `slim` set to `width` (the
    /// stages double it three times); `None` keeps the architecture's own (24, 12). The other
    /// architectures have no width and ignore it.
    pub fn with_width(
        vs: &nn::Path,
        arch: Arch,
        width: Option<i64>,
        input: [i64; 3],
        dim: i64,
        dropout: f64,
    ) -> Self {
        let options = NetOptions {
            width,
            ..Default::default()
        };
        Self::with_options(vs, arch, &options, input, dim, dropout)
    }

    /// [`EmbeddingNet::new`] with the [`NetOptions`] of `wide` and `slim`; the other
    /// architectures ignore them.
    pub fn with_options(
        vs: &nn::Path,
        arch: Arch,
        options: &NetOptions,
        input: [i64; 3],
        dim: i64,
        dropout: f64,
    ) -> Self {
        let body = match arch {
            Arch::Seed => Body::Seed(Box::new(SeedNet::new(vs, input, dim))),
            Arch::Res => Body::Res(Box::new(ResNet::new(vs, input, dim, dropout))),
            Arch::Wide | Arch::Slim => {
                let w = options.width.or(arch.default_width()).unwrap_or(24);
                Body::Res(Box::new(ResNet::wide(vs, input, dim, dropout, w, options)))
            }
        };
        EmbeddingNet { body }
    }
}

impl EmbeddingNet {
    /// Folds every batch-norm into the layer before it, for inference. The eval-mode output is
    /// unchanged up to float rounding; training-mode forward passes keep using the unfused layers.
    pub fn fuse_batch_norm(&mut self) {
        match &mut self.body {
            Body::Seed(net) => net.fuse(),
            Body::Res(net) => net.fuse(),
        }
    }
}

impl ModuleT for EmbeddingNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let raw = match &self.body {
            Body::Seed(net) => net.forward_t(xs, train),
            Body::Res(net) => net.forward_t(xs, train),
        };
        normalize(&raw)
    }
}

/// `nn::conv2d` with its weight stored channels-last (NHWC in memory; every op still sees NCHW).
/// oneDNN then runs the convolutions and their gradients in its blocked NHWC kernels: on two
/// cores a training step of `wide` ran 1.25x faster (fp32 and bf16) and inference 1.45x
/// (PyTorch, same libtorch, side by side). Weights decide the layout: the one-channel input is
/// the same bytes either way, and every activation after the first convolution inherits the
/// layout. Optimizer state (`zeros_like`), checkpoints (`copy_` into the variable) and the
/// exported TorchScript constants keep it.
fn conv2d(vs: nn::Path, c_in: i64, c_out: i64, k: i64, config: nn::ConvConfig) -> nn::Conv2D {
    let mut conv = nn::conv2d(vs, c_in, c_out, k, config);
    // `set_data` swaps the storage of the one tensor the VarStore and the layer share.
    let data = channels_last(&conv.ws);
    tch::no_grad(|| conv.ws.set_data(&data));
    conv
}

/// `t` (4-d) with channels-last strides and the same values. Built explicitly (NHWC buffer, then a
/// strided NCHW view) because `permute().contiguous()` skips the copy when a dimension has size
/// one and would leave a one-channel stem's weight in NCHW strides, which oneDNN reads as NCHW.
fn channels_last(t: &Tensor) -> Tensor {
    let [o, c, h, w] = <[i64; 4]>::try_from(t.size()).expect("a 4-d convolution weight");
    let mut nhwc = Tensor::empty([o, h, w, c], (t.kind(), t.device()));
    tch::no_grad(|| nhwc.copy_(&t.permute([0, 2, 3, 1])));
    nhwc.as_strided([o, c, h, w], [h * w * c, 1, w * c, c], None)
}

/// A bias-free convolution followed by batch-norm. For inference the pair can be folded into
/// one convolution ([`ConvBn::fuse`]), which saves a full pass over the activations.
#[derive(Debug)]
struct ConvBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    stride: i64,
    padding: i64,
    fused: Option<(Tensor, Tensor)>,
}

impl ConvBn {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, k: i64, stride: i64, padding: i64) -> Self {
        Self::with_gamma(vs, c_in, c_out, k, stride, padding, None)
    }

    /// With the batch-norm scale starting at `gamma` (0 makes a residual branch start silent);
    /// `None` keeps tch's default initialisation (uniform in [0, 1]), which `res` and `seed`
    /// were tuned with.
    fn with_gamma(
        vs: nn::Path,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        gamma: Option<f64>,
    ) -> Self {
        let config = nn::ConvConfig {
            stride,
            padding,
            bias: false,
            ..Default::default()
        };
        let mut bn = nn::BatchNormConfig::default();
        if let Some(g) = gamma {
            bn.ws_init = nn::Init::Const(g);
        }
        ConvBn {
            conv: conv2d(&vs / "conv", c_in, c_out, k, config),
            bn: nn::batch_norm2d(&vs / "bn", c_out, bn),
            stride,
            padding,
            fused: None,
        }
    }

    fn fuse(&mut self) {
        let (scale, shift) = bn_affine(&self.bn);
        let w = channels_last(&(&self.conv.ws * scale.view([-1, 1, 1, 1])));
        self.fused = Some((w.detach(), shift.detach()));
    }
}

impl ModuleT for ConvBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.fused {
            Some((w, b)) if !train => {
                xs.conv2d(w, Some(b), [self.stride; 2], [self.padding; 2], [1, 1], 1)
            }
            _ => xs.apply(&self.conv).apply_t(&self.bn, train),
        }
    }
}

/// Images whose smaller side is below this keep their full resolution through the stem: pooled,
/// an 8x8 image would reach the last stage at 1x1 pixel, where its 3x3 convolutions see no
/// neighbours (Fashion-MNIST's 28x28 reaches it at 4x4). Measured on `scripts/make_folders.py`'s
/// sets at their own size (2026-12-06): 8x8 digits 0.9792 pooled, 0.9958 not; 16x16
/// Fashion-MNIST 0.7733 pooled, 0.7667 not, for 2.6x the time, so 16 pools.
pub const STEM_POOL_MIN_SIDE: i64 = 16;

/// Whether the stem of a network for `h` x `w` images pools (see [`STEM_POOL_MIN_SIDE`]).
pub fn stem_pools(h: i64, w: i64) -> bool {
    h.min(w) >= STEM_POOL_MIN_SIDE
}

/// A bias-free convolution, 2x2 max-pooling (on images of at least [`STEM_POOL_MIN_SIDE`]
/// pixels a side), then batch-norm: the stem. Pooling before the
/// batch-norm and ReLU (rather than after) runs them on a quarter of the activations, which made
/// a training step about 40 % faster on two CPU cores; max-pooling commutes with ReLU, so only
/// the batch statistics differ. For inference the batch-norm becomes a per-channel affine map
/// after the pool (it cannot fold into the convolution: a negative scale would not commute
/// with the max).
#[derive(Debug)]
struct ConvPoolBn {
    conv: nn::Conv2D,
    bn: nn::BatchNorm,
    pool: bool,
    fused: Option<(Tensor, Tensor)>,
}

impl ConvPoolBn {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, pool: bool) -> Self {
        let config = nn::ConvConfig {
            padding: 1,
            bias: false,
            ..Default::default()
        };
        ConvPoolBn {
            conv: conv2d(&vs / "conv", c_in, c_out, 3, config),
            bn: nn::batch_norm2d(&vs / "bn", c_out, Default::default()),
            pool,
            fused: None,
        }
    }

    fn fuse(&mut self) {
        let (scale, shift) = bn_affine(&self.bn);
        self.fused = Some((
            scale.view([1, -1, 1, 1]).detach(),
            shift.view([1, -1, 1, 1]).detach(),
        ));
    }
}

impl ModuleT for ConvPoolBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let conv = xs.apply(&self.conv);
        let pooled = if self.pool {
            conv.max_pool2d_default(2)
        } else {
            conv
        };
        match &self.fused {
            Some((scale, shift)) if !train => pooled * scale + shift,
            _ => pooled.apply_t(&self.bn, train),
        }
    }
}

/// A linear layer followed by 1-d batch-norm, foldable like [`ConvBn`].
#[derive(Debug)]
struct LinearBn {
    linear: nn::Linear,
    bn: nn::BatchNorm,
    fused: Option<(Tensor, Tensor)>,
}

impl LinearBn {
    fn new(vs: nn::Path, d_in: i64, d_out: i64) -> Self {
        LinearBn {
            linear: nn::linear(&vs / "linear", d_in, d_out, Default::default()),
            bn: nn::batch_norm1d(&vs / "bn", d_out, Default::default()),
            fused: None,
        }
    }

    fn fuse(&mut self) {
        let (scale, shift) = bn_affine(&self.bn);
        let w = &self.linear.ws * scale.view([-1, 1]);
        let b = match &self.linear.bs {
            Some(b) => b * &scale + shift,
            None => shift,
        };
        self.fused = Some((w.detach(), b.detach()));
    }
}

impl ModuleT for LinearBn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        match &self.fused {
            Some((w, b)) if !train => xs.linear(w, Some(b)),
            _ => xs.apply(&self.linear).apply_t(&self.bn, train),
        }
    }
}

/// Eval-mode batch-norm as `x * scale + shift`.
fn bn_affine(bn: &nn::BatchNorm) -> (Tensor, Tensor) {
    tch::no_grad(|| {
        // tch's BatchNormConfig default, which every layer here uses.
        let eps = 1e-5;
        let inv_std = (&bn.running_var + eps).rsqrt();
        let scale = match &bn.ws {
            Some(g) => g * &inv_std,
            None => inv_std,
        };
        let shift = match &bn.bs {
            Some(b) => b - &bn.running_mean * &scale,
            None => -(&bn.running_mean * &scale),
        };
        (scale, shift)
    })
}

#[derive(Debug)]
struct SeedNet {
    conv1: ConvBn,
    conv2: ConvBn,
    fc1: LinearBn,
    fc2: nn::Linear,
}

impl SeedNet {
    fn new(vs: &nn::Path, [c, h, w]: [i64; 3], dim: i64) -> Self {
        let side = |s: i64| (s - 2) / 2 - 2;
        SeedNet {
            conv1: ConvBn::new(vs / "conv1", c, 32, 3, 1, 0),
            conv2: ConvBn::new(vs / "conv2", 32, 64, 3, 1, 0),
            fc1: LinearBn::new(vs / "fc1", 64 * side(h) * side(w), 128),
            fc2: nn::linear(vs / "fc2", 128, dim, Default::default()),
        }
    }

    fn fuse(&mut self) {
        self.conv1.fuse();
        self.conv2.fuse();
        self.fc1.fuse();
    }
}

impl ModuleT for SeedNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let x = xs.apply_t(&self.conv1, train).relu().max_pool2d_default(2);
        let x = x.apply_t(&self.conv2, train).relu().flatten(1, -1);
        x.apply_t(&self.fc1, train).relu().apply(&self.fc2)
    }
}

/// Squeeze-and-excitation: each channel scaled by a gate in (0, 1) computed from the
/// channels' global averages (FC to a quarter of the channels, ReLU, FC back, sigmoid).
#[derive(Debug)]
struct SqueezeExcite {
    reduce: nn::Linear,
    expand: nn::Linear,
}

impl SqueezeExcite {
    fn new(vs: nn::Path, channels: i64) -> Self {
        let hidden = (channels / 4).max(1);
        SqueezeExcite {
            reduce: nn::linear(&vs / "reduce", channels, hidden, Default::default()),
            expand: nn::linear(&vs / "expand", hidden, channels, Default::default()),
        }
    }
}

impl Module for SqueezeExcite {
    fn forward(&self, xs: &Tensor) -> Tensor {
        let gate = xs
            .adaptive_avg_pool2d([1, 1])
            .flatten(1, -1)
            .apply(&self.reduce)
            .relu()
            .apply(&self.expand)
            .sigmoid();
        // Not `view([n, c, 1, 1])`: tracing would bake the batch size into model.pt.
        xs * gate.unsqueeze(-1).unsqueeze(-1)
    }
}

/// conv-BN-ReLU-conv-BN (optionally squeeze-and-excitation) plus a (projected when the shape
/// changes) shortcut, then ReLU.
#[derive(Debug)]
struct Block {
    a: ConvBn,
    b: ConvBn,
    se: Option<SqueezeExcite>,
    shortcut: Option<ConvBn>,
}

impl Block {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, stride: i64) -> Self {
        Self::with_gamma(vs, c_in, c_out, stride, None, false)
    }

    fn with_gamma(
        vs: nn::Path,
        c_in: i64,
        c_out: i64,
        stride: i64,
        gamma: Option<f64>,
        se: bool,
    ) -> Self {
        Block {
            a: ConvBn::new(&vs / "a", c_in, c_out, 3, stride, 1),
            b: ConvBn::with_gamma(&vs / "b", c_out, c_out, 3, 1, 1, gamma),
            se: se.then(|| SqueezeExcite::new(&vs / "se", c_out)),
            shortcut: (stride != 1 || c_in != c_out)
                .then(|| ConvBn::new(&vs / "proj", c_in, c_out, 1, stride, 0)),
        }
    }

    fn fuse(&mut self) {
        self.a.fuse();
        self.b.fuse();
        if let Some(s) = &mut self.shortcut {
            s.fuse();
        }
    }
}

impl ModuleT for Block {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut y = xs.apply_t(&self.a, train).relu().apply_t(&self.b, train);
        if let Some(se) = &self.se {
            y = y.apply(se);
        }
        let skip = match &self.shortcut {
            Some(proj) => xs.apply_t(proj, train),
            None => xs.shallow_clone(),
        };
        (y + skip).relu()
    }
}

#[derive(Debug)]
struct ResNet {
    stem: ConvPoolBn,
    stages: Vec<Block>,
    dropout: f64,
    /// The embedding layer reads the flattened feature map, not its global pools.
    flatten: bool,
    head: LinearBn,
}

impl ResNet {
    fn new(vs: &nn::Path, [c, h, w]: [i64; 3], dim: i64, dropout: f64) -> Self {
        ResNet {
            stem: ConvPoolBn::new(vs / "stem", c, 32, stem_pools(h, w)),
            stages: vec![
                Block::new(vs / "stage1", 32, 48, 2),
                Block::new(vs / "stage2", 48, 48, 1),
            ],
            dropout,
            flatten: false,
            head: LinearBn::new(vs / "head", 48 * 2, dim),
        }
    }

    /// [`Arch::Wide`] (`width` 24) and [`Arch::Slim`] (12): a stem of `width` channels, then
    /// stages of 2x, 4x and 8x `width`.
    fn wide(
        vs: &nn::Path,
        [c, h, w]: [i64; 3],
        dim: i64,
        dropout: f64,
        width: i64,
        options: &NetOptions,
    ) -> Self {
        let pool = stem_pools(h, w);
        // The stem halves a side when it pools; stages 2 and 3 (3x3, stride 2, padding 1) each
        // halve it rounding up, so the last map has a side of ceil(s / 4).
        let after = |s: i64| {
            let s = if pool { s / 2 } else { s };
            (s + 3) / 4
        };
        let (se, flatten) = (options.squeeze_excite, options.spatial_head);
        let features = if flatten {
            8 * width * after(h) * after(w)
        } else {
            8 * width * 2
        };
        let w = width;
        ResNet {
            stem: ConvPoolBn::new(vs / "stem", c, w, pool),
            stages: vec![
                Block::with_gamma(vs / "stage1", w, 2 * w, 1, Some(0.0), se),
                Block::with_gamma(vs / "stage2", 2 * w, 4 * w, 2, Some(0.0), se),
                Block::with_gamma(vs / "stage3", 4 * w, 8 * w, 2, Some(0.0), se),
            ],
            dropout,
            flatten,
            head: LinearBn::new(vs / "head", features, dim),
        }
    }

    fn fuse(&mut self) {
        self.stem.fuse();
        for s in &mut self.stages {
            s.fuse();
        }
        self.head.fuse();
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let mut x = xs.apply_t(&self.stem, train).relu();
        for stage in &self.stages {
            x = x.apply_t(stage, train);
        }
        // Average and max pooling together keep both "how much" and "where strongest".
        let pooled = if self.flatten {
            x.flatten(1, -1)
        } else {
            Tensor::cat(
                &[
                    x.adaptive_avg_pool2d([1, 1]),
                    x.adaptive_max_pool2d([1, 1]).0,
                ],
                1,
            )
            .flatten(1, -1)
        };
        pooled
            .dropout(self.dropout, train)
            .apply_t(&self.head, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn both_archs_embed_to_unit_vectors() {
        for arch in [Arch::Seed, Arch::Res, Arch::Wide] {
            for side in [8, 16, 28, 32] {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = EmbeddingNet::new(&vs.root(), arch, [1, side, side], 16, 0.1);
                let x = Tensor::rand([4, 1, side, side], (Kind::Float, Device::Cpu));
                let e = net.forward_t(&x, false);
                assert_eq!(e.size(), vec![4, 16]);
                let norms: Vec<f32> = e
                    .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
                    .try_into()
                    .unwrap();
                assert!(
                    norms.iter().all(|n| (n - 1.0).abs() < 1e-5),
                    "{arch}: {norms:?}"
                );
            }
        }
    }

    /// Channels-last, seen as the input-channel stride of 1 (contiguous NCHW has `kh * kw`, even
    /// for a one-channel input).
    fn is_channels_last(t: &Tensor) -> bool {
        t.dim() == 4 && t.stride()[1] == 1 && t.stride()[0] == t.size()[1..].iter().product::<i64>()
    }

    #[test]
    fn convolutions_stay_channels_last_through_a_training_step() {
        for arch in [Arch::Seed, Arch::Res, Arch::Wide] {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = EmbeddingNet::new(&vs.root(), arch, [1, 28, 28], 16, 0.0);
            let convs: Vec<Tensor> = vs
                .trainable_variables()
                .into_iter()
                .filter(|t| t.dim() == 4)
                .collect();
            assert!(convs.len() >= 2, "{arch}");
            assert!(convs.iter().all(is_channels_last), "{arch}: weights");
            let mut opt =
                crate::optim::Optimizer::new(Default::default(), vs.trainable_variables());
            let before: Vec<Tensor> = convs.iter().map(|t| t.detach().copy()).collect();
            let x = Tensor::rand([8, 1, 28, 28], (Kind::Float, Device::Cpu));
            net.forward_t(&x, true).sum(Kind::Float).backward();
            assert!(
                convs.iter().all(|t| is_channels_last(&t.grad())),
                "{arch}: gradients"
            );
            opt.step(0.1);
            assert!(convs.iter().all(is_channels_last), "{arch}: after a step");
            // The step changed the weights the layers use, not a detached copy.
            assert!(convs
                .iter()
                .zip(&before)
                .any(|(t, b)| (t - b).abs().max().double_value(&[]) > 0.0));
            // Loading values (checkpoints, EMA, replicas) copies into the variables in place.
            let mut other = nn::VarStore::new(Device::Cpu);
            let _ = EmbeddingNet::new(&other.root(), arch, [1, 28, 28], 16, 0.0);
            other.copy(&vs).unwrap();
            assert!(other
                .trainable_variables()
                .iter()
                .filter(|t| t.dim() == 4)
                .all(is_channels_last));
        }
    }

    #[test]
    fn small_images_keep_their_resolution_through_the_stem() {
        for ([h, w], out) in [
            ([8, 8], [8, 8]),
            ([12, 20], [12, 20]),
            ([15, 15], [15, 15]),
            ([16, 16], [8, 8]),
            ([16, 32], [8, 16]),
            ([28, 28], [14, 14]),
            ([32, 32], [16, 16]),
        ] {
            for arch in [Arch::Res, Arch::Wide, Arch::Slim] {
                let vs = nn::VarStore::new(Device::Cpu);
                let net = EmbeddingNet::new(&vs.root(), arch, [1, h, w], 16, 0.0);
                let Body::Res(res) = &net.body else {
                    panic!("{arch} is a ResNet")
                };
                let x = Tensor::rand([2, 1, h, w], (Kind::Float, Device::Cpu));
                let y = res.stem.forward_t(&x, false);
                assert_eq!(y.size()[2..], out, "{arch} on {h}x{w}");
            }
        }
    }

    #[test]
    fn spatial_head_reads_the_whole_last_map_of_any_input_shape() {
        for [h, w] in [[8, 8], [12, 20], [15, 15], [16, 32], [28, 28], [32, 32]] {
            for arch in [Arch::Wide, Arch::Slim] {
                let vs = nn::VarStore::new(Device::Cpu);
                let options = NetOptions {
                    spatial_head: true,
                    ..Default::default()
                };
                let net =
                    EmbeddingNet::with_options(&vs.root(), arch, &options, [1, h, w], 16, 0.0);
                let Body::Res(res) = &net.body else {
                    panic!("{arch} is a ResNet")
                };
                let x = Tensor::rand([3, 1, h, w], (Kind::Float, Device::Cpu));
                let mut map = res.stem.forward_t(&x, false);
                for stage in &res.stages {
                    map = map.apply_t(stage, false);
                }
                let [_, c, mh, mw] = map.size()[..] else {
                    panic!("a feature map has four dimensions")
                };
                assert_eq!(
                    res.head.linear.ws.size(),
                    [16, c * mh * mw],
                    "{arch} on {h}x{w}"
                );
                let y = net.forward_t(&x, false);
                assert_eq!(y.size(), [3, 16], "{arch} on {h}x{w}");
            }
        }
    }

    #[test]
    fn fused_batch_norm_gives_the_same_embeddings() {
        for (arch, side, se) in [
            (Arch::Seed, 28, false),
            (Arch::Res, 28, false),
            (Arch::Wide, 28, false),
            (Arch::Wide, 8, false),
            (Arch::Wide, 28, true),
            (Arch::Slim, 8, true),
        ] {
            let vs = nn::VarStore::new(Device::Cpu);
            let options = NetOptions {
                squeeze_excite: se,
                ..Default::default()
            };
            let mut net =
                EmbeddingNet::with_options(&vs.root(), arch, &options, [1, side, side], 32, 0.0);
            // A few training passes give the batch-norms non-trivial running statistics.
            for _ in 0..3 {
                let _ = net.forward_t(
                    &(Tensor::rand([16, 1, side, side], (Kind::Float, Device::Cpu)) * 3.0),
                    true,
                );
            }
            // Batch-norm scales of either sign: the stem's pool-then-normalise order must stay
            // exact when a scale is negative.
            tch::no_grad(|| {
                for (name, mut t) in vs.variables() {
                    if name.ends_with("bn.weight") {
                        t.copy_(&Tensor::randn(t.size(), (Kind::Float, Device::Cpu)));
                    }
                }
            });
            let x = Tensor::rand([8, 1, side, side], (Kind::Float, Device::Cpu));
            let before = tch::no_grad(|| net.forward_t(&x, false));
            net.fuse_batch_norm();
            let after = tch::no_grad(|| net.forward_t(&x, false));
            let diff = (&before - &after).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "{arch} (se {se}) on {side}x{side}: {diff}");
        }
    }

    #[test]
    fn squeeze_excite_adds_a_gate_per_block_and_nothing_else() {
        let names = |se: bool| {
            let vs = nn::VarStore::new(Device::Cpu);
            let options = NetOptions {
                squeeze_excite: se,
                ..Default::default()
            };
            let _ =
                EmbeddingNet::with_options(&vs.root(), Arch::Wide, &options, [1, 28, 28], 16, 0.0);
            let mut v: Vec<(String, Vec<i64>)> = vs
                .variables()
                .into_iter()
                .map(|(n, t)| (n, t.size()))
                .collect();
            v.sort();
            v
        };
        let (plain, se) = (names(false), names(true));
        let added: Vec<_> = se.iter().filter(|v| !plain.contains(v)).collect();
        // Three blocks of 48, 96 and 192 channels, each reduce (c -> c/4) and expand (c/4 -> c).
        assert_eq!(added.len(), 3 * 4, "{added:?}");
        assert!(added.iter().all(|(n, _)| n.contains(".se.")), "{added:?}");
        assert!(se.contains(&("stage3.se.reduce.weight".to_string(), vec![48, 192])));
        assert_eq!(plain.len() + added.len(), se.len());
    }
}
