use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_train::{Arch, DeviceSpec, OptimizerKind, Schedule};

/// Train an image-embedding network with ArcFace loss and export it to TorchScript (model.pt).
#[derive(Parser)]
#[command(name = "mlops-train", version)]
struct Args {
    /// TOML file with a [TrainConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory of mlops-data.
    #[arg(long)]
    data: PathBuf,
    /// Output directory (model.pt, config.json, metrics.jsonl, checkpoints/).
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
    lr: Option<f64>,
    /// Weight decay on weight matrices and kernels [default: 0.2 for adam (decoupled), 5e-4
    /// for sgd].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Dropout before the embedding layer (res only) [default: 0].
    #[arg(long)]
    dropout: Option<f64>,
    /// Optimizer [default: sgd].
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerKind>,
    /// Learning-rate schedule [default: one-cycle].
    #[arg(long, value_enum)]
    schedule: Option<Schedule>,
    /// ArcFace scale s [default: 32].
    #[arg(long)]
    arcface_scale: Option<f64>,
    /// ArcFace margin m in radians [default: 0.5].
    #[arg(long)]
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
    /// Random shift (up to 2 px) and horizontal-flip augmentation [default: off].
    #[arg(long)]
    augment: bool,
    /// Continue an interrupted run from OUT/checkpoints.
    #[arg(long)]
    resume: bool,
    /// Stop after this many epochs in total without exporting (for interruption tests).
    #[arg(long)]
    stop_after_epochs: Option<usize>,
}

fn main() -> ExitCode {
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut c: mlops_train::TrainConfig = match mlops_core::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return mlops_core::telemetry::report_error(&e),
    };
    c.data = args.data;
    c.out = args.out;
    c.arch = args.arch.unwrap_or(c.arch);
    c.embedding_dim = args.embedding_dim.unwrap_or(c.embedding_dim);
    c.epochs = args.epochs.unwrap_or(c.epochs);
    c.batch_size = args.batch_size.unwrap_or(c.batch_size);
    c.optimizer.lr = args.lr.or(c.optimizer.lr);
    c.optimizer.weight_decay = args.weight_decay.or(c.optimizer.weight_decay);
    c.dropout = args.dropout.unwrap_or(c.dropout);
    c.optimizer.kind = args.optimizer.unwrap_or(c.optimizer.kind);
    c.schedule = args.schedule.unwrap_or(c.schedule);
    c.arcface.scale = args.arcface_scale.unwrap_or(c.arcface.scale);
    c.arcface.margin = args.arcface_margin.unwrap_or(c.arcface.margin);
    c.seed = args.seed.unwrap_or(c.seed);
    c.threads = args.threads.unwrap_or(c.threads);
    c.device = args.device.unwrap_or(c.device);
    if args.augment {
        c.augment = mlops_train::AugmentConfig {
            max_shift: 2,
            hflip: true,
        };
    }
    c.resume |= args.resume;
    c.stop_after_epochs = args.stop_after_epochs.or(c.stop_after_epochs);
    match mlops_train::run(&c) {
        Ok(o) if o.finished => {
            eprintln!(
                "best val accuracy {:.4} (epoch {}), model in {}",
                o.best_val_accuracy,
                o.best_epoch,
                c.out.display()
            );
            ExitCode::SUCCESS
        }
        Ok(o) => {
            eprintln!(
                "stopped after epoch {}; continue with --resume",
                o.epochs_done
            );
            ExitCode::SUCCESS
        }
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
