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
//! ```no_run
//! let config = mlops_eval::EvalConfig {
//!     index: "runs/demo/index".into(),
//!     embeddings: "runs/demo/embed".into(),
//!     out: "runs/demo/eval".into(),
//!     ..Default::default()
//! };
//! let outcome = mlops_eval::run(&config)?;
//! println!("accuracy {:.4}, deploy: {}", outcome.metrics.accuracy, outcome.decision.deploy);
//! # Ok::<(), mlops_eval::Error>(())
//! ```

pub mod gate;
pub mod kubeflow;
pub mod metrics;
pub mod report;

use std::path::{Path, PathBuf};
use std::time::Instant;

use faiss::Index;
use mlops_core::embeddings::EmbeddingsDir;
use mlops_core::{FileEntry, Manifest, OutputDir};
use serde::{Deserialize, Serialize};

pub use gate::{decide, Decision, GatePolicy};
pub use metrics::{Metrics, Vote};

/// Name of this stage in manifests.
pub const STAGE: &str = "eval";
/// The flat metrics file (also what `--current` reads from a previous evaluation).
pub const METRICS_FILE: &str = "metrics.json";
pub const DECISION_FILE: &str = "decision.json";

/// Errors of the eval stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    #[error(transparent)]
    Index(#[from] mlops_index::Error),
    #[error("faiss search: {0}")]
    Faiss(#[from] faiss::error::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
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
    pub out: PathBuf,
    /// Evaluation output of the currently deployed model, to guard against regressions.
    pub current: Option<PathBuf>,
    /// Neighbours that vote; `None` picks the best of `k_candidates` on validation embeddings.
    pub k: Option<usize>,
    pub k_candidates: Vec<usize>,
    pub vote: Vote,
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
            k_candidates: vec![1, 3, 5, 10, 20, 30],
            vote: Vote::Weighted,
            gate: GatePolicy::default(),
        }
    }
}

/// What an evaluation found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    pub metrics: Metrics,
    pub top1_accuracy: f64,
    pub k: usize,
    /// How `k` was chosen, and the validation accuracy of each candidate if it was.
    pub k_selection: Vec<(usize, f64)>,
    pub queries_per_second: f64,
    /// Test classes with no gallery image: they can never be predicted.
    pub classes_missing_in_gallery: Vec<String>,
    pub decision: Decision,
}

/// Neighbour labels and similarities of every query: `[queries, k]`, row-major.
struct Neighbours {
    labels: Vec<Option<usize>>,
    sims: Vec<f32>,
    k: usize,
}

fn search(
    index: &mut mlops_index::LoadedIndex,
    queries: &[f32],
    k: usize,
    classes: usize,
) -> Result<(Neighbours, f64)> {
    let started = Instant::now();
    let result = index.index.search(queries, k)?;
    let seconds = started.elapsed().as_secs_f64();
    let labels = result
        .labels
        .iter()
        .map(|id| {
            id.get()
                .and_then(|i| index.labels.get(i as usize).copied())
                .and_then(|l| usize::try_from(l).ok())
                .filter(|&l| l < classes)
        })
        .collect();
    let sims = match index.summary.metric {
        mlops_index::Metric::InnerProduct => result.distances,
        // Squared L2 distance between unit vectors is 2 - 2cos: map it back to a similarity.
        mlops_index::Metric::L2 => result.distances.iter().map(|d| 1.0 - d / 2.0).collect(),
    };
    Ok((Neighbours { labels, sims, k }, seconds))
}

