use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_core::artifact::Metric;

/// Build a FAISS index over gallery embeddings (mlops-embed output) and write index.faiss with
/// labels.npy aligned to index ids. Every setting of mlops_index::IndexConfig can also come from
/// --config FILE.toml or --set key=value.
#[derive(Parser)]
#[command(name = "mlops-index", version)]
struct Args {
    #[command(flatten)]
    config: mlops_core::cli::ConfigArgs,
    #[command(flatten)]
    flags: Flags,
}

#[derive(clap::Args, serde::Serialize)]
struct Flags {
    /// Output directory of mlops-embed.
    #[arg(long)]
    embeddings: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// FAISS index_factory string, e.g. Flat, IVF256,Flat, HNSW32, IVF256,PQ16 [default: Flat].
    #[arg(long)]
    factory: Option<String>,
    /// Similarity: inner_product or l2 [default: inner_product].
    #[arg(long)]
    metric: Option<Metric>,
    /// IVF lists visited per query.
    #[arg(long)]
    nprobe: Option<usize>,
    /// HNSW search candidate list size.
    #[arg(long)]
    ef_search: Option<usize>,
    /// Most vectors sampled to train indexes that need training [default: 100000].
    #[arg(long)]
    train_size: Option<usize>,
    /// Seed for the training sample [default: 42].
    #[arg(long)]
    seed: Option<u64>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    mlops_core::cli::main(&args.config, &args.flags, |c: mlops_index::IndexConfig| {
        let s = mlops_index::run(&c)?;
        eprintln!(
            "indexed {} vectors of dim {} with {}",
            s.ntotal, s.dim, s.factory
        );
        Ok::<_, mlops_index::Error>(ExitCode::SUCCESS)
    })
}
