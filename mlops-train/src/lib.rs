//! `mlops-train`: train an image-embedding network with ArcFace loss, on the CPU, one GPU or
//! every GPU (data parallel), with checkpoints, exact resume and TorchScript export.
//!
//! Reads the `train` and `val` roles of a `mlops-data` directory (verifying every shard against
//! the data manifest) and writes into the output directory:
//!
//! - `model.pt`: the embedding network traced to TorchScript in eval mode (`[n,1,H,W]` float32
//!   -> L2-normalised `[n,dim]`), loadable by `tch::CModule` and Python's `torch.jit.load`;
//! - `model.json`: its [`ModelDescription`] (architecture, input shape, normalisation,
//!   dimension, classes, libtorch version) so later stages never guess;
//! - `metrics.jsonl`: one [`EpochMetrics`] line per epoch, and `curves.png`, the same as charts
//!   (loss, validation accuracy, learning rate);
//! - `checkpoints/`: `last.safetensors` (weights and optimizer state) with `state.json`, and
//!   `best.safetensors` (the weights with the best validation accuracy, which are exported);
//! - `train_config.json` and `manifest.json`.
//!
//! ```
//! # use mlops_data::fixtures::{write_idx, IdxFixture};
//! # let tmp = tempfile::tempdir()?;
//! # let data = tmp.path().join("data");
//! # write_idx(&tmp.path().join("idx"), &IdxFixture::default())?;
//! # mlops_data::run(&mlops_data::DataConfig { sources: vec![tmp.path().join("idx")], out: data.clone(), ..Default::default() })?;
//! // `data`: a data-stage output directory.
//! let config = mlops_train::TrainConfig {
//!     data,
//!     out: tmp.path().join("train"),
//!     arch: mlops_train::Arch::Seed,
//!     epochs: Some(2),
//!     batch_size: 32,
//!     ..Default::default()
//! };
//! let outcome = mlops_train::run(&config)?;
//! println!("best val accuracy {:.4}", outcome.best_val_accuracy);
//! assert!(config.out.join("model.pt").exists());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod arcface;
mod checkpoint;
pub mod ema;
pub mod export;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod timing;
mod trainer;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use arcface::ArcFace;
pub use mlops_core::artifact::model::{
    ArcFaceConfig, EpochMetrics, ModelDescription, MODEL_DESCRIPTION_FILE, MODEL_FILE,
};
pub use mlops_core::artifact::Role;
pub use mlops_torch::DeviceSpec;
pub use model::{Arch, EmbeddingNet, NetOptions};
pub use optim::{OptimizerConfig, OptimizerKind, Schedule};
pub use trainer::{run, run_with, Outcome, TrainNet};

/// Name of this stage in manifests.
pub const STAGE: &str =
    <mlops_core::artifact::TrainSummary as mlops_core::artifact::StageSummary>::STAGE;

