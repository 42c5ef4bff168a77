//! Registry operations: register, promote, rollback, list, prune.
//!
//! The layout and readers are the contract's ([`mlops_core::artifact::registry`]); this module
//! changes it. Every change holds the registry's lock file (`REGISTRY/.lock`, an exclusive
//! `File::lock`), so concurrent CLI calls and a server's `set-default` never interleave. The
//! decisions (which version a rollback returns to, which versions a prune removes) are pure
//! functions; the functions around them do the I/O.

use std::fs::File;
use std::path::{Path, PathBuf};

use chrono::Utc;
use mlops_core::artifact::eval::{
    CONFUSION_PNG_FILE, DECISION_FILE, METRICS_FILE, REPORT_FILE, SIMILARITY_BASELINE_FILE,
};
use mlops_core::artifact::index::{GALLERY_IMAGES_FILE, INDEX_FILE, LABELS_FILE};
use mlops_core::artifact::model::{CENTRES_FILE, CURVES_FILE, MODEL_DESCRIPTION_FILE, MODEL_FILE};
use mlops_core::artifact::registry::{
    self, model_dir, read_pointer, version_dir, ModelPointer, ModelSignature, Rollout, RolloutMode,
    VersionSummary, LOCK_FILE, POINTER_FILE,
};
use mlops_core::artifact::{
    EvalDir, IndexDir, ModelDir, StageDir, StageSummary, VersionDir, CLASSES_FILE,
};
use mlops_core::{write_atomic, Manifest, OutputDir};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What `register` copies into the registry, and from where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegisterConfig {
    /// Output directory of `mlops-train`.
    pub model: PathBuf,
    /// Output directory of `mlops-index`.
    pub index: PathBuf,
    /// Output directory of `mlops-eval` (its decision admits the model).
    pub eval: PathBuf,
    /// The registry directory (created when missing).
    pub registry: PathBuf,
    /// The model's name in the registry (and in the server's URLs).
    pub name: String,
    /// Make the new version the default.
    pub promote: bool,
    /// Register even when the deploy gate rejected the model.
    pub force: bool,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig {
            model: PathBuf::from("train"),
            index: PathBuf::from("index"),
            eval: PathBuf::from("eval"),
            registry: PathBuf::from("registry"),
            name: "fashion-mnist".into(),
            promote: false,
            force: false,
        }
    }
}

/// Holds a registry's lock until dropped.
pub struct RegistryLock {
    _file: File,
}

impl RegistryLock {
    /// Waits for the exclusive lock on `registry` (creating the registry directory).
    pub fn acquire(registry: &Path) -> Result<Self> {
        std::fs::create_dir_all(registry).map_err(|e| mlops_core::Error::io(registry, e))?;
        let path = registry.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| mlops_core::Error::io(&path, e))?;
        file.lock().map_err(|e| mlops_core::Error::io(&path, e))?;
        Ok(RegistryLock { _file: file })
    }
}

fn write_pointer(registry: &Path, name: &str, pointer: &ModelPointer) -> Result<()> {
    let path = model_dir(registry, name)?.join(POINTER_FILE);
    let mut text = serde_json::to_vec_pretty(pointer).expect("plain data");
    text.push(b'\n');
    write_atomic(&path, &text)?;
    Ok(())
}

/// The files a version holds, with the stage directory each comes from.
const MODEL_FILES: [&str; 3] = [MODEL_FILE, MODEL_DESCRIPTION_FILE, CURVES_FILE];
const INDEX_FILES: [&str; 5] = [
    INDEX_FILE,
    LABELS_FILE,
    CLASSES_FILE,
    CENTRES_FILE,
    GALLERY_IMAGES_FILE,
];
const OPTIONAL: [&str; 6] = [
    CENTRES_FILE,
    SIMILARITY_BASELINE_FILE,
    GALLERY_IMAGES_FILE,
    CURVES_FILE,
    CONFUSION_PNG_FILE,
    REPORT_FILE,
];
const EVAL_FILES: [&str; 5] = [
    METRICS_FILE,
    DECISION_FILE,
    SIMILARITY_BASELINE_FILE,
    CONFUSION_PNG_FILE,
    REPORT_FILE,
];

