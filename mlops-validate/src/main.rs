use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Check a mlops-data output (checksums, shapes, dtypes, ranges, labels, class coverage,
/// leakage, totals) and write validation.json; exit 1 if any check fails.
#[derive(Parser)]
#[command(name = "mlops-validate", version)]
struct Args {
    /// TOML file with a [ValidateConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
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
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut config: mlops_validate::ValidateConfig =
        match mlops_core::load_config(args.config.as_deref()) {
            Ok(config) => config,
            Err(e) => return mlops_core::telemetry::report_error(&e),
        };
    config.data = args.data;
    config.out = args.out;
    config.min_per_class = args.min_per_class.unwrap_or(config.min_per_class);
    match mlops_validate::run(&config) {
        Ok(report) => {
            eprintln!(
                "all {} checks passed for {}",
                report.checks.len(),
                report.data
            );
            ExitCode::SUCCESS
        }
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
