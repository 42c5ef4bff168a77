//! `mlops-deploy`: the deploy half of the pipeline. A versioned model registry
//! ([`registry`]), a TorchServe- and KServe-compatible inference server ([`serve`]), packaging
//! for TorchServe and Kubernetes ([`package`]), and in-process classification with a
//! registered version ([`RegisteredModel`]).
//!
//! Serving links the shared inference (`mlops-embed`'s [`mlops_embed::Embedder`]) and classifier
//! (`mlops-index`'s [`mlops_index::Classifier`]), never the training code, and preprocesses
//! request images with the data stage's own function ([`mlops_core::preprocess`]), so a served
//! prediction is the one the eval stage measured. [`RegisteredModel`] predicts with the same
//! code without a server.
//!
//! The binary's command line and logging are the default feature `cli`; a library user can turn
//! it off (`default-features = false`) and leave clap and the logging crates out.
//!
//! ```
//! # // A small run of the real stages with a fixture model, as `cargo xtask run` would leave it.
//! # use mlops_data::fixtures::{self, IdxFixture};
//! # let tmp = tempfile::tempdir()?;
//! # let run = tmp.path().join("runs/default");
//! # fixtures::write_idx(&tmp.path().join("src"), &IdxFixture::default())?;
//! # mlops_data::run(&mlops_data::DataConfig {
//! #     sources: vec![tmp.path().join("src")],
//! #     out: run.join("data"),
//! #     ..Default::default()
//! # })?;
//! # mlops_embed::testing::fixture_model(&run.join("train"), &run.join("data"))?;
//! # mlops_embed::run(&mlops_embed::EmbedConfig {
//! #     model: run.join("train"),
//! #     data: run.join("data"),
//! #     out: run.join("embed"),
//! #     ..Default::default()
//! # })?;
//! # mlops_index::run(&mlops_index::IndexConfig {
//! #     embeddings: run.join("embed"),
//! #     out: run.join("index"),
//! #     ..Default::default()
//! # })?;
//! # mlops_eval::run(&mlops_eval::EvalConfig {
//! #     index: run.join("index"),
//! #     embeddings: run.join("embed"),
//! #     out: run.join("eval"),
//! #     gate: mlops_eval::GatePolicy { min_accuracy: 0.0, ..Default::default() },
//! #     ..Default::default()
//! # })?;
//! # let registry_dir = tmp.path().join("runs/registry");
//! # let mut png = Vec::new();
//! # image::GrayImage::from_pixel(28, 28, image::Luma([200]))
//! #     .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
//! use mlops_deploy::registry::{self, RegisterConfig};
//! use mlops_deploy::RegisteredModel;
//!
//! let version = registry::register(&RegisterConfig {
//!     model: run.join("train"),
//!     index: run.join("index"),
//!     eval: run.join("eval"),
//!     registry: registry_dir.clone(),
//!     promote: true,
//!     ..Default::default()
//! })?;
//! println!("registered {} version {}", version.name, version.version);
//!
//! // Classify with the new default version in this process...
//! let model = RegisteredModel::open(&registry_dir, &version.name, None)?;
//! assert_eq!(model.version(), version.version);
//! let prediction = &model.classify(&[&png])?[0];
//! println!("{}", model.label(prediction.class).unwrap_or("?"));
//!
//! // ...or serve every model's default version over HTTP. Not run here: it blocks until
//! // SIGTERM.
//! # if false {
//! mlops_deploy::serve::run(mlops_deploy::serve::ServeConfig {
//!     registry: registry_dir,
//!     ..Default::default()
//! })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub mod model;
pub mod package;
pub mod registry;
pub mod serve;

use std::path::PathBuf;

pub use model::{Neighbour, Prediction, RegisteredModel};

/// Errors of registering, packaging and serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A stage directory, registry file or manifest is missing, unreadable or fails its
    /// checksum.
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// Loading or running a version's model failed.
    #[error(transparent)]
    Embed(#[from] mlops_embed::Error),
    /// Loading or searching a version's index failed.
    #[error(transparent)]
    Index(#[from] mlops_index::Error),
    /// No such device, or libtorch failed.
    #[error(transparent)]
    Torch(#[from] mlops_torch::Error),
    /// The eval stage's gate refused the model and `force` was not given.
    #[error("{}: the deploy gate rejected this model ({reasons}); --force registers it anyway", path.display())]
    Rejected {
        /// The evaluation's decision file.
        path: PathBuf,
        /// Why the gate refused, joined.
        reasons: String,
    },
    /// A registry operation is impossible in the registry's present state (nothing to roll
    /// back, no default version, no such version).
    #[error("{}: {message}", path.display())]
    Registry {
        /// The model directory (or registry) concerned.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A model whose inputs or classes differ from those registered under the name.
    #[error("{}: not the model registered as {name:?}: {}; register it under another name", path.display(), differences.join("; "))]
    Signature {
        /// The candidate's model description.
        path: PathBuf,
        /// The registered model's name.
        name: String,
        /// Each difference, described.
        differences: Vec<String>,
    },
    /// Settings that cannot work together, or a server that could not start a version.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An I/O failure outside the artifact files (listening, starting threads).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The failure.
        #[source]
        source: std::io::Error,
    },
    /// Writing the TorchServe archive failed.
    #[error("{}: cannot write the archive: {source}", path.display())]
    Zip {
        /// The archive.
        path: PathBuf,
        /// The failure.
        #[source]
        source: zip::result::ZipError,
    },
    /// An image given to [`RegisteredModel::classify`] is not one the decoder reads.
    #[error("{model} version {version}: image {index} cannot be decoded: {source}")]
    Decode {
        /// The model classifying.
        model: String,
        /// Its version.
        version: u64,
        /// The image's position in the call.
        index: usize,
        /// The decoder's complaint.
        #[source]
        source: image::ImageError,
    },
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
