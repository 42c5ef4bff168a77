//! The train stage's output: the exported TorchScript model and its description.

use serde::{Deserialize, Serialize};

use super::data::Normalization;
use super::{StageDir, StageSummary};
use crate::{FileEntry, Result};

/// The TorchScript model: `[n,c,h,w]` float32 -> L2-normalised `[n,dim]` float32.
pub const MODEL_FILE: &str = "model.pt";
/// The [`ModelDescription`] beside the model.
pub const MODEL_DESCRIPTION_FILE: &str = "model.json";
/// The ArcFace class centres, L2-normalised, float32 `[classes, dim]` (row `c` is class `c`'s
/// direction on the unit sphere). Embed and index stages carry it along for the classifier.
pub const CENTRES_FILE: &str = "centres.npy";
/// The train stage's training curves (loss, validation accuracy, learning rate per epoch), a
/// PNG that the embed stage carries on to eval's report.
pub const CURVES_FILE: &str = "curves.png";

/// ArcFace hyper-parameters (the training head; recorded so a model says how it was trained).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArcFaceConfig {
    /// Scale `s` applied to the cosines.
    pub scale: f64,
    /// Additive angular margin `m`, in radians.
    pub margin: f64,
    /// Apply the margin only where `cos(theta) > 0` instead of the `th`/`mm` fallback.
    pub easy_margin: bool,
    /// Centres per class (sub-centre ArcFace, Deng et al., 2020): an embedding's cosine to a
    /// class is its cosine to the nearest of the class's centres, so a class may keep several
    /// modes. The exported `centres.npy` holds each class's dominant centre (the one most of
    /// the class's validation images are nearest to). 1 is plain ArcFace, and is left out
    /// of the JSON, so files of plain ArcFace runs read the same as before the option.
    #[serde(skip_serializing_if = "is_one")]
    pub sub_centres: usize,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

impl Default for ArcFaceConfig {
    fn default() -> Self {
        ArcFaceConfig {
            scale: 32.0,
            margin: 0.5,
            easy_margin: false,
            sub_centres: 1,
        }
    }
}

/// What a consumer needs to use `model.pt`, saved beside it as `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelDescription {
    /// Architecture name (`res`, `seed`).
    pub arch: String,
    /// `[channels, height, width]` of one input image.
    pub input_shape: [usize; 3],
    /// Length of the L2-normalised embedding the model returns per image.
    pub embedding_dim: usize,
    /// Normalisation the data stage applied (inputs must be preprocessed the same way).
    pub normalization: Option<Normalization>,
    /// Range of preprocessed pixel values.
    pub value_range: [f32; 2],
    /// Class names the model was trained on, indexed by label.
    pub classes: Vec<String>,
    /// The ArcFace head the model was trained with (not part of `model.pt`).
    pub arcface: ArcFaceConfig,
    /// `model.pt` embeds each image together with its mirror image and returns the normalised
    /// mean (flip test-time augmentation, baked into the model so every consumer gets it).
    #[serde(default)]
    pub test_time_flip: bool,
    /// Epochs the run completed, resumed epochs included.
    pub epochs_trained: usize,
    /// The epoch (1-based) whose weights were exported: the best validation kNN accuracy.
    pub best_epoch: usize,
    /// Validation kNN accuracy of `best_epoch`, in `[0, 1]`.
    pub best_val_accuracy: f64,
    /// Version of the libtorch the model was traced with (read from the linked library's
    /// headers at build time).
    pub torch_version: String,
    /// sha256 of the data manifest the model was trained from.
    pub data_manifest_sha256: String,
    /// The model this one was distilled from, when it was (`mlops-train --teacher`): lineage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teacher: Option<TeacherLineage>,
}

/// Which trained model taught a distilled one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherLineage {
    /// The teacher's train-stage (or registry version) directory, as given.
    pub dir: String,
    /// sha256 of the teacher's `model.pt`.
    pub model_sha256: String,
    /// The teacher's architecture.
    pub arch: String,
    /// Whether the teacher's embeddings (the student's targets) averaged each image with its
    /// mirror image.
    pub test_time_flip: bool,
}

/// One line of the train stage's `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// The epoch, counted from 1.
    pub epoch: usize,
    /// Mean ArcFace loss over the epoch's training steps.
    pub train_loss: f64,
    /// Leave-one-out kNN accuracy among the validation embeddings.
    pub val_knn_accuracy: f64,
    /// Accuracy of the nearest ArcFace class centre.
    pub val_centre_accuracy: f64,
    /// Learning rate of the epoch's last step (the schedule changes it every step).
    pub lr: f64,
    /// Training images per second over the epoch's steps, validation excluded.
    pub images_per_second: f64,
    /// Wall-clock seconds of the whole epoch, validation included.
    pub seconds: f64,
}

/// The train stage's `summary` in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainSummary {
    /// Architecture name (`res`, `seed`).
    pub arch: String,
    /// Epochs the run completed, resumed epochs included.
    pub epochs: usize,
    /// The epoch (1-based) whose weights were exported: the best validation kNN accuracy.
    pub best_epoch: usize,
    /// Validation kNN accuracy of `best_epoch`, in `[0, 1]`.
    pub best_val_accuracy: f64,
    /// Devices the replicas ran on (`Cpu`, `Cuda(0)`, ...).
    pub devices: Vec<String>,
    /// libtorch intra-op threads the run used.
    pub threads: usize,
    /// The last epoch's metrics.
    #[serde(rename = "final")]
    pub last: Option<EpochMetrics>,
    /// The precision training computed in (`fp32`, `bf16`).
    #[serde(default)]
    pub precision: String,
    /// The CPU it ran on, with its bf16 flags.
    #[serde(default)]
    pub cpu: String,
}

impl StageSummary for TrainSummary {
    const STAGE: &'static str = "train";
}

/// A finished train-stage output.
pub type ModelDir = StageDir<TrainSummary>;

impl StageDir<TrainSummary> {
    /// The model's description (checksum verified).
    pub fn description(&self) -> Result<ModelDescription> {
        self.read_json(MODEL_DESCRIPTION_FILE)
    }

    /// The path of `model.pt` after verifying its checksum.
    pub fn model_path(&self) -> Result<std::path::PathBuf> {
        self.verified(MODEL_FILE)
    }

    /// Input entries for a stage that loads the model: the manifest, `model.pt`, `model.json`.
    pub fn model_input_entries(&self) -> Result<Vec<FileEntry>> {
        self.input_entries([MODEL_FILE, MODEL_DESCRIPTION_FILE])
    }
}
