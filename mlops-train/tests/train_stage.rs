//! Integration tests of the train stage on tiny synthetic data (`mlops_data::fixtures`).

use std::path::{Path, PathBuf};

use anyhow::Result;
use mlops_core::Manifest;
use mlops_data::fixtures::{self, IdxFixture};
use mlops_data::DataConfig;
use mlops_train::{Arch, ModelDescription, TrainConfig};
use serde_json::json;
use tch::{CModule, Tensor};

/// libtorch's random generator is process-wide, so training runs in one test process must not
/// overlap, or their initialisation and dropout draws interleave.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    TORCH_RNG
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn data_dir(tmp: &Path, per_class: usize, size: usize) -> Result<PathBuf> {
    let src = tmp.join("src");
    let out = tmp.join("data");
    let fixture = IdxFixture {
        train_per_class: per_class,
        test_per_class: 5,
        ..Default::default()
    };
    fixtures::write_idx(&src, &fixture)?;
    mlops_data::run(&DataConfig {
        sources: vec![src],
        out: out.clone(),
        image_size: [size, size],
        ..Default::default()
    })?;
    Ok(out)
}

fn tiny(data: &Path, out: &Path, arch: Arch, epochs: usize) -> TrainConfig {
    TrainConfig {
        data: data.to_path_buf(),
        out: out.to_path_buf(),
        arch,
        embedding_dim: 16,
        epochs: Some(epochs),
        batch_size: 16,
        threads: 1,
        device: "cpu".parse().unwrap(),
        // These tests are about other things, and the check would train everything twice:
        // `an_interrupted_flip_check_resumes_to_the_same_model` and real_world_folders.rs
        // test it.
        augment: mlops_train::AugmentConfig {
            flip_check_budget: 0,
            ..Default::default()
        },
        ..Default::default()
    }
}

#[test]
fn trains_exports_and_records_every_architecture() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    for arch in [Arch::Seed, Arch::Res, Arch::Wide, Arch::Slim] {
        let out = tmp.path().join(format!("train-{arch}"));
        let outcome = mlops_train::run(&tiny(&data, &out, arch, 2))?;
        assert!(outcome.finished);
        assert_eq!(outcome.metrics.len(), 2);
        let manifest = Manifest::load_stage(&out, "train")?;
        manifest.verify_outputs(&out)?;
        assert!(manifest
            .inputs
            .iter()
            .any(|e| e.path.ends_with("train_images_000.npy")));
        let lines = std::fs::read_to_string(out.join("metrics.jsonl"))?;
        assert_eq!(lines.lines().count(), 2);
        let config: ModelDescription =
            serde_json::from_slice(&std::fs::read(out.join("model.json"))?)?;
        assert_eq!(config.arch, arch.to_string());
        assert_eq!(config.torch_version, mlops_torch::LIBTORCH_VERSION);
        assert_eq!(config.input_shape, [1, 28, 28]);
        assert_eq!(config.embedding_dim, 16);
        assert_eq!(config.classes, vec!["0", "1", "2"]);
        assert!(
            config.test_time_flip,
            "flip test-time augmentation is the default"
        );
        // The training curves are a PNG listed in the manifest.
        let curves = std::fs::read(out.join("curves.png"))?;
        assert!(curves.starts_with(b"\x89PNG"));
        assert!(manifest
            .outputs
            .iter()
            .any(|e| e.path.ends_with("curves.png")));
        // The optimizer's defaults are written out, so the record survives a change of them.
        let saved: TrainConfig =
            serde_json::from_slice(&std::fs::read(out.join("train_config.json"))?)?;
        assert_eq!(saved.optimizer.lr, Some(0.05));
        assert_eq!(saved.optimizer.weight_decay, Some(5e-4));
        // The exported model stands alone: load it and embed a batch.
        let module = CModule::load(out.join("model.pt"))?;
        let e = tch::no_grad(|| {
            module.forward_ts(&[Tensor::rand([5, 1, 28, 28], tch::kind::FLOAT_CPU)])
        })?;
        assert_eq!(e.size(), vec![5, 16]);
        let norms: Vec<f32> = e
            .norm_scalaropt_dim(2.0, [1i64].as_slice(), false)
            .try_into()?;
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
    }
    Ok(())
}

