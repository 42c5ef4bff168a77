//! `cargo xtask bundle STAGE --out DIR`: what a stage's container image copies.
//!
//! `DIR/bin/<binary>` and, in `DIR/lib/`, every shared library the binary loads (its `ldd`
//! closure) except glibc's, which every Debian image has. The binary's and every library's
//! search path is rewritten to `$ORIGIN/../lib` / `$ORIGIN` (patchelf), so the bundle runs
//! wherever it is copied, with no `LD_LIBRARY_PATH` and no trace of the build machine's paths.
//! The `Dockerfile`'s stage targets copy exactly this onto `debian:bookworm-slim`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::dag;
use crate::{cargo, release_dir, run_cmd};

#[derive(clap::Args)]
pub struct BundleArgs {
    /// The stage (data, validate, train, embed, index, eval, deploy).
    stage: String,
    /// Output directory (replaced).
    #[arg(long)]
    out: PathBuf,
    /// Use the binary already built in the target directory.
    #[arg(long)]
    no_build: bool,
}

/// Libraries every glibc system provides; bundling them would break on another glibc.
const SYSTEM: [&str; 9] = [
    "linux-vdso.so",
    "ld-linux-x86-64.so",
    "libc.so",
    "libm.so",
    "libdl.so",
    "libpthread.so",
    "librt.so",
    "libresolv.so",
    "libutil.so",
];

pub fn is_system(name: &str) -> bool {
    SYSTEM.iter().any(|s| name.starts_with(s))
}

pub fn run(args: &BundleArgs) -> Result<()> {
    let stage = dag::stage(&args.stage).with_context(|| {
        format!(
            "unknown stage {:?} (one of {})",
            args.stage,
            dag::STAGES.map(|s| s.name).join(", ")
        )
    })?;
    if !args.no_build {
        run_cmd(
            cargo().args([
                "build",
                "--release",
                "-p",
                stage.binary,
                "--bin",
                stage.binary,
            ]),
            "cargo build",
        )?;
    }
    let libs = bundle(&release_dir().join(stage.binary), &args.out)?;
    eprintln!(
        "bundled {} with {libs} libraries into {}",
        stage.binary,
        args.out.display()
    );
    Ok(())
}

/// The shared libraries `ldd` resolves for `binary`: (soname, path).
pub fn ldd(binary: &Path) -> Result<Vec<(String, PathBuf)>> {
    let out = Command::new("ldd")
        .arg(binary)
        .env_remove("LD_LIBRARY_PATH")
        .output()?;
    ensure!(out.status.success(), "ldd {} failed", binary.display());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
        if let Some((name, rest)) = line.split_once(" => ") {
            let path = rest.split(" (").next().unwrap_or("").trim();
            if !path.is_empty() {
                libs.push((name.trim().to_string(), PathBuf::from(path)));
            }
        }
    }
    Ok(libs)
}

/// Lays out `binary` and its non-system libraries in `out`; returns how many libraries it
/// copied.
pub fn bundle(binary: &Path, out: &Path) -> Result<usize> {
    bundle_sharing(binary, out, None)
}

/// Libraries that several bundles load from one prefix (libtorch's), laid out once in a
/// directory of their own instead of in each bundle's `lib/`.
pub struct Shared<'a> {
    /// The canonical directory the libraries are loaded from.
    pub from: &'a Path,
    /// Where their one copy goes.
    pub to: &'a Path,
}

/// [`bundle`], with the libraries under `shared.from` copied once to `shared.to` (skipped when
/// an earlier bundle put them there) instead of into `out/lib`.
pub fn bundle_sharing(binary: &Path, out: &Path, shared: Option<&Shared>) -> Result<usize> {
    ensure!(binary.is_file(), "{} is not built", binary.display());
    if out.exists() {
        std::fs::remove_dir_all(out)?;
    }
    std::fs::create_dir_all(out.join("bin"))?;
    std::fs::create_dir_all(out.join("lib"))?;
    let name = binary.file_name().context("binary without a name")?;
    let target = out.join("bin").join(name);
    std::fs::copy(binary, &target)?;
    patchelf(&target, "$ORIGIN/../lib")?;
    let mut count = 0;
    for (soname, path) in ldd(binary)? {
        if is_system(&soname) {
            continue;
        }
        let dir = match shared {
            Some(s) if std::fs::canonicalize(&path).is_ok_and(|p| p.starts_with(s.from)) => {
                s.to.to_path_buf()
            }
            _ => out.join("lib"),
        };
        let dest = dir.join(&soname);
        if dest.exists() {
            continue;
        }
        // fs::copy follows symlinks (Debian's alternatives for libblas.so.3, for instance).
        std::fs::copy(&path, &dest).with_context(|| format!("cannot copy {}", path.display()))?;
        let mut perms = std::fs::metadata(&dest)?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
        std::fs::set_permissions(&dest, perms)?;
        patchelf(&dest, "$ORIGIN")?;
        count += 1;
    }
    Ok(count)
}