/// Runs the eval stage (see the crate docs). A rejection is a result, not an error.
pub fn run(config: &EvalConfig) -> Result<Outcome> {
    if config.k == Some(0) || config.k_candidates.is_empty() || config.k_candidates.contains(&0) {
        return Err(Error::Config(
            "k and every k candidate must be at least 1".into(),
        ));
    }
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let mut index = mlops_index::load(&config.index)?;
    let emb = EmbeddingsDir::open(&config.embeddings)?;
    if emb.summary.dim != index.summary.dim {
        return Err(mlops_core::Error::invalid(
            config.embeddings.join(mlops_core::MANIFEST_FILE),
            format!(
                "embeddings have dimension {}, the index in {} has {}",
                emb.summary.dim,
                config.index.display(),
                index.summary.dim
            ),
        )
        .into());
    }
    let classes = index.summary.classes.clone();
    if emb.summary.classes != classes {
        return Err(mlops_core::Error::invalid(
            config.embeddings.join(mlops_core::MANIFEST_FILE),
            format!(
                "classes {:?} differ from the index's {:?}",
                emb.summary.classes, classes
            ),
        )
        .into());
    }
    let (test, test_labels) = emb.read_role("test")?;
    let truth = class_ids(&test_labels, classes.len(), &config.embeddings, "test")?;
    let ntotal = index.summary.ntotal;
    let k_max = config
        .k
        .unwrap_or(0)
        .max(*config.k_candidates.iter().max().expect("non-empty"))
        .min(ntotal)
        .max(1);

    // Choose k on val when the embed stage wrote it; a val role that is there but unreadable
    // (tampered, misaligned) is an error, not a silent fallback.
    let val = match config.k {
        None if emb.has_role("val") => Some(emb.read_role("val")?),
        _ => None,
    };
    let k_selection = match val {
        Some((val, val_labels)) => {
            let (nb, _) = search(
                &mut index,
                val.as_slice().expect("standard layout"),
                k_max,
                classes.len(),
            )?;
            let val_truth = class_ids(&val_labels, classes.len(), &config.embeddings, "val")?;
            config
                .k_candidates
                .iter()
                .map(|&k| {
                    let pred = metrics::vote(
                        &nb.labels,
                        &nb.sims,
                        nb.k,
                        k.min(k_max),
                        classes.len(),
                        config.vote,
                    );
                    let acc = pred.iter().zip(&val_truth).filter(|(p, t)| p == t).count() as f64
                        / val_truth.len() as f64;
                    (k, acc)
                })
                .collect::<Vec<_>>()
        }
        None => Vec::new(),
    };
    let k = match config.k {
        Some(k) => k.min(k_max),
        None => k_selection
            .iter()
            .fold(None::<(usize, f64)>, |best, &(k, acc)| match best {
                Some((_, b)) if b >= acc => best,
                _ => Some((k, acc)),
            })
            .map_or(10.min(k_max), |(k, _)| k),
    };
    tracing::info!(k, ?k_selection, "neighbours voting");

    let (nb, seconds) = search(
        &mut index,
        test.as_slice().expect("standard layout"),
        k_max,
        classes.len(),
    )?;
    let queries_per_second = truth.len() as f64 / seconds.max(1e-9);
    let pred = metrics::vote(&nb.labels, &nb.sims, nb.k, k, classes.len(), config.vote);
    let top1 = metrics::vote(&nb.labels, &nb.sims, nb.k, 1, classes.len(), config.vote);
    let m = metrics::compute(&truth, &pred, &classes);
    let top1_accuracy = metrics::compute(&truth, &top1, &classes).accuracy;

    let mut in_gallery = vec![false; classes.len()];
    for &l in index.labels.iter() {
        if let Some(slot) = usize::try_from(l).ok().and_then(|l| in_gallery.get_mut(l)) {
            *slot = true;
        }
    }
    let classes_missing_in_gallery: Vec<String> = (0..classes.len())
        .filter(|&c| !in_gallery[c] && m.per_class[c].support > 0)
        .map(|c| classes[c].clone())
        .collect();
    if !classes_missing_in_gallery.is_empty() {
        tracing::warn!(classes = ?classes_missing_in_gallery, "test classes with no gallery image can never be predicted");
    }

    let current_accuracy = match &config.current {
        Some(dir) => Some(read_current_accuracy(dir)?),
        None => None,
    };
    let decision = gate::decide(m.accuracy, current_accuracy, config.gate);
    let outcome = Outcome {
        metrics: m,
        top1_accuracy,
        k,
        k_selection,
        queries_per_second,
        classes_missing_in_gallery,
        decision,
    };

    manifest.inputs = index.manifest.input_entries(
        &config.index,
        [mlops_index::INDEX_FILE, mlops_index::LABELS_FILE],
    )?;
    // The val shards count as inputs only when they chose k.
    let roles: &[&str] = if outcome.k_selection.is_empty() {
        &["test"]
    } else {
        &["test", "val"]
    };
    manifest.inputs.extend(emb.input_entries(roles)?);
    if let Some(dir) = &config.current {
        manifest
            .inputs
            .push(FileEntry::input_file(&dir.join(METRICS_FILE))?);
    }
    let mut out = OutputDir::create(&config.out)?;
    for (name, value) in kubeflow::files(&outcome, &classes) {
        manifest.outputs.push(out.write_json(name, &value)?);
    }
    manifest.outputs.push(out.write_bytes(
        "confusion_matrix.csv",
        kubeflow::confusion_csv(&outcome.metrics, &classes).as_bytes(),
    )?);
    manifest
        .outputs
        .push(out.write_json(DECISION_FILE, &outcome.decision)?);
    let png_path = out.staged_path("confusion_matrix.png");
    report::confusion_png(&png_path, &outcome.metrics.confusion, &classes)
        .map_err(Error::Report)?;
    let heatmap = std::fs::read(&png_path).map_err(|e| mlops_core::Error::io(&png_path, e))?;
    manifest.outputs.push(out.adopt("confusion_matrix.png")?);
    let (thumbnails, note) = misclassified_thumbnails(&emb, &truth, &pred, &classes, 24);
    let html = report::html(&outcome, &heatmap, &thumbnails, &note);
    manifest
        .outputs
        .push(out.write_bytes("report.html", html.as_bytes())?);
    manifest
        .outputs
        .push(out.write_json("config.json", config)?);
    manifest.summary = serde_json::to_value(&outcome).expect("plain data");
    out.commit(manifest)?;
    Ok(outcome)
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
    let data = match mlops_data::DataDir::open(&data_path) {
        Ok(d) => d,
        Err(e) => {
            return (
                Vec::new(),
                format!("Data directory unavailable ({e}); thumbnails skipped."),
            )
        }
    };
    let Ok(role) = data.role(mlops_data::Role::Test) else {
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
