//! The committed `kubeflow/pipeline.yaml` executed by Kubeflow's own local runner
//! (`cargo xtask kfp --run-local`: kfp.local.DockerRunner on podman, the stage images
//! `cargo xtask test` built) on the tiny data set: it trains what the native pipeline trains and
//! deploys it; the gate's condition skips the deploy step when the decision is reject; a step
//! that fails fails the run with the stage's own message.

use std::path::Path;
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};

mod common;

fn image_tag() -> Option<String> {
    common::release_binaries()?;
    mlops_core::testing::python()?;
    mlops_core::testing::prerequisite(
        "stage images",
        std::env::var("MLOPS_IMAGE_TAG").ok(),
        "cargo xtask test builds them with `cargo xtask images` and sets MLOPS_IMAGE_TAG",
    )
}

/// `cargo xtask kfp --run-local` on `source` with the tiny settings and `extra` ones.
fn kfp_local(tag: &str, source: &Path, workdir: &Path, extra: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(["kfp", "--run-local", "--no-build", "--image-tag", tag])
        .arg("--source")
        .arg(source)
        .arg("--workdir")
        .arg(workdir)
        .env("RUST_LOG", "warn")
        .env("RUST_BACKTRACE", "0");
    for set in common::TINY.iter().chain(extra) {
        cmd.args(["--set", set]);
    }
    Ok(cmd.output()?)
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn summary(workdir: &Path) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        workdir.join("summary.json"),
    )?)?)
}

#[test]
fn the_committed_pipeline_runs_locally_to_the_native_model_and_deploys_it() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;
    let work = t.join("kfp");
    let out = kfp_local(&tag, &t.join("src"), &work, &[])?;
    let log = text(&out);
    ensure!(out.status.success(), "the local run failed:\n{log}");
    assert!(log.contains("eval: decision deploy"), "{log}");
    assert!(
        log.contains("deploy: registered version 1 (default)"),
        "{log}"
    );
    let s = summary(&work)?;
    let uuid = s["job_uuid"].as_str().context("no job uuid")?;
    let states: Vec<(String, String)> = s["tasks"]
        .as_array()
        .context("no tasks")?
        .iter()
        .map(|t| {
            (
                t["path"].as_str().unwrap_or_default().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(states.len(), 7, "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "SUCCEEDED"), "{states:?}");
    assert!(states
        .iter()
        .any(|(p, _)| p == "gate-deploy/condition-deploy/deploy"));
    let registry = work.join("artifacts/registry/src");
    assert!(registry.join("1/manifest.json").is_file());

    // A second run on the same volume: embed and eval find the deployed version through the
    // registry's model directory, and the gate pairs the two models on the same images.
    let again = kfp_local(&tag, &t.join("src"), &work, &[])?;
    ensure!(
        again.status.success(),
        "the second run failed:\n{}",
        text(&again)
    );
    let second = summary(&work)?;
    let uuid2 = second["job_uuid"].as_str().context("no job uuid")?;
    ensure!(uuid2 != uuid, "a new run");
    let decision: serde_json::Value = serde_json::from_slice(&std::fs::read(
        work.join(format!("artifacts/runs/{uuid2}/eval/decision.json")),
    )?)?;
    let paired = &decision["paired"];
    assert!(paired["images"].as_u64() > Some(0), "{decision}");
    // The same settings train the same model: the two agree on every image.
    assert_eq!(paired["candidate_only"], 0, "{decision}");
    assert_eq!(paired["deployed_only"], 0, "{decision}");
    assert_eq!(decision["deploy"], true, "{decision}");
    assert!(registry.join("2/manifest.json").is_file());

    // The same settings through the native runner train the same model.
    ensure!(
        common::tiny_pipeline(t, "native").status()?.success(),
        "the native run failed"
    );
    let kfp_model = work.join(format!("artifacts/runs/{uuid}/train/model.pt"));
    assert_eq!(
        mlops_core::sha256_file(&kfp_model)?,
        mlops_core::sha256_file(&t.join("runs/native/train/model.pt"))?
    );
    Ok(())
}

#[test]
fn the_deploy_step_is_skipped_when_the_gate_rejects() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    common::write_idx(&t.join("src"))?;
    let work = t.join("kfp");
    // No accuracy reaches 1.5: the gate says reject.
    let out = kfp_local(&tag, &t.join("src"), &work, &["eval.gate.min_accuracy=1.5"])?;
    let log = text(&out);
    ensure!(out.status.success(), "the local run failed:\n{log}");
    assert!(log.contains("eval: decision reject"), "{log}");
    assert!(log.contains("deploy: skipped"), "{log}");
    let s = summary(&work)?;
    assert_eq!(
        s["not_run"],
        serde_json::json!(["gate-deploy/condition-deploy/deploy"])
    );
    assert_eq!(s["conditions"][0]["result"], false, "{s}");
    assert!(!work.join("artifacts/registry/src/1").exists());
    Ok(())
}

#[test]
fn a_failing_step_fails_the_local_run_with_the_stage_message() -> Result<()> {
    let Some(tag) = image_tag() else {
        return Ok(());
    };
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let src = t.join("bad");
    common::write_truncated_idx(&src)?;
    let work = t.join("kfp");
    let out = kfp_local(&tag, &src, &work, &[])?;
    let log = text(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("step data failed: error: /artifacts/datasets/bad/train-images-idx3-ubyte: IDX header promises"),
        "{stderr}"
    );
    let s = summary(&work)?;
    assert_eq!(s["status"], "FAILED");
    assert_eq!(s["tasks"][0]["exit_code"], 1);
    Ok(())
}
