//! A stage of your own in the pipeline: read an embed-stage directory through the artifact
//! contract and write a new directory, `class_spread`, with its own manifest.
//!
//! `cargo run -p mlops --example custom_stage [-- EMBED_DIR OUT_DIR]`: for each class of the
//! gallery, the centroid of its embeddings and how tightly they gather around it (mean cosine).
//! Without arguments it makes a small synthetic embed directory to read.
use mlops::core::artifact::EmbeddingsDir;
use mlops::core::{Manifest, OutputDir};
use ndarray::{Array1, Array2, Axis};
use serde::Serialize;
use std::path::PathBuf;

/// This stage's settings, recorded in its manifest (and so in any cache key built from it).
#[derive(Serialize)]
struct Config {
    role: String,
}

/// What the stage found, the manifest's `summary`.
#[derive(Serialize)]
struct Spread {
    classes: Vec<String>,
    mean_cosine_to_centroid: Vec<f32>,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let work = std::env::temp_dir().join("mlops-custom-stage");
    let input = args.next().unwrap_or_else(|| work.join("embed"));
    let out_dir = args.next().unwrap_or_else(|| work.join("class_spread"));
    if !input.exists() {
        mlops::core::testing::write_clusters(&input, 16, 30, 4, &["gallery"], 0.3, 1)?;
    }
    let config = Config {
        role: "gallery".into(),
    };

    // Opening checks the manifest; reading a role verifies every shard's sha256.
    let embeddings = EmbeddingsDir::open(&input)?;
    let (vectors, labels) = embeddings.read_role(&config.role)?;
    let classes = &embeddings.summary.classes;
    let mut centroids = Array2::<f32>::zeros((classes.len(), embeddings.summary.dim));
    let mut spread = vec![0f32; classes.len()];
    for (c, mut centroid) in centroids.axis_iter_mut(Axis(0)).enumerate() {
        let rows: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] == c as i64)
            .collect();
        let members = vectors.select(Axis(0), &rows);
        let mean: Array1<f32> = members
            .mean_axis(Axis(0))
            .unwrap_or_else(|| centroid.to_owned());
        let unit = &mean / mean.dot(&mean).sqrt().max(1e-12);
        spread[c] = members.dot(&unit).mean().unwrap_or(0.0);
        centroid.assign(&unit);
    }

    // Inputs and outputs with their sha256: the record a pipeline caches and audits by.
    let mut manifest = Manifest::begin("class_spread", env!("CARGO_PKG_VERSION"), &config);
    manifest.inputs = embeddings.role_input_entries(&[&config.role])?;
    let mut out = OutputDir::create(&out_dir)?;
    manifest
        .outputs
        .push(out.write_npy("centroids.npy", &centroids)?);
    let summary = Spread {
        classes: classes.clone(),
        mean_cosine_to_centroid: spread,
    };
    manifest.summary = serde_json::to_value(&summary)?;
    // Everything appears at once, manifest last: a crash leaves no half-written directory.
    out.commit(manifest)?;

    for (class, s) in classes.iter().zip(&summary.mean_cosine_to_centroid) {
        println!("{class}: mean cosine to centroid {s:.3}");
    }
    println!("wrote {}", out_dir.display());
    Ok(())
}
