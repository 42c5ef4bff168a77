//! Integration tests of the embed stage: a tiny model trained on synthetic data, embedded back.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Result;
use mlops_core::artifact::{DataDir, EmbeddingsDir, ModelDir};
use mlops_core::{npy, sha256_file, testing, Manifest};
use mlops_data::fixtures::{self, IdxFixture};
use mlops_data::DataConfig;
use mlops_embed::{EmbedConfig, Embedder};
use ndarray::{Array1, Array2, Ix1, Ix2};
use tch::Device;

/// (data dir, train dir) shared by the tests; built once.
fn trained() -> &'static (tempfile::TempDir, PathBuf, PathBuf) {
    static CELL: OnceLock<(tempfile::TempDir, PathBuf, PathBuf)> = OnceLock::new();
    CELL.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let data = make_data(tmp.path(), "data", 28);
        let train = tmp.path().join("train");
        mlops_embed::testing::fixture_model(&train, &data).unwrap();
        (tmp, data, train)
    })
}

fn make_data(root: &Path, name: &str, size: usize) -> PathBuf {
    let src = root.join(format!("{name}-src"));
    let out = root.join(name);
    fixtures::write_idx(
        &src,
        &IdxFixture {
            train_per_class: 30,
            test_per_class: 7,
            ..Default::default()
        },
    )
    .unwrap();
    mlops_data::run(&DataConfig {
        sources: vec![src],
        out: out.clone(),
        image_size: [size, size],
        npy_interval: 16,
        ..Default::default()
    })
    .unwrap();
    out
}

fn config(model: &Path, data: &Path, out: &Path) -> EmbedConfig {
    EmbedConfig {
        model: model.to_path_buf(),
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        threads: 1,
        batch_size: 7,
        // These tests compare with fp32 forward passes; bf16 has its own test.
        precision: mlops_torch::Precision::Fp32,
        ..Default::default()
    }
}

#[test]
fn embeds_gallery_and_test_aligned_with_labels() -> Result<()> {
    let (_, data, train) = trained();
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("embed");
    mlops_embed::run(&config(train, data, &out))?;
    let opened = EmbeddingsDir::open(&out)?;
    let (manifest, summary) = (opened.manifest, opened.summary);
    manifest.verify_outputs(&out)?;
    assert_eq!(summary.dim, 16);
    assert!(manifest.inputs.iter().any(|e| e.path.ends_with("model.pt")));
    let data_summary = DataDir::open(data)?.summary;
    let module = tch::CModule::load(train.join("model.pt"))?;
    // By default every role but train: what index and eval read.
    let roles: Vec<&str> = summary.roles.keys().map(String::as_str).collect();
    assert_eq!(roles, ["gallery", "test", "val"]);
    for role in ["gallery", "test", "val"] {
        let embedded = &summary.roles[role];
        let source = &data_summary.roles[role];
        assert_eq!(embedded.rows, source.rows);
        assert_eq!(embedded.shards.len(), source.shards.len());
        for (e, s) in embedded.shards.iter().zip(&source.shards) {
            let emb: Array2<f32> = npy::read::<f32, Ix2>(&out.join(&e.embeddings))?;
            let labels: Array1<i64> = npy::read::<i64, Ix1>(&out.join(&e.labels))?;
            let source_labels: Array1<i64> = npy::read::<i64, Ix1>(&data.join(&s.labels))?;
            assert_eq!(labels, source_labels);
            assert_eq!(emb.shape(), &[s.rows, 16]);
            for row in emb.rows() {
                let norm = row.dot(&row).sqrt();
                assert!((norm - 1.0).abs() < 1e-4, "{norm}");
            }
            // Batching (7 per pass) gives what one pass over the shard gives.
            let images: ndarray::Array4<f32> = npy::read(&data.join(&s.images))?;
            let x = tch::Tensor::from_slice(images.as_slice().unwrap()).reshape([
                s.rows as i64,
                1,
                28,
                28,
            ]);
            let direct: Vec<f32> = tch::no_grad(|| module.forward_ts(&[x]))?
                .flatten(0, -1)
                .try_into()?;
            let max_diff = emb
                .iter()
                .zip(&direct)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(max_diff < 1e-5, "{max_diff}");
        }
    }
    Ok(())
}