#[test]
fn sub_centres_and_squeeze_excite_train_and_export_one_centre_per_class() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    let out = tmp.path().join("train");
    let mut config = tiny(&data, &out, Arch::Wide, 2);
    config.squeeze_excite = true;
    config.arcface.sub_centres = 3;
    mlops_train::run(&config)?;
    Manifest::load_stage(&out, "train")?.verify_outputs(&out)?;
    let description: ModelDescription =
        serde_json::from_slice(&std::fs::read(out.join("model.json"))?)?;
    assert_eq!(description.arch, "wide-se");
    assert_eq!(description.arcface.sub_centres, 3);
    // The index and the servers take one centre per class: the dominant sub-centre.
    let centres: ndarray::Array2<f32> = ndarray_npy::read_npy(out.join("centres.npy"))?;
    assert_eq!(centres.shape(), [3, 16]);
    for row in centres.rows() {
        let norm = row.dot(&row).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
    }
    let module = CModule::load(out.join("model.pt"))?;
    let e =
        tch::no_grad(|| module.forward_ts(&[Tensor::rand([4, 1, 28, 28], tch::kind::FLOAT_CPU)]))?;
    assert_eq!(e.size(), vec![4, 16]);
    Ok(())
}

/// Progressive resizing: the first epoch trains on 14x14 reductions (another loss than at
/// 28x28), the second at full size; the run resumes exactly and exports a 28x28 model.
#[test]
fn low_resolution_epochs_train_then_the_full_size_exports_and_resumes() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 20, 28)?;
    let low = mlops_train::LowResConfig {
        side: 14,
        epochs: 1,
    };
    let config = |out: &Path, low_res| TrainConfig {
        low_res,
        ..tiny(&data, out, Arch::Wide, 2)
    };
    let (full, reduced, resumed) = (
        tmp.path().join("full"),
        tmp.path().join("reduced"),
        tmp.path().join("resumed"),
    );
    let plain = mlops_train::run(&config(&full, None))?;
    let straight = mlops_train::run(&config(&reduced, Some(low)))?;
    assert_ne!(
        plain.metrics[0].train_loss, straight.metrics[0].train_loss,
        "the first epoch must train on other (reduced) images"
    );
    let saved: TrainConfig =
        serde_json::from_slice(&std::fs::read(reduced.join("train_config.json"))?)?;
    assert_eq!(saved.low_res, Some(low));
    let module = CModule::load(reduced.join("model.pt"))?;
    let e =
        tch::no_grad(|| module.forward_ts(&[Tensor::rand([3, 1, 28, 28], tch::kind::FLOAT_CPU)]))?;
    assert_eq!(e.size(), vec![3, 16]);

    let stopped = mlops_train::run(&TrainConfig {
        stop_after_epochs: Some(1),
        ..config(&resumed, Some(low))
    })?;
    assert!(!stopped.finished);
    let outcome = mlops_train::run(&TrainConfig {
        resume: true,
        ..config(&resumed, Some(low))
    })?;
    // (The first epoch's figures come back from JSON, so only the last one is compared.)
    assert_eq!(
        outcome.metrics[1].train_loss,
        straight.metrics[1].train_loss
    );
    assert_eq!(
        std::fs::read(resumed.join("checkpoints/last.safetensors"))?,
        std::fs::read(reduced.join("checkpoints/last.safetensors"))?
    );

    let err = mlops_train::run(&TrainConfig {
        low_res: Some(mlops_train::LowResConfig {
            side: 28,
            epochs: 1,
        }),
        ..tiny(&data, &tmp.path().join("bad"), Arch::Wide, 2)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("low_res.side 28") && err.contains("data"),
        "{err}"
    );
    Ok(())
}

