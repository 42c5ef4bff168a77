//! Project automation, run as `cargo xtask <command>`.
//!
//! - `setup`: install everything a fresh machine needs (idempotent, fast when done).
//! - `pipeline`: set up, build, and run the stages on the default dataset into `runs/<name>/`.
//! - `test`: set up, check formatting, and run every test.
//! - `bench-serve`: the server under wrk on loopback, against the in-process rate.
//! - `images`: one container image per stage, built with podman from the `Dockerfile`.

mod bench;
mod bench_serve;
mod bench_serve_vs;
mod bundle;
mod ct;
mod dag;
mod gpu_kit;
mod images;
mod kfp;
mod kfp_local;
mod pipeline;
mod setup;

use std::path::{Path, PathBuf};
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
    /// Set up, build and run the pipeline into runs/NAME/.
    Pipeline(pipeline::PipelineArgs),
    /// List past pipeline runs (date, accuracy, decision, duration).
    Runs {
        /// Directory holding the runs [default: runs/].
        #[arg(long)]
        runs_dir: Option<PathBuf>,
    },
    /// Write the Kubeflow pipeline (KFP v2 IR YAML) generated from the pipeline definition.
    Kfp(kfp::KfpArgs),
    /// Continuous training: retrain when the sources hold enough new data.
    Ct(ct::CtArgs),
    /// Lay out a stage's binary with the shared libraries it loads, as its image copies them.
    Bundle(bundle::BundleArgs),
    /// Build one container image per stage (podman by default) from the Dockerfile.
    Images(images::ImagesArgs),
    /// Criterion benchmarks; with --compare, ours against PyTorch, faiss-cpu and TorchServe
    /// (writes BENCHMARKS.md and benches/results/latest.json).
    Bench(bench::BenchArgs),
    /// Build the stage binaries for the GPU machine's PyTorch, with a data slice and the script
    /// that checks training, data parallelism and embedding on its GPU against the CPU.
    GpuKit(gpu_kit::GpuKitArgs),
    /// Benchmark the server on loopback with wrk against the in-process rate.
    BenchServe(bench_serve::BenchServeArgs),
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
        Cmd::Bench(args) => bench::run(&args),
        Cmd::BenchServe(args) => bench_serve::run(&args),
        Cmd::GpuKit(args) => gpu_kit::run(&args),
        Cmd::Runs { runs_dir } => pipeline::list_runs(runs_dir.as_deref()),
        Cmd::Kfp(args) => kfp::run(&args),
        Cmd::Bundle(args) => bundle::run(&args),
        Cmd::Images(args) => images::run(&args),
        Cmd::Ct(args) => ct::run(&args),
        Cmd::Test { cargo_args } => test(&cargo_args),
    }
}

fn test(cargo_args: &[String]) -> Result<()> {
    let env = setup::run(&setup::SetupArgs::default())?;
    run_cmd(
        cargo().args(["fmt", "--all", "--", "--check"]),
        "cargo fmt --check",
    )?;
    // The stage images the container tests run (xtask/tests/containers.rs, kfp_local.rs):
    // built here, from the binaries the tests use, so a failing image build fails the run.
    run_cmd(
        cargo().args(["build", "--release", "--workspace", "--bins"]),
        "cargo build",
    )?;
    // The API docs are part of the product: broken links or an undocumented public item
    // (`#![warn(missing_docs)]` in every library crate) fail the run. In the release profile,
    // so the build scripts' outputs (FAISS, compiled from source) are the ones built above.
    run_cmd(
        cargo()
            .args(["doc", "--release", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
        "cargo doc",
    )?;
    let tag = images::local(None, images::Build::Images)?.tag;
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"])
        .args(cargo_args)
        .envs(env.vars())
        .env("MLOPS_IMAGE_TAG", tag);
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

/// Where the workspace is, as cargo sees it from the current directory at run time (never a
/// path compiled in: with a `CARGO_TARGET_DIR` shared between checkouts, the xtask binary one
/// checkout built must still act on the checkout it is run in).
struct Workspace {
    root: PathBuf,
    target: PathBuf,
}

fn workspace() -> &'static Workspace {
    static WORKSPACE: std::sync::OnceLock<Workspace> = std::sync::OnceLock::new();
    WORKSPACE.get_or_init(|| {
        locate().unwrap_or_else(|e| {
            eprintln!("error: cannot locate the workspace: {e:#}");
            std::process::exit(1)
        })
    })
}

fn locate() -> Result<Workspace> {
    let out = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cannot run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: CargoMetadata =
        serde_json::from_slice(&out.stdout).context("cargo metadata printed invalid json")?;
    Ok(Workspace {
        root: meta.workspace_root,
        target: meta.target_directory,
    })
}

/// The two fields of `cargo metadata`'s output that locate the workspace.
#[derive(serde::Deserialize)]
struct CargoMetadata {
    workspace_root: PathBuf,
    target_directory: PathBuf,
}

/// The workspace root.
pub fn root() -> PathBuf {
    workspace().root.clone()
}

/// Where cargo puts release binaries for this workspace (`CARGO_TARGET_DIR` respected).
pub fn release_dir() -> PathBuf {
    workspace().target.join("release")
}

/// `cargo` from the environment cargo gave us, run in the workspace root.
pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Reads a JSON file as `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))
}

/// Writes pretty JSON atomically, creating the directory it goes in.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value)? + "\n";
    Ok(mlops_core::write_atomic(path, text.as_bytes())?)
}

/// The checked-out commit, when the workspace is a git checkout.
pub fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a command to completion; returns its exit status and its peak resident set size (MB)
/// from `wait4`'s resource usage (`None` where the kernel did not report it).
pub fn status_and_peak_rss(
    cmd: &mut Command,
) -> std::io::Result<(std::process::ExitStatus, Option<f64>)> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    // The stage dies with the runner: a runner killed alone (SIGTERM or SIGKILL to its pid, not
    // its process group) would otherwise leave an orphaned stage computing on, competing with
    // whatever runs next and racing the resumed run for the same output directory.
    let runner = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only prctl, getppid
    // and _exit, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The runner died between fork and prctl: no signal will come.
            if libc::getppid() as u32 != runner {
                libc::_exit(143);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped (std reaps only in wait/try_wait, which
        // are never called on it); status and usage are valid for writes.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    // Reaped here: dropping the Child handle neither waits nor kills.
    drop(child);
    // Linux reports ru_maxrss in kilobytes.
    let rss = (usage.ru_maxrss > 0).then(|| usage.ru_maxrss as f64 / 1024.0);
    Ok((std::process::ExitStatus::from_raw(status), rss))
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
