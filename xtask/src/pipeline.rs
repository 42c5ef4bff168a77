//! `cargo xtask pipeline`: the stages chained on one machine, into `runs/<name>/<stage>/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::{cargo, release_dir, root, run_cmd, setup};

/// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it.
pub const DEFAULT_SOURCE: &str = "/usr/share/datasets/fashion-mnist";

#[derive(clap::Args)]
pub struct PipelineArgs {
    /// Run name: outputs go to runs/<name>/.
    #[arg(long, default_value = "default")]
    name: String,
    /// Data sources for mlops-data (repeatable).
    #[arg(long, default_value = DEFAULT_SOURCE)]
    source: Vec<PathBuf>,
    /// Seed passed to every stage.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Override the train stage's epochs (default: the stage's own default).
    #[arg(long)]
    epochs: Option<usize>,
    /// Skip set-up (apt, libtorch, venv) when it is known to be done.
    #[arg(long)]
    no_setup: bool,
}

const BINARIES: &[&str] = &[
    "mlops-data",
    "mlops-validate",
    "mlops-train",
    "mlops-embed",
    "mlops-index",
    "mlops-eval",
];

pub fn run(args: &PipelineArgs) -> Result<()> {
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    let mut build = cargo();
    build.args(["build", "--release"]);
    for bin in BINARIES {
        build.args(["-p", bin]);
    }
    run_cmd(&mut build, "cargo build")?;

    let run_dir = root().join("runs").join(&args.name);
    let data = run_dir.join("data");
    let validate = run_dir.join("validate");
    let train = run_dir.join("train");
    let embed = run_dir.join("embed");
    let index = run_dir.join("index");
    let eval = run_dir.join("eval");
    let mut data_cmd = stage("mlops-data");
    for source in &args.source {
        data_cmd.arg("--source").arg(source);
    }
    data_cmd
        .arg("--out")
        .arg(&data)
        .arg("--seed")
        .arg(args.seed.to_string());
    run_stage(&mut data_cmd, "data")?;
    run_stage(
        stage("mlops-validate")
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&validate),
        "validate",
    )?;
    let mut train_cmd = stage("mlops-train");
    train_cmd
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&train)
        .arg("--seed")
        .arg(args.seed.to_string());
    if let Some(epochs) = args.epochs {
        train_cmd.arg("--epochs").arg(epochs.to_string());
    }
    run_stage(&mut train_cmd, "train")?;
    run_stage(
        stage("mlops-embed")
            .arg("--model")
            .arg(&train)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&embed),
        "embed",
    )?;
    run_stage(
        stage("mlops-index")
            .arg("--embeddings")
            .arg(&embed)
            .arg("--out")
            .arg(&index),
        "index",
    )?;
    run_stage(
        stage("mlops-eval")
            .arg("--index")
            .arg(&index)
            .arg("--embeddings")
            .arg(&embed)
            .arg("--out")
            .arg(&eval),
        "eval",
    )?;
    summary(&data, &validate, &train, &embed, &eval)
}

fn stage(name: &str) -> Command {
    let mut cmd = Command::new(release_dir().join(name));
    cmd.current_dir(root());
    cmd
}

fn run_stage(cmd: &mut Command, name: &str) -> Result<()> {
    eprintln!("==> {name}");
    let started = std::time::Instant::now();
    run_cmd(cmd, &format!("stage {name}"))?;
    eprintln!(
        "    {name} done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn summary(data: &Path, validate: &Path, train: &Path, embed: &Path, eval: &Path) -> Result<()> {
    let manifest = read_json(&data.join("manifest.json"))?;
    let summary = &manifest["summary"];
    println!(
        "\npipeline finished: {}",
        data.parent().unwrap_or(data).display()
    );
    println!(
        "  classes: {}",
        summary["classes"].as_array().map_or(0, Vec::len)
    );
    for role in ["train", "val", "gallery", "test"] {
        let r = &summary["roles"][role];
        println!(
            "  {role:<8} {:>6} images in {} shards",
            r["rows"],
            r["shards"].as_array().map_or(0, Vec::len)
        );
    }
    let report = read_json(&validate.join("validation.json"))?;
    let checks = report["checks"].as_array().map_or(0, Vec::len);
    println!(
        "  validation: {} ({checks} checks), report {}",
        if report["passed"] == true {
            "passed"
        } else {
            "FAILED"
        },
        validate.join("validation.json").display()
    );
    let train_summary = &read_json(&train.join("manifest.json"))?["summary"];
    println!(
        "  train: {} epochs, best val kNN accuracy {:.4} (epoch {}), model {}",
        train_summary["epochs"],
        train_summary["best_val_accuracy"]
            .as_f64()
            .unwrap_or(f64::NAN),
        train_summary["best_epoch"],
        train.join("model.pt").display()
    );
    let embed_summary = &read_json(&embed.join("manifest.json"))?["summary"];
    println!(
        "  embed: dim {}, {:.0} img/s, embeddings in {}",
        embed_summary["dim"],
        embed_summary["images_per_second"]
            .as_f64()
            .unwrap_or(f64::NAN),
        embed.display()
    );
    let outcome = &read_json(&eval.join("manifest.json"))?["summary"];
    let decision = &outcome["decision"];
    println!(
        "  test accuracy {:.4} (kNN vote, k = {}), top-1 {:.4}, macro F1 {:.4}",
        outcome["metrics"]["accuracy"].as_f64().unwrap_or(f64::NAN),
        outcome["k"],
        outcome["top1_accuracy"].as_f64().unwrap_or(f64::NAN),
        outcome["metrics"]["macro_f1"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "  decision: {} ({})",
        if decision["deploy"] == true {
            "deploy"
        } else {
            "reject"
        },
        decision["reasons"]
            .as_array()
            .map(|r| r
                .iter()
                .filter_map(|x| x.as_str())
                .collect::<Vec<_>>()
                .join("; "))
            .unwrap_or_default()
    );
    println!("  metrics: {}", eval.join("metrics.json").display());
    println!("  report:  {}", eval.join("report.html").display());
    Ok(())
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid json", path.display()))
}