/// CutMix: the mixed batches train on (another loss than plain ones), the setting is saved,
/// and an interrupted run resumes to the same weights (the batch thread's draws repeat).
#[test]
fn cutmix_trains_on_mixed_images_and_resumes_exactly() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 20, 28)?;
    let config = |out: &Path, cutmix| {
        let mut c = tiny(&data, out, Arch::Res, 2);
        c.augment.cutmix = cutmix;
        c
    };
    let (plain_dir, mixed_dir, resumed_dir) = (
        tmp.path().join("plain"),
        tmp.path().join("mixed"),
        tmp.path().join("resumed"),
    );
    let plain = mlops_train::run(&config(&plain_dir, 0.0))?;
    let mixed = mlops_train::run(&config(&mixed_dir, 0.5))?;
    assert_ne!(
        plain.metrics[0].train_loss, mixed.metrics[0].train_loss,
        "the first epoch must train on mixed images"
    );
    let saved: TrainConfig =
        serde_json::from_slice(&std::fs::read(mixed_dir.join("train_config.json"))?)?;
    assert_eq!(saved.augment.cutmix, 0.5);
    let stopped = mlops_train::run(&TrainConfig {
        stop_after_epochs: Some(1),
        ..config(&resumed_dir, 0.5)
    })?;
    assert!(!stopped.finished);
    let outcome = mlops_train::run(&TrainConfig {
        resume: true,
        ..config(&resumed_dir, 0.5)
    })?;
    assert_eq!(outcome.metrics[1].train_loss, mixed.metrics[1].train_loss);
    assert_eq!(
        std::fs::read(resumed_dir.join("checkpoints/last.safetensors"))?,
        std::fs::read(mixed_dir.join("checkpoints/last.safetensors"))?
    );
    Ok(())
}

#[test]
fn learns_the_synthetic_classes() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 100, 28)?;
    let out = tmp.path().join("train");
    let mut config = tiny(&data, &out, Arch::Res, 4);
    config.batch_size = 32;
    let outcome = mlops_train::run(&config)?;
    assert!(outcome.best_val_accuracy >= 0.9, "{:?}", outcome.metrics);
    let first = &outcome.metrics[0];
    let last = outcome.metrics.last().unwrap();
    assert!(last.train_loss < first.train_loss, "{:?}", outcome.metrics);
    Ok(())
}

#[test]
fn two_replicas_on_one_device_learn_too() -> Result<()> {
    // The data-parallel path through the whole stage (the GPU kit runs it on one GPU).
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 100, 28)?;
    let out = tmp.path().join("train");
    let config = TrainConfig {
        batch_size: 32,
        replicas_per_device: 2,
        ..tiny(&data, &out, Arch::Res, 4)
    };
    let outcome = mlops_train::run(&config)?;
    assert!(outcome.best_val_accuracy >= 0.9, "{:?}", outcome.metrics);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json"))?)?;
    assert_eq!(
        manifest["summary"]["devices"],
        serde_json::json!(["Cpu", "Cpu"])
    );
    Ok(())
}

#[test]
fn without_epochs_a_small_data_set_trains_its_steps_and_records_them() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 10, 28)?;
    let rows = mlops_core::artifact::DataDir::open(&data)?
        .role(mlops_core::artifact::Role::Train)?
        .rows;
    let out = tmp.path().join("train");
    let steps_per_epoch = rows / 16;
    let outcome = mlops_train::run(&TrainConfig {
        epochs: None,
        // Two epochs beyond the default's 40.
        min_steps: steps_per_epoch * 42,
        ..tiny(&data, &out, Arch::Res, 1)
    })?;
    assert_eq!(outcome.epochs_done, 42);
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("train_config.json"))?)?;
    assert_eq!(
        saved["epochs"],
        json!(42),
        "the saved config says what was trained"
    );
    Ok(())
}

