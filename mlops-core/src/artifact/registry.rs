//! The model registry: `REGISTRY/NAME/<version>/` directories, each a self-contained deployable
//! model (TorchScript model, its description, the index, its labels, the evaluation that
//! admitted it), and `REGISTRY/NAME/registry.json`, the pointer to the default version.
//!
//! A version directory is a stage directory like the others (stage `register`): its manifest
//! lists every file with its sha256 and the source manifests it was copied from, so a server
//! refuses a version whose files changed. The pointer file is replaced atomically (write and
//! rename), so a reader sees the old or the new default, never a torn one.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::eval::{ClassifierSpec, Decision};
use super::index::IndexSummary;
use super::model::{ModelDescription, MODEL_DESCRIPTION_FILE, MODEL_FILE};
use super::{StageDir, StageSummary};
use crate::{Error, Result};

/// Per-model pointer file: default version, promotion history, next version number.
pub const POINTER_FILE: &str = "registry.json";
/// The lock file that serialises changes to a registry.
pub const LOCK_FILE: &str = ".lock";

/// Whether `name` may name a model: 1-64 of `[A-Za-z0-9._-]`, starting alphanumeric (so never
/// `.`, `..`, a hidden file or a path).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Which version of a model is served by default, and which were before.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelPointer {
    /// The default version, once one was promoted.
    pub default: Option<u64>,
    /// Promoted versions, oldest first; the last is the default. `rollback` pops it.
    pub history: Vec<u64>,
    /// The number the next registered version gets (versions never repeat, even after prune).
    pub next_version: u64,
    /// A candidate being rolled out beside the default (absent in pointers written before
    /// rollouts existed, and whenever none runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
}

/// A candidate version served beside the default until `promote --finish` makes it the
/// default or `rollback` abandons it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// The candidate version.
    pub candidate: u64,
    /// How the candidate takes part.
    #[serde(flatten)]
    pub mode: RolloutMode,
    /// When the rollout began (UTC).
    pub started_at: DateTime<Utc>,
}

/// How a candidate takes part in a model's unversioned traffic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum RolloutMode {
    /// The candidate answers `percent` of the requests (0 < percent < 100); a request with an
    /// id always goes the same way.
    Canary {
        /// Share of the unversioned requests the candidate answers, in percent.
        percent: f64,
    },
    /// The candidate predicts beside the default on every request; the default answers, and
    /// the server counts how often the two agree.
    Shadow,
}

impl std::fmt::Display for RolloutMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RolloutMode::Canary { percent } => write!(f, "canary at {percent}%"),
            RolloutMode::Shadow => f.write_str("shadow"),
        }
    }
}

impl ModelPointer {
    /// The version promoted before the default, which a rollback returns to.
    pub fn previous(&self) -> Option<u64> {
        let n = self.history.len();
        (n >= 2).then(|| self.history[n - 2])
    }
}

/// What makes two versions the same model: what a client sends (input shape and preprocessing)
/// and what it gets back (the class names, in order, and the embedding size). The registry
/// refuses a version whose signature differs from the model's it is registered under, so a
/// model trained on another data set can never replace one that answers another question.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSignature {
    /// Class names in label order.
    pub classes: Vec<String>,
    /// `[channels, height, width]` of one input image.
    pub input_shape: [usize; 3],
    /// How pixels are preprocessed: `unit` (`[0, 1]`) or `standardised` (training mean/std).
    pub preprocessing: String,
    /// Length of the embedding the model returns.
    pub embedding_dim: usize,
}

impl ModelSignature {
    /// The signature of a model from its description (`model.json`), so versions registered
    /// before signatures existed have one too.
    pub fn of(description: &ModelDescription) -> Self {
        ModelSignature {
            classes: description.classes.clone(),
            input_shape: description.input_shape,
            preprocessing: if description.normalization.is_some() {
                "standardised".into()
            } else {
                "unit".into()
            },
            embedding_dim: description.embedding_dim,
        }
    }

    /// How `candidate` differs from `self`, one clause per difference; empty when they match.
    pub fn differences(&self, candidate: &ModelSignature) -> Vec<String> {
        let mut out = Vec::new();
        if self.classes != candidate.classes {
            out.push(format!(
                "classes {:?} (registered) against {:?} (candidate)",
                self.classes, candidate.classes
            ));
        }
        if self.input_shape != candidate.input_shape {
            out.push(format!(
                "input shape {:?} against {:?}",
                self.input_shape, candidate.input_shape
            ));
        }
        if self.preprocessing != candidate.preprocessing {
            out.push(format!(
                "preprocessing {} against {}",
                self.preprocessing, candidate.preprocessing
            ));
        }
        if self.embedding_dim != candidate.embedding_dim {
            out.push(format!(
                "embedding size {} against {}",
                self.embedding_dim, candidate.embedding_dim
            ));
        }
        out
    }
}

