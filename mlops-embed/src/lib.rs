//! `mlops-embed`: run the exported TorchScript model (`model.pt` of `mlops-train`) over data
//! shards and write embeddings.
//!
//! The model is loaded with `tch::CModule` (the training code is never used to rebuild it);
//! its `config.json` is checked against the data (input shape, normalisation) before anything
//! runs. Each role is read shard by shard (checksums verified against the data manifest) and
//! written as `<role>_embeddings_NNN.npy` (float32 `[n,dim]`, L2-normalised) beside a copy of
//! the aligned `<role>_labels_NNN.npy`, so the output directory is all the index and eval
//! stages need, with `classes.json`, `config.json` and `manifest.json`.
//!
//! ```no_run
//! let config = mlops_embed::EmbedConfig {
//!     model: "runs/demo/train".into(),
//!     data: "runs/demo/data".into(),
//!     out: "runs/demo/embed".into(),
//!     ..Default::default()
//! };
//! let manifest = mlops_embed::run(&config)?;
//! let summary: mlops_embed::EmbedSummary = manifest.summary_as(&config.out)?;
//! println!("{} gallery vectors of dim {}", summary.roles["gallery"].rows, summary.dim);
//! # Ok::<(), mlops_embed::Error>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlops_core::{FileEntry, Manifest, OutputDir};
use mlops_data::{DataDir, Role};
use mlops_train::{DeviceSpec, ModelConfig, MODEL_CONFIG_FILE, MODEL_FILE};
use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tch::{CModule, Device, Tensor};

/// Name of this stage in manifests.
pub const STAGE: &str = mlops_core::embeddings::EMBED_STAGE;

