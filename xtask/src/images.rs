//! `cargo xtask images`: one container image per stage, `<prefix>/mlops-<stage>:<tag>`, built
//! from the repository's `Dockerfile` with podman (or docker) on a build context of prebuilt
//! bundles.
//!
//! The `Dockerfile` is the only description of the images: its runtime targets copy
//! `bundles/<stage>/` (what `cargo xtask bundle` lays out) from the build context, so the same
//! file serves `cargo xtask images` here and the image job on GitHub. The libtorch libraries
//! that `train`, `embed` and `deploy` load go into one layer of their own (`bundles/torch/`),
//! built once and shared by the three images.
//!
//! No container registry is reachable from our machines, so the `debian:bookworm-slim` base is
//! made locally: `debootstrap --variant=minbase bookworm` from the Debian mirror apt already
//! uses, imported as `localhost/debian:bookworm-slim` and cached as a tarball.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::dag::{Stage, STAGES};
use crate::{bundle, cargo, release_dir, root, run_cmd, setup};

/// The image repository of every stage unless `--prefix` says otherwise.
pub const LOCAL_PREFIX: &str = "localhost";
/// The base image the local engine builds on (made by debootstrap, never pulled).
pub const LOCAL_BASE: &str = "localhost/debian:bookworm-slim";
/// The Debian release of the base: the one the binaries are built on (same glibc).
const SUITE: &str = "bookworm";
/// The context's layer of libraries shared by the stages that link libtorch.
const SHARED: &str = "torch";

#[derive(clap::Args, Clone)]
pub struct ImagesArgs {
    /// Image tag [default: the git revision, `-dirty` when the work tree has changes].
    #[arg(long)]
    pub tag: Option<String>,
    /// Image repository prefix: images are PREFIX/mlops-STAGE:TAG.
    #[arg(long, default_value = LOCAL_PREFIX)]
    pub prefix: String,
    /// Stages to build [default: all seven].
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    pub stages: Vec<String>,
    /// The container engine that builds (and pushes) the images.
    #[arg(long, value_enum, default_value_t)]
    pub engine: Engine,
    /// Only lay out the build context (bundles) in this directory; build nothing.
    #[arg(long)]
    pub context_only: Option<PathBuf>,
    /// Push each image after building it.
    #[arg(long)]
    pub push: bool,
    /// Skip set-up and use the stage binaries already built.
    #[arg(long)]
    pub no_build: bool,
}

/// A container engine with a Docker-compatible command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Engine {
    #[default]
    Podman,
    Docker,
}

impl Engine {
    /// The engine's command.
    pub fn program(self) -> &'static str {
        match self {
            Engine::Podman => "podman",
            Engine::Docker => "docker",
        }
    }
}

impl Default for ImagesArgs {
    fn default() -> Self {
        ImagesArgs {
            tag: None,
            prefix: LOCAL_PREFIX.into(),
            stages: Vec::new(),
            engine: Engine::Podman,
            context_only: None,
            push: false,
            no_build: false,
        }
    }
}

/// One built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub stage: &'static str,
    pub reference: String,
    /// The engine's image id (`sha256:...`): what a run pins and its cache key holds.
    pub id: String,
    pub bytes: u64,
}

impl Image {
    /// The tag part of the reference.
    pub fn tag(&self) -> &str {
        self.reference.rsplit_once(':').map_or("", |(_, t)| t)
    }
}

/// What [`local`] builds before it looks the images up.
pub enum Build {
    /// Nothing: the images of the tag `cargo xtask images` would give must exist.
    Nothing,
    /// The images, from the stage binaries already built.
    Images,
    /// The stage binaries (after set-up), then the images.
    BinariesAndImages,
}

/// The local images a run uses: their tag, and each stage's reference and image id.
pub struct Local {
    pub tag: String,
    pub images: BTreeMap<&'static str, (String, String)>,
}

