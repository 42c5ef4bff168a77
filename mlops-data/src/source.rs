//! Reading `--source` paths (IDX files or directories, image folders) into one labelled set.

use std::path::{Path, PathBuf};

use mlops_core::artifact::data::SourceSummary;
use mlops_core::preprocess;
use mlops_core::progress::{self, Progress};
use mlops_core::FileEntry;

use crate::idx::read_idx;
use crate::{Error, Result};

/// Fashion-MNIST's class names, in label order.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// All decoded images of all sources, as bytes of `height x width` grayscale.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Height every image was resized to, in pixels.
    pub height: usize,
    /// Width every image was resized to, in pixels.
    pub width: usize,
    /// All images back to back, `height * width` bytes each (see [`Loaded::image`]).
    pub pixels: Vec<u8>,
    /// The class of each image, an index into `classes`.
    pub labels: Vec<usize>,
    /// For each image, whether it came from an IDX test file (`t10k-*`, `test-*`).
    pub designated_test: Vec<bool>,
    /// Class names, indexed by label: configured names first, then new ones as met.
    pub classes: Vec<String>,
    /// Manifest entries of the files and class folders read, for the stage's inputs.
    pub inputs: Vec<FileEntry>,
    /// What each source contributed, in the order read.
    pub sources: Vec<SourceSummary>,
}

impl Loaded {
    /// Number of images loaded.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether no image was loaded.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.height * self.width;
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Index of class `name`, matching existing classes loosely (case, punctuation, spaces) so
    /// that a folder `t-shirt_top` extends Fashion-MNIST's `T-shirt/top`; unknown names are
    /// appended as new classes.
    fn class_id(&mut self, name: &str) -> usize {
        let key = class_key(name);
        if let Some(i) = self.classes.iter().position(|c| class_key(c) == key) {
            return i;
        }
        self.classes.push(name.to_string());
        self.classes.len() - 1
    }

    fn push(&mut self, pixels: &[u8], label: usize, designated_test: bool) {
        self.pixels.extend_from_slice(pixels);
        self.labels.push(label);
        self.designated_test.push(designated_test);
    }
}

