//! Helpers of the xtask integration tests that run the pipeline through its binaries.
// Each test crate that includes this module uses part of it.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;
use serde_json::Value;

/// The release stage binaries next to this test's xtask binary, as a prerequisite
/// (`cargo xtask test` builds them).
pub fn release_binaries() -> Option<()> {
    let dir = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .parent()
        .unwrap()
        .to_path_buf();
    let built = ["mlops-data", "mlops-train", "mlops-deploy", "mlops-eval"]
        .iter()
        .all(|b| dir.join(b).is_file());
    mlops_core::testing::prerequisite(
        "release stage binaries",
        built.then_some(()),
        "not built next to xtask; cargo xtask test builds them",
    )
}

/// `cargo xtask pipeline` for run `run` under `tmp` (its own runs directory and registry),
/// reading `tmp/src` (so its model is called `src`), quiet.
pub fn pipeline(tmp: &Path, run: &str) -> Command {
    pipeline_in(
        tmp,
        run,
        &tmp.join("src"),
        &tmp.join(format!("registry-{run}")),
    )
}

/// `cargo xtask pipeline` for run `run` under `tmp` reading `source` and registering into
/// `registry`, quiet.
pub fn pipeline_in(tmp: &Path, run: &str, source: &Path, registry: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["pipeline", "--no-setup", "--no-build", "--name", run])
        .arg("--runs-dir")
        .arg(tmp.join("runs"))
        .arg("--registry")
        .arg(registry)
        .arg("--source")
        .arg(source)
        .env("RUST_LOG", "warn")
        .env_remove("SLACK_WEBHOOK_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd
}

/// The `run.json` of run `run` under `tmp`.
pub fn record(tmp: &Path, run: &str) -> Result<Value> {
    let path: PathBuf = tmp.join("runs").join(run).join("run.json");
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

/// A fixed pseudo-random byte stream (a 64-bit linear congruential generator) for fixtures.
pub fn noise(seed: u64) -> impl FnMut() -> u8 {
    let mut state = seed;
    move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as u8
    }
}

/// `dir/stem` or `dir/stem.gz`, whichever exists (IDX files come both ways).
pub fn find_idx(dir: &Path, stem: &str) -> Result<PathBuf> {
    ["", ".gz"]
        .iter()
        .map(|ext| dir.join(format!("{stem}{ext}")))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("{stem} not found in {}", dir.display()))
}

/// Writes `train-*` and `t10k-*` IDX files: 3 classes, each a bright bar at its own place
/// over noise from a fixed generator.
pub fn write_idx(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut next = noise(12345);
    for (prefix, per_class) in [("train", 60), ("t10k", 15)] {
        let (mut images, mut labels) = (Vec::new(), Vec::new());
        for i in 0..per_class * 3 {
            let class = i % 3;
            let mut img: Vec<u8> = (0..28 * 28).map(|_| next() / 4).collect();
            for x in 0..28 {
                img[(class * 7 + 3) * 28 + x] = 200 + next() / 5;
            }
            images.extend(img);
            labels.push(class as u8);
        }
        let n = (per_class * 3) as u32;
        let mut f = std::fs::File::create(dir.join(format!("{prefix}-images-idx3-ubyte")))?;
        f.write_all(&[0, 0, 8, 3])?;
        for d in [n, 28, 28] {
            f.write_all(&d.to_be_bytes())?;
        }
        f.write_all(&images)?;
        let mut f = std::fs::File::create(dir.join(format!("{prefix}-labels-idx1-ubyte")))?;
        f.write_all(&[0, 0, 8, 1])?;
        f.write_all(&n.to_be_bytes())?;
        f.write_all(&labels)?;
    }
    Ok(())
}

/// The tiny data set's small settings (a few seconds a stage, one thread, a gate that accepts
/// any accuracy, no flip check: it would train twice, and mlops-train's tests cover it), as
/// `cargo xtask pipeline` and `cargo xtask kfp --run-local` take them.
pub const TINY: [&str; 7] = [
    "train.epochs=4",
    "train.augment.flip_check_budget=0",
    "train.batch_size=16",
    "train.embedding_dim=16",
    "train.threads=1",
    "embed.threads=1",
    "eval.gate.min_accuracy=0.0",
];

/// [`pipeline`] with the [`TINY`] settings.
pub fn tiny_pipeline(tmp: &Path, run: &str) -> Command {
    let mut cmd = pipeline(tmp, run);
    for set in TINY {
        cmd.args(["--set", set]);
    }
    cmd
}

/// An IDX source whose images file is cut short (9 images promised, 2 bytes given), as a
/// broken upload would leave it: the data stage must name the file and stop.
pub fn write_truncated_idx(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        [0, 0, 8, 3, 0, 0, 0, 9, 0, 0, 0, 28, 0, 0, 0, 28, 1, 2],
    )?;
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 9, 0, 1, 2, 0, 1, 2, 0, 1, 2],
    )?;
    Ok(())
}
