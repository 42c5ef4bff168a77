//! `cargo xtask pipeline`: the stages of [`crate::dag::STAGES`] on this machine, each its own
//! binary writing `runs/<run>/<stage>/`, with a step cache and resumption.
//!
//! - **Cache.** A stage is skipped, its outputs reused, when its key is unchanged: the sha256 of
//!   its binary, its arguments and parameters, and the checksums of everything it reads (the
//!   outputs listed in upstream manifests; for the data stage, the size and modification time of
//!   every source file). The key is written after the stage's manifest (`.cache-key`), and a
//!   hit also re-verifies every output checksum, so a half-written or altered stage never
//!   counts. `--force` re-runs everything, `--force STAGE` that stage and all after it.
//! - **Resumption.** A run killed at any point (even SIGKILL) and started again reruns the
//!   stage it was in and reuses what finished; the train stage continues from its last epoch
//!   checkpoint (exact resume, so the result is the same).
//! - **Record.** `runs/<run>/run.json`: git revision, parameters, per-stage duration, cache hit or
//!   miss, inputs and outputs with checksums, final metrics, decision and registered version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};

use crate::dag::{self, Stage, Value, STAGES};
use crate::{cargo, release_dir, root, run_cmd, setup};
use mlops_core::notify::{Event, Notifier};

/// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it.
pub const DEFAULT_SOURCE: &str = "/usr/share/datasets/fashion-mnist";

#[derive(clap::Args, Default)]
pub struct PipelineArgs {
    /// Parameters file [default: pipeline.toml at the workspace root].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// A named set of parameters from the `[profiles]` table of the parameters file (e.g.
    /// `quick`: about a minute of training for a first look), applied before the flags and
    /// `--set`.
    #[arg(long)]
    pub profile: Option<String>,
    /// Override a parameter for this run: SECTION.KEY=VALUE (e.g. train.epochs=1,
    /// pipeline.run=exp1); repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
    /// Run name (pipeline.run): outputs go to runs/<name>/.
    #[arg(long)]
    pub name: Option<String>,
    /// Data source for the data stage (pipeline.sources); repeatable.
    #[arg(long)]
    pub source: Vec<PathBuf>,
    /// Seed of the data split and the training (data.seed, train.seed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Training epochs (train.epochs).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Registry directory (pipeline.registry).
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// The model's name in the registry (pipeline.model) [default: the first source's directory
    /// name, so another data set starts another model].
    #[arg(long)]
    pub model_name: Option<String>,
    /// Re-run every stage, or the named stage and every stage after it, ignoring the cache.
    #[arg(long, num_args = 0..=1, default_missing_value = "all", value_name = "STAGE")]
    pub force: Option<String>,
    /// Directory holding the runs [default: runs/ in the workspace].
    #[arg(long)]
    pub runs_dir: Option<PathBuf>,
    /// Skip set-up (apt, libtorch, venv) when it is known to be done.
    #[arg(long)]
    pub no_setup: bool,
    /// Use the stage binaries (and, with `--engine podman`, the images) already built.
    #[arg(long)]
    pub no_build: bool,
    /// Where each stage runs: `native` (its binary on this machine) or `podman` (its image,
    /// the run directory, registry and sources bind-mounted at the same paths).
    #[arg(long, value_enum, default_value_t)]
    pub engine: EngineKind,
    /// With `--engine podman`: the tag of the images to run [default: build them now, tagged
    /// as `cargo xtask images` tags them].
    #[arg(long)]
    pub image_tag: Option<String>,
}

/// Where stages run.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EngineKind {
    #[default]
    Native,
    Podman,
}

/// How a stage's process is started: the native binary, or its container image.
enum Engine {
    Native,
    /// Image reference and id per stage; bind mounts shared by every stage.
    Podman {
        images: std::collections::BTreeMap<&'static str, (String, String)>,
        mounts: Vec<(PathBuf, bool)>,
    },
}

