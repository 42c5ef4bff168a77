use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Check a mlops-data output (checksums, shapes, dtypes, ranges, labels, class coverage,
/// leakage, totals) and write validation.json; exit 1 if any check fails. Every setting of
/// mlops_validate::ValidateConfig can also come from --config FILE.toml or --set key=value.
#[derive(Parser)]
#[command(name = "mlops-validate", version)]
struct Args {
    #[command(flatten)]
    config: mlops_core::cli::ConfigArgs,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Output directory of mlops-data.
    #[arg(long)]
    data: PathBuf,
    /// Output directory for validation.json and the manifest.
    #[arg(long)]
    out: PathBuf,
    /// Fewest images of each class every role must hold [default: 1].
    #[arg(long)]
    min_per_class: Option<usize>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(
        &args.config,
        &args.flags,
        |c: mlops_validate::ValidateConfig| {
            let report = mlops_validate::run_with(&c, &mlops_core::telemetry::Bars::default())?;
            eprintln!(
                "all {} checks passed for {}",
                report.checks.len(),
                report.data
            );
            Ok::<_, mlops_validate::Error>(ExitCode::SUCCESS)
        },
    )
}
