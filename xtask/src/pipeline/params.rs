//! The parameters of a run: `pipeline.toml` (or `--config`), a `--profile`, the flags and
//! `--set` pairs, merged by `mlops_core::config` as the stages merge their own settings.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::PipelineArgs;
use crate::dag::{self, STAGES};
use crate::root;

/// Fashion-MNIST as Debian's `dataset-fashion-mnist` installs it.
pub const DEFAULT_SOURCE: &str = "/usr/share/datasets/fashion-mnist";

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

/// The `[pipeline]` section; the other sections belong to the stages.
#[derive(Deserialize, Default)]
#[serde(default)]
struct PipelineSection {
    run: Option<String>,
    registry: Option<String>,
    model: Option<String>,
    sources: Option<Vec<PathBuf>>,
}

impl Params {
    /// `pipeline.toml` (or `config`), then the profile, then the flags, then `--set` pairs.
    pub fn load(args: &PipelineArgs) -> Result<Params> {
        let path = args
            .config
            .clone()
            .unwrap_or_else(|| root().join("pipeline.toml"));
        let mut sets = match &args.profile {
            Some(name) => profile_sets(&path, name)?,
            None => Vec::new(),
        };
        sets.extend(flag_sets(args));
        sets.extend(args.set.iter().cloned());
        for pair in &sets {
            check_section_key(pair)?;
        }
        // The file itself goes to the merge (not flattened into sets) so that its empty
        // sections stay in the recorded table.
        let mut table: toml::Table = mlops_core::config::merge(Some(&path), &sets, &())?;
        table.remove("profiles");
        for key in table.keys() {
            if key != "pipeline" && dag::stage(key).is_none() {
                bail!(
                    "{}: unknown section [{key}] (sections: pipeline and the stages {})",
                    path.display(),
                    STAGES.map(|s| s.name).join(", ")
                );
            }
        }
        Params::from_table(table)
    }

    fn from_table(table: toml::Table) -> Result<Params> {
        let pipeline: PipelineSection = match table.get("pipeline") {
            None => PipelineSection::default(),
            Some(section) => section
                .clone()
                .try_into()
                .context("invalid [pipeline] section")?,
        };
        let sources = pipeline
            .sources
            .unwrap_or_else(|| vec![PathBuf::from(DEFAULT_SOURCE)]);
        let run = pipeline.run.unwrap_or_else(|| "default".into());
        if run.is_empty() || run.contains(['/', '\\']) || run.starts_with('.') {
            bail!("run name {run:?} must be a plain directory name");
        }
        Ok(Params {
            registry: PathBuf::from(pipeline.registry.as_deref().unwrap_or("runs/registry")),
            model: pipeline.model.unwrap_or_else(|| model_name_of(&sources)),
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

/// The profile `name` of the file's `[profiles]` table as `section.key=value` pairs.
fn profile_sets(path: &Path, name: &str) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut file: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
    let profiles = match file.remove("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => bail!("{}: [profiles] must be a table", path.display()),
    };
    let Some(toml::Value::Table(profile)) = profiles.get(name) else {
        bail!(
            "{}: no profile {name:?} (profiles: {})",
            path.display(),
            profiles.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    Ok(mlops_core::config::table_sets(profile))
}

/// The named flags as `section.key=value` pairs.
fn flag_sets(args: &PipelineArgs) -> Vec<String> {
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
    sets
}

/// Every parameter lives in a section: a bare `key=value` would make a section of its own.
fn check_section_key(pair: &str) -> Result<()> {
    let well_formed = pair.split_once('=').is_some_and(|(key, _)| {
        let parts: Vec<&str> = key.trim().split('.').collect();
        parts.len() >= 2 && parts.iter().all(|p| !p.is_empty())
    });
    if !well_formed {
        bail!("--set {pair:?}: expected SECTION.KEY=VALUE");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn sets_reach_nested_keys_and_flatten_back() {
        let (_dir, path) = params_file("[train]\nseed = 42\n[validate]\n");
        let args = |set: &[&str]| PipelineArgs {
            config: Some(path.clone()),
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let p = Params::load(&args(&[
            "train.epochs=3",
            "train.arcface.margin=0.3",
            "pipeline.run=exp",
        ]))
        .unwrap();
        let mut out = p.stage_sets("train");
        out.sort();
        assert_eq!(out, ["arcface.margin=0.3", "epochs=3", "seed=42"]);
        assert_eq!(p.run, "exp");
        assert_eq!(
            p.table.get("validate"),
            Some(&toml::Value::Table(toml::Table::new())),
            "an empty section stays in the recorded table"
        );
        let err = Params::load(&args(&["epochs=3"])).unwrap_err().to_string();
        assert!(err.contains("expected SECTION.KEY=VALUE"), "{err}");
        let err = Params::load(&args(&["trian.epochs=3"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown section [trian]"), "{err}");
    }

    #[test]
    fn a_profile_applies_before_flags_and_sets() {
        let (_dir, path) = params_file(
            "[train]\nseed = 42\nepochs = 20\n[profiles.quick]\npipeline = { run = \"quick\" }\ntrain = { epochs = 4, arcface = { margin = 0.3 } }\n",
        );
        let args = |profile: Option<&str>, set: &[&str]| PipelineArgs {
            config: Some(path.clone()),
            profile: profile.map(str::to_string),
            set: set.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let plain = Params::load(&args(None, &[])).unwrap();
        assert_eq!(plain.run, "default");
        assert!(!plain.table.contains_key("profiles"));
        assert!(plain.stage_sets("train").contains(&"epochs=20".to_string()));
        let quick = Params::load(&args(Some("quick"), &[])).unwrap();
        assert_eq!(quick.run, "quick");
        let mut sets = quick.stage_sets("train");
        sets.sort();
        assert_eq!(sets, ["arcface.margin=0.3", "epochs=4", "seed=42"]);
        let overridden = Params::load(&args(Some("quick"), &["train.epochs=2"])).unwrap();
        assert!(overridden
            .stage_sets("train")
            .contains(&"epochs=2".to_string()));
        let err = Params::load(&args(Some("fast"), &[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no profile \"fast\" (profiles: quick)"),
            "{err}"
        );
    }

    #[test]
    fn the_pipeline_section_is_checked() {
        let (_dir, path) = params_file("[pipeline]\nrun = 3\n");
        let args = PipelineArgs {
            config: Some(path),
            ..Default::default()
        };
        let err = format!("{:#}", Params::load(&args).unwrap_err());
        assert!(err.contains("[pipeline]"), "{err}");
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
}
