//! `mlops-data`: ingest labelled images, split them into roles and write sharded `.npy` files.
//!
//! Sources are IDX files (MNIST, Fashion-MNIST and the like; raw or gzip) or image folders
//! (`ROOT/<class>/*.png|jpg|...`, converted to grayscale and resized). Images are split,
//! stratified by class and deterministically from the seed, into four roles:
//!
//! | role      | used for                          |
//! |-----------|-----------------------------------|
//! | `train`   | training the embedding model      |
//! | `val`     | model selection                   |
//! | `gallery` | what goes into the FAISS index    |
//! | `test`    | held-out queries (IDX test files) |
//!
//! Each role is written as `<role>_images_NNN.npy` (float32 `[n,1,H,W]`, values in `[0,1]` or
//! standardised with training-split statistics) and `<role>_labels_NNN.npy` (int64 `[n]`), at
//! most `npy_interval` rows per shard, plus `classes.json`, `config.json` and `manifest.json`.
//!
//! ```no_run
//! let config = mlops_data::DataConfig {
//!     sources: vec!["/usr/share/datasets/fashion-mnist".into()],
//!     out: "runs/demo/data".into(),
//!     ..Default::default()
//! };
//! let manifest = mlops_data::run(&config)?;
//! let summary: mlops_data::DataSummary = manifest.summary_as(&config.out)?;
//! println!("{} training images", summary.roles["train"].rows);
//! # Ok::<(), mlops_data::Error>(())
//! ```

mod error;
pub mod fixtures;
pub mod idx;
pub mod source;
pub mod split;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlops_core::{Manifest, OutputDir};
use ndarray::{Array1, Array4};
use serde::{Deserialize, Serialize};
use source::Loaded;

pub use error::{Error, Result};
pub use source::{SourceSummary, FASHION_MNIST_CLASSES};
pub use split::Dedup;

/// Name of this stage in manifests.
pub const STAGE: &str = "data";
/// File holding the class names, in label order.
pub const CLASSES_FILE: &str = "classes.json";
/// File holding the configuration a run used.
pub const CONFIG_FILE: &str = "config.json";

/// The four roles a data set is split into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Train,
    Val,
    Gallery,
    Test,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Train, Role::Val, Role::Gallery, Role::Test];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Train => "train",
            Role::Val => "val",
            Role::Gallery => "gallery",
            Role::Test => "test",
        }
    }

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

/// Configuration of the data stage. Every field has a default that suits Fashion-MNIST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// IDX files or directories, or image-folder roots, read in order.
    pub sources: Vec<PathBuf>,
    /// Output directory.
    pub out: PathBuf,
    /// Output image height and width; other sizes are resized (bilinear).
    pub image_size: [usize; 2],
    /// Standardise with the training split's mean and standard deviation.
    pub normalize: bool,
    /// Seed for the split.
    pub seed: u64,
    /// Fraction of each class (outside the test set) held out for validation.
    pub val_fraction: f64,
    /// Fraction of each class (outside the test set) that goes to the gallery (index).
    pub gallery_fraction: f64,
    /// Fraction of each class used as test set when no IDX test file designates one.
    pub test_fraction: f64,
    /// Keep the images of IDX test files (`t10k-*`, `test-*`) as the test set.
    pub keep_idx_test: bool,
    /// Most rows per `.npy` shard.
    pub npy_interval: usize,
    /// Drop images that would leak across roles (exact duplicates of test or train images).
    pub remove_duplicates: bool,
    /// Class names in label order for IDX sources (default: Fashion-MNIST's names for a path
    /// containing "fashion", else the label numbers).
    pub class_names: Option<Vec<String>>,
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            sources: Vec::new(),
            out: PathBuf::from("data"),
            image_size: [28, 28],
            normalize: false,
            seed: 42,
            val_fraction: 0.1,
            gallery_fraction: 0.2,
            test_fraction: 0.15,
            keep_idx_test: true,
            npy_interval: 5000,
            remove_duplicates: true,
            class_names: None,
        }
    }
}

impl DataConfig {
    /// Checks values a TOML file or flags may have got wrong.
    pub fn check(&self) -> Result<()> {
        let fraction_ok = |f: f64| (0.0..1.0).contains(&f);
        if ![self.val_fraction, self.gallery_fraction, self.test_fraction]
            .into_iter()
            .all(fraction_ok)
        {
            return Err(Error::Config("fractions must lie in [0, 1)".into()));
        }
        if self.val_fraction + self.gallery_fraction + self.test_fraction >= 1.0 {
            return Err(Error::Config(
                "val + gallery + test fractions must leave images for training".into(),
            ));
        }
        if self.npy_interval == 0 {
            return Err(Error::Config("npy_interval must be at least 1".into()));
        }
        if self.image_size.contains(&0) || self.image_size.iter().any(|&s| s > 4096) {
            return Err(Error::Config("image_size must lie in 1..=4096".into()));
        }
        Ok(())
    }
}

