//! What every stage binary shares: `--config` / `--set`, logging, and error reporting.

use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::telemetry::{init_logging, report_error};

/// `--config FILE.toml` and `--set key=value`, flattened into each stage's clap arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConfigArgs {
    /// TOML file with the stage's settings (the field names of its config struct); --set and
    /// flags override it.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Any setting of the stage's config struct, as key=value (TOML value; dotted keys reach
    /// nested settings, e.g. optimizer.lr=0.05); repeatable; flags override it.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Settings as one inline TOML text (e.g. 'epochs = 6' or 'optimizer = { lr = 0.1 }'),
    /// applied after --config and before --set: how an orchestrator passes a whole section as a
    /// single parameter.
    #[arg(long, value_name = "TOML")]
    pub settings: Option<String>,
}

/// The body of a stage binary: starts logging, merges defaults, `--config`, `--set` and `flags`
/// into the stage's config (see [`crate::config::merge`]), calls `run` and reports an error with
/// its chain of causes (exit 1).
pub fn main<C, F, E>(
    args: &ConfigArgs,
    flags: &F,
    run: impl FnOnce(C) -> Result<ExitCode, E>,
) -> ExitCode
where
    C: Serialize + DeserializeOwned + Default,
    F: Serialize,
    E: std::error::Error + 'static,
{
    main_with_defaults(args, flags, |_| None, run)
}

/// [`main`] for a stage whose defaults depend on what was asked: when `defaults` returns
/// another base for the config merged onto the usual defaults, the same settings are merged
/// again onto it, so everything the user set still wins.
pub fn main_with_defaults<C, F, E>(
    args: &ConfigArgs,
    flags: &F,
    defaults: impl Fn(&C) -> Option<C>,
    run: impl FnOnce(C) -> Result<ExitCode, E>,
) -> ExitCode
where
    C: Serialize + DeserializeOwned + Default,
    F: Serialize,
    E: std::error::Error + 'static,
{
    init_logging();
    let sets = match &args.settings {
        None => Ok(args.set.clone()),
        Some(text) => crate::config::inline_sets(text).map(|mut sets| {
            sets.extend(args.set.iter().cloned());
            sets
        }),
    };
    let file = args.config.as_deref();
    let merged = sets.and_then(|sets| {
        let config = crate::config::merge(file, &sets, flags)?;
        match defaults(&config) {
            Some(base) => crate::config::merge_onto(base, file, &sets, flags),
            None => Ok(config),
        }
    });
    match merged {
        Ok(config) => run(config).unwrap_or_else(|e| report_error(&e)),
        Err(e) => report_error(&e),
    }
}

/// Writes an output parameter where an orchestrator asked for it (Kubeflow passes the path of
/// `{{$.outputs.parameters['NAME'].output_file}}`), creating its directory; nothing without one.
pub fn write_output(path: Option<&std::path::Path>, value: &str) -> crate::Result<()> {
    let Some(path) = path else { return Ok(()) };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| crate::Error::io(parent, e))?;
    }
    crate::write_atomic(path, value.as_bytes())
}
