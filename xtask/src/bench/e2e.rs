//! The whole pipeline's wall time and every stage's peak memory.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::report::{EndToEnd, StageTime};
use crate::pipeline::{RunRecord, StageStatus};
use crate::{root, run_cmd};

/// Every stage's wall time and peak RSS: from the run's own record when all its stages ran
/// (none from the cache), else from the pipeline run again on its parameters, forced.
pub fn pipeline(run_dir: &Path) -> Result<EndToEnd> {
    let source = run_dir.join("run.json");
    let record = RunRecord::load(&source)?;
    ensure!(
        !record.stages.is_empty(),
        "{} has no stages",
        source.display()
    );
    let stages = stage_times(&record);
    if stages
        .iter()
        .all(|s| s.status == StageStatus::Ran && s.peak_rss_mb.is_some())
    {
        eprintln!(
            "pipeline: every stage of {} ran; using its record",
            run_dir.display()
        );
        return Ok(EndToEnd {
            accuracy: record.metrics.accuracy,
            seconds: record.seconds,
            source,
            stages,
        });
    }
    let name = "bench-e2e";
    // The run's recorded parameter table is a parameters file as it stands; the flags only
    // rename the run and its registry.
    let config = std::env::temp_dir().join(format!("mlops-bench-e2e-{}.toml", std::process::id()));
    std::fs::write(&config, parameters_file(&record)?)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["pipeline", "--no-setup", "--force", "--name", name])
        .args(["--registry", "runs/registry-bench"])
        .arg("--config")
        .arg(&config);
    let started = Instant::now();
    let ran = run_cmd(cmd.current_dir(root()), "the pipeline");
    let _ = std::fs::remove_file(&config);
    ran?;
    let seconds = started.elapsed().as_secs_f64();
    let source = root().join("runs").join(name).join("run.json");
    let done = RunRecord::load(&source)?;
    Ok(EndToEnd {
        accuracy: done.metrics.accuracy,
        seconds,
        source,
        stages: stage_times(&done),
    })
}

fn stage_times(record: &RunRecord) -> Vec<StageTime> {
    record
        .stages
        .iter()
        .map(|s| StageTime {
            peak_rss_mb: s.peak_rss_mb,
            seconds: s.seconds,
            stage: s.stage.clone(),
            status: s.status,
        })
        .collect()
}

/// The parameter table a `run.json` recorded, as a parameters file for `--config`.
fn parameters_file(record: &RunRecord) -> Result<String> {
    toml::to_string(&record.parameters).context("run.json: parameters are not a parameter table")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_parameter_table_becomes_the_same_parameters_file() {
        let text = "[pipeline]\nrun = \"x\"\nsources = [\"/a\"]\n[data]\nimage_size = [8, 8]\n\
                    [train]\nepochs = 3\narch = \"res\"\naugment = { max_shift = 0, hflip = false }\n\
                    [eval.gate]\nmin_accuracy = 0.5\n";
        let table: toml::Table = toml::from_str(text).unwrap();
        // run.json holds the table as JSON.
        let json = serde_json::json!({ "parameters": serde_json::to_value(&table).unwrap() });
        let record: RunRecord = serde_json::from_value(json).unwrap();
        let back: toml::Table = toml::from_str(&parameters_file(&record).unwrap()).unwrap();
        assert_eq!(back, table);
        let not_a_table = serde_json::json!({ "parameters": [1] });
        assert!(serde_json::from_value::<RunRecord>(not_a_table).is_err());
    }
}
