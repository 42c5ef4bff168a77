use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mlops_core::cli::ConfigArgs;
use mlops_deploy::{package, registry, serve};

/// Register, promote, roll back, list and prune model versions; package them for TorchServe and
/// Kubernetes; serve a registry over TorchServe's and KServe's HTTP APIs.
#[derive(Parser)]
#[command(name = "mlops-deploy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy a trained model with its index and evaluation into the registry as a new version.
    Register {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        flags: RegisterFlags,
        /// Write the new version's number to this file (a Kubeflow output parameter).
        #[arg(long)]
        version_output: Option<PathBuf>,
    },
    /// Make VERSION the default of NAME, or roll it out beside the default first (a canary or a
    /// shadow), or finish the rollout in progress.
    Promote {
        #[command(flatten)]
        at: At,
        #[arg(required_unless_present = "finish")]
        version: Option<u64>,
        /// Send this percentage of NAME's unversioned requests to VERSION (a request carrying
        /// an X-Request-Id, or a KServe id, always goes the same way).
        #[arg(long, value_name = "PERCENT", conflicts_with_all = ["shadow", "finish"])]
        canary: Option<f64>,
        /// Predict with VERSION beside the default on every request, answer from the default,
        /// and count how often they agree.
        #[arg(long, conflicts_with = "finish")]
        shadow: bool,
        /// Make the candidate of the rollout in progress the default.
        #[arg(long, conflicts_with = "version")]
        finish: bool,
    },
    /// Abandon the rollout in progress, or return NAME to the version promoted before the
    /// default.
    Rollback {
        #[command(flatten)]
        at: At,
    },
    /// List the versions of NAME.
    List {
        #[command(flatten)]
        at: At,
    },
    /// Remove old versions of NAME, never the default nor the previous one.
    Prune {
        #[command(flatten)]
        at: At,
        /// Newest versions to keep.
        #[arg(long, default_value_t = 3)]
        keep: usize,
    },
    /// Write a TorchServe archive, its config.properties and Kubernetes manifests.
    Package {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        flags: PackageFlags,
    },
    /// Serve every model of a registry (TorchServe and KServe v2 APIs) until SIGTERM.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        flags: ServeFlags,
        /// Bearer token for management calls that change state (never printed).
        #[arg(long, env = "MLOPS_MANAGEMENT_TOKEN", hide_env_values = true)]
        management_token: Option<String>,
    },
}

#[derive(clap::Args)]
struct At {
    #[arg(long, env = "MLOPS_REGISTRY")]
    registry: PathBuf,
    /// Model name.
    name: String,
}

#[derive(clap::Args, serde::Serialize)]
struct RegisterFlags {
    /// Output directory of mlops-train.
    #[arg(long)]
    model: PathBuf,
    /// Output directory of mlops-index.
    #[arg(long)]
    index: PathBuf,
    /// Output directory of mlops-eval.
    #[arg(long)]
    eval: PathBuf,
    #[arg(long, env = "MLOPS_REGISTRY")]
    registry: PathBuf,
    /// Model name [default: fashion-mnist].
    #[arg(long)]
    name: Option<String>,
    /// Make the new version the default.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    promote: bool,
    /// Register although the deploy gate rejected the model.
    #[arg(long)]
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    force: bool,
}

#[derive(clap::Args, serde::Serialize)]
struct PackageFlags {
    #[arg(long, env = "MLOPS_REGISTRY")]
    registry: PathBuf,
    /// Model name [default: fashion-mnist].
    #[arg(long)]
    name: Option<String>,
    /// Version to package [default: the default version].
    #[arg(long)]
    version: Option<u64>,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Container image for the Kubernetes Deployment.
    #[arg(long)]
    image: Option<String>,
}

