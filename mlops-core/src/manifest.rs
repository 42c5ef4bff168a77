use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{sha256_file, Error, Result};

/// File name of every stage's manifest inside its output directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// One file a stage consumed or produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Outputs: relative to the stage's output directory. Inputs: as given to the stage.
    pub path: String,
    /// Hex sha256 of the file's content; for a directory, its tree digest
    /// (see [`crate::sha256_tree`]).
    pub sha256: String,
    /// Size of the file in bytes; 0 for a directory.
    pub bytes: u64,
    /// For arrays: the shape.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// For arrays: numpy's name of the element type (`float32`, `int64`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
    /// For directories recorded as one input: how many files the digest covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<usize>,
}

impl FileEntry {
    /// Records an input file by path and content hash.
    pub fn input_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        Ok(FileEntry {
            path: path.display().to_string(),
            sha256: sha256_file(path)?,
            bytes,
            shape: None,
            dtype: None,
            files: None,
        })
    }

    /// Records an input directory by its tree digest (see [`crate::sha256_tree`]).
    pub fn input_tree(path: &Path) -> Result<Self> {
        let (sha256, files) = crate::sha256_tree(path)?;
        Ok(FileEntry {
            path: path.display().to_string(),
            sha256,
            bytes: 0,
            shape: None,
            dtype: None,
            files: Some(files),
        })
    }
}

/// What a stage did: its parameters, every input and output with checksums, and timings.
///
/// Written last into the output directory, so its presence means the stage finished.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// Name of the stage that wrote it (`data`, `train`, ..., `register`).
    pub stage: String,
    /// Version of the crate that ran the stage.
    pub crate_version: String,
    /// The stage's full configuration as JSON (`null` if it did not serialise).
    pub parameters: serde_json::Value,
    /// Files the stage read, with their checksums at the time.
    pub inputs: Vec<FileEntry>,
    /// Files the stage wrote into its output directory.
    pub outputs: Vec<FileEntry>,
    /// Stage-specific results (class names, split sizes, metrics, ...).
    #[serde(default)]
    pub summary: serde_json::Value,
    /// When the stage began (UTC).
    pub started_at: DateTime<Utc>,
    /// When the manifest was committed (UTC); `None` until then.
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds from `started_at` to `finished_at` (0 until finished).
    #[serde(default)]
    pub duration_s: f64,
}

impl Manifest {
    /// Starts a manifest, stamping the start time.
    pub fn begin(stage: &str, crate_version: &str, parameters: &impl Serialize) -> Self {
        Manifest {
            stage: stage.to_string(),
            crate_version: crate_version.to_string(),
            parameters: serde_json::to_value(parameters).unwrap_or(serde_json::Value::Null),
            inputs: Vec::new(),
            outputs: Vec::new(),
            summary: serde_json::Value::Null,
            started_at: Utc::now(),
            finished_at: None,
            duration_s: 0.0,
        }
    }

    /// Stamps the end time and duration.
    pub fn finish(&mut self) {
        let now = Utc::now();
        self.duration_s = (now - self.started_at).num_microseconds().unwrap_or(0) as f64 / 1e6;
        self.finished_at = Some(now);
    }

    /// Reads `dir/manifest.json`. A missing manifest means the stage never finished there.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::invalid(
                    &path,
                    "no manifest: the directory is not the output of a finished stage",
                )
            } else {
                Error::io(&path, e)
            }
        })?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path, source })
    }

    /// Like [`Manifest::load`], and checks the manifest was written by `stage`.
    pub fn load_stage(dir: &Path, stage: &str) -> Result<Self> {
        let manifest = Self::load(dir)?;
        if manifest.stage != stage {
            return Err(Error::invalid(
                dir.join(MANIFEST_FILE),
                format!(
                    "written by stage '{}', expected the output of stage '{stage}'",
                    manifest.stage
                ),
            ));
        }
        Ok(manifest)
    }

    /// Finds an output entry by its relative path.
    pub fn output(&self, path: &str) -> Option<&FileEntry> {
        self.outputs.iter().find(|e| e.path == path)
    }

    /// The output `name` of this manifest (the one in the stage directory `dir`), or an error
    /// naming the file when the manifest does not list it.
    pub fn listed_output(&self, dir: &Path, name: &str) -> Result<&FileEntry> {
        self.output(name).ok_or_else(|| {
            Error::invalid(
                dir.join(name),
                format!("not listed in {}", dir.join(MANIFEST_FILE).display()),
            )
        })
    }

    /// [`Manifest::listed_output`], with the file's checksum verified.
    pub fn verified_output(&self, dir: &Path, name: &str) -> Result<&FileEntry> {
        let entry = self.listed_output(dir, name)?;
        self.verify_output(dir, entry)?;
        Ok(entry)
    }

    /// What a later stage records as its inputs when it consumes the outputs `names` of the
    /// stage directory `dir`: this manifest's file, then each output with its path under `dir`
    /// and the sha256 recorded here.
    pub fn input_entries<'a>(
        &self,
        dir: &Path,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<FileEntry>> {
        let mut entries = vec![FileEntry::input_file(&dir.join(MANIFEST_FILE))?];
        for name in names {
            entries.push(FileEntry {
                path: dir.join(name).display().to_string(),
                ..self.listed_output(dir, name)?.clone()
            });
        }
        Ok(entries)
    }

    /// Recomputes the sha256 of one output (relative to `dir`) and compares it with the manifest.
    pub fn verify_output(&self, dir: &Path, entry: &FileEntry) -> Result<()> {
        let path = dir.join(&entry.path);
        let actual = sha256_file(&path)?;
        if actual != entry.sha256 {
            return Err(Error::Checksum {
                path,
                expected: entry.sha256.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Verifies every output's checksum, stopping at the first mismatch.
    pub fn verify_outputs(&self, dir: &Path) -> Result<()> {
        self.outputs
            .iter()
            .try_for_each(|entry| self.verify_output(dir, entry))
    }

    /// Reads this manifest's summary as a typed struct.
    pub fn summary_as<T: serde::de::DeserializeOwned>(&self, dir: &Path) -> Result<T> {
        serde_json::from_value(self.summary.clone()).map_err(|source| Error::Json {
            path: dir.join(MANIFEST_FILE),
            source,
        })
    }
}
