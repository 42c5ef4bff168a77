//! `cargo xtask gpu-kit --out DIR`: what proves the GPU path on a machine with a GPU and PyTorch
//! but no Rust toolchain and no registry.
//!
//! The data, train and embed binaries are built here against the headers and CPU libraries of
//! the GPU machine's PyTorch version (from its PyPI wheel, with the tch release made for it), in
//! a copy of the workspace under `target/gpu-kit/`. They link no CUDA library: on the GPU
//! machine `run.sh` puts that PyTorch's own libraries on the search path and preloads its
//! `libtorch_cuda.so`, which registers the CUDA backend. So the very same binaries also run
//! here on the CPU (`--check` does that, through the same script), and the kit stays small:
//! four stripped binaries, a slice of Fashion-MNIST and four scripts, well under the 64 MiB a
//! device call carries.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{root, run_cmd, setup};

#[derive(clap::Args)]
pub struct GpuKitArgs {
    /// Output directory (replaced).
    #[arg(long)]
    out: PathBuf,
    /// The PyTorch version on the GPU machine.
    #[arg(long, default_value = "2.11.0")]
    torch: String,
    /// Training images in the data slice (its test slice is a fifth of this).
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    /// Then run the kit here on the CPU, as the GPU machine will (a dry run of the script).
    #[arg(long)]
    check: bool,
}

/// The tch release built for each libtorch version (tch pins one libtorch per release).
const TCH_FOR_TORCH: &[(&str, &str)] = &[("2.11.0", "0.24.0"), ("2.13.0", "0.26.0")];

/// What the GPU check runs: the stages it chains, and `mlops-train`'s `train_step` example
/// (the training step alone, timed against PyTorch's), as (built file, name in the kit).
const BINARIES: [(&str, &str); 4] = [
    ("mlops-data", "mlops-data"),
    ("mlops-train", "mlops-train"),
    ("mlops-embed", "mlops-embed"),
    ("examples/train_step", "train_step"),
];
const PACKAGES: [&str; 3] = ["mlops-data", "mlops-train", "mlops-embed"];

/// A device call carries at most this much (the working tree included).
const MAX_KIT_BYTES: u64 = 48 << 20;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

