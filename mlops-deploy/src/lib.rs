//! `mlops-deploy`: the deploy half of the pipeline. A versioned model registry
//! ([`registry`]), a TorchServe- and KServe-compatible inference server ([`serve`]) and
//! packaging for TorchServe and Kubernetes ([`package`]).
//!
//! Serving links the shared inference (`mlops-embed`'s [`mlops_embed::Embedder`]) and classifier
//! (`mlops-index`'s [`mlops_index::Classifier`]), never the training code, and preprocesses
//! request images with the data stage's own function ([`mlops_core::preprocess`]), so a served
//! prediction is the one the eval stage measured.
//!
//! ```no_run
//! use mlops_deploy::registry::{self, RegisterConfig};
//! let version = registry::register(&RegisterConfig {
//!     model: "runs/default/train".into(),
//!     index: "runs/default/index".into(),
//!     eval: "runs/default/eval".into(),
//!     registry: "runs/registry".into(),
//!     promote: true,
//!     ..Default::default()
//! })?;
//! println!("registered {} version {}", version.name, version.version);
//! // Then serve every model's default version (blocks until SIGTERM):
//! mlops_deploy::serve::run(mlops_deploy::serve::ServeConfig {
//!     registry: "runs/registry".into(),
//!     ..Default::default()
//! })?;
//! # Ok::<(), mlops_deploy::Error>(())
//! ```

pub mod package;
pub mod registry;
pub mod serve;

use std::path::PathBuf;

/// Errors of registering, packaging and serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    #[error(transparent)]
    Embed(#[from] mlops_embed::Error),
    #[error(transparent)]
    Index(#[from] mlops_index::Error),
    #[error(transparent)]
    Torch(#[from] mlops_torch::Error),
    #[error("{}: the deploy gate rejected this model ({reasons}); --force registers it anyway", path.display())]
    Rejected { path: PathBuf, reasons: String },
    #[error("{}: {message}", path.display())]
    Registry { path: PathBuf, message: String },
    #[error("{}: not the model registered as {name:?}: {}; register it under another name", path.display(), differences.join("; "))]
    Signature {
        path: PathBuf,
        name: String,
        differences: Vec<String>,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: cannot write the archive: {source}", path.display())]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
