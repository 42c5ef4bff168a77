//! Helpers of the xtask integration tests that run the pipeline through its binaries.

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
/// reading `tmp/src`, quiet.
pub fn pipeline(tmp: &Path, run: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["pipeline", "--no-setup", "--no-build", "--name", run])
        .arg("--runs-dir")
        .arg(tmp.join("runs"))
        .arg("--registry")
        .arg(tmp.join(format!("registry-{run}")))
        .arg("--source")
        .arg(tmp.join("src"))
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
