//! How a stage's process is started: its native binary, or its container image under podman.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{EngineKind, Params, PipelineArgs};
use crate::dag::Stage;
use crate::release_dir;

pub enum Engine {
    Native,
    /// Image reference and id per stage; bind mounts shared by every stage.
    Podman {
        images: BTreeMap<&'static str, (String, String)>,
        mounts: Vec<(PathBuf, bool)>,
    },
}

impl Engine {
    pub fn prepare(
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

    pub fn is_native(&self) -> bool {
        matches!(self, Engine::Native)
    }

    /// What identifies the code a stage runs: the binary's sha256, or the image id.
    pub fn identity(&self, stage: &Stage) -> Result<String> {
        match self {
            Engine::Native => {
                let binary = release_dir().join(stage.binary);
                Ok(mlops_core::sha256_file(&binary)?)
            }
            Engine::Podman { images, .. } => Ok(images[stage.name].1.clone()),
        }
    }

    /// The container's name: one per run directory and stage, so a run started again after
    /// its runner was killed (whose podman client then could not stop the container) finds
    /// the orphan and removes it before the stage runs again.
    fn container_name(stage: &Stage, run_dir: &Path) -> String {
        let digest = mlops_core::sha256_bytes(run_dir.as_os_str().as_encoded_bytes());
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

    pub fn command(&self, stage: &Stage, run_dir: &Path) -> Result<Command> {
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
