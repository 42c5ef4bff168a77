//! What a library user gets: the facade's dependency tree carries no command-line crates, the
//! torch-free features build without libtorch, and every library crate packages for crates.io.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

fn cargo(args: &[&str]) -> Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO"))
        .args(args)
        .current_dir(&root)
        .output()
        .with_context(|| format!("running cargo {args:?}"))?;
    ensure!(
        out.status.success(),
        "cargo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The names of the crates in `mlops`'s normal dependency tree with these cargo arguments.
fn tree(features: &[&str]) -> Result<Vec<String>> {
    let mut args = vec![
        "tree", "-e", "normal", "-p", "mlops", "--prefix", "none", "--format", "{p}",
    ];
    args.extend(features);
    let text = cargo(&args)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

#[test]
fn the_facade_brings_no_cli_crates() -> Result<()> {
    let crates = tree(&[])?;
    ensure!(
        crates.iter().any(|c| c == "mlops-deploy"),
        "default features lost a stage: {crates:?}"
    );
    for cli in ["clap", "indicatif", "tracing-subscriber"] {
        ensure!(
            !crates.iter().any(|c| c == cli),
            "{cli} is in the facade's default tree"
        );
    }
    Ok(())
}

#[test]
fn the_torch_free_stages_need_no_libtorch() -> Result<()> {
    let crates = tree(&[
        "--no-default-features",
        "--features",
        "data,validate,index,eval",
    ])?;
    ensure!(crates.iter().any(|c| c == "mlops-eval"), "{crates:?}");
    for torch in ["tch", "torch-sys", "mlops-torch"] {
        ensure!(
            !crates.iter().any(|c| c == torch),
            "{torch} is in the torch-free tree"
        );
    }
    Ok(())
}

#[test]
fn every_library_crate_packages() -> Result<()> {
    let target = tempfile::tempdir()?;
    let target_dir = target.path().to_str().context("utf-8 temp dir")?;
    let crates = [
        "mlops",
        "mlops-core",
        "mlops-data",
        "mlops-validate",
        "mlops-torch-build",
        "mlops-torch",
        "mlops-train",
        "mlops-embed",
        "mlops-index",
        "mlops-eval",
        "mlops-deploy",
    ];
    // Packaged together so that each finds its siblings at their (unpublished) versions;
    // offline, as the workspace's dependencies are already in cargo's cache.
    let mut args = vec![
        "package",
        "--no-verify",
        "--allow-dirty",
        "--offline",
        "--target-dir",
        target_dir,
    ];
    for c in crates {
        args.extend(["-p", c]);
    }
    cargo(&args)?;
    for c in crates {
        let file = target
            .path()
            .join("package")
            .join(format!("{c}-0.1.0.crate"));
        ensure!(
            file.metadata()?.len() > 1000,
            "{} missing or empty",
            file.display()
        );
    }
    Ok(())
}
