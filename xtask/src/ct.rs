//! `cargo xtask ct`: continuous training. Ingests the sources as the data stage would, compares
//! them with the data the deployed version was trained on, reports "N new images for training
//! and M for the gallery", and runs the pipeline when that passes `--min-new` (or `--always`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value as Json;

use crate::pipeline::{self, Params, PipelineArgs};
use crate::{cargo, read_json, release_dir, root, run_cmd};
use mlops_core::notify::{Event, Notifier};

#[derive(clap::Args)]
pub struct CtArgs {
    /// Data sources (IDX files or directories, image folders); repeatable.
    #[arg(long, required = true)]
    source: Vec<PathBuf>,
    /// Retrain when at least this many new training + gallery images appeared.
    #[arg(long, default_value_t = 1000)]
    min_new: usize,
    /// Retrain whatever the data says.
    #[arg(long)]
    always: bool,
    /// Only report.
    #[arg(long)]
    dry_run: bool,
    /// Skip set-up (apt, libtorch, venv) when it is known to be done.
    #[arg(long)]
    no_setup: bool,
}

/// What the sources hold beyond the deployed version's training data.
#[derive(Debug, PartialEq, Eq)]
pub struct Delta {
    pub train: usize,
    pub gallery: usize,
    /// The source files' checksums differ from the deployed data's.
    pub changed: bool,
}

/// The decision of a CT pass (pure): retrain when forced, when nothing is deployed, or when
/// enough new images appeared.
pub fn should_retrain(delta: Option<&Delta>, min_new: usize, always: bool) -> bool {
    always || delta.is_none_or(|d| d.changed && d.train + d.gallery >= min_new)
}

pub fn run(args: &CtArgs) -> Result<()> {
    let params = Params::load(&PipelineArgs {
        source: args.source.clone(),
        ..Default::default()
    })?;
    run_cmd(
        cargo().args([
            "build",
            "--release",
            "-p",
            "mlops-data",
            "--bin",
            "mlops-data",
        ]),
        "cargo build",
    )?;
    let fresh = std::env::temp_dir().join(format!("mlops-ct-{}", std::process::id()));
    let mut ingest = Command::new(release_dir().join("mlops-data"));
    for s in &args.source {
        ingest.arg("--source").arg(s);
    }
    ingest.arg("--out").arg(&fresh).env("RUST_LOG", "warn");
    for pair in params.stage_sets("data") {
        ingest.args(["--set", &pair]);
    }
    run_cmd(&mut ingest, "ingesting the sources")?;
    let new = read_json(&fresh.join("manifest.json"))?;
    let registry = root().join(&params.registry);
    let deployed = deployed_data(&registry, &params.model)?;
    let delta = deployed.as_ref().map(|old| delta(old, &new));
    let _ = std::fs::remove_dir_all(&fresh);
    let retrain = should_retrain(delta.as_ref(), args.min_new, args.always);
    match &delta {
        Some(d) => println!(
            "{} new images for training and {} for the gallery{}",
            d.train,
            d.gallery,
            if d.changed {
                ""
            } else {
                " (the sources are unchanged)"
            }
        ),
        None => println!("no deployed version of {} to compare with", params.model),
    }
    let (train, gallery) = delta.as_ref().map_or((0, 0), |d| (d.train, d.gallery));
    Notifier::from_env().send(&Event::NewData {
        train,
        gallery,
        retraining: retrain && !args.dry_run,
    });
    if !retrain {
        println!(
            "below the threshold of {} new images: not retraining",
            args.min_new
        );
        return Ok(());
    }
    if args.dry_run {
        println!("would retrain (dry run)");
        return Ok(());
    }
    let run = format!("ct-{}", chrono::Utc::now().format("%Y%m%d-%H%M%S"));
    pipeline::run(&PipelineArgs {
        source: args.source.clone(),
        name: Some(run),
        no_setup: args.no_setup,
        ..Default::default()
    })
}

/// The data manifest the registry's default version was trained on, found through the
/// manifests: version -> train manifest -> its data manifest.
fn deployed_data(registry: &Path, model: &str) -> Result<Option<Json>> {
    let Ok(pointer) = read_json(&registry.join(model).join("registry.json")) else {
        return Ok(None);
    };
    let Some(v) = pointer["default"].as_u64() else {
        return Ok(None);
    };
    let version = read_json(
        &registry
            .join(model)
            .join(v.to_string())
            .join("manifest.json"),
    )?;
    let train_manifest = version["inputs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["path"].as_str())
        .find(|p| p.ends_with("manifest.json"))
        .context("the version records no train manifest")?;
    let train = read_json(Path::new(train_manifest))?;
    let data_manifest = train["inputs"][0]["path"]
        .as_str()
        .context("the train manifest records no data manifest")?;
    match read_json(Path::new(data_manifest)) {
        Ok(data) => Ok(Some(data)),
        // The deployed model's data is gone: everything counts as new.
        Err(_) => Ok(None),
    }
}

fn rows(manifest: &Json, role: &str) -> usize {
    manifest["summary"]["roles"][role]["rows"]
        .as_u64()
        .unwrap_or(0) as usize
}

fn delta(old: &Json, new: &Json) -> Delta {
    let sums = |m: &Json| -> Vec<String> {
        let mut v: Vec<String> = m["inputs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["sha256"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    };
    Delta {
        train: rows(new, "train").saturating_sub(rows(old, "train")),
        gallery: rows(new, "gallery").saturating_sub(rows(old, "gallery")),
        changed: sums(old) != sums(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(train: u64, gallery: u64, sha: &str) -> Json {
        json!({
            "inputs": [{ "path": "x", "sha256": sha }],
            "summary": { "roles": { "train": { "rows": train }, "gallery": { "rows": gallery } } },
        })
    }

    #[test]
    fn counts_new_images_and_decides() {
        let d = delta(&manifest(100, 20, "a"), &manifest(1100, 220, "b"));
        assert_eq!(
            d,
            Delta {
                train: 1000,
                gallery: 200,
                changed: true
            }
        );
        assert!(should_retrain(Some(&d), 1000, false));
        assert!(!should_retrain(Some(&d), 5000, false));
        assert!(should_retrain(Some(&d), 5000, true));
        let same = delta(&manifest(100, 20, "a"), &manifest(100, 20, "a"));
        assert!(!same.changed && !should_retrain(Some(&same), 0, false));
        assert!(should_retrain(None, 1000, false), "nothing deployed: train");
    }
}