fn patchelf(file: &Path, rpath: &str) -> Result<()> {
    run_cmd(
        Command::new("patchelf")
            .args(["--set-rpath", rpath])
            .arg(file),
        "patchelf (cargo xtask setup installs it)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stage binary runs from its bundle alone: loaded with no `LD_LIBRARY_PATH`, every
    /// library resolved inside the bundle or to glibc, no path of the build machine left.
    #[test]
    fn each_stage_runs_from_its_bundle_alone() {
        let missing: Vec<&str> = dag::STAGES
            .iter()
            .map(|s| s.binary)
            .filter(|b| !release_dir().join(b).is_file())
            .collect();
        let built = missing.is_empty().then_some(());
        let how = format!("{missing:?} not built; cargo test --release --workspace builds them");
        if mlops_core::testing::prerequisite("release stage binaries", built, &how).is_none() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for stage in &dag::STAGES {
            let out = tmp.path().join(stage.name);
            bundle(&release_dir().join(stage.binary), &out).unwrap();
            let bin = out.join("bin").join(stage.binary);
            let help = Command::new(&bin)
                .arg("--help")
                .env_clear()
                .output()
                .unwrap();
            assert!(
                help.status.success(),
                "{}: {}",
                stage.binary,
                String::from_utf8_lossy(&help.stderr)
            );
            let lib = out.join("lib");
            for (soname, path) in ldd(&bin).unwrap() {
                assert!(
                    is_system(&soname)
                        || path.starts_with(out.join("bin/../lib"))
                        || path.starts_with(&lib),
                    "{}: {soname} resolves to {}, outside the bundle",
                    stage.binary,
                    path.display()
                );
            }
            let dynamic = Command::new("readelf")
                .arg("-d")
                .arg(&bin)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&dynamic.stdout);
            assert!(
                text.contains("[$ORIGIN/../lib]"),
                "{}: {text}",
                stage.binary
            );
            assert!(
                !text.contains(".libtorch"),
                "{}: build path left: {text}",
                stage.binary
            );
            // A real run too: a clean error for a missing input, from the bundle's libraries.
            if stage.name == "validate" {
                let run = Command::new(&bin)
                    .args(["--data", "/nonexistent", "--out"])
                    .arg(tmp.path().join("v-out"))
                    .env_clear()
                    .output()
                    .unwrap();
                assert_eq!(run.status.code(), Some(1));
            }
            std::fs::remove_dir_all(&out).unwrap();
        }
    }
}

#[cfg(test)]
mod dockerfile_tests {
    use crate::{dag, root};

    #[test]
    fn dockerfile_has_one_target_per_stage_and_passes_hadolint() {
        let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
        for stage in &dag::STAGES {
            // On the plain runtime, or on the layer of libtorch libraries (`cargo xtask images`
            // puts them in bundles/torch/); the container tests run every image.
            let target = ["runtime", "torch"]
                .iter()
                .map(|parent| format!("FROM {parent} AS {}\n", stage.name))
                .find_map(|line| text.find(&line).map(|at| &text[at..]))
                .unwrap_or_else(|| panic!("no target for {}", stage.name));
            let target = &target[..target[1..].find("\nFROM ").map_or(target.len(), |e| e + 1)];
            assert!(
                target.contains(&format!("COPY bundles/{}/ /opt/mlops/\n", stage.name)),
                "{target}"
            );
            assert!(
                target.contains(&format!("ENTRYPOINT [\"/opt/mlops/bin/{}\"]", stage.binary)),
                "{target}"
            );
        }
        assert!(text.contains("FROM runtime AS torch\nCOPY bundles/torch/ /opt/mlops/\n"));
        assert!(
            text.contains("USER 10001\n"),
            "the images run as a non-root user"
        );
        let Some(python) = mlops_core::testing::python() else {
            return;
        };
        let hadolint = python.with_file_name("hadolint");
        let out = std::process::Command::new(hadolint)
            .arg(root().join("Dockerfile"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hadolint:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
