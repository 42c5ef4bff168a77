//! `mlops-validate`: prove that a data-stage output is sound before anything trains on it.
//!
//! [`validate`] runs named checks over a `mlops-data` output directory and returns a
//! [`ValidationReport`]; [`run`] does the same as a stage, writing `validation.json` (always)
//! and `manifest.json` (only when every check passed).
//!
//! | check            | what it proves                                                        |
//! |------------------|-----------------------------------------------------------------------|
//! | `manifest`       | the directory holds a finished data-stage manifest                    |
//! | `checksums`      | every file has the sha256 the manifest recorded                       |
//! | `shard_pairing`  | every images shard has its labels shard, none missing or unlisted     |
//! | `dtype_shape`    | images are float32 `[n,1,H,W]`, labels int64 `[n]`, `n` as recorded  |
//! | `value_range`    | pixels are finite and inside the preprocessing's range                |
//! | `label_range`    | labels lie in `0..n_classes`                                          |
//! | `class_coverage` | every class appears in every role at least `min_per_class` times      |
//! | `leakage`        | no test image also appears in train/val/gallery, no val image in train |
//! | `totals`         | row and per-class counts match the manifest                            |
//!
//! ```
//! # use mlops_data::fixtures::{write_idx, IdxFixture};
//! # let tmp = tempfile::tempdir()?;
//! # let data = tmp.path().join("data");
//! # write_idx(&tmp.path().join("idx"), &IdxFixture::default())?;
//! # mlops_data::run(&mlops_data::DataConfig { sources: vec![tmp.path().join("idx")], out: data.clone(), ..Default::default() })?;
//! // `data`: a data-stage output directory.
//! let config = mlops_validate::ValidateConfig::default();
//! let report = mlops_validate::validate(&data, &config);
//! for check in &report.checks {
//!     println!("{:<15} {}", check.name, if check.passed { "pass" } else { "FAIL" });
//! }
//! assert!(report.passed);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod checks;

use std::path::{Path, PathBuf};

use mlops_core::{FileEntry, Manifest, OutputDir};
use serde::{Deserialize, Serialize};

pub use checks::{validate, validate_with};

/// Name of this stage in manifests.
pub const STAGE: &str = "validate";
/// The report file written into the output directory.
pub const REPORT_FILE: &str = "validation.json";

/// Errors of the validate stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing the report or the manifest into the output directory failed.
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// At least one check failed; the report was written, the manifest was not.
    #[error("{}: data validation failed ({failed}); full report in {}", data.display(), report.display())]
    Failed {
        /// The data directory that was validated.
        data: PathBuf,
        /// Where the full `validation.json` was written.
        report: PathBuf,
        /// Each failed check's [`Check::headline`], joined with `; `.
        failed: String,
    },
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configuration of the validate stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidateConfig {
    /// Output directory of `mlops-data`.
    pub data: PathBuf,
    /// Where `validation.json` and the manifest go.
    pub out: PathBuf,
    /// Fewest images of each class every role must hold.
    pub min_per_class: usize,
    /// Slack allowed around the recorded value range, for float rounding.
    pub range_tolerance: f32,
    /// Most findings listed per check (the count is always complete).
    pub max_findings: usize,
}

impl Default for ValidateConfig {
    fn default() -> Self {
        ValidateConfig {
            data: PathBuf::from("data"),
            out: PathBuf::from("validate"),
            min_per_class: 1,
            range_tolerance: 1e-5,
            max_findings: 20,
        }
    }
}

/// One problem found by a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// The offending file, relative to the data directory, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

/// The outcome of one named check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    /// The check's name (`manifest`, `checksums`, ...; see the crate docs).
    pub name: String,
    /// Whether the check ran and found no problem (`false` when skipped).
    pub passed: bool,
    /// Set when an earlier failure made this check impossible to run.
    pub skipped: bool,
    /// How many problems the check found (may exceed `findings.len()`).
    pub problems: usize,
    /// The first problems found, at most the configured `max_findings`.
    pub findings: Vec<Finding>,
}

impl Check {
    /// One line: `name (first finding)`.
    pub fn headline(&self) -> String {
        match self.findings.first() {
            Some(Finding {
                file: Some(file),
                message,
            }) => format!("{}: {file}: {message}", self.name),
            Some(Finding {
                file: None,
                message,
            }) => format!("{}: {message}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Every check's outcome for one data directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// The data directory that was validated, as given.
    pub data: String,
    /// Whether every check passed.
    pub passed: bool,
    /// Every check's outcome, in the order they ran.
    pub checks: Vec<Check>,
    /// Files read, with the checksum they actually have.
    #[serde(skip)]
    pub inputs: Vec<FileEntry>,
}

impl ValidationReport {
    /// The check called `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The checks that ran and failed (skipped checks are not listed).
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed && !c.skipped)
    }
}

/// Runs the validate stage without reporting progress: see [`run_with`].
pub fn run(config: &ValidateConfig) -> Result<ValidationReport> {
    run_with(config, &mlops_core::progress::Silent)
}

/// Runs the validate stage: writes `validation.json` and, if every check passed, the manifest.
/// A failed check is an [`Error::Failed`] naming the checks and their first offending file.
/// The scan over the shards is reported to `progress`.
pub fn run_with(
    config: &ValidateConfig,
    progress: &dyn mlops_core::progress::Progress,
) -> Result<ValidationReport> {
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let report = checks::validate_with(&config.data, config, progress);
    for check in &report.checks {
        if check.passed {
            tracing::info!(check = %check.name, "pass");
        } else {
            tracing::error!(check = %check.name, problems = check.problems, "{}", check.headline());
        }
    }
    let mut out = OutputDir::create(&config.out)?;
    let entry = out.write_json(REPORT_FILE, &report)?;
    let report_path = config.out.join(REPORT_FILE);
    if !report.passed {
        // The report is worth keeping; the manifest is not written, so nothing downstream
        // mistakes this directory for a successful validation.
        let staged = out.staged_path(REPORT_FILE);
        std::fs::rename(&staged, &report_path)
            .map_err(|e| mlops_core::Error::io(&report_path, e))?;
        let failed = report
            .failures()
            .map(Check::headline)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(Error::Failed {
            data: config.data.clone(),
            report: report_path,
            failed,
        });
    }
    manifest.inputs = report.inputs.clone();
    manifest.outputs.push(entry);
    manifest.summary = serde_json::json!({
        "passed": true,
        "checks": report.checks.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
    });
    out.commit(manifest)?;
    Ok(report)
}

/// True when `path` is the output of a finished, passed validation of some data directory.
pub fn is_validated(path: &Path) -> bool {
    Manifest::load_stage(path, STAGE).is_ok()
}