/// Every tensor of a safetensors file, by name.
fn tensors(path: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(path).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn resume_after_interruption_matches_an_uninterrupted_run() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    let straight = tmp.path().join("straight");
    mlops_train::run(&tiny(&data, &straight, Arch::Res, 3))?;

    let resumed = tmp.path().join("resumed");
    let mut config = tiny(&data, &resumed, Arch::Res, 3);
    // A finished earlier run in the same directory must not look finished while this one runs.
    mlops_train::run(&TrainConfig {
        epochs: Some(1),
        ..config.clone()
    })?;
    assert!(resumed.join("manifest.json").exists());
    config.stop_after_epochs = Some(1);
    let stopped = mlops_train::run(&config)?;
    assert!(!stopped.finished);
    assert!(
        !resumed.join("manifest.json").exists(),
        "an unfinished run must not look finished"
    );
    config.stop_after_epochs = None;
    config.resume = true;
    let outcome = mlops_train::run(&config)?;
    assert!(outcome.finished);

    for file in [
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ] {
        let (a, b) = (tensors(&straight.join(file)), tensors(&resumed.join(file)));
        assert_eq!(a.len(), b.len());
        for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
            assert_eq!(na, nb);
            let diff = (ta.to_kind(tch::Kind::Double) - tb.to_kind(tch::Kind::Double))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff == 0.0, "{file}: {na} differs by {diff}");
        }
    }
    let metrics = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for timing in ["images_per_second", "seconds"] {
                    v.as_object_mut().unwrap().remove(timing);
                }
                v.to_string()
            })
            .collect()
    };
    assert_eq!(metrics(&straight), metrics(&resumed));
    Ok(())
}

/// With the flip check on (the default for data this small), a run stopped while its probes
/// train resumes them and ends with the uninterrupted run's model; the decided run's
/// checkpoints are the winning probe's, and the probes are cleared away.
#[test]
fn an_interrupted_flip_check_resumes_to_the_same_model() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    let checked = |out: &Path| TrainConfig {
        augment: mlops_train::AugmentConfig::default(),
        ..tiny(&data, out, Arch::Res, 3)
    };
    let straight = tmp.path().join("straight");
    assert!(mlops_train::run(&checked(&straight))?.finished);
    assert!(!straight.join("flip-check").exists());
    assert!(straight.join("checkpoints/flip-check.json").is_file());

    let resumed = tmp.path().join("resumed");
    let stopped = mlops_train::run(&TrainConfig {
        stop_after_epochs: Some(2),
        ..checked(&resumed)
    })?;
    assert!(!stopped.finished);
    assert!(!resumed.join("manifest.json").exists());
    assert!(resumed
        .join("flip-check/flip/checkpoints/state.json")
        .is_file());
    let outcome = mlops_train::run(&TrainConfig {
        resume: true,
        ..checked(&resumed)
    })?;
    assert!(outcome.finished);
    for file in [
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
        "checkpoints/flip-check.json",
    ] {
        assert_eq!(
            std::fs::read(straight.join(file))?,
            std::fs::read(resumed.join(file))?,
            "{file}"
        );
    }
    let saved = |dir: &Path| -> Result<TrainConfig> {
        Ok(serde_json::from_slice(&std::fs::read(
            dir.join("train_config.json"),
        )?)?)
    };
    assert_eq!(
        saved(&straight)?.augment.hflip,
        saved(&resumed)?.augment.hflip
    );
    // A finished run resumed again (to export anew) trains nothing, probes included.
    let epochs = std::sync::atomic::AtomicUsize::new(0);
    let count_epochs = |event: mlops_core::progress::Event<'_>| {
        if matches!(event, mlops_core::progress::Event::Start { what, .. } if what.starts_with("epoch "))
        {
            epochs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    };
    let again = mlops_train::run_with(
        &TrainConfig {
            resume: true,
            ..checked(&resumed)
        },
        &count_epochs,
    )?;
    assert!(again.finished);
    assert_eq!(epochs.into_inner(), 0);
    assert!(!resumed.join("flip-check").exists());
    Ok(())
}

