use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_data::Role;
use mlops_train::DeviceSpec;

/// Run the exported TorchScript model (mlops-train's model.pt) over data shards and write
/// <role>_embeddings_NNN.npy with aligned labels.
#[derive(Parser)]
#[command(name = "mlops-embed", version)]
struct Args {
    /// TOML file with an [EmbedConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory of mlops-train.
    #[arg(long)]
    model: PathBuf,
    /// Output directory of mlops-data.
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Roles to embed, comma separated [default: gallery,test].
    #[arg(long, value_delimiter = ',', value_parser = parse_role)]
    roles: Option<Vec<Role>>,
    /// Images per forward pass [default: 512].
    #[arg(long)]
    batch_size: Option<usize>,
    /// auto, cpu, cuda or cuda:N [default: auto].
    #[arg(long)]
    device: Option<DeviceSpec>,
    /// libtorch threads, 0 = one per core [default: 0].
    #[arg(long)]
    threads: Option<usize>,
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::ALL
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown role {s:?} (train, val, gallery, test)"))
}

fn main() -> ExitCode {
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut c: mlops_embed::EmbedConfig = match mlops_core::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return mlops_core::telemetry::report_error(&e),
    };
    c.model = args.model;
    c.data = args.data;
    c.out = args.out;
    c.roles = args.roles.unwrap_or(c.roles);
    c.batch_size = args.batch_size.unwrap_or(c.batch_size);
    c.device = args.device.unwrap_or(c.device);
    c.threads = args.threads.unwrap_or(c.threads);
    match mlops_embed::run(&c) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