/// Errors of the embed stage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    #[error(transparent)]
    Data(#[from] mlops_data::Error),
    #[error(transparent)]
    Train(#[from] mlops_train::Error),
    #[error("{}: cannot load TorchScript model: {source}", path.display())]
    Model {
        path: PathBuf,
        #[source]
        source: tch::TchError,
    },
    #[error("{}: {message}", path.display())]
    Mismatch { path: PathBuf, message: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Configuration of the embed stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmbedConfig {
    /// Output directory of `mlops-train` (holds `model.pt` and `config.json`).
    pub model: PathBuf,
    /// Output directory of `mlops-data`.
    pub data: PathBuf,
    pub out: PathBuf,
    /// Roles to embed.
    pub roles: Vec<Role>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// `auto`, `cpu`, `cuda` or `cuda:N`; embedding uses the first device it resolves to.
    pub device: DeviceSpec,
    /// libtorch intra-op threads; 0 means one per core.
    pub threads: usize,
}

impl Default for EmbedConfig {
    fn default() -> Self {
        EmbedConfig {
            model: PathBuf::from("train"),
            data: PathBuf::from("data"),
            out: PathBuf::from("embed"),
            roles: vec![Role::Gallery, Role::Test],
            batch_size: 512,
            device: DeviceSpec::Auto,
            threads: 0,
        }
    }
}

pub use mlops_core::embeddings::{EmbedSummary, EmbeddedRole, EmbeddingShard, EmbeddingsDir};

/// Reads and checks the manifest of an embed-stage directory.
pub fn load_summary(dir: &Path) -> Result<(Manifest, EmbedSummary)> {
    let opened = EmbeddingsDir::open(dir)?;
    Ok((opened.manifest, opened.summary))
}

/// Loads `model.pt` from a train-stage directory after checking it against the train manifest.
pub fn load_model(
    model_dir: &Path,
    device: Device,
) -> Result<(CModule, ModelConfig, Vec<FileEntry>)> {
    let manifest = Manifest::load_stage(model_dir, mlops_train::STAGE)?;
    for name in [MODEL_FILE, MODEL_CONFIG_FILE] {
        manifest.verified_output(model_dir, name)?;
    }
    let inputs = manifest.input_entries(model_dir, [MODEL_FILE, MODEL_CONFIG_FILE])?;
    let config_path = model_dir.join(MODEL_CONFIG_FILE);
    let text = std::fs::read(&config_path).map_err(|e| mlops_core::Error::io(&config_path, e))?;
    let config: ModelConfig =
        serde_json::from_slice(&text).map_err(|source| mlops_core::Error::Json {
            path: config_path.clone(),
            source,
        })?;
    let path = model_dir.join(MODEL_FILE);
    let mut module = CModule::load_on_device(&path, device).map_err(|source| Error::Model {
        path: path.clone(),
        source,
    })?;
    module.set_eval();
    Ok((module, config, inputs))
}

/// Embeds `images` (`[n,c,h,w]`) in batches with no gradients; returns `[n,dim]` on the CPU.
pub fn embed_batches(
    module: &CModule,
    images: &Tensor,
    batch_size: usize,
    device: Device,
) -> Result<Tensor> {
    tch::no_grad(|| {
        let n = images.size()[0];
        let mut parts = Vec::new();
        for start in (0..n).step_by(batch_size.max(1)) {
            let batch = images
                .narrow(0, start, (n - start).min(batch_size as i64))
                .to_device(device);
            parts.push(module.forward_ts(&[batch])?.to_device(Device::Cpu));
        }
        Ok(Tensor::cat(&parts, 0))
    })
}

/// Runs the embed stage (see the crate docs).
pub fn run(config: &EmbedConfig) -> Result<Manifest> {
    let mut manifest = Manifest::begin(STAGE, env!("CARGO_PKG_VERSION"), config);
    if config.batch_size == 0 || config.roles.is_empty() {
        return Err(
            mlops_train::Error::Config("batch_size and roles must not be empty".into()).into(),
        );
    }
    let device = config.device.resolve()?[0];
    mlops_train::device::set_threads(config.threads);
    let data = DataDir::open(&config.data)?;
    let (module, model_config, model_inputs) = load_model(&config.model, device)?;
    check_compatible(&model_config, &data, &config.model)?;
    manifest.inputs.extend(model_inputs);
    manifest.inputs.extend(data.input_entries(&config.roles)?);

    let mut out = OutputDir::create(&config.out)?;
    let [c, h, w] = model_config.input_shape;
    let dim = model_config.embedding_dim;
    let mut roles = BTreeMap::new();
    let (mut images_done, mut seconds) = (0usize, 0.0f64);
    for &role in &config.roles {
        let rs = data.role(role)?;
        let bar = mlops_core::telemetry::progress(rs.rows as u64, &format!("embed {role}"));
        let mut shards = Vec::new();
        for (i, pair) in rs.shards.iter().enumerate() {
            let (images, labels) = data.read_shard(pair)?;
            let n = labels.len();
            let x = Tensor::from_slice(images.as_slice().expect("standard layout"))
                .reshape([n as i64, c as i64, h as i64, w as i64]);
            let started = Instant::now();
            let emb = embed_batches(&module, &x, config.batch_size, device)?;
            seconds += started.elapsed().as_secs_f64();
            images_done += n;
            if emb.size() != [n as i64, dim as i64] {
                return Err(Error::Mismatch {
                    path: config.model.join(MODEL_FILE),
                    message: format!(
                        "model produced shape {:?}, config.json promises [{n}, {dim}]",
                        emb.size()
                    ),
                });
            }
            let values: Vec<f32> = Vec::<f32>::try_from(emb.flatten(0, -1))?;
            if values.iter().any(|v| !v.is_finite()) {
                return Err(Error::Mismatch {
                    path: config.data.join(&pair.images),
                    message: "the model produced non-finite embeddings for this shard".into(),
                });
            }
            let emb = Array2::from_shape_vec((n, dim), values).expect("length checked above");
            let e = out.write_npy(&format!("{role}_embeddings_{i:03}.npy"), &emb)?;
            let l = out.write_npy(&format!("{role}_labels_{i:03}.npy"), &labels)?;
            shards.push(EmbeddingShard {
                embeddings: e.path.clone(),
                labels: l.path.clone(),
                rows: n,
            });
            manifest.outputs.extend([e, l]);
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        tracing::info!(role = %role, rows = rs.rows, "embedded");
        roles.insert(
            role.as_str().to_string(),
            EmbeddedRole {
                rows: rs.rows,
                shards,
            },
        );
    }
    manifest
        .outputs
        .push(out.write_json(mlops_data::CLASSES_FILE, &model_config.classes)?);
    manifest
        .outputs
        .push(out.write_json("config.json", config)?);
    let summary = EmbedSummary {
        dim,
        classes: model_config.classes.clone(),
        roles,
        device: format!("{device:?}"),
        images_per_second: images_done as f64 / seconds.max(1e-9),
    };
    tracing::info!(
        img_per_s = format!("{:.0}", summary.images_per_second),
        "done"
    );
    manifest.summary = serde_json::to_value(&summary).expect("plain data");
    Ok(out.commit(manifest)?)
}

fn check_compatible(model: &ModelConfig, data: &DataDir, model_dir: &Path) -> Result<()> {
    let mismatch = |message: String| Error::Mismatch {
        path: model_dir.join(MODEL_CONFIG_FILE),
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
