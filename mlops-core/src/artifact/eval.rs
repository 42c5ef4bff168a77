//! The eval stage's output: metrics, the classifier settings it chose, and the deploy decision.

use serde::{Deserialize, Serialize};

use super::{StageDir, StageSummary};
use crate::{FileEntry, Result};

/// The flat metrics file (also what a later evaluation reads as the deployed model's).
pub const METRICS_FILE: &str = "metrics.json";
/// The gate's [`Decision`].
pub const DECISION_FILE: &str = "decision.json";
/// The human report.
pub const REPORT_FILE: &str = "report.html";

/// How neighbours vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// One vote per neighbour.
    Uniform,
    /// Each neighbour votes with its similarity (inner product + 1, so always positive).
    Weighted,
}

impl std::str::FromStr for Vote {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "uniform" => Ok(Vote::Uniform),
            "weighted" => Ok(Vote::Weighted),
            _ => Err(format!("unknown vote {s:?} (expected uniform or weighted)")),
        }
    }
}

/// How a class is scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// The k nearest gallery images vote.
    #[default]
    Knn,
    /// The nearest ArcFace class centre (softmax of cosines over `temperature`).
    Centre,
    /// `(1 - centre_weight) * kNN vote share + centre_weight * centre softmax`.
    Blend,
}

impl std::str::FromStr for Scoring {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "knn" => Ok(Scoring::Knn),
            "centre" | "center" => Ok(Scoring::Centre),
            "blend" => Ok(Scoring::Blend),
            _ => Err(format!(
                "unknown scoring {s:?} (expected knn, centre or blend)"
            )),
        }
    }
}

fn default_temperature() -> f32 {
    0.1
}

/// The classifier over an index: how many neighbours vote and how, and how much the class
/// centres count. The eval stage chooses it on validation and records it, so a server
/// classifies exactly as eval measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    pub k: usize,
    pub vote: Vote,
    #[serde(default)]
    pub scoring: Scoring,
    /// Weight of the centre score in a blend (1 for `Centre`, 0 for `Knn`).
    #[serde(default)]
    pub centre_weight: f32,
    /// Softmax temperature of the centre cosines.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
}

impl ClassifierSpec {
    /// A plain kNN vote.
    pub fn knn(k: usize, vote: Vote) -> Self {
        ClassifierSpec {
            k,
            vote,
            scoring: Scoring::Knn,
            centre_weight: 0.0,
            temperature: default_temperature(),
        }
    }
}

/// Precision, recall, F1 and support of one class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub class: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Test samples of this class.
    pub support: usize,
}

/// Everything computed from one set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub accuracy: f64,
    pub macro_precision: f64,
    pub macro_recall: f64,
    pub macro_f1: f64,
    pub per_class: Vec<ClassMetrics>,
    /// `confusion[target][predicted]` counts.
    pub confusion: Vec<Vec<usize>>,
}

/// Thresholds of the deploy gate.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatePolicy {
    /// Smallest acceptable test accuracy.
    pub min_accuracy: f64,
    /// Largest acceptable drop in accuracy against the currently deployed model, where the two
    /// were measured apart (no paired comparison was possible).
    pub max_regression: f64,
    /// Significance level of the paired test: a candidate is rejected when McNemar's exact test
    /// says, at this level, that it is wrong more often than the deployed model on the same
    /// test images.
    pub alpha: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        GatePolicy {
            min_accuracy: 0.8,
            max_regression: 0.005,
            alpha: 0.05,
        }
    }
}

/// The candidate and the deployed model classifying the same test images (each with its own
/// model, index and classifier), compared pair by pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedComparison {
    /// Test images both classified.
    pub images: usize,
    pub candidate_accuracy: f64,
    pub deployed_accuracy: f64,
    /// Images only the candidate got right.
    pub candidate_only: usize,
    /// Images only the deployed model got right.
    pub deployed_only: usize,
    /// Two-sided p-value of McNemar's exact test (binomial on the discordant pairs).
    pub p_value: f64,
}

/// Deploy or not, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub deploy: bool,
    pub accuracy: f64,
    /// Accuracy of the currently deployed model, when one was given.
    pub current_accuracy: Option<f64>,
    pub policy: GatePolicy,
    /// One line per rule, passed or failed.
    pub reasons: Vec<String>,
    /// The paired comparison with the deployed model, when one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paired: Option<PairedComparison>,
}

/// The eval stage's `summary` in its manifest: what an evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    pub metrics: Metrics,
    pub top1_accuracy: f64,
    /// Neighbours that vote (chosen on validation unless fixed).
    pub k: usize,
    pub vote: Vote,
    /// The validation accuracy of each candidate k, when k was chosen on validation.
    pub k_selection: Vec<(usize, f64)>,
    /// How classes are scored (with the class centres when the model exported them).
    #[serde(default)]
    pub scoring: Scoring,
    #[serde(default)]
    pub centre_weight: f32,
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Validation accuracy of each (k, centre weight, temperature) tried with the centres.
    #[serde(default)]
    pub blend_selection: Vec<(usize, f32, f32, f64)>,
    pub queries_per_second: f64,
    /// Test classes with no gallery image: they can never be predicted.
    pub classes_missing_in_gallery: Vec<String>,
    pub decision: Decision,
}

impl EvalSummary {
    /// The classifier this evaluation measured.
    pub fn classifier(&self) -> ClassifierSpec {
        ClassifierSpec {
            k: self.k,
            vote: self.vote,
            scoring: self.scoring,
            centre_weight: self.centre_weight,
            temperature: self.temperature,
        }
    }
}

impl StageSummary for EvalSummary {
    const STAGE: &'static str = "eval";
}

/// A finished eval-stage output.
pub type EvalDir = StageDir<EvalSummary>;

impl StageDir<EvalSummary> {
    /// The gate's decision (checksum verified).
    pub fn decision(&self) -> Result<Decision> {
        self.read_json(DECISION_FILE)
    }

    /// Input entries for a stage that consumes the evaluation (metrics and decision).
    pub fn eval_input_entries(&self) -> Result<Vec<FileEntry>> {
        self.input_entries([METRICS_FILE, DECISION_FILE])
    }
}
