//! The embed stage's output: L2-normalised embeddings per role, aligned with their labels.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use super::{StageDir, StageSummary};
use crate::{npy, Error, FileEntry, Result};

/// The role holding the test images embedded by the deployed model (`mlops-embed --baseline`),
/// for eval's paired comparison.
pub const BASELINE_TEST_ROLE: &str = "baseline_test";

/// File name of shard `shard` of `role`'s embeddings.
pub fn embeddings_file(role: &str, shard: usize) -> String {
    format!("{role}_embeddings_{shard:03}.npy")
}

/// File name of shard `shard` of `role`'s labels (a copy of the data stage's, aligned row by row).
pub fn labels_file(role: &str, shard: usize) -> String {
    format!("{role}_labels_{shard:03}.npy")
}

/// One shard of embeddings with its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingShard {
    /// File name, relative to the embeddings directory, of the `[rows, dim]` `f32` embeddings.
    pub embeddings: String,
    /// File name, relative to the embeddings directory, of the `rows` `i64` labels.
    pub labels: String,
    /// Embeddings (and labels) in this shard: the rows of the data shard it was computed from.
    pub rows: usize,
}

/// One embedded role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddedRole {
    /// Embeddings in this role, over all its shards.
    pub rows: usize,
    /// The role's shards, one per data shard, in order.
    pub shards: Vec<EmbeddingShard>,
}

/// The embed stage's `summary` in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbedSummary {
    /// Length of every embedding vector.
    pub dim: usize,
    /// Class names of the embedding model, indexed by label.
    pub classes: Vec<String>,
    /// Each embedded role, keyed by role name (a data role or [`BASELINE_TEST_ROLE`]).
    pub roles: BTreeMap<String, EmbeddedRole>,
    /// The device inference ran on, as tch prints it (`Cpu`, `Cuda(0)`).
    pub device: String,
    /// Images of the data roles embedded per second of model time (reading and writing
    /// shards excluded, the baseline not counted).
    pub images_per_second: f64,
    /// The precision inference computed in (`fp32`, `bf16`).
    #[serde(default)]
    pub precision: String,
    /// The CPU it ran on, with its bf16 flags.
    #[serde(default)]
    pub cpu: String,
    /// The registry version whose model embedded the test images as `baseline_test`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<std::path::PathBuf>,
}

impl StageSummary for EmbedSummary {
    const STAGE: &'static str = "embed";
}

/// A finished embed-stage output opened for reading.
pub type EmbeddingsDir = StageDir<EmbedSummary>;

impl StageDir<EmbedSummary> {
    /// The shards of `role`, or an error naming the manifest when it was not embedded.
    pub fn role(&self, role: &str) -> Result<&EmbeddedRole> {
        match self.summary.roles.get(role) {
            Some(r) if r.rows > 0 => Ok(r),
            _ => Err(self.invalid(format!(
                "has no {role} embeddings (embed with --roles ...,{role})"
            ))),
        }
    }

    /// Whether the embed stage wrote embeddings for `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.role(role).is_ok()
    }

    /// Manifest entries (path under this directory, sha256 recorded by the embed stage) of the
    /// embed manifest and of every shard of `roles`: what a later stage lists as its inputs.
    pub fn role_input_entries(&self, roles: &[&str]) -> Result<Vec<FileEntry>> {
        let mut names = Vec::new();
        for role in roles {
            for shard in &self.role(role)?.shards {
                names.extend([shard.embeddings.as_str(), shard.labels.as_str()]);
            }
        }
        self.input_entries(names)
    }

    /// Reads every shard of `role` (checksums verified against the manifest) into one
    /// `[n, dim]` matrix and its aligned labels, checking dimension and alignment.
    pub fn read_role(&self, role: &str) -> Result<(Array2<f32>, Array1<i64>)> {
        let r = self.role(role)?;
        let dim = self.summary.dim;
        let mut values = Vec::with_capacity(r.rows * dim);
        let mut labels = Vec::with_capacity(r.rows);
        for shard in &r.shards {
            let e: Array2<f32> = npy::read(&self.verified(&shard.embeddings)?)?;
            let l: Array1<i64> = npy::read(&self.verified(&shard.labels)?)?;
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
        let matrix = Array2::from_shape_vec((n, dim), values)
            .map_err(|e| self.invalid(format!("{role} embeddings do not stack: {e}")))?;
        Ok((matrix, Array1::from_vec(labels)))
    }
}
