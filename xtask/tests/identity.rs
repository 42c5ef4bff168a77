//! A model trained on another data set never replaces the one it would share a name with: the
//! pipeline names a model after its data; named alike on purpose, the gate rejects it (the
//! deployed model answers other classes) and the registry refuses it even past the gate, naming
//! both class lists, also for versions registered before signatures were recorded.

use std::path::Path;
use std::process::Stdio;

use anyhow::{ensure, Result};
use serde_json::Value;

mod common;

/// An image folder of three classes unlike the tiny IDX set's: `alpha/`, `beta/`, `gamma/`,
/// each a bright column at its own place over noise.
fn write_other_folders(root: &Path) -> Result<()> {
    let mut next = common::noise(99);
    for (c, class) in ["alpha", "beta", "gamma"].iter().enumerate() {
        let dir = root.join(class);
        std::fs::create_dir_all(&dir)?;
        for i in 0..60 {
            let mut pixels: Vec<u8> = (0..28 * 28).map(|_| next() / 4).collect();
            for y in 0..28 {
                pixels[y * 28 + c * 7 + 3] = 200 + next() / 5;
            }
            let img = image::GrayImage::from_raw(28, 28, pixels).expect("28x28");
            img.save(dir.join(format!("{i:03}.png")))?;
        }
    }
    Ok(())
}

fn pointer(registry: &Path, model: &str) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        registry.join(model).join("registry.json"),
    )?)?)
}

#[test]
fn another_data_set_registers_another_model_and_never_replaces_one() -> Result<()> {
    if common::release_binaries().is_none() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let registry = t.join("registry");
    common::write_idx(&t.join("tiny"))?;
    write_other_folders(&t.join("other"))?;
    let run = |name: &str, source: &str, extra: &[&str]| {
        let mut cmd = common::pipeline_in(t, name, &t.join(source), &registry);
        for set in common::TINY {
            cmd.args(["--set", set]);
        }
        cmd.args(extra).stderr(Stdio::piped()).output()
    };
    let first = run("first", "tiny", &[])?;
    ensure!(first.status.success(), "{first:?}");
    assert_eq!(pointer(&registry, "tiny")?["default"], 1);

    // Another data set: its own model, named after its data; the first keeps its default.
    let other = run("other", "other", &[])?;
    ensure!(other.status.success(), "{other:?}");
    assert_eq!(pointer(&registry, "other")?["default"], 1);
    assert_eq!(pointer(&registry, "tiny")?["default"], 1);
    assert!(!registry.join("tiny/2").exists());

    // Under the first model's name: refused. The version registered first has its signature
    // field removed, as a registry from before signatures would: it is read from the
    // version's model.json instead.
    let manifest_path = registry.join("tiny/1/manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&manifest_path)?)?;
    ensure!(manifest["summary"]["signature"].is_object(), "{manifest}");
    manifest["summary"]
        .as_object_mut()
        .expect("summary")
        .remove("signature");
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    // The gate sees the deployed model answers other classes and says so.
    let forced = run("forced", "other", &["--model-name", "tiny"])?;
    ensure!(forced.status.success(), "{forced:?}");
    let record = common::record(t, "forced")?;
    assert_eq!(record["decision"], "reject", "{record}");
    let decision: Value =
        serde_json::from_slice(&std::fs::read(t.join("runs/forced/eval/decision.json"))?)?;
    let reasons = decision["reasons"].to_string();
    assert!(
        reasons.contains("answers other classes") && reasons.contains("alpha"),
        "{reasons}"
    );
    // Registered by hand past the gate: the registry refuses it, naming both class lists.
    let deploy = Path::new(env!("CARGO_BIN_EXE_xtask")).with_file_name("mlops-deploy");
    let forced_dir = t.join("runs/forced");
    let out = std::process::Command::new(deploy)
        .arg("register")
        .arg("--model")
        .arg(forced_dir.join("train"))
        .arg("--index")
        .arg(forced_dir.join("index"))
        .arg("--eval")
        .arg(forced_dir.join("eval"))
        .arg("--registry")
        .arg(&registry)
        .args(["--name", "tiny", "--force", "--promote"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("not the model registered as \"tiny\"")
            && stderr.contains("[\"alpha\", \"beta\", \"gamma\"] (candidate)")
            && stderr.contains("register it under another name"),
        "{stderr}"
    );
    assert_eq!(pointer(&registry, "tiny")?["default"], 1);
    assert!(!registry.join("tiny/2").exists());

    // The same data again joins its model as version 2.
    let again = run(
        "again",
        "tiny",
        &[
            "--set",
            "train.seed=7",
            "--set",
            "eval.gate.max_regression=1.0",
        ],
    )?;
    ensure!(again.status.success(), "{again:?}");
    assert!(registry.join("tiny/2/manifest.json").is_file());
    Ok(())
}