#[test]
fn embedder_in_memory_matches_the_stage() -> Result<()> {
    let (_, data, train) = trained();
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("embed");
    mlops_embed::run(&EmbedConfig {
        roles: Some(vec!["test".parse().unwrap()]),
        ..config(train, data, &out)
    })?;
    let stage = EmbeddingsDir::open(&out)?.read_role("test")?.0;
    let (images, _) = DataDir::open(data)?.read_role("test".parse().unwrap())?;
    let embedder = Embedder::load(&ModelDir::open(train)?, Device::Cpu)?;
    let n = images.shape()[0];
    let got = embedder.embed(images.as_slice().unwrap(), n, 5)?;
    assert_eq!(got.shape(), stage.shape());
    // Other batch boundaries than the stage's shards may round differently, by ulps at most.
    let diff = (&got - &stage).iter().fold(0f32, |m, d| m.max(d.abs()));
    assert!(diff < 1e-6, "max abs diff {diff}");
    let err = embedder.embed(&[0.0; 10], 1, 5).unwrap_err().to_string();
    assert!(err.contains("10 input values for 1 images"), "{err}");
    Ok(())
}

#[test]
fn bf16_embeddings_match_fp32_and_auto_without_bf16_is_fp32() -> Result<()> {
    let (_, data, train) = trained();
    let tmp = tempfile::tempdir()?;
    let mut written = Vec::new();
    for precision in ["fp32", "bf16"] {
        let out = tmp.path().join(precision);
        mlops_embed::run(&EmbedConfig {
            precision: precision.parse().unwrap(),
            ..config(train, data, &out)
        })?;
        let dir = EmbeddingsDir::open(&out)?;
        assert_eq!(dir.summary.precision, precision);
        written.push(dir.read_role("test")?.0);
    }
    for (a, b) in written[0].rows().into_iter().zip(written[1].rows()) {
        let cosine = a.dot(&b);
        assert!(cosine >= 0.999, "cosine {cosine}");
        assert!(
            (b.dot(&b).sqrt() - 1.0).abs() < 1e-5,
            "bf16 output is renormalised in fp32"
        );
    }
    // `auto` where the CPU has no native bf16 (forced): byte for byte the fp32 output.
    let auto = tmp.path().join("auto");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlops-embed"))
        .arg("--model")
        .arg(train)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(&auto)
        .args(["--threads", "1", "--batch-size", "7"])
        .env("MLOPS_NO_BF16", "1")
        .env("RUST_LOG", "off")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["test_embeddings_000.npy", "gallery_embeddings_000.npy"] {
        assert_eq!(
            std::fs::read(auto.join(name))?,
            std::fs::read(tmp.path().join("fp32").join(name))?
        );
    }
    Ok(())
}

fn run_bin(model: &Path, data: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec![
        std::ffi::OsStr::new("--model"),
        model.as_os_str(),
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    testing::run_stage(env!("CARGO_BIN_EXE_mlops-embed"), args)
}

fn assert_fails(model: &Path, data: &Path, extra: &[&str], expect: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let result = run_bin(model, data, &out, extra);
    testing::assert_failed_cleanly(&result, &out, &[expect]);
    testing::assert_empty_or_absent(&out);
}

/// A copy of the train directory, for tests that damage it.
fn copy_train(train: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).unwrap();
    for name in ["model.pt", "model.json", "manifest.json"] {
        std::fs::copy(train.join(name), to.join(name)).unwrap();
    }
    to.to_path_buf()
}

#[test]
fn bad_inputs_fail_cleanly() -> Result<()> {
    let (_, data, train) = trained();
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();

    let other_size = make_data(t, "data32", 32);
    assert_fails(
        train,
        &other_size,
        &[],
        "model takes images of shape [1, 28, 28]",
    );

    assert_fails(
        train,
        data,
        &["--device", "cuda:3"],
        "cuda:3 is not available",
    );
    assert_fails(&t.join("nowhere"), data, &[], "no manifest");
    assert_fails(data, data, &[], "expected the output of stage 'train'");

    // model.pt replaced by garbage: the checksum catches it...
    let tampered = copy_train(train, &t.join("tampered"));
    std::fs::write(tampered.join("model.pt"), b"not a model")?;
    assert_fails(&tampered, data, &[], "checksum mismatch");
    // ...and with a matching checksum, loading it fails cleanly.
    let mut manifest = Manifest::load(&tampered)?;
    for e in manifest.outputs.iter_mut().filter(|e| e.path == "model.pt") {
        e.sha256 = sha256_file(&tampered.join("model.pt"))?;
    }
    std::fs::write(
        tampered.join("manifest.json"),
        serde_json::to_vec(&manifest)?,
    )?;
    assert_fails(&tampered, data, &[], "cannot load TorchScript model");
    Ok(())
}
