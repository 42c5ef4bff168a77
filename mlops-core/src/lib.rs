//! Shared artifact plumbing for the mlops-rs stages.
//!
//! Every stage reads and writes artifacts on disk and describes them in a `manifest.json`.
//! This crate holds the pieces all stages share so that each stage crate only holds its own logic:
//!
//! - [`Manifest`]: what a stage consumed and produced (paths, sha256, array shapes, timings).
//! - [`OutputDir`]: a staging area that makes a stage's whole output appear at once, manifest last.
//! - [`npy`]: typed `.npy` reading and writing with errors that name the file.
//! - [`sha256_file`]: streaming checksums.
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

pub mod embeddings;
mod error;
mod hash;
mod manifest;
pub mod npy;
mod outdir;
pub mod telemetry;
pub mod testing;

pub use error::{Error, Result};
pub use hash::{sha256_bytes, sha256_file, sha256_tree};
pub use manifest::{FileEntry, Manifest, MANIFEST_FILE};
pub use outdir::{write_atomic, OutputDir};

/// The stage binaries' `--config FILE.toml`: the file's settings, or the defaults without one.
pub fn load_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
) -> Result<T> {
    path.map_or_else(|| Ok(T::default()), load_toml)
}

/// Loads a TOML config file into a serde struct whose missing fields take their defaults.
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::Config {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
