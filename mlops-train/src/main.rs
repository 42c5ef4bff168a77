use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_train::{Arch, DeviceSpec, OptimizerKind, Schedule};

/// Train an image-embedding network with ArcFace loss and export it to TorchScript (model.pt).
/// Every setting of mlops_train::TrainConfig can also come from --config FILE.toml or
/// --set key=value (e.g. --set arcface.easy_margin=true).
#[derive(Parser)]
#[command(name = "mlops-train", version)]
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
    /// Output directory of mlops-validate: refuse data that has not passed validation.
    #[arg(long)]
    validated: Option<PathBuf>,
    /// Output directory (model.pt, model.json, metrics.jsonl, checkpoints/).
    #[arg(long)]
    out: PathBuf,
    /// Network architecture [default: res].
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Embedding dimension [default: 128].
    #[arg(long)]
    embedding_dim: Option<usize>,
    /// Training epochs [default: 12].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (split across devices) [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 0.1 for sgd, 0.003 for adam].
    #[arg(long)]
    #[serde(rename = "optimizer.lr")]
    lr: Option<f64>,
    /// Weight decay on weight matrices and kernels [default: 5e-4 for sgd, 0.2 for adam
    /// (decoupled)].
    #[arg(long)]
    #[serde(rename = "optimizer.weight_decay")]
    weight_decay: Option<f64>,
    /// Optimizer [default: sgd].
    #[arg(long, value_enum)]
    #[serde(rename = "optimizer.kind")]
    optimizer: Option<OptimizerKind>,
    /// Learning-rate schedule [default: one-cycle].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// Dropout before the embedding layer (res only) [default: 0].
    #[arg(long)]
    dropout: Option<f64>,
    /// ArcFace scale s [default: 32].
    #[arg(long)]
    #[serde(rename = "arcface.scale")]
    arcface_scale: Option<f64>,
    /// ArcFace margin m in radians [default: 0.5].
    #[arg(long)]
    #[serde(rename = "arcface.margin")]
    arcface_margin: Option<f64>,
    /// Seed for initialisation, shuffling, augmentation and dropout [default: 42].
    #[arg(long)]
    seed: Option<u64>,
    /// libtorch threads, 0 = one per core [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda (all GPUs, data parallel) or cuda:N [default: auto].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// Compute precision: auto (bf16 where the CPU has AVX512-BF16 or AMX, or on a GPU), fp32,
    /// bf16 [default: auto].
    #[arg(long)]
    precision: Option<mlops_torch::Precision>,
    /// Random shift (up to 2 px) and horizontal-flip augmentation [default: off].
    #[arg(long)]
    #[serde(serialize_with = "augment_preset")]
    augment: bool,
    /// Continue an interrupted run from OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs in total without exporting (for interruption tests).
    #[arg(long)]
    stop_after_epochs: Option<usize>,
}

/// `--augment` turns on the preset the flag has always meant; unset, it changes nothing.
fn augment_preset<S: serde::Serializer>(on: &bool, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    on.then_some(mlops_train::AugmentConfig {
        max_shift: 2,
        hflip: true,
    })
    .serialize(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(&args.config, &args.flags, |c: mlops_train::TrainConfig| {
        let o = mlops_train::run(&c)?;
        if o.finished {
            let (acc, epoch) = (o.best_val_accuracy, o.best_epoch);
            eprintln!(
                "best val accuracy {acc:.4} (epoch {epoch}), model in {}",
                c.out.display()
            );
        } else {
            let done = o.epochs_done;
            eprintln!("stopped after epoch {done}; continue with --resume");
        }
        Ok::<_, mlops_train::Error>(ExitCode::SUCCESS)
    })
}