fn assert_fails(data: &Path, out: &Path, extra: &[&str], expect: &str) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--data".as_ref(),
        data.as_os_str(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    args.extend(
        [
            "--batch-size",
            "16",
            "--threads",
            "1",
            "--set",
            "augment.flip_check_budget=0",
        ]
        .iter()
        .map(std::ffi::OsStr::new),
    );
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    let result = mlops_core::testing::run_stage(env!("CARGO_BIN_EXE_mlops-train"), &args);
    mlops_core::testing::assert_failed_cleanly(&result, out, &[expect]);
    assert!(!out.join("model.pt").exists());
}

#[test]
fn bad_inputs_fail_cleanly() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let data = data_dir(t, 20, 28)?;

    let empty = t.join("no-data");
    std::fs::create_dir(&empty)?;
    assert_fails(&empty, &t.join("o1"), &[], "no manifest");

    assert_fails(
        &data,
        &t.join("o2"),
        &["--device", "cuda:3"],
        "cuda:3 is not available",
    );
    assert_fails(
        &data,
        &t.join("o2b"),
        &["--set", "replicas_per_device=0"],
        "replicas_per_device must be at least 1",
    );

    // A checkpoint that is not a safetensors file.
    let out = t.join("o3");
    mlops_train::run(&TrainConfig {
        stop_after_epochs: Some(1),
        ..tiny(&data, &out, Arch::Seed, 2)
    })?;
    std::fs::write(out.join("checkpoints/last.safetensors"), b"garbage")?;
    assert_fails(
        &data,
        &out,
        &[
            "--arch",
            "seed",
            "--epochs",
            "2",
            "--embedding-dim",
            "16",
            "--resume",
        ],
        "corrupt or incompatible checkpoint",
    );
    // Resuming with other settings is refused too.
    assert_fails(
        &data,
        &out,
        &["--arch", "res", "--epochs", "2", "--resume"],
        "other settings",
    );
    assert_fails(
        &data,
        &t.join("o4"),
        &["--resume"],
        "no checkpoint to resume from",
    );

    // Images too small for the architecture.
    let small_tmp = t.join("small");
    let small = data_dir(&small_tmp, 20, 6)?;
    assert_fails(&small, &t.join("o5"), &[], "at least 8x8");

    // An input shape that does not match the data.
    let cfg = t.join("train.toml");
    std::fs::write(&cfg, "input_shape = [1, 32, 32]\n")?;
    assert_fails(
        &data,
        &t.join("o6"),
        &["--config", cfg.to_str().unwrap()],
        "does not match the data",
    );

    // A shard changed after the data stage wrote it.
    let summary = mlops_core::artifact::DataDir::open(&data)?.summary;
    let shard = &summary.roles["val"].shards[0].labels;
    let mut bytes = std::fs::read(data.join(shard))?;
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(data.join(shard), bytes)?;
    assert_fails(&data, &t.join("o7"), &[], "checksum mismatch");

    // An empty role.
    let mut manifest = Manifest::load(&data)?;
    manifest.summary["roles"]["train"]["rows"] = serde_json::json!(0);
    std::fs::write(data.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    assert_fails(&data, &t.join("o8"), &[], "train role is empty");
    Ok(())
}

