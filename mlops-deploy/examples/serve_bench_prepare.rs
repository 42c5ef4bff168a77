//! Prepares `cargo xtask bench-serve`: registers a pipeline run twice (versions 1 and 2, for the
//! swap-under-load check), writes every test image as the PNG it was ingested from, and
//! measures the in-process rate of what a request costs the server beyond HTTP: decode and
//! preprocess, embed in batches of 32, search and vote.
//!
//! `serve_bench_prepare RUN_DIR OUT_DIR [PRECISION]` prints one JSON line.

use std::time::Instant;

use anyhow::{Context, Result};
use mlops_core::artifact::{DataDir, EvalDir, Role, VersionDir};
use mlops_deploy::registry::{self, RegisterConfig};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let run = std::path::PathBuf::from(args.next().context("usage: RUN_DIR OUT_DIR")?);
    let out = std::path::PathBuf::from(args.next().context("usage: RUN_DIR OUT_DIR")?);
    let precision: mlops_torch::Precision = args
        .next()
        .map_or(Ok(mlops_torch::Precision::Fp32), |p| p.parse())
        .map_err(anyhow::Error::msg)?;
    let reg = out.join("registry");
    for promote in [true, false] {
        registry::register(&RegisterConfig {
            model: run.join("train"),
            index: run.join("index"),
            eval: run.join("eval"),
            registry: reg.clone(),
            name: "fashion-mnist".into(),
            promote,
            force: false,
        })?;
    }
    let data = DataDir::open(&run.join("data"))?;
    let [_, h, w] = data.summary.image_shape;
    anyhow::ensure!(
        data.summary.normalization.is_none(),
        "the benchmark writes PNGs from unnormalised shards"
    );
    let (images, labels) = data.read_role(Role::Test)?;
    let images_dir = out.join("images");
    std::fs::create_dir_all(&images_dir)?;
    let mut pngs = Vec::new();
    for (i, pixels) in images.as_slice().unwrap().chunks(h * w).enumerate() {
        let bytes: Vec<u8> = pixels.iter().map(|v| (v * 255.0).round() as u8).collect();
        let img = image::GrayImage::from_raw(w as u32, h as u32, bytes).context("image size")?;
        let mut png = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
        std::fs::write(images_dir.join(format!("{i:06}.png")), &png)?;
        pngs.push(png);
    }
    std::fs::write(
        out.join("labels.json"),
        serde_json::to_vec(&labels.to_vec())?,
    )?;

    // In process, as the server's inference thread does it, batches of 32.
    let version = VersionDir::open_verified(&reg, "fashion-mnist", 1)?;
    let description = version.description()?;
    mlops_torch::set_threads(0);
    let embedder = mlops_embed::Embedder::load_file(
        &version.model_path()?,
        description.clone(),
        tch::Device::Cpu,
    )?
    .with_precision(precision);
    let classifier = mlops_index::Classifier::new(
        mlops_index::load_dir(version.index_dir())?,
        version.summary.classifier,
    );
    let pre =
        mlops_core::preprocess::Preprocess::new(description.input_shape, description.normalization);
    let started = Instant::now();
    let mut correct = 0usize;
    for (chunk, truth) in pngs.chunks(32).zip(labels.as_slice().unwrap().chunks(32)) {
        let mut pixels = Vec::with_capacity(chunk.len() * h * w);
        for png in chunk {
            pixels.extend(pre.image_bytes(png)?);
        }
        let emb = embedder.embed(&pixels, chunk.len(), chunk.len())?;
        let predictions = classifier.classify(emb.as_slice().unwrap())?;
        correct += predictions
            .iter()
            .zip(truth)
            .filter(|(p, &t)| p.class as i64 == t)
            .count();
    }
    let seconds = started.elapsed().as_secs_f64();
    let eval = EvalDir::open(&run.join("eval"))?;
    println!(
        "{}",
        serde_json::json!({
            "images": pngs.len(),
            "inprocess_images_per_second": pngs.len() as f64 / seconds,
            "inprocess_accuracy": correct as f64 / pngs.len() as f64,
            "eval_accuracy": eval.summary.metrics.accuracy,
            "threads": tch::get_num_threads(),
            "precision": embedder.precision().to_string(),
        })
    );
    Ok(())
}
