use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_eval::Vote;

/// Classify test embeddings through the FAISS index, write metrics (Kubeflow files included)
/// and the deploy decision. Exits 0 whether the gate deploys or rejects, unless --fail-on-reject.
/// Every setting of mlops_eval::EvalConfig can also come from --config FILE.toml or --set.
#[derive(Parser)]
#[command(name = "mlops-eval", version)]
struct Args {
    #[command(flatten)]
    config: mlops_core::cli::ConfigArgs,
    #[command(flatten)]
    flags: Flags,
    /// Exit 3 when the gate rejects (for orchestrators that branch on exit codes).
    #[arg(long)]
    fail_on_reject: bool,
    /// Write the decision (`deploy` or `reject`) to this file (a Kubeflow output parameter).
    #[arg(long)]
    decision_output: Option<PathBuf>,
    /// Write the test accuracy to this file (a Kubeflow output parameter).
    #[arg(long)]
    accuracy_output: Option<PathBuf>,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Output directory of mlops-index.
    #[arg(long)]
    index: PathBuf,
    /// Output directory of mlops-embed.
    #[arg(long)]
    embeddings: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// The deployed model, to guard against regressions: a registry version, a registry model
    /// directory (REGISTRY/NAME: its default version), or an earlier evaluation directory.
    #[arg(long)]
    current: Option<PathBuf>,
    /// Voting neighbours [default: best on validation embeddings, else 10].
    #[arg(long)]
    k: Option<usize>,
    /// Vote weighting: weighted or uniform [default: weighted].
    #[arg(long)]
    vote: Option<Vote>,
    /// Smallest accuracy the gate accepts [default: 0.8].
    #[arg(long)]
    #[serde(rename = "gate.min_accuracy")]
    min_accuracy: Option<f64>,
    /// Largest accuracy drop against --current the gate accepts [default: 0.005].
    #[arg(long)]
    #[serde(rename = "gate.max_regression")]
    max_regression: Option<f64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(&args.config, &args.flags, |c: mlops_eval::EvalConfig| {
        let o = mlops_eval::run(&c)?;
        let d = &o.decision;
        let verdict = if d.deploy { "deploy" } else { "reject" };
        let (acc, k, why) = (o.metrics.accuracy, o.k, d.reasons.join("; "));
        eprintln!("accuracy {acc:.4} (k = {k}), decision: {verdict}: {why}");
        mlops_core::cli::write_output(args.decision_output.as_deref(), verdict)?;
        mlops_core::cli::write_output(args.accuracy_output.as_deref(), &acc.to_string())?;
        let reject = args.fail_on_reject && !d.deploy;
        Ok::<_, mlops_eval::Error>(if reject {
            ExitCode::from(3)
        } else {
            ExitCode::SUCCESS
        })
    })
}