/// Files of a version a client may download from the management API (the human views).
pub const VIEWABLE: [&str; 3] = [REPORT_FILE, CURVES_FILE, CONFUSION_PNG_FILE];

/// Refuses a candidate whose signature differs from the model's it would join: the newest
/// registered version speaks for the model (all its versions share one signature, this check
/// keeps it so; versions from before signatures were recorded give theirs from `model.json`).
fn check_signature(config: &RegisterConfig, candidate: &ModelSignature) -> Result<()> {
    let Some(&newest) = registry::versions(&config.registry, &config.name)?.last() else {
        return Ok(());
    };
    let registered = VersionDir::open(&version_dir(&config.registry, &config.name, newest)?)?;
    let differences = registered.signature()?.differences(candidate);
    if differences.is_empty() {
        return Ok(());
    }
    Err(Error::Signature {
        path: config.model.join(MODEL_DESCRIPTION_FILE),
        name: config.name.clone(),
        differences,
    })
}

/// Registers the model of `config.model` with the index and evaluation that go with it as the
/// next version of `config.name`; returns the version. Refused when the gate rejected the model
/// (unless `force`), or when the three directories do not belong together.
pub fn register(config: &RegisterConfig) -> Result<VersionSummary> {
    let model = ModelDir::open(&config.model)?;
    let index = IndexDir::open(&config.index)?;
    let eval = EvalDir::open(&config.eval)?;
    let description = model.description()?;
    let decision = eval.decision()?;
    if !decision.deploy && !config.force {
        return Err(Error::Rejected {
            path: config.eval.join(DECISION_FILE),
            reasons: decision.reasons.join("; "),
        });
    }
    check_together(config, &model, &index, &eval, &description)?;
    let models_dir = model_dir(&config.registry, &config.name)?;
    let signature = ModelSignature::of(&description);

    let _lock = RegistryLock::acquire(&config.registry)?;
    check_signature(config, &signature)?;
    std::fs::create_dir_all(&models_dir).map_err(|e| mlops_core::Error::io(&models_dir, e))?;
    let mut pointer = read_pointer(&config.registry, &config.name)?;
    let existing = registry::versions(&config.registry, &config.name)?;
    let version = pointer
        .next_version
        .max(existing.last().map_or(1, |v| v + 1))
        .max(1);
    let partial = models_dir.join(format!(".v{version}.partial"));
    let mut out = OutputDir::create(&partial)?;
    let mut manifest = Manifest::begin(VersionSummary::STAGE, env!("CARGO_PKG_VERSION"), config);
    carry_files(&model, &MODEL_FILES, &mut out, &mut manifest)?;
    carry_files(&index, &INDEX_FILES, &mut out, &mut manifest)?;
    carry_files(&eval, &EVAL_FILES, &mut out, &mut manifest)?;
    let summary = VersionSummary {
        name: config.name.clone(),
        version,
        created_at: Utc::now(),
        accuracy: eval.summary.metrics.accuracy,
        decision,
        forced: !eval.summary.decision.deploy,
        classifier: eval.summary.classifier(),
        index: index.summary.clone(),
        signature: Some(signature),
    };
    manifest.summary = serde_json::to_value(&summary).expect("plain data");
    out.commit(manifest)?;
    // The version appears whole: a directory named by its number exists only once complete.
    let final_dir = version_dir(&config.registry, &config.name, version)?;
    std::fs::rename(&partial, &final_dir).map_err(|e| mlops_core::Error::io(&final_dir, e))?;
    pointer.next_version = version + 1;
    if config.promote {
        pointer = promoted(&pointer, version);
    }
    write_pointer(&config.registry, &config.name, &pointer)?;
    tracing::info!(name = %config.name, version, promoted = config.promote, "registered");
    Ok(summary)
}

