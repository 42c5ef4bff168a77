//! mlops-rs as one library: ingest labelled images, prove the data sound, train an embedding
//! network with ArcFace loss, embed, index with FAISS, classify by nearest neighbours, evaluate,
//! register and serve: every stage of the `cargo xtask pipeline`, callable from your program.
//!
//! # The stages
//!
//! Each stage is a module (one crate underneath, enabled by the cargo feature of the same name)
//! with a serde config struct whose `Default` suits Fashion-MNIST, and a `run(&config)` that
//! reads its input directories and writes its output directory atomically, with a
//! `manifest.json` that records the sha256 of everything consumed and produced.
//!
//! | module | feature | libtorch | reads | writes |
//! |---|---|---|---|---|
//! | [`data`] | `data` | no | IDX files, image folders `ROOT/<class>/*.png` | sharded `.npy` per role (train/val/gallery/test) |
//! | [`validate`] | `validate` | no | data | a validation report; fails on bad data |
//! | [`train`] | `train` | yes | data | `model.pt` (TorchScript), `model.json`, curves |
//! | [`embed`] | `embed` | yes | model, data | L2-normalised embeddings per role |
//! | [`index`] | `index` | no | embeddings | a FAISS index + labels: the classifier |
//! | [`eval`] | `eval` | no | index, embeddings | metrics, report, deploy decision |
//! | [`deploy`] | `deploy` | yes | model, index, eval | registry versions, packages, the HTTP server |
//!
//! [`core`] is the contract between them: every output directory as a type
//! ([`core::artifact`]), manifests, `.npy` I/O, image preprocessing. Everything is on by
//! default; `default-features = false, features = ["data", "validate", "index", "eval"]` builds
//! without libtorch.
//!
//! # A whole pipeline in one process
//!
//! (The `quickstart` example is this, with a real image folder: `cargo run --release -p mlops
//! --example quickstart -- FOLDER`. In a fresh clone of the repository, `cargo xtask setup`
//! first: it fetches the libtorch the model stages link.)
//!
//! ```
//! use mlops::prelude::*;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let work = tempfile::tempdir()?;
//! let dir = |name: &str| work.path().join(name);
//! // A small image folder: 4 classes x 40 PNG/JPEG images of 16x16 pixels.
//! mlops_data::fixtures::write_folder(&dir("images"), &["a", "b", "c", "d"], 40, 16, 7)?;
//!
//! mlops::data::run(&DataConfig {
//!     sources: vec![dir("images")],
//!     out: dir("data"),
//!     image_size: [16, 16],
//!     ..Default::default()
//! })?;
//! mlops::validate::run(&ValidateConfig { data: dir("data"), out: dir("validate"), ..Default::default() })?;
//! let trained = mlops::train::run(&TrainConfig {
//!     data: dir("data"),
//!     out: dir("train"),
//!     arch: Arch::Seed,
//!     epochs: Some(2),
//!     batch_size: 32,
//!     test_time_flip: false,
//!     ..Default::default()
//! })?;
//! mlops::embed::run(&EmbedConfig { model: dir("train"), data: dir("data"), out: dir("embed"), ..Default::default() })?;
//! let index = mlops::index::run(&IndexConfig { embeddings: dir("embed"), out: dir("index"), ..Default::default() })?;
//! assert_eq!(index.ntotal, DataDir::open(&dir("data"))?.role(Role::Gallery)?.rows);
//! assert!(trained.best_val_accuracy > 0.25);
//! # Ok(())
//! # }
//! ```
//!
//! Then classify new images with the trained model and the index ([`embed::Embedder`],
//! [`core::preprocess::Preprocess`], [`index::Classifier`]; see `examples/quickstart.rs`), or
//! register them ([`deploy::registry`]) and load a registered version in your program with
//! [`deploy::RegisteredModel`] (`examples/classify.rs`).
//!
//! # Progress and logs
//!
//! Stages never draw on the terminal. Each has `run_with(&config, &progress)` beside `run`,
//! taking any [`core::progress::Progress`]: a closure over [`core::progress::Event`]s, or
//! [`core::progress::Silent`]. Logs go through `tracing`; install a subscriber to see them.
//! The command-line crates' CLI dependencies (clap, indicatif, tracing-subscriber) are behind
//! their `cli` feature, which this crate leaves off.
//!
//! # Your own stage
//!
//! A stage of your own reads our directories through [`core::artifact`] and writes its own
//! with [`core::OutputDir`] and a [`core::Manifest`], so it is as verifiable and cacheable as
//! ours: see `examples/custom_stage.rs`.
//!
//! # Linking libtorch
//!
//! With `train`, `embed` or `deploy`, binaries link libtorch (found by `torch-sys` through
//! `LIBTORCH` or a Python `torch`). To run them without `LD_LIBRARY_PATH`, give your crate a
//! one-line `build.rs`, `fn main() { mlops_torch_build::link_libtorch() }`, with
//! `mlops-torch-build` as a build-dependency: it writes an rpath to the directory this crate
//! found.

#![warn(missing_docs)]

pub use mlops_core as core;
#[cfg(feature = "data")]
pub use mlops_data as data;
#[cfg(feature = "deploy")]
pub use mlops_deploy as deploy;
#[cfg(feature = "embed")]
pub use mlops_embed as embed;
#[cfg(feature = "eval")]
pub use mlops_eval as eval;
#[cfg(feature = "index")]
pub use mlops_index as index;
#[cfg(feature = "torch")]
pub use mlops_torch as torch;
#[cfg(feature = "train")]
pub use mlops_train as train;
#[cfg(feature = "validate")]
pub use mlops_validate as validate;
/// The libtorch binding the model stages use (devices, tensors), at the version they link.
#[cfg(feature = "torch")]
pub use tch;

/// The types most programs need: every stage's config, the artifact directories, the
/// inference types and progress reporting.
pub mod prelude {
    pub use mlops_core::artifact::{
        ClassifierSpec, DataDir, EmbeddingsDir, EvalDir, IndexDir, ModelDir, Role, Vote,
    };
    pub use mlops_core::preprocess::Preprocess;
    pub use mlops_core::progress::{Event, Progress, Silent};
    pub use mlops_core::{Manifest, OutputDir};
    #[cfg(feature = "data")]
    pub use mlops_data::DataConfig;
    #[cfg(feature = "deploy")]
    pub use mlops_deploy::RegisteredModel;
    #[cfg(feature = "embed")]
    pub use mlops_embed::{EmbedConfig, Embedder};
    #[cfg(feature = "eval")]
    pub use mlops_eval::EvalConfig;
    #[cfg(feature = "index")]
    pub use mlops_index::{Classifier, IndexConfig, Prediction};
    #[cfg(feature = "torch")]
    pub use mlops_torch::DeviceSpec;
    #[cfg(feature = "train")]
    pub use mlops_train::{Arch, TrainConfig};
    #[cfg(feature = "validate")]
    pub use mlops_validate::ValidateConfig;
}