#[derive(clap::Args, serde::Serialize)]
struct ServeFlags {
    #[arg(long, env = "MLOPS_REGISTRY")]
    registry: PathBuf,
    /// [default: 127.0.0.1:8080]
    #[arg(long, env = "MLOPS_INFERENCE_ADDR")]
    inference_addr: Option<String>,
    /// [default: 127.0.0.1:8081]
    #[arg(long, env = "MLOPS_MANAGEMENT_ADDR")]
    management_addr: Option<String>,
    /// [default: 127.0.0.1:8082]
    #[arg(long, env = "MLOPS_METRICS_ADDR")]
    metrics_addr: Option<String>,
    /// Most images per inference batch [default: 32].
    #[arg(long, env = "MLOPS_BATCH_SIZE")]
    batch_size: Option<usize>,
    /// Longest wait for a batch to fill, from the first request's arrival [default: 2].
    #[arg(long, env = "MLOPS_MAX_BATCH_DELAY_MS")]
    max_batch_delay_ms: Option<f64>,
    /// Inference threads per model version, 0 = one per core on a CPU, one on a GPU
    /// [default: 0].
    #[arg(long, env = "MLOPS_WORKERS")]
    workers: Option<usize>,
    /// libtorch threads of each inference thread, 0 = the cores shared out among them
    /// [default: 0].
    #[arg(long, env = "MLOPS_THREADS")]
    threads: Option<usize>,
    /// HTTP threads, 0 = one per core [default: 0].
    #[arg(long, env = "MLOPS_IO_THREADS")]
    io_threads: Option<usize>,
    /// Voting neighbours [default: the k the eval stage chose].
    #[arg(long, env = "MLOPS_K")]
    k: Option<usize>,
    /// Largest request body in bytes [default: 10485760].
    #[arg(long, env = "MLOPS_BODY_LIMIT")]
    body_limit: Option<usize>,
    /// Inference precision: auto, fp32 or bf16 [default: auto].
    #[arg(long, env = "MLOPS_PRECISION")]
    precision: Option<mlops_torch::Precision>,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Register {
            config,
            flags,
            version_output,
        } => register(&config, &flags, version_output),
        Command::Promote {
            at,
            version,
            canary,
            shadow,
            finish,
        } => plain(|| {
            let promotion = registry::Promotion::from_flags(version, canary, shadow, finish)?;
            println!(
                "{}",
                registry::run_promotion(&at.registry, &at.name, promotion)?
            );
            Ok(())
        }),
        Command::Rollback { at } => plain(|| {
            println!("{}", registry::run_rollback(&at.registry, &at.name)?);
            Ok(())
        }),
        Command::List { at } => plain(|| {
            print!(
                "{}",
                registry::list_table(&registry::list(&at.registry, &at.name)?)
            );
            Ok(())
        }),
        Command::Prune { at, keep } => plain(|| {
            let removed = registry::prune(&at.registry, &at.name, keep)?;
            println!("removed versions {removed:?}");
            Ok(())
        }),
        Command::Package { config, flags } => {
            mlops_core::cli::main(&config, &flags, |c: package::PackageConfig| {
                package::run(&c).map(|_| ExitCode::SUCCESS)
            })
        }
        Command::Serve {
            config,
            flags,
            management_token,
        } => serve(&config, &flags, management_token),
    }
}

/// `register`: prints the new version and writes its number where `--version-output` says.
fn register(
    config: &ConfigArgs,
    flags: &RegisterFlags,
    version_output: Option<PathBuf>,
) -> ExitCode {
    mlops_core::cli::main(config, flags, |c: registry::RegisterConfig| {
        let v = registry::register(&c)?;
        println!("registered {} version {}", v.name, v.version);
        mlops_core::cli::write_output(version_output.as_deref(), &v.version.to_string())?;
        Ok::<_, mlops_deploy::Error>(ExitCode::SUCCESS)
    })
}

/// `serve`: prints one line with the bound addresses (for scripts and tests to find the
/// ports), then serves until SIGTERM.
fn serve(config: &ConfigArgs, flags: &ServeFlags, management_token: Option<String>) -> ExitCode {
    mlops_core::cli::main(config, flags, |mut c: serve::ServeConfig| {
        c.management_token = management_token.map(serve::Secret::new);
        serve::run_with(c, |bound| {
            println!(
                "listening {}",
                serde_json::to_string(&bound).unwrap_or_default()
            );
        })
        .map(|()| ExitCode::SUCCESS)
    })
}

/// A subcommand without a config file: logging, then `f`, its error reported (exit 1).
fn plain(f: impl FnOnce() -> mlops_deploy::Result<()>) -> ExitCode {
    mlops_core::telemetry::init_logging();
    match f() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => mlops_core::telemetry::report_error(&e),
    }
}
