//! `cargo xtask ct`: continuous training. Ingests the sources as the data stage would, compares
//! them with the data the deployed version was trained on, reports "N new images for training
//! and M for the gallery", and runs the pipeline when that passes `--min-new` (or `--always`).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use mlops_core::artifact::{registry, DataDir, Role, VersionDir};
use mlops_core::notify::{Event, Notifier};
use mlops_core::Manifest;

use crate::pipeline::{self, Params, PipelineArgs};
use crate::{cargo, release_dir, root, run_cmd};

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
    let new = DataFacts::of(&DataDir::open(&fresh)?);
    let registry = root().join(&params.registry);
    let deployed = deployed_data(&registry, &params.model)?;
    let delta = deployed.map(|old| delta(&DataFacts::of(&old), &new));
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

/// The data the registry's default version was trained on, found through the manifests:
/// version -> train manifest -> its data manifest.
fn deployed_data(registry: &Path, model: &str) -> Result<Option<DataDir>> {
    let Ok(pointer) = registry::read_pointer(registry, model) else {
        return Ok(None);
    };
    let Some(v) = pointer.default else {
        return Ok(None);
    };
    let version = VersionDir::open(&registry::version_dir(registry, model, v)?)?;
    let train_dir = manifest_dir(version.manifest.inputs.iter().map(|e| &e.path))
        .context("the version records no train manifest")?;
    let train = Manifest::load(train_dir)?;
    let data_dir = train
        .inputs
        .first()
        .and_then(|e| Path::new(&e.path).parent())
        .context("the train manifest records no data manifest")?;
    // The deployed model's data may be gone: everything then counts as new.
    Ok(DataDir::open(data_dir).ok())
}

/// The directory of the first of `paths` that is a stage's manifest.
fn manifest_dir<'a>(paths: impl IntoIterator<Item = &'a String>) -> Option<&'a Path> {
    paths
        .into_iter()
        .find(|p| p.ends_with(mlops_core::MANIFEST_FILE))
        .and_then(|p| Path::new(p).parent())
}

/// What [`delta`] compares of a data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DataFacts {
    /// The sha256 of every input (sources), sorted.
    input_sums: Vec<String>,
    train: usize,
    gallery: usize,
}

impl DataFacts {
    fn of(data: &DataDir) -> DataFacts {
        let mut input_sums: Vec<String> = data
            .manifest
            .inputs
            .iter()
            .map(|e| e.sha256.clone())
            .collect();
        input_sums.sort();
        let rows = |role| data.summary.role(role).map_or(0, |r| r.rows);
        DataFacts {
            input_sums,
            train: rows(Role::Train),
            gallery: rows(Role::Gallery),
        }
    }
}

fn delta(old: &DataFacts, new: &DataFacts) -> Delta {
    Delta {
        train: new.train.saturating_sub(old.train),
        gallery: new.gallery.saturating_sub(old.gallery),
        changed: old.input_sums != new.input_sums,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(train: usize, gallery: usize, sha: &str) -> DataFacts {
        DataFacts {
            input_sums: vec![sha.to_string()],
            train,
            gallery,
        }
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
