//! The gate compares like with like: a retrained model is judged against the deployed one on
//! the same test images (the embed stage embeds them with the deployed model too; eval
//! classifies them with the deployed index and classifier) with McNemar's exact test. On a
//! small slice of Fashion-MNIST, a deliberately worse recipe is refused and a better one passes,
//! with the figures in `decision.json`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use anyhow::{ensure, Context, Result};
use serde_json::Value;

mod common;

const FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

/// The first `per_class` images of each class of `split` (`train` or `t10k`) as IDX files.
fn write_slice(src: &Path, out: &Path, split: &str, per_class: usize) -> Result<()> {
    let images = mlops_data::idx::read_idx(
        &common::find_idx(src, &format!("{split}-images-idx3-ubyte"))?,
        3,
    )?;
    let labels = mlops_data::idx::read_idx(
        &common::find_idx(src, &format!("{split}-labels-idx1-ubyte"))?,
        1,
    )?;
    let frame = images.dims[1] * images.dims[2];
    let (mut pixels, mut kept) = (Vec::new(), Vec::new());
    let mut counts = [0usize; 10];
    for (i, &label) in labels.data.iter().enumerate() {
        let class = label as usize;
        if class < 10 && counts[class] < per_class {
            counts[class] += 1;
            pixels.extend_from_slice(&images.data[i * frame..(i + 1) * frame]);
            kept.push(label);
        }
    }
    let n = kept.len() as u32;
    std::fs::create_dir_all(out)?;
    let mut f = std::fs::File::create(out.join(format!("{split}-images-idx3-ubyte")))?;
    f.write_all(&[0, 0, 8, 3])?;
    for d in [n, images.dims[1] as u32, images.dims[2] as u32] {
        f.write_all(&d.to_be_bytes())?;
    }
    f.write_all(&pixels)?;
    let mut f = std::fs::File::create(out.join(format!("{split}-labels-idx1-ubyte")))?;
    f.write_all(&[0, 0, 8, 1])?;
    f.write_all(&n.to_be_bytes())?;
    f.write_all(&kept)?;
    Ok(())
}

fn decision(t: &Path, run: &str) -> Result<Value> {
    Ok(serde_json::from_slice(&std::fs::read(
        t.join("runs").join(run).join("eval/decision.json"),
    )?)?)
}

#[test]
fn a_worse_retrain_is_refused_and_a_better_one_passes_on_the_same_images() -> Result<()> {
    if common::release_binaries().is_none() {
        return Ok(());
    }
    let how = "Debian's dataset-fashion-mnist; cargo xtask setup installs it";
    let found = Path::new(FASHION_MNIST).is_dir().then_some(());
    if mlops_core::testing::prerequisite("Fashion-MNIST", found, how).is_none() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let t = tmp.path();
    let src = t.join("fmnist-slice");
    write_slice(Path::new(FASHION_MNIST), &src, "train", 200)?;
    write_slice(Path::new(FASHION_MNIST), &src, "t10k", 60)?;
    let registry = t.join("registry");
    let run = |name: &str, sets: &[&str]| -> Result<Value> {
        let mut cmd = common::pipeline_in(t, name, &src, &registry);
        for set in [
            "train.arch=\"res\"",
            "train.embedding_dim=32",
            "train.ema=0.0",
            "train.test_time_flip=false",
            "train.augment.max_shift=0",
            "train.augment.hflip=false",
            "eval.gate.min_accuracy=0.0",
        ]
        .iter()
        .chain(sets)
        {
            cmd.args(["--set", set]);
        }
        let out = cmd.stderr(Stdio::piped()).output()?;
        ensure!(
            out.status.success(),
            "run {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        common::record(t, name)
    };
    let first = run("first", &["train.epochs=4"])?;
    assert_eq!(first["registered_version"], 1, "{first}");

    // One epoch at a hundredth of the learning rate: clearly worse on the same images.
    let worse = run("worse", &["train.epochs=1", "train.optimizer.lr=0.001"])?;
    let d = decision(t, "worse")?;
    assert_eq!(worse["decision"], "reject", "{d}");
    let paired = &d["paired"];
    assert_eq!(paired["images"], 600, "{d}");
    assert!(
        paired["deployed_only"].as_u64() > paired["candidate_only"].as_u64(),
        "{d}"
    );
    assert!(paired["p_value"].as_f64().context("p")? < 0.05, "{d}");
    assert!(
        d["reasons"]
            .to_string()
            .contains("worse than the deployed model"),
        "{d}"
    );

    // Longer training of the same recipe: not worse on the same images, so it passes.
    let better = run("better", &["train.epochs=8"])?;
    let d = decision(t, "better")?;
    assert_eq!(better["decision"], "deploy", "{d}");
    assert_eq!(better["registered_version"], 2, "{better}");
    assert!(d["paired"]["p_value"].as_f64().is_some(), "{d}");
    assert_eq!(
        d["paired"]["deployed_accuracy"], first["metrics"]["accuracy"],
        "the deployed model's accuracy on the shared images is its own eval's: {d}"
    );
    Ok(())
}