/// The local image of every stage at `tag` or, without one, as `build` makes them; an error
/// names an image podman does not have.
pub fn local(tag: Option<&str>, build: Build) -> Result<Local> {
    let tag = match (tag, build) {
        (Some(tag), _) => tag.to_string(),
        (None, Build::Nothing) => default_tag(),
        (None, build) => {
            let built = self::build(&ImagesArgs {
                no_build: matches!(build, Build::Images),
                ..Default::default()
            })?;
            built
                .first()
                .map(|i| i.tag().to_string())
                .context("no image built")?
        }
    };
    let mut images = BTreeMap::new();
    for stage in &STAGES {
        let reference = reference(LOCAL_PREFIX, stage, &tag);
        let id = image_id("podman", &reference).with_context(|| {
            format!("podman has no image {reference}: run `cargo xtask images --tag {tag}`")
        })?;
        images.insert(stage.name, (reference, id));
    }
    Ok(Local { tag, images })
}

/// `PREFIX/mlops-STAGE:TAG`, the one naming scheme of the images, the Kubeflow pipeline and the
/// Kubernetes manifests.
pub fn reference(prefix: &str, stage: &Stage, tag: &str) -> String {
    format!("{prefix}/{}:{tag}", stage.binary)
}

pub fn run(args: &ImagesArgs) -> Result<()> {
    let images = build(args)?;
    if args.context_only.is_some() {
        return Ok(());
    }
    println!("{:<40} {:>9}  id", "image", "size");
    for i in &images {
        println!(
            "{:<40} {:>6} MB  {}",
            i.reference,
            i.bytes / 1_000_000,
            &i.id[..i.id.len().min(19)]
        );
    }
    Ok(())
}

/// Builds (or, with `context_only`, lays out) the images `args` asks for and records them in
/// `target/images/images.json`.
pub fn build(args: &ImagesArgs) -> Result<Vec<Image>> {
    let stages = selected(&args.stages)?;
    if !args.no_build {
        setup::run(&setup::SetupArgs {
            skip_venv: true,
            ..Default::default()
        })?;
        let mut build = cargo();
        build.args(["build", "--release"]);
        for s in &stages {
            build.args(["-p", s.binary]);
        }
        run_cmd(&mut build, "cargo build")?;
    }
    let context = args
        .context_only
        .clone()
        .unwrap_or_else(|| release_dir().join("../images/context"));
    lay_out_context(&stages, &context)?;
    if args.context_only.is_some() {
        eprintln!("build context in {}", context.display());
        return Ok(Vec::new());
    }
    let tag = match &args.tag {
        Some(t) => t.clone(),
        None => default_tag(),
    };
    let engine = args.engine.program();
    // Only podman builds on the local debootstrap base; docker pulls the Dockerfile's.
    let base = if args.engine == Engine::Podman {
        ensure_base()?;
        Some(LOCAL_BASE)
    } else {
        None
    };
    let mut images = Vec::new();
    for stage in stages {
        let reference = reference(&args.prefix, stage, &tag);
        eprintln!("==> {reference}");
        let mut cmd = Command::new(engine);
        cmd.arg("build");
        if let Some(base) = base {
            cmd.args(["--pull=never", "--build-arg", &format!("BASE={base}")]);
        }
        cmd.args(["--target", stage.name, "--tag", &reference, "--file"])
            .arg(root().join("Dockerfile"))
            .arg(&context);
        run_cmd(&mut cmd, &format!("{engine} build {reference}"))?;
        if args.push {
            run_cmd(
                Command::new(engine).args(["push", &reference]),
                &format!("{engine} push {reference}"),
            )?;
        }
        let (id, bytes) = inspect(engine, &reference)?;
        images.push(Image {
            stage: stage.name,
            reference,
            id,
            bytes,
        });
    }
    record(&images)?;
    Ok(images)
}

fn selected(names: &[String]) -> Result<Vec<&'static Stage>> {
    if names.is_empty() {
        return Ok(STAGES.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            crate::dag::stage(n).with_context(|| {
                format!(
                    "unknown stage {n:?} (one of {})",
                    STAGES.map(|s| s.name).join(", ")
                )
            })
        })
        .collect()
}

