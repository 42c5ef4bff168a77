//! `cargo xtask kfp --run-local`: the committed `kubeflow/pipeline.yaml`, executed by
//! Kubeflow's own local runner (`kfp.local.DockerRunner`, through `kubeflow/run_local.py`)
//! against podman's Docker-compatible API.
//!
//! The YAML is the one a cluster gets; only what a cluster would supply is supplied here: the
//! images (pinned to the ones `cargo xtask images` built, `localhost/mlops-<stage>:<tag>`), the
//! artifacts PVC (a host directory bind-mounted at `/artifacts`, the data set copied to
//! `/artifacts/datasets/<name>`) and the run's parameters (`--profile` and `--set` become the
//! stages' `<stage>_settings` parameters).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::dag::STAGES;
use crate::images;
use crate::pipeline::{Params, PipelineArgs};
use crate::{kfp, root, setup};

#[derive(clap::Args, Default)]
pub struct LocalArgs {
    /// With --run-local: a named parameter set of pipeline.toml (e.g. quick).
    #[arg(long)]
    profile: Option<String>,
    /// With --run-local: override a parameter, SECTION.KEY=VALUE; repeatable.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// With --run-local: the data source [default: pipeline.toml's first source].
    #[arg(long)]
    source: Option<PathBuf>,
    /// With --run-local: working directory (artifacts volume, kfp's pipeline root)
    /// [default: runs/kfp-local].
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// With --run-local: use the binaries and images already built (`--image-tag`, or the
    /// tag `cargo xtask images` would give them).
    #[arg(long)]
    no_build: bool,
}

/// What the local run reported.
pub struct Outcome {
    pub job_uuid: String,
    pub decision: Option<String>,
    pub accuracy: Option<String>,
    pub version: Option<String>,
    pub seconds: f64,
}

pub fn run(args: &LocalArgs, image_tag: Option<&str>) -> Result<()> {
    let started = Instant::now();
    let outcome = execute(args, image_tag)?;
    println!(
        "kubeflow local run {} finished in {:.1} s ({:.1} s with set-up)",
        outcome.job_uuid,
        outcome.seconds,
        started.elapsed().as_secs_f64()
    );
    println!(
        "  eval: decision {}, accuracy {}",
        outcome.decision.as_deref().unwrap_or("none"),
        outcome.accuracy.as_deref().unwrap_or("none")
    );
    match &outcome.version {
        Some(v) => println!("  deploy: registered version {v} (default)"),
        None => println!("  deploy: skipped (the gate rejected the model)"),
    }
    Ok(())
}

/// Runs the committed pipeline; fails with the failing step's message when a step fails.
pub fn execute(args: &LocalArgs, image_tag: Option<&str>) -> Result<Outcome> {
    let env = setup::run(&setup::SetupArgs::default())?;
    let build = if args.no_build {
        images::Build::Nothing
    } else {
        images::Build::BinariesAndImages
    };
    let local = images::local(image_tag, build)?;
    let params = Params::load(&PipelineArgs {
        profile: args.profile.clone(),
        set: args.set.clone(),
        source: args.source.iter().cloned().collect(),
        ..Default::default()
    })?;
    let [source] = params.sources.as_slice() else {
        bail!(
            "the Kubeflow pipeline reads one source; got {:?}",
            params.sources
        );
    };
    let workdir = std::path::absolute(
        args.workdir
            .clone()
            .unwrap_or_else(|| root().join("runs/kfp-local")),
    )?;
    let artifacts = workdir.join("artifacts");
    let dataset = stage_dataset(source, &artifacts)?;
    let service = PodmanService::start(&workdir.join("podman.sock"))?;
    let summary_path = workdir.join("summary.json");
    let _ = std::fs::remove_file(&summary_path);
    let mut cmd = Command::new(&env.python);
    cmd.arg(root().join("kubeflow/run_local.py"))
        .arg(root().join("kubeflow/pipeline.yaml"))
        .arg("--mount")
        .arg(&artifacts)
        .arg("--pipeline-root")
        .arg(workdir.join("pipeline-root"))
        .arg("--summary")
        .arg(&summary_path)
        .env("DOCKER_HOST", service.url());
    for stage in &STAGES {
        cmd.arg("--image")
            .arg(format!("{}={}", stage.name, local.images[stage.name].0));
        cmd.arg("--param").arg(format!(
            "{}={}",
            kfp::settings_param(stage),
            kfp::settings_text(&params, stage)?
        ));
    }
    cmd.arg("--param")
        .arg(format!("source={}/datasets/{dataset}", kfp::MOUNT))
        .arg("--param")
        .arg(format!("model={}", params.model));
    eprintln!(
        "==> kubeflow/pipeline.yaml on kfp.local.DockerRunner (podman), images localhost/mlops-*:{}, artifacts {}",
        local.tag,
        artifacts.display()
    );
    let status = cmd.status().context("cannot start kubeflow/run_local.py")?;
    drop(service);
    let summary: Option<Summary> = crate::read_json(&summary_path).ok();
    if !status.success() {
        let failed = summary.map(|s| s.failures()).unwrap_or_default();
        if failed.is_empty() {
            bail!("the kubeflow local run failed ({status})");
        }
        bail!("the kubeflow local run failed: {}", failed.join("; "));
    }
    Ok(summary
        .context("the local runner wrote no summary")?
        .outcome())
}

