//! The shared ground of the mlops-rs stages: the artifact contract and its plumbing.
//!
//! Stages meet only through artifacts on disk, and this crate (no libtorch, no FAISS) describes
//! them all:
//!
//! - [`artifact`]: every stage directory as a type ([`artifact::DataDir`],
//!   [`artifact::ModelDir`], [`artifact::EmbeddingsDir`], [`artifact::IndexDir`],
//!   [`artifact::EvalDir`]) with its file names, summary schema and reader.
//! - [`Manifest`]: what a stage consumed and produced (paths, sha256, array shapes, timings).
//! - [`OutputDir`]: a staging area that makes a stage's whole output appear at once, manifest last.
//! - [`npy`]: typed `.npy` reading and writing with errors that name the file.
//! - [`config`] and [`cli`]: one way to merge defaults, a TOML file, `--set` and flags.
//! - [`preprocess`] (feature `image`): image bytes -> model input, shared by ingest and serving.
//!
//! ```
//! use mlops_core::{Manifest, OutputDir};
//! use ndarray::array;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut out = OutputDir::create(dir.path()).unwrap();
//! let labels = array![0i64, 1, 2];
//! let entry = out.write_npy("labels_000.npy", &labels).unwrap();
//! let mut manifest = Manifest::begin("example", "0.1.0", &serde_json::json!({"seed": 1}));
//! manifest.outputs.push(entry);
//! out.commit(manifest).unwrap();
//!
//! let back = Manifest::load(dir.path()).unwrap();
//! assert_eq!(back.outputs[0].shape.as_deref(), Some(&[3usize][..]));
//! back.verify_outputs(dir.path()).unwrap();
//! ```

#![warn(missing_docs)]

pub mod artifact;
#[cfg(feature = "cli")]
pub mod cli;
pub mod config;
mod error;
mod hash;
mod manifest;
#[cfg(feature = "notify")]
pub mod notify;
pub mod npy;
mod outdir;
#[cfg(feature = "plot")]
pub mod plot;
#[cfg(feature = "image")]
pub mod preprocess;
pub mod progress;
#[cfg(feature = "cli")]
pub mod telemetry;
#[cfg(feature = "test-support")]
pub mod testing;

pub use error::{Error, Result};
pub use hash::{sha256_bytes, sha256_file, sha256_tree};
pub use manifest::{FileEntry, Manifest, MANIFEST_FILE};
pub use outdir::{write_atomic, OutputDir};