/// The git revision (12 hex digits), `-dirty` when tracked files differ from it.
pub fn default_tag() -> String {
    let rev = crate::git_revision().unwrap_or_else(|| "dev".into());
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--untracked-files=no"])
        .current_dir(root())
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    format!(
        "{}{}",
        &rev[..rev.len().min(12)],
        if dirty { "-dirty" } else { "" }
    )
}

/// `context/bundles/<stage>/` for each stage, with the libraries that come from libtorch moved
/// to `context/bundles/torch/` (one layer shared by the images that link it).
pub fn lay_out_context(stages: &[&Stage], context: &Path) -> Result<()> {
    let bundles = context.join("bundles");
    if bundles.exists() {
        std::fs::remove_dir_all(&bundles)?;
    }
    let libtorch = std::fs::canonicalize(root().join(".libtorch/lib"))
        .context("libtorch is not set up (cargo xtask setup)")?;
    let shared = bundles.join(SHARED).join("lib");
    std::fs::create_dir_all(&shared)?;
    for stage in stages {
        bundle::bundle_sharing(
            &release_dir().join(stage.binary),
            &bundles.join(stage.name),
            Some(&bundle::Shared {
                from: &libtorch,
                to: &shared,
            }),
        )?;
    }
    Ok(())
}

/// Makes `localhost/debian:bookworm-slim` if podman does not have it: from the cached tarball,
/// else by debootstrap from the Debian mirror apt uses (about 30 s), then cached.
pub fn ensure_base() -> Result<()> {
    let exists = Command::new("podman")
        .args(["image", "exists", LOCAL_BASE])
        .status()
        .context("cannot run podman (cargo xtask setup installs it)")?;
    if exists.success() {
        return Ok(());
    }
    let cache = setup::cache_dir()?;
    let tarball = cache.join(format!("debian-{SUITE}-minbase.tar"));
    if !tarball.is_file() {
        let mirror = apt_mirror()?;
        eprintln!("images: making the {SUITE} base with debootstrap from {mirror} (once)");
        let rootfs = cache.join(format!("debian-{SUITE}-rootfs.partial"));
        if rootfs.exists() {
            std::fs::remove_dir_all(&rootfs)?;
        }
        run_cmd(
            Command::new("debootstrap")
                .args(["--variant=minbase", SUITE])
                .arg(&rootfs)
                .arg(&mirror),
            "debootstrap",
        )?;
        slim(&rootfs)?;
        let partial = tarball.with_extension("tar.partial");
        run_cmd(
            Command::new("tar")
                .arg("-C")
                .arg(&rootfs)
                .args(["--numeric-owner", "-cf"])
                .arg(&partial)
                .arg("."),
            "tar",
        )?;
        std::fs::rename(&partial, &tarball)?;
        std::fs::remove_dir_all(&rootfs)?;
    }
    run_cmd(
        Command::new("podman")
            .args(["import", "--change", "CMD [\"/bin/bash\"]"])
            .arg(&tarball)
            .arg(LOCAL_BASE),
        "podman import",
    )
}

/// Removes what Debian's own `-slim` images leave out: apt's package lists and caches, and
/// documentation, manual pages and translations (200 MB of minbase down to about 100).
fn slim(rootfs: &Path) -> Result<()> {
    for dir in [
        "var/lib/apt/lists",
        "var/cache/apt",
        "var/cache/debconf",
        "var/log",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "usr/share/locale",
    ] {
        let d = rootfs.join(dir);
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// The Debian mirror apt uses (deb822 `.sources` or one-line `sources.list` entries).
fn apt_mirror() -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Some(m) = mirror_in(&text, file.extension().is_some_and(|e| e == "sources")) {
            return Ok(m);
        }
    }
    bail!("no Debian {SUITE} mirror in /etc/apt/sources.list or /etc/apt/sources.list.d")
}

