//! Running the stages in order: each one's command line from the pipeline definition and the
//! parameters, a cache hit or a run, and its record.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use mlops_core::artifact::{eval::METRICS_FILE, model::MODEL_FILE, registry};

use super::cache::{self, FileSum, CACHE_KEY};
use super::engine::Engine;
use super::record::{StageRecord, StageStatus};
use super::{Params, PipelineArgs};
use crate::dag::{Stage, Value, STAGES};

/// Where a run's stages run and what they read.
pub struct RunContext<'a> {
    pub args: &'a PipelineArgs,
    pub engine: &'a Engine,
    pub params: &'a Params,
    pub run_dir: &'a Path,
    pub registry: &'a Path,
}

/// Runs every stage in order, recording each; stops at the first that fails.
pub fn run_stages(cx: &RunContext, records: &mut Vec<StageRecord>) -> Result<()> {
    let total = STAGES.len();
    for (i, stage) in STAGES.iter().enumerate() {
        let step = format!("[{}/{total}] {}", i + 1, stage.name);
        if stage.when_deploy && read_decision(cx.run_dir)? != "deploy" {
            eprintln!("==> {step}: skipped (the gate rejected the model)");
            records.push(StageRecord::new(stage.name, StageStatus::Skipped));
            continue;
        }
        run_stage(cx, stage, &step, records)?;
    }
    Ok(())
}

/// One stage: from the cache when its key is unchanged and its outputs intact, else run.
/// A stage that failed is recorded before its error returns.
fn run_stage(
    cx: &RunContext,
    stage: &Stage,
    step: &str,
    records: &mut Vec<StageRecord>,
) -> Result<()> {
    let dir = cx.run_dir.join(stage.name);
    let (argv, inputs) = arguments(stage, cx.params, cx.run_dir, cx.registry)?;
    let key = cache::cache_key(stage, &cx.engine.identity(stage)?, &argv, &inputs);
    let forced = cx
        .args
        .force
        .as_deref()
        .is_some_and(|f| f == "all" || stage.at_or_after(f));
    let started = Instant::now();
    let mut record = StageRecord {
        key: key.clone(),
        inputs,
        ..StageRecord::new(stage.name, StageStatus::Cached)
    };
    if !forced && cache::cached(stage, &dir, &key, cx.registry, &cx.params.model) {
        eprintln!("==> {step}: cached");
        record.outputs = cache::outputs(stage, &dir)?;
        records.push(record);
        return Ok(());
    }
    eprintln!("==> {step}");
    let _ = std::fs::remove_file(dir.join(CACHE_KEY));
    let ran = execute(cx.engine, stage, cx.run_dir, &argv, &dir);
    record.seconds = started.elapsed().as_secs_f64();
    let rss = match ran {
        Ok(rss) => rss,
        Err(e) => {
            records.push(record.with_status(StageStatus::Failed));
            return Err(e);
        }
    };
    record = record.with_status(StageStatus::Ran);
    record.peak_rss_mb = rss;
    eprintln!(
        "    {} done in {:.1} s{}",
        stage.name,
        record.seconds,
        rss.map_or(String::new(), |mb| format!(", peak RSS {mb:.0} MB"))
    );
    std::fs::create_dir_all(&dir)?;
    mlops_core::write_atomic(&dir.join(CACHE_KEY), key.as_bytes())?;
    record.outputs = cache::outputs(stage, &dir)?;
    records.push(record);
    Ok(())
}

