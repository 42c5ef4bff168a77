//! The embed stage's output format, shared by the stages that read it (index, eval) so that
//! they need not link libtorch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use serde::{Deserialize, Serialize};

use crate::{npy, Error, FileEntry, Manifest, Result};

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

    /// Whether the embed stage wrote embeddings for `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.role(role).is_ok()
    }

    /// Manifest entries (path under this directory, sha256 recorded by the embed stage) of the
    /// embed manifest and of every shard of `roles`: what a later stage lists as its inputs.
    pub fn input_entries(&self, roles: &[&str]) -> Result<Vec<FileEntry>> {
        let mut names = Vec::new();
        for role in roles {
            for shard in &self.role(role)?.shards {
                names.extend([shard.embeddings.as_str(), shard.labels.as_str()]);
            }
        }
        self.manifest.input_entries(&self.dir, names)
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
                self.manifest.verified_output(&self.dir, name)?;
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

/// Writes a synthetic embed-stage directory for tests and benchmarks: `classes` clusters of
/// unit vectors of dimension `dim` (noise `spread` around random centres), `per_class` vectors
/// per class in each of `roles`, one shard per role. Deterministic in `seed`.
pub fn write_clusters(
    dir: &Path,
    dim: usize,
    per_class: usize,
    classes: usize,
    roles: &[&str],
    spread: f32,
    seed: u64,
) -> Result<Manifest> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect())
        .collect();
    let mut out = crate::OutputDir::create(dir)?;
    let mut manifest = Manifest::begin(EMBED_STAGE, "fixture", &());
    let mut summary_roles = BTreeMap::new();
    for role in roles {
        let n = per_class * classes;
        let mut values = Vec::with_capacity(n * dim);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let c = i % classes;
            let mut v: Vec<f32> = centres[c]
                .iter()
                .map(|x| x + rng.random_range(-spread..=spread))
                .collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter_mut().for_each(|x| *x /= norm);
            values.extend(v);
            labels.push(c as i64);
        }
        let e = out.write_npy(
            &format!("{role}_embeddings_000.npy"),
            &Array2::from_shape_vec((n, dim), values).expect("n * dim values"),
        )?;
        let l = out.write_npy(&format!("{role}_labels_000.npy"), &Array1::from_vec(labels))?;
        summary_roles.insert(
            role.to_string(),
            EmbeddedRole {
                rows: n,
                shards: vec![EmbeddingShard {
                    embeddings: e.path.clone(),
                    labels: l.path.clone(),
                    rows: n,
                }],
            },
        );
        manifest.outputs.extend([e, l]);
    }
    let summary = EmbedSummary {
        dim,
        classes: (0..classes).map(|c| format!("class{c}")).collect(),
        roles: summary_roles,
        device: "Cpu".into(),
        images_per_second: 0.0,
    };
    manifest.summary = serde_json::to_value(summary).expect("plain data");
    out.commit(manifest)
}
