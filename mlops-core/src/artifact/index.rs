//! The index stage's output: a FAISS index over the gallery and the labels of its ids.

use ndarray::Array1;
use serde::{Deserialize, Serialize};

use super::{StageDir, StageSummary};
use crate::{npy, Error, FileEntry, Result};

/// The index file, in FAISS's own format (Python's `faiss.read_index` reads it).
pub const INDEX_FILE: &str = "index.faiss";
/// Labels aligned with index ids: `labels.npy[i]` is the class of vector `i`.
pub const LABELS_FILE: &str = "labels.npy";
/// The gallery's images aligned with index ids (`uint8 [n, c, h, w]`, 0-255): what a server
/// shows as the evidence of a prediction. Absent where the data was not at hand.
pub const GALLERY_IMAGES_FILE: &str = "gallery_images.npy";

/// Similarity used by the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Inner product: cosine similarity on the L2-normalised embeddings.
    #[serde(alias = "inner-product", alias = "ip")]
    InnerProduct,
    /// Squared Euclidean distance, turned back into a cosine (`1 - d/2`) for unit vectors.
    #[serde(alias = "L2")]
    L2,
}

// Parsed (command lines, settings) by the names serde writes, aliases included.
serde_plain::derive_fromstr_from_deserialize!(Metric);

impl Metric {
    /// A similarity (higher is nearer) from what the index returns for this metric.
    pub fn similarity(self, distance: f32) -> f32 {
        match self {
            Metric::InnerProduct => distance,
            // Squared L2 distance between unit vectors is 2 - 2cos: map it back to a cosine.
            Metric::L2 => 1.0 - distance / 2.0,
        }
    }
}

/// Agreement of an approximate index with exact search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recall {
    /// Neighbours compared per query (the configured `recall_k`, capped at the index size).
    pub k: usize,
    /// Queries the recall was measured on (test embeddings when embedded, else gallery ones).
    pub queries: usize,
    /// Mean fraction of the exact top-k found in the approximate top-k.
    pub recall_at_k: f64,
}

/// The index stage's `summary` in its manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexSummary {
    /// The FAISS `index_factory` string the index was built from (`Flat`, `IVF256,Flat`, ...).
    pub factory: String,
    /// Similarity the index searches by.
    pub metric: Metric,
    /// Length of the indexed vectors.
    pub dim: usize,
    /// Vectors in the index: index id `i` is row `i` of the indexed role.
    pub ntotal: usize,
    /// Class names, indexed by the labels in [`LABELS_FILE`].
    pub classes: Vec<String>,
    /// IVF lists visited per query, applied whenever the index is loaded; `None` leaves
    /// FAISS's default.
    pub nprobe: Option<usize>,
    /// HNSW candidate list size at search time, applied whenever the index is loaded; `None`
    /// leaves FAISS's default.
    pub ef_search: Option<usize>,
    /// Vectors sampled to train the index; 0 for index types that need no training.
    pub trained_on: usize,
    /// recall@k of this index against an exact one, for approximate indexes.
    pub recall: Option<Recall>,
    /// Wall-clock seconds spent training the index and adding the vectors.
    pub build_seconds: f64,
}

impl StageSummary for IndexSummary {
    const STAGE: &'static str = "index";
}

/// A finished index-stage output (the FAISS file itself is loaded by `mlops-index`).
pub type IndexDir = StageDir<IndexSummary>;

impl StageDir<IndexSummary> {
    /// The path of `index.faiss` after verifying its checksum.
    pub fn index_path(&self) -> Result<std::path::PathBuf> {
        self.verified(INDEX_FILE)
    }

    /// The labels of the index ids (checksum verified, one per indexed vector).
    pub fn labels(&self) -> Result<Array1<i64>> {
        let path = self.verified(LABELS_FILE)?;
        let labels: Array1<i64> = npy::read(&path)?;
        if labels.len() != self.summary.ntotal {
            return Err(Error::invalid(
                path,
                format!(
                    "{} labels for {} indexed vectors",
                    labels.len(),
                    self.summary.ntotal
                ),
            ));
        }
        Ok(labels)
    }

    /// Input entries for a stage that searches the index: the manifest, the index and labels.
    pub fn index_input_entries(&self) -> Result<Vec<FileEntry>> {
        self.input_entries([INDEX_FILE, LABELS_FILE])
    }
}
