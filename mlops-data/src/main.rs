use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Ingest labelled images (IDX files, image folders), split them into train/val/gallery/test and
/// write sharded .npy files plus a manifest.
#[derive(Parser)]
#[command(name = "mlops-data", version)]
struct Args {
    /// TOML file with a [DataConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// IDX file or directory, or image-folder root (ROOT/<class>/*.png); repeatable.
    #[arg(long, required = true)]
    source: Vec<PathBuf>,
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
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut config: mlops_data::DataConfig = match mlops_core::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return mlops_core::telemetry::report_error(&e),
    };
    config.sources = args.source;
    config.out = args.out;
    config.normalize |= args.normalize;
    config.seed = args.seed.unwrap_or(config.seed);
    config.npy_interval = args.npy_interval.unwrap_or(config.npy_interval);
    config.image_size = args.image_size.unwrap_or(config.image_size);
    config.val_fraction = args.val_fraction.unwrap_or(config.val_fraction);
    config.gallery_fraction = args.gallery_fraction.unwrap_or(config.gallery_fraction);
    config.test_fraction = args.test_fraction.unwrap_or(config.test_fraction);
    match mlops_data::run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