/// Copies `names` of a stage directory into the version (see [`StageDir::carry`]), recording
/// its manifest and each file among the inputs. Optional files (the class centres of a model
/// that exported them) come when listed; a missing required one is an error naming it.
fn carry_files<S>(
    dir: &StageDir<S>,
    names: &[&str],
    out: &mut OutputDir,
    manifest: &mut Manifest,
) -> Result<()> {
    manifest
        .inputs
        .extend(dir.input_entries(std::iter::empty())?);
    for name in names {
        match dir.carry(name, out)? {
            Some((input, output)) => {
                manifest.inputs.push(input);
                manifest.outputs.push(output);
            }
            None if OPTIONAL.contains(name) => {}
            None => {
                dir.manifest.listed_output(&dir.dir, name)?;
            }
        }
    }
    Ok(())
}

/// The model, index and evaluation must describe one candidate: the index's classes and
/// dimension are the model's, and the evaluation searched this very index.
fn check_together(
    config: &RegisterConfig,
    model: &ModelDir,
    index: &IndexDir,
    eval: &EvalDir,
    description: &mlops_core::artifact::ModelDescription,
) -> Result<()> {
    let mismatch = |path: &Path, message: String| -> Error {
        mlops_core::Error::invalid(path.join(mlops_core::MANIFEST_FILE), message).into()
    };
    if index.summary.classes != description.classes
        || index.summary.dim != description.embedding_dim
    {
        return Err(mismatch(
            &config.index,
            format!(
                "index of dimension {} over classes {:?} does not match the model in {} (dimension {}, classes {:?})",
                index.summary.dim,
                index.summary.classes,
                model.dir.display(),
                description.embedding_dim,
                description.classes
            ),
        ));
    }
    let index_sha = &index.manifest.listed_output(&index.dir, INDEX_FILE)?.sha256;
    let evaluated = eval
        .manifest
        .inputs
        .iter()
        .any(|e| e.path.ends_with(INDEX_FILE) && &e.sha256 == index_sha);
    if !evaluated {
        return Err(mismatch(
            &config.eval,
            format!(
                "this evaluation did not search the index in {}",
                config.index.display()
            ),
        ));
    }
    Ok(())
}

/// The pointer after promoting `version` (pure); a rollout in progress ends.
pub fn promoted(pointer: &ModelPointer, version: u64) -> ModelPointer {
    let mut next = pointer.clone();
    if next.default != Some(version) {
        next.history.push(version);
    }
    next.default = Some(version);
    next.rollout = None;
    next
}

/// The pointer after a rollback (pure): a rollout in progress is abandoned (the default stays);
/// otherwise the default returns to the previously promoted version. `None` when there is
/// nothing to roll back.
pub fn rolled_back(pointer: &ModelPointer) -> Option<ModelPointer> {
    let mut next = pointer.clone();
    if next.rollout.take().is_some() {
        return Some(next);
    }
    let previous = pointer.previous()?;
    next.history.pop();
    next.default = Some(previous);
    Some(next)
}

/// The pointer with `candidate` rolled out beside the default (pure), or why not.
pub fn with_rollout(
    pointer: &ModelPointer,
    candidate: u64,
    mode: RolloutMode,
    now: chrono::DateTime<Utc>,
) -> std::result::Result<ModelPointer, String> {
    let Some(default) = pointer.default else {
        return Err(
            "the model has no default version to roll out beside: promote one first".into(),
        );
    };
    if default == candidate {
        return Err(format!("version {candidate} is already the default"));
    }
    if let RolloutMode::Canary { percent } = mode {
        if !(percent > 0.0 && percent < 100.0) {
            return Err(format!(
                "a canary takes a share in (0, 100) percent, not {percent}"
            ));
        }
    }
    let mut next = pointer.clone();
    next.rollout = Some(Rollout {
        candidate,
        mode,
        started_at: now,
    });
    Ok(next)
}