/// Copies the data set onto the artifacts volume (`datasets/<name>`, replacing an older copy)
/// and returns its name there.
fn stage_dataset(source: &Path, artifacts: &Path) -> Result<String> {
    let name = source
        .file_name()
        .map_or("data".into(), |n| n.to_string_lossy().into_owned());
    let dataset = artifacts.join("datasets").join(&name);
    if dataset.exists() {
        std::fs::remove_dir_all(&dataset)?;
    }
    copy_tree(source, &dataset)
        .with_context(|| format!("cannot copy {} to the artifacts volume", source.display()))?;
    // The steps run as their images' user (10001), as on a cluster; the volume stands in for
    // a PVC they may write.
    for dir in [artifacts, &artifacts.join("datasets")] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    }
    Ok(name)
}

/// The summary `kubeflow/run_local.py --summary` writes (the parts read here).
#[derive(Deserialize)]
struct Summary {
    job_uuid: Option<String>,
    #[serde(default)]
    seconds: f64,
    #[serde(default)]
    tasks: Vec<Task>,
}

/// One container task of the run.
#[derive(Deserialize)]
struct Task {
    /// The task's path in the DAG (`gate-deploy/condition-deploy/deploy`).
    path: String,
    state: TaskState,
    #[serde(default)]
    stderr_tail: String,
    /// Output parameters by name (strings for every parameter the pipeline declares).
    #[serde(default)]
    outputs: BTreeMap<String, serde_json::Value>,
}

#[derive(Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
enum TaskState {
    Running,
    Succeeded,
    Failed,
    /// A state a later runner may add.
    #[serde(other)]
    Other,
}

impl Summary {
    /// One line per failed task: its path and the last line it wrote to stderr.
    fn failures(&self) -> Vec<String> {
        self.tasks
            .iter()
            .filter(|t| t.state == TaskState::Failed)
            .map(|t| {
                let last = t.stderr_tail.lines().rev().find(|l| !l.trim().is_empty());
                format!(
                    "step {} failed{}",
                    t.path,
                    last.map_or(String::new(), |l| format!(": {}", l.trim()))
                )
            })
            .collect()
    }

    /// The output parameter `key` of the task named `task` (the last part of its path).
    fn output(&self, task: &str, key: &str) -> Option<String> {
        self.tasks
            .iter()
            .find(|t| t.path.rsplit('/').next() == Some(task))
            .and_then(|t| t.outputs.get(key)?.as_str().map(str::to_string))
    }

    fn outcome(&self) -> Outcome {
        Outcome {
            job_uuid: self.job_uuid.clone().unwrap_or_default(),
            decision: self.output("eval", "decision"),
            accuracy: self.output("eval", "accuracy"),
            version: self.output("deploy", "version"),
            seconds: self.seconds,
        }
    }
}

/// Copies a file or directory tree (the data set onto the artifacts volume).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(from).with_context(|| format!("cannot read {}", from.display()))?;
    if meta.is_file() {
        std::fs::create_dir_all(to.parent().context("no parent")?)?;
        std::fs::copy(from, to)?;
        return Ok(());
    }
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}

/// `podman system service` on a socket of our own, stopped when dropped.
struct PodmanService {
    child: Child,
    socket: PathBuf,
}

impl PodmanService {
    fn start(socket: &Path) -> Result<PodmanService> {
        let _ = std::fs::remove_file(socket);
        let child = Command::new("podman")
            .args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start podman system service (cargo xtask setup installs podman)")?;
        let service = PodmanService {
            child,
            socket: socket.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            ensure!(
                Instant::now() < deadline,
                "podman system service made no socket at {} in 20 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(service)
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

impl Drop for PodmanService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_failed_steps_and_outputs() {
        let summary: Summary = serde_json::from_str(
            r#"{
                "pipeline": "mlops-rs", "job_uuid": "j1", "seconds": 12.5, "status": "FAILED",
                "tasks": [
                    {"path": "eval", "state": "SUCCEEDED", "seconds": 1.0, "exit_code": 0,
                     "outputs": {"decision": "deploy", "accuracy": "0.91"}, "stderr_tail": "", "error": ""},
                    {"path": "gate-deploy/condition-deploy/deploy", "state": "FAILED", "seconds": 1.0,
                     "exit_code": 1, "outputs": {}, "stderr_tail": "warn\nerror: no registry\n\n", "error": ""},
                    {"path": "later", "state": "SKIPPED", "outputs": {}}
                ]
            }"#,
        )
        .unwrap();
        assert_eq!(
            summary.failures(),
            ["step gate-deploy/condition-deploy/deploy failed: error: no registry"]
        );
        let outcome = summary.outcome();
        assert_eq!(outcome.job_uuid, "j1");
        assert_eq!(outcome.decision.as_deref(), Some("deploy"));
        assert_eq!(outcome.accuracy.as_deref(), Some("0.91"));
        assert_eq!(outcome.version, None);
        assert_eq!(outcome.seconds, 12.5);
    }
}
