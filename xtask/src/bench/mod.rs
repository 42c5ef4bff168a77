//! `cargo xtask bench --compare`: ours against the Python stack on identical inputs and thread
//! counts, interleaved (ours, theirs, ours, theirs, ...), each measurement in a fresh process.
//!
//! 1. **train**: one training step of the same network (the run's architecture and `seed`),
//!    batch, optimizer and parameter groups: `mlops-train` vs PyTorch eager, in fp32 and in the
//!    precision the run trained in.
//! 2. **embed**: the run's `model.pt` over its test images: `mlops-embed`'s inference vs
//!    `torch.jit.load` + batched forward, batches 64/256/512, with the largest difference of the
//!    embeddings.
//! 3. **search**: the run's gallery and test embeddings: our FAISS vs Python faiss-cpu, Flat,
//!    IVF64,Flat (nprobe 8) and HNSW32 (efSearch 64), k = 10, OpenMP threads pinned and printed
//!    on both sides, with the share of identical top-k ids.
//! 4. **serve** ([`torchserve`]): `mlops-deploy serve` vs TorchServe serving our `.mar` of the
//!    same registered version (2 workers, one OpenMP thread each, batch 32 with a 2 ms delay, as
//!    TorchServe's CPU guide advises), both fp32, the same `wrk` at 1/8/32 clients on loopback;
//!    accuracy over every test image through each, and each server's peak RSS.
//! 5. **pipeline** ([`e2e`]): wall time and peak RSS of every stage, from the run's `run.json`
//!    when all its stages ran, else from the pipeline run again on its parameters, forced.
//!
//! With `--student RUN` (the distilled model's run, `cargo xtask pipeline --profile serve`),
//! its train-step, embed and serve comparisons follow the same way, TorchServe serving its
//! `.mar`, in a section of their own beside the default model's.
//!
//! Writes `BENCHMARKS.md` ([`markdown`]) and `benches/results/latest.json` ([`report`]). A
//! missing input is an error.

mod compare;
mod e2e;
mod markdown;
pub(crate) mod report;
mod torchserve;

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};
use clap::ValueEnum;
use mlops_core::artifact::ModelDir;

