use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Ingest labelled images (IDX files, image folders), split them into train/val/gallery/test and
/// write sharded .npy files plus a manifest. Every setting of mlops_data::DataConfig can also
/// come from --config FILE.toml or --set key=value.
#[derive(Parser)]
#[command(name = "mlops-data", version)]
struct Args {
    #[command(flatten)]
    config: mlops_core::cli::ConfigArgs,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// IDX file or directory, or image-folder root (ROOT/<class>/*.png); repeatable.
    #[arg(long = "source", required = true)]
    sources: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Seed for the split [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// Most rows per .npy shard [default: 5000].
    #[arg(long)]
    npy_interval: Option<usize>,
    /// Output image size as HxW, e.g. 28x28 [default: 28x28].
    #[arg(long, value_parser = parse_size)]
    image_size: Option<[usize; 2]>,
    /// Standardise pixels with the training split's mean and std.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    normalize: bool,
    /// Fraction of each class held out for validation [default: 0.1].
    #[arg(long)]
    val_fraction: Option<f64>,
    /// Fraction of each class put in the gallery (index) [default: 0.2].
    #[arg(long)]
    gallery_fraction: Option<f64>,
    /// Fraction of each class used as test set when no IDX test file gives one [default: 0.15].
    #[arg(long)]
    test_fraction: Option<f64>,
}

fn parse_size(s: &str) -> Result<[usize; 2], String> {
    let (h, w) = s.split_once('x').ok_or("expected HxW, e.g. 28x28")?;
    let parse = |v: &str| v.trim().parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    Ok([parse(h)?, parse(w)?])
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(&args.config, &args.flags, |c: mlops_data::DataConfig| {
        mlops_data::run_with(&c, &mlops_core::telemetry::Bars::default()).map(|_| ExitCode::SUCCESS)
    })
}