/// The first URI serving the `bookworm` suite (not `-security` or `-updates`) in a sources
/// file.
fn mirror_in(text: &str, deb822: bool) -> Option<String> {
    let is_debian = |uri: &str| !uri.contains("security");
    if deb822 {
        for paragraph in text.split("\n\n") {
            let field = |name: &str| {
                paragraph
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
                continue;
            };
            if suites.split_whitespace().any(|s| s == SUITE) {
                if let Some(uri) = uris.split_whitespace().find(|u| is_debian(u)) {
                    return Some(uri.to_string());
                }
            }
        }
        return None;
    }
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace().filter(|w| !w.starts_with('['));
        (words.next()? == "deb").then_some(())?;
        let uri = words.next()?;
        (words.next()? == SUITE && is_debian(uri)).then(|| uri.to_string())
    })
}

/// The image's id and size.
fn inspect(engine: &str, reference: &str) -> Result<(String, u64)> {
    let out = Command::new(engine)
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Id}} {{.Size}}",
            reference,
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "{engine} image inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let id = parts.next().context("no image id")?;
    let bytes = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let id = if id.starts_with("sha256:") {
        id.to_string()
    } else {
        format!("sha256:{id}")
    };
    Ok((id, bytes))
}

/// The id of an image the engine has, or `None`.
pub fn image_id(engine: &str, reference: &str) -> Option<String> {
    inspect(engine, reference).ok().map(|(id, _)| id)
}

/// `target/images/images.json`: what the last build made, for people and for the runners.
fn record(images: &[Image]) -> Result<()> {
    let path = release_dir().join("../images/images.json");
    let mut table: BTreeMap<String, Recorded> = crate::read_json(&path).unwrap_or_default();
    for i in images {
        table.insert(
            i.stage.to_string(),
            Recorded {
                bytes: i.bytes,
                id: i.id.clone(),
                reference: i.reference.clone(),
            },
        );
    }
    crate::write_json(&path, &table)
}

/// One stage's entry in `images.json` (fields in the order the file has always had).
#[derive(serde::Serialize, serde::Deserialize)]
struct Recorded {
    bytes: u64,
    id: String,
    reference: String,
}

/// Writes podman's engine settings where this machine needs them: a sandbox without
/// `CAP_SYS_RESOURCE` (container limits may only be lowered) or a cgroup v1 / hybrid layout
/// (crun fails there) gets runc, the cgroupfs manager and lowered default ulimits. A machine
/// that has neither problem, or a configuration already there, is left alone.
pub fn configure_podman() -> Result<()> {
    const PATH: &str = "/etc/containers/containers.conf";
    if !Path::new("/usr/bin/podman").exists() || Path::new(PATH).exists() {
        return Ok(());
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    const CAP_SYS_RESOURCE: u64 = 1 << 24;
    let unified_only = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if caps & CAP_SYS_RESOURCE != 0 && unified_only {
        return Ok(());
    }
    eprintln!("setup: writing {PATH} (runc, cgroupfs, lowered ulimits) for this sandbox");
    let text = "# Written by `cargo xtask setup`: this machine lacks CAP_SYS_RESOURCE or a pure cgroup v2\n\
                # layout, where crun and podman's default ulimits fail.\n\
                [containers]\n\
                default_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n\
                [engine]\n\
                runtime = \"runc\"\n\
                cgroup_manager = \"cgroupfs\"\n";
    std::fs::create_dir_all("/etc/containers")?;
    Ok(mlops_core::write_atomic(Path::new(PATH), text.as_bytes())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_are_found_in_both_source_formats() {
        let deb822 = "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822, true).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let security_only =
            "Types: deb\nURIs: http://x/debian-security\nSuites: bookworm-security\n";
        assert_eq!(mirror_in(security_only, true), None);
        let list = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n";
        assert_eq!(
            mirror_in(list, false).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(mirror_in("deb http://x/debian trixie main\n", false), None);
    }

    #[test]
    fn references_follow_one_scheme() {
        let train = crate::dag::stage("train").unwrap();
        assert_eq!(
            reference("localhost", train, "abc"),
            "localhost/mlops-train:abc"
        );
    }
}
