//! Integration tests of the eval stage on synthetic embeddings indexed by the index stage.

use std::path::{Path, PathBuf};

use anyhow::Result;
use mlops_core::testing::write_clusters;
use mlops_core::Manifest;
use mlops_eval::EvalConfig;
use mlops_index::IndexConfig;

/// (embed dir, index dir) of well-separated clusters.
fn setup(root: &Path, dim: usize, spread: f32) -> Result<(PathBuf, PathBuf)> {
    let emb = root.join("embed");
    write_clusters(&emb, dim, 50, 4, &["gallery", "test", "val"], spread, 9)?;
    let index = root.join("index");
    mlops_index::run(&IndexConfig {
        embeddings: emb.clone(),
        out: index.clone(),
        ..Default::default()
    })?;
    Ok((emb, index))
}

#[test]
fn evaluates_writes_kubeflow_files_and_decides() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (emb, index) = setup(tmp.path(), 16, 0.3)?;
    let out = tmp.path().join("eval");
    let outcome = mlops_eval::run(&EvalConfig {
        index,
        embeddings: emb,
        out: out.clone(),
        ..Default::default()
    })?;
    assert!(
        outcome.metrics.accuracy > 0.95,
        "{}",
        outcome.metrics.accuracy
    );
    assert_eq!(outcome.k_selection.len(), 7, "k chosen on the val role");
    assert!(outcome.decision.deploy);
    let manifest = Manifest::load_stage(&out, "eval")?;
    manifest.verify_outputs(&out)?;
    for shard in [
        "test_embeddings_000.npy",
        "val_labels_000.npy",
        "index.faiss",
    ] {
        assert!(
            manifest.inputs.iter().any(|e| e.path.ends_with(shard)),
            "{shard} missing from the inputs"
        );
    }
    let read = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap()
    };
    let v1 = read("mlpipeline-metrics.json");
    assert_eq!(v1["metrics"][0]["name"], "accuracy-score");
    assert_eq!(v1["metrics"][0]["format"], "PERCENTAGE");
    let ui = read("mlpipeline-ui-metadata.json");
    assert_eq!(ui["version"], 1);
    assert_eq!(ui["outputs"][0]["type"], "confusion_matrix");
    assert_eq!(ui["outputs"][0]["labels"].as_array().unwrap().len(), 4);
    let v2 = read("metrics.json");
    assert_eq!(v2["confusionMatrix"]["rows"].as_array().unwrap().len(), 4);
    let total: u64 = v2["confusionMatrix"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            r["row"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c.as_u64().unwrap())
        })
        .sum();
    assert_eq!(total, 200);
    let csv = std::fs::read_to_string(out.join("confusion_matrix.csv"))?;
    assert_eq!(csv.lines().count(), 1 + 16);
    assert_eq!(read("decision.json")["deploy"], true);
    Ok(())
}

fn run_bin(index: &Path, emb: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        std::ffi::OsStr::new("--index"),
        index.as_os_str(),
        "--embeddings".as_ref(),
        emb.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    mlops_core::testing::run_stage(env!("CARGO_BIN_EXE_mlops-eval"), args)
}

#[test]
fn gate_rejects_regressions_and_exit_codes_follow() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (emb, index) = setup(tmp.path(), 16, 1.2)?;
    // A "deployed" model that was better than this one.
    let current = tmp.path().join("current");
    std::fs::create_dir(&current)?;
    std::fs::write(current.join("metrics.json"), br#"{"accuracy": 0.999}"#)?;
    let out = tmp.path().join("eval");
    let cur = current.to_str().unwrap();
    let (code, stderr) = run_bin(&index, &emb, &out, &["--current", cur]);
    assert_eq!(code, 0, "a rejection is a result: {stderr}");
    let decision: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("decision.json"))?)?;
    assert_eq!(decision["deploy"], false);
    assert!(
        decision["reasons"].to_string().contains("regresses"),
        "{decision}"
    );
    let (code, _) = run_bin(&index, &emb, &out, &["--current", cur, "--fail-on-reject"]);
    assert_eq!(code, 3);
    let (code, _) = run_bin(
        &index,
        &emb,
        &out,
        &["--min-accuracy", "0.1", "--fail-on-reject"],
    );
    assert_eq!(code, 0);
    Ok(())
}

fn assert_fails(index: &Path, emb: &Path, expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let result = run_bin(index, emb, &out, &[]);
    mlops_core::testing::assert_failed_cleanly(&result, &out, &[expect]);
}

#[test]
fn bad_inputs_fail_cleanly_and_missing_classes_are_reported() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (emb, index) = setup(tmp.path(), 16, 0.3)?;

    // Embeddings of another dimension than the index.
    let other = tmp.path().join("other");
    write_clusters(&other, 8, 10, 4, &["test"], 0.3, 1)?;
    assert_fails(&index, &other, "dimension 8");

    // A corrupt index file (its checksum updated, so FAISS itself must reject it).
    let bad_index = tmp.path().join("bad-index");
    std::fs::create_dir(&bad_index)?;
    for f in ["manifest.json", "index.faiss", "labels.npy"] {
        std::fs::copy(index.join(f), bad_index.join(f))?;
    }
    let bytes = std::fs::read(bad_index.join("index.faiss"))?;
    std::fs::write(bad_index.join("index.faiss"), &bytes[..bytes.len() / 3])?;
    let mut m = Manifest::load(&bad_index)?;
    for e in m.outputs.iter_mut().filter(|e| e.path == "index.faiss") {
        e.sha256 = mlops_core::sha256_file(&bad_index.join("index.faiss"))?;
    }
    std::fs::write(bad_index.join("manifest.json"), serde_json::to_vec(&m)?)?;
    assert_fails(&bad_index, &emb, "corrupt or unreadable index");

    // Tampered index without rehash: the checksum catches it.
    std::fs::write(bad_index.join("index.faiss"), b"junk")?;
    assert_fails(&bad_index, &emb, "checksum");
    assert_fails(&tmp.path().join("none"), &emb, "no manifest");

    // A tampered val shard is an error, not a silent fallback to a default k.
    let bad_val = tmp.path().join("bad-val");
    write_clusters(&bad_val, 16, 50, 4, &["test", "val"], 0.3, 9)?;
    std::fs::write(bad_val.join("val_embeddings_000.npy"), b"junk")?;
    assert_fails(&index, &bad_val, "checksum");

    // A test class that the gallery lacks: reported, not fatal.
    let gallery_less = tmp.path().join("g3");
    write_clusters(&gallery_less, 16, 30, 3, &["gallery"], 0.3, 9)?;
    let idx3 = tmp.path().join("idx3");
    mlops_index::run(&IndexConfig {
        embeddings: gallery_less,
        out: idx3.clone(),
        ..Default::default()
    })?;
    let test4 = tmp.path().join("t4");
    write_clusters(&test4, 16, 30, 4, &["test"], 0.3, 9)?;
    // Same class names are needed; the 3-class gallery lacks "class3".
    let mut m = Manifest::load(&idx3)?;
    m.summary["classes"] = serde_json::json!(["class0", "class1", "class2", "class3"]);
    std::fs::write(idx3.join("manifest.json"), serde_json::to_vec(&m)?)?;
    let outcome = mlops_eval::run(&EvalConfig {
        index: idx3,
        embeddings: test4,
        out: tmp.path().join("e4"),
        k: Some(5),
        ..Default::default()
    })?;
    assert_eq!(outcome.classes_missing_in_gallery, vec!["class3"]);
    assert_eq!(outcome.metrics.per_class[3].recall, 0.0);
    Ok(())
}
