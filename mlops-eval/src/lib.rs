//! `mlops-eval`: classify the test embeddings by searching the FAISS index, compute metrics,
//! write Kubeflow's metrics files and decide whether to deploy.
//!
//! Each test embedding is searched in the index of `mlops-index`; its class is the
//! k-nearest-neighbour vote of the gallery labels (similarity-weighted by default; `k` chosen
//! on the validation embeddings when the embed stage wrote them, else 10); top-1 accuracy is
//! reported too. Outputs: `mlpipeline-metrics.json` (Kubeflow v1), `mlpipeline-ui-metadata.json`
//! (confusion matrix and per-class table), `metrics.json` (Kubeflow v2 style, with
//! `confusionMatrix`), `confusion_matrix.csv`, `confusion_matrix.png` (heat-map),
//! `report.html` (self-contained: summary, decision, per-class table, heat-map, misclassified
//! test images), `decision.json` (the [`gate`]'s decision) and the manifest.
//!
//! ```
//! # let tmp = tempfile::tempdir()?;
//! # let (embed, index) = (tmp.path().join("embed"), tmp.path().join("index"));
//! # mlops_core::testing::write_clusters(&embed, 16, 30, 4, &["val", "gallery", "test"], 0.3, 1)?;
//! # mlops_index::run(&mlops_index::IndexConfig { embeddings: embed.clone(), out: index.clone(), ..Default::default() })?;
//! // `index` and `embed`: the index and embed stages' output directories.
//! let config = mlops_eval::EvalConfig {
//!     index,
//!     embeddings: embed,
//!     out: tmp.path().join("eval"),
//!     ..Default::default()
//! };
//! let outcome = mlops_eval::run(&config)?;
//! println!("accuracy {:.4}, deploy: {}", outcome.metrics.accuracy, outcome.decision.deploy);
//! # assert!(outcome.metrics.accuracy > 0.9);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod gate;
pub mod kubeflow;
pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

pub use mlops_core::artifact::eval::{
    CONFUSION_PNG_FILE, DECISION_FILE, METRICS_FILE, REPORT_FILE, SIMILARITY_BASELINE_FILE,
};
use mlops_core::artifact::model::CURVES_FILE;
use mlops_core::artifact::{ClassifierSpec, EmbeddingsDir, SimilarityBaseline, CONFIG_FILE};
use mlops_core::{FileEntry, Manifest, OutputDir};
use mlops_index::{Classifier, Neighbours};
use ndarray::Array2;
use serde::{Deserialize, Serialize};

pub use gate::{decide, Baseline};
pub use mlops_core::artifact::{Decision, EvalSummary, GatePolicy, Metrics, Scoring, Vote};

/// Name of this stage in manifests.
pub const STAGE: &str = <EvalSummary as mlops_core::artifact::StageSummary>::STAGE;

/// Errors of the eval stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the embeddings, the deployed model or an earlier evaluation, or writing the
    /// output, failed (I/O, `.npy`, JSON, checksums, mismatched dimensions or classes).
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// Loading or searching the index failed.
    #[error(transparent)]
    Index(#[from] mlops_index::Error),
    /// A k of 0, no k candidates, or a centre scoring asked of an index without centres.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The confusion-matrix heat-map could not be drawn.
    #[error("report: {0}")]
    Report(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configuration of the eval stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Output directory of `mlops-index`.
    pub index: PathBuf,
    /// Output directory of `mlops-embed` (its `test` role, and `val` if present).
    pub embeddings: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// The deployed model, to guard against regressions: a registry version, a registry model
    /// directory (its default version; none promoted yet means no comparison), or an earlier
    /// evaluation directory.
    pub current: Option<PathBuf>,
    /// Neighbours that vote; `None` picks the best of `k_candidates` on validation embeddings.
    pub k: Option<usize>,
    /// The k values tried on validation when `k` is `None` (each capped at the index size).
    pub k_candidates: Vec<usize>,
    /// How the neighbours' votes are weighted.
    pub vote: Vote,
    /// `knn`, `centre` or `blend`; `None` picks the best on validation among the kNN vote and,
    /// when the model exported its class centres, blends with them.
    pub scoring: Option<Scoring>,
    /// Centre weights tried for a blend (1.0 is the centres alone).
    pub centre_weights: Vec<f32>,
    /// Softmax temperatures tried for the centre cosines.
    pub temperatures: Vec<f32>,
    /// Thresholds of the deploy gate.
    pub gate: GatePolicy,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            index: PathBuf::from("index"),
            embeddings: PathBuf::from("embed"),
            out: PathBuf::from("eval"),
            current: None,
            k: None,
            k_candidates: vec![1, 3, 5, 10, 20, 30, 50],
            vote: Vote::Weighted,
            scoring: None,
            centre_weights: vec![0.25, 0.5, 0.75, 1.0],
            temperatures: vec![0.05, 0.1, 0.2],
            gate: GatePolicy::default(),
        }
    }
}