impl Engine {
    fn prepare(
        args: &PipelineArgs,
        params: &Params,
        run_dir: &Path,
        registry: &Path,
    ) -> Result<Engine> {
        if args.engine == EngineKind::Native {
            return Ok(Engine::Native);
        }
        let build = if args.no_build {
            crate::images::Build::Nothing
        } else {
            // The binaries were just built; images of them follow (cached layers make an
            // unchanged image a matter of seconds).
            crate::images::Build::Images
        };
        let images = crate::images::local(args.image_tag.as_deref(), build)?.images;
        std::fs::create_dir_all(registry)?;
        let mut mounts = vec![
            (run_dir.to_path_buf(), true),
            (registry.to_path_buf(), true),
        ];
        for source in &params.sources {
            mounts.push((source.clone(), false));
        }
        Ok(Engine::Podman { images, mounts })
    }

    /// What identifies the code a stage runs: the binary's sha256, or the image id.
    fn identity(&self, stage: &Stage) -> Result<String> {
        match self {
            Engine::Native => sha256_file(&release_dir().join(stage.binary)),
            Engine::Podman { images, .. } => Ok(images[stage.name].1.clone()),
        }
    }

    /// The container's name: one per run directory and stage, so a run started again after
    /// its runner was killed (whose podman client then could not stop the container) finds
    /// the orphan and removes it before the stage runs again.
    fn container_name(stage: &Stage, run_dir: &Path) -> String {
        let digest = hex::encode(Sha256::digest(run_dir.as_os_str().as_encoded_bytes()));
        let run: String = run_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("mlops-{run}-{}-{}", stage.name, &digest[..12])
    }

    fn command(&self, stage: &Stage, run_dir: &Path) -> Result<Command> {
        match self {
            Engine::Native => Ok(Command::new(release_dir().join(stage.binary))),
            Engine::Podman { images, mounts } => {
                let name = Self::container_name(stage, run_dir);
                let removed = Command::new("podman")
                    .args(["rm", "--force", "--ignore", "--time=0", &name])
                    .stdout(std::process::Stdio::null())
                    .status()
                    .context("cannot run podman")?;
                if !removed.success() {
                    bail!("podman rm {name} failed ({removed})");
                }
                let mut cmd = Command::new("podman");
                // SAFETY: getuid and getgid cannot fail.
                let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
                cmd.args(["run", "--rm", "--network=none"])
                    .arg(format!("--name={name}"))
                    // Files in the run directory belong to whoever runs the pipeline, as they
                    // do natively (the image's own user is 10001).
                    .arg(format!("--user={uid}:{gid}"));
                for (path, writable) in mounts {
                    let mode = if *writable { "rw" } else { "ro" };
                    cmd.arg(format!("--volume={0}:{0}:{mode}", path.display()));
                }
                for (key, _) in std::env::vars_os() {
                    let key = key.to_string_lossy();
                    if key == "RUST_LOG" || key.starts_with("MLOPS_") {
                        cmd.arg(format!("--env={key}"));
                    }
                }
                cmd.arg(&images[stage.name].0);
                Ok(cmd)
            }
        }
    }
}

/// The resolved parameters of one run.
#[derive(Debug)]
pub struct Params {
    /// The whole parameter table after overrides (recorded in run.json).
    pub table: toml::Table,
    pub run: String,
    pub registry: PathBuf,
    pub model: String,
    pub sources: Vec<PathBuf>,
}

