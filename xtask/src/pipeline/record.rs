//! `runs/<run>/run.json`: what a run did (parameters, every stage's duration, cache use, inputs
//! and outputs), what it found (metrics, decision) and what it registered; and `cargo xtask
//! runs`, which lists them.
//!
//! The records' fields are declared in alphabetical order: run.json was first written from a
//! sorted JSON map, and the same order keeps old and new records comparable line by line.

use std::path::Path;

use anyhow::{Context, Result};
use mlops_core::artifact::{EvalDir, EvalSummary, Scoring};
use serde::{Deserialize, Serialize};

use super::cache::FileSum;
use super::Params;
use crate::root;

/// What happened to a stage in a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    #[default]
    Ran,
    Cached,
    /// Not run: the gate rejected the model.
    Skipped,
    Failed,
}

/// Whether a stage's outputs came from the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheUse {
    Hit,
    Miss,
    #[default]
    None,
}

/// One stage of a run, as run.json records it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StageRecord {
    pub cache: CacheUse,
    pub inputs: Vec<FileSum>,
    pub key: String,
    pub outputs: Vec<FileSum>,
    /// Peak resident set size of the stage's process (MB), when it ran natively.
    pub peak_rss_mb: Option<f64>,
    pub seconds: f64,
    pub stage: String,
    pub status: StageStatus,
}

impl StageRecord {
    pub fn new(stage: &str, status: StageStatus) -> StageRecord {
        StageRecord {
            stage: stage.to_string(),
            ..StageRecord::default()
        }
        .with_status(status)
    }

    pub fn with_status(mut self, status: StageStatus) -> StageRecord {
        self.status = status;
        self.cache = match status {
            StageStatus::Cached => CacheUse::Hit,
            StageStatus::Ran => CacheUse::Miss,
            StageStatus::Skipped | StageStatus::Failed => CacheUse::None,
        };
        self
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    #[default]
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Deploy,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Deploy => "deploy",
            Verdict::Reject => "reject",
        }
    }
}

/// The eval stage's headline figures (all absent when it did not finish).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunMetrics {
    pub accuracy: Option<f64>,
    pub centre_weight: Option<f32>,
    pub k: Option<usize>,
    pub macro_f1: Option<f64>,
    pub scoring: Option<Scoring>,
    pub top1_accuracy: Option<f64>,
}

impl RunMetrics {
    fn of(eval: &EvalSummary) -> RunMetrics {
        RunMetrics {
            accuracy: Some(eval.metrics.accuracy),
            centre_weight: Some(eval.centre_weight),
            k: Some(eval.k),
            macro_f1: Some(eval.metrics.macro_f1),
            scoring: Some(eval.scoring),
            top1_accuracy: Some(eval.top1_accuracy),
        }
    }
}

/// `runs/<run>/run.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RunRecord {
    pub decision: Option<Verdict>,
    pub error: Option<String>,
    pub git_revision: Option<String>,
    pub metrics: RunMetrics,
    pub model: String,
    pub parameters: toml::Table,
    pub registered_version: Option<u64>,
    pub report: String,
    pub run: String,
    pub seconds: f64,
    pub stages: Vec<StageRecord>,
    /// RFC 3339 with nanoseconds and `+00:00`, as chrono's `to_rfc3339` writes it.
    pub started_at: String,
    pub status: RunStatus,
}