impl EvalConfig {
    fn check(&self) -> Result<()> {
        if self.k == Some(0) || self.k_candidates.is_empty() || self.k_candidates.contains(&0) {
            return Err(Error::Config(
                "k and every k candidate must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Runs the eval stage (see the crate docs): prepare the inputs, compute the metrics and the
/// decision, write the outputs. A rejection is a result, not an error.
pub fn run(config: &EvalConfig) -> Result<EvalSummary> {
    config.check()?;
    let manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let mut inputs = prepare(config)?;
    let outcome = compute(config, &mut inputs)?;
    write_outputs(config, &inputs, &outcome, manifest)?;
    Ok(outcome)
}

/// The opened index and embeddings, checked against each other.
struct Inputs {
    classifier: Classifier,
    emb: EmbeddingsDir,
    test: Array2<f32>,
    /// Test labels as class ids.
    truth: Vec<usize>,
    /// Validation embeddings and class ids, when they choose k.
    val: Option<(Array2<f32>, Vec<usize>)>,
    /// Predicted class of each test embedding (set by [`compute`]).
    pred: Vec<usize>,
    /// Similarity of each test embedding to its nearest gallery image (set by [`compute`]).
    nearest: Vec<f32>,
    /// What `current` resolved to: the deployed registry version (or evaluation directory).
    current: Option<PathBuf>,
}

fn prepare(config: &EvalConfig) -> Result<Inputs> {
    let index = mlops_index::load(&config.index)?;
    let emb = EmbeddingsDir::open(&config.embeddings)?;
    let summary = index.summary();
    if emb.summary.dim != summary.dim {
        return Err(emb
            .invalid(format!(
                "embeddings have dimension {}, the index in {} has {}",
                emb.summary.dim,
                config.index.display(),
                summary.dim
            ))
            .into());
    }
    if emb.summary.classes != summary.classes {
        return Err(emb
            .invalid(format!(
                "classes {:?} differ from the index's {:?}",
                emb.summary.classes, summary.classes
            ))
            .into());
    }
    let n_classes = summary.classes.len();
    let (test, test_labels) = emb.read_role("test")?;
    let truth = class_ids(&test_labels, n_classes, &config.embeddings, "test")?;
    // Choose k on val when the embed stage wrote it; a val role that is there but unreadable
    // (tampered, misaligned) is an error, not a silent fallback.
    let val = match config.k {
        None if emb.has_role("val") => {
            let (val, labels) = emb.read_role("val")?;
            let truth = class_ids(&labels, n_classes, &config.embeddings, "val")?;
            Some((val, truth))
        }
        _ => None,
    };
    let spec = ClassifierSpec::knn(config.k.unwrap_or(1), config.vote);
    Ok(Inputs {
        classifier: Classifier::new(index, spec),
        test,
        truth,
        val,
        pred: Vec::new(),
        nearest: Vec::new(),
        current: resolve_current(config, &emb)?,
        emb,
    })
}

/// Chooses k, classifies the test set, computes the metrics and the gate's decision.
fn compute(config: &EvalConfig, inputs: &mut Inputs) -> Result<EvalSummary> {
    let classes = inputs.classifier.classes().to_vec();
    let ntotal = inputs.classifier.index.summary().ntotal;
    let largest_candidate = *config.k_candidates.iter().max().expect("checked non-empty");
    let k_max = config
        .k
        .unwrap_or(0)
        .max(largest_candidate)
        .min(ntotal)
        .max(1);

    let k_selection = match &inputs.val {
        Some((val, truth)) => {
            let nb = inputs.classifier.neighbours(standard(val), k_max)?;
            score_candidates(&nb, truth, &config.k_candidates, k_max, config.vote)
        }
        None => Vec::new(),
    };
    let k = match config.k {
        Some(k) => k.min(k_max),
        None => best_k(&k_selection).unwrap_or(10.min(k_max)),
    };
    let mut spec = ClassifierSpec::knn(k, config.vote);
    let blend_selection = choose_scoring(config, inputs, k_max, &k_selection, &mut spec)?;
    tracing::info!(?spec, ?k_selection, "classifier chosen");

    let started = Instant::now();
    let test = standard(&inputs.test);
    let nb = inputs.classifier.neighbours(test, k_max)?;
    let cos = if spec.scoring == Scoring::Knn {
        None
    } else {
        inputs.classifier.centre_cosines(test)
    };
    let seconds = started.elapsed().as_secs_f64();
    let truth = &inputs.truth;
    inputs.pred = Classifier::predict(&nb, cos.as_ref(), spec);
    inputs.nearest = nb.sims.iter().step_by(nb.k_max.max(1)).copied().collect();
    let m = metrics::compute(truth, &inputs.pred, &classes);
    let top1_accuracy = metrics::compute(truth, &nb.vote(1, config.vote), &classes).accuracy;
    let classes_missing_in_gallery = missing_in_gallery(&inputs.classifier, &m, &classes);
    let baseline = match &inputs.current {
        Some(dir) => baseline(dir, &classes, inputs)?,
        None => gate::Baseline::None,
    };
    Ok(EvalSummary {
        decision: gate::decide(m.accuracy, &baseline, config.gate),
        metrics: m,
        top1_accuracy,
        k: spec.k,
        vote: config.vote,
        k_selection,
        scoring: spec.scoring,
        centre_weight: spec.centre_weight,
        temperature: spec.temperature,
        blend_selection,
        queries_per_second: truth.len() as f64 / seconds.max(1e-9),
        classes_missing_in_gallery,
    })
}

/// Tries blends with the class centres on validation (when the index has centres and the
/// scoring is not fixed to kNN) and switches `spec` to the best when it beats the kNN vote;
/// returns what was tried. A fixed `scoring` takes the first weight and temperature given.
fn choose_scoring(
    config: &EvalConfig,
    inputs: &mut Inputs,
    k_max: usize,
    k_selection: &[(usize, f64)],
    spec: &mut ClassifierSpec,
) -> Result<Vec<(usize, f32, f32, f64)>> {
    let has_centres = inputs.classifier.index.centres.is_some();
    match config.scoring {
        Some(Scoring::Knn) => return Ok(Vec::new()),
        Some(s) if !has_centres => {
            return Err(Error::Config(format!(
                "scoring {s:?} needs class centres, and the index in {} has none",
                config.index.display()
            )))
        }
        Some(s) => {
            spec.scoring = s;
            spec.centre_weight = if s == Scoring::Centre {
                1.0
            } else {
                config.centre_weights[0]
            };
            spec.temperature = config.temperatures[0];
            return Ok(Vec::new());
        }
        None if !has_centres => return Ok(Vec::new()),
        None => {}
    }
    let Some((val, truth)) = &inputs.val else {
        return Ok(Vec::new());
    };
    let queries = standard(val);
    let nb = inputs.classifier.neighbours(queries, k_max)?;
    let cos = inputs.classifier.centre_cosines(queries);
    let ks: Vec<usize> = match config.k {
        Some(k) => vec![k.min(k_max)],
        None => config.k_candidates.iter().map(|&k| k.min(k_max)).collect(),
    };
    let mut tried = Vec::new();
    let mut best = k_selection
        .iter()
        .find(|(k, _)| *k == spec.k)
        .map_or(f64::MIN, |(_, acc)| *acc);
    for &k in &ks {
        for &w in &config.centre_weights {
            for &t in &config.temperatures {
                let candidate = ClassifierSpec {
                    k,
                    vote: config.vote,
                    scoring: if w >= 1.0 {
                        Scoring::Centre
                    } else {
                        Scoring::Blend
                    },
                    centre_weight: w.min(1.0),
                    temperature: t,
                };
                let pred = Classifier::predict(&nb, cos.as_ref(), candidate);
                let correct = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
                let acc = correct as f64 / truth.len() as f64;
                tried.push((k, w, t, acc));
                // Strictly better only: on a tie the plain vote (or the earlier blend) stays.
                if acc > best {
                    best = acc;
                    *spec = candidate;
                }
            }
        }
    }
    Ok(tried)
}

/// The deployed version `config.current` names: itself (a registry version, or an evaluation
/// directory), or for a registry model directory the version the embed stage compared with
/// when it belongs to that model (a promotion between the two steps must not pair two
/// different models), else the model's default; `None` when nothing is deployed yet.
fn resolve_current(config: &EvalConfig, emb: &EmbeddingsDir) -> Result<Option<PathBuf>> {
    let Some(path) = &config.current else {
        return Ok(None);
    };
    let is_model_dir = path
        .join(mlops_core::artifact::registry::POINTER_FILE)
        .is_file();
    let found = if is_model_dir {
        match &emb.summary.baseline {
            Some(embedded) if embedded.parent() == Some(path.as_path()) => Some(embedded.clone()),
            _ => mlops_core::artifact::registry::deployed_version(path)?,
        }
    } else if path.exists() {
        // A registry version, or an evaluation directory (its metrics.json).
        Some(path.clone())
    } else {
        // A registry model directory that no run has created yet.
        None
    };
    if found.is_none() {
        tracing::info!(current = %path.display(), "nothing deployed yet: no comparison");
    }
    Ok(found)
}

/// A matrix read by the embeddings reader is in standard layout.
fn standard(m: &Array2<f32>) -> &[f32] {
    m.as_slice()
        .expect("read_role builds a standard-layout array")
}

/// Validation accuracy of each candidate k (capped at `k_max`).
fn score_candidates(
    nb: &Neighbours,
    truth: &[usize],
    candidates: &[usize],
    k_max: usize,
    vote: Vote,
) -> Vec<(usize, f64)> {
    candidates
        .iter()
        .map(|&k| {
            let pred = nb.vote(k.min(k_max), vote);
            let correct = pred.iter().zip(truth).filter(|(p, t)| p == t).count();
            (k, correct as f64 / truth.len() as f64)
        })
        .collect()
}

/// The candidate with the best validation accuracy; the smaller k on ties.
fn best_k(selection: &[(usize, f64)]) -> Option<usize> {
    selection
        .iter()
        .fold(None::<(usize, f64)>, |best, &(k, acc)| match best {
            Some((_, b)) if b >= acc => best,
            _ => Some((k, acc)),
        })
        .map(|(k, _)| k)
}

/// Test classes with no gallery image: they can never be predicted.
fn missing_in_gallery(classifier: &Classifier, m: &Metrics, classes: &[String]) -> Vec<String> {
    let mut in_gallery = vec![false; classes.len()];
    for &l in classifier.index.labels.iter() {
        if let Some(slot) = usize::try_from(l).ok().and_then(|l| in_gallery.get_mut(l)) {
            *slot = true;
        }
    }
    let missing: Vec<String> = (0..classes.len())
        .filter(|&c| !in_gallery[c] && m.per_class[c].support > 0)
        .map(|c| classes[c].clone())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(classes = ?missing, "test classes with no gallery image can never be predicted");
    }
    missing
}

/// Writes the metrics files, decision, heat-map, report and manifest.
fn write_outputs(
    config: &EvalConfig,
    inputs: &Inputs,
    outcome: &EvalSummary,
    mut manifest: Manifest,
) -> Result<()> {
    let classes = inputs.classifier.classes();
    manifest.inputs = inputs.classifier.index.dir.index_input_entries()?;
    // The val shards count as inputs only when they chose k.
    let mut roles = vec!["test"];
    if !outcome.k_selection.is_empty() {
        roles.push("val");
    }
    if outcome.decision.paired.is_some() {
        roles.push(BASELINE_ROLE);
    }
    manifest
        .inputs
        .extend(inputs.emb.role_input_entries(&roles)?);
    if let Some(dir) = &inputs.current {
        manifest
            .inputs
            .push(FileEntry::input_file(&dir.join(METRICS_FILE))?);
    }
    let mut out = OutputDir::create(&config.out)?;
    for (name, value) in kubeflow::files(outcome, classes) {
        manifest.outputs.push(out.write_json(name, &value)?);
    }
    manifest.outputs.push(out.write_bytes(
        "confusion_matrix.csv",
        kubeflow::confusion_csv(&outcome.metrics, classes).as_bytes(),
    )?);
    manifest
        .outputs
        .push(out.write_json(DECISION_FILE, &outcome.decision)?);
    let baseline = SimilarityBaseline::new(&inputs.nearest, &inputs.pred, classes.len());
    manifest
        .outputs
        .push(out.write_json(SIMILARITY_BASELINE_FILE, &baseline)?);
    let png_path = out.staged_path(CONFUSION_PNG_FILE);
    report::confusion_png(&png_path, &outcome.metrics.confusion, classes).map_err(Error::Report)?;
    let heatmap = std::fs::read(&png_path).map_err(|e| mlops_core::Error::io(&png_path, e))?;
    manifest.outputs.push(out.adopt(CONFUSION_PNG_FILE)?);
    let (thumbnails, note) =
        misclassified_thumbnails(&inputs.emb, &inputs.truth, &inputs.pred, classes, 24);
    // The training curves, when the embed stage carried them from the model.
    // Recorded with the checksum the embed manifest lists (just verified), not hashed again.
    let curves = match inputs.emb.verified_if_listed(CURVES_FILE)? {
        Some(path) => {
            manifest
                .inputs
                .extend(inputs.emb.input_entries([CURVES_FILE])?);
            Some(std::fs::read(&path).map_err(|e| mlops_core::Error::io(&path, e))?)
        }
        None => None,
    };
    let html = report::html(outcome, &heatmap, curves.as_deref(), &thumbnails, &note);
    manifest
        .outputs
        .push(out.write_bytes(REPORT_FILE, html.as_bytes())?);
    manifest.outputs.push(out.write_json(CONFIG_FILE, config)?);
    manifest.summary = serde_json::to_value(outcome).expect("plain data");
    out.commit(manifest)?;
    Ok(())
}

/// `labels` as class ids, or an error naming `dir` when one lies outside the `classes`.
fn class_ids(
    labels: &ndarray::Array1<i64>,
    classes: usize,
    dir: &Path,
    role: &str,
) -> Result<Vec<usize>> {
    labels
        .iter()
        .map(|&l| usize::try_from(l).ok().filter(|&l| l < classes))
        .collect::<Option<_>>()
        .ok_or_else(|| {
            mlops_core::Error::invalid(dir, format!("{role} labels outside the classes")).into()
        })
}

/// Up to `max` misclassified test images as PNG thumbnails, read from the data directory the
/// embed stage recorded; when that directory is gone, none, with a note saying why.
fn misclassified_thumbnails(
    emb: &EmbeddingsDir,
    truth: &[usize],
    pred: &[usize],
    classes: &[String],
    max: usize,
) -> (Vec<report::Thumbnail>, String) {
    let wrong: Vec<usize> = (0..truth.len())
        .filter(|&i| truth[i] != pred[i])
        .take(max)
        .collect();
    if wrong.is_empty() {
        return (Vec::new(), "No test image was misclassified.".into());
    }
    let Some(data_path) = emb.manifest.parameters["data"].as_str().map(PathBuf::from) else {
        return (
            Vec::new(),
            "The embed manifest names no data directory; thumbnails skipped.".into(),
        );
    };
    let data = match mlops_core::artifact::DataDir::open(&data_path) {
        Ok(d) => d,
        Err(e) => {
            return (
                Vec::new(),
                format!("Data directory unavailable ({e}); thumbnails skipped."),
            )
        }
    };
    let Ok(role) = data.role(mlops_core::artifact::Role::Test) else {
        return (
            Vec::new(),
            "The data directory has no test role; thumbnails skipped.".into(),
        );
    };
    let [_, h, w] = data.summary.image_shape;
    let [lo, hi] = data.summary.value_range;
    let mut thumbs = Vec::new();
    let mut offset = 0;
    for pair in &role.shards {
        let here: Vec<usize> = wrong
            .iter()
            .copied()
            .filter(|&i| i >= offset && i < offset + pair.rows)
            .collect();
        if !here.is_empty() {
            let Ok((images, _)) = data.read_shard(pair) else {
                return (
                    thumbs,
                    format!("{} could not be read; thumbnails incomplete.", pair.images),
                );
            };
            for i in here {
                let pixels: Vec<f32> = images
                    .slice(ndarray::s![i - offset, 0, .., ..])
                    .iter()
                    .copied()
                    .collect();
                thumbs.push(report::Thumbnail {
                    png: report::thumbnail_png(&pixels, h, w, lo, hi, 3),
                    truth: classes[truth[i]].clone(),
                    predicted: classes[pred[i]].clone(),
                });
            }
        }
        offset += pair.rows;
    }
    (thumbs, String::new())
}

/// The embed stage's role holding the test images embedded by the deployed model.
pub const BASELINE_ROLE: &str = mlops_core::artifact::embeddings::BASELINE_TEST_ROLE;

/// What the deployed model in `dir` offers for comparison: a paired comparison on the
/// candidate's own test images when `dir` is a registry version and the embed stage embedded
/// those images with its model too; its recorded accuracy otherwise; nothing when its
/// `classes.json` names other classes than `classes`.
fn baseline(dir: &Path, classes: &[String], inputs: &Inputs) -> Result<gate::Baseline> {
    let path = dir.join(mlops_core::artifact::CLASSES_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        let deployed: Vec<String> =
            serde_json::from_slice(&bytes).map_err(|source| mlops_core::Error::Json {
                path: path.clone(),
                source,
            })?;
        if deployed != classes {
            return Ok(gate::Baseline::OtherClasses {
                deployed,
                candidate: classes.to_vec(),
            });
        }
        if inputs.emb.has_role(BASELINE_ROLE) && dir.join(mlops_core::MANIFEST_FILE).is_file() {
            let version = mlops_core::artifact::VersionDir::open(dir)?;
            let spec = version.summary.classifier;
            let classifier = Classifier::new(mlops_index::load_dir(version.index_dir())?, spec);
            let (queries, labels) = inputs.emb.read_role(BASELINE_ROLE)?;
            let truth = class_ids(&labels, classes.len(), &inputs.emb.dir, BASELINE_ROLE)?;
            if truth != inputs.truth {
                return Err(inputs
                    .emb
                    .invalid(format!("{BASELINE_ROLE} is not the test role's images"))
                    .into());
            }
            let predicted: Vec<usize> = classifier
                .classify(standard(&queries))?
                .into_iter()
                .map(|p| p.class)
                .collect();
            return Ok(gate::Baseline::Paired(gate::paired(
                &inputs.truth,
                &inputs.pred,
                &predicted,
            )));
        }
    }
    Ok(gate::Baseline::Accuracy(read_current_accuracy(dir)?))
}

/// Reads `accuracy` from the `metrics.json` of an earlier evaluation.
pub fn read_current_accuracy(dir: &Path) -> Result<f64> {
    let path = dir.join(METRICS_FILE);
    let text = std::fs::read(&path).map_err(|e| mlops_core::Error::io(&path, e))?;
    let value: serde_json::Value =
        serde_json::from_slice(&text).map_err(|source| mlops_core::Error::Json {
            path: path.clone(),
            source,
        })?;
    value["accuracy"]
        .as_f64()
        .filter(|a| (0.0..=1.0).contains(a))
        .ok_or_else(|| mlops_core::Error::invalid(&path, "has no accuracy between 0 and 1").into())
}
