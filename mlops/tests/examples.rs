//! Runs the facade's examples as a user would (the built example binaries, tiny fixtures) and
//! checks what they print and write.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use mlops::prelude::*;

/// The example binaries cargo built beside this test (`target/<profile>/examples`). `cargo
/// test -p mlops` builds them with the tests; a `--test` filter alone does not.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir.join("examples").join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test -p mlops` (it builds the examples)",
        path.display()
    );
    path
}

/// Runs an example to success and returns its stdout.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn custom_stage_writes_a_verified_directory_of_its_own() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let (embed, out) = (tmp.path().join("embed"), tmp.path().join("spread"));
    mlops::core::testing::write_clusters(&embed, 8, 20, 3, &["gallery"], 0.2, 5)?;
    let stdout = run(Command::new(example("custom_stage")).arg(&embed).arg(&out))?;
    let manifest = Manifest::load_stage(&out, "class_spread")?;
    manifest.verify_outputs(&out)?;
    // It recorded what it read, with the checksums the embed stage wrote.
    let embed_manifest = Manifest::load(&embed)?;
    for input in manifest.inputs.iter().filter(|i| i.path.ends_with(".npy")) {
        let name = Path::new(&input.path)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap();
        assert_eq!(
            embed_manifest.output(name).map(|e| &e.sha256),
            Some(&input.sha256)
        );
    }
    let centroids: ndarray::Array2<f32> = mlops::core::npy::read(&out.join("centroids.npy"))?;
    assert_eq!(centroids.dim(), (3, 8));
    assert_eq!(
        stdout.lines().filter(|l| l.contains("mean cosine")).count(),
        3
    );
    // Clusters this tight gather well above chance around their centroid.
    let spread: Vec<f64> = manifest.summary["mean_cosine_to_centroid"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(spread.iter().all(|&s| s > 0.8), "{spread:?}");
    Ok(())
}

#[test]
fn quickstart_trains_and_classifies_a_new_image() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("images");
    let stdout = run(Command::new(example("quickstart"))
        .arg(&folder)
        .env("QUICKSTART_OUT", tmp.path().join("out")))?;
    for stage in ["data:", "validate:", "train:", "index:"] {
        assert!(stdout.contains(stage), "{stage} missing from:\n{stdout}");
    }
    // The new image is drawn from the third class; four epochs on this set learn it.
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.contains("new.png: low ("), "{stdout}");
    for dir in ["data", "validate", "train", "embed", "index"] {
        Manifest::load(&tmp.path().join("out").join(dir))?
            .verify_outputs(&tmp.path().join("out").join(dir))?;
    }
    Ok(())
}

/// A registry with one version of a fixture model (a seeded traced network, the stages after
/// training run for real), as `mlops-deploy register` makes it.
fn registry_with_fixture_model(t: &Path) -> Result<PathBuf> {
    use mlops_data::fixtures::{self, IdxFixture};
    fixtures::write_idx(&t.join("src"), &IdxFixture::default())?;
    mlops::data::run(&DataConfig {
        sources: vec![t.join("src")],
        out: t.join("data"),
        ..Default::default()
    })?;
    mlops_embed::testing::fixture_model(&t.join("train"), &t.join("data"))?;
    mlops::embed::run(&EmbedConfig {
        model: t.join("train"),
        data: t.join("data"),
        out: t.join("embed"),
        ..Default::default()
    })?;
    mlops::index::run(&IndexConfig {
        embeddings: t.join("embed"),
        out: t.join("index"),
        ..Default::default()
    })?;
    mlops::eval::run(&EvalConfig {
        index: t.join("index"),
        embeddings: t.join("embed"),
        out: t.join("eval"),
        gate: mlops::eval::GatePolicy {
            min_accuracy: 0.0,
            ..Default::default()
        },
        ..Default::default()
    })?;
    mlops::deploy::registry::register(&mlops::deploy::registry::RegisterConfig {
        model: t.join("train"),
        index: t.join("index"),
        eval: t.join("eval"),
        registry: t.join("registry"),
        name: "fixture".into(),
        promote: true,
        ..Default::default()
    })?;
    Ok(t.join("registry"))
}

#[test]
fn classify_answers_as_the_registered_model_does() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let registry = registry_with_fixture_model(tmp.path())?;
    let mut images = Vec::new();
    for (i, value) in [30u8, 140, 250].into_iter().enumerate() {
        let path = tmp.path().join(format!("img{i}.png"));
        image::GrayImage::from_fn(28, 28, |x, y| image::Luma([value ^ ((x * y) as u8)]))
            .save(&path)?;
        images.push(path);
    }
    let stdout = run(Command::new(example("classify"))
        .arg(&registry)
        .arg("fixture")
        .args(&images))?;
    let model = RegisteredModel::open(&registry, "fixture", None)?;
    assert!(stdout.starts_with("fixture version 1\n"), "{stdout}");
    let bytes: Vec<Vec<u8>> = images.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    let inputs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    for (line, prediction) in stdout.lines().skip(1).zip(model.classify(&inputs)?) {
        let label = model.label(prediction.class).unwrap();
        assert!(
            line.contains(&format!(".png: {label} (")),
            "{line} vs {label}"
        );
    }
    assert_eq!(stdout.lines().count(), 1 + images.len());
    // A version that does not exist is an error naming it, not a panic.
    let out = Command::new(example("classify"))
        .arg(&registry)
        .arg("fixture:9")
        .args(&images)
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains('9'),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