impl RunRecord {
    /// The record of a run that took `seconds` from `started_at` and ended with `result`.
    pub fn new(
        params: &Params,
        run_dir: &Path,
        stages: Vec<StageRecord>,
        started_at: chrono::DateTime<chrono::Utc>,
        seconds: f64,
        result: &Result<()>,
    ) -> RunRecord {
        let eval = EvalDir::open(&run_dir.join("eval")).ok();
        let deployed = stages
            .iter()
            .any(|r| r.stage == "deploy" && r.status != StageStatus::Skipped);
        let registered_version = if deployed {
            std::fs::read_to_string(run_dir.join("deploy").join(super::cache::VERSION_OUT))
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
        } else {
            None
        };
        RunRecord {
            decision: eval.as_ref().map(|e| {
                if e.summary.decision.deploy {
                    Verdict::Deploy
                } else {
                    Verdict::Reject
                }
            }),
            error: result.as_ref().err().map(|e| format!("{e:#}")),
            git_revision: crate::git_revision(),
            metrics: eval
                .as_ref()
                .map_or_else(RunMetrics::default, |e| RunMetrics::of(&e.summary)),
            model: params.model.clone(),
            parameters: params.table.clone(),
            registered_version,
            report: run_dir.join("eval/report.html").display().to_string(),
            run: params.run.clone(),
            seconds,
            stages,
            started_at: started_at.to_rfc3339(),
            status: if result.is_ok() {
                RunStatus::Succeeded
            } else {
                RunStatus::Failed
            },
        }
    }

    /// Reads a run.json.
    pub fn load(path: &Path) -> Result<RunRecord> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a run record", path.display()))
    }

    /// The classifier eval chose, in words.
    fn classifier(&self) -> String {
        let m = &self.metrics;
        let k = shown(&m.k);
        match m.scoring {
            Some(Scoring::Blend) => format!(
                "kNN vote k = {k} blended with the class centres, weight {}",
                shown(&m.centre_weight)
            ),
            Some(Scoring::Centre) => "nearest class centre".to_string(),
            _ => format!("kNN vote, k = {k}"),
        }
    }

    pub fn print_summary(&self, run_dir: &Path) {
        let cached = self
            .stages
            .iter()
            .filter(|s| s.cache == CacheUse::Hit)
            .count();
        println!(
            "\npipeline finished: {} in {:.1} s ({cached} stages from cache)",
            run_dir.display(),
            self.seconds
        );
        let m = &self.metrics;
        println!(
            "  test accuracy {:.4} ({}), top-1 {:.4}, macro F1 {:.4}",
            m.accuracy.unwrap_or(f64::NAN),
            self.classifier(),
            m.top1_accuracy.unwrap_or(f64::NAN),
            m.macro_f1.unwrap_or(f64::NAN),
        );
        let reasons = EvalDir::open(&run_dir.join("eval"))
            .and_then(|e| e.decision())
            .map(|d| d.reasons.join("; "))
            .unwrap_or_default();
        let decision = self.decision.map_or("none", Verdict::as_str);
        println!("  decision: {decision} ({reasons})");
        match self.registered_version {
            Some(v) => println!("  registered: {} version {v} (default)", self.model),
            None => println!("  registered: nothing"),
        }
        println!("  report:  {}", self.report);
        println!("  record:  {}", run_dir.join("run.json").display());
    }
}

/// A value as run.json shows it (`null` when absent).
fn shown<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// `cargo xtask runs`: one line per past run.
pub fn list_runs(runs_dir: Option<&Path>) -> Result<()> {
    let dir = runs_dir.map_or_else(|| root().join("runs"), Path::to_path_buf);
    let mut rows = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        if let Ok(r) = RunRecord::load(&entry?.path().join("run.json")) {
            rows.push(r);
        }
    }
    rows.sort_by(|a, b| a.started_at.cmp(&b.started_at));
    println!(
        "{:<20} {:<26} {:>8} {:>8} {:>9} {:>8}  status",
        "run", "started", "accuracy", "decision", "version", "seconds"
    );
    for r in rows {
        let status = match r.status {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
        };
        println!(
            "{:<20} {:<26} {:>8} {:>8} {:>9} {:>8.1}  {status}",
            r.run,
            r.started_at.get(..19).unwrap_or_default(),
            r.metrics.accuracy.map_or("-".into(), |a| format!("{a:.4}")),
            r.decision.map_or("-", Verdict::as_str),
            r.registered_version.map_or("-".into(), |v| v.to_string()),
            r.seconds,
        );
    }
    Ok(())
}
