use std::path::{Path, PathBuf};

/// Errors from artifact I/O. Each names the file it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading, writing, creating or renaming a file or directory failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// What the operating system reported.
        #[source]
        source: std::io::Error,
    },
    /// A `.npy` file could not be read as the expected element type and dimensionality.
    #[error("{}: cannot read .npy: {source}", path.display())]
    ReadNpy {
        /// The `.npy` file.
        path: PathBuf,
        /// Why reading failed.
        #[source]
        source: ndarray_npy::ReadNpyError,
    },
    /// An array could not be written as a `.npy` file.
    #[error("{}: cannot write .npy: {source}", path.display())]
    WriteNpy {
        /// The `.npy` file.
        path: PathBuf,
        /// Why writing failed.
        #[source]
        source: ndarray_npy::WriteNpyError,
    },
    /// A JSON file (manifest, summary, pointer, description) did not parse into the expected
    /// type, or a value could not be serialised.
    #[error("{}: invalid json: {source}", path.display())]
    Json {
        /// The JSON file.
        path: PathBuf,
        /// The parse or serialisation error.
        #[source]
        source: serde_json::Error,
    },
    /// Settings from a TOML file, `--set` pairs or flags did not parse or do not fit the
    /// configuration type.
    #[error("{}: invalid config: {message}", path.display())]
    Config {
        /// The TOML file, or `<command line>` / `<--settings>` for settings given there.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// A file's sha256 differs from the one its manifest recorded.
    #[error("{}: checksum mismatch (manifest says {expected}, file has {actual}); the file was modified or corrupted", path.display())]
    Checksum {
        /// The file whose content changed.
        path: PathBuf,
        /// The sha256 the manifest recorded, in hex.
        expected: String,
        /// The sha256 of the file as it is now, in hex.
        actual: String,
    },
    /// A file or directory is readable but its content is wrong: a missing or foreign
    /// manifest, shapes that disagree with it, an absent role, a bad name.
    #[error("{}: {message}", path.display())]
    Invalid {
        /// The file or directory at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// An [`Error::Io`] about `path`.
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// An [`Error::Invalid`] about `path`.
    pub fn invalid(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::Invalid {
            path: path.as_ref().to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
