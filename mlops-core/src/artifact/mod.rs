//! The artifact contract: every stage's output directory as a type, with its file names, the
//! schema of its manifest `summary`, and a reader.
//!
//! Stages meet only here. A stage opens its inputs with [`StageDir::open`] (which checks that the
//! directory holds a finished manifest of the right stage and parses its summary), reads files
//! through [`StageDir::verified`] (checksum against the manifest first) and records what it
//! consumed with [`StageDir::input_entries`].
//!
//! | directory of | type            | summary               | files                                   |
//! |--------------|-----------------|-----------------------|-----------------------------------------|
//! | `data`       | [`DataDir`]     | [`DataSummary`]       | `<role>_images_NNN.npy`, `<role>_labels_NNN.npy`, `classes.json` |
//! | `train`      | [`ModelDir`]    | [`TrainSummary`]      | `model.pt`, `model.json` ([`ModelDescription`]) |
//! | `embed`      | [`EmbeddingsDir`] | [`EmbedSummary`]    | `<role>_embeddings_NNN.npy`, `<role>_labels_NNN.npy` |
//! | `index`      | [`IndexDir`]    | [`IndexSummary`]      | `index.faiss`, `labels.npy`             |
//! | `eval`       | [`EvalDir`]     | [`EvalSummary`]       | `metrics.json`, `decision.json`, ...    |
//! | registry version | [`VersionDir`] | [`VersionSummary`] | all of the above a server needs       |
//!
//! Every directory also holds `manifest.json` (written last) and `config.json`, the settings of
//! the run that produced it.

pub mod data;
pub mod embeddings;
pub mod eval;
pub mod index;
pub mod model;
pub mod registry;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::{Error, FileEntry, Manifest, OutputDir, Result, MANIFEST_FILE};

pub use data::{DataDir, DataSummary, Normalization, Role, RoleSummary, ShardPair};
pub use embeddings::{EmbedSummary, EmbeddedRole, EmbeddingShard, EmbeddingsDir};
pub use eval::{
    ClassifierSpec, Decision, EvalDir, EvalSummary, GatePolicy, Metrics, PairedComparison, Scoring,
    SimilarityBaseline, Vote,
};
pub use index::{IndexDir, IndexSummary, Metric};
pub use model::{ModelDescription, ModelDir, TeacherLineage, TrainSummary};
pub use registry::{ModelPointer, Rollout, RolloutMode, VersionDir, VersionSummary};

/// File holding the settings a stage ran with, in every stage directory.
pub const CONFIG_FILE: &str = "config.json";
/// File holding the class names in label order (data, embed and index directories).
pub const CLASSES_FILE: &str = "classes.json";

/// The `summary` a stage writes into its manifest, tied to the stage's name.
pub trait StageSummary: DeserializeOwned {
    /// The stage's name in manifests.
    const STAGE: &'static str;
}

/// A finished stage output opened for reading: its directory, manifest and typed summary.
#[derive(Debug, Clone)]
pub struct StageDir<S> {
    /// The stage's output directory, as it was opened; file names in the manifest are
    /// relative to it.
    pub dir: PathBuf,
    /// The finished manifest read from the directory.
    pub manifest: Manifest,
    /// The manifest's `summary`, parsed as the stage's type.
    pub summary: S,
}

impl<S: StageSummary> StageDir<S> {
    /// Opens the output directory of stage `S::STAGE`: fails when it holds no finished manifest,
    /// the manifest of another stage, or a summary that does not parse.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load_stage(dir, S::STAGE)?;
        let summary = manifest.summary_as(dir)?;
        Ok(StageDir {
            dir: dir.to_path_buf(),
            manifest,
            summary,
        })
    }
}

impl<S> StageDir<S> {
    /// The path of output `name` after checking that the manifest lists it and that its
    /// checksum matches: the only way a stage should read a file of another stage.
    pub fn verified(&self, name: &str) -> Result<PathBuf> {
        self.manifest.verified_output(&self.dir, name)?;
        Ok(self.dir.join(name))
    }

    /// Reads output `name` (checksum verified) as JSON.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let path = self.verified(name)?;
        let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        serde_json::from_slice(&text).map_err(|source| Error::Json { path, source })
    }

    /// [`StageDir::verified`] for an output the directory may or may not hold: `None` when its
    /// manifest does not list `name`.
    pub fn verified_if_listed(&self, name: &str) -> Result<Option<PathBuf>> {
        match self.manifest.output(name) {
            Some(_) => self.verified(name).map(Some),
            None => Ok(None),
        }
    }

    /// What a consuming stage lists among its inputs: this manifest, then the outputs `names`
    /// with their paths under this directory and the sha256 recorded here.
    pub fn input_entries<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<FileEntry>> {
        self.manifest.input_entries(&self.dir, names)
    }

    /// Copies output `name` into `out` unchanged when this directory lists it, checking its
    /// checksum before and after the copy: the entry a consuming stage records among its
    /// inputs (path under this directory) and the one among its outputs. `None` when `name`
    /// is not listed.
    pub fn carry(&self, name: &str, out: &mut OutputDir) -> Result<Option<(FileEntry, FileEntry)>> {
        let Some(listed) = self.manifest.output(name).cloned() else {
            return Ok(None);
        };
        let from = self.verified(name)?;
        let to = out.staged_path(name);
        std::fs::copy(&from, &to).map_err(|e| Error::io(&to, e))?;
        let copied = out.adopt(name)?;
        if copied.sha256 != listed.sha256 {
            return Err(Error::Checksum {
                path: from,
                expected: listed.sha256,
                actual: copied.sha256,
            });
        }
        let input = FileEntry {
            path: from.display().to_string(),
            ..listed.clone()
        };
        let output = FileEntry {
            shape: listed.shape,
            dtype: listed.dtype,
            ..copied
        };
        Ok(Some((input, output)))
    }

    /// An error about this directory's manifest.
    pub fn invalid(&self, message: impl Into<String>) -> Error {
        Error::invalid(self.dir.join(MANIFEST_FILE), message)
    }
}
