//! Project automation, run as `cargo xtask <command>`.
//!
//! - `setup`: install everything a fresh machine needs (idempotent, fast when done).
//! - `pipeline`: set up, build, and run the stages on the default dataset into `runs/<name>/`.
//! - `test`: set up, check formatting, and run every test.

mod pipeline;
mod setup;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "mlops-rs project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install system packages, libtorch 2.13.0 (CPU) and the Python interop tools.
    Setup(setup::SetupArgs),
    /// Set up, build and run the pipeline into runs/<name>/.
    Pipeline(pipeline::PipelineArgs),
    /// Set up, check formatting and run all tests (what CI runs).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Setup(args) => setup::run(&args).map(|_| ()),
        Cmd::Pipeline(args) => pipeline::run(&args),
        Cmd::Test { cargo_args } => test(&cargo_args),
    }
}

fn test(cargo_args: &[String]) -> Result<()> {
    let env = setup::run(&setup::SetupArgs::default())?;
    run_cmd(
        cargo().args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"])
        .args(cargo_args)
        .envs(env.vars());
    run_cmd(&mut cmd, "cargo test")?;
    if cargo_args.is_empty() {
        // Each criterion benchmark once, in test mode: keeps them compiling and running.
        let mut benches = cargo();
        benches
            .args(["test", "--release", "-p", "mlops-benches", "--benches"])
            .envs(env.vars());
        run_cmd(&mut benches, "cargo test --benches")?;
    }
    Ok(())
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// `cargo` from the environment cargo gave us, run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs a command, failing with `what` if it cannot start or exits non-zero.
pub fn run_cmd(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {what} ({:?})", cmd.get_program()))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}