/// Failures inside libtorch (a label outside the classes) and a checkpoint whose optimizer
/// step is empty end as errors naming the problem, never as panics.
#[test]
fn libtorch_failures_and_bad_checkpoints_fail_cleanly() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let data = data_dir(t, 20, 28)?;

    let out = t.join("empty-step");
    mlops_train::run(&TrainConfig {
        stop_after_epochs: Some(1),
        ..tiny(&data, &out, Arch::Seed, 2)
    })?;
    let last = out.join("checkpoints/last.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&last)?
        .into_iter()
        .map(|(name, t)| {
            let t = if name == "opt.step" {
                Tensor::from_slice::<i64>(&[])
            } else {
                t
            };
            (name, t)
        })
        .collect();
    Tensor::write_safetensors(&tensors, &last)?;
    let resume = [
        "--arch",
        "seed",
        "--epochs",
        "2",
        "--embedding-dim",
        "16",
        "--resume",
    ];
    assert_fails(&data, &out, &resume, "opt.step holds 0 values");

    // A label outside the classes, with its checksum updated as a buggy producer would: the
    // ArcFace head's one-hot scatter fails inside libtorch.
    let summary = mlops_core::artifact::DataDir::open(&data)?.summary;
    let shard = summary.roles["train"].shards[0].labels.clone();
    let mut labels: ndarray::Array1<i64> = mlops_core::npy::read(&data.join(&shard))?;
    labels.fill(99);
    ndarray_npy::write_npy(data.join(&shard), &labels)?;
    let mut manifest = Manifest::load(&data)?;
    let sha = mlops_core::sha256_file(&data.join(&shard))?;
    for e in manifest.outputs.iter_mut().filter(|e| e.path == shard) {
        e.sha256 = sha.clone();
    }
    std::fs::write(data.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    assert_fails(
        &data,
        &t.join("bad-label"),
        &[],
        "libtorch failed while running a training step",
    );
    Ok(())
}

/// Both precisions train and say which they used; `auto` on a CPU without native bf16 (forced
/// here) is fp32 exactly.
#[test]
fn precision_is_recorded_and_auto_without_bf16_is_fp32() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    let summary = |dir: &Path| -> Result<mlops_core::artifact::TrainSummary> {
        Ok(mlops_core::artifact::ModelDir::open(dir)?.summary)
    };
    for precision in ["fp32", "bf16"] {
        let out = tmp.path().join(precision);
        let outcome = mlops_train::run(&TrainConfig {
            precision: precision.parse().unwrap(),
            ..tiny(&data, &out, Arch::Res, 2)
        })?;
        assert!(
            outcome.finished && outcome.best_val_accuracy > 0.5,
            "{precision}"
        );
        let s = summary(&out)?;
        assert_eq!(s.precision, precision);
        assert!(!s.cpu.is_empty());
    }
    // `auto` with the detection forced off, through the binary: the same weights as fp32.
    let auto = tmp.path().join("auto");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlops-train"))
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&auto)
        .args(["--arch", "res", "--embedding-dim", "16", "--epochs", "2"])
        .args(["--batch-size", "16", "--threads", "1", "--device", "cpu"])
        // A negative switch must reach the config (it once did not: `false` read as unset).
        .arg("--no-test-time-flip")
        .args(["--set", "augment.flip_check_budget=0"])
        .env("MLOPS_NO_BF16", "1")
        .env("RUST_LOG", "off")
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(summary(&auto)?.precision, "fp32");
    let model = mlops_core::artifact::ModelDir::open(&auto)?;
    assert!(!model.description()?.test_time_flip, "--no-test-time-flip");
    let best = "checkpoints/best.safetensors";
    assert_eq!(
        std::fs::read(auto.join(best))?,
        std::fs::read(tmp.path().join("fp32").join(best))?
    );
    Ok(())
}

/// Mean cosine between two models' embeddings of the same images (both return L2-normalised
/// rows).
fn agreement(a: &Path, b: &Path, images: &Tensor) -> f64 {
    let embed = |dir: &Path| {
        let m = CModule::load(dir.join("model.pt")).unwrap();
        tch::no_grad(|| m.forward_ts(&[images.shallow_clone()]).unwrap())
    };
    (embed(a) * embed(b))
        .sum_dim_intlist([1i64].as_slice(), false, tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[])
}

