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
    /// Network architecture [default: wide].
    #[arg(long, value_enum)]
    arch: Option<Arch>,
    /// Stem channels of wide or slim, doubled by each of their three stages [default: 24 for
    /// wide, 12 for slim].
    #[arg(long)]
    width: Option<usize>,
    /// Embedding dimension [default: 128].
    #[arg(long)]
    embedding_dim: Option<usize>,
    /// Training epochs [default: 40, or as many as `--set min_steps=N` optimizer steps need].
    #[arg(long)]
    epochs: Option<usize>,
    /// Batch size (split across devices) [default: 128].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate [default: 0.05 for sgd, 0.003 for adam].
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
    /// Turn off the random shift (up to 1 px) and horizontal-flip augmentation [default: on].
    #[arg(long)]
    #[serde(rename = "augment", serialize_with = "augment_off")]
    no_augment: bool,
    /// Decay per step of the moving average of the weights that is scored and exported, 0 =
    /// off [default: 0.999].
    #[arg(long)]
    ema: Option<f64>,
    /// Export a model without flip test-time augmentation (half the inference cost)
    /// [default: with].
    #[arg(long)]
    #[serde(rename = "test_time_flip", serialize_with = "negate")]
    no_test_time_flip: bool,
    /// Continue an interrupted run from OUT/checkpoints.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    resume: bool,
    /// Stop after this many epochs in total without exporting (for interruption tests).
    #[arg(long)]
    stop_after_epochs: Option<usize>,
    /// Distil from this trained model (a train-stage or registry version directory): the
    /// student also learns the teacher's embeddings (teacher.weight, default 10). A teacher
    /// makes the student recipe the defaults: slim, no flip averaging, 120 epochs.
    #[arg(long, value_name = "DIR")]
    #[serde(serialize_with = "teacher_dir")]
    teacher: Option<PathBuf>,
}

/// `--teacher DIR` sets `teacher.model`, leaving `teacher.weight` to the config.
fn teacher_dir<S: serde::Serializer>(dir: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    dir.as_ref()
        .map(|model| std::collections::BTreeMap::from([("model", model)]))
        .serialize(s)
}

/// `--no-augment` turns augmentation off; unset, it changes nothing.
fn augment_off<S: serde::Serializer>(off: &bool, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    off.then_some(mlops_train::AugmentConfig {
        max_shift: 0,
        hflip: false,
        ..Default::default()
    })
    .serialize(s)
}

/// A `--no-...` switch: `false` when given; unset, it changes nothing.
fn negate<S: serde::Serializer>(off: &bool, s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    off.then_some(false).serialize(s)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // A teacher named anywhere (flag, file, --set) makes the student recipe the defaults.
    let student = |c: &mlops_train::TrainConfig| {
        c.teacher
            .as_ref()
            .map(|_| mlops_train::TrainConfig::student())
    };
    mlops_core::cli::main_with_defaults(
        &args.config,
        &args.flags,
        student,
        |c: mlops_train::TrainConfig| {
            let o = mlops_train::run_with(&c, &mlops_core::telemetry::Bars::default())?;
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
        },
    )
}
