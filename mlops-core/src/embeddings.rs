//! The embed stage's output format, shared by the stages that read it (index, eval) so that
//! they need not link libtorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::{npy, Error, Manifest, Result};

/// Name of the embed stage in manifests.
pub const EMBED_STAGE: &str = "embed";

/// One shard of embeddings with its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingShard {
    pub embeddings: String,
    pub labels: String,
    pub rows: usize,
}

/// One embedded role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedRole {
    pub rows: usize,
    pub shards: Vec<EmbeddingShard>,
}

/// The embed stage's `summary` in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedSummary {
    pub dim: usize,
    pub classes: Vec<String>,
    pub roles: BTreeMap<String, EmbeddedRole>,
    pub device: String,
    pub images_per_second: f64,
}

/// A finished embed-stage output opened for reading.
#[derive(Debug, Clone)]
pub struct EmbeddingsDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub summary: EmbedSummary,
}

impl EmbeddingsDir {
    /// Opens the output directory of `mlops-embed`.
    pub fn open(dir: &Path) -> Result<Self> {
        let manifest = Manifest::load_stage(dir, EMBED_STAGE)?;
        let summary = manifest.summary_as(dir)?;
        Ok(EmbeddingsDir {
            dir: dir.to_path_buf(),
            manifest,
            summary,
        })
    }

    /// The shards of `role`, or an error naming the manifest when it was not embedded.
    pub fn role(&self, role: &str) -> Result<&EmbeddedRole> {
        match self.summary.roles.get(role) {
            Some(r) if r.rows > 0 => Ok(r),
            _ => Err(Error::invalid(
                self.dir.join(crate::MANIFEST_FILE),
                format!("has no {role} embeddings (embed with --roles ...,{role})"),
            )),
        }
    }

    /// Reads every shard of `role` (checksums verified against the manifest) into one
    /// `[n, dim]` matrix and its aligned labels, checking dimension and alignment.
    pub fn read_role(&self, role: &str) -> Result<(Array2<f32>, Array1<i64>)> {
        let r = self.role(role)?;
        let dim = self.summary.dim;
        let mut values = Vec::with_capacity(r.rows * dim);
        let mut labels = Vec::with_capacity(r.rows);
        for shard in &r.shards {
            for name in [&shard.embeddings, &shard.labels] {
                let entry = self.manifest.output(name).ok_or_else(|| {
                    Error::invalid(self.dir.join(name), "not listed in the embed manifest")
                })?;
                self.manifest.verify_output(&self.dir, entry)?;
            }
            let e: Array2<f32> = npy::read(&self.dir.join(&shard.embeddings))?;
            let l: Array1<i64> = npy::read(&self.dir.join(&shard.labels))?;
            if e.ncols() != dim {
                return Err(Error::invalid(
                    self.dir.join(&shard.embeddings),
                    format!(
                        "embeddings have dimension {}, the manifest says {dim}",
                        e.ncols()
                    ),
                ));
            }
            if e.nrows() != l.len() || l.len() != shard.rows {
                return Err(Error::invalid(
                    self.dir.join(&shard.labels),
                    format!(
                        "labels not aligned with embeddings: {} labels, {} embeddings, manifest says {}",
                        l.len(),
                        e.nrows(),
                        shard.rows
                    ),
                ));
            }
            values.extend(e.iter().copied());
            labels.extend(l.iter().copied());
        }
        let n = labels.len();
        let matrix = Array2::from_shape_vec((n, dim), values).expect("rows checked above");
        Ok((matrix, Array1::from_vec(labels)))
    }
}