/// Errors of the train stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the data or writing the output failed (I/O, `.npy`, JSON, checksums).
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// libtorch failed inside a guarded call (a training step, validation, export), or a
    /// requested device is not available.
    #[error(transparent)]
    Torch(#[from] mlops_torch::Error),
    /// A libtorch call returned an error (tensor creation, tracing, saving or loading).
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// The training-curves PNG could not be drawn.
    #[error("drawing the training curves: {0}")]
    Plot(String),
    /// The configuration cannot work with this data, or training diverged (a non-finite loss).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The thread pool for the data-parallel replicas could not be built.
    #[error("cannot start the replica threads: {0}")]
    Threads(String),
    /// A checkpoint is missing, unreadable, made with other settings, or does not fit the
    /// model (a missing tensor, another shape).
    #[error("{}: corrupt or incompatible checkpoint: {message}", path.display())]
    Checkpoint {
        /// The checkpoint file (`state.json` or a `.safetensors` file).
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The reloaded `model.pt` does not reproduce the trained network's embeddings.
    #[error("{}: exported model does not reproduce the trained one: max abs diff {diff:e} > {tolerance:e}", path.display())]
    Export {
        /// The exported model file.
        path: PathBuf,
        /// Largest absolute difference between an embedding value of the live network and
        /// of the reloaded model (infinite when the shapes differ, NaN possible).
        diff: f64,
        /// The largest difference allowed ([`export::TOLERANCE`]).
        tolerance: f64,
    },
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Data augmentation applied to training batches. The default, a shift of up to 1 pixel and a
/// horizontal flip, is what the `wide` network's 40 epochs need: without them the same budget
/// overfits. (For the small `res` network within 12 epochs it only slowed convergence.)
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Random translation of up to this many pixels in each direction (0 disables).
    pub max_shift: usize,
    /// Images smaller than this on either side are not shifted: one pixel of an 8x8 image is an
    /// eighth of it (on 8x8 Fashion-MNIST folders the 1-pixel shift cost 12 points of test
    /// accuracy, 0.81 -> 0.69, while the flip alone cost nothing).
    pub shift_min_side: usize,
    /// Random horizontal flip (sensible for clothing, not for digits). Checked on small data
    /// sets: see `flip_check_budget`.
    pub hflip: bool,
    /// A run that trains on at most this many images in all (training images times epochs)
    /// first checks that mirroring keeps labels: two probes of the whole schedule, with and
    /// without the flip, and the flip (with flip averaging at export) stays only if its probe
    /// scores better on validation. On digits or arrows the mirror image is another class,
    /// and the flip cost 1-25 points of test accuracy (docs/stages.md). The winning probe is
    /// the run (its checkpoints are exported), so the check costs one more training. The
    /// default, 300,000, covers data sets of a few thousand images at 40 epochs and leaves
    /// Fashion-MNIST's 1.7 M alone; 0 turns the check off.
    pub flip_check_budget: usize,
    /// Random erasing: the probability that a training image gets one rectangle of random
    /// values (after the shift and flip), a share of the image drawn from `erase_area` with
    /// an aspect ratio between 0.3 and 3.3 (Zhong et al., 2017). 0 disables it.
    pub erase: f64,
    /// Smallest and largest share of the image one erased rectangle covers.
    pub erase_area: [f64; 2],
    /// CutMix (Yun et al., 2019) under the ArcFace loss: the probability that a training
    /// image gets a rectangle pasted from another training image (drawn from the whole
    /// training set and augmented as its own image is), the rectangle's share of the image
    /// drawn uniformly (the paper's Beta(1, 1)) at a uniform centre and clipped to the image.
    /// Such an image's loss weighs ArcFace on its own label and on the other image's by the
    /// share of pixels each keeps. 0 (the default) disables it; it does not combine with a
    /// teacher, whose targets are embeddings of the unmixed images.
    #[serde(skip_serializing_if = "is_zero")]
    pub cutmix: f64,
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

impl Default for AugmentConfig {
    fn default() -> Self {
        AugmentConfig {
            max_shift: 1,
            shift_min_side: 16,
            hflip: true,
            flip_check_budget: 300_000,
            erase: 0.0,
            erase_area: [0.02, 0.4],
            cutmix: 0.0,
        }
    }
}

/// Epochs of a run that sets none, unless `min_steps` asks for more.
pub const DEFAULT_EPOCHS: usize = 40;

/// The default of [`TrainConfig::min_steps`]: off. A floor of 1,000 steps (250 epochs of 550
/// images) trained the small folders of docs/stages.md 4-6x the epochs for no measurable
/// gain (glyphs8 and shapes32 unchanged, fashion16 0.8133 -> 0.8200 on 150 test images).
pub const MIN_STEPS: usize = 0;

/// Configuration of the train stage. The defaults train the `wide` architecture on
/// Fashion-MNIST for 40 epochs (shift and flip augmentation, SGD, a moving average of the
/// weights, flip test-time augmentation in the exported model): about 8 minutes on two CPU
/// cores with bf16, 0.94 test accuracy through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Output directory of `mlops-data`.
    pub data: PathBuf,
    /// Output directory of `mlops-validate` for that data: when given, training refuses data
    /// that has not passed validation.
    pub validated: Option<PathBuf>,
    /// The roles of the data the network trains on: `train`, and optionally `gallery` too
    /// (its labelled images are then seen in training as well as indexed). `val` selects the
    /// model and `test` judges it, so neither may train.
    pub train_roles: Vec<Role>,
    /// Output directory.
    pub out: PathBuf,
    /// The embedding network's architecture.
    pub arch: Arch,
    /// Channels of the stem of `wide` and `slim`, doubled by each of their three stages
    /// (multiply-adds grow about as its square). Absent: the architecture's own, 24 and 12.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub width: Option<usize>,
    /// Squeeze-and-excitation in each residual block of `wide` and `slim` (off by default).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub squeeze_excite: bool,
    /// The embedding layer of `wide` and `slim` reads the last stage's whole feature map
    /// (flattened: where a feature lies, not only how strongly) instead of its global average
    /// and maximum (off by default).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub spatial_head: bool,
    /// Length of the L2-normalised embedding the model returns.
    pub embedding_dim: usize,
    /// Dropout before the embedding layer (`res` only). Off by default: with weight decay 0.2
    /// doing the regularising, 0.1 cost accuracy in the recipe sweep.
    pub dropout: f64,
    /// The ArcFace head's scale and margin.
    pub arcface: ArcFaceConfig,
    /// Label smoothing of the ArcFace cross-entropy (0 disables).
    pub label_smoothing: f64,
    /// Export a model that averages the embeddings of each image and its mirror image (flip
    /// test-time augmentation): about twice the inference cost, the same in every consumer
    /// (embed, the server, TorchServe, Python), since it is part of `model.pt`.
    pub test_time_flip: bool,
    /// Decay per optimizer step of the exponential moving average of the weights that
    /// validation scores and export uses (0 disables: the live weights are used).
    pub ema: f64,
    /// The update rule and its hyper-parameters.
    pub optimizer: OptimizerConfig,
    /// How the learning rate changes over the steps.
    pub schedule: Schedule,
    /// Fraction of all steps spent warming up.
    pub warmup_fraction: f64,
    /// Passes over the training set. Absent (the default): [`DEFAULT_EPOCHS`], or more when
    /// that many epochs of the data would take fewer than `min_steps` optimizer steps. The
    /// saved config records the number trained.
    pub epochs: Option<usize>,
    /// When `epochs` is absent, train for at least this many optimizer steps: the schedule of
    /// a small data set set in steps, not epochs (40 epochs of 550 images are 160 steps;
    /// Fashion-MNIST's are 13,120). 0 (the default, [`MIN_STEPS`]): always [`DEFAULT_EPOCHS`].
    pub min_steps: usize,
    /// Images per optimizer step, split across the replicas; an epoch's last partial batch
    /// is dropped.
    pub batch_size: usize,
    /// Seed of the weight initialisation, the shuffling, augmentation and dropout.
    pub seed: u64,
    /// libtorch intra-op threads; 0 means one per core.
    pub threads: usize,
    /// Augmentation of the training batches.
    pub augment: AugmentConfig,
    /// `auto`, `cpu`, `cuda` (every GPU) or `cuda:N`; each device it resolves to gets
    /// `replicas_per_device` data-parallel replicas.
    pub device: DeviceSpec,
    /// Data-parallel replicas on each device of `device` (1: one each). More than one puts
    /// several replicas on one GPU (or on the CPU): the multi-device code path on a machine
    /// with a single device, as `cargo xtask gpu-kit` runs it.
    pub replicas_per_device: usize,
    /// `auto` (bf16 where the hardware has it natively), `fp32` or `bf16`: bf16 convolutions
    /// and matmuls with fp32 master weights, optimizer state and loss.
    pub precision: mlops_torch::Precision,
    /// k of the leave-one-out kNN vote that scores validation embeddings each epoch.
    pub val_k: usize,
    /// Expected input `[channels, height, width]`; checked against the data when set.
    pub input_shape: Option<[usize; 3]>,
    /// Continue from `out/checkpoints` instead of starting over.
    pub resume: bool,
    /// Stop (without exporting) after this many epochs in total: simulates an interruption.
    pub stop_after_epochs: Option<usize>,
    /// Distil from a trained model: the student also learns to reproduce the teacher's
    /// normalised embeddings. Absent (the default): plain ArcFace training. The binary (and
    /// so the pipeline) merges the settings onto [`TrainConfig::student`] when one is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherConfig>,
    /// Progressive resizing: the first epochs train on smaller images, which cost less per
    /// step (multiply-adds scale with the pixels), so a budget buys more epochs. Absent (the
    /// default): every epoch at the data's size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub low_res: Option<LowResConfig>,
}

/// Progressive resizing (`low_res`): the first `epochs` epochs see each augmented training
/// batch reduced by area averaging until its shorter side is `side` pixels; the later
/// epochs, validation and the exported model see the data's own size. A 20-pixel step of
/// `wide` took 0.55-0.61x the time of a 28-pixel one on two CPU cores (docs/stages.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LowResConfig {
    /// The shorter side of the reduced images; must be smaller than the data's.
    pub side: usize,
    /// How many of the first epochs train on reduced images; fewer than all, so the last
    /// epochs (and the batch-norm statistics) see the size the model serves.
    pub epochs: usize,
}

