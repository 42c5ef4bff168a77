use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Hex sha256 of a file, streamed in 1 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Hex sha256 of a byte slice.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One digest for a whole directory tree: sha256 over the sorted `relative path\0file sha256\n`
/// lines of every regular file below `root`. Returns the digest and the number of files.
///
/// Renaming, adding, removing or editing any file changes it; the order files are listed in does not.
pub fn sha256_tree(root: &Path) -> Result<(String, usize)> {
    let mut files = Vec::new();
    collect_files(root, root, &mut files)?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in &files {
        let digest = sha256_file(&root.join(rel))?;
        hasher.update(rel.as_bytes());
        hasher.update([0u8]);
        hasher.update(digest.as_bytes());
        hasher.update(b"\n");
    }
    Ok((hex::encode(hasher.finalize()), files.len()))
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| Error::io(&path, e))?;
        if kind.is_dir() {
            collect_files(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn tree_digest_sees_renames_and_edits() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x.txt"), b"1").unwrap();
        let (d1, n) = sha256_tree(dir.path()).unwrap();
        assert_eq!(n, 1);
        std::fs::rename(dir.path().join("a/x.txt"), dir.path().join("a/y.txt")).unwrap();
        let (d2, _) = sha256_tree(dir.path()).unwrap();
        assert_ne!(d1, d2);
        std::fs::write(dir.path().join("a/y.txt"), b"2").unwrap();
        let (d3, _) = sha256_tree(dir.path()).unwrap();
        assert_ne!(d2, d3);
    }
}
