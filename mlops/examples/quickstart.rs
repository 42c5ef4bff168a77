//! An image folder in, a classifier out: ingest, validate, train, embed, index and classify a
//! new image through library calls in one process.
//!
//! `cargo run --release -p mlops --example quickstart [-- FOLDER [IMAGE]]`: FOLDER holds one
//! sub-folder of images per class (default: a small synthetic set written here); IMAGE is
//! classified at the end (default: one not seen in training). Outputs go to $QUICKSTART_OUT.
use mlops::index::Vote;
use mlops::prelude::*;
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (folder, image) = (args.next(), args.next());
    let work = std::env::var_os("QUICKSTART_OUT").map_or_else(
        || std::env::temp_dir().join("mlops-quickstart"),
        PathBuf::from,
    );
    let dir = |name: &str| work.join(name);
    let folder = folder.unwrap_or_else(|| dir("images"));
    if !folder.exists() {
        let classes = ["bar-top", "bar-middle", "bar-low", "bar-bottom"];
        mlops_data::fixtures::write_folder(&folder, &classes, 60, 16, 7)?;
    }
    // Every config starts from its defaults; the paths are all a small run needs.
    let data = mlops::data::run(&DataConfig {
        sources: vec![folder.clone()],
        out: dir("data"),
        image_size: [16, 16],
        ..Default::default()
    })?;
    println!(
        "data: wrote {} files from {}",
        data.outputs.len(),
        folder.display()
    );
    let report = mlops::validate::run(&ValidateConfig {
        data: dir("data"),
        out: dir("validate"),
        ..Default::default()
    })?;
    println!("validate: {} checks passed", report.checks.len());
    let trained = mlops::train::run(&TrainConfig {
        data: dir("data"),
        validated: Some(dir("validate")),
        out: dir("train"),
        arch: Arch::Res,
        epochs: 4,
        batch_size: 32,
        ..Default::default()
    })?;
    println!(
        "train: validation accuracy {:.3}",
        trained.best_val_accuracy
    );
    mlops::embed::run(&EmbedConfig {
        model: dir("train"),
        data: dir("data"),
        out: dir("embed"),
        ..Default::default()
    })?;
    let index = mlops::index::run(&IndexConfig {
        embeddings: dir("embed"),
        out: dir("index"),
        ..Default::default()
    })?;
    println!(
        "index: {} gallery vectors of dimension {}",
        index.ntotal, index.dim
    );

    // Classify a new image as a server would: preprocess, embed, search, vote.
    let image = match image {
        Some(path) => path,
        None => new_image(&dir("new.png"))?,
    };
    let model = ModelDir::open(&dir("train"))?;
    let embedder = Embedder::load(&model, mlops::tch::Device::Cpu)?;
    let desc = embedder.description();
    let preprocess = Preprocess::new(desc.input_shape, desc.normalization);
    let pixels = preprocess.image_bytes(&std::fs::read(&image)?)?;
    let embedding = embedder.embed(&pixels, 1, 1)?;
    let spec = ClassifierSpec::knn(5, Vote::Weighted);
    let mut classifier = Classifier::new(mlops::index::load(&dir("index"))?, spec);
    let prediction = &classifier.classify(embedding.as_slice().expect("one row"))?[0];
    let class = &classifier.classes()[prediction.class];
    println!(
        "{}: {class} ({:.0}% of the vote)",
        image.display(),
        100.0 * prediction.score
    );
    Ok(())
}

/// A synthetic image of the third class, drawn after training: one the model has not seen.
fn new_image(path: &Path) -> anyhow::Result<PathBuf> {
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(2026);
    let pixels = mlops_data::fixtures::synthetic_image(2, 16, 16, &mut rng);
    image::GrayImage::from_raw(16, 16, pixels)
        .expect("16x16 bytes")
        .save(path)?;
    Ok(path.to_path_buf())
}
