//! Integration tests: a good data directory passes; each kind of damage fails its named check,
//! exits 1 through the binary and leaves no manifest.

use std::path::{Path, PathBuf};

use anyhow::Result;
use mlops_core::{sha256_file, Manifest};
use mlops_data::fixtures::{self, IdxFixture};
use mlops_data::{DataConfig, Role};
use mlops_validate::{validate, ValidateConfig};
use ndarray::{Array1, Array4};
use ndarray_npy::write_npy;

/// A fresh data-stage output from the synthetic IDX fixture.
fn data_dir(tmp: &Path, fixture: IdxFixture, remove_duplicates: bool) -> Result<PathBuf> {
    let src = tmp.join("src");
    let out = tmp.join("data");
    fixtures::write_idx(&src, &fixture)?;
    mlops_data::run(&DataConfig {
        sources: vec![src],
        out: out.clone(),
        npy_interval: 40,
        remove_duplicates,
        ..Default::default()
    })?;
    Ok(out)
}

fn first_shard(data: &Path, role: Role) -> (String, String) {
    let summary = mlops_core::artifact::DataDir::open(data).unwrap().summary;
    let pair = &summary.role(role).unwrap().shards[0];
    (pair.images.clone(), pair.labels.clone())
}

/// Replaces a file and updates its checksum in the manifest, as a buggy producer would, so that
/// only the content checks can catch it.
fn replace_and_rehash(data: &Path, name: &str, write: impl FnOnce(&Path)) {
    let path = data.join(name);
    write(&path);
    let mut manifest = Manifest::load(data).unwrap();
    let sha = sha256_file(&path).unwrap();
    for e in manifest.outputs.iter_mut().filter(|e| e.path == name) {
        e.sha256 = sha.clone();
    }
    std::fs::write(
        data.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

fn failed(data: &Path, config: &ValidateConfig) -> Vec<String> {
    let report = validate(data, config);
    assert!(!report.passed);
    report.failures().map(|c| c.name.clone()).collect()
}

/// Runs the binary: asserts exit 1, stderr naming `check` and `file`, report kept, no manifest.
fn assert_binary_fails(data: &Path, check: &str, file: &str) {
    let out = data.parent().unwrap().join("validate");
    let result = mlops_core::testing::run_stage(
        env!("CARGO_BIN_EXE_mlops-validate"),
        [
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
    );
    mlops_core::testing::assert_failed_cleanly(&result, &out, &[check, file]);
    assert!(out.join("validation.json").exists());
}

#[test]
fn sound_data_passes_every_check() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let out = tmp.path().join("validate");
    let report = mlops_validate::run(&ValidateConfig {
        data: data.clone(),
        out: out.clone(),
        ..Default::default()
    })?;
    assert!(report.passed);
    let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "manifest",
            "checksums",
            "shard_pairing",
            "dtype_shape",
            "value_range",
            "label_range",
            "class_coverage",
            "leakage",
            "totals"
        ]
    );
    let manifest = Manifest::load_stage(&out, "validate")?;
    assert!(manifest
        .inputs
        .iter()
        .any(|e| e.path.ends_with("train_images_000.npy")));
    manifest.verify_outputs(&out)?;
    assert!(mlops_validate::is_validated(&out));
    Ok(())
}

#[test]
fn nan_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (images, _) = first_shard(&data, Role::Train);
    replace_and_rehash(&data, &images, |p| {
        let mut a: Array4<f32> = mlops_core::npy::read(p).unwrap();
        a[[3, 0, 5, 5]] = f32::NAN;
        write_npy(p, &a).unwrap();
    });
    assert_eq!(failed(&data, &ValidateConfig::default()), ["value_range"]);
    assert_binary_fails(&data, "value_range", &images);
    Ok(())
}

#[test]
fn out_of_range_pixels_are_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (images, _) = first_shard(&data, Role::Gallery);
    replace_and_rehash(&data, &images, |p| {
        let a: Array4<f32> = mlops_core::npy::read(p).unwrap();
        write_npy(p, &(a * 255.0)).unwrap();
    });
    assert_eq!(failed(&data, &ValidateConfig::default()), ["value_range"]);
    Ok(())
}

