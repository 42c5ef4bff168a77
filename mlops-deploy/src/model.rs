//! A registered version's model and index as one predictor: what the server's inference
//! threads run, and what [`RegisteredModel`] offers a program that classifies in process.

use std::path::Path;

use mlops_core::artifact::registry::{self as layout, read_pointer};
use mlops_core::artifact::{ModelDescription, VersionDir, Vote};
use mlops_core::preprocess::Preprocess;
use mlops_embed::Embedder;
pub use mlops_index::classifier::{Neighbour, Prediction};
use mlops_index::Classifier;

use crate::serve::ServeConfig;
use crate::{Error, Result};

/// A version's embedding model and its index with the vote: preprocessed images in,
/// predictions out. The server's inference threads and [`RegisteredModel`] both predict with
/// it, so an in-process answer is the served one. Several threads may predict at once: the
/// TorchScript module and the FAISS index are both safe to run concurrently.
pub(crate) struct Predictor {
    embedder: Embedder,
    classifier: Classifier,
}

impl Predictor {
    /// Verifies every file of the version against its manifest, then loads its model onto
    /// `device` (computing in `precision`) and its index; `k` overrides the version's voting
    /// neighbours.
    pub(crate) fn load(
        dir: &VersionDir,
        device: tch::Device,
        precision: mlops_torch::Precision,
        k: Option<usize>,
    ) -> Result<Self> {
        dir.manifest.verify_outputs(&dir.dir)?;
        let description = dir.description()?;
        let embedder =
            Embedder::load_file(&dir.model_path()?, description, device)?.with_precision(precision);
        let index = mlops_index::load_dir(dir.index_dir())?;
        let mut spec = dir.summary.classifier;
        if let Some(k) = k {
            spec.k = k;
        }
        Ok(Predictor {
            embedder,
            classifier: Classifier::new(index, spec),
        })
    }

    /// What the model takes and gives.
    pub(crate) fn description(&self) -> &ModelDescription {
        self.embedder.description()
    }

    /// The preprocessing that turns an encoded image into this model's input, as the data stage
    /// did for its training images.
    pub(crate) fn preprocess(&self) -> Preprocess {
        let d = self.description();
        Preprocess::new(d.input_shape, d.normalization)
    }

    /// Predicts `n` preprocessed images (`n * c * h * w` values) in one batch.
    pub(crate) fn predict(&self, pixels: &[f32], n: usize) -> Result<Vec<Prediction>> {
        let embeddings = self.embedder.embed(pixels, n, n)?;
        let flat = embeddings
            .as_slice()
            .expect("embed returns a standard-layout array");
        Ok(self.classifier.classify(flat)?)
    }
}

/// A registered model version loaded for in-process classification (no server).
///
/// It loads the version as the server does (every file verified against the version's
/// manifest, on the server's default device and precision, the vote the eval stage chose) and
/// predicts with the same code: the same preprocessing ([`mlops_core::preprocess`]), model,
/// index and k-NN vote, in batches of the server's default size. Safe to share between
/// threads, which classify at once (each with the libtorch thread count it set).
///
/// ```
/// # use mlops_data::fixtures::{self, IdxFixture};
/// # let tmp = tempfile::tempdir()?;
/// # let t = tmp.path();
/// # fixtures::write_idx(&t.join("src"), &IdxFixture::default())?;
/// # mlops_data::run(&mlops_data::DataConfig {
/// #     sources: vec![t.join("src")],
/// #     out: t.join("data"),
/// #     ..Default::default()
/// # })?;
/// # mlops_embed::testing::fixture_model(&t.join("train"), &t.join("data"))?;
/// # mlops_embed::run(&mlops_embed::EmbedConfig {
/// #     model: t.join("train"),
/// #     data: t.join("data"),
/// #     out: t.join("embed"),
/// #     ..Default::default()
/// # })?;
/// # mlops_index::run(&mlops_index::IndexConfig {
/// #     embeddings: t.join("embed"),
/// #     out: t.join("index"),
/// #     ..Default::default()
/// # })?;
/// # mlops_eval::run(&mlops_eval::EvalConfig {
/// #     index: t.join("index"),
/// #     embeddings: t.join("embed"),
/// #     out: t.join("eval"),
/// #     gate: mlops_eval::GatePolicy { min_accuracy: 0.0, ..Default::default() },
/// #     ..Default::default()
/// # })?;
/// # mlops_deploy::registry::register(&mlops_deploy::registry::RegisterConfig {
/// #     model: t.join("train"),
/// #     index: t.join("index"),
/// #     eval: t.join("eval"),
/// #     registry: t.join("registry"),
/// #     promote: true,
/// #     ..Default::default()
/// # })?;
/// # let registry = t.join("registry");
/// # let png = {
/// #     let mut bytes = Vec::new();
/// #     image::GrayImage::from_pixel(28, 28, image::Luma([200]))
/// #         .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
/// #     bytes
/// # };
/// # std::fs::write(t.join("shirt.png"), &png)?;
/// # let path = t.join("shirt.png");
/// use mlops_deploy::RegisteredModel;
///
/// // The default version of "fashion-mnist" in a registry that `mlops-deploy register` filled.
/// let model = RegisteredModel::open(&registry, "fashion-mnist", None)?;
/// let image = std::fs::read(&path)?;
/// for prediction in model.classify(&[&image])? {
///     let label = model.label(prediction.class).unwrap_or("?");
///     println!("{label} ({:.0}% of the vote)", 100.0 * prediction.score);
///     assert_eq!(model.vote_shares(&prediction).len(), model.classes().len());
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RegisteredModel {
    name: String,
    version: u64,
    classes: Vec<String>,
    vote: Vote,
    preprocess: Preprocess,
    predictor: Predictor,
}

