use std::path::PathBuf;

/// Everything that can go wrong while ingesting data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Artifact(#[from] mlops_core::Error),
    #[error("{}: {message}", path.display())]
    Idx { path: PathBuf, message: String },
    #[error("{}: cannot decode image: {source}", path.display())]
    Image {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    #[error("{}: {message}", path.display())]
    Source { path: PathBuf, message: String },
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
