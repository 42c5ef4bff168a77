//! The local pipeline runner on a tiny synthetic data set: a run killed with SIGKILL at
//! random points and started again completes with exactly the accuracy of an uninterrupted
//! run, and a second start finishes from the cache.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

mod common;
use common::record;

/// The common pipeline command with the tiny run's settings.
fn pipeline(tmp: &Path, run: &str) -> Command {
    common::tiny_pipeline(tmp, run)
}

#[test]
fn killed_runs_resume_to_the_same_result_and_reruns_come_from_cache() -> Result<()> {
    if common::release_binaries().is_none() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;

    let started = Instant::now();
    ensure!(
        pipeline(t, "straight").status()?.success(),
        "the uninterrupted run failed"
    );
    let full = started.elapsed();
    let straight = record(t, "straight")?;
    assert_eq!(straight["status"], "succeeded");
    assert_eq!(straight["decision"], "deploy");
    assert_eq!(straight["registered_version"], 1);
    let accuracy = straight["metrics"]["accuracy"].as_f64().unwrap();

    // Kill the whole process group (runner and stage) at spread-out moments, then finish.
    let mut seed = 7u64;
    let (mut kills, mut attempts, mut scale) = (0, 0, 1.0);
    while kills < 4 && attempts < 16 {
        attempts += 1;
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let fraction = (seed >> 40) as f64 / (1u64 << 24) as f64;
        let delay = full.mul_f64((0.05 + 0.9 * fraction) * scale);
        let mut cmd = pipeline(t, "killed");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn()?;
        std::thread::sleep(delay);
        if child.try_wait()?.is_none() {
            Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status()?;
            kills += 1;
        } else {
            // It finished first (a busy machine runs slower or faster): start that run over
            // and aim earlier next time.
            scale *= 0.5;
            std::fs::remove_dir_all(t.join("runs/killed"))?;
            std::fs::remove_dir_all(t.join("registry-killed"))?;
        }
        child.wait()?;
    }
    assert!(
        kills >= 4,
        "only {kills} of {attempts} runs were still going when killed"
    );
    ensure!(
        pipeline(t, "killed").status()?.success(),
        "the resumed run failed"
    );
    let resumed = record(t, "killed")?;
    assert_eq!(resumed["status"], "succeeded");
    assert_eq!(resumed["metrics"]["accuracy"].as_f64().unwrap(), accuracy);

    // Started again: every stage from the cache, fast.
    let again = Instant::now();
    ensure!(pipeline(t, "straight").status()?.success());
    let cached = record(t, "straight")?;
    let hits = cached["stages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["cache"] == "hit")
        .count();
    assert_eq!(hits, 7, "{cached}");
    assert!(
        again.elapsed() < full.max(Duration::from_secs(5)),
        "a cached run took {:?}",
        again.elapsed()
    );
    assert_eq!(
        cached["registered_version"], 1,
        "a cached run registers nothing new"
    );
    Ok(())
}

/// Processes whose command line mentions `needle`, other than this test's own.
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn a_killed_runner_takes_its_stage_with_it() -> Result<()> {
    if common::release_binaries().is_none() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;
    let mut cmd = pipeline(t, "orphan");
    cmd.args(["--set", "train.epochs=200"]);
    let mut runner = cmd.spawn()?;
    let train_dir = t.join("runs/orphan/train");
    let needle = train_dir.display().to_string();
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    while processes_mentioning(&needle).is_empty() {
        ensure!(
            runner.try_wait()?.is_none(),
            "the pipeline ended before its train stage was seen"
        );
        ensure!(Instant::now() < deadline, "no train stage after 120 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SIGKILL to the runner alone, as a supervisor or `kill PID` would send it.
    runner.kill()?;
    runner.wait()?;
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !processes_mentioning(&needle).is_empty() {
        ensure!(
            Instant::now() < deadline,
            "the train stage outlived its runner by 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Ok(())
}