#[test]
fn wrong_dtype_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (images, _) = first_shard(&data, Role::Val);
    replace_and_rehash(&data, &images, |p| {
        let a: Array4<f32> = mlops_core::npy::read(p).unwrap();
        write_npy(p, &a.mapv(f64::from)).unwrap();
    });
    let report = validate(&data, &ValidateConfig::default());
    let check = report.check("dtype_shape").unwrap();
    assert!(!check.passed);
    assert!(
        check.findings[0].message.contains("float64"),
        "{:?}",
        check.findings
    );
    assert_binary_fails(&data, "dtype_shape", &images);
    Ok(())
}

#[test]
fn wrong_shape_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (images, _) = first_shard(&data, Role::Test);
    replace_and_rehash(&data, &images, |p| {
        let a: Array4<f32> = mlops_core::npy::read(p).unwrap();
        let n = a.shape()[0];
        write_npy(p, &Array4::<f32>::zeros((n, 1, 27, 28))).unwrap();
    });
    assert_eq!(failed(&data, &ValidateConfig::default()), ["dtype_shape"]);
    assert_binary_fails(&data, "dtype_shape", &images);
    Ok(())
}

#[test]
fn labels_out_of_range_are_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (_, labels) = first_shard(&data, Role::Train);
    replace_and_rehash(&data, &labels, |p| {
        let mut a: Array1<i64> = mlops_core::npy::read(p).unwrap();
        a[0] = 99;
        a[1] = -1;
        write_npy(p, &a).unwrap();
    });
    let failures = failed(&data, &ValidateConfig::default());
    assert!(
        failures.contains(&"label_range".to_string()),
        "{failures:?}"
    );
    assert_binary_fails(&data, "label_range", &labels);
    Ok(())
}

#[test]
fn missing_shard_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (_, labels) = first_shard(&data, Role::Train);
    std::fs::remove_file(data.join(&labels))?;
    let failures = failed(&data, &ValidateConfig::default());
    assert!(
        failures.contains(&"shard_pairing".to_string()),
        "{failures:?}"
    );
    assert!(failures.contains(&"checksums".to_string()), "{failures:?}");
    assert_binary_fails(&data, "shard_pairing", &labels);
    Ok(())
}

#[test]
fn tampered_shard_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let (images, _) = first_shard(&data, Role::Train);
    let mut a: Array4<f32> = mlops_core::npy::read(&data.join(&images))?;
    a[[0, 0, 0, 0]] = 0.5;
    write_npy(data.join(&images), &a)?;
    assert_eq!(failed(&data, &ValidateConfig::default()), ["checksums"]);
    assert_binary_fails(&data, "checksums", &images);
    Ok(())
}

#[test]
fn injected_shard_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    write_npy(
        data.join("train_images_099.npy"),
        &Array4::<f32>::zeros((1, 1, 28, 28)),
    )?;
    assert_eq!(failed(&data, &ValidateConfig::default()), ["shard_pairing"]);
    Ok(())
}

#[test]
fn leakage_between_train_and_test_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let fixture = IdxFixture {
        duplicates: 30,
        ..Default::default()
    };
    let data = data_dir(tmp.path(), fixture, false)?;
    let report = validate(&data, &ValidateConfig::default());
    let leakage = report.check("leakage").unwrap();
    assert!(!leakage.passed);
    assert_eq!(leakage.problems, 30);
    assert!(leakage.findings[0]
        .message
        .contains("identical to test_images_000.npy"));
    assert_binary_fails(&data, "leakage", "identical");
    Ok(())
}

#[test]
fn too_few_images_per_class_is_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let config = ValidateConfig {
        min_per_class: 5,
        ..Default::default()
    };
    assert_eq!(failed(&data, &config), ["class_coverage"]);
    Ok(())
}

#[test]
fn tampered_totals_are_caught() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), IdxFixture::default(), true)?;
    let mut manifest = Manifest::load(&data)?;
    manifest.summary["roles"]["val"]["class_counts"][0] = serde_json::json!(999);
    std::fs::write(
        data.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )?;
    assert_eq!(failed(&data, &ValidateConfig::default()), ["totals"]);
    Ok(())
}

#[test]
fn directory_without_manifest_fails() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = tmp.path().join("data");
    std::fs::create_dir(&data)?;
    assert_eq!(failed(&data, &ValidateConfig::default()), ["manifest"]);
    assert_binary_fails(&data, "manifest", "no manifest");
    Ok(())
}