/// The pointer after a finished rollout (pure): the candidate becomes the default.
pub fn finished(pointer: &ModelPointer) -> Option<ModelPointer> {
    let candidate = pointer.rollout.as_ref()?.candidate;
    Some(promoted(pointer, candidate))
}

/// The versions a prune removes (pure): all but the newest `keep`, never the default nor the
/// version a rollback would return to.
pub fn prune_plan(versions: &[u64], pointer: &ModelPointer, keep: usize) -> Vec<u64> {
    let mut sorted = versions.to_vec();
    sorted.sort_unstable();
    let cut = sorted.len().saturating_sub(keep);
    sorted[..cut]
        .iter()
        .copied()
        .filter(|v| Some(*v) != pointer.default && Some(*v) != pointer.previous())
        .collect()
}

/// Makes `version` (which must exist and verify) the default of `name`.
pub fn promote(registry: &Path, name: &str, version: u64) -> Result<ModelPointer> {
    let _lock = RegistryLock::acquire(registry)?;
    VersionDir::open_verified(registry, name, version)?;
    let pointer = promoted(&read_pointer(registry, name)?, version);
    write_pointer(registry, name, &pointer)?;
    tracing::info!(name, version, "promoted");
    Ok(pointer)
}

/// Starts rolling `version` out beside the default of `name` (a canary or a shadow); a
/// server reading the registry follows within its watch interval.
pub fn start_rollout(
    registry: &Path,
    name: &str,
    version: u64,
    mode: RolloutMode,
) -> Result<ModelPointer> {
    let _lock = RegistryLock::acquire(registry)?;
    VersionDir::open_verified(registry, name, version)?;
    let pointer = with_rollout(&read_pointer(registry, name)?, version, mode, Utc::now()).map_err(
        |message| Error::Registry {
            path: model_dir(registry, name).unwrap_or_default(),
            message,
        },
    )?;
    write_pointer(registry, name, &pointer)?;
    tracing::info!(name, version, %mode, "rollout started");
    Ok(pointer)
}

/// Ends the rollout of `name` by making its candidate the default.
pub fn finish_rollout(registry: &Path, name: &str) -> Result<ModelPointer> {
    let _lock = RegistryLock::acquire(registry)?;
    let pointer = finished(&read_pointer(registry, name)?).ok_or_else(|| Error::Registry {
        path: model_dir(registry, name).unwrap_or_default(),
        message: "no rollout in progress to finish".into(),
    })?;
    let version = pointer.default.expect("finished sets a default");
    VersionDir::open_verified(registry, name, version)?;
    write_pointer(registry, name, &pointer)?;
    tracing::info!(name, version, "rollout finished: promoted");
    Ok(pointer)
}

/// Abandons the rollout of `name` when one is in progress, else returns `name` to the version
/// promoted before the current default.
pub fn rollback(registry: &Path, name: &str) -> Result<ModelPointer> {
    let _lock = RegistryLock::acquire(registry)?;
    let current = read_pointer(registry, name)?;
    let pointer = rolled_back(&current).ok_or_else(|| Error::Registry {
        path: model_dir(registry, name).unwrap_or_default(),
        message: "no rollout in progress and no previously promoted version to roll back to".into(),
    })?;
    let version = pointer
        .default
        .expect("rolled_back keeps or sets a default");
    VersionDir::open_verified(registry, name, version)?;
    write_pointer(registry, name, &pointer)?;
    match &current.rollout {
        Some(r) => tracing::info!(name, candidate = r.candidate, "rollout abandoned"),
        None => tracing::info!(name, version, "rolled back"),
    }
    Ok(pointer)
}

