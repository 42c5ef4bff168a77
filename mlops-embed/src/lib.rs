//! `mlops-embed`: run the exported TorchScript model (`model.pt` of `mlops-train`) over data
//! shards and write embeddings; and [`Embedder`], the model inference any stage or server uses.
//!
//! The model is loaded with `tch::CModule` (the training code is never used to rebuild it);
//! its `model.json` is checked against the data (input shape, normalisation, classes) before
//! anything runs. Each role is read shard by shard (checksums verified against the data
//! manifest) and written as `<role>_embeddings_NNN.npy` (float32 `[n,dim]`, L2-normalised)
//! beside a copy of the aligned `<role>_labels_NNN.npy`, so the output directory is all the
//! index and eval stages need, with `classes.json`, `config.json` and `manifest.json`.
//!
//! ```
//! # use mlops_data::fixtures::{write_idx, IdxFixture};
//! # let tmp = tempfile::tempdir()?;
//! # let (data, train) = (tmp.path().join("data"), tmp.path().join("train"));
//! # write_idx(&tmp.path().join("idx"), &IdxFixture::default())?;
//! # mlops_data::run(&mlops_data::DataConfig { sources: vec![tmp.path().join("idx")], out: data.clone(), ..Default::default() })?;
//! # mlops_embed::testing::fixture_model(&train, &data)?;
//! // `train` and `data`: the train and data stages' output directories.
//! let config = mlops_embed::EmbedConfig {
//!     model: train.clone(),
//!     data,
//!     out: tmp.path().join("embed"),
//!     ..Default::default()
//! };
//! let manifest = mlops_embed::run(&config)?;
//! let summary: mlops_core::artifact::EmbedSummary = manifest.summary_as(&config.out)?;
//! println!("{} gallery vectors of dim {}", summary.roles["gallery"].rows, summary.dim);
//!
//! // The same inference on images in memory, as a server does:
//! let model = mlops_core::artifact::ModelDir::open(&train)?;
//! let embedder = mlops_embed::Embedder::load(&model, tch::Device::Cpu)?;
//! let pixels = vec![0.5f32; 28 * 28];
//! let embedding = embedder.embed(&pixels, 1, 256)?;
//! assert_eq!(embedding.ncols(), embedder.description().embedding_dim);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

#[cfg(feature = "test-support")]
pub mod testing;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlops_core::artifact::embeddings::{embeddings_file, labels_file, BASELINE_TEST_ROLE};
use mlops_core::artifact::model::{CENTRES_FILE, CURVES_FILE, MODEL_DESCRIPTION_FILE};
use mlops_core::artifact::{
    DataDir, EmbedSummary, EmbeddedRole, EmbeddingShard, ModelDescription, ModelDir, Role,
    VersionDir, CLASSES_FILE, CONFIG_FILE,
};
use mlops_core::progress::{self, Progress};
use mlops_core::{Manifest, OutputDir};
use mlops_torch::DeviceSpec;
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Tensor};

/// Name of this stage in manifests.
pub const STAGE: &str = <EmbedSummary as mlops_core::artifact::StageSummary>::STAGE;