impl LowResConfig {
    /// The `[height, width]` a batch of `[height, width]` images trains at in 0-based `epoch`:
    /// `None` at the data's own size (after the low-resolution epochs, or when `side` is not
    /// smaller than the images).
    pub fn shape_at(&self, epoch: usize, [h, w]: [usize; 2]) -> Option<[usize; 2]> {
        let short = h.min(w);
        if epoch >= self.epochs || self.side >= short {
            return None;
        }
        let scale = |x: usize| ((x * self.side) as f64 / short as f64).round() as usize;
        Some([scale(h), scale(w)])
    }
}

/// Knowledge distillation from a trained model (`--teacher DIR`).
///
/// The teacher (`model.pt` of a train-stage directory or a registry version, flip averaging
/// included when it has it) embeds every training image once, before the first epoch; each
/// step then adds `weight * mean(1 - cos(student, teacher))` over the batch to the ArcFace
/// loss, the student seeing the augmented image and the teacher's embedding of the clean one.
/// The student's embedding dimension must equal the teacher's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// The teacher's directory: a train-stage output or a registry version.
    pub model: PathBuf,
    /// Weight of the embedding-matching term against the ArcFace loss.
    pub weight: f64,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        TeacherConfig {
            model: PathBuf::new(),
            weight: 10.0,
        }
    }
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            data: PathBuf::from("data"),
            validated: None,
            train_roles: vec![Role::Train],
            out: PathBuf::from("train"),
            arch: Arch::Wide,
            width: None,
            squeeze_excite: false,
            spatial_head: false,
            embedding_dim: 128,
            dropout: 0.0,
            arcface: ArcFaceConfig::default(),
            label_smoothing: 0.0,
            test_time_flip: true,
            ema: 0.999,
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::OneCycle,
            warmup_fraction: 0.2,
            epochs: None,
            min_steps: MIN_STEPS,
            batch_size: 128,
            seed: 42,
            threads: 0,
            augment: AugmentConfig::default(),
            device: DeviceSpec::Auto,
            replicas_per_device: 1,
            precision: mlops_torch::Precision::Auto,
            val_k: 5,
            input_shape: None,
            resume: false,
            stop_after_epochs: None,
            teacher: None,
            low_res: None,
        }
    }
}