/// The `summary` of a registered version's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionSummary {
    /// The model name the version is registered under.
    pub name: String,
    /// The version number: its directory's name, unique within the model and never reused.
    pub version: u64,
    /// When the version was registered (UTC).
    pub created_at: DateTime<Utc>,
    /// Test accuracy the eval stage measured.
    pub accuracy: f64,
    /// The deploy gate's decision on it.
    pub decision: Decision,
    /// Registered although the gate rejected it (`--force`).
    pub forced: bool,
    /// How the server classifies: eval's k and vote.
    pub classifier: ClassifierSpec,
    /// The index stage's record (metric, search parameters) for loading `index.faiss`.
    pub index: IndexSummary,
    /// The model's identity (absent in versions registered before it was recorded: read it
    /// with [`StageDir::signature`], which falls back to `model.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<ModelSignature>,
}

impl StageSummary for VersionSummary {
    const STAGE: &'static str = "register";
}

/// A registered model version.
pub type VersionDir = StageDir<VersionSummary>;

impl StageDir<VersionSummary> {
    /// Opens version `version` of `name` and verifies every file against its manifest, naming
    /// the first file that fails.
    pub fn open_verified(registry: &Path, name: &str, version: u64) -> Result<Self> {
        let dir = Self::open(&version_dir(registry, name, version)?)?;
        dir.manifest.verify_outputs(&dir.dir)?;
        Ok(dir)
    }

    /// The model's description (checksum verified).
    pub fn description(&self) -> Result<ModelDescription> {
        self.read_json(MODEL_DESCRIPTION_FILE)
    }

    /// The model's signature: recorded at registration, or derived from `model.json` for
    /// versions registered before signatures were.
    pub fn signature(&self) -> Result<ModelSignature> {
        match &self.summary.signature {
            Some(s) => Ok(s.clone()),
            None => Ok(ModelSignature::of(&self.description()?)),
        }
    }

    /// The test set's similarity baseline carried from the evaluation; `None` for versions
    /// registered before it was recorded.
    pub fn similarity_baseline(&self) -> Result<Option<super::SimilarityBaseline>> {
        match self.verified_if_listed(super::eval::SIMILARITY_BASELINE_FILE)? {
            Some(_) => self
                .read_json(super::eval::SIMILARITY_BASELINE_FILE)
                .map(Some),
            None => Ok(None),
        }
    }

    /// The path of `model.pt` (checksum verified).
    pub fn model_path(&self) -> Result<PathBuf> {
        self.verified(MODEL_FILE)
    }

    /// The version's index as an index directory (its files are listed in this manifest).
    pub fn index_dir(&self) -> super::IndexDir {
        StageDir {
            dir: self.dir.clone(),
            manifest: self.manifest.clone(),
            summary: self.summary.index.clone(),
        }
    }
}

/// `registry/name`, after checking that `name` is a valid model name.
pub fn model_dir(registry: &Path, name: &str) -> Result<PathBuf> {
    if !valid_name(name) {
        return Err(Error::invalid(
            registry,
            format!("{name:?} is not a valid model name (1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)"),
        ));
    }
    Ok(registry.join(name))
}

/// `registry/name/version`.
pub fn version_dir(registry: &Path, name: &str, version: u64) -> Result<PathBuf> {
    Ok(model_dir(registry, name)?.join(version.to_string()))
}

/// The pointer of model `name` (the default when the model has none yet).
pub fn read_pointer(registry: &Path, name: &str) -> Result<ModelPointer> {
    let path = model_dir(registry, name)?.join(POINTER_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| Error::Json { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ModelPointer::default()),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// The deployed version a paired comparison is made with, from either a version directory
/// (`REGISTRY/NAME/V`, itself) or a model directory (`REGISTRY/NAME`, its default version, so a
/// pipeline whose steps cannot read the pointer themselves, Kubeflow's, can name it). `None`
/// when the model directory does not exist yet or has no default: there is nothing deployed to
/// compare with.
pub fn deployed_version(path: &Path) -> Result<Option<PathBuf>> {
    if path.join(POINTER_FILE).is_file() {
        let pointer_path = path.join(POINTER_FILE);
        let bytes = std::fs::read(&pointer_path).map_err(|e| Error::io(&pointer_path, e))?;
        let pointer: ModelPointer =
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                path: pointer_path,
                source,
            })?;
        return Ok(pointer.default.map(|v| path.join(v.to_string())));
    }
    if path.join(crate::MANIFEST_FILE).is_file() {
        return Ok(Some(path.to_path_buf()));
    }
    if !path.exists() || path.read_dir().is_ok_and(|mut d| d.next().is_none()) {
        return Ok(None);
    }
    Err(Error::invalid(
        path,
        "neither a registry version (no manifest.json) nor a registry model (no registry.json)",
    ))
}