/// Errors of the embed stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the model or data directory, or writing the output, failed (I/O, `.npy`,
    /// JSON, checksums), the baseline's registry version included.
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// libtorch failed while running the model, or the requested device is not available.
    #[error(transparent)]
    Torch(#[from] mlops_torch::Error),
    /// A libtorch tensor operation returned an error.
    #[error("libtorch: {0}")]
    Tch(#[from] tch::TchError),
    /// `model.pt` could not be loaded as a TorchScript module.
    #[error("{}: cannot load TorchScript model: {source}", path.display())]
    Model {
        /// The model file.
        path: PathBuf,
        /// libtorch's error.
        #[source]
        source: tch::TchError,
    },
    /// The model and the data do not fit each other: another input shape, normalisation or
    /// class list, or the model returned embeddings of the wrong shape or non-finite values.
    #[error("{}: {message}", path.display())]
    Mismatch {
        /// The model (or its description) or the data shard at fault.
        path: PathBuf,
        /// What does not fit.
        message: String,
    },
    /// `batch_size` is 0 or `roles` is an empty list.
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configuration of the embed stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Output directory of `mlops-train` (holds `model.pt` and `model.json`).
    pub model: PathBuf,
    /// Output directory of `mlops-data`.
    pub data: PathBuf,
    /// Output directory.
    pub out: PathBuf,
    /// Roles to embed; `None`: every role the data holds except `train` (nothing downstream
    /// reads training embeddings), i.e. gallery, val and test, which is what the pipeline runs.
    pub roles: Option<Vec<Role>>,
    /// Images per forward pass. 64 by default: on 2 cores the default (`wide`, flip TTA) model
    /// embeds about 4,500 img/s at 64 in bf16 against about 2,200 at 512 (`cargo xtask bench
    /// --compare`), its activations then staying in cache.
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; embedding uses the first device it resolves to.
    pub device: DeviceSpec,
    /// libtorch intra-op threads; 0 means one per core.
    pub threads: usize,
    /// `auto` (bf16 where the hardware has it natively), `fp32` or `bf16` compute; the
    /// embeddings written are fp32 and L2-normalised either way.
    pub precision: mlops_torch::Precision,
    /// The deployed model: a registry version, or a registry model directory (its default
    /// version, none when nothing is promoted yet). Its model embeds the test role too, as role
    /// `baseline_test`, so eval can compare both models on the same images. Skipped, with a
    /// warning, when that model cannot take this data (other classes, input or preprocessing).
    pub baseline: Option<PathBuf>,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            model: PathBuf::from("train"),
            data: PathBuf::from("data"),
            out: PathBuf::from("embed"),
            roles: None,
            batch_size: 64,
            device: DeviceSpec::Auto,
            threads: 0,
            precision: mlops_torch::Precision::Auto,
            baseline: None,
        }
    }
}

// Shared with the train stage (its teacher), so it lives in the runtime both depend on.
pub use mlops_torch::embed_batches;

/// A loaded `model.pt` with its description: images in, L2-normalised embeddings out.
#[derive(Debug)]
pub struct Embedder {
    module: CModule,
    description: ModelDescription,
    device: Device,
    path: PathBuf,
    precision: mlops_torch::Precision,
}

impl Embedder {
    /// Loads the model of a train-stage directory (checksums of `model.pt` and `model.json`
    /// verified against its manifest) onto `device`.
    pub fn load(model: &ModelDir, device: Device) -> Result<Self> {
        let description = model.description()?;
        Self::load_file(&model.model_path()?, description, device)
    }

    /// Loads a `model.pt` whose description the caller has read (e.g. from a registry).
    pub fn load_file(path: &Path, description: ModelDescription, device: Device) -> Result<Self> {
        mlops_torch::tune_allocator();
        mlops_torch::prepare_jit(device);
        let mut module = CModule::load_on_device(path, device).map_err(|source| Error::Model {
            path: path.to_path_buf(),
            source,
        })?;
        module.set_eval();
        Ok(Embedder {
            module,
            description,
            device,
            path: path.to_path_buf(),
            precision: mlops_torch::Precision::Fp32,
        })
    }

    /// Computes in `precision` (resolved for this embedder's device): with bf16, the model runs
    /// under autocast and its output is renormalised in fp32. Autocast is per thread, so the
    /// thread that calls [`Embedder::embed`] gets it.
    pub fn with_precision(mut self, precision: mlops_torch::Precision) -> Self {
        self.precision = precision.resolve(self.device);
        self
    }

    /// The precision in force (`Fp32` or `Bf16`).
    pub fn precision(&self) -> mlops_torch::Precision {
        self.precision
    }

    /// What the model takes and gives.
    pub fn description(&self) -> &ModelDescription {
        &self.description
    }