impl TrainConfig {
    /// The architecture's name as `model.json` records it: `wide`, `slim-w15`, `wide-se` (with
    /// squeeze-and-excitation).
    pub fn arch_name(&self) -> String {
        let mut name = self.arch.name_with_width(self.width);
        if self.squeeze_excite {
            name.push_str("-se");
        }
        if self.spatial_head {
            name.push_str("-flat");
        }
        name
    }

    /// The defaults of a distilled student (`mlops-train --teacher DIR` with nothing else, the
    /// pipeline's `serve` profile): the `slim` network without flip averaging (an eighth of
    /// the default's multiply-adds) for 120 epochs, which its cheaper epochs pay for (about
    /// 1.2x the default's training time in fp32, 1.6x in bf16, which speeds `wide` up more;
    /// at 80 epochs it scored 0.2 points less and at 40 0.6, docs/stages.md). Set `teacher`
    /// before training.
    pub fn student() -> Self {
        TrainConfig {
            arch: Arch::Slim,
            test_time_flip: false,
            epochs: Some(120),
            ..TrainConfig::default()
        }
    }

    /// The epochs a run on `train_rows` training images trains: `epochs` when set, else
    /// [`DEFAULT_EPOCHS`] or as many as `min_steps` steps of `batch_size` images need.
    pub fn epochs_for(&self, train_rows: usize) -> usize {
        self.epochs.unwrap_or_else(|| {
            let steps_per_epoch = (train_rows / self.batch_size.max(1)).max(1);
            DEFAULT_EPOCHS.max(self.min_steps.div_ceil(steps_per_epoch))
        })
    }

    /// The epochs of a config whose `epochs` [`run_with`] has resolved.
    pub(crate) fn epochs(&self) -> usize {
        self.epochs.unwrap_or(DEFAULT_EPOCHS)
    }