#[test]
fn a_student_distils_its_teacher_and_records_it() -> Result<()> {
    let _serial = serial();
    let tmp = tempfile::tempdir()?;
    let data = data_dir(tmp.path(), 40, 28)?;
    let teacher = tmp.path().join("teacher");
    mlops_train::run(&tiny(&data, &teacher, Arch::Res, 4))?;
    let student = |name: &str, weight: f64| -> Result<PathBuf> {
        let out = tmp.path().join(name);
        mlops_train::run(&TrainConfig {
            teacher: Some(mlops_train::TeacherConfig {
                model: teacher.clone(),
                weight,
            }),
            ..tiny(&data, &out, Arch::Seed, 4)
        })?;
        Ok(out)
    };
    let (taught, untaught) = (student("taught", 20.0)?, student("untaught", 0.0)?);
    let (images, _) =
        mlops_core::artifact::DataDir::open(&data)?.read_role(mlops_core::artifact::Role::Val)?;
    let images = Tensor::from_slice(images.as_slice().unwrap()).reshape([-1, 1, 28, 28]);
    let (near, far) = (
        agreement(&taught, &teacher, &images),
        agreement(&untaught, &teacher, &images),
    );
    // Without the term the student's embedding space is its own (any rotation of it does as
    // well); with it, the student's embeddings point where the teacher's do.
    assert!(
        near > 0.6 && near > far + 0.3,
        "taught {near:.3}, untaught {far:.3}"
    );

    let description: ModelDescription =
        serde_json::from_str(&std::fs::read_to_string(taught.join("model.json"))?)?;
    let lineage = description
        .teacher
        .expect("the student records its teacher");
    let teacher_sha = mlops_core::sha256_file(&teacher.join("model.pt"))?;
    assert_eq!(
        (lineage.model_sha256.as_str(), lineage.arch.as_str()),
        (teacher_sha.as_str(), "res")
    );
    let manifest = Manifest::load(&taught)?;
    assert!(manifest.inputs.iter().any(|i| i.sha256 == teacher_sha));

    // A teacher that cannot teach this student is refused before training, naming it.
    let wide_dim = tmp.path().join("wrong");
    let err = mlops_train::run(&TrainConfig {
        embedding_dim: 32,
        teacher: Some(mlops_train::TeacherConfig {
            model: teacher.clone(),
            weight: 1.0,
        }),
        ..tiny(&data, &wide_dim, Arch::Seed, 1)
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("teacher") && err.contains("embedding_dim"),
        "{err}"
    );
    assert!(!wide_dim.join("model.pt").exists());

    // Through the binary, a teacher makes the student recipe the defaults, and what the user
    // sets still wins: `--teacher` alone trains `slim` without flip averaging for 120 epochs
    // (stopped after one here; the checkpoint's fingerprint is the run's config).
    let cli = |out: &Path, extra: &[&str]| -> Result<serde_json::Value> {
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_mlops-train"))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(out)
            .arg("--teacher")
            .arg(&teacher)
            .args([
                "--embedding-dim",
                "16",
                "--batch-size",
                "16",
                "--threads",
                "1",
            ])
            .args([
                "--stop-after-epochs",
                "1",
                "--set",
                "augment.flip_check_budget=0",
            ])
            .args(extra)
            .env("RUST_LOG", "off")
            .status()?;
        anyhow::ensure!(status.success(), "mlops-train {extra:?} failed");
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("checkpoints/state.json"))?)?;
        Ok(state["fingerprint"].clone())
    };
    let alone = cli(&tmp.path().join("cli-student"), &[])?;
    assert_eq!(
        (
            &alone["arch"],
            &alone["epochs"],
            &alone["teacher"]["weight"]
        ),
        (&json!("slim"), &json!(120), &json!(10.0))
    );
    let told = cli(
        &tmp.path().join("cli-told"),
        &["--arch", "res", "--set", "epochs=3"],
    )?;
    assert_eq!((&told["arch"], &told["epochs"]), (&json!("res"), &json!(3)));
    Ok(())
}
