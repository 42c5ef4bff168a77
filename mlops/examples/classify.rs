//! Classify images with a registered model version, in your own program (no server).
//!
//! `cargo run --release -p mlops --example classify -- REGISTRY MODEL[:VERSION] IMAGE...`, e.g.
//! after `cargo xtask pipeline`: `-- runs/registry fashion-mnist shirt.png`. Without a version
//! the registry's default (the promoted one) answers, as the server would.
use mlops::prelude::*;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [registry, model, images @ ..] = args.as_slice() else {
        anyhow::bail!("usage: classify REGISTRY MODEL[:VERSION] IMAGE...");
    };
    let (name, version) = match model.split_once(':') {
        Some((name, v)) => (name, Some(v.parse()?)),
        None => (model.as_str(), None),
    };
    let model = RegisteredModel::open(&PathBuf::from(registry), name, version)?;
    println!("{} version {}", model.name(), model.version());

    let bytes = images
        .iter()
        .map(|path| std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let inputs: Vec<&[u8]> = bytes.iter().map(Vec::as_slice).collect();
    // One call for the whole batch: preprocessing, the model, the index and the vote, exactly
    // as the version's evaluation measured them.
    for (path, prediction) in images.iter().zip(model.classify(&inputs)?) {
        let label = model.label(prediction.class).unwrap_or("?");
        // The evidence: every other class that won neighbours' votes, largest first.
        let shares = model.vote_shares(&prediction);
        let mut others: Vec<(usize, f64)> = shares.into_iter().enumerate().collect();
        others.retain(|&(c, s)| c != prediction.class && s > 0.0);
        others.sort_by(|a, b| b.1.total_cmp(&a.1));
        let others: Vec<String> = others
            .iter()
            .map(|&(c, s)| format!("{} {:.0}%", model.label(c).unwrap_or("?"), 100.0 * s))
            .collect();
        let share = 100.0 * prediction.score;
        println!(
            "{path}: {label} ({share:.0}% of the vote) {}",
            others.join(", ")
        );
    }
    Ok(())
}