/// Mean and standard deviation of the training split's pixels (values in `[0,1]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: f32,
    pub std: f32,
}

/// One shard: an images file and its labels file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardPair {
    pub images: String,
    pub labels: String,
    pub rows: usize,
}

/// What one role holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleSummary {
    pub rows: usize,
    pub shards: Vec<ShardPair>,
    /// Images per class, indexed by label.
    pub class_counts: Vec<usize>,
}

/// The data stage's `summary` in its manifest: everything later stages need to read the shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSummary {
    pub classes: Vec<String>,
    /// `[channels, height, width]` of one image.
    pub image_shape: [usize; 3],
    /// Statistics applied to the pixels, if normalisation was on.
    pub normalization: Option<Normalization>,
    /// Smallest and largest value a pixel can take after preprocessing.
    pub value_range: [f32; 2],
    pub npy_interval: usize,
    pub seed: u64,
    pub roles: BTreeMap<String, RoleSummary>,
    pub dedup: Dedup,
    pub sources: Vec<SourceSummary>,
}

impl DataSummary {
    /// Reads and checks the manifest of a data-stage directory.
    pub fn load(dir: &Path) -> Result<(Manifest, DataSummary)> {
        let manifest = Manifest::load_stage(dir, STAGE)?;
        let summary = manifest.summary_as(dir)?;
        Ok((manifest, summary))
    }

    /// The summary of `role`, if it exists.
    pub fn role(&self, role: Role) -> Option<&RoleSummary> {
        self.roles.get(role.as_str())
    }
}

/// Runs the data stage: read sources, split, write shards and the manifest into `config.out`.
pub fn run(config: &DataConfig) -> Result<Manifest> {
    config.check()?;
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let [height, width] = config.image_size;
    let loaded = source::load_sources(
        &config.sources,
        height,
        width,
        config.class_names.as_deref(),
    )?;
    manifest.inputs = loaded.inputs.clone();

    let fractions = split::Fractions {
        val: config.val_fraction,
        gallery: config.gallery_fraction,
        test: config.test_fraction,
    };
    let mut roles = split::assign(&loaded, fractions, config.keep_idx_test, config.seed);
    let dedup = if config.remove_duplicates {
        split::dedup(&loaded, &mut roles)
    } else {
        Dedup::default()
    };
    if dedup != Dedup::default() {
        tracing::info!(
            ?dedup,
            "dropped duplicate images that would leak across roles"
        );
    }
    for role in Role::ALL {
        if roles[role.index()].is_empty() {
            return Err(Error::Config(format!(
                "the {role} role would be empty: {} images are too few for these fractions",
                loaded.len()
            )));
        }
    }

    let normalization = config
        .normalize
        .then(|| pixel_stats(&loaded, &roles[Role::Train.index()]));
    let (scale, shift) = match normalization {
        Some(n) => (1.0 / (255.0 * n.std), -n.mean / n.std),
        None => (1.0 / 255.0, 0.0),
    };
    let value_range = [shift, 255.0 * scale + shift];

    let mut out = OutputDir::create(&config.out)?;
    let total: usize = roles.iter().map(Vec::len).sum();
    let bar = mlops_core::telemetry::progress(total as u64, "write");
    let mut role_summaries = BTreeMap::new();
    for role in Role::ALL {
        let indices = &roles[role.index()];
        let mut class_counts = vec![0usize; loaded.classes.len()];
        let mut shards = Vec::new();
        for (shard, chunk) in indices.chunks(config.npy_interval).enumerate() {
            let mut images = Array4::<f32>::zeros((chunk.len(), 1, height, width));
            let mut labels = Array1::<i64>::zeros(chunk.len());
            for (row, &i) in chunk.iter().enumerate() {
                let dst = images
                    .as_slice_mut()
                    .expect("a fresh array is contiguous")
                    .chunks_exact_mut(height * width)
                    .nth(row)
                    .expect("row < chunk.len()");
                for (d, &p) in dst.iter_mut().zip(loaded.image(i)) {
                    *d = p as f32 * scale + shift;
                }
                labels[row] = loaded.labels[i] as i64;
                class_counts[loaded.labels[i]] += 1;
            }
            let images_entry = out.write_npy(&role.images_file(shard), &images)?;
            let labels_entry = out.write_npy(&role.labels_file(shard), &labels)?;
            shards.push(ShardPair {
                images: images_entry.path.clone(),
                labels: labels_entry.path.clone(),
                rows: chunk.len(),
            });
            manifest.outputs.extend([images_entry, labels_entry]);
            bar.inc(chunk.len() as u64);
        }
        tracing::info!(role = %role, rows = indices.len(), shards = shards.len(), "wrote role");
        role_summaries.insert(
            role.as_str().to_string(),
            RoleSummary {
                rows: indices.len(),
                shards,
                class_counts,
            },
        );
    }
    bar.finish_and_clear();

    manifest
        .outputs
        .push(out.write_json(CLASSES_FILE, &loaded.classes)?);
    manifest.outputs.push(out.write_json(CONFIG_FILE, config)?);
    let summary = DataSummary {
        classes: loaded.classes.clone(),
        image_shape: [1, height, width],
        normalization,
        value_range,
        npy_interval: config.npy_interval,
        seed: config.seed,
        roles: role_summaries,
        dedup,
        sources: loaded.sources.clone(),
    };
    manifest.summary = serde_json::to_value(&summary).expect("summary is plain data");
    Ok(out.commit(manifest)?)
}

