use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mlops_index::Metric;

/// Build a FAISS index over gallery embeddings (mlops-embed output) and write index.faiss with
/// labels.npy aligned to index ids.
#[derive(Parser)]
#[command(name = "mlops-index", version)]
struct Args {
    /// TOML file with an [IndexConfig]; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Output directory of mlops-embed.
    #[arg(long)]
    embeddings: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// FAISS index_factory string, e.g. Flat, IVF256,Flat, HNSW32, IVF256,PQ16 [default: Flat].
    #[arg(long)]
    factory: Option<String>,
    /// Similarity [default: inner-product].
    #[arg(long, value_enum)]
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
    mlops_core::telemetry::init_logging();
    let args = Args::parse();
    let mut c: mlops_index::IndexConfig = match mlops_core::load_config(args.config.as_deref()) {
        Ok(config) => config,
        Err(e) => return mlops_core::telemetry::report_error(&e),
    };
    c.embeddings = args.embeddings;
    c.out = args.out;
    c.factory = args.factory.unwrap_or(c.factory);
    c.metric = args.metric.unwrap_or(c.metric);
    c.nprobe = args.nprobe.or(c.nprobe);
    c.ef_search = args.ef_search.or(c.ef_search);
    c.train_size = args.train_size.unwrap_or(c.train_size);
    c.seed = args.seed.unwrap_or(c.seed);
    match mlops_index::run(&c) {
        Ok(s) => {
            eprintln!(
                "indexed {} vectors of dim {} with {}",
                s.ntotal, s.dim, s.factory
            );
            ExitCode::SUCCESS
        }
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
