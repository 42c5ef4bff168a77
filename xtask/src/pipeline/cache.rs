//! The step cache: a stage's key (the code it runs, its arguments, the checksums of what it
//! reads), stored after its manifest, and the check that a finished stage is still intact.

use std::path::Path;

use anyhow::{Context, Result};
use mlops_core::artifact::registry;
use mlops_core::{sha256_bytes, sha256_file, Manifest};
use serde::{Deserialize, Serialize};

use crate::dag::Stage;

/// Where a stage's key is stored, beside its outputs.
pub const CACHE_KEY: &str = ".cache-key";
/// The file the deploy step writes its registered version to (its only output).
pub const VERSION_OUT: &str = "version.out";

/// One file a stage read or wrote, by path and content hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSum {
    pub path: String,
    pub sha256: String,
}

impl FileSum {
    /// `path` with the sha256 of its content.
    pub fn of(path: &Path) -> Result<FileSum> {
        Ok(FileSum {
            path: path.display().to_string(),
            sha256: sha256_file(path)?,
        })
    }
}

/// The stage's cache key: the code it runs (binary or image), arguments (parameters
/// included), inputs' checksums.
pub fn cache_key(stage: &Stage, code: &str, argv: &[String], inputs: &[FileSum]) -> String {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(stage.name.as_bytes());
    bytes.extend_from_slice(code.as_bytes());
    for a in argv {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    for f in inputs {
        bytes.extend_from_slice(format!("{}\0{}\n", f.path, f.sha256).as_bytes());
    }
    sha256_bytes(&bytes)
}

/// Whether the stage's last run in `dir` is finished, intact and made with `key`.
pub fn cached(stage: &Stage, dir: &Path, key: &str, registry: &Path, model: &str) -> bool {
    let stored = std::fs::read_to_string(dir.join(CACHE_KEY)).unwrap_or_default();
    if stored != key {
        return false;
    }
    if stage.out_flag.is_none() {
        // The deploy step: its version must still be in the registry.
        let version = std::fs::read_to_string(dir.join(VERSION_OUT)).unwrap_or_default();
        return version.trim().parse::<u64>().is_ok_and(|v| {
            registry::version_dir(registry, model, v)
                .is_ok_and(|d| d.join(mlops_core::MANIFEST_FILE).is_file())
        });
    }
    let Ok(outputs) = manifest_outputs(dir) else {
        return false;
    };
    for f in &outputs {
        if sha256_file(Path::new(&f.path)).ok().as_deref() != Some(f.sha256.as_str()) {
            eprintln!("    {} changed since the cached run: running again", f.path);
            return false;
        }
    }
    true
}

/// What a finished stage wrote: the outputs its manifest lists, or the deploy step's version
/// file.
pub fn outputs(stage: &Stage, dir: &Path) -> Result<Vec<FileSum>> {
    if stage.out_flag.is_none() {
        return Ok(vec![FileSum::of(&dir.join(VERSION_OUT))?]);
    }
    manifest_outputs(dir)
}

/// Every output an upstream stage's manifest lists, by path under `dir`; the stage must be
/// finished.
pub fn manifest_outputs(dir: &Path) -> Result<Vec<FileSum>> {
    let manifest =
        Manifest::load(dir).with_context(|| format!("{} has not finished", dir.display()))?;
    Ok(manifest
        .outputs
        .into_iter()
        .map(|e| FileSum {
            path: dir.join(&e.path).display().to_string(),
            sha256: e.sha256,
        })
        .collect())
}

/// A cheap fingerprint of a data source: relative path, size and modification time of every
/// file below it (content hashing 70,000 images on every run would cost more than ingesting).
pub fn source_fingerprint(path: &Path) -> Result<String> {
    let mut lines = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let rel = p.strip_prefix(path).unwrap_or(&p).display().to_string();
            lines.push(format!("{rel}\0{}\0{mtime}\n", meta.len()));
        }
    }
    lines.sort();
    Ok(sha256_bytes(lines.concat().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_fingerprint_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        let one = source_fingerprint(dir.path()).unwrap();
        assert_eq!(one, source_fingerprint(dir.path()).unwrap());
        std::fs::write(dir.path().join("b"), b"2").unwrap();
        assert_ne!(one, source_fingerprint(dir.path()).unwrap());
    }

    #[test]
    fn keys_separate_arguments_and_inputs() {
        let stage = crate::dag::stage("index").unwrap();
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let input = |sha: &str| FileSum {
            path: "p".into(),
            sha256: sha.into(),
        };
        let key = cache_key(stage, "code", &argv(&["--a", "b"]), &[input("1")]);
        assert_eq!(
            key,
            cache_key(stage, "code", &argv(&["--a", "b"]), &[input("1")])
        );
        assert_ne!(
            key,
            cache_key(stage, "code", &argv(&["--ab"]), &[input("1")])
        );
        assert_ne!(
            key,
            cache_key(stage, "code", &argv(&["--a", "b"]), &[input("2")])
        );
        assert_ne!(
            key,
            cache_key(stage, "other", &argv(&["--a", "b"]), &[input("1")])
        );
    }
}
