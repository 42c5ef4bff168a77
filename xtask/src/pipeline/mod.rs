//! `cargo xtask pipeline`: the stages of [`crate::dag::STAGES`] on this machine, each its own
//! binary writing `runs/<run>/<stage>/`, with a step cache and resumption.
//!
//! - **Parameters** ([`params`]): `pipeline.toml`, a profile, the flags and `--set` pairs.
//! - **Cache** ([`cache`]). A stage is skipped, its outputs reused, when its key is unchanged:
//!   the sha256 of its binary, its arguments and parameters, and the checksums of everything it
//!   reads (the outputs listed in upstream manifests; for the data stage, the size and
//!   modification time of every source file). The key is written after the stage's manifest
//!   (`.cache-key`), and a hit also re-verifies every output checksum, so a half-written or
//!   altered stage never counts. `--force` re-runs everything, `--force STAGE` that stage and
//!   all after it.
//! - **Resumption** ([`stages`]). A run killed at any point (even SIGKILL) and started again
//!   reruns the stage it was in and reuses what finished; the train stage continues from its
//!   last epoch checkpoint (exact resume, so the result is the same).
//! - **Record** ([`record`]). `runs/<run>/run.json`: git revision, parameters, per-stage
//!   duration, cache hit or miss, inputs and outputs with checksums, final metrics, decision and
//!   registered version.

mod cache;
mod engine;
mod params;
mod record;
mod stages;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mlops_core::notify::{Event, Notifier};

use crate::dag::{self, STAGES};
use crate::{cargo, root, run_cmd, setup};
use engine::Engine;
pub use params::Params;
pub use record::list_runs;
pub(crate) use record::{RunRecord, StageStatus, Verdict};

#[derive(clap::Args, Default)]
pub struct PipelineArgs {
    /// Parameters file [default: pipeline.toml at the workspace root].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A named set of parameters from the `[profiles]` table of the parameters file (e.g.
    /// `quick`: about a minute of training for a first look), applied before the flags and
    /// `--set`.
    #[arg(long)]
    pub profile: Option<String>,
    /// Override a parameter for this run: SECTION.KEY=VALUE (e.g. train.epochs=1,
    /// pipeline.run=exp1); repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Run name (pipeline.run): outputs go to runs/NAME/.
    #[arg(long)]
    pub name: Option<String>,
    /// Data source for the data stage (pipeline.sources); repeatable.
    #[arg(long)]
    pub source: Vec<PathBuf>,
    /// Seed of the data split and the training (data.seed, train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training epochs (train.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Registry directory (pipeline.registry).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// The model's name in the registry (pipeline.model) [default: the first source's directory
    /// name, so another data set starts another model].
    #[arg(long)]
    pub model_name: Option<String>,
    /// Re-run every stage, or the named stage and every stage after it, ignoring the cache.
    #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "STAGE")]
    pub force: Option<String>,
    /// Directory holding the runs [default: runs/ in the workspace].
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Skip set-up (apt, libtorch, venv) when it is known to be done.
    #[arg(long)]
    pub no_setup: bool,
    /// Use the stage binaries (and, with `--engine podman`, the images) already built.
    #[arg(long)]
    pub no_build: bool,
    /// Where each stage runs: `native` (its binary on this machine) or `podman` (its image,
    /// the run directory, registry and sources bind-mounted at the same paths).
    #[arg(long, value_enum, default_value_t)]
    pub engine: EngineKind,
    /// With `--engine podman`: the tag of the images to run [default: build them now, tagged
    /// as `cargo xtask images` tags them].
    #[arg(long)]
    pub image_tag: Option<String>,
}

/// Where stages run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    #[default]
    Native,
    Podman,
}

pub fn run(args: &PipelineArgs) -> Result<()> {
    let mut params = Params::load(args)?;
    // Stages see the sources by absolute path: a container's working directory is not ours, and
    // podman bind-mounts only absolute paths.
    for source in &mut params.sources {
        *source = std::path::absolute(&*source)
            .with_context(|| format!("cannot resolve {}", source.display()))?;
    }
    if let Some(f) = args.force.as_deref() {
        if f != "all" && dag::stage(f).is_none() {
            bail!("--force {f}: no such stage");
        }
    }
    prepare(args)?;
    let runs = args.runs_dir.clone().unwrap_or_else(|| root().join("runs"));
    let run_dir = std::path::absolute(runs.join(&params.run))?;
    let registry = if params.registry.is_absolute() {
        params.registry.clone()
    } else {
        root().join(&params.registry)
    };
    std::fs::create_dir_all(&run_dir)?;
    let engine = Engine::prepare(args, &params, &run_dir, &registry)?;
    let cx = stages::RunContext {
        args,
        engine: &engine,
        params: &params,
        run_dir: &run_dir,
        registry: &registry,
    };
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut records = Vec::new();
    let result = stages::run_stages(&cx, &mut records);
    let seconds = started.elapsed().as_secs_f64();
    let record = RunRecord::new(&params, &run_dir, records, started_at, seconds, &result);
    crate::write_json(&run_dir.join("run.json"), &record)?;
    notify(&params, &record, &result);
    if result.is_ok() {
        record.print_summary(&run_dir);
    }
    result
}

/// Set-up and the release build of every stage binary, unless the flags skip them.
fn prepare(args: &PipelineArgs) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    if !args.no_build {
        let mut build = cargo();
        build.args(["build", "--release"]);
        for s in &STAGES {
            build.args(["-p", s.binary]);
        }
        run_cmd(&mut build, "cargo build")?;
    }
    Ok(())
}

/// The run's outcome to the notifier (Slack, when `SLACK_WEBHOOK_URL` is set).
fn notify(params: &Params, record: &RunRecord, result: &Result<()>) {
    let notifier = Notifier::from_env();
    match result {
        Ok(()) => {
            let accuracy = record.metrics.accuracy;
            let decision = record.decision.map(Verdict::as_str);
            let version = record.registered_version;
            if let (Some(accuracy), Some(decision)) = (accuracy, record.decision) {
                notifier.send(&Event::DeployDecision {
                    run: &params.run,
                    deploy: decision == Verdict::Deploy,
                    accuracy,
                    version,
                });
            }
            notifier.send(&Event::PipelineSucceeded {
                run: &params.run,
                accuracy,
                decision,
                version,
                seconds: record.seconds,
            });
        }
        Err(e) => {
            let stage = record
                .stages
                .iter()
                .find(|r| r.status == StageStatus::Failed)
                .map_or("set-up", |r| r.stage.as_str());
            notifier.send(&Event::PipelineFailed {
                run: &params.run,
                stage,
                error: &format!("{e:#}"),
            });
        }
    }
}
