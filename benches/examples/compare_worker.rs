//! Our side of `cargo xtask bench --compare`: one measurement per process, one JSON line on
//! stdout. `scripts/bench_reference.py` is the Python side with the same commands and output.
//!
//! ```text
//! compare_worker train  ARCH BATCH STEPS PRECISION
//! compare_worker embed  RUN_DIR BATCH PRECISION OUT.npy
//! compare_worker search RUN_DIR FACTORY K OUT.npy
//! ```
//! Threads: libtorch's and OpenMP's come from `OMP_NUM_THREADS`, set by the caller for both
//! sides alike.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use faiss::Index;
use mlops_core::artifact::{DataDir, EmbeddingsDir, Metric, ModelDir, Role};
use mlops_torch::Precision;
use mlops_train::{Arch, TrainConfig};
use serde_json::json;
use tch::Device;

#[link(name = "gomp")]
extern "C" {
    fn omp_get_max_threads() -> i32;
}

fn threads() -> usize {
    std::env::var("OMP_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Training steps of the stage's default recipe on a fixed random batch (see
/// [`mlops_train::timing::step_throughput`]).
fn train(arch: &str, batch: i64, steps: usize, precision: &str) -> Result<serde_json::Value> {
    // `model.json` names a width other than the architecture's own as `slim-w15`.
    let (name, width) = match arch.split_once("-w") {
        Some((name, w)) => (name, Some(w.parse()?)),
        None => (arch, None),
    };
    let arch: Arch = serde_json::from_value(json!(name))?;
    let precision: Precision = precision.parse().map_err(anyhow::Error::msg)?;
    let config = TrainConfig {
        arch,
        width,
        ..Default::default()
    };
    let t = mlops_train::timing::step_throughput(&config, Device::Cpu, batch, 3, steps, precision)?;
    Ok(json!({"img_per_s": t.images_per_second, "seconds": t.seconds}))
}

/// The test images of a run through its `model.pt`, as the embed stage computes them.
fn embed(run: &Path, batch: usize, precision: &str, out: &Path) -> Result<serde_json::Value> {
    let precision: Precision = precision.parse().map_err(anyhow::Error::msg)?;
    let model = ModelDir::open(&run.join("train"))?;
    let embedder = mlops_embed::Embedder::load(&model, Device::Cpu)?.with_precision(precision);
    let data = DataDir::open(&run.join("data"))?;
    let (images, _) = data.read_role(Role::Test)?;
    let n = images.shape()[0];
    let pixels = images.as_slice().context("standard layout")?;
    // A warm-up batch, then the timed pass over every test image.
    let frame = pixels.len() / n.max(1);
    let _ = embedder.embed(&pixels[..batch.min(n) * frame], batch.min(n), batch)?;
    let t = Instant::now();
    let emb = embedder.embed(pixels, n, batch)?;
    let seconds = t.elapsed().as_secs_f64();
    ndarray_npy::write_npy(out, &emb)?;
    Ok(json!({"img_per_s": n as f64 / seconds, "seconds": seconds, "images": n}))
}

/// Builds `factory` over the run's gallery embeddings and times searches of its test
/// embeddings (k nearest by inner product); the median of 5 timed passes after one warm-up.
fn search(run: &Path, factory: &str, k: usize, out: &Path) -> Result<serde_json::Value> {
    let emb = EmbeddingsDir::open(&run.join("embed"))?;
    let (gallery, _) = emb.read_role("gallery")?;
    let (test, _) = emb.read_role("test")?;
    let dim = emb.summary.dim;
    let (mut index, _) = mlops_index::build(
        dim,
        gallery.as_slice().context("standard layout")?,
        factory,
        Metric::InnerProduct,
        100_000,
        0,
    )?;
    let (nprobe, ef) = search_params(factory);
    mlops_index::set_search_params(&mut index, nprobe, ef)?;
    let queries = test.as_slice().context("standard layout")?;
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for pass in 0..6 {
        let t = Instant::now();
        let result = index.search(queries, k)?;
        if pass > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        ids = result
            .labels
            .iter()
            .map(|l| l.get().map_or(-1, |v| v as i64))
            .collect();
    }
    let n = test.nrows();
    let ids = ndarray::Array2::from_shape_vec((n, k), ids)?;
    ndarray_npy::write_npy(out, &ids)?;
    let seconds = median(times);
    Ok(json!({
        "q_per_s": n as f64 / seconds,
        "seconds": seconds,
        "queries": n,
        "omp_threads": unsafe { omp_get_max_threads() },
    }))
}

/// The search-time settings both sides use: nprobe 8 for IVF, efSearch 64 for HNSW.
fn search_params(factory: &str) -> (Option<usize>, Option<usize>) {
    if factory.starts_with("IVF") {
        (Some(8), None)
    } else if factory.starts_with("HNSW") {
        (None, Some(64))
    } else {
        (None, None)
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tch::set_num_threads(threads() as i32);
    let a = |i: usize| -> Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("missing argument {i}; see the file's doc comment"))
    };
    let mut result = match a(0)? {
        "train" => train(a(1)?, a(2)?.parse()?, a(3)?.parse()?, a(4)?)?,
        "embed" => embed(Path::new(a(1)?), a(2)?.parse()?, a(3)?, Path::new(a(4)?))?,
        "search" => search(Path::new(a(1)?), a(2)?, a(3)?.parse()?, Path::new(a(4)?))?,
        other => bail!("unknown command {other:?} (train, embed, search)"),
    };
    result["threads"] = json!(threads());
    result["torch_threads"] = json!(tch::get_num_threads());
    println!("{result}");
    Ok(())
}
