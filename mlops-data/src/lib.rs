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
//! The format is [`mlops_core::artifact::data`]; later stages read it with [`DataDir`] from the
//! contract crate, never with this one.
//!
//! ```
//! # let tmp = tempfile::tempdir()?;
//! # let idx = tmp.path().join("fashion-mnist");
//! # mlops_data::fixtures::write_idx(&idx, &Default::default())?;
//! // `idx`: a directory of IDX files, e.g. /usr/share/datasets/fashion-mnist.
//! let config = mlops_data::DataConfig {
//!     sources: vec![idx],
//!     out: tmp.path().join("data"),
//!     ..Default::default()
//! };
//! let manifest = mlops_data::run(&config)?;
//! let summary: mlops_data::DataSummary = manifest.summary_as(&config.out)?;
//! println!("{} training images", summary.roles["train"].rows);
//! # assert!(summary.roles["train"].rows > 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

mod error;
#[cfg(feature = "test-support")]
pub mod fixtures;
pub mod idx;
pub mod source;
pub mod split;

use std::collections::BTreeMap;
use std::path::PathBuf;

use mlops_core::artifact::data::{pixel_scale_shift, Dedup};
use mlops_core::artifact::{CLASSES_FILE, CONFIG_FILE};
use mlops_core::progress::{self, Progress, Silent};
use mlops_core::{Manifest, OutputDir};
use ndarray::{Array1, Array4};
use serde::{Deserialize, Serialize};
use source::Loaded;

pub use error::{Error, Result};
// The data artifact's types live in the contract crate; re-exported for users of this stage.
pub use mlops_core::artifact::data::{
    DataDir, DataSummary, Normalization, Role, RoleSummary, ShardPair, SourceSummary,
};
pub use source::FASHION_MNIST_CLASSES;

/// Name of this stage in manifests.
pub const STAGE: &str = <DataSummary as mlops_core::artifact::StageSummary>::STAGE;

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

/// Runs the data stage without reporting progress: see [`run_with`].
pub fn run(config: &DataConfig) -> Result<Manifest> {
    run_with(config, &Silent)
}

/// Runs the data stage: read sources, split, write shards and the manifest into `config.out`,
/// reporting decoding and writing to `progress`.
pub fn run_with(config: &DataConfig, progress: &dyn Progress) -> Result<Manifest> {
    config.check()?;
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    let [height, width] = config.image_size;
    let loaded = source::load_sources(
        &config.sources,
        height,
        width,
        config.class_names.as_deref(),
        progress,
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
    let (scale, shift) = pixel_scale_shift(normalization);
    let value_range = [shift, 255.0 * scale + shift];

    let mut out = OutputDir::create(&config.out)?;
    let writer = ShardWriter {
        loaded: &loaded,
        config,
        scale,
        shift,
    };
    let role_summaries = writer.write_roles(&roles, &mut out, &mut manifest, progress)?;

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

/// Writes the loaded images of each role as scaled `.npy` shards.
struct ShardWriter<'a> {
    loaded: &'a Loaded,
    config: &'a DataConfig,
    scale: f32,
    shift: f32,
}

impl ShardWriter<'_> {
    fn write_roles(
        &self,
        roles: &[Vec<usize>],
        out: &mut OutputDir,
        manifest: &mut Manifest,
        progress: &dyn Progress,
    ) -> Result<BTreeMap<String, RoleSummary>> {
        let total: usize = roles.iter().map(Vec::len).sum();
        let task = progress::start(progress, "write", total as u64);
        let mut role_summaries = BTreeMap::new();
        for role in Role::ALL {
            let indices = &roles[role.index()];
            let mut class_counts = vec![0usize; self.loaded.classes.len()];
            let mut shards = Vec::new();
            for (shard, chunk) in indices.chunks(self.config.npy_interval).enumerate() {
                let (images, labels) = self.shard(chunk, &mut class_counts);
                let images_entry = out.write_npy(&role.images_file(shard), &images)?;
                let labels_entry = out.write_npy(&role.labels_file(shard), &labels)?;
                shards.push(ShardPair {
                    images: images_entry.path.clone(),
                    labels: labels_entry.path.clone(),
                    rows: chunk.len(),
                });
                manifest.outputs.extend([images_entry, labels_entry]);
                task.inc(chunk.len() as u64);
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
        Ok(role_summaries)
    }

    /// One shard's images (scaled to the stage's value range) and labels, counting classes.
    fn shard(&self, chunk: &[usize], class_counts: &mut [usize]) -> (Array4<f32>, Array1<i64>) {
        let [height, width] = self.config.image_size;
        let mut images = Array4::<f32>::zeros((chunk.len(), 1, height, width));
        let mut labels = Array1::<i64>::zeros(chunk.len());
        let pixels = images
            .as_slice_mut()
            .expect("a fresh array is contiguous")
            .chunks_exact_mut(height * width);
        for ((row, &i), dst) in chunk.iter().enumerate().zip(pixels) {
            for (d, &p) in dst.iter_mut().zip(self.loaded.image(i)) {
                *d = p as f32 * self.scale + self.shift;
            }
            labels[row] = self.loaded.labels[i] as i64;
            class_counts[self.loaded.labels[i]] += 1;
        }
        (images, labels)
    }
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