/// The models in a registry (directories with a valid name), sorted.
pub fn models(registry: &Path) -> Result<Vec<String>> {
    let entries = std::fs::read_dir(registry).map_err(|e| Error::io(registry, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(registry, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() && valid_name(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The registered versions of `name` (directories whose name is a number and that hold a
/// finished manifest), ascending.
pub fn versions(registry: &Path, name: &str) -> Result<Vec<u64>> {
    let dir = model_dir(registry, name)?;
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(&dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let Ok(v) = entry.file_name().to_string_lossy().parse::<u64>() else {
            continue;
        };
        if entry.path().join(crate::MANIFEST_FILE).is_file() {
            found.push(v);
        }
    }
    found.sort_unstable();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_registry() {
        for bad in [
            "",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "../x",
            "name with space",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(model_dir(Path::new("/r"), bad).is_err());
        }
        for good in ["fashion", "Fashion-MNIST_2.0", "7"] {
            assert!(valid_name(good), "{good:?}");
        }
    }

    #[test]
    fn signatures_name_what_differs() {
        let a = ModelSignature {
            classes: vec!["shirt".into(), "shoe".into()],
            input_shape: [1, 28, 28],
            preprocessing: "unit".into(),
            embedding_dim: 128,
        };
        assert!(a.differences(&a.clone()).is_empty());
        let mut b = a.clone();
        b.classes = vec!["cat".into(), "dog".into()];
        b.embedding_dim = 64;
        let d = a.differences(&b);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(
            d[0].contains("\"shirt\"") && d[0].contains("\"dog\""),
            "{d:?}"
        );
        let mut reordered = a.clone();
        reordered.classes.reverse();
        assert_eq!(
            a.differences(&reordered).len(),
            1,
            "label order is identity"
        );
    }

    #[test]
    fn previous_is_the_one_promoted_before() {
        let p = ModelPointer {
            default: Some(5),
            history: vec![1, 3, 5],
            next_version: 6,
            rollout: None,
        };
        assert_eq!(p.previous(), Some(3));
        assert_eq!(ModelPointer::default().previous(), None);
    }

    #[test]
    fn the_deployed_version_comes_from_a_version_or_a_model_directory() {
        let t = tempfile::tempdir().unwrap();
        let model = t.path().join("m");
        assert_eq!(deployed_version(&model).unwrap(), None, "no model yet");
        std::fs::create_dir_all(model.join("3")).unwrap();
        std::fs::write(model.join("3").join(crate::MANIFEST_FILE), "{}").unwrap();
        assert!(
            deployed_version(&model).is_err(),
            "a directory of neither kind"
        );
        std::fs::write(
            model.join(POINTER_FILE),
            r#"{"default":null,"history":[],"next_version":4}"#,
        )
        .unwrap();
        assert_eq!(deployed_version(&model).unwrap(), None, "nothing promoted");
        std::fs::write(
            model.join(POINTER_FILE),
            r#"{"default":3,"history":[3],"next_version":4}"#,
        )
        .unwrap();
        assert_eq!(deployed_version(&model).unwrap(), Some(model.join("3")));
        assert_eq!(
            deployed_version(&model.join("3")).unwrap(),
            Some(model.join("3"))
        );
    }

    #[test]
    fn pointers_without_a_rollout_read_and_write_as_before() {
        let old = r#"{"default": 2, "history": [1, 2], "next_version": 3}"#;
        let p: ModelPointer = serde_json::from_str(old).unwrap();
        assert_eq!(p.rollout, None);
        assert!(!serde_json::to_string(&p).unwrap().contains("rollout"));
        let canary = ModelPointer {
            rollout: Some(Rollout {
                candidate: 3,
                mode: RolloutMode::Canary { percent: 10.0 },
                started_at: chrono::Utc::now(),
            }),
            ..p
        };
        let text = serde_json::to_string(&canary).unwrap();
        assert!(text.contains(r#""mode":"canary","percent":10.0"#), "{text}");
        assert_eq!(serde_json::from_str::<ModelPointer>(&text).unwrap(), canary);
    }
}