impl Params {
    /// `pipeline.toml` (or `config`), then the flags, then `--set` pairs.
    pub fn load(args: &PipelineArgs) -> Result<Params> {
        let path = args
            .config
            .clone()
            .unwrap_or_else(|| root().join("pipeline.toml"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut table: toml::Table = toml::from_str(&text)
            .with_context(|| format!("{} is not valid TOML", path.display()))?;
        let profiles = match table.remove("profiles") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => bail!("{}: [profiles] must be a table", path.display()),
        };
        if let Some(name) = &args.profile {
            let Some(toml::Value::Table(profile)) = profiles.get(name) else {
                bail!(
                    "{}: no profile {name:?} (profiles: {})",
                    path.display(),
                    profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                );
            };
            merge(&mut table, profile);
        }
        let mut sets = Vec::new();
        if let Some(n) = &args.name {
            sets.push(format!("pipeline.run={}", toml::Value::from(n.as_str())));
        }
        if !args.source.is_empty() {
            let list: Vec<toml::Value> = args
                .source
                .iter()
                .map(|s| toml::Value::from(s.display().to_string()))
                .collect();
            sets.push(format!("pipeline.sources={}", toml::Value::Array(list)));
        }
        if let Some(r) = &args.registry {
            sets.push(format!(
                "pipeline.registry={}",
                toml::Value::from(r.display().to_string())
            ));
        }
        if let Some(m) = &args.model_name {
            sets.push(format!("pipeline.model={}", toml::Value::from(m.as_str())));
        }
        if let Some(seed) = args.seed {
            sets.extend([format!("data.seed={seed}"), format!("train.seed={seed}")]);
        }
        if let Some(epochs) = args.epochs {
            sets.push(format!("train.epochs={epochs}"));
        }
        sets.extend(args.set.iter().cloned());
        for pair in &sets {
            set(&mut table, pair)?;
        }
        for key in table.keys() {
            if key != "pipeline" && dag::stage(key).is_none() {
                bail!(
                    "{}: unknown section [{key}] (sections: pipeline and the stages {})",
                    path.display(),
                    STAGES.map(|s| s.name).join(", ")
                );
            }
        }
        let pipeline = table
            .get("pipeline")
            .and_then(toml::Value::as_table)
            .cloned()
            .unwrap_or_default();
        let text_of = |key: &str, default: &str| -> Result<String> {
            match pipeline.get(key) {
                None => Ok(default.to_string()),
                Some(v) => v
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("pipeline.{key} must be a string")),
            }
        };
        let sources = match pipeline.get("sources") {
            None => vec![PathBuf::from(DEFAULT_SOURCE)],
            Some(v) => v
                .as_array()
                .and_then(|a| a.iter().map(|s| s.as_str().map(PathBuf::from)).collect())
                .context("pipeline.sources must be a list of paths")?,
        };
        let run = text_of("run", "default")?;
        if run.is_empty() || run.contains(['/', '\\']) || run.starts_with('.') {
            bail!("run name {run:?} must be a plain directory name");
        }
        let model = match pipeline.get("model") {
            Some(_) => text_of("model", "")?,
            None => model_name_of(&sources),
        };
        Ok(Params {
            registry: PathBuf::from(text_of("registry", "runs/registry")?),
            model,
            run,
            sources,
            table,
        })
    }

    /// The `--set key=value` arguments a stage binary gets from its section.
    pub fn stage_sets(&self, stage: &str) -> Vec<String> {
        self.table
            .get(stage)
            .and_then(toml::Value::as_table)
            .map(mlops_core::config::table_sets)
            .unwrap_or_default()
    }
}

