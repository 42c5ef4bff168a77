//! The data stage's output: images and labels split into roles, in `.npy` shards.

use std::collections::BTreeMap;

use ndarray::{Array1, Array4};
use serde::{Deserialize, Serialize};

use super::{StageDir, StageSummary};
use crate::{npy, Error, FileEntry, Result};

/// The four roles a data set is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Trains the embedding model.
    Train,
    /// Selects the model (best epoch) and the classifier's k.
    Val,
    /// Goes into the index: the neighbours a query is classified by.
    Gallery,
    /// Held-out queries for the final evaluation.
    Test,
}

impl Role {
    /// Every role, in the order shards are written.
    pub const ALL: [Role; 4] = [Role::Train, Role::Val, Role::Gallery, Role::Test];

    /// The role's name in file names and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
            Role::Gallery => "gallery",
            Role::Test => "test",
        }
    }

    /// Position in [`Role::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// File name of shard `shard` of this role's images.
    pub fn images_file(self, shard: usize) -> String {
        format!("{}_images_{shard:03}.npy", self.as_str())
    }

    /// File name of shard `shard` of this role's labels.
    pub fn labels_file(self, shard: usize) -> String {
        format!("{}_labels_{shard:03}.npy", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

serde_plain::derive_fromstr_from_deserialize!(Role);

/// Mean and standard deviation of the training split's pixels (values in `[0,1]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean pixel value of the training split, in `[0,1]`.
    pub mean: f32,
    /// Standard deviation of the training split's pixels, in `[0,1]` units (1.0 for a
    /// constant image set, which is left unscaled).
    pub std: f32,
}

/// How 8-bit pixels become model inputs: `value = pixel * scale + shift`.
///
/// The data stage and every consumer of raw images (a server decoding a PNG) use this one
/// mapping, so a served image reaches the model exactly as the same image in a shard did.
pub fn pixel_scale_shift(normalization: Option<Normalization>) -> (f32, f32) {
    match normalization {
        Some(n) => (1.0 / (255.0 * n.std), -n.mean / n.std),
        None => (1.0 / 255.0, 0.0),
    }
}

/// One shard: an images file and its labels file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPair {
    /// File name, relative to the data directory, of the `[rows, channels, height, width]`
    /// `f32` images.
    pub images: String,
    /// File name, relative to the data directory, of the `rows` `i64` labels.
    pub labels: String,
    /// Images (and labels) in this shard; at most the stage's `npy_interval`.
    pub rows: usize,
}

/// What one role holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSummary {
    /// Images in this role, over all its shards.
    pub rows: usize,
    /// The role's shards, in the order they were written.
    pub shards: Vec<ShardPair>,
    /// Images per class, indexed by label.
    pub class_counts: Vec<usize>,
}

/// Images dropped because they would leak across roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dedup {
    /// Non-test images identical to a test image.
    pub dropped_matching_test: usize,
    /// Validation images identical to a training image.
    pub dropped_val_matching_train: usize,
}

/// What one `--source` contributed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceSummary {
    /// The source path as it was given to the data stage.
    pub path: String,
    /// `idx` or `folder`.
    pub kind: String,
    /// Images read from this source (before the split and deduplication).
    pub images: usize,
    /// Images that came from an IDX test file and stay in the test role by default.
    pub designated_test: usize,
}

/// The data stage's `summary` in its manifest: everything later stages need to read the shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    /// Class names, indexed by label.
    pub classes: Vec<String>,
    /// `[channels, height, width]` of one image.
    pub image_shape: [usize; 3],
    /// Statistics applied to the pixels, if normalisation was on.
    pub normalization: Option<Normalization>,
    /// Smallest and largest value a pixel can take after preprocessing.
    pub value_range: [f32; 2],
    /// Most rows the stage wrote per `.npy` shard.
    pub npy_interval: usize,
    /// Seed the split into roles was drawn from.
    pub seed: u64,
    /// Each role's shards, keyed by [`Role::as_str`].
    pub roles: BTreeMap<String, RoleSummary>,
    /// Images dropped so that no image appears in two roles.
    pub dedup: Dedup,
    /// What each source contributed, in the order they were read.
    pub sources: Vec<SourceSummary>,
}

impl DataSummary {
    /// The summary of `role`, if it exists.
    pub fn role(&self, role: Role) -> Option<&RoleSummary> {
        self.roles.get(role.as_str())
    }
}

impl StageSummary for DataSummary {
    const STAGE: &'static str = "data";
}

/// A finished data-stage output opened for reading.
///
/// Every shard read through it is checked against the sha256 the data manifest recorded, so a
/// stage never trains on or embeds a file that changed after the data stage wrote it.
pub type DataDir = StageDir<DataSummary>;