fn pixel_stats(loaded: &Loaded, train: &[usize]) -> Normalization {
    let (mut sum, mut sum_sq, mut n) = (0u64, 0u64, 0u64);
    for &i in train {
        for &p in loaded.image(i) {
            sum += p as u64;
            sum_sq += (p as u64) * (p as u64);
            n += 1;
        }
    }
    let mean = sum as f64 / n as f64;
    let var = (sum_sq as f64 / n as f64 - mean * mean).max(0.0);
    // A constant image set would divide by zero; leave its scale alone.
    let std = if var > 0.0 { var.sqrt() } else { 255.0 };
    Normalization {
        mean: (mean / 255.0) as f32,
        std: (std / 255.0) as f32,
    }
}

/// A finished data-stage output opened for reading by later stages.
///
/// Every shard read through it is checked against the sha256 the data manifest recorded, so a
/// stage never trains on or embeds a file that changed after the data stage wrote it.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub summary: DataSummary,
}

impl DataDir {
    /// Opens the output directory of `mlops-data`; fails if it has no data-stage manifest.
    pub fn open(dir: &Path) -> Result<Self> {
        let (manifest, summary) = DataSummary::load(dir)?;
        Ok(DataDir {
            dir: dir.to_path_buf(),
            manifest,
            summary,
        })
    }

    /// The shards of `role`; an absent or empty role is an error.
    pub fn role(&self, role: Role) -> Result<&RoleSummary> {
        let manifest = self.dir.join(mlops_core::MANIFEST_FILE);
        match self.summary.role(role) {
            Some(rs) if rs.rows > 0 && !rs.shards.is_empty() => Ok(rs),
            Some(_) => Err(mlops_core::Error::invalid(
                manifest,
                format!("the {role} role is empty"),
            )
            .into()),
            None => Err(mlops_core::Error::invalid(
                manifest,
                format!("the data has no {role} role"),
            )
            .into()),
        }
    }

    /// Manifest entries (path as given, sha256 recorded by the data stage) of the data manifest
    /// and every shard of `roles`: what a later stage lists as its inputs.
    pub fn input_entries(&self, roles: &[Role]) -> Result<Vec<mlops_core::FileEntry>> {
        let mut names = Vec::new();
        for &role in roles {
            for pair in &self.role(role)?.shards {
                names.extend([pair.images.as_str(), pair.labels.as_str()]);
            }
        }
        Ok(self.manifest.input_entries(&self.dir, names)?)
    }

    /// Reads one shard pair after verifying both checksums and the recorded shapes.
    pub fn read_shard(&self, pair: &ShardPair) -> Result<(Array4<f32>, Array1<i64>)> {
        for name in [&pair.images, &pair.labels] {
            self.manifest.verified_output(&self.dir, name)?;
        }
        let images: Array4<f32> = mlops_core::npy::read(&self.dir.join(&pair.images))?;
        let labels: Array1<i64> = mlops_core::npy::read(&self.dir.join(&pair.labels))?;
        let [c, h, w] = self.summary.image_shape;
        if images.shape() != [pair.rows, c, h, w] || labels.len() != pair.rows {
            return Err(mlops_core::Error::invalid(
                self.dir.join(&pair.images),
                format!(
                    "shape {:?} with {} labels, the manifest says [{}, {c}, {h}, {w}]",
                    images.shape(),
                    labels.len(),
                    pair.rows
                ),
            )
            .into());
        }
        Ok((images, labels))
    }

    /// Reads a whole role into memory (images `[n,c,h,w]`, labels `[n]`), shard by shard.
    pub fn read_role(&self, role: Role) -> Result<(Array4<f32>, Array1<i64>)> {
        let rs = self.role(role)?;
        let [c, h, w] = self.summary.image_shape;
        let mut images = Vec::with_capacity(rs.rows * c * h * w);
        let mut labels = Vec::with_capacity(rs.rows);
        for pair in &rs.shards {
            let (x, y) = self.read_shard(pair)?;
            images.extend(x.iter().copied());
            labels.extend(y.iter().copied());
        }
        let n = labels.len();
        let images = Array4::from_shape_vec((n, c, h, w), images)
            .expect("each shard was checked to be [rows, c, h, w]");
        Ok((images, Array1::from_vec(labels)))
    }
}