impl RegisteredModel {
    /// Loads `name` from the registry directory; `version: None` = the registry's default version.
    pub fn open(registry: &Path, name: &str, version: Option<u64>) -> Result<Self> {
        let version = registered_version(registry, name, version)?;
        let dir = VersionDir::open(&layout::version_dir(registry, name, version)?)?;
        let defaults = ServeConfig::default();
        let device = defaults.device.resolve()?[0];
        let predictor = Predictor::load(&dir, device, defaults.precision, None)?;
        Ok(RegisteredModel {
            name: name.to_string(),
            version,
            classes: predictor.description().classes.clone(),
            vote: dir.summary.classifier.vote,
            preprocess: predictor.preprocess(),
            predictor,
        })
    }

    /// The model's name in the registry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version loaded.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Class names in label order (from the version's classes file), if any.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// The name of class `class` (a [`Prediction::class`] or a [`Neighbour::class`]).
    pub fn label(&self, class: usize) -> Option<&str> {
        self.classes.get(class).map(String::as_str)
    }

    /// Each class's share of the vote behind `prediction`, in [`Self::classes`] order (weighted
    /// as the version's vote is): the evidence the server's explanations show.
    pub fn vote_shares(&self, prediction: &Prediction) -> Vec<f64> {
        prediction.vote_shares(self.classes.len(), self.vote)
    }

    /// Classifies encoded images (PNG, JPEG, ... bytes) exactly as the server does (same
    /// preprocessing, model, index, k-NN vote): one prediction per image, in order.
    pub fn classify(&self, images: &[&[u8]]) -> Result<Vec<Prediction>> {
        let batch = ServeConfig::default().batch_size;
        let mut predictions = Vec::with_capacity(images.len());
        for (b, chunk) in images.chunks(batch).enumerate() {
            let mut pixels = Vec::new();
            for (i, image) in chunk.iter().enumerate() {
                let input = self
                    .preprocess
                    .image_bytes(image)
                    .map_err(|source| Error::Decode {
                        model: self.name.clone(),
                        version: self.version,
                        index: b * batch + i,
                        source,
                    })?;
                pixels.extend(input);
            }
            predictions.extend(self.predictor.predict(&pixels, chunk.len())?);
        }
        Ok(predictions)
    }
}

impl std::fmt::Debug for RegisteredModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredModel")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

/// The version to load: `version` when `name` has it registered, else the default.
fn registered_version(registry: &Path, name: &str, version: Option<u64>) -> Result<u64> {
    let model_dir = layout::model_dir(registry, name)?;
    let registered = layout::versions(registry, name)?;
    if registered.is_empty() {
        return Err(Error::Registry {
            path: model_dir,
            message: format!("no registered version of {name:?} in this registry"),
        });
    }
    match version {
        Some(v) if registered.contains(&v) => Ok(v),
        Some(v) => Err(Error::Registry {
            path: model_dir,
            message: format!("no version {v} (registered: {registered:?})"),
        }),
        None => read_pointer(registry, name)?
            .default
            .ok_or_else(|| Error::Registry {
                path: model_dir,
                message: "no default version; promote one or name a version".into(),
            }),
    }
}
