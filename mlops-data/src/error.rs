use std::path::PathBuf;

/// Everything that can go wrong while ingesting data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading a source or writing the output failed (I/O, `.npy`, JSON, checksums).
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    /// An IDX file is not valid: a corrupt gzip stream, a wrong magic number, element type or
    /// dimension count, or a header that promises more or less data than the file holds.
    #[error("{}: {message}", path.display())]
    Idx {
        /// The IDX file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file in an image folder could not be decoded as an image.
    #[error("{}: cannot decode image: {source}", path.display())]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// A `--source` cannot be used: it holds no images, an IDX images file lacks its labels
    /// file or disagrees with it in count, a label has no class name, a class folder is empty.
    #[error("{}: {message}", path.display())]
    Source {
        /// The source path, or the file or folder within it at fault.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The [`DataConfig`](crate::DataConfig) cannot work: fractions out of range or leaving
    /// a role empty, no sources, `npy_interval` or `image_size` out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn idx(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Idx {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    pub(crate) fn source(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Source {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// Result alias for [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
