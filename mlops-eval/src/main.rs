use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_eval::Vote;

/// Classify test embeddings through the FAISS index, write metrics (Kubeflow files included)
/// and the deploy decision. Exits 0 whether the gate deploys or rejects, unless --fail-on-reject.
#[derive(Parser)]
#[command(name = "mlops-eval", version)]
struct Args {
    /// TOML file with an [EvalConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory of mlops-index.
    #[arg(long)]
    index: PathBuf,
    /// Output directory of mlops-embed.
    #[arg(long)]
    embeddings: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Output directory of the deployed model's evaluation, to guard against regressions.
    #[arg(long)]
    current: Option<PathBuf>,
    /// Voting neighbours [default: best on validation embeddings, else 10].
    #[arg(long)]
    k: Option<usize>,
    /// Vote weighting [default: weighted].
    #[arg(long, value_enum)]
    vote: Option<Vote>,
    /// Smallest accuracy the gate accepts [default: 0.8].
    #[arg(long)]
    min_accuracy: Option<f64>,
    /// Largest accuracy drop against --current the gate accepts [default: 0.005].
    #[arg(long)]
    max_regression: Option<f64>,
    /// Exit 3 when the gate rejects (for orchestrators that branch on exit codes).
    #[arg(long)]
    fail_on_reject: bool,
}

fn main() -> ExitCode {
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut c: mlops_eval::EvalConfig = match mlops_core::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return mlops_core::telemetry::report_error(&e),
    };
    c.index = args.index;
    c.embeddings = args.embeddings;
    c.out = args.out;
    c.current = args.current.or(c.current);
    c.k = args.k.or(c.k);
    c.vote = args.vote.unwrap_or(c.vote);
    c.gate.min_accuracy = args.min_accuracy.unwrap_or(c.gate.min_accuracy);
    c.gate.max_regression = args.max_regression.unwrap_or(c.gate.max_regression);
    match mlops_eval::run(&c) {
        Ok(o) => {
            let verdict = if o.decision.deploy {
                "deploy"
            } else {
                "reject"
            };
            eprintln!(
                "accuracy {:.4} (k = {}), decision: {verdict}: {}",
                o.metrics.accuracy,
                o.k,
                o.decision.reasons.join("; ")
            );
            if args.fail_on_reject && !o.decision.deploy {
                ExitCode::from(3)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