/// What `mlops-deploy promote` asks of a model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Promotion {
    /// Make the version the default ([`promote`]).
    Default(u64),
    /// Roll the version out beside the default ([`start_rollout`]).
    Rollout(u64, RolloutMode),
    /// Make the candidate of the rollout in progress the default ([`finish_rollout`]).
    Finish,
}

impl Promotion {
    /// The promotion the command line's VERSION, `--canary PERCENT`, `--shadow` and `--finish`
    /// ask for.
    pub fn from_flags(
        version: Option<u64>,
        canary: Option<f64>,
        shadow: bool,
        finish: bool,
    ) -> Result<Self> {
        let mode = match (canary, shadow) {
            (Some(percent), _) => Some(RolloutMode::Canary { percent }),
            (None, true) => Some(RolloutMode::Shadow),
            (None, false) => None,
        };
        match (version, mode) {
            (_, None) if finish => Ok(Promotion::Finish),
            (Some(v), Some(mode)) => Ok(Promotion::Rollout(v, mode)),
            (Some(v), None) => Ok(Promotion::Default(v)),
            (None, _) => Err(Error::Config(
                "promote needs a version unless it finishes a rollout".into(),
            )),
        }
    }
}

/// What a promotion or rollback changed, in the words the command line reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// `version` is now the default of `name`.
    Default {
        /// The model.
        name: String,
        /// Its new default.
        version: u64,
    },
    /// `version` rolls out beside the default of `name`.
    RolloutStarted {
        /// The model.
        name: String,
        /// The candidate.
        version: u64,
        /// A canary or a shadow.
        mode: RolloutMode,
    },
    /// The rollout of `candidate` was abandoned; `default` stays the default.
    RolloutAbandoned {
        /// The model.
        name: String,
        /// The abandoned candidate.
        candidate: u64,
        /// The default, unchanged.
        default: u64,
    },
    /// The default of `name` returned to `version`, the one promoted before.
    RolledBack {
        /// The model.
        name: String,
        /// The default now.
        version: u64,
    },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Change::Default { name, version } => {
                write!(f, "{name} now serves version {version} by default")
            }
            Change::RolloutStarted {
                name,
                version,
                mode,
            } => write!(f, "{name} rolls out version {version}: {mode}"),
            Change::RolloutAbandoned {
                name,
                candidate,
                default,
            } => write!(
                f,
                "{name} rollout of version {candidate} abandoned; version {default} stays the default"
            ),
            Change::RolledBack { name, version } => {
                write!(f, "{name} rolled back to version {version}")
            }
        }
    }
}

/// Carries out `promotion` of `name` (see [`Promotion`]).
pub fn run_promotion(registry: &Path, name: &str, promotion: Promotion) -> Result<Change> {
    let name_owned = name.to_string();
    Ok(match promotion {
        Promotion::Default(version) => {
            promote(registry, name, version)?;
            Change::Default {
                name: name_owned,
                version,
            }
        }
        Promotion::Rollout(version, mode) => {
            start_rollout(registry, name, version, mode)?;
            Change::RolloutStarted {
                name: name_owned,
                version,
                mode,
            }
        }
        Promotion::Finish => Change::Default {
            name: name_owned,
            version: finish_rollout(registry, name)?.default.unwrap_or(0),
        },
    })
}

/// [`rollback`], saying whether it abandoned a rollout or returned to the previous default.
pub fn run_rollback(registry: &Path, name: &str) -> Result<Change> {
    let before = read_pointer(registry, name)?;
    let default = rollback(registry, name)?.default.unwrap_or(0);
    let name = name.to_string();
    Ok(match before.rollout {
        Some(r) => Change::RolloutAbandoned {
            name,
            candidate: r.candidate,
            default,
        },
        None => Change::RolledBack {
            name,
            version: default,
        },
    })
}

