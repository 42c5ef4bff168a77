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
/// The confusion matrix as a heat-map.
pub const CONFUSION_PNG_FILE: &str = "confusion_matrix.png";
/// The test set's [`SimilarityBaseline`]: what in-distribution traffic looks like to a server.
pub const SIMILARITY_BASELINE_FILE: &str = "similarity_baseline.json";

/// How neighbours vote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vote {
    /// One vote per neighbour.
    Uniform,
    /// Each neighbour votes with its similarity (inner product + 1, so always positive).
    Weighted,
}

// Parsed (command lines, settings) by the names serde writes.
serde_plain::derive_fromstr_from_deserialize!(Vote);

/// How a class is scored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scoring {
    /// The k nearest gallery images vote.
    #[default]
    Knn,
    /// The nearest ArcFace class centre (softmax of cosines over `temperature`).
    #[serde(alias = "center")]
    Centre,
    /// `(1 - centre_weight) * kNN vote share + centre_weight * centre softmax`.
    Blend,
}

serde_plain::derive_fromstr_from_deserialize!(Scoring);

fn default_temperature() -> f32 {
    0.1
}

/// The classifier over an index: how many neighbours vote and how, and how much the class
/// centres count. The eval stage chooses it on validation and records it, so a server
/// classifies exactly as eval measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ClassifierSpec {
    /// Nearest gallery images that vote for each query (at least 1, at most the gallery size).
    pub k: usize,
    /// How the `k` neighbours' votes are weighted.
    pub vote: Vote,
    /// Whether the kNN vote, the class centres or a blend of both pick the class.
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
    /// The class's name.
    pub class: String,
    /// Share of the predictions of this class that were right, in `[0, 1]` (0 when it was
    /// never predicted).
    pub precision: f64,
    /// Share of this class's test samples predicted as it, in `[0, 1]` (0 without samples).
    pub recall: f64,
    /// Harmonic mean of precision and recall, in `[0, 1]` (0 when both are 0).
    pub f1: f64,
    /// Test samples of this class.
    pub support: usize,
}

/// Everything computed from one set of predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Share of samples predicted correctly, in `[0, 1]`.
    pub accuracy: f64,
    /// Unweighted mean of the per-class precisions over classes with test samples.
    pub macro_precision: f64,
    /// Unweighted mean of the per-class recalls over classes with test samples.
    pub macro_recall: f64,
    /// Unweighted mean of the per-class F1 scores over classes with test samples.
    pub macro_f1: f64,
    /// Metrics of every class, in label order (classes without samples included).
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
    /// Share of these images the candidate classified correctly, in `[0, 1]`.
    pub candidate_accuracy: f64,
    /// Share of these images the deployed model classified correctly, in `[0, 1]`.
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
    /// Whether the candidate passed every rule and may be deployed.
    pub deploy: bool,
    /// The candidate's test accuracy the rules were applied to, in `[0, 1]`.
    pub accuracy: f64,
    /// Accuracy of the currently deployed model, when one was given.
    pub current_accuracy: Option<f64>,
    /// The thresholds the decision was made with.
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
    /// Test-set metrics of the chosen classifier.
    pub metrics: Metrics,
    /// Test accuracy when only the single nearest gallery image decides, in `[0, 1]`.
    pub top1_accuracy: f64,
    /// Neighbours that vote (chosen on validation unless fixed).
    pub k: usize,
    /// How the neighbours' votes were weighted.
    pub vote: Vote,
    /// The validation accuracy of each candidate k, when k was chosen on validation.
    pub k_selection: Vec<(usize, f64)>,
    /// How classes are scored (with the class centres when the model exported them).
    #[serde(default)]
    pub scoring: Scoring,
    /// Weight of the centre score in the chosen blend (1 for `Centre`, 0 for `Knn`).
    #[serde(default)]
    pub centre_weight: f32,
    /// Softmax temperature of the centre cosines in the chosen classifier.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Validation accuracy of each (k, centre weight, temperature) tried with the centres.
    #[serde(default)]
    pub blend_selection: Vec<(usize, f32, f32, f64)>,
    /// Test images classified per second: the neighbour search (and centre cosines) over the
    /// whole test set, metrics excluded.
    pub queries_per_second: f64,
    /// Test classes with no gallery image: they can never be predicted.
    pub classes_missing_in_gallery: Vec<String>,
    /// The deploy gate's decision on this evaluation.
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

    /// The test set's similarity baseline; `None` for evaluations made before it was recorded.
    pub fn similarity_baseline(&self) -> Result<Option<SimilarityBaseline>> {
        match self.verified_if_listed(SIMILARITY_BASELINE_FILE)? {
            Some(_) => self.read_json(SIMILARITY_BASELINE_FILE).map(Some),
            None => Ok(None),
        }
    }

    /// Input entries for a stage that consumes the evaluation (metrics and decision).
    pub fn eval_input_entries(&self) -> Result<Vec<FileEntry>> {
        self.input_entries([METRICS_FILE, DECISION_FILE])
    }
}

