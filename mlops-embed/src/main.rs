use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_core::artifact::Role;
use mlops_torch::DeviceSpec;

/// Run the exported TorchScript model (mlops-train's model.pt) over data shards and write
/// <role>_embeddings_NNN.npy with aligned labels. Every setting of mlops_embed::EmbedConfig can
/// also come from --config FILE.toml or --set key=value.
#[derive(Parser)]
#[command(name = "mlops-embed", version)]
struct Args {
    #[command(flatten)]
    config: mlops_core::cli::ConfigArgs,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Output directory of mlops-train.
    #[arg(long)]
    model: PathBuf,
    /// Output directory of mlops-data.
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Roles to embed, comma separated [default: every role but train: gallery,val,test].
    #[arg(long, value_delimiter = ',')]
    roles: Option<Vec<Role>>,
    /// Images per forward pass [default: 64].
    #[arg(long)]
    batch_size: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// libtorch threads, 0 = one per core [default: 0].
    #[arg(long)]
    threads: Option<usize>,
    /// Compute precision: auto (bf16 where the CPU has AVX512-BF16 or AMX, or on a GPU), fp32,
    /// bf16 [default: auto].
    #[arg(long)]
    precision: Option<mlops_torch::Precision>,
    /// The deployed model, which embeds the test images too for eval's paired comparison: a
    /// registry version, or a registry model directory (REGISTRY/NAME: its default version).
    #[arg(long)]
    baseline: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(&args.config, &args.flags, |c: mlops_embed::EmbedConfig| {
        mlops_embed::run_with(&c, &mlops_core::telemetry::Bars::default())
            .map(|_| ExitCode::SUCCESS)
    })
}