pub fn run(args: &GpuKitArgs) -> Result<()> {
    let tch = TCH_FOR_TORCH
        .iter()
        .find(|(t, _)| *t == args.torch)
        .map(|(_, tch)| *tch)
        .with_context(|| {
            format!(
                "no tch release known for torch {} (known: {})",
                args.torch,
                TCH_FOR_TORCH
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let prefix = setup::libtorch(&setup::cache_dir()?, &args.torch)?;
    let bin = build(&args.torch, tch, &prefix)?;
    let out = &args.out;
    if out.exists() {
        fs::remove_dir_all(out).with_context(|| format!("cannot replace {}", out.display()))?;
    }
    fs::create_dir_all(out.join("bin"))?;
    let mut binaries = BTreeMap::new();
    for (built, name) in BINARIES {
        let dest = out.join("bin").join(name);
        fs::copy(bin.join(built), &dest)
            .with_context(|| format!("cannot copy {}", bin.join(built).display()))?;
        binaries.insert(name.to_string(), mlops_core::sha256_file(&dest)?);
    }
    let data = out.join("data");
    fs::create_dir_all(&data)?;
    let source = Path::new(FASHION_MNIST);
    write_idx_slice(source, "train", args.images, &data)?;
    write_idx_slice(source, "t10k", args.images / 5, &data)?;
    let scripts = root().join("scripts");
    for (from, to) in [
        ("gpu_kit/run.sh", "run.sh"),
        ("gpu_kit/compare.py", "compare.py"),
        ("torch_replica.py", "torch_replica.py"),
        ("bench_reference.py", "bench_reference.py"),
    ] {
        fs::copy(scripts.join(from), out.join(to))
            .with_context(|| format!("cannot copy scripts/{from}"))?;
    }
    let info = KitInfo {
        binaries,
        git_revision: crate::git_revision(),
        images: args.images,
        tch,
        torch: &args.torch,
    };
    fs::write(out.join("kit.json"), serde_json::to_string_pretty(&info)?)?;
    let bytes = dir_bytes(out)?;
    ensure!(
        bytes <= MAX_KIT_BYTES,
        "the kit is {} MiB, over the {} MiB a device call can carry with the working tree",
        bytes >> 20,
        MAX_KIT_BYTES >> 20
    );
    eprintln!(
        "gpu-kit: {} ({:.1} MiB): torch {} / tch {tch}; on the GPU machine run `{}/run.sh`",
        out.display(),
        bytes as f64 / (1 << 20) as f64,
        args.torch,
        out.display()
    );
    if args.check {
        check(out, &prefix)?;
    }
    Ok(())
}

/// Builds [`BINARIES`] in a copy of the workspace whose tch and torch-sys are `tch`, against
/// `prefix`; returns the directory holding them.
fn build(torch: &str, tch: &str, prefix: &Path) -> Result<PathBuf> {
    let base = root().join("target").join("gpu-kit");
    let src = base.join(format!("src-{torch}"));
    let target = base.join(format!("target-{torch}"));
    copy_tracked(&root(), &src)?;
    let manifest = src.join("Cargo.toml");
    let text = fs::read_to_string(&manifest)?;
    fs::write(&manifest, pin_tch(&text, tch)?)?;
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&src)
        .args(["build", "--release"])
        .args(PACKAGES.iter().flat_map(|b| ["-p", b]))
        .args(["--bins", "--example", "train_step"])
        .env("LIBTORCH", prefix)
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    run_cmd(&mut cmd, &format!("the build against libtorch {torch}"))?;
    Ok(target.join("release"))
}

/// The workspace manifest with tch and torch-sys pinned to `version`.
fn pin_tch(manifest: &str, version: &str) -> Result<String> {
    let mut pinned = 0;
    let lines: Vec<String> = manifest
        .lines()
        .map(|line| {
            for krate in ["tch", "torch-sys"] {
                if line.starts_with(&format!("{krate} = \"")) {
                    pinned += 1;
                    return format!("{krate} = \"={version}\"");
                }
            }
            line.to_string()
        })
        .collect();
    ensure!(
        pinned == 2,
        "expected `tch = \"..\"` and `torch-sys = \"..\"` lines in the workspace Cargo.toml, found {pinned}"
    );
    Ok(lines.join("\n") + "\n")
}

/// Copies the files git tracks (and untracked ones it does not ignore) from `from` to `to`,
/// replacing what `to` held before but keeping its Cargo.lock (the pinned tch's resolution).
fn copy_tracked(from: &Path, to: &Path) -> Result<()> {
    let listed = Command::new("git")
        .current_dir(from)
        .args([
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ])
        .output()
        .context("cannot run git ls-files")?;
    ensure!(listed.status.success(), "git ls-files failed");
    let lock = fs::read(to.join("Cargo.lock")).ok();
    if to.exists() {
        fs::remove_dir_all(to)?;
    }
    for rel in listed.stdout.split(|&b| b == 0).filter(|r| !r.is_empty()) {
        let rel = Path::new(std::str::from_utf8(rel).context("a non-UTF-8 path in git")?);
        let src = from.join(rel);
        if !src.is_file() {
            continue; // deleted in the working tree, or a submodule
        }
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().expect("a file has a parent"))?;
        fs::copy(&src, &dest).with_context(|| format!("cannot copy {}", src.display()))?;
    }
    if let Some(lock) = lock {
        fs::write(to.join("Cargo.lock"), lock)?;
    }
    Ok(())
}

/// Writes the first `count` images and labels of `<prefix>-images-idx3-ubyte.gz` (and the
/// labels file) from `source` into `to`, gzipped, with headers saying `count`.
fn write_idx_slice(source: &Path, prefix: &str, count: usize, to: &Path) -> Result<()> {
    for (kind, magic, item) in [("images-idx3", 2051u32, 28 * 28), ("labels-idx1", 2049, 1)] {
        let name = format!("{prefix}-{kind}-ubyte.gz");
        let raw = gunzip(&source.join(&name))?;
        let header = if magic == 2051 { 16 } else { 8 };
        ensure!(
            raw.len() >= header && u32::from_be_bytes(raw[..4].try_into()?) == magic,
            "{} is not an IDX file with magic {magic}",
            source.join(&name).display()
        );
        let have = u32::from_be_bytes(raw[4..8].try_into()?) as usize;
        ensure!(
            count <= have && raw.len() >= header + have * item,
            "{} holds {have} items, {count} asked for",
            source.join(&name).display()
        );
        let mut slice = raw[..header].to_vec();
        slice[4..8].copy_from_slice(&(count as u32).to_be_bytes());
        slice.extend_from_slice(&raw[header..header + count * item]);
        gzip(&slice, &to.join(&name))?;
    }
    Ok(())
}

fn gunzip(path: &Path) -> Result<Vec<u8>> {
    let mut raw = Vec::new();
    flate2::read::MultiGzDecoder::new(
        fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
    )
    .read_to_end(&mut raw)
    .with_context(|| format!("{}: not a readable gzip file", path.display()))?;
    Ok(raw)
}

fn gzip(bytes: &[u8], to: &Path) -> Result<()> {
    let file = fs::File::create(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut enc = flate2::write::GzEncoder::new(file, flate2::Compression::best());
    enc.write_all(bytes)?;
    enc.finish()
        .with_context(|| format!("cannot write {}", to.display()))?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}

/// Runs the kit's script here on the CPU: the binaries against the extracted CPU libtorch, the
/// comparisons with the reference venv's PyTorch (another version, in its own process).
fn check(kit: &Path, prefix: &Path) -> Result<()> {
    let python = setup::reference_venv()?;
    let out = kit.join("out-cpu-check");
    let mut cmd = Command::new("bash");
    cmd.arg(kit.join("run.sh"))
        .arg("--cpu")
        .env("MLOPS_KIT_LIB", prefix.join("lib"))
        .env("PYTHON", &python)
        .env("OUT", &out)
        .env("EPOCHS", "1");
    run_cmd(&mut cmd, "the kit's run.sh --cpu")?;
    let report: GpuReport = crate::read_json(&out.join("gpu_report.json"))?;
    let diff = report
        .embeddings_cpu_vs_device_fp32
        .and_then(|e| e.max_abs_diff)
        .context("gpu_report.json has no embedding difference")?;
    // On the CPU both embeddings come from the same kernels.
    if diff != 0.0 {
        bail!("the CPU dry run embedded one model twice with different results ({diff})");
    }
    eprintln!("gpu-kit: CPU dry run passed; report in {}", out.display());
    Ok(())
}

/// `kit.json`: what the kit was built from, for `scripts/gpu_kit/compare.py`'s report (fields in
/// the order the file has always had them).
#[derive(serde::Serialize)]
struct KitInfo<'a> {
    /// The sha256 of each binary, by its name in the kit.
    binaries: BTreeMap<String, String>,
    git_revision: Option<String>,
    images: usize,
    tch: &'a str,
    torch: &'a str,
}

/// The part of `scripts/gpu_kit/compare.py`'s report the CPU dry run checks.
#[derive(serde::Deserialize)]
struct GpuReport {
    embeddings_cpu_vs_device_fp32: Option<Difference>,
}

#[derive(serde::Deserialize)]
struct Difference {
    max_abs_diff: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_both_crates_or_fails() {
        let manifest =
            "[workspace.dependencies]\nserde = \"1\"\ntch = \"0.26\"\ntorch-sys = \"0.26\"\n";
        let pinned = pin_tch(manifest, "0.24.0").unwrap();
        assert!(pinned.contains("tch = \"=0.24.0\"\n"));
        assert!(pinned.contains("torch-sys = \"=0.24.0\"\n"));
        assert!(pinned.contains("serde = \"1\""));
        assert!(pin_tch("tch = \"0.26\"\n", "0.24.0").is_err());
        // The workspace's own manifest has both lines.
        let ours = fs::read_to_string(root().join("Cargo.toml")).unwrap();
        pin_tch(&ours, "0.24.0").unwrap();
    }

    #[test]
    fn idx_slice_keeps_the_first_items_with_a_matching_header() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let mut images = vec![0, 0, 8, 3, 0, 0, 0, 3, 0, 0, 0, 28, 0, 0, 0, 28];
        for i in 0..3u8 {
            images.extend(std::iter::repeat_n(i, 28 * 28));
        }
        gzip(&images, &src.join("t10k-images-idx3-ubyte.gz")).unwrap();
        gzip(
            &[0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9],
            &src.join("t10k-labels-idx1-ubyte.gz"),
        )
        .unwrap();
        let out = dir.path().join("out");
        fs::create_dir_all(&out).unwrap();
        write_idx_slice(&src, "t10k", 2, &out).unwrap();
        let labels = gunzip(&out.join("t10k-labels-idx1-ubyte.gz")).unwrap();
        assert_eq!(labels, [0, 0, 8, 1, 0, 0, 0, 2, 7, 8]);
        let sliced = gunzip(&out.join("t10k-images-idx3-ubyte.gz")).unwrap();
        assert_eq!(sliced.len(), 16 + 2 * 28 * 28);
        assert_eq!(&sliced[4..8], &[0, 0, 0, 2]);
        assert_eq!(sliced[16 + 28 * 28], 1);
        // More than the file holds is an error, not a short slice.
        assert!(write_idx_slice(&src, "t10k", 4, &out).is_err());
    }
}