    fn check(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.to_string()));
        if self.epochs == Some(0)
            || self.batch_size < 2
            || self.embedding_dim == 0
            || self.val_k == 0
            || self.replicas_per_device == 0
        {
            return bad(
                "epochs, embedding_dim, val_k and replicas_per_device must be at least 1, batch_size at least 2",
            );
        }
        if ![
            self.dropout,
            self.warmup_fraction,
            self.label_smoothing,
            self.ema,
        ]
        .iter()
        .all(|v| (0.0..1.0).contains(v))
        {
            return bad("dropout, warmup_fraction, label_smoothing and ema must lie in [0, 1)");
        }
        let lr = self.optimizer.lr();
        if lr.is_nan()
            || lr <= 0.0
            || self.arcface.scale <= 0.0
            || self.arcface.sub_centres == 0
            || !(0.0..std::f64::consts::FRAC_PI_2).contains(&self.arcface.margin)
        {
            return bad("lr, the ArcFace scale and its sub-centres must be positive, the margin in [0, pi/2)");
        }
        if self.train_roles.is_empty()
            || self
                .train_roles
                .iter()
                .any(|r| matches!(r, Role::Val | Role::Test))
        {
            return bad("train_roles must name train and/or gallery");
        }
        let [lo, hi] = self.augment.erase_area;
        let erase_ok = (0.0..=1.0).contains(&self.augment.erase);
        if !(erase_ok && lo > 0.0 && lo <= hi && hi <= 1.0) {
            return bad(
                "augment.erase must lie in [0, 1] and augment.erase_area be 0 < lo <= hi <= 1",
            );
        }
        if !(0.0..=1.0).contains(&self.augment.cutmix) {
            return bad("augment.cutmix must lie in [0, 1]");
        }
        if self.augment.cutmix > 0.0 && self.teacher.is_some() {
            return bad("augment.cutmix does not combine with a teacher (its targets are embeddings of unmixed images)");
        }
        for (on, option) in [
            (self.squeeze_excite, "squeeze_excite"),
            (self.spatial_head, "spatial_head"),
        ] {
            if on && self.arch.default_width().is_none() {
                return bad(&format!("{option} applies to wide and slim only"));
            }
        }
        if let Some(w) = self.width {
            if self.arch.default_width().is_none() || !(4..=256).contains(&w) {
                return bad("width applies to wide and slim only and must lie in 4..=256");
            }
        }
        if let Some(l) = &self.low_res {
            if l.side < 4 || l.epochs == 0 || self.epochs.is_some_and(|e| l.epochs >= e) {
                return bad(
                    "low_res.side must be at least 4 and low_res.epochs between 1 and epochs - 1",
                );
            }
        }
        if let Some(t) = &self.teacher {
            if t.model.as_os_str().is_empty() || !(t.weight >= 0.0 && t.weight.is_finite()) {
                return bad("teacher.model must name a directory and teacher.weight be >= 0");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_data_trains_the_steps_large_data_the_epochs() {
        let c = TrainConfig {
            min_steps: 1_000,
            ..TrainConfig::default()
        };
        // Fashion-MNIST's 42,000 training images: 328 steps an epoch, 40 epochs.
        assert_eq!(c.epochs_for(42_000), DEFAULT_EPOCHS);
        // 550 images: 4 steps an epoch, so 250 epochs make the 1,000 steps.
        assert_eq!(c.epochs_for(550), 250);
        // Fewer images than a batch still count one step an epoch.
        assert_eq!(c.epochs_for(10), 1_000);
        let told = TrainConfig {
            epochs: Some(3),
            ..c.clone()
        };
        assert_eq!(told.epochs_for(550), 3, "epochs the user sets win");
        assert_eq!(TrainConfig::default().epochs_for(550), DEFAULT_EPOCHS);
    }

    #[test]
    fn low_resolution_epochs_scale_the_shorter_side_then_stop() {
        let l = LowResConfig {
            side: 20,
            epochs: 2,
        };
        assert_eq!(l.shape_at(0, [28, 28]), Some([20, 20]));
        assert_eq!(l.shape_at(1, [28, 56]), Some([20, 40]));
        assert_eq!(l.shape_at(1, [42, 28]), Some([30, 20]));
        assert_eq!(
            l.shape_at(2, [28, 28]),
            None,
            "the last epochs see the data's size"
        );
        assert_eq!(l.shape_at(0, [16, 16]), None, "never enlarged");
    }

    #[test]
    fn validation_and_test_images_never_train_and_erasing_stays_in_range() {
        let with = |f: &dyn Fn(&mut TrainConfig)| {
            let mut c = TrainConfig::default();
            f(&mut c);
            c.check().map_err(|e| e.to_string())
        };
        assert!(with(&|_| {}).is_ok());
        assert!(with(&|c| c.train_roles = vec![Role::Train, Role::Gallery]).is_ok());
        for bad in [vec![], vec![Role::Train, Role::Val], vec![Role::Test]] {
            let err = with(&|c| c.train_roles = bad.clone()).unwrap_err();
            assert!(err.contains("train_roles"), "{err}");
        }
        assert!(with(&|c| c.augment.erase = 0.5).is_ok());
        assert!(with(&|c| c.width = Some(15)).is_ok());
        assert!(with(&|c| c.squeeze_excite = true).is_ok());
        let err = with(&|c| {
            c.arch = Arch::Res;
            c.squeeze_excite = true;
        })
        .unwrap_err();
        assert!(err.contains("squeeze_excite"), "{err}");
        assert!(with(&|c| c.spatial_head = true).is_ok());
        let err = with(&|c| {
            c.arch = Arch::Seed;
            c.spatial_head = true;
        })
        .unwrap_err();
        assert!(err.contains("spatial_head"), "{err}");
        let low = |side, epochs| Some(LowResConfig { side, epochs });
        assert!(with(&|c| c.low_res = low(20, 10)).is_ok());
        for (side, epochs, total) in [(3, 10, None), (20, 0, None), (20, 40, Some(40))] {
            let err = with(&|c| {
                c.low_res = low(side, epochs);
                c.epochs = total;
            })
            .unwrap_err();
            assert!(err.contains("low_res"), "{err}");
        }
        let err = with(&|c| c.arcface.sub_centres = 0).unwrap_err();
        assert!(err.contains("sub-centres"), "{err}");
        // Off, neither option appears in the saved config (older files and fingerprints stay
        // as they were); on, both do.
        let plain = serde_json::to_string(&TrainConfig::default()).unwrap();
        assert!(!plain.contains("squeeze_excite") && !plain.contains("sub_centres"));
        assert!(!plain.contains("low_res") && !plain.contains("spatial_head"));
        let on = TrainConfig {
            squeeze_excite: true,
            spatial_head: true,
            arcface: ArcFaceConfig {
                sub_centres: 3,
                ..Default::default()
            },
            ..Default::default()
        };
        let on = serde_json::to_string(&on).unwrap();
        assert!(on.contains("\"squeeze_excite\":true") && on.contains("\"sub_centres\":3"));
        assert!(on.contains("\"spatial_head\":true"));
        // As the command line sets it.
        let sets = [
            "low_res.side=20".to_string(),
            "low_res.epochs=12".to_string(),
        ];
        let parsed: TrainConfig = mlops_core::config::merge(None, &sets, &()).unwrap();
        assert_eq!(parsed.low_res, low(20, 12));
        for (arch, width) in [(Arch::Res, 15), (Arch::Slim, 2), (Arch::Wide, 1000)] {
            let err = with(&|c| {
                c.arch = arch;
                c.width = Some(width);
            })
            .unwrap_err();
            assert!(err.contains("width"), "{err}");
        }
        for (p, area) in [(1.5, [0.02, 0.4]), (0.5, [0.0, 0.4]), (0.5, [0.5, 0.2])] {
            let err = with(&|c| {
                c.augment.erase = p;
                c.augment.erase_area = area;
            })
            .unwrap_err();
            assert!(err.contains("augment.erase"), "{err}");
        }
        assert!(with(&|c| c.augment.cutmix = 0.5).is_ok());
        let err = with(&|c| c.augment.cutmix = 1.5).unwrap_err();
        assert!(err.contains("augment.cutmix must lie in [0, 1]"), "{err}");
        let err = with(&|c| {
            c.augment.cutmix = 0.5;
            c.teacher = Some(TeacherConfig {
                model: "teacher".into(),
                ..Default::default()
            });
        })
        .unwrap_err();
        assert!(
            err.contains("cutmix does not combine with a teacher"),
            "{err}"
        );
        assert!(!serde_json::to_string(&TrainConfig::default())
            .unwrap()
            .contains("cutmix"));
        let sets = ["augment.cutmix=0.5".to_string()];
        let parsed: TrainConfig = mlops_core::config::merge(None, &sets, &()).unwrap();
        assert_eq!(parsed.augment.cutmix, 0.5);
        assert!(serde_json::to_string(&parsed)
            .unwrap()
            .contains("\"cutmix\":0.5"));
    }
}