impl StageDir<DataSummary> {
    /// The shards of `role`; an absent or empty role is an error.
    pub fn role(&self, role: Role) -> Result<&RoleSummary> {
        match self.summary.role(role) {
            Some(rs) if rs.rows > 0 && !rs.shards.is_empty() => Ok(rs),
            Some(_) => Err(self.invalid(format!("the {role} role is empty"))),
            None => Err(self.invalid(format!("the data has no {role} role"))),
        }
    }

    /// The roles this directory holds with at least one image, in [`Role::ALL`] order.
    pub fn present_roles(&self) -> Vec<Role> {
        Role::ALL
            .into_iter()
            .filter(|&r| self.role(r).is_ok())
            .collect()
    }

    /// Manifest entries of the data manifest and every shard of `roles`: what a later stage
    /// lists as its inputs.
    pub fn role_input_entries(&self, roles: &[Role]) -> Result<Vec<FileEntry>> {
        let mut names = Vec::new();
        for &role in roles {
            for pair in &self.role(role)?.shards {
                names.extend([pair.images.as_str(), pair.labels.as_str()]);
            }
        }
        self.input_entries(names)
    }

    /// Reads one shard pair after verifying both checksums and the recorded shapes.
    pub fn read_shard(&self, pair: &ShardPair) -> Result<(Array4<f32>, Array1<i64>)> {
        let images: Array4<f32> = npy::read(&self.verified(&pair.images)?)?;
        let labels: Array1<i64> = npy::read(&self.verified(&pair.labels)?)?;
        let [c, h, w] = self.summary.image_shape;
        if images.shape() != [pair.rows, c, h, w] || labels.len() != pair.rows {
            return Err(Error::invalid(
                self.dir.join(&pair.images),
                format!(
                    "shape {:?} with {} labels, the manifest says [{}, {c}, {h}, {w}]",
                    images.shape(),
                    labels.len(),
                    pair.rows
                ),
            ));
        }
        Ok((images, labels))
    }

    /// Reads a whole role into memory (images `[n,c,h,w]`, labels `[n]`), shard by shard.
    pub fn read_role(&self, role: Role) -> Result<(Array4<f32>, Array1<i64>)> {
        self.read_roles(&[role])
    }

    /// Reads the images and labels of several roles, one after the other in the order given,
    /// as one array each (every shard verified, as [`DataDir::read_shard`]).
    pub fn read_roles(&self, roles: &[Role]) -> Result<(Array4<f32>, Array1<i64>)> {
        let [c, h, w] = self.summary.image_shape;
        let found = roles
            .iter()
            .map(|&role| self.role(role))
            .collect::<Result<Vec<_>>>()?;
        let rows: usize = found.iter().map(|r| r.rows).sum();
        let mut images = Vec::with_capacity(rows * c * h * w);
        let mut labels = Vec::with_capacity(rows);
        for role in found {
            for pair in &role.shards {
                let (x, y) = self.read_shard(pair)?;
                images.extend(x.iter().copied());
                labels.extend(y.iter().copied());
            }
        }
        let n = labels.len();
        let images = Array4::from_shape_vec((n, c, h, w), images).map_err(|e| {
            Error::invalid(&self.dir, format!("{roles:?} shards do not stack: {e}"))
        })?;
        Ok((images, Array1::from_vec(labels)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_and_name_files() {
        assert_eq!("val".parse::<Role>().unwrap(), Role::Val);
        let err = "holdout".parse::<Role>().unwrap_err().to_string();
        assert!(err.contains("holdout") && err.contains("gallery"), "{err}");
        // Every settings enum parses by its serde name and the aliases users typed before.
        use crate::artifact::{Metric, Scoring, Vote};
        assert_eq!("ip".parse::<Metric>().unwrap(), Metric::InnerProduct);
        assert_eq!(
            "inner_product".parse::<Metric>().unwrap(),
            Metric::InnerProduct
        );
        assert_eq!("L2".parse::<Metric>().unwrap(), Metric::L2);
        assert_eq!("center".parse::<Scoring>().unwrap(), Scoring::Centre);
        assert_eq!("weighted".parse::<Vote>().unwrap(), Vote::Weighted);
        assert_eq!(Role::Test.images_file(3), "test_images_003.npy");
        assert_eq!(Role::Gallery.labels_file(0), "gallery_labels_000.npy");
    }

    #[test]
    fn scale_shift_maps_pixels() {
        assert_eq!(pixel_scale_shift(None), (1.0 / 255.0, 0.0));
        let (scale, shift) = pixel_scale_shift(Some(Normalization {
            mean: 0.5,
            std: 0.25,
        }));
        assert!((255.0 * scale + shift - 2.0).abs() < 1e-6);
        assert!((shift + 2.0).abs() < 1e-6);
    }
}