use crate::bench_serve;
use crate::{cargo, release_dir, root, run_cmd, setup};
use compare::Sides;
use report::{Report, Sections};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Train,
    Embed,
    Search,
    Serve,
    Pipeline,
}

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Compare with PyTorch, faiss-cpu and TorchServe (without it: the criterion suite).
    #[arg(long)]
    compare: bool,
    /// The pipeline run whose model, data and embeddings are measured.
    #[arg(long, default_value = "runs/default")]
    run: PathBuf,
    /// A second run, the distilled model's (e.g. `runs/serve`): its train step, embedding and
    /// serving are measured against the Python stack too, beside the main run's.
    #[arg(long)]
    student: Option<PathBuf>,
    /// Measurements per side and setting (at least 5 for the report's medians).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Threads on both sides (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Seconds of each wrk run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// What to measure.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "train,embed,search,serve,pipeline"
    )]
    parts: Vec<Part>,
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if !args.compare {
        return run_cmd(
            cargo().args(["bench", "-p", "mlops-benches"]),
            "cargo bench",
        );
    }
    ensure!(args.repeats >= 1, "--repeats must be at least 1");
    setup::run(&setup::SetupArgs::default())?;
    let python = setup::reference_venv()?;
    // Both runs are checked before anything is built or measured.
    for run in std::iter::once(&args.run).chain(&args.student) {
        bench_serve::check_run(&root().join(run))?;
    }
    run_cmd(
        cargo().args([
            "build",
            "--release",
            "-p",
            "mlops-benches",
            "--example",
            "compare_worker",
        ]),
        "cargo build",
    )?;
    let threads = if args.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        args.threads
    };
    let work = std::env::temp_dir().join(format!("mlops-bench-compare-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let sides = Sides {
        python,
        worker: release_dir().join("examples/compare_worker"),
        script: root().join("scripts/bench_reference.py"),
        threads,
        repeats: args.repeats,
        work: work.clone(),
    };
    let main = measure(args, &sides, &args.run, true)?;
    let student = match &args.student {
        Some(run) => Some(measure(args, &sides, run, false)?),
        None => None,
    };
    let report = Report {
        versions: sides.versions()?,
        comparisons: main.comparisons,
        sections: main.sections,
        arch: main.arch,
        student,
        command: command_line(args),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        machine: bench_serve::machine(),
        precision: main.precision,
        repeats: args.repeats,
        run: main.run,
        threads,
    };
    crate::write_json(&root().join("benches/results/latest.json"), &report)?;
    let md = markdown::markdown(&report);
    std::fs::write(root().join("BENCHMARKS.md"), &md)?;
    println!("{md}");
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Everything `--parts` asks for about the model of `run` (relative to the workspace root,
/// as the report names it). The search and end-to-end parts
/// belong to the main run (`whole`): a student's embeddings search as fast as any others of
/// their size, and its pipeline is the default's stages again.
fn measure(
    args: &BenchArgs,
    sides: &Sides,
    run: &Path,
    whole: bool,
) -> Result<report::ModelReport> {
    let run_dir = &root().join(run);
    let arch = ModelDir::open(&run_dir.join("train"))?.summary.arch;
    let precision = bench_serve::run_precision(run_dir)?;
    let parts: Vec<Part> = args
        .parts
        .iter()
        .copied()
        .filter(|p| whole || !matches!(p, Part::Search | Part::Pipeline))
        .collect();
    Ok(report::ModelReport {
        comparisons: comparisons(&parts, sides, run_dir, &arch, &precision, whole)?,
        sections: sections(&parts, sides, run_dir, args.seconds)?,
        arch,
        precision,
        run: run.to_path_buf(),
    })
}

/// The train, embed and search comparisons in `parts`, in fp32 and in the run's own
/// precision when that is another; the `seed` network's train row only for the main run
/// (`whole`).
fn comparisons(
    parts: &[Part],
    sides: &Sides,
    run_dir: &Path,
    arch: &str,
    precision: &str,
    whole: bool,
) -> Result<Vec<report::Comparison>> {
    let mut precisions = vec!["fp32"];
    if precision != "fp32" {
        precisions.push(precision);
    }
    let mut out = Vec::new();
    if parts.contains(&Part::Train) {
        out.extend(sides.train(arch, &precisions, whole)?);
    }
    if parts.contains(&Part::Embed) {
        out.extend(sides.embed(run_dir, arch, &precisions)?);
    }
    if parts.contains(&Part::Search) {
        out.extend(sides.search(run_dir)?);
    }
    Ok(out)
}

/// The serving and end-to-end sections in `parts`.
fn sections(parts: &[Part], sides: &Sides, run_dir: &Path, seconds: u32) -> Result<Sections> {
    let mut sections = Sections::default();
    if parts.contains(&Part::Serve) {
        sections.serve = Some(torchserve::serve(sides, run_dir, seconds)?);
    }
    if parts.contains(&Part::Pipeline) {
        sections.pipeline = Some(e2e::pipeline(run_dir)?);
    }
    Ok(sections)
}

fn command_line(args: &BenchArgs) -> String {
    let parts: Vec<String> = args
        .parts
        .iter()
        .filter_map(|p| p.to_possible_value())
        .map(|v| v.get_name().to_string())
        .collect();
    let student = args
        .student
        .as_ref()
        .map_or(String::new(), |s| format!(" --student {}", s.display()));
    format!(
        "cargo xtask bench --compare --run {}{student} --repeats {} --threads {} --seconds {} --parts {}",
        args.run.display(),
        args.repeats,
        args.threads,
        args.seconds,
        parts.join(",")
    )
}