/// Removes old versions of `name` as [`prune_plan`] says; returns the removed versions.
pub fn prune(registry: &Path, name: &str, keep: usize) -> Result<Vec<u64>> {
    let _lock = RegistryLock::acquire(registry)?;
    let pointer = read_pointer(registry, name)?;
    let plan = prune_plan(&registry::versions(registry, name)?, &pointer, keep);
    for &v in &plan {
        let dir = version_dir(registry, name, v)?;
        // The manifest goes first: a half-removed directory never looks like a version.
        let manifest = dir.join(mlops_core::MANIFEST_FILE);
        std::fs::remove_file(&manifest).map_err(|e| mlops_core::Error::io(&manifest, e))?;
        std::fs::remove_dir_all(&dir).map_err(|e| mlops_core::Error::io(&dir, e))?;
    }
    tracing::info!(name, removed = ?plan, "pruned");
    Ok(plan)
}

/// One line of `list`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// Test accuracy the eval stage measured.
    pub accuracy: f64,
    /// When it was registered.
    pub created_at: chrono::DateTime<Utc>,
    /// Whether it is the default.
    pub default: bool,
    /// Whether it was registered past a gate that rejected it.
    pub forced: bool,
    /// How the version is being rolled out beside the default, if it is.
    pub rollout: Option<RolloutMode>,
}

/// The versions of `name`, oldest first.
pub fn list(registry: &Path, name: &str) -> Result<Vec<VersionInfo>> {
    let pointer = read_pointer(registry, name)?;
    registry::versions(registry, name)?
        .into_iter()
        .map(|v| {
            let dir = VersionDir::open(&version_dir(registry, name, v)?)?;
            Ok(VersionInfo {
                version: v,
                accuracy: dir.summary.accuracy,
                created_at: dir.summary.created_at,
                default: pointer.default == Some(v),
                forced: dir.summary.forced,
                rollout: pointer
                    .rollout
                    .as_ref()
                    .filter(|r| r.candidate == v)
                    .map(|r| r.mode),
            })
        })
        .collect()
}

