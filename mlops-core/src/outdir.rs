use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::npy::{HashingWriter, NpyElement};
use crate::{Error, FileEntry, Manifest, Result, MANIFEST_FILE};

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename,
/// so readers see either the old file or the complete new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = tmp_sibling(path);
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

fn tmp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// A stage's output directory under construction.
///
/// Files are written into a hidden staging directory inside the output directory. Only
/// [`OutputDir::commit`] moves them into place and writes `manifest.json` last; dropping an
/// uncommitted `OutputDir` (an error, a panic) deletes the staging directory. Creating one
/// removes an existing `manifest.json` first, so an interrupted re-run never looks finished.
#[derive(Debug)]
pub struct OutputDir {
    root: PathBuf,
    staging: PathBuf,
    previous_outputs: Vec<String>,
    written: Vec<String>,
    in_place: Vec<String>,
    committed: bool,
}

impl OutputDir {
    /// Prepares `root` (creating it if needed) for a new run of a stage.
    pub fn create(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
        let previous_outputs = Manifest::load(root)
            .map(|m| m.outputs.into_iter().map(|e| e.path).collect())
            .unwrap_or_default();
        let manifest = root.join(MANIFEST_FILE);
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(|e| Error::io(&manifest, e))?;
        }
        let staging = root.join(format!(".staging-{}", std::process::id()));
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
        }
        std::fs::create_dir(&staging).map_err(|e| Error::io(&staging, e))?;
        Ok(OutputDir {
            root: root.to_path_buf(),
            staging,
            previous_outputs,
            written: Vec::new(),
            in_place: Vec::new(),
            committed: false,
        })
    }

    /// The final output directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where a file named `name` is staged before commit.
    pub fn staged_path(&self, name: &str) -> PathBuf {
        self.staging.join(name)
    }

    /// Writes an array as `.npy` and returns its manifest entry (sha256, shape, dtype).
    pub fn write_npy<A, D>(
        &mut self,
        name: &str,
        array: &ndarray::ArrayBase<impl ndarray::Data<Elem = A>, D>,
    ) -> Result<FileEntry>
    where
        A: NpyElement,
        D: ndarray::Dimension,
    {
        use ndarray_npy::WriteNpyExt;
        let path = self.staging.join(name);
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, file));
        array
            .write_npy(&mut writer)
            .map_err(|source| Error::WriteNpy {
                path: path.clone(),
                source,
            })?;
        let (sha256, bytes) = writer.finish().map_err(|e| Error::io(&path, e))?;
        self.written.push(name.to_string());
        Ok(FileEntry {
            path: name.to_string(),
            sha256,
            bytes,
            shape: Some(array.shape().to_vec()),
            dtype: Some(A::NAME.to_string()),
            files: None,
        })
    }

    /// Writes raw bytes and returns their manifest entry.
    pub fn write_bytes(&mut self, name: &str, bytes: &[u8]) -> Result<FileEntry> {
        let path = self.staging.join(name);
        std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
        self.written.push(name.to_string());
        Ok(FileEntry {
            path: name.to_string(),
            sha256: crate::sha256_bytes(bytes),
            bytes: bytes.len() as u64,
            shape: None,
            dtype: None,
            files: None,
        })
    }

    /// Writes a value as pretty JSON and returns its manifest entry.
    pub fn write_json(&mut self, name: &str, value: &impl serde::Serialize) -> Result<FileEntry> {
        let mut text = serde_json::to_vec_pretty(value).map_err(|source| Error::Json {
            path: self.staging.join(name),
            source,
        })?;
        text.push(b'\n');
        self.write_bytes(name, &text)
    }

    /// Records a file the caller wrote itself at [`OutputDir::staged_path`].
    pub fn adopt(&mut self, name: &str) -> Result<FileEntry> {
        let path = self.staging.join(name);
        let entry = FileEntry::input_file(&path)?;
        self.written.push(name.to_string());
        Ok(FileEntry {
            path: name.to_string(),
            ..entry
        })
    }

    /// Records a file the stage wrote directly into the output directory (e.g. checkpoints that
    /// must survive an interruption), so that the manifest lists it and commit keeps it.
    pub fn keep_in_place(&mut self, name: &str) -> Result<FileEntry> {
        let entry = FileEntry::input_file(&self.root.join(name))?;
        self.in_place.push(name.to_string());
        Ok(FileEntry {
            path: name.to_string(),
            ..entry
        })
    }

    /// Moves every staged file into place, removes outputs of the previous run that this run
    /// did not produce again, then writes the manifest (finished now) atomically.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<Manifest> {
        let fresh: HashSet<&str> = self
            .written
            .iter()
            .chain(&self.in_place)
            .map(String::as_str)
            .collect();
        for stale in &self.previous_outputs {
            if !fresh.contains(stale.as_str()) && is_plain_name(stale) {
                let _ = std::fs::remove_file(self.root.join(stale));
            }
        }
        for name in &self.written {
            let from = self.staging.join(name);
            let to = self.root.join(name);
            // Outputs may sit in sub-directories (`k8s/deployment.yaml`).
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::rename(&from, &to).map_err(|e| Error::io(&to, e))?;
        }
        manifest.finish();
        let path = self.root.join(MANIFEST_FILE);
        let mut text = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Json {
            path: path.clone(),
            source,
        })?;
        text.push(b'\n');
        write_atomic(&path, &text)?;
        let _ = std::fs::remove_dir_all(&self.staging);
        self.committed = true;
        Ok(manifest)
    }
}

// Only ever delete files directly inside the output directory, whatever an old manifest says.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && name != ".."
}

impl Drop for OutputDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.staging);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_output_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut out = OutputDir::create(dir.path()).unwrap();
            out.write_bytes("a.txt", b"x").unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn rerun_removes_old_manifest_and_stale_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        let a = out.write_bytes("a.txt", b"x").unwrap();
        let b = out.write_bytes("b.txt", b"y").unwrap();
        let mut m = Manifest::begin("t", "0", &());
        m.outputs = vec![a, b];
        out.commit(m).unwrap();
        assert!(dir.path().join(MANIFEST_FILE).exists());

        let mut out = OutputDir::create(dir.path()).unwrap();
        assert!(!dir.path().join(MANIFEST_FILE).exists());
        let a = out.write_bytes("a.txt", b"z").unwrap();
        let mut m = Manifest::begin("t", "0", &());
        m.outputs = vec![a];
        let m = out.commit(m).unwrap();
        assert!(!dir.path().join("b.txt").exists());
        assert_eq!(std::fs::read(dir.path().join("a.txt")).unwrap(), b"z");
        m.verify_outputs(dir.path()).unwrap();
        std::fs::write(dir.path().join("a.txt"), b"tampered").unwrap();
        assert!(matches!(
            m.verify_outputs(dir.path()),
            Err(Error::Checksum { .. })
        ));
    }
}