fn class_key(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Reads every source in order into one set of `height x width` images.
pub fn load_sources(
    sources: &[PathBuf],
    height: usize,
    width: usize,
    class_names: Option<&[String]>,
    progress: &dyn Progress,
) -> Result<Loaded> {
    if sources.is_empty() {
        return Err(Error::Config("at least one --source is required".into()));
    }
    let mut loaded = Loaded {
        height,
        width,
        ..Default::default()
    };
    if let Some(names) = class_names {
        for name in names {
            loaded.class_id(name);
        }
    }
    for source in sources {
        let before = loaded.len();
        let before_test = loaded.designated_test.iter().filter(|t| **t).count();
        let kind = load_source(source, &mut loaded, class_names, progress)?;
        let images = loaded.len() - before;
        if images == 0 {
            return Err(Error::source(source, "empty source: it holds no images"));
        }
        let designated_test = loaded.designated_test.iter().filter(|t| **t).count() - before_test;
        tracing::info!(source = %source.display(), kind, images, designated_test, "loaded source");
        loaded.sources.push(SourceSummary {
            path: source.display().to_string(),
            kind: kind.to_string(),
            images,
            designated_test,
        });
    }
    Ok(loaded)
}

fn load_source(
    source: &Path,
    loaded: &mut Loaded,
    class_names: Option<&[String]>,
    progress: &dyn Progress,
) -> Result<&'static str> {
    let meta = std::fs::metadata(source).map_err(|e| mlops_core::Error::io(source, e))?;
    if meta.is_file() {
        let labels = labels_for(source).ok_or_else(|| {
            Error::source(
                source,
                "not an IDX images file (expected a name like train-images-idx3-ubyte[.gz] with its labels file beside it)",
            )
        })?;
        load_idx_pair(source, &labels, loaded, class_names)?;
        return Ok("idx");
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(source)
        .map_err(|e| mlops_core::Error::io(source, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| mlops_core::Error::io(source, e))?;
    entries.sort();
    let idx_images: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.is_file() && file_name(p).contains("images-idx3"))
        .collect();
    if !idx_images.is_empty() {
        for images in idx_images {
            let labels = labels_for(images).ok_or_else(|| {
                Error::source(
                    images,
                    "no matching labels-idx1 file beside this images file",
                )
            })?;
            load_idx_pair(images, &labels, loaded, class_names)?;
        }
        return Ok("idx");
    }
    let class_dirs: Vec<&PathBuf> = entries
        .iter()
        .filter(|p| p.is_dir() && !file_name(p).starts_with('.'))
        .collect();
    if class_dirs.is_empty() {
        return Err(Error::source(
            source,
            "empty source: no IDX files (*-images-idx3-ubyte[.gz]) and no class sub-folders",
        ));
    }
    for stray in entries.iter().filter(|p| p.is_file()) {
        tracing::warn!(file = %stray.display(), "ignoring a file outside the class folders");
    }
    load_folder(&class_dirs, loaded, progress)?;
    Ok("folder")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `x-images-idx3-ubyte[.gz]` -> the existing `x-labels-idx1-ubyte[.gz]` beside it.
fn labels_for(images: &Path) -> Option<PathBuf> {
    let name = file_name(images);
    if !name.contains("images-idx3") {
        return None;
    }
    let stem = name
        .replace("images-idx3", "labels-idx1")
        .trim_end_matches(".gz")
        .to_string();
    [stem.clone(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| images.with_file_name(n))
        .find(|p| p.is_file())
}

fn is_test_file(path: &Path) -> bool {
    let name = file_name(path).to_lowercase();
    name.starts_with("t10k") || name.starts_with("test")
}

fn load_idx_pair(
    images_path: &Path,
    labels_path: &Path,
    loaded: &mut Loaded,
    class_names: Option<&[String]>,
) -> Result<()> {
    let images = read_idx(images_path, 3)?;
    let labels = read_idx(labels_path, 1)?;
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    if n != labels.dims[0] {
        return Err(Error::source(
            images_path,
            format!(
                "image/label count mismatch: {n} images but {} labels in {}",
                labels.dims[0],
                labels_path.display()
            ),
        ));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::source(
            images_path,
            "empty source: the IDX file holds no images",
        ));
    }
    let max_label = labels.data.iter().copied().max().unwrap_or(0) as usize;
    let names: Vec<String> = match class_names {
        Some(names) if names.len() > max_label => names.to_vec(),
        Some(names) => {
            return Err(Error::source(
                labels_path,
                format!(
                    "label {max_label} has no name: class_names lists only {}",
                    names.len()
                ),
            ))
        }
        None if images_path
            .to_string_lossy()
            .to_lowercase()
            .contains("fashion")
            && max_label < FASHION_MNIST_CLASSES.len() =>
        {
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect()
        }
        None => (0..=max_label).map(|i| i.to_string()).collect(),
    };
    let ids: Vec<usize> = names.iter().map(|name| loaded.class_id(name)).collect();
    let test = is_test_file(images_path);
    let frame = h * w;
    for (i, &label) in labels.data.iter().enumerate() {
        let pixels = &images.data[i * frame..(i + 1) * frame];
        if (h, w) == (loaded.height, loaded.width) {
            loaded.push(pixels, ids[label as usize], test);
        } else {
            let resized =
                preprocess::resize_gray(pixels.to_vec(), h, w, loaded.height, loaded.width);
            loaded.push(&resized, ids[label as usize], test);
        }
    }
    loaded.inputs.push(FileEntry::input_file(images_path)?);
    loaded.inputs.push(FileEntry::input_file(labels_path)?);
    Ok(())
}

fn load_folder(
    class_dirs: &[&PathBuf],
    loaded: &mut Loaded,
    progress: &dyn Progress,
) -> Result<()> {
    let mut files = Vec::new();
    for dir in class_dirs {
        let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| mlops_core::Error::io(dir, e))?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(|e| mlops_core::Error::io(dir, e))?;
        images.retain(|p| p.is_file() && !file_name(p).starts_with('.'));
        images.sort();
        if images.is_empty() {
            return Err(Error::source(dir, "class folder has no images"));
        }
        let class = loaded.class_id(&file_name(dir));
        files.extend(images.into_iter().map(|p| (p, class)));
    }
    let task = progress::start(progress, "decode", files.len() as u64);
    for (path, class) in &files {
        let bytes = std::fs::read(path).map_err(|e| mlops_core::Error::io(path, e))?;
        let img = preprocess::decode(&bytes).map_err(|source| Error::Image {
            path: path.clone(),
            source,
        })?;
        let pixels = preprocess::to_gray(&img, loaded.height, loaded.width);
        loaded.push(&pixels, *class, false);
        task.inc(1);
    }
    drop(task);
    for dir in class_dirs {
        loaded.inputs.push(FileEntry::input_tree(dir)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folder_names_match_known_classes_loosely() {
        let mut loaded = Loaded::default();
        for name in FASHION_MNIST_CLASSES {
            loaded.class_id(name);
        }
        assert_eq!(loaded.class_id("t-shirt_top"), 0);
        assert_eq!(loaded.class_id("ankle-boot"), 9);
        assert_eq!(loaded.class_id("Hat"), 10);
    }

    #[test]
    fn finds_label_files() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("t10k-images-idx3-ubyte.gz");
        std::fs::write(&images, b"").unwrap();
        assert_eq!(labels_for(&images), None);
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte.gz"), b"").unwrap();
        assert_eq!(
            labels_for(&images),
            Some(dir.path().join("t10k-labels-idx1-ubyte.gz"))
        );
        assert!(is_test_file(&images));
    }
}