/// The stage's command line, and the files it reads with their checksums.
pub fn arguments(
    stage: &Stage,
    params: &Params,
    run_dir: &Path,
    registry: &Path,
) -> Result<(Vec<String>, Vec<FileSum>)> {
    let mut argv: Vec<String> = stage.subcommand.iter().map(|s| s.to_string()).collect();
    let mut inputs = Vec::new();
    for (flag, value) in stage.inputs {
        match value {
            Value::Stage(name) => {
                let dir = run_dir.join(name);
                argv.extend([flag.to_string(), dir.display().to_string()]);
                inputs.extend(cache::manifest_outputs(&dir)?);
            }
            Value::Sources => {
                for source in &params.sources {
                    argv.extend([flag.to_string(), source.display().to_string()]);
                    inputs.push(FileSum {
                        path: source.display().to_string(),
                        sha256: cache::source_fingerprint(source)?,
                    });
                }
            }
            Value::Registry => argv.extend([flag.to_string(), registry.display().to_string()]),
            Value::ModelName => argv.extend([flag.to_string(), params.model.clone()]),
            Value::DeployedEval | Value::DeployedModel => {
                if let Some(dir) = baseline(run_dir, registry, &params.model)? {
                    argv.extend([flag.to_string(), dir.display().to_string()]);
                    let read = if *value == Value::DeployedEval {
                        METRICS_FILE
                    } else {
                        MODEL_FILE
                    };
                    inputs.push(FileSum::of(&dir.join(read))?);
                }
            }
        }
    }
    // A distilled model depends on its teacher's weights, which the parameters only name.
    if let Some(teacher) = teacher_dir(params, stage.name) {
        inputs.push(FileSum::of(&teacher.join(MODEL_FILE))?);
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

/// The teacher a stage's parameters name (`train.teacher.model`), if any.
fn teacher_dir(params: &Params, stage: &str) -> Option<PathBuf> {
    let teacher = params.table.get(stage)?.get("teacher")?;
    teacher.get("model")?.as_str().map(PathBuf::from)
}

/// The deployed version a new model must not regress from: the registry's default, except
/// when that is the version this very run registered (a re-run then compares with what was
/// deployed before it, as the first run did).
fn baseline(run_dir: &Path, registry: &Path, model: &str) -> Result<Option<PathBuf>> {
    let saved = run_dir.join("eval.baseline");
    let default = registry::read_pointer(registry, model)?.default;
    let read_version = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let own = read_version(&run_dir.join("deploy").join(cache::VERSION_OUT));
    let version = if default.is_some() && default == own {
        read_version(&saved)
    } else {
        let text = default.map(|v| v.to_string()).unwrap_or_default();
        mlops_core::write_atomic(&saved, text.as_bytes())?;
        default
    };
    version
        .map(|v| registry::version_dir(registry, model, v))
        .transpose()
        .map_err(Into::into)
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
    let native = engine.is_native();
    let rss_of = |rss: Option<f64>| if native { rss } else { None };
    let resumable = stage.name == "train"
        && dir.join("checkpoints/state.json").is_file()
        && !dir.join(mlops_core::MANIFEST_FILE).is_file();
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

/// What the eval stage decided (`deploy` or `reject`), from its output parameter file.
fn read_decision(run_dir: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(run_dir.join("eval/decision.out"))
        .context("the eval stage wrote no decision")?
        .trim()
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `serve` profile trains a student of the default run's model, and the
    /// teacher's weights are part of the train stage's key (a retrained teacher retrains it).
    #[test]
    fn the_serve_profile_names_its_teacher_whose_weights_key_the_train_stage() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let args = PipelineArgs {
            config: Some(root.join("pipeline.toml")),
            profile: Some("serve".into()),
            ..Default::default()
        };
        let params = Params::load(&args).unwrap();
        assert_eq!(
            (params.run.as_str(), params.model.as_str()),
            ("serve", "fashion-mnist-slim")
        );
        assert_eq!(
            teacher_dir(&params, "train"),
            Some(PathBuf::from("runs/default/train"))
        );
        assert_eq!(teacher_dir(&params, "embed"), None);

        let tmp = tempfile::tempdir().unwrap();
        let teacher = tmp.path().join("teacher");
        std::fs::create_dir_all(&teacher).unwrap();
        std::fs::write(teacher.join(MODEL_FILE), b"weights").unwrap();
        let mut params = params;
        let train = params
            .table
            .get_mut("train")
            .unwrap()
            .as_table_mut()
            .unwrap();
        let t = train.get_mut("teacher").unwrap().as_table_mut().unwrap();
        t.insert("model".into(), teacher.display().to_string().into());
        let stage = STAGES.iter().find(|s| s.name == "train").unwrap();
        let run_dir = tmp.path().join("run");
        // Finished (empty) upstream stages: their manifests are all the key reads of them.
        for upstream in stage.upstream() {
            let out = mlops_core::OutputDir::create(&run_dir.join(upstream)).unwrap();
            out.commit(mlops_core::Manifest::begin(upstream, "test", &()))
                .unwrap();
        }
        let (_, keyed) = arguments(stage, &params, &run_dir, tmp.path()).unwrap();
        let weights = mlops_core::sha256_bytes(b"weights");
        assert!(keyed.iter().any(|f| f.sha256 == weights), "{keyed:?}");
    }
}