    /// Embeds `n` preprocessed images (`n * c * h * w` values, the model's input shape) in
    /// batches of `batch_size`: `[n, dim]`, checked to be the promised shape and finite.
    pub fn embed(&self, pixels: &[f32], n: usize, batch_size: usize) -> Result<Array2<f32>> {
        let [c, h, w] = self.description.input_shape;
        let dim = self.description.embedding_dim;
        if pixels.len() != n * c * h * w {
            return Err(self.mismatch(format!(
                "{} input values for {n} images of shape [{c}, {h}, {w}]",
                pixels.len()
            )));
        }
        if n == 0 {
            return Ok(Array2::zeros((0, dim)));
        }
        let x =
            Tensor::f_from_slice(pixels)?.f_reshape([n as i64, c as i64, h as i64, w as i64])?;
        let emb = mlops_torch::catch("running the model", || {
            mlops_torch::autocast(self.precision, self.device, || {
                embed_batches(&self.module, &x, batch_size, self.device)
            })
        })??;
        let emb = if self.precision == mlops_torch::Precision::Fp32 {
            emb
        } else {
            // bf16 compute (whatever dtype the last op left): fp32, L2-normalised out.
            let emb = emb.f_to_kind(tch::Kind::Float)?;
            let norm = emb
                .f_norm_scalaropt_dim(2.0, [1i64].as_slice(), true)?
                .f_clamp_min(1e-12)?;
            emb.f_div(&norm)?
        };
        if emb.size() != [n as i64, dim as i64] {
            return Err(self.mismatch(format!(
                "model produced shape {:?}, {MODEL_DESCRIPTION_FILE} promises [{n}, {dim}]",
                emb.size()
            )));
        }
        let values = Vec::<f32>::try_from(emb.f_flatten(0, -1)?)?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(self.mismatch("the model produced non-finite embeddings".into()));
        }
        Array2::from_shape_vec((n, dim), values).map_err(|e| self.mismatch(e.to_string()))
    }

    fn mismatch(&self, message: String) -> Error {
        Error::Mismatch {
            path: self.path.clone(),
            message,
        }
    }
}

/// Runs the embed stage without reporting progress: see [`run_with`].
pub fn run(config: &EmbedConfig) -> Result<Manifest> {
    run_with(config, &mlops_core::progress::Silent)
}

/// Runs the embed stage (see the crate docs), reporting each role's embedding to `progress`.
pub fn run_with(config: &EmbedConfig, progress: &dyn Progress) -> Result<Manifest> {
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    if config.batch_size == 0 || config.roles.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::Config(
            "batch_size must be at least 1 and roles, when given, not empty".into(),
        ));
    }
    let device = config.device.resolve()?[0];
    mlops_torch::set_threads(config.threads);
    let data = DataDir::open(&config.data)?;
    let model = ModelDir::open(&config.model)?;
    let embedder = Embedder::load(&model, device)?.with_precision(config.precision);
    check_compatible(embedder.description(), &data, &config.model)?;
    let roles = config.roles.clone().unwrap_or_else(|| {
        let mut roles = data.present_roles();
        roles.retain(|&r| r != Role::Train);
        roles
    });
    manifest.inputs.extend(model.model_input_entries()?);
    manifest.inputs.extend(data.role_input_entries(&roles)?);

    let mut writer = RoleWriter {
        data: &data,
        config,
        out: OutputDir::create(&config.out)?,
        manifest,
        embedded: BTreeMap::new(),
        progress,
    };
    let (mut images_done, mut seconds) = (0usize, 0.0f64);
    for &role in &roles {
        let (done, secs) = writer.embed_role(&embedder, role, role.as_str())?;
        images_done += done;
        seconds += secs;
    }
    let baseline = writer.embed_baseline(device)?;
    let RoleWriter {
        mut out,
        mut manifest,
        embedded,
        ..
    } = writer;
    let classes = &embedder.description().classes;
    manifest
        .outputs
        .push(out.write_json(CLASSES_FILE, classes)?);
    // The class centres travel on with the embeddings to the index (the classifier's files),
    // the training curves to eval's report.
    for name in [CENTRES_FILE, CURVES_FILE] {
        if let Some((input, output)) = model.carry(name, &mut out)? {
            manifest.inputs.push(input);
            manifest.outputs.push(output);
        }
    }
    manifest.outputs.push(out.write_json(CONFIG_FILE, config)?);
    let summary = EmbedSummary {
        dim: embedder.description().embedding_dim,
        classes: classes.clone(),
        roles: embedded,
        device: format!("{device:?}"),
        images_per_second: images_done as f64 / seconds.max(1e-9),
        precision: embedder.precision().to_string(),
        cpu: mlops_torch::cpu_model(),
        baseline,
    };
    tracing::info!(
        img_per_s = format!("{:.0}", summary.images_per_second),
        "done"
    );
    manifest.summary = serde_json::to_value(&summary).expect("plain data");
    Ok(out.commit(manifest)?)
}

/// The embed stage's output while it is written: the staged directory, the manifest and the
/// roles embedded so far.
struct RoleWriter<'a> {
    data: &'a DataDir,
    config: &'a EmbedConfig,
    out: OutputDir,
    manifest: Manifest,
    embedded: BTreeMap<String, EmbeddedRole>,
    progress: &'a dyn Progress,
}