/// The table `mlops-deploy list` prints: a header, then one line per version with its notes
/// (default, forced past the gate, rolling out).
pub fn list_table(versions: &[VersionInfo]) -> String {
    let mut table = format!(
        "{:>7}  {:>8}  {:<25}  notes\n",
        "version", "accuracy", "created"
    );
    for v in versions {
        let mut notes = Vec::new();
        if v.default {
            notes.push("default".to_string());
        }
        if v.forced {
            notes.push("forced past the gate".to_string());
        }
        if let Some(mode) = v.rollout {
            notes.push(format!("rolling out: {mode}"));
        }
        let created = v.created_at.format("%Y-%m-%d %H:%M:%S UTC");
        let (version, accuracy) = (v.version, v.accuracy);
        table.push_str(&format!(
            "{version:>7}  {accuracy:>8.4}  {created:<25}  {}\n",
            notes.join(", ")
        ));
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointer(history: &[u64]) -> ModelPointer {
        ModelPointer {
            default: history.last().copied(),
            history: history.to_vec(),
            next_version: 10,
            rollout: None,
        }
    }

    #[test]
    fn a_rollout_is_finished_or_abandoned() {
        let now = Utc::now();
        let p = pointer(&[1, 2]);
        assert!(with_rollout(&pointer(&[]), 3, RolloutMode::Shadow, now).is_err());
        assert!(with_rollout(&p, 2, RolloutMode::Shadow, now).is_err());
        for bad in [0.0, 100.0, -5.0, f64::NAN] {
            let mode = RolloutMode::Canary { percent: bad };
            assert!(with_rollout(&p, 3, mode, now).is_err(), "{bad}");
        }
        let canary = with_rollout(&p, 3, RolloutMode::Canary { percent: 10.0 }, now).unwrap();
        assert_eq!(canary.default, Some(2), "a canary leaves the default");
        let done = finished(&canary).unwrap();
        assert_eq!(
            (done.default, done.history.clone()),
            (Some(3), vec![1, 2, 3])
        );
        assert!(done.rollout.is_none() && finished(&done).is_none());
        let abandoned = rolled_back(&canary).unwrap();
        assert_eq!(
            abandoned, p,
            "rollback during a rollout only ends the rollout"
        );
        assert!(promoted(&canary, 3).rollout.is_none());
    }

    #[test]
    fn promote_and_rollback_walk_the_history() {
        let p = promoted(&promoted(&ModelPointer::default(), 1), 3);
        assert_eq!((p.default, p.history.clone()), (Some(3), vec![1, 3]));
        assert_eq!(promoted(&p, 3), p, "promoting the default changes nothing");
        let back = rolled_back(&p).unwrap();
        assert_eq!((back.default, back.history.clone()), (Some(1), vec![1]));
        assert!(rolled_back(&back).is_none());
    }

    #[test]
    fn promotions_come_from_the_flags_and_changes_read_as_before() {
        let canary = RolloutMode::Canary { percent: 10.0 };
        assert_eq!(
            Promotion::from_flags(Some(2), None, false, false).unwrap(),
            Promotion::Default(2)
        );
        assert_eq!(
            Promotion::from_flags(Some(2), Some(10.0), false, false).unwrap(),
            Promotion::Rollout(2, canary)
        );
        assert_eq!(
            Promotion::from_flags(Some(2), None, true, false).unwrap(),
            Promotion::Rollout(2, RolloutMode::Shadow)
        );
        assert_eq!(
            Promotion::from_flags(None, None, false, true).unwrap(),
            Promotion::Finish
        );
        assert!(Promotion::from_flags(None, None, false, false).is_err());
        let name = "m".to_string();
        let lines = [
            Change::Default {
                name: name.clone(),
                version: 3,
            },
            Change::RolloutStarted {
                name: name.clone(),
                version: 4,
                mode: RolloutMode::Shadow,
            },
            Change::RolloutAbandoned {
                name: name.clone(),
                candidate: 4,
                default: 3,
            },
            Change::RolledBack { name, version: 2 },
        ]
        .map(|c| c.to_string());
        assert_eq!(
            lines,
            [
                "m now serves version 3 by default".to_string(),
                format!("m rolls out version 4: {}", RolloutMode::Shadow),
                "m rollout of version 4 abandoned; version 3 stays the default".into(),
                "m rolled back to version 2".into(),
            ]
        );
    }

    #[test]
    fn the_list_table_has_a_header_and_a_line_per_version() {
        let created = "2024-05-06T07:08:09Z".parse().unwrap();
        let v = |version, default, forced, rollout| VersionInfo {
            version,
            accuracy: 0.5,
            created_at: created,
            default,
            forced,
            rollout,
        };
        let table = list_table(&[
            v(1, true, false, None),
            v(2, false, true, Some(RolloutMode::Shadow)),
        ]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "version  accuracy  created                    notes"
        );
        assert_eq!(
            lines[1],
            "      1    0.5000  2024-05-06 07:08:09 UTC    default"
        );
        assert_eq!(
            lines[2],
            format!(
                "      2    0.5000  2024-05-06 07:08:09 UTC    forced past the gate, rolling out: {}",
                RolloutMode::Shadow
            )
        );
        assert!(table.ends_with('\n'));
    }

    #[test]
    fn prune_keeps_newest_default_and_previous() {
        let versions = [1, 2, 3, 4, 5, 6, 7];
        assert_eq!(prune_plan(&versions, &pointer(&[2, 4]), 3), vec![1, 3]);
        assert_eq!(prune_plan(&versions, &pointer(&[7]), 3), vec![1, 2, 3, 4]);
        assert!(prune_plan(&versions, &pointer(&[]), 10).is_empty());
        assert_eq!(prune_plan(&versions, &pointer(&[]), 0), versions.to_vec());
    }
}
