//! Image folder in, classifier out: ingest, validate, train, embed, index and classify a new
//! image by library calls in one process (configs start from their defaults). `cargo run -r -p
//! mlops --example quickstart [-- FOLDER [IMAGE]]`: FOLDER has a sub-folder of images per class
//! (default: a small synthetic set); IMAGE is classified. Outputs: $QUICKSTART_OUT or /tmp.
use mlops::prelude::*;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let work = std::env::var_os("QUICKSTART_OUT").map(PathBuf::from);
    let work = work.unwrap_or_else(|| std::env::temp_dir().join("mlops-quickstart"));
    let dir = |name: &str| work.join(name);
    let (folder, image) = (args.next().unwrap_or(dir("images")), args.next());
    if !folder.exists() {
        let names = ["top", "middle", "low", "bottom"];
        mlops_data::fixtures::write_folder(&folder, &names, 60, 16, 7)?;
    }
    let data = mlops::data::run(&DataConfig {
        sources: vec![folder.clone()],
        out: dir("data"),
        image_size: [16, 16],
        ..Default::default()
    })?;
    println!(
        "data: {} files from {}",
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
        epochs: Some(4),
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
    println!("index: {} vectors of dimension {}", index.ntotal, index.dim);
    // Classify a new image as a server would: preprocess, embed, search, vote.
    let image = image.unwrap_or(dir("new.png"));
    if !image.exists() {
        // The third class, drawn from another seed: an image the model has not seen.
        mlops_data::fixtures::write_image(&image, 2, 16, 2026)?;
    }
    let embedder = Embedder::load(&ModelDir::open(&dir("train"))?, mlops::tch::Device::Cpu)?;
    let desc = embedder.description();
    let preprocess = Preprocess::new(desc.input_shape, desc.normalization);
    let pixels = preprocess.image_bytes(&std::fs::read(&image)?)?;
    let embedding = embedder.embed(&pixels, 1, 1)?;
    let spec = ClassifierSpec::knn(5, Vote::Weighted);
    let classifier = Classifier::new(mlops::index::load(&dir("index"))?, spec);
    let prediction = &classifier.classify(embedding.as_slice().expect("one row"))?[0];
    let class = &classifier.classes()[prediction.class];
    let share = 100.0 * prediction.score;
    println!("{}: {class} ({share:.0}% of the vote)", image.display());
    Ok(())
}