/// The registry name a run's model gets unless `pipeline.model` names it: the first source's
/// directory name (a file's parent directory), made a valid model name. A run on another data
/// set so registers another model instead of replacing the one it would otherwise share a
/// name with (and the registry refuses a version whose classes differ from its model's).
pub fn model_name_of(sources: &[PathBuf]) -> String {
    let name = sources
        .first()
        .and_then(|s| {
            // `--source .` names the directory it is run in.
            let s = std::path::absolute(s).ok()?;
            let dir = if s.is_file() {
                s.parent()?
            } else {
                s.as_path()
            };
            dir.file_name().map(|n| n.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .skip_while(|c| !c.is_ascii_alphanumeric())
        .take(64)
        .collect();
    if clean.is_empty() {
        "model".into()
    } else {
        clean
    }
}

/// Merges `over` into `base`, table by table; `over`'s values win.
fn merge(base: &mut toml::Table, over: &toml::Table) {
    for (k, v) in over {
        match (base.get_mut(k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            _ => {
                base.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Sets `section.key[.sub]=value` (a TOML value, or a bare string) in `table`.
fn set(table: &mut toml::Table, pair: &str) -> Result<()> {
    let (key, raw) = pair
        .split_once('=')
        .with_context(|| format!("--set {pair:?}: expected SECTION.KEY=VALUE"))?;
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::from(raw));
    let parts: Vec<&str> = key.trim().split('.').collect();
    if parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        bail!("--set {pair:?}: expected SECTION.KEY=VALUE");
    }
    let mut slot = table;
    for part in &parts[..parts.len() - 1] {
        slot = slot
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("--set {pair:?}: {part} is not a section"))?;
    }
    slot.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

/// (path, sha256) pairs.
type Files = Vec<(String, String)>;

/// What happened to one stage in a run.
struct StageRecord {
    name: &'static str,
    status: &'static str,
    seconds: f64,
    /// Peak resident set size of the stage's process (MB), when it ran.
    peak_rss_mb: Option<f64>,
    key: String,
    inputs: Vec<(String, String)>,
    outputs: Vec<(String, String)>,
}

impl StageRecord {
    fn json(&self) -> Json {
        let files = |v: &[(String, String)]| {
            v.iter()
                .map(|(p, s)| json!({ "path": p, "sha256": s }))
                .collect::<Vec<_>>()
        };
        json!({
            "stage": self.name,
            "status": self.status,
            "cache": if self.status == "cached" { "hit" } else if self.status == "ran" { "miss" } else { "none" },
            "seconds": self.seconds,
            "peak_rss_mb": self.peak_rss_mb,
            "key": self.key,
            "inputs": files(&self.inputs),
            "outputs": files(&self.outputs),
        })
    }
}

const CACHE_KEY: &str = ".cache-key";

pub fn run(args: &PipelineArgs) -> Result<()> {
    let mut params = Params::load(args)?;
    // Stages see the sources by absolute path: a container's working directory is not ours, and
    // podman bind-mounts only absolute paths.
    for source in &mut params.sources {
        *source = std::path::absolute(&*source)
            .with_context(|| format!("cannot resolve {}", source.display()))?;
    }
    if let Some(f) = args.force.as_deref() {
        if f != "all" && dag::stage(f).is_none() {
            bail!("--force {f}: no such stage");
        }
    }
    if !args.no_setup {
        setup::run(&setup::SetupArgs::default())?;
    }
    if !args.no_build {
        let mut build = cargo();
        build.args(["build", "--release"]);
        for s in &STAGES {
            build.args(["-p", s.binary]);
        }
        run_cmd(&mut build, "cargo build")?;
    }
    let runs = args.runs_dir.clone().unwrap_or_else(|| root().join("runs"));
    let run_dir = std::path::absolute(runs.join(&params.run))?;
    let registry = if params.registry.is_absolute() {
        params.registry.clone()
    } else {
        root().join(&params.registry)
    };
    std::fs::create_dir_all(&run_dir)?;
    let engine = Engine::prepare(args, &params, &run_dir, &registry)?;
    let notifier = Notifier::from_env();
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut records = Vec::new();
    let result = run_stages(args, &engine, &params, &run_dir, &registry, &mut records);
    let seconds = started.elapsed().as_secs_f64();
    let record = run_record(&params, &run_dir, &records, started_at, seconds, &result);
    crate::write_json(&run_dir.join("run.json"), &record)?;
    match &result {
        Ok(()) => {
            let accuracy = record["metrics"]["accuracy"].as_f64();
            let decision = record["decision"].as_str();
            let version = record["registered_version"].as_u64();
            if let (Some(accuracy), Some(decision)) = (accuracy, decision) {
                notifier.send(&Event::DeployDecision {
                    run: &params.run,
                    deploy: decision == "deploy",
                    accuracy,
                    version,
                });
            }
            notifier.send(&Event::PipelineSucceeded {
                run: &params.run,
                accuracy,
                decision,
                version,
                seconds,
            });
            print_summary(&run_dir, &record);
        }
        Err(e) => {
            let stage = records
                .iter()
                .find(|r| r.status == "failed")
                .map_or("set-up", |r| r.name);
            notifier.send(&Event::PipelineFailed {
                run: &params.run,
                stage,
                error: &format!("{e:#}"),
            });
        }
    }
    result
}

fn run_stages(
    args: &PipelineArgs,
    engine: &Engine,
    params: &Params,
    run_dir: &Path,
    registry: &Path,
    records: &mut Vec<StageRecord>,
) -> Result<()> {
    let total = STAGES.len();
    for (i, stage) in STAGES.iter().enumerate() {
        let dir = run_dir.join(stage.name);
        if stage.when_deploy && read_decision(run_dir)? != "deploy" {
            eprintln!(
                "==> [{}/{total}] {}: skipped (the gate rejected the model)",
                i + 1,
                stage.name
            );
            records.push(StageRecord {
                name: stage.name,
                status: "skipped",
                seconds: 0.0,
                peak_rss_mb: None,
                key: String::new(),
                inputs: Vec::new(),
                outputs: Vec::new(),
            });
            continue;
        }
        let (argv, inputs) = arguments(stage, params, run_dir, registry)?;
        let key = cache_key(stage, &engine.identity(stage)?, &argv, &inputs)?;
        let forced = args
            .force
            .as_deref()
            .is_some_and(|f| f == "all" || stage.at_or_after(f));
        let started = Instant::now();
        if !forced && cached(stage, &dir, &key, registry, params)? {
            eprintln!("==> [{}/{total}] {}: cached", i + 1, stage.name);
            records.push(StageRecord {
                name: stage.name,
                status: "cached",
                seconds: 0.0,
                peak_rss_mb: None,
                key,
                inputs,
                outputs: outputs(stage, &dir)?,
            });
            continue;
        }
        eprintln!("==> [{}/{total}] {}", i + 1, stage.name);
        let _ = std::fs::remove_file(dir.join(CACHE_KEY));
        let ran = execute(engine, stage, run_dir, &argv, &dir);
        let seconds = started.elapsed().as_secs_f64();
        let mut record = StageRecord {
            name: stage.name,
            status: "ran",
            seconds,
            peak_rss_mb: ran.as_ref().ok().copied().flatten(),
            key: key.clone(),
            inputs,
            outputs: Vec::new(),
        };
        if let Err(e) = ran {
            record.status = "failed";
            records.push(record);
            return Err(e);
        }
        eprintln!(
            "    {} done in {seconds:.1} s{}",
            stage.name,
            record
                .peak_rss_mb
                .map_or(String::new(), |mb| format!(", peak RSS {mb:.0} MB"))
        );
        std::fs::create_dir_all(&dir)?;
        crate::write_atomic(&dir.join(CACHE_KEY), key.as_bytes())?;
        record.outputs = outputs(stage, &dir)?;
        records.push(record);
    }
    Ok(())
}

/// The stage's command line, and the files it reads with their checksums.
fn arguments(
    stage: &Stage,
    params: &Params,
    run_dir: &Path,
    registry: &Path,
) -> Result<(Vec<String>, Files)> {
    let mut argv: Vec<String> = stage.subcommand.iter().map(|s| s.to_string()).collect();
    let mut inputs = Vec::new();
    for (flag, value) in stage.inputs {
        match value {
            Value::Stage(name) => {
                let dir = run_dir.join(name);
                argv.extend([flag.to_string(), dir.display().to_string()]);
                inputs.extend(manifest_outputs(&dir)?);
            }
            Value::Sources => {
                for source in &params.sources {
                    argv.extend([flag.to_string(), source.display().to_string()]);
                    inputs.push((source.display().to_string(), source_fingerprint(source)?));
                }
            }
            Value::Registry => argv.extend([flag.to_string(), registry.display().to_string()]),
            Value::ModelName => argv.extend([flag.to_string(), params.model.clone()]),
            Value::DeployedEval | Value::DeployedModel => {
                if let Some(dir) = baseline(run_dir, registry, &params.model)? {
                    argv.extend([flag.to_string(), dir.display().to_string()]);
                    let read = if *value == Value::DeployedEval {
                        "metrics.json"
                    } else {
                        "model.pt"
                    };
                    let file = dir.join(read);
                    inputs.push((file.display().to_string(), sha256_file(&file)?));
                }
            }
        }
    }
    if let Some(out) = stage.out_flag {
        argv.extend([
            out.to_string(),
            run_dir.join(stage.name).display().to_string(),
        ]);
    }
    argv.extend(stage.fixed.iter().map(|s| s.to_string()));
    for o in stage.outputs {
        let file = run_dir.join(stage.name).join(format!("{}.out", o.name));
        argv.extend([o.flag.to_string(), file.display().to_string()]);
    }
    for pair in params.stage_sets(stage.name) {
        argv.extend(["--set".to_string(), pair]);
    }
    Ok((argv, inputs))
}

/// The deployed version a new model must not regress from: the registry's default, except
/// when that is the version this very run registered (a re-run then compares with what was
/// deployed before it, as the first run did).
fn baseline(run_dir: &Path, registry: &Path, model: &str) -> Result<Option<PathBuf>> {
    let saved = run_dir.join("eval.baseline");
    let pointer: Json = match std::fs::read(registry.join(model).join("registry.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(_) => Json::Null,
    };
    let default = pointer["default"].as_u64();
    let own = std::fs::read_to_string(run_dir.join("deploy/version.out"))
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok());
    let version = if default.is_some() && default == own {
        std::fs::read_to_string(&saved)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    } else {
        crate::write_atomic(
            &saved,
            default
                .map(|v| v.to_string())
                .unwrap_or_default()
                .as_bytes(),
        )?;
        default
    };
    Ok(version.map(|v| registry.join(model).join(v.to_string())))
}

/// (path, sha256) of every output an upstream stage's manifest lists; the stage must be
/// finished.
fn manifest_outputs(dir: &Path) -> Result<Vec<(String, String)>> {
    let manifest = crate::read_json(&dir.join("manifest.json"))
        .with_context(|| format!("{} has not finished", dir.display()))?;
    Ok(manifest["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                dir.join(e["path"].as_str().unwrap_or_default())
                    .display()
                    .to_string(),
                e["sha256"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// A cheap fingerprint of a data source: relative path, size and modification time of every
/// file below it (content hashing 70,000 images on every run would cost more than ingesting).
pub fn source_fingerprint(path: &Path) -> Result<String> {
    let mut lines = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = std::fs::metadata(&p).with_context(|| format!("cannot read {}", p.display()))?;
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p)? {
                stack.push(entry?.path());
            }
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let rel = p.strip_prefix(path).unwrap_or(&p).display().to_string();
            lines.push(format!("{rel}\0{}\0{mtime}\n", meta.len()));
        }
    }
    lines.sort();
    let mut h = Sha256::new();
    lines.iter().for_each(|l| h.update(l.as_bytes()));
    Ok(hex::encode(h.finalize()))
}

pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The stage's cache key: the code it runs (binary or image), arguments (parameters
/// included), inputs' checksums.
fn cache_key(
    stage: &Stage,
    code: &str,
    argv: &[String],
    inputs: &[(String, String)],
) -> Result<String> {
    let mut h = Sha256::new();
    h.update(stage.name.as_bytes());
    h.update(code.as_bytes());
    for a in argv {
        h.update(a.as_bytes());
        h.update([0]);
    }
    for (p, s) in inputs {
        h.update(format!("{p}\0{s}\n").as_bytes());
    }
    Ok(hex::encode(h.finalize()))
}

/// Whether the stage's last run in `dir` is finished, intact and made with `key`.
fn cached(stage: &Stage, dir: &Path, key: &str, registry: &Path, params: &Params) -> Result<bool> {
    let stored = std::fs::read_to_string(dir.join(CACHE_KEY)).unwrap_or_default();
    if stored != key {
        return Ok(false);
    }
    if stage.out_flag.is_none() {
        // The deploy step: its version must still be in the registry.
        let version = std::fs::read_to_string(dir.join("version.out")).unwrap_or_default();
        let exists = registry
            .join(&params.model)
            .join(version.trim())
            .join("manifest.json")
            .is_file();
        return Ok(!version.trim().is_empty() && exists);
    }
    let Ok(outputs) = manifest_outputs(dir) else {
        return Ok(false);
    };
    for (path, sha) in &outputs {
        if sha256_file(Path::new(path)).ok().as_deref() != Some(sha.as_str()) {
            eprintln!("    {path} changed since the cached run: running again");
            return Ok(false);
        }
    }
    Ok(true)
}

fn outputs(stage: &Stage, dir: &Path) -> Result<Vec<(String, String)>> {
    if stage.out_flag.is_none() {
        let version = dir.join("version.out");
        return Ok(vec![(
            version.display().to_string(),
            sha256_file(&version)?,
        )]);
    }
    manifest_outputs(dir)
}

/// Runs the stage's binary; a train stage with checkpoints and no manifest resumes from them.
/// Returns the peak resident set size of the process that finished the stage (MB).
/// (Under podman the figure is podman's own, so none is reported.)
fn execute(
    engine: &Engine,
    stage: &Stage,
    run_dir: &Path,
    argv: &[String],
    dir: &Path,
) -> Result<Option<f64>> {
    let native = matches!(engine, Engine::Native);
    let rss_of = |rss: Option<f64>| if native { rss } else { None };
    let resumable = stage.name == "train"
        && dir.join("checkpoints/state.json").is_file()
        && !dir.join("manifest.json").is_file();
    if resumable {
        eprintln!("    resuming from {}", dir.join("checkpoints").display());
        let (status, rss) =
            crate::status_and_peak_rss(engine.command(stage, run_dir)?.args(argv).arg("--resume"))?;
        if status.success() {
            return Ok(rss_of(rss));
        }
        // Checkpoints of other settings (or damaged ones): start over.
        eprintln!("    cannot resume ({status}); training from the start");
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = engine.command(stage, run_dir)?;
    let (status, rss) = crate::status_and_peak_rss(cmd.args(argv)).with_context(|| {
        format!(
            "cannot start stage {} ({:?})",
            stage.name,
            cmd.get_program()
        )
    })?;
    if !status.success() {
        // podman's own failures (no image, a bad mount) are 125-127; the stage's are its own.
        if !native && matches!(status.code(), Some(125..=127)) {
            bail!("podman could not run stage {} ({status})", stage.name);
        }
        bail!("stage {} failed ({status})", stage.name);
    }
    Ok(rss_of(rss))
}

fn read_decision(run_dir: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(run_dir.join("eval/decision.out"))
        .context("the eval stage wrote no decision")?
        .trim()
        .to_string())
}

pub(crate) fn git_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(root())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn run_record(
    params: &Params,
    run_dir: &Path,
    records: &[StageRecord],
    started_at: chrono::DateTime<chrono::Utc>,
    seconds: f64,
    result: &Result<()>,
) -> Json {
    let eval = crate::read_json(&run_dir.join("eval/manifest.json")).unwrap_or(Json::Null);
    let summary = &eval["summary"];
    let deployed = records
        .iter()
        .any(|r| r.name == "deploy" && r.status != "skipped");
    let version = if deployed {
        std::fs::read_to_string(run_dir.join("deploy/version.out"))
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    } else {
        None
    };
    json!({
        "run": params.run,
        "status": if result.is_ok() { "succeeded" } else { "failed" },
        "error": result.as_ref().err().map(|e| format!("{e:#}")),
        "git_revision": git_revision(),
        "started_at": started_at.to_rfc3339(),
        "seconds": seconds,
        "parameters": params.table,
        "stages": records.iter().map(StageRecord::json).collect::<Vec<_>>(),
        "metrics": {
            "accuracy": summary["metrics"]["accuracy"],
            "top1_accuracy": summary["top1_accuracy"],
            "macro_f1": summary["metrics"]["macro_f1"],
            "k": summary["k"],
            "scoring": summary["scoring"],
            "centre_weight": summary["centre_weight"],
        },
        "decision": if summary.is_null() { Json::Null } else if summary["decision"]["deploy"] == true { json!("deploy") } else { json!("reject") },
        "registered_version": version,
        "model": params.model,
        "report": run_dir.join("eval/report.html").display().to_string(),
    })
}

fn print_summary(run_dir: &Path, record: &Json) {
    let cached = record["stages"]
        .as_array()
        .map_or(0, |s| s.iter().filter(|s| s["cache"] == "hit").count());
    println!(
        "\npipeline finished: {} in {:.1} s ({cached} stages from cache)",
        run_dir.display(),
        record["seconds"].as_f64().unwrap_or(0.0)
    );
    let m = &record["metrics"];
    let classifier = match m["scoring"].as_str() {
        Some("blend") => format!(
            "kNN vote k = {} blended with the class centres, weight {}",
            m["k"], m["centre_weight"]
        ),
        Some("centre") => "nearest class centre".to_string(),
        _ => format!("kNN vote, k = {}", m["k"]),
    };
    println!(
        "  test accuracy {:.4} ({classifier}), top-1 {:.4}, macro F1 {:.4}",
        m["accuracy"].as_f64().unwrap_or(f64::NAN),
        m["top1_accuracy"].as_f64().unwrap_or(f64::NAN),
        m["macro_f1"].as_f64().unwrap_or(f64::NAN),
    );
    let reasons = crate::read_json(&run_dir.join("eval/decision.json"))
        .ok()
        .and_then(|d| {
            d["reasons"].as_array().map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        })
        .unwrap_or_default();
    println!(
        "  decision: {} ({reasons})",
        record["decision"].as_str().unwrap_or("none")
    );
    match record["registered_version"].as_u64() {
        Some(v) => println!(
            "  registered: {} version {v} (default)",
            record["model"].as_str().unwrap_or_default()
        ),
        None => println!("  registered: nothing"),
    }
    println!(
        "  report:  {}",
        record["report"].as_str().unwrap_or_default()
    );
    println!("  record:  {}", run_dir.join("run.json").display());
}

/// `cargo xtask runs`: one line per past run.
pub fn list_runs(runs_dir: Option<&Path>) -> Result<()> {
    let dir = runs_dir.map_or_else(|| root().join("runs"), Path::to_path_buf);
    let mut rows = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))?
    {
        let path = entry?.path().join("run.json");
        if let Ok(r) = crate::read_json(&path) {
            rows.push(r);
        }
    }
    rows.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
    println!(
        "{:<20} {:<26} {:>8} {:>8} {:>9} {:>8}  status",
        "run", "started", "accuracy", "decision", "version", "seconds"
    );
    for r in rows {
        println!(
            "{:<20} {:<26} {:>8} {:>8} {:>9} {:>8.1}  {}",
            r["run"].as_str().unwrap_or_default(),
            r["started_at"]
                .as_str()
                .unwrap_or_default()
                .get(..19)
                .unwrap_or_default(),
            r["metrics"]["accuracy"]
                .as_f64()
                .map_or("-".into(), |a| format!("{a:.4}")),
            r["decision"].as_str().unwrap_or("-"),
            r["registered_version"]
                .as_u64()
                .map_or("-".into(), |v| v.to_string()),
            r["seconds"].as_f64().unwrap_or(0.0),
            r["status"].as_str().unwrap_or_default(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_reach_nested_keys_and_flatten_back() {
        let mut t: toml::Table = toml::from_str("[train]\nseed = 42\n").unwrap();
        set(&mut t, "train.epochs=3").unwrap();
        set(&mut t, "train.arcface.margin=0.3").unwrap();
        set(&mut t, "pipeline.run=exp").unwrap();
        assert!(set(&mut t, "epochs=3").is_err());
        let mut out = mlops_core::config::table_sets(t["train"].as_table().unwrap());
        out.sort();
        assert_eq!(out, ["arcface.margin=0.3", "epochs=3", "seed=42"]);
        assert_eq!(t["pipeline"]["run"].as_str(), Some("exp"));
    }

    #[test]
    fn a_profile_applies_before_flags_and_sets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            "[train]\nseed = 42\nepochs = 20\n[profiles.quick]\npipeline = { run = \"quick\" }\ntrain = { epochs = 4, arcface = { margin = 0.3 } }\n",
        )
        .unwrap();
        let args = |profile: Option<&str>, set: &[&str]| PipelineArgs {
            config: Some(path.clone()),
            profile: profile.map(str::to_string),
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let plain = Params::load(&args(None, &[])).unwrap();
        assert_eq!(plain.run, "default");
        assert!(!plain.table.contains_key("profiles"));
        assert_eq!(plain.table["train"]["epochs"].as_integer(), Some(20));
        let quick = Params::load(&args(Some("quick"), &[])).unwrap();
        assert_eq!(quick.run, "quick");
        let mut sets = quick.stage_sets("train");
        sets.sort();
        assert_eq!(sets, ["arcface.margin=0.3", "epochs=4", "seed=42"]);
        let overridden = Params::load(&args(Some("quick"), &["train.epochs=2"])).unwrap();
        assert_eq!(overridden.table["train"]["epochs"].as_integer(), Some(2));
        let err = Params::load(&args(Some("fast"), &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no profile \"fast\" (profiles: quick)"),
            "{err}"
        );
    }

    #[test]
    fn model_names_come_from_the_data() {
        let names = |s: &[&str]| model_name_of(&s.iter().map(PathBuf::from).collect::<Vec<_>>());
        assert_eq!(
            names(&["/usr/share/datasets/fashion-mnist"]),
            "fashion-mnist"
        );
        assert_eq!(names(&["/data/My Flowers/", "/x"]), "My-Flowers");
        assert_eq!(names(&["/data/.hidden set"]), "hidden-set");
        assert_eq!(names(&[]), "model");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kmnist").join("train-images-idx3-ubyte");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, b"").unwrap();
        assert_eq!(names(&[file.to_str().unwrap()]), "kmnist");
    }

    #[test]
    fn source_fingerprint_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"1").unwrap();
        let one = source_fingerprint(dir.path()).unwrap();
        assert_eq!(one, source_fingerprint(dir.path()).unwrap());
        std::fs::write(dir.path().join("b"), b"2").unwrap();
        assert_ne!(one, source_fingerprint(dir.path()).unwrap());
    }
}