/// How in-distribution queries look from the index: the distribution of each test image's
/// similarity to its nearest gallery image, and the share of test images predicted as each
/// class. A server compares its recent requests with it: an image unlike anything in the
/// gallery has a low nearest similarity, whatever class it is then given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimilarityBaseline {
    /// The nearest similarity at quantiles `0, 1/n, 2/n, ..., 1` of the test images (`n + 1`
    /// values, ascending). A table of quantiles rather than a histogram: a trained model puts
    /// most test images within 0.01 of similarity 1, where fixed bins would blur the tail.
    pub quantiles: Vec<f32>,
    /// Share of test images predicted as each class, in class order.
    pub class_shares: Vec<f64>,
    /// Test images counted.
    pub images: u64,
}

impl SimilarityBaseline {
    /// Steps of the quantile table (0.1 % each).
    const STEPS: usize = 1000;

    /// The baseline of `nearest` similarities (one per test image) and `predicted` classes.
    pub fn new(nearest: &[f32], predicted: &[usize], classes: usize) -> Self {
        let mut sorted: Vec<f32> = nearest.iter().copied().filter(|s| s.is_finite()).collect();
        sorted.sort_by(f32::total_cmp);
        let quantiles = if sorted.is_empty() {
            Vec::new()
        } else {
            let last = (sorted.len() - 1) as f64;
            (0..=Self::STEPS)
                .map(|i| {
                    let pos = last * i as f64 / Self::STEPS as f64;
                    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
                    let t = (pos - lo as f64) as f32;
                    sorted[lo] + (sorted[hi] - sorted[lo]) * t
                })
                .collect()
        };
        let mut class_counts = vec![0u64; classes];
        for &c in predicted {
            if let Some(n) = class_counts.get_mut(c) {
                *n += 1;
            }
        }
        let total = predicted.len().max(1) as f64;
        SimilarityBaseline {
            quantiles,
            class_shares: class_counts.iter().map(|&n| n as f64 / total).collect(),
            images: sorted.len() as u64,
        }
    }

    /// The similarity below which a share `q` of the test images lie (interpolated in the
    /// table); `None` for an empty baseline or `q` outside `(0, 1)`.
    pub fn quantile(&self, q: f64) -> Option<f32> {
        if self.quantiles.len() < 2 || !(q > 0.0 && q < 1.0) {
            return None;
        }
        let pos = q * (self.quantiles.len() - 1) as f64;
        let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
        let t = (pos - lo as f64) as f32;
        Some(self.quantiles[lo] + (self.quantiles[hi] - self.quantiles[lo]) * t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_exact_at_the_table_resolution() {
        let sims: Vec<f32> = (0..1001).map(|i| 0.99 + 0.00001 * i as f32).collect();
        let b = SimilarityBaseline::new(&sims, &vec![1; 1001], 3);
        assert_eq!(b.images, 1001);
        assert_eq!(b.class_shares, vec![0.0, 1.0, 0.0]);
        for (q, want) in [(0.05, 0.9905), (0.5, 0.995), (0.95, 0.9995)] {
            let got = b.quantile(q).unwrap();
            assert!((got - want).abs() < 2e-6, "q {q}: {got} against {want}");
        }
        assert!(b.quantile(0.0).is_none() && b.quantile(1.0).is_none());
        assert!(SimilarityBaseline::new(&[], &[], 2).quantile(0.5).is_none());
    }

    #[test]
    fn a_few_images_interpolate_and_non_finite_ones_are_left_out() {
        let b = SimilarityBaseline::new(&[0.2, f32::NAN, 0.8, 0.4], &[0, 0, 0, 0], 1);
        assert_eq!(b.images, 3);
        assert!((b.quantile(0.25).unwrap() - 0.3).abs() < 1e-6);
        assert!((b.quantile(0.75).unwrap() - 0.6).abs() < 1e-6);
    }
}