impl RoleWriter<'_> {
    /// Embeds `role`'s shards with `embedder` as role `name`; returns the images embedded and
    /// the seconds spent in the model.
    fn embed_role(&mut self, embedder: &Embedder, role: Role, name: &str) -> Result<(usize, f64)> {
        let rs = self.data.role(role)?;
        let task = progress::start(self.progress, &format!("embed {name}"), rs.rows as u64);
        let mut shards = Vec::new();
        let mut seconds = 0.0;
        for (i, pair) in rs.shards.iter().enumerate() {
            let (images, labels) = self.data.read_shard(pair)?;
            let n = labels.len();
            let started = Instant::now();
            let emb = embedder
                .embed(
                    &images.into_raw_vec_and_offset().0,
                    n,
                    self.config.batch_size,
                )
                .map_err(|e| match e {
                    Error::Mismatch { message, .. } => Error::Mismatch {
                        path: self.config.data.join(&pair.images),
                        message,
                    },
                    e => e,
                })?;
            seconds += started.elapsed().as_secs_f64();
            let e = self.out.write_npy(&embeddings_file(name, i), &emb)?;
            let l = self.out.write_npy(&labels_file(name, i), &labels)?;
            shards.push(EmbeddingShard {
                embeddings: e.path.clone(),
                labels: l.path.clone(),
                rows: n,
            });
            self.manifest.outputs.extend([e, l]);
            task.inc(n as u64);
        }
        drop(task);
        tracing::info!(
            role = name,
            rows = rs.rows,
            seconds = format!("{seconds:.3}"),
            "embedded"
        );
        self.embedded.insert(
            name.to_string(),
            EmbeddedRole {
                rows: rs.rows,
                shards,
            },
        );
        Ok((rs.rows, seconds))
    }

    /// Embeds the test role with the registry's deployed version too, when `baseline` names a
    /// registry model with one that can take this data (the paired deploy gate's input).
    /// Returns the version directory used.
    fn embed_baseline(&mut self, device: Device) -> Result<Option<PathBuf>> {
        let Some(path) = &self.config.baseline else {
            return Ok(None);
        };
        let Some(dir) = mlops_core::artifact::registry::deployed_version(path)? else {
            tracing::info!(baseline = %path.display(), "no deployed version: no paired comparison");
            return Ok(None);
        };
        let version = VersionDir::open(&dir)?;
        let description = version.description()?;
        if let Err(e) = check_compatible(&description, self.data, &dir) {
            tracing::warn!(
                baseline = %dir.display(),
                "the deployed model cannot take this data, no paired comparison: {e}"
            );
            return Ok(None);
        }
        let model = version.model_path()?;
        let deployed =
            Embedder::load_file(&model, description, device)?.with_precision(self.config.precision);
        self.manifest
            .inputs
            .push(mlops_core::FileEntry::input_file(&model)?);
        self.embed_role(&deployed, Role::Test, BASELINE_TEST_ROLE)?;
        Ok(Some(dir))
    }
}

fn check_compatible(model: &ModelDescription, data: &DataDir, model_dir: &Path) -> Result<()> {
    let mismatch = |message: String| Error::Mismatch {
        path: model_dir.join(MODEL_DESCRIPTION_FILE),
        message,
    };
    if model.input_shape != data.summary.image_shape {
        return Err(mismatch(format!(
            "model takes images of shape {:?}, {} holds {:?}",
            model.input_shape,
            data.dir.display(),
            data.summary.image_shape
        )));
    }
    let same_norm = match (model.normalization, data.summary.normalization) {
        (None, None) => true,
        (Some(a), Some(b)) => (a.mean - b.mean).abs() < 1e-6 && (a.std - b.std).abs() < 1e-6,
        _ => false,
    };
    if !same_norm {
        return Err(mismatch(format!(
            "model was trained on data normalised as {:?}, {} is normalised as {:?}",
            model.normalization,
            data.dir.display(),
            data.summary.normalization
        )));
    }
    if model.classes != data.summary.classes {
        return Err(mismatch(format!(
            "model knows classes {:?}, {} has {:?}",
            model.classes,
            data.dir.display(),
            data.summary.classes
        )));
    }
    Ok(())
}
